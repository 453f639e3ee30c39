//! The sans-IO delivery core of one shard: the devices whose tokens this shard
//! owns, their pending queues and in-flight windows, message statuses, the
//! connections' sessions and every deadline. Bytes, commands and time go in;
//! `IoAction`s and outbound bytes come out. The I/O backends (`io::uring`,
//! `io::epoll`) drive it and never decide anything about delivery.
//!
//! Ownership: a device token hashes to one shard (`message::owner_shard`).
//! That shard alone holds the device, so neither the API nor a connection ever
//! takes a lock to reach it. A connection accepted by another shard is handed
//! over after its Hello names the token.
//!
//! Token rotation: a rotated device keeps its slot and everything in it; only
//! its token (and the status keys of its queued messages) change. The new
//! token is minted among those this shard owns, so a rotation is one record
//! in one log and never moves state between shards. The old token stays a
//! redirect for a Hello until the device presents the new one or
//! `delivery.token_redirect_secs` pass.
//!
//! Durability: every change of durable state (registry records, accepted and
//! finished messages) is framed into `journal` as it happens. The shard loop
//! writes the journal to its log once per iteration (group commit) and calls
//! `journal_done`; only then are the pushes of that iteration answered. On
//! start, `replay` rebuilds this same structure from the log, and
//! `write_checkpoint` restates the live state so older segments can go.
//!
//! Recall (withdrawing queued copies, owing Revokes) is in `recall`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metrics::{Counter, Gauge, Histogram};
use slab::Slab;

use crate::config::Config;
use crate::device_auth::{self, DeviceAuth};
use crate::journal::{
    AcceptedEntry, AudienceEntry, DeviceEntry, DeviceRecallEntry, Entry, FinalStatusEntry, RecallEntry,
    SharedEntry, TagUsersEntry, TokenEntry,
};
use crate::log::{Position, Span, RECORD_HEADER};
use crate::message::{
    owner_shard, Accepted, Audience, Command, DeviceLookup, DeviceReport, Message, PublishReply, PushReply,
    RecallAnswer, RecallMark, RecallReply, RegistryChange, RegistryReply, RotateReply, Rotation,
    SharedMessage, SharedOutcome, Status, StatusReport, StorageRefusal, TagUsers, TaskTag, UserStatusReport,
};
use crate::protocol::{body, ErrorCode, Frame, GoAwayReason, PROTOCOL_VERSION};
use crate::receipts::Receipt;
use crate::session::{decode_next, Decoded, Input, Session, SessionState};
use crate::stats::{Event, ForDevices, ReportOutcome, Reportable, ShardStats, TaskRef};
use crate::timer::TimerWheel;
use crate::tls::{ClientCertCheck, Handshake, TlsSession};

mod fanout;
mod recall;
use fanout::{is_member, user_digest, FanoutStore, Member, Refused};
use recall::{indexed_entry, Indexed, OwedRevoke, RecallIndex, Target};

/// Index of a connection in the shard's session slab. Reused after
/// `on_closed`.
pub type ConnId = usize;
/// Index of a device in the shard's device slab.
pub type DeviceId = usize;

/// What the I/O layer must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoAction {
    /// The connection has bytes to write: call `take_outbound`.
    Send(ConnId),
    /// Write what `take_outbound` still returns, close the socket, then call
    /// `on_closed`.
    Close(ConnId),
    /// Stop reading; hand the socket with `initial` (plus anything read after)
    /// to shard `to`, then call `on_closed`.
    HandOff { conn: ConnId, to: usize, initial: Bytes },
    /// Close at once, dropping whatever the socket has not taken (a reader
    /// past the outbound cap or the write deadline: waiting for it to drain
    /// is what it must not be allowed to make us do); cancel a send in
    /// flight; then call `on_closed`.
    Abort(ConnId),
}

/// Result codes in RequestResult frames (push-semantics.md §6).
const RESULT_SUCCESS: i32 = 100;
const RESULT_NEED_DELIVERYTOKEN: i32 = 3001;
const RESULT_NEED_USERID: i32 = 3012;
const RESULT_INVALID_PARAM: i32 = 3028;
const RESULT_DELIVERYTOKEN_INVALID: i32 = 3054;

/// When a signed Hello met a full nonce cache: nonces leave it within a
/// second of their expiry second, so a second later there is likely room.
const NONCE_CACHE_RETRY_MS: u32 = 1000;

/// Largest decryption buffer a shard keeps between reads.
const MAX_KEPT_TLS_PLAINTEXT: usize = 64 * 1024;

/// Connections (and devices) a shard's tables have room for before they grow.
pub const INITIAL_CONNECTIONS: usize = 16_384;

/// Longest token we look up; anything longer is unknown by construction.
const MAX_TOKEN_LEN: usize = 128;
/// Closed connections' deadlines the timer wheel may hold before
/// `compact_timers` considers a pass: 512 KiB of entries, so a quiet shard
/// never compacts for a handful.
const DEAD_TIMERS_BEFORE_COMPACTION: usize = 16_384;
/// Longest userId, in characters (as the API and tags count them).
pub(crate) const MAX_USER_ID_CHARS: usize = 60;
/// Longest group name, in bytes.
pub(crate) const MAX_GROUP_LEN: usize = 64;
pub(crate) const MAX_GROUPS_PER_DEVICE: usize = 100;
/// Longest vendor token, in bytes.
pub(crate) const MAX_VENDOR_TOKEN_LEN: usize = 512;
/// thirdChannel values the reference defines.
pub(crate) const VENDOR_CHANNELS: [u32; 6] = [2, 4, 5, 6, 7, 8];
/// Old tokens that may redirect to one device at once. A device offline
/// through more unconfirmed rotations than this loses the oldest redirect
/// (its Hello with that token then gets a fresh device); the bound keeps an
/// app that rotates in a loop from growing the table without limit.
pub const MAX_REDIRECTS_PER_DEVICE: usize = 16;

enum Timer {
    Handshake {
        conn: ConnId,
        generation: u32,
    },
    Idle {
        conn: ConnId,
        generation: u32,
    },
    AckTimeout {
        conn: ConnId,
        generation: u32,
    },
    /// The write deadline of a connection whose socket holds back bytes.
    WriteStall {
        conn: ConnId,
        generation: u32,
    },
    Expiry {
        device: DeviceId,
        message_id: u64,
    },
    /// The end of a Revoke's TTL.
    RevokeExpiry {
        device: DeviceId,
        message_id: u64,
    },
}

impl Timer {
    /// The connection a deadline belongs to; `None` for a device's.
    fn connection(&self) -> Option<(ConnId, u32)> {
        match *self {
            Timer::Handshake { conn, generation }
            | Timer::Idle { conn, generation }
            | Timer::AckTimeout { conn, generation }
            | Timer::WriteStall { conn, generation } => Some((conn, generation)),
            Timer::Expiry { .. } | Timer::RevokeExpiry { .. } => None,
        }
    }
}

/// Where a queued message's Push frame is. Frames of messages that wait for
/// an offline device stay in the log (their Accepted record) rather than in
/// memory: a million pending messages cost their index, not their bodies.
enum FrameSlot {
    Memory(Box<[u8]>),
    Log(Span),
    /// A broadcast, group or user message: the one copy every device shares.
    Shared(Arc<SharedMessage>),
}

/// Reads records back from the shard's log, checksum verified. Without one
/// (unit tests, fuzzing) every frame stays in memory.
pub trait RecordReader: Send {
    /// Reads the record at `span` into `buf`; returns its kind and where its
    /// payload is in `buf`.
    fn read(&mut self, span: Span, buf: &mut Vec<u8>) -> Result<(u8, Range<usize>), String>;
    /// Segments numbered below `segment` were deleted.
    fn forget_before(&mut self, segment: u64);
}

impl RecordReader for crate::log::SegmentReader {
    fn read(&mut self, span: Span, buf: &mut Vec<u8>) -> Result<(u8, Range<usize>), String> {
        crate::log::SegmentReader::read(self, span, buf)
    }

    fn forget_before(&mut self, segment: u64) {
        crate::log::SegmentReader::forget_before(self, segment)
    }
}

/// A queued message, as small as it can be: a million of them must fit in a
/// few hundred MiB. Token and app are the device's; the msgKey is inside the
/// frame (decoded only by checkpoints).
struct Pending {
    id: u64,
    accepted_at_ms: u64,
    expires_at_ms: u64,
    /// The complete Push frame, or where the log holds it.
    frame: FrameSlot,
    status_key: StatusKey,
    /// When it was last written to a connection; `None` while unsent.
    sent_at: Option<Instant>,
    /// It was written to some connection before (a later send is a
    /// redelivery).
    sent_before: bool,
    /// Its Accepted record is in the log. A device is never sent a message
    /// before that, so a failed commit can withdraw it unseen.
    durable: bool,
    /// What the statistics count it under (4 bytes: fits the padding).
    task: TaskRef,
    /// A newer message with the same key replaces this one while unsent.
    /// Kept here rather than only in the record, because checkpoints restate
    /// in-memory frames without reading the log.
    collapse_key: Option<Box<str>>,
}

impl Pending {
    /// A message not yet sent and not yet durable.
    fn new(
        id: u64,
        accepted_at_ms: u64,
        expires_at_ms: u64,
        frame: FrameSlot,
        status_key: StatusKey,
        task: TaskRef,
        collapse_key: Option<Box<str>>,
    ) -> Self {
        Self {
            id,
            accepted_at_ms,
            expires_at_ms,
            frame,
            status_key,
            sent_at: None,
            sent_before: false,
            durable: false,
            task,
            collapse_key,
        }
    }
}

struct Device {
    app: Arc<str>,
    token: Box<str>,
    platform: u8,
    conn: Option<ConnId>,
    /// Oldest first. `queue[..in_flight]` has been written to `conn` and
    /// awaits an Ack; the rest waits for window space or a connection.
    queue: VecDeque<Pending>,
    in_flight: usize,
    /// Messages dropped by the pending cap since the last Welcome.
    missed: u32,
    user_id: Option<Box<str>>,
    groups: Vec<Box<str>>,
    vendor_token: Option<(u32, Box<str>)>,
    registered_at_ms: u64,
    bound_at_ms: u64,
    unbound_at_ms: u64,
    /// Shared messages from this sequence number on have not been matched
    /// against this device yet (it was offline when they came).
    fanout_cursor: u64,
    /// Unix ms of its last frame before it disconnected (0: not since start).
    last_seen_ms: u64,
    /// Its last acknowledged messages, which it may report opened or
    /// ignored; on the heap once it acked one (8 bytes until then).
    reports: Option<Box<ReportRing>>,
}

/// A ring of `stats.reportable_per_device` acknowledged messages, the
/// next write at `next`.
#[derive(Default)]
struct ReportRing {
    entries: Vec<Reportable>,
    next: u8,
}

impl Device {
    fn new(app: Arc<str>, token: Box<str>, platform: u8, registered_at_ms: u64) -> Self {
        Self {
            app,
            token,
            platform,
            conn: None,
            queue: VecDeque::new(),
            in_flight: 0,
            missed: 0,
            user_id: None,
            groups: Vec::new(),
            vendor_token: None,
            registered_at_ms,
            bound_at_ms: 0,
            unbound_at_ms: 0,
            fanout_cursor: 0,
            last_seen_ms: 0,
            reports: None,
        }
    }

    fn member(&self) -> Member<'_> {
        Member {
            app: &self.app,
            platform: self.platform,
            user_id: self.user_id.as_deref(),
            groups: &self.groups,
            registered_at_ms: self.registered_at_ms,
            bound_at_ms: self.bound_at_ms,
            unbound_at_ms: self.unbound_at_ms,
        }
    }
}

/// A 128-bit digest of (app, msgKey, token). 128 bits make an accidental
/// collision (which would wrongly report a duplicate) negligible at any
/// realistic message count, and keep the status table free of strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
// Two u64s rather than a u128: 8-byte alignment keeps a table bucket at 64
// bytes instead of 80, which is 16 MB per million statuses.
struct StatusKey([u64; 2]);

impl StatusKey {
    // The key is stored in checkpoints, so its hash must never change:
    // `SipHasher` is SipHash-2-4 by definition (its deprecation only points
    // to `DefaultHasher`, whose algorithm is explicitly unspecified), and the
    // fields are fed as explicit little-endian lengths and bytes.
    #[allow(deprecated)]
    fn new(app: &str, msg_key: &str, token: &str) -> Self {
        let half = |salt: u64| {
            let mut h = std::hash::SipHasher::new_with_keys(salt, 0x7269_6e67_7075_7368);
            for field in [app, msg_key, token] {
                h.write(&(field.len() as u64).to_le_bytes());
                h.write(field.as_bytes());
            }
            h.finish()
        };
        Self([half(1), half(2)])
    }

    fn to_u128(self) -> u128 {
        (u128::from(self.0[0]) << 64) | u128::from(self.0[1])
    }

    fn from_u128(key: u128) -> Self {
        Self([(key >> 64) as u64, key as u64])
    }
}

/// The status table, split into `STATUS_PARTS` hash maps by key. A single
/// map doubles in one step: at 229k entries that rehash stalled a shard
/// for 110 ms (measured), which every push queued behind it paid. Split,
/// each growth moves 1/64 of the entries, and the parts' load factors are
/// staggered, so memory tracks the entry count instead of jumping.
struct StatusTable {
    parts: Vec<HashMap<StatusKey, StatusRecord>>,
}

const STATUS_PARTS: usize = 64;

impl StatusTable {
    fn new() -> Self {
        Self {
            parts: (0..STATUS_PARTS).map(|_| HashMap::new()).collect(),
        }
    }

    fn part(&self, key: &StatusKey) -> usize {
        (key.0[1] % STATUS_PARTS as u64) as usize
    }

    fn get(&self, key: &StatusKey) -> Option<&StatusRecord> {
        self.parts[self.part(key)].get(key)
    }

    fn get_mut(&mut self, key: &StatusKey) -> Option<&mut StatusRecord> {
        let part = self.part(key);
        self.parts[part].get_mut(key)
    }

    fn contains_key(&self, key: &StatusKey) -> bool {
        self.parts[self.part(key)].contains_key(key)
    }

    fn insert(&mut self, key: StatusKey, record: StatusRecord) {
        let part = self.part(&key);
        self.parts[part].insert(key, record);
    }

    /// Inserts unless the key is present; returns whether it inserted.
    fn insert_if_absent(&mut self, key: StatusKey, record: impl FnOnce() -> StatusRecord) -> bool {
        let part = self.part(&key);
        match self.parts[part].entry(key) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(record());
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        }
    }

    fn remove(&mut self, key: &StatusKey) -> Option<StatusRecord> {
        let part = self.part(key);
        self.parts[part].remove(key)
    }

    fn iter(&self) -> impl Iterator<Item = (&StatusKey, &StatusRecord)> {
        self.parts.iter().flatten()
    }
}

/// Durable changes not yet written to the log, and what waits on them.
#[derive(Default)]
struct Journal {
    /// Off while replaying: replayed state is already on disk.
    enabled: bool,
    framed: Vec<u8>,
    records: usize,
    /// Answers to send once `framed` is durable.
    replies: Vec<Answer>,
    /// Messages accepted since the last commit: withdrawn if it fails.
    accepted: Vec<JournaledMessage>,
    /// Shared messages stored since the last commit: forgotten if it fails.
    published: Vec<u64>,
    /// Tag user sets written since the last commit: not in the log if it
    /// fails.
    sets: Vec<u64>,
    /// Tokens rotated since the last commit: the devices hear of them once
    /// durable, and they are undone if it fails.
    rotations: Vec<RotationUndo>,
    /// Messages collapsed since the last commit, with their queue position:
    /// restored if it fails.
    collapsed: Vec<(DeviceId, usize, Pending)>,
    /// Receipts of the acks since the last commit: handed to the sender
    /// once the acks are durable.
    receipts: Vec<Receipt>,
}

/// What a rotation changed, to tell the device or to take it back.
struct RotationUndo {
    device: DeviceId,
    old: Box<str>,
    new: Box<str>,
    /// The redirect the rotation pushed out (`MAX_REDIRECTS_PER_DEVICE`).
    displaced: Option<(Box<str>, Retired)>,
}

/// A token rotated away from a device that may still present it in a Hello.
#[derive(Clone, Copy, Debug)]
struct Retired {
    device: DeviceId,
    rotated_at_ms: u64,
    /// Unix ms after which the old token is unknown.
    until_ms: u64,
}

/// An API command's answer, held until its changes are durable.
enum Answer {
    Push(PushReply, Vec<Accepted>),
    Publish(PublishReply, Vec<SharedOutcome>),
    Registry(RegistryReply, i32),
    Recall(RecallReply, RecallAnswer),
    Rotate(RotateReply, Rotation),
    /// A query's answer, prepared when it was asked: it may show changes of
    /// this iteration (an Ack, a bind), which nobody may see before they
    /// are in the log. Sent whatever the commit's outcome: it is a read.
    Query(Box<dyn FnOnce() + Send>),
}

impl Answer {
    fn send(self, result: Result<(), StorageRefusal>) {
        // The API may have timed out and gone; what was stored stays.
        match self {
            Answer::Push(reply, outcomes) => drop(reply.send(result.map(|()| outcomes))),
            Answer::Publish(reply, outcomes) => drop(reply.send(result.map(|()| outcomes))),
            Answer::Registry(reply, code) => drop(reply.send(result.map(|()| code))),
            Answer::Recall(reply, answer) => drop(reply.send(result.map(|()| answer))),
            Answer::Rotate(reply, rotation) => drop(reply.send(result.map(|()| rotation))),
            Answer::Query(send) => send(),
        }
    }
}

/// A tag user set being read back from the log.
enum ReplayedSet {
    Partial {
        next: u32,
        parts: u32,
        digests: Vec<u64>,
    },
    Whole(Arc<TagUsers>),
}

struct JournaledMessage {
    device: DeviceId,
    message_id: u64,
    status_key: StatusKey,
    /// Where its Accepted record starts in `Journal::framed`, and its length.
    record_at: usize,
    record_len: usize,
}

impl Journal {
    fn write(&mut self, entry: &Entry<'_>) {
        if self.enabled {
            entry.write_to(&mut self.framed);
            self.records += 1;
        }
    }
}

fn device_entry(d: &Device) -> Entry<'_> {
    Entry::Device(DeviceEntry {
        token: &d.token,
        app: &d.app,
        platform: d.platform,
        user_id: d.user_id.as_deref(),
        groups: d.groups.iter().map(|g| &**g).collect(),
        vendor: d.vendor_token.as_ref().map(|(c, t)| (*c, &**t)),
        registered_at_ms: d.registered_at_ms,
        bound_at_ms: d.bound_at_ms,
        unbound_at_ms: d.unbound_at_ms,
    })
}

fn finished_entry(d: &Device, message_id: u64, status: Status, at_ms: u64) -> Entry<'_> {
    Entry::Finished {
        token: &d.token,
        message_id,
        status,
        at_ms,
    }
}

#[derive(Clone)]
struct StatusRecord {
    status: Status,
    message_id: u64,
    accepted_at_ms: u64,
    expires_at_ms: u64,
    /// 0 until the device acknowledges.
    acked_at_ms: u64,
    /// Unix ms when a final status may be forgotten; 0 while pending.
    forget_at_ms: u64,
    /// What a recall did (one byte in the record's padding).
    recall: RecallMark,
}

