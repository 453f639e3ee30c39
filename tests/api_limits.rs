//! The push API's abuse limits on the real daemon: per-app rate limits
//! (3901, HTTP 429, Retry-After, then served again once the bucket
//! refills), the header read timeout against slowloris (while other
//! connections are served), the body read timeout (408, 3902), the head
//! size cap (431) and the connection cap; each counted in its metric.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn metric(text: &str, name_and_labels: &str) -> u64 {
    let prefix = format!("{name_and_labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// A query any app may send: the status of a message nobody pushed.
fn status_query(app: &str) -> String {
    format!("/v1/messages/nothing?target=no-token&appId={app}")
}

fn signed_get(d: &Daemon, app: &str) -> (u16, String, String) {
    let path = status_query(app);
    let signer = ringpush::api::auth::HmacSigner::new(app, test_app_secret(app).as_bytes());
    send_http_head(d.api, "GET", &path, &sign(&signer, "GET", &path, ""), "").unwrap()
}

#[test]
fn an_app_over_its_rate_gets_429_then_is_served_after_the_refill() {
    for backend in BACKENDS {
        let config = format!(
            "io = \"{backend}\"\nshards = 2\n{}apiRatePerSec = 1\napiBurst = 3\n{}",
            app_entry("slow", false),
            app_entry("other", false)
        );
        let d = Daemon::start_with(&config);
        // Requests whose signature does not verify spend nothing of the
        // app's budget: a forger cannot starve it.
        let forger = ringpush::api::auth::HmacSigner::new("slow", b"not-the-apps-secret-at-all");
        for _ in 0..5 {
            let path = status_query("slow");
            let (status, body) =
                send_http(d.api, "GET", &path, &sign(&forger, "GET", &path, ""), "").unwrap();
            assert_eq!(status, 401, "{body}");
        }
        // The burst is served, then 429. The bucket refills at 1/s while
        // this runs, so a slow machine may see one more served per second.
        let first = Instant::now();
        let mut served = 0;
        let (head, body) = loop {
            let (status, head, body) = signed_get(&d, "slow");
            if status == 429 {
                break (head, body);
            }
            assert_eq!(status, 200, "{body}");
            served += 1;
            let allowed = 3 + first.elapsed().as_secs() as usize + 1;
            assert!(served <= allowed, "{served} served in {:?}", first.elapsed());
        };
        assert!(served >= 3, "the burst of 3 was cut short: {served}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["ResultCode"], "3901", "{json}");
        let retry_after: u64 = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after:")
                    .map(|v| v.trim().to_string())
            })
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        // Another app's budget is its own.
        assert_eq!(signed_get(&d, "other").0, 200);
        // Refilled at 1/s: served again, well within the bound.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, _, body) = signed_get(&d, "slow");
            if status == 200 {
                break;
            }
            assert_eq!(status, 429, "{body}");
            assert!(Instant::now() < deadline, "never served again");
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = d.metrics();
        assert!(
            metric(&text, "ringpush_api_rate_limited_total{app=\"slow\"}") >= 1,
            "{backend}"
        );
        assert_eq!(metric(&text, "ringpush_api_rate_limited_total{app=\"other\"}"), 0);
    }
}

