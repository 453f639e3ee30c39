//! Recall: taking back messages a shard accepted. A copy still queued and
//! never written to a connection is withdrawn (never delivered); a copy the
//! device may have (written, acked, or queued before a restart, when nobody
//! knows) is taken out of the queue and answered with a Revoke frame, sent
//! now or on the device's next connection, again on every connection until
//! the device confirms it with RevokeAck or the message's TTL, counted from
//! the recall, runs out. A shared message (user, group, tag, broadcast) also
//! leaves the fanout store, so devices that have not caught up never get it.
//!
//! The `RecallIndex` remembers, for the recall window, the messages that are
//! recalled by something other than their msgKey and token: every message of
//! a task (multiple, broadcast, group and tag pushes) and every shared message.
//! Simple and template pushes to tokens need no entry: their status record
//! already names them. What is owed to a device lives with the device
//! (`DeliveryCore::revokes`); its journal records (kind 7) are in `journal`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::fanout::target_name;
use super::{DeliveryCore, DeviceId, StatusKey, StatusRecord, Timer};
use crate::journal::{AudienceEntry, DeviceRecallEntry, Entry, IndexedEntry, IndexedTarget, RecallEntry};
use crate::message::{
    Audience, RecallAnswer, RecallMark, RecallOutcome, RecallResult, RecallTarget, RecalledFor, Status,
};
use crate::protocol::{body, Frame};

/// A Revoke a device owes us a RevokeAck for.
pub(super) struct OwedRevoke {
    pub message_id: u64,
    pub msg_key: Box<str>,
    /// Unix ms after which it is no longer sent.
    pub until_ms: u64,
    /// When it was written to the current connection; `None`: not yet.
    pub sent_at: Option<Instant>,
}

/// Who an indexed message is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Token(Box<str>),
    /// A platform, group or user audience.
    Shared(Audience),
    /// A tag push: the tag's name and its user set's id and size, not the
    /// users, which the index would keep alive long after the message (the
    /// stored message holds them while it may be delivered).
    Tag {
        name: Box<str>,
        set_id: u64,
        users: u64,
    },
}

impl Target {
    /// A shared message's audience as the index keeps it.
    pub fn shared(audience: &Audience) -> Self {
        Self::from_entry(AudienceEntry::of(audience))
    }

    fn from_entry(audience: AudienceEntry<'_>) -> Self {
        match audience {
            AudienceEntry::Tag { name, set_id, users } => Target::Tag {
                name: name.into(),
                set_id,
                users,
            },
            AudienceEntry::Audience(Audience::Tag { name, users }) => Target::Tag {
                set_id: users.id(),
                users: users.len() as u64,
                name,
            },
            AudienceEntry::Audience(audience) => Target::Shared(audience),
        }
    }

    /// What a recall's answer names.
    fn recalled_for(&self) -> RecalledFor {
        match self {
            Target::Token(token) => RecalledFor::Token(token.clone()),
            Target::Shared(audience) => RecalledFor::Shared(audience.clone()),
            Target::Tag { name, .. } => RecalledFor::Tag(name.clone()),
        }
    }
}

/// A message remembered for recall by task id or userId: no frame, about
/// 150 bytes.
pub(super) struct Indexed {
    pub app: Arc<str>,
    pub task_id: u64,
    pub msg_key: Box<str>,
    pub target: Target,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    /// A shared message that was recalled (a token's copy keeps this in its
    /// status record instead).
    pub recalled: bool,
}

pub(super) struct RecallIndex {
    entries: HashMap<u64, Indexed>,
    by_task: HashMap<(Arc<str>, u64), Vec<u64>>,
    /// Shared messages to users by (app, msgKey, user).
    by_user: HashMap<StatusKey, u64>,
    /// (forget at, id), sorted: entries go once the recall window and the
    /// status retention of their messages are over.
    order: VecDeque<(u64, u64)>,
    keep_ms: u64,
    limit: usize,
}

