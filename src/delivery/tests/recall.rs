//! Recall through one core: what is withdrawn unseen, what gets a Revoke and
//! when, how the device confirms it, the limits, and that all of it
//! survives replay and checkpoints.

use super::shared::{all, tag, tag_set_records, user};
use super::*;
use crate::message::{
    Audience, RecallAnswer, RecallMark, RecallOutcome, RecallResult, RecallTarget, RecalledFor,
    RegistryChange, SharedMessage,
};
use crate::stats::PushType;

impl Harness {
    /// Recalls and commits; answers what the core answered.
    fn recall_app(&mut self, app: &str, target: RecallTarget, not_before_ms: u64) -> RecallAnswer {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::Recall {
                app_id: app.into(),
                target,
                not_before_ms,
                reply,
            },
            self.now,
        );
        self.commit();
        rx.try_recv()
            .expect("answered after the commit")
            .expect("durable")
    }

    fn recall(&mut self, target: RecallTarget) -> Vec<RecallOutcome> {
        match self.recall_app("demo", target, 0) {
            RecallAnswer::Done(outcomes) => outcomes,
            other => panic!("{other:?}"),
        }
    }

    fn recall_token(&mut self, token: &str, msg_key: &str) -> Vec<RecallOutcome> {
        self.recall(by_token(token, msg_key))
    }

    fn status_of(&mut self, token: &str, msg_key: &str) -> StatusReport {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::QueryStatus {
                app_id: "demo".into(),
                msg_key: msg_key.into(),
                token: token.into(),
                reply,
            },
            self.now,
        );
        // Held until this iteration's changes are durable.
        let answer = rx.try_recv().or_else(|_| {
            self.commit();
            rx.try_recv()
        });
        answer.unwrap().expect("a status")
    }

    /// A message of a multiple push (task `task_id`) to one token.
    fn push_multiple(&mut self, token: &str, msg_key: &str, task_id: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let accepted_at_ms = self.unix_ms();
        let expires_at_ms = accepted_at_ms + 60_000;
        let frame = Frame::Push(Box::new(body::Push {
            id,
            msg_key: msg_key.into(),
            title: "t".into(),
            content: "c".into(),
            task_id: task_id.to_string(),
            accepted_at_ms,
            expires_at_ms,
            ..Default::default()
        }));
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let message = Message {
            id,
            app_id: "demo".into(),
            token: token.into(),
            msg_key: msg_key.into(),
            accepted_at_ms,
            expires_at_ms,
            frame: Bytes::from(frame.to_bytes()),
            task: TaskTag {
                id: task_id,
                push_type: PushType::Multiple,
                name: "".into(),
            },
            collapse_key: None,
        };
        self.core.on_command(
            Command::Push {
                messages: vec![message],
                reply,
            },
            self.now,
        );
        self.commit();
        assert!(matches!(
            rx.try_recv().unwrap().unwrap()[0],
            Accepted::Queued { .. }
        ));
        id
    }

    /// Publishes a shared message with task id `task_id`.
    fn publish_task(&mut self, audience: Audience, msg_key: &str, task_id: u64) -> u64 {
        let push_type = match audience {
            Audience::Platform { .. } => PushType::Broadcast,
            Audience::Group(_) => PushType::Group,
            Audience::User(_) => PushType::User,
            Audience::Tag { .. } => PushType::Tag,
        };
        let (id, message) = self.shared_message(audience, msg_key, 60);
        let message = Arc::new(SharedMessage {
            task_id,
            push_type,
            frame: message.frame.clone(),
            audience: message.audience.clone(),
            msg_key: message.msg_key.clone(),
            app_id: message.app_id.clone(),
            task_name: message.task_name.clone(),
            collapse_key: message.collapse_key.clone(),
            ..*message
        });
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::Publish {
                messages: vec![message],
                reply,
            },
            self.now,
        );
        self.commit();
        assert!(!rx.try_recv().unwrap().unwrap()[0].refused);
        id
    }

    fn revoke_ack(&mut self, conn: ConnId, ids: &[u64]) {
        self.send(conn, &Frame::RevokeAck(body::Ids { ids: ids.to_vec() }));
        self.commit();
    }
}

