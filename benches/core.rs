//! Micro-benchmarks of the delivery core, one step per device event, with no
//! sockets: a push written and acked, a heartbeat, a reconnect with a known
//! token, and the per-device queue (a push stored for an offline device, a
//! reconnecting device served its backlog). Run: `cargo bench --bench core`.
//!
//! Journal commits are answered at once (`journal_done(Ok(None))`), so the
//! figures are the core's own cost; the log's is in `benches/storage.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringpush::config::Config;
use ringpush::delivery::{ConnId, DeliveryCore, IoAction};
use ringpush::message::{unix_ms, Command, Message, TaskTag};
use ringpush::protocol::{body, decode_slice, Frame, PROTOCOL_VERSION};
use ringpush::stats::PushType;

fn hello(token: &str) -> Vec<u8> {
    Frame::Hello(Box::new(body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: "demo".into(),
        platform: 1,
        token: token.into(),
        ..Default::default()
    }))
    .to_bytes()
    .to_vec()
}

/// Answers the journal, writes whatever the core queued and returns the
/// bytes `conn` got.
fn settle(core: &mut DeliveryCore, conn: ConnId, now: Instant) -> Vec<u8> {
    if core.journal_pending() {
        core.journal_done(Ok(None), now);
    }
    let mut out = Vec::new();
    while let Some(action) = core.poll_action() {
        if let IoAction::Send(c) | IoAction::Close(c) = action {
            if let Some(bytes) = core.take_outbound(c) {
                if c == conn {
                    out.extend_from_slice(&bytes);
                }
            }
        }
    }
    out
}

/// Connects a device (a new one when `token` is empty) and returns its
/// connection and token.
fn connect(core: &mut DeliveryCore, token: &str, now: Instant) -> (ConnId, String) {
    let conn = core.open_connection(now).expect("a free connection slot");
    core.on_bytes(conn, &hello(token), now);
    let out = settle(core, conn, now);
    match decode_slice(&out, 1 << 20).unwrap().unwrap().0 {
        Frame::Welcome(w) => (conn, w.token),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

fn disconnect(core: &mut DeliveryCore, conn: ConnId, now: Instant) {
    core.on_closed(conn, now);
    settle(core, usize::MAX, now);
}

struct Pusher {
    app: Arc<str>,
    task: TaskTag,
    now_ms: u64,
    next_id: u64,
}

impl Pusher {
    fn new() -> Self {
        Self {
            app: "demo".into(),
            task: TaskTag::untasked(PushType::Simple),
            now_ms: unix_ms(),
            next_id: 0,
        }
    }

    fn push(&mut self, core: &mut DeliveryCore, token: &str, now: Instant) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let (reply, _answer) = tokio::sync::oneshot::channel();
        core.on_command(
            Command::Push {
                messages: vec![Message {
                    id,
                    app_id: self.app.clone(),
                    token: token.into(),
                    msg_key: id.to_string().into(),
                    accepted_at_ms: self.now_ms,
                    expires_at_ms: self.now_ms + 300_000,
                    frame: Bytes::from(common::sample_push(id).to_bytes()),
                    task: self.task.clone(),
                    collapse_key: None,
                }],
                reply,
            },
            now,
        );
        id
    }
}

fn ack(ids: impl IntoIterator<Item = u64>) -> Vec<u8> {
    Frame::Ack(body::Ids {
        ids: ids.into_iter().collect(),
    })
    .to_bytes()
    .to_vec()
}

fn device_events(c: &mut Criterion) {
    let config = Config::default();
    let start = Instant::now();
    let mut core = DeliveryCore::new(0, 1, &config, start);
    let (conn, token) = connect(&mut core, "", start);
    let mut pusher = Pusher::new();
    let mut tick = 0u64;
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_write_ack", |b| {
        b.iter(|| {
            tick += 1;
            let now = start + Duration::from_micros(tick);
            let id = pusher.push(&mut core, &token, now);
            settle(&mut core, conn, now);
            core.on_bytes(conn, &ack([id]), now);
        })
    });
    let ping = Frame::Ping(body::Heartbeat { time_ms: 1 }).to_bytes();
    group.bench_function("ping_pong", |b| {
        b.iter(|| {
            tick += 1;
            let now = start + Duration::from_micros(tick);
            core.on_bytes(conn, &ping, now);
            settle(&mut core, conn, now)
        })
    });
    // A device that comes back with its token and nothing pending: Hello,
    // Welcome, and the close that ends the session.
    let (other, returning) = connect(&mut core, "", start);
    disconnect(&mut core, other, start);
    let returning_hello = hello(&returning);
    group.bench_function("reconnect_hello_close", |b| {
        b.iter(|| {
            tick += 1;
            let now = start + Duration::from_micros(tick);
            let conn = core.open_connection(now).unwrap();
            core.on_bytes(conn, &returning_hello, now);
            let welcome = settle(&mut core, conn, now);
            disconnect(&mut core, conn, now);
            welcome
        })
    });
    group.finish();
}

/// Offline devices whose queues the benchmarks fill and drain.
fn offline_devices(count: usize, start: Instant) -> (DeliveryCore, Vec<String>) {
    let mut config = Config::default();
    config.limits.max_connections_per_shard = config.limits.max_connections_per_shard.max(count + 16);
    let mut core = DeliveryCore::new(0, 1, &config, start);
    let tokens = (0..count)
        .map(|_| {
            let (conn, token) = connect(&mut core, "", start);
            disconnect(&mut core, conn, start);
            token
        })
        .collect();
    (core, tokens)
}

fn device_queue(c: &mut Criterion) {
    const DEVICES: usize = 1000;
    const BACKLOG: usize = 10;
    let start = Instant::now();
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(DEVICES as u64));
    // Stored for an offline device: accepted, journaled, queued. Spread over
    // many devices so no queue reaches `max_pending_per_device`.
    group.bench_function("store_for_offline_device", |b| {
        b.iter_batched_ref(
            || (offline_devices(DEVICES, start), Pusher::new()),
            |((core, tokens), pusher)| {
                for token in tokens.iter() {
                    pusher.push(core, token, start);
                    core.journal_done(Ok(None), start);
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(BACKLOG as u64));
    // A device reconnects owing BACKLOG messages: Hello, Welcome and the
    // backlog written, one Ack for all of it, close.
    group.bench_function("reconnect_drain_10", |b| {
        b.iter_custom(|iters| {
            let (mut core, tokens) = offline_devices(iters as usize, start);
            let mut pusher = Pusher::new();
            let mut owed: Vec<Vec<u64>> = vec![Vec::with_capacity(BACKLOG); tokens.len()];
            for _ in 0..BACKLOG {
                for (token, ids) in tokens.iter().zip(&mut owed) {
                    ids.push(pusher.push(&mut core, token, start));
                }
                core.journal_done(Ok(None), start);
            }
            let hellos: Vec<Vec<u8>> = tokens.iter().map(|t| hello(t)).collect();
            let acks: Vec<Vec<u8>> = owed.into_iter().map(ack).collect();
            let timer = Instant::now();
            for (hello, ack) in hellos.iter().zip(&acks) {
                let conn = core.open_connection(start).unwrap();
                core.on_bytes(conn, hello, start);
                settle(&mut core, conn, start);
                core.on_bytes(conn, ack, start);
                settle(&mut core, conn, start);
                disconnect(&mut core, conn, start);
            }
            timer.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, device_events, device_queue);
criterion_main!(benches);