impl RecallIndex {
    pub fn new(keep_ms: u64, limit: usize) -> Self {
        Self {
            entries: HashMap::new(),
            by_task: HashMap::new(),
            by_user: HashMap::new(),
            order: VecDeque::new(),
            keep_ms,
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Remembers message `id`; answers how many older entries the limit
    /// pushed out. An entry already there only takes the `recalled` flag.
    pub fn insert(&mut self, id: u64, entry: Indexed) -> usize {
        if let Some(known) = self.entries.get_mut(&id) {
            known.recalled |= entry.recalled;
            return 0;
        }
        if entry.task_id != 0 {
            self.by_task
                .entry((entry.app.clone(), entry.task_id))
                .or_default()
                .push(id);
        }
        if let Target::Shared(audience @ Audience::User(_)) = &entry.target {
            self.by_user.insert(
                StatusKey::new(&entry.app, &entry.msg_key, &target_name(audience)),
                id,
            );
        }
        let forget_at = entry.accepted_at_ms.saturating_add(self.keep_ms);
        // Acceptance order is almost time order: the rare late one is
        // inserted in place.
        let at = if self.order.back().is_none_or(|&(t, _)| t <= forget_at) {
            self.order.len()
        } else {
            self.order.partition_point(|&(t, _)| t <= forget_at)
        };
        self.order.insert(at, (forget_at, id));
        self.entries.insert(id, entry);
        let mut evicted = 0;
        while self.entries.len() > self.limit {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            evicted += usize::from(self.forget(oldest));
        }
        evicted
    }

    pub fn get(&self, id: u64) -> Option<&Indexed> {
        self.entries.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Indexed> {
        self.entries.get_mut(&id)
    }

    /// The messages of a task, oldest first.
    pub fn task(&self, app: &Arc<str>, task_id: u64) -> &[u64] {
        self.by_task
            .get(&(app.clone(), task_id))
            .map_or(&[], Vec::as_slice)
    }

    /// The latest shared message with this msgKey for this user.
    pub fn user_message(&self, app: &str, msg_key: &str, user: &str) -> Option<u64> {
        let name = target_name(&Audience::User(user.into()));
        self.by_user.get(&StatusKey::new(app, msg_key, &name)).copied()
    }

    /// Forgets a message whose commit failed.
    pub fn remove(&mut self, id: u64) {
        if self.forget(id) {
            self.order.retain(|&(_, x)| x != id);
        }
    }

    fn forget(&mut self, id: u64) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        let task = (entry.app.clone(), entry.task_id);
        if let Some(ids) = self.by_task.get_mut(&task) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_task.remove(&task);
            }
        }
        if let Target::Shared(audience @ Audience::User(_)) = &entry.target {
            let key = StatusKey::new(&entry.app, &entry.msg_key, &target_name(audience));
            if self.by_user.get(&key) == Some(&id) {
                self.by_user.remove(&key);
            }
        }
        true
    }

    /// Forgets entries whose time is over; answers how many.
    pub fn gc(&mut self, now_ms: u64) -> usize {
        let mut gone = 0;
        while let Some(&(at, id)) = self.order.front() {
            if at > now_ms {
                break;
            }
            self.order.pop_front();
            gone += usize::from(self.forget(id));
        }
        gone
    }

    /// Every entry, in the order they are forgotten.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Indexed)> {
        self.order
            .iter()
            .filter_map(|&(_, id)| self.entries.get(&id).map(|e| (id, e)))
    }
}

/// Restates an index entry for a checkpoint.
pub(super) fn indexed_entry(id: u64, e: &Indexed) -> Entry<'_> {
    Entry::Recall(RecallEntry::Indexed(IndexedEntry {
        message_id: id,
        app: &e.app,
        task_id: e.task_id,
        msg_key: &e.msg_key,
        target: match &e.target {
            Target::Token(token) => IndexedTarget::Token(token),
            Target::Shared(audience) => IndexedTarget::Shared(AudienceEntry::Audience(audience.clone())),
            Target::Tag { name, set_id, users } => IndexedTarget::Shared(AudienceEntry::Tag {
                name,
                set_id: *set_id,
                users: *users,
            }),
        },
        accepted_at_ms: e.accepted_at_ms,
        expires_at_ms: e.expires_at_ms,
        recalled: e.recalled,
    }))
}

/// A message a recall names, found before anything changes.
enum Found {
    Copy {
        device: DeviceId,
        key: StatusKey,
        message_id: u64,
        msg_key: Box<str>,
    },
    Shared(u64),
}

