//! The shared messages of one shard: broadcasts, group pushes and pushes to
//! users, each stored once however many devices it is for, and the rules
//! that decide whether a device is in a message's audience. The core
//! delivers a shared message to the online devices of its audience when it
//! arrives and to every other member when it connects (from its cursor
//! onwards) or binds the user, so a broadcast costs the same memory whether
//! a hundred or a million of its devices are offline.
//!
//! Broadcasts and group pushes are few and matched against every connecting
//! device, so they sit in one list in arrival order; pushes to users are
//! many and concern one user each, so they are filed by user. Tag pushes
//! are few too, but a device that binds a user must find every one whose
//! tag holds that user, so they have a list of their own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::StatusKey;
pub(super) use crate::message::user_digest;
use crate::message::{Audience, BindFilter, SharedMessage};

/// A stored shared message and its place in arrival order.
pub(super) struct Stored {
    /// Arrival order on this shard; device cursors point into it.
    pub seq: u64,
    pub message: Arc<SharedMessage>,
}

/// What the store refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The same app + msgKey + target is stored already.
    Duplicate,
    /// `delivery.max_shared_messages_per_shard` are stored.
    Full,
}

pub(super) struct FanoutStore {
    next_seq: u64,
    /// Platform and group messages, in arrival order.
    broadcasts: VecDeque<Stored>,
    /// Tag messages, in arrival order.
    tags: VecDeque<Stored>,
    /// User messages by `user_digest`, each list in arrival order.
    by_user: HashMap<u64, Vec<Stored>>,
    /// Every stored message by the digest of (app, msgKey, target).
    keys: HashMap<StatusKey, u64>,
    /// Every stored message by id.
    by_id: HashMap<u64, Arc<SharedMessage>>,
    limit: usize,
}

impl FanoutStore {
    pub fn new(limit: usize) -> Self {
        Self {
            next_seq: 1,
            broadcasts: VecDeque::new(),
            tags: VecDeque::new(),
            by_user: HashMap::new(),
            keys: HashMap::new(),
            by_id: HashMap::new(),
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The cursor of a device that has seen everything stored so far.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Stores `message`; answers its sequence number.
    pub fn insert(&mut self, message: Arc<SharedMessage>) -> Result<u64, Refused> {
        let key = shared_key(&message);
        if self.keys.contains_key(&key) {
            return Err(Refused::Duplicate);
        }
        if self.by_id.len() >= self.limit {
            return Err(Refused::Full);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.keys.insert(key, message.id);
        self.by_id.insert(message.id, message.clone());
        let stored = Stored { seq, message };
        match &stored.message.audience {
            Audience::User(user) => self
                .by_user
                .entry(user_digest(&stored.message.app_id, user))
                .or_default()
                .push(stored),
            Audience::Tag { .. } => self.tags.push_back(stored),
            Audience::Group(_) | Audience::Platform { .. } => self.broadcasts.push_back(stored),
        }
        Ok(seq)
    }

    pub fn get(&self, id: u64) -> Option<&Arc<SharedMessage>> {
        self.by_id.get(&id)
    }

    /// The stored message with this app, msgKey and audience, if any.
    pub fn find(&self, app: &str, msg_key: &str, audience: &Audience) -> Option<&Arc<SharedMessage>> {
        let key = StatusKey::new(app, msg_key, &target_name(audience));
        self.keys.get(&key).and_then(|id| self.by_id.get(id))
    }

    /// Takes back a message whose commit failed (no device has seen it).
    pub fn remove(&mut self, id: u64) {
        let Some(message) = self.by_id.remove(&id) else {
            return;
        };
        self.keys.remove(&shared_key(&message));
        match &message.audience {
            Audience::User(user) => {
                let digest = user_digest(&message.app_id, user);
                if let Some(list) = self.by_user.get_mut(&digest) {
                    list.retain(|s| s.message.id != id);
                    if list.is_empty() {
                        self.by_user.remove(&digest);
                    }
                }
            }
            Audience::Tag { .. } => self.tags.retain(|s| s.message.id != id),
            Audience::Group(_) | Audience::Platform { .. } => self.broadcasts.retain(|s| s.message.id != id),
        }
    }

    /// Broadcasts and group messages that arrived at or after `cursor`.
    pub fn broadcasts_since(&self, cursor: u64) -> impl Iterator<Item = &Stored> {
        let start = self.broadcasts.partition_point(|s| s.seq < cursor);
        self.broadcasts.range(start..)
    }

    /// Tag messages that arrived at or after `cursor` (0: all of them).
    pub fn tags_since(&self, cursor: u64) -> impl Iterator<Item = &Stored> {
        let start = self.tags.partition_point(|s| s.seq < cursor);
        self.tags.range(start..)
    }

    /// The messages stored for a user (maybe also for another user whose
    /// digest collides: check the audience), oldest first.
    pub fn for_user(&self, app: &str, user: &str) -> &[Stored] {
        self.by_user
            .get(&user_digest(app, user))
            .map_or(&[], Vec::as_slice)
    }

    /// Every stored message, broadcasts first, then tag messages, each list
    /// in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.broadcasts
            .iter()
            .chain(self.tags.iter())
            .chain(self.by_user.values().flat_map(|list| list.iter()))
    }

    /// Forgets messages whose TTL ended before `now_ms`; answers how many.
    /// Devices that still hold one in their queue keep it alive until it
    /// expires there.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let before = self.by_id.len();
        let live = |s: &Stored| s.message.expires_at_ms > now_ms;
        let Self {
            broadcasts,
            tags,
            by_user,
            keys,
            by_id,
            ..
        } = self;
        let mut forget = |s: &Stored| {
            keys.remove(&shared_key(&s.message));
            by_id.remove(&s.message.id);
        };
        for list in [broadcasts, tags] {
            list.retain(|s| {
                let keep = live(s);
                if !keep {
                    forget(s);
                }
                keep
            });
        }
        by_user.retain(|_, list| {
            list.retain(|s| {
                let keep = live(s);
                if !keep {
                    forget(s);
                }
                keep
            });
            !list.is_empty()
        });
        if by_user.capacity() > 4 * by_user.len().max(64) {
            by_user.shrink_to_fit();
        }
        before - self.by_id.len()
    }
}

/// What a device is, as far as audiences are concerned.
pub(super) struct Member<'a> {
    pub app: &'a str,
    pub platform: u8,
    pub user_id: Option<&'a str>,
    pub groups: &'a [Box<str>],
    pub registered_at_ms: u64,
    pub bound_at_ms: u64,
    pub unbound_at_ms: u64,
}

