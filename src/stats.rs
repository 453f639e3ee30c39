//! Push statistics: what a shard counts for its devices (pushed, succeeded,
//! arrived, opened, ignored), by app, minute, platform, push type and task,
//! and how the API merges the shards' answers. Pure: no clock, no I/O. The
//! delivery core calls `ShardStats::count` at each event, hands the
//! accumulated counts to its journal once per loop iteration
//! (`take_delta`) and applies them once the log has them (`committed`);
//! `record` is their byte layout in the log.
//!
//! Counting is an array increment: each task (and one pseudo-task per app
//! and push type for pushes without a task id) accumulates the current
//! minute's counts per platform; a minute change or the per-iteration flush
//! turns them into `Spill`s, which are applied to the per-minute and
//! per-hour bucket maps and to the task's totals. Days are sums of hours in
//! UTC.

pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use metrics::Counter;
use slab::Slab;

pub use record::Record;

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 86_400_000;
/// The longest range a statistics query may cover (push-semantics.md §3).
pub const MAX_RANGE_MS: u64 = 90 * DAY_MS;

/// What kind of push a message came from. Adding one: a variant, its code
/// (never reused: the log stores it) and name, and an entry in `ALL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PushType {
    /// `POST /v1/push/simple` to device tokens.
    Simple,
    /// `POST /v1/push/template` to device tokens.
    Template,
    /// `POST /v1/push/multiple` to device tokens.
    Multiple,
    /// A simple, template or multiple push whose targets are userIds.
    User,
    Broadcast,
    Group,
    /// `POST /v1/push/tag`.
    Tag,
}

impl PushType {
    pub const ALL: [PushType; 7] = [
        Self::Simple,
        Self::Template,
        Self::Multiple,
        Self::User,
        Self::Broadcast,
        Self::Group,
        Self::Tag,
    ];

