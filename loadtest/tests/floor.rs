//! End to end on both floor backends: `ringpush-floor` on ephemeral ports,
//! `ringpush-bench --target floor` against it; every frame the floor
//! reports sent reaches a device and is acknowledged.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Floor(Child);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the floor and returns it with its device and control addresses,
/// read from its ready line (the read blocks until the line or EOF).
fn start_floor(backend: &str) -> (Floor, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringpush-floor"))
        .args([
            "--backend",
            backend,
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--threads",
            "2",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringpush-floor");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("piped"))
        .read_line(&mut line)
        .expect("read the ready line");
    let floor = Floor(child);
    let after = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|rest| rest.split([',', ' ', '\n']).next())
            .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
            .to_string()
    };
    let (devices, control) = (after("devices on "), after("control on "));
    (floor, devices, control)
}

fn floor_delivers_what_it_sends(backend: &str) {
    let (_floor, devices, control) = start_floor(backend);
    let output = Command::new(env!("CARGO_BIN_EXE_ringpush-bench"))
        .args([
            "--target",
            "floor",
            "--devices",
            "50",
            "--push-rate",
            "500",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--source-ips",
            "none",
            "--json",
            "--device-addr",
            &devices,
            "--api-addr",
            &control,
        ])
        .output()
        .expect("run ringpush-bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(summary["target"], "floor");
    assert_eq!(summary["connected"], 50);
    let sent = summary["messages_sent"].as_u64().unwrap();
    assert!(sent >= 400, "{summary}");
    // The bench waits (10 s at most) until every frame written arrived.
    assert_eq!(summary["delivered_total"].as_u64(), Some(sent), "{summary}");
    assert_eq!(summary["acked_total"].as_u64(), Some(sent), "{summary}");
}

#[test]
fn uring_floor_delivers_what_it_sends() {
    floor_delivers_what_it_sends("uring");
}

#[test]
fn epoll_floor_delivers_what_it_sends() {
    floor_delivers_what_it_sends("epoll");
}
