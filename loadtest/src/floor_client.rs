//! The bench's side of `ringpush-floor`'s control socket (`--api-addr`
//! with `--target floor`): asks the floor to write pre-encoded Push frames
//! to its device connections at the offered rate, or one to every
//! connection (a broadcast), and follows its progress. The devices are the
//! ordinary ringpush devices of `devices.rs`; they count deliveries, ack,
//! and measure latency from the msgKey, which the floor stamps with each
//! frame's scheduled send time.
//!
//! Control protocol (lines, see `src/bin/ringpush-floor/control.rs`):
//! `push RATE MILLIS PAYLOAD_BYTES TTL_SECS` → `sent N` lines, then
//! `done SENT ACKED BEHIND`; `broadcast PAYLOAD_BYTES TTL_SECS SEQ` →
//! `done SENT ACKED BEHIND`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::devices::Shared;
use crate::pusher::{PushConfig, PushOutcome};
use crate::stats::{self, Counters};

/// The floor's answer to a finished command.
#[derive(Debug, PartialEq, Eq)]
pub struct Done {
    pub sent: u64,
    pub acked: u64,
    pub behind: u64,
}

/// Parses one reply line: `Ok(Some(done))` at the end, `Ok(None)` for a
/// progress line (`sent N`, whose count is returned through `progress`).
pub fn parse_reply(line: &str, progress: &mut u64) -> Result<Option<Done>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let number = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number in {line:?}"));
    match fields.as_slice() {
        ["sent", n] => {
            *progress = number(n)?;
            Ok(None)
        }
        ["done", sent, acked, behind] => Ok(Some(Done {
            sent: number(sent)?,
            acked: number(acked)?,
            behind: number(behind)?,
        })),
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

fn command(addr: SocketAddr, line: &str) -> std::io::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(line.as_bytes())?;
    Ok(BufReader::new(stream))
}

/// Follows a command's replies until `done`, adding what the floor reports
/// as sent to `messages_sent` as it goes when `count_sent`.
fn follow(reader: &mut BufReader<TcpStream>, shared: &Shared, count_sent: bool) -> Result<Done, String> {
    let (mut line, mut reported, mut progress) = (String::new(), 0u64, 0u64);
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("floor closed the control connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("control: {e}")),
        }
        let done = parse_reply(&line, &mut progress)?;
        let sent = done.as_ref().map_or(progress, |d| d.sent);
        if count_sent {
            Counters::add(&shared.counters.messages_sent, sent.saturating_sub(reported));
        }
        reported = reported.max(sent);
        if let Some(done) = done {
            return Ok(done);
        }
    }
}

/// Point-to-point through the floor: one command for the whole rate until
/// `config.until`.
pub fn run(addr: SocketAddr, config: PushConfig, shared: Arc<Shared>) -> PushOutcome {
    let mut errors = BTreeMap::new();
    let millis = config.until.saturating_duration_since(Instant::now()).as_millis();
    let line = format!(
        "push {} {millis} {} {}\n",
        config.rate, config.payload_bytes, config.ttl_secs
    );
    match command(addr, &line)
        .map_err(|e| format!("control: {e}"))
        .and_then(|mut r| follow(&mut r, &shared, true))
    {
        Ok(done) => {
            Counters::add(&shared.counters.behind_schedule, done.behind);
            // Every frame written is on its way over loopback: wait for it
            // (so the latency tail is complete), with a generous deadline.
            let give_up = Instant::now() + Duration::from_secs(10);
            let c = &shared.counters;
            while Counters::get(&c.delivered) < Counters::get(&c.messages_sent) && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
            eprintln!(
                "floor: sent {} frames, counted {} acked ids",
                done.sent, done.acked
            );
        }
        Err(e) => {
            Counters::add(&shared.counters.http_errors, 1);
            errors.insert(e, 1);
        }
    }
    PushOutcome {
        errors,
        api_latency: stats::latency_histogram(),
    }
}

/// One Push frame to every device connection of the floor.
pub fn broadcast(
    addr: SocketAddr,
    payload_bytes: usize,
    ttl_secs: u64,
    i: u64,
    shared: &Shared,
    errors: &mut BTreeMap<String, u64>,
) {
    let line = format!("broadcast {payload_bytes} {ttl_secs} {i}\n");
    let outcome = command(addr, &line)
        .map_err(|e| format!("control: {e}"))
        .and_then(|mut r| follow(&mut r, shared, false));
    if let Err(e) = outcome {
        *errors.entry(e).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let mut progress = 0;
        assert_eq!(parse_reply("sent 17\n", &mut progress), Ok(None));
        assert_eq!(progress, 17);
        assert_eq!(
            parse_reply("done 20 19 1\n", &mut progress),
            Ok(Some(Done {
                sent: 20,
                acked: 19,
                behind: 1
            }))
        );
        assert!(parse_reply("what\n", &mut progress).is_err());
        assert!(parse_reply("sent x\n", &mut progress).is_err());
    }
}