impl StatusRecord {
    /// A message just accepted for a device.
    fn pending(message_id: u64, accepted_at_ms: u64, expires_at_ms: u64) -> Self {
        Self {
            status: Status::Pending,
            message_id,
            accepted_at_ms,
            expires_at_ms,
            acked_at_ms: 0,
            forget_at_ms: 0,
            recall: RecallMark::None,
        }
    }
}

/// Limits copied out of the config once, in the units the core uses.
struct Limits {
    max_frame: usize,
    max_connections: usize,
    max_outbound: usize,
    handshake_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    ack_timeout: Duration,
    heartbeat_secs: u32,
    window: usize,
    max_pending: usize,
    status_retention: Duration,
    max_final_statuses: usize,
    max_revokes: usize,
    reportable_per_device: usize,
    /// How long an old token redirects to its rotated device (0: not at all).
    token_redirect_ms: u64,
    /// The bounds of the retry-after in a shutdown's GoAways.
    shutdown_retry_ms: (u32, u32),
}

/// How often expired shared messages are swept out of the store.
const FANOUT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often statistics past their retention are dropped.
const STATS_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// The longest counts that have no log record of their own (a first write
/// to a connection, an opened or ignored report) wait for one: at most
/// this much of them is lost on a crash.
pub const STATS_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Maps the monotonic clock to wall time, fixed at construction, so TTLs
/// given in Unix milliseconds become timer deadlines and tests can run on a
/// fake clock.
struct Clock {
    start: Instant,
    start_unix_ms: u64,
}

impl Clock {
    fn unix_ms(&self, now: Instant) -> u64 {
        self.start_unix_ms + now.saturating_duration_since(self.start).as_millis() as u64
    }

    fn unix_micros(&self, now: Instant) -> u64 {
        self.start_unix_ms * 1000 + now.saturating_duration_since(self.start).as_micros() as u64
    }

    /// Milliseconds since the clock's start, wrapping at 2^32 (49 days):
    /// differences of two are right for spans shorter than that.
    fn wrapping_ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.start).as_millis() as u32
    }

    fn instant_of(&self, unix_ms: u64) -> Instant {
        self.start + Duration::from_millis(unix_ms.saturating_sub(self.start_unix_ms))
    }
}

struct CoreMetrics {
    shard: String,
    frames_in: Vec<Counter>,
    frames_out_push: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    queued: Counter,
    delivered: Counter,
    redelivered: Counter,
    acked: Counter,
    acks_unknown: Counter,
    expired: Counter,
    dropped_overflow: Counter,
    dropped_deleted: Counter,
    duplicates: Counter,
    unknown_token: Counter,
    statuses_evicted: Counter,
    withdrawn: Counter,
    frames_read: Counter,
    frame_read_errors: Counter,
    shared_stored: Gauge,
    shared_refused: Counter,
    shared_caught_up: Counter,
    recalls_withdrawn: Counter,
    recalls_revoked: Counter,
    revokes_confirmed: Counter,
    revokes_expired: Counter,
    revokes_overflow: Counter,
    revokes_token_deleted: Counter,
    revokes_pending: Gauge,
    recall_index: Gauge,
    recall_index_evicted: Counter,
    collapsed: Counter,
    tokens_rotated: Counter,
    redirects_followed: Counter,
    redirects_confirmed: Counter,
    redirects_expired: Counter,
    redirects_displaced: Counter,
    redirects: Gauge,
    pending: Gauge,
    devices: Gauge,
    sessions: Gauge,
    tls_sessions: Gauge,
    /// Bytes the I/O layer holds that sockets have not taken, all sessions.
    outbound_backlog: Gauge,
    ack_latency: Histogram,
    api_to_device: Histogram,
    stats_tasks: Gauge,
    timers: Gauge,
    timer_compactions: Counter,
    /// [opened, ignored] x [counted, duplicate, unknown].
    reports: [[Counter; 3]; 2],
}

impl CoreMetrics {
    fn new(shard_id: usize) -> Self {
        let shard = shard_id.to_string();
        let counter = |name: &'static str| metrics::counter!(name, "shard" => shard.clone());
        Self {
            frames_in: crate::protocol::FrameType::ALL
                .iter()
                .map(|t| metrics::counter!("ringpush_frames_in_total", "shard" => shard.clone(), "type" => t.as_str()))
                .collect(),
            frames_out_push: metrics::counter!("ringpush_frames_out_total", "shard" => shard.clone(), "type" => "push"),
            bytes_in: counter("ringpush_bytes_in_total"),
            bytes_out: counter("ringpush_bytes_out_total"),
            queued: counter("ringpush_messages_queued_total"),
            delivered: counter("ringpush_messages_delivered_total"),
            redelivered: counter("ringpush_messages_redelivered_total"),
            acked: counter("ringpush_messages_acked_total"),
            acks_unknown: counter("ringpush_acks_unknown_total"),
            expired: counter("ringpush_messages_expired_total"),
            dropped_overflow: metrics::counter!("ringpush_messages_dropped_total", "shard" => shard.clone(), "reason" => "overflow"),
            dropped_deleted: metrics::counter!("ringpush_messages_dropped_total", "shard" => shard.clone(), "reason" => "token_deleted"),
            duplicates: counter("ringpush_messages_duplicate_total"),
            unknown_token: counter("ringpush_messages_unknown_token_total"),
            statuses_evicted: counter("ringpush_statuses_evicted_total"),
            withdrawn: counter("ringpush_messages_withdrawn_total"),
            frames_read: counter("ringpush_log_frames_read_total"),
            frame_read_errors: counter("ringpush_log_read_errors_total"),
            shared_stored: metrics::gauge!("ringpush_shared_messages", "shard" => shard.clone()),
            shared_refused: counter("ringpush_shared_messages_refused_total"),
            shared_caught_up: counter("ringpush_shared_deliveries_caught_up_total"),
            recalls_withdrawn: metrics::counter!("ringpush_recalls_total", "shard" => shard.clone(), "result" => "withdrawn"),
            recalls_revoked: metrics::counter!("ringpush_recalls_total", "shard" => shard.clone(), "result" => "revoke"),
            revokes_confirmed: metrics::counter!("ringpush_revokes_ended_total", "shard" => shard.clone(), "reason" => "confirmed"),
            revokes_expired: metrics::counter!("ringpush_revokes_ended_total", "shard" => shard.clone(), "reason" => "expired"),
            revokes_overflow: metrics::counter!("ringpush_revokes_ended_total", "shard" => shard.clone(), "reason" => "overflow"),
            revokes_token_deleted: metrics::counter!("ringpush_revokes_ended_total", "shard" => shard.clone(), "reason" => "token_deleted"),
            revokes_pending: metrics::gauge!("ringpush_revokes_pending", "shard" => shard.clone()),
            recall_index: metrics::gauge!("ringpush_recall_index_entries", "shard" => shard.clone()),
            recall_index_evicted: counter("ringpush_recall_index_evicted_total"),
            collapsed: counter("ringpush_messages_collapsed_total"),
            tokens_rotated: counter("ringpush_tokens_rotated_total"),
            redirects_followed: counter("ringpush_token_redirects_followed_total"),
            redirects_confirmed: metrics::counter!("ringpush_token_redirects_ended_total", "shard" => shard.clone(), "reason" => "confirmed"),
            redirects_expired: metrics::counter!("ringpush_token_redirects_ended_total", "shard" => shard.clone(), "reason" => "expired"),
            redirects_displaced: metrics::counter!("ringpush_token_redirects_ended_total", "shard" => shard.clone(), "reason" => "displaced"),
            redirects: metrics::gauge!("ringpush_token_redirects", "shard" => shard.clone()),
            pending: metrics::gauge!("ringpush_messages_pending", "shard" => shard.clone()),
            devices: metrics::gauge!("ringpush_devices", "shard" => shard.clone()),
            sessions: metrics::gauge!("ringpush_sessions", "shard" => shard.clone()),
            tls_sessions: metrics::gauge!("ringpush_tls_sessions", "shard" => shard.clone()),
            outbound_backlog: metrics::gauge!("ringpush_outbound_backlog_bytes", "shard" => shard.clone()),
            ack_latency: metrics::histogram!("ringpush_ack_latency_seconds", "shard" => shard.clone()),
            api_to_device: metrics::histogram!("ringpush_api_to_device_seconds", "shard" => shard.clone()),
            stats_tasks: metrics::gauge!("ringpush_stats_tasks", "shard" => shard.clone()),
            timers: metrics::gauge!("ringpush_timers", "shard" => shard.clone()),
            timer_compactions: counter("ringpush_timer_compactions_total"),
            reports: ["opened", "ignored"].map(|kind| {
                ["counted", "duplicate", "unknown"].map(|result| {
                    metrics::counter!("ringpush_reports_total", "shard" => shard.clone(), "kind" => kind, "result" => result)
                })
            }),
            shard,
        }
    }

    fn frame_in(&self, frame: &Frame) {
        let t = frame.frame_type();
        if let Some(i) = crate::protocol::FrameType::ALL.iter().position(|x| *x == t) {
            self.frames_in[i].increment(1);
        }
    }

    fn closed(&self, reason: &'static str) {
        metrics::counter!("ringpush_connections_closed_total", "shard" => self.shard.clone(), "reason" => reason)
            .increment(1);
    }

    fn tls_handshake(&self, h: Handshake) {
        metrics::counter!(
            "ringpush_tls_handshakes_total",
            "shard" => self.shard.clone(),
            "result" => "ok",
            "version" => h.version.as_str(),
            "resumed" => if h.resumed { "true" } else { "false" }
        )
        .increment(1);
    }

    /// A TLS session failed: during its handshake (a failed handshake,
    /// by reason) or after it (a TLS error on an established session).
    fn tls_failed(&self, reason: &'static str, during_handshake: bool) {
        if during_handshake {
            metrics::counter!(
                "ringpush_tls_handshakes_total",
                "shard" => self.shard.clone(),
                "result" => "failed",
                "version" => "none",
                "resumed" => "false"
            )
            .increment(1);
            metrics::counter!("ringpush_tls_handshake_failures_total", "shard" => self.shard.clone(), "reason" => reason)
                .increment(1);
        } else {
            metrics::counter!("ringpush_tls_errors_total", "shard" => self.shard.clone(), "reason" => reason)
                .increment(1);
        }
    }

    fn handshake(&self, result: &'static str) {
        metrics::counter!("ringpush_handshakes_total", "shard" => self.shard.clone(), "result" => result)
            .increment(1);
    }
}

/// Describes the core's metrics for `/metrics` help text.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "ringpush_timers",
        "Entries in a shard's timer wheel: live deadlines and those of closed connections not yet dropped"
    );
    describe_counter!(
        "ringpush_timer_compactions_total",
        "Passes over a shard's timer wheel that dropped the deadlines of closed connections"
    );
    describe_counter!(
        "ringpush_frames_in_total",
        "Frames received from devices, by type"
    );
    describe_counter!("ringpush_frames_out_total", "Frames written to devices, by type");
    describe_counter!(
        "ringpush_bytes_in_total",
        Unit::Bytes,
        "Bytes received from devices"
    );
    describe_counter!(
        "ringpush_bytes_out_total",
        Unit::Bytes,
        "Bytes handed to device sockets"
    );
    describe_counter!(
        "ringpush_messages_queued_total",
        "Messages a shard accepted into a device queue"
    );
    describe_counter!(
        "ringpush_messages_delivered_total",
        "Messages written to a device connection, redeliveries included"
    );
    describe_counter!(
        "ringpush_messages_redelivered_total",
        "Messages written again after a reconnect"
    );
    describe_counter!(
        "ringpush_messages_acked_total",
        "Messages acknowledged by their device"
    );
    describe_counter!(
        "ringpush_acks_unknown_total",
        "Acked ids that matched no pending message (already acked, expired or dropped)"
    );
    describe_counter!(
        "ringpush_messages_expired_total",
        "Messages whose TTL ran out before an ack"
    );
    describe_counter!(
        "ringpush_messages_dropped_total",
        "Messages dropped: per-device pending cap (overflow) or DeleteToken"
    );
    describe_counter!(
        "ringpush_messages_duplicate_total",
        "Pushes of an app+msgKey+token already accepted (not queued again)"
    );
    describe_counter!(
        "ringpush_messages_unknown_token_total",
        "Pushes to a token no device holds"
    );
    describe_counter!(
        "ringpush_statuses_evicted_total",
        "Final message statuses (acked, expired, dropped) forgotten before delivery.status_retention_secs because delivery.max_final_statuses_per_shard were kept"
    );
    describe_counter!(
        "ringpush_messages_withdrawn_total",
        "Accepted messages taken back because the log could not store them (API answered 9001/9002)"
    );
    describe_counter!(
        "ringpush_log_frames_read_total",
        "Push frames read back from the log (messages that waited for an offline device)"
    );
    describe_counter!(
        "ringpush_log_read_errors_total",
        "Frames the log could not give back (I/O error or checksum mismatch); each message is dropped with status 4"
    );
    describe_gauge!(
        "ringpush_shared_messages",
        "Broadcast, group and user messages a shard stores (once each, for every device of their audience)"
    );
    describe_counter!(
        "ringpush_shared_messages_refused_total",
        "Shared messages refused because delivery.max_shared_messages_per_shard were stored (API answered 9000)"
    );
    describe_counter!(
        "ringpush_shared_deliveries_caught_up_total",
        "Shared messages queued for a device when it connected or bound a user (it was not there when they came)"
    );
    describe_counter!(
        "ringpush_recalls_total",
        "Device copies of messages recalled: withdrawn unseen, or answered with a Revoke"
    );
    describe_counter!(
        "ringpush_revokes_ended_total",
        "Revokes no longer owed: confirmed by RevokeAck, expired (the message's TTL from the recall), overflow (delivery.max_revokes_per_device) or token_deleted"
    );
    describe_gauge!(
        "ringpush_revokes_pending",
        "Revokes owed to devices and not yet confirmed"
    );
    describe_gauge!(
        "ringpush_recall_index_entries",
        "Messages a shard remembers for recall by task id or userId"
    );
    describe_counter!(
        "ringpush_recall_index_evicted_total",
        "Messages forgotten for recall before their time because delivery.max_recall_index_per_shard were remembered"
    );
    describe_counter!(
        "ringpush_messages_collapsed_total",
        "Unsent messages replaced by a newer one for the same device with the same collapseKey (status 5)"
    );
    describe_counter!(
        "ringpush_tokens_rotated_total",
        "Device tokens rotated through the API"
    );
    describe_counter!(
        "ringpush_token_redirects_followed_total",
        "Hellos with a rotated-away token that reached their device and were told the new token"
    );
    describe_counter!(
        "ringpush_token_redirects_ended_total",
        "Old-token redirects ended: confirmed (the device presented its new token), expired (delivery.token_redirect_secs), displaced (more than 16 unconfirmed rotations)"
    );
    describe_gauge!(
        "ringpush_token_redirects",
        "Rotated-away tokens that still lead a Hello to their device"
    );
    describe_gauge!(
        "ringpush_messages_pending",
        "Messages queued for devices and not yet acked, expired or dropped"
    );
    describe_gauge!("ringpush_devices", "Device tokens a shard owns");
    describe_gauge!(
        "ringpush_sessions",
        "Device connections a shard holds, in any state"
    );
    describe_gauge!(
        "ringpush_outbound_backlog_bytes",
        Unit::Bytes,
        "Bytes the I/O layer holds for device sockets that they have not taken yet (io_uring: the sends in flight; what waits behind them is held by the core and bounded by limits.max_outbound_bytes too)"
    );
    describe_counter!(
        "ringpush_connections_closed_total",
        "Device connections closed or refused, by reason (refusals: max_connections, shard_busy, address_cap, banned, admission_table_full, overloaded)"
    );
    describe_counter!(
        "ringpush_handshakes_total",
        "Hello handshakes by result (ok, handed_off, failed)"
    );
    describe_histogram!(
        "ringpush_ack_latency_seconds",
        Unit::Seconds,
        "From writing a Push to its Ack"
    );
    describe_histogram!(
        "ringpush_api_to_device_seconds",
        Unit::Seconds,
        "From API acceptance to writing the Push to the device socket"
    );
}

/// Outcome of one frame for the input loop.
enum Flow {
    Continue,
    /// The session is closing: ignore the rest of the input.
    Stop,
    /// The token belongs to shard N: hand the connection over from this frame.
    HandOff(usize),
}

pub struct DeliveryCore {
    shard_id: usize,
    shard_count: usize,
    limits: Limits,
    /// Every app id the shard has met (configured, or in its log), interned.
    apps: HashMap<Box<str>, Arc<str>>,
    /// The apps whose devices may say Hello: those configured now. A
    /// reload that removes an app leaves its connected devices alone; they
    /// are refused when they reconnect.
    configured_apps: HashSet<Arc<str>>,
    /// Checks the Hellos of apps that require device authentication; one
    /// for all shards (`share_device_auth`), so a nonce replayed to another
    /// shard is caught.
    device_auth: Arc<DeviceAuth>,
    sessions: Slab<Session>,
    next_generation: u32,
    devices: Slab<Device>,
    by_token: HashMap<Box<str>, DeviceId>,
    statuses: StatusTable,
    /// Final statuses in the order they become collectable; retention is one
    /// constant, so this is sorted by construction.
    status_gc: VecDeque<(Instant, StatusKey)>,
    timers: TimerWheel<Timer>,
    /// Entries in `timers` of connections that are gone (see
    /// `compact_timers`).
    dead_timers: usize,
    fired: Vec<Timer>,
    actions: VecDeque<IoAction>,
    /// Sum of the sessions' `io_unsent`.
    outbound_backlog: usize,
    clock: Clock,
    pending_total: usize,
    jitter: u64,
    tokens: TokenSource,
    journal: Journal,
    /// Highest message id seen (replayed or accepted): the API issues ids
    /// above it after a restart.
    max_message_id: u64,
    /// Where frames kept in the log are read back from; `None`: all in memory.
    log_reader: Option<Box<dyn RecordReader>>,
    read_buf: Vec<u8>,
    /// Broadcasts, group, user and tag messages, once each.
    fanout: FanoutStore,
    /// Ids of the tag user sets the live log holds (since the last
    /// checkpoint, or restated by it): a tag message whose set is here
    /// names it without writing it again.
    logged_sets: HashSet<u64>,
    /// While replaying: tag user sets read so far, whole or in part.
    replayed_sets: HashMap<u64, ReplayedSet>,
    /// Devices bound to a user, by `user_digest` (check the device's user:
    /// digests may collide).
    users: HashMap<u64, Vec<DeviceId>>,
    next_fanout_sweep: Instant,
    /// Reused buffers for the devices of a publish and a device's backlog.
    scratch_devices: Vec<DeviceId>,
    scratch_shared: Vec<(u64, Arc<SharedMessage>)>,
    /// Messages recallable by task id or userId.
    recall_index: RecallIndex,
    /// Revokes (recall) devices have not confirmed, oldest first. Beside
    /// the devices rather than in them: few devices ever owe one, and every
    /// device would pay for the field.
    revokes: HashMap<DeviceId, Vec<OwedRevoke>>,
    /// Revokes owed over all devices.
    revokes_owed: usize,
    /// Ids up to this one were accepted before this process started: a
    /// queued one may have been written by the last run.
    ids_before_start: u64,
    /// Pushed, succeeded, arrived, opened and ignored counts, and tasks.
    stats: ShardStats,
    next_stats_prune: Instant,
    last_stats_flush: Instant,
    /// The task name of replayed messages (their task's record has it).
    no_name: Arc<str>,
    /// Apps with a `receiptUrl`: their acks make receipts.
    receipt_apps: HashSet<Arc<str>>,
    /// Apps whose Hellos need a TLS client certificate from their CA.
    client_cert_apps: HashSet<Arc<str>>,
    /// Decrypted input of one `on_bytes` call, reused so TLS reads do not
    /// allocate per read.
    tls_plaintext: BytesMut,
    /// TLS sessions open on this shard.
    tls_sessions: usize,
    /// Receipts whose acks are durable, for the shard loop to hand over.
    committed_receipts: Vec<Receipt>,
    /// Rotated-away tokens that still lead a Hello to their device.
    retired: HashMap<Box<str>, Retired>,
    /// The same, by device: they go with it when it is deleted (its slot may
    /// be reused by another device) or presents its new token.
    retired_by_device: HashMap<DeviceId, Vec<Box<str>>>,
    /// (until_ms, old token), oldest first: expired redirects leave memory.
    retired_gc: VecDeque<(u64, Box<str>)>,
    metrics: CoreMetrics,
}

