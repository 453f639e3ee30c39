//! Templates, template push and multiple push on the real daemon: template
//! management and every result code over HTTP, real devices receiving
//! rendered messages (title, content, uri, extended params, task id),
//! templates surviving a restart, a damaged template file stopping the
//! start, and apps that cannot see each other's templates.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{Daemon, Device, PATIENCE};
use serde_json::{json, Value};

/// Two apps with the secrets the HTTP helpers sign with; `demo` may hold 3
/// templates.
const APPS: &str = "[[apps]]\nappId = \"demo\"\nworkspaceId = \"default\"\nmaxTemplates = 3\n\
                    apiSecret = \"integration-tests-demo-app-secret\"\n\
                    [[apps]]\nappId = \"other\"\nworkspaceId = \"ws2\"\n\
                    apiSecret = \"integration-tests-other-app-secret\"\n";

fn start(backend: &str) -> Daemon {
    Daemon::start(backend, APPS)
}

fn code(answer: &(u16, Value)) -> String {
    answer.1["ResultCode"].as_str().unwrap_or_default().to_string()
}

/// `value` merged over `base`; a null removes the key.
fn merged(mut base: Value, value: &Value) -> Value {
    for (k, v) in value.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn prize(extra: Value) -> Value {
    merged(
        json!({
            "appId": "demo", "workspaceId": "default", "templateName": "prize",
            "templateDesc": "prize notice", "title": "Congrats #name#",
            "content": "#name#, you won #money# yuan", "uri": "app://prize/#money#?ref=push##top",
            "pushStyle": 1, "pushAction": 1,
        }),
        &extra,
    )
}

fn create(d: &Daemon, body: Value) -> (u16, Value) {
    d.http("POST", "/v1/templates", &body.to_string())
}

fn template_push(d: &Daemon, extra: Value) -> (u16, Value) {
    let body = merged(
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t",
            "templateName": "prize", "templateKeyValue": {"name": "Ann", "money": "200"},
            "deliveryType": 1, "targetMsgkey": {"tok": "k"}, "expiredSeconds": 300,
        }),
        &extra,
    );
    d.http("POST", "/v1/push/template", &body.to_string())
}

fn multiple_push(d: &Daemon, extra: Value) -> (u16, Value) {
    let body = merged(
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "batch",
            "templateName": "prize", "deliveryType": 1, "expiredSeconds": 300,
            "targetMsgs": [{"target": "tok", "msgKey": "k", "templateKeyValue": {"name": "A", "money": "1"}}],
        }),
        &extra,
    );
    d.http("POST", "/v1/push/multiple", &body.to_string())
}

/// A percent-encoded path segment.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn template_path(name: &str, app: &str, workspace: &str) -> String {
    format!(
        "/v1/templates/{}?appId={app}&workspaceId={workspace}",
        segment(name)
    )
}

