//! API authentication on the real daemon over real HTTP: signed requests
//! (HMAC and RSA) pass, and every refusal has its result code and HTTP
//! status: -1/401 (unsigned, bad signature, skew, replay, missing header),
//! 8014/403 (unknown app, another app's data), 3032/403 (API switched off),
//! 9000/503 (nonce cache full). Config errors stop the start; secrets are
//! never printed.

mod common;

use common::{fresh_nonce, now_ms, sign, Daemon, SIGNED_DEMO_APP};
use ringpush::api::auth::{self, HmacSigner};
use serde_json::json;

const OFF_SECRET: &str = "secret-of-the-switched-off-app";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn config() -> String {
    format!(
        "{SIGNED_DEMO_APP}
[[apps]]
appId = \"rsa-app\"
workspaceId = \"default\"
publicKey = \"\"\"
{}\"\"\"

[[apps]]
appId = \"off\"
workspaceId = \"default\"
apiSecret = \"{OFF_SECRET}\"
apiEnabled = false

[[apps]]
appId = \"open\"
workspaceId = \"default\"
allowUnsigned = true
",
        fixture("rsa-2048-public.pem")
    )
}

fn push_body(app: &str, token: &str, msg_key: &str) -> String {
    json!({
        "appId": app, "workspaceId": "default", "taskName": "t",
        "title": "title", "content": "content", "deliveryType": 1,
        "targetMsgkey": {token: msg_key}, "expiredSeconds": 300,
    })
    .to_string()
}

/// RSA-SHA256 headers made by hand, as a backend with only OpenSSL would.
fn rsa_headers(app: &str, method: &str, path: &str, body: &str, timestamp_ms: u64) -> Vec<(String, String)> {
    use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
    let pem = fixture("rsa-2048-private.pem");
    let (_, der) = spki::der::pem::decode_vec(pem.as_bytes()).unwrap();
    let key = RsaKeyPair::from_pkcs8(&der).unwrap();
    let nonce = fresh_nonce();
    let timestamp = timestamp_ms.to_string();
    let text = auth::string_to_sign(method, path, app, &timestamp, &nonce, body.as_bytes());
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        text.as_bytes(),
        &mut signature,
    )
    .unwrap();
    [
        (auth::HEADER_APP_ID, app.to_string()),
        (auth::HEADER_TIMESTAMP, timestamp),
        (auth::HEADER_NONCE, nonce),
        (auth::HEADER_SIGNATURE_METHOD, "RSA-SHA256".into()),
        (auth::HEADER_SIGNATURE, auth::encode_signature(&signature)),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect()
}

fn signer(app: &str, secret: &str) -> HmacSigner {
    HmacSigner::new(app, secret.as_bytes())
}

