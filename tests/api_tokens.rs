//! Token rotation (`POST /v1/devices/token-update`) against the real daemon
//! with real device connections: an online device gets TokenUpdate at once
//! and keeps its connection, binding and messages; an offline one is told
//! its new token in the Welcome of its old one; the old token stops working
//! for the API at once and for Hellos once the device presents the new one;
//! all of it across kill -9, and never across apps.

mod common;

use common::{Daemon, Device, BACKENDS};
use ringpush::api::auth::HmacSigner;
use ringpush::protocol::Frame;
use serde_json::{json, Value};

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.http("POST", path, &body.to_string())
}

fn code(answer: &(u16, Value)) -> String {
    answer.1["ResultCode"].as_str().unwrap_or_default().to_string()
}

fn rotate_as(d: &Daemon, app: &str, token: &str) -> (u16, Value) {
    post(
        d,
        "/v1/devices/token-update",
        json!({"appId": app, "workspaceId": "default", "deliveryToken": token}),
    )
}

/// Rotates a demo token that must exist; answers the new one.
fn rotate(d: &Daemon, token: &str) -> String {
    let (status, json) = rotate_as(d, "demo", token);
    assert_eq!(status, 200, "{json}");
    let new = json["PushResult"]["Data"]["deliveryToken"].as_str().unwrap();
    assert_ne!(new, token);
    new.to_string()
}

/// The next frame that is not a Pong.
fn next_frame(device: &mut Device) -> Frame {
    loop {
        match device.recv() {
            Some(Frame::Pong(_)) => continue,
            Some(frame) => return frame,
            None => panic!("closed"),
        }
    }
}

fn two_apps() -> String {
    format!(
        "{}[[apps]]\nappId = \"shop\"\nworkspaceId = \"default\"\napiSecret = \"{}\"\n",
        common::SIGNED_DEMO_APP,
        common::test_app_secret("shop")
    )
}

#[test]
fn an_online_device_gets_token_update_and_the_old_token_stops_working() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut dev = d.device("");
        let old = dev.token.clone();
        let bind =
            json!({"appId": "demo", "workspaceId": "default", "deliveryToken": old, "userId": "alice"});
        assert_eq!(code(&post(&d, "/v1/users/bind", bind)), "OK");
        assert_eq!(d.push(&old, "before", 300).0, 200);
        let before = dev.recv_push();

        let (status, json) = rotate_as(&d, "demo", &old);
        assert_eq!(status, 200, "{json}");
        let data = &json["PushResult"]["Data"];
        let new = data["deliveryToken"].as_str().unwrap().to_string();
        assert_eq!(data["online"], true);
        assert!(data["redirectUntil"].as_u64().unwrap() > common::now_ms());
        match next_frame(&mut dev) {
            Frame::TokenUpdate(t) => assert_eq!(t.token, new),
            other => panic!("expected TokenUpdate, got {other:?}"),
        }
        // The API knows the old token no more, and the new one as the same
        // device, on the same connection.
        assert_eq!(code(&d.push(&old, "to-old", 300)), "3054");
        assert_eq!(code(&rotate_as(&d, "demo", &old)), "3054");
        assert_eq!(d.status(&new, "before"), 0, "the waiting message moved");
        assert_eq!(d.push(&new, "after", 300).0, 200);
        assert_eq!(dev.recv_push().msg_key, "after");
        dev.ack(&[before.id]);
        d.wait_status(&new, "before", 2);
        let (_, json) = d.http(
            "GET",
            "/v1/devices?appId=demo&workspaceId=default&userId=alice",
            "",
        );
        let devices = &json["PushResult"]["Data"]["devices"];
        assert_eq!(devices.as_array().unwrap().len(), 1, "{json}");
        assert_eq!(devices[0]["deliveryToken"], new.as_str());
        assert_eq!(devices[0]["online"], true);
        drop(dev);
        // The device presents the new token: from then on the old one is
        // nobody's.
        let back = d.device(&new);
        assert!(!back.welcome.as_ref().unwrap().new_token);
        drop(back);
        let stranger = d.device(&old);
        assert!(stranger.welcome.as_ref().unwrap().new_token);
        assert_ne!(stranger.token, new);
        let metrics = d.metrics();
        assert!(metrics.contains("ringpush_tokens_rotated_total"), "{metrics}");
    }
}

