//! A minimal MQTT 5 client codec: what the bench needs to drive Mosquitto
//! as a push gateway (OASIS MQTT 5.0, sections 2 and 3). It encodes CONNECT,
//! SUBSCRIBE, PUBLISH (QoS 0 and 1, with a message expiry interval), PUBACK,
//! PINGREQ and DISCONNECT, and decodes what a broker sends a client:
//! CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP and DISCONNECT. Pure
//! functions of bytes; no sockets, no QoS 2, no authentication, no will.

use std::fmt;

/// Client → broker packet types (the fixed header's high nibble).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// Property identifiers used here (MQTT 5, 2.2.2.2).
const PROP_MESSAGE_EXPIRY: u8 = 0x02;
const PROP_SESSION_EXPIRY: u8 = 0x11;
const PROP_RECEIVE_MAXIMUM: u8 = 0x21;

/// What a broker sent, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        reason: u8,
        /// The broker's Receive Maximum: QoS 1 publishes a client may have
        /// unacknowledged (65,535 when absent).
        receive_maximum: u16,
    },
    SubAck {
        packet_id: u16,
        reasons: &'a [u8],
    },
    Publish {
        qos: u8,
        topic: &'a [u8],
        packet_id: Option<u16>,
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
        reason: u8,
    },
    PingResp,
    Disconnect {
        reason: u8,
    },
}

/// Why bytes could not be read as a packet from a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttError {
    BadRemainingLength,
    TooLarge(usize),
    Malformed(&'static str),
    UnexpectedType(u8),
}

impl std::error::Error for MqttError {}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRemainingLength => write!(f, "remaining length longer than 4 bytes"),
            Self::TooLarge(n) => write!(f, "packet of {n} bytes over the limit"),
            Self::Malformed(what) => write!(f, "malformed {what}"),
            Self::UnexpectedType(t) => write!(f, "unexpected packet type {t}"),
        }
    }
}

