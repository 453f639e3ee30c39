//! Counters shared by the client's threads, latency histograms, and the
//! summary a run prints (human lines, or JSON with `--json`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Live counters, updated by every thread, read by the progress line.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    pub closed_by_server: AtomicU64,
    pub messages_sent: AtomicU64,
    pub requests_sent: AtomicU64,
    pub http_errors: AtomicU64,
    pub behind_schedule: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    /// Devices closed by the client on `Shared::disconnect`.
    pub disconnected: AtomicU64,
    /// TLS connections welcomed after a full handshake, and after a
    /// resumed one.
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// API-to-device latency in microseconds, 1 µs to 60 s at 3 significant
/// digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn from(h: &Histogram<u64>) -> Self {
        Self {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct Summary {
    /// The system measured (`--target`).
    pub target: crate::peers::Target,
    /// Scenarios the target cannot run, each with why (nothing was measured
    /// for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<String>,
    pub devices: u64,
    pub connected: u64,
    pub connect_errors: u64,
    /// Connections per second from the first connect to the last Welcome.
    pub connect_rate: f64,
    pub connect_seconds: f64,
    pub offered_rate: u64,
    pub measured_seconds: f64,
    pub messages_sent: u64,
    pub delivered_per_sec: f64,
    pub acked_per_sec: f64,
    /// Messages the API answered 200 for, per second of the measured window.
    pub accepted_per_sec: f64,
    /// Push request latency, from the scheduled send to the response.
    pub api_latency: Latency,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub behind_schedule: u64,
    pub latency: Latency,
    pub http_errors: BTreeMap<String, u64>,
    pub closed_by_server: BTreeMap<String, u64>,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
    /// The --offline-broadcasts (and --catch-up) figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_broadcasts: Option<OfflineBroadcasts>,
    /// TLS connections welcomed over the whole run, by handshake kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsHandshakes>,
    /// The --reconnect-storm figures (its connect-to-Welcome latency is in
    /// `latency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
    /// User + system CPU of the client: with `--procs`, the sum over its
    /// processes.
    pub client_cpu_seconds: f64,
    pub client_cpu_percent_of_one_core: f64,
    /// Client processes that shared the run (`--procs`).
    #[serde(default)]
    pub procs: u64,
    /// The server's CPU (user + system) at the start, with --server-pid.
    #[serde(skip)]
    pub server_cpu_before_seconds: Option<f64>,
    /// The server's CPU seconds over the whole run, with --server-pid.
    pub server_cpu_seconds: Option<f64>,
    pub wall_seconds: f64,
    pub interrupted: bool,
    /// With `--procs`: client processes that failed (exit status or no
    /// summary); the figures above lack their share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_processes: Vec<String>,
}

/// Broadcasts stored while every device was offline, and the catch-up.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct OfflineBroadcasts {
    pub offline_devices: u64,
    pub broadcasts: u64,
    /// Sending them (each answered 200: on disk).
    pub seconds: f64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_rss_per_broadcast_bytes: Option<f64>,
    /// From the reconnect signal until every device had every broadcast;
    /// `None` when that did not happen within 60 s.
    pub catch_up_seconds: Option<f64>,
    pub catch_up_requested: bool,
    pub caught_up_devices: u64,
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct TlsHandshakes {
    /// "1.3" (the server's choice of 1.2 or 1.3) or "1.2" (forced).
    pub versions: String,
    pub resumption: bool,
    pub full: u64,
    pub resumed: u64,
    /// TLS 1.3 tickets in the shared store at the end (with resumption).
    pub tickets_held: Option<usize>,
}

/// Connect, TLS handshake, Hello, Welcome, close, again: measured after the
/// warmup.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct Storm {
    pub seconds: f64,
    /// Welcomes (each a new connection, handshake and Hello) in the window.
    pub welcomes: u64,
    pub welcomes_per_sec: f64,
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
    pub client_cpu_seconds: f64,
    /// With --server-pid: the server's user + system CPU in the window.
    pub server_cpu_seconds: Option<f64>,
    pub max_pending_connects: u64,
}

impl Summary {
    pub fn errors(&self) -> u64 {
        self.connect_errors
            + self.http_errors.values().sum::<u64>()
            + self.closed_by_server.values().sum::<u64>()
            + self.failed_processes.len() as u64
            // A skipped scenario connected nothing, and that is no error.
            + u64::from(self.connected < self.devices && (self.connected > 0 || self.unsupported.is_empty()))
            + u64::from(
                self.offline_broadcasts
                    .as_ref()
                    .is_some_and(|o| o.catch_up_requested && o.catch_up_seconds.is_none()),
            )
    }

