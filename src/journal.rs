//! What the delivery core writes to its shard's durable log and reads back on
//! recovery: one `Entry` per change of durable state (a device's registry
//! record, a message accepted, a message finished, a recall, a token
//! rotated), and the byte layout of each. Pure encoding and decoding, no
//! files: `log` stores the bytes, and `delivery` decides when an entry is
//! due and how replay applies it.
//!
//! Layout: integers little-endian fixed width, strings and byte strings as a
//! `u32` length and the bytes, optional values behind a `u8` presence flag.
//! Fields added to a record later are appended at its end, in the order they
//! were added, and a record that ends before one decodes with its default:
//! Accepted is `.. frame, task_id, push_type[, collapse_key]`, Shared is
//! `.. frame, push_type[, collapse_key]` (the key written only when present).
//! Every entry is self-contained, so any suffix of the log that starts at a
//! checkpoint replays to the same state.

use crate::message::{Audience, BindFilter, RecallMark, Status};
use crate::stats::PushType;

const KIND_DEVICE: u8 = 1;
const KIND_DEVICE_DELETED: u8 = 2;
const KIND_ACCEPTED: u8 = 3;
const KIND_FINISHED: u8 = 4;
const KIND_FINAL_STATUS: u8 = 5;
const KIND_SHARED: u8 = 6;
const KIND_RECALL: u8 = 7;
const KIND_TOKEN: u8 = 8;
/// Statistics: counts, tasks, reports (layout in `stats::record`).
const KIND_STATS: u8 = 9;
const KIND_TAG_USERS: u8 = 10;

/// Sub-kinds of a `KIND_TOKEN` record (its first payload byte).
const TOKEN_ROTATED: u8 = 1;
const TOKEN_REDIRECT_ENDED: u8 = 2;

/// Digests in one `TagUsers` record: 800 KB, under `log::MAX_RECORD`.
pub const TAG_USERS_PER_RECORD: usize = 100_000;

/// A device's whole registry record; written on registration and on every
/// change, so the last one for a token is its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry<'a> {
    pub token: &'a str,
    pub app: &'a str,
    pub platform: u8,
    pub user_id: Option<&'a str>,
    pub groups: Vec<&'a str>,
    /// (thirdChannel, vendor token)
    pub vendor: Option<(u32, &'a str)>,
    /// When the token was issued; broadcasts reach devices that existed
    /// when they were accepted. 0 in records older than this field.
    pub registered_at_ms: u64,
    /// When the current user was bound (0: never or unknown).
    pub bound_at_ms: u64,
    /// When a user was last unbound (0: never).
    pub unbound_at_ms: u64,
}

/// A shared message (broadcast, group, user or tag push) as one shard
/// stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedEntry<'a> {
    pub message_id: u64,
    pub app: &'a str,
    pub audience: AudienceEntry<'a>,
    pub msg_key: &'a str,
    pub task_id: u64,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// The complete Push frame.
    pub frame: &'a [u8],
    /// Broadcast in records older than this field.
    pub push_type: PushType,
    /// Written after `push_type`, and only when present; absent in records
    /// older than this field.
    pub collapse_key: Option<&'a str>,
}

/// A shared message's audience as the log holds it. A tag's users are too
/// many to repeat in every message (and a record holds at most 1 MiB), so
/// the message names their set by id, and `TagUsers` records before it in
/// the log hold the set, once for every message that uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudienceEntry<'a> {
    /// A platform, group or user audience (never `Audience::Tag`).
    Audience(Audience),
    Tag {
        name: &'a str,
        set_id: u64,
        users: u64,
    },
}

impl<'a> AudienceEntry<'a> {
    pub fn of(audience: &'a Audience) -> Self {
        match audience {
            Audience::Tag { name, users } => AudienceEntry::Tag {
                name,
                set_id: users.id(),
                users: users.len() as u64,
            },
            other => AudienceEntry::Audience(other.clone()),
        }
    }
}

/// One part of a tag push's user set: the sorted digests
/// `[part * TAG_USERS_PER_RECORD ..]` of set `set_id`, `parts` parts in
/// all, written one after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagUsersEntry<'a> {
    pub set_id: u64,
    pub part: u32,
    pub parts: u32,
    /// Little-endian u64s.
    pub digests: &'a [u8],
}

impl TagUsersEntry<'_> {
    pub fn digests(&self) -> impl Iterator<Item = u64> + '_ {
        self.digests
            .chunks_exact(8)
            .map(|d| u64::from_le_bytes(d.try_into().expect("8 bytes")))
    }

    /// The records of a whole set, in order (one, empty, for no users).
    pub fn write_set(out: &mut Vec<u8>, set_id: u64, digests: &[u64]) -> usize {
        write_set_in(out, set_id, digests, TAG_USERS_PER_RECORD)
    }
}