impl DeliveryCore {
    pub fn new(shard_id: usize, shard_count: usize, config: &Config, now: Instant) -> Self {
        Self::with_wall_clock(shard_id, shard_count, config, now, crate::message::unix_ms())
    }

    /// For tests: `now` corresponds to `unix_ms` on the wall clock.
    pub fn with_wall_clock(
        shard_id: usize,
        shard_count: usize,
        config: &Config,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        let d = &config.delivery;
        let mut seed = [0u8; 8];
        // Jitter needs no secrecy; a fixed seed only makes it less spread.
        let _ = getrandom::fill(&mut seed);
        // Room for the connections a shard typically holds, reserved up
        // front: growing by doubling would copy these tables several times
        // during a connect storm, and the allocator keeps the old copies for
        // reuse, which costs more resident memory than the reservation
        // (untouched pages of it are not resident).
        let initial = config.limits.max_connections_per_shard.min(INITIAL_CONNECTIONS);
        let mut core = Self {
            shard_id,
            shard_count,
            limits: Limits {
                max_frame: config.limits.max_frame_bytes,
                max_connections: config.limits.max_connections_per_shard,
                max_outbound: config.limits.max_outbound_bytes,
                handshake_timeout: d.handshake_timeout(),
                write_timeout: d.write_timeout(),
                idle_timeout: d.idle_timeout(),
                ack_timeout: d.ack_timeout(),
                heartbeat_secs: d.heartbeat_secs,
                window: d.inflight_window,
                max_pending: d.max_pending_per_device,
                status_retention: d.status_retention(),
                max_final_statuses: d.max_final_statuses_per_shard,
                max_revokes: d.max_revokes_per_device,
                reportable_per_device: config.stats.reportable_per_device,
                token_redirect_ms: d.token_redirect_secs.saturating_mul(1000),
                shutdown_retry_ms: (d.shutdown_retry_min_ms, d.shutdown_retry_max_ms),
            },
            apps: config
                .apps
                .iter()
                .map(|a| (a.app_id.clone().into_boxed_str(), Arc::from(a.app_id.as_str())))
                .collect(),
            configured_apps: HashSet::new(),
            device_auth: Arc::new(DeviceAuth::new(config, unix_ms)),
            sessions: Slab::with_capacity(initial),
            next_generation: 0,
            devices: Slab::with_capacity(initial),
            by_token: HashMap::with_capacity(initial),
            statuses: StatusTable::new(),
            status_gc: VecDeque::new(),
            timers: TimerWheel::new(now, Duration::from_millis(10), 4096),
            dead_timers: 0,
            fired: Vec::new(),
            actions: VecDeque::new(),
            outbound_backlog: 0,
            clock: Clock {
                start: now,
                start_unix_ms: unix_ms,
            },
            pending_total: 0,
            jitter: u64::from_le_bytes(seed) | 1,
            tokens: TokenSource::new(),
            journal: Journal {
                enabled: true,
                ..Default::default()
            },
            max_message_id: 0,
            log_reader: None,
            read_buf: Vec::new(),
            fanout: FanoutStore::new(d.max_shared_messages_per_shard),
            logged_sets: HashSet::new(),
            replayed_sets: HashMap::new(),
            users: HashMap::new(),
            next_fanout_sweep: now,
            scratch_devices: Vec::new(),
            scratch_shared: Vec::new(),
            // Kept while a recall could still name the message, and while
            // its statuses say what happened to it.
            recall_index: RecallIndex::new(
                (d.recall_window_secs.max(d.status_retention_secs) + d.max_ttl_secs) * 1000,
                d.max_recall_index_per_shard,
            ),
            revokes: HashMap::new(),
            revokes_owed: 0,
            ids_before_start: 0,
            stats: ShardStats::new(crate::stats::Limits::from_config(config), shard_id),
            next_stats_prune: now + STATS_PRUNE_INTERVAL,
            last_stats_flush: now,
            no_name: Arc::from(""),
            receipt_apps: config
                .apps
                .iter()
                .filter(|a| a.receipt_url.is_some())
                .map(|a| Arc::from(a.app_id.as_str()))
                .collect(),
            client_cert_apps: config
                .apps
                .iter()
                .filter(|a| a.require_client_cert)
                .map(|a| Arc::from(a.app_id.as_str()))
                .collect(),
            tls_plaintext: BytesMut::new(),
            tls_sessions: 0,
            committed_receipts: Vec::new(),
            retired: HashMap::new(),
            retired_by_device: HashMap::new(),
            retired_gc: VecDeque::new(),
            metrics: CoreMetrics::new(shard_id),
        };
        core.configured_apps = core.apps.values().cloned().collect();
        core
    }

    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    pub fn connection_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending_total
    }

    /// Lets the core keep the frames of messages for offline devices in the
    /// log instead of memory, reading them back with `reader` when their
    /// device connects. Set before `replay`.
    pub fn set_log_reader(&mut self, reader: Box<dyn RecordReader>) {
        self.log_reader = Some(reader);
    }

    /// Highest message id replayed or accepted.
    /// Makes this core check Hellos with `auth`, the one every shard of
    /// the process shares.
    /// A reloaded configuration (`reload`): the apps devices may name,
    /// which need a client certificate, their device authentication, and
    /// the timeouts and caps that apply from the next event on. Sessions
    /// stay open; a deadline already armed keeps its time. Everything else
    /// the core sized at start (windows, caps of stored state) keeps its
    /// start value: `reload` never changes those keys.
    pub fn reconfigure(&mut self, config: &Config, device_auth: Arc<DeviceAuth>) {
        let d = &config.delivery;
        self.limits.max_connections = config.limits.max_connections_per_shard;
        self.limits.max_outbound = config.limits.max_outbound_bytes;
        self.limits.handshake_timeout = d.handshake_timeout();
        self.limits.write_timeout = d.write_timeout();
        self.limits.idle_timeout = d.idle_timeout();
        self.limits.ack_timeout = d.ack_timeout();
        self.limits.heartbeat_secs = d.heartbeat_secs;
        self.limits.token_redirect_ms = d.token_redirect_secs.saturating_mul(1000);
        self.configured_apps = config.apps.iter().map(|a| self.app_arc(&a.app_id)).collect();
        self.client_cert_apps = config
            .apps
            .iter()
            .filter(|a| a.require_client_cert)
            .map(|a| self.app_arc(&a.app_id))
            .collect();
        self.device_auth = device_auth;
    }

    pub fn share_device_auth(&mut self, auth: Arc<DeviceAuth>) {
        self.device_auth = auth;
    }

    pub fn max_message_id(&self) -> u64 {
        self.max_message_id
    }

    /// Journals the statistics counted since the last flush, when this
    /// iteration writes the log anyway or when they waited
    /// `STATS_FLUSH_INTERVAL`. The shard loop calls it before `journal`.
    pub fn flush_stats(&mut self, now: Instant) {
        if !self.stats.has_unflushed()
            || (!self.journal_pending() && now < self.last_stats_flush + STATS_FLUSH_INTERVAL)
        {
            return;
        }
        self.last_stats_flush = now;
        let journal = &mut self.journal;
        self.stats
            .take_delta(|payload| journal.write(&Entry::Stats(payload)));
    }

    /// The durable changes since the last `journal_done`, framed as log
    /// records, and how many records that is. Empty when nothing changed
    /// and no push waits for an answer.
    pub fn journal(&self) -> (&[u8], usize) {
        (&self.journal.framed, self.journal.records)
    }

    /// Receipts of acks that `journal_done` found durable, in ack order.
    /// The shard loop takes them after every commit.
    pub fn take_receipts(&mut self) -> std::vec::Drain<'_, Receipt> {
        self.committed_receipts.drain(..)
    }

    /// Whether `journal_done` has anything to do.
    pub fn journal_pending(&self) -> bool {
        self.journal.records > 0 || !self.journal.replies.is_empty()
    }

    /// The shard loop wrote `journal()` to the log (`Ok`: durable per the
    /// fsync policy) or could not. On success the new messages may now be
    /// sent and the pushes are answered; on failure the messages are
    /// withdrawn (no device has seen them) and the API reports the refusal.
    /// The loop runs this before it hands outbound bytes to sockets, so a
    /// Welcome with a new token also leaves only once the token is durable.
    ///
    /// `Ok` carries where `journal()` starts in the log, if the caller knows:
    /// messages for offline devices then leave memory and are read back
    /// from there when their device connects.
    pub fn journal_done(&mut self, result: Result<Option<Position>, StorageRefusal>, now: Instant) {
        self.stats.committed(result.is_ok());
        let journal = &mut self.journal;
        journal.framed.clear();
        journal.records = 0;
        let accepted = std::mem::take(&mut journal.accepted);
        let replies = std::mem::take(&mut journal.replies);
        let published = std::mem::take(&mut journal.published);
        let rotations = std::mem::take(&mut journal.rotations);
        let collapsed = std::mem::take(&mut journal.collapsed);
        if result.is_ok() {
            journal.sets.clear();
            self.committed_receipts.append(&mut journal.receipts);
        } else {
            // The acks are not in the log: after a restart these messages
            // are delivered again, and their acks make the receipts then
            // (unless a checkpoint restates the acked statuses first).
            for r in journal.receipts.drain(..) {
                crate::receipts::dropped_counter(&r.app, "not_durable").increment(1);
            }
        }
        match result {
            Ok(written_at) => {
                let to_log = if self.log_reader.is_some() {
                    written_at
                } else {
                    None
                };
                for m in &accepted {
                    let Some(d) = self.devices.get_mut(m.device) else {
                        continue;
                    };
                    // New messages are at the back.
                    if let Some(p) = d.queue.iter_mut().rev().find(|p| p.id == m.message_id) {
                        p.durable = true;
                        if d.conn.is_none() && matches!(p.frame, FrameSlot::Memory(_)) {
                            if let Some(at) = to_log {
                                let offset = at.offset + m.record_at as u64;
                                p.frame = FrameSlot::Log(Span::at(Position { offset, ..at }, m.record_len));
                            }
                        }
                    }
                }
                for m in &accepted {
                    if self.devices.contains(m.device) {
                        self.fill_window(m.device, now);
                    }
                }
                for r in &rotations {
                    self.tell_new_token(r);
                }
                for answer in replies {
                    answer.send(Ok(()));
                }
            }
            Err(refusal) => {
                for m in accepted {
                    self.recall_index.remove(m.message_id);
                    self.withdraw(m.device, m.message_id, m.status_key, now);
                }
                for (device, pos, pending) in collapsed.into_iter().rev() {
                    self.uncollapse(device, pos, pending, now);
                }
                for id in published {
                    self.fanout.remove(id);
                    self.recall_index.remove(id);
                }
                for set in std::mem::take(&mut self.journal.sets) {
                    self.logged_sets.remove(&set);
                }
                // Newest first, so a chain of rotations unwinds in order.
                for r in rotations.into_iter().rev() {
                    self.undo_rotation(r);
                }
                self.metrics.shared_stored.set(self.fanout.len() as f64);
                for answer in replies {
                    answer.send(Err(refusal));
                }
                self.metrics.pending.set(self.pending_total as f64);
            }
        }
        if journal_capacity_is_large(&self.journal.framed) {
            self.journal.framed = Vec::new();
        }
    }

    fn withdraw(&mut self, device: DeviceId, message_id: u64, key: StatusKey, now: Instant) {
        if self
            .statuses
            .get(&key)
            .is_some_and(|r| r.message_id == message_id)
        {
            self.statuses.remove(&key);
        }
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        if let Some(pos) = d.queue.iter().position(|p| p.id == message_id) {
            d.queue.remove(pos);
            if pos < d.in_flight {
                d.in_flight -= 1;
            }
            self.pending_total -= 1;
            self.metrics.withdrawn.increment(1);
            self.fill_window(device, now);
        }
    }

    /// Applies one recovered log record. Call for every record in log order
    /// before serving anything, then `finish_replay`. Replay is idempotent
    /// per record, so a log that starts mid-history and ends with a
    /// checkpoint (a crash during compaction) replays to the same state.
    ///
    /// `at` is where the record starts in the log, if known: with a log
    /// reader set, replayed messages then stay there instead of in memory.
    pub fn replay(
        &mut self,
        kind: u8,
        payload: &[u8],
        at: Option<Position>,
        now: Instant,
    ) -> Result<(), String> {
        self.journal.enabled = false;
        match Entry::decode(kind, payload)? {
            Entry::Device(entry) => self.replay_device(&entry),
            Entry::DeviceDeleted { token } => {
                if let Some(&device) = self.by_token.get(token) {
                    self.delete_device(device, now);
                }
            }
            Entry::Accepted(a) => {
                let frame_task_id = match crate::protocol::decode_slice(a.frame, usize::MAX) {
                    Ok(Some((Frame::Push(p), used)))
                        if used == a.frame.len() && p.id == a.message_id && p.msg_key == a.msg_key =>
                    {
                        p.task_id.parse().unwrap_or(0)
                    }
                    _ => return Err(format!("message {} holds no matching Push frame", a.message_id)),
                };
                let app_id = self.app_arc(a.app);
                let logged = at
                    .filter(|_| self.log_reader.is_some())
                    .map(|at| Span::at(at, RECORD_HEADER + payload.len()));
                let message = Message {
                    id: a.message_id,
                    app_id,
                    token: a.token.into(),
                    msg_key: a.msg_key.into(),
                    accepted_at_ms: a.accepted_at_ms,
                    expires_at_ms: a.expires_at_ms,
                    frame: match logged {
                        Some(_) => Bytes::new(),
                        None => Bytes::copy_from_slice(a.frame),
                    },
                    task: TaskTag {
                        // Records older than the task fields say 0, but the
                        // frame still names the task, so a recall by task id
                        // finds the message. The statistics count it
                        // untasked all the same: no task of push type
                        // `Simple` has that id.
                        id: if a.task_id != 0 { a.task_id } else { frame_task_id },
                        push_type: a.push_type,
                        name: self.no_name.clone(),
                    },
                    collapse_key: a.collapse_key.map(Into::into),
                };
                self.max_message_id = self.max_message_id.max(a.message_id);
                // Already expired ones are accepted and expire on the first
                // timer tick, so their status says Expired.
                self.accept_from(message, logged, now);
            }
            Entry::Finished {
                token,
                message_id,
                status,
                at_ms,
            } => self.replay_finished(token, message_id, status, at_ms, now),
            Entry::Shared(m) => {
                self.max_message_id = self.max_message_id.max(m.message_id);
                let audience = match m.audience {
                    AudienceEntry::Audience(Audience::Tag { .. }) => {
                        return Err(format!("message {} names a tag without its set", m.message_id))
                    }
                    AudienceEntry::Audience(audience) => audience,
                    AudienceEntry::Tag { name, set_id, users } => {
                        let set = match self.replayed_sets.get(&set_id) {
                            Some(ReplayedSet::Whole(set)) if set.len() as u64 == users => set.clone(),
                            _ => {
                                return Err(format!(
                                    "tag message {} names user set {set_id:016x} ({users} users), which the log does not hold before it",
                                    m.message_id
                                ))
                            }
                        };
                        Audience::Tag {
                            name: name.into(),
                            users: set,
                        }
                    }
                };
                let message = Arc::new(SharedMessage {
                    id: m.message_id,
                    app_id: self.app_arc(m.app),
                    audience,
                    msg_key: m.msg_key.into(),
                    task_id: m.task_id,
                    accepted_at_ms: m.accepted_at_ms,
                    expires_at_ms: m.expires_at_ms,
                    frame: Bytes::copy_from_slice(m.frame),
                    push_type: m.push_type,
                    task_name: self.no_name.clone(),
                    collapse_key: m.collapse_key.map(Into::into),
                });
                self.index_shared(&message);
                // Expired ones too: the statuses logged after them need
                // their msgKey. The first sweep forgets them.
                match self.fanout.insert(message) {
                    Ok(_) | Err(Refused::Duplicate) => {}
                    Err(Refused::Full) => self.metrics.shared_refused.increment(1),
                }
            }
            Entry::TagUsers(part) => self.replay_tag_users(&part)?,
            Entry::FinalStatus(f) => {
                let key = StatusKey::from_u128(f.key);
                let inserted = self.statuses.insert_if_absent(key, || StatusRecord {
                    status: f.status,
                    message_id: f.message_id,
                    accepted_at_ms: f.accepted_at_ms,
                    expires_at_ms: f.expires_at_ms,
                    acked_at_ms: f.acked_at_ms.unwrap_or(0),
                    forget_at_ms: f.forget_at_ms,
                    recall: f.recall,
                });
                if inserted {
                    self.status_gc
                        .push_back((self.clock.instant_of(f.forget_at_ms), key));
                }
            }
            Entry::Recall(r) => self.replay_recall(r, now),
            Entry::Stats(payload) => match self.stats.replay(payload)? {
                ForDevices::Nothing => {}
                ForDevices::Reports(reports) => {
                    for (token, message_id, code) in reports {
                        let Some(&device) = self.by_token.get(token) else {
                            continue;
                        };
                        let ring = self.devices[device].reports.as_deref_mut();
                        let entry =
                            ring.and_then(|r| r.entries.iter_mut().find(|r| r.message_id == message_id));
                        if let Some(entry) = entry {
                            entry.reported = code;
                        }
                    }
                }
                ForDevices::Rings(rings) => {
                    for (token, ring) in rings {
                        if let Some(&device) = self.by_token.get(token) {
                            self.devices[device].reports = Some(Box::new(ReportRing {
                                entries: ring,
                                next: 0,
                            }));
                        }
                    }
                }
            },
            Entry::Token(TokenEntry::Rotated {
                app,
                old,
                new,
                at_ms,
                redirect_until_ms,
            }) => {
                let holder = |token: &str| {
                    let device = self.by_token.get(token).copied()?;
                    Some((device, *self.devices[device].app == *app))
                };
                // The rotation itself, or (a checkpoint's restatement) only
                // the redirect to a device already under its new token, or
                // nothing (the device was deleted since).
                let device = match (holder(old), holder(new)) {
                    (Some((device, true)), None) => {
                        self.rekey_device(device, new.into());
                        Some(device)
                    }
                    (None, Some((device, true))) => Some(device),
                    (None, None) => None,
                    _ => return Err(format!("token record {old:?} -> {new:?} contradicts the devices")),
                };
                if let Some(device) = device {
                    if redirect_until_ms > self.clock.unix_ms(now) {
                        // A displaced redirect has its own RedirectEnded record.
                        let _ = self.add_redirect(old.into(), device, at_ms, redirect_until_ms);
                    }
                }
            }
            Entry::Token(TokenEntry::RedirectEnded { old }) => self.end_redirect(old),
        }
        Ok(())
    }

    /// Remembers a shared message for recall by task id or userId.
    fn index_shared(&mut self, message: &SharedMessage) {
        let entry = Indexed {
            app: message.app_id.clone(),
            task_id: message.task_id,
            msg_key: message.msg_key.clone(),
            target: Target::shared(&message.audience),
            accepted_at_ms: message.accepted_at_ms,
            expires_at_ms: message.expires_at_ms,
            recalled: false,
        };
        let evicted = self.recall_index.insert(message.id, entry);
        self.metrics.recall_index_evicted.increment(evicted as u64);
    }

    /// Gathers a tag user set's parts; the last one makes it whole. A set
    /// cut short by a crash is replaced by the next copy of it in the log.
    fn replay_tag_users(&mut self, part: &TagUsersEntry<'_>) -> Result<(), String> {
        // A set restated by a checkpoint after the journal wrote it: the
        // same contents (the id is their digest), already whole.
        if let Some(ReplayedSet::Whole(_)) = self.replayed_sets.get(&part.set_id) {
            return Ok(());
        }
        let damaged = || {
            format!(
                "tag user set {:016x}: part {} of {} out of order",
                part.set_id, part.part, part.parts
            )
        };
        let gathered = if part.part == 0 {
            Vec::with_capacity(part.digests.len() / 8 * part.parts as usize)
        } else {
            match self.replayed_sets.remove(&part.set_id) {
                Some(ReplayedSet::Partial { next, parts, digests })
                    if next == part.part && parts == part.parts =>
                {
                    digests
                }
                _ => return Err(damaged()),
            }
        };
        let mut digests = gathered;
        digests.extend(part.digests());
        let next = part.part + 1;
        let entry = if next == part.parts {
            let set = TagUsers::from_sorted(digests)
                .ok_or_else(|| format!("tag user set {:016x} is not sorted", part.set_id))?;
            if set.id() != part.set_id {
                return Err(format!(
                    "tag user set {:016x} holds another set's users",
                    part.set_id
                ));
            }
            self.logged_sets.insert(part.set_id);
            ReplayedSet::Whole(set)
        } else {
            ReplayedSet::Partial {
                next,
                parts: part.parts,
                digests,
            }
        };
        self.replayed_sets.insert(part.set_id, entry);
        Ok(())
    }

    /// Ends replay: from now on changes are journaled.
    pub fn finish_replay(&mut self) {
        // The replayed messages hold the sets they use.
        self.replayed_sets = HashMap::new();
        self.journal.enabled = true;
        self.ids_before_start = self.max_message_id;
        self.metrics.recall_index.set(self.recall_index.len() as f64);
        self.metrics.revokes_pending.set(self.revokes_owed as f64);
        // Checkpoints restate redirects in table order.
        self.retired_gc.make_contiguous().sort_unstable();
        self.metrics.redirects.set(self.retired.len() as f64);
        self.metrics.pending.set(self.pending_total as f64);
        self.metrics.devices.set(self.devices.len() as f64);
        self.metrics.shared_stored.set(self.fanout.len() as f64);
        self.metrics.stats_tasks.set(self.stats.task_count() as f64);
    }

    fn app_arc(&mut self, app: &str) -> Arc<str> {
        if let Some(arc) = self.apps.get(app) {
            return arc.clone();
        }
        // An app removed from the config keeps its devices and messages;
        // they are served again if it comes back.
        let arc: Arc<str> = Arc::from(app);
        self.apps.insert(app.into(), arc.clone());
        arc
    }

    fn replay_device(&mut self, entry: &DeviceEntry<'_>) {
        let device = match self.by_token.get(entry.token) {
            Some(&d) => d,
            None => {
                // Live, tokens are never minted while they redirect.
                self.end_redirect(entry.token);
                let app = self.app_arc(entry.app);
                let device = self.devices.insert(Device::new(
                    app,
                    entry.token.into(),
                    entry.platform,
                    entry.registered_at_ms,
                ));
                self.by_token.insert(entry.token.into(), device);
                device
            }
        };
        if self.devices[device].user_id.as_deref() != entry.user_id {
            self.unindex_user(device);
            self.devices[device].user_id = entry.user_id.map(Into::into);
            self.index_user(device);
        }
        let d = &mut self.devices[device];
        d.platform = entry.platform;
        d.groups = entry.groups.iter().map(|&g| g.into()).collect();
        d.vendor_token = entry.vendor.map(|(c, t)| (c, t.into()));
        d.registered_at_ms = entry.registered_at_ms;
        d.bound_at_ms = entry.bound_at_ms;
        d.unbound_at_ms = entry.unbound_at_ms;
    }

    fn index_user(&mut self, device: DeviceId) {
        let d = &self.devices[device];
        if let Some(user) = &d.user_id {
            self.users
                .entry(user_digest(&d.app, user))
                .or_default()
                .push(device);
        }
    }

    fn unindex_user(&mut self, device: DeviceId) {
        let d = &self.devices[device];
        let Some(user) = &d.user_id else { return };
        let digest = user_digest(&d.app, user);
        if let Some(list) = self.users.get_mut(&digest) {
            list.retain(|&x| x != device);
            if list.is_empty() {
                self.users.remove(&digest);
            }
        }
    }

    fn replay_finished(&mut self, token: &str, message_id: u64, status: Status, at_ms: u64, now: Instant) {
        let Some(&device) = self.by_token.get(token) else {
            return;
        };
        let d = &mut self.devices[device];
        let forget_at_ms = at_ms + self.limits.status_retention.as_millis() as u64;
        let Some(pos) = d.queue.iter().position(|p| p.id == message_id) else {
            // A shared message's delivery: only its end was logged. Its
            // status keeps the device from being sent it again.
            if let Some(m) = self.fanout.get(message_id) {
                if status == Status::Acked {
                    let (task, _) = self.stats.task(&m.app_id, m.task_id, m.push_type, "", 0, false);
                    let entry = self.stats.reportable(task, message_id, at_ms);
                    stats_remember(d, self.limits.reportable_per_device, entry);
                }
                let key = StatusKey::new(&m.app_id, &m.msg_key, token);
                let inserted = self.statuses.insert_if_absent(key, || StatusRecord {
                    status,
                    message_id,
                    accepted_at_ms: m.accepted_at_ms,
                    expires_at_ms: m.expires_at_ms,
                    acked_at_ms: if status == Status::Acked { at_ms } else { 0 },
                    forget_at_ms,
                    recall: RecallMark::None,
                });
                if inserted {
                    let forget_at = self.clock.instant_of(forget_at_ms).max(now);
                    self.status_gc.push_back((forget_at, key));
                }
            }
            return;
        };
        let gone = d.queue.remove(pos).expect("position is in range");
        if d.queue.is_empty() {
            d.queue = VecDeque::new();
        }
        self.pending_total -= 1;
        if status == Status::Acked {
            let entry = self.stats.reportable(gone.task, message_id, at_ms);
            stats_remember(d, self.limits.reportable_per_device, entry);
        }
        if let Some(record) = self.statuses.get_mut(&gone.status_key) {
            record.status = status;
            record.forget_at_ms = forget_at_ms;
            if status == Status::Acked {
                record.acked_at_ms = at_ms;
            }
        }
        let forget_at = self.clock.instant_of(forget_at_ms).max(now);
        self.status_gc.push_back((forget_at, gone.status_key));
    }

    /// Restates the whole durable state as log records (devices, pending
    /// messages in queue order, final statuses still kept), handing them to
    /// `emit` in chunks of about 1 MiB with their record count; `emit`
    /// answers where the chunk will start in the log, if it knows. After a
    /// checkpoint that starts a segment, every older segment can go: once
    /// it is durable, call `checkpoint_done` with what this returns, so that
    /// frames kept in the log are read from the checkpoint from then on.
    ///
    /// Frames kept in the log are read back to be restated; one that cannot
    /// be read fails the checkpoint with `E::from`, keeping the older
    /// segments (the message is dropped, visibly, when its device comes).
    pub fn write_checkpoint<E: From<UnreadableFrame>>(
        &mut self,
        mut emit: impl FnMut(&[u8], usize) -> Result<Option<Position>, E>,
    ) -> Result<CheckpointWritten, E> {
        const CHUNK: usize = 1 << 20;
        let mut chunk = CheckpointChunk {
            out: Vec::with_capacity(CHUNK + 4096),
            records: 0,
            messages: Vec::new(),
            spans: Vec::new(),
            track: self.log_reader.is_some(),
        };
        let Self {
            devices,
            statuses,
            log_reader,
            read_buf,
            fanout,
            recall_index,
            revokes,
            logged_sets,
            stats,
            retired,
            ..
        } = self;
        // Older segments go once this is durable: from then on the log holds
        // the sets this restates, and no other.
        logged_sets.clear();
        // First, so that the tasks exist when the messages below are
        // replayed.
        let mut stats_out: Result<(), E> = Ok(());
        stats.write_snapshot(|payload| {
            if stats_out.is_ok() {
                chunk.put(&Entry::Stats(payload), false);
                stats_out = chunk.flush_if_full(CHUNK, &mut emit);
            }
        });
        stats_out?;
        for stored in fanout.iter() {
            let m = &stored.message;
            if let Audience::Tag { users, .. } = &m.audience {
                if logged_sets.insert(users.id()) {
                    let parts = TagUsersEntry::write_set(&mut chunk.out, users.id(), users.digests());
                    chunk.records += parts;
                    chunk.flush_if_full(CHUNK, &mut emit)?;
                }
            }
            chunk.put(
                &Entry::Shared(SharedEntry {
                    message_id: m.id,
                    app: &m.app_id,
                    audience: AudienceEntry::of(&m.audience),
                    msg_key: &m.msg_key,
                    task_id: m.task_id,
                    accepted_at_ms: m.accepted_at_ms,
                    expires_at_ms: m.expires_at_ms,
                    frame: &m.frame,
                    push_type: m.push_type,
                    collapse_key: m.collapse_key.as_deref(),
                }),
                false,
            );
            chunk.flush_if_full(CHUNK, &mut emit)?;
        }
        for (_, d) in devices.iter() {
            chunk.put(&device_entry(d), false);
            chunk.flush_if_full(CHUNK, &mut emit)?;
        }
        // After the devices: replay finds each under its new token and only
        // adds the redirect.
        for (old, r) in retired.iter() {
            let d = &devices[r.device];
            chunk.put(
                &Entry::Token(TokenEntry::Rotated {
                    app: &d.app,
                    old,
                    new: &d.token,
                    at_ms: r.rotated_at_ms,
                    redirect_until_ms: r.until_ms,
                }),
                false,
            );
            chunk.flush_if_full(CHUNK, &mut emit)?;
        }
        // After the devices they belong to.
        let with_rings: Vec<&Device> = devices
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d.reports.is_some())
            .collect();
        for group in with_rings.chunks(crate::stats::record::CHUNK / 256) {
            let rings = group
                .iter()
                .map(|d| {
                    let ring = d.reports.as_deref().expect("filtered");
                    let entries = crate::stats::oldest_first(&ring.entries, ring.next);
                    (&*d.token, entries.copied().collect())
                })
                .collect();
            let mut payload = Vec::new();
            crate::stats::Record::Reportables { devices: rings }.encode(&mut payload);
            chunk.put(&Entry::Stats(&payload), false);
            chunk.flush_if_full(CHUNK, &mut emit)?;
        }
        for (_, d) in devices.iter() {
            for p in &d.queue {
                match &p.frame {
                    FrameSlot::Memory(frame) => {
                        let msg_key = push_msg_key(frame);
                        let (task_id, push_type) = stats.describe(p.task);
                        chunk.put(
                            &Entry::Accepted(AcceptedEntry {
                                message_id: p.id,
                                app: &d.app,
                                token: &d.token,
                                msg_key: &msg_key,
                                accepted_at_ms: p.accepted_at_ms,
                                expires_at_ms: p.expires_at_ms,
                                frame,
                                task_id,
                                push_type,
                                collapse_key: p.collapse_key.as_deref(),
                            }),
                            true,
                        );
                    }
                    FrameSlot::Log(span) => {
                        let entry = read_logged_message(log_reader, *span, p.id, read_buf)
                            .map_err(|reason| E::from(UnreadableFrame(reason)))?;
                        // The record names the token the message was pushed
                        // to; a rotation since then moved it to this one.
                        let entry = AcceptedEntry {
                            token: &d.token,
                            ..entry
                        };
                        chunk.put(&Entry::Accepted(entry), true);
                    }
                    // The shared message is restated once, above; after a
                    // restart the device is matched against it again.
                    FrameSlot::Shared(_) => chunk.skip(),
                }
                chunk.flush_if_full(CHUNK, &mut emit)?;
            }
        }
        for (key, r) in statuses.iter() {
            if r.status == Status::Pending {
                continue;
            }
            chunk.put(
                &Entry::FinalStatus(FinalStatusEntry {
                    key: key.to_u128(),
                    message_id: r.message_id,
                    status: r.status,
                    accepted_at_ms: r.accepted_at_ms,
                    expires_at_ms: r.expires_at_ms,
                    acked_at_ms: (r.acked_at_ms != 0).then_some(r.acked_at_ms),
                    forget_at_ms: r.forget_at_ms,
                    recall: r.recall,
                }),
                false,
            );
            chunk.flush_if_full(CHUNK, &mut emit)?;
        }
        // After the statuses, which the Revokes mark.
        for (id, entry) in recall_index.iter() {
            chunk.put(&indexed_entry(id, entry), false);
            chunk.flush_if_full(CHUNK, &mut emit)?;
        }
        for (device, owed) in revokes.iter() {
            let d = &devices[*device];
            for r in owed {
                let key = StatusKey::new(&d.app, &r.msg_key, &d.token);
                let (accepted_at_ms, expires_at_ms) = statuses
                    .get(&key)
                    .map_or((0, 0), |s| (s.accepted_at_ms, s.expires_at_ms));
                chunk.put(
                    &Entry::Recall(RecallEntry::Device(DeviceRecallEntry {
                        app: &d.app,
                        token: &d.token,
                        msg_key: &r.msg_key,
                        message_id: r.message_id,
                        accepted_at_ms,
                        expires_at_ms,
                        at_ms: accepted_at_ms,
                        revoke_until_ms: Some(r.until_ms),
                    })),
                    false,
                );
                chunk.flush_if_full(CHUNK, &mut emit)?;
            }
        }
        chunk.flush_if_full(0, &mut emit)?;
        Ok(CheckpointWritten { spans: chunk.spans })
    }

    /// The checkpoint `written` is durable and the segments before
    /// `first_live_segment` are about to go: every pending message of an
    /// offline device is read from the checkpoint from now on (which also
    /// moves out of memory those that arrived while their device was
    /// online). Nothing may change the queues between `write_checkpoint`
    /// and this call.
    pub fn checkpoint_done(&mut self, written: CheckpointWritten, first_live_segment: u64) {
        let Some(reader) = self.log_reader.as_mut() else {
            return;
        };
        let mut spans = written.spans.into_iter();
        for (_, d) in self.devices.iter_mut() {
            let offline = d.conn.is_none();
            for p in d.queue.iter_mut() {
                let span = spans.next().expect("one span per pending message");
                if let (Some(span), true) = (span, offline || matches!(p.frame, FrameSlot::Log(_))) {
                    p.frame = FrameSlot::Log(span);
                }
            }
        }
        debug_assert!(spans.next().is_none(), "queues changed during a checkpoint");
        reader.forget_before(first_live_segment);
    }

    /// Panics if the core's bookkeeping disagrees with itself: the pending
    /// count, the in-flight windows, the token index and device-to-connection
    /// links. For tests and fuzzing; O(devices + messages).
    pub fn check_invariants(&self) {
        let queued: usize = self.devices.iter().map(|(_, d)| d.queue.len()).sum();
        assert_eq!(queued, self.pending_total, "pending count");
        let owed: usize = self.revokes.values().map(Vec::len).sum();
        assert_eq!(owed, self.revokes_owed, "revokes owed");
        for (&device, owed) in &self.revokes {
            assert!(self.devices.contains(device), "revokes of a deleted device");
            assert!(!owed.is_empty(), "no empty revoke lists");
            assert!(owed.len() <= self.limits.max_revokes, "revoke cap");
        }
        assert_eq!(self.by_token.len(), self.devices.len(), "token index");
        for (id, d) in &self.devices {
            assert_eq!(self.by_token.get(&d.token), Some(&id), "token index entry");
            assert!(
                d.in_flight <= d.queue.len() && d.in_flight <= self.limits.window,
                "window"
            );
            assert!(d.queue.len() <= self.limits.max_pending, "pending cap");
            match d.conn {
                Some(conn) => assert_eq!(self.sessions[conn].state, SessionState::Active(id), "link"),
                None => assert_eq!(d.in_flight, 0, "nothing in flight without a connection"),
            }
            if let Some(user) = &d.user_id {
                let bound = self.users.get(&user_digest(&d.app, user));
                assert!(bound.is_some_and(|b| b.contains(&id)), "user index entry");
            }
        }
        for (old, r) in &self.retired {
            assert!(!self.by_token.contains_key(old), "a retired token is no device's");
            assert!(self.devices.contains(r.device), "redirects lead to live devices");
            let listed = self.retired_by_device.get(&r.device);
            assert!(listed.is_some_and(|l| l.contains(old)), "redirect index entry");
        }
        let listed: usize = self.retired_by_device.values().map(Vec::len).sum();
        assert_eq!(listed, self.retired.len(), "redirect index");
        for list in self.retired_by_device.values() {
            assert!(
                !list.is_empty() && list.len() <= MAX_REDIRECTS_PER_DEVICE,
                "redirects per device"
            );
        }
        for (digest, bound) in &self.users {
            assert!(!bound.is_empty(), "no empty user index lists");
            for &id in bound {
                let d = &self.devices[id];
                let user = d.user_id.as_deref().expect("indexed devices have a user");
                assert_eq!(user_digest(&d.app, user), *digest, "user index digest");
            }
        }
    }

    /// Registers a new socket. `None` when the shard is at
    /// `limits.max_connections_per_shard`: write `overload_frame` and close.
    pub fn open_connection(&mut self, now: Instant) -> Option<ConnId> {
        self.open_connection_with(now, None)
    }

    /// `open_connection` for a socket of the TLS listener (or one handed
    /// over with its TLS session): `on_bytes` then takes ciphertext. The
    /// handshake deadline covers the TLS handshake and the Hello.
    pub fn open_tls_connection(&mut self, now: Instant, tls: Box<TlsSession>) -> Option<ConnId> {
        self.open_connection_with(now, Some(tls))
    }

    fn open_connection_with(&mut self, now: Instant, tls: Option<Box<TlsSession>>) -> Option<ConnId> {
        if self.sessions.len() >= self.limits.max_connections {
            self.metrics.closed("overloaded");
            return None;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let mut session = Session::new(generation, now);
        if tls.is_some() {
            session.tls = tls;
            self.tls_sessions += 1;
            self.metrics.tls_sessions.set(self.tls_sessions as f64);
        }
        let conn = self.sessions.insert(session);
        self.arm_connection_timer(
            now + self.limits.handshake_timeout,
            Timer::Handshake { conn, generation },
        );
        self.metrics.sessions.set(self.sessions.len() as f64);
        Some(conn)
    }

    /// GoAway(overloaded) with a jittered retry-after of 1–5 s, so refused
    /// devices do not come back in one wave.
    pub fn overload_frame(&mut self) -> Bytes {
        Bytes::from(
            Frame::GoAway(body::GoAway {
                reason: GoAwayReason::Overloaded as u32,
                retry_after_ms: self.jittered_ms(1000, 5000),
                message: "shard at its connection limit".into(),
            })
            .to_bytes(),
        )
    }

    /// The GoAway for a connection admission refused, counted by reason:
    /// overloaded (1–5 s) for the server-wide caps, too_many_connections
    /// (5–30 s: an address at its cap frees slots only as its devices
    /// leave) and banned (the rest of the ban plus 1–5 s).
    pub fn refusal_frame(&mut self, refusal: crate::admission::Refusal) -> Bytes {
        use crate::admission::Refusal;
        self.metrics.closed(refusal.as_str());
        let (reason, retry_after_ms, message) = match refusal {
            Refusal::TotalCap => (
                GoAwayReason::Overloaded,
                self.jittered_ms(1000, 5000),
                "server at its connection limit",
            ),
            Refusal::ShardBusy => (
                GoAwayReason::Overloaded,
                self.jittered_ms(1000, 5000),
                "server busy",
            ),
            Refusal::TableFull => (
                GoAwayReason::Overloaded,
                self.jittered_ms(1000, 5000),
                "too many client addresses",
            ),
            Refusal::AddressCap => (
                GoAwayReason::TooManyConnections,
                self.jittered_ms(5000, 30_000),
                "too many connections from your address",
            ),
            Refusal::Banned { remaining } => {
                let ban = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
                let jitter = self.jittered_ms(1000, 5000);
                (
                    GoAwayReason::Banned,
                    ban.saturating_add(jitter),
                    "connecting too often; banned for a while",
                )
            }
        };
        Bytes::from(
            Frame::GoAway(body::GoAway {
                reason: reason as u32,
                retry_after_ms,
                message: message.into(),
            })
            .to_bytes(),
        )
    }

    /// The I/O layer's report of the bytes it holds for `conn` that the
    /// socket has not taken (a send in flight counts until it completes).
    /// Non-zero starts the write deadline unless it runs already; zero ends
    /// it. Past `limits.max_outbound_bytes` with what the core still holds,
    /// the connection is aborted as a slow reader.
    pub fn on_write_progress(&mut self, conn: ConnId, unsent: usize, now: Instant) {
        let now_ms = self.clock.wrapping_ms(now);
        let Some(session) = self.sessions.get_mut(conn) else {
            return;
        };
        let unsent = u32::try_from(unsent).unwrap_or(u32::MAX);
        let was = session.io_unsent;
        if was == unsent {
            return;
        }
        self.outbound_backlog = self.outbound_backlog - was as usize + unsent as usize;
        session.io_unsent = unsent;
        self.metrics.outbound_backlog.set(self.outbound_backlog as f64);
        if unsent == 0 {
            return;
        }
        let outbound = unsent as usize + session.outbound.len();
        if was == 0 {
            session.blocked_since_ms = now_ms;
            if !session.write_timer_armed {
                session.write_timer_armed = true;
                let generation = session.generation;
                self.arm_connection_timer(
                    now + self.limits.write_timeout,
                    Timer::WriteStall { conn, generation },
                );
            }
        }
        if outbound > self.limits.max_outbound {
            self.abort(conn, "slow_reader");
        }
    }

    fn jittered_ms(&mut self, low: u32, high: u32) -> u32 {
        // xorshift64: cheap and good enough to spread reconnects.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        low + (self.jitter % u64::from(high - low + 1)) as u32
    }

    /// False once a close or hand-off is decided: the backend stops reading,
    /// so bytes for an adopting shard stay in the kernel.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.sessions
            .get(conn)
            .is_some_and(|s| s.state != SessionState::Closing)
    }

    /// Bytes read from the socket: plaintext frames, or ciphertext on a
    /// TLS connection.
    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let Some(session) = self.sessions.get_mut(conn) else {
            return;
        };
        if session.state == SessionState::Closing {
            return;
        }
        self.metrics.bytes_in.increment(bytes.len() as u64);
        if session.tls.is_some() {
            session.last_activity = now;
            return self.on_ciphertext(conn, bytes, now);
        }
        self.on_plaintext(conn, bytes, now);
    }

    /// The plaintext a shard read before it handed this connection over
    /// (decrypted already on a TLS connection), then whatever its TLS
    /// session still holds.
    pub fn on_handed_over(&mut self, conn: ConnId, initial: &[u8], now: Instant) {
        self.on_plaintext(conn, initial, now);
        if self.sessions.get(conn).is_some_and(|s| s.tls.is_some()) {
            self.on_ciphertext(conn, &[], now);
        }
    }

    fn on_plaintext(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let Some(session) = self.sessions.get_mut(conn) else {
            return;
        };
        if session.state == SessionState::Closing || bytes.is_empty() {
            return;
        }
        session.last_activity = now;
        match session.take_input(bytes) {
            Input::Borrowed => self.process_input(conn, bytes, now),
            Input::Joined(joined) => self.process_input(conn, &joined, now),
        }
    }

    /// Decrypts into a reused buffer and decodes frames from it as from a
    /// plain socket; handshake records and alerts go out through
    /// `take_outbound`.
    fn on_ciphertext(&mut self, conn: ConnId, ciphertext: &[u8], now: Instant) {
        let Some(tls) = self.sessions.get_mut(conn).and_then(|s| s.tls.as_mut()) else {
            return;
        };
        let mut plaintext = std::mem::take(&mut self.tls_plaintext);
        plaintext.clear();
        let result = tls.read_tls(ciphertext, &mut plaintext);
        let owes_records = tls.wants_write();
        let handshake = tls.handshake();
        match result {
            Err(e) => {
                self.metrics.tls_failed(e.reason(), handshake.is_none());
                tracing::debug!(shard = self.shard_id, error = %e, "TLS session failed");
                if owes_records {
                    self.request_send(conn);
                }
                self.close(conn, "tls_error");
            }
            Ok(read) => {
                if read.handshake_completed {
                    if let Some(h) = handshake {
                        self.metrics.tls_handshake(h);
                    }
                }
                self.on_plaintext(conn, &plaintext, now);
                // A Hello that hands the connection over keeps the records
                // owed (tickets) in the session, which travels with the
                // socket: the adopting shard writes them before its Welcome.
                let handed_off = matches!(
                    self.actions.back(),
                    Some(IoAction::HandOff { conn: c, .. }) if *c == conn
                );
                if owes_records && !handed_off {
                    self.request_send(conn);
                }
                if read.peer_closed {
                    self.close(conn, "peer_closed");
                }
            }
        }
        // A burst of large frames must not leave a large buffer behind.
        if plaintext.capacity() <= MAX_KEPT_TLS_PLAINTEXT {
            self.tls_plaintext = plaintext;
        }
    }

    /// The TLS session of a connection being handed over, to travel with
    /// its socket (`Control::Adopt`).
    pub fn take_tls(&mut self, conn: ConnId) -> Option<Box<TlsSession>> {
        let tls = self.sessions.get_mut(conn)?.tls.take()?;
        self.tls_sessions -= 1;
        self.metrics.tls_sessions.set(self.tls_sessions as f64);
        Some(tls)
    }

    fn process_input(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let mut offset = 0;
        loop {
            let (decoded, used) = decode_next(&bytes[offset..], self.limits.max_frame);
            match decoded {
                Decoded::NeedMore => {
                    if let Some(session) = self.sessions.get_mut(conn) {
                        if session.state != SessionState::Closing {
                            session.keep_unconsumed(&bytes[offset..]);
                        }
                    }
                    return;
                }
                Decoded::Invalid(err) => {
                    self.fail(conn, err.code(), &err.to_string());
                    return;
                }
                Decoded::Frame(frame) => {
                    self.metrics.frame_in(&frame);
                    match self.handle_frame(conn, frame, now) {
                        Flow::Continue => offset += used,
                        Flow::Stop => return,
                        Flow::HandOff(to) => {
                            self.metrics.handshake("handed_off");
                            if let Some(session) = self.sessions.get_mut(conn) {
                                session.state = SessionState::Closing;
                            }
                            let initial = Bytes::copy_from_slice(&bytes[offset..]);
                            self.actions.push_back(IoAction::HandOff { conn, to, initial });
                            return;
                        }
                    }
                }
            }
        }
    }

    fn handle_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) -> Flow {
        let state = self.sessions[conn].state;
        let device = match state {
            SessionState::Closing => return Flow::Stop,
            SessionState::AwaitingHello => {
                return match frame {
                    Frame::Hello(hello) => self.on_hello(conn, *hello, now),
                    other => self.fail(
                        conn,
                        ErrorCode::UnexpectedFrame,
                        &format!("{:?} before Hello", other.frame_type()),
                    ),
                };
            }
            SessionState::Active(device) => device,
        };
        match frame {
            Frame::Ack(ids) => self.on_ack(device, &ids.ids, now),
            Frame::RevokeAck(ids) => self.on_revoke_ack(device, &ids.ids, now),
            Frame::Ping(ping) => {
                self.write_frame(conn, &Frame::Pong(ping));
            }
            Frame::DeleteToken => {
                self.delete_device(device, now);
                return self.go_away(conn, GoAwayReason::TokenDeleted, 0, "token deleted");
            }
            Frame::Bind(b) => {
                let code = self.change_registry(device, RegistryChange::Bind(b.user_id.into()), now);
                self.reply(conn, b.request_id, code);
            }
            Frame::Unbind(b) => {
                let code = self.change_registry(device, RegistryChange::Unbind(b.user_id.into()), now);
                self.reply(conn, b.request_id, code);
            }
            Frame::JoinGroup(g) => {
                let code = self.change_registry(device, RegistryChange::JoinGroup(g.group.into()), now);
                self.reply(conn, g.request_id, code);
            }
            Frame::LeaveGroup(g) => {
                let code = self.change_registry(device, RegistryChange::LeaveGroup(g.group.into()), now);
                self.reply(conn, g.request_id, code);
            }
            Frame::LeaveAllGroups(g) => {
                let code = self.change_registry(device, RegistryChange::LeaveAllGroups, now);
                self.reply(conn, g.request_id, code);
            }
            Frame::ReportVendorToken(v) => {
                let change = RegistryChange::VendorToken(v.third_channel, v.vendor_token.into());
                let code = self.change_registry(device, change, now);
                self.reply(conn, v.request_id, code);
            }
            Frame::Opened(ids) => self.on_report(device, &ids.ids, Event::Opened, now),
            Frame::Ignored(ids) => self.on_report(device, &ids.ids, Event::Ignored, now),
            Frame::Hello(_) => return self.fail(conn, ErrorCode::UnexpectedFrame, "Hello after Welcome"),
            server_only => {
                let reason = format!("{:?} is a server frame", server_only.frame_type());
                return self.fail(conn, ErrorCode::UnexpectedFrame, &reason);
            }
        }
        Flow::Continue
    }

    fn on_hello(&mut self, conn: ConnId, hello: body::Hello, now: Instant) -> Flow {
        if hello.protocol_version != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {} (server speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            );
            return self.fail(conn, ErrorCode::UnsupportedVersion, &reason);
        }
        let Some(app) = self.configured_apps.get(hello.app_id.as_str()).cloned() else {
            return self.fail(conn, ErrorCode::UnknownApp, "unknown app id");
        };
        let Ok(platform) = u8::try_from(hello.platform) else {
            return self.fail(conn, ErrorCode::BadPlatform, "platform must be 1, 2 or 7");
        };
        if !matches!(platform, 1 | 2 | 7) {
            return self.fail(conn, ErrorCode::BadPlatform, "platform must be 1, 2 or 7");
        }
        let presented = hello.token.as_str();
        let plausible = !presented.is_empty() && presented.len() <= MAX_TOKEN_LEN;
        if plausible {
            let owner = owner_shard(presented.as_bytes(), self.shard_count);
            if owner != self.shard_id {
                return Flow::HandOff(owner);
            }
        }
        if self.client_cert_apps.contains(&*app) {
            let now_unix =
                rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_millis(self.clock.unix_ms(now)));
            let check = match &self.sessions[conn].tls {
                Some(tls) => tls.check_client_cert(&app, now_unix),
                None => ClientCertCheck::Missing,
            };
            if !check.passed() {
                let reason = match check {
                    ClientCertCheck::NotTrusted => "the client certificate is not from this app's CA",
                    _ => "this app requires a TLS client certificate",
                };
                metrics::counter!("ringpush_tls_client_cert_refusals_total", "shard" => self.metrics.shard.clone())
                    .increment(1);
                return self.fail(conn, ErrorCode::ClientCertRequired, reason);
            }
        }
        // Here, on the shard that owns the token, not before a hand-off: the
        // nonce of a signed Hello is recorded exactly once.
        if let Err(refusal) = self.device_auth.check(&hello, self.clock.unix_ms(now)) {
            if refusal.failure == device_auth::Failure::NonceCacheFull {
                self.metrics.handshake("failed");
                return self.go_away(
                    conn,
                    GoAwayReason::Overloaded,
                    NONCE_CACHE_RETRY_MS,
                    &refusal.reason,
                );
            }
            let reason = format!("{}: {}", refusal.failure.label(), refusal.reason);
            return self.fail(conn, ErrorCode::AuthFailed, &reason);
        }
        // A token of another app is treated as unknown: the device gets a new
        // token of its own app and never sees the other app's state.
        let known = plausible
            .then(|| self.by_token.get(presented).copied())
            .flatten()
            .filter(|&d| *self.devices[d].app == *app);
        let (device, new_token) = match known {
            Some(d) => {
                self.confirm_token(d);
                (d, false)
            }
            None => match plausible
                .then(|| self.follow_redirect(presented, &app, now))
                .flatten()
            {
                // A device that missed its TokenUpdate: it gets its own
                // state back under the new token, in this Welcome.
                Some(d) => (d, true),
                None => (self.register_device(app, platform, now), true),
            },
        };
        tracing::debug!(
            shard = self.shard_id,
            conn,
            app = %self.devices[device].app,
            token = %self.devices[device].token,
            new_token,
            "hello accepted"
        );
        if let Some(old) = self.devices[device].conn {
            if old != conn {
                self.go_away(
                    old,
                    GoAwayReason::Replaced,
                    0,
                    "another connection presented this token",
                );
            }
        }
        let generation = {
            let session = &mut self.sessions[conn];
            session.state = SessionState::Active(device);
            session.generation
        };
        let d = &mut self.devices[device];
        d.conn = Some(conn);
        if d.platform != platform {
            d.platform = platform;
            self.journal.write(&device_entry(d));
        }
        let welcome = Frame::Welcome(body::Welcome {
            token: d.token.to_string(),
            heartbeat_secs: self.limits.heartbeat_secs,
            server_time_ms: self.clock.unix_ms(now),
            new_token,
            missed: std::mem::take(&mut d.missed),
            protocol_version: PROTOCOL_VERSION,
        });
        self.write_frame(conn, &welcome);
        self.metrics.handshake("ok");
        self.arm_connection_timer(now + self.limits.idle_timeout, Timer::Idle { conn, generation });
        // Recalls first: the app removes what it must before new pushes.
        self.send_revokes(device, now);
        self.catch_up(device, now);
        self.fill_window(device, now);
        Flow::Continue
    }

    /// A fresh token this shard owns, held by no device and no redirect.
    fn mint_token(&mut self) -> Box<str> {
        loop {
            let candidate = self.tokens.next();
            if owner_shard(candidate.as_bytes(), self.shard_count) == self.shard_id
                && !self.by_token.contains_key(candidate.as_str())
                && !self.retired.contains_key(candidate.as_str())
            {
                break candidate.into_boxed_str();
            }
        }
    }

    fn register_device(&mut self, app: Arc<str>, platform: u8, now: Instant) -> DeviceId {
        let token = self.mint_token();
        let mut record = Device::new(app, token.clone(), platform, self.clock.unix_ms(now));
        // Nothing stored before it was born is for it.
        record.fanout_cursor = self.fanout.next_seq();
        let device = self.devices.insert(record);
        self.by_token.insert(token, device);
        self.journal.write(&device_entry(&self.devices[device]));
        self.metrics.devices.set(self.devices.len() as f64);
        device
    }

    /// Gives a device a new token (API `token-update`). One journal record:
    /// the new token is one this shard owns, so nothing moves between
    /// shards and the rotation is atomic across a crash. The device is told
    /// in a TokenUpdate frame once the record is durable (`tell_new_token`);
    /// until it presents the new token, the old one redirects its Hello.
    fn rotate_token(&mut self, device: DeviceId, now: Instant) -> Rotation {
        let new = self.mint_token();
        let now_ms = self.clock.unix_ms(now);
        let redirect_until_ms = match self.limits.token_redirect_ms {
            0 => 0,
            window => now_ms.saturating_add(window),
        };
        let old = self.devices[device].token.clone();
        self.journal.write(&Entry::Token(TokenEntry::Rotated {
            app: &self.devices[device].app,
            old: &old,
            new: &new,
            at_ms: now_ms,
            redirect_until_ms,
        }));
        self.rekey_device(device, new.clone());
        let displaced = if redirect_until_ms > 0 {
            self.add_redirect(old.clone(), device, now_ms, redirect_until_ms)
        } else {
            None
        };
        if let Some((gone, _)) = &displaced {
            self.journal
                .write(&Entry::Token(TokenEntry::RedirectEnded { old: gone }));
        }
        self.journal.rotations.push(RotationUndo {
            device,
            old,
            new: new.clone(),
            displaced,
        });
        self.metrics.tokens_rotated.increment(1);
        Rotation::Rotated {
            token: new,
            online: self.devices[device].conn.is_some(),
            redirect_until_ms,
        }
    }

    /// Moves a device to `new_token`: the token index and the statuses of
    /// its queued messages, which are answered under the token that will
    /// deliver them. Final statuses stay under the old token (the table
    /// keeps digests, not tokens, so it cannot find them), except those of
    /// shared messages still stored, which are copied: they are what keeps
    /// the device from being sent a broadcast, group, tag or user message
    /// again. Its statistics reports not yet journaled follow it too. Live
    /// and in replay alike, so both reach the same state.
    fn rekey_device(&mut self, device: DeviceId, new_token: Box<str>) {
        let old = std::mem::replace(&mut self.devices[device].token, new_token.clone());
        self.by_token.remove(&old);
        self.by_token.insert(new_token.clone(), device);
        self.stats.token_renamed(&old, &new_token);
        let d = &mut self.devices[device];
        for p in d.queue.iter_mut() {
            let msg_key = match &p.frame {
                FrameSlot::Memory(frame) => push_msg_key(frame),
                FrameSlot::Shared(m) => m.msg_key.to_string(),
                FrameSlot::Log(span) => {
                    match read_logged_message(&mut self.log_reader, *span, p.id, &mut self.read_buf) {
                        Ok(a) => a.msg_key.to_string(),
                        // Its status stays under the old token; sending it
                        // will fail the same way and drop it visibly.
                        Err(_) => continue,
                    }
                }
            };
            let key = StatusKey::new(&d.app, &msg_key, &new_token);
            if let Some(record) = self.statuses.remove(&p.status_key) {
                self.statuses.insert(key, record);
            }
            p.status_key = key;
        }
        let app = d.app.clone();
        for stored in self.fanout.iter() {
            let m = &stored.message;
            if *m.app_id != *app {
                continue;
            }
            let Some(record) = self
                .statuses
                .get(&StatusKey::new(&app, &m.msg_key, &old))
                .cloned()
            else {
                continue;
            };
            let key = StatusKey::new(&app, &m.msg_key, &new_token);
            let forget_at_ms = record.forget_at_ms;
            if self.statuses.insert_if_absent(key, || record) && forget_at_ms != 0 {
                self.status_gc
                    .push_back((self.clock.instant_of(forget_at_ms), key));
            }
        }
    }

    /// Lets `old` lead a Hello to `device` until `until_ms`. Answers the
    /// redirect it displaced past `MAX_REDIRECTS_PER_DEVICE`, if any.
    fn add_redirect(
        &mut self,
        old: Box<str>,
        device: DeviceId,
        rotated_at_ms: u64,
        until_ms: u64,
    ) -> Option<(Box<str>, Retired)> {
        let retired = Retired {
            device,
            rotated_at_ms,
            until_ms,
        };
        let list = self.retired_by_device.entry(device).or_default();
        if self.retired.insert(old.clone(), retired).is_none() {
            list.push(old.clone());
        }
        self.retired_gc.push_back((until_ms, old));
        let displaced = if list.len() > MAX_REDIRECTS_PER_DEVICE {
            let gone = list.remove(0);
            let r = self
                .retired
                .remove(&gone)
                .expect("listed redirects are in the table");
            self.metrics.redirects_displaced.increment(1);
            Some((gone, r))
        } else {
            None
        };
        self.metrics.redirects.set(self.retired.len() as f64);
        displaced
    }

    fn end_redirect(&mut self, old: &str) {
        let Some(r) = self.retired.remove(old) else {
            return;
        };
        if let Some(list) = self.retired_by_device.get_mut(&r.device) {
            list.retain(|t| **t != *old);
            if list.is_empty() {
                self.retired_by_device.remove(&r.device);
            }
        }
        self.metrics.redirects.set(self.retired.len() as f64);
    }

    /// The device an old token still leads to, if its redirect is live and
    /// the Hello names the device's app.
    fn follow_redirect(&mut self, presented: &str, app: &str, now: Instant) -> Option<DeviceId> {
        let r = *self.retired.get(presented)?;
        if r.until_ms <= self.clock.unix_ms(now) || *self.devices[r.device].app != *app {
            return None;
        }
        self.metrics.redirects_followed.increment(1);
        Some(r.device)
    }

    /// The device presented its current token: it has the new one, so every
    /// token rotated away from it stops working now.
    fn confirm_token(&mut self, device: DeviceId) {
        let Some(olds) = self.retired_by_device.remove(&device) else {
            return;
        };
        for old in &olds {
            self.retired.remove(old);
            self.journal
                .write(&Entry::Token(TokenEntry::RedirectEnded { old }));
        }
        self.metrics.redirects_confirmed.increment(olds.len() as u64);
        self.metrics.redirects.set(self.retired.len() as f64);
    }

    /// A rotation is durable: an online device gets its new token now.
    fn tell_new_token(&mut self, r: &RotationUndo) {
        let Some(d) = self.devices.get(r.device) else {
            return;
        };
        if d.token != r.new {
            return;
        }
        if let Some(conn) = d.conn {
            let frame = Frame::TokenUpdate(body::TokenUpdate {
                token: r.new.to_string(),
            });
            self.write_frame(conn, &frame);
        }
    }

    /// A rotation's record did not reach the log: the old token is the
    /// device's again, as the API's refusal says.
    fn undo_rotation(&mut self, r: RotationUndo) {
        if self.devices.get(r.device).is_none_or(|d| d.token != r.new) {
            return;
        }
        self.end_redirect(&r.old);
        self.rekey_device(r.device, r.old);
        if let Some((old, retired)) = r.displaced {
            let _ = self.add_redirect(old, retired.device, retired.rotated_at_ms, retired.until_ms);
        }
    }

    /// Applies a registry change from the device or the API and answers its
    /// result code; a change that took effect is journaled (the whole
    /// record). Binding a user delivers the user's still-valid messages.
    fn change_registry(&mut self, device: DeviceId, change: RegistryChange, now: Instant) -> i32 {
        let now_ms = self.clock.unix_ms(now);
        let d = &mut self.devices[device];
        let mut bound = false;
        match change {
            RegistryChange::Bind(user) => {
                if user.is_empty() {
                    return RESULT_NEED_USERID;
                }
                if user.chars().count() > MAX_USER_ID_CHARS {
                    return RESULT_INVALID_PARAM;
                }
                if d.user_id.as_deref() == Some(&*user) {
                    return RESULT_SUCCESS;
                }
                self.unindex_user(device);
                let d = &mut self.devices[device];
                d.user_id = Some(user);
                d.bound_at_ms = now_ms;
                self.index_user(device);
                bound = true;
            }
            RegistryChange::Unbind(user) => {
                if user.is_empty() {
                    return RESULT_NEED_USERID;
                }
                if d.user_id.as_deref() != Some(&*user) {
                    return RESULT_SUCCESS;
                }
                self.unindex_user(device);
                let d = &mut self.devices[device];
                d.user_id = None;
                d.unbound_at_ms = now_ms;
            }
            RegistryChange::JoinGroup(group) => {
                if group.is_empty() || group.len() > MAX_GROUP_LEN {
                    return RESULT_INVALID_PARAM;
                }
                // Every device is in `all` implicitly.
                if &*group == "all" || d.groups.contains(&group) {
                    return RESULT_SUCCESS;
                }
                if d.groups.len() >= MAX_GROUPS_PER_DEVICE {
                    return RESULT_INVALID_PARAM;
                }
                d.groups.push(group);
            }
            RegistryChange::LeaveGroup(group) => {
                if !d.groups.contains(&group) {
                    return RESULT_SUCCESS;
                }
                d.groups.retain(|g| *g != group);
            }
            RegistryChange::LeaveAllGroups => {
                if d.groups.is_empty() {
                    return RESULT_SUCCESS;
                }
                d.groups = Vec::new();
            }
            RegistryChange::VendorToken(channel, token) => {
                if token.is_empty() {
                    return RESULT_NEED_DELIVERYTOKEN;
                }
                if !VENDOR_CHANNELS.contains(&channel) || token.len() > MAX_VENDOR_TOKEN_LEN {
                    return RESULT_INVALID_PARAM;
                }
                d.vendor_token = Some((channel, token));
            }
        }
        self.journal.write(&device_entry(&self.devices[device]));
        if bound {
            self.queue_shared_backlog(device, true, now);
            self.fill_window(device, now);
        }
        RESULT_SUCCESS
    }

    /// Queues for a device, oldest first, every still-valid shared message
    /// it is in the audience of and has not had. On connect
    /// (`just_bound: false`): broadcasts, group, tag and user messages from
    /// its cursor on; after binding a user: all of that user's messages and
    /// all tag messages whose tag holds the user.
    fn queue_shared_backlog(&mut self, device: DeviceId, just_bound: bool, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let d = &self.devices[device];
        let cursor = d.fanout_cursor;
        let member = d.member();
        let live = |m: &SharedMessage| m.expires_at_ms > now_ms && is_member(m, &member);
        let mut due = std::mem::take(&mut self.scratch_shared);
        if !just_bound {
            due.extend(
                self.fanout
                    .broadcasts_since(cursor)
                    .filter(|s| live(&s.message))
                    .map(|s| (s.seq, s.message.clone())),
            );
        }
        if let Some(user) = &d.user_id {
            let from = if just_bound { 0 } else { cursor };
            due.extend(
                self.fanout
                    .tags_since(from)
                    .filter(|s| live(&s.message))
                    .map(|s| (s.seq, s.message.clone())),
            );
            due.extend(
                self.fanout
                    .for_user(&d.app, user)
                    .iter()
                    .filter(|s| s.seq >= from && live(&s.message))
                    .map(|s| (s.seq, s.message.clone())),
            );
        }
        if !just_bound {
            self.devices[device].fanout_cursor = self.fanout.next_seq();
        }
        due.sort_unstable_by_key(|(seq, _)| *seq);
        // Queued first and sent by the caller's `fill_window`, so a newer
        // message of the backlog collapses an older one before either is
        // written.
        for (_, message) in due.drain(..) {
            if self.queue_shared(device, &message, false, now) {
                self.metrics.shared_caught_up.increment(1);
            }
        }
        self.scratch_shared = due;
    }

    /// A device connected: what came for it while it was away.
    fn catch_up(&mut self, device: DeviceId, now: Instant) {
        self.queue_shared_backlog(device, false, now);
    }

    /// Queues a shared message for one device unless it had it before (its
    /// status for the device exists), and sends it now if `send` and it may
    /// be. Answers whether it was queued.
    fn queue_shared(
        &mut self,
        device: DeviceId,
        message: &Arc<SharedMessage>,
        send: bool,
        now: Instant,
    ) -> bool {
        let d = &self.devices[device];
        let status_key = StatusKey::new(&message.app_id, &message.msg_key, &d.token);
        let inserted = self.statuses.insert_if_absent(status_key, || {
            StatusRecord::pending(message.id, message.accepted_at_ms, message.expires_at_ms)
        });
        if !inserted {
            return false;
        }
        let (task, _) = self.stats.task(
            &message.app_id,
            message.task_id,
            message.push_type,
            "",
            message.accepted_at_ms,
            false,
        );
        if self.journal.enabled {
            let now_ms = self.clock.unix_ms(now);
            self.stats.count(task, d.platform, Event::Pushed, now_ms);
        }
        // Sent only once the message itself is in the log.
        let durable = !self.journal.published.contains(&message.id);
        if !durable {
            self.journal.accepted.push(JournaledMessage {
                device,
                message_id: message.id,
                status_key,
                record_at: 0,
                record_len: 0,
            });
        }
        let frame = FrameSlot::Shared(message.clone());
        let pending = Pending::new(
            message.id,
            message.accepted_at_ms,
            message.expires_at_ms,
            frame,
            status_key,
            task,
            message.collapse_key.clone(),
        );
        self.enqueue(device, Pending { durable, ..pending }, send, now);
        true
    }

    /// Stores a shared message and queues it for this shard's online devices
    /// in its audience (the others get it when they connect or bind).
    fn publish(&mut self, message: Arc<SharedMessage>, now: Instant) -> SharedOutcome {
        let mut outcome = SharedOutcome::default();
        match self.fanout.insert(message.clone()) {
            Ok(_) => {}
            Err(Refused::Duplicate) => {
                self.metrics.duplicates.increment(1);
                outcome.duplicate = true;
                return outcome;
            }
            Err(Refused::Full) => {
                self.metrics.shared_refused.increment(1);
                outcome.refused = true;
                return outcome;
            }
        }
        self.max_message_id = self.max_message_id.max(message.id);
        if let Audience::Tag { users, .. } = &message.audience {
            if self.journal.enabled && self.logged_sets.insert(users.id()) {
                let parts = TagUsersEntry::write_set(&mut self.journal.framed, users.id(), users.digests());
                self.journal.records += parts;
                self.journal.sets.push(users.id());
            }
        }
        let (task, created) = self.stats.task(
            &message.app_id,
            message.task_id,
            message.push_type,
            &message.task_name,
            message.accepted_at_ms,
            self.journal.enabled,
        );
        if created {
            self.journal.write(&Entry::Stats(&self.stats.task_record(task)));
        }
        self.journal.write(&Entry::Shared(SharedEntry {
            message_id: message.id,
            app: &message.app_id,
            audience: AudienceEntry::of(&message.audience),
            msg_key: &message.msg_key,
            task_id: message.task_id,
            accepted_at_ms: message.accepted_at_ms,
            expires_at_ms: message.expires_at_ms,
            frame: &message.frame,
            push_type: message.push_type,
            collapse_key: message.collapse_key.as_deref(),
        }));
        self.journal.published.push(message.id);
        self.index_shared(&message);
        self.metrics.recall_index.set(self.recall_index.len() as f64);
        self.metrics.shared_stored.set(self.fanout.len() as f64);
        let mut members = std::mem::take(&mut self.scratch_devices);
        match &message.audience {
            Audience::User(user) => {
                if let Some(bound) = self.users.get(&user_digest(&message.app_id, user)) {
                    members.extend(bound.iter().copied());
                }
                members.retain(|&d| is_member(&message, &self.devices[d].member()));
            }
            Audience::Tag { users, .. } => {
                // Whichever is smaller: the tag's users, or the users bound
                // on this shard.
                if users.len() <= self.users.len() {
                    for digest in users.digests() {
                        if let Some(bound) = self.users.get(digest) {
                            members.extend(bound.iter().copied());
                        }
                    }
                } else {
                    for (digest, bound) in &self.users {
                        if users.contains(*digest) {
                            members.extend(bound.iter().copied());
                        }
                    }
                }
                members.retain(|&d| is_member(&message, &self.devices[d].member()));
            }
            Audience::Group(_) | Audience::Platform { .. } => {
                let next = self.fanout.next_seq();
                for (id, d) in self.devices.iter_mut() {
                    if is_member(&message, &d.member()) {
                        members.push(id);
                    }
                    // A connected device was caught up when it connected
                    // and has been offered every shared message since.
                    if d.conn.is_some() {
                        d.fanout_cursor = next;
                    }
                }
            }
        }
        outcome.matched = members.len() as u32;
        for &device in &members {
            if self.devices[device].conn.is_some() && self.queue_shared(device, &message, true, now) {
                outcome.online += 1;
            }
        }
        members.clear();
        self.scratch_devices = members;
        outcome
    }

    fn reply(&mut self, conn: ConnId, request_id: u64, code: i32) {
        let message = if code == RESULT_SUCCESS { "" } else { "rejected" };
        self.write_frame(
            conn,
            &Frame::RequestResult(body::RequestResult {
                request_id,
                code,
                message: message.into(),
            }),
        );
    }

    fn on_ack(&mut self, device: DeviceId, ids: &[u64], now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let d = &mut self.devices[device];
        for &id in ids {
            let Some(pos) = d.queue.iter().position(|p| p.id == id) else {
                self.metrics.acks_unknown.increment(1);
                continue;
            };
            let pending = d.queue.remove(pos).expect("position is in range");
            if pos < d.in_flight {
                d.in_flight -= 1;
            }
            self.pending_total -= 1;
            if let Some(sent_at) = pending.sent_at {
                self.metrics
                    .ack_latency
                    .record(now.saturating_duration_since(sent_at).as_secs_f64());
            }
            self.stats.count(pending.task, d.platform, Event::Arrived, now_ms);
            let entry = self.stats.reportable(pending.task, id, now_ms);
            if stats_remember(d, self.limits.reportable_per_device, entry) {
                self.stats.reportable_evicted();
            }
            if let Some(record) = self.statuses.get_mut(&pending.status_key) {
                record.status = Status::Acked;
                record.acked_at_ms = now_ms;
                record.forget_at_ms = now_ms + self.limits.status_retention.as_millis() as u64;
            }
            self.journal.write(&finished_entry(d, id, Status::Acked, now_ms));
            if self.journal.enabled && self.receipt_apps.contains(&*d.app) {
                match receipt_for(d, &pending, now_ms, &mut self.log_reader, &mut self.read_buf) {
                    Ok(receipt) => self.journal.receipts.push(receipt),
                    Err(reason) => {
                        tracing::error!(shard = self.shard_id, msg_id = id, %reason, "no receipt for an acked message: its record could not be read back");
                        crate::receipts::dropped_counter(&d.app, "unreadable").increment(1);
                    }
                }
            }
            self.status_gc
                .push_back((now + self.limits.status_retention, pending.status_key));
            self.metrics.acked.increment(1);
        }
        if d.queue.is_empty() && d.queue.capacity() > 0 {
            // An idle device must not keep a queue allocation per connection.
            d.queue = VecDeque::new();
        }
        self.metrics.pending.set(self.pending_total as f64);
        self.fill_window(device, now);
    }

    /// An Opened or Ignored report: counted once per message the device
    /// acknowledged (within `stats.report_window_hours`); the journal
    /// carries it with the next statistics flush.
    fn on_report(&mut self, device: DeviceId, ids: &[u64], event: Event, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let d = &mut self.devices[device];
        let kind = usize::from(event == Event::Ignored);
        for &id in ids {
            let ring = d.reports.as_deref_mut();
            let outcome = match ring.and_then(|r| r.entries.iter_mut().find(|r| r.message_id == id)) {
                Some(entry) => self
                    .stats
                    .report(entry, event, (&d.app, &d.token, d.platform), now_ms),
                None => ReportOutcome::Unknown,
            };
            let result = match outcome {
                ReportOutcome::Counted => 0,
                ReportOutcome::Duplicate => 1,
                ReportOutcome::Unknown => 2,
            };
            self.metrics.reports[kind][result].increment(1);
        }
    }

    /// Writes queued messages to the device's connection until the in-flight
    /// window is full. Messages past their TTL are expired here rather than
    /// written, so nothing is delivered late even between timer ticks.
    fn fill_window(&mut self, device: DeviceId, now: Instant) {
        let d = &mut self.devices[device];
        let Some(conn) = d.conn else { return };
        let session = &mut self.sessions[conn];
        let now_ms = self.clock.unix_ms(now);
        let now_us = self.clock.unix_micros(now);
        let mut wrote = false;
        while d.in_flight < self.limits.window && d.in_flight < d.queue.len() {
            let i = d.in_flight;
            if !d.queue[i].durable {
                // Sent once the log has it (`journal_done`).
                break;
            }
            let p = &mut d.queue[i];
            let unsent = if p.expires_at_ms <= now_ms {
                self.metrics.expired.increment(1);
                tracing::debug!(shard = self.shard_id, msg_id = p.id, app = %d.app, token = %d.token, "message expired before it was sent");
                Some(Status::Expired)
            } else {
                let written = match &p.frame {
                    FrameSlot::Memory(frame) => {
                        session.outbound.extend_from_slice(frame);
                        Ok(())
                    }
                    FrameSlot::Shared(message) => {
                        session.outbound.extend_from_slice(&message.frame);
                        Ok(())
                    }
                    FrameSlot::Log(span) => {
                        self.metrics.frames_read.increment(1);
                        read_logged_frame(&mut self.log_reader, *span, p.id, &mut self.read_buf)
                            .map(|frame| session.outbound.extend_from_slice(frame))
                    }
                };
                // The disk gave back nothing usable: the message cannot be
                // delivered, so it is dropped visibly (status 4, a metric, an
                // error naming the place) instead of blocking its queue.
                written.err().map(|reason| {
                    tracing::error!(shard = self.shard_id, msg_id = p.id, token = %d.token, %reason, "a queued message's frame could not be read from the log; dropping it");
                    self.metrics.frame_read_errors.increment(1);
                    Status::Dropped
                })
            };
            if let Some(status) = unsent {
                let gone = d.queue.remove(i).expect("index is in range");
                self.journal.write(&finished_entry(d, gone.id, status, now_ms));
                set_final_status(
                    &mut self.statuses,
                    &mut self.status_gc,
                    gone.status_key,
                    status,
                    now,
                    self.limits.status_retention,
                    now_ms,
                );
                self.pending_total -= 1;
                continue;
            }
            p.sent_at = Some(now);
            if p.sent_before {
                self.metrics.redelivered.increment(1);
            } else {
                p.sent_before = true;
                self.stats.count(p.task, d.platform, Event::Succeeded, now_ms);
                let waited_us = now_us.saturating_sub(p.accepted_at_ms * 1000);
                self.metrics.api_to_device.record(waited_us as f64 / 1e6);
            }
            d.in_flight += 1;
            wrote = true;
            self.metrics.delivered.increment(1);
            self.metrics.frames_out_push.increment(1);
        }
        if !wrote {
            return;
        }
        self.arm_ack_timer(conn, now);
        self.request_send(conn);
    }

    /// Something awaiting the device's answer (a Push, a Revoke) was just
    /// written: the ack timeout watches it.
    fn arm_ack_timer(&mut self, conn: ConnId, now: Instant) {
        let session = &mut self.sessions[conn];
        if !session.ack_timer_armed {
            session.ack_timer_armed = true;
            let generation = session.generation;
            self.arm_connection_timer(
                now + self.limits.ack_timeout,
                Timer::AckTimeout { conn, generation },
            );
        }
    }

    /// Writes a control frame (everything but Push, which `fill_window`
    /// copies pre-encoded).
    fn write_frame(&mut self, conn: ConnId, frame: &Frame) {
        if let Some(session) = self.sessions.get_mut(conn) {
            frame.encode(&mut session.outbound);
            metrics::counter!(
                "ringpush_frames_out_total",
                "shard" => self.metrics.shard.clone(),
                "type" => frame.frame_type().as_str()
            )
            .increment(1);
            self.request_send(conn);
        }
    }

    fn request_send(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.get_mut(conn) else {
            return;
        };
        if session.outbound.len() + session.io_unsent as usize > self.limits.max_outbound {
            // A slow reader: its unacked messages go back to pending, and
            // the memory goes back to the shard.
            self.abort(conn, "slow_reader");
            return;
        }
        if !session.send_requested {
            session.send_requested = true;
            self.actions.push_back(IoAction::Send(conn));
        }
    }

    /// Bytes to write for `conn`; the session keeps no buffer afterwards.
    /// On a TLS connection: the records it owes, the frames sealed, and
    /// once the session is closing, close_notify.
    pub fn take_outbound(&mut self, conn: ConnId) -> Option<BytesMut> {
        let session = self.sessions.get_mut(conn)?;
        session.send_requested = false;
        if session.aborted {
            return None;
        }
        if let Some(tls) = session.tls.as_mut() {
            let plaintext = std::mem::take(&mut session.outbound);
            let mut out = BytesMut::new();
            if tls.write_tls(&plaintext, &mut out).is_err() {
                self.metrics.tls_failed("encrypt", false);
            }
            if session.state == SessionState::Closing {
                tls.close(&mut out);
            }
            if out.is_empty() {
                return None;
            }
            self.metrics.bytes_out.increment(out.len() as u64);
            return Some(out);
        }
        if session.outbound.is_empty() {
            return None;
        }
        let out = std::mem::take(&mut session.outbound);
        self.metrics.bytes_out.increment(out.len() as u64);
        Some(out)
    }

    pub fn poll_action(&mut self) -> Option<IoAction> {
        self.actions.pop_front()
    }

    /// Sends Error(code) and closes. Only this connection is affected.
    fn fail(&mut self, conn: ConnId, code: ErrorCode, reason: &str) -> Flow {
        tracing::debug!(
            shard = self.shard_id,
            conn,
            code = code.as_str(),
            reason,
            "refusing the connection with an Error frame"
        );
        if matches!(
            self.sessions.get(conn).map(|s| s.state),
            Some(SessionState::AwaitingHello)
        ) {
            self.metrics.handshake("failed");
        }
        self.write_frame(
            conn,
            &Frame::Error(body::Error {
                code: code as u32,
                reason: reason.into(),
            }),
        );
        self.close(conn, code.as_str());
        Flow::Stop
    }

    fn go_away(&mut self, conn: ConnId, reason: GoAwayReason, retry_after_ms: u32, message: &str) -> Flow {
        tracing::debug!(
            shard = self.shard_id,
            conn,
            reason = reason.as_str(),
            message,
            retry_after_ms,
            "sending GoAway"
        );
        self.write_frame(
            conn,
            &Frame::GoAway(body::GoAway {
                reason: reason as u32,
                retry_after_ms,
                message: message.into(),
            }),
        );
        self.close(conn, reason.as_str());
        Flow::Stop
    }

    /// Closes without flushing: for a socket that does not take what it is
    /// given, so no GoAway could reach the device anyway (the stream may be
    /// stalled in the middle of a frame). Works on a closing session too,
    /// whose flush is what stalled.
    fn abort(&mut self, conn: ConnId, reason: &'static str) {
        let Some(session) = self.sessions.get_mut(conn) else {
            return;
        };
        session.outbound = BytesMut::new();
        if session.aborted {
            return;
        }
        session.aborted = true;
        let device = session.device();
        let last_activity = session.last_activity;
        session.state = SessionState::Closing;
        self.log_close(conn, device, reason, "aborting the connection");
        if let Some(device) = device {
            self.detach(device, conn, last_activity);
        }
        self.metrics.closed(reason);
        self.actions.push_back(IoAction::Abort(conn));
    }

    /// Decides to close: detaches the device at once (new messages queue for
    /// the next connection), then lets the I/O layer flush and close.
    fn close(&mut self, conn: ConnId, reason: &'static str) {
        let Some(session) = self.sessions.get_mut(conn) else {
            return;
        };
        if session.state == SessionState::Closing {
            return;
        }
        let device = session.device();
        let last_activity = session.last_activity;
        session.state = SessionState::Closing;
        self.log_close(conn, device, reason, "closing the connection");
        if let Some(device) = device {
            self.detach(device, conn, last_activity);
        }
        self.metrics.closed(reason);
        self.actions.push_back(IoAction::Close(conn));
    }

    /// One debug line per close, with the device when the Hello named one:
    /// with the accept line (`io::log_accepted`: conn and peer) it traces a
    /// connection from address to token.
    fn log_close(&self, conn: ConnId, device: Option<DeviceId>, reason: &str, what: &'static str) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        match device.and_then(|d| self.devices.get(d)) {
            Some(d) => {
                tracing::debug!(shard = self.shard_id, conn, reason, app = %d.app, token = %d.token, "{what}")
            }
            None => tracing::debug!(shard = self.shard_id, conn, reason, "{what}"),
        }
    }

    /// The connection is gone; unacked messages will be sent again.
    fn detach(&mut self, device: DeviceId, conn: ConnId, last_activity: Instant) {
        let last_seen_ms = self.clock.unix_ms(last_activity);
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        if d.conn != Some(conn) {
            return;
        }
        d.conn = None;
        d.last_seen_ms = last_seen_ms;
        for p in d.queue.iter_mut().take(d.in_flight) {
            p.sent_at = None;
        }
        d.in_flight = 0;
        for r in self.revokes.get_mut(&device).into_iter().flatten() {
            r.sent_at = None;
        }
    }

    /// The socket is closed (by the peer, by an error, or after `Close` or
    /// `HandOff`). Frees `conn` for reuse.
    pub fn on_closed(&mut self, conn: ConnId, _now: Instant) {
        let Some(session) = self.sessions.try_remove(conn) else {
            return;
        };
        self.dead_timers += usize::from(session.timers_in_wheel);
        if session.io_unsent > 0 {
            self.outbound_backlog -= session.io_unsent as usize;
            self.metrics.outbound_backlog.set(self.outbound_backlog as f64);
        }
        if session.tls.is_some() {
            self.tls_sessions -= 1;
            self.metrics.tls_sessions.set(self.tls_sessions as f64);
        }
        match session.state {
            SessionState::Closing => {}
            SessionState::AwaitingHello => self.metrics.closed("peer_closed"),
            SessionState::Active(device) => {
                self.metrics.closed("peer_closed");
                self.detach(device, conn, session.last_activity);
            }
        }
        self.metrics.sessions.set(self.sessions.len() as f64);
    }

    fn delete_device(&mut self, device: DeviceId, now: Instant) {
        self.unindex_user(device);
        // Its slot may go to another device: no old token may lead there.
        for old in self.retired_by_device.remove(&device).unwrap_or_default() {
            self.retired.remove(&old);
        }
        self.metrics.redirects.set(self.retired.len() as f64);
        let d = self.devices.remove(device);
        self.by_token.remove(&d.token);
        self.journal.write(&Entry::DeviceDeleted { token: &d.token });
        let forget_at_ms = self.clock.unix_ms(now) + self.limits.status_retention.as_millis() as u64;
        for r in self.revokes.remove(&device).unwrap_or_default() {
            let key = StatusKey::new(&d.app, &r.msg_key, &d.token);
            if let Some(record) = self
                .statuses
                .get_mut(&key)
                .filter(|s| s.message_id == r.message_id)
            {
                record.recall = RecallMark::RevokeDropped;
            }
            self.revokes_owed -= 1;
            self.metrics.revokes_token_deleted.increment(1);
        }
        self.metrics.revokes_pending.set(self.revokes_owed as f64);
        for p in d.queue {
            if let Some(record) = self.statuses.get_mut(&p.status_key) {
                record.status = Status::Dropped;
                record.forget_at_ms = forget_at_ms;
            }
            self.status_gc
                .push_back((now + self.limits.status_retention, p.status_key));
            self.pending_total -= 1;
            self.metrics.dropped_deleted.increment(1);
        }
        self.metrics.pending.set(self.pending_total as f64);
        self.metrics.devices.set(self.devices.len() as f64);
    }

    pub fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Push { messages, reply } => {
                let outcomes = messages.into_iter().map(|m| self.accept(m, now)).collect();
                self.metrics.pending.set(self.pending_total as f64);
                self.journal.replies.push(Answer::Push(reply, outcomes));
            }
            Command::Publish { messages, reply } => {
                let outcomes = messages.into_iter().map(|m| self.publish(m, now)).collect();
                self.metrics.pending.set(self.pending_total as f64);
                self.journal.replies.push(Answer::Publish(reply, outcomes));
            }
            Command::Registry {
                app_id,
                token,
                change,
                reply,
            } => {
                let code = match self.by_token.get(&*token) {
                    Some(&device) if *self.devices[device].app == *app_id => {
                        self.change_registry(device, change, now)
                    }
                    _ => RESULT_DELIVERYTOKEN_INVALID,
                };
                self.journal.replies.push(Answer::Registry(reply, code));
            }
            Command::Recall {
                app_id,
                target,
                not_before_ms,
                reply,
            } => {
                let answer = self.recall(&app_id, target, not_before_ms, now);
                self.journal.replies.push(Answer::Recall(reply, answer));
            }
            Command::RotateToken { app_id, token, reply } => {
                let rotation = match self.by_token.get(&*token) {
                    Some(&device) if *self.devices[device].app == *app_id => self.rotate_token(device, now),
                    _ => Rotation::UnknownToken,
                };
                self.journal.replies.push(Answer::Rotate(reply, rotation));
            }
            Command::QueryDevices {
                app_id,
                lookup,
                reply,
            } => {
                let report = self.query_devices(&app_id, &lookup, now);
                self.answer_query(move || drop(reply.send(report)));
            }
            Command::QueryUserStatus {
                app_id,
                msg_key,
                user_id,
                reply,
            } => {
                let report = self.user_status(&app_id, &msg_key, &user_id);
                self.answer_query(move || drop(reply.send(report)));
            }
            Command::QueryTasks {
                app_id,
                from_ms,
                to_ms,
                reply,
            } => {
                let report = self.stats.tasks_of(&app_id, from_ms, to_ms);
                self.answer_query(move || drop(reply.send(report)));
            }
            Command::QueryTask {
                app_id,
                task_id,
                reply,
            } => {
                let report = self.stats.task_report(&app_id, task_id);
                self.answer_query(move || drop(reply.send(report)));
            }
            Command::QueryStats { app_id, query, reply } => {
                let report = self.stats.series(&app_id, &query);
                self.answer_query(move || drop(reply.send(report)));
            }
            Command::QueryStatus {
                app_id,
                msg_key,
                token,
                reply,
            } => {
                let report = self
                    .statuses
                    .get(&StatusKey::new(&app_id, &msg_key, &token))
                    .map(|r| StatusReport {
                        status: r.status,
                        message_id: r.message_id,
                        accepted_at_ms: r.accepted_at_ms,
                        expires_at_ms: r.expires_at_ms,
                        acked_at_ms: (r.acked_at_ms != 0).then_some(r.acked_at_ms),
                        recall: r.recall,
                    });
                self.answer_query(move || drop(reply.send(report)));
            }
        }
    }

    /// Sends a query's answer now, or after the commit when this iteration
    /// has changes not yet in the log (see `Answer::Query`).
    fn answer_query(&mut self, send: impl FnOnce() + Send + 'static) {
        if self.journal.records == 0 {
            send();
        } else {
            self.journal.replies.push(Answer::Query(Box::new(send)));
        }
    }

    fn query_devices(&self, app: &str, lookup: &DeviceLookup, now: Instant) -> Vec<DeviceReport> {
        let found: Vec<DeviceId> = match lookup {
            DeviceLookup::Token(token) => self.by_token.get(&**token).copied().into_iter().collect(),
            DeviceLookup::User(user) => self
                .users
                .get(&user_digest(app, user))
                .into_iter()
                .flatten()
                .copied()
                .filter(|&d| self.devices[d].user_id.as_deref() == Some(&**user))
                .collect(),
        };
        found
            .into_iter()
            .map(|id| &self.devices[id])
            .filter(|d| *d.app == *app)
            .map(|d| DeviceReport {
                token: d.token.clone(),
                platform: d.platform,
                online: d.conn.is_some(),
                last_seen_ms: match d.conn {
                    Some(_) => self.clock.unix_ms(now),
                    None => d.last_seen_ms,
                },
                registered_at_ms: d.registered_at_ms,
                user_id: d.user_id.clone(),
                groups: d.groups.clone(),
                vendor_token: d.vendor_token.clone(),
            })
            .collect()
    }

    /// A user message as this shard sees it: how many devices bound to the
    /// user now, and how many of them acknowledged it.
    fn user_status(&self, app: &str, msg_key: &str, user: &str) -> Option<UserStatusReport> {
        // A recalled message has left the fanout store; the index still
        // knows it.
        let mut report = match self.fanout.find(app, msg_key, &Audience::User(user.into())) {
            Some(message) => UserStatusReport {
                message_id: message.id,
                accepted_at_ms: message.accepted_at_ms,
                expires_at_ms: message.expires_at_ms,
                ..Default::default()
            },
            None => {
                let id = self.recall_index.user_message(app, msg_key, user)?;
                let entry = self.recall_index.get(id).filter(|e| e.recalled)?;
                UserStatusReport {
                    message_id: id,
                    accepted_at_ms: entry.accepted_at_ms,
                    expires_at_ms: entry.expires_at_ms,
                    recalled: true,
                    ..Default::default()
                }
            }
        };
        let message_id = report.message_id;
        let bound = self
            .users
            .get(&user_digest(app, user))
            .map_or(&[][..], Vec::as_slice);
        for &device in bound {
            let d = &self.devices[device];
            if d.user_id.as_deref() != Some(user) || *d.app != *app {
                continue;
            }
            report.bound += 1;
            let acked = self
                .statuses
                .get(&StatusKey::new(app, msg_key, &d.token))
                .filter(|r| r.status == Status::Acked && r.message_id == message_id);
            if let Some(r) = acked {
                report.acked += 1;
                report.first_acked_at_ms = Some(
                    report
                        .first_acked_at_ms
                        .map_or(r.acked_at_ms, |t| t.min(r.acked_at_ms)),
                );
            }
        }
        Some(report)
    }

    fn accept(&mut self, message: Message, now: Instant) -> Accepted {
        self.accept_from(message, None, now)
    }

    /// Accepts `message`; with `logged`, its frame stays in the log there
    /// (`message.frame` is then unused).
    fn accept_from(&mut self, message: Message, logged: Option<Span>, now: Instant) -> Accepted {
        let status_key = StatusKey::new(&message.app_id, &message.msg_key, &message.token);
        if self.statuses.contains_key(&status_key) {
            self.metrics.duplicates.increment(1);
            return Accepted::Duplicate;
        }
        let device = match self.by_token.get(&*message.token) {
            Some(&d) if *self.devices[d].app == *message.app_id => d,
            _ => {
                self.metrics.unknown_token.increment(1);
                return Accepted::UnknownToken;
            }
        };
        self.statuses.insert(
            status_key,
            StatusRecord::pending(message.id, message.accepted_at_ms, message.expires_at_ms),
        );
        self.max_message_id = self.max_message_id.max(message.id);
        let tag = &message.task;
        let (task, created) = self.stats.task(
            &message.app_id,
            tag.id,
            tag.push_type,
            &tag.name,
            message.accepted_at_ms,
            self.journal.enabled,
        );
        if tag.id != 0 {
            let entry = Indexed {
                app: message.app_id.clone(),
                task_id: tag.id,
                msg_key: message.msg_key.clone(),
                target: Target::Token(message.token.clone()),
                accepted_at_ms: message.accepted_at_ms,
                expires_at_ms: message.expires_at_ms,
                recalled: false,
            };
            let evicted = self.recall_index.insert(message.id, entry);
            self.metrics.recall_index_evicted.increment(evicted as u64);
        }
        if self.journal.enabled {
            if created {
                self.journal.write(&Entry::Stats(&self.stats.task_record(task)));
            }
            let now_ms = self.clock.unix_ms(now);
            self.stats
                .count(task, self.devices[device].platform, Event::Pushed, now_ms);
            let record_at = self.journal.framed.len();
            self.journal.write(&Entry::Accepted(AcceptedEntry {
                message_id: message.id,
                app: &message.app_id,
                token: &message.token,
                msg_key: &message.msg_key,
                accepted_at_ms: message.accepted_at_ms,
                expires_at_ms: message.expires_at_ms,
                frame: &message.frame,
                task_id: tag.id,
                push_type: tag.push_type,
                collapse_key: message.collapse_key.as_deref(),
            }));
            self.journal.accepted.push(JournaledMessage {
                device,
                message_id: message.id,
                status_key,
                record_at,
                record_len: self.journal.framed.len() - record_at,
            });
        }
        let online = self.devices[device].conn.is_some();
        let frame = match logged {
            Some(span) => FrameSlot::Log(span),
            // No copy when the API's buffer is exactly the frame.
            None => FrameSlot::Memory(Vec::from(message.frame).into_boxed_slice()),
        };
        let pending = Pending::new(
            message.id,
            message.accepted_at_ms,
            message.expires_at_ms,
            frame,
            status_key,
            task,
            message.collapse_key,
        );
        let durable = !self.journal.enabled;
        self.enqueue(device, Pending { durable, ..pending }, true, now);
        Accepted::Queued { online }
    }

    /// Appends a message to a device's queue (replacing an unsent one with
    /// its collapse key, dropping the oldest unsent one past the pending
    /// cap), arms its expiry and, with `send` and when it may be sent now,
    /// sends it.
    fn enqueue(&mut self, device: DeviceId, pending: Pending, send: bool, now: Instant) {
        // Replay does not collapse: the log's Finished records say what was
        // collapsed, and a message in flight then is not in flight now.
        if self.journal.enabled {
            if let Some(key) = &pending.collapse_key {
                self.collapse(device, key, now);
            }
        }
        self.timers.insert(
            self.clock.instant_of(pending.expires_at_ms),
            Timer::Expiry {
                device,
                message_id: pending.id,
            },
        );
        let d = &mut self.devices[device];
        if d.queue.len() >= self.limits.max_pending {
            // Drop the oldest message not yet written; if the whole queue is
            // in flight, the oldest of those.
            let victim = if d.queue.len() > d.in_flight {
                d.in_flight
            } else {
                0
            };
            let gone = d.queue.remove(victim).expect("queue is full, so not empty");
            if victim < d.in_flight {
                d.in_flight -= 1;
            }
            let now_ms = self.clock.unix_ms(now);
            if let Some(record) = self.statuses.get_mut(&gone.status_key) {
                record.status = Status::Dropped;
                record.forget_at_ms = now_ms + self.limits.status_retention.as_millis() as u64;
            }
            self.journal
                .write(&finished_entry(d, gone.id, Status::Dropped, now_ms));
            self.status_gc
                .push_back((now + self.limits.status_retention, gone.status_key));
            d.missed = d.missed.saturating_add(1);
            self.pending_total -= 1;
            self.metrics.dropped_overflow.increment(1);
        }
        let send_now = send && pending.durable && d.conn.is_some();
        d.queue.push_back(pending);
        self.pending_total += 1;
        self.metrics.queued.increment(1);
        if send_now {
            self.fill_window(device, now);
        }
    }

    /// Finishes the device's unsent messages with collapse key `key`. Live
    /// there is at most one (each replaced the one before), but a restart
    /// puts a message that was in flight back among the unsent. Sent
    /// messages (`queue[..in_flight]`) are not recalled. The old messages are
    /// kept aside until the commit: if it fails, the new one is withdrawn and
    /// they go back (`uncollapse`), as the log still has them.
    fn collapse(&mut self, device: DeviceId, key: &str, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let mut pos = self.devices[device].in_flight;
        while pos < self.devices[device].queue.len() {
            let d = &mut self.devices[device];
            if d.queue[pos].collapse_key.as_deref() != Some(key) {
                pos += 1;
                continue;
            }
            let gone = d.queue.remove(pos).expect("position is in range");
            self.journal
                .write(&finished_entry(d, gone.id, Status::Collapsed, now_ms));
            set_final_status(
                &mut self.statuses,
                &mut self.status_gc,
                gone.status_key,
                Status::Collapsed,
                now,
                self.limits.status_retention,
                now_ms,
            );
            self.pending_total -= 1;
            self.metrics.collapsed.increment(1);
            self.journal.collapsed.push((device, pos, gone));
        }
    }

    /// A commit failed: a message collapsed by a push it refused is pending
    /// again, where it was (after anything sent since). One that was not
    /// durable either was withdrawn with the rest.
    fn uncollapse(&mut self, device: DeviceId, pos: usize, mut pending: Pending, now: Instant) {
        let Some(d) = self.devices.get_mut(device).filter(|_| pending.durable) else {
            return;
        };
        if let Some(record) = self.statuses.get_mut(&pending.status_key) {
            record.status = Status::Pending;
            record.forget_at_ms = 0;
        }
        pending.sent_at = None;
        let at = pos.clamp(d.in_flight, d.queue.len());
        d.queue.insert(at, pending);
        self.pending_total += 1;
        self.fill_window(device, now);
    }

    /// Runs every timer due at `now` and collects statuses past retention.
    pub fn on_timers(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for timer in fired.drain(..) {
            self.left_wheel(&timer);
            self.fire(timer, now);
        }
        self.fired = fired;
        self.compact_timers();
        self.metrics.timers.set(self.timers.len() as f64);
        if now >= self.next_stats_prune {
            self.next_stats_prune = now + STATS_PRUNE_INTERVAL;
            self.stats.prune(self.clock.unix_ms(now));
            self.metrics.stats_tasks.set(self.stats.task_count() as f64);
        }
        if now >= self.next_fanout_sweep {
            self.next_fanout_sweep = now + FANOUT_SWEEP_INTERVAL;
            if self.fanout.sweep(self.clock.unix_ms(now)) > 0 {
                self.metrics.shared_stored.set(self.fanout.len() as f64);
            }
            if self.recall_index.gc(self.clock.unix_ms(now)) > 0 {
                self.metrics.recall_index.set(self.recall_index.len() as f64);
            }
        }
        let now_ms = self.clock.unix_ms(now);
        while self.retired_gc.front().is_some_and(|(until, _)| *until <= now_ms) {
            let (until, old) = self.retired_gc.pop_front().expect("checked above");
            // Not journaled: the Rotated record holds the same deadline.
            if self.retired.get(&old).is_some_and(|r| r.until_ms == until) {
                self.end_redirect(&old);
                self.metrics.redirects_expired.increment(1);
            }
        }
        while let Some(&(at, key)) = self.status_gc.front() {
            if at > now && self.status_gc.len() <= self.limits.max_final_statuses {
                break;
            }
            if at > now {
                self.metrics.statuses_evicted.increment(1);
            }
            self.status_gc.pop_front();
            if self
                .statuses
                .get(&key)
                .is_some_and(|r| r.status != Status::Pending)
            {
                self.statuses.remove(&key);
            }
        }
    }

    /// Inserts a connection's deadline, counted on its session so that
    /// `on_closed` knows how many entries it leaves behind.
    fn arm_connection_timer(&mut self, at: Instant, timer: Timer) {
        if let Some((conn, _)) = timer.connection() {
            let session = &mut self.sessions[conn];
            session.timers_in_wheel = session.timers_in_wheel.saturating_add(1);
        }
        self.timers.insert(at, timer);
    }

    /// Bookkeeping for a timer that came due: its session has one entry
    /// fewer, or, with the session gone, there is one dead entry fewer.
    fn left_wheel(&mut self, timer: &Timer) {
        let Some((conn, generation)) = timer.connection() else {
            return;
        };
        match self.sessions.get_mut(conn).filter(|s| s.generation == generation) {
            Some(session) => session.timers_in_wheel = session.timers_in_wheel.saturating_sub(1),
            None => self.dead_timers = self.dead_timers.saturating_sub(1),
        }
    }

    /// Drops the deadlines of closed connections from the wheel once they
    /// are as many as the live entries (and at least
    /// `DEAD_TIMERS_BEFORE_COMPACTION`). Cancellation is lazy (timer.rs),
    /// and a connection leaves up to four deadlines behind, the idle one
    /// due three heartbeats (3 min) after its last frame: under a reconnect
    /// storm of 30,000 connections a second the wheel held millions of dead
    /// entries, 32 bytes each, for connections long gone. This bounds the
    /// wheel to twice its live entries (plus the floor), at one pass over
    /// it per that many closes.
    fn compact_timers(&mut self) {
        if self.dead_timers < DEAD_TIMERS_BEFORE_COMPACTION || self.dead_timers * 2 < self.timers.len() {
            return;
        }
        let sessions = &self.sessions;
        let dropped = self.timers.retain(|timer| match timer.connection() {
            Some((conn, generation)) => sessions.get(conn).is_some_and(|s| s.generation == generation),
            None => true,
        });
        debug_assert_eq!(dropped, self.dead_timers, "dead timer entries miscounted");
        self.dead_timers = 0;
        self.metrics.timer_compactions.increment(1);
    }

    /// Entries in the timer wheel, live and dead, and of those the dead
    /// ones (closed connections' deadlines not yet compacted away).
    #[cfg(test)]
    fn timer_entries(&self) -> (usize, usize) {
        (self.timers.len(), self.dead_timers)
    }

    fn live_session(&self, conn: ConnId, generation: u32) -> Option<&Session> {
        self.sessions
            .get(conn)
            .filter(|s| s.generation == generation && s.state != SessionState::Closing)
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Handshake { conn, generation } => {
                if self.live_session(conn, generation).map(|s| s.state) == Some(SessionState::AwaitingHello) {
                    self.fail(
                        conn,
                        ErrorCode::HandshakeTimeout,
                        "no Hello before the handshake deadline",
                    );
                }
            }
            Timer::Idle { conn, generation } => {
                let Some(session) = self.live_session(conn, generation) else {
                    return;
                };
                let deadline = session.last_activity + self.limits.idle_timeout;
                if deadline <= now {
                    self.fail(
                        conn,
                        ErrorCode::IdleTimeout,
                        "no frame for three heartbeat intervals",
                    );
                } else {
                    self.arm_connection_timer(deadline, Timer::Idle { conn, generation });
                }
            }
            Timer::AckTimeout { conn, generation } => {
                let Some(device) = self.live_session(conn, generation).and_then(Session::device) else {
                    return;
                };
                let d = &self.devices[device];
                let pushes = d.queue.iter().take(d.in_flight).filter_map(|p| p.sent_at);
                let revokes = self.revokes.get(&device).into_iter().flatten();
                let oldest = pushes.chain(revokes.filter_map(|r| r.sent_at)).min();
                match oldest {
                    Some(sent) if sent + self.limits.ack_timeout <= now => self.close(conn, "ack_timeout"),
                    Some(sent) => self.arm_connection_timer(
                        sent + self.limits.ack_timeout,
                        Timer::AckTimeout { conn, generation },
                    ),
                    None => self.sessions[conn].ack_timer_armed = false,
                }
            }
            Timer::WriteStall { conn, generation } => {
                let now_ms = self.clock.wrapping_ms(now);
                // Closing sessions too: a close whose flush stalled.
                let Some(session) = self.sessions.get_mut(conn).filter(|s| s.generation == generation) else {
                    return;
                };
                if session.io_unsent == 0 {
                    session.write_timer_armed = false;
                    return;
                }
                let stalled = Duration::from_millis(u64::from(now_ms.wrapping_sub(session.blocked_since_ms)));
                if stalled >= self.limits.write_timeout {
                    self.abort(conn, "write_timeout");
                } else {
                    self.arm_connection_timer(
                        now + (self.limits.write_timeout - stalled),
                        Timer::WriteStall { conn, generation },
                    );
                }
            }
            Timer::Expiry { device, message_id } => {
                let Some(d) = self.devices.get_mut(device) else {
                    return;
                };
                let Some(pos) = d.queue.iter().position(|p| p.id == message_id) else {
                    return;
                };
                let gone = d.queue.remove(pos).expect("position is in range");
                if pos < d.in_flight {
                    d.in_flight -= 1;
                }
                self.pending_total -= 1;
                self.metrics.expired.increment(1);
                tracing::debug!(shard = self.shard_id, msg_id = message_id, app = %d.app, token = %d.token, "message expired");
                self.metrics.pending.set(self.pending_total as f64);
                let now_ms = self.clock.unix_ms(now);
                self.journal
                    .write(&finished_entry(d, message_id, Status::Expired, now_ms));
                set_final_status(
                    &mut self.statuses,
                    &mut self.status_gc,
                    gone.status_key,
                    Status::Expired,
                    now,
                    self.limits.status_retention,
                    now_ms,
                );
                self.fill_window(device, now);
            }
            Timer::RevokeExpiry { device, message_id } => self.revoke_expired(device, message_id, now),
        }
    }

    /// The earliest time `on_timers` has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.next_deadline();
        let gc = self.status_gc.front().map(|(at, _)| *at);
        let sweep = (self.fanout.len() > 0 || self.recall_index.len() > 0).then_some(self.next_fanout_sweep);
        let redirect = self
            .retired_gc
            .front()
            .map(|(until_ms, _)| self.clock.instant_of(*until_ms));
        let stats = self
            .stats
            .has_unflushed()
            .then_some(self.last_stats_flush + STATS_FLUSH_INTERVAL);
        [timer, gc, sweep, redirect, stats, Some(self.next_stats_prune)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Tells every connected device to come back after a jittered delay
    /// (`delivery.shutdown_retry_*_ms`) and closes it; used on shutdown.
    pub fn shutdown(&mut self) {
        let conns: Vec<ConnId> = self.sessions.iter().map(|(conn, _)| conn).collect();
        let (low, high) = self.limits.shutdown_retry_ms;
        for conn in conns {
            let retry = self.jittered_ms(low, high);
            self.go_away(conn, GoAwayReason::Shutdown, retry, "server shutting down");
        }
    }
}

