//! A worker's share of the current job: which push messages are due now
//! (message k belongs to worker k mod workers) and a cheap random choice of
//! the connection each goes to. Backend-independent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::{Job, JobKind, Shared};

/// A message written later than this after its due time counts as behind.
const LATE: Duration = Duration::from_millis(10);
/// The shortest I/O wait of a worker: both backends write what is due
/// once a millisecond (epoll_wait's granularity; waking io_uring more often
/// only costs CPU, as frames carry the time they are written).
const TICK: Duration = Duration::from_millis(1);
/// The longest I/O wait of a worker.
const IDLE_WAIT: Duration = Duration::from_millis(10);

pub struct Schedule {
    worker: u64,
    workers: u64,
    generation: u64,
    job: Option<Arc<Job>>,
    next_k: u64,
    rng: u64,
}

impl Schedule {
    pub fn new(worker: u64, workers: u64) -> Self {
        Self {
            worker,
            workers,
            generation: 0,
            job: None,
            next_k: worker,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (worker + 1),
        }
    }

    /// Picks up a new job; returns it when it is a broadcast this worker
    /// must now send (once).
    pub fn refresh(&mut self, shared: &Shared) -> Option<Arc<Job>> {
        let job = shared.job_since(&mut self.generation)?;
        self.job = job;
        self.next_k = self.worker;
        match &self.job {
            Some(job) if matches!(job.kind, JobKind::Broadcast { .. }) => self.job.take(),
            _ => None,
        }
    }

    /// How long the worker may wait for I/O: until this worker's next
    /// message is due, between `TICK` and `IDLE_WAIT` (so a new job starts
    /// promptly).
    pub fn wait(&self, now: Instant) -> Duration {
        match self.job.as_deref() {
            Some(
                job @ Job {
                    kind: JobKind::Push { rate, .. },
                    ..
                },
            ) => job
                .due(*rate, self.next_k)
                .saturating_duration_since(now)
                .clamp(TICK, IDLE_WAIT),
            _ => IDLE_WAIT,
        }
    }

    /// The sequence number of the next message due by `now`, counting it
    /// behind when late.
    pub fn next_due(&mut self, now: Instant, shared: &Shared) -> Option<u64> {
        let job = self.job.as_ref()?;
        let JobKind::Push { rate, until } = job.kind else {
            return None;
        };
        let due = job.due(rate, self.next_k);
        if due > now || due >= until {
            return None;
        }
        if now - due > LATE {
            shared.behind.fetch_add(1, Ordering::Relaxed);
        }
        let k = self.next_k;
        self.next_k += self.workers;
        Some(k)
    }

    pub fn job(&self) -> Option<&Arc<Job>> {
        self.job.as_ref()
    }

    /// A random index below `n` (xorshift; n > 0).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }
}