fn by_token(token: &str, msg_key: &str) -> RecallTarget {
    RecallTarget::Token {
        msg_key: msg_key.into(),
        token: token.into(),
    }
}

/// The (ids, msgKeys) of every Revoke in `frames`.
fn revokes(frames: &[Frame]) -> Vec<(Vec<u64>, Vec<String>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Revoke(r) => Some((r.ids.clone(), r.msg_keys.clone())),
            _ => None,
        })
        .collect()
}

fn revoked_ids(frames: &[Frame]) -> Vec<u64> {
    revokes(frames).into_iter().flat_map(|(ids, _)| ids).collect()
}

/// (result, withdrawn, revoke_sent, revoke_queued) of a single outcome.
fn summary(outcomes: &[RecallOutcome]) -> (RecallResult, u32, u32, u32) {
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = &outcomes[0];
    (o.result, o.withdrawn, o.revoke_sent, o.revoke_queued)
}

const WITHDRAWN: (RecallResult, u32, u32, u32) = (RecallResult::Recalled, 1, 0, 0);
const REVOKE_SENT: (RecallResult, u32, u32, u32) = (RecallResult::Recalled, 0, 1, 0);
const REVOKE_QUEUED: (RecallResult, u32, u32, u32) = (RecallResult::Recalled, 0, 0, 1);

#[test]
fn a_message_recalled_before_delivery_is_never_written() {
    let mut h = Harness::new();
    let token = h.offline();
    let (id, _) = h.push(&token, "k", 60);
    let outcomes = h.recall_token(&token, "k");
    assert_eq!(summary(&outcomes), WITHDRAWN);
    assert_eq!(outcomes[0].message_id, id);
    assert_eq!(outcomes[0].target, RecalledFor::Token(token.clone().into()));
    let report = h.status_of(&token, "k");
    assert_eq!(
        (report.status, report.recall),
        (Status::Recalled, RecallMark::Withdrawn)
    );
    assert_eq!(h.core.pending_count(), 0);
    let (conn, _) = h.device(&token);
    let frames = h.output(conn);
    assert!(
        push_ids(&frames).is_empty() && revokes(&frames).is_empty(),
        "{frames:?}"
    );
    // Recalling again changes nothing; pushing the msgKey again is a duplicate.
    assert_eq!(
        summary(&h.recall_token(&token, "k")).0,
        RecallResult::AlreadyRecalled
    );
    assert_eq!(h.push(&token, "k", 60).1, Accepted::Duplicate);
    h.core.check_invariants();
}

#[test]
fn an_acked_message_gets_a_revoke_at_once_and_revoke_ack_confirms_it() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    assert_eq!(summary(&h.recall_token(&w.token, "k")), REVOKE_SENT);
    assert_eq!(revokes(&h.output(conn)), [(vec![id], vec!["k".to_string()])]);
    let report = h.status_of(&w.token, "k");
    assert_eq!(
        (report.status, report.recall),
        (Status::Acked, RecallMark::RevokePending),
        "it was delivered; the mark says a Revoke is out"
    );
    h.revoke_ack(conn, &[id]);
    assert_eq!(h.status_of(&w.token, "k").recall, RecallMark::RevokeConfirmed);
    assert_eq!(h.core.revokes_owed, 0);
    // Confirmed: a new connection is not sent it again.
    h.core.on_closed(conn, h.now);
    let (conn, _) = h.device(&w.token);
    assert!(revokes(&h.output(conn)).is_empty());
    h.core.check_invariants();
}

