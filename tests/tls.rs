//! The TLS device listener on the real daemon, both I/O backends: TLS 1.3
//! and 1.2 with Hello, push and ack; resumption; TLS 1.1 refused; client
//! certificates per app (Error 20); certificate reload on SIGHUP with an
//! open session; app isolation over TLS; the handshake deadline for a TLS
//! connection that never says Hello; hand-off between shards; GoAway and
//! close_notify at shutdown.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;
use ringpush::protocol::{ErrorCode, Frame, GoAwayReason};

/// Sum of a metric's series whose labels contain every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `condition` until it holds, panicking after PATIENCE.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tls_daemon(backend: &str, name: &str, extra: &str) -> (Daemon, Ca, std::path::PathBuf) {
    let dir = cert_dir(&format!("{name}-{backend}"));
    let ca = Ca::new("server ca");
    let tls = ca.write_server_files(&dir);
    let d = Daemon::start(backend, &format!("{extra}\n{tls}"));
    assert!(d.device_tls.is_some(), "the TLS listener is on");
    (d, ca, dir)
}

#[test]
fn tls13_and_tls12_hello_push_ack_and_resumption() {
    for backend in BACKENDS {
        let (d, ca, dir) = tls_daemon(backend, "basic", "");
        let addr = d.device_tls.unwrap();
        for (versions, want) in [
            (TLS13, rustls::ProtocolVersion::TLSv1_3),
            (TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let config = client_config(&ca, versions, None);
            let mut device = TlsDevice::connect_app(addr, &config, "demo", "");
            assert_eq!(device.version(), Some(want));
            assert!(!device.resumed());
            let token = device.token.clone();
            let key = format!("m-{want:?}");
            let (code, json) = d.push(&token, &key, 300);
            assert_eq!(code, 200, "{json}");
            let push = device.recv_push();
            device.ack(&[push.id]);
            d.wait_status(&token, &key, 2);
            // Same client config: the ticket (1.3) or session (1.2) resumes.
            drop(device);
            let mut again = TlsDevice::connect(addr, &config);
            assert!(again.resumed(), "{backend} {want:?}: second connection resumes");
            match again.hello("demo", &token) {
                Some(Frame::Welcome(w)) => assert_eq!(w.token, token),
                other => panic!("expected Welcome, got {other:?}"),
            }
        }
        let metrics = d.metrics();
        for version in ["1.2", "1.3"] {
            let v = format!("version=\"{version}\"");
            assert!(
                metric_sum(
                    &metrics,
                    "ringpush_tls_handshakes_total",
                    &["result=\"ok\"", &v, "resumed=\"false\""]
                ) >= 1.0
            );
            assert!(
                metric_sum(
                    &metrics,
                    "ringpush_tls_handshakes_total",
                    &["result=\"ok\"", &v, "resumed=\"true\""]
                ) >= 1.0
            );
        }
        // The plain listener still serves plaintext beside it.
        let plain = d.device("");
        assert!(!plain.token.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn tls11_is_refused_with_protocol_version() {
    for backend in BACKENDS {
        let (d, _ca, dir) = tls_daemon(backend, "tls11", "");
        let mut tcp = std::net::TcpStream::connect(d.device_tls.unwrap()).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        tcp.write_all(&tls11_client_hello()).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        // One alert record: fatal (2), protocol_version (70); then EOF.
        assert_eq!(answer.len(), 7, "{answer:?}");
        assert_eq!(answer[0], 21, "{answer:?}");
        assert_eq!(&answer[5..], &[2, 70]);
        wait_for("the failure metric", || {
            metric_sum(
                &d.metrics(),
                "ringpush_tls_handshake_failures_total",
                &["reason=\"protocol_version\""],
            ) >= 1.0
        });
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn client_certificates_per_app() {
    for backend in BACKENDS {
        let dir = cert_dir(&format!("clientcert-{backend}"));
        let alpha = Ca::new("alpha devices");
        let beta = Ca::new("beta devices");
        let apps = format!(
            "{}clientCaFile = \"{}\"\nrequireClientCert = true\n{}clientCaFile = \"{}\"\nrequireClientCert = true\n{}",
            app_entry("alpha", false),
            alpha.write_ca_file(&dir, "alpha").display(),
            app_entry("beta", false),
            beta.write_ca_file(&dir, "beta").display(),
            SIGNED_DEMO_APP,
        );
        let (d, ca, _) = {
            let server = Ca::new("server ca");
            let tls = server.write_server_files(&dir);
            let d = Daemon::start(backend, &format!("{apps}\n{tls}"));
            (d, server, ())
        };
        let addr = d.device_tls.unwrap();
        let refused = |answer: Option<Frame>, mut device: TlsDevice, why: &str| {
            match answer {
                Some(Frame::Error(e)) => {
                    assert_eq!(e.code, ErrorCode::ClientCertRequired as u32, "{why}: {e:?}");
                }
                other => panic!("{why}: expected Error 20, got {other:?}"),
            }
            assert!(device.until_closed().is_empty(), "{why}: closed after the Error");
        };
        // No certificate.
        let anonymous = client_config(&ca, TLS13, None);
        let mut device = TlsDevice::connect(addr, &anonymous);
        let answer = device.hello("alpha", "");
        refused(answer, device, "no certificate");
        // A certificate from alpha's CA, for alpha: accepted.
        let alpha_cert = client_config(&ca, TLS13, Some(alpha.leaf("device-a")));
        let device = TlsDevice::connect_app(addr, &alpha_cert, "alpha", "");
        assert!(!device.token.is_empty());
        // The same certificate for beta: refused.
        let mut device = TlsDevice::connect(addr, &alpha_cert);
        let answer = device.hello("beta", "");
        refused(answer, device, "another app's CA");
        // An app without a policy takes anyone.
        TlsDevice::connect_app(addr, &anonymous, "demo", "");
        // Plain TCP cannot carry a certificate.
        let (_, answer) = Device::hello(
            d.device,
            ringpush::protocol::body::Hello {
                protocol_version: ringpush::protocol::PROTOCOL_VERSION,
                app_id: "alpha".into(),
                platform: 1,
                ..Default::default()
            },
        );
        assert!(
            matches!(&answer, Some(Frame::Error(e)) if e.code == ErrorCode::ClientCertRequired as u32),
            "{answer:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_sessions() {
    for backend in BACKENDS {
        let (d, old_ca, dir) = tls_daemon(backend, "reload", "");
        let addr = d.device_tls.unwrap();
        let old_config = client_config(&old_ca, TLS13, None);
        let mut open = TlsDevice::connect_app(addr, &old_config, "demo", "");
        // A bad file first: the running certificate stays.
        write_atomically(&dir.join("server.pem"), b"not a certificate");
        d.signal("HUP");
        wait_for("the failed reload", || {
            metric_sum(&d.metrics(), "ringpush_tls_reloads_total", &["result=\"failed\""]) >= 1.0
        });
        TlsDevice::connect_app(addr, &old_config, "demo", "");
        // A new certificate from another CA.
        let new_ca = Ca::new("new server ca");
        new_ca.write_server_files(&dir);
        d.signal("HUP");
        wait_for("the reload", || {
            metric_sum(&d.metrics(), "ringpush_tls_reloads_total", &["result=\"ok\""]) >= 1.0
        });
        let new_config = client_config(&new_ca, TLS13, None);
        let mut fresh = TlsDevice::connect_app(addr, &new_config, "demo", "");
        assert!(fresh.drain_until_pong().is_empty());
        assert!(
            TlsDevice::try_connect(addr, &client_config(&old_ca, TLS13, None)).is_err(),
            "new connections see the new certificate"
        );
        // The session opened before both reloads still works.
        assert!(open.drain_until_pong().is_empty());
        let token = open.token.clone();
        assert_eq!(d.push(&token, "after-reload", 300).0, 200);
        let push = open.recv_push();
        open.ack(&[push.id]);
        d.wait_status(&token, "after-reload", 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn apps_stay_isolated_over_tls() {
    for backend in BACKENDS {
        let dir = cert_dir(&format!("isolation-{backend}"));
        let server = Ca::new("server ca");
        let tls = server.write_server_files(&dir);
        let config = format!("{}{}\n{tls}", app_entry("other", false), SIGNED_DEMO_APP);
        let d = Daemon::start(backend, &config);
        let addr = d.device_tls.unwrap();
        let client = client_config(&server, TLS13, None);
        let mut victim = TlsDevice::connect_app(addr, &client, "demo", "");
        // A device of another app presenting the victim's token gets a
        // token of its own app.
        let mut thief = TlsDevice::connect_app(addr, &client, "other", &victim.token);
        assert_ne!(thief.token, victim.token);
        assert_eq!(d.push(&victim.token, "secret", 300).0, 200);
        let push = victim.recv_push();
        victim.ack(&[push.id]);
        d.wait_status(&victim.token, "secret", 2);
        assert!(thief.drain_until_pong().is_empty(), "nothing for the other app");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn handshake_deadline_covers_tls_and_hello() {
    for backend in BACKENDS {
        let (d, ca, dir) = tls_daemon(backend, "deadline", "[delivery]\nhandshake_timeout_secs = 1\n");
        let addr = d.device_tls.unwrap();
        // TLS done, no Hello: Error(handshake_timeout), then close_notify.
        let mut idle = TlsDevice::connect(addr, &client_config(&ca, TLS13, None));
        match idle.recv() {
            Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::HandshakeTimeout as u32),
            other => panic!("expected Error(handshake_timeout), got {other:?}"),
        }
        assert!(idle.closed_cleanly(), "close_notify after the Error");
        // Not even a ClientHello: closed.
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        assert!(silent.read_to_end(&mut rest).is_ok(), "closed by the server");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn reconnects_over_tls_are_handed_to_the_owner_shard() {
    for backend in BACKENDS {
        let (d, ca, dir) = tls_daemon(backend, "handoff", "");
        let addr = d.device_tls.unwrap();
        let config = client_config(&ca, TLS13, None);
        let first = TlsDevice::connect_app(addr, &config, "demo", "");
        let token = first.token.clone();
        drop(first);
        // SO_REUSEPORT spreads these over both shards; each reaches the
        // owner, keeps its token and gets its message.
        for round in 0..8 {
            let mut device = TlsDevice::connect_app(addr, &config, "demo", &token);
            assert_eq!(device.token, token);
            let key = format!("handoff-{round}");
            assert_eq!(d.push(&token, &key, 300).0, 200);
            let push = device.recv_push();
            device.ack(&[push.id]);
            d.wait_status(&token, &key, 2);
        }
        let handed = metric_sum(
            &d.metrics(),
            "ringpush_handshakes_total",
            &["result=\"handed_off\""],
        );
        eprintln!("{backend}: {handed} TLS hand-offs in 8 reconnects");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn shutdown_sends_goaway_then_close_notify() {
    for backend in BACKENDS {
        let (mut d, ca, dir) = tls_daemon(backend, "shutdown", "");
        let mut device = TlsDevice::connect_app(
            d.device_tls.unwrap(),
            &client_config(&ca, TLS13, None),
            "demo",
            "",
        );
        d.terminate();
        match device.recv() {
            Some(Frame::GoAway(g)) => assert_eq!(g.reason, GoAwayReason::Shutdown as u32),
            other => panic!("expected GoAway(shutdown), got {other:?}"),
        }
        assert!(device.closed_cleanly(), "close_notify after GoAway");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn unreadable_certificate_files_stop_the_start() {
    let dir = cert_dir("badfiles");
    let missing = format!(
        "io = \"epoll\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("absent.pem").display(),
        dir.join("absent.key").display()
    );
    let err = Daemon::try_start_in(&dir, &missing).err().expect("refused");
    assert!(err.contains("absent.pem"), "{err}");
    std::fs::write(
        dir.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    std::fs::write(dir.join("garbage.key"), "nothing").unwrap();
    let garbage = format!(
        "io = \"epoll\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("garbage.pem").display(),
        dir.join("garbage.key").display()
    );
    let err = Daemon::try_start_in(&dir, &garbage).err().expect("refused");
    assert!(
        err.contains("garbage.pem") || err.contains("garbage.key"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
