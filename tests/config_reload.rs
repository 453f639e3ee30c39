//! The configuration lifecycle against the real daemon: SIGHUP applies a
//! rewritten file (a new app, a changed API secret) while devices stay
//! connected, refuses a broken file and keeps running on the old one
//! (counted in /metrics); environment overrides and `check-config`; JSON
//! log lines with the ids that trace a connection.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{sign, Daemon, Device, BACKENDS, PATIENCE};
use ringpush::api::auth::HmacSigner;
use ringpush::protocol::{body, Frame, PROTOCOL_VERSION};

const OLD_SECRET: &str = "reload-test-shop-secret-before";
const NEW_SECRET: &str = "reload-test-shop-secret-after!!";
const NEWS_SECRET: &str = "reload-test-news-app-secret-0001";

fn app(app_id: &str, secret: &str) -> String {
    format!("[[apps]]\nappId = \"{app_id}\"\nworkspaceId = \"default\"\napiSecret = \"{secret}\"\n")
}

/// The value of one sample line of /metrics (`name{labels} value`).
fn metric(d: &Daemon, sample: &str) -> Option<f64> {
    d.metrics()
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

fn wait_metric(d: &Daemon, sample: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = metric(d, sample);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed {got:?}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A simple push to `token` signed as `app_id` with `secret`.
fn push(d: &Daemon, app_id: &str, secret: &str, token: &str, msg_key: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "appId": app_id, "workspaceId": "default", "taskName": "reload",
        "title": "t", "content": msg_key, "deliveryType": 1,
        "targetMsgkey": { token: msg_key }, "expiredSeconds": 300,
    })
    .to_string();
    let signer = HmacSigner::new(app_id, secret.as_bytes());
    let headers = sign(&signer, "POST", "/v1/push/simple", &body);
    d.http_with("POST", "/v1/push/simple", &headers, &body)
}

fn hello(app_id: &str) -> body::Hello {
    body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: app_id.into(),
        platform: 1,
        ..Default::default()
    }
}

