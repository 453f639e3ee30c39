//! The durable log of one shard: append-only segment files of CRC-checked
//! records, written in groups with one fsync per group (group commit), and
//! recovered on start. It owns bytes on disk and nothing about what the
//! records mean; the delivery core decides what to append and replays what
//! `open` returns.
//!
//! Record layout (little-endian): `len: u32` (of kind + payload),
//! `crc32: u32` (of kind + payload), `kind: u8`, `payload`. Segments are
//! named by the sequence number of their first record, zero-padded so that
//! names sort in log order.
//!
//! Recovery reads every segment in order. A record that fails its checks
//! with no valid record after it in the last segment is a torn tail (a crash
//! mid-write): the segment is truncated to the last valid record. Anything
//! else that fails its checks is corruption: `open` refuses with the file and
//! offset, and only `repair` (an operator's decision) truncates there.
//!
//! After a failed fsync the log refuses every later commit: Linux may have
//! dropped the dirty pages, so retrying could report durable what is not.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HEADER: usize = 9;
const SUFFIX: &str = ".log";
/// Largest record accepted; a length field above it is corruption.
pub const MAX_RECORD: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync every commit before it returns (the default).
    Always,
    /// fsync at most this often; a crash loses at most that window.
    Interval(Duration),
    /// Never fsync: for tests and benchmarks only.
    Never,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "corrupt log record in {path} at offset {offset}: {reason} (run `ringpush repair` to truncate there)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the disk is full ({path}); nothing was written, retry when space is back")]
    DiskFull { path: PathBuf },
    #[error("an earlier fsync failed; the log accepts no more writes until restart")]
    Failed,
    #[error("a record could not be read back: {0}")]
    Unreadable(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a record starts: its segment (named by the sequence number of the
/// segment's first record) and the byte offset of its header there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// A whole record in the log, header included: enough to read it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub segment: u64,
    pub offset: u32,
    pub len: u32,
}

impl Span {
    /// The record of `len` bytes at `at`. Offsets fit in 32 bits because
    /// the config bounds `segment_bytes` to 1 GiB and a segment overshoots
    /// it by at most one commit; records are at most `MAX_RECORD`.
    pub fn at(at: Position, len: usize) -> Span {
        Span {
            segment: at.segment,
            offset: u32::try_from(at.offset).expect("segment offsets stay below 4 GiB"),
            len: u32::try_from(len).expect("records are at most MAX_RECORD"),
        }
    }
}

/// One recovered record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// What a commit did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommitStats {
    pub records: usize,
    pub bytes: usize,
    pub fsynced: bool,
    pub fsync_time: Duration,
}

pub struct Log {
    config: LogConfig,
    segment: File,
    segment_path: PathBuf,
    segment_len: u64,
    /// First sequence number of each live segment, oldest first.
    segments: Vec<u64>,
    next_seq: u64,
    pending: Vec<u8>,
    pending_records: usize,
    last_fsync: Instant,
    unsynced: bool,
    failed: bool,
    /// `RINGPUSH_FAULT_DIR`, read once at open: fault injection for tests.
    faults: Option<PathBuf>,
}

/// Names the directory whose marker files inject write and fsync faults.
pub const FAULT_DIR_ENV: &str = "RINGPUSH_FAULT_DIR";

/// Appends one framed record (length, CRC, kind, payload) to `out`. Pure, so
/// the delivery core can frame records on its own thread without the log.
pub fn frame_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    frame_record_with(out, kind, |out| out.extend_from_slice(payload));
}

/// Appends one record whose payload `write_payload` encodes straight into
/// `out` (no intermediate buffer), then fills in its length and CRC.
pub fn frame_record_with(out: &mut Vec<u8>, kind: u8, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    write_payload(out);
    let len = out.len() - start - 8;
    assert!(len <= MAX_RECORD + 1, "record of {len} bytes");
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((seq, entry.path()));
    }
    segments.sort_unstable();
    Ok(segments)
}