/// A frame kept in the log could not be read back (I/O error, checksum).
#[derive(Debug)]
pub struct UnreadableFrame(pub String);

impl From<UnreadableFrame> for crate::log::LogError {
    fn from(e: UnreadableFrame) -> Self {
        crate::log::LogError::Unreadable(e.0)
    }
}

/// Where `write_checkpoint` put each pending message (in the core's order).
pub struct CheckpointWritten {
    spans: Vec<Option<Span>>,
}

/// A checkpoint's output being gathered into chunks.
struct CheckpointChunk {
    out: Vec<u8>,
    records: usize,
    /// Each message record in `out`: its offset and length.
    messages: Vec<(usize, usize)>,
    spans: Vec<Option<Span>>,
    /// Whether message positions are wanted (there is a log reader).
    track: bool,
}

impl CheckpointChunk {
    /// A pending message that has no record of its own: no span.
    fn skip(&mut self) {
        if self.track {
            self.messages.push((0, 0));
        }
    }

    fn put(&mut self, entry: &Entry<'_>, is_message: bool) {
        let at = self.out.len();
        entry.write_to(&mut self.out);
        self.records += 1;
        if is_message && self.track {
            self.messages.push((at, self.out.len() - at));
        }
    }

    /// Emits the chunk once it holds `limit` bytes (0: whatever it holds).
    fn flush_if_full<E>(
        &mut self,
        limit: usize,
        emit: &mut impl FnMut(&[u8], usize) -> Result<Option<Position>, E>,
    ) -> Result<(), E> {
        if self.out.len() < limit.max(1) || self.records == 0 {
            return Ok(());
        }
        let at = emit(&self.out, self.records)?;
        for &(offset, len) in &self.messages {
            self.spans.push(at.filter(|_| len > 0).map(|at| {
                let offset = at.offset + offset as u64;
                Span::at(Position { offset, ..at }, len)
            }));
        }
        self.out.clear();
        self.records = 0;
        self.messages.clear();
        Ok(())
    }
}

