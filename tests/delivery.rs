//! Delivery end to end on the real daemon, on both I/O backends: a device
//! connects, the API pushes, the device acks; offline devices get their
//! messages within the TTL and never after; replaced connections lose nothing.

mod common;

use common::{Daemon, BACKENDS};
use ringpush::protocol::{body, ErrorCode, Frame, FrameType, GoAwayReason};

fn each_backend(test: impl Fn(&Daemon)) {
    for backend in BACKENDS {
        let daemon = Daemon::start(backend, "");
        assert_eq!(daemon.backend, backend, "the configured backend runs");
        test(&daemon);
    }
}

#[test]
fn connect_push_ack() {
    each_backend(|d| {
        let mut dev = d.device("");
        assert!(dev.welcome.as_ref().unwrap().new_token);
        let (code, json) = d.push(&dev.token, "m1", 300);
        assert_eq!(code, 200, "{json}");
        assert_eq!(json["ResultCode"], "OK");
        let push = dev.recv_push();
        assert_eq!(push.msg_key, "m1");
        assert_eq!(push.title, "hello");
        assert!(push.expires_at_ms > push.accepted_at_ms);
        assert_eq!(d.status(&dev.token, "m1"), 0, "pending until acked");
        dev.ack(&[push.id]);
        d.wait_status(&dev.token, "m1", 2);
    });
}

#[test]
fn offline_device_gets_its_messages_on_reconnect_in_order() {
    each_backend(|d| {
        let token = d.device("").token.clone();
        // The first connection is dropped: the device is offline now.
        for i in 0..5 {
            let (code, json) = d.push(&token, &format!("off{i}"), 300);
            assert_eq!(code, 200, "{json}");
        }
        let mut dev = d.device(&token);
        assert_eq!(dev.token, token);
        assert!(!dev.welcome.as_ref().unwrap().new_token);
        let keys: Vec<String> = (0..5).map(|_| dev.recv_push().msg_key).collect();
        assert_eq!(keys, ["off0", "off1", "off2", "off3", "off4"]);
    });
}

#[test]
fn unacked_messages_are_redelivered_with_the_same_id() {
    each_backend(|d| {
        let mut dev = d.device("");
        let token = dev.token.clone();
        d.push(&token, "again", 300);
        let first = dev.recv_push();
        drop(dev);
        let mut dev = d.device(&token);
        let second = dev.recv_push();
        assert_eq!(second.id, first.id);
        dev.ack(&[second.id]);
        d.wait_status(&token, "again", 2);
    });
}

#[test]
fn expired_messages_are_never_delivered() {
    each_backend(|d| {
        let token = d.device("").token.clone();
        d.push(&token, "short", 1);
        d.push(&token, "long", 300);
        d.wait_status(&token, "short", 3);
        let mut dev = d.device(&token);
        let keys: Vec<String> = dev
            .drain_until_pong()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Push(p) => Some(p.msg_key),
                _ => None,
            })
            .collect();
        assert_eq!(keys, ["long"]);
    });
}

#[test]
fn a_second_connection_replaces_the_first() {
    each_backend(|d| {
        let mut first = d.device("");
        let token = first.token.clone();
        d.push(&token, "r1", 300);
        let pushed = first.recv_push();
        let mut second = d.device(&token);
        let closing = first.until_closed();
        assert!(
            closing
                .iter()
                .any(|f| matches!(f, Frame::GoAway(g) if g.reason == GoAwayReason::Replaced as u32)),
            "{closing:?}"
        );
        // Not acked on the first connection, so it comes again on the second.
        assert_eq!(second.recv_push().id, pushed.id);
    });
}

#[test]
fn handshake_deadline_closes_silent_connections() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "[delivery]\nhandshake_timeout_secs = 1\n");
        let mut silent = common::Device::raw(d.device);
        let frames = silent.until_closed();
        assert!(
            matches!(frames.as_slice(), [Frame::Error(e)] if e.code == ErrorCode::HandshakeTimeout as u32),
            "{frames:?}"
        );
    }
}

#[test]
fn an_oversized_frame_closes_only_that_connection() {
    each_backend(|d| {
        let mut good = d.device("");
        let mut bad = d.device("");
        bad.send_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Ack as u8, 0]);
        let frames = bad.until_closed();
        assert!(
            matches!(frames.as_slice(), [Frame::Error(e)] if e.code == ErrorCode::FrameTooLarge as u32),
            "{frames:?}"
        );
        d.push(&good.token, "still-here", 300);
        assert_eq!(good.recv_push().msg_key, "still-here");
    });
}

#[test]
fn returning_devices_keep_their_tokens_across_shards() {
    each_backend(|d| {
        // With two shards about half of the reconnects land on the shard that
        // does not own the token and are handed over.
        let tokens: Vec<String> = (0..20).map(|_| d.device("").token.clone()).collect();
        for (i, token) in tokens.iter().enumerate() {
            let mut dev = d.device(token);
            assert_eq!(&dev.token, token);
            let key = format!("hop{i}");
            d.push(token, &key, 300);
            let push = dev.recv_push();
            assert_eq!(push.msg_key, key);
            dev.ack(&[push.id]);
        }
        let metrics = d.metrics();
        assert!(metrics.contains("ringpush_handshakes_total"), "{metrics}");
    });
}

#[test]
fn pings_are_answered() {
    each_backend(|d| {
        let mut dev = d.device("");
        dev.send(&Frame::Ping(body::Heartbeat { time_ms: 42 }));
        assert_eq!(dev.recv(), Some(Frame::Pong(body::Heartbeat { time_ms: 42 })));
    });
}

#[test]
fn bytes_pipelined_after_hello_travel_with_a_handed_off_connection() {
    each_backend(|d| {
        let tokens: Vec<String> = (0..20).map(|_| d.device("").token.clone()).collect();
        for token in &tokens {
            let mut dev = common::Device::raw(d.device);
            let mut bytes = Frame::Hello(Box::new(body::Hello {
                protocol_version: 1,
                app_id: "demo".into(),
                platform: 1,
                token: token.clone(),
                ..Default::default()
            }))
            .to_bytes();
            Frame::Ping(body::Heartbeat { time_ms: 99 }).encode(&mut bytes);
            dev.send_bytes(&bytes);
            assert!(matches!(dev.recv(), Some(Frame::Welcome(w)) if &w.token == token));
            assert_eq!(dev.recv(), Some(Frame::Pong(body::Heartbeat { time_ms: 99 })));
        }
    });
}

#[test]
fn sigterm_sends_go_away_and_exits_cleanly() {
    for backend in BACKENDS {
        let mut d = Daemon::start(backend, "");
        let mut dev = d.device("");
        let status = d.terminate();
        assert!(status.success(), "{status}");
        let frames = dev.until_closed();
        assert!(
            matches!(frames.as_slice(), [Frame::GoAway(g)]
                if g.reason == GoAwayReason::Shutdown as u32 && g.retry_after_ms >= 1000),
            "{frames:?}"
        );
    }
}