/// A valid record found at the front of a byte slice.
struct ParsedRecord<'a> {
    kind: u8,
    payload: &'a [u8],
    /// Bytes the record occupies, header included.
    len: usize,
}

/// Parses the record at the front of `bytes`: `Ok(None)` when `bytes` ends
/// inside it, `Err` when it is invalid.
fn parse_record(bytes: &[u8]) -> Result<Option<ParsedRecord<'_>>, String> {
    if bytes.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD + 1 {
        return Err(format!("record length {len}"));
    }
    if bytes.len() < 8 + len {
        return Ok(None);
    }
    let body = &bytes[8..8 + len];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(Some(ParsedRecord {
        kind: body[0],
        payload: &body[1..],
        len: 8 + len,
    }))
}

/// Checks that `bytes` is exactly one valid record; returns its kind and
/// where its payload is.
pub fn check_record(bytes: &[u8]) -> Result<(u8, std::ops::Range<usize>), String> {
    match parse_record(bytes)? {
        Some(record) if record.len == bytes.len() => Ok((record.kind, HEADER..bytes.len())),
        _ => Err(format!("not a record of {} bytes", bytes.len())),
    }
}

/// Where reading a segment stopped.
enum SegmentEnd {
    Clean,
    /// Invalid or partial bytes from `offset` with no valid record after
    /// them: a torn write.
    Torn {
        offset: u64,
    },
    Corrupt {
        offset: u64,
        reason: String,
    },
}

/// Calls `visit` for each valid record of a segment, in order; returns where
/// reading stopped and the sequence number after the last valid record.
fn read_segment(bytes: &[u8], first_seq: u64, visit: &mut Visitor<'_>) -> (SegmentEnd, u64) {
    let mut at = 0usize;
    let mut seq = first_seq;
    while at < bytes.len() {
        match parse_record(&bytes[at..]) {
            Ok(Some(record)) => {
                let position = Position {
                    segment: first_seq,
                    offset: at as u64,
                };
                visit(seq, position, record.kind, record.payload);
                seq += 1;
                at += record.len;
            }
            Ok(None) => return (SegmentEnd::Torn { offset: at as u64 }, seq),
            Err(reason) => {
                // A valid record later means this is damage in the middle,
                // not the remains of an interrupted final write.
                let later = (at + 1..bytes.len()).any(|i| matches!(parse_record(&bytes[i..]), Ok(Some(_))));
                let end = if later {
                    SegmentEnd::Corrupt {
                        offset: at as u64,
                        reason,
                    }
                } else {
                    SegmentEnd::Torn { offset: at as u64 }
                };
                return (end, seq);
            }
        }
    }
    (SegmentEnd::Clean, seq)
}

/// Receives each recovered record: sequence number, where it starts, kind,
/// payload (the record's length is the payload's plus `HEADER`).
pub type Visitor<'a> = dyn FnMut(u64, Position, u8, &[u8]) + 'a;

/// Bytes a record's header takes before its kind and payload.
pub const RECORD_HEADER: usize = HEADER;

impl Log {
    /// Opens (creating if needed) the log in `config.dir`, recovers it, and
    /// returns it with every record in order.
    pub fn open(config: LogConfig) -> Result<(Log, Vec<Record>), LogError> {
        let mut records = Vec::new();
        let log = Self::open_with(config, &mut |seq, _, kind, payload| {
            records.push(Record {
                seq,
                kind,
                payload: payload.to_vec(),
            })
        })?;
        Ok((log, records))
    }

    /// Opens and recovers the log, handing each record to `visit` in order
    /// without keeping more than one segment in memory.
    pub fn open_with(config: LogConfig, visit: &mut Visitor<'_>) -> Result<Log, LogError> {
        Self::open_inner(config, false, visit)
    }

