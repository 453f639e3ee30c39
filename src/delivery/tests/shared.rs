//! Broadcasts, group and user pushes through one core: who gets them when,
//! binding, durability, and that offline devices cost nothing.

use super::*;
use crate::message::{Audience, BindFilter, RegistryChange, SharedMessage, SharedOutcome};

impl Harness {
    /// Publishes one shared message and commits; answers the outcome.
    pub(super) fn publish(
        &mut self,
        audience: Audience,
        msg_key: &str,
        ttl_secs: u64,
    ) -> (u64, SharedOutcome) {
        let (id, message) = self.shared_message(audience, msg_key, ttl_secs);
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::Publish {
                messages: vec![message],
                reply,
            },
            self.now,
        );
        self.commit();
        let outcomes = rx.try_recv().expect("answered after the commit").expect("stored");
        (id, outcomes[0])
    }

    pub(super) fn shared_message(
        &mut self,
        audience: Audience,
        msg_key: &str,
        ttl_secs: u64,
    ) -> (u64, Arc<SharedMessage>) {
        let id = self.next_id;
        self.next_id += 1;
        let accepted_at_ms = self.unix_ms();
        let expires_at_ms = accepted_at_ms + ttl_secs * 1000;
        let frame = Frame::Push(Box::new(body::Push {
            id,
            msg_key: msg_key.into(),
            title: "t".into(),
            content: "c".into(),
            accepted_at_ms,
            expires_at_ms,
            ..Default::default()
        }));
        let message = Arc::new(SharedMessage {
            id,
            app_id: "demo".into(),
            audience,
            msg_key: msg_key.into(),
            task_id: 7,
            accepted_at_ms,
            expires_at_ms,
            frame: Bytes::from(frame.to_bytes()),
            push_type: crate::stats::PushType::Broadcast,
            task_name: "news".into(),
            collapse_key: None,
        });
        (id, message)
    }

    pub(super) fn registry(&mut self, token: &str, change: RegistryChange) -> i32 {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::Registry {
                app_id: "demo".into(),
                token: token.into(),
                change,
                reply,
            },
            self.now,
        );
        self.commit();
        rx.try_recv().unwrap().unwrap()
    }

    pub(super) fn user_status(
        &mut self,
        user: &str,
        msg_key: &str,
    ) -> Option<crate::message::UserStatusReport> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::QueryUserStatus {
                app_id: "demo".into(),
                msg_key: msg_key.into(),
                user_id: user.into(),
                reply,
            },
            self.now,
        );
        rx.try_recv().unwrap()
    }

    /// A registered device that is not connected; answers its token.
    pub(super) fn offline(&mut self) -> String {
        let (conn, w) = self.device("");
        self.core.on_closed(conn, self.now);
        self.commit();
        w.token
    }
}

pub(super) fn all() -> Audience {
    Audience::Group("all".into())
}

pub(super) fn user(name: &str) -> Audience {
    Audience::User(name.into())
}

#[test]
fn a_broadcast_reaches_online_devices_now_and_offline_ones_when_they_connect() {
    let mut h = Harness::new();
    let (online, _) = h.device("");
    let away = h.offline();
    h.commit();
    let (id, outcome) = h.publish(all(), "b1", 60);
    assert_eq!((outcome.matched, outcome.online), (2, 1));
    assert_eq!(push_ids(&h.output(online)), [id]);
    h.ack(online, &[id]);
    // A device that registers afterwards was not in the audience.
    let (late, _) = h.device("");
    assert!(push_ids(&h.output(late)).is_empty());
    let (conn, _) = h.device(&away);
    assert_eq!(push_ids(&h.output(conn)), [id], "caught up on connect");
    h.ack(conn, &[id]);
    h.commit();
    assert_eq!(h.status(&away, "b1"), Some(Status::Acked));
    // Reconnecting does not bring it again.
    h.core.on_closed(conn, h.now);
    let (conn, _) = h.device(&away);
    assert!(push_ids(&h.output(conn)).is_empty());
    h.core.check_invariants();
}