/// Opens a connection and sends `bytes`.
fn open(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// Reads until the server closes; what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn slowloris_is_closed_at_the_header_timeout_while_others_are_served() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "[http]\nheader_timeout_ms = 1500\n");
        let api = d.api;
        let started = Instant::now();
        // One byte of the head every 200 ms: the head would take seconds.
        let slow = std::thread::spawn(move || {
            let head = format!("GET {} HTTP/1.1\r\nHost: x\r\nX-Padding: ", status_query("demo"));
            let mut s = TcpStream::connect(api).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            for byte in head.bytes().chain(std::iter::repeat(b'a')) {
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                // Closed by the server: a read sees the end (or a reset).
                s.set_nonblocking(true).unwrap();
                let mut probe = [0u8; 1024];
                let closed =
                    !matches!(s.read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                s.set_nonblocking(false).unwrap();
                if closed || started.elapsed() > PATIENCE {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            started.elapsed()
        });
        // Meanwhile, normal requests on other connections are answered.
        while !slow.is_finished() {
            let (status, _) = d.http("GET", &status_query("demo"), "");
            assert_eq!(status, 200);
            std::thread::sleep(Duration::from_millis(100));
        }
        let closed_after = slow.join().unwrap();
        assert!(
            closed_after >= Duration::from_millis(1400) && closed_after < PATIENCE,
            "{backend}: slow head closed after {closed_after:?}"
        );
        let text = d.metrics();
        assert!(
            metric(
                &text,
                "ringpush_http_limit_hits_total{server=\"api\",limit=\"header_timeout\"}"
            ) >= 1,
            "{backend}"
        );
    }
}

#[test]
fn a_slow_body_gets_408_and_a_big_head_431() {
    for backend in BACKENDS {
        let d = Daemon::start(
            backend,
            "[http]\nbody_timeout_ms = 1000\nmax_header_bytes = 4096\n",
        );
        let path = "/v1/push/simple";
        let signer = ringpush::api::auth::HmacSigner::new(TEST_APP, TEST_APP_SECRET.as_bytes());
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n");
        for (name, value) in sign(&signer, "POST", path, "") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n{\"appId\":");
        let started = Instant::now();
        let mut s = open(d.api, head.as_bytes());
        let answer = read_to_close(&mut s);
        let took = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"3902\""), "{answer}");
        assert!(took >= Duration::from_millis(900), "{took:?}");

        let big = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            status_query("demo"),
            "b".repeat(8192)
        );
        let mut s = open(d.api, big.as_bytes());
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        let text = d.metrics();
        for limit in ["body_timeout", "header_size"] {
            let name = format!("ringpush_http_limit_hits_total{{server=\"api\",limit=\"{limit}\"}}");
            assert_eq!(metric(&text, &name), 1, "{backend}: {limit}");
        }
    }
}

#[test]
fn connections_past_the_cap_are_closed_at_accept() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "[http]\nmax_connections = 3\n");
        // Three idle connections, each proven accepted by an answer.
        let mut held: Vec<TcpStream> = (0..3)
            .map(|_| {
                let signer = ringpush::api::auth::HmacSigner::new(TEST_APP, TEST_APP_SECRET.as_bytes());
                let path = status_query("demo");
                let mut head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
                for (name, value) in sign(&signer, "GET", &path, "") {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let mut s = open(d.api, head.as_bytes());
                let mut buf = [0u8; 12];
                s.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"HTTP/1.1 200");
                s
            })
            .collect();
        // The fourth is closed without an answer.
        let mut fourth = open(d.api, b"GET /v1/statistics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(read_to_close(&mut fourth), "", "{backend}");
        // One ends: a new connection is served again.
        drop(held.pop());
        let deadline = Instant::now() + PATIENCE;
        loop {
            match try_raw_http(d.api, "GET", &status_query("demo"), "") {
                Ok((200, _)) => break,
                other => assert!(Instant::now() < deadline, "never served again: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = d.metrics();
        assert!(
            metric(
                &text,
                "ringpush_http_limit_hits_total{server=\"api\",limit=\"connections\"}"
            ) >= 1,
            "{backend}"
        );
    }
}

#[test]
fn a_stop_is_not_held_up_by_idle_or_trickling_connections() {
    for backend in BACKENDS {
        let mut d = Daemon::start(backend, "[http]\nshutdown_grace_ms = 1000\n");
        // An idle kept-alive connection, after an answered request.
        let path = status_query("demo");
        let signer = ringpush::api::auth::HmacSigner::new(TEST_APP, TEST_APP_SECRET.as_bytes());
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for (name, value) in sign(&signer, "GET", &path, "") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut idle = open(d.api, head.as_bytes());
        let mut buf = [0u8; 12];
        idle.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        // A head in progress, and a body in progress.
        let _partial_head = open(d.api, b"GET /v1/statis");
        let _partial_body = open(
            d.api,
            b"POST /v1/push/simple HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        );
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let status = d.terminate();
        let took = started.elapsed();
        assert!(status.success(), "{backend}: {status}");
        // The grace period bounds it, not the 10 s header or 30 s body timeout.
        assert!(took < Duration::from_secs(8), "{backend}: stop took {took:?}");
    }
}