/// Appends a Variable Byte Integer (1.5.5).
fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a Variable Byte Integer: `Ok(None)` when more bytes are needed.
fn get_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, MqttError> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(MqttError::BadRemainingLength)
    } else {
        Ok(None)
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a packet: fixed header byte, remaining length, `body`.
fn put_packet(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    out.push(first);
    put_varint(out, body.len());
    out.extend_from_slice(body);
}

/// CONNECT with clean start off and a session expiry interval, so the
/// broker keeps the session (subscriptions and queued QoS 1 messages) while
/// the client is away; `clean_start` on for publishers.
pub fn connect(
    out: &mut Vec<u8>,
    client_id: &str,
    clean_start: bool,
    keep_alive_secs: u16,
    session_expiry_secs: u32,
) {
    let mut body = Vec::with_capacity(32 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(5);
    body.push(if clean_start { 0x02 } else { 0 });
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    if session_expiry_secs > 0 {
        body.push(5);
        body.push(PROP_SESSION_EXPIRY);
        body.extend_from_slice(&session_expiry_secs.to_be_bytes());
    } else {
        body.push(0);
    }
    put_str(&mut body, client_id.as_bytes());
    put_packet(out, CONNECT << 4, &body);
}

/// SUBSCRIBE to each filter at QoS 1.
pub fn subscribe(out: &mut Vec<u8>, packet_id: u16, filters: &[&str]) {
    let mut body = Vec::with_capacity(8 + filters.iter().map(|f| f.len() + 3).sum::<usize>());
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.push(0);
    for filter in filters {
        put_str(&mut body, filter.as_bytes());
        body.push(1);
    }
    put_packet(out, (SUBSCRIBE << 4) | 0x02, &body);
}

/// PUBLISH at QoS 1 (with `packet_id`) or 0 (without), with a message
/// expiry interval when `expiry_secs` > 0: the broker drops the message
/// from a queue once it has waited that long (the push TTL).
pub fn publish(out: &mut Vec<u8>, topic: &str, packet_id: Option<u16>, expiry_secs: u32, payload: &[u8]) {
    let properties = if expiry_secs > 0 { 5 } else { 0 };
    let remaining = 2 + topic.len() + packet_id.map_or(0, |_| 2) + 1 + properties + payload.len();
    out.reserve(5 + remaining);
    out.push((PUBLISH << 4) | if packet_id.is_some() { 0x02 } else { 0 });
    put_varint(out, remaining);
    put_str(out, topic.as_bytes());
    if let Some(id) = packet_id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.push(properties as u8);
    if expiry_secs > 0 {
        out.push(PROP_MESSAGE_EXPIRY);
        out.extend_from_slice(&expiry_secs.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// PUBACK with reason Success: the short form, packet id only (3.4.2.1).
pub fn puback(out: &mut Vec<u8>, packet_id: u16) {
    out.extend_from_slice(&[PUBACK << 4, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[PINGREQ << 4, 0]);
}

/// DISCONNECT, Normal disconnection: the session stays for its expiry
/// interval.
pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[DISCONNECT << 4, 0]);
}

fn u16_at(bytes: &[u8], at: usize, what: &'static str) -> Result<u16, MqttError> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(MqttError::Malformed(what))
}

/// Skips a property block (a length, then properties) at `at`; returns the
/// offset after it and the block.
fn properties_at<'a>(body: &'a [u8], at: usize, what: &'static str) -> Result<(usize, &'a [u8]), MqttError> {
    let (len, used) = get_varint(body.get(at..).ok_or(MqttError::Malformed(what))?)
        .ok()
        .flatten()
        .ok_or(MqttError::Malformed(what))?;
    let start = at + used;
    let block = body.get(start..start + len).ok_or(MqttError::Malformed(what))?;
    Ok((start + len, block))
}

/// Receive Maximum from CONNACK properties; the rest are skipped by type.
fn receive_maximum(mut props: &[u8]) -> Result<u16, MqttError> {
    let bad = MqttError::Malformed("CONNACK properties");
    let mut found = u16::MAX;
    while let Some((&id, rest)) = props.split_first() {
        let skip = match id {
            PROP_RECEIVE_MAXIMUM => {
                found = u16_at(rest, 0, "CONNACK properties")?;
                2
            }
            // Byte properties.
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            // Two-byte integers.
            0x13 | 0x22 | 0x23 => 2,
            // Four-byte integers.
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            // Strings and binary data: a two-byte length.
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                2 + usize::from(u16_at(rest, 0, "CONNACK properties")?)
            }
            // A user property: two strings.
            0x26 => {
                let first = 2 + usize::from(u16_at(rest, 0, "CONNACK properties")?);
                first + 2 + usize::from(u16_at(rest, first, "CONNACK properties")?)
            }
            _ => return Err(bad),
        };
        props = rest.get(skip..).ok_or(bad.clone())?;
    }
    Ok(found)
}

/// Decodes one packet from the front of `bytes`: `Ok(None)` when more bytes
/// are needed, else the packet and the bytes it used. `max_packet` bounds
/// the whole packet.
pub fn decode(bytes: &[u8], max_packet: usize) -> Result<Option<(Packet<'_>, usize)>, MqttError> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    let Some((remaining, used)) = get_varint(&bytes[1..])? else {
        return Ok(None);
    };
    let total = 1 + used + remaining;
    if total > max_packet {
        return Err(MqttError::TooLarge(total));
    }
    if bytes.len() < total {
        return Ok(None);
    }
    let body = &bytes[1 + used..total];
    let packet = match first >> 4 {
        CONNACK => {
            if body.len() < 2 {
                return Err(MqttError::Malformed("CONNACK"));
            }
            let receive_maximum = if body.len() > 2 {
                receive_maximum(properties_at(body, 2, "CONNACK")?.1)?
            } else {
                u16::MAX
            };
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                reason: body[1],
                receive_maximum,
            }
        }
        SUBACK => {
            let packet_id = u16_at(body, 0, "SUBACK")?;
            let (at, _) = properties_at(body, 2, "SUBACK")?;
            Packet::SubAck {
                packet_id,
                reasons: &body[at..],
            }
        }
        PUBLISH => {
            let qos = (first >> 1) & 3;
            let topic_len = usize::from(u16_at(body, 0, "PUBLISH")?);
            let topic = body
                .get(2..2 + topic_len)
                .ok_or(MqttError::Malformed("PUBLISH"))?;
            let mut at = 2 + topic_len;
            let packet_id = if qos > 0 {
                at += 2;
                Some(u16_at(body, at - 2, "PUBLISH")?)
            } else {
                None
            };
            let (at, _) = properties_at(body, at, "PUBLISH")?;
            Packet::Publish {
                qos,
                topic,
                packet_id,
                payload: &body[at..],
            }
        }
        PUBACK => Packet::PubAck {
            packet_id: u16_at(body, 0, "PUBACK")?,
            reason: body.get(2).copied().unwrap_or(0),
        },
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect {
            reason: body.first().copied().unwrap_or(0),
        },
        other => return Err(MqttError::UnexpectedType(other)),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(get_varint(&out).unwrap(), Some((value, out.len())), "{value}");
            assert_eq!(get_varint(&out[..out.len() - 1]).unwrap(), None);
        }
        assert_eq!(get_varint(&[0xFF; 5]), Err(MqttError::BadRemainingLength));
    }

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let mut out = Vec::new();
        connect(&mut out, "d7", false, 60, 3600);
        #[rustfmt::skip]
        let expected = [
            0x10, 20,                       // CONNECT, remaining length
            0, 4, b'M', b'Q', b'T', b'T', 5, // protocol name, level 5
            0x00,                           // flags: clean start off
            0, 60,                          // keep alive
            5, 0x11, 0, 0, 0x0E, 0x10,      // session expiry 3600
            0, 2, b'd', b'7',               // client id
        ];
        assert_eq!(out, expected);
        out.clear();
        connect(&mut out, "p", true, 0, 0);
        assert_eq!(out[9], 0x02);
        assert_eq!(out[12], 0, "no properties");
    }

    #[test]
    fn subscribe_asks_qos_1_for_each_filter() {
        let mut out = Vec::new();
        subscribe(&mut out, 1, &["d/7", "all"]);
        assert_eq!(
            out,
            [0x82, 15, 0, 1, 0, 0, 3, b'd', b'/', b'7', 1, 0, 3, b'a', b'l', b'l', 1]
        );
    }

    #[test]
    fn publish_round_trips_through_the_decoder() {
        let mut out = Vec::new();
        publish(&mut out, "d/42", Some(513), 300, b"7-1700000000000000");
        assert_eq!(out[0], 0x32, "PUBLISH, QoS 1");
        let (packet, used) = decode(&out, 1 << 16).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            packet,
            Packet::Publish {
                qos: 1,
                topic: b"d/42",
                packet_id: Some(513),
                payload: b"7-1700000000000000",
            }
        );
        out.clear();
        publish(&mut out, "all", None, 0, b"x");
        let (packet, _) = decode(&out, 64).unwrap().unwrap();
        assert_eq!(
            packet,
            Packet::Publish {
                qos: 0,
                topic: b"all",
                packet_id: None,
                payload: b"x",
            }
        );
    }

    #[test]
    fn broker_packets_decode() {
        // CONNACK, session present, success, Receive Maximum 20 and a
        // Topic Alias Maximum before it.
        let connack = [0x20, 9, 1, 0, 6, 0x22, 0, 10, 0x21, 0, 20];
        assert_eq!(
            decode(&connack, 64).unwrap(),
            Some((
                Packet::ConnAck {
                    session_present: true,
                    reason: 0,
                    receive_maximum: 20
                },
                11
            ))
        );
        // The 3.1.1 short form has no properties.
        assert!(matches!(
            decode(&[0x20, 2, 0, 0x87], 64).unwrap(),
            Some((
                Packet::ConnAck {
                    reason: 0x87,
                    receive_maximum: u16::MAX,
                    ..
                },
                4
            ))
        ));
        let suback = [0x90, 5, 0, 1, 0, 1, 0x80];
        assert_eq!(
            decode(&suback, 64).unwrap(),
            Some((
                Packet::SubAck {
                    packet_id: 1,
                    reasons: &[1, 0x80]
                },
                7
            ))
        );
        let mut puback_bytes = Vec::new();
        puback(&mut puback_bytes, 9);
        assert_eq!(
            decode(&puback_bytes, 64).unwrap(),
            Some((
                Packet::PubAck {
                    packet_id: 9,
                    reason: 0
                },
                4
            ))
        );
        assert_eq!(decode(&[0xD0, 0], 64).unwrap(), Some((Packet::PingResp, 2)));
        assert_eq!(
            decode(&[0xE0, 1, 0x8E], 64).unwrap(),
            Some((Packet::Disconnect { reason: 0x8E }, 3))
        );
    }

    #[test]
    fn partial_oversized_and_hostile_input() {
        let mut out = Vec::new();
        publish(&mut out, "d/1", Some(1), 0, &[7; 300]);
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut], 1 << 16).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(decode(&out, 100), Err(MqttError::TooLarge(out.len())));
        assert_eq!(decode(&[0x10, 0], 64), Err(MqttError::UnexpectedType(1)));
        // A topic length past the packet's end.
        assert_eq!(
            decode(&[0x30, 3, 0, 9, b'a'], 64),
            Err(MqttError::Malformed("PUBLISH"))
        );
        // A property block longer than the packet.
        assert_eq!(
            decode(&[0x90, 3, 0, 1, 9], 64),
            Err(MqttError::Malformed("SUBACK"))
        );
    }

    #[test]
    fn control_packets_are_two_bytes() {
        let mut out = Vec::new();
        pingreq(&mut out);
        disconnect(&mut out);
        assert_eq!(out, [0xC0, 0, 0xE0, 0]);
    }
}