#[test]
fn a_broadcast_is_not_sent_before_it_is_in_the_log() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    h.commit();
    let (_, message) = h.shared_message(all(), "b1", 60);
    let (reply, _rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::Publish {
            messages: vec![message],
            reply,
        },
        h.now,
    );
    assert!(push_ids(&h.output(conn)).is_empty(), "nothing before the commit");
    // A device connecting in the same iteration waits too.
    let (late_conn, _) = h.device("");
    assert!(push_ids(&h.output(late_conn)).is_empty());
    h.commit();
    assert_eq!(push_ids(&h.output(conn)).len(), 1);
}

#[test]
fn a_failed_commit_forgets_the_broadcast_unseen() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    let away = h.offline();
    h.commit();
    let (_, message) = h.shared_message(all(), "b1", 60);
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::Publish {
            messages: vec![message],
            reply,
        },
        h.now,
    );
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert_eq!(rx.try_recv().unwrap(), Err(StorageRefusal::Full));
    assert!(push_ids(&h.output(conn)).is_empty());
    assert_eq!(h.core.fanout.len(), 0);
    let (back, _) = h.device(&away);
    assert!(push_ids(&h.output(back)).is_empty());
    // The msgKey is free again for the retry.
    assert!(!h.publish(all(), "b1", 60).1.duplicate);
    h.core.check_invariants();
}

#[test]
fn a_broadcast_costs_one_copy_however_many_devices_are_offline() {
    let mut h = Harness::new();
    let tokens: Vec<String> = (0..500).map(|_| h.offline()).collect();
    let (_, outcome) = h.publish(all(), "b1", 60);
    assert_eq!((outcome.matched, outcome.online), (500, 0));
    assert_eq!(h.core.pending_count(), 0, "no per-device entry while offline");
    assert_eq!(h.core.fanout.len(), 1);
    let (conn, _) = h.device(&tokens[7]);
    assert_eq!(push_ids(&h.output(conn)).len(), 1);
    assert_eq!(h.core.pending_count(), 1);
}

#[test]
fn the_same_msg_key_and_target_is_stored_once() {
    let mut h = Harness::new();
    assert!(!h.publish(all(), "b1", 60).1.duplicate);
    assert!(h.publish(all(), "b1", 60).1.duplicate);
    assert!(!h.publish(Audience::Group("news".into()), "b1", 60).1.duplicate);
}

#[test]
fn an_expired_broadcast_is_not_caught_up_and_is_swept() {
    let mut h = Harness::new();
    let away = h.offline();
    h.publish(all(), "b1", 5);
    h.advance(Duration::from_secs(6));
    assert_eq!(h.core.fanout.len(), 0);
    let (conn, _) = h.device(&away);
    assert!(push_ids(&h.output(conn)).is_empty());
}

#[test]
fn platform_broadcasts_follow_the_binding_filter() {
    let mut h = Harness::new();
    let (bound, bound_token) = {
        let (conn, w) = h.device("");
        (conn, w.token)
    };
    assert_eq!(
        h.registry(&bound_token, RegistryChange::Bind("alice".into())),
        100
    );
    let (unbound, _) = h.device("");
    h.output(bound);
    let bound_only = Audience::Platform {
        platform: 1,
        filter: BindFilter::Bound { within_ms: None },
    };
    let (id, outcome) = h.publish(bound_only, "b1", 60);
    assert_eq!((outcome.matched, outcome.online), (1, 1));
    assert_eq!(push_ids(&h.output(bound)), [id]);
    assert!(push_ids(&h.output(unbound)).is_empty());
    let ios = Audience::Platform {
        platform: 2,
        filter: BindFilter::Any {
            unbound_within_ms: None,
        },
    };
    assert_eq!(h.publish(ios, "b2", 60).1.matched, 0);
}

