//! Statistics as the core counts them: a message through push, write, ack
//! and report; duplicates, unknown ids and redeliveries not counted twice;
//! tasks; and the same counts after replaying the journal or a checkpoint.

use super::*;
use crate::message::{Audience, SharedMessage};
use crate::stats::{Counts, Granularity, PushType, Query, TaskReport};

const DAY_MS: u64 = 86_400_000;

impl Harness {
    /// A push of `task` (0: none) to one token, committed.
    fn push_task(&mut self, token: &str, msg_key: &str, task: u64, push_type: PushType) -> (u64, Accepted) {
        let id = self.next_id;
        self.next_id += 1;
        let accepted_at_ms = self.unix_ms();
        let frame = Frame::Push(Box::new(body::Push {
            id,
            msg_key: msg_key.into(),
            accepted_at_ms,
            expires_at_ms: accepted_at_ms + 600_000,
            ..Default::default()
        }));
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::Push {
                messages: vec![Message {
                    id,
                    app_id: "demo".into(),
                    token: token.into(),
                    msg_key: msg_key.into(),
                    accepted_at_ms,
                    expires_at_ms: accepted_at_ms + 600_000,
                    frame: Bytes::from(frame.to_bytes()),
                    task: TaskTag {
                        id: task,
                        push_type,
                        name: "spring sale".into(),
                    },
                    collapse_key: None,
                }],
                reply,
            },
            self.now,
        );
        self.commit();
        (id, rx.try_recv().unwrap().unwrap()[0])
    }

    fn broadcast(&mut self, msg_key: &str, task: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let accepted_at_ms = self.unix_ms();
        let frame = Frame::Push(Box::new(body::Push {
            id,
            msg_key: msg_key.into(),
            accepted_at_ms,
            expires_at_ms: accepted_at_ms + 600_000,
            ..Default::default()
        }));
        let message = Arc::new(SharedMessage {
            id,
            app_id: "demo".into(),
            audience: Audience::Group("all".into()),
            msg_key: msg_key.into(),
            task_id: task,
            accepted_at_ms,
            expires_at_ms: accepted_at_ms + 600_000,
            frame: Bytes::from(frame.to_bytes()),
            push_type: PushType::Group,
            task_name: "to everyone".into(),
            collapse_key: None,
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
        rx.try_recv().unwrap().unwrap();
        id
    }

    /// Sends an Opened or Ignored frame; its counts reach the journal with
    /// the next commit after `STATS_FLUSH_INTERVAL`.
    fn report(&mut self, conn: ConnId, frame: Frame) {
        self.send(conn, &frame);
        self.commit();
        if self.core.stats.has_unflushed() {
            let due = self.core.next_deadline().expect("a flush is due");
            assert!(due <= self.now + STATS_FLUSH_INTERVAL, "the loop wakes to flush");
        }
        self.advance(STATS_FLUSH_INTERVAL);
        self.commit();
    }

    /// The day's totals of the app, optionally of one push type.
    fn day_counts(&mut self, push_type: Option<PushType>) -> Counts {
        let start_ms = T0_UNIX_MS / DAY_MS * DAY_MS;
        let query = Query {
            start_ms,
            end_ms: start_ms + DAY_MS,
            granularity: Granularity::Day,
            platform: None,
            push_type,
            task_id: None,
        };
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::QueryStats {
                app_id: "demo".into(),
                query,
                reply,
            },
            self.now,
        );
        let series = rx.try_recv().unwrap();
        assert!(series.len() <= 1, "{series:?}");
        series.first().map(|(_, c)| *c).unwrap_or_default()
    }

    fn task(&mut self, task_id: u64) -> Option<TaskReport> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::QueryTask {
                app_id: "demo".into(),
                task_id,
                reply,
            },
            self.now,
        );
        rx.try_recv().unwrap()
    }
}

fn ids(ids: &[u64]) -> body::Ids {
    body::Ids { ids: ids.to_vec() }
}