#[test]
fn an_offline_device_gets_its_new_token_and_messages_in_the_welcome_of_its_old_one() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let old = d.device("").token.clone();
        d.wait_offline(&old);
        assert_eq!(d.push(&old, "k0", 300).0, 200);
        assert_eq!(d.push(&old, "k1", 300).0, 200);
        let (_, json) = rotate_as(&d, "demo", &old);
        let new = json["PushResult"]["Data"]["deliveryToken"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(json["PushResult"]["Data"]["online"], false);
        // Connect a few times: the listener's shard is the kernel's choice,
        // so this also hands the old token to its owner.
        for round in 0..3 {
            let mut dev = d.device(&old);
            let welcome = dev.welcome.clone().unwrap();
            assert_eq!((welcome.token.as_str(), welcome.new_token), (new.as_str(), true));
            let first = dev.recv_push();
            let second = dev.recv_push();
            assert_eq!((first.msg_key.as_str(), second.msg_key.as_str()), ("k0", "k1"));
            if round == 2 {
                dev.ack(&[first.id, second.id]);
                d.wait_status(&new, "k1", 2);
            }
        }
        let metrics = d.metrics();
        assert!(
            metrics.contains("ringpush_token_redirects_followed_total"),
            "{metrics}"
        );
    }
}

#[test]
fn a_rotation_and_its_confirmation_survive_kill_9() {
    for backend in BACKENDS {
        let dir = Daemon::scratch_dir(&format!("rotate-{backend}"));
        let config = format!(
            "io = \"{backend}\"\nshards = 2\n[durability]\ndata_dir = \"{}\"\nfsync = \"always\"\n",
            dir.join("data").display()
        );
        let mut d = Daemon::start_in(&dir, &config);
        let old = d.device("").token.clone();
        assert_eq!(d.push(&old, "waiting", 300).0, 200);
        let new = rotate(&d, &old);
        d.kill9();

        let mut d = Daemon::start_in(&dir, &config);
        assert_eq!(code(&d.push(&old, "x", 300)), "3054", "still rotated");
        assert_eq!(d.status(&new, "waiting"), 0);
        let mut dev = d.device(&old);
        assert_eq!(dev.token, new, "the redirect survived");
        let waiting = dev.recv_push();
        assert_eq!(waiting.msg_key, "waiting");
        dev.ack(&[waiting.id]);
        d.wait_status(&new, "waiting", 2);
        drop(dev);
        // The shard commits before it writes, so once the Welcome is here
        // the confirmation is in the log.
        let confirmed = d.device(&new);
        assert!(!confirmed.welcome.as_ref().unwrap().new_token);
        drop(confirmed);
        d.kill9();

        let d = Daemon::start_in(&dir, &config);
        let stranger = d.device(&old);
        assert_ne!(stranger.token, new, "the confirmation survived");
        assert_eq!(d.status(&new, "waiting"), 2);
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn result_codes_and_apps_stay_apart() {
    let d = Daemon::start("epoll", &two_apps());
    let demo = d.device("").token.clone();
    let shop = Device::connect_app(d.device, "shop", "").token.clone();
    assert_eq!(code(&rotate_as(&d, "demo", "")), "3001");
    assert_eq!(code(&rotate_as(&d, "demo", "no-such-token")), "3054");
    // Another app's token is unknown to the caller's app.
    assert_eq!(code(&rotate_as(&d, "shop", &demo)), "3054");
    assert_eq!(code(&rotate_as(&d, "demo", &shop)), "3054");
    assert_eq!(
        code(&post(
            &d,
            "/v1/devices/token-update",
            json!({"deliveryToken": demo})
        )),
        "3003"
    );
    assert_eq!(
        code(&d.http("POST", "/v1/devices/token-update", "{not json")),
        "3028"
    );
    // Signed as shop, acting for demo: refused before anything is looked up.
    let body = json!({"appId": "demo", "workspaceId": "default", "deliveryToken": demo}).to_string();
    let signer = HmacSigner::new("shop", common::test_app_secret("shop").as_bytes());
    let headers = common::sign(&signer, "POST", "/v1/devices/token-update", &body);
    let (status, json) = d.http_with("POST", "/v1/devices/token-update", &headers, &body);
    assert_eq!((status, json["ResultCode"].as_str()), (403, Some("8014")));
    // Nothing of the above changed a token.
    assert_eq!(d.push(&demo, "still-demo", 300).0, 200);
    // A rotated demo token reaches nothing of shop's, and a shop device
    // presenting it is a stranger to it.
    let new = rotate(&d, &demo);
    let dev = Device::connect_app(d.device, "shop", &demo);
    assert!(dev.welcome.as_ref().unwrap().new_token);
    assert_ne!(dev.token, new);
}
