//! The floor's whole protocol knowledge: pre-encoded Welcome and Pong
//! frames, a Push frame template whose id and msgKey are patched in place,
//! and a streaming scanner that finds frame boundaries in what a device
//! sends, names the frame types the floor answers (Hello, Ping) and counts
//! acknowledged ids without decoding protobuf.

use ringpush::protocol::{body, encode_push, Frame, FrameType, HEADER_LEN, PROTOCOL_VERSION};

/// Largest frame a device may send the floor (ringpush's default
/// `limits.max_frame_bytes`).
const MAX_FRAME: u32 = ringpush::protocol::DEFAULT_MAX_FRAME as u32;

/// The Welcome every Hello gets: one token for all devices (the floor
/// addresses connections, not tokens) and ringpush's default heartbeat.
pub fn welcome() -> Vec<u8> {
    Frame::Welcome(body::Welcome {
        token: "floor".into(),
        heartbeat_secs: 60,
        server_time_ms: 0,
        new_token: true,
        missed: 0,
        protocol_version: PROTOCOL_VERSION,
    })
    .to_bytes()
}

pub fn pong() -> Vec<u8> {
    Frame::Pong(body::Heartbeat { time_ms: 0 }).to_bytes()
}

/// Push ids are kept in [2^28, 2^35): their varint is always 5 bytes, so
/// the id can be rewritten in place.
const ID_BASE: u64 = 1 << 28;
const ID_VARINT_LEN: usize = 5;
/// msgKey `<seq>-<unix µs>` with fixed widths, as `stats::msg_key` parses it.
const KEY_PLACEHOLDER: &str = "0000000000-0000000000000000";
const SEQ_DIGITS: usize = 10;

/// A Push frame encoded once; `stamp` writes one message's id and msgKey.
pub struct PushTemplate {
    frame: Vec<u8>,
    key_at: usize,
}

impl PushTemplate {
    /// The same fields a ringpush simple push carries: title and content of
    /// `payload_bytes` together, a task id, the expiry and accept times.
    pub fn new(payload_bytes: usize, ttl_secs: u64, now_ms: u64) -> Self {
        let push = body::Push {
            id: ID_BASE,
            msg_key: KEY_PLACEHOLDER.into(),
            title: "bench".into(),
            content: "x".repeat(payload_bytes.max(10) - 5),
            task_id: "floor".into(),
            expires_at_ms: now_ms + ttl_secs * 1000,
            notify_type: "notify".into(),
            accepted_at_ms: now_ms,
            ..Default::default()
        };
        let frame = encode_push(&push);
        // Field 1 (id, varint) is encoded first: its tag byte, then the id.
        assert_eq!(frame[HEADER_LEN], 0x08, "Push starts with its id");
        let key_at = frame
            .windows(KEY_PLACEHOLDER.len())
            .position(|w| w == KEY_PLACEHOLDER.as_bytes())
            .expect("the placeholder msgKey is in the frame");
        Self { frame, key_at }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Appends message `seq`, stamped with `sent_us` (unix µs), to `out`.
    pub fn stamp(&self, seq: u64, sent_us: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let frame = &mut out[start..];
        let mut id = ID_BASE + seq % ((1 << 35) - ID_BASE);
        for byte in &mut frame[HEADER_LEN + 1..HEADER_LEN + 1 + ID_VARINT_LEN] {
            *byte = (id & 0x7F) as u8 | 0x80;
            id >>= 7;
        }
        frame[HEADER_LEN + ID_VARINT_LEN] &= 0x7F;
        let key = &mut frame[self.key_at..self.key_at + KEY_PLACEHOLDER.len()];
        write_digits(&mut key[..SEQ_DIGITS], seq);
        write_digits(&mut key[SEQ_DIGITS + 1..], sent_us);
    }
}

/// Fills `out` with `value` in decimal, zero-padded (the low digits when
/// it does not fit).
fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// What a device sent that needs an answer.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Answer {
    Welcome,
    Pong,
}

/// Per-connection frame boundary tracker: 16 bytes of state, no buffer.
#[derive(Default)]
pub struct Scanner {
    header: [u8; HEADER_LEN],
    have: u8,
    body_left: u32,
    /// Bytes of the current Ack body with the high bit clear: each ends a
    /// varint (the field tag, the packed length, then one per id).
    varint_ends: u32,
}