/// What recalling one device's copy did.
enum CopyRecall {
    Withdrawn,
    /// A Revoke is owed; written now when `true`.
    Revoke(bool),
    Not(RecallResult),
}

impl DeliveryCore {
    /// Runs `Command::Recall`: finds what `target` names, refuses the whole
    /// recall when one of them is older than `not_before_ms`, else recalls
    /// each. Nothing found: an empty answer.
    pub(super) fn recall(
        &mut self,
        app: &Arc<str>,
        target: RecallTarget,
        not_before_ms: u64,
        now: Instant,
    ) -> RecallAnswer {
        let found = self.find_recalled(app, &target);
        let oldest = found
            .iter()
            .filter_map(|f| match f {
                Found::Copy { key, .. } => self.statuses.get(key).map(|r| r.accepted_at_ms),
                Found::Shared(id) => self.recall_index.get(*id).map(|e| e.accepted_at_ms),
            })
            .min();
        if let Some(accepted_at_ms) = oldest.filter(|&at| at < not_before_ms) {
            return RecallAnswer::TooOld { accepted_at_ms };
        }
        let mut outcomes = Vec::with_capacity(found.len());
        for f in found {
            let outcome = match f {
                Found::Copy {
                    device,
                    key,
                    message_id,
                    msg_key,
                } => {
                    let token = self.devices[device].token.clone();
                    let mut outcome = RecallOutcome {
                        message_id,
                        msg_key: msg_key.clone(),
                        target: RecalledFor::Token(token),
                        result: RecallResult::Recalled,
                        withdrawn: 0,
                        revoke_sent: 0,
                        revoke_queued: 0,
                    };
                    match self.recall_copy(device, key, message_id, &msg_key, now) {
                        CopyRecall::Withdrawn => outcome.withdrawn = 1,
                        CopyRecall::Revoke(true) => outcome.revoke_sent = 1,
                        CopyRecall::Revoke(false) => outcome.revoke_queued = 1,
                        CopyRecall::Not(result) => outcome.result = result,
                    }
                    outcome
                }
                Found::Shared(id) => self.recall_shared(id, now),
            };
            outcomes.push(outcome);
        }
        self.metrics.pending.set(self.pending_total as f64);
        self.metrics.revokes_pending.set(self.revokes_owed as f64);
        RecallAnswer::Done(outcomes)
    }

    fn find_recalled(&self, app: &Arc<str>, target: &RecallTarget) -> Vec<Found> {
        let copy = |msg_key: &str, token: &str| -> Option<Found> {
            let device = *self.by_token.get(token)?;
            if *self.devices[device].app != **app {
                return None;
            }
            let key = StatusKey::new(app, msg_key, token);
            let record = self.statuses.get(&key)?;
            Some(Found::Copy {
                device,
                key,
                message_id: record.message_id,
                msg_key: msg_key.into(),
            })
        };
        match target {
            RecallTarget::Token { msg_key, token } => copy(msg_key, token).into_iter().collect(),
            RecallTarget::User { msg_key, user_id } => self
                .recall_index
                .user_message(app, msg_key, user_id)
                .map(Found::Shared)
                .into_iter()
                .collect(),
            RecallTarget::Task(task_id) => self
                .recall_index
                .task(app, *task_id)
                .iter()
                .filter_map(|&id| {
                    let entry = self.recall_index.get(id)?;
                    match &entry.target {
                        Target::Shared(_) | Target::Tag { .. } => Some(Found::Shared(id)),
                        // The msgKey may have been used again since: only
                        // this message's copy is recalled.
                        Target::Token(token) => copy(&entry.msg_key, token)
                            .filter(|f| matches!(f, Found::Copy { message_id, .. } if *message_id == id)),
                    }
                })
                .collect(),
        }
    }