/// `TagUsersEntry::write_set` with `per_record` digests a record.
fn write_set_in(out: &mut Vec<u8>, set_id: u64, digests: &[u64], per_record: usize) -> usize {
    let parts = digests.len().div_ceil(per_record).max(1);
    let mut bytes = Vec::with_capacity(per_record.min(digests.len()) * 8);
    for part in 0..parts {
        let end = ((part + 1) * per_record).min(digests.len());
        bytes.clear();
        for d in &digests[part * per_record..end] {
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        Entry::TagUsers(TagUsersEntry {
            set_id,
            part: part as u32,
            parts: parts as u32,
            digests: &bytes,
        })
        .write_to(out);
    }
    parts
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedEntry<'a> {
    pub message_id: u64,
    pub app: &'a str,
    pub token: &'a str,
    pub msg_key: &'a str,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// The complete Push frame.
    pub frame: &'a [u8],
    /// 0: none. Records older than this field and the next have none and
    /// are simple pushes.
    pub task_id: u64,
    pub push_type: PushType,
    /// A later message with the same key replaces this one while it is
    /// unsent. Written after `push_type`, and only when present; absent in
    /// records older than this field.
    pub collapse_key: Option<&'a str>,
}

/// A device's token changed, or a retired token stopped redirecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEntry<'a> {
    /// The device holding `old` holds `new` from now on. Until
    /// `redirect_until_ms` (0: not at all) a Hello presenting `old` reaches
    /// the device and is told `new`.
    Rotated {
        app: &'a str,
        old: &'a str,
        new: &'a str,
        at_ms: u64,
        redirect_until_ms: u64,
    },
    /// `old` no longer reaches any device: the device presented its new
    /// token, or a newer rotation displaced this redirect.
    RedirectEnded { old: &'a str },
}

/// A final status kept for queries after its message left the queue;
/// written only by checkpoints (the message's own entries are gone then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStatusEntry {
    /// The stable digest of (app, msgKey, token).
    pub key: u128,
    pub message_id: u64,
    pub status: Status,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    pub acked_at_ms: Option<u64>,
    /// When the status may be forgotten (end of the retention window).
    pub forget_at_ms: u64,
    /// What a recall did (a trailing byte; records older than recall end
    /// before it and decode as `None`).
    pub recall: RecallMark,
}