#[test]
fn an_in_flight_message_is_taken_back_and_revoked() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    let (next, _) = h.push(&w.token, "k2", 60);
    assert_eq!(push_ids(&h.output(conn)), [id, next]);
    assert_eq!(summary(&h.recall_token(&w.token, "k")), REVOKE_SENT);
    assert_eq!(revoked_ids(&h.output(conn)), [id]);
    assert_eq!(h.status_of(&w.token, "k").status, Status::Recalled);
    // A late Ack of the Push is not a confirmation of the Revoke.
    h.ack(conn, &[id]);
    assert_eq!(h.status_of(&w.token, "k").recall, RecallMark::RevokePending);
    h.core.on_closed(conn, h.now);
    let (conn, _) = h.device(&w.token);
    let frames = h.output(conn);
    assert_eq!(push_ids(&frames), [next], "the recalled Push is never sent again");
    assert_eq!(revoked_ids(&frames), [id], "the unconfirmed Revoke is");
    h.core.check_invariants();
}

#[test]
fn an_offline_device_gets_its_revoke_on_each_connection_until_it_confirms() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    h.output(conn);
    h.ack(conn, &[id]);
    h.core.on_closed(conn, h.now);
    assert_eq!(summary(&h.recall_token(&w.token, "k")), REVOKE_QUEUED);
    for _ in 0..2 {
        let (conn, _) = h.device(&w.token);
        assert_eq!(revoked_ids(&h.output(conn)), [id]);
        h.core.on_closed(conn, h.now);
    }
    let (conn, _) = h.device(&w.token);
    assert_eq!(revoked_ids(&h.output(conn)), [id]);
    h.revoke_ack(conn, &[id]);
    h.core.on_closed(conn, h.now);
    let (conn, _) = h.device(&w.token);
    assert!(revokes(&h.output(conn)).is_empty());
    h.core.check_invariants();
}

#[test]
fn a_revoke_waits_as_long_as_its_message_could_counted_from_the_recall() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    h.output(conn);
    h.ack(conn, &[id]);
    h.core.on_closed(conn, h.now);
    // Recalled after the message's own TTL: the Revoke still gets 60 s.
    h.advance(Duration::from_secs(100));
    assert_eq!(summary(&h.recall_token(&w.token, "k")), REVOKE_QUEUED);
    h.advance(Duration::from_secs(59));
    let (conn, _) = h.device(&w.token);
    assert_eq!(revoked_ids(&h.output(conn)), [id]);
    h.core.on_closed(conn, h.now);
    h.advance(Duration::from_millis(1_100));
    h.commit();
    assert_eq!(h.status_of(&w.token, "k").recall, RecallMark::RevokeExpired);
    let (conn, _) = h.device(&w.token);
    assert!(revokes(&h.output(conn)).is_empty());
    assert_eq!(h.core.revokes_owed, 0);
    h.core.check_invariants();
}

#[test]
fn an_unconfirmed_revoke_trips_the_ack_timeout_like_a_push() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 3600);
    h.output(conn);
    h.ack(conn, &[id]);
    h.recall_token(&w.token, "k");
    assert_eq!(revoked_ids(&h.output(conn)), [id]);
    h.advance(Duration::from_millis(29_000));
    assert!(!h.actions().contains(&IoAction::Close(conn)));
    h.advance(Duration::from_millis(1_100));
    assert!(h.actions().contains(&IoAction::Close(conn)));
}

#[test]
fn past_the_revoke_cap_the_oldest_revoke_is_dropped() {
    let mut cfg = config();
    cfg.delivery.max_revokes_per_device = 2;
    let mut h = Harness::with(cfg, 0, 1);
    let (conn, w) = h.device("");
    let ids: Vec<u64> = (0..3).map(|i| h.push(&w.token, &format!("k{i}"), 60).0).collect();
    h.output(conn);
    h.ack(conn, &ids);
    h.core.on_closed(conn, h.now);
    for i in 0..3 {
        assert_eq!(
            summary(&h.recall_token(&w.token, &format!("k{i}"))),
            REVOKE_QUEUED
        );
    }
    assert_eq!(h.status_of(&w.token, "k0").recall, RecallMark::RevokeDropped);
    let (conn, _) = h.device(&w.token);
    assert_eq!(revoked_ids(&h.output(conn)), ids[1..]);
    h.core.check_invariants();
}

