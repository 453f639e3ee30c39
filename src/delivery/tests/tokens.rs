//! Token rotation: the device keeps everything under its new token, hears
//! of it at once when online or at its next Hello with the old token, the
//! old token stops working for the API at once and for Hellos once the
//! device presents the new one (or the redirect window ends), durably.

use super::*;
use crate::message::{Audience, RegistryChange, Rotation};

impl Harness {
    /// Sends a rotation, commits, and answers it.
    fn rotate(&mut self, app: &str, token: &str) -> Rotation {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::RotateToken {
                app_id: app.into(),
                token: token.into(),
                reply,
            },
            self.now,
        );
        assert!(rx.try_recv().is_err(), "answered only once durable");
        self.commit();
        rx.try_recv().unwrap().expect("the journal was written")
    }

    /// Rotates a token of app demo that must exist; answers the new one.
    fn rotated(&mut self, token: &str) -> String {
        match self.rotate("demo", token) {
            Rotation::Rotated { token: new, .. } => new.into(),
            other => panic!("{token} was not rotated: {other:?}"),
        }
    }
}

fn token_updates(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::TokenUpdate(t) => Some(t.token.clone()),
            _ => None,
        })
        .collect()
}

fn redirect_window(secs: u64) -> Config {
    let mut c = config();
    c.delivery.token_redirect_secs = secs;
    c
}

#[test]
fn an_online_device_keeps_its_state_and_gets_token_update_at_once() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let old = w.token;
    let d = h.core.by_token[old.as_str()];
    h.core
        .change_registry(d, RegistryChange::Bind("alice".into()), h.now);
    h.core
        .change_registry(d, RegistryChange::JoinGroup("news".into()), h.now);
    let (sent, _) = h.push(&old, "sent", 600);
    assert_eq!(push_ids(&h.output(conn)), [sent]);
    h.core.check_invariants();
    let rotation = h.rotate("demo", &old);
    let Rotation::Rotated {
        token: new,
        online,
        redirect_until_ms,
    } = rotation
    else {
        panic!("{rotation:?}");
    };
    assert!(online);
    assert_eq!(redirect_until_ms, h.unix_ms() + 30 * 24 * 3600 * 1000);
    assert_ne!(*new, *old);
    assert_eq!(token_updates(&h.output(conn)), [new.to_string()]);
    // The old token is gone for the API; the new one is the same device.
    assert_eq!(h.push(&old, "to-old", 600).1, Accepted::UnknownToken);
    assert_eq!(h.push(&new, "to-new", 600).1, Accepted::Queued { online: true });
    assert_eq!(h.rotate("demo", &old), Rotation::UnknownToken);
    let device = &h.core.devices[h.core.by_token[&*new]];
    assert_eq!(device.user_id.as_deref(), Some("alice"));
    assert_eq!(device.groups, [Box::from("news")]);
    // The message written before the rotation is acked on the same
    // connection and its status follows the device.
    assert_eq!(h.status(&new, "sent"), Some(Status::Pending));
    assert_eq!(h.status(&old, "sent"), None);
    h.ack(conn, &[sent]);
    assert_eq!(h.status(&new, "sent"), Some(Status::Acked));
    h.core.check_invariants();
}

#[test]
fn an_offline_device_is_told_its_new_token_in_the_welcome_of_its_old_one() {
    let mut h = Harness::with_log_reader();
    let old = offline_device(&mut h);
    h.push(&old, "k0", 600);
    h.push(&old, "k1", 600);
    assert_eq!(h.frames_in_memory(), 0, "the frames wait in the log");
    let new = h.rotated(&old);
    assert_eq!(h.status(&new, "k1"), Some(Status::Pending), "read back to rekey");
    let (conn, w) = h.device(&old);
    assert_eq!((w.token.as_str(), w.new_token), (new.as_str(), true));
    assert_eq!(push_keys(&h.output(conn)), ["k0", "k1"], "its own messages");
    // Until the device presents the new token, the old one still leads to it.
    h.core.on_closed(conn, h.now);
    let (conn, w) = h.device(&old);
    assert_eq!(w.token, new);
    assert_eq!(push_keys(&h.output(conn)), ["k0", "k1"], "unacked: again");
    h.core.on_closed(conn, h.now);
    let (conn, w) = h.device(&new);
    assert!(!w.new_token);
    h.output(conn);
    h.core.on_closed(conn, h.now);
    h.commit();
    // Confirmed: the old token is unknown now, like any other.
    let (_, w) = h.device(&old);
    assert!(w.new_token);
    assert_ne!(w.token, new);
    assert_eq!(h.core.retired.len(), 0);
    h.core.check_invariants();
}

