//! Micro-benchmarks of the per-message path: frame encode/decode and one
//! delivery-core step (accept a push for an online device, write it, take
//! the ack). Run: `cargo bench --bench codec`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringpush::config::Config;
use ringpush::delivery::{DeliveryCore, IoAction};
use ringpush::message::{Command, Message};
use ringpush::protocol::{body, decode_frame, decode_slice, Frame, PROTOCOL_VERSION};

fn sample_push(id: u64) -> Frame {
    Frame::Push(Box::new(body::Push {
        id,
        msg_key: "order-1234567".into(),
        title: "Your order shipped".into(),
        content: "Parcel 1Z999 left the warehouse and arrives tomorrow before noon.".into(),
        uri: "app://orders/1234567".into(),
        accepted_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_300_000,
        ..Default::default()
    }))
}

fn codec(c: &mut Criterion) {
    let push = sample_push(42);
    let bytes = push.to_bytes();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_push", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            push.encode(&mut out);
        })
    });
    group.bench_function("decode_push_slice", |b| {
        b.iter(|| decode_slice(std::hint::black_box(&bytes), 4096).unwrap())
    });
    let ack = Frame::Ack(body::Ids {
        ids: (1000..1032).collect(),
    })
    .to_bytes();
    group.bench_function("decode_ack32_bytesmut", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&ack[..]);
            decode_frame(&mut buf, 4096).unwrap()
        })
    });
    group.finish();
}

fn core_step(c: &mut Criterion) {
    let config = Config::default();
    let start = Instant::now();
    let mut core = DeliveryCore::new(0, 1, &config, start);
    let conn = core.open_connection(start).unwrap();
    let hello = Frame::Hello(Box::new(body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: "demo".into(),
        platform: 1,
        token: String::new(),
        ..Default::default()
    }));
    core.on_bytes(conn, &hello.to_bytes(), start);
    let out = core.take_outbound(conn).unwrap();
    let token = match decode_slice(&out, 4096).unwrap().unwrap().0 {
        Frame::Welcome(w) => w.token,
        other => panic!("{other:?}"),
    };
    while core.poll_action().is_some() {}
    let app: std::sync::Arc<str> = "demo".into();
    let task = ringpush::message::TaskTag::untasked(ringpush::stats::PushType::Simple);
    let now_ms = ringpush::message::unix_ms();
    let mut id = 0u64;
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_write_ack", |b| {
        b.iter(|| {
            id += 1;
            let now = start + Duration::from_micros(id);
            let (reply, _rx) = tokio::sync::oneshot::channel();
            core.on_command(
                Command::Push {
                    messages: vec![Message {
                        id,
                        app_id: app.clone(),
                        token: token.as_str().into(),
                        msg_key: id.to_string().into(),
                        accepted_at_ms: now_ms,
                        expires_at_ms: now_ms + 300_000,
                        frame: Bytes::from(sample_push(id).to_bytes()),
                        task: task.clone(),
                        collapse_key: None,
                    }],
                    reply,
                },
                now,
            );
            core.journal_done(Ok(None), now);
            while let Some(action) = core.poll_action() {
                if let IoAction::Send(c) = action {
                    core.take_outbound(c);
                }
            }
            let ack = Frame::Ack(body::Ids { ids: vec![id] }).to_bytes();
            core.on_bytes(conn, &ack, now);
        })
    });
    group.finish();
}

/// The server's cost of device authentication per Hello: a signed Hello
/// (HMAC verify and the shared nonce cache insert, a fresh nonce each) and
/// a credential (decode and HMAC verify).
fn device_auth(c: &mut Criterion) {
    use ringpush::config::{App, DeviceAuthMode, Secret};
    use ringpush::device_auth::{mint_credential, sign_hello, Claims, DeviceAuth};
    const T0: u64 = 1_767_225_600_000;
    let secret = "bench-device-secret-0123456789";
    let mut config = Config {
        apps: vec![App {
            device_secret: Some(Secret::new(secret)),
            device_auth: DeviceAuthMode::Required,
            allow_unsigned: true,
            ..App::new("demo", "default")
        }],
        ..Config::default()
    };
    config.device_auth.nonces_per_app = 50_000_000;
    let hello = || body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: "demo".into(),
        platform: 1,
        ..Default::default()
    };
    let mut group = c.benchmark_group("device_auth");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("check_signed_hello", |b| {
        b.iter_custom(|iters| {
            let auth = DeviceAuth::new(&config, T0 - 1000);
            let hellos: Vec<body::Hello> = (0..iters)
                .map(|i| {
                    let mut h = hello();
                    sign_hello(secret.as_bytes(), &mut h, T0, &format!("nonce-{i:012}"));
                    h
                })
                .collect();
            let start = Instant::now();
            for h in &hellos {
                auth.check(h, T0).unwrap();
            }
            start.elapsed()
        })
    });
    let credential = mint_credential(
        secret.as_bytes(),
        &Claims {
            app_id: "demo".into(),
            exp: T0 + 3_600_000,
            token: None,
        },
    );
    let with_credential = body::Hello {
        credential,
        ..hello()
    };
    let auth = DeviceAuth::new(&config, T0 - 1000);
    group.bench_function("check_credential", |b| {
        b.iter(|| auth.check(std::hint::black_box(&with_credential), T0).unwrap())
    });
    group.finish();
}

criterion_group!(benches, codec, core_step, device_auth);
criterion_main!(benches);
