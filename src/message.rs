//! What travels from the push API to a shard: accepted messages, status
//! queries, registry changes and token rotations, and their answers. A message is encoded into its Push frame once,
//! on the API thread, so the shard's per-message work is a queue insert and a
//! byte copy.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::stats::{Counts, PushType, Query, TaskReport};

/// One message for one device token, as accepted by the API.
#[derive(Debug, Clone)]
pub struct Message {
    /// Service message id, unique across the daemon's life and restarts.
    pub id: u64,
    pub app_id: Arc<str>,
    pub token: Box<str>,
    pub msg_key: Box<str>,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// The complete Push frame (header and body), ready to write.
    pub frame: Bytes,
    /// What the statistics count it under; its id (0: none) is also the
    /// task id a recall-task names it by.
    pub task: TaskTag,
    /// A later message for the same device with the same key replaces this
    /// one while it is unsent (`Status::Collapsed`).
    pub collapse_key: Option<Box<str>>,
}

/// The push a message belongs to, for statistics: its task (id 0: a push
/// without one), its type and its taskName. The messages of one request
/// share the name.
#[derive(Debug, Clone)]
pub struct TaskTag {
    pub id: u64,
    pub push_type: PushType,
    pub name: Arc<str>,
}

impl TaskTag {
    /// A push without a task id.
    pub fn untasked(push_type: PushType) -> Self {
        Self {
            id: 0,
            push_type,
            name: Arc::from(""),
        }
    }
}

/// A message for a set of devices that is not known when it is accepted: a
/// broadcast to a platform, a group, or a user's devices. Stored once per
/// shard (the API hands every shard the same `Arc`), matched against each
/// device when it arrives (online devices get it at once) and again when a
/// device connects or binds a user, so an offline device costs nothing
/// until it comes back.
#[derive(Debug)]
pub struct SharedMessage {
    /// Service message id: every device acks this same id.
    pub id: u64,
    pub app_id: Arc<str>,
    pub audience: Audience,
    pub msg_key: Box<str>,
    /// The task id of a broadcast, group or tag push (0: none).
    pub task_id: u64,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// The complete Push frame, encoded once for every device.
    pub frame: Bytes,
    pub push_type: PushType,
    pub task_name: Arc<str>,
    /// As `Message::collapse_key`, per device: a user's device keeps at
    /// most one unsent message of each key.
    pub collapse_key: Option<Box<str>>,
}

/// Who a shared message is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Every device of one platform (1 Android, 2 iOS, 7 HarmonyOS) that
    /// existed when the message was accepted and passes the binding filter.
    Platform { platform: u8, filter: BindFilter },
    /// Members of a group of the app; `all` is every device of the app.
    /// Devices registered after the message was accepted are not members.
    Group(Box<str>),
    /// Every device bound to this userId, now or later within the TTL.
    User(Box<str>),
    /// Every device bound to one of a tag's users, now or later within the
    /// TTL; the users are the tag's when the message was accepted.
    Tag { name: Box<str>, users: Arc<TagUsers> },
}

/// The users of a tag push: the sorted, distinct `user_digest`s of the
/// tag's userIds, 8 bytes a user (4 MB for the reference's 500,000). Built
/// once per version of a tag by the tag store and shared, through one
/// `Arc`, by the store, every shard and every push to that version.
///
/// A digest stands for its userId: a device whose user is not in the tag
/// is taken for a member only if its digest equals one of the tag's, a
/// chance of about n / 2^64 (3e-14 for 500,000 users).
pub struct TagUsers {
    /// A digest of the contents: equal sets have equal ids, so the journal
    /// stores a set once for all the pushes that use it and a restart
    /// shares one copy between shards (`intern`).
    id: u64,
    digests: Box<[u64]>,
}

impl TagUsers {
    /// The set of `digests` (any order, repeats allowed), shared with an
    /// equal set already in memory if there is one.
    pub fn new(mut digests: Vec<u64>) -> Arc<TagUsers> {
        digests.sort_unstable();
        digests.dedup();
        Self::intern(TagUsers {
            id: set_id(&digests),
            digests: digests.into_boxed_slice(),
        })
    }