/// A device sent a frame over the limit: the floor closes it.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

impl Scanner {
    /// Consumes `bytes`; calls `answer` for each Hello and Ping, and returns
    /// the acknowledged ids it saw.
    pub fn feed(&mut self, mut bytes: &[u8], mut answer: impl FnMut(Answer)) -> Result<u64, TooLarge> {
        let mut acked = 0u64;
        while !bytes.is_empty() {
            if usize::from(self.have) < HEADER_LEN {
                let take = (HEADER_LEN - usize::from(self.have)).min(bytes.len());
                self.header[usize::from(self.have)..usize::from(self.have) + take]
                    .copy_from_slice(&bytes[..take]);
                self.have += take as u8;
                bytes = &bytes[take..];
                if usize::from(self.have) < HEADER_LEN {
                    break;
                }
                self.body_left =
                    u32::from_be_bytes([self.header[0], self.header[1], self.header[2], self.header[3]]);
                if self.body_left + HEADER_LEN as u32 > MAX_FRAME {
                    return Err(TooLarge);
                }
                self.varint_ends = 0;
            }
            let take = (self.body_left as usize).min(bytes.len());
            if self.header[4] == FrameType::Ack as u8 {
                self.varint_ends += bytes[..take].iter().filter(|&&b| b < 0x80).count() as u32;
            }
            bytes = &bytes[take..];
            self.body_left -= take as u32;
            if self.body_left == 0 {
                match self.header[4] {
                    t if t == FrameType::Hello as u8 => answer(Answer::Welcome),
                    t if t == FrameType::Ping as u8 => answer(Answer::Pong),
                    t if t == FrameType::Ack as u8 => acked += u64::from(self.varint_ends.saturating_sub(2)),
                    _ => {}
                }
                self.have = 0;
            }
        }
        Ok(acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringpush::protocol::decode_slice;

    #[test]
    fn stamped_pushes_decode_with_their_id_and_send_time() {
        let template = PushTemplate::new(32, 300, 1_700_000_000_000);
        let mut out = Vec::new();
        for (seq, sent_us) in [(0, 1), (1, 1_700_000_000_123_456), (9_999_999_999, 42)] {
            out.clear();
            template.stamp(seq, sent_us, &mut out);
            assert_eq!(out.len(), template.len());
            let (frame, used) = decode_slice(&out, 4096).unwrap().unwrap();
            assert_eq!(used, out.len());
            let Frame::Push(push) = frame else {
                panic!("{frame:?}")
            };
            assert_eq!(push.id, ID_BASE + seq);
            let (key_seq, key_us) = push.msg_key.split_once('-').unwrap();
            assert_eq!(key_seq.parse::<u64>().unwrap(), seq);
            assert_eq!(key_us.parse::<u64>().unwrap(), sent_us);
            assert_eq!(push.title.len() + push.content.len(), 32);
        }
    }

    #[test]
    fn scanner_answers_hello_and_ping_and_counts_acked_ids() {
        let mut input = Frame::Hello(Box::default()).to_bytes();
        input.extend(
            Frame::Ack(body::Ids {
                ids: vec![1, 300, ID_BASE + 7],
            })
            .to_bytes(),
        );
        input.extend(Frame::Ping(body::Heartbeat { time_ms: 5 }).to_bytes());
        input.extend(Frame::Ack(body::Ids { ids: vec![] }).to_bytes());
        let many: Vec<u64> = (0..200).map(|i| ID_BASE + i).collect();
        input.extend(Frame::Ack(body::Ids { ids: many }).to_bytes());
        // Every split of the stream gives the same result.
        for split in [1, 2, 5, 7, input.len()] {
            let mut scanner = Scanner::default();
            let (mut answers, mut acked) = (Vec::new(), 0);
            for chunk in input.chunks(split) {
                acked += scanner.feed(chunk, |a| answers.push(a)).unwrap();
            }
            assert_eq!(answers, [Answer::Welcome, Answer::Pong], "split {split}");
            assert_eq!(acked, 203, "split {split}");
        }
    }

    #[test]
    fn scanner_refuses_an_oversized_frame() {
        let mut scanner = Scanner::default();
        assert_eq!(scanner.feed(&[0, 0, 0x10, 0, 2, 0], |_| {}), Err(TooLarge));
    }
}