    /// Recalls one device's copy of message `message_id` (status `key`).
    fn recall_copy(
        &mut self,
        device: DeviceId,
        key: StatusKey,
        message_id: u64,
        msg_key: &str,
        now: Instant,
    ) -> CopyRecall {
        let Some(record) = self.statuses.get(&key).filter(|r| r.message_id == message_id) else {
            return CopyRecall::Not(RecallResult::AlreadyRecalled);
        };
        if record.recall != RecallMark::None || record.status == Status::Recalled {
            return CopyRecall::Not(RecallResult::AlreadyRecalled);
        }
        let (accepted_at_ms, expires_at_ms) = (record.accepted_at_ms, record.expires_at_ms);
        let written = match record.status {
            Status::Expired | Status::NoBindInfo => return CopyRecall::Not(RecallResult::Expired),
            // Collapsed: replaced before it was sent, so never delivered.
            Status::Dropped | Status::Collapsed => return CopyRecall::Not(RecallResult::Dropped),
            Status::Recalled => return CopyRecall::Not(RecallResult::AlreadyRecalled),
            Status::Acked => true,
            Status::Pending => {
                let d = &mut self.devices[device];
                match d.queue.iter().position(|p| p.id == message_id) {
                    Some(pos) => {
                        let p = d.queue.remove(pos).expect("position is in range");
                        let in_flight = pos < d.in_flight;
                        if in_flight {
                            d.in_flight -= 1;
                        }
                        self.pending_total -= 1;
                        // Queued before a restart: a connection of the last
                        // run may have been written it; nobody knows.
                        in_flight || p.sent_before || message_id <= self.ids_before_start
                    }
                    None => true,
                }
            }
        };
        let now_ms = self.clock.unix_ms(now);
        // The Revoke may wait for the device as long as the message could.
        let until_ms = written.then(|| now_ms + expires_at_ms.saturating_sub(accepted_at_ms));
        let d = &self.devices[device];
        tracing::debug!(
            shard = self.shard_id,
            msg_id = message_id,
            msg_key,
            app = %d.app,
            token = %d.token,
            revoke = written,
            "recalling a message"
        );
        self.journal
            .write(&Entry::Recall(RecallEntry::Device(DeviceRecallEntry {
                app: &d.app,
                token: &d.token,
                msg_key,
                message_id,
                accepted_at_ms,
                expires_at_ms,
                at_ms: now_ms,
                revoke_until_ms: until_ms,
            })));
        self.mark_recalled(key, until_ms.is_some(), now);
        self.fill_window(device, now);
        match until_ms {
            None => {
                self.metrics.recalls_withdrawn.increment(1);
                CopyRecall::Withdrawn
            }
            Some(until_ms) => {
                self.metrics.recalls_revoked.increment(1);
                CopyRecall::Revoke(self.owe_revoke(device, message_id, msg_key.into(), until_ms, now))
            }
        }
    }

    /// A copy's status after its recall: unacked ones become final
    /// `Recalled`; the mark says what went after it.
    fn mark_recalled(&mut self, key: StatusKey, revoke: bool, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let retention = self.limits.status_retention;
        let Some(record) = self.statuses.get_mut(&key) else {
            return;
        };
        record.recall = if revoke {
            RecallMark::RevokePending
        } else {
            RecallMark::Withdrawn
        };
        if record.status == Status::Pending {
            record.status = Status::Recalled;
            record.forget_at_ms = now_ms + retention.as_millis() as u64;
            self.status_gc.push_back((now + retention, key));
        }
    }

    /// Recalls a shared message on this shard: out of the fanout store, then
    /// every copy a device of its app was given.
    fn recall_shared(&mut self, id: u64, now: Instant) -> RecallOutcome {
        let entry = self.recall_index.get_mut(id).expect("found in the index");
        let already = std::mem::replace(&mut entry.recalled, true);
        let app = entry.app.clone();
        let msg_key = entry.msg_key.clone();
        debug_assert!(!matches!(entry.target, Target::Token(_)), "a shared message");
        let mut outcome = RecallOutcome {
            message_id: id,
            msg_key: msg_key.clone(),
            target: entry.target.recalled_for(),
            result: RecallResult::Recalled,
            withdrawn: 0,
            revoke_sent: 0,
            revoke_queued: 0,
        };
        if already {
            outcome.result = RecallResult::AlreadyRecalled;
            return outcome;
        }
        self.fanout.remove(id);
        self.metrics.shared_stored.set(self.fanout.len() as f64);
        let at_ms = self.clock.unix_ms(now);
        self.journal.write(&Entry::Recall(RecallEntry::Shared {
            message_id: id,
            at_ms,
        }));
        // Any device of the app may hold a copy (users unbind, devices
        // leave groups, a Hello may change the platform), so every one is
        // asked: one digest per device, paid only by a recall of a shared
        // message.
        let mut holders = std::mem::take(&mut self.scratch_devices);
        holders.extend(
            self.devices
                .iter()
                .filter(|(_, d)| *d.app == *app)
                .filter(|(_, d)| {
                    let key = StatusKey::new(&app, &msg_key, &d.token);
                    self.statuses.get(&key).is_some_and(|r| r.message_id == id)
                })
                .map(|(device, _)| device),
        );
        for &device in &holders {
            let key = StatusKey::new(&app, &msg_key, &self.devices[device].token);
            match self.recall_copy(device, key, id, &msg_key, now) {
                CopyRecall::Withdrawn => outcome.withdrawn += 1,
                CopyRecall::Revoke(true) => outcome.revoke_sent += 1,
                CopyRecall::Revoke(false) => outcome.revoke_queued += 1,
                CopyRecall::Not(_) => {}
            }
        }
        holders.clear();
        self.scratch_devices = holders;
        outcome
    }