#[test]
fn a_message_older_than_the_window_is_refused_and_left_alone() {
    let mut h = Harness::new();
    let token = h.offline();
    let (_, _) = h.push(&token, "k", 60);
    let accepted_at_ms = h.unix_ms();
    h.advance(Duration::from_secs(10));
    let answer = h.recall_app("demo", by_token(&token, "k"), accepted_at_ms + 1);
    assert_eq!(answer, RecallAnswer::TooOld { accepted_at_ms });
    assert_eq!(h.status_of(&token, "k").status, Status::Pending);
    assert_eq!(h.core.pending_count(), 1);
    // At the window's edge it is still recallable.
    let answer = h.recall_app("demo", by_token(&token, "k"), accepted_at_ms);
    assert!(
        matches!(answer, RecallAnswer::Done(ref o) if o.len() == 1),
        "{answer:?}"
    );
}

#[test]
fn another_apps_message_and_unknown_names_are_not_found() {
    let mut h = Harness::new();
    let token = h.offline();
    h.push(&token, "k", 60);
    assert_eq!(
        h.recall_app("other", by_token(&token, "k"), 0),
        RecallAnswer::Done(vec![])
    );
    assert!(h.recall_token(&token, "nope").is_empty());
    assert!(h.recall_token("no-such-token", "k").is_empty());
    assert!(h.recall(RecallTarget::Task(12345)).is_empty());
    assert_eq!(h.status_of(&token, "k").status, Status::Pending, "untouched");
}

#[test]
fn expired_and_dropped_messages_have_nothing_to_recall() {
    let mut h = Harness::new();
    let token = h.offline();
    h.push(&token, "short", 1);
    h.advance(Duration::from_millis(1_100));
    assert_eq!(summary(&h.recall_token(&token, "short")).0, RecallResult::Expired);
    assert_eq!(h.status_of(&token, "short").recall, RecallMark::None);
}

#[test]
fn a_multiple_push_is_recalled_by_its_task_id() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let away = h.offline();
    let seen = h.push_multiple(&w.token, "m-a", 900);
    let unseen = h.push_multiple(&away, "m-b", 900);
    let other_task = h.push_multiple(&away, "m-c", 901);
    assert_eq!(push_ids(&h.output(conn)), [seen]);
    h.ack(conn, &[seen]);
    let mut outcomes = h.recall(RecallTarget::Task(900));
    outcomes.sort_by_key(|o| o.message_id);
    assert_eq!(outcomes.len(), 2);
    assert_eq!((outcomes[0].message_id, outcomes[0].revoke_sent), (seen, 1));
    assert_eq!((outcomes[1].message_id, outcomes[1].withdrawn), (unseen, 1));
    assert_eq!(revoked_ids(&h.output(conn)), [seen]);
    let (back, _) = h.device(&away);
    assert_eq!(
        push_ids(&h.output(back)),
        [other_task],
        "only task 900 was recalled"
    );
    // Another app cannot name the task.
    assert_eq!(
        h.recall_app("other", RecallTarget::Task(901), 0),
        RecallAnswer::Done(vec![])
    );
    h.core.check_invariants();
}