    pub fn print_human(&self) {
        let l = &self.latency;
        eprintln!(
            "== ringpush-bench summary, target {:?} (client and server share this machine)",
            self.target
        );
        for reason in &self.unsupported {
            eprintln!("unsupported   {reason}");
        }
        if self.storm.is_none() {
            eprintln!(
                "connections   {}/{} in {:.2}s = {:.0}/s (connect + Hello/Welcome), {} errors",
                self.connected, self.devices, self.connect_seconds, self.connect_rate, self.connect_errors
            );
        }
        if let (Some(before), Some(after), Some(per)) = (
            self.server_rss_before_kib,
            self.server_rss_after_kib,
            self.server_rss_per_connection_bytes,
        ) {
            eprintln!("server RSS    {before} KiB -> {after} KiB = {per:.0} bytes per connection");
        }
        if let Some(o) = &self.offline_broadcasts {
            eprintln!(
                "offline       {} broadcasts for {} offline devices in {:.2}s; server RSS {:?} -> {:?} KiB = {} bytes per broadcast",
                o.broadcasts,
                o.offline_devices,
                o.seconds,
                o.server_rss_before_kib,
                o.server_rss_after_kib,
                o.server_rss_per_broadcast_bytes
                    .map_or("?".to_string(), |b| format!("{b:.0}"))
            );
            if let Some(s) = o.catch_up_seconds {
                eprintln!(
                    "catch-up      {} devices reconnected and had all {} broadcasts in {s:.3}s",
                    o.caught_up_devices, o.broadcasts
                );
            }
        }
        if let Some(t) = &self.tls {
            eprintln!(
                "TLS           versions {}, resumption {}: {} full and {} resumed handshakes{}",
                t.versions,
                if t.resumption { "on" } else { "off" },
                t.full,
                t.resumed,
                t.tickets_held
                    .map_or(String::new(), |n| format!(", {n} tickets held at the end"))
            );
        }
        if let Some(s) = &self.storm {
            let handshakes = if s.full_handshakes + s.resumed_handshakes > 0 {
                format!(
                    "{} full, {} resumed TLS handshakes; ",
                    s.full_handshakes, s.resumed_handshakes
                )
            } else {
                String::new()
            };
            eprintln!(
                "storm         {} connect+Hello/Welcome+close in {:.1}s = {:.0}/s ({handshakes}at most {} in flight, 0 = no bound), {} connect errors",
                s.welcomes, s.seconds, s.welcomes_per_sec, s.max_pending_connects, self.connect_errors
            );
            eprintln!(
                "storm CPU     client {:.2}s, server {} over the window",
                s.client_cpu_seconds,
                s.server_cpu_seconds
                    .map_or("? (no --server-pid)".to_string(), |c| format!("{c:.2}s"))
            );
            eprintln!(
                "storm latency connect-to-Welcome p50 {} us, p99 {} us, p99.9 {} us, max {} us",
                l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        if self.offered_rate > 0 || self.messages_sent > 0 {
            eprintln!(
                "messages      offered {}/s, sent {}, delivered {:.0}/s, acked {:.0}/s over {:.1}s ({} behind schedule)",
                self.offered_rate,
                self.messages_sent,
                self.delivered_per_sec,
                self.acked_per_sec,
                self.measured_seconds,
                self.behind_schedule
            );
            eprintln!(
                "accepted      {:.0}/s by the API (answered 200)",
                self.accepted_per_sec
            );
            let a = &self.api_latency;
            eprintln!(
                "API latency   p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} requests)",
                a.p50_us, a.p99_us, a.p999_us, a.max_us, a.samples
            );
            eprintln!(
                "latency       API-to-device p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} samples)",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
            );
        }
        eprintln!(
            "client CPU    {:.2}s = {:.0}% of one core over {:.1}s{}",
            self.client_cpu_seconds,
            self.client_cpu_percent_of_one_core,
            self.wall_seconds,
            if self.procs > 1 {
                format!(" ({} processes)", self.procs)
            } else {
                String::new()
            }
        );
        if let Some(cpu) = self.server_cpu_seconds {
            eprintln!(
                "server CPU    {cpu:.2}s = {:.0}% of one core over {:.1}s",
                100.0 * cpu / self.wall_seconds.max(1e-9),
                self.wall_seconds
            );
        }
        if !self.http_errors.is_empty() {
            eprintln!("HTTP errors   {:?}", self.http_errors);
        }
        if !self.closed_by_server.is_empty() {
            eprintln!("closed        {:?}", self.closed_by_server);
        }
        for failed in &self.failed_processes {
            eprintln!("failed        client {failed}");
        }
        if self.interrupted {
            eprintln!("(interrupted: partial results)");
        }
    }
}

/// The message key carries the client's send time so latency needs no
/// server clock: `<sequence>-<unix micros>`.
pub fn msg_key(sequence: u64, unix_micros: u64) -> String {
    format!("{sequence}-{unix_micros}")
}

pub fn sent_micros(msg_key: &str) -> Option<u64> {
    msg_key.rsplit_once('-')?.1.parse().ok()
}

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// User + system CPU seconds of this process so far.
pub fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// User + system CPU seconds of another process so far (from
/// /proc/PID/stat, fields 14 and 15, in clock ticks).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_key_carries_the_send_time() {
        let key = msg_key(42, 1_700_000_000_123_456);
        assert!(key.len() <= 64);
        assert_eq!(sent_micros(&key), Some(1_700_000_000_123_456));
        assert_eq!(sent_micros("nope"), None);
    }

    #[test]
    fn histograms_merge_and_report() {
        let mut a = latency_histogram();
        let mut b = latency_histogram();
        for v in 1..=1000 {
            a.record(v).unwrap();
            b.record(v * 10).unwrap();
        }
        a.add(&b).unwrap();
        let l = Latency::from(&a);
        assert_eq!(l.samples, 2000);
        // 1..=1000 and 10..=10000 step 10: 910 + 91 samples lie at or below 910.
        assert!((905..=915).contains(&l.p50_us), "{l:?}");
        assert!(l.max_us >= 9990);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(own_cpu_seconds() >= 0.0);
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }
}