#[test]
fn the_redirect_ends_after_its_window_and_zero_means_none() {
    let mut h = Harness::with(redirect_window(60), 0, 1);
    let old = offline_device(&mut h);
    let new = h.rotated(&old);
    h.advance(Duration::from_secs(59));
    let (conn, w) = h.device(&old);
    assert_eq!(w.token, new);
    h.core.on_closed(conn, h.now);
    h.advance(Duration::from_millis(1_100));
    assert_eq!(h.core.retired.len(), 0, "collected by the timer");
    let (_, w) = h.device(&old);
    assert_ne!(w.token, new, "a fresh device");

    let mut h = Harness::with(redirect_window(0), 0, 1);
    let old = offline_device(&mut h);
    let Rotation::Rotated {
        redirect_until_ms, ..
    } = h.rotate("demo", &old)
    else {
        panic!("rotated");
    };
    assert_eq!(redirect_until_ms, 0);
    let (_, w) = h.device(&old);
    assert!(w.new_token);
    assert_eq!(h.core.devices.len(), 2, "the old token made a new device");
}

#[test]
fn another_apps_token_and_unknown_tokens_are_not_rotated() {
    let mut h = Harness::new();
    let token = offline_device(&mut h);
    assert_eq!(h.rotate("other", &token), Rotation::UnknownToken);
    assert_eq!(h.rotate("demo", "no-such-token"), Rotation::UnknownToken);
    assert!(h.core.by_token.contains_key(token.as_str()), "still the device's");
    // A Hello of another app with a rotated-away token gets nothing of it.
    let new = h.rotated(&token);
    let conn = h.connect();
    h.hello(conn, "other", &token);
    let Some(Frame::Welcome(w)) = h.output(conn).into_iter().next() else {
        panic!("a Welcome");
    };
    assert_ne!(w.token, new);
    h.core.check_invariants();
}

#[test]
fn a_rotation_survives_replay_and_checkpoints() {
    let mut h = Harness::with_log_reader();
    let (conn, w) = h.device("");
    let old = w.token;
    let d = h.core.by_token[old.as_str()];
    h.core
        .change_registry(d, RegistryChange::Bind("alice".into()), h.now);
    let (acked, _) = h.push(&old, "acked", 600);
    h.ack(conn, &[acked]);
    h.core.on_closed(conn, h.now);
    h.push(&old, "waiting", 600);
    let new = h.rotated(&old);
    h.push(&new, "after", 600);
    let segments = h.segments.clone().unwrap();
    let journal = segments.0.lock()[&1].clone();
    let written = h
        .core
        .write_checkpoint(|chunk, _| Ok::<_, UnreadableFrame>(Some(segments.append(2, chunk))))
        .unwrap();
    let checkpoint = segments.0.lock()[&2].clone();
    // The journal alone, the checkpoint after it (a crash before the old
    // segment went), and the checkpoint alone.
    let mut both = journal.clone();
    both.extend_from_slice(&checkpoint);
    for (log, segment) in [(journal, 1), (both, 0), (checkpoint, 2)] {
        let mut after = h.restarted();
        after.core.set_log_reader(Box::new(segments.clone()));
        match segment {
            0 => replay_into(&mut after.core, &log, h.now),
            s => replay_segment_into(&mut after.core, &log, Some(s), h.now),
        };
        after.core.check_invariants();
        assert!(!after.core.by_token.contains_key(old.as_str()));
        assert_eq!(after.status(&new, "waiting"), Some(Status::Pending));
        assert_eq!(
            after.status(&old, "acked"),
            Some(Status::Acked),
            "final ones stay"
        );
        assert_eq!(after.push(&old, "x", 600).1, Accepted::UnknownToken);
        let (conn, w) = after.device(&old);
        assert_eq!((w.token.as_str(), w.new_token), (new.as_str(), true));
        assert_eq!(push_keys(&after.output(conn)), ["waiting", "after"]);
        let d = after.core.by_token[new.as_str()];
        assert_eq!(after.core.devices[d].user_id.as_deref(), Some("alice"));
    }
    h.core.checkpoint_done(written, 2);
}

#[test]
fn a_confirmed_rotation_stays_confirmed_after_a_restart() {
    let mut h = Harness::new();
    let old = offline_device(&mut h);
    let new = h.rotated(&old);
    let (conn, _) = h.device(&new);
    h.core.on_closed(conn, h.now);
    h.commit();
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_eq!(after.core.retired.len(), 0);
    let (_, w) = after.device(&old);
    assert_ne!(w.token, new);
}

