//! What travels from the push API to a shard: accepted messages, status
//! queries, and their answers. A message is encoded into its Push frame once,
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
}

/// Per-target delivery status with the reference's numeric codes (0 and 2
/// here; -1 WaitingForVerify has no counterpart, 1 NoBindInfo arrives with
/// push by user). Our additions are numbered past them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 0: waiting for the device to come online or to acknowledge.
    Pending,
    /// 2: the device acknowledged the message.
    Acked,
    /// 3: the TTL ran out before the device acknowledged it.
    Expired,
    /// 4: dropped by the per-device pending cap (oldest first) or by
    /// DeleteToken.
    Dropped,
}

impl Status {
    pub fn code(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::Acked => 2,
            Self::Expired => 3,
            Self::Dropped => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "DeviceNotOnlineOrNoResponse",
            Self::Acked => "Acked",
            Self::Expired => "Expired",
            Self::Dropped => "Dropped",
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

pub type Reply<T> = tokio::sync::oneshot::Sender<T>;

/// The answer to a push: one outcome per message, sent once they are
/// durable, or why they could not be made durable.
pub type PushReply = Reply<Result<Vec<Accepted>, StorageRefusal>>;

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