    /// `new` for digests already sorted and distinct (as the journal holds
    /// them); `None` when they are not.
    pub fn from_sorted(digests: Vec<u64>) -> Option<Arc<TagUsers>> {
        if !digests.windows(2).all(|w| w[0] < w[1]) {
            return None;
        }
        Some(Self::intern(TagUsers {
            id: set_id(&digests),
            digests: digests.into_boxed_slice(),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Sorted ascending.
    pub fn digests(&self) -> &[u64] {
        &self.digests
    }

    pub fn contains(&self, digest: u64) -> bool {
        self.digests.binary_search(&digest).is_ok()
    }

    /// Sets are immutable values named by their contents, so whoever builds
    /// an equal one (the tag store at start, each shard replaying its log)
    /// may as well share the copy that exists: a 500,000-user set replayed
    /// by eight shards then costs 4 MB, not 32.
    fn intern(set: TagUsers) -> Arc<TagUsers> {
        use std::sync::{Mutex, OnceLock, Weak};
        static LIVE: OnceLock<Mutex<HashMap<u64, Weak<TagUsers>>>> = OnceLock::new();
        let mut live = LIVE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = live.get(&set.id).and_then(Weak::upgrade) {
            if existing.digests == set.digests {
                return existing;
            }
        }
        let set = Arc::new(set);
        if live.len() >= 64 {
            live.retain(|_, weak| weak.strong_count() > 0);
        }
        live.insert(set.id, Arc::downgrade(&set));
        set
    }
}

/// Equal by contents (their ids are digests of them).
impl PartialEq for TagUsers {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.digests == other.digests
    }
}

impl Eq for TagUsers {}

/// Not the digests: half a million numbers help no log reader.
impl std::fmt::Debug for TagUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TagUsers {{ id: {:016x}, users: {} }}",
            self.id,
            self.digests.len()
        )
    }
}

/// The digest that names a user of an app: it files a shard's bound
/// devices and shared messages by user, and it is a tag push's audience in
/// the log, so it must never change: SipHash-2-4 (fixed by its definition)
/// with fixed keys over the fields' little-endian lengths and bytes.
#[allow(deprecated)]
pub fn user_digest(app: &str, user: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(0x7573_6572_7461_6773, 0x7269_6e67_7075_7368);
    for field in [app, user] {
        h.write(&(field.len() as u64).to_le_bytes());
        h.write(field.as_bytes());
    }
    h.finish()
}

/// The id of a set of digests: a digest of its length and members.
#[allow(deprecated)]
fn set_id(digests: &[u64]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(0x7461_6773_6574_6964, 0x7269_6e67_7075_7368);
    h.write(&(digests.len() as u64).to_le_bytes());
    for d in digests {
        h.write(&d.to_le_bytes());
    }
    h.finish()
}

/// The broadcast filter of the reference (`pushStatus` with `bindPeriod` or
/// `unBindPeriod`): which devices count by their user binding. A period is
/// measured back from the message's acceptance; `None` means forever. A
/// device that never had a user counts as unbound since it registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindFilter {
    /// pushStatus 0: devices bound to a user, bound within the period.
    Bound { within_ms: Option<u64> },
    /// pushStatus 1: bound devices, and unbound ones unbound within the period.
    Any { unbound_within_ms: Option<u64> },
    /// pushStatus 2: unbound devices, unbound within the period.
    Unbound { within_ms: Option<u64> },
}

/// What a shard did with one shared message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedOutcome {
    /// The same app + msgKey + target was accepted before; nothing changed.
    pub duplicate: bool,
    /// Devices of this shard in the audience now.
    pub matched: u32,
    /// Of those, connected ones: they are being sent it now.
    pub online: u32,
    /// Not stored: the shard holds `delivery.max_shared_messages_per_shard`.
    pub refused: bool,
}