#[test]
fn a_message_is_counted_once_at_each_step() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push_task(&w.token, "k1", 0, PushType::Simple);
    assert_eq!(h.day_counts(None), Counts([1, 1, 0, 0, 0]), "written at once");
    // A retried push (same msgKey) and an unknown token are not pushes.
    assert_eq!(
        h.push_task(&w.token, "k1", 0, PushType::Simple).1,
        Accepted::Duplicate
    );
    assert_eq!(
        h.push_task("nobody", "k9", 0, PushType::Simple).1,
        Accepted::UnknownToken
    );
    // Reports before the ack, and for ids the device never had, count nothing.
    h.report(conn, Frame::Opened(ids(&[id, 12345])));
    h.ack(conn, &[id]);
    h.ack(conn, &[id]);
    h.commit();
    assert_eq!(h.day_counts(None), Counts([1, 1, 1, 0, 0]));
    h.report(conn, Frame::Opened(ids(&[id])));
    h.report(conn, Frame::Opened(ids(&[id])));
    h.report(conn, Frame::Ignored(ids(&[id])));
    assert_eq!(h.day_counts(None), Counts([1, 1, 1, 1, 0]));
    assert_eq!(h.day_counts(Some(PushType::Simple)), Counts([1, 1, 1, 1, 0]));
    assert_eq!(h.day_counts(Some(PushType::Multiple)), Counts::default());
    // Another app's device cannot report this app's message.
    let other = h.connect();
    h.hello(other, "other", "");
    h.output(other);
    h.report(other, Frame::Ignored(ids(&[id])));
    assert_eq!(h.day_counts(None), Counts([1, 1, 1, 1, 0]));
}

#[test]
fn a_redelivery_after_a_reconnect_is_not_a_second_success() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push_task(&w.token, "k", 0, PushType::Template);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.core.on_closed(conn, h.now);
    let (conn, _) = h.device(&w.token);
    assert_eq!(push_ids(&h.output(conn)), [id], "sent again");
    h.ack(conn, &[id]);
    h.commit();
    assert_eq!(h.day_counts(None), Counts([1, 1, 1, 0, 0]));
}

#[test]
fn a_task_sums_its_devices_and_a_broadcast_counts_devices_as_they_come() {
    let mut h = Harness::new();
    let (a, wa) = h.device("");
    let (b, wb) = h.device("");
    let (ia, _) = h.push_task(&wa.token, "m-a", 77, PushType::Multiple);
    let (ib, _) = h.push_task(&wb.token, "m-b", 77, PushType::Multiple);
    h.output(a);
    h.output(b);
    h.advance(Duration::from_secs(29));
    h.ack(a, &[ia]);
    h.commit();
    h.report(a, Frame::Ignored(ids(&[ia])));
    let task = h.task(77).unwrap();
    assert_eq!((&*task.name, task.push_type), ("spring sale", PushType::Multiple));
    assert_eq!(task.counts, Counts([2, 2, 1, 0, 1]));
    assert_eq!(task.created_ms, T0_UNIX_MS);
    assert_eq!(task.last_arrived_ms, T0_UNIX_MS + 29_000);
    let _ = ib;

    let away = {
        let (conn, w) = h.device("");
        h.core.on_closed(conn, h.now);
        w.token
    };
    h.commit();
    let id = h.broadcast("g-1", 88);
    // Two online devices now; the third when it connects.
    assert_eq!(h.task(88).unwrap().counts, Counts([2, 2, 0, 0, 0]));
    let (c, _) = h.device(&away);
    assert_eq!(push_ids(&h.output(c)), [id]);
    h.ack(c, &[id]);
    h.commit();
    h.report(c, Frame::Opened(ids(&[id])));
    assert_eq!(h.task(88).unwrap().counts, Counts([3, 3, 1, 1, 0]));
    assert_eq!(h.day_counts(Some(PushType::Group)), Counts([3, 3, 1, 1, 0]));
    assert!(h.task(99).is_none());
}

#[test]
fn a_failed_commit_takes_back_the_counts_of_its_messages() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    h.commit();
    let (reply, _rx) = tokio::sync::oneshot::channel();
    let frame = Frame::Push(Box::new(body::Push {
        id: 5,
        msg_key: "k".into(),
        ..Default::default()
    }));
    h.core.on_command(
        Command::Push {
            messages: vec![Message {
                id: 5,
                app_id: "demo".into(),
                token: w.token.as_str().into(),
                msg_key: "k".into(),
                accepted_at_ms: h.unix_ms(),
                expires_at_ms: h.unix_ms() + 60_000,
                frame: Bytes::from(frame.to_bytes()),
                task: TaskTag::untasked(PushType::Simple),
                collapse_key: None,
            }],
            reply,
        },
        h.now,
    );
    h.core.flush_stats(h.now);
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert_eq!(h.day_counts(None), Counts::default());
}

