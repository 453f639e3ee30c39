//! Collapse keys: a newer message with the same key replaces the device's
//! unsent one (status 5), never one already written to its connection, per
//! device, durably, and undone with a failed commit.

use super::*;
use crate::message::{Audience, SharedMessage};

impl Harness {
    fn push_collapsing(&mut self, token: &str, msg_key: &str, collapse_key: &str) -> u64 {
        let (id, accepted) = self.push_with("demo", token, msg_key, 600, Some(collapse_key));
        assert!(matches!(accepted, Accepted::Queued { .. }), "{accepted:?}");
        id
    }
}

fn window_of(window: usize) -> Config {
    let mut c = config();
    c.delivery.inflight_window = window;
    c
}

#[test]
fn a_newer_message_replaces_the_unsent_one_with_its_key() {
    let mut h = Harness::new();
    let token = offline_device(&mut h);
    h.push_collapsing(&token, "score-1", "score");
    h.push(&token, "chat", 600);
    h.push_collapsing(&token, "weather", "weather");
    h.push_collapsing(&token, "score-2", "score");
    let last = h.push_collapsing(&token, "score-3", "score");
    assert_eq!(h.status(&token, "score-1"), Some(Status::Collapsed));
    assert_eq!(h.status(&token, "score-2"), Some(Status::Collapsed));
    assert_eq!(h.status(&token, "score-3"), Some(Status::Pending));
    assert_eq!(h.core.pending_count(), 3);
    let (conn, w) = h.device(&token);
    assert_eq!(w.missed, 0, "a collapsed message is replaced, not missed");
    let frames = h.output(conn);
    assert_eq!(push_keys(&frames), ["chat", "weather", "score-3"]);
    assert_eq!(*push_ids(&frames).last().unwrap(), last);
    h.core.check_invariants();
}

#[test]
fn a_message_already_written_to_the_connection_is_not_recalled() {
    let mut h = Harness::with(window_of(1), 0, 1);
    let (conn, w) = h.device("");
    let first = h.push_collapsing(&w.token, "s1", "score");
    assert_eq!(push_ids(&h.output(conn)), [first], "in flight");
    h.push_collapsing(&w.token, "s2", "score");
    h.push_collapsing(&w.token, "s3", "score");
    assert_eq!(h.status(&w.token, "s1"), Some(Status::Pending), "in flight: kept");
    assert_eq!(
        h.status(&w.token, "s2"),
        Some(Status::Collapsed),
        "unsent: replaced"
    );
    assert!(push_ids(&h.output(conn)).is_empty(), "the window is full");
    h.ack(conn, &[first]);
    assert_eq!(push_keys(&h.output(conn)), ["s3"]);
    assert_eq!(h.status(&w.token, "s1"), Some(Status::Acked));
    h.core.check_invariants();
}

#[test]
fn keys_are_per_device_and_a_message_without_one_is_never_replaced() {
    let mut h = Harness::new();
    let a = offline_device(&mut h);
    let b = offline_device(&mut h);
    h.push_collapsing(&a, "a1", "score");
    h.push_collapsing(&b, "b1", "score");
    h.push(&a, "plain", 600);
    h.push_collapsing(&a, "a2", "other");
    assert_eq!(h.status(&a, "a1"), Some(Status::Pending));
    assert_eq!(h.status(&b, "b1"), Some(Status::Pending), "another device's key");
    assert_eq!(h.status(&a, "plain"), Some(Status::Pending));
    assert_eq!(h.core.pending_count(), 4);
}

#[test]
fn collapsing_is_durable_and_replay_does_not_collapse_what_was_in_flight() {
    let mut h = Harness::with(window_of(1), 0, 1);
    let (conn, w) = h.device("");
    // s1 is written before s2 arrives, so s2 does not replace it; s3
    // replaces the unsent s2.
    h.push_collapsing(&w.token, "s1", "score");
    h.output(conn);
    h.push_collapsing(&w.token, "s2", "score");
    h.push_collapsing(&w.token, "s3", "score");
    h.core.on_closed(conn, h.now);
    let checkpoint = checkpoint_of(&mut h.core);
    for log in [h.log.clone(), checkpoint] {
        let mut after = h.restarted();
        replay_into(&mut after.core, &log, h.now);
        after.core.check_invariants();
        assert_eq!(after.status(&w.token, "s1"), Some(Status::Pending));
        assert_eq!(after.status(&w.token, "s2"), Some(Status::Collapsed));
        // The key survived the restart: s4 replaces every unsent one,
        // including s1, which is unsent again after the restart.
        after.push_collapsing(&w.token, "s4", "score");
        assert_eq!(after.status(&w.token, "s1"), Some(Status::Collapsed));
        assert_eq!(after.status(&w.token, "s3"), Some(Status::Collapsed));
        let (conn, _) = after.device(&w.token);
        assert_eq!(push_keys(&after.output(conn)), ["s4"]);
        after.core.check_invariants();
    }
}

