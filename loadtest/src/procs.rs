//! `--procs N`: one run spread over N client processes, because a process
//! here may open at most 20,000 descriptors. The parent re-executes this
//! binary N times with the same arguments plus `--proc-index i
//! --proc-count N`; each child owns a disjoint slice of the device indices
//! (so tokens, client ids and source addresses differ) and its share of the
//! rates, and the parent only releases barriers and merges what the
//! children report into one summary.
//!
//! A child talks to the parent over its stdout and stdin, one line each:
//! `ready <phase>` when it reached a phase that must line up across
//! processes, then it waits for `go <phase>`, which the parent writes once
//! every child is ready; EOF on stdin (the parent stopped the run) releases
//! it as an interruption. Its last stdout line is `summary <JSON>`: the
//! child's summary and its latency histograms as raw bucket counts, so the
//! merged percentiles are exact. Stderr (progress lines) goes straight to
//! the terminal.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{self, Latency, Summary};

/// The part of a run one process owns: child `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    /// A run in one process.
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// This process's part of `total`; the parts of all processes sum to
    /// `total` (the remainder goes to the lowest indices).
    pub fn of(self, total: u64) -> u64 {
        let n = self.count.max(1) as u64;
        total / n + u64::from((self.index as u64) < total % n)
    }

    /// Like `of`, for a figure where 0 means "no bound": a non-zero total
    /// never becomes an unbounded 0 in a process.
    pub fn of_bound(self, total: u64) -> u64 {
        if total == 0 {
            0
        } else {
            self.of(total).max(1)
        }
    }

    /// The first device index this process owns and how many.
    pub fn devices(self, total: usize) -> (usize, usize) {
        let n = self.count.max(1);
        let first = self.index * (total / n) + self.index.min(total % n);
        (first, self.of(total as u64) as usize)
    }

    /// The process that sends the broadcasts of a run and reads the
    /// server's RSS and CPU.
    pub fn leads(self) -> bool {
        self.index == 0
    }
}

/// A child's side of the barriers; a no-op in a run of one process.
pub struct Barrier {
    child: bool,
}

impl Barrier {
    pub fn new(child: bool) -> Self {
        Self { child }
    }

    /// Says `ready <phase>` and waits for `go <phase>`; false when the
    /// parent stopped the run instead (the caller winds down).
    pub fn wait(&self, phase: &str) -> bool {
        if !self.child {
            return true;
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "ready {phase}").and_then(|()| out.flush()).is_err() {
            return false;
        }
        let mut line = String::new();
        matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0)
            && line.trim_end() == format!("go {phase}")
    }
}

/// What a child hands the parent at the end.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct ChildReport {
    pub summary: Summary,
    /// API-to-device (or, in a storm, connect-to-Welcome) latency:
    /// (highest equivalent value of a bucket, count) pairs.
    pub latency: Vec<(u64, u64)>,
    pub api_latency: Vec<(u64, u64)>,
}