#[test]
fn groups_reach_their_members_only() {
    let mut h = Harness::new();
    let (member, _) = h.device("");
    let (other, _) = h.device("");
    h.send(
        member,
        &Frame::JoinGroup(body::Group {
            request_id: 1,
            group: "news".into(),
        }),
    );
    h.commit();
    h.output(member);
    let (id, outcome) = h.publish(Audience::Group("news".into()), "g1", 60);
    assert_eq!(outcome.matched, 1);
    assert_eq!(push_ids(&h.output(member)), [id]);
    assert!(push_ids(&h.output(other)).is_empty());
}

#[test]
fn a_user_push_reaches_every_bound_device_and_one_bound_later() {
    let mut h = Harness::new();
    let (phone, phone_w) = h.device("");
    let tablet = h.offline();
    let (stranger, _) = h.device("");
    assert_eq!(
        h.registry(&phone_w.token, RegistryChange::Bind("alice".into())),
        100
    );
    assert_eq!(h.registry(&tablet, RegistryChange::Bind("alice".into())), 100);
    h.output(phone);
    let (id, outcome) = h.publish(user("alice"), "u1", 60);
    assert_eq!((outcome.matched, outcome.online), (2, 1));
    assert_eq!(push_ids(&h.output(phone)), [id]);
    assert!(push_ids(&h.output(stranger)).is_empty());
    // The offline tablet gets it when it connects.
    let (tablet_conn, _) = h.device(&tablet);
    assert_eq!(push_ids(&h.output(tablet_conn)), [id]);
    // A device that binds alice afterwards gets her still-valid messages.
    h.send(
        stranger,
        &Frame::Bind(body::UserBinding {
            request_id: 1,
            user_id: "alice".into(),
        }),
    );
    h.commit();
    assert_eq!(push_ids(&h.output(stranger)), [id]);
    // Binding again (or another device's ack) does not repeat it.
    h.ack(stranger, &[id]);
    h.send(
        stranger,
        &Frame::Bind(body::UserBinding {
            request_id: 2,
            user_id: "alice".into(),
        }),
    );
    h.commit();
    assert!(push_ids(&h.output(stranger)).is_empty());
    let report = h.user_status("alice", "u1").expect("stored");
    assert_eq!((report.message_id, report.bound, report.acked), (id, 3, 1));
    assert!(h.user_status("alice", "nope").is_none());
    assert!(h.user_status("bob", "u1").is_none());
    h.core.check_invariants();
}

#[test]
fn a_user_without_devices_keeps_the_message_for_a_bind_within_the_ttl() {
    let mut h = Harness::new();
    let (_, outcome) = h.publish(user("bob"), "u1", 10);
    assert_eq!(outcome.matched, 0, "NoBindInfo for the API");
    let (conn, w) = h.device("");
    h.commit();
    assert_eq!(h.registry(&w.token, RegistryChange::Bind("bob".into())), 100);
    assert_eq!(push_keys(&h.output(conn)), ["u1"]);
    // After the TTL a new binding gets nothing.
    h.publish(user("carol"), "u2", 10);
    h.advance(Duration::from_secs(11));
    assert_eq!(h.registry(&w.token, RegistryChange::Bind("carol".into())), 100);
    assert!(push_keys(&h.output(conn)).is_empty());
}

#[test]
fn unbinding_stops_user_pushes_and_rebinding_moves_the_index() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.commit();
    assert_eq!(h.registry(&w.token, RegistryChange::Bind("alice".into())), 100);
    assert_eq!(h.registry(&w.token, RegistryChange::Unbind("".into())), 3012);
    assert_eq!(h.registry(&w.token, RegistryChange::Unbind("alice".into())), 100);
    assert_eq!(h.publish(user("alice"), "u1", 60).1.matched, 0);
    assert_eq!(h.registry(&w.token, RegistryChange::Bind("bob".into())), 100);
    assert_eq!(h.registry(&w.token, RegistryChange::Bind("carol".into())), 100);
    assert_eq!(h.publish(user("bob"), "u2", 60).1.matched, 0);
    assert_eq!(h.publish(user("carol"), "u3", 60).1.matched, 1);
    assert_eq!(push_keys(&h.output(conn)), ["u3"]);
    h.core.check_invariants();
    // Deleting the token takes it out of the index.
    h.send(conn, &Frame::DeleteToken);
    h.commit();
    assert_eq!(h.publish(user("carol"), "u4", 60).1.matched, 0);
    h.core.check_invariants();
}

