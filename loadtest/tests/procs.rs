//! `--procs 2` end to end against the real ringpush on both I/O backends,
//! on 127.0.0.1 ephemeral ports: the parent's merged summary counts every
//! device of both processes (idle hold) and every message pushed by both
//! (point-to-point, each process pushing to its own devices).
//!
//! The `ringpush` binary is a sibling of `ringpush-bench` in the target
//! directory: `cargo test --workspace` builds it (the daemon's own
//! integration tests need it); alone, build it first with
//! `cargo build -p ringpush`. The daemon is started the way
//! `tests/common` does (its ready line on stdout names the bound ports),
//! kept to the little this file needs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const APP_SECRET: &str = "procs-test-app-secret";

struct Daemon {
    child: Child,
    dir: PathBuf,
    device: String,
    api: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ringpush_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ringpush-bench"));
    let daemon = bench.with_file_name("ringpush");
    assert!(
        daemon.exists(),
        "{} is missing: build it first (cargo build -p ringpush)",
        daemon.display()
    );
    daemon
}

fn start_ringpush(backend: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("ringpush-bench-procs-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "io = \"{backend}\"\nshards = 2\n\
         [listen]\ndevice = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [durability]\ndata_dir = \"{}\"\nfsync = \"never\"\n\
         [[apps]]\nappId = \"demo\"\nworkspaceId = \"default\"\napiSecret = \"{APP_SECRET}\"\n",
        dir.join("data").display()
    );
    let path = dir.join("ringpush.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(ringpush_binary())
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ringpush");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    // The read blocks until the ready line or EOF (the daemon exited).
    let ready = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ringpush ready:") => break line,
            Some(Ok(_)) => continue,
            _ => panic!("ringpush exited before it was ready: {:?}", child.wait()),
        }
    };
    // Keep draining stdout so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
            .to_string()
    };
    Daemon {
        device: field("device"),
        api: field("api"),
        child,
        dir,
    }
}

/// Runs the bench with `--procs 2` and returns its merged JSON summary.
fn bench(daemon: &Daemon, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ringpush-bench"))
        .args([
            "--procs",
            "2",
            "--source-ips",
            "127.0.0.2-127.0.0.9",
            "--warmup",
            "0",
            "--json",
            "--device-addr",
            &daemon.device,
            "--api-addr",
            &daemon.api,
        ])
        .args(extra)
        .env("RINGPUSH_BENCH_APP_SECRET", APP_SECRET)
        .output()
        .expect("run ringpush-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Both children reported their progress.
    assert!(stderr.contains("[p0] ") && stderr.contains("[p1] "), "{stderr}");
    serde_json::from_slice(&output.stdout).expect("one merged JSON summary")
}

fn procs_hold_and_push(backend: &str) {
    let daemon = start_ringpush(backend);

    let hold = bench(&daemon, &["--devices", "61", "--hold", "--duration", "1"]);
    assert_eq!(hold["procs"], 2, "{hold}");
    assert_eq!(hold["devices"], 61, "{hold}");
    assert_eq!(hold["connected"], 61, "{hold}");
    assert_eq!(hold["connect_errors"], 0, "{hold}");
    assert!(hold["client_cpu_seconds"].as_f64().unwrap() > 0.0, "{hold}");

    let push = bench(
        &daemon,
        &[
            "--devices",
            "40",
            "--push-rate",
            "400",
            "--duration",
            "1",
            "--targets-per-request",
            "5",
        ],
    );
    assert_eq!(push["connected"], 40, "{push}");
    assert_eq!(push["offered_rate"], 400, "{push}");
    let sent = push["messages_sent"].as_u64().unwrap();
    assert!(sent >= 200, "{push}");
    // Each process waits for its messages (bounded) before it reports.
    assert_eq!(push["delivered_total"].as_u64(), Some(sent), "{push}");
    assert_eq!(push["acked_total"].as_u64(), Some(sent), "{push}");
    assert!(push["latency"]["samples"].as_u64().unwrap() > 0, "{push}");
}

#[test]
fn uring_procs_hold_and_push() {
    procs_hold_and_push("uring");
}

#[test]
fn epoll_procs_hold_and_push() {
    procs_hold_and_push("epoll");
}