/// A histogram as its recorded buckets.
pub fn histogram_counts(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds buckets from `histogram_counts` to `h`: each value lands in the
/// bucket it came from, so the merge is exact.
fn add_counts(h: &mut Histogram<u64>, counts: &[(u64, u64)]) -> anyhow::Result<()> {
    for &(value, count) in counts {
        h.record_n(value, count).context("a latency bucket")?;
    }
    Ok(())
}

/// One summary from the children's, in child order: counts and rates
/// summed, times the longest, histograms merged, the server's figures from
/// the first child (the one that reads them).
pub fn merge(reports: &[ChildReport]) -> anyhow::Result<Summary> {
    let Some(first) = reports.first() else {
        bail!("no client process reported a summary");
    };
    let lead = &first.summary;
    let mut s = Summary {
        target: lead.target,
        procs: reports.len() as u64,
        server_rss_before_kib: lead.server_rss_before_kib,
        server_rss_after_kib: lead.server_rss_after_kib,
        server_cpu_seconds: lead.server_cpu_seconds,
        ..Default::default()
    };
    let mut latency = stats::latency_histogram();
    let mut api_latency = stats::latency_histogram();
    for report in reports {
        let c = &report.summary;
        for reason in &c.unsupported {
            if !s.unsupported.contains(reason) {
                s.unsupported.push(reason.clone());
            }
        }
        s.devices += c.devices;
        s.connected += c.connected;
        s.connect_errors += c.connect_errors;
        s.connect_seconds = s.connect_seconds.max(c.connect_seconds);
        s.offered_rate += c.offered_rate;
        s.measured_seconds = s.measured_seconds.max(c.measured_seconds);
        s.messages_sent += c.messages_sent;
        s.delivered_per_sec += c.delivered_per_sec;
        s.acked_per_sec += c.acked_per_sec;
        s.accepted_per_sec += c.accepted_per_sec;
        s.delivered_total += c.delivered_total;
        s.acked_total += c.acked_total;
        s.behind_schedule += c.behind_schedule;
        for (key, n) in &c.http_errors {
            *s.http_errors.entry(key.clone()).or_default() += n;
        }
        for (key, n) in &c.closed_by_server {
            *s.closed_by_server.entry(key.clone()).or_default() += n;
        }
        s.failed_processes.extend(c.failed_processes.iter().cloned());
        s.client_cpu_seconds += c.client_cpu_seconds;
        s.wall_seconds = s.wall_seconds.max(c.wall_seconds);
        s.interrupted |= c.interrupted;
        if let Some(o) = &c.offline_broadcasts {
            merge_offline(s.offline_broadcasts.get_or_insert_with(|| first_offline(o)), o);
        }
        if let Some(t) = &c.tls {
            let m = s.tls.get_or_insert_with(|| stats::TlsHandshakes {
                versions: t.versions.clone(),
                resumption: t.resumption,
                ..Default::default()
            });
            m.full += t.full;
            m.resumed += t.resumed;
            m.tickets_held = match (m.tickets_held, t.tickets_held) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        if let Some(t) = &c.storm {
            let m = s.storm.get_or_insert_with(|| stats::Storm {
                server_cpu_seconds: t.server_cpu_seconds,
                ..Default::default()
            });
            m.seconds = m.seconds.max(t.seconds);
            m.welcomes += t.welcomes;
            m.welcomes_per_sec += t.welcomes_per_sec;
            m.full_handshakes += t.full_handshakes;
            m.resumed_handshakes += t.resumed_handshakes;
            m.client_cpu_seconds += t.client_cpu_seconds;
            m.max_pending_connects += t.max_pending_connects;
        }
        add_counts(&mut latency, &report.latency)?;
        add_counts(&mut api_latency, &report.api_latency)?;
    }
    s.connect_rate = match &s.storm {
        Some(storm) => storm.welcomes_per_sec,
        None => s.connected as f64 / s.connect_seconds.max(1e-9),
    };
    if let (Some(before), Some(after)) = (s.server_rss_before_kib, s.server_rss_after_kib) {
        s.server_rss_per_connection_bytes =
            Some(after.saturating_sub(before) as f64 * 1024.0 / s.connected.max(1) as f64);
    }
    s.latency = Latency::from(&latency);
    s.api_latency = Latency::from(&api_latency);
    s.client_cpu_percent_of_one_core = 100.0 * s.client_cpu_seconds / s.wall_seconds.max(1e-9);
    Ok(s)
}

/// The first child's offline figures: it sent the broadcasts and read the
/// server's RSS around them.
fn first_offline(o: &stats::OfflineBroadcasts) -> stats::OfflineBroadcasts {
    stats::OfflineBroadcasts {
        broadcasts: o.broadcasts,
        seconds: o.seconds,
        server_rss_before_kib: o.server_rss_before_kib,
        server_rss_after_kib: o.server_rss_after_kib,
        server_rss_per_broadcast_bytes: o.server_rss_per_broadcast_bytes,
        catch_up_seconds: o.catch_up_seconds,
        catch_up_requested: o.catch_up_requested,
        ..Default::default()
    }
}

fn merge_offline(m: &mut stats::OfflineBroadcasts, o: &stats::OfflineBroadcasts) {
    m.offline_devices += o.offline_devices;
    m.caught_up_devices += o.caught_up_devices;
    // Every process must have caught up; the run did when the last did.
    m.catch_up_seconds = m.catch_up_seconds.zip(o.catch_up_seconds).map(|(a, b)| a.max(b));
}

/// Runs the children, releases their barriers, merges their summaries.
/// Ctrl-C (`interrupted`) is forwarded and every barrier released, so each
/// child ends with a partial summary; a child that fails stops the others
/// the same way and is named in `failed_processes`.
pub fn run_parent(procs: usize, devices: u64, interrupted: &AtomicBool) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding this binary to re-execute")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let (lines_tx, lines) = mpsc::channel::<(usize, Option<String>)>();
    let mut children: Vec<Child> = Vec::with_capacity(procs);
    let mut stdins: Vec<Option<ChildStdin>> = Vec::with_capacity(procs);
    for index in 0..procs {
        let mut child = Command::new(&exe)
            .args(&args)
            .args([
                "--proc-index",
                &index.to_string(),
                "--proc-count",
                &procs.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting client process {index}"))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().expect("piped");
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((index, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((index, None));
        });
        children.push(child);
    }
    drop(lines_tx);

    let mut ready: BTreeMap<String, usize> = BTreeMap::new();
    let mut reports: Vec<Option<ChildReport>> = (0..procs).map(|_| None).collect();
    let mut open = procs;
    let mut stopping = false;
    let stop = |stdins: &mut Vec<Option<ChildStdin>>, children: &[Child]| {
        for child in children {
            // SAFETY: kill only sends a signal to a child we started and
            // have not yet waited for (its pid cannot have been reused).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
        // EOF releases a child waiting at a barrier.
        stdins.iter_mut().for_each(|s| drop(s.take()));
    };
    while open > 0 {
        if !stopping && interrupted.load(Ordering::SeqCst) {
            stopping = true;
            stop(&mut stdins, &children);
        }
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok((index, Some(line))) => {
                if let Some(phase) = line.strip_prefix("ready ") {
                    let count = ready.entry(phase.to_string()).or_default();
                    *count += 1;
                    if *count == procs {
                        for stdin in stdins.iter_mut().flatten() {
                            // A child that is gone is noticed at its EOF.
                            let _ = writeln!(stdin, "go {phase}").and_then(|()| stdin.flush());
                        }
                    }
                } else if let Some(json) = line.strip_prefix("summary ") {
                    reports[index] = Some(
                        serde_json::from_str(json)
                            .with_context(|| format!("the summary of client process {index}"))?,
                    );
                } else {
                    eprintln!("[p{index}] {line}");
                }
            }
            Ok((index, None)) => {
                open -= 1;
                if reports[index].is_none() && !stopping {
                    eprintln!("client process {index} ended without a summary: stopping the others");
                    stopping = true;
                    stop(&mut stdins, &children);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let mut failed = Vec::new();
    for (index, child) in children.iter_mut().enumerate() {
        let status = child.wait().context("waiting for a client process")?;
        // Exit code 2 is a summary with errors: those count in the merge.
        if reports[index].is_none() || !(status.success() || status.code() == Some(2)) {
            failed.push(format!("process {index}: {status}"));
        }
    }
    let reports: Vec<ChildReport> = reports.into_iter().flatten().collect();
    let mut summary = merge(&reports)?;
    summary.procs = procs as u64;
    // Devices of a failed process count as not connected.
    summary.devices = devices;
    summary.failed_processes.extend(failed);
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.client_cpu_percent_of_one_core =
        100.0 * summary.client_cpu_seconds / summary.wall_seconds.max(1e-9);
    summary.interrupted |= interrupted.load(Ordering::SeqCst);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for count in 1..=5 {
            let shares: Vec<Share> = (0..count).map(|index| Share { index, count }).collect();
            for total in [0usize, 1, 7, 1000, 19_001] {
                let mut next = 0;
                for s in &shares {
                    let (first, n) = s.devices(total);
                    assert_eq!(first, next, "{s:?} of {total}");
                    next += n;
                }
                assert_eq!(next, total);
                assert_eq!(
                    shares.iter().map(|s| s.of(total as u64)).sum::<u64>(),
                    total as u64
                );
            }
        }
        let last = Share { index: 2, count: 3 };
        assert_eq!(last.of(1), 0);
        assert_eq!(last.of_bound(1), 1, "a bound never turns into no bound");
        assert_eq!(last.of_bound(0), 0);
        assert!(Share::WHOLE.leads() && !last.leads());
    }

    fn report(connected: u64, values: &[u64], cpu: f64) -> ChildReport {
        let mut h = stats::latency_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        ChildReport {
            summary: Summary {
                devices: connected,
                connected,
                connect_seconds: connected as f64 / 1000.0,
                offered_rate: 500,
                messages_sent: values.len() as u64,
                delivered_total: values.len() as u64,
                acked_total: values.len() as u64,
                delivered_per_sec: 100.0,
                client_cpu_seconds: cpu,
                wall_seconds: 3.0,
                server_rss_before_kib: Some(1000),
                server_rss_after_kib: Some(3000),
                http_errors: [("push_503".to_string(), 1)].into(),
                ..Default::default()
            },
            latency: histogram_counts(&h),
            api_latency: Vec::new(),
        }
    }

    #[test]
    fn merge_sums_counts_and_merges_histograms_exactly() {
        let a: Vec<u64> = (1..=1000).collect();
        let b: Vec<u64> = (1..=1000).map(|v| v * 997).collect();
        let reports = [report(2000, &a, 1.5), report(1000, &b, 0.5)];
        // The same samples in one histogram: what one process would report.
        let mut whole = stats::latency_histogram();
        for &v in a.iter().chain(&b) {
            whole.record(v).unwrap();
        }
        let s = merge(&reports).unwrap();
        assert_eq!(s.procs, 2);
        assert_eq!((s.devices, s.connected), (3000, 3000));
        assert_eq!(s.connect_seconds, 2.0, "the slowest process");
        assert_eq!(s.connect_rate, 1500.0);
        assert_eq!(s.offered_rate, 1000);
        assert_eq!(
            (s.messages_sent, s.delivered_total, s.acked_total),
            (2000, 2000, 2000)
        );
        assert_eq!(s.delivered_per_sec, 200.0);
        assert_eq!(s.http_errors["push_503"], 2);
        assert_eq!(s.client_cpu_seconds, 2.0);
        assert_eq!(s.client_cpu_percent_of_one_core, 100.0 * 2.0 / 3.0);
        // The server's RSS is read once (by the first process), per
        // connection over all of them.
        assert_eq!(s.server_rss_per_connection_bytes, Some(2000.0 * 1024.0 / 3000.0));
        let exact = Latency::from(&whole);
        assert_eq!(
            (
                s.latency.samples,
                s.latency.p50_us,
                s.latency.p99_us,
                s.latency.p999_us,
                s.latency.max_us
            ),
            (
                exact.samples,
                exact.p50_us,
                exact.p99_us,
                exact.p999_us,
                exact.max_us
            )
        );
        assert!(merge(&[]).is_err());
    }

    #[test]
    fn merge_of_storms_and_offline_catch_up() {
        let child = |welcomes: u64, catch_up: Option<f64>| ChildReport {
            summary: Summary {
                connected: welcomes,
                storm: Some(stats::Storm {
                    seconds: 5.0,
                    welcomes,
                    welcomes_per_sec: welcomes as f64 / 5.0,
                    max_pending_connects: 10,
                    ..Default::default()
                }),
                offline_broadcasts: Some(stats::OfflineBroadcasts {
                    offline_devices: 10,
                    broadcasts: 3,
                    catch_up_requested: true,
                    catch_up_seconds: catch_up,
                    caught_up_devices: 10,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = merge(&[child(100, Some(1.0)), child(50, Some(2.0))]).unwrap();
        let storm = s.storm.as_ref().unwrap();
        assert_eq!(
            (storm.welcomes, storm.welcomes_per_sec, storm.max_pending_connects),
            (150, 30.0, 20)
        );
        assert_eq!(s.connect_rate, 30.0);
        let o = s.offline_broadcasts.as_ref().unwrap();
        assert_eq!(
            (o.offline_devices, o.broadcasts, o.caught_up_devices),
            (20, 3, 20)
        );
        assert_eq!(
            o.catch_up_seconds,
            Some(2.0),
            "caught up when the last process did"
        );
        let s = merge(&[child(100, Some(1.0)), child(50, None)]).unwrap();
        assert_eq!(s.offline_broadcasts.as_ref().unwrap().catch_up_seconds, None);
        assert!(s.errors() > 0);
    }

    #[test]
    fn a_child_report_survives_its_json_line() {
        let r = report(10, &[5, 50, 500_000], 0.25);
        let back: ChildReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let s = merge(&[back]).unwrap();
        assert_eq!(s.latency.samples, 3);
        assert_eq!(
            s.latency.max_us,
            Latency::from(&{
                let mut h = stats::latency_histogram();
                h.record(500_000).unwrap();
                h
            })
            .max_us
        );
    }
}