/// A change to one device's registry record requested through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryChange {
    Bind(Box<str>),
    /// Unbinds this user, if it is the one bound.
    Unbind(Box<str>),
    JoinGroup(Box<str>),
    LeaveGroup(Box<str>),
    LeaveAllGroups,
    /// (thirdChannel, vendor token)
    VendorToken(u32, Box<str>),
}

/// Per-target delivery status with the reference's numeric codes (-1
/// WaitingForVerify has no counterpart). Our additions are numbered past
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 1: pushed to a user no device is bound to (it is kept for the TTL and
    /// delivered if a device binds the user).
    NoBindInfo,
    /// 0: waiting for the device to come online or to acknowledge.
    Pending,
    /// 2: the device acknowledged the message.
    Acked,
    /// 3: the TTL ran out before the device acknowledged it.
    Expired,
    /// 4: dropped by the per-device pending cap (oldest first) or by
    /// DeleteToken.
    Dropped,
    /// 5: replaced, before it was sent, by a newer message for the same
    /// device with the same collapse key.
    Collapsed,
    /// 6: recalled before the device acknowledged it. It is never written
    /// again; `RecallMark` says whether a Revoke went after it.
    Recalled,
}

impl Status {
    pub fn code(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::NoBindInfo => 1,
            Self::Acked => 2,
            Self::Expired => 3,
            Self::Dropped => 4,
            Self::Collapsed => 5,
            Self::Recalled => 6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "DeviceNotOnlineOrNoResponse",
            Self::NoBindInfo => "NoBindInfo",
            Self::Acked => "Acked",
            Self::Expired => "Expired",
            Self::Dropped => "Dropped",
            Self::Collapsed => "Collapsed",
            Self::Recalled => "Recalled",
        }
    }
}

/// What a recall did for one device's copy of a message, beside its
/// `Status`: an acked message keeps `Acked` and gets a mark here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecallMark {
    /// Not recalled.
    #[default]
    None,
    /// Taken out of the queue before any connection was written it.
    Withdrawn,
    /// The device may have it: a Revoke waits for its RevokeAck.
    RevokePending,
    /// The device confirmed the Revoke (RevokeAck).
    RevokeConfirmed,
    /// The Revoke's TTL ended before the device confirmed it.
    RevokeExpired,
    /// The Revoke was dropped unconfirmed: the device's revoke cap, or
    /// DeleteToken.
    RevokeDropped,
}

impl RecallMark {
    pub const ALL: [RecallMark; 6] = [
        Self::None,
        Self::Withdrawn,
        Self::RevokePending,
        Self::RevokeConfirmed,
        Self::RevokeExpired,
        Self::RevokeDropped,
    ];

    /// Its byte in the log.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// How the status query shows it; `None` when not recalled.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Withdrawn => Some("withdrawn"),
            Self::RevokePending => Some("revoke_pending"),
            Self::RevokeConfirmed => Some("revoke_confirmed"),
            Self::RevokeExpired => Some("revoke_expired"),
            Self::RevokeDropped => Some("revoke_dropped"),
        }
    }
}

/// What happened to one message handed to a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Queued (and written at once when the device is online).
    Queued { online: bool },
    /// The same app + msgKey + token was accepted before; nothing was queued
    /// again (a retried API call delivers once).
    Duplicate,
    /// No device with this token exists for this app.
    UnknownToken,
}

/// Why a shard could not make messages durable; the API answers with a
/// storage result code and the messages are not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageRefusal {
    /// The disk is full; retry when space is back.
    Full,
    /// A write or fsync failed; the shard accepts nothing until restart.
    Failed,
}

/// What a shard did with a token rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The device holds `token` now. `online`: it is being sent a
    /// TokenUpdate frame. A Hello with the old token reaches it until
    /// `redirect_until_ms` (0: not at all).
    Rotated {
        token: Box<str>,
        online: bool,
        redirect_until_ms: u64,
    },
    /// No device of this app holds the token (never issued, deleted, another
    /// app's, or already rotated away).
    UnknownToken,
}

/// Answer to a status query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    pub status: Status,
    pub message_id: u64,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// When the device acknowledged, if it did.
    pub acked_at_ms: Option<u64>,
    pub recall: RecallMark,
}

