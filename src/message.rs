//! What travels from the push API to a shard: accepted messages, status
//! queries, registry changes and token rotations, and their answers. A message is encoded into its Push frame once,
//! on the API thread, so the shard's per-message work is a queue insert and a
//! byte copy.

use std::sync::Arc;

use bytes::Bytes;

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
    /// A later message for the same device with the same key replaces this
    /// one while it is unsent (`Status::Collapsed`).
    pub collapse_key: Option<Box<str>>,
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
    fn owner_shard_is_stable_and_spreads() {
        assert_eq!(owner_shard(b"abc", 4), owner_shard(b"abc", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(format!("token-{i}").as_bytes(), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
