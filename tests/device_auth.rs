//! Device authentication (docs/protocol.md, "Device authentication") on the
//! real daemon, both I/O backends: signed Hellos (good, bad signature,
//! skewed, replayed — also to the other shard — and another app's secret),
//! credentials (good and reused, expired, another app's, bound to another
//! token), and the isolation of apps: a device of one app can neither get
//! nor use another app's token, receive its messages or ack them.

mod common;

use common::*;
use ringpush::device_auth::{mint_credential, Claims};
use ringpush::protocol::{body, ErrorCode, Frame, PROTOCOL_VERSION};

/// Two apps requiring device authentication, and one that does not.
fn config(backend: &str) -> String {
    format!(
        "io = \"{backend}\"\nshards = 2\n{}{}{}",
        app_entry("alpha", true),
        app_entry("beta", true),
        app_entry("open", false)
    )
}

/// The Error a refused Hello gets, then the close.
fn refused(answer: Option<Frame>, mut device: Device, reason: &str) {
    match answer {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::AuthFailed as u32, "{e:?}");
            assert!(
                e.reason.starts_with(reason),
                "wanted {reason}, got {:?}",
                e.reason
            );
        }
        other => panic!("wanted Error({reason}), got {other:?}"),
    }
    assert!(device.until_closed().is_empty(), "closed after the Error");
}

fn bare_hello(app: &str, token: &str) -> body::Hello {
    body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: app.into(),
        platform: 1,
        token: token.into(),
        ..Default::default()
    }
}