    /// Owes `device` a Revoke of `message_id` until `until_ms` (dropping its
    /// oldest past `delivery.max_revokes_per_device`); writes it now when the
    /// device is connected. Answers whether it was written.
    pub(super) fn owe_revoke(
        &mut self,
        device: DeviceId,
        message_id: u64,
        msg_key: Box<str>,
        until_ms: u64,
        now: Instant,
    ) -> bool {
        let online = self.devices[device].conn.is_some();
        let owed = self.revokes.entry(device).or_default();
        if owed.iter().any(|r| r.message_id == message_id) {
            return online;
        }
        if owed.len() >= self.limits.max_revokes {
            let oldest = owed.remove(0);
            self.end_revoke(device, oldest, RecallMark::RevokeDropped, now);
            self.metrics.revokes_overflow.increment(1);
        }
        self.revokes.entry(device).or_default().push(OwedRevoke {
            message_id,
            msg_key,
            until_ms,
            sent_at: None,
        });
        self.revokes_owed += 1;
        self.timers.insert(
            self.clock.instant_of(until_ms),
            Timer::RevokeExpiry { device, message_id },
        );
        if online {
            self.send_revokes(device, now);
        }
        online
    }

    /// A Revoke is no longer owed: logs why and marks its status.
    fn end_revoke(&mut self, device: DeviceId, revoke: OwedRevoke, mark: RecallMark, now: Instant) {
        self.revokes_owed -= 1;
        let d = &self.devices[device];
        let at_ms = self.clock.unix_ms(now);
        self.journal.write(&Entry::Recall(RecallEntry::RevokeEnded {
            token: &d.token,
            message_id: revoke.message_id,
            mark,
            at_ms,
        }));
        let key = StatusKey::new(&d.app, &revoke.msg_key, &d.token);
        if let Some(record) = self
            .statuses
            .get_mut(&key)
            .filter(|r| r.message_id == revoke.message_id)
        {
            record.recall = mark;
        }
    }

    /// Writes one Revoke frame with every owed Revoke not yet written to the
    /// device's connection, and arms the ack timeout for it.
    pub(super) fn send_revokes(&mut self, device: DeviceId, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let Some(conn) = self.devices[device].conn else {
            return;
        };
        let mut revoke = body::Revoke::default();
        for r in self
            .revokes
            .get_mut(&device)
            .into_iter()
            .flatten()
            .filter(|r| r.sent_at.is_none() && r.until_ms > now_ms)
        {
            r.sent_at = Some(now);
            revoke.ids.push(r.message_id);
            revoke.msg_keys.push(r.msg_key.to_string());
        }
        if revoke.ids.is_empty() {
            return;
        }
        self.write_frame(conn, &Frame::Revoke(revoke));
        self.arm_ack_timer(conn, now);
    }

    /// RevokeAck: the device removed these messages.
    pub(super) fn on_revoke_ack(&mut self, device: DeviceId, ids: &[u64], now: Instant) {
        for &id in ids {
            let Some(revoke) = self.take_revoke(device, id) else {
                self.metrics.acks_unknown.increment(1);
                continue;
            };
            self.end_revoke(device, revoke, RecallMark::RevokeConfirmed, now);
            self.metrics.revokes_confirmed.increment(1);
        }
        self.metrics.revokes_pending.set(self.revokes_owed as f64);
    }

