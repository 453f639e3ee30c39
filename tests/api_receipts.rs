//! Delivery receipts on the real daemon: local HTTP and HTTPS receivers
//! (tokio listeners in the test) record what the daemon POSTs, answer with
//! scripted statuses, and every receipt's `sign` is verified with the public
//! key `ringpush receipt-public-key` prints.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Daemon, Device, PATIENCE};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// One POST as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    /// The request target: path and query.
    target: String,
    content_type: String,
    body: Vec<u8>,
}

impl Received {
    fn sign(&self) -> String {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        let raw = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("sign="))
            .unwrap_or_else(|| panic!("no sign in {}", self.target));
        percent_decode(raw)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A receipt receiver: answers each POST with the next scripted status
/// (200 once the script is used up) and records it.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// The status once the script is used up.
    otherwise: Arc<AtomicU16>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn http(script: &[u16]) -> Receiver {
        Self::start(script, None)
    }

    fn https(script: &[u16], tls: tokio_rustls::TlsAcceptor) -> Receiver {
        Self::start(script, Some(tls))
    }

    fn start(script: &[u16], tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<u16>>()));
        let otherwise = Arc::new(AtomicU16::new(200));
        let (kept, next, fallback) = (received.clone(), script.clone(), otherwise.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (kept, next, tls, fallback) = (kept.clone(), next.clone(), tls.clone(), fallback.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve(stream, kept, next, fallback).await;
                            }
                        }
                        None => serve(stream, kept, next, fallback).await,
                    }
                });
            }
        });
        Receiver {
            addr,
            received,
            otherwise,
            _runtime: runtime,
        }
    }

    fn answer_from_now_on(&self, status: u16) {
        self.otherwise.store(status, Ordering::Relaxed);
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Polls until `n` POSTs arrived; panics after PATIENCE.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} receipts, wanted {n}", got.len());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// HTTP/1.1 keep-alive: requests with a Content-Length body, one after
/// another on the connection.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    kept: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    otherwise: Arc<AtomicU16>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let status = script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| otherwise.load(Ordering::Relaxed));
        kept.lock().unwrap().push(Received {
            target,
            content_type: header("content-type"),
            body,
        });
        let response = format!("HTTP/1.1 {status} Scripted\r\nContent-Length: 2\r\n\r\nok");
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
    }
}

/// The public key the daemon's CLI publishes for `config`, as ring's DER.
fn published_public_key(dir: &std::path::Path, config: &str) -> Vec<u8> {
    let path = dir.join("receipt-key.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .args(["receipt-public-key", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pem = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        pem.trim(),
        std::fs::read_to_string(fixture("rsa-2048-public.pem"))
            .unwrap()
            .trim()
    );
    ringpush::api::auth::rsa_public_key_from_pem(&pem).unwrap()
}

/// What a receiver does: `-` back to `+`, `_` back to `/`, base64, then
/// RSA-SHA256 over the exact body.
fn verifies(public_key: &[u8], r: &Received) -> bool {
    let sign = r.sign().replace('-', "+").replace('_', "/");
    let signature = base64::engine::general_purpose::STANDARD.decode(sign).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(&r.body, &signature)
        .is_ok()
}

fn app(id: &str, receipt_url: Option<&str>) -> String {
    let mut text = format!(
        "[[apps]]\nappId = \"{id}\"\nworkspaceId = \"default\"\napiSecret = \"{}\"\n",
        common::test_app_secret(id)
    );
    if let Some(url) = receipt_url {
        text.push_str(&format!("receiptUrl = \"{url}\"\n"));
    }
    text
}

fn receipts_section(extra: &str) -> String {
    format!(
        "[receipts]\nsigning_key_file = \"{}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n{extra}\n",
        fixture("rsa-2048-private.pem")
    )
}