#[test]
fn registry_changes_from_the_api_name_a_token_of_the_app() {
    let mut h = Harness::new();
    let token = h.offline();
    assert_eq!(
        h.registry("no-such-token", RegistryChange::Bind("a".into())),
        3054
    );
    assert_eq!(h.registry(&token, RegistryChange::JoinGroup("".into())), 3028);
    assert_eq!(h.registry(&token, RegistryChange::JoinGroup("news".into())), 100);
    assert_eq!(
        h.registry(&token, RegistryChange::VendorToken(6, "fcm-token".into())),
        100
    );
    assert_eq!(
        h.registry(&token, RegistryChange::VendorToken(6, "".into())),
        3001
    );
    assert_eq!(h.registry(&token, RegistryChange::LeaveAllGroups), 100);
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::Registry {
            app_id: "other".into(),
            token: token.as_str().into(),
            change: RegistryChange::Bind("a".into()),
            reply,
        },
        h.now,
    );
    h.commit();
    assert_eq!(rx.try_recv().unwrap(), Ok(3054), "another app's token is unknown");
    let d = h.core.by_token[token.as_str()];
    assert_eq!(h.core.devices[d].vendor_token.as_ref().map(|(c, _)| *c), Some(6));
    assert!(h.core.devices[d].groups.is_empty());
}

/// A broadcast one device acked and another has not seen, and a user
/// message for an offline bound device.
fn shared_scenario(h: &mut Harness) -> (String, String, u64, u64) {
    let away = h.offline();
    assert_eq!(h.registry(&away, RegistryChange::Bind("alice".into())), 100);
    let (conn, w) = h.device("");
    h.commit();
    let (broadcast, _) = h.publish(all(), "b1", 60);
    let (to_alice, _) = h.publish(user("alice"), "u1", 60);
    assert_eq!(push_ids(&h.output(conn)), [broadcast]);
    h.ack(conn, &[broadcast]);
    h.commit();
    (w.token, away, broadcast, to_alice)
}

fn assert_shared_restored(h: &mut Harness, seen: &str, away: &str, broadcast: u64, to_alice: u64) {
    h.core.check_invariants();
    assert_eq!(h.core.fanout.len(), 2);
    let (conn, _) = h.device(seen);
    assert!(
        push_ids(&h.output(conn)).is_empty(),
        "an acked broadcast is not repeated"
    );
    let (conn, _) = h.device(away);
    assert_eq!(push_ids(&h.output(conn)), [broadcast, to_alice]);
    assert!(h.publish(all(), "b1", 60).1.duplicate, "dedup survives");
}

#[test]
fn shared_messages_survive_replay_and_checkpoints() {
    let mut h = Harness::new();
    let (seen, away, broadcast, to_alice) = shared_scenario(&mut h);
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_shared_restored(&mut after, &seen, &away, broadcast, to_alice);

    let checkpoint = checkpoint_of(&mut h.core);
    let mut after = h.restarted();
    replay_into(&mut after.core, &checkpoint, h.now);
    assert_shared_restored(&mut after, &seen, &away, broadcast, to_alice);
}

#[test]
fn a_checkpoint_with_a_log_reader_keeps_shared_deliveries_shared() {
    let mut h = Harness::with_log_reader();
    let (conn, _) = h.device("");
    h.commit();
    let (id, _) = h.publish(all(), "b1", 60);
    let away = h.offline();
    h.core.on_closed(conn, h.now);
    let segments = h.segments.clone().unwrap();
    let next = segments.last_segment() + 1;
    let written = h
        .core
        .write_checkpoint(|chunk, _| Ok::<_, UnreadableFrame>(Some(segments.append(next, chunk))))
        .unwrap();
    h.core.checkpoint_done(written, next);
    h.core.check_invariants();
    assert_eq!(h.core.pending_count(), 1, "the unacked delivery is still queued");
    let _ = away;
    let d = h
        .core
        .devices
        .iter()
        .find(|(_, d)| !d.queue.is_empty())
        .unwrap()
        .0;
    let token = h.core.devices[d].token.to_string();
    let (conn, _) = h.device(&token);
    assert_eq!(push_ids(&h.output(conn)), [id]);
}