/// Connects a device of `app_id`, retrying while its shard still answers
/// unknown_app: the shards apply a reload at their next wake-up, a moment
/// after the API did.
fn connect_when_known(d: &Daemon, app_id: &str) -> Device {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (mut device, frame) = Device::hello(d.device, hello(app_id));
        if let Some(Frame::Welcome(w)) = frame {
            device.token = w.token.clone();
            device.welcome = Some(w);
            return device;
        }
        assert!(
            Instant::now() < deadline,
            "{app_id} devices stayed refused: {frame:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn receive(device: &mut Device, msg_key: &str) {
    let push = device.recv_push();
    assert_eq!(push.msg_key, msg_key);
    device.ack(&[push.id]);
}

#[test]
fn sighup_applies_new_apps_and_secrets_and_refuses_a_broken_file() {
    for backend in BACKENDS {
        let top = format!("io = \"{backend}\"\nshards = 2\n");
        let d = Daemon::start_with(&format!("{top}{}", app("shop", OLD_SECRET)));
        let mut shop_devices: Vec<Device> = (0..4)
            .map(|_| Device::connect_app(d.device, "shop", ""))
            .collect();
        let (status, json) = push(&d, "shop", OLD_SECRET, &shop_devices[0].token.clone(), "before");
        assert_eq!(status, 200, "{json}");
        receive(&mut shop_devices[0], "before");
        // News devices are refused until the reload adds the app.
        let (_, refused) = Device::hello(d.device, hello("news"));
        assert!(
            matches!(refused, Some(Frame::Error(ref e)) if e.code == 9),
            "{refused:?}"
        );

        d.rewrite_config(&format!(
            "{top}[delivery]\nheartbeat_secs = 45\ninflight_window = 8\n{}{}",
            app("shop", NEW_SECRET),
            app("news", NEWS_SECRET)
        ));
        d.signal("HUP");
        wait_metric(&d, "ringpush_config_reloads_total{result=\"ok\"}", 1.0);
        assert_eq!(metric(&d, "ringpush_config_last_reload_success"), Some(1.0));

        // The devices connected before the reload are still there and get
        // a push signed with the new secret; the old secret is refused.
        for (i, device) in shop_devices.iter_mut().enumerate() {
            let key = format!("after-{i}");
            let (status, json) = push(&d, "shop", NEW_SECRET, &device.token.clone(), &key);
            assert_eq!(status, 200, "{backend}: {json}");
            receive(device, &key);
        }
        let token = shop_devices[1].token.clone();
        let (status, json) = push(&d, "shop", OLD_SECRET, &token, "old-secret");
        assert_eq!((status, json["ResultCode"].as_str()), (401, Some("-1")), "{json}");

        // The new app works for devices and the API.
        let mut news = connect_when_known(&d, "news");
        assert_eq!(
            news.welcome.as_ref().unwrap().heartbeat_secs,
            45,
            "heartbeat changed live"
        );
        let (status, json) = push(&d, "news", NEWS_SECRET, &news.token.clone(), "news-1");
        assert_eq!(status, 200, "{json}");
        receive(&mut news, "news-1");
        // Its template store was made at the reload.
        let template = serde_json::json!({
            "appId": "news", "workspaceId": "default", "templateName": "hello",
            "title": "Hi #name#", "content": "Hello #name#",
        })
        .to_string();
        let headers = sign(
            &HmacSigner::new("news", NEWS_SECRET.as_bytes()),
            "POST",
            "/v1/templates",
            &template,
        );
        let (status, json) = d.http_with("POST", "/v1/templates", &headers, &template);
        assert_eq!(status, 200, "{json}");
        assert!(!d.stderr_text().contains("ERROR"), "{}", d.stderr_text());

        // A broken file is refused whole; the running configuration stays.
        d.rewrite_config(&format!(
            "{top}[delivery]\nheartbeat = 5\n{}",
            app("shop", OLD_SECRET)
        ));
        d.signal("HUP");
        wait_metric(&d, "ringpush_config_reloads_total{result=\"failed\"}", 1.0);
        assert_eq!(metric(&d, "ringpush_config_last_reload_success"), Some(0.0));
        let logged = d.stderr_text();
        assert!(
            logged.contains("configuration refused") && logged.contains("heartbeat"),
            "{logged}"
        );
        let (status, json) = push(&d, "shop", NEW_SECRET, &token, "after-broken");
        assert_eq!(status, 200, "{json}");
        receive(&mut shop_devices[1], "after-broken");
        let (status, _) = push(&d, "shop", OLD_SECRET, &token, "old-after-broken");
        assert_eq!(status, 401);
        let (status, json) = push(&d, "news", NEWS_SECRET, &news.token.clone(), "news-2");
        assert_eq!(status, 200, "{json}");
        receive(&mut news, "news-2");

        // A valid file again, without news: its connected device stays
        // until it reconnects; its API requests stop at once.
        d.rewrite_config(&format!("{top}{}", app("shop", NEW_SECRET)));
        d.signal("HUP");
        wait_metric(&d, "ringpush_config_reloads_total{result=\"ok\"}", 2.0);
        let (status, json) = push(&d, "news", NEWS_SECRET, &news.token.clone(), "news-3");
        assert_eq!(
            (status, json["ResultCode"].as_str()),
            (403, Some("8014")),
            "{json}"
        );
        let (status, json) = push(&d, "shop", NEW_SECRET, &shop_devices[2].token.clone(), "last");
        assert_eq!(status, 200, "{json}");
        receive(&mut shop_devices[2], "last");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (_, frame) = Device::hello(d.device, hello("news"));
            if matches!(frame, Some(Frame::Error(ref e)) if e.code == 9) {
                break;
            }
            assert!(Instant::now() < deadline, "news devices still welcome: {frame:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn keys_that_need_a_restart_keep_their_running_value() {
    let d = Daemon::start_with_env(
        &format!("io = \"epoll\"\nshards = 2\n{}", app("shop", OLD_SECRET)),
        &[("RUST_LOG", "warn")],
    );
    d.rewrite_config(&format!(
        "io = \"epoll\"\nshards = 3\n{}",
        app("shop", OLD_SECRET)
    ));
    d.signal("HUP");
    wait_metric(&d, "ringpush_config_reloads_total{result=\"ok\"}", 1.0);
    let deadline = Instant::now() + PATIENCE;
    while !d.stderr_text().contains("needs a restart") {
        assert!(Instant::now() < deadline, "{}", d.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.stderr_text().contains("shards"), "{}", d.stderr_text());
    let devices: Vec<Device> = (0..8)
        .map(|_| Device::connect_app(d.device, "shop", ""))
        .collect();
    assert_eq!(devices.len(), 8);
}

#[test]
fn json_logs_carry_the_connection_and_device_ids() {
    let d = Daemon::start_with_env(
        &format!("io = \"epoll\"\nshards = 1\n{}", app("shop", OLD_SECRET)),
        &[
            ("RUST_LOG", "info,ringpush=debug"),
            ("RINGPUSH_LOG_FORMAT", "json"),
        ],
    );
    let device = Device::connect_app(d.device, "shop", "");
    let (_, refused) = Device::hello(d.device, hello("nope"));
    assert!(matches!(refused, Some(Frame::Error(_))), "{refused:?}");
    let deadline = Instant::now() + PATIENCE;
    let lines = loop {
        let text = d.stderr_text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
            .collect();
        let refusal_logged = lines
            .iter()
            .any(|l| l["message"] == "closing the connection" && l["reason"] == "unknown_app");
        // The ready line is logged just after the stdout line the harness
        // waits for, so it may come after the devices' lines.
        let ready_logged = lines.iter().any(|l| l["message"] == "ringpush ready");
        if refusal_logged && ready_logged {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no close line for the refused Hello, or no ready line:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ready = lines
        .iter()
        .find(|l| l["message"] == "ringpush ready")
        .expect("a ready line");
    assert_eq!(ready["level"], "INFO");
    assert!(
        ready["timestamp"].is_string() && ready["api"].is_string(),
        "{ready}"
    );
    let hello = lines
        .iter()
        .find(|l| l["message"] == "hello accepted")
        .expect("a hello line");
    assert_eq!(hello["app"], "shop");
    assert_eq!(hello["token"].as_str(), Some(device.token.as_str()));
    let conn = hello["conn"].as_u64().expect("conn id");
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "connection accepted" && l["conn"].as_u64() == Some(conn))
        .expect("an accept line for the device's connection");
    assert!(
        accepted["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{accepted}"
    );
}

fn check_config(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = Daemon::scratch_dir("check-config");
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .arg("check-config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let text = app("shop", OLD_SECRET);
    let (ok, stdout, stderr) = check_config(&text, &[("RINGPUSH_DELIVERY__MAX_TTL_SECS", "3600")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("max_ttl_secs = 3600"), "{stdout}");
    assert!(
        !stdout.contains(OLD_SECRET) && stdout.contains("<redacted>"),
        "{stdout}"
    );
    let effective: ringpush::config::Config =
        toml::from_str(&stdout.replace("<redacted>", OLD_SECRET)).unwrap();
    assert_eq!(effective.delivery.max_ttl_secs, 3600);

    let (ok, _, stderr) = check_config(&text, &[("RINGPUSH_DELIVERY__MAX_TTL", "5")]);
    assert!(!ok && stderr.contains("RINGPUSH_DELIVERY__MAX_TTL"), "{stderr}");
    let (ok, _, stderr) = check_config(&format!("[limits]\nmax_frames = 5\n{text}"), &[]);
    assert!(!ok && stderr.contains("max_frames"), "{stderr}");
}
