//! The byte layout of statistics records in a shard's log (journal kind 9;
//! the first payload byte says which record). Integers little-endian fixed
//! width, strings as a `u32` length and the bytes, lists as a `u32` count
//! and their items; apps are named, never numbered, because app indexes
//! differ between runs. Pure encoding and decoding.

use super::{Counts, HourPoint, PushType, Reportable, Spill, EVENTS, PLATFORM_SLOTS};

/// Items per record: keeps every record far below `log::MAX_RECORD`
/// (the largest item, a bucket, is 46 bytes).
pub const CHUNK: usize = 16_384;

const TASK: u8 = 1;
const DELTA: u8 = 2;
const SNAPSHOT_BEGIN: u8 = 3;
const BUCKETS: u8 = 4;
const TASK_STATE: u8 = 5;
const REPORTABLES: u8 = 6;
const SNAPSHOT_END: u8 = 7;

/// A task as first seen by a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDef<'a> {
    pub app: &'a str,
    pub push_type: PushType,
    pub task_id: u64,
    pub name: &'a str,
    pub created_ms: u64,
}

/// A task's whole state, restated by a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskState<'a> {
    pub app: &'a str,
    pub push_type: PushType,
    pub task_id: u64,
    pub name: &'a str,
    pub created_ms: u64,
    pub last_arrived_ms: u64,
    pub totals: [Counts; PLATFORM_SLOTS],
    pub hours: Vec<HourPoint>,
}

