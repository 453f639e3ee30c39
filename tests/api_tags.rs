//! User tags and tag pushes against the real daemon with real device
//! connections: every tag endpoint and its result codes, a tag push to
//! online devices at once and to offline ones on reconnect, a device that
//! binds a tagged user after the push, one app never seeing another's
//! tags, tags and tag pushes across kill -9, and broadcast, group and tag
//! pushes by template.

mod common;

use common::{sign, test_app_secret, Daemon, Device, BACKENDS};
use ringpush::api::auth::HmacSigner;
use ringpush::protocol::Frame;
use serde_json::{json, Value};

/// Two signed apps; demo holds at most 3 tags of at most 5 users.
const TWO_APPS: &str = "[[apps]]\nappId = \"demo\"\nworkspaceId = \"default\"\napiSecret = \"integration-tests-demo-app-secret\"\nmaxTags = 3\nmaxTagUsers = 5\n\n[[apps]]\nappId = \"other\"\nworkspaceId = \"ws\"\napiSecret = \"integration-tests-other-app-secret\"\n";

fn code(answer: &(u16, Value)) -> (u16, String) {
    (
        answer.0,
        answer.1["ResultCode"].as_str().unwrap_or_default().to_string(),
    )
}

fn data(answer: &(u16, Value)) -> &Value {
    assert_eq!(answer.0, 200, "{}", answer.1);
    &answer.1["PushResult"]["Data"]
}

fn create(d: &Daemon, name: &str, users: Value) -> (u16, Value) {
    let body = json!({"appId": "demo", "workspaceId": "default", "tagName": name, "userIds": users});
    d.http("POST", "/v1/tags", &body.to_string())
}

fn tag_path(name: &str, query: &str) -> String {
    let name: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/v1/tags/{name}?appId=demo&workspaceId=default{query}")
}

fn change(d: &Daemon, method: &str, name: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"appId": "demo", "workspaceId": "default"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    d.http(method, &tag_path(name, ""), &body.to_string())
}

fn read(d: &Daemon, name: &str, query: &str) -> (u16, Value) {
    d.http("GET", &tag_path(name, query), "")
}

fn tag_push(d: &Daemon, tag: &str, msg_key: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "campaign",
        "tagName": tag, "msgkey": msg_key, "title": "For you", "content": "Tagged",
        "expiredSeconds": 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    d.http("POST", "/v1/push/tag", &body.to_string())
}

fn bind(d: &Daemon, token: &str, user: &str) {
    let body = json!({"appId": "demo", "workspaceId": "default", "deliveryToken": token, "userId": user});
    let answer = d.http("POST", "/v1/users/bind", &body.to_string());
    assert_eq!(code(&answer), (200, "OK".into()), "{}", answer.1);
}

/// A device bound to `user`, connected.
fn bound_device(d: &Daemon, user: &str) -> Device {
    let device = d.device("");
    bind(d, &device.token, user);
    device
}

/// A device bound to `user` that went away; answers its token.
fn bound_offline(d: &Daemon, user: &str) -> String {
    let token = d.device("").token.clone();
    bind(d, &token, user);
    token
}

fn no_push(device: &mut Device) {
    let frames = device.drain_until_pong();
    assert!(frames.iter().all(|f| !matches!(f, Frame::Push(_))), "{frames:?}");
}