/// What one shard knows of a message pushed to a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserStatusReport {
    pub message_id: u64,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// Devices of this shard bound to the user now.
    pub bound: u32,
    /// Of those, ones that acknowledged the message, and the first time one did.
    pub acked: u32,
    pub first_acked_at_ms: Option<u64>,
    /// The message was recalled (by msgKey and userId, or by its task).
    pub recalled: bool,
}

/// One device as the device query shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    pub token: Box<str>,
    pub platform: u8,
    pub online: bool,
    /// Unix ms of the last frame from it (now, when online); 0 when unknown
    /// (not seen since the daemon started).
    pub last_seen_ms: u64,
    pub registered_at_ms: u64,
    pub user_id: Option<Box<str>>,
    pub groups: Vec<Box<str>>,
    /// (thirdChannel, vendor token)
    pub vendor_token: Option<(u32, Box<str>)>,
}

/// Which devices a device query asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceLookup {
    Token(Box<str>),
    User(Box<str>),
}

pub type Reply<T> = tokio::sync::oneshot::Sender<T>;

/// The answer to a push: one outcome per message, sent once they are
/// durable, or why they could not be made durable.
pub type PushReply = Reply<Result<Vec<Accepted>, StorageRefusal>>;

/// The answer to a publish of shared messages: one outcome per message,
/// sent once they are durable.
pub type PublishReply = Reply<Result<Vec<SharedOutcome>, StorageRefusal>>;

/// The answer to a registry change: a result code of the reference (100
/// success, 3012 empty user, 3028 invalid, 3054 no such token), once the
/// change is durable.
pub type RegistryReply = Reply<Result<i32, StorageRefusal>>;

/// What a recall names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecallTarget {
    /// The message with this msgKey for this device token (simple, template
    /// or multiple push, or one device's copy of a shared message).
    Token { msg_key: Box<str>, token: Box<str> },
    /// The message with this msgKey pushed to this userId (deliveryType 3).
    User { msg_key: Box<str>, user_id: Box<str> },
    /// Every message of a multiple, broadcast, group or tag push.
    Task(u64),
}

/// Who a recalled message was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecalledFor {
    Token(Box<str>),
    /// A platform, group or user audience.
    Shared(Audience),
    /// A tag push, by the tag's name.
    Tag(Box<str>),
}

/// What one shard did with one message a recall named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecallOutcome {
    pub message_id: u64,
    pub msg_key: Box<str>,
    pub target: RecalledFor,
    pub result: RecallResult,
    /// Devices whose copy was taken out of their queue unseen.
    pub withdrawn: u32,
    /// Devices that may have it and were written a Revoke now.
    pub revoke_sent: u32,
    /// Devices that may have it, offline: a Revoke waits for them.
    pub revoke_queued: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecallResult {
    /// Recalled now (the counts say how).
    Recalled,
    /// Recalled before; nothing changed.
    AlreadyRecalled,
    /// Its TTL ran out before the device acknowledged it: it will never be
    /// delivered, and nothing is revoked.
    Expired,
    /// Dropped (pending cap, DeleteToken) before the device acknowledged it.
    Dropped,
}

/// A shard's answer to a recall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecallAnswer {
    /// One outcome per message found (none: nothing known by that name).
    Done(Vec<RecallOutcome>),
    /// A named message was accepted before the recall window; nothing was
    /// changed.
    TooOld { accepted_at_ms: u64 },
}

/// The answer to a recall, once its changes are durable.
pub type RecallReply = Reply<Result<RecallAnswer, StorageRefusal>>;

/// The answer to a token rotation, once it is durable.
pub type RotateReply = Reply<Result<Rotation, StorageRefusal>>;