/// One app-level bucket: minute or hour number, platform slot, push type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub time: u32,
    pub slot: u8,
    pub push_type: PushType,
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Task(TaskDef<'a>),
    /// Counts of one loop iteration (each spill with its app; the spill's
    /// own `app` index is unused) and the opened/ignored reports that
    /// mark their messages reported.
    Delta {
        spills: Vec<(&'a str, Spill)>,
        reports: Vec<(&'a str, u64, u8)>,
    },
    /// A checkpoint's statistics follow; they replace the state so far
    /// once `SnapshotEnd` is read.
    SnapshotBegin,
    Buckets {
        app: &'a str,
        hourly: bool,
        buckets: Vec<Bucket>,
    },
    TaskState(TaskState<'a>),
    SnapshotEnd,
    /// Devices' rings of reportable messages, oldest first, restated by a
    /// checkpoint after the devices; each replaces its device's ring.
    Reportables {
        devices: Vec<(&'a str, Vec<Reportable>)>,
    },
}

/// Encodes a delta record of `spills` (apps named from `apps`) and
/// `reports` without building a `Record`.
pub(super) fn encode_delta(
    out: &mut Vec<u8>,
    apps: &[std::sync::Arc<str>],
    spills: &[Spill],
    reports: &[(&str, u64, u8)],
) {
    out.push(DELTA);
    put_u32(out, spills.len() as u32);
    for s in spills {
        put_str(out, &apps[usize::from(s.app)]);
        put_spill(out, s);
    }
    put_reports(out, reports);
}

fn put_reports(out: &mut Vec<u8>, reports: &[(&str, u64, u8)]) {
    put_u32(out, reports.len() as u32);
    for &(token, id, code) in reports {
        put_str(out, token);
        put_u64(out, id);
        out.push(code);
    }
}

fn put_spill(out: &mut Vec<u8>, s: &Spill) {
    out.push(s.push_type.code());
    put_u64(out, s.task_id);
    put_u32(out, s.minute);
    out.push(s.slot);
    for c in s.counts {
        put_u32(out, c);
    }
    put_u64(out, s.last_arrived_ms);
}

impl Record<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Task(t) => {
                out.push(TASK);
                put_str(out, t.app);
                out.push(t.push_type.code());
                put_u64(out, t.task_id);
                put_str(out, t.name);
                put_u64(out, t.created_ms);
            }
            Record::Delta { spills, reports } => {
                out.push(DELTA);
                put_u32(out, spills.len() as u32);
                for (app, s) in spills {
                    put_str(out, app);
                    put_spill(out, s);
                }
                put_reports(out, reports);
            }
            Record::SnapshotBegin => out.push(SNAPSHOT_BEGIN),
            Record::SnapshotEnd => out.push(SNAPSHOT_END),
            Record::Buckets { app, hourly, buckets } => {
                out.push(BUCKETS);
                put_str(out, app);
                out.push(u8::from(*hourly));
                put_u32(out, buckets.len() as u32);
                for b in buckets {
                    put_u32(out, b.time);
                    out.push(b.slot);
                    out.push(b.push_type.code());
                    put_counts(out, &b.counts);
                }
            }
            Record::TaskState(t) => {
                out.push(TASK_STATE);
                put_str(out, t.app);
                out.push(t.push_type.code());
                put_u64(out, t.task_id);
                put_str(out, t.name);
                put_u64(out, t.created_ms);
                put_u64(out, t.last_arrived_ms);
                for counts in &t.totals {
                    put_counts(out, counts);
                }
                put_u32(out, t.hours.len() as u32);
                for p in &t.hours {
                    put_u32(out, p.hour);
                    out.push(p.slot);
                    put_counts(out, &p.counts);
                }
            }
            Record::Reportables { devices } => {
                out.push(REPORTABLES);
                put_u32(out, devices.len() as u32);
                for (token, ring) in devices {
                    put_str(out, token);
                    put_u32(out, ring.len() as u32);
                    for r in ring {
                        put_u64(out, r.message_id);
                        put_u64(out, r.task_id);
                        out.push(r.push_type.code());
                        out.push(r.reported);
                        put_u32(out, r.acked_minute);
                    }
                }
            }
        }
    }

    /// Decodes a payload; errors name what was wrong.
    pub fn decode(payload: &[u8]) -> Result<Record<'_>, String> {
        let mut r = Reader { buf: payload, at: 0 };
        let record = match r.u8()? {
            TASK => Record::Task(TaskDef {
                app: r.str()?,
                push_type: r.push_type()?,
                task_id: r.u64()?,
                name: r.str()?,
                created_ms: r.u64()?,
            }),
            DELTA => {
                let n = r.count(30)?;
                let mut spills = Vec::with_capacity(n);
                for _ in 0..n {
                    let app = r.str()?;
                    let push_type = r.push_type()?;
                    let task_id = r.u64()?;
                    let minute = r.u32()?;
                    let slot = r.slot()?;
                    let mut counts = [0u32; EVENTS];
                    for c in &mut counts {
                        *c = r.u32()?;
                    }
                    let last_arrived_ms = r.u64()?;
                    spills.push((
                        app,
                        Spill {
                            app: 0,
                            push_type,
                            task_id,
                            minute,
                            slot,
                            counts,
                            last_arrived_ms,
                        },
                    ));
                }
                let n = r.count(13)?;
                let mut reports = Vec::with_capacity(n);
                for _ in 0..n {
                    reports.push((r.str()?, r.u64()?, r.reported()?));
                }
                Record::Delta { spills, reports }
            }
            SNAPSHOT_BEGIN => Record::SnapshotBegin,
            SNAPSHOT_END => Record::SnapshotEnd,
            BUCKETS => {
                let app = r.str()?;
                let hourly = match r.u8()? {
                    0 => false,
                    1 => true,
                    x => return Err(format!("bucket granularity {x}")),
                };
                let n = r.count(46)?;
                let mut buckets = Vec::with_capacity(n);
                for _ in 0..n {
                    buckets.push(Bucket {
                        time: r.u32()?,
                        slot: r.slot()?,
                        push_type: r.push_type()?,
                        counts: r.counts()?,
                    });
                }
                Record::Buckets { app, hourly, buckets }
            }
            TASK_STATE => {
                let app = r.str()?;
                let push_type = r.push_type()?;
                let task_id = r.u64()?;
                let name = r.str()?;
                let created_ms = r.u64()?;
                let last_arrived_ms = r.u64()?;
                let mut totals = [Counts::default(); PLATFORM_SLOTS];
                for t in &mut totals {
                    *t = r.counts()?;
                }
                let n = r.count(45)?;
                let mut hours = Vec::with_capacity(n);
                for _ in 0..n {
                    hours.push(HourPoint {
                        hour: r.u32()?,
                        slot: r.slot()?,
                        counts: r.counts()?,
                    });
                }
                Record::TaskState(TaskState {
                    app,
                    push_type,
                    task_id,
                    name,
                    created_ms,
                    last_arrived_ms,
                    totals,
                    hours,
                })
            }
            REPORTABLES => {
                let n = r.count(8)?;
                let mut devices = Vec::with_capacity(n);
                for _ in 0..n {
                    let token = r.str()?;
                    let m = r.count(22)?;
                    let mut ring = Vec::with_capacity(m);
                    for _ in 0..m {
                        ring.push(Reportable {
                            message_id: r.u64()?,
                            task_id: r.u64()?,
                            push_type: r.push_type()?,
                            reported: r.reported()?,
                            acked_minute: r.u32()?,
                        });
                    }
                    devices.push((token, ring));
                }
                Record::Reportables { devices }
            }
            other => return Err(format!("unknown statistics record {other}")),
        };
        if r.at != payload.len() {
            return Err(format!(
                "{} bytes after the statistics record",
                payload.len() - r.at
            ));
        }
        Ok(record)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_counts(out: &mut Vec<u8>, counts: &Counts) {
    for c in counts.0 {
        put_u64(out, c);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "statistics record ends inside a field at byte {}",
                self.at
            ));
        };
        let slice = &self.buf[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a string is not UTF-8".to_string())
    }

    /// A list length, refused when its items (at least `item_bytes` each)
    /// cannot fit in what is left.
    fn count(&mut self, item_bytes: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_bytes) > self.buf.len() - self.at {
            return Err(format!("{n} items in a {}-byte record", self.buf.len()));
        }
        Ok(n)
    }

    fn push_type(&mut self) -> Result<PushType, String> {
        let code = self.u8()?;
        PushType::from_code(code).ok_or_else(|| format!("unknown push type {code}"))
    }

    fn slot(&mut self) -> Result<u8, String> {
        match self.u8()? {
            slot if usize::from(slot) < PLATFORM_SLOTS => Ok(slot),
            slot => Err(format!("platform slot {slot}")),
        }
    }

    fn reported(&mut self) -> Result<u8, String> {
        match self.u8()? {
            code @ 0..=2 => Ok(code),
            code => Err(format!("report code {code}")),
        }
    }

    fn counts(&mut self) -> Result<Counts, String> {
        let mut counts = Counts::default();
        for c in &mut counts.0 {
            *c = self.u64()?;
        }
        Ok(counts)
    }
}