/// A recall's durable effects (kind 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecallEntry<'a> {
    /// A message kept for recall by task id or userId. Written by
    /// checkpoints only: the message's own records may be gone by then.
    Indexed(IndexedEntry<'a>),
    /// A shared message was recalled: no device is sent it from now on.
    Shared { message_id: u64, at_ms: u64 },
    /// One device's copy was recalled: out of its queue, and when it may be
    /// on the device, a Revoke owed until `revoke_until_ms`. Checkpoints
    /// restate the Revokes still owed this way.
    Device(DeviceRecallEntry<'a>),
    /// A Revoke owed to `token` ended: confirmed, expired or dropped.
    RevokeEnded {
        token: &'a str,
        message_id: u64,
        mark: RecallMark,
        at_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedEntry<'a> {
    pub message_id: u64,
    pub app: &'a str,
    pub task_id: u64,
    pub msg_key: &'a str,
    pub target: IndexedTarget<'a>,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    pub recalled: bool,
}

/// Who an indexed message is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexedTarget<'a> {
    Token(&'a str),
    /// A shared message's audience; a tag push's names its user set
    /// without holding it (the index needs the tag's name only).
    Shared(AudienceEntry<'a>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecallEntry<'a> {
    pub app: &'a str,
    pub token: &'a str,
    pub msg_key: &'a str,
    pub message_id: u64,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    pub at_ms: u64,
    /// `None`: withdrawn before any connection was written it.
    pub revoke_until_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    Device(DeviceEntry<'a>),
    DeviceDeleted {
        token: &'a str,
    },
    Accepted(AcceptedEntry<'a>),
    /// The message left the device's queue: acked, expired or dropped.
    Finished {
        token: &'a str,
        message_id: u64,
        status: Status,
        at_ms: u64,
    },
    FinalStatus(FinalStatusEntry),
    Shared(SharedEntry<'a>),
    Recall(RecallEntry<'a>),
    Token(TokenEntry<'a>),
    TagUsers(TagUsersEntry<'a>),
    /// A statistics record, its payload laid out by `stats::record`.
    Stats(&'a [u8]),
}

impl Entry<'_> {
    /// Appends this entry as one framed log record.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let kind = match self {
            Entry::Device(_) => KIND_DEVICE,
            Entry::DeviceDeleted { .. } => KIND_DEVICE_DELETED,
            Entry::Accepted(_) => KIND_ACCEPTED,
            Entry::Finished { .. } => KIND_FINISHED,
            Entry::FinalStatus(_) => KIND_FINAL_STATUS,
            Entry::Shared(_) => KIND_SHARED,
            Entry::Recall(_) => KIND_RECALL,
            Entry::Token(_) => KIND_TOKEN,
            Entry::TagUsers(_) => KIND_TAG_USERS,
            Entry::Stats(_) => KIND_STATS,
        };
        crate::log::frame_record_with(out, kind, |out| self.encode_payload(out));
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Entry::Device(d) => {
                put_str(out, d.token);
                put_str(out, d.app);
                out.push(d.platform);
                put_opt_str(out, d.user_id);
                put_u32(out, d.groups.len() as u32);
                for g in &d.groups {
                    put_str(out, g);
                }
                match d.vendor {
                    Some((channel, token)) => {
                        out.push(1);
                        put_u32(out, channel);
                        put_str(out, token);
                    }
                    None => out.push(0),
                }
                put_u64(out, d.registered_at_ms);
                put_u64(out, d.bound_at_ms);
                put_u64(out, d.unbound_at_ms);
            }
            Entry::DeviceDeleted { token } => put_str(out, token),
            Entry::Accepted(a) => {
                put_u64(out, a.message_id);
                put_str(out, a.app);
                put_str(out, a.token);
                put_str(out, a.msg_key);
                put_u64(out, a.accepted_at_ms);
                put_u64(out, a.expires_at_ms);
                put_bytes(out, a.frame);
                put_u64(out, a.task_id);
                out.push(a.push_type.code());
                // Only when present, so a record without one has the layout
                // of records older than collapse keys byte for byte.
                if let Some(key) = a.collapse_key {
                    put_str(out, key);
                }
            }
            Entry::Finished {
                token,
                message_id,
                status,
                at_ms,
            } => {
                put_str(out, token);
                put_u64(out, *message_id);
                out.push(status.code() as u8);
                put_u64(out, *at_ms);
            }
            Entry::FinalStatus(f) => {
                out.extend_from_slice(&f.key.to_le_bytes());
                put_u64(out, f.message_id);
                out.push(f.status.code() as u8);
                put_u64(out, f.accepted_at_ms);
                put_u64(out, f.expires_at_ms);
                match f.acked_at_ms {
                    Some(at) => {
                        out.push(1);
                        put_u64(out, at);
                    }
                    None => out.push(0),
                }
                put_u64(out, f.forget_at_ms);
                out.push(f.recall.code());
            }
            Entry::Shared(m) => {
                put_u64(out, m.message_id);
                put_str(out, m.app);
                put_audience(out, &m.audience);
                put_str(out, m.msg_key);
                put_u64(out, m.task_id);
                put_u64(out, m.accepted_at_ms);
                put_u64(out, m.expires_at_ms);
                put_bytes(out, m.frame);
                out.push(m.push_type.code());
                // Only when present, as in `Accepted`.
                if let Some(key) = m.collapse_key {
                    put_str(out, key);
                }
            }
            Entry::TagUsers(t) => {
                put_u64(out, t.set_id);
                put_u32(out, t.part);
                put_u32(out, t.parts);
                put_bytes(out, t.digests);
            }
            Entry::Recall(r) => encode_recall(out, r),
            Entry::Token(TokenEntry::Rotated {
                app,
                old,
                new,
                at_ms,
                redirect_until_ms,
            }) => {
                out.push(TOKEN_ROTATED);
                put_str(out, app);
                put_str(out, old);
                put_str(out, new);
                put_u64(out, *at_ms);
                put_u64(out, *redirect_until_ms);
            }
            Entry::Token(TokenEntry::RedirectEnded { old }) => {
                out.push(TOKEN_REDIRECT_ENDED);
                put_str(out, old);
            }
            Entry::Stats(payload) => out.extend_from_slice(payload),
        }
    }

    /// Decodes a record's payload. Errors name what was wrong; the log's CRC
    /// has already vouched for the bytes, so an error here means a record
    /// kind from a newer version or a bug, and recovery stops on it.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Entry<'_>, String> {
        let mut r = Reader { buf: payload, at: 0 };
        let entry = match kind {
            KIND_DEVICE => {
                let token = r.str()?;
                let app = r.str()?;
                let platform = r.u8()?;
                let user_id = r.opt_str()?;
                let count = r.u32()? as usize;
                if count > payload.len() {
                    return Err(format!("{count} groups in a {}-byte record", payload.len()));
                }
                let mut groups = Vec::with_capacity(count);
                for _ in 0..count {
                    groups.push(r.str()?);
                }
                let vendor = match r.u8()? {
                    0 => None,
                    1 => Some((r.u32()?, r.str()?)),
                    x => return Err(format!("vendor flag {x}")),
                };
                // Records written before the times existed end here.
                let [registered_at_ms, bound_at_ms, unbound_at_ms] = if r.at == payload.len() {
                    [0; 3]
                } else {
                    [r.u64()?, r.u64()?, r.u64()?]
                };
                Entry::Device(DeviceEntry {
                    token,
                    app,
                    platform,
                    user_id,
                    groups,
                    vendor,
                    registered_at_ms,
                    bound_at_ms,
                    unbound_at_ms,
                })
            }
            KIND_DEVICE_DELETED => Entry::DeviceDeleted { token: r.str()? },
            KIND_ACCEPTED => {
                let message_id = r.u64()?;
                let app = r.str()?;
                let token = r.str()?;
                let msg_key = r.str()?;
                let accepted_at_ms = r.u64()?;
                let expires_at_ms = r.u64()?;
                let frame = r.bytes()?;
                // Records written before the task fields end here.
                let (task_id, push_type) = if r.at == payload.len() {
                    (0, PushType::Simple)
                } else {
                    (r.u64()?, r.push_type()?)
                };
                // Records written before collapse keys end here.
                let collapse_key = if r.at == payload.len() {
                    None
                } else {
                    Some(r.str()?)
                };
                Entry::Accepted(AcceptedEntry {
                    message_id,
                    app,
                    token,
                    msg_key,
                    accepted_at_ms,
                    expires_at_ms,
                    frame,
                    task_id,
                    push_type,
                    collapse_key,
                })
            }
            KIND_FINISHED => Entry::Finished {
                token: r.str()?,
                message_id: r.u64()?,
                status: r.final_status()?,
                at_ms: r.u64()?,
            },
            KIND_FINAL_STATUS => Entry::FinalStatus(FinalStatusEntry {
                key: u128::from_le_bytes(r.take(16)?.try_into().expect("16 bytes")),
                message_id: r.u64()?,
                status: r.final_status()?,
                accepted_at_ms: r.u64()?,
                expires_at_ms: r.u64()?,
                acked_at_ms: match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    x => return Err(format!("acked flag {x}")),
                },
                forget_at_ms: r.u64()?,
                recall: if r.at == payload.len() {
                    RecallMark::None
                } else {
                    r.recall_mark()?
                },
            }),
            KIND_SHARED => Entry::Shared(SharedEntry {
                message_id: r.u64()?,
                app: r.str()?,
                audience: r.audience()?,
                msg_key: r.str()?,
                task_id: r.u64()?,
                accepted_at_ms: r.u64()?,
                expires_at_ms: r.u64()?,
                frame: r.bytes()?,
                // Fields are read in the order written: records written
                // before push types end here, and those written before
                // collapse keys after it.
                push_type: if r.at == payload.len() {
                    PushType::Broadcast
                } else {
                    r.push_type()?
                },
                collapse_key: if r.at == payload.len() {
                    None
                } else {
                    Some(r.str()?)
                },
            }),
            KIND_TOKEN => Entry::Token(match r.u8()? {
                TOKEN_ROTATED => TokenEntry::Rotated {
                    app: r.str()?,
                    old: r.str()?,
                    new: r.str()?,
                    at_ms: r.u64()?,
                    redirect_until_ms: r.u64()?,
                },
                TOKEN_REDIRECT_ENDED => TokenEntry::RedirectEnded { old: r.str()? },
                x => return Err(format!("token record sub-kind {x}")),
            }),
            KIND_RECALL => Entry::Recall(r.recall()?),
            KIND_TAG_USERS => {
                let entry = TagUsersEntry {
                    set_id: r.u64()?,
                    part: r.u32()?,
                    parts: r.u32()?,
                    digests: r.bytes()?,
                };
                if !entry.digests.len().is_multiple_of(8) || entry.part >= entry.parts {
                    return Err(format!(
                        "tag user set part {} of {} with {} bytes",
                        entry.part,
                        entry.parts,
                        entry.digests.len()
                    ));
                }
                Entry::TagUsers(entry)
            }
            KIND_STATS => {
                r.at = payload.len();
                Entry::Stats(payload)
            }
            other => return Err(format!("unknown record kind {other}")),
        };
        if r.at != payload.len() {
            return Err(format!("{} bytes after the record", payload.len() - r.at));
        }
        Ok(entry)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

const RECALL_INDEXED: u8 = 1;
const RECALL_SHARED: u8 = 2;
const RECALL_DEVICE: u8 = 3;
const RECALL_REVOKE_ENDED: u8 = 4;

/// A tag byte, then the variant's fields.
fn encode_recall(out: &mut Vec<u8>, entry: &RecallEntry<'_>) {
    match entry {
        RecallEntry::Indexed(i) => {
            out.push(RECALL_INDEXED);
            put_u64(out, i.message_id);
            put_str(out, i.app);
            put_u64(out, i.task_id);
            put_str(out, i.msg_key);
            match &i.target {
                IndexedTarget::Token(token) => {
                    out.push(0);
                    put_str(out, token);
                }
                IndexedTarget::Shared(audience) => {
                    out.push(1);
                    put_audience(out, audience);
                }
            }
            put_u64(out, i.accepted_at_ms);
            put_u64(out, i.expires_at_ms);
            out.push(u8::from(i.recalled));
        }
        RecallEntry::Shared { message_id, at_ms } => {
            out.push(RECALL_SHARED);
            put_u64(out, *message_id);
            put_u64(out, *at_ms);
        }
        RecallEntry::Device(d) => {
            out.push(RECALL_DEVICE);
            put_str(out, d.app);
            put_str(out, d.token);
            put_str(out, d.msg_key);
            put_u64(out, d.message_id);
            put_u64(out, d.accepted_at_ms);
            put_u64(out, d.expires_at_ms);
            put_u64(out, d.at_ms);
            match d.revoke_until_ms {
                Some(until) => {
                    out.push(1);
                    put_u64(out, until);
                }
                None => out.push(0),
            }
        }
        RecallEntry::RevokeEnded {
            token,
            message_id,
            mark,
            at_ms,
        } => {
            out.push(RECALL_REVOKE_ENDED);
            put_str(out, token);
            put_u64(out, *message_id);
            out.push(mark.code());
            put_u64(out, *at_ms);
        }
    }
}

/// A period of `None` (forever) is stored as `u64::MAX`.
fn put_audience(out: &mut Vec<u8>, audience: &AudienceEntry<'_>) {
    let audience = match audience {
        AudienceEntry::Tag { name, set_id, users } => {
            out.push(4);
            put_str(out, name);
            put_u64(out, *set_id);
            put_u64(out, *users);
            return;
        }
        AudienceEntry::Audience(audience) => audience,
    };
    match audience {
        Audience::Tag { name, users } => {
            // `AudienceEntry::of` never builds this; written the same way.
            put_audience(
                out,
                &AudienceEntry::Tag {
                    name,
                    set_id: users.id(),
                    users: users.len() as u64,
                },
            )
        }
        Audience::Platform { platform, filter } => {
            out.push(1);
            out.push(*platform);
            let (kind, period) = match *filter {
                BindFilter::Bound { within_ms } => (0, within_ms),
                BindFilter::Any { unbound_within_ms } => (1, unbound_within_ms),
                BindFilter::Unbound { within_ms } => (2, within_ms),
            };
            out.push(kind);
            put_u64(out, period.unwrap_or(u64::MAX));
        }
        Audience::Group(group) => {
            out.push(2);
            put_str(out, group);
        }
        Audience::User(user) => {
            out.push(3);
            put_str(out, user);
        }
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
            return Err(format!("record ends inside a field at byte {}", self.at));
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

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            x => Err(format!("presence flag {x}")),
        }
    }

    fn audience(&mut self) -> Result<AudienceEntry<'a>, String> {
        Ok(AudienceEntry::Audience(match self.u8()? {
            1 => {
                let platform = self.u8()?;
                let kind = self.u8()?;
                let period = Some(self.u64()?).filter(|&p| p != u64::MAX);
                let filter = match kind {
                    0 => BindFilter::Bound { within_ms: period },
                    1 => BindFilter::Any {
                        unbound_within_ms: period,
                    },
                    2 => BindFilter::Unbound { within_ms: period },
                    x => return Err(format!("bind filter {x}")),
                };
                Audience::Platform { platform, filter }
            }
            2 => Audience::Group(self.str()?.into()),
            3 => Audience::User(self.str()?.into()),
            4 => {
                return Ok(AudienceEntry::Tag {
                    name: self.str()?,
                    set_id: self.u64()?,
                    users: self.u64()?,
                })
            }
            x => return Err(format!("audience kind {x}")),
        }))
    }

    fn push_type(&mut self) -> Result<PushType, String> {
        let code = self.u8()?;
        PushType::from_code(code).ok_or_else(|| format!("unknown push type {code}"))
    }

    fn final_status(&mut self) -> Result<Status, String> {
        match self.u8()? {
            2 => Ok(Status::Acked),
            3 => Ok(Status::Expired),
            4 => Ok(Status::Dropped),
            5 => Ok(Status::Collapsed),
            6 => Ok(Status::Recalled),
            x => Err(format!("final status {x}")),
        }
    }

    fn recall_mark(&mut self) -> Result<RecallMark, String> {
        let code = self.u8()?;
        RecallMark::from_code(code).ok_or_else(|| format!("recall mark {code}"))
    }

    fn recall(&mut self) -> Result<RecallEntry<'a>, String> {
        Ok(match self.u8()? {
            RECALL_INDEXED => RecallEntry::Indexed(IndexedEntry {
                message_id: self.u64()?,
                app: self.str()?,
                task_id: self.u64()?,
                msg_key: self.str()?,
                target: match self.u8()? {
                    0 => IndexedTarget::Token(self.str()?),
                    1 => IndexedTarget::Shared(self.audience()?),
                    x => return Err(format!("indexed target kind {x}")),
                },
                accepted_at_ms: self.u64()?,
                expires_at_ms: self.u64()?,
                recalled: match self.u8()? {
                    0 => false,
                    1 => true,
                    x => return Err(format!("recalled flag {x}")),
                },
            }),
            RECALL_SHARED => RecallEntry::Shared {
                message_id: self.u64()?,
                at_ms: self.u64()?,
            },
            RECALL_DEVICE => RecallEntry::Device(DeviceRecallEntry {
                app: self.str()?,
                token: self.str()?,
                msg_key: self.str()?,
                message_id: self.u64()?,
                accepted_at_ms: self.u64()?,
                expires_at_ms: self.u64()?,
                at_ms: self.u64()?,
                revoke_until_ms: match self.u8()? {
                    0 => None,
                    1 => Some(self.u64()?),
                    x => return Err(format!("revoke flag {x}")),
                },
            }),
            RECALL_REVOKE_ENDED => RecallEntry::RevokeEnded {
                token: self.str()?,
                message_id: self.u64()?,
                mark: self.recall_mark()?,
                at_ms: self.u64()?,
            },
            x => return Err(format!("recall entry kind {x}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_framed(bytes: &[u8]) -> Entry<'_> {
        let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + len, "one record");
        assert_eq!(
            crc32fast::hash(&bytes[8..]),
            u32::from_le_bytes(bytes[4..8].try_into().unwrap())
        );
        Entry::decode(bytes[8], &bytes[9..]).unwrap()
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Acked),
            Just(Status::Expired),
            Just(Status::Dropped),
            Just(Status::Collapsed),
            Just(Status::Recalled)
        ]
    }

    fn mark() -> impl Strategy<Value = RecallMark> {
        proptest::sample::select(RecallMark::ALL.to_vec())
    }

    fn push_type() -> impl Strategy<Value = PushType> {
        proptest::sample::select(PushType::ALL.to_vec())
    }

    fn audience() -> impl Strategy<Value = AudienceEntry<'static>> {
        let period = proptest::option::of(0u64..u64::MAX);
        let known = prop_oneof![
            (any::<u8>(), 0u8..3, period).prop_map(|(platform, kind, p)| Audience::Platform {
                platform,
                filter: match kind {
                    0 => BindFilter::Bound { within_ms: p },
                    1 => BindFilter::Any { unbound_within_ms: p },
                    _ => BindFilter::Unbound { within_ms: p },
                },
            }),
            ".{0,12}".prop_map(|g| Audience::Group(g.into())),
            ".{0,12}".prop_map(|u| Audience::User(u.into())),
        ]
        .prop_map(AudienceEntry::Audience);
        let tag =
            (".{0,12}", any::<u64>(), any::<u64>()).prop_map(|(name, set_id, users)| AudienceEntry::Tag {
                name: Box::leak(name.into_boxed_str()),
                set_id,
                users,
            });
        prop_oneof![known, tag]
    }

    proptest! {
        #[test]
        fn device_entries_round_trip(
            token in ".{0,30}", app in ".{0,10}", platform: u8,
            user in proptest::option::of(".{0,20}"),
            groups in proptest::collection::vec(".{0,8}", 0..5),
            vendor in proptest::option::of((any::<u32>(), ".{0,20}")),
            times: [u64; 3],
        ) {
            let entry = Entry::Device(DeviceEntry {
                token: &token, app: &app, platform,
                user_id: user.as_deref(),
                groups: groups.iter().map(String::as_str).collect(),
                vendor: vendor.as_ref().map(|(c, t)| (*c, t.as_str())),
                registered_at_ms: times[0],
                bound_at_ms: times[1],
                unbound_at_ms: times[2],
            });
            let mut out = Vec::new();
            entry.write_to(&mut out);
            prop_assert_eq!(decode_framed(&out), entry);
        }

        #[test]
        fn message_entries_round_trip(
            id: u64, token in ".{0,30}", key in ".{0,20}", at: u64, exp: u64,
            frame in proptest::collection::vec(any::<u8>(), 0..300),
            status in status(), key128: u128, acked in proptest::option::of(any::<u64>()),
            recall in mark(),
            collapse in proptest::option::of(".{0,64}"), push_type in push_type(),
        ) {
            let entries = [
                Entry::Accepted(AcceptedEntry {
                    message_id: id, app: "demo", token: &token, msg_key: &key,
                    accepted_at_ms: at, expires_at_ms: exp, frame: &frame,
                    task_id: id ^ 5, push_type,
                    collapse_key: collapse.as_deref(),
                }),
                Entry::Stats(&frame),
                Entry::Finished { token: &token, message_id: id, status, at_ms: at },
                Entry::DeviceDeleted { token: &token },
                Entry::FinalStatus(FinalStatusEntry {
                    key: key128, message_id: id, status, accepted_at_ms: at,
                    expires_at_ms: exp, acked_at_ms: acked, forget_at_ms: exp, recall,
                }),
            ];
            for entry in entries {
                let mut out = Vec::new();
                entry.write_to(&mut out);
                prop_assert_eq!(decode_framed(&out), entry);
            }
        }

        #[test]
        fn shared_entries_round_trip(
            id: u64, app in ".{0,10}", key in ".{0,20}", task: u64, at: u64, exp: u64,
            frame in proptest::collection::vec(any::<u8>(), 0..300),
            audience in audience(), collapse in proptest::option::of(".{0,64}"),
            push_type in push_type(),
        ) {
            let entry = Entry::Shared(SharedEntry {
                message_id: id, app: &app, audience, msg_key: &key, task_id: task,
                accepted_at_ms: at, expires_at_ms: exp, frame: &frame,
                push_type,
                collapse_key: collapse.as_deref(),
            });
            let mut out = Vec::new();
            entry.write_to(&mut out);
            prop_assert_eq!(decode_framed(&out), entry);
        }

        #[test]
        fn recall_entries_round_trip(
            id: u64, app in ".{0,10}", token in ".{0,30}", key in ".{0,20}", task: u64,
            times: [u64; 4], until in proptest::option::of(any::<u64>()), recalled: bool,
            audience in proptest::option::of(audience()), mark in mark(),
        ) {
            let target = match audience {
                Some(a) => IndexedTarget::Shared(a),
                None => IndexedTarget::Token(&token),
            };
            let entries = [
                RecallEntry::Indexed(IndexedEntry {
                    message_id: id, app: &app, task_id: task, msg_key: &key, target,
                    accepted_at_ms: times[0], expires_at_ms: times[1], recalled,
                }),
                RecallEntry::Shared { message_id: id, at_ms: times[2] },
                RecallEntry::Device(DeviceRecallEntry {
                    app: &app, token: &token, msg_key: &key, message_id: id,
                    accepted_at_ms: times[0], expires_at_ms: times[1], at_ms: times[2],
                    revoke_until_ms: until,
                }),
                RecallEntry::RevokeEnded { token: &token, message_id: id, mark, at_ms: times[3] },
            ];
            for entry in entries {
                let entry = Entry::Recall(entry);
                let mut out = Vec::new();
                entry.write_to(&mut out);
                prop_assert_eq!(decode_framed(&out), entry);
            }
        }

        #[test]
        fn token_entries_round_trip(
            app in ".{0,10}", old in ".{0,30}", new in ".{0,30}", at: u64, until: u64,
        ) {
            let entries = [
                Entry::Token(TokenEntry::Rotated {
                    app: &app, old: &old, new: &new, at_ms: at, redirect_until_ms: until,
                }),
                Entry::Token(TokenEntry::RedirectEnded { old: &old }),
            ];
            for entry in entries {
                let mut out = Vec::new();
                entry.write_to(&mut out);
                prop_assert_eq!(decode_framed(&out), entry);
            }
        }

        #[test]
        fn tag_user_sets_round_trip_in_parts(
            set_id: u64,
            mut digests in proptest::collection::vec(any::<u64>(), 0..300),
            per_record in 1usize..50,
        ) {
            digests.sort_unstable();
            let mut out = Vec::new();
            let parts = write_set_in(&mut out, set_id, &digests, per_record);
            prop_assert_eq!(parts, digests.len().div_ceil(per_record).max(1));
            let mut back = Vec::new();
            let mut at = 0;
            let mut seen = 0;
            while at < out.len() {
                let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
                let Entry::TagUsers(t) = decode_framed(&out[at..at + 8 + len]) else {
                    panic!("a TagUsers record");
                };
                prop_assert_eq!((t.set_id, t.part as usize, t.parts as usize), (set_id, seen, parts));
                back.extend(t.digests());
                seen += 1;
                at += 8 + len;
            }
            prop_assert_eq!(back, digests);
        }

        #[test]
        fn decoding_garbage_never_panics(kind in 0u8..12, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Entry::decode(kind, &payload);
        }
    }

    #[test]
    fn a_full_tag_set_fits_the_record_limit() {
        let digests: Vec<u64> = (0..250_001).collect();
        let mut out = Vec::new();
        assert_eq!(TagUsersEntry::write_set(&mut out, 9, &digests), 3);
        const { assert!(TAG_USERS_PER_RECORD * 8 + 64 <= crate::log::MAX_RECORD) };
        let payload = &out[9..9 + 8 + 4 + 4 + 4 + 7];
        assert!(
            Entry::decode(KIND_TAG_USERS, payload).is_err(),
            "not a whole digest"
        );
        let mut bad = Vec::new();
        Entry::TagUsers(TagUsersEntry {
            set_id: 1,
            part: 2,
            parts: 2,
            digests: &[],
        })
        .write_to(&mut bad);
        assert!(
            Entry::decode(KIND_TAG_USERS, &bad[9..]).is_err(),
            "part past the end"
        );
    }

    #[test]
    fn device_records_without_times_still_decode() {
        let entry = DeviceEntry {
            token: "t",
            app: "a",
            platform: 1,
            user_id: Some("u"),
            groups: vec!["g"],
            vendor: None,
            registered_at_ms: 5,
            bound_at_ms: 6,
            unbound_at_ms: 7,
        };
        let mut out = Vec::new();
        Entry::Device(entry.clone()).write_to(&mut out);
        let old_layout = &out[9..out.len() - 24];
        let Entry::Device(decoded) = Entry::decode(KIND_DEVICE, old_layout).unwrap() else {
            panic!("a device record");
        };
        assert_eq!((decoded.token, decoded.user_id), ("t", Some("u")));
        assert_eq!(
            decoded.registered_at_ms + decoded.bound_at_ms + decoded.unbound_at_ms,
            0
        );
    }

    #[test]
    fn accepted_records_without_a_collapse_key_keep_the_old_layout() {
        let accepted = |collapse_key| {
            let mut out = Vec::new();
            Entry::Accepted(AcceptedEntry {
                message_id: 7,
                app: "a",
                token: "t",
                msg_key: "k",
                accepted_at_ms: 1,
                expires_at_ms: 2,
                frame: b"frame",
                task_id: 4,
                push_type: PushType::Multiple,
                collapse_key,
            })
            .write_to(&mut out);
            out
        };
        // The layout before task fields: id, app, token, key, times, frame.
        let mut oldest = Vec::new();
        put_u64(&mut oldest, 7);
        for s in ["a", "t", "k"] {
            put_str(&mut oldest, s);
        }
        put_u64(&mut oldest, 1);
        put_u64(&mut oldest, 2);
        put_bytes(&mut oldest, b"frame");
        // The layout before collapse keys: then task id and push type.
        let mut old = oldest.clone();
        put_u64(&mut old, 4);
        old.push(PushType::Multiple.code());
        assert_eq!(&accepted(None)[9..], &old[..], "written as before");
        let Entry::Accepted(decoded) = Entry::decode(KIND_ACCEPTED, &oldest).unwrap() else {
            panic!("an accepted record");
        };
        assert_eq!(
            (
                decoded.msg_key,
                decoded.task_id,
                decoded.push_type,
                decoded.collapse_key
            ),
            ("k", 0, PushType::Simple, None)
        );
        let Entry::Accepted(decoded) = Entry::decode(KIND_ACCEPTED, &old).unwrap() else {
            panic!("an accepted record");
        };
        assert_eq!(
            (decoded.task_id, decoded.push_type, decoded.collapse_key),
            (4, PushType::Multiple, None)
        );
        // The key goes last, after the task fields.
        let with_key = accepted(Some("score"));
        let mut expected = old.clone();
        put_str(&mut expected, "score");
        assert_eq!(&with_key[9..], &expected[..]);
        let Entry::Accepted(decoded) = Entry::decode(KIND_ACCEPTED, &with_key[9..]).unwrap() else {
            panic!("an accepted record");
        };
        assert_eq!(
            (decoded.task_id, decoded.push_type, decoded.collapse_key),
            (4, PushType::Multiple, Some("score"))
        );
    }

    #[test]
    fn shared_records_of_every_older_layout_still_decode() {
        let shared = |collapse_key| {
            let mut out = Vec::new();
            Entry::Shared(SharedEntry {
                message_id: 7,
                app: "a",
                audience: AudienceEntry::Audience(Audience::User("u".into())),
                msg_key: "k",
                task_id: 3,
                accepted_at_ms: 1,
                expires_at_ms: 2,
                frame: b"frame",
                push_type: PushType::User,
                collapse_key,
            })
            .write_to(&mut out);
            out[9..].to_vec()
        };
        let with_key = shared(Some("score"));
        let without = shared(None);
        // Layouts: ..frame (oldest), ..frame push_type, ..frame push_type key.
        let mut key = Vec::new();
        put_str(&mut key, "score");
        assert_eq!(with_key.len(), without.len() + key.len());
        assert_eq!(&with_key[..without.len()], &without[..]);
        assert_eq!(&with_key[without.len()..], &key[..], "the key goes last");
        let oldest = &without[..without.len() - 1];
        for (payload, push_type, collapse_key) in [
            (oldest, PushType::Broadcast, None),
            (&without[..], PushType::User, None),
            (&with_key[..], PushType::User, Some("score")),
        ] {
            let Entry::Shared(decoded) = Entry::decode(KIND_SHARED, payload).unwrap() else {
                panic!("a shared record");
            };
            assert_eq!(
                (
                    decoded.task_id,
                    decoded.push_type,
                    decoded.collapse_key,
                    decoded.frame
                ),
                (3, push_type, collapse_key, &b"frame"[..])
            );
        }
    }

    #[test]
    fn message_records_without_task_fields_still_decode() {
        let entry = AcceptedEntry {
            message_id: 1,
            app: "a",
            token: "t",
            msg_key: "k",
            accepted_at_ms: 2,
            expires_at_ms: 3,
            frame: b"f",
            task_id: 9,
            push_type: PushType::Multiple,
            collapse_key: None,
        };
        let mut out = Vec::new();
        Entry::Accepted(entry.clone()).write_to(&mut out);
        let old_layout = &out[9..out.len() - 9];
        let Entry::Accepted(decoded) = Entry::decode(KIND_ACCEPTED, old_layout).unwrap() else {
            panic!("an accepted record");
        };
        assert_eq!((decoded.task_id, decoded.push_type), (0, PushType::Simple));
        assert_eq!(decoded.frame, b"f");
    }

    #[test]
    fn truncated_and_padded_records_are_errors() {
        let mut out = Vec::new();
        Entry::Finished {
            token: "t",
            message_id: 7,
            status: Status::Acked,
            at_ms: 9,
        }
        .write_to(&mut out);
        let payload = &out[9..];
        assert!(Entry::decode(KIND_FINISHED, &payload[..payload.len() - 1]).is_err());
        let mut padded = payload.to_vec();
        padded.push(0);
        assert!(Entry::decode(KIND_FINISHED, &padded).is_err());
        assert!(Entry::decode(99, payload).is_err());
    }

    #[test]
    fn final_statuses_without_a_recall_mark_still_decode() {
        let entry = FinalStatusEntry {
            key: 9,
            message_id: 7,
            status: Status::Acked,
            accepted_at_ms: 1,
            expires_at_ms: 2,
            acked_at_ms: Some(3),
            forget_at_ms: 4,
            recall: RecallMark::RevokePending,
        };
        let mut out = Vec::new();
        Entry::FinalStatus(entry.clone()).write_to(&mut out);
        let Entry::FinalStatus(decoded) = Entry::decode(KIND_FINAL_STATUS, &out[9..]).unwrap() else {
            panic!("a final status");
        };
        assert_eq!(decoded, entry);
        let before_recall = &out[9..out.len() - 1];
        let Entry::FinalStatus(old) = Entry::decode(KIND_FINAL_STATUS, before_recall).unwrap() else {
            panic!("a final status");
        };
        assert_eq!(old.recall, RecallMark::None);
        assert_eq!(old.forget_at_ms, 4);
    }
}
