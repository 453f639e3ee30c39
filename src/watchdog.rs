//! The systemd watchdog and status thread. Every half watchdog interval it
//! reads the shards' heartbeats and sends WATCHDOG=1 only if every shard loop
//! advanced since the last look; a shard that did not is logged and counted
//! (`ringpush_watchdog_stuck_total{shard}`) and no ping goes out, so systemd
//! kills and restarts a daemon with a stuck shard rather than leave its
//! devices connected to a loop that no longer serves them. After each look it
//! wakes every shard, so an idle shard (whose loop may otherwise sleep until
//! its next timer, minutes away) iterates before the next look. Every few
//! seconds it also sends a STATUS= line for `systemctl status`. It does not
//! decide readiness or stopping (the daemon sends READY=1 and STOPPING=1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, warn};

use crate::notify::Notifier;
use crate::shard::{Heartbeats, ShardHandle};

/// How often STATUS= is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

pub fn describe_metrics() {
    metrics::describe_counter!(
        "ringpush_watchdog_stuck_total",
        "Watchdog checks (every half WatchdogSec) that found the shard's loop had not advanced; no WATCHDOG=1 was sent"
    );
    metrics::describe_counter!(
        "ringpush_drain_abandoned_total",
        "Connections a stopping shard closed with bytes (its GoAway) still unsent when delivery.drain_timeout_secs ran out"
    );
}

/// Which shards made no progress between two readings of their heartbeats.
/// Pure, so the rule is tested without threads or clocks.
#[derive(Debug)]
pub struct ProgressCheck {
    last: Vec<u64>,
}

impl ProgressCheck {
    pub fn new(first: Vec<u64>) -> Self {
        Self { last: first }
    }

    /// The shards whose count did not change since the previous call (or
    /// `new`); remembers `now` for the next call.
    pub fn stuck(&mut self, now: Vec<u64>) -> Vec<usize> {
        let stuck = self
            .last
            .iter()
            .zip(&now)
            .enumerate()
            .filter(|(_, (before, after))| before == after)
            .map(|(shard, _)| shard)
            .collect();
        self.last = now;
        stuck
    }
}

/// What the thread needs to describe the daemon in STATUS=.
pub type StatusFn = Box<dyn Fn() -> String + Send>;

/// The running watchdog thread; `stop` ends it.
pub struct Watchdog {
    stop: Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    /// Starts the thread when there is someone to tell: `None` without a
    /// notification socket. With `interval` (WATCHDOG_USEC) it pings every
    /// half interval (sd_watchdog_enabled(3) recommends half); without, it
    /// only refreshes STATUS=.
    pub fn start(
        notifier: Arc<Notifier>,
        interval: Option<Duration>,
        heartbeats: Arc<Heartbeats>,
        shards: Arc<[ShardHandle]>,
        status: StatusFn,
    ) -> std::io::Result<Option<Self>> {
        if !notifier.is_enabled() {
            return Ok(None);
        }
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || run(&notifier, interval, &heartbeats, &shards, &status, &stopped))?;
        Ok(Some(Self { stop, thread }))
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            error!("the watchdog thread panicked");
        }
    }
}

fn run(
    notifier: &Notifier,
    interval: Option<Duration>,
    heartbeats: &Heartbeats,
    shards: &[ShardHandle],
    status: &StatusFn,
    stopped: &Receiver<()>,
) {
    let period = interval.map_or(STATUS_EVERY, |i| (i / 2).min(STATUS_EVERY));
    let stuck_counters: Vec<metrics::Counter> = (0..shards.len())
        .map(|shard| metrics::counter!("ringpush_watchdog_stuck_total", "shard" => shard.to_string()))
        .collect();
    let mut progress = ProgressCheck::new(heartbeats.read());
    let mut next_status = Instant::now() + STATUS_EVERY;
    let wake_all = || shards.iter().for_each(ShardHandle::wake);
    wake_all();
    // A receive that times out is the sleep; a message (or the sender's
    // drop) is the stop.
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
        let mut message = String::new();
        if interval.is_some() {
            let stuck = progress.stuck(heartbeats.read());
            if stuck.is_empty() {
                message.push_str("WATCHDOG=1\n");
            } else {
                for &shard in &stuck {
                    stuck_counters[shard].increment(1);
                }
                warn!(
                    ?stuck,
                    "watchdog: shard loops made no progress; not pinging systemd"
                );
            }
        }
        let now = Instant::now();
        if now >= next_status {
            next_status = now + STATUS_EVERY;
            message.push_str(&format!("STATUS={}\n", crate::notify::status_line(&status())));
        }
        if !message.is_empty() {
            if let Err(e) = notifier.notify(message.trim_end()) {
                warn!(error = %e, "could not notify systemd");
            }
        }
        wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::ProgressCheck;

    #[test]
    fn a_shard_is_stuck_when_its_count_did_not_move_since_the_last_look() {
        let mut check = ProgressCheck::new(vec![5, 9, 0]);
        assert_eq!(check.stuck(vec![6, 10, 1]), Vec::<usize>::new());
        assert_eq!(check.stuck(vec![6, 11, 1]), vec![0, 2]);
        assert_eq!(
            check.stuck(vec![7, 11, 2]),
            vec![1],
            "compared with the last look"
        );
        assert_eq!(check.stuck(vec![8, 12, 3]), Vec::<usize>::new(), "recovered");
    }
}