#[test]
fn a_collapse_key_survives_when_its_frame_waits_in_the_log() {
    let mut h = Harness::with_log_reader();
    let token = offline_device(&mut h);
    h.push_collapsing(&token, "s1", "score");
    assert_eq!(h.frames_in_memory(), 0);
    let segments = h.segments.clone().unwrap();
    let written = h
        .core
        .write_checkpoint(|chunk, _| Ok::<_, UnreadableFrame>(Some(segments.append(2, chunk))))
        .unwrap();
    h.core.checkpoint_done(written, 2);
    let mut after = h.restarted();
    after.core.set_log_reader(Box::new(segments.clone()));
    let checkpoint = segments.0.lock()[&2].clone();
    replay_segment_into(&mut after.core, &checkpoint, Some(2), h.now);
    after.push_collapsing(&token, "s2", "score");
    assert_eq!(after.status(&token, "s1"), Some(Status::Collapsed));
    let (conn, _) = after.device(&token);
    assert_eq!(push_keys(&after.output(conn)), ["s2"]);
}

#[test]
fn a_failed_commit_puts_the_collapsed_message_back() {
    let mut h = Harness::new();
    let token = offline_device(&mut h);
    h.push_collapsing(&token, "s1", "score");
    h.push(&token, "after", 600);
    let (_, mut rx) = h.push_uncommitted("demo", &token, "s2", 600, Some("score"));
    // Collapsed in memory; a query would wait for the commit (`status`
    // commits), so look at the table itself.
    let s1 = StatusKey::new("demo", "s1", &token);
    assert_eq!(
        h.core.statuses.get(&s1).map(|r| r.status),
        Some(Status::Collapsed)
    );
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert_eq!(rx.try_recv().unwrap(), Err(StorageRefusal::Full));
    assert_eq!(h.status(&token, "s1"), Some(Status::Pending));
    assert_eq!(h.status(&token, "s2"), None, "as if never accepted");
    h.core.check_invariants();
    let (conn, _) = h.device(&token);
    assert_eq!(push_keys(&h.output(conn)), ["s1", "after"], "in its place");
    // Nothing of it reached the log: a replay agrees.
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_eq!(after.status(&token, "s1"), Some(Status::Pending));
}

#[test]
fn a_collapse_within_one_commit_that_fails_leaves_neither() {
    let mut h = Harness::new();
    let token = offline_device(&mut h);
    let (_, _rx1) = h.push_uncommitted("demo", &token, "s1", 600, Some("score"));
    let (_, _rx2) = h.push_uncommitted("demo", &token, "s2", 600, Some("score"));
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert_eq!(h.core.pending_count(), 0);
    assert_eq!(h.status(&token, "s1"), None);
    h.core.check_invariants();
}

#[test]
fn user_messages_collapse_per_device() {
    let mut h = Harness::new();
    let token = offline_device(&mut h);
    let d = h.core.by_token[token.as_str()];
    h.core
        .change_registry(d, RegistryChange::Bind("alice".into()), h.now);
    h.commit();
    let publish = |h: &mut Harness, msg_key: &str| {
        let (id, message) = h.shared_message_collapsing(msg_key, "score");
        let (reply, _rx) = tokio::sync::oneshot::channel();
        h.core.on_command(
            Command::Publish {
                messages: vec![message],
                reply,
            },
            h.now,
        );
        h.commit();
        id
    };
    publish(&mut h, "u1");
    let last = publish(&mut h, "u2");
    // Both wait in the store; connecting queues them in order, and the
    // second replaces the first before anything is written.
    let (conn, _) = h.device(&token);
    assert_eq!(push_ids(&h.output(conn)), [last]);
    assert_eq!(h.status(&token, "u1"), Some(Status::Collapsed));
    // After a restart the Collapsed status keeps u1 from coming back.
    h.core.on_closed(conn, h.now);
    h.commit();
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    let (conn, _) = after.device(&token);
    assert_eq!(push_keys(&after.output(conn)), ["u2"]);
}

impl Harness {
    fn shared_message_collapsing(&mut self, msg_key: &str, collapse_key: &str) -> (u64, Arc<SharedMessage>) {
        let id = self.next_id;
        self.next_id += 1;
        let accepted_at_ms = self.unix_ms();
        let expires_at_ms = accepted_at_ms + 600_000;
        let frame = Frame::Push(Box::new(body::Push {
            id,
            msg_key: msg_key.into(),
            accepted_at_ms,
            expires_at_ms,
            ..Default::default()
        }));
        let message = Arc::new(SharedMessage {
            id,
            app_id: "demo".into(),
            audience: Audience::User("alice".into()),
            msg_key: msg_key.into(),
            task_id: 0,
            accepted_at_ms,
            expires_at_ms,
            frame: Bytes::from(frame.to_bytes()),
            push_type: crate::stats::PushType::User,
            task_name: "".into(),
            collapse_key: Some(collapse_key.into()),
        });
        (id, message)
    }
}