#[test]
fn tag_endpoints_and_their_result_codes() {
    let d = Daemon::start("uring", TWO_APPS);
    // Create: duplicates removed, counted.
    let created = create(&d, "女性 vip", json!(["carol", "alice", "alice"]));
    let tag = data(&created).clone();
    assert_eq!(
        (
            tag["userCount"].as_u64(),
            tag["duplicates"].as_u64(),
            tag["added"].as_u64()
        ),
        (Some(2), Some(1), Some(2)),
        "{tag}"
    );
    assert!(!tag["tagId"].as_str().unwrap().is_empty());
    assert_eq!(code(&create(&d, "女性 vip", json!(["x"]))), (409, "3101".into()));
    assert_eq!(
        code(&create(&d, &"n".repeat(31), json!(["x"]))),
        (400, "3028".into())
    );
    assert_eq!(code(&create(&d, "", json!(["x"]))), (400, "3028".into()));
    assert_eq!(code(&create(&d, "t", json!(["ok", ""]))), (400, "3012".into()));
    let long = create(&d, "t", json!(["ok", "u".repeat(61)]));
    assert_eq!(code(&long), (400, "3028".into()));
    assert!(
        long.1["ResultMessage"].as_str().unwrap().contains("userIds[1]"),
        "{}",
        long.1
    );
    assert_eq!(code(&create(&d, "t", json!([]))), (400, "3021".into()));
    assert_eq!(code(&create(&d, "t", json!(null))), (400, "3021".into()));
    assert_eq!(
        code(&create(&d, "t", json!("a,b,c,d,e,f"))),
        (400, "3028".into()),
        "maxTagUsers"
    );
    assert_eq!(code(&d.http("POST", "/v1/tags", "{nope")), (400, "3028".into()));
    assert_eq!(
        code(&d.http(
            "POST",
            "/v1/tags",
            &json!({"tagName": "t", "userIds": ["a"]}).to_string()
        )),
        (400, "3003".into())
    );
    // Comma and newline text, as the console takes it.
    let text = create(&d, "text", json!("dave, erin\nfrank\n"));
    assert_eq!(data(&text)["userCount"], 3);
    assert_eq!(code(&create(&d, "third", json!(["x"]))), (200, "OK".into()));
    assert_eq!(
        code(&create(&d, "fourth", json!(["x"]))),
        (409, "3103".into()),
        "maxTags"
    );
    assert!(d
        .metrics()
        .contains("ringpush_tag_limit_hits_total{app=\"demo\",limit=\"tags\"} 1"));
    assert!(d.metrics().contains("ringpush_tags{app=\"demo\"} 3"));

    // List: newest first.
    let list = d.http("GET", "/v1/tags?appId=demo&workspaceId=default&pageSize=2", "");
    let names: Vec<&str> = data(&list)["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tagName"].as_str().unwrap())
        .collect();
    assert_eq!(
        (data(&list)["total"].as_u64(), names),
        (Some(3), vec!["third", "text"])
    );
    assert_eq!(
        code(&d.http("GET", "/v1/tags?appId=demo&workspaceId=default&pageSize=501", "")),
        (400, "3028".into())
    );

    // Read a page of userIds, in byte order.
    let page = read(&d, "text", "&pageSize=2&pageNumber=2");
    assert_eq!(data(&page)["userIds"], json!(["frank"]));
    assert_eq!(data(&page)["userCount"], 3);
    assert_eq!(code(&read(&d, "nope", "")), (404, "3102".into()));

    // Add and remove, then replace, then rename.
    let patched = change(
        &d,
        "PATCH",
        "text",
        json!({"addUserIds": ["gina", "dave"], "removeUserIds": "erin"}),
    );
    let patched = data(&patched);
    assert_eq!(
        (patched["added"].as_u64(), patched["removed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        data(&read(&d, "text", ""))["userIds"],
        json!(["dave", "frank", "gina"])
    );
    assert_eq!(
        code(&change(
            &d,
            "PATCH",
            "text",
            json!({"addUserIds": ["h", "i", "j"]})
        )),
        (400, "3028".into()),
        "past maxTagUsers"
    );
    assert_eq!(
        code(&change(&d, "PATCH", "text", json!({}))),
        (400, "3028".into())
    );
    assert_eq!(
        code(&change(&d, "PATCH", "nope", json!({"addUserIds": ["a"]}))),
        (404, "3102".into())
    );
    let replaced = change(&d, "PUT", "text", json!({"userIds": ["zoe"]}));
    assert_eq!(data(&replaced)["userCount"], 1);
    assert_eq!(data(&read(&d, "text", ""))["userIds"], json!(["zoe"]));
    assert_eq!(
        code(&change(&d, "PUT", "text", json!({"userIds": []}))),
        (400, "3021".into())
    );
    assert_eq!(code(&change(&d, "PUT", "text", json!({}))), (400, "3028".into()));
    assert_eq!(
        code(&change(&d, "PUT", "text", json!({"newTagName": "third"}))),
        (409, "3101".into())
    );
    assert_eq!(
        code(&change(&d, "PUT", "text", json!({"tagName": "other"}))),
        (400, "3028".into()),
        "renaming is newTagName"
    );
    let renamed = change(&d, "PUT", "text", json!({"newTagName": "renamed"}));
    assert_eq!(data(&renamed)["tagId"], data(&text)["tagId"], "same tag");
    assert_eq!(code(&read(&d, "text", "")), (404, "3102".into()));
    assert_eq!(data(&read(&d, "renamed", ""))["userIds"], json!(["zoe"]));

    // Delete.
    let deleted = d.http("DELETE", &tag_path("renamed", ""), "");
    assert_eq!(data(&deleted)["tagName"], "renamed");
    assert_eq!(
        code(&d.http("DELETE", &tag_path("renamed", ""), "")),
        (404, "3102".into())
    );
    assert!(d.metrics().contains("ringpush_tags{app=\"demo\"} 2"));
}

#[test]
fn one_app_never_sees_another_apps_tags() {
    let d = Daemon::start("uring", TWO_APPS);
    assert_eq!(code(&create(&d, "vip", json!(["alice"]))), (200, "OK".into()));
    let other = json!({"appId": "other", "workspaceId": "ws", "tagName": "vip", "userIds": ["bob"]});
    assert_eq!(
        code(&d.http("POST", "/v1/tags", &other.to_string())),
        (200, "OK".into()),
        "the same name in another app"
    );
    let read_other = d.http("GET", "/v1/tags/vip?appId=other&workspaceId=ws", "");
    assert_eq!(data(&read_other)["userIds"], json!(["bob"]));
    // Demo's key asking for other's tags.
    let demo = HmacSigner::new("demo", test_app_secret("demo").as_bytes());
    for (method, path, body) in [
        ("GET", "/v1/tags/vip?appId=other&workspaceId=ws", String::new()),
        ("GET", "/v1/tags?appId=other&workspaceId=ws", String::new()),
        ("DELETE", "/v1/tags/vip?appId=other&workspaceId=ws", String::new()),
        ("POST", "/v1/tags", other.to_string()),
        (
            "PATCH",
            "/v1/tags/vip",
            json!({"appId": "other", "workspaceId": "ws", "addUserIds": ["x"]}).to_string(),
        ),
        (
            "POST",
            "/v1/push/tag",
            json!({"appId": "other", "workspaceId": "ws", "taskName": "t", "tagName": "vip",
                   "msgkey": "k", "title": "a", "content": "b", "expiredSeconds": 60})
            .to_string(),
        ),
    ] {
        let answer = d.http_with(method, path, &sign(&demo, method, path, &body), &body);
        assert_eq!(
            code(&answer),
            (403, "8014".into()),
            "{method} {path}: {}",
            answer.1
        );
    }
    assert_eq!(
        code(&d.http("GET", "/v1/tags/vip?appId=other&workspaceId=default", "")),
        (403, "3007".into())
    );
    // Demo's alice is not other's: a push to other's tag never reaches her.
    let mut alice = bound_device(&d, "alice");
    let mut other_bob = Device::connect_app(d.device, "other", "");
    let body =
        json!({"appId": "other", "workspaceId": "ws", "deliveryToken": other_bob.token, "userId": "alice"});
    assert_eq!(
        code(&d.http("POST", "/v1/users/bind", &body.to_string())),
        (200, "OK".into())
    );
    let push = json!({"appId": "other", "workspaceId": "ws", "taskName": "t", "tagName": "vip",
                      "msgkey": "k", "title": "a", "content": "b", "expiredSeconds": 60});
    let answer = d.http("POST", "/v1/push/tag", &push.to_string());
    assert_eq!(
        answer.1["PushResult"]["Devices"], 0,
        "other's tag holds bob only: {}",
        answer.1
    );
    no_push(&mut alice);
    no_push(&mut other_bob);
}

#[test]
fn a_tag_push_reaches_tagged_users_online_at_once_and_offline_on_reconnect() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut alice = bound_device(&d, "alice");
        let mut bob = bound_device(&d, "bob");
        let carol = bound_offline(&d, "carol");
        let mut unbound = d.device("");
        assert_eq!(
            code(&create(&d, "vip", json!(["alice", "carol", "dave"]))),
            (200, "OK".into())
        );
        let answer = tag_push(&d, "vip", "t-1", json!({}));
        assert_eq!(answer.0, 200, "{}", answer.1);
        let result = &answer.1["PushResult"];
        let task_id = result["Data"].as_str().unwrap().to_string();
        assert!(!task_id.is_empty());
        assert_eq!(
            (
                result["Devices"].as_u64(),
                result["Online"].as_u64(),
                result["Users"].as_u64()
            ),
            (Some(2), Some(1), Some(3)),
            "{result}"
        );
        let push = alice.recv_push();
        assert_eq!(
            (push.msg_key.as_str(), push.task_id.as_str()),
            ("t-1", task_id.as_str())
        );
        alice.ack(&[push.id]);
        d.wait_status(&alice.token, "t-1", 2);
        no_push(&mut bob);
        no_push(&mut unbound);
        // Carol comes back: caught up.
        let mut back = d.device(&carol);
        let push = back.recv_push();
        assert_eq!(push.msg_key, "t-1");
        back.ack(&[push.id]);
        d.wait_status(&carol, "t-1", 2);
        // A device that binds dave after the push gets it at once.
        let mut dave = d.device("");
        bind(&d, &dave.token, "dave");
        assert_eq!(dave.recv_push().msg_key, "t-1");
        // The audience was the tag at push time: a user added afterwards
        // does not get it, but the next push reaches them.
        let patched = change(&d, "PATCH", "vip", json!({"addUserIds": ["bob"]}));
        assert_eq!(patched.0, 200, "{}", patched.1);
        no_push(&mut bob);
        assert_eq!(
            tag_push(&d, "vip", "t-2", json!({})).1["PushResult"]["Devices"],
            4
        );
        assert_eq!(bob.recv_push().msg_key, "t-2");
        // The same msgKey again is a duplicate; codes of a bad push.
        assert_eq!(
            tag_push(&d, "vip", "t-1", json!({})).1["PushResult"]["Duplicate"],
            true
        );
        assert_eq!(
            code(&tag_push(&d, "nope", "t-3", json!({}))),
            (404, "3102".into())
        );
        assert_eq!(code(&tag_push(&d, "", "t-3", json!({}))), (400, "3028".into()));
        assert_eq!(code(&tag_push(&d, "vip", "", json!({}))), (400, "3028".into()));
        assert_eq!(
            code(&tag_push(&d, "vip", "t-3", json!({"title": ""}))),
            (400, "3024".into())
        );
        assert_eq!(
            code(&tag_push(&d, "vip", "t-3", json!({"expiredSeconds": 0}))),
            (400, "3020".into())
        );
        assert_eq!(
            code(&tag_push(&d, "vip", "t-3", json!({"taskName": ""}))),
            (400, "3019".into())
        );
        assert_eq!(
            code(&tag_push(&d, "vip", "t-3", json!({"content": "x".repeat(3000)}))),
            (400, "3050".into())
        );
    }
}

