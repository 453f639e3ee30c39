//! Broadcast, group and user pushes, and the device registry through the
//! API, against the real daemon with real device connections: who gets a
//! message when, catch-up after reconnect, bind-triggered delivery, result
//! codes, and state across a restart.

mod common;

use common::{Daemon, Device, BACKENDS};
use ringpush::protocol::{body, Frame};
use serde_json::{json, Value};

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.http("POST", path, &body.to_string())
}

fn code(answer: &(u16, Value)) -> String {
    answer.1["ResultCode"].as_str().unwrap_or_default().to_string()
}

fn broadcast(d: &Daemon, msg_key: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "news",
        "title": "Hello all", "content": "A broadcast", "deliveryType": 1,
        "msgkey": msg_key, "expiredSeconds": 600, "pushStatus": 1, "unBindPeriod": 4,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    post(d, "/v1/push/broadcast", body)
}

fn registry(d: &Daemon, path: &str, token: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"appId": "demo", "workspaceId": "default", "deliveryToken": token});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    post(d, path, body)
}

fn push_to_users(d: &Daemon, targets: Value) -> (u16, Value) {
    post(
        d,
        "/v1/push/simple",
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "to users",
            "title": "Hi", "content": "For you", "deliveryType": 3,
            "targetMsgkey": targets, "expiredSeconds": 600,
        }),
    )
}

/// A device that registered and went away.
fn offline(d: &Daemon) -> String {
    let device = d.device("");
    device.token.clone()
}

#[test]
fn a_broadcast_reaches_online_devices_at_once_and_offline_ones_on_reconnect() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut online: Vec<Device> = (0..3).map(|_| d.device("")).collect();
        let away = offline(&d);
        let answer = broadcast(&d, "b-1", json!({}));
        assert_eq!(answer.0, 200, "{}", answer.1);
        let result = &answer.1["PushResult"];
        let task_id = result["Data"].as_str().unwrap().to_string();
        assert!(!task_id.is_empty());
        assert_eq!(result["Devices"], 4, "{result}");
        for device in &mut online {
            let push = device.recv_push();
            assert_eq!(
                (push.msg_key.as_str(), push.task_id.as_str()),
                ("b-1", task_id.as_str())
            );
            device.ack(&[push.id]);
        }
        // A device registered after the broadcast is not in its audience.
        let mut late = d.device("");
        // The offline device gets it when it comes back.
        let mut back = d.device(&away);
        let push = back.recv_push();
        assert_eq!(push.msg_key, "b-1");
        back.ack(&[push.id]);
        d.wait_status(&away, "b-1", 2);
        assert!(late
            .drain_until_pong()
            .iter()
            .all(|f| !matches!(f, Frame::Push(_))));
        // The same msgKey again is a duplicate, not a second broadcast.
        assert_eq!(broadcast(&d, "b-1", json!({})).1["PushResult"]["Duplicate"], true);
    }
}

#[test]
fn broadcast_filters_and_result_codes() {
    let d = Daemon::start("uring", "");
    let mut bound = d.device("");
    let mut unbound = d.device("");
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            &bound.token,
            json!({"userId": "alice"})
        )),
        "OK"
    );
    let answer = broadcast(&d, "b-bound", json!({"pushStatus": 0, "bindPeriod": 1}));
    assert_eq!(answer.1["PushResult"]["Devices"], 1, "{}", answer.1);
    assert_eq!(bound.recv_push().msg_key, "b-bound");
    let answer = broadcast(&d, "b-unbound", json!({"pushStatus": 2, "unBindPeriod": 4}));
    assert_eq!(answer.1["PushResult"]["Devices"], 1, "{}", answer.1);
    assert_eq!(unbound.recv_push().msg_key, "b-unbound");
    assert_eq!(code(&broadcast(&d, "b", json!({"deliveryType": 3}))), "3030");
    assert_eq!(code(&broadcast(&d, "b", json!({"deliveryType": 5}))), "3009");
    assert_eq!(code(&broadcast(&d, "b", json!({"pushStatus": 7}))), "3028");
    assert_eq!(
        code(&broadcast(&d, "b", json!({"bindPeriod": 9, "pushStatus": 0}))),
        "3028"
    );
    assert_eq!(code(&broadcast(&d, "", json!({}))), "3028");
    assert_eq!(code(&broadcast(&d, "b", json!({"appId": "nope"}))), "8014");
    assert_eq!(code(&broadcast(&d, "b", json!({"expiredSeconds": 0}))), "3020");
    assert_eq!(code(&broadcast(&d, "b", json!({"title": ""}))), "3024");
}