fn metric(text: &str, reason: &str) -> u64 {
    let prefix = format!("ringpush_device_auth_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[test]
fn signed_hellos() {
    for backend in BACKENDS {
        let d = Daemon::start_with(&config(backend));
        let alpha = device_secret("alpha");

        // A good signature: Welcome, and the token works with the next
        // signed Hello.
        let dev = Device::connect_signed(d.device, "alpha", "");
        let token = dev.token.clone();
        drop(dev);
        let again = Device::connect_signed(d.device, "alpha", &token);
        assert_eq!(again.token, token);
        assert!(!again.welcome.as_ref().unwrap().new_token);
        drop(again);

        // No proof at all, for an app that requires one; none needed for
        // an app that does not.
        let (dev, answer) = Device::hello(d.device, bare_hello("alpha", ""));
        refused(answer, dev, "missing");
        let (_, answer) = Device::hello(d.device, bare_hello("open", ""));
        assert!(matches!(answer, Some(Frame::Welcome(_))), "{answer:?}");

        // A bad signature: signed over another token than presented.
        let mut tampered = signed_hello("alpha", "", &alpha, now_ms(), &fresh_nonce());
        tampered.token = token.clone();
        let (dev, answer) = Device::hello(d.device, tampered);
        refused(answer, dev, "bad_signature");

        // Signed with the other app's device secret.
        let hello = signed_hello("alpha", "", &device_secret("beta"), now_ms(), &fresh_nonce());
        let (dev, answer) = Device::hello(d.device, hello);
        refused(answer, dev, "bad_signature");

        // Ten minutes off, either way (the window is 300 s).
        for skewed in [now_ms() - 600_000, now_ms() + 600_000] {
            let hello = signed_hello("alpha", "", &alpha, skewed, &fresh_nonce());
            let (dev, answer) = Device::hello(d.device, hello);
            refused(answer, dev, "clock_skew");
        }

        // One signed Hello sent on eight connections: SO_REUSEPORT spreads
        // them over both shards, and exactly one gets in.
        let hello = signed_hello("alpha", "", &alpha, now_ms(), &fresh_nonce());
        let mut welcomed = 0;
        for _ in 0..8 {
            match Device::hello(d.device, hello.clone()) {
                (_, Some(Frame::Welcome(_))) => welcomed += 1,
                (dev, answer) => refused(answer, dev, "replayed_nonce"),
            }
        }
        assert_eq!(welcomed, 1, "{backend}");
        // The same for a Hello with a token, handed to its owner shard.
        let hello = signed_hello("alpha", &token, &alpha, now_ms(), &fresh_nonce());
        let (first, answer) = Device::hello(d.device, hello.clone());
        assert!(matches!(answer, Some(Frame::Welcome(_))), "{answer:?}");
        drop(first);
        let (dev, answer) = Device::hello(d.device, hello);
        refused(answer, dev, "replayed_nonce");

        let text = d.metrics();
        assert_eq!(metric(&text, "missing"), 1, "{backend}");
        assert_eq!(metric(&text, "bad_signature"), 2, "{backend}");
        assert_eq!(metric(&text, "clock_skew"), 2, "{backend}");
        assert_eq!(metric(&text, "replayed_nonce"), 8, "{backend}");
    }
}

#[test]
fn credentials() {
    for backend in BACKENDS {
        let d = Daemon::start_with(&config(backend));
        let alpha = device_secret("alpha");
        let claims = |app: &str, exp: u64, token: Option<&str>| Claims {
            app_id: app.into(),
            exp,
            token: token.map(Into::into),
        };
        let with = |app: &str, token: &str, credential: String| body::Hello {
            credential,
            ..bare_hello(app, token)
        };

        // Good, and good again on the next connection with the token it got.
        let credential = mint_credential(alpha.as_bytes(), &claims("alpha", now_ms() + 600_000, None));
        let (first, answer) = Device::hello(d.device, with("alpha", "", credential.clone()));
        assert!(matches!(answer, Some(Frame::Welcome(_))), "{answer:?}");
        let token = first.token.clone();
        drop(first);
        let (dev, answer) = Device::hello(d.device, with("alpha", &token, credential));
        assert!(matches!(answer, Some(Frame::Welcome(_))), "{answer:?}");
        assert_eq!(dev.token, token);
        drop(dev);

        let expired = mint_credential(alpha.as_bytes(), &claims("alpha", now_ms() - 1_000, None));
        let (dev, answer) = Device::hello(d.device, with("alpha", "", expired));
        refused(answer, dev, "expired");

        // Beta's backend's credential, presented as alpha.
        let betas = mint_credential(
            device_secret("beta").as_bytes(),
            &claims("beta", now_ms() + 600_000, None),
        );
        let (dev, answer) = Device::hello(d.device, with("alpha", "", betas));
        refused(answer, dev, "bad_signature");

        // Bound to one token, presented with another.
        let bound = mint_credential(
            alpha.as_bytes(),
            &claims("alpha", now_ms() + 600_000, Some(&token)),
        );
        let (dev, answer) = Device::hello(d.device, with("alpha", "", bound.clone()));
        refused(answer, dev, "wrong_token");
        let (dev, answer) = Device::hello(d.device, with("alpha", &token, bound));
        assert!(matches!(answer, Some(Frame::Welcome(_))), "{answer:?}");
        drop(dev);

        let garbage = with("alpha", "", "not a credential".into());
        let (dev, answer) = Device::hello(d.device, garbage);
        refused(answer, dev, "malformed");
    }
}

/// A device of alpha presents beta's token, acks beta's message ids, and
/// waits for beta's pushes: it gets a token of its own, beta's message
/// stays beta's, and only beta's device receives and acks it.
#[test]
fn a_device_of_one_app_never_gets_anothers_token_or_messages() {
    for backend in BACKENDS {
        let d = Daemon::start_with(&config(backend));
        let beta = Device::connect_signed(d.device, "beta", "");
        let beta_token = beta.token.clone();
        drop(beta);
        // A message for beta's device while it is offline.
        let push = |msg_key: &str| {
            let body = serde_json::json!({
                "appId": "beta", "workspaceId": "default", "taskName": "isolation",
                "title": "for beta", "content": "beta only", "deliveryType": 1,
                "targetMsgkey": { beta_token.as_str(): msg_key }, "expiredSeconds": 300,
            });
            let (code, json) = d.http("POST", "/v1/push/simple", &body.to_string());
            assert_eq!(code, 200, "{json}");
            json["PushResult"]["Targets"][0]["messageId"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let status = |msg_key: &str| {
            let path = format!("/v1/messages/{msg_key}?target={beta_token}&appId=beta");
            let (code, json) = d.http("GET", &path, "");
            assert_eq!(code, 200, "{json}");
            json["PushResult"]["Data"]["status"].as_i64().unwrap()
        };
        let id = push("b-1");

        // Alpha's device, properly signed as alpha, presents beta's token.
        let mut thief = Device::connect_signed(d.device, "alpha", &beta_token);
        assert_ne!(thief.token, beta_token, "{backend}");
        assert!(thief.welcome.as_ref().unwrap().new_token);
        // It acks beta's message id (and its neighbours) and gets nothing.
        thief.ack(&[id, id + 1, id.wrapping_sub(1)]);
        let seen = thief.drain_until_pong();
        assert!(seen.iter().all(|f| !matches!(f, Frame::Push(_))), "{seen:?}");
        assert_eq!(status("b-1"), 0, "beta's message is still pending for beta");

        // Beta's pushes while both are online reach beta's device only.
        let mut beta = Device::connect_signed(d.device, "beta", &beta_token);
        assert_eq!(beta.token, beta_token);
        let first = beta.recv_push();
        assert_eq!((first.id, first.msg_key.as_str()), (id, "b-1"));
        let id2 = push("b-2");
        let second = beta.recv_push();
        assert_eq!(second.id, id2);
        thief.ack(&[id2]);
        let seen = thief.drain_until_pong();
        assert!(seen.iter().all(|f| !matches!(f, Frame::Push(_))), "{seen:?}");
        assert_eq!(status("b-2"), 0, "the thief's ack did not count");
        beta.ack(&[id, id2]);
        let deadline = std::time::Instant::now() + PATIENCE;
        while status("b-1") != 2 || status("b-2") != 2 {
            assert!(std::time::Instant::now() < deadline, "beta's acks not recorded");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        // Even an app without device authentication cannot take the token:
        // alpha's token presented to "open" gets a fresh one of "open".
        let (open, answer) = Device::hello(d.device, bare_hello("open", &beta_token));
        assert!(matches!(answer, Some(Frame::Welcome(_))), "{answer:?}");
        assert_ne!(open.token, beta_token);
    }
}