/// Reads a queued message's Push frame back from its Accepted record in the
/// log, checking that the record is that message's.
fn read_logged_frame<'b>(
    reader: &mut Option<Box<dyn RecordReader>>,
    span: Span,
    message_id: u64,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], String> {
    read_logged_message(reader, span, message_id, buf).map(|a| a.frame)
}

/// Reads a queued message's Accepted record back from the log.
fn read_logged_message<'b>(
    reader: &mut Option<Box<dyn RecordReader>>,
    span: Span,
    message_id: u64,
    buf: &'b mut Vec<u8>,
) -> Result<AcceptedEntry<'b>, String> {
    let reader = reader.as_mut().ok_or("no log reader")?;
    let (kind, payload) = reader.read(span, buf)?;
    match Entry::decode(kind, &buf[payload])? {
        Entry::Accepted(a) if a.message_id == message_id => Ok(a),
        _ => Err(format!(
            "segment {} offset {} holds no Accepted record of message {message_id}",
            span.segment, span.offset
        )),
    }
}

/// The receipt of `pending`, just acked by `d`. A message kept in the log
/// is read back for its msgKey (one `pread`, usually from the page cache):
/// only for apps with a receipt URL.
fn receipt_for(
    d: &Device,
    pending: &Pending,
    acked_at_ms: u64,
    reader: &mut Option<Box<dyn RecordReader>>,
    buf: &mut Vec<u8>,
) -> Result<Receipt, String> {
    let (msg_key, user, task_id): (Box<str>, Option<Box<str>>, u64) = match &pending.frame {
        FrameSlot::Shared(m) => {
            let user = match &m.audience {
                Audience::User(user) => Some(user.clone()),
                _ => None,
            };
            (m.msg_key.clone(), user, m.task_id)
        }
        FrameSlot::Memory(frame) => push_keys(frame),
        FrameSlot::Log(span) => {
            let a = read_logged_message(reader, *span, pending.id, buf)?;
            (a.msg_key.into(), None, a.task_id)
        }
    };
    Ok(Receipt {
        app: d.app.clone(),
        msg_key,
        token: d.token.clone(),
        platform: d.platform,
        user,
        task_id,
        acked_at_ms,
    })
}

