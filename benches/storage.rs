//! Micro-benchmarks of what a push costs on its way to disk and back out of
//! a template: encoding an accepted-message journal entry, appending and
//! committing log records (fsync off, so the figure is ours and the page
//! cache's, not the disk's), and rendering a personalised template. Run:
//! `cargo bench --bench storage`.

mod common;

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringpush::journal::{AcceptedEntry, Entry};
use ringpush::log::{FsyncPolicy, Log, LogConfig};
use ringpush::stats::PushType;
use ringpush::templates::text::Text;

fn push_frame() -> Vec<u8> {
    common::sample_push(42).to_bytes().to_vec()
}

fn accepted(frame: &[u8]) -> Entry<'_> {
    Entry::Accepted(AcceptedEntry {
        message_id: 42,
        app: "demo",
        token: "0123456789abcdef0123456789abcdef",
        msg_key: "order-1234567",
        accepted_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_300_000,
        frame,
        task_id: 0,
        push_type: PushType::Simple,
        collapse_key: None,
    })
}

fn journal(c: &mut Criterion) {
    let frame = push_frame();
    let entry = accepted(&frame);
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_accepted", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            entry.write_to(&mut out);
            out.len()
        })
    });
    group.finish();
}

fn log_append(c: &mut Criterion) {
    const BATCH: usize = 64;
    let frame = push_frame();
    let mut record = Vec::new();
    accepted(&frame).write_to(&mut record);
    let dir = std::env::temp_dir().join(format!("ringpush-bench-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut log, _) = Log::open(LogConfig {
        dir: dir.clone(),
        segment_bytes: 64 << 20,
        fsync: FsyncPolicy::Never,
    })
    .expect("a log in the temp directory");
    let mut group = c.benchmark_group("log");
    // One commit per batch, as the shard loop commits once per loop turn.
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append_commit_64_framed_no_fsync", |b| {
        let batch: Vec<u8> = record
            .iter()
            .copied()
            .cycle()
            .take(record.len() * BATCH)
            .collect();
        b.iter(|| {
            log.append_framed(&batch, BATCH);
            log.commit().expect("commit")
        })
    });
    group.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

fn templates(c: &mut Criterion) {
    let text = Text::parse("Hi #name#, your order #order# ships on #day#. Reply STOP to opt out.").unwrap();
    let values: HashMap<&str, &str> = [("name", "Alice"), ("order", "1Z999"), ("day", "Tuesday")].into();
    let mut group = c.benchmark_group("template");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render_3_placeholders", |b| {
        b.iter(|| text.render(|name| values.get(name).copied()).unwrap())
    });
    group.bench_function("parse", |b| {
        b.iter_batched(
            || "Hi #name#, your order #order# ships on #day#. Reply STOP to opt out.",
            |source| Text::parse(source).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, journal, log_append, templates);
criterion_main!(benches);