#[test]
fn a_failed_commit_undoes_the_rotation() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let old = w.token;
    h.push(&old, "k", 600);
    h.output(conn);
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::RotateToken {
            app_id: "demo".into(),
            token: old.as_str().into(),
            reply,
        },
        h.now,
    );
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert_eq!(rx.try_recv().unwrap(), Err(StorageRefusal::Full));
    assert!(
        token_updates(&h.output(conn)).is_empty(),
        "the device hears nothing"
    );
    assert!(h.core.by_token.contains_key(old.as_str()));
    assert_eq!(h.core.by_token.len(), 1);
    assert_eq!(h.core.retired.len(), 0);
    assert_eq!(h.status(&old, "k"), Some(Status::Pending));
    h.core.check_invariants();
    // The retry works.
    let new = h.rotated(&old);
    assert_eq!(token_updates(&h.output(conn)), [new]);
}

#[test]
fn deleting_the_device_ends_its_redirects() {
    let mut h = Harness::new();
    let old = offline_device(&mut h);
    let new = h.rotated(&old);
    let (conn, _) = h.device(&old);
    h.send(conn, &Frame::DeleteToken);
    h.output(conn);
    h.core.on_closed(conn, h.now);
    assert_eq!(h.core.retired.len(), 0);
    // The freed slot goes to the next device; the old token must not reach it.
    let (_, w) = h.device(&old);
    assert!(w.new_token);
    assert_ne!(w.token, new);
    let (_, w2) = h.device(&old);
    assert_ne!(w2.token, w.token, "every Hello with it is a stranger");
    h.core.check_invariants();
}

#[test]
fn rotating_again_keeps_every_old_token_leading_to_the_device() {
    let mut h = Harness::new();
    let first = offline_device(&mut h);
    let second = h.rotated(&first);
    let third = h.rotated(&second);
    for old in [&first, &second] {
        let (conn, w) = h.device(old);
        assert_eq!(&w.token, &third);
        h.core.on_closed(conn, h.now);
    }
    // Past the bound, the oldest redirect goes.
    let mut latest = third.clone();
    for _ in 0..MAX_REDIRECTS_PER_DEVICE {
        latest = h.rotated(&latest);
    }
    assert_eq!(h.core.retired.len(), MAX_REDIRECTS_PER_DEVICE);
    let (_, w) = h.device(&first);
    assert_ne!(w.token, latest, "displaced");
    let (conn, w) = h.device(&third);
    assert_eq!(w.token, latest);
    h.core.on_closed(conn, h.now);
    h.core.check_invariants();
    // And a restart agrees.
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    assert_eq!(after.core.retired.len(), MAX_REDIRECTS_PER_DEVICE);
    assert!(!after.core.retired.contains_key(first.as_str()));
    after.core.check_invariants();
}

#[test]
fn broadcasts_the_device_had_are_not_sent_again_under_its_new_token() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, message) = h.shared_message(Audience::Group("all".into()), "b1", 600);
    let (reply, _rx) = tokio::sync::oneshot::channel();
    h.core.on_command(
        Command::Publish {
            messages: vec![message],
            reply,
        },
        h.now,
    );
    h.commit();
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    h.core.on_closed(conn, h.now);
    let new = h.rotated(&w.token);
    assert_eq!(h.status(&new, "b1"), Some(Status::Acked));
    // After a restart every device is matched against stored broadcasts
    // again; its status under the new token is what stops a second copy.
    let mut after = h.restarted();
    replay_into(&mut after.core, &h.log, h.now);
    let (conn, _) = after.device(&new);
    assert!(push_ids(&after.output(conn)).is_empty());
}

#[test]
fn the_new_token_is_owned_by_the_same_shard_and_a_redirected_hello_is_handed_there() {
    let mut owner = Harness::with(config(), 1, 4);
    let old = offline_device(&mut owner);
    let new = owner.rotated(&old);
    assert_eq!(owner_shard(new.as_bytes(), 4), 1);
    assert_eq!(owner_shard(old.as_bytes(), 4), 1);
    let mut elsewhere = Harness::with(config(), 2, 4);
    let conn = elsewhere.connect();
    elsewhere.hello(conn, "demo", &old);
    assert!(matches!(
        elsewhere.actions().as_slice(),
        [IoAction::HandOff { to: 1, .. }]
    ));
}