/// The msgKey and task id inside a pre-encoded Push frame of a token push.
fn push_keys(frame: &[u8]) -> (Box<str>, Option<Box<str>>, u64) {
    match crate::protocol::decode_slice(frame, usize::MAX) {
        Ok(Some((Frame::Push(p), _))) => (p.msg_key.into(), None, p.task_id.parse().unwrap_or(0)),
        other => panic!("a queued message holds a non-Push frame: {other:?}"),
    }
}

/// The msgKey inside a pre-encoded Push frame.
fn push_msg_key(frame: &[u8]) -> String {
    match crate::protocol::decode_slice(frame, usize::MAX) {
        Ok(Some((Frame::Push(p), _))) => p.msg_key,
        // Frames are encoded by the API and read back from a CRC-checked
        // log; anything else is a bug worth a loud failure.
        other => panic!("a queued message holds a non-Push frame: {other:?}"),
    }
}

/// A journal buffer grown by a burst is given back rather than kept.
fn journal_capacity_is_large(buffer: &Vec<u8>) -> bool {
    buffer.capacity() > 4 << 20
}

/// Remembers a message `d` acknowledged for its opened/ignored report;
/// answers whether an unreported one was forgotten to make room.
fn stats_remember(d: &mut Device, cap: usize, entry: Reportable) -> bool {
    if cap == 0 {
        return false;
    }
    let ring = d.reports.get_or_insert_with(Default::default);
    crate::stats::remember(&mut ring.entries, &mut ring.next, cap, entry)
}