#[test]
fn a_broadcast_recalled_by_task_leaves_the_store_and_revokes_its_copies() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    let (late_reader, late) = h.device("");
    let away = h.offline();
    let id = h.publish_task(all(), "b1", 77);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    assert_eq!(push_ids(&h.output(late_reader)), [id]);
    h.core.on_closed(late_reader, h.now);
    let outcome = &h.recall(RecallTarget::Task(77))[0];
    assert_eq!(outcome.result, RecallResult::Recalled);
    assert_eq!(outcome.target, RecalledFor::Shared(all()));
    // Acked by one online device: Revoke now. Written to one that left
    // before acking: queued. The one never caught up: nothing to do.
    assert_eq!(
        (outcome.withdrawn, outcome.revoke_sent, outcome.revoke_queued),
        (0, 1, 1)
    );
    assert_eq!(revoked_ids(&h.output(conn)), [id]);
    assert_eq!(h.core.fanout.len(), 0);
    let (back, _) = h.device(&away);
    assert!(h.output(back).is_empty(), "never caught up, never sent");
    let (again, _) = h.device(&late.token);
    let frames = h.output(again);
    assert!(push_ids(&frames).is_empty());
    assert_eq!(revoked_ids(&frames), [id]);
    let again = &h.recall(RecallTarget::Task(77))[0];
    assert_eq!(again.result, RecallResult::AlreadyRecalled);
    h.core.check_invariants();
}

#[test]
fn a_tag_push_recalled_by_task_leaves_the_store_and_revokes_its_copies() {
    let mut h = Harness::new();
    let (alice_conn, alice) = h.device("");
    let carol = h.offline();
    let late = h.offline();
    for (token, user) in [(&alice.token, "alice"), (&carol, "carol")] {
        assert_eq!(h.registry(token, RegistryChange::Bind(user.into())), 100);
    }
    let id = h.publish_task(tag("vip", &["alice", "carol", "dave"]), "t1", 88);
    assert_eq!(push_ids(&h.output(alice_conn)), [id]);
    h.ack(alice_conn, &[id]);
    let outcome = &h.recall(RecallTarget::Task(88))[0];
    assert_eq!((outcome.message_id, outcome.result), (id, RecallResult::Recalled));
    assert_eq!(outcome.target, RecalledFor::Tag("vip".into()));
    // Acked by alice, online: a Revoke now. Carol, offline, never had it.
    assert_eq!(
        (outcome.withdrawn, outcome.revoke_sent, outcome.revoke_queued),
        (0, 1, 0)
    );
    assert_eq!(revoked_ids(&h.output(alice_conn)), [id]);
    assert_eq!(h.core.fanout.len(), 0);
    // Neither a member reconnecting nor one bound later is sent it.
    let (conn, _) = h.device(&carol);
    assert!(push_ids(&h.output(conn)).is_empty(), "not caught up on reconnect");
    assert_eq!(h.registry(&late, RegistryChange::Bind("dave".into())), 100);
    let (conn, _) = h.device(&late);
    assert!(push_ids(&h.output(conn)).is_empty(), "not caught up on bind");
    h.core.check_invariants();
    // The index names the tag, not its users: a checkpoint taken after the
    // recall holds no user set, and every log replays to the same recall.
    let checkpoint = checkpoint_of(&mut h.core);
    assert_eq!(tag_set_records(&checkpoint), 0);
    let mut with_journal = h.log.clone();
    with_journal.extend_from_slice(&checkpoint);
    for log in [h.log.clone(), checkpoint, with_journal] {
        let mut after = h.restarted();
        replay_into(&mut after.core, &log, h.now);
        after.core.check_invariants();
        assert_eq!(after.core.fanout.len(), 0);
        assert_eq!(
            after.status_of(&alice.token, "t1").recall,
            RecallMark::RevokePending
        );
        let again = &after.recall(RecallTarget::Task(88))[0];
        assert_eq!(
            (again.message_id, again.result, &again.target),
            (id, RecallResult::AlreadyRecalled, &RecalledFor::Tag("vip".into()))
        );
    }
}

#[test]
fn a_user_message_is_recalled_by_msg_key_and_user_id() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.send(
        conn,
        &Frame::Bind(body::UserBinding {
            request_id: 1,
            user_id: "alice".into(),
        }),
    );
    h.core.on_closed(conn, h.now);
    let (id, _) = h.publish(user("alice"), "u1", 60);
    let target = RecallTarget::User {
        msg_key: "u1".into(),
        user_id: "alice".into(),
    };
    let outcome = &h.recall(target)[0];
    assert_eq!((outcome.message_id, outcome.result), (id, RecallResult::Recalled));
    let (back, _) = h.device(&w.token);
    assert!(
        push_ids(&h.output(back)).is_empty(),
        "not caught up after the recall"
    );
    let report = h.user_status("alice", "u1").expect("still known");
    assert!(report.recalled);
    h.core.check_invariants();
}

