//! The floor's control socket and the job its workers share. A job is a
//! push schedule (message k due at start + k / rate, split over the workers
//! by k mod workers) or a broadcast (one frame to every connection). The
//! control connection gets progress lines while a job runs. A frame's
//! msgKey carries the time it is written (as the bench stamps a ringpush
//! push when it sends the request); lateness shows as BEHIND.
//!
//! Protocol, one command per connection:
//! `push RATE MILLIS PAYLOAD_BYTES TTL_SECS` → `sent N` every 100 ms, then
//! `done SENT ACKED BEHIND`; `broadcast PAYLOAD_BYTES TTL_SECS SEQ` →
//! `done SENT ACKED BEHIND`. ACKED counts the ids devices acknowledged
//! while the job ran; BEHIND the messages written more than 10 ms late.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::frames::PushTemplate;

pub enum JobKind {
    Push {
        /// Messages per second over all workers.
        rate: f64,
        until: Instant,
    },
    Broadcast {
        seq: u64,
    },
}

pub struct Job {
    pub kind: JobKind,
    pub start: Instant,
    /// `start` in unix µs: a broadcast's msgKey stamp.
    pub start_unix_us: u64,
    pub template: PushTemplate,
}

impl Job {
    /// When message `k` of a push job is due.
    pub fn due(&self, rate: f64, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / rate)
    }
}

/// What the control thread and the workers share.
#[derive(Default)]
pub struct Shared {
    pub job: Mutex<Option<Arc<Job>>>,
    /// Bumped when `job` changes; workers compare it each loop.
    pub generation: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub behind: AtomicU64,
    pub connections: AtomicU64,
    /// Workers that finished the current broadcast.
    pub broadcast_done: AtomicU64,
}

impl Shared {
    /// The current job if it changed since `seen`.
    pub fn job_since(&self, seen: &mut u64) -> Option<Option<Arc<Job>>> {
        let now = self.generation.load(Ordering::Acquire);
        (now != *seen).then(|| {
            *seen = now;
            self.job.lock().clone()
        })
    }

    fn start(&self, job: Job) {
        *self.job.lock() = Some(Arc::new(job));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn clear(&self) {
        *self.job.lock() = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Serves control connections one at a time, forever.
pub fn serve(listener: TcpListener, shared: Arc<Shared>, workers: u64) {
    for stream in listener.incoming().flatten() {
        if let Err(e) = handle(stream, &shared, workers) {
            eprintln!("ringpush-floor: control: {e}");
        }
        shared.clear();
    }
}

fn handle(stream: TcpStream, shared: &Shared, workers: u64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad command {line:?}"));
    let number = |s: &str| s.parse::<f64>().map_err(|_| bad());
    let (sent0, acked0, behind0) = (
        shared.sent.load(Ordering::Acquire),
        shared.acked.load(Ordering::Acquire),
        shared.behind.load(Ordering::Acquire),
    );
    let now_us = unix_micros();
    match fields.as_slice() {
        ["push", rate, millis, payload, ttl] => {
            let (rate, millis) = (number(rate)?, number(millis)?);
            if rate <= 0.0 {
                return Err(bad());
            }
            let start = Instant::now();
            let until = start + Duration::from_millis(millis as u64);
            shared.start(Job {
                kind: JobKind::Push { rate, until },
                start,
                start_unix_us: now_us,
                template: PushTemplate::new(number(payload)? as usize, number(ttl)? as u64, now_us / 1000),
            });
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
                writeln!(out, "sent {}", shared.sent.load(Ordering::Acquire) - sent0)?;
            }
            // The last acknowledgements are on their way.
            std::thread::sleep(Duration::from_millis(300));
        }
        ["broadcast", payload, ttl, seq] => {
            shared.broadcast_done.store(0, Ordering::Release);
            shared.start(Job {
                kind: JobKind::Broadcast {
                    seq: number(seq)? as u64,
                },
                start: Instant::now(),
                start_unix_us: now_us,
                template: PushTemplate::new(number(payload)? as usize, number(ttl)? as u64, now_us / 1000),
            });
            let give_up = Instant::now() + Duration::from_secs(10);
            while shared.broadcast_done.load(Ordering::Acquire) < workers && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        _ => return Err(bad()),
    }
    shared.clear();
    writeln!(
        out,
        "done {} {} {}",
        shared.sent.load(Ordering::Acquire) - sent0,
        shared.acked.load(Ordering::Acquire) - acked0,
        shared.behind.load(Ordering::Acquire) - behind0
    )
}
