//! Recall on the real daemon with real devices: a message recalled before
//! delivery never reaches its device; one already delivered is answered with
//! a Revoke frame, at once or on reconnect, until the device confirms it
//! with RevokeAck; multiple pushes and broadcasts by task id; the recall
//! window; one app cannot recall another's message; all of it survives
//! kill -9.

mod common;

use std::time::{Duration, Instant};

use common::{now_ms, sign, test_app_secret, Daemon, Device, BACKENDS, PATIENCE, SIGNED_DEMO_APP};
use ringpush::api::auth::HmacSigner;
use ringpush::protocol::{body, Frame};
use serde_json::{json, Value};

fn recall(d: &Daemon, target: &str, msg_key: &str) -> (u16, Value) {
    let body = json!({"appId": "demo", "workspaceId": "default", "msgKey": msg_key, "target": target});
    d.http("POST", "/v1/push/recall", &body.to_string())
}

fn recall_task(d: &Daemon, task_id: &str) -> (u16, Value) {
    let body = json!({"appId": "demo", "workspaceId": "default", "taskId": task_id});
    d.http("POST", "/v1/push/recall-task", &body.to_string())
}

/// The one target of a recall answer, asserting it is a 200.
fn target(answer: &(u16, Value)) -> Value {
    assert_eq!(answer.0, 200, "{}", answer.1);
    let targets = answer.1["PushResult"]["Targets"].as_array().expect("Targets");
    assert_eq!(targets.len(), 1, "{}", answer.1);
    targets[0].clone()
}

fn code(answer: &(u16, Value)) -> String {
    answer.1["ResultCode"].as_str().unwrap_or_default().to_string()
}

/// The status query's `Data` for a message and token.
fn status(d: &Daemon, token: &str, msg_key: &str) -> Value {
    let (code, json) = d.http("GET", &format!("/v1/messages/{msg_key}?target={token}"), "");
    assert_eq!(code, 200, "{json}");
    json["PushResult"]["Data"].clone()
}

/// Polls the status query until its `recall` field is `want`.
fn wait_recall(d: &Daemon, token: &str, msg_key: &str, want: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let data = status(d, token, msg_key);
        if data["recall"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "recall of {msg_key} stayed {data}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the device query until the shard has seen the device go.
fn wait_offline(d: &Daemon, token: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let path = format!("/v1/devices?appId=demo&workspaceId=default&token={token}");
        let (code, json) = d.http("GET", &path, "");
        assert_eq!(code, 200, "{json}");
        if json["PushResult"]["Data"]["devices"][0]["online"] == false {
            return;
        }
        assert!(Instant::now() < deadline, "{token} stayed online: {json}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pushes and Revokes a device is sent before it answers a Ping.
fn pushes_and_revokes(device: &mut Device) -> (Vec<String>, Vec<u64>) {
    let mut pushes = Vec::new();
    let mut revoked = Vec::new();
    for frame in device.drain_until_pong() {
        match frame {
            Frame::Push(p) => pushes.push(p.msg_key),
            Frame::Revoke(r) => revoked.extend(r.ids),
            other => panic!("unexpected {other:?}"),
        }
    }
    (pushes, revoked)
}

fn next_revoke(device: &mut Device) -> body::Revoke {
    loop {
        match device.recv() {
            Some(Frame::Revoke(r)) => return r,
            Some(Frame::Pong(_)) => continue,
            other => panic!("expected Revoke, got {other:?}"),
        }
    }
}

fn revoke_ack(device: &mut Device, ids: &[u64]) {
    device.send(&Frame::RevokeAck(body::Ids { ids: ids.to_vec() }));
}

/// A device that received, acked and saw `msg_key` acknowledged.
fn delivered(d: &Daemon, device: &mut Device, msg_key: &str) -> u64 {
    assert_eq!(d.push(&device.token, msg_key, 600).0, 200);
    let push = device.recv_push();
    assert_eq!(push.msg_key, msg_key);
    device.ack(&[push.id]);
    d.wait_status(&device.token, msg_key, 2);
    push.id
}

#[test]
fn a_message_recalled_before_delivery_never_reaches_the_device() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let token = d.device("").token.clone();
        assert_eq!(d.push(&token, "k1", 600).0, 200);
        let answer = target(&recall(&d, &token, "k1"));
        assert_eq!(answer["result"], "withdrawn", "{answer}");
        assert_eq!(
            (answer["target"].as_str(), answer["audience"].as_str()),
            (Some(&*token), Some("token"))
        );
        let data = status(&d, &token, "k1");
        assert_eq!(
            (data["status"].as_i64(), data["statusName"].as_str()),
            (Some(6), Some("Recalled")),
            "{data}"
        );
        assert_eq!(
            (data["recalled"].as_bool(), data["recall"].as_str()),
            (Some(true), Some("withdrawn"))
        );
        assert_eq!(d.push(&token, "k2", 600).0, 200);
        let mut device = d.device(&token);
        // k2 was queued after k1: had k1 been sent it would come first.
        assert_eq!(device.recv_push().msg_key, "k2");
        assert_eq!(pushes_and_revokes(&mut device), (vec![], vec![]));
        // Recalling again answers so, and changes nothing.
        assert_eq!(target(&recall(&d, &token, "k1"))["result"], "already_recalled");
        // A name nothing was pushed to is unknown.
        assert_eq!(target(&recall(&d, &token, "never"))["result"], "unknown");
        assert_eq!(target(&recall(&d, "no-such-token", "k1"))["result"], "unknown");
    }
}

#[test]
fn a_delivered_message_gets_a_revoke_at_once_and_revoke_ack_confirms_it() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut device = d.device("");
        let id = delivered(&d, &mut device, "k1");
        let answer = target(&recall(&d, &device.token, "k1"));
        assert_eq!(answer["result"], "revoke_sent", "{answer}");
        assert_eq!(answer["messageId"], id.to_string());
        let revoke = next_revoke(&mut device);
        assert_eq!((revoke.ids, revoke.msg_keys), (vec![id], vec!["k1".to_string()]));
        let data = status(&d, &device.token, "k1");
        assert_eq!(
            (data["status"].as_i64(), data["recall"].as_str()),
            (Some(2), Some("revoke_pending"))
        );
        revoke_ack(&mut device, &[id]);
        wait_recall(&d, &device.token, "k1", "revoke_confirmed");
        let token = device.token.clone();
        drop(device);
        wait_offline(&d, &token);
        let mut again = d.device(&token);
        assert_eq!(
            pushes_and_revokes(&mut again),
            (vec![], vec![]),
            "confirmed: not sent again"
        );
    }
}