    /// Its number in the log.
    pub fn code(self) -> u8 {
        match self {
            Self::Simple => 1,
            Self::Template => 2,
            Self::Multiple => 3,
            Self::User => 4,
            Self::Broadcast => 5,
            Self::Group => 6,
            Self::Tag => 7,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Its name in the API (`pushType`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Template => "template",
            Self::Multiple => "multiple",
            Self::User => "user",
            Self::Broadcast => "broadcast",
            Self::Group => "group",
            Self::Tag => "tag",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A counted event, in the order of `Counts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message was queued for a device.
    Pushed,
    /// It was written to the device's connection for the first time.
    Succeeded,
    /// The device acknowledged it.
    Arrived,
    /// The device reported it opened (first report of the message).
    Opened,
    /// The device reported it ignored (first report of the message).
    Ignored,
}

pub const EVENTS: usize = 5;

/// Counts of each `Event`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; EVENTS]);

impl Counts {
    pub fn get(&self, event: Event) -> u64 {
        self.0[event as usize]
    }

    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn add_small(&mut self, other: &[u32; EVENTS]) {
        for (a, &b) in self.0.iter_mut().zip(other) {
            *a += u64::from(b);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&c| c == 0)
    }

    /// opened / arrived (0 when nothing arrived).
    pub fn open_rate(&self) -> f64 {
        ratio(self.get(Event::Opened), self.get(Event::Arrived))
    }

    /// ignored / arrived (0 when nothing arrived).
    pub fn ignore_rate(&self) -> f64 {
        ratio(self.get(Event::Ignored), self.get(Event::Arrived))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Platforms are counted in slots: Android (deliveryType 1), iOS (2),
/// HarmonyOS (7), and one for anything else (devices only say 1, 2 or 7 in
/// Hello, so it stays empty).
pub const PLATFORM_SLOTS: usize = 4;

pub fn platform_slot(platform: u8) -> usize {
    match platform {
        1 => 0,
        2 => 1,
        7 => 2,
        _ => 3,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn millis(self) -> u64 {
        match self {
            Self::Minute => MINUTE_MS,
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

/// The buckets of `granularity` (UTC-aligned) that overlap
/// `[start_ms, end_ms)`: their start times.
pub fn bucket_starts(start_ms: u64, end_ms: u64, granularity: Granularity) -> impl Iterator<Item = u64> {
    let step = granularity.millis();
    let first = start_ms / step * step;
    (first..end_ms.max(first + 1)).step_by(step as usize)
}

/// How many buckets `bucket_starts` gives.
pub fn bucket_count(start_ms: u64, end_ms: u64, granularity: Granularity) -> u64 {
    let step = granularity.millis();
    let first = start_ms / step;
    let last = end_ms.saturating_sub(1).max(start_ms) / step;
    last - first + 1
}

/// One task as one shard saw it, or (merged) as the whole daemon did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskReport {
    pub task_id: u64,
    pub name: Box<str>,
    pub push_type: PushType,
    /// When the push was accepted.
    pub created_ms: u64,
    /// When a device last acknowledged one of its messages (0: none yet).
    pub last_arrived_ms: u64,
    pub counts: Counts,
}

/// The shards' reports merged per task id (counts summed, times combined),
/// newest task first.
pub fn merge_tasks(answers: impl IntoIterator<Item = Vec<TaskReport>>) -> Vec<TaskReport> {
    let mut by_id: BTreeMap<u64, TaskReport> = BTreeMap::new();
    for report in answers.into_iter().flatten() {
        match by_id.get_mut(&report.task_id) {
            Some(sum) => {
                sum.counts.add(&report.counts);
                sum.created_ms = sum.created_ms.min(report.created_ms);
                sum.last_arrived_ms = sum.last_arrived_ms.max(report.last_arrived_ms);
                if sum.name.is_empty() {
                    sum.name = report.name;
                }
            }
            None => {
                by_id.insert(report.task_id, report);
            }
        }
    }
    by_id.into_values().rev().collect()
}

/// A statistics query, already validated by the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub start_ms: u64,
    pub end_ms: u64,
    pub granularity: Granularity,
    /// deliveryType 1, 2 or 7.
    pub platform: Option<u8>,
    pub push_type: Option<PushType>,
    pub task_id: Option<u64>,
}

impl Query {
    fn wants(&self, slot: usize, push_type: PushType) -> bool {
        self.platform.is_none_or(|p| platform_slot(p) == slot)
            && self.push_type.is_none_or(|t| t == push_type)
    }

    /// The bucket (of the query's granularity) that `time_ms` falls in, if
    /// it is one of the query's.
    fn bucket_of(&self, time_ms: u64) -> Option<u64> {
        let step = self.granularity.millis();
        let bucket = time_ms / step * step;
        let first = self.start_ms / step * step;
        (bucket >= first && bucket < self.end_ms.max(first + 1)).then_some(bucket)
    }
}

/// Every bucket of the query's range, in order, with the shards' counts
/// summed (zeros where no shard counted anything).
pub fn merge_series(
    query: &Query,
    answers: impl IntoIterator<Item = Vec<(u64, Counts)>>,
) -> Vec<(u64, Counts)> {
    let mut sums: HashMap<u64, Counts> = HashMap::new();
    for (bucket, counts) in answers.into_iter().flatten() {
        sums.entry(bucket).or_default().add(&counts);
    }
    bucket_starts(query.start_ms, query.end_ms, query.granularity)
        .map(|bucket| (bucket, sums.get(&bucket).copied().unwrap_or_default()))
        .collect()
}

/// The limits a shard's statistics keep to.
#[derive(Clone, Debug)]
pub struct Limits {
    pub minute_retention_ms: u64,
    pub hour_retention_ms: u64,
    pub max_tasks_per_app: usize,
    /// A task younger than this may still have queued messages; it is never
    /// evicted (the longest TTL).
    pub max_ttl_ms: u64,
    pub report_window_ms: u64,
    /// Acknowledged messages each device may still report.
    pub reportable_per_device: usize,
}

impl Limits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let s = &config.stats;
        Self {
            minute_retention_ms: s.minute_retention_hours * HOUR_MS,
            hour_retention_ms: s.hour_retention_days * DAY_MS,
            max_tasks_per_app: s.max_tasks_per_app,
            max_ttl_ms: config.delivery.max_ttl_secs * 1000,
            report_window_ms: s.report_window_hours * HOUR_MS,
            reportable_per_device: s.reportable_per_device,
        }
    }
}

/// A task's index in a shard's task table; stable while any message of
/// the task can be queued (tasks are evicted only after the longest TTL).
pub type TaskRef = u32;

/// A bucket map key: app, platform slot, push type and the minute or hour
/// number since the epoch, packed.
fn bucket_key(app: u16, slot: usize, push_type: PushType, time: u32) -> u64 {
    (u64::from(app) << 48) | ((slot as u64) << 40) | (u64::from(push_type.code()) << 32) | u64::from(time)
}

fn unpack_key(key: u64) -> (u16, usize, Option<PushType>, u32) {
    (
        (key >> 48) as u16,
        ((key >> 40) & 0xff) as usize,
        PushType::from_code(((key >> 32) & 0xff) as u8),
        key as u32,
    )
}

/// A task's counts in one hour and platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourPoint {
    pub hour: u32,
    pub slot: u8,
    pub counts: Counts,
}

struct Task {
    app: u16,
    push_type: PushType,
    /// 0: the pseudo-task of pushes without a task id.
    id: u64,
    name: Box<str>,
    created_ms: u64,
    totals: [Counts; PLATFORM_SLOTS],
    last_arrived_ms: u64,
    /// Oldest first.
    hours: Vec<HourPoint>,
    /// Counted since the last spill, all in minute `acc_minute`.
    acc: [[u32; EVENTS]; PLATFORM_SLOTS],
    acc_minute: u32,
    acc_last_arrived_ms: u64,
    /// In `ShardStats::dirty`.
    dirty: bool,
}

impl Task {
    fn new(app: u16, push_type: PushType, id: u64, name: Box<str>, created_ms: u64) -> Self {
        Self {
            app,
            push_type,
            id,
            name,
            created_ms,
            totals: Default::default(),
            last_arrived_ms: 0,
            hours: Vec::new(),
            acc: Default::default(),
            acc_minute: 0,
            acc_last_arrived_ms: 0,
            dirty: false,
        }
    }

    fn report(&self) -> TaskReport {
        let mut counts = Counts::default();
        for slot in &self.totals {
            counts.add(slot);
        }
        TaskReport {
            task_id: self.id,
            name: self.name.clone(),
            push_type: self.push_type,
            created_ms: self.created_ms,
            last_arrived_ms: self.last_arrived_ms,
            counts,
        }
    }

    /// Moves the accumulated counts into `out`, one spill per platform.
    fn spill(&mut self, out: &mut Vec<Spill>) {
        for (slot, acc) in self.acc.iter_mut().enumerate() {
            if acc.iter().any(|&c| c > 0) {
                out.push(Spill {
                    app: self.app,
                    push_type: self.push_type,
                    task_id: self.id,
                    minute: self.acc_minute,
                    slot: slot as u8,
                    counts: std::mem::take(acc),
                    last_arrived_ms: self.acc_last_arrived_ms,
                });
            }
        }
        self.acc_last_arrived_ms = 0;
    }
}

/// One task's counts for one minute and platform, on their way to the log
/// and to the live buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spill {
    /// Index into `ShardStats::apps`.
    pub app: u16,
    pub push_type: PushType,
    pub task_id: u64,
    pub minute: u32,
    pub slot: u8,
    pub counts: [u32; EVENTS],
    /// The last arrival among them (0: none).
    pub last_arrived_ms: u64,
}

/// A message a device acknowledged, which it may report opened or ignored.
/// Kept with the device (`Device::reportable`, a ring of
/// `reportable_per_device`): the device is in cache when it acks or
/// reports, where a shard-wide table of a million acks cost a cache miss
/// per ack (measured: 1.5x the whole push-write-ack step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reportable {
    pub message_id: u64,
    pub task_id: u64,
    pub push_type: PushType,
    /// 0 not yet, 1 opened, 2 ignored.
    pub reported: u8,
    /// Minute (since the epoch) of the ack.
    pub acked_minute: u32,
}

/// What became of one opened or ignored report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    Counted,
    /// The message was reported before (opened or ignored).
    Duplicate,
    /// Not a message this device acknowledged within the report window.
    Unknown,
}

/// Remembers `entry` in a device's ring of at most `cap` (its cursor in
/// `next`); answers whether an entry that could still have been reported
/// was overwritten.
pub fn remember(ring: &mut Vec<Reportable>, next: &mut u8, cap: usize, entry: Reportable) -> bool {
    if cap == 0 {
        return false;
    }
    if ring.len() < cap {
        ring.push(entry);
        return false;
    }
    let at = usize::from(*next) % cap;
    *next = ((at + 1) % cap) as u8;
    let old = std::mem::replace(&mut ring[at], entry);
    old.reported == 0
}

/// A device's ring oldest first (as a checkpoint restates it, so that a
/// replayed ring overwrites from index 0).
pub fn oldest_first(ring: &[Reportable], next: u8) -> impl Iterator<Item = &Reportable> {
    let at = usize::from(next).min(ring.len());
    ring[at..].iter().chain(&ring[..at])
}

struct StatsMetrics {
    untracked: Counter,
    evicted: Counter,
    reportable_evicted: Counter,
}

/// What a replayed statistics record asks of the core's devices.
pub enum ForDevices<'a> {
    Nothing,
    /// (token, message id, 1 opened / 2 ignored): mark the device's entry.
    Reports(Vec<(&'a str, u64, u8)>),
    /// Devices' rings as a checkpoint restates them, oldest first.
    Rings(Vec<(&'a str, Vec<Reportable>)>),
}

/// One shard's statistics.
pub struct ShardStats {
    limits: Limits,
    apps: Vec<Arc<str>>,
    app_index: HashMap<Arc<str>, u16>,
    tasks: Slab<Task>,
    by_key: HashMap<(u16, PushType, u64), TaskRef>,
    /// Each app's real tasks by id (ids grow with time: the first is the
    /// oldest).
    per_app: HashMap<u16, BTreeMap<u64, TaskRef>>,
    /// The last task `task` answered, to skip the lookup for the rest of a
    /// batch: (app pointer, task id, push type, task).
    last: Option<(usize, u64, PushType, TaskRef)>,
    dirty: Vec<TaskRef>,
    /// Spilled and not yet in the log.
    spilled: Vec<Spill>,
    /// Opened/ignored reports not yet in the log: (token, message id,
    /// 1 opened / 2 ignored).
    reports: Vec<(Box<str>, u64, u8)>,
    minutes: HashMap<u64, Counts>,
    hours: HashMap<u64, Counts>,
    /// While replaying a checkpoint's statistics: the state it restates,
    /// taken over at its end (a checkpoint cut short restates nothing).
    incoming: Option<Box<ShardStats>>,
    metrics: StatsMetrics,
}

impl ShardStats {
    pub fn new(limits: Limits, shard: usize) -> Self {
        let shard = shard.to_string();
        Self {
            limits,
            apps: Vec::new(),
            app_index: HashMap::new(),
            tasks: Slab::new(),
            by_key: HashMap::new(),
            per_app: HashMap::new(),
            last: None,
            dirty: Vec::new(),
            spilled: Vec::new(),
            reports: Vec::new(),
            minutes: HashMap::new(),
            hours: HashMap::new(),
            incoming: None,
            metrics: StatsMetrics {
                untracked: metrics::counter!("ringpush_stats_tasks_untracked_total", "shard" => shard.clone()),
                evicted: metrics::counter!("ringpush_stats_tasks_evicted_total", "shard" => shard.clone()),
                reportable_evicted: metrics::counter!("ringpush_stats_reportable_evicted_total", "shard" => shard),
            },
        }
    }

    fn app(&mut self, app: &str) -> u16 {
        if let Some(&i) = self.app_index.get(app) {
            return i;
        }
        let i = u16::try_from(self.apps.len()).expect("fewer than 65536 apps");
        let arc: Arc<str> = Arc::from(app);
        self.apps.push(arc.clone());
        self.app_index.insert(arc, i);
        i
    }

    fn find_app(&self, app: &str) -> Option<u16> {
        self.app_index.get(app).copied()
    }

    /// Real tasks held, for the gauge.
    pub fn task_count(&self) -> usize {
        self.per_app.values().map(BTreeMap::len).sum()
    }

    /// The task a message belongs to. `task_id` 0 (no task) or a task past
    /// `max_tasks_per_app` gives the app's pseudo-task of its push type.
    /// `created` says whether a task was made, so the caller journals it;
    /// with `create` false (replay) an unknown task is not made.
    pub fn task(
        &mut self,
        app: &Arc<str>,
        task_id: u64,
        push_type: PushType,
        name: &str,
        created_ms: u64,
        create: bool,
    ) -> (TaskRef, bool) {
        let app_ptr = Arc::as_ptr(app) as *const u8 as usize;
        if let Some((p, id, t, task)) = self.last {
            if p == app_ptr && id == task_id && t == push_type {
                return (task, false);
            }
        }
        let app_ix = self.app(app);
        let answer = self.task_of(app_ix, task_id, push_type, name, created_ms, create);
        self.last = Some((app_ptr, task_id, push_type, answer.0));
        answer
    }

    fn task_of(
        &mut self,
        app: u16,
        task_id: u64,
        push_type: PushType,
        name: &str,
        created_ms: u64,
        create: bool,
    ) -> (TaskRef, bool) {
        if let Some(&task) = self.by_key.get(&(app, push_type, task_id)) {
            return (task, false);
        }
        if task_id == 0 {
            return (self.insert(Task::new(app, push_type, 0, "".into(), 0)), false);
        }
        if !create || !self.make_room(app, created_ms) {
            if create {
                self.metrics.untracked.increment(1);
            }
            return self.task_of(app, 0, push_type, "", created_ms, false);
        }
        let task = self.insert(Task::new(app, push_type, task_id, name.into(), created_ms));
        self.per_app.entry(app).or_default().insert(task_id, task);
        (task, true)
    }

    fn insert(&mut self, task: Task) -> TaskRef {
        let key = (task.app, task.push_type, task.id);
        let ix = TaskRef::try_from(self.tasks.insert(task)).expect("fewer than 2^32 tasks");
        self.by_key.insert(key, ix);
        ix
    }

    /// Whether the app may hold one more task: at `max_tasks_per_app` its
    /// oldest goes, but only once the longest TTL has passed since it was
    /// created, so no queued message refers to it.
    fn make_room(&mut self, app: u16, now_ms: u64) -> bool {
        let Some(tasks) = self.per_app.get_mut(&app) else {
            return self.limits.max_tasks_per_app > 0;
        };
        if tasks.len() < self.limits.max_tasks_per_app {
            return true;
        }
        let Some((_, &oldest)) = tasks.first_key_value() else {
            return false;
        };
        if self.tasks[oldest as usize].created_ms + self.limits.max_ttl_ms > now_ms {
            return false;
        }
        self.remove_task(oldest);
        self.metrics.evicted.increment(1);
        true
    }

    fn remove_task(&mut self, task: TaskRef) {
        let t = self.tasks.remove(task as usize);
        self.by_key.remove(&(t.app, t.push_type, t.id));
        if let Some(tasks) = self.per_app.get_mut(&t.app) {
            tasks.remove(&t.id);
        }
        if self.last.is_some_and(|l| l.3 == task) {
            self.last = None;
        }
        self.dirty.retain(|&d| d != task);
    }

    /// Counts one event of a message of `task` on a device of `platform`.
    pub fn count(&mut self, task: TaskRef, platform: u8, event: Event, now_ms: u64) {
        let minute = (now_ms / MINUTE_MS) as u32;
        let t = &mut self.tasks[task as usize];
        if !t.dirty {
            t.dirty = true;
            t.acc_minute = minute;
            self.dirty.push(task);
        } else if t.acc_minute != minute {
            t.spill(&mut self.spilled);
            t.acc_minute = minute;
        }
        t.acc[platform_slot(platform)][event as usize] += 1;
        if event == Event::Arrived {
            t.acc_last_arrived_ms = now_ms;
        }
    }

    /// Moves every task's accumulated counts to the spilled ones.
    fn spill_all(&mut self) {
        for task in self.dirty.drain(..) {
            let t = &mut self.tasks[task as usize];
            t.spill(&mut self.spilled);
            t.dirty = false;
        }
    }

    /// A device acknowledged `message_id` of `task` at `now_ms`: what it
    /// keeps to report it opened or ignored later.
    pub fn reportable(&self, task: TaskRef, message_id: u64, now_ms: u64) -> Reportable {
        let t = &self.tasks[task as usize];
        Reportable {
            message_id,
            task_id: t.id,
            push_type: t.push_type,
            reported: 0,
            acked_minute: (now_ms / MINUTE_MS) as u32,
        }
    }

    /// Counts an overwritten, unreported entry of a device's ring.
    pub fn reportable_evicted(&self) {
        self.metrics.reportable_evicted.increment(1);
    }

    /// An Opened (`Event::Opened`) or Ignored report of `entry` (from the
    /// ring of the device `token` of `app` on `platform`). The first report
    /// of a message within the report window counts.
    pub fn report(
        &mut self,
        entry: &mut Reportable,
        event: Event,
        (app, token, platform): (&str, &str, u8),
        now_ms: u64,
    ) -> ReportOutcome {
        let window_minutes = self.limits.report_window_ms / MINUTE_MS;
        if u64::from(entry.acked_minute) + window_minutes < now_ms / MINUTE_MS {
            return ReportOutcome::Unknown;
        }
        if entry.reported != 0 {
            return ReportOutcome::Duplicate;
        }
        let code = if event == Event::Opened { 1 } else { 2 };
        entry.reported = code;
        let app = self.app(app);
        let (task, _) = self.task_of(app, entry.task_id, entry.push_type, "", 0, false);
        self.count(task, platform, event, now_ms);
        self.reports.push((token.into(), entry.message_id, code));
        ReportOutcome::Counted
    }

    /// A device's token changed (rotated, or a rotation undone). Its
    /// reports not yet in the log name the token it has now: they are
    /// journaled after the rotation's record, and replay finds the device
    /// by the token it holds at that point of the log.
    pub fn token_renamed(&mut self, old: &str, new: &str) {
        for (token, _, _) in &mut self.reports {
            if **token == *old {
                *token = new.into();
            }
        }
    }

    /// Whether counts wait for `take_delta`.
    pub fn has_unflushed(&self) -> bool {
        !self.dirty.is_empty() || !self.spilled.is_empty() || !self.reports.is_empty()
    }

    /// The counts since the last call as log record payloads (none when
    /// nothing was counted), for the journal of this loop iteration. They
    /// join the live state in `committed`.
    pub fn take_delta(&mut self, mut put: impl FnMut(&[u8])) {
        self.spill_all();
        if self.spilled.is_empty() && self.reports.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        for chunk in self.spilled.chunks(record::CHUNK) {
            buf.clear();
            record::encode_delta(&mut buf, &self.apps, chunk, &[]);
            put(&buf);
        }
        for chunk in self.reports.chunks(record::CHUNK) {
            buf.clear();
            let reports: Vec<(&str, u64, u8)> = chunk.iter().map(|(t, id, c)| (&**t, *id, *c)).collect();
            record::encode_delta(&mut buf, &self.apps, &[], &reports);
            put(&buf);
        }
        self.reports.clear();
    }

    /// The journal with the last `take_delta` was written (`ok`) or not.
    /// Counts that did not reach the log are dropped, as the messages of
    /// that commit are withdrawn.
    pub fn committed(&mut self, ok: bool) {
        let spilled = std::mem::take(&mut self.spilled);
        if ok {
            for spill in &spilled {
                self.apply(spill);
            }
        }
        self.spilled = spilled;
        self.spilled.clear();
    }

    fn apply(&mut self, s: &Spill) {
        let mut counts = Counts::default();
        counts.add_small(&s.counts);
        let slot = usize::from(s.slot);
        let hour = s.minute / 60;
        self.minutes
            .entry(bucket_key(s.app, slot, s.push_type, s.minute))
            .or_default()
            .add(&counts);
        self.hours
            .entry(bucket_key(s.app, slot, s.push_type, hour))
            .or_default()
            .add(&counts);
        if s.task_id == 0 {
            return;
        }
        let Some(&task) = self.by_key.get(&(s.app, s.push_type, s.task_id)) else {
            return;
        };
        let t = &mut self.tasks[task as usize];
        t.totals[slot].add(&counts);
        t.last_arrived_ms = t.last_arrived_ms.max(s.last_arrived_ms);
        match t
            .hours
            .iter_mut()
            .rev()
            .find(|p| p.hour == hour && p.slot == s.slot)
        {
            Some(point) => point.counts.add(&counts),
            None => {
                let at = t.hours.partition_point(|p| (p.hour, p.slot) < (hour, s.slot));
                t.hours.insert(
                    at,
                    HourPoint {
                        hour,
                        slot: s.slot,
                        counts,
                    },
                );
            }
        }
    }

    /// Drops what is past its retention: minute and hour buckets, tasks
    /// created before the hour retention.
    pub fn prune(&mut self, now_ms: u64) {
        let minute_floor = (now_ms.saturating_sub(self.limits.minute_retention_ms) / MINUTE_MS) as u32;
        let hour_floor = (now_ms.saturating_sub(self.limits.hour_retention_ms) / HOUR_MS) as u32;
        self.minutes.retain(|&k, _| unpack_key(k).3 >= minute_floor);
        self.hours.retain(|&k, _| unpack_key(k).3 >= hour_floor);
        let created_floor = now_ms.saturating_sub(self.limits.hour_retention_ms.max(self.limits.max_ttl_ms));
        let old: Vec<TaskRef> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.id != 0 && t.created_ms < created_floor && !t.dirty)
            .map(|(ix, _)| ix as TaskRef)
            .collect();
        for task in old {
            self.remove_task(task);
        }
        for (_, t) in self.tasks.iter_mut() {
            t.hours.retain(|p| p.hour >= hour_floor);
        }
    }

    /// The app's tasks created in `[from_ms, to_ms)`, counts included up to
    /// now (also those not yet in the log).
    pub fn tasks_of(&mut self, app: &str, from_ms: u64, to_ms: u64) -> Vec<TaskReport> {
        self.spill_all();
        let Some(app_ix) = self.find_app(app) else {
            return Vec::new();
        };
        let Some(tasks) = self.per_app.get(&app_ix) else {
            return Vec::new();
        };
        tasks
            .values()
            .map(|&task| &self.tasks[task as usize])
            .filter(|t| (from_ms..to_ms).contains(&t.created_ms))
            .map(|t| self.with_unapplied(t))
            .collect()
    }

    pub fn task_report(&mut self, app: &str, task_id: u64) -> Option<TaskReport> {
        self.spill_all();
        let app_ix = self.find_app(app)?;
        let &task = self.per_app.get(&app_ix)?.get(&task_id)?;
        Some(self.with_unapplied(&self.tasks[task as usize]))
    }

    fn with_unapplied(&self, t: &Task) -> TaskReport {
        let mut report = t.report();
        for s in self.unapplied(t.app, t.push_type, t.id) {
            report.counts.add_small(&s.counts);
            report.last_arrived_ms = report.last_arrived_ms.max(s.last_arrived_ms);
        }
        report
    }

    fn unapplied(&self, app: u16, push_type: PushType, task_id: u64) -> impl Iterator<Item = &Spill> {
        self.spilled
            .iter()
            .filter(move |s| s.app == app && s.push_type == push_type && s.task_id == task_id)
    }

    /// The app's counts per bucket of the query (only buckets with counts),
    /// also those not yet in the log. With a task id the task's hourly
    /// counts answer (minute granularity is refused by the API).
    pub fn series(&mut self, app: &str, query: &Query) -> Vec<(u64, Counts)> {
        self.spill_all();
        let Some(app_ix) = self.find_app(app) else {
            return Vec::new();
        };
        let mut out: HashMap<u64, Counts> = HashMap::new();
        let mut add = |time_ms: u64, counts: &Counts| {
            if let Some(bucket) = query.bucket_of(time_ms) {
                out.entry(bucket).or_default().add(counts);
            }
        };
        match query.task_id {
            Some(task_id) => {
                let task = self.per_app.get(&app_ix).and_then(|tasks| tasks.get(&task_id));
                let Some(t) = task.map(|&task| &self.tasks[task as usize]) else {
                    return Vec::new();
                };
                if query.push_type.is_some_and(|p| p != t.push_type) {
                    return Vec::new();
                }
                for p in &t.hours {
                    if query.wants(usize::from(p.slot), t.push_type) {
                        add(u64::from(p.hour) * HOUR_MS, &p.counts);
                    }
                }
                for s in self.unapplied(app_ix, t.push_type, task_id) {
                    if query.wants(usize::from(s.slot), s.push_type) {
                        let mut counts = Counts::default();
                        counts.add_small(&s.counts);
                        add(u64::from(s.minute) * MINUTE_MS, &counts);
                    }
                }
            }
            None => {
                let (map, unit) = match query.granularity {
                    Granularity::Minute => (&self.minutes, MINUTE_MS),
                    Granularity::Hour | Granularity::Day => (&self.hours, HOUR_MS),
                };
                for (&key, counts) in map {
                    let (a, slot, push_type, time) = unpack_key(key);
                    if a == app_ix && push_type.is_some_and(|t| query.wants(slot, t)) {
                        add(u64::from(time) * unit, counts);
                    }
                }
                for s in self.spilled.iter().filter(|s| s.app == app_ix) {
                    if query.wants(usize::from(s.slot), s.push_type) {
                        let mut counts = Counts::default();
                        counts.add_small(&s.counts);
                        add(u64::from(s.minute) * MINUTE_MS, &counts);
                    }
                }
            }
        }
        let mut series: Vec<(u64, Counts)> = out.into_iter().collect();
        series.sort_unstable_by_key(|(bucket, _)| *bucket);
        series
    }

    /// Restates the live state (not what waits for the log: the next
    /// `take_delta` carries that) as record payloads, starting with a
    /// snapshot marker and ending with its end.
    pub fn write_snapshot(&self, mut put: impl FnMut(&[u8])) {
        let mut buf = Vec::new();
        let mut emit = |buf: &mut Vec<u8>, record: &Record<'_>| {
            buf.clear();
            record.encode(buf);
            put(buf);
        };
        emit(&mut buf, &Record::SnapshotBegin);
        for (hourly, map) in [(false, &self.minutes), (true, &self.hours)] {
            let mut per_app: HashMap<u16, Vec<record::Bucket>> = HashMap::new();
            for (&key, counts) in map {
                let (app, slot, push_type, time) = unpack_key(key);
                if let Some(push_type) = push_type {
                    per_app.entry(app).or_default().push(record::Bucket {
                        time,
                        slot: slot as u8,
                        push_type,
                        counts: *counts,
                    });
                }
            }
            for (app, buckets) in per_app {
                for chunk in buckets.chunks(record::CHUNK) {
                    emit(
                        &mut buf,
                        &Record::Buckets {
                            app: &self.apps[usize::from(app)],
                            hourly,
                            buckets: chunk.to_vec(),
                        },
                    );
                }
            }
        }
        for (_, t) in self.tasks.iter().filter(|(_, t)| t.id != 0) {
            emit(
                &mut buf,
                &Record::TaskState(record::TaskState {
                    app: &self.apps[usize::from(t.app)],
                    push_type: t.push_type,
                    task_id: t.id,
                    name: &t.name,
                    created_ms: t.created_ms,
                    last_arrived_ms: t.last_arrived_ms,
                    totals: t.totals,
                    hours: t.hours.clone(),
                }),
            );
        }
        emit(&mut buf, &Record::SnapshotEnd);
    }

    /// Applies one statistics record from the log. What concerns devices
    /// (reports, restated rings) is handed back for the core to apply.
    pub fn replay<'a>(&mut self, payload: &'a [u8]) -> Result<ForDevices<'a>, String> {
        let record = Record::decode(payload)?;
        match record {
            Record::Reportables { devices } => return Ok(ForDevices::Rings(devices)),
            Record::Delta { ref reports, .. } if !reports.is_empty() => {
                let reports = reports.clone();
                self.replay_counts(record)?;
                return Ok(ForDevices::Reports(reports));
            }
            _ => {}
        }
        self.replay_counts(record)?;
        Ok(ForDevices::Nothing)
    }

    fn replay_counts(&mut self, record: Record<'_>) -> Result<(), String> {
        if let Some(incoming) = self.incoming.as_mut() {
            if record == Record::SnapshotEnd {
                let incoming = self.incoming.take().expect("a snapshot is being read");
                self.take_over(*incoming);
                return Ok(());
            }
            return incoming.replay_record(record);
        }
        self.replay_record(record)
    }

    fn replay_record(&mut self, record: Record<'_>) -> Result<(), String> {
        match record {
            Record::Task(def) => {
                let app = self.app(def.app);
                self.task_of(app, def.task_id, def.push_type, def.name, def.created_ms, true);
            }
            Record::Delta { spills, .. } => {
                for (app, spill) in spills {
                    let app = self.app(app);
                    self.apply(&Spill { app, ..spill });
                }
            }
            // The core applies these.
            Record::Reportables { .. } => {}
            Record::SnapshotBegin => {
                self.incoming = Some(Box::new(ShardStats::new(self.limits.clone(), 0)));
            }
            Record::SnapshotEnd => return Err("a statistics snapshot ends before it began".into()),
            Record::Buckets { app, hourly, buckets } => {
                let app = self.app(app);
                let map = if hourly {
                    &mut self.hours
                } else {
                    &mut self.minutes
                };
                for b in buckets {
                    map.entry(bucket_key(app, usize::from(b.slot), b.push_type, b.time))
                        .or_default()
                        .add(&b.counts);
                }
            }
            Record::TaskState(s) => {
                let app = self.app(s.app);
                let task = Task {
                    totals: s.totals,
                    last_arrived_ms: s.last_arrived_ms,
                    hours: s.hours,
                    ..Task::new(app, s.push_type, s.task_id, s.name.into(), s.created_ms)
                };
                match self.by_key.get(&(app, s.push_type, s.task_id)) {
                    Some(&ix) => self.tasks[ix as usize] = task,
                    None => {
                        let ix = self.insert(task);
                        self.per_app.entry(app).or_default().insert(s.task_id, ix);
                    }
                }
            }
        }
        Ok(())
    }

    /// A checkpoint's restated state replaces what replay built before it.
    /// Tasks are updated in place, because queued messages replayed from
    /// before the checkpoint refer to them by index.
    fn take_over(&mut self, incoming: ShardStats) {
        self.minutes.clear();
        self.hours.clear();
        for (key, counts) in incoming.minutes {
            let (app, slot, push_type, time) = unpack_key(key);
            let app = self.app(&incoming.apps[usize::from(app)]);
            if let Some(push_type) = push_type {
                self.minutes
                    .insert(bucket_key(app, slot, push_type, time), counts);
            }
        }
        for (key, counts) in incoming.hours {
            let (app, slot, push_type, time) = unpack_key(key);
            let app = self.app(&incoming.apps[usize::from(app)]);
            if let Some(push_type) = push_type {
                self.hours.insert(bucket_key(app, slot, push_type, time), counts);
            }
        }
        for (_, t) in incoming.tasks {
            let app = self.app(&incoming.apps[usize::from(t.app)]);
            let key = (app, t.push_type, t.id);
            let task = Task { app, ..t };
            match self.by_key.get(&key) {
                Some(&ix) => self.tasks[ix as usize] = task,
                None => {
                    let id = task.id;
                    let ix = self.insert(task);
                    if id != 0 {
                        self.per_app.entry(app).or_default().insert(id, ix);
                    }
                }
            }
        }
    }

    /// The record of a task first seen, for the journal.
    pub fn task_record(&self, task: TaskRef) -> Vec<u8> {
        let t = &self.tasks[task as usize];
        let mut out = Vec::new();
        Record::Task(record::TaskDef {
            app: &self.apps[usize::from(t.app)],
            push_type: t.push_type,
            task_id: t.id,
            name: &t.name,
            created_ms: t.created_ms,
        })
        .encode(&mut out);
        out
    }

    /// The task's id and push type.
    pub fn describe(&self, task: TaskRef) -> (u64, PushType) {
        let t = &self.tasks[task as usize];
        (t.id, t.push_type)
    }
}

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "ringpush_stats_tasks_untracked_total",
        "Tasks not kept for the task list because their app held stats.max_tasks_per_app tasks younger than the longest TTL (their counts still go to the app's statistics)"
    );
    describe_counter!(
        "ringpush_stats_tasks_evicted_total",
        "Tasks forgotten (oldest first) to make room under stats.max_tasks_per_app"
    );
    describe_counter!(
        "ringpush_stats_reportable_evicted_total",
        "Acknowledged, unreported messages a device's ring of stats.reportable_per_device forgot within the report window (a later opened/ignored report of them is not counted)"
    );
    describe_gauge!("ringpush_stats_tasks", "Tasks a shard keeps statistics for");
    describe_counter!(
        "ringpush_reports_total",
        "Opened and ignored reports from devices, by kind and result (counted, duplicate, unknown)"
    );
}

#[cfg(test)]
mod tests;
