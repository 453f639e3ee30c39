//! Micro-benchmarks of the wire: frame encode and decode, the zero-copy
//! fan-out of one encoded frame, and the server's cost of checking a device's
//! authenticated Hello. The delivery core is in `benches/core.rs`, the log
//! and templates in `benches/storage.rs`. Run: `cargo bench --bench codec`.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringpush::config::Config;
use ringpush::protocol::{body, decode_frame, decode_slice, Frame, PROTOCOL_VERSION};

fn codec(c: &mut Criterion) {
    let push = common::sample_push(42);
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
    let ack1 = Frame::Ack(body::Ids { ids: vec![1_000_000] });
    group.bench_function("encode_ack1", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            ack1.encode(&mut out);
        })
    });
    let hello = Frame::Hello(Box::new(body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: "demo".into(),
        platform: 1,
        token: "0123456789abcdef0123456789abcdef".into(),
        ..Default::default()
    }))
    .to_bytes();
    group.bench_function("decode_hello_slice", |b| {
        b.iter(|| decode_slice(std::hint::black_box(&hello), 4096).unwrap())
    });
    // A broadcast is encoded once; each device's copy is a reference-counted
    // view of the same bytes, not a re-encode.
    let shared = Bytes::from(bytes.to_vec());
    group.bench_function("fanout_share_encoded_push", |b| {
        b.iter(|| std::hint::black_box(shared.clone()))
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

criterion_group!(benches, codec, device_auth);
criterion_main!(benches);