#[test]
fn group_pushes_reach_members_joined_by_frame_or_by_api() {
    let d = Daemon::start("epoll", "");
    let mut by_frame = d.device("");
    by_frame.send(&Frame::JoinGroup(body::Group {
        request_id: 1,
        group: "news".into(),
    }));
    let by_api = offline(&d);
    assert_eq!(
        code(&registry(
            &d,
            "/v1/groups/join",
            &by_api,
            json!({"groupName": "news"})
        )),
        "OK"
    );
    let mut outsider = d.device("");
    let group_push = |key: &str, group: &str| {
        post(
            &d,
            "/v1/push/group",
            json!({
                "appId": "demo", "workspaceId": "default", "taskName": "g",
                "title": "News", "content": "Group message", "groupName": group,
                "msgkey": key, "expiredSeconds": 600,
            }),
        )
    };
    // The device's own join is answered before the push is sent.
    assert!(matches!(by_frame.recv(), Some(Frame::RequestResult(r)) if r.code == 100));
    let answer = group_push("g-1", "news");
    assert_eq!(answer.1["PushResult"]["Devices"], 2, "{}", answer.1);
    assert_eq!(by_frame.recv_push().msg_key, "g-1");
    let mut back = d.device(&by_api);
    assert_eq!(back.recv_push().msg_key, "g-1");
    assert!(outsider
        .drain_until_pong()
        .iter()
        .all(|f| !matches!(f, Frame::Push(_))));
    // Leaving stops the next one; `all` reaches everyone.
    assert_eq!(
        code(&registry(
            &d,
            "/v1/groups/leave",
            &by_api,
            json!({"groupName": "news"})
        )),
        "OK"
    );
    assert_eq!(group_push("g-2", "news").1["PushResult"]["Devices"], 1);
    assert_eq!(group_push("g-3", "all").1["PushResult"]["Devices"], 3);
    assert_eq!(code(&group_push("g-4", "")), "3028");
}

#[test]
fn a_user_push_reaches_bound_devices_and_waits_for_a_bind() {
    let d = Daemon::start("uring", "");
    let mut phone = d.device("");
    phone.send(&Frame::Bind(body::UserBinding {
        request_id: 1,
        user_id: "alice".into(),
    }));
    assert!(matches!(phone.recv(), Some(Frame::RequestResult(r)) if r.code == 100));
    let tablet = offline(&d);
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            &tablet,
            json!({"userId": "alice"})
        )),
        "OK"
    );
    let answer = push_to_users(&d, json!({"alice": "u-1", "bob": "u-2"}));
    assert_eq!(answer.0, 200, "{}", answer.1);
    let targets = answer.1["PushResult"]["Targets"].as_array().unwrap().clone();
    let result_of = |user: &str| {
        targets
            .iter()
            .find(|t| t["target"] == user)
            .map(|t| t["result"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(result_of("alice"), "delivering");
    assert_eq!(result_of("bob"), "NoBindInfo");
    let push = phone.recv_push();
    assert_eq!(push.msg_key, "u-1");
    phone.ack(&[push.id]);
    let status = |user: &str, key: &str| {
        let (code, json) = d.http("GET", &format!("/v1/messages/{key}?userId={user}&appId=demo"), "");
        assert_eq!(code, 200, "{json}");
        json["PushResult"]["Data"]["status"].as_i64().unwrap()
    };
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while status("alice", "u-1") != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's message was never acked"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status("bob", "u-2"), 1, "NoBindInfo");
    assert_eq!(status("carol", "u-9"), 99_999_999);
    // The offline tablet gets alice's message when it connects.
    let mut tablet_conn = d.device(&tablet);
    assert_eq!(tablet_conn.recv_push().msg_key, "u-1");
    // Bob binds a device later: his message, still valid, arrives.
    let mut bobs = d.device("");
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            &bobs.token,
            json!({"userId": "bob"})
        )),
        "OK"
    );
    assert_eq!(bobs.recv_push().msg_key, "u-2");
    // The device query finds both of alice's devices.
    let (_, json) = d.http(
        "GET",
        "/v1/devices?appId=demo&workspaceId=default&userId=alice",
        "",
    );
    let devices = json["PushResult"]["Data"]["devices"].as_array().unwrap().clone();
    assert_eq!(devices.len(), 2, "{json}");
    assert!(devices
        .iter()
        .all(|x| x["userId"] == "alice" && x["online"] == true));
    // Unbinding takes a device out of her pushes.
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/unbind",
            &tablet,
            json!({"userId": "alice"})
        )),
        "OK"
    );
    let answer = push_to_users(&d, json!({"alice": "u-3"}));
    assert_eq!(answer.1["PushResult"]["Targets"][0]["result"], "delivering");
    assert_eq!(phone.recv_push().msg_key, "u-3");
    assert!(tablet_conn
        .drain_until_pong()
        .iter()
        .all(|f| !matches!(f, Frame::Push(p) if p.msg_key == "u-3")));
}