/// Every kind of recall state: a withdrawn message, a Revoke owed to an
/// offline device, a recalled broadcast, a task's messages. Returns the
/// offline token and the revoked id.
fn recall_scenario(h: &mut Harness) -> (String, u64, u64) {
    let (conn, w) = h.device("");
    let (acked, _) = h.push(&w.token, "acked", 600);
    h.output(conn);
    h.ack(conn, &[acked]);
    h.core.on_closed(conn, h.now);
    h.push(&w.token, "unseen", 600);
    h.push_multiple(&w.token, "task-msg", 55);
    let broadcast = h.publish_task(all(), "b", 66);
    assert_eq!(summary(&h.recall_token(&w.token, "acked")), REVOKE_QUEUED);
    assert_eq!(summary(&h.recall_token(&w.token, "unseen")), WITHDRAWN);
    h.recall(RecallTarget::Task(66));
    h.commit();
    (w.token, acked, broadcast)
}

fn assert_recall_restored(h: &mut Harness, token: &str, acked: u64) {
    h.core.check_invariants();
    let report = h.status_of(token, "acked");
    assert_eq!(
        (report.status, report.recall),
        (Status::Acked, RecallMark::RevokePending)
    );
    let report = h.status_of(token, "unseen");
    assert_eq!(
        (report.status, report.recall),
        (Status::Recalled, RecallMark::Withdrawn)
    );
    assert_eq!(h.core.revokes_owed, 1);
    // The broadcast stays recalled; the task can still be recalled.
    assert_eq!(
        h.recall(RecallTarget::Task(66))[0].result,
        RecallResult::AlreadyRecalled
    );
    let (conn, _) = h.device(token);
    let frames = h.output(conn);
    assert_eq!(revoked_ids(&frames), [acked]);
    let keys: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.msg_key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["task-msg"], "neither the withdrawn push nor the broadcast");
    let task = h.recall(RecallTarget::Task(55));
    assert_eq!(summary(&task), REVOKE_SENT, "written since the restart: a Revoke");
}

#[test]
fn recalls_survive_replay_and_checkpoints() {
    let mut h = Harness::new();
    let (token, acked, _) = recall_scenario(&mut h);
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_recall_restored(&mut after, &token, acked);

    let checkpoint = checkpoint_of(&mut h.core);
    let mut with_journal = h.log.clone();
    with_journal.extend_from_slice(&checkpoint);
    for log in [checkpoint, with_journal] {
        let mut after = h.restarted();
        replay_into(&mut after.core, &log, h.now);
        assert_recall_restored(&mut after, &token, acked);
    }
}

#[test]
fn a_message_queued_before_a_restart_is_revoked_not_just_withdrawn() {
    // The last run may have written it to a connection and died before the
    // ack: nobody knows, so the device is told to remove it.
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_eq!(summary(&after.recall_token(&w.token, "k")), REVOKE_QUEUED);
    let (conn, _) = after.device(&w.token);
    let frames = after.output(conn);
    assert!(push_ids(&frames).is_empty());
    assert_eq!(revoked_ids(&frames), [id]);
}

#[test]
fn delete_token_drops_what_the_device_owes() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    h.output(conn);
    h.ack(conn, &[id]);
    h.core.on_closed(conn, h.now);
    h.recall_token(&w.token, "k");
    let (conn, _) = h.device(&w.token);
    h.output(conn);
    h.send(conn, &Frame::DeleteToken);
    assert_eq!(h.core.revokes_owed, 0);
    assert_eq!(h.status_of(&w.token, "k").recall, RecallMark::RevokeDropped);
    h.core.check_invariants();
}