/// Whether `member` is in the audience of `message`. Broadcast and group
/// audiences are the devices that existed when the message was accepted;
/// a user's or a tag's audience is whoever is bound to the user (one of
/// the tag's users) now.
pub(super) fn is_member(message: &SharedMessage, member: &Member<'_>) -> bool {
    if *message.app_id != *member.app {
        return false;
    }
    let existed = member.registered_at_ms <= message.accepted_at_ms;
    match &message.audience {
        Audience::User(user) => member.user_id == Some(&**user),
        Audience::Tag { users, .. } => member
            .user_id
            .is_some_and(|user| users.contains(user_digest(member.app, user))),
        Audience::Group(group) => existed && (&**group == "all" || member.groups.iter().any(|g| g == group)),
        Audience::Platform { platform, filter } => {
            existed && *platform == member.platform && passes(*filter, member, message.accepted_at_ms)
        }
    }
}

fn passes(filter: BindFilter, member: &Member<'_>, at_ms: u64) -> bool {
    let within =
        |since_ms: u64, period: Option<u64>| period.is_none_or(|p| at_ms.saturating_sub(since_ms) <= p);
    // A device that never had a user has been unbound since it registered.
    let unbound_since = if member.unbound_at_ms != 0 {
        member.unbound_at_ms
    } else {
        member.registered_at_ms
    };
    match (filter, member.user_id.is_some()) {
        (BindFilter::Bound { within_ms }, true) => within(member.bound_at_ms, within_ms),
        (BindFilter::Bound { .. }, false) => false,
        (BindFilter::Any { .. }, true) => true,
        (BindFilter::Any { unbound_within_ms }, false) => within(unbound_since, unbound_within_ms),
        (BindFilter::Unbound { .. }, true) => false,
        (BindFilter::Unbound { within_ms }, false) => within(unbound_since, within_ms),
    }
}

/// A shared message's target as a name that no device token can have (they
/// are base64url), so its key never meets a token's.
pub(super) fn target_name(audience: &Audience) -> String {
    match audience {
        Audience::User(user) => format!("\u{0}user\u{0}{user}"),
        Audience::Group(group) => format!("\u{0}group\u{0}{group}"),
        Audience::Platform { platform, .. } => format!("\u{0}platform\u{0}{platform}"),
        Audience::Tag { name, .. } => format!("\u{0}tag\u{0}{name}"),
    }
}