/// HMAC headers as `TEST_APP` with a chosen timestamp.
fn demo_headers_at(method: &str, path: &str, body: &str, timestamp_ms: u64) -> Vec<(String, String)> {
    signer(common::TEST_APP, common::TEST_APP_SECRET)
        .sign(method, path, body.as_bytes(), timestamp_ms, &fresh_nonce())
        .pairs()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn code(json: &serde_json::Value) -> &str {
    json["ResultCode"].as_str().unwrap_or("")
}

#[test]
fn signed_requests_pass_and_every_refusal_has_its_code() {
    let d = Daemon::start("uring", &config());
    let mut device = d.device("");
    let token = device.token.clone();
    const PUSH: &str = "/v1/push/simple";

    // HMAC, signed transparently by the harness: delivered.
    let (status, json) = d.http("POST", PUSH, &push_body("demo", &token, "hmac-1"));
    assert_eq!((status, code(&json)), (200, "OK"), "{json}");
    assert_eq!(device.recv_push().msg_key, "hmac-1");
    // Without appId the status query acts for the signing app.
    let (status, json) = d.http("GET", &format!("/v1/messages/hmac-1?target={token}"), "");
    assert_eq!((status, code(&json)), (200, "OK"), "{json}");

    // RSA: authenticated; the demo device's token is not rsa-app's (3054).
    let body = push_body("rsa-app", &token, "rsa-1");
    let headers = rsa_headers("rsa-app", "POST", PUSH, &body, now_ms());
    let (status, json) = d.http_with("POST", PUSH, &headers, &body);
    assert_eq!((status, code(&json)), (400, "3054"), "{json}");
    // The same request again is a replay.
    let (status, json) = d.http_with("POST", PUSH, &headers, &body);
    assert_eq!((status, code(&json)), (401, "-1"), "{json}");
    assert!(
        json["ResultMessage"].as_str().unwrap().contains("already used"),
        "{json}"
    );

    let demo_body = push_body("demo", &token, "k");
    type Case<'a> = (&'a str, Vec<(String, String)>, String, (u16, &'a str));
    let cases: Vec<Case> = vec![
        ("unsigned", vec![], demo_body.clone(), (401, "-1")),
        (
            "wrong secret",
            sign(
                &signer("demo", "not-the-demo-app-secret!"),
                "POST",
                PUSH,
                &demo_body,
            ),
            demo_body.clone(),
            (401, "-1"),
        ),
        (
            "301 s ahead",
            demo_headers_at("POST", PUSH, &demo_body, now_ms() + 301_000),
            demo_body.clone(),
            (401, "-1"),
        ),
        (
            "301 s behind",
            demo_headers_at("POST", PUSH, &demo_body, now_ms() - 301_000),
            demo_body.clone(),
            (401, "-1"),
        ),
        (
            "body tampered",
            sign(&signer("demo", common::TEST_APP_SECRET), "POST", PUSH, &demo_body),
            demo_body.replace("\"k\"", "\"k2\""),
            (401, "-1"),
        ),
        (
            "path signed differently",
            sign(
                &signer("demo", common::TEST_APP_SECRET),
                "POST",
                "/v1/push/other",
                &demo_body,
            ),
            demo_body.clone(),
            (401, "-1"),
        ),
        (
            "unknown app",
            sign(
                &signer("nobody", "whatever-secret-1234"),
                "POST",
                PUSH,
                &demo_body,
            ),
            demo_body.clone(),
            (403, "8014"),
        ),
        (
            "pushing for another app",
            sign(
                &signer("demo", common::TEST_APP_SECRET),
                "POST",
                PUSH,
                &push_body("open", &token, "k"),
            ),
            push_body("open", &token, "k"),
            (403, "8014"),
        ),
        (
            "app switched off",
            sign(
                &signer("off", OFF_SECRET),
                "POST",
                PUSH,
                &push_body("off", &token, "k"),
            ),
            push_body("off", &token, "k"),
            (403, "3032"),
        ),
        (
            "HMAC for an RSA-only app",
            sign(&signer("rsa-app", "guess-guess-guess-guess"), "POST", PUSH, &body),
            body.clone(),
            (401, "-1"),
        ),
    ];
    for (name, headers, body, want) in cases {
        let (status, json) = d.http_with("POST", PUSH, &headers, &body);
        assert_eq!((status, code(&json)), want, "{name}: {json}");
        assert!(
            !json["ResultMessage"].as_str().unwrap().is_empty(),
            "{name}: {json}"
        );
    }

    // A missing header is named.
    let mut partial = sign(&signer("demo", common::TEST_APP_SECRET), "POST", PUSH, &demo_body);
    partial.retain(|(name, _)| name != auth::HEADER_NONCE);
    let (status, json) = d.http_with("POST", PUSH, &partial, &demo_body);
    assert_eq!((status, code(&json)), (401, "-1"));
    assert!(
        json["ResultMessage"]
            .as_str()
            .unwrap()
            .contains(auth::HEADER_NONCE),
        "{json}"
    );

    // Status queries: another app's data is 8014; unsigned needs an app
    // that allows it, and an appId when several apps are configured.
    let query = format!("/v1/messages/hmac-1?target={token}&appId=open");
    let as_demo = sign(&signer("demo", common::TEST_APP_SECRET), "GET", &query, "");
    let (status, json) = d.http_with("GET", &query, &as_demo, "");
    assert_eq!((status, code(&json)), (403, "8014"), "{json}");
    let (status, json) = d.http_with("GET", &query, &[], "");
    assert_eq!((status, code(&json)), (200, "OK"), "{json}");
    assert_eq!(
        json["PushResult"]["Data"]["status"], 99_999_999,
        "open cannot see demo's message"
    );
    let (status, json) = d.http_with("GET", &format!("/v1/messages/hmac-1?target={token}"), &[], "");
    assert_eq!((status, code(&json)), (400, "3003"), "{json}");
    let (status, json) = d.http_with(
        "GET",
        &format!("/v1/messages/hmac-1?target={token}&appId=demo"),
        &[],
        "",
    );
    assert_eq!((status, code(&json)), (401, "-1"), "{json}");

    // An app with allowUnsigned takes unsigned pushes (3054: its own
    // devices only, and the demo device is not one).
    let (status, json) = d.http_with("POST", PUSH, &[], &push_body("open", &token, "k"));
    assert_eq!((status, code(&json)), (400, "3054"), "{json}");

    let metrics = d.metrics();
    for reason in [
        "unsigned",
        "bad_signature",
        "clock_skew",
        "replayed_nonce",
        "unknown_app",
        "wrong_app",
        "api_disabled",
        "no_credential",
        "missing_header",
    ] {
        let line = format!("ringpush_api_auth_failures_total{{reason=\"{reason}\"}}");
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(count >= 1.0, "{line} is {count}:\n{metrics}");
    }
}

#[test]
fn a_full_nonce_cache_answers_503_and_still_refuses_replays() {
    let d = Daemon::start("epoll", "[limits]\napi_nonces_per_app = 3\n");
    let path = "/v1/messages/k?target=t";
    let first = common::sign(&signer("demo", common::TEST_APP_SECRET), "GET", path, "");
    let (status, _) = d.http_with("GET", path, &first, "");
    assert_eq!(status, 200);
    for _ in 0..2 {
        assert_eq!(d.http("GET", path, "").0, 200);
    }
    let (status, json) = d.http("GET", path, "");
    assert_eq!((status, code(&json)), (503, "9000"), "{json}");
    assert!(
        json["ResultMessage"]
            .as_str()
            .unwrap()
            .contains("api_nonces_per_app"),
        "{json}"
    );
    let (status, json) = d.http_with("GET", path, &first, "");
    assert_eq!((status, code(&json)), (401, "-1"), "{json}");
    assert!(d
        .metrics()
        .contains("ringpush_api_auth_failures_total{reason=\"nonce_cache_full\"} 1"));
}

#[test]
fn a_request_seen_before_a_restart_cannot_be_replayed_after_it() {
    let dir = Daemon::scratch_dir("auth-restart-replay");
    let path = "/v1/messages/k?target=t";
    let mut d = Daemon::start_in(&dir, "");
    let headers = common::sign(&signer("demo", common::TEST_APP_SECRET), "GET", path, "");
    assert_eq!(d.http_with("GET", path, &headers, "").0, 200);
    d.terminate();
    drop(d);
    let d = Daemon::start_in(&dir, "");
    let (status, json) = d.http_with("GET", path, &headers, "");
    assert_eq!((status, code(&json)), (401, "-1"), "{json}");
    assert!(
        json["ResultMessage"]
            .as_str()
            .unwrap()
            .contains("before this server started"),
        "{json}"
    );
    // Signed now, the same request passes.
    assert_eq!(d.http("GET", path, "").0, 200);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_quick_start_demo_app_takes_unsigned_requests() {
    // The embedded default config's app, as the README's curl uses it.
    let d = Daemon::start(
        "epoll",
        "[[apps]]\nappId = \"demo\"\nworkspaceId = \"default\"\nallowUnsigned = true\n",
    );
    let mut device = d.device("");
    let body = push_body("demo", &device.token, "readme-1");
    let (status, json) = d.http_with("POST", "/v1/push/simple", &[], &body);
    assert_eq!((status, code(&json)), (200, "OK"), "{json}");
    assert_eq!(device.recv_push().msg_key, "readme-1");
    let path = format!("/v1/messages/readme-1?target={}", device.token);
    let (status, json) = d.http_with("GET", &path, &[], "");
    assert_eq!((status, code(&json)), (200, "OK"), "{json}");
    // A signature is still checked when one is sent.
    let forged = sign(&signer("demo", "not-the-secret-at-all"), "GET", &path, "");
    assert_eq!(d.http_with("GET", &path, &forged, "").0, 401);
}

#[test]
fn an_app_without_credentials_is_a_config_error() {
    let dir = Daemon::scratch_dir("auth-no-credential");
    let err = match Daemon::try_start_in(&dir, "[[apps]]\nappId = \"shop\"\nworkspaceId = \"prod\"\n") {
        Ok(_) => panic!("started without credentials"),
        Err(e) => e,
    };
    assert!(
        err.contains("no API credential") && err.contains("allowUnsigned"),
        "{err}"
    );
    let small = fixture("rsa-1024-public.pem");
    let config =
        format!("[[apps]]\nappId = \"shop\"\nworkspaceId = \"prod\"\npublicKey = \"\"\"\n{small}\"\"\"\n");
    let err = match Daemon::try_start_in(&dir, &config) {
        Ok(_) => panic!("started with a 1024-bit key"),
        Err(e) => e,
    };
    assert!(err.contains("at least 2048"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_never_prints_a_secret() {
    let dir = Daemon::scratch_dir("auth-check-config");
    let path = dir.join("ringpush.toml");
    std::fs::write(&path, SIGNED_DEMO_APP).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("apiSecret = \"<redacted>\""), "{text}");
    assert!(!text.contains(common::TEST_APP_SECRET), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