pub(super) fn tag(name: &str, users: &[&str]) -> Audience {
    Audience::Tag {
        name: name.into(),
        users: crate::message::TagUsers::new(
            users
                .iter()
                .map(|u| crate::message::user_digest("demo", u))
                .collect(),
        ),
    }
}

/// Tag user set records in a stretch of log.
pub(super) fn tag_set_records(log: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while at < log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        let (kind, _) = crate::log::check_record(&log[at..at + 8 + len]).unwrap();
        count += usize::from(kind == 10);
        at += 8 + len;
    }
    count
}

#[test]
fn a_tag_push_reaches_the_tags_users_now_on_reconnect_and_on_bind() {
    let mut h = Harness::new();
    let (alice_conn, alice) = h.device("");
    let (bob_conn, bob) = h.device("");
    let carol = h.offline();
    let late = h.offline();
    for (token, user) in [(&alice.token, "alice"), (&bob.token, "bob"), (&carol, "carol")] {
        assert_eq!(h.registry(token, RegistryChange::Bind(user.into())), 100);
    }
    let audience = tag("vip", &["alice", "carol", "dave"]);
    let (id, outcome) = h.publish(audience.clone(), "t1", 60);
    assert_eq!(
        (outcome.matched, outcome.online),
        (2, 1),
        "alice online, carol offline"
    );
    assert_eq!(push_ids(&h.output(alice_conn)), [id]);
    assert!(push_ids(&h.output(bob_conn)).is_empty(), "bob is not in the tag");
    assert_eq!(h.core.pending_count(), 1, "the offline member costs nothing yet");
    // Carol comes back; a device binding dave later gets it too.
    let (conn, _) = h.device(&carol);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    assert_eq!(h.registry(&late, RegistryChange::Bind("dave".into())), 100);
    let (conn, _) = h.device(&late);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    // Bob binding a non-member gets nothing; rebinding to alice does.
    assert_eq!(h.registry(&bob.token, RegistryChange::Bind("erin".into())), 100);
    assert!(push_ids(&h.output(bob_conn)).is_empty());
    assert_eq!(h.registry(&bob.token, RegistryChange::Bind("alice".into())), 100);
    assert_eq!(push_ids(&h.output(bob_conn)), [id]);
    // Same msgKey and tag: a duplicate; another tag: a new message.
    assert!(h.publish(audience, "t1", 60).1.duplicate);
    assert!(!h.publish(tag("other", &["alice"]), "t1", 60).1.duplicate);
    h.core.check_invariants();
}

#[test]
fn a_tag_push_does_not_reach_another_apps_user_of_the_same_name() {
    let mut h = Harness::new();
    let other_conn = h.connect();
    h.hello(other_conn, "other", "");
    let other = match h.output(other_conn).first() {
        Some(Frame::Welcome(w)) => w.token.clone(),
        frames => panic!("expected Welcome, got {frames:?}"),
    };
    let (reply, _rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::Registry {
            app_id: "other".into(),
            token: other.as_str().into(),
            change: RegistryChange::Bind("alice".into()),
            reply,
        },
        h.now,
    );
    h.commit();
    let (_, outcome) = h.publish(tag("vip", &["alice"]), "t1", 60);
    assert_eq!(outcome.matched, 0, "demo's tag, other's alice");
    assert!(push_ids(&h.output(other_conn)).is_empty());
}