#[test]
fn a_device_offline_after_delivery_gets_the_revoke_on_each_reconnect_until_it_confirms() {
    let d = Daemon::start("epoll", "");
    let mut device = d.device("");
    let id = delivered(&d, &mut device, "k1");
    let token = device.token.clone();
    drop(device);
    wait_offline(&d, &token);
    assert_eq!(target(&recall(&d, &token, "k1"))["result"], "revoke_queued");
    for _ in 0..2 {
        let mut device = d.device(&token);
        assert_eq!(pushes_and_revokes(&mut device), (vec![], vec![id]));
        drop(device);
        wait_offline(&d, &token);
    }
    let mut device = d.device(&token);
    assert_eq!(next_revoke(&mut device).ids, [id]);
    revoke_ack(&mut device, &[id]);
    wait_recall(&d, &token, "k1", "revoke_confirmed");
    drop(device);
    wait_offline(&d, &token);
    let mut device = d.device(&token);
    assert_eq!(pushes_and_revokes(&mut device), (vec![], vec![]));
}

#[test]
fn a_user_message_is_recalled_by_msg_key_and_user_id() {
    let d = Daemon::start("uring", "");
    let mut device = d.device("");
    let bind =
        json!({"appId": "demo", "workspaceId": "default", "deliveryToken": device.token, "userId": "alice"});
    assert_eq!(d.http("POST", "/v1/users/bind", &bind.to_string()).0, 200);
    let push = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "to alice", "title": "Hi",
        "content": "For you", "deliveryType": 3, "targetMsgkey": {"alice": "u1"}, "expiredSeconds": 600,
    });
    assert_eq!(d.http("POST", "/v1/push/simple", &push.to_string()).0, 200);
    let id = device.recv_push().id;
    device.ack(&[id]);
    d.wait_status(&device.token, "u1", 2);
    let body = json!({"appId": "demo", "workspaceId": "default", "msgKey": "u1", "target": "alice", "deliveryType": 3});
    let answer = target(&d.http("POST", "/v1/push/recall", &body.to_string()));
    assert_eq!(
        (
            answer["audience"].as_str(),
            answer["result"].as_str(),
            answer["revokeSent"].as_u64()
        ),
        (Some("user"), Some("recalled"), Some(1)),
        "{answer}"
    );
    assert_eq!(next_revoke(&mut device).ids, [id]);
    let (code, json) = d.http("GET", "/v1/messages/u1?userId=alice", "");
    assert_eq!(code, 200);
    assert_eq!(json["PushResult"]["Data"]["recalled"], true, "{json}");
}