/// Work for a shard's delivery core, sent by the API.
#[derive(Debug)]
pub enum Command {
    /// Messages whose tokens this shard owns, in the order they must be
    /// delivered. The reply has one entry per message, in the same order.
    /// The reply comes once the accepted messages are durable.
    Push {
        messages: Vec<Message>,
        reply: PushReply,
    },
    /// Shared messages; every shard gets every one (the same `Arc`s) and
    /// delivers to its own devices.
    Publish {
        messages: Vec<Arc<SharedMessage>>,
        reply: PublishReply,
    },
    /// A registry change for a token this shard owns.
    Registry {
        app_id: Arc<str>,
        token: Box<str>,
        change: RegistryChange,
        reply: RegistryReply,
    },
    /// Gives the device holding `token` (this shard owns it) a new token,
    /// keeping everything it has.
    RotateToken {
        app_id: Arc<str>,
        token: Box<str>,
        reply: RotateReply,
    },
    /// The app's devices of this shard that match `lookup`.
    QueryDevices {
        app_id: Arc<str>,
        lookup: DeviceLookup,
        reply: Reply<Vec<DeviceReport>>,
    },
    /// `None` when the shard stores no message of that app + msgKey + user.
    QueryUserStatus {
        app_id: Arc<str>,
        msg_key: Box<str>,
        user_id: Box<str>,
        reply: Reply<Option<UserStatusReport>>,
    },
    /// Recalls messages of the app: queued copies are withdrawn, copies a
    /// device may have get a Revoke. Messages accepted before
    /// `not_before_ms` are refused (`RecallAnswer::TooOld`).
    Recall {
        app_id: Arc<str>,
        target: RecallTarget,
        not_before_ms: u64,
        reply: RecallReply,
    },
    /// The app's tasks this shard counted, created in `[from_ms, to_ms)`.
    QueryTasks {
        app_id: Arc<str>,
        from_ms: u64,
        to_ms: u64,
        reply: Reply<Vec<TaskReport>>,
    },
    /// One task as this shard counted it; `None` when it has none of it.
    QueryTask {
        app_id: Arc<str>,
        task_id: u64,
        reply: Reply<Option<TaskReport>>,
    },
    /// The app's counts per bucket of the query (buckets with counts only).
    QueryStats {
        app_id: Arc<str>,
        query: Query,
        reply: Reply<Vec<(u64, Counts)>>,
    },
    /// `None` when the shard has no record of that app + msgKey + token.
    QueryStatus {
        app_id: Arc<str>,
        msg_key: Box<str>,
        token: Box<str>,
        reply: Reply<Option<StatusReport>>,
    },
}

/// The shard that owns a token: its device state, pending queue and
/// statuses live there and nowhere else. FNV-1a, fixed forever, because the
/// owner of a token must not change between runs with the same shard count.
pub fn owner_shard(token: &[u8], shard_count: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in token {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shard_count as u64) as usize
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_digests_are_fixed_forever() {
        // Tag pushes in existing logs hold these values.
        assert_eq!(user_digest("demo", "alice"), user_digest("demo", "alice"));
        assert_ne!(user_digest("demo", "alice"), user_digest("other", "alice"));
        assert_ne!(user_digest("ab", "c"), user_digest("a", "bc"));
        assert_eq!(user_digest("demo", "alice"), 0x8559_cb5e_2bd8_0ba1);
    }

    #[test]
    fn tag_user_sets_are_sorted_distinct_and_shared() {
        let a = TagUsers::new(vec![3, 1, 2, 3]);
        assert_eq!(a.digests(), [1, 2, 3]);
        assert!(a.contains(2) && !a.contains(4));
        let b = TagUsers::new(vec![2, 1, 3]);
        assert!(Arc::ptr_eq(&a, &b), "an equal set is the same copy");
        let c = TagUsers::from_sorted(vec![1, 2, 3]).unwrap();
        assert!(Arc::ptr_eq(&a, &c));
        assert!(TagUsers::from_sorted(vec![1, 1]).is_none());
        assert!(TagUsers::from_sorted(vec![2, 1]).is_none());
        let d = TagUsers::new(vec![1, 2]);
        assert_ne!(a.id(), d.id());
        assert_ne!(*a, *d);
    }

    #[test]
    fn owner_shard_is_stable_and_spreads() {
        assert_eq!(owner_shard(b"abc", 4), owner_shard(b"abc", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(format!("token-{i}").as_bytes(), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