#[test]
fn tags_and_tag_pushes_survive_kill_9() {
    let dir = Daemon::scratch_dir("tags-kill9");
    let config = "io = \"uring\"\nshards = 2\n";
    let carol;
    {
        let mut d = Daemon::start_in(&dir, config);
        carol = bound_offline(&d, "carol");
        assert_eq!(
            code(&create(&d, "vip", json!(["carol", "dave"]))),
            (200, "OK".into())
        );
        assert_eq!(tag_push(&d, "vip", "t-1", json!({})).0, 200);
        d.kill9();
    }
    let d = Daemon::start_in(&dir, config);
    assert_eq!(data(&read(&d, "vip", ""))["userIds"], json!(["carol", "dave"]));
    let mut back = d.device(&carol);
    assert_eq!(
        back.recv_push().msg_key,
        "t-1",
        "the offline device's catch-up survived"
    );
    let mut dave = d.device("");
    bind(&d, &dave.token, "dave");
    assert_eq!(dave.recv_push().msg_key, "t-1", "so did the tag's audience");
    assert_eq!(
        tag_push(&d, "vip", "t-1", json!({})).1["PushResult"]["Duplicate"],
        true
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broadcast_group_and_tag_pushes_by_template() {
    let d = Daemon::start("uring", "");
    let mut alice = bound_device(&d, "alice");
    let join =
        json!({"appId": "demo", "workspaceId": "default", "deliveryToken": alice.token, "groupName": "news"});
    assert_eq!(
        code(&d.http("POST", "/v1/groups/join", &join.to_string())),
        (200, "OK".into())
    );
    let template = json!({
        "appId": "demo", "workspaceId": "default", "templateName": "prize",
        "title": "Hi #name#", "content": "#name#, you won #money#",
    });
    assert_eq!(
        code(&d.http("POST", "/v1/templates", &template.to_string())),
        (200, "OK".into())
    );
    assert_eq!(code(&create(&d, "vip", json!(["alice"]))), (200, "OK".into()));
    let by_template = json!({
        "title": null, "content": null, "templateName": "prize",
        "templateKeyValue": {"name": "Ann", "money": "5"},
    });
    let cases = [
        (
            "/v1/push/broadcast",
            json!({"deliveryType": 1, "pushStatus": 1, "unBindPeriod": 4}),
        ),
        ("/v1/push/group", json!({"groupName": "news"})),
        ("/v1/push/tag", json!({"tagName": "vip"})),
    ];
    for (i, (path, audience)) in cases.iter().enumerate() {
        let mut body = json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t",
            "msgkey": format!("tpl-{i}"), "expiredSeconds": 600,
        });
        for part in [audience, &by_template] {
            for (k, v) in part.as_object().unwrap() {
                body[k] = v.clone();
            }
        }
        let answer = d.http("POST", path, &body.to_string());
        assert_eq!(answer.0, 200, "{path}: {}", answer.1);
        let push = alice.recv_push();
        assert_eq!(
            (push.title.as_str(), push.content.as_str()),
            ("Hi Ann", "Ann, you won 5"),
            "{path}"
        );
        alice.ack(&[push.id]);
        let mut missing = body.clone();
        missing["msgkey"] = json!("again");
        missing["templateKeyValue"] = json!({"name": "Ann"});
        assert_eq!(
            code(&d.http("POST", path, &missing.to_string())),
            (400, "3023".into()),
            "{path}"
        );
        missing["templateName"] = json!("nope");
        assert_eq!(
            code(&d.http("POST", path, &missing.to_string())),
            (404, "3022".into()),
            "{path}"
        );
        missing["templateName"] = json!("prize");
        missing["title"] = json!("literal");
        assert_eq!(
            code(&d.http("POST", path, &missing.to_string())),
            (400, "3028".into()),
            "{path}"
        );
    }
}