fn create_template(d: &Daemon) {
    let template = json!({
        "appId": "demo", "workspaceId": "default", "templateName": "promo",
        "title": "Hi #name#", "content": "#name#, a deal for you",
    });
    let (code, json) = d.http("POST", "/v1/templates", &template.to_string());
    assert_eq!(code, 200, "{json}");
}

#[test]
fn a_multiple_push_is_recalled_by_its_task_id() {
    let d = Daemon::start("epoll", "");
    create_template(&d);
    let mut online = d.device("");
    let away = d.device("").token.clone();
    let push = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "batch", "templateName": "promo",
        "deliveryType": 1, "expiredSeconds": 600,
        "targetMsgs": [
            {"target": online.token, "msgKey": "m-a", "templateKeyValue": {"name": "Ann"}},
            {"target": away, "msgKey": "m-b", "templateKeyValue": {"name": "Bob"}},
        ],
    });
    let (status_code, json) = d.http("POST", "/v1/push/multiple", &push.to_string());
    assert_eq!(status_code, 200, "{json}");
    let task_id = json["PushResult"]["Data"].as_str().unwrap().to_string();
    let seen = online.recv_push();
    assert_eq!(seen.task_id, task_id);
    online.ack(&[seen.id]);
    d.wait_status(&online.token, "m-a", 2);
    let answer = recall_task(&d, &task_id);
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["PushResult"]["Data"], task_id.as_str());
    let mut results: Vec<(String, String)> = answer.1["PushResult"]["Targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["msgKey"].as_str().unwrap().into(),
                t["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    results.sort();
    assert_eq!(
        results,
        [
            ("m-a".into(), "revoke_sent".into()),
            ("m-b".into(), "withdrawn".into())
        ]
    );
    assert_eq!(next_revoke(&mut online).ids, [seen.id]);
    let mut back = d.device(&away);
    assert_eq!(pushes_and_revokes(&mut back), (vec![], vec![]));
    // A task nothing was pushed under is refused with 3028.
    let unknown = recall_task(&d, "4242");
    assert_eq!(
        (unknown.0, code(&unknown)),
        (400, "3028".to_string()),
        "{}",
        unknown.1
    );
}

#[test]
fn a_broadcast_is_recalled_by_its_task_id() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut online: Vec<Device> = (0..2).map(|_| d.device("")).collect();
        let away = d.device("").token.clone();
        let broadcast = json!({
            "appId": "demo", "workspaceId": "default", "taskName": "news", "title": "Hello all",
            "content": "A broadcast", "deliveryType": 1, "msgkey": "b-1", "expiredSeconds": 600,
            "pushStatus": 1, "unBindPeriod": 4,
        });
        let (code, json) = d.http("POST", "/v1/push/broadcast", &broadcast.to_string());
        assert_eq!(code, 200, "{json}");
        let task_id = json["PushResult"]["Data"].as_str().unwrap().to_string();
        let mut ids = Vec::new();
        for device in &mut online {
            let push = device.recv_push();
            device.ack(&[push.id]);
            d.wait_status(&device.token, "b-1", 2);
            ids.push(push.id);
        }
        let answer = target(&recall_task(&d, &task_id));
        assert_eq!(
            (
                answer["audience"].as_str(),
                answer["result"].as_str(),
                answer["withdrawn"].as_u64(),
                answer["revokeSent"].as_u64(),
                answer["revokeQueued"].as_u64()
            ),
            (Some("broadcast"), Some("recalled"), Some(0), Some(2), Some(0)),
            "{answer}"
        );
        for (device, id) in online.iter_mut().zip(&ids) {
            assert_eq!(next_revoke(device).ids, [*id]);
        }
        // The device that was away never gets the broadcast.
        let mut back = d.device(&away);
        assert_eq!(pushes_and_revokes(&mut back), (vec![], vec![]));
        assert_eq!(target(&recall_task(&d, &task_id))["result"], "already_recalled");
    }
}

