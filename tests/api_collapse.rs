//! Collapse keys against the real daemon with real devices: a newer message
//! with the same `collapseKey` replaces the device's unsent one (status 5),
//! a message already written to the connection stays, per device and per
//! app, for token, user and tag pushes, across kill -9.

mod common;

use common::{Daemon, Device, BACKENDS};
use serde_json::{json, Value};

fn code(answer: &(u16, Value)) -> String {
    answer.1["ResultCode"].as_str().unwrap_or_default().to_string()
}

fn push_collapsing(d: &Daemon, app: &str, token: &str, msg_key: &str, collapse_key: &str) -> (u16, Value) {
    let body = json!({
        "appId": app, "workspaceId": "default", "taskName": "scores",
        "title": "Score", "content": format!("now {msg_key}"), "deliveryType": 1,
        "targetMsgkey": {token: msg_key}, "expiredSeconds": 300, "collapseKey": collapse_key,
    });
    d.http("POST", "/v1/push/simple", &body.to_string())
}

fn two_apps() -> String {
    format!(
        "{}[[apps]]\nappId = \"shop\"\nworkspaceId = \"default\"\napiSecret = \"{}\"\n",
        common::SIGNED_DEMO_APP,
        common::test_app_secret("shop")
    )
}

fn collapsed_total(d: &Daemon) -> u64 {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with("ringpush_messages_collapsed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_newer_message_replaces_the_unsent_one_per_device_and_app() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, &two_apps());
        let token = d.device("").token.clone();
        let other = d.device("").token.clone();
        let shop = Device::connect_app(d.device, "shop", "").token.clone();
        d.wait_offline(&token);
        d.wait_offline(&other);
        assert_eq!(push_collapsing(&d, "demo", &token, "s1", "score").0, 200);
        assert_eq!(push_collapsing(&d, "demo", &other, "o1", "score").0, 200);
        assert_eq!(push_collapsing(&d, "shop", &shop, "p1", "score").0, 200);
        assert_eq!(d.push(&token, "chat", 300).0, 200);
        assert_eq!(push_collapsing(&d, "demo", &token, "s2", "score").0, 200);
        assert_eq!(d.status(&token, "s1"), 5, "collapsed");
        assert_eq!(d.status(&token, "s2"), 0);
        assert_eq!(d.status(&other, "o1"), 0, "another device");
        let (_, json) = d.http("GET", &format!("/v1/messages/p1?appId=shop&target={shop}"), "");
        assert_eq!(json["PushResult"]["Data"]["status"], 0, "another app: {json}");
        let (_, json) = d.http("GET", &format!("/v1/messages/s1?target={token}"), "");
        assert_eq!(json["PushResult"]["Data"]["statusName"], "Collapsed");
        assert_eq!(collapsed_total(&d), 1);
        let mut dev = d.device(&token);
        let first = dev.recv_push();
        let second = dev.recv_push();
        assert_eq!((first.msg_key.as_str(), second.msg_key.as_str()), ("chat", "s2"));
        let rest = dev.drain_until_pong();
        assert!(rest.is_empty(), "nothing else: {rest:?}");
    }
}

#[test]
fn a_message_already_written_to_the_connection_is_not_recalled() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "[delivery]\ninflight_window = 1\n");
        let mut dev = d.device("");
        let token = dev.token.clone();
        assert_eq!(push_collapsing(&d, "demo", &token, "s1", "score").0, 200);
        let s1 = dev.recv_push();
        assert_eq!(push_collapsing(&d, "demo", &token, "s2", "score").0, 200);
        assert_eq!(push_collapsing(&d, "demo", &token, "s3", "score").0, 200);
        assert_eq!(d.status(&token, "s1"), 0, "in flight: kept");
        assert_eq!(d.status(&token, "s2"), 5, "waiting for the window: replaced");
        dev.ack(&[s1.id]);
        assert_eq!(dev.recv_push().msg_key, "s3");
        d.wait_status(&token, "s1", 2);
    }
}