/// Acks, reports and a task, committed; answers the tokens and the acked
/// message ids (the second not yet reported).
fn counted_scenario(h: &mut Harness) -> (String, [u64; 2]) {
    let (conn, w) = h.device("");
    let (first, _) = h.push_task(&w.token, "k1", 5, PushType::Multiple);
    let (second, _) = h.push_task(&w.token, "k2", 0, PushType::User);
    h.push_task(&w.token, "k3", 0, PushType::Simple);
    h.output(conn);
    h.ack(conn, &[first, second]);
    h.commit();
    h.report(conn, Frame::Opened(ids(&[first])));
    h.core.on_closed(conn, h.now);
    h.commit();
    (w.token, [first, second])
}

fn assert_counts_restored(after: &mut Harness, token: &str, [first, second]: [u64; 2]) {
    assert_eq!(after.day_counts(None), Counts([3, 3, 2, 1, 0]));
    assert_eq!(after.day_counts(Some(PushType::User)), Counts([1, 1, 1, 0, 0]));
    let task = after.task(5).unwrap();
    assert_eq!(
        (&*task.name, task.counts),
        ("spring sale", Counts([1, 1, 1, 1, 0]))
    );
    // Reports survive: the opened one is not counted again, the other
    // acked message can still be reported.
    let (conn, _) = after.device(token);
    after.output(conn);
    after.report(conn, Frame::Ignored(ids(&[first, second])));
    // k3 was written before the restart and never acked: its redelivery
    // counts as a second success (the documented limit: which messages
    // were written is not logged).
    assert_eq!(after.day_counts(None), Counts([3, 4, 2, 1, 1]));
    after.core.check_invariants();
}

#[test]
fn replaying_the_journal_or_a_checkpoint_gives_the_same_counts() {
    let mut h = Harness::new();
    let (token, acked) = counted_scenario(&mut h);
    let checkpoint = checkpoint_of(&mut h.core);
    let mut with_journal = h.log.clone();
    with_journal.extend_from_slice(&checkpoint);
    for log in [h.log.clone(), checkpoint, with_journal] {
        let mut after = h.restarted();
        replay_into(&mut after.core, &log, h.now);
        assert_counts_restored(&mut after, &token, acked);
    }
}

#[test]
fn counts_after_a_checkpoint_add_to_it() {
    let mut h = Harness::new();
    let (token, _) = counted_scenario(&mut h);
    let mut log = checkpoint_of(&mut h.core);
    let start = h.log.len();
    let (conn, _) = h.device(&token);
    h.output(conn);
    let (id, _) = h.push_task(&token, "k4", 5, PushType::Multiple);
    h.output(conn);
    h.ack(conn, &[id]);
    h.commit();
    log.extend_from_slice(&h.log[start..]);
    let mut after = h.restarted();
    replay_into(&mut after.core, &log, h.now);
    assert_eq!(after.day_counts(None), Counts([4, 4, 3, 1, 0]));
    assert_eq!(after.task(5).unwrap().counts, Counts([2, 2, 2, 1, 0]));
}

#[test]
fn a_report_journaled_after_a_rotation_names_the_new_token() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push_task(&w.token, "k1", 0, PushType::Simple);
    h.output(conn);
    h.ack(conn, &[id]);
    h.commit();
    // The report waits for the next flush; the rotation's commit flushes
    // it, after the rotation's record.
    h.send(conn, &Frame::Opened(ids(&[id])));
    assert!(h.core.stats.has_unflushed());
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::RotateToken {
            app_id: "demo".into(),
            token: w.token.as_str().into(),
            reply,
        },
        h.now,
    );
    h.commit();
    let Ok(Ok(Rotation::Rotated { token: new, .. })) = rx.try_recv() else {
        panic!("rotated");
    };
    assert!(!h.core.stats.has_unflushed());
    assert_eq!(h.day_counts(None), Counts([1, 1, 1, 1, 0]));
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_eq!(after.day_counts(None), Counts([1, 1, 1, 1, 0]));
    // The device's ring knows the message was reported: not counted again.
    let (conn, _) = after.device(&new);
    after.output(conn);
    after.report(conn, Frame::Opened(ids(&[id])));
    assert_eq!(after.day_counts(None), Counts([1, 1, 1, 1, 0]));
    after.core.check_invariants();
}