#[test]
fn tag_pushes_survive_replay_and_checkpoints_with_each_user_set_logged_once() {
    let mut h = Harness::new();
    let away = h.offline();
    assert_eq!(h.registry(&away, RegistryChange::Bind("alice".into())), 100);
    let unbound = h.offline();
    let users: Vec<String> = (0..2500).map(|i| format!("user-{i}")).collect();
    let mut names: Vec<&str> = users.iter().map(String::as_str).collect();
    names.push("alice");
    let audience = tag("big", &names);
    let before = h.log.len();
    let (first, _) = h.publish(audience.clone(), "t1", 60);
    let (second, _) = h.publish(audience.clone(), "t2", 60);
    assert_eq!(tag_set_records(&h.log[before..]), 1, "one set for both pushes");
    let replays = |h: &Harness, log: &[u8]| {
        let mut after = h.restarted();
        replay_into(&mut after.core, log, h.now);
        after.core.check_invariants();
        assert_eq!(after.core.fanout.len(), 2);
        let (conn, _) = after.device(&away);
        assert_eq!(push_ids(&after.output(conn)), [first, second]);
        assert_eq!(
            after.registry(&unbound, RegistryChange::Bind("user-77".into())),
            100
        );
        let (conn, _) = after.device(&unbound);
        assert_eq!(
            push_ids(&after.output(conn)),
            [first, second],
            "bind after restart"
        );
        assert!(after.publish(audience.clone(), "t1", 60).1.duplicate);
        after
    };
    let after = replays(&h, &h.log);
    let Audience::Tag { users, .. } = &after.core.fanout.iter().next().unwrap().message.audience else {
        panic!("a tag message");
    };
    let Audience::Tag { users: original, .. } = &audience else {
        unreachable!()
    };
    assert!(Arc::ptr_eq(users, original), "replay shares the copy in memory");
    let checkpoint = checkpoint_of(&mut h.core);
    assert_eq!(tag_set_records(&checkpoint), 1);
    replays(&h, &checkpoint);
    let mut both = h.log.clone();
    both.extend_from_slice(&checkpoint);
    replays(&h, &both);
    // After the checkpoint the set is in the live log: a third push names it.
    let before = h.log.len();
    h.publish(audience, "t3", 60);
    assert_eq!(tag_set_records(&h.log[before..]), 0);
}

#[test]
fn a_tag_message_without_its_user_set_is_refused_on_replay() {
    let mut h = Harness::new();
    h.publish(tag("vip", &["alice"]), "t1", 60);
    let mut at = 0;
    let mut without_set = Vec::new();
    while at < h.log.len() {
        let len = u32::from_le_bytes(h.log[at..at + 4].try_into().unwrap()) as usize;
        let record = &h.log[at..at + 8 + len];
        if crate::log::check_record(record).unwrap().0 != 10 {
            without_set.extend_from_slice(record);
        }
        at += 8 + len;
    }
    let mut after = h.restarted();
    let mut offset = 0;
    let mut refused = None;
    while offset < without_set.len() {
        let len = u32::from_le_bytes(without_set[offset..offset + 4].try_into().unwrap()) as usize;
        let (kind, payload) = crate::log::check_record(&without_set[offset..offset + 8 + len]).unwrap();
        let record = &without_set[offset..offset + payload.end];
        if let Err(e) = after.core.replay(kind, &record[payload.clone()], None, h.now) {
            refused = Some(e);
        }
        offset += payload.end;
    }
    assert!(refused.unwrap().contains("does not hold"));
}

#[test]
fn a_failed_commit_takes_the_user_set_out_of_the_log_too() {
    let mut h = Harness::new();
    let audience = tag("vip", &["alice"]);
    let (_, message) = h.shared_message(audience.clone(), "t1", 60);
    let (reply, _rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::Publish {
            messages: vec![message],
            reply,
        },
        h.now,
    );
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    let before = h.log.len();
    assert!(!h.publish(audience, "t1", 60).1.duplicate);
    assert_eq!(
        tag_set_records(&h.log[before..]),
        1,
        "written again with the retry"
    );
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_eq!(after.core.fanout.len(), 1);
}
