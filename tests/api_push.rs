//! The push API on the real daemon: result codes for bad requests (never a
//! 500 for a user's mistake), per-target outcomes, status queries, and the
//! admin endpoints.

mod common;

use common::{raw_http, Daemon};
use serde_json::json;

fn push_body(overrides: serde_json::Value) -> String {
    let mut body = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "t",
        "title": "title", "content": "content", "deliveryType": 1,
        "targetMsgkey": {"tok": "k"}, "expiredSeconds": 300,
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body.to_string()
}

#[test]
fn bad_requests_get_their_result_codes() {
    let d = Daemon::start("epoll", "");
    let token = d.device("").token.clone();
    let many: serde_json::Map<String, serde_json::Value> = (0..11)
        .map(|i| (format!("t{i}"), json!(format!("k{i}"))))
        .collect();
    let params: serde_json::Map<String, serde_json::Value> =
        (0..21).map(|i| (format!("p{i}"), json!("v"))).collect();
    let cases = [
        (json!({"taskName": ""}), "3019"),
        (json!({"expiredSeconds": 0}), "3020"),
        (json!({"expiredSeconds": null}), "3020"),
        (json!({"expiredSeconds": 259_201}), "3026"),
        (json!({"title": null}), "3024"),
        (json!({"content": ""}), "3024"),
        (json!({"targetMsgkey": many}), "3029"),
        (json!({"targetMsgkey": {}}), "3021"),
        (json!({"extendedParams": params}), "3035"),
        (json!({"deliveryType": 9}), "3009"),
        (json!({"appId": null}), "3003"),
        // An app the caller may not act for (here: none such) is 8014;
        // a known app in the wrong workspace is 3007.
        (json!({"appId": "nope"}), "8014"),
        (json!({"workspaceId": "other"}), "3007"),
        (json!({"content": "x".repeat(3000)}), "3043"),
        (json!({"extendedParams": {"taskId": "1"}}), "3044"),
        (json!({"pushStyle": 7}), "3028"),
        (json!({"targetMsgkey": {"not-a-device": "k"}}), "3054"),
    ];
    for (overrides, want) in cases {
        let body = push_body(overrides.clone());
        let (status, json) = d.http("POST", "/v1/push/simple", &body);
        assert_eq!(json["ResultCode"], want, "{overrides} -> {status} {json}");
        assert!((400..500).contains(&status), "{overrides} -> {status}");
        assert!(json["RequestId"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let (status, json) = d.http("POST", "/v1/push/simple", "{not json");
    assert_eq!((status, json["ResultCode"].as_str()), (400, Some("3028")));
    // The daemon is unharmed: a good push still goes through.
    let (status, json) = d.http(
        "POST",
        "/v1/push/simple",
        &push_body(json!({"targetMsgkey": {token.as_str(): "ok"}})),
    );
    assert_eq!((status, json["ResultCode"].as_str()), (200, Some("OK")), "{json}");
}

#[test]
fn mixed_targets_report_each_outcome() {
    let d = Daemon::start("uring", "");
    let token = d.device("").token.clone();
    let body = push_body(json!({"targetMsgkey": {token.as_str(): "a", "unknown-token": "b"}}));
    let (status, json) = d.http("POST", "/v1/push/simple", &body);
    assert_eq!(status, 200, "{json}");
    let targets = json["PushResult"]["Targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let result_of = |t: &str| {
        targets
            .iter()
            .find(|x| x["target"] == t)
            .map(|x| x["result"].as_str().unwrap().to_string())
    };
    assert_eq!(result_of("unknown-token").as_deref(), Some("3054"));
    assert_eq!(result_of(&token).as_deref(), Some("queued"));
    assert_eq!(d.status(&token, "a"), 0);
    assert_eq!(d.status("unknown-token", "b"), 99_999_999);
    // A retry of the same msgKey is accepted once.
    let (_, json) = d.http("POST", "/v1/push/simple", &body);
    let again = json["PushResult"]["Targets"].as_array().unwrap();
    assert!(again.iter().any(|x| x["result"] == "duplicate"), "{json}");
}

#[test]
fn admin_endpoints_answer() {
    let d = Daemon::start("uring", "");
    let (status, body) = raw_http(d.admin, "GET", "/healthz", "");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _) = raw_http(d.admin, "GET", "/readyz", "");
    assert_eq!(status, 200);
    let _device = d.device("");
    let metrics = d.metrics();
    for name in [
        "ringpush_io_backend",
        "ringpush_handshakes_total",
        "ringpush_sessions",
        "ringpush_devices",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
}