fn shared_key(message: &SharedMessage) -> StatusKey {
    StatusKey::new(&message.app_id, &message.msg_key, &target_name(&message.audience))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const DAY: u64 = 86_400_000;

    fn message(id: u64, audience: Audience, accepted_at_ms: u64) -> Arc<SharedMessage> {
        Arc::new(SharedMessage {
            id,
            app_id: Arc::from("app"),
            audience,
            msg_key: format!("k{id}").into(),
            task_id: 0,
            accepted_at_ms,
            expires_at_ms: accepted_at_ms + 1000,
            frame: Bytes::from_static(b"frame"),
            push_type: crate::stats::PushType::Broadcast,
            task_name: Arc::from(""),
            collapse_key: None,
        })
    }

    fn member<'a>(user: Option<&'a str>, groups: &'a [Box<str>]) -> Member<'a> {
        Member {
            app: "app",
            platform: 1,
            user_id: user,
            groups,
            registered_at_ms: 10 * DAY,
            bound_at_ms: if user.is_some() { 20 * DAY } else { 0 },
            unbound_at_ms: 0,
        }
    }

    fn broadcast(filter: BindFilter) -> Audience {
        Audience::Platform { platform: 1, filter }
    }

    #[test]
    fn broadcast_filters_follow_the_binding_and_its_age() {
        let bound = member(Some("u"), &[]);
        let unbound = member(None, &[]);
        let now = 30 * DAY;
        let m = |f| message(1, broadcast(f), now);
        let week = Some(7 * DAY);
        // Bound ten days ago: not "within 7 days", but within 15 and forever.
        assert!(!is_member(&m(BindFilter::Bound { within_ms: week }), &bound));
        assert!(is_member(
            &m(BindFilter::Bound {
                within_ms: Some(15 * DAY)
            }),
            &bound
        ));
        assert!(is_member(&m(BindFilter::Bound { within_ms: None }), &bound));
        assert!(!is_member(&m(BindFilter::Bound { within_ms: None }), &unbound));
        // Never bound: unbound since it registered twenty days ago.
        assert!(!is_member(&m(BindFilter::Unbound { within_ms: week }), &unbound));
        assert!(is_member(&m(BindFilter::Unbound { within_ms: None }), &unbound));
        assert!(!is_member(&m(BindFilter::Unbound { within_ms: None }), &bound));
        assert!(is_member(
            &m(BindFilter::Any {
                unbound_within_ms: week
            }),
            &bound
        ));
        let recently_unbound = Member {
            unbound_at_ms: 28 * DAY,
            ..member(None, &[])
        };
        assert!(is_member(
            &m(BindFilter::Any {
                unbound_within_ms: week
            }),
            &recently_unbound
        ));
        assert!(!is_member(
            &m(BindFilter::Any {
                unbound_within_ms: week
            }),
            &unbound
        ));
        // Another platform, another app, or a device that came later: never.
        let ios = Audience::Platform {
            platform: 2,
            filter: BindFilter::Any {
                unbound_within_ms: None,
            },
        };
        assert!(!is_member(&message(1, ios, now), &bound));
        let later = message(
            1,
            broadcast(BindFilter::Any {
                unbound_within_ms: None,
            }),
            5 * DAY,
        );
        assert!(!is_member(&later, &bound));
        let other_app = Member {
            app: "other",
            ..member(Some("u"), &[])
        };
        assert!(!is_member(
            &m(BindFilter::Any {
                unbound_within_ms: None
            }),
            &other_app
        ));
    }

    #[test]
    fn groups_and_users() {
        let groups: Vec<Box<str>> = vec!["news".into()];
        let d = member(Some("alice"), &groups);
        let now = 30 * DAY;
        assert!(is_member(&message(1, Audience::Group("news".into()), now), &d));
        assert!(is_member(&message(1, Audience::Group("all".into()), now), &d));
        assert!(!is_member(&message(1, Audience::Group("sport".into()), now), &d));
        assert!(is_member(&message(1, Audience::User("alice".into()), now), &d));
        assert!(!is_member(&message(1, Audience::User("bob".into()), now), &d));
        // A user's messages reach devices bound later, whenever they came.
        assert!(is_member(&message(1, Audience::User("alice".into()), DAY), &d));
    }

    #[test]
    fn store_orders_dedupes_bounds_and_sweeps() {
        let mut store = FanoutStore::new(3);
        let b1 = store.insert(message(1, Audience::Group("g".into()), 0)).unwrap();
        let u1 = store
            .insert(message(2, Audience::User("alice".into()), 0))
            .unwrap();
        assert!(u1 > b1);
        assert_eq!(
            store.insert(message(1, Audience::Group("g".into()), 0)),
            Err(Refused::Duplicate)
        );
        let b2 = store
            .insert(message(3, Audience::Group("g".into()), 500))
            .unwrap();
        assert_eq!(
            store.insert(message(4, Audience::Group("g".into()), 0)),
            Err(Refused::Full)
        );
        let since: Vec<u64> = store.broadcasts_since(b1 + 1).map(|s| s.seq).collect();
        assert_eq!(since, [b2]);
        assert_eq!(store.for_user("app", "alice").len(), 1);
        assert!(store.find("app", "k2", &Audience::User("alice".into())).is_some());
        assert!(store.find("app", "k2", &Audience::User("bob".into())).is_none());
        // Messages 1 and 2 expire at 1000, message 3 at 1500.
        assert_eq!(store.sweep(1000), 2);
        assert_eq!(store.len(), 1);
        assert!(store.for_user("app", "alice").is_empty());
        store.remove(3);
        assert_eq!(store.len(), 0);
        assert_eq!(store.iter().count(), 0);
        // A swept key can be used again.
        assert!(store
            .insert(message(1, Audience::Group("g".into()), 2000))
            .is_ok());
    }
}
