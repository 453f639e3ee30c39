//! Tasks and statistics end to end: real devices over real sockets push,
//! ack and report opened/ignored; the task list, task detail and
//! statistics at minute, hour and day answer the counts; one app never sees
//! another's; the counts survive kill -9. Waits are bounded polls.

mod common;

use std::time::Instant;

use common::{now_ms, sign, Daemon, Device, BACKENDS, PATIENCE};
use ringpush::api::auth::HmacSigner;
use ringpush::protocol::{body, Frame, PROTOCOL_VERSION};
use serde_json::{json, Value};

const HOUR_MS: u64 = 3_600_000;

/// A device of app `demo` on `platform` (1 Android, 2 iOS, 7 HarmonyOS).
fn device_on(d: &Daemon, platform: u32, token: &str) -> Device {
    let mut device = Device::raw(d.device);
    device.send(&Frame::Hello(Box::new(body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: "demo".into(),
        platform,
        token: token.into(),
        ..Default::default()
    })));
    match device.recv() {
        Some(Frame::Welcome(w)) => device.token = w.token,
        other => panic!("expected Welcome, got {other:?}"),
    }
    device
}

fn code(json: &Value) -> &str {
    json["ResultCode"].as_str().unwrap_or_default()
}

fn data(d: &Daemon, path: &str) -> Value {
    let (status, json) = d.http("GET", path, "");
    assert_eq!((status, code(&json)), (200, "OK"), "{path}: {json}");
    json["PushResult"]["Data"].clone()
}

/// Polls `path` until `done` holds for its Data, panicking after PATIENCE.
fn wait_for(d: &Daemon, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let data = data(d, path);
        if done(&data) {
            return data;
        }
        assert!(Instant::now() < deadline, "{path} stayed {data}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// pushed, succeeded, arrived, opened, ignored of a task or a total.
fn counts(v: &Value) -> [u64; 5] {
    ["pushed", "succeeded", "arrived", "opened", "ignored"].map(|k| v[k].as_u64().unwrap_or(u64::MAX))
}

fn statistics_path(app: &str, granularity: &str, extra: &str) -> String {
    let now = now_ms();
    let start = match granularity {
        "minute" => now - 10 * 60_000,
        _ => now - 2 * HOUR_MS,
    };
    format!(
        "/v1/statistics?appId={app}&workspaceId=default&startTime={start}&endTime={}&granularity={granularity}{extra}",
        now + 120_000
    )
}

fn group_push(d: &Daemon, msg_key: &str) -> String {
    let body = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "weekend offer",
        "title": "Weekend", "content": "20% off", "groupName": "all",
        "msgkey": msg_key, "expiredSeconds": 600,
    });
    let (status, json) = d.http("POST", "/v1/push/group", &body.to_string());
    assert_eq!(status, 200, "{json}");
    json["PushResult"]["Data"].as_str().unwrap().to_string()
}