/// Pushes one message of `app` to `device`, acks it, and waits until the
/// API reports it acked (so the ack is committed).
fn push_and_ack(d: &Daemon, app: &str, device: &mut Device, msg_key: &str) {
    let body = json!({
        "appId": app, "workspaceId": "default", "taskName": "receipts",
        "title": "t", "content": "c", "deliveryType": 1,
        "targetMsgkey": { device.token.as_str(): msg_key }, "expiredSeconds": 300,
    });
    let (status, answer) = d.http("POST", "/v1/push/simple", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    let push = device.recv_push();
    assert_eq!(push.msg_key, msg_key);
    device.ack(&[push.id]);
}

/// The value of the series of `name` carrying all of `labels`, if any.
fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    d.metrics().lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let ok = rest.starts_with('{') && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        ok.then(|| value.parse().unwrap())
    })
}

fn wait_metric(d: &Daemon, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = metric(d, name, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} = {got:?}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_acked_message_gives_one_signed_receipt_to_its_own_apps_url_only() {
    let shop = Receiver::http(&[]);
    let other = Receiver::http(&[]);
    let config = format!(
        "{}{}{}{}",
        receipts_section(""),
        app("demo", Some(&shop.url("http", "/push/receipts?x=1"))),
        app("other", Some(&other.url("http", "/other"))),
        app("plain", None),
    );
    let d = Daemon::start("uring", &config);
    let dir = Daemon::scratch_dir("receipt-key");
    let public_key = published_public_key(&dir, &config);
    let _ = std::fs::remove_dir_all(&dir);

    let mut phone = Device::connect_app(d.device, "demo", "");
    push_and_ack(&d, "demo", &mut phone, "order-1");
    d.wait_status(&phone.token, "order-1", 2);
    let got = shop.wait_for(1);
    let r = &got[0];
    let token = phone.token.as_str();
    assert_eq!(
        String::from_utf8(r.body.clone()).unwrap(),
        format!(
            r#"{{"extInfo":{{"adToken":"{token}","osType":"android"}},"msgId":"order-1","pushSuccess":true,"statusCode":"2","statusDesc":"Acked","targetId":"{token}"}}"#
        )
    );
    assert!(r.target.starts_with("/push/receipts?x=1&sign="), "{}", r.target);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    assert!(
        verifies(&public_key, r),
        "the signature verifies with the published key"
    );
    let mut tampered = r.clone();
    tampered.body[5] ^= 1;
    assert!(!verifies(&public_key, &tampered));

    // Another app's ack goes to its own URL, never to the first one.
    let mut tablet = Device::connect_app(d.device, "other", "");
    push_and_ack(&d, "other", &mut tablet, "o-1");
    let theirs = other.wait_for(1);
    assert_eq!(theirs[0].json()["msgId"], "o-1");
    assert_eq!(theirs[0].json()["extInfo"]["adToken"], tablet.token.as_str());
    assert!(verifies(&public_key, &theirs[0]));
    // An app without a receiptUrl: nothing is queued or posted for it.
    let mut watch = Device::connect_app(d.device, "plain", "");
    push_and_ack(&d, "plain", &mut watch, "p-1");
    let deadline = Instant::now() + PATIENCE;
    let query = format!("/v1/messages/p-1?appId=plain&target={}", watch.token);
    while d.http("GET", &query, "").1["PushResult"]["Data"]["status"] != 2 {
        assert!(Instant::now() < deadline, "p-1 was never acked");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_metric(
        &d,
        "ringpush_receipts_sent_total",
        &[("app", "demo"), ("result", "ok")],
        1.0,
    );
    wait_metric(
        &d,
        "ringpush_receipts_sent_total",
        &[("app", "other"), ("result", "ok")],
        1.0,
    );
    wait_metric(&d, "ringpush_receipts_queued", &[("app", "demo")], 0.0);
    assert_eq!(shop.received().len(), 1, "exactly one receipt");
    assert_eq!(other.received().len(), 1);
    assert!(
        !d.metrics()
            .lines()
            .any(|l| l.contains("receipt") && l.contains("app=\"plain\"")),
        "no receipt series for an app without a receiptUrl"
    );
}

#[test]
fn a_receipt_refused_with_500_is_retried_once_and_one_refused_with_404_is_dropped() {
    let flaky = Receiver::http(&[500]);
    let picky = Receiver::http(&[404]);
    let config = format!(
        "{}{}{}",
        receipts_section(""),
        app("demo", Some(&flaky.url("http", "/r"))),
        app("other", Some(&picky.url("http", "/r"))),
    );
    let d = Daemon::start("epoll", &config);
    let mut phone = Device::connect_app(d.device, "demo", "");
    push_and_ack(&d, "demo", &mut phone, "k1");
    let got = flaky.wait_for(2);
    assert_eq!(got[0].body, got[1].body, "the same receipt again");
    assert_eq!(got[0].sign(), got[1].sign());
    wait_metric(
        &d,
        "ringpush_receipts_sent_total",
        &[("app", "demo"), ("result", "ok")],
        1.0,
    );
    assert_eq!(
        metric(&d, "ringpush_receipt_retries_total", &[("app", "demo")]),
        Some(1.0)
    );
    wait_metric(&d, "ringpush_receipts_queued", &[("app", "demo")], 0.0);
    assert_eq!(flaky.received().len(), 2, "delivered once, after one retry");

    let mut tablet = Device::connect_app(d.device, "other", "");
    push_and_ack(&d, "other", &mut tablet, "k2");
    wait_metric(
        &d,
        "ringpush_receipts_dropped_total",
        &[("app", "other"), ("reason", "rejected")],
        1.0,
    );
    wait_metric(&d, "ringpush_receipts_queued", &[("app", "other")], 0.0);
    assert_eq!(picky.received().len(), 1, "a 404 is not retried");
}

#[test]
fn https_receipts_trust_a_private_ca_from_ca_file() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        )
        .unwrap();
    let secure = Receiver::https(&[], tokio_rustls::TlsAcceptor::from(Arc::new(server)));
    let dir = Daemon::scratch_dir("receipt-ca");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = format!(
        "{}{}",
        receipts_section(&format!("ca_file = \"{}\"", ca_file.display())),
        app("demo", Some(&secure.url("https", "/tls"))),
    );
    let d = Daemon::start("uring", &config);
    let mut phone = Device::connect_app(d.device, "demo", "");
    push_and_ack(&d, "demo", &mut phone, "secure-1");
    let got = secure.wait_for(1);
    assert_eq!(got[0].json()["msgId"], "secure-1");
    assert!(got[0].target.starts_with("/tls?sign="));
    let key = ringpush::api::auth::rsa_public_key_from_pem(
        &std::fs::read_to_string(fixture("rsa-2048-public.pem")).unwrap(),
    )
    .unwrap();
    assert!(verifies(&key, &got[0]));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_receipt_url_without_a_signing_key_or_with_a_bad_one_stops_the_start() {
    let dir = Daemon::scratch_dir("receipt-nokey");
    let url = app("demo", Some("http://127.0.0.1:9/r"));
    let err = Daemon::try_start_in(&dir, &url).err().unwrap();
    assert!(err.contains("receipts.signing_key_file"), "{err}");
    let public_as_key = format!(
        "[receipts]\nsigning_key_file = \"{}\"\n{url}",
        fixture("rsa-2048-public.pem")
    );
    let err = Daemon::try_start_in(&dir, &public_as_key).err().unwrap();
    assert!(
        err.contains("receipts.signing_key_file") && err.contains("rsa-2048-public.pem"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn receipts_an_orderly_stop_could_not_deliver_are_posted_after_the_restart() {
    let receiver = Receiver::http(&[]);
    receiver.answer_from_now_on(503);
    let dir = Daemon::scratch_dir("receipt-restart");
    let config = format!(
        "io = \"epoll\"\nshards = 2\n{}{}",
        receipts_section("shutdown_grace_ms = 100"),
        app("demo", Some(&receiver.url("http", "/r"))),
    );
    let mut d = Daemon::start_in(&dir, &config);
    let mut phone = Device::connect_app(d.device, "demo", "");
    push_and_ack(&d, "demo", &mut phone, "across");
    receiver.wait_for(1);
    assert!(d.terminate().success());
    let outbox = dir.join("data").join("receipts.pending");
    assert!(outbox.exists(), "the undelivered receipt is saved");
    receiver.answer_from_now_on(200);
    let d = Daemon::start_in(&dir, &config);
    wait_metric(
        &d,
        "ringpush_receipts_sent_total",
        &[("app", "demo"), ("result", "ok")],
        1.0,
    );
    let last = receiver.received().pop().unwrap();
    assert_eq!(last.json()["msgId"], "across");
    assert_eq!(last.json()["extInfo"]["adToken"], phone.token.as_str());
    let key = ringpush::api::auth::rsa_public_key_from_pem(
        &std::fs::read_to_string(fixture("rsa-2048-public.pem")).unwrap(),
    )
    .unwrap();
    assert!(verifies(&key, &last));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_batch_max_a_post_carries_an_array_of_receipts_signed_once() {
    let receiver = Receiver::http(&[]);
    let config = format!(
        "{}{}",
        receipts_section("batch_max = 50"),
        app("demo", Some(&receiver.url("http", "/batch"))),
    );
    let d = Daemon::start("uring", &config);
    let key = ringpush::api::auth::rsa_public_key_from_pem(
        &std::fs::read_to_string(fixture("rsa-2048-public.pem")).unwrap(),
    )
    .unwrap();
    let mut phone = Device::connect_app(d.device, "demo", "");
    for i in 0..20 {
        push_and_ack(&d, "demo", &mut phone, &format!("b{i}"));
    }
    wait_metric(
        &d,
        "ringpush_receipts_sent_total",
        &[("app", "demo"), ("result", "ok")],
        20.0,
    );
    let mut keys = Vec::new();
    for post in receiver.received() {
        assert!(verifies(&key, &post), "one signature over the whole array");
        let serde_json::Value::Array(receipts) = post.json() else {
            panic!("not an array: {}", String::from_utf8_lossy(&post.body));
        };
        for r in receipts {
            assert_eq!(r["extInfo"]["adToken"], phone.token.as_str());
            assert_eq!(r["statusDesc"], "Acked");
            keys.push(r["msgId"].as_str().unwrap().to_string());
        }
    }
    keys.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    want.sort();
    assert_eq!(keys, want, "every receipt once");
}

#[test]
fn a_push_by_user_names_the_user_and_a_broadcast_its_task() {
    use ringpush::protocol::{body, Frame};
    let receiver = Receiver::http(&[]);
    let config = format!(
        "{}{}",
        receipts_section(""),
        app("demo", Some(&receiver.url("http", "/r"))),
    );
    let d = Daemon::start("epoll", &config);
    let mut phone = Device::connect_app(d.device, "demo", "");
    phone.send(&Frame::Bind(body::UserBinding {
        request_id: 1,
        user_id: "alice".into(),
    }));
    assert!(matches!(phone.recv(), Some(Frame::RequestResult(r)) if r.code == 100));
    let to_user = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "to users",
        "title": "Hi", "content": "For you", "deliveryType": 3,
        "targetMsgkey": {"alice": "u-1"}, "expiredSeconds": 600,
    });
    assert_eq!(d.http("POST", "/v1/push/simple", &to_user.to_string()).0, 200);
    let push = phone.recv_push();
    phone.ack(&[push.id]);
    let got = receiver.wait_for(1);
    let r = got[0].json();
    assert_eq!((&r["msgId"], &r["targetId"]), (&json!("u-1"), &json!("alice")));
    assert_eq!(r["extInfo"]["adToken"], phone.token.as_str());
    assert!(r.get("taskId").is_none(), "{r}");

    let broadcast = json!({
        "appId": "demo", "workspaceId": "default", "taskName": "news",
        "title": "Hello all", "content": "A broadcast", "deliveryType": 1,
        "msgkey": "b-1", "expiredSeconds": 600, "pushStatus": 1, "unBindPeriod": 4,
    });
    let (status, answer) = d.http("POST", "/v1/push/broadcast", &broadcast.to_string());
    assert_eq!(status, 200, "{answer}");
    let push = phone.recv_push();
    assert!(!push.task_id.is_empty());
    phone.ack(&[push.id]);
    let got = receiver.wait_for(2);
    let r = got[1].json();
    assert_eq!(
        (&r["msgId"], &r["targetId"]),
        (&json!("b-1"), &json!(phone.token.as_str()))
    );
    assert_eq!(r["taskId"], push.task_id.as_str());
}