/// Gives a message that leaves its queue unacked its final `status`
/// (expired or dropped) and schedules the status's collection.
fn set_final_status(
    statuses: &mut StatusTable,
    gc: &mut VecDeque<(Instant, StatusKey)>,
    key: StatusKey,
    status: Status,
    now: Instant,
    retention: Duration,
    now_ms: u64,
) {
    if let Some(record) = statuses.get_mut(&key) {
        record.status = status;
        record.forget_at_ms = now_ms + retention.as_millis() as u64;
    }
    gc.push_back((now + retention, key));
}

/// Random bytes for tokens, drawn from the kernel 4 KiB at a time: one
/// getrandom call per 256 tokens instead of one per token (minting retries
/// until a token hashes to this shard, so a connect storm needs many).
struct TokenSource {
    pool: Box<[u8; 4096]>,
    used: usize,
}

impl TokenSource {
    fn new() -> Self {
        Self {
            pool: Box::new([0; 4096]),
            used: 4096,
        }
    }

    /// 128 random bits, base64url without padding: unguessable, and free of
    /// anything that could tie two apps' tokens to one person. Each pool byte
    /// is used once.
    fn next(&mut self) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        if self.used + 16 > self.pool.len() {
            getrandom::fill(&mut self.pool[..]).expect("the kernel's random source is available");
            self.used = 0;
        }
        let raw = &self.pool[self.used..self.used + 16];
        self.used += 16;
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut out = String::with_capacity(22);
        for &byte in raw {
            bits = (bits << 8) | u32::from(byte);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
            }
        }
        if nbits > 0 {
            out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
        }
        out
    }
}

#[cfg(test)]
mod tests;