#[test]
fn collapsing_survives_kill_9() {
    let dir = Daemon::scratch_dir("collapse-kill9");
    let config = format!(
        "io = \"uring\"\nshards = 2\n[durability]\ndata_dir = \"{}\"\nfsync = \"always\"\n",
        dir.join("data").display()
    );
    let mut d = Daemon::start_in(&dir, &config);
    let token = d.device("").token.clone();
    d.wait_offline(&token);
    assert_eq!(push_collapsing(&d, "demo", &token, "s1", "score").0, 200);
    assert_eq!(push_collapsing(&d, "demo", &token, "s2", "score").0, 200);
    d.kill9();
    let d = Daemon::start_in(&dir, &config);
    assert_eq!(d.status(&token, "s1"), 5);
    assert_eq!(d.status(&token, "s2"), 0);
    // The key survived with the message: s3 replaces s2.
    assert_eq!(push_collapsing(&d, "demo", &token, "s3", "score").0, 200);
    assert_eq!(d.status(&token, "s2"), 5);
    let mut dev = d.device(&token);
    assert_eq!(dev.recv_push().msg_key, "s3");
    assert!(dev.drain_until_pong().is_empty());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn user_and_multiple_pushes_collapse_and_bad_keys_are_3028() {
    let d = Daemon::start("epoll", "");
    let token = d.device("").token.clone();
    d.wait_offline(&token);
    let bind = json!({"appId": "demo", "workspaceId": "default", "deliveryToken": token, "userId": "alice"});
    let (_, json) = d.http("POST", "/v1/users/bind", &bind.to_string());
    assert_eq!(json["ResultCode"], "OK");
    for msg_key in ["u1", "u2"] {
        let body = json!({
            "appId": "demo", "workspaceId": "default", "taskName": "to alice",
            "title": "Hi", "content": msg_key, "deliveryType": 3,
            "targetMsgkey": {"alice": msg_key}, "expiredSeconds": 300, "collapseKey": "inbox",
        });
        assert_eq!(d.http("POST", "/v1/push/simple", &body.to_string()).0, 200);
    }
    let mut dev = d.device(&token);
    assert_eq!(
        dev.recv_push().msg_key,
        "u2",
        "the backlog collapsed before sending"
    );
    assert!(dev.drain_until_pong().is_empty());
    assert_eq!(d.status(&token, "u1"), 5);

    let over = "x".repeat(65);
    let (status, json) = push_collapsing(&d, "demo", &token, "k", &over);
    assert_eq!(
        (status, code(&(status, json.clone()))),
        (400, "3028".to_string()),
        "{json}"
    );
    assert_eq!(code(&push_collapsing(&d, "demo", &token, "k", "")), "3028");
    // A multiple push: per target, the target's own key wins.
    let template = json!({
        "appId": "demo", "workspaceId": "default", "templateName": "t",
        "templateDesc": "greeting", "title": "Hi #n#", "content": "for #n#",
    });
    assert_eq!(d.http("POST", "/v1/templates", &template.to_string()).0, 200);
    let multiple = |collapse: Value| {
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "m", "templateName": "t",
            "deliveryType": 1, "expiredSeconds": 300, "collapseKey": "m",
            "targetMsgs": [{"target": token, "msgKey": "m1", "templateKeyValue": {"n": "a"},
                            "collapseKey": collapse}],
        })
        .to_string()
    };
    drop(dev);
    d.wait_offline(&token);
    assert_eq!(
        d.http("POST", "/v1/push/multiple", &multiple(json!("own"))).0,
        200
    );
    assert_eq!(push_collapsing(&d, "demo", &token, "m2", "own").0, 200);
    assert_eq!(d.status(&token, "m1"), 5, "replaced under the target's own key");
    assert_eq!(
        code(&d.http("POST", "/v1/push/multiple", &multiple(json!(over)))),
        "3028"
    );
}

#[test]
fn tag_pushes_collapse_like_user_pushes() {
    let d = Daemon::start("epoll", "");
    let token = d.device("").token.clone();
    d.wait_offline(&token);
    let bind = json!({"appId": "demo", "workspaceId": "default", "deliveryToken": token, "userId": "alice"});
    let (_, json) = d.http("POST", "/v1/users/bind", &bind.to_string());
    assert_eq!(json["ResultCode"], "OK");
    let tag = json!({"appId": "demo", "workspaceId": "default", "tagName": "vip", "userIds": ["alice"]});
    let (_, json) = d.http("POST", "/v1/tags", &tag.to_string());
    assert_eq!(json["ResultCode"], "OK", "{json}");
    for msg_key in ["t1", "t2"] {
        let body = json!({
            "appId": "demo", "workspaceId": "default", "taskName": "offers",
            "tagName": "vip", "msgkey": msg_key, "title": "Offer", "content": msg_key,
            "expiredSeconds": 300, "collapseKey": "offer",
        });
        let (status, json) = d.http("POST", "/v1/push/tag", &body.to_string());
        assert_eq!(status, 200, "{json}");
    }
    let mut dev = d.device(&token);
    assert_eq!(
        dev.recv_push().msg_key,
        "t2",
        "the backlog collapsed before sending"
    );
    assert!(dev.drain_until_pong().is_empty());
    assert_eq!(d.status(&token, "t1"), 5);
    let bad = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "offers",
        "tagName": "vip", "msgkey": "t3", "title": "Offer", "content": "t3",
        "expiredSeconds": 300, "collapseKey": "",
    });
    assert_eq!(code(&d.http("POST", "/v1/push/tag", &bad.to_string())), "3028");
}