#[test]
fn registry_result_codes_and_the_device_query() {
    let d = Daemon::start("epoll", "");
    let token = offline(&d);
    assert_eq!(code(&registry(&d, "/v1/users/bind", &token, json!({}))), "3012");
    assert_eq!(
        code(&registry(&d, "/v1/users/bind", "", json!({"userId": "a"}))),
        "3001"
    );
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            "no-such-token",
            json!({"userId": "a"})
        )),
        "3054"
    );
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            &token,
            json!({"userId": "x".repeat(61)})
        )),
        "3028"
    );
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            &token,
            json!({"userId": "a", "appId": "nope"})
        )),
        "8014"
    );
    assert_eq!(
        code(&registry(&d, "/v1/users/bind", &token, json!({"userId": 5}))),
        "3028"
    );
    assert_eq!(code(&post(&d, "/v1/users/bind", json!({"userId": "a"}))), "3003");
    assert_eq!(code(&d.http("POST", "/v1/users/bind", "{not json")), "3028");
    assert_eq!(code(&push_to_users(&d, json!({"": "k"}))), "3012");
    let vendor = |channel: u32, vendor_token: &str| {
        code(&registry(
            &d,
            "/v1/devices/vendor-token",
            &token,
            json!({"thirdChannel": channel, "vendorToken": vendor_token}),
        ))
    };
    assert_eq!(vendor(6, "fcm-abc"), "OK");
    assert_eq!(vendor(3, "x"), "3028");
    assert_eq!(vendor(6, ""), "3001");
    assert_eq!(
        code(&registry(
            &d,
            "/v1/groups/join",
            &token,
            json!({"groupName": "news"})
        )),
        "OK"
    );
    let (_, json) = d.http(
        "GET",
        &format!("/v1/devices?appId=demo&workspaceId=default&token={token}"),
        "",
    );
    let device = &json["PushResult"]["Data"]["devices"][0];
    assert_eq!(device["deliveryToken"], token.as_str(), "{json}");
    assert_eq!(
        (device["thirdChannel"].as_u64(), device["vendorToken"].as_str()),
        (Some(6), Some("fcm-abc"))
    );
    assert_eq!(device["groups"], json!(["news"]));
    assert_eq!(device["online"], false);
    assert!(device["lastSeen"].as_u64().unwrap() > 0);
    assert_eq!(
        code(&d.http("GET", "/v1/devices?appId=demo&workspaceId=default", "")),
        "3021"
    );
}

#[test]
fn bindings_groups_and_stored_broadcasts_survive_a_restart() {
    let dir = Daemon::scratch_dir("audiences-restart");
    let config = "io = \"uring\"\nshards = 2\n";
    let mut d = Daemon::start_in(&dir, config);
    let away = offline(&d);
    let user_device = offline(&d);
    assert_eq!(
        code(&registry(
            &d,
            "/v1/users/bind",
            &user_device,
            json!({"userId": "dora"})
        )),
        "OK"
    );
    assert_eq!(
        code(&registry(
            &d,
            "/v1/groups/join",
            &away,
            json!({"groupName": "vip"})
        )),
        "OK"
    );
    assert_eq!(broadcast(&d, "before-restart", json!({})).0, 200);
    assert_eq!(push_to_users(&d, json!({"dora": "for-dora"})).0, 200);
    d.kill9();
    let d = Daemon::start_in(&dir, config);
    let mut back = d.device(&away);
    assert_eq!(back.recv_push().msg_key, "before-restart");
    let mut doras = d.device(&user_device);
    let keys: Vec<String> = [doras.recv_push(), doras.recv_push()]
        .into_iter()
        .map(|p| p.msg_key)
        .collect();
    assert!(
        keys.contains(&"for-dora".to_string()) && keys.contains(&"before-restart".to_string()),
        "{keys:?}"
    );
    let (_, json) = d.http(
        "GET",
        &format!("/v1/devices?appId=demo&workspaceId=default&token={away}"),
        "",
    );
    assert_eq!(json["PushResult"]["Data"]["devices"][0]["groups"], json!(["vip"]));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