    fn open_inner(config: LogConfig, repair: bool, visit: &mut Visitor<'_>) -> Result<Log, LogError> {
        std::fs::create_dir_all(&config.dir).map_err(io_error(&config.dir))?;
        let found = list_segments(&config.dir)?;
        let mut next_seq: Option<u64> = None;
        let mut segments = Vec::new();
        let count = found.len();
        // One buffer for every segment: recovery holds one segment at a time.
        let mut bytes = Vec::new();
        for (i, (first_seq, path)) in found.into_iter().enumerate() {
            bytes.clear();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_error(&path))?;
            let last = i + 1 == count;
            let expected = next_seq.unwrap_or(first_seq);
            if first_seq != expected {
                return Err(LogError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!("segment starts at record {first_seq}, expected {expected}"),
                });
            }
            let (end, after) = read_segment(&bytes, first_seq, visit);
            next_seq = Some(after);
            let cut = match end {
                SegmentEnd::Clean => None,
                SegmentEnd::Torn { offset } if last => Some(offset),
                SegmentEnd::Torn { offset } | SegmentEnd::Corrupt { offset, .. } if repair => Some(offset),
                SegmentEnd::Torn { offset } => {
                    return Err(LogError::Corrupt {
                        path,
                        offset,
                        reason: "incomplete record before the last segment".into(),
                    })
                }
                SegmentEnd::Corrupt { offset, reason } => {
                    return Err(LogError::Corrupt { path, offset, reason })
                }
            };
            if let Some(offset) = cut {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(offset).map_err(io_error(&path))?;
                file.sync_all().map_err(io_error(&path))?;
                segments.push(first_seq);
                if !last {
                    // Repair: everything after the damage goes.
                    for (_, later) in list_segments(&config.dir)?
                        .into_iter()
                        .filter(|(s, _)| *s > first_seq)
                    {
                        std::fs::remove_file(&later).map_err(io_error(&later))?;
                    }
                    break;
                }
            } else {
                segments.push(first_seq);
            }
        }
        let next_seq = next_seq.unwrap_or(1);
        if segments.is_empty() {
            segments.push(next_seq);
        }
        let first = *segments.last().expect("at least one segment");
        let segment_path = config.dir.join(segment_name(first));
        let mut segment = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&segment_path)
            .map_err(io_error(&segment_path))?;
        let segment_len = segment.seek(SeekFrom::End(0)).map_err(io_error(&segment_path))?;
        sync_dir(&config.dir)?;
        let faults = std::env::var_os(FAULT_DIR_ENV).map(PathBuf::from);
        Ok(Log {
            config,
            segment,
            segment_path,
            segment_len,
            segments,
            next_seq,
            pending: Vec::new(),
            pending_records: 0,
            last_fsync: Instant::now(),
            unsynced: false,
            failed: false,
            faults,
        })
    }

    /// Truncates the log at its first invalid record wherever it is, dropping
    /// everything after it; returns how many records remain.
    pub fn repair(config: LogConfig) -> Result<usize, LogError> {
        let mut kept = 0;
        Self::open_inner(config, true, &mut |_, _, _, _| kept += 1)?;
        Ok(kept)
    }

    /// Queues a record for the next commit and returns its sequence number.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> u64 {
        let mut framed = std::mem::take(&mut self.pending);
        frame_record(&mut framed, kind, payload);
        self.pending = framed;
        self.pending_records += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Queues `count` records already framed by `frame_record` (the delivery
    /// core frames them on its own thread); returns the first one's sequence
    /// number.
    pub fn append_framed(&mut self, framed: &[u8], count: usize) -> u64 {
        self.pending.extend_from_slice(framed);
        self.pending_records += count;
        let seq = self.next_seq;
        self.next_seq += count as u64;
        seq
    }

    /// Where the next appended record will start once committed. Valid
    /// until the next commit or roll: a commit writes everything queued into
    /// the current segment before it may start a new one.
    pub fn append_position(&self) -> Position {
        Position {
            segment: *self.segments.last().expect("at least one segment"),
            offset: self.segment_len + self.pending.len() as u64,
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes the queued records and makes them durable per the fsync
    /// policy. On `DiskFull` nothing was kept: the queued records are
    /// discarded (their sequence numbers are not reused) and the caller
    /// withdraws what they stood for. On any fsync error the log is failed.
    pub fn commit(&mut self) -> Result<CommitStats, LogError> {
        self.commit_inner(false)
    }

    /// Like `commit`, but fsyncs whatever the policy (for checkpoints).
    pub fn commit_durably(&mut self) -> Result<CommitStats, LogError> {
        self.commit_inner(true)
    }

    fn commit_inner(&mut self, force_sync: bool) -> Result<CommitStats, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        let mut stats = CommitStats {
            records: self.pending_records,
            bytes: self.pending.len(),
            ..Default::default()
        };
        if !self.pending.is_empty() {
            let written = match self.injected_fault("enospc", libc::ENOSPC) {
                Some(e) => Err(e),
                None => self.segment.write_all(&self.pending),
            };
            if let Err(e) = written {
                self.pending.clear();
                self.pending_records = 0;
                // Undo a partial write so the file stays a sequence of whole
                // records; if even that fails, stop trusting the file.
                if self.segment.set_len(self.segment_len).is_err() {
                    self.failed = true;
                }
                return Err(if e.raw_os_error() == Some(libc::ENOSPC) {
                    LogError::DiskFull {
                        path: self.segment_path.clone(),
                    }
                } else {
                    io_error(&self.segment_path)(e)
                });
            }
            self.segment_len += self.pending.len() as u64;
            self.pending.clear();
            self.pending_records = 0;
            self.unsynced = true;
        }
        let due = force_sync
            || match self.config.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval(every) => self.last_fsync.elapsed() >= every,
                FsyncPolicy::Never => false,
            };
        if due && self.unsynced {
            let started = Instant::now();
            let synced = match self.injected_fault("fsync-eio", libc::EIO) {
                Some(e) => Err(e),
                None => self.segment.sync_data(),
            };
            if let Err(e) = synced {
                self.failed = true;
                return Err(io_error(&self.segment_path)(e));
            }
            stats.fsynced = true;
            stats.fsync_time = started.elapsed();
            self.last_fsync = Instant::now();
            self.unsynced = false;
        }
        if self.segment_len >= self.config.segment_bytes {
            self.roll()?;
        }
        Ok(stats)
    }

    /// The test hook: with `RINGPUSH_FAULT_DIR` set, the file `name` in that
    /// directory makes the next write or fsync fail with `errno`. Costs
    /// nothing when the variable is unset.
    fn injected_fault(&self, name: &str, errno: i32) -> Option<std::io::Error> {
        let dir = self.faults.as_ref()?;
        dir.join(name)
            .exists()
            .then(|| std::io::Error::from_raw_os_error(errno))
    }

    /// Starts a new segment now if the current one holds any record, so that
    /// what follows (a checkpoint) begins on a segment boundary.
    pub fn roll_now(&mut self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        if self.segment_len > 0 {
            self.roll()?;
        }
        Ok(())
    }

    /// Starts a new segment; the old one is complete and synced.
    fn roll(&mut self) -> Result<(), LogError> {
        if self.unsynced {
            self.segment.sync_data().map_err(|e| {
                self.failed = true;
                io_error(&self.segment_path)(e)
            })?;
            self.unsynced = false;
        }
        let path = self.config.dir.join(segment_name(self.next_seq));
        self.segment = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        self.segment_path = path;
        self.segment_len = 0;
        self.segments.push(self.next_seq);
        sync_dir(&self.config.dir)
    }

    /// Deletes closed segments whose records all precede `seq` (every one
    /// acked, expired or superseded). The segment being written stays.
    pub fn delete_before(&mut self, seq: u64) -> Result<usize, LogError> {
        let mut deleted = 0;
        while self.segments.len() > 1 && self.segments[1] <= seq {
            let first = self.segments.remove(0);
            let path = self.config.dir.join(segment_name(first));
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.config.dir)?;
        }
        Ok(deleted)
    }

    /// With `FsyncPolicy::Interval`, when written records must be fsynced.
    pub fn fsync_due_at(&self) -> Option<Instant> {
        match self.config.fsync {
            FsyncPolicy::Interval(every) if self.unsynced => Some(self.last_fsync + every),
            _ => None,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn live_segments(&self) -> usize {
        self.segments.len()
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

/// Reads single records back from a log directory, checksum verified: the
/// delivery core keeps the frames of messages waiting for offline devices
/// in the log, not in memory. Keeps each segment it reads from open (a
/// handful: the log is compacted) until `forget_before`.
pub struct SegmentReader {
    dir: PathBuf,
    open: Vec<(u64, File)>,
}

impl SegmentReader {
    pub fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            dir: dir.to_path_buf(),
            open: Vec::new(),
        }
    }

    /// Reads the record at `span` into `buf` (replacing its contents) and
    /// returns its kind and the payload's range in `buf`.
    pub fn read(&mut self, span: Span, buf: &mut Vec<u8>) -> Result<(u8, std::ops::Range<usize>), String> {
        use std::os::unix::fs::FileExt;
        let name = segment_name(span.segment);
        let file = match self.open.iter().position(|(s, _)| *s == span.segment) {
            Some(i) => &self.open[i].1,
            None => {
                let file = File::open(self.dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
                self.open.push((span.segment, file));
                &self.open.last().expect("just pushed").1
            }
        };
        buf.clear();
        buf.resize(span.len as usize, 0);
        file.read_exact_at(buf, u64::from(span.offset))
            .map_err(|e| format!("{name} at offset {}: {e}", span.offset))?;
        check_record(buf).map_err(|reason| format!("{name} at offset {}: {reason}", span.offset))
    }

    /// Closes segments numbered below `segment` (deleted by a checkpoint).
    pub fn forget_before(&mut self, segment: u64) {
        self.open.retain(|(s, _)| *s >= segment);
    }
}

/// Makes file creations and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringpush-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn config(dir: &Path, segment_bytes: u64) -> LogConfig {
        LogConfig {
            dir: dir.to_path_buf(),
            segment_bytes,
            fsync: FsyncPolicy::Always,
        }
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("record number {i}").into_bytes()
    }

    fn write(dir: &Path, n: u64, segment_bytes: u64) {
        let (mut log, existing) = Log::open(config(dir, segment_bytes)).unwrap();
        assert!(existing.is_empty());
        for i in 0..n {
            assert_eq!(log.append(7, &payload(i)), i + 1);
            if i % 3 == 2 {
                log.commit().unwrap();
            }
        }
        log.commit().unwrap();
    }

    #[test]
    fn records_read_back_where_append_and_recovery_say_they_are() {
        let d = dir("reader");
        let (mut log, _) = Log::open(config(&d, 200)).unwrap();
        let mut appended = Vec::new();
        for i in 0..30u64 {
            appended.push((log.append_position(), payload(i)));
            log.append(7, &payload(i));
            if i % 4 == 3 {
                log.commit().unwrap();
            }
        }
        log.commit().unwrap();
        let mut reader = SegmentReader::new(&d);
        let mut buf = Vec::new();
        for (at, payload) in &appended {
            let (kind, range) = reader
                .read(Span::at(*at, HEADER + payload.len()), &mut buf)
                .unwrap();
            assert_eq!((kind, &buf[range]), (7, &payload[..]));
        }
        let mut recovered = Vec::new();
        Log::open_with(config(&d, 200), &mut |_, at, _, payload| {
            recovered.push((at, payload.to_vec()))
        })
        .unwrap();
        assert_eq!(recovered, appended);
        // A wrong length or a damaged byte is an error, not wrong bytes.
        let (at, payload) = &appended[5];
        assert!(reader
            .read(Span::at(*at, HEADER + payload.len() + 1), &mut buf)
            .is_err());
        let path = d.join(segment_name(at.segment));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at.offset as usize + HEADER] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = SegmentReader::new(&d)
            .read(Span::at(*at, HEADER + payload.len()), &mut buf)
            .unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let d = dir("order");
        write(&d, 50, 200);
        let (log, records) = Log::open(config(&d, 200)).unwrap();
        assert!(log.live_segments() > 3, "{} segments", log.live_segments());
        assert_eq!(records.len(), 50);
        for (i, r) in records.iter().enumerate() {
            assert_eq!((r.seq, r.kind, &r.payload), (i as u64 + 1, 7, &payload(i as u64)));
        }
        assert_eq!(log.next_seq(), 51);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_byte_offset_of_the_last_records() {
        let d = dir("torn");
        write(&d, 10, 1 << 20);
        let segment = list_segments(&d).unwrap().pop().unwrap().1;
        let full = std::fs::read(&segment).unwrap();
        let record_len = |i: u64| HEADER + payload(i).len();
        let last_three: usize = (7..10).map(record_len).sum();
        let start = full.len() - last_three;
        for cut in start..full.len() {
            std::fs::write(&segment, &full[..cut]).unwrap();
            let (mut log, records) = Log::open(config(&d, 1 << 20)).unwrap();
            let mut complete = 7;
            let mut at = start;
            while complete < 10 && at + record_len(complete) <= cut {
                at += record_len(complete);
                complete += 1;
            }
            assert_eq!(records.len() as u64, complete, "cut at {cut}");
            assert_eq!(
                std::fs::metadata(&segment).unwrap().len(),
                at as u64,
                "truncated to the last record"
            );
            // Appending after recovery continues the sequence.
            assert_eq!(log.append(1, b"after"), complete + 1);
            log.commit().unwrap();
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corruption_in_the_middle_names_file_and_offset_and_repair_cuts_there() {
        let d = dir("corrupt");
        write(&d, 10, 1 << 20);
        let segment = list_segments(&d).unwrap().pop().unwrap().1;
        let mut bytes = std::fs::read(&segment).unwrap();
        let offset = HEADER + payload(0).len() + HEADER + payload(1).len();
        bytes[offset + HEADER] ^= 0xFF;
        std::fs::write(&segment, &bytes).unwrap();
        match Log::open(config(&d, 1 << 20)) {
            Err(LogError::Corrupt { path, offset: at, .. }) => {
                assert_eq!(path, segment);
                assert_eq!(at, offset as u64);
            }
            other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r.len())),
        }
        assert_eq!(Log::repair(config(&d, 1 << 20)).unwrap(), 2);
        let (_, records) = Log::open(config(&d, 1 << 20)).unwrap();
        assert_eq!(records.len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_not_a_torn_tail() {
        let d = dir("older");
        write(&d, 30, 200);
        let first = list_segments(&d).unwrap().remove(0).1;
        let len = std::fs::metadata(&first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(matches!(Log::open(config(&d, 200)), Err(LogError::Corrupt { path, .. }) if path == first));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn whole_segments_before_a_sequence_are_deleted() {
        let d = dir("delete");
        write(&d, 30, 200);
        let (mut log, records) = Log::open(config(&d, 200)).unwrap();
        let before = log.live_segments();
        let deleted = log.delete_before(20).unwrap();
        assert!(deleted > 0 && log.live_segments() == before - deleted);
        let (_, after) = Log::open(config(&d, 200)).unwrap();
        assert!(after.first().unwrap().seq <= 20, "records from 20 on are kept");
        assert_eq!(after.last(), records.last());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn interval_and_never_policies_skip_fsyncs() {
        let d = dir("policy");
        let mut cfg = config(&d, 1 << 20);
        cfg.fsync = FsyncPolicy::Never;
        let (mut log, _) = Log::open(cfg.clone()).unwrap();
        log.append(1, b"x");
        assert!(!log.commit().unwrap().fsynced);
        drop(log);
        cfg.fsync = FsyncPolicy::Interval(Duration::from_secs(3600));
        let (mut log, records) = Log::open(cfg).unwrap();
        assert_eq!(records.len(), 1);
        log.append(1, b"y");
        let stats = log.commit().unwrap();
        assert_eq!((stats.records, stats.fsynced), (1, false));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
