//! A minimal core NATS client codec (the text protocol of
//! docs.nats.io, "Client Protocol"): encodes CONNECT, SUB, PUB, PING and
//! PONG, and decodes what a server sends a client: INFO, MSG, PING, PONG,
//! +OK and -ERR. Pure functions of bytes. No headers (HMSG), no
//! JetStream: core NATS delivers at most once and keeps nothing for a
//! subscriber that is away, which is what the bench reports about it.

use std::fmt;

/// What a server sent, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Info,
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsError {
    LineTooLong,
    Malformed(&'static str),
    TooLarge(usize),
    UnknownOp,
}

impl std::error::Error for NatsError {}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong => write!(f, "control line over the limit"),
            Self::Malformed(what) => write!(f, "malformed {what}"),
            Self::TooLarge(n) => write!(f, "payload of {n} bytes over the limit"),
            Self::UnknownOp => write!(f, "unknown operation"),
        }
    }
}

/// Control lines longer than this are refused (INFO is the longest a
/// server sends; a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// CONNECT without verbose acknowledgements (+OK per operation) or
/// pedantic checks, as production clients send it.
pub fn connect(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(
        format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"0.1.0\",\"protocol\":1}}\r\n"
        )
        .as_bytes(),
    );
}

pub fn sub(out: &mut Vec<u8>, subject: &str, sid: u32) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

pub fn publish(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

pub fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

pub fn pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

/// Decodes one operation from the front of `bytes`: `Ok(None)` when more
/// bytes are needed, else the operation and the bytes it used.
/// `max_payload` bounds a MSG payload.
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Option<(Op<'_>, usize)>, NatsError> {
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() > MAX_LINE {
            Err(NatsError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &bytes[..end];
    let after_line = end + 2;
    let (word, rest) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = match word.to_ascii_uppercase().as_slice() {
        b"MSG" => {
            let fields: Vec<&[u8]> = rest
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty())
                .collect();
            let (subject, sid, size) = match fields.as_slice() {
                [subject, sid, size] | [subject, sid, _, size] => (*subject, *sid, *size),
                _ => return Err(NatsError::Malformed("MSG")),
            };
            let size: usize = std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(NatsError::Malformed("MSG size"))?;
            if size > max_payload {
                return Err(NatsError::TooLarge(size));
            }
            let total = after_line + size + 2;
            if bytes.len() < total {
                return Ok(None);
            }
            if &bytes[total - 2..total] != b"\r\n" {
                return Err(NatsError::Malformed("MSG payload end"));
            }
            return Ok(Some((
                Op::Msg {
                    subject,
                    sid,
                    payload: &bytes[after_line..after_line + size],
                },
                total,
            )));
        }
        b"INFO" => Op::Info,
        b"PING" => Op::Ping,
        b"PONG" => Op::Pong,
        b"+OK" => Op::Ok,
        b"-ERR" => Op::Err(rest),
        _ => return Err(NatsError::UnknownOp),
    };
    Ok(Some((op, after_line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_operations_encode() {
        let mut out = Vec::new();
        sub(&mut out, "d.7", 1);
        publish(&mut out, "d.7", b"hi");
        ping(&mut out);
        pong(&mut out);
        assert_eq!(out, b"SUB d.7 1\r\nPUB d.7 2\r\nhi\r\nPING\r\nPONG\r\n");
        out.clear();
        connect(&mut out, "d7");
        assert!(out.starts_with(b"CONNECT {\"verbose\":false,"));
        assert!(out.ends_with(b"}\r\n"));
    }

    #[test]
    fn server_operations_decode() {
        let input = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG d.7 1 5\r\nhello\r\nMSG all 2 _INBOX.a 0\r\n\r\n+OK\r\n-ERR 'Slow Consumer'\r\nPONG\r\n";
        let mut at = 0;
        let mut ops = Vec::new();
        while let Some((op, used)) = decode(&input[at..], 1024).unwrap() {
            at += used;
            ops.push(op);
        }
        assert_eq!(at, input.len());
        assert_eq!(
            ops,
            [
                Op::Info,
                Op::Ping,
                Op::Msg {
                    subject: b"d.7",
                    sid: b"1",
                    payload: b"hello"
                },
                Op::Msg {
                    subject: b"all",
                    sid: b"2",
                    payload: b""
                },
                Op::Ok,
                Op::Err(b"'Slow Consumer'"),
                Op::Pong,
            ]
        );
    }

    #[test]
    fn partial_oversized_and_hostile_input() {
        let input = b"MSG d.7 1 5\r\nhello\r\n";
        for cut in 0..input.len() {
            assert_eq!(decode(&input[..cut], 1024).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(decode(input, 4), Err(NatsError::TooLarge(5)));
        assert_eq!(
            decode(b"MSG d.7 1 2\r\nhello\r\n", 64),
            Err(NatsError::Malformed("MSG payload end"))
        );
        assert_eq!(decode(b"MSG d.7\r\n", 64), Err(NatsError::Malformed("MSG")));
        assert_eq!(decode(b"HELLO\r\n", 64), Err(NatsError::UnknownOp));
        assert_eq!(decode(&vec![b'x'; MAX_LINE + 1], 64), Err(NatsError::LineTooLong));
    }
}
