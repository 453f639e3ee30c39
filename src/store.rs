//! A shard's durability: its log, recovery into the delivery core on start,
//! the group commit the shard loop runs once per iteration, compaction by
//! checkpoint, the storage health the API consults before accepting, and the
//! log's metrics. The core frames the records; this file decides when they
//! reach the disk and what a failure means.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use metrics::{Counter, Gauge, Histogram};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::delivery::DeliveryCore;
use crate::log::{Log, LogError, SegmentReader};
use crate::message::{unix_ms, StorageRefusal};

/// How long after a disk-full error the API refuses pushes without trying;
/// after it the next push tries the disk again.
const FULL_BACKOFF_MS: u64 = 1000;
/// Checkpoint chunks are written (not yet fsynced) once this much is queued.
const CHECKPOINT_WRITE_BYTES: usize = 8 << 20;

/// Shared by every shard and the API: whether pushes can be made durable.
#[derive(Default)]
pub struct StorageHealth {
    failed: AtomicBool,
    full_until_ms: AtomicU64,
}

impl StorageHealth {
    /// Why a push would be refused now, if it would.
    pub fn refusal(&self) -> Option<StorageRefusal> {
        if self.failed.load(Ordering::Relaxed) {
            return Some(StorageRefusal::Failed);
        }
        let until = self.full_until_ms.load(Ordering::Relaxed);
        (until != 0 && unix_ms() < until).then_some(StorageRefusal::Full)
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn set_full(&self) {
        self.full_until_ms
            .store(unix_ms() + FULL_BACKOFF_MS, Ordering::Relaxed);
    }

    fn set_ok(&self) {
        if self.full_until_ms.load(Ordering::Relaxed) != 0 {
            self.full_until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The data directory, locked for this process.
pub struct DataDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl DataDir {
    /// Creates and locks `path`. A second daemon on the same directory gets
    /// an error naming it; the lock goes with the process, even on kill -9.
    /// The shard count is recorded, because tokens are assigned to shards by
    /// hash and a different count would put them in the wrong shard.
    pub fn open(path: &Path, shards: usize) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating the data directory {}", path.display()))?;
        let lock_path = path.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if let Err(e) = lock.try_lock() {
            if let std::fs::TryLockError::Error(e) = e {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
            anyhow::bail!(
                "{} is in use by another ringpush process (its LOCK is held); give each daemon its own durability.data_dir",
                path.display()
            );
        }
        let meta = path.join("SHARDS");
        match std::fs::read_to_string(&meta) {
            Ok(text) => {
                let recorded: usize = text
                    .trim()
                    .parse()
                    .with_context(|| format!("{} does not hold a shard count", meta.display()))?;
                if recorded != shards {
                    anyhow::bail!(
                        "{} was written by {recorded} shards and this configuration runs {shards}; set `shards = {recorded}` (tokens are owned by shard, so the count cannot change under existing data)",
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&meta, format!("{shards}\n"))
                    .with_context(|| format!("writing {}", meta.display()))?;
                std::fs::File::open(path)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("syncing {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", meta.display())),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct StoreMetrics {
    bytes: Counter,
    fsyncs: Counter,
    fsync_seconds: Histogram,
    records_per_fsync: Histogram,
    segments: Gauge,
    refused_full: Counter,
    refused_failed: Counter,
    checkpoints: Counter,
    checkpoint_seconds: Histogram,
}

impl StoreMetrics {
    fn new(shard: usize) -> Self {
        let shard = shard.to_string();
        Self {
            bytes: metrics::counter!("ringpush_log_bytes_written_total", "shard" => shard.clone()),
            fsyncs: metrics::counter!("ringpush_log_fsyncs_total", "shard" => shard.clone()),
            fsync_seconds: metrics::histogram!("ringpush_log_fsync_seconds", "shard" => shard.clone()),
            records_per_fsync: metrics::histogram!("ringpush_log_records_per_fsync", "shard" => shard.clone()),
            segments: metrics::gauge!("ringpush_log_segments", "shard" => shard.clone()),
            refused_full: metrics::counter!("ringpush_log_commits_refused_total", "shard" => shard.clone(), "reason" => "disk_full"),
            refused_failed: metrics::counter!("ringpush_log_commits_refused_total", "shard" => shard.clone(), "reason" => "failed"),
            checkpoints: metrics::counter!("ringpush_log_checkpoints_total", "shard" => shard.clone()),
            checkpoint_seconds: metrics::histogram!("ringpush_log_checkpoint_seconds", "shard" => shard),
        }
    }
}

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ringpush_log_bytes_written_total",
        Unit::Bytes,
        "Bytes appended to the message log"
    );
    describe_counter!("ringpush_log_fsyncs_total", "fsyncs of the message log");
    describe_histogram!(
        "ringpush_log_fsync_seconds",
        Unit::Seconds,
        "Time of one log fsync"
    );
    describe_histogram!(
        "ringpush_log_records_per_fsync",
        "Records made durable by one fsync (group commit size)"
    );
    describe_gauge!("ringpush_log_segments", "Live log segment files");
    describe_counter!(
        "ringpush_log_commits_refused_total",
        "Log commits that failed (disk_full: retried later; failed: fsync error, the shard refuses pushes until restart)"
    );
    describe_counter!(
        "ringpush_log_checkpoints_total",
        "Checkpoints written (live state restated, older segments deleted)"
    );
    describe_histogram!(
        "ringpush_log_checkpoint_seconds",
        Unit::Seconds,
        "Time to write a checkpoint"
    );
    describe_gauge!(
        "ringpush_log_recovery_seconds",
        Unit::Seconds,
        "How long the last start spent replaying the log"
    );
    describe_counter!(
        "ringpush_log_records_replayed_total",
        "Log records replayed at start"
    );
}

pub struct Store {
    shard: usize,
    log: Log,
    health: Arc<StorageHealth>,
    compact_after: u64,
    since_checkpoint: u64,
    last_checkpoint: u64,
    metrics: StoreMetrics,
    /// Where receipts of committed acks go; `None` drops them (no app has
    /// a receipt URL, or a test).
    receipts: Option<crate::receipts::ReceiptQueue>,
}

/// What recovery found, for the start-up log line.
pub struct Recovered {
    pub records: u64,
    pub seconds: f64,
}

impl Store {
    /// Opens shard `shard`'s log and replays it into `core`.
    pub fn recover(
        config: &Config,
        shard: usize,
        core: &mut DeliveryCore,
        health: Arc<StorageHealth>,
        now: Instant,
    ) -> anyhow::Result<(Store, Recovered)> {
        let started = Instant::now();
        let log_config = config.durability.log_config(shard);
        let dir = log_config.dir.clone();
        // Frames for offline devices are read back from the log, so replay
        // leaves them there too.
        core.set_log_reader(Box::new(SegmentReader::new(&dir)));
        let mut records = 0u64;
        let mut bytes = 0u64;
        let mut bad: Option<String> = None;
        let log = Log::open_with(log_config, &mut |seq, at, kind, payload| {
            if bad.is_some() {
                return;
            }
            records += 1;
            bytes += payload.len() as u64 + 9;
            if let Err(e) = core.replay(kind, payload, Some(at), now) {
                bad = Some(format!("record {seq}: {e}"));
            }
        })
        .with_context(|| format!("recovering the log of shard {shard}"))?;
        if let Some(reason) = bad {
            anyhow::bail!(
                "{}: {reason}; the log was written by a newer ringpush or is damaged",
                dir.display()
            );
        }
        core.finish_replay();
        let seconds = started.elapsed().as_secs_f64();
        let shard_label = shard.to_string();
        metrics::gauge!("ringpush_log_recovery_seconds", "shard" => shard_label.clone()).set(seconds);
        metrics::counter!("ringpush_log_records_replayed_total", "shard" => shard_label).increment(records);
        let metrics = StoreMetrics::new(shard);
        metrics.segments.set(log.live_segments() as f64);
        let store = Store {
            shard,
            log,
            health,
            compact_after: config.durability.compact_after_bytes,
            // What was replayed counts toward the next compaction, so a long
            // log is compacted soon after start.
            since_checkpoint: bytes,
            last_checkpoint: 0,
            metrics,
            receipts: None,
        };
        Ok((store, Recovered { records, seconds }))
    }

    /// Group commit: writes what the core journaled since the last call,
    /// makes it durable per the fsync policy, and tells the core, which
    /// answers the pushes that waited. Also runs a due interval fsync and,
    /// when enough was logged, a checkpoint.
    pub fn commit(&mut self, core: &mut DeliveryCore, now: Instant) {
        core.flush_stats(now);
        if !core.journal_pending() {
            if self.log.fsync_due_at().is_some_and(|at| at <= now) {
                let result = self.log.commit().map(|stats| self.count(&stats));
                if let Err(e) = result {
                    self.refused(&e);
                }
            }
            return;
        }
        let (framed, records) = core.journal();
        let bytes = framed.len() as u64;
        let at = self.log.append_position();
        self.log.append_framed(framed, records);
        let outcome = match self.log.commit() {
            Ok(stats) => {
                self.count(&stats);
                self.metrics.segments.set(self.log.live_segments() as f64);
                self.health.set_ok();
                self.since_checkpoint += bytes;
                Ok(Some(at))
            }
            Err(e) => Err(self.refused(&e)),
        };
        core.journal_done(outcome, now);
        // After the commit, so a receiver never hears of an ack the log
        // does not hold; handing off never blocks this loop.
        match &self.receipts {
            Some(queue) => queue.hand_off(core.take_receipts(), now),
            None => drop(core.take_receipts()),
        }
        if outcome.is_ok() && self.since_checkpoint >= self.compact_after.max(2 * self.last_checkpoint) {
            self.checkpoint(core);
        }
    }

    /// On stop: with `fsync = "interval"`, fsyncs what the last interval
    /// has not, so an orderly stop followed by a power loss loses nothing.
    /// (`always` has nothing unsynced; `never` means never.)
    pub fn sync_on_stop(&mut self) {
        if self.log.fsync_due_at().is_some() {
            match self.log.commit_durably() {
                Ok(stats) => self.count(&stats),
                Err(e) => {
                    self.refused(&e);
                }
            }
        }
    }

    /// Sends the receipts of acks this shard commits to `queue`.
    pub fn set_receipts(&mut self, queue: crate::receipts::ReceiptQueue) {
        self.receipts = Some(queue);
    }

    /// When `commit` must run even without new records (interval fsync).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.log.fsync_due_at()
    }

    fn count(&self, stats: &crate::log::CommitStats) {
        self.metrics.bytes.increment(stats.bytes as u64);
        if stats.fsynced {
            self.metrics.fsyncs.increment(1);
            self.metrics.fsync_seconds.record(stats.fsync_time.as_secs_f64());
            self.metrics.records_per_fsync.record(stats.records as f64);
        }
    }

    fn refused(&self, e: &LogError) -> StorageRefusal {
        match e {
            LogError::DiskFull { .. } => {
                if self.health.refusal().is_none() {
                    warn!(shard = self.shard, error = %e, "disk full: refusing pushes until space is back");
                }
                self.metrics.refused_full.increment(1);
                self.health.set_full();
                StorageRefusal::Full
            }
            _ => {
                if !self.health.is_failed() {
                    error!(shard = self.shard, error = %e, "the message log failed; refusing pushes until restart");
                }
                self.metrics.refused_failed.increment(1);
                self.health.set_failed();
                StorageRefusal::Failed
            }
        }
    }

    /// Restates the live state at the start of a fresh segment, makes it
    /// durable, then deletes every older segment. Runs on the shard thread:
    /// its cost is proportional to the live state and is paid once per
    /// `compact_after_bytes` (and at least twice the live size) of logging.
    fn checkpoint(&mut self, core: &mut DeliveryCore) {
        let started = Instant::now();
        let log = &mut self.log;
        let mut written = 0u64;
        let result = (|| -> Result<usize, LogError> {
            log.roll_now()?;
            let first = log.next_seq();
            let checkpoint = core.write_checkpoint(|chunk, records| {
                let at = log.append_position();
                log.append_framed(chunk, records);
                written += chunk.len() as u64;
                if log.pending_bytes() >= CHECKPOINT_WRITE_BYTES {
                    log.commit()?;
                }
                Ok::<_, LogError>(Some(at))
            })?;
            log.commit_durably()?;
            core.checkpoint_done(checkpoint, first);
            log.delete_before(first)
        })();
        self.since_checkpoint = 0;
        match result {
            Ok(deleted) => {
                self.last_checkpoint = written;
                self.metrics.checkpoints.increment(1);
                self.metrics
                    .checkpoint_seconds
                    .record(started.elapsed().as_secs_f64());
                self.metrics.segments.set(self.log.live_segments() as f64);
                info!(
                    shard = self.shard,
                    bytes = written,
                    segments_deleted = deleted,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(e) => {
                // The older segments are intact; a partial checkpoint
                // replays harmlessly. Try again after more logging.
                warn!(shard = self.shard, error = %e, "checkpoint failed");
                if !matches!(e, LogError::DiskFull { .. } | LogError::Unreadable(_)) {
                    self.refused(&e);
                }
            }
        }
    }
}

/// `ringpush repair`: truncates each shard's log at its first damaged
/// record; returns (shard directory, records kept) for each.
pub fn repair(config: &Config) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let _dir = DataDir::open(&config.durability.data_dir, config.shard_count())?;
    let mut kept = Vec::new();
    for shard in 0..config.shard_count() {
        let log_config = config.durability.log_config(shard);
        let dir = log_config.dir.clone();
        let n = Log::repair(log_config).with_context(|| format!("repairing {}", dir.display()))?;
        kept.push((dir, n));
    }
    Ok(kept)
}