/// Polls the status of app demo's message until it is `want`.
fn wait_status(d: &Daemon, token: &str, msg_key: &str, want: i64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let path = format!("/v1/messages/{msg_key}?target={token}&appId=demo");
        let (status, answer) = d.http("GET", &path, "");
        assert_eq!(status, 200, "{answer}");
        let got = answer["PushResult"]["Data"]["status"].as_i64().unwrap();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status of {msg_key} stayed {got}, wanted {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A POST whose body may be any bytes.
fn post_bytes(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading all of a large body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (status, json)
}

#[test]
fn template_management_and_its_result_codes() {
    let d = start("epoll");
    let (status, answer) = create(&d, prize(json!({})));
    assert_eq!(
        (status, code(&(status, answer.clone()))),
        (200, "OK".into()),
        "{answer}"
    );
    let data = &answer["PushResult"]["Data"];
    assert_eq!(data["templateName"], "prize");
    assert_eq!(data["placeholders"], json!(["name", "money"]));
    assert_eq!(data["pushStyle"], 1);
    let created_at = data["createdAt"].as_u64().unwrap();
    assert_eq!(data["updatedAt"].as_u64(), Some(created_at));

    // Read, by a name that needs percent-encoding too.
    assert_eq!(
        code(&create(&d, prize(json!({"templateName": "测试模板"})))),
        "OK"
    );
    let (status, answer) = d.http("GET", &template_path("测试模板", "demo", "default"), "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["PushResult"]["Data"]["templateName"], "测试模板");

    // Update keeps createdAt; a rename is refused.
    let update = prize(json!({"title": "Well done #name#", "templateName": null}));
    let (status, answer) = d.http(
        "PUT",
        &template_path("prize", "demo", "default"),
        &update.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    let data = &answer["PushResult"]["Data"];
    assert_eq!(data["title"], "Well done #name#");
    assert_eq!(data["createdAt"].as_u64(), Some(created_at));
    let renamed = prize(json!({"templateName": "other_name"}));
    let answer = d.http(
        "PUT",
        &template_path("prize", "demo", "default"),
        &renamed.to_string(),
    );
    assert_eq!((answer.0, code(&answer)), (400, "3028".into()));

    // List: newest first (then by name), paged.
    let (status, answer) = d.http("GET", "/v1/templates?appId=demo&workspaceId=default", "");
    assert_eq!(status, 200);
    let data = &answer["PushResult"]["Data"];
    assert_eq!(data["total"], 2);
    let listed: Vec<(u64, &str)> = data["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["createdAt"].as_u64().unwrap(),
                t["templateName"].as_str().unwrap(),
            )
        })
        .collect();
    let mut names: Vec<&str> = listed.iter().map(|(_, n)| *n).collect();
    names.sort_unstable();
    assert_eq!(names, ["prize", "测试模板"]);
    assert!(
        listed[0].0 > listed[1].0 || (listed[0].0 == listed[1].0 && listed[0].1 < listed[1].1),
        "{listed:?}"
    );
    let answer = d.http(
        "GET",
        "/v1/templates?appId=demo&workspaceId=default&pageSize=1&pageNumber=2",
        "",
    );
    assert_eq!(
        answer.1["PushResult"]["Data"]["templates"][0]["templateName"],
        listed[1].1
    );
    let answer = d.http(
        "GET",
        "/v1/templates?appId=demo&workspaceId=default&pageSize=501",
        "",
    );
    assert_eq!(code(&answer), "3028");

    // Every refusal of a create, with its HTTP status.
    let cases: Vec<(Value, &str, u16)> = vec![
        (json!({"templateName": null}), "3037", 400),
        (json!({"templateName": ""}), "3037", 400),
        (json!({"templateName": "a,b"}), "3038", 400),
        (json!({"templateName": "x".repeat(201)}), "3038", 400),
        (json!({"content": "50# off"}), "3039", 400),
        (json!({"content": null}), "3039", 400),
        (json!({"title": "#unclosed"}), "3040", 400),
        (json!({"title": ""}), "3040", 400),
        (json!({"templateDesc": "d".repeat(201)}), "3041", 400),
        (json!({"uri": "https://x/a b"}), "3042", 400),
        (json!({"uri": "https://x/#frag"}), "3042", 400),
        (json!({"templateName": "prize"}), "3036", 409),
        (json!({"pushStyle": 9}), "3028", 400),
        (json!({"appId": null}), "3003", 400),
        (json!({"workspaceId": "ws2"}), "3007", 403),
    ];
    for (change, want, status) in cases {
        let answer = create(&d, prize(change.clone()));
        assert_eq!(
            (code(&answer), answer.0),
            (want.to_string(), status),
            "{change} -> {}",
            answer.1
        );
        assert!(answer.1["ResultMessage"].as_str().unwrap().len() > 10);
    }
    let answer = post_bytes(d.api, "/v1/templates", &[0xff, 0xfe]);
    assert_eq!((answer.0, code(&answer)), (400, "3031".into()));
    let answer = post_bytes(d.api, "/v1/templates", b"{nope");
    assert_eq!((answer.0, code(&answer)), (400, "3028".into()));

    // maxTemplates = 3 for demo.
    assert_eq!(code(&create(&d, prize(json!({"templateName": "third"})))), "OK");
    let answer = create(&d, prize(json!({"templateName": "fourth"})));
    assert_eq!((answer.0, code(&answer)), (409, "3056".into()));

    // Missing templates: 404 and 3022 on read, update and delete.
    let missing = template_path("nope", "demo", "default");
    for (method, body) in [
        ("GET", String::new()),
        ("PUT", prize(json!({"templateName": null})).to_string()),
        ("DELETE", String::new()),
    ] {
        let answer = d.http(method, &missing, &body);
        assert_eq!((answer.0, code(&answer)), (404, "3022".into()), "{method}");
    }
    let answer = d.http("GET", "/v1/templates/prize?appId=demo", "");
    assert_eq!(code(&answer), "3003");

    // Delete answers with what it deleted; the slot is free again.
    let answer = d.http("DELETE", &template_path("third", "demo", "default"), "");
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["PushResult"]["Data"]["templateName"], "third");
    assert_eq!(
        code(&d.http("GET", &template_path("third", "demo", "default"), "")),
        "3022"
    );
    assert_eq!(code(&create(&d, prize(json!({"templateName": "fourth"})))), "OK");

    let metrics = d.metrics();
    assert!(
        metrics.contains("ringpush_templates{app=\"demo\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringpush_templates{app=\"other\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_template_push_reaches_the_device_rendered() {
    let d = start("uring");
    assert_eq!(code(&create(&d, prize(json!({})))), "OK");
    let mut dev = d.device("");
    let token = dev.token.clone();
    let answer = template_push(
        &d,
        json!({
            "targetMsgkey": {token.as_str(): "t-1"},
            "templateKeyValue": "{\"name\":\"Ann\",\"money\":200,\"unused\":\"x\"}",
            "extendedParams": {"orderId": "42"},
        }),
    );
    assert_eq!(answer.0, 200, "{}", answer.1);
    let result = &answer.1["PushResult"];
    assert_eq!(result["Data"], "", "no task id for a template push");
    assert_eq!(result["Targets"][0]["result"], "delivering");
    let push = dev.recv_push();
    assert_eq!(push.title, "Congrats Ann");
    assert_eq!(push.content, "Ann, you won 200 yuan");
    assert_eq!(push.uri, "app://prize/200?ref=push#top");
    assert_eq!((push.push_style, push.action), (1, 1));
    assert_eq!(push.extended_params["orderId"], "42");
    assert_eq!((push.msg_key.as_str(), push.task_id.as_str()), ("t-1", ""));
    dev.ack(&[push.id]);
    wait_status(&d, &token, "t-1", 2);

    let device = |t: &str| json!({"targetMsgkey": {t: "k2"}});
    let cases: Vec<(Value, &str, u16)> = vec![
        (json!({"templateName": null}), "3025", 400),
        (json!({"templateName": "nope"}), "3022", 404),
        (json!({"templateKeyValue": {"name": "Ann"}}), "3023", 400),
        (json!({"templateKeyValue": null}), "3023", 400),
        (
            json!({"templateKeyValue": {"name": "n".repeat(1200), "money": "1"}}),
            "3043",
            400,
        ),
        (json!({"extendedParams": {"silent": "1"}}), "3044", 400),
        (json!({"targetMsgkey": {}}), "3021", 400),
        (json!({"expiredSeconds": 259_201}), "3026", 400),
        (json!({"taskName": ""}), "3019", 400),
        (json!({"appId": "other", "workspaceId": "ws2"}), "3022", 404),
    ];
    for (change, want, status) in cases {
        let mut overrides = device(&token);
        for (k, v) in change.as_object().unwrap() {
            overrides[k] = v.clone();
        }
        let answer = template_push(&d, overrides);
        assert_eq!(
            (code(&answer), answer.0),
            (want.to_string(), status),
            "{change} -> {}",
            answer.1
        );
    }
    let answer = template_push(
        &d,
        merged(device(&token), &json!({"templateKeyValue": {"name": "Ann"}})),
    );
    let reason = answer.1["ResultMessage"].as_str().unwrap();
    assert!(
        reason.contains("money") && reason.starts_with("TEMPLATEKV_NOT_ENOUGH"),
        "{reason}"
    );
    assert!(dev
        .drain_until_pong()
        .iter()
        .all(|f| !matches!(f, ringpush::protocol::Frame::Push(_))));
}

#[test]
fn a_multiple_push_personalises_each_target_under_one_task() {
    let d = start("epoll");
    assert_eq!(code(&create(&d, prize(json!({})))), "OK");
    let mut online: Vec<Device> = (0..2).map(|_| d.device("")).collect();
    let offline = d.device("").token.clone();
    let targets = json!([
        {"target": online[0].token, "msgKey": "m-0", "templateKeyValue": {"name": "Ann", "money": "10"},
         "extendedParams": {"seat": "1A"}},
        {"target": online[1].token, "msgKey": "m-1", "templateKeyValue": "{\"name\":\"Bob\",\"money\":\"20\"}"},
        {"target": offline, "msgKey": "m-2", "templateKeyValue": {"name": "Cy", "money": "30"}},
        {"target": "no-such-device", "msgKey": "m-3", "templateKeyValue": {"name": "Di", "money": "40"}},
    ]);
    let answer = multiple_push(
        &d,
        json!({"targetMsgs": targets.to_string(), "extendedParams": {"campaign": "spring", "seat": "any"}}),
    );
    assert_eq!(answer.0, 200, "{}", answer.1);
    let result = &answer.1["PushResult"];
    let task_id = result["Data"].as_str().unwrap().to_string();
    assert!(task_id.parse::<u64>().is_ok(), "{result}");
    let outcomes: Vec<&str> = result["Targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["result"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivering", "delivering", "queued", "3054"]);
    let expected = [("Ann", "10", "1A"), ("Bob", "20", "any")];
    for (dev, (name, money, seat)) in online.iter_mut().zip(expected) {
        let push = dev.recv_push();
        assert_eq!(push.title, format!("Congrats {name}"));
        assert_eq!(push.content, format!("{name}, you won {money} yuan"));
        assert_eq!(push.task_id, task_id);
        assert_eq!(push.extended_params["seat"], seat);
        assert_eq!(push.extended_params["campaign"], "spring");
        dev.ack(&[push.id]);
    }
    let mut back = d.device(&offline);
    let push = back.recv_push();
    assert_eq!(
        (push.content.as_str(), push.task_id.as_str()),
        ("Cy, you won 30 yuan", task_id.as_str())
    );
    back.ack(&[push.id]);
    wait_status(&d, &offline, "m-2", 2);

    // A second task gets its own id.
    let again = multiple_push(
        &d,
        json!({"targetMsgs": [{"target": online[0].token, "msgKey": "m-4", "templateKeyValue": {"name": "A", "money": "1"}}]}),
    );
    assert_eq!(again.0, 200, "{}", again.1);
    assert_ne!(again.1["PushResult"]["Data"], task_id.as_str());

    let target = |i: usize| json!({"target": format!("t{i}"), "msgKey": format!("k{i}"), "templateKeyValue": {"name": "A", "money": "1"}});
    let ten: serde_json::Map<String, Value> = (0..10).map(|i| (format!("p{i}"), json!("v"))).collect();
    let one = |extra: Value| json!([merged(target(0), &extra)]);
    let cases: Vec<(Value, &str, u16)> = vec![
        (
            json!({"targetMsgs": (0..101).map(target).collect::<Vec<_>>()}),
            "3055",
            400,
        ),
        (json!({"targetMsgs": []}), "3021", 400),
        (json!({"targetMsgs": null}), "3021", 400),
        (
            json!({"targetMsgs": one(json!({"extendedParams": ten}))}),
            "3049",
            400,
        ),
        (
            json!({"targetMsgs": one(json!({"extendedParams": {"taskId": "x"}}))}),
            "3044",
            400,
        ),
        (
            json!({"targetMsgs": one(json!({"templateKeyValue": {"name": "A"}}))}),
            "3023",
            400,
        ),
        (
            json!({"targetMsgs": one(json!({"templateKeyValue": {"name": "n".repeat(1200), "money": "1"}}))}),
            "3050",
            400,
        ),
        (json!({"targetMsgs": one(json!({"target": ""}))}), "3001", 400),
        (json!({"targetMsgs": one(json!({"msgKey": null}))}), "3028", 400),
        (json!({"templateName": null}), "3025", 400),
        (json!({"templateName": "nope"}), "3022", 404),
        (json!({"deliveryType": 4}), "3009", 400),
        (json!({"expiredSeconds": null}), "3020", 400),
    ];
    for (change, want, status) in cases {
        let answer = multiple_push(&d, change.clone());
        assert_eq!(
            (code(&answer), answer.0),
            (want.to_string(), status),
            "{change} -> {}",
            answer.1
        );
    }
    let answer = multiple_push(
        &d,
        json!({"targetMsgs": one(json!({"templateKeyValue": {"name": "A"}}))}),
    );
    let reason = answer.1["ResultMessage"].as_str().unwrap();
    assert!(
        reason.contains("targetMsgs[0]") && reason.contains("money"),
        "{reason}"
    );
    // 100 targets with room to spare fit the multiple push's larger body
    // limit; past it, 413.
    let big = json!({"targetMsgs": (0..100).map(|i| merged(target(i), &json!({"templateKeyValue": {"name": "n".repeat(900), "money": "1"}}))).collect::<Vec<_>>()});
    let answer = multiple_push(&d, big);
    assert_eq!(
        code(&answer),
        "3054",
        "parsed and routed: {}",
        answer.1["ResultMessage"]
    );
    let huge = format!("{{\"targetMsgs\": \"{}\"}}", "x".repeat(300 * 1024));
    let answer = post_bytes(d.api, "/v1/push/multiple", huge.as_bytes());
    assert_eq!((answer.0, code(&answer)), (413, "3050".into()));
}

#[test]
fn multiple_and_template_pushes_reach_users() {
    let d = start("uring");
    assert_eq!(code(&create(&d, prize(json!({})))), "OK");
    let mut dev = d.device("");
    let bind =
        json!({"appId": "demo", "workspaceId": "default", "deliveryToken": dev.token, "userId": "alice"});
    assert_eq!(code(&d.http("POST", "/v1/users/bind", &bind.to_string())), "OK");
    let answer = multiple_push(
        &d,
        json!({"deliveryType": 3, "targetMsgs": [
            {"target": "alice", "msgKey": "u-1", "templateKeyValue": {"name": "Alice", "money": "5"}},
            {"target": "nobody", "msgKey": "u-2", "templateKeyValue": {"name": "N", "money": "0"}},
        ]}),
    );
    assert_eq!(answer.0, 200, "{}", answer.1);
    let task_id = answer.1["PushResult"]["Data"].as_str().unwrap().to_string();
    let outcomes: Vec<&str> = answer.1["PushResult"]["Targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["result"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivering", "NoBindInfo"]);
    let push = dev.recv_push();
    assert_eq!(
        (push.title.as_str(), push.task_id.as_str()),
        ("Congrats Alice", task_id.as_str())
    );
    dev.ack(&[push.id]);
    let answer = template_push(&d, json!({"deliveryType": 3, "targetMsgkey": {"alice": "u-3"}}));
    assert_eq!(answer.0, 200, "{}", answer.1);
    let push = dev.recv_push();
    assert_eq!((push.title.as_str(), push.task_id.as_str()), ("Congrats Ann", ""));
}

#[test]
fn templates_survive_a_restart() {
    let dir = Daemon::scratch_dir("templates-restart");
    let config = format!(
        "io = \"epoll\"\nshards = 2\n{APPS}[durability]\ndata_dir = \"{}\"\nfsync = \"always\"\n",
        dir.join("data").display()
    );
    let mut d = Daemon::start_in(&dir, &config);
    assert_eq!(code(&create(&d, prize(json!({})))), "OK");
    assert_eq!(code(&create(&d, prize(json!({"templateName": "gone"})))), "OK");
    let other = prize(json!({"appId": "other", "workspaceId": "ws2", "title": "Other #name#"}));
    assert_eq!(code(&create(&d, other)), "OK");
    let update = prize(json!({"content": "#name#: #money# after the restart"}));
    assert_eq!(
        code(&d.http(
            "PUT",
            &template_path("prize", "demo", "default"),
            &update.to_string()
        )),
        "OK"
    );
    assert_eq!(
        code(&d.http("DELETE", &template_path("gone", "demo", "default"), "")),
        "OK"
    );
    let before =
        d.http("GET", &template_path("prize", "demo", "default"), "").1["PushResult"]["Data"].clone();
    // Every 200 above was on disk before it was sent.
    d.kill9();

    let d = Daemon::start_in(&dir, &config);
    let after = d.http("GET", &template_path("prize", "demo", "default"), "").1["PushResult"]["Data"].clone();
    assert_eq!(after, before);
    assert_eq!(
        code(&d.http("GET", &template_path("gone", "demo", "default"), "")),
        "3022"
    );
    let other = d.http("GET", &template_path("prize", "other", "ws2"), "");
    assert_eq!(other.1["PushResult"]["Data"]["title"], "Other #name#");
    let mut dev = d.device("");
    let answer = template_push(&d, json!({"targetMsgkey": {dev.token.as_str(): "after"}}));
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(dev.recv_push().content, "Ann: 200 after the restart");
    assert!(d.metrics().contains("ringpush_templates{app=\"demo\"} 1"));
    drop(d);

    // A damaged file stops the start and is named.
    let file = dir.join("data").join("templates").join("demo.json");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let err = Daemon::try_start_in(&dir, &config)
        .err()
        .expect("the start is refused");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.contains("damaged template file") && err.contains("checksum"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn apps_cannot_see_each_others_templates() {
    let d = start("uring");
    assert_eq!(code(&create(&d, prize(json!({"templateName": "secret"})))), "OK");
    let as_other = |name: &str| template_path(name, "other", "ws2");
    // Read, update, delete and list from app B see nothing of app A's.
    assert_eq!(code(&d.http("GET", &as_other("secret"), "")), "3022");
    let update = prize(json!({"appId": "other", "workspaceId": "ws2", "templateName": null}));
    assert_eq!(
        code(&d.http("PUT", &as_other("secret"), &update.to_string())),
        "3022"
    );
    assert_eq!(code(&d.http("DELETE", &as_other("secret"), "")), "3022");
    let list = d.http("GET", "/v1/templates?appId=other&workspaceId=ws2", "");
    assert_eq!(list.1["PushResult"]["Data"]["total"], 0);
    // App A's appId with app B's workspace is no app.
    assert_eq!(
        code(&d.http("GET", &template_path("secret", "demo", "ws2"), "")),
        "3007"
    );

    // B pushes by A's template name: unknown to B.
    let mut b_dev = Device::connect_app(d.device, "other", "");
    let push_as_b = |extra: Value| {
        template_push(
            &d,
            merged(
                json!({"appId": "other", "workspaceId": "ws2", "templateName": "secret",
                       "targetMsgkey": {b_dev.token.as_str(): "b-1"}}),
                &extra,
            ),
        )
    };
    let answer = push_as_b(json!({}));
    assert_eq!((answer.0, code(&answer)), (404, "3022".into()));
    let answer = multiple_push(
        &d,
        json!({"appId": "other", "workspaceId": "ws2", "templateName": "secret",
               "targetMsgs": [{"target": b_dev.token, "msgKey": "b-2", "templateKeyValue": {"name": "x", "money": "1"}}]}),
    );
    assert_eq!(code(&answer), "3022");

    // The same name in B is B's own template, and B's devices get B's text.
    let own = prize(
        json!({"appId": "other", "workspaceId": "ws2", "templateName": "secret", "title": "B says hi #name#"}),
    );
    assert_eq!(code(&create(&d, own)), "OK");
    let answer = push_as_b(json!({}));
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(b_dev.recv_push().title, "B says hi Ann");
    let a = d.http("GET", &template_path("secret", "demo", "default"), "");
    assert_eq!(a.1["PushResult"]["Data"]["title"], "Congrats #name#");
    // B deleting its own leaves A's.
    assert_eq!(code(&d.http("DELETE", &as_other("secret"), "")), "OK");
    assert_eq!(
        code(&d.http("GET", &template_path("secret", "demo", "default"), "")),
        "OK"
    );
}