#[test]
fn only_messages_of_the_recall_window_can_be_recalled() {
    let d = Daemon::start("epoll", "[delivery]\nrecall_window_secs = 1\n");
    let token = d.device("").token.clone();
    assert_eq!(d.push(&token, "old", 600).0, 200);
    let accepted_at = status(&d, &token, "old")["acceptedAt"].as_u64().unwrap();
    // Wait on the wall clock until the message is out of the window.
    let deadline = Instant::now() + PATIENCE;
    while now_ms() <= accepted_at + 1_100 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = recall(&d, &token, "old");
    assert_eq!(
        (answer.0, code(&answer)),
        (400, "3028".to_string()),
        "{}",
        answer.1
    );
    let reason = answer.1["ResultMessage"].as_str().unwrap();
    assert!(
        reason.contains("INVALID_PARAM") && reason.contains("last 1 s"),
        "{reason}"
    );
    // Nothing changed: the message is still delivered.
    let mut device = d.device(&token);
    assert_eq!(device.recv_push().msg_key, "old");
}

#[test]
fn one_app_cannot_recall_another_apps_message() {
    let shop_secret = test_app_secret("shop");
    let apps = format!("{SIGNED_DEMO_APP}[[apps]]\nappId = \"shop\"\nworkspaceId = \"default\"\napiSecret = \"{shop_secret}\"\n");
    let d = Daemon::start("uring", &apps);
    let token = d.device("").token.clone();
    assert_eq!(d.push(&token, "k1", 600).0, 200);
    // Signed by shop, naming demo's app: refused before anything is read.
    let body =
        json!({"appId": "demo", "workspaceId": "default", "msgKey": "k1", "target": token}).to_string();
    let headers = sign(
        &HmacSigner::new("shop", shop_secret.as_bytes()),
        "POST",
        "/v1/push/recall",
        &body,
    );
    let (status_code, json) = d.http_with("POST", "/v1/push/recall", &headers, &body);
    assert_eq!(
        (status_code, json["ResultCode"].as_str()),
        (403, Some("8014")),
        "{json}"
    );
    // Naming its own app: demo's message is not found there.
    let body =
        json!({"appId": "shop", "workspaceId": "default", "msgKey": "k1", "target": token}).to_string();
    let answer = target(&d.http("POST", "/v1/push/recall", &body));
    assert_eq!(answer["result"], "unknown");
    let body = json!({"appId": "demo", "workspaceId": "default", "taskId": 1}).to_string();
    let headers = sign(
        &HmacSigner::new("shop", shop_secret.as_bytes()),
        "POST",
        "/v1/push/recall-task",
        &body,
    );
    let (status_code, json) = d.http_with("POST", "/v1/push/recall-task", &headers, &body);
    assert_eq!(
        (status_code, json["ResultCode"].as_str()),
        (403, Some("8014")),
        "{json}"
    );
    assert_eq!(status(&d, &token, "k1")["status"], 0, "untouched");
    let mut device = d.device(&token);
    assert_eq!(device.recv_push().msg_key, "k1");
}

#[test]
fn recalls_survive_kill_9() {
    for backend in BACKENDS {
        let dir = Daemon::scratch_dir(&format!("recall-{backend}"));
        let config = format!(
            "io = \"{backend}\"\nshards = 2\n[durability]\ndata_dir = \"{}\"\nfsync = \"always\"\n",
            dir.join("data").display()
        );
        let mut d = Daemon::start_in(&dir, &config);
        let mut reader = d.device("");
        let revoked = delivered(&d, &mut reader, "seen");
        let reader_token = reader.token.clone();
        drop(reader);
        wait_offline(&d, &reader_token);
        assert_eq!(
            target(&recall(&d, &reader_token, "seen"))["result"],
            "revoke_queued"
        );
        let away = d.device("").token.clone();
        assert_eq!(d.push(&away, "unseen", 600).0, 200);
        assert_eq!(target(&recall(&d, &away, "unseen"))["result"], "withdrawn");
        d.kill9();

        let mut d = Daemon::start_in(&dir, &config);
        let data = status(&d, &away, "unseen");
        assert_eq!(
            (data["status"].as_i64(), data["recall"].as_str()),
            (Some(6), Some("withdrawn"))
        );
        let mut back = d.device(&away);
        assert_eq!(
            pushes_and_revokes(&mut back),
            (vec![], vec![]),
            "still never delivered"
        );
        let mut reader = d.device(&reader_token);
        assert_eq!(
            next_revoke(&mut reader).ids,
            [revoked],
            "the owed Revoke survived"
        );
        revoke_ack(&mut reader, &[revoked]);
        wait_recall(&d, &reader_token, "seen", "revoke_confirmed");
        d.kill9();

        let d = Daemon::start_in(&dir, &config);
        assert_eq!(status(&d, &reader_token, "seen")["recall"], "revoke_confirmed");
        let mut reader = d.device(&reader_token);
        assert_eq!(
            pushes_and_revokes(&mut reader),
            (vec![], vec![]),
            "the confirmation survived"
        );
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