    /// Takes the Revoke of `message_id` out of what `device` owes.
    fn take_revoke(&mut self, device: DeviceId, message_id: u64) -> Option<OwedRevoke> {
        let owed = self.revokes.get_mut(&device)?;
        let pos = owed.iter().position(|r| r.message_id == message_id)?;
        let revoke = owed.remove(pos);
        if owed.is_empty() {
            self.revokes.remove(&device);
        }
        Some(revoke)
    }

    /// A Revoke's TTL is over: it is not sent again.
    pub(super) fn revoke_expired(&mut self, device: DeviceId, message_id: u64, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let until_ms = self
            .revokes
            .get(&device)
            .and_then(|owed| owed.iter().find(|r| r.message_id == message_id))
            .map(|r| r.until_ms);
        // The device may be gone and its slot reused: ids are unique, so a
        // Revoke of this id is this one.
        let Some(until_ms) = until_ms else { return };
        if until_ms > now_ms {
            // The wheel fired a tick early: look again at the deadline.
            let at = self.clock.instant_of(until_ms);
            self.timers.insert(at, Timer::RevokeExpiry { device, message_id });
            return;
        }
        let revoke = self.take_revoke(device, message_id).expect("found above");
        self.end_revoke(device, revoke, RecallMark::RevokeExpired, now);
        self.metrics.revokes_expired.increment(1);
        self.metrics.revokes_pending.set(self.revokes_owed as f64);
    }

    /// Applies a recall record from the log.
    pub(super) fn replay_recall(&mut self, entry: RecallEntry<'_>, now: Instant) {
        match entry {
            RecallEntry::Indexed(i) => {
                let entry = Indexed {
                    app: self.app_arc(i.app),
                    task_id: i.task_id,
                    msg_key: i.msg_key.into(),
                    target: match i.target {
                        IndexedTarget::Token(token) => Target::Token(token.into()),
                        IndexedTarget::Shared(audience) => Target::from_entry(audience),
                    },
                    accepted_at_ms: i.accepted_at_ms,
                    expires_at_ms: i.expires_at_ms,
                    recalled: i.recalled,
                };
                self.recall_index.insert(i.message_id, entry);
            }
            RecallEntry::Shared { message_id, .. } => {
                self.fanout.remove(message_id);
                if let Some(entry) = self.recall_index.get_mut(message_id) {
                    entry.recalled = true;
                }
            }
            RecallEntry::Device(r) => self.replay_device_recall(&r, now),
            RecallEntry::RevokeEnded {
                token,
                message_id,
                mark,
                ..
            } => {
                let Some(&device) = self.by_token.get(token) else {
                    return;
                };
                if let Some(revoke) = self.take_revoke(device, message_id) {
                    self.end_revoke(device, revoke, mark, now);
                }
            }
        }
    }

    fn replay_device_recall(&mut self, r: &DeviceRecallEntry<'_>, now: Instant) {
        let Some(&device) = self.by_token.get(r.token) else {
            return;
        };
        let d = &mut self.devices[device];
        if let Some(pos) = d.queue.iter().position(|p| p.id == r.message_id) {
            d.queue.remove(pos);
            self.pending_total -= 1;
        }
        let key = StatusKey::new(r.app, r.msg_key, r.token);
        let forget_at_ms = r.at_ms + self.limits.status_retention.as_millis() as u64;
        // A shared message's copy that was pending at a restart has no
        // record of its own: the recall gives it one.
        self.statuses.insert_if_absent(key, || {
            StatusRecord::pending(r.message_id, r.accepted_at_ms, r.expires_at_ms)
        });
        let record = self.statuses.get_mut(&key).expect("present or just inserted");
        if record.message_id != r.message_id {
            return;
        }
        record.recall = match r.revoke_until_ms {
            Some(_) => RecallMark::RevokePending,
            None => RecallMark::Withdrawn,
        };
        if record.status == Status::Pending {
            record.status = Status::Recalled;
            record.forget_at_ms = forget_at_ms;
            let forget_at = self.clock.instant_of(forget_at_ms).max(now);
            self.status_gc.push_back((forget_at, key));
        }
        if let Some(until_ms) = r.revoke_until_ms {
            self.owe_revoke(device, r.message_id, r.msg_key.into(), until_ms, now);
        }
    }
}