/// The sum of a counter over its labels.
fn metric_sum(d: &Daemon, name: &str, label: &str) -> f64 {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls until `ringpush_reports_total{result}` is `want` (and checks it
/// goes no higher in the meantime).
fn wait_reports(d: &Daemon, result: &str, want: f64) {
    let label = format!("result=\"{result}\"");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = metric_sum(d, "ringpush_reports_total", &label);
        assert!(got <= want, "{got} {result} reports");
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{got} {result} reports, wanted {want}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Android device `a` and iOS device `b` get a group push (a task) and
/// `a` a simple push; both ack. Answers the task id and the message ids
/// (group, simple).
fn push_and_ack(d: &Daemon, a: &mut Device, b: &mut Device) -> (String, u64, u64) {
    let task = group_push(d, "offer-1");
    let (pa, pb) = (a.recv_push(), b.recv_push());
    assert_eq!((pa.task_id.as_str(), pb.id), (task.as_str(), pa.id));
    assert_eq!(d.push(&a.token, "hello-1", 600).0, 200);
    let simple = a.recv_push();
    a.ack(&[pa.id, simple.id]);
    b.ack(&[pb.id]);
    d.wait_status(&a.token, "hello-1", 2);
    d.wait_status(&b.token, "offer-1", 2);
    (task, pa.id, simple.id)
}

/// `a` opens the group message twice, `b` ignores it and opens the simple
/// message it never had.
fn report(a: &mut Device, b: &mut Device, group: u64, simple: u64) {
    a.send(&Frame::Opened(body::Ids { ids: vec![group] }));
    a.send(&Frame::Opened(body::Ids { ids: vec![group] }));
    b.send(&Frame::Opened(body::Ids { ids: vec![simple] }));
    b.send(&Frame::Ignored(body::Ids { ids: vec![group] }));
}

fn push_ack_and_report(d: &Daemon, a: &mut Device, b: &mut Device) -> (String, u64) {
    let (task, group, simple) = push_and_ack(d, a, b);
    report(a, b, group, simple);
    (task, group)
}

#[test]
fn tasks_and_statistics_count_pushes_acks_and_reports() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut a = device_on(&d, 1, "");
        let mut b = device_on(&d, 2, "");
        let (task, _) = push_ack_and_report(&d, &mut a, &mut b);

        let detail = wait_for(
            &d,
            &format!("/v1/tasks/{task}?appId=demo&workspaceId=default"),
            |t| counts(t) == [2, 2, 2, 1, 1],
        );
        assert_eq!(
            (&detail["taskId"], &detail["taskName"], &detail["pushType"]),
            (&json!(task), &json!("weekend offer"), &json!("group"))
        );
        assert_eq!(
            (detail["openRate"].as_f64(), detail["ignoreRate"].as_f64()),
            (Some(0.5), Some(0.5))
        );
        let (start, end) = (
            detail["startTime"].as_u64().unwrap(),
            detail["endTime"].as_u64().unwrap(),
        );
        assert!(start <= end && end <= now_ms(), "{detail}");
        assert_eq!(detail["duration"].as_u64(), Some(end - start));

        let list = data(&d, "/v1/tasks?appId=demo&workspaceId=default");
        assert_eq!(list["total"], 1, "a simple push has no task: {list}");
        assert_eq!(list["tasks"][0]["taskId"], json!(task));

        for granularity in ["minute", "hour", "day"] {
            let stats = data(&d, &statistics_path("demo", granularity, ""));
            assert_eq!(counts(&stats["total"]), [3, 3, 3, 1, 1], "{granularity}: {stats}");
            let series = stats["series"].as_array().unwrap();
            let sum: u64 = series.iter().map(|b| b["arrived"].as_u64().unwrap()).sum();
            assert_eq!(sum, 3);
            assert!(series
                .windows(2)
                .all(|w| w[0]["time"].as_u64() < w[1]["time"].as_u64()));
        }
        let ios = data(&d, &statistics_path("demo", "hour", "&platform=2"));
        assert_eq!(counts(&ios["total"]), [1, 1, 1, 0, 1]);
        let simple = data(&d, &statistics_path("demo", "day", "&pushType=simple"));
        assert_eq!(counts(&simple["total"]), [1, 1, 1, 0, 0]);
        let by_task = data(&d, &statistics_path("demo", "hour", &format!("&taskId={task}")));
        assert_eq!(counts(&by_task["total"]), [2, 2, 2, 1, 1]);
        wait_reports(&d, "duplicate", 1.0);
        wait_reports(&d, "unknown", 1.0);
    }
}

#[test]
fn bad_parameters_get_3028_with_a_reason() {
    let d = Daemon::start("epoll", "");
    let now = now_ms();
    let base = "/v1/statistics?appId=demo&workspaceId=default";
    let cases = [
        (format!("{base}&endTime={now}"), 400, "required"),
        (
            format!("{base}&startTime={now}&endTime={}", now - 1),
            400,
            "before startTime",
        ),
        (
            format!("{base}&startTime={}&endTime={now}", now - 91 * 24 * HOUR_MS),
            400,
            "over 90 days",
        ),
        (
            format!(
                "{base}&startTime={}&endTime={now}&granularity=week",
                now - HOUR_MS
            ),
            400,
            "minute, hour or day",
        ),
        (
            format!(
                "{base}&startTime={}&endTime={now}&granularity=minute",
                now - 40 * HOUR_MS
            ),
            400,
            "buckets",
        ),
        (
            "/v1/tasks?appId=demo&workspaceId=default&pageSize=1000".to_string(),
            400,
            "pageSize",
        ),
        (
            "/v1/tasks/123?appId=demo&workspaceId=default".to_string(),
            404,
            "no task 123",
        ),
        (
            "/v1/tasks/abc?appId=demo&workspaceId=default".to_string(),
            400,
            "taskId",
        ),
    ];
    for (path, status, reason) in cases {
        let (got, json) = d.http("GET", &path, "");
        assert_eq!((got, code(&json)), (status, "3028"), "{path}: {json}");
        let message = json["ResultMessage"].as_str().unwrap();
        assert!(
            message.starts_with("INVALID_PARAM: ") && message.contains(reason),
            "{path}: {message}"
        );
    }
    let (status, json) = d.http("GET", "/v1/statistics?appId=demo", "");
    assert_eq!((status, code(&json)), (400, "3003"), "{json}");
}

const TWO_APPS: &str = "[[apps]]\nappId = \"demo\"\nworkspaceId = \"default\"\napiSecret = \"integration-tests-demo-app-secret\"\n[[apps]]\nappId = \"shop\"\nworkspaceId = \"default\"\napiSecret = \"integration-tests-shop-app-secret\"\n";

#[test]
fn one_app_never_sees_another_apps_tasks_or_counts() {
    let d = Daemon::start("uring", TWO_APPS);
    let mut a = device_on(&d, 1, "");
    let mut b = device_on(&d, 2, "");
    let (task, group) = push_ack_and_report(&d, &mut a, &mut b);
    wait_for(
        &d,
        &format!("/v1/tasks/{task}?appId=demo&workspaceId=default"),
        |t| counts(t) == [2, 2, 2, 1, 1],
    );
    // A shop device reports demo's message: not counted anywhere.
    let mut s = Device::connect_app(d.device, "shop", "");
    s.send(&Frame::Opened(body::Ids { ids: vec![group] }));
    wait_reports(&d, "unknown", 2.0);
    let shop = data(&d, &statistics_path("shop", "day", ""));
    assert_eq!(counts(&shop["total"]), [0; 5], "{shop}");
    assert_eq!(data(&d, "/v1/tasks?appId=shop&workspaceId=default")["total"], 0);
    let (status, json) = d.http(
        "GET",
        &format!("/v1/tasks/{task}?appId=shop&workspaceId=default"),
        "",
    );
    assert_eq!((status, code(&json)), (404, "3028"), "{json}");
    // Signed as shop, naming demo: refused.
    let signer = HmacSigner::new("shop", common::test_app_secret("shop").as_bytes());
    for path in [
        statistics_path("demo", "hour", ""),
        "/v1/tasks?appId=demo&workspaceId=default".to_string(),
        format!("/v1/tasks/{task}?appId=demo&workspaceId=default"),
    ] {
        let (status, json) = d.http_with("GET", &path, &sign(&signer, "GET", &path, ""), "");
        assert_eq!((status, code(&json)), (403, "8014"), "{path}: {json}");
    }
    let demo = data(&d, &statistics_path("demo", "day", ""));
    assert_eq!(counts(&demo["total"]), [3, 3, 3, 1, 1]);
}

#[test]
fn counts_survive_kill_9_and_reports_stay_counted_once() {
    let dir = Daemon::scratch_dir("stats-kill9");
    let config = format!(
        "io = \"uring\"\nshards = 2\n[durability]\ndata_dir = \"{}\"\nfsync = \"always\"\n",
        dir.join("data").display()
    );
    let mut d = Daemon::start_in(&dir, &config);
    let mut a = device_on(&d, 1, "");
    let mut b = device_on(&d, 2, "");
    let (task, group, simple) = push_and_ack(&d, &mut a, &mut b);
    // Reports have no log record of their own: they reach the log with
    // their shard's next statistics flush (within 100 ms). Wait for it.
    let logged = |token: &str| {
        let shard = ringpush::message::owner_shard(token.as_bytes(), 2);
        metric_sum(
            &d,
            "ringpush_log_bytes_written_total",
            &format!("shard=\"{shard}\""),
        )
    };
    let (a_before, b_before) = (logged(&a.token), logged(&b.token));
    report(&mut a, &mut b, group, simple);
    let deadline = Instant::now() + PATIENCE;
    while logged(&a.token) <= a_before || logged(&b.token) <= b_before {
        assert!(Instant::now() < deadline, "the reports never reached the log");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let detail_path = format!("/v1/tasks/{task}?appId=demo&workspaceId=default");
    assert_eq!(counts(&data(&d, &detail_path)), [2, 2, 2, 1, 1]);
    let before = data(&d, &statistics_path("demo", "hour", ""))["total"].clone();
    assert_eq!(counts(&before), [3, 3, 3, 1, 1]);
    let (pa_token, pb_token) = (a.token.clone(), b.token.clone());
    drop((a, b));
    d.kill9();

    let d = Daemon::start_in(&dir, &config);
    let detail = data(&d, &detail_path);
    assert_eq!(counts(&detail), [2, 2, 2, 1, 1], "{detail}");
    assert_eq!(detail["taskName"], "weekend offer");
    for granularity in ["minute", "hour", "day"] {
        let total = data(&d, &statistics_path("demo", granularity, ""))["total"].clone();
        assert_eq!(counts(&total), [3, 3, 3, 1, 1], "{granularity}");
    }
    // The reports were remembered: b ignoring again is a duplicate, and a
    // (which only opened) cannot now ignore.
    let mut b = device_on(&d, 2, &pb_token);
    let mut a = device_on(&d, 1, &pa_token);
    let ids = |dev: &mut Device| {
        dev.drain_until_pong()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Push(p) => Some(p.id),
                _ => None,
            })
            .collect::<Vec<u64>>()
    };
    assert!(
        ids(&mut a).is_empty() && ids(&mut b).is_empty(),
        "everything was acked"
    );
    assert_eq!(data(&d, "/v1/tasks?appId=demo&workspaceId=default")["total"], 1);
    b.send(&Frame::Ignored(body::Ids { ids: vec![group] }));
    a.send(&Frame::Ignored(body::Ids { ids: vec![group] }));
    wait_reports(&d, "duplicate", 2.0);
    assert_eq!(counts(&data(&d, &detail_path)), [2, 2, 2, 1, 1]);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
