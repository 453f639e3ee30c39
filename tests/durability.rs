//! Durability end to end on the real daemon: what the API accepted survives
//! kill -9 and restart (tokens, pending messages, statuses), TTLs keep
//! running while the daemon is down, two daemons cannot share a data
//! directory, damage in the log stops startup until `ringpush repair`, and
//! storage faults give the documented result codes without losing anything
//! accepted. The crash torture runs RINGPUSH_TORTURE_TRIALS trials (20 by
//! default; `RINGPUSH_TORTURE_TRIALS=100 cargo test --release --test
//! durability torture` for more).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{try_raw_http, Daemon, PATIENCE};
use ringpush::protocol::Frame;

fn durable_config(dir: &Path, backend: &str, fsync: &str) -> String {
    format!(
        "io = \"{backend}\"\nshards = 2\n[delivery]\nmax_pending_per_device = 100000\n[durability]\ndata_dir = \"{}\"\nfsync = \"{fsync}\"\n",
        dir.join("data").display()
    )
}

#[test]
fn tokens_pending_messages_and_statuses_survive_kill_9() {
    for backend in common::BACKENDS {
        let dir = Daemon::scratch_dir(&format!("survive-{backend}"));
        let config = durable_config(&dir, backend, "always");
        let mut d = Daemon::start_in(&dir, &config);
        let mut dev = d.device("");
        let token = dev.token.clone();
        let offline = d.device("").token.clone();
        assert_eq!(d.push(&token, "acked", 300).0, 200);
        assert_eq!(d.push(&token, "unacked", 300).0, 200);
        assert_eq!(d.push(&offline, "waiting", 300).0, 200);
        let first = dev.recv_push();
        assert_eq!(first.msg_key, "acked");
        dev.ack(&[first.id]);
        d.wait_status(&token, "acked", 2);
        let unacked = dev.recv_push();
        d.kill9();

        let d = Daemon::start_in(&dir, &config);
        assert_eq!(d.status(&token, "acked"), 2, "the ack survived");
        assert_eq!(d.status(&token, "unacked"), 0);
        assert_eq!(d.status(&offline, "waiting"), 0);
        let mut dev = d.device(&token);
        assert_eq!(dev.token, token, "no device registers again");
        assert!(!dev.welcome.as_ref().unwrap().new_token);
        let again = dev.recv_push();
        assert_eq!((again.msg_key.as_str(), again.id), ("unacked", unacked.id));
        dev.ack(&[again.id]);
        d.wait_status(&token, "unacked", 2);
        let mut other = d.device(&offline);
        assert!(!other.welcome.as_ref().unwrap().new_token);
        assert_eq!(other.recv_push().msg_key, "waiting");
        assert_eq!(
            d.push(&token, "acked", 300).1["PushResult"]["Targets"][0]["result"],
            "duplicate"
        );
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_ttl_that_ends_while_the_daemon_is_down_is_never_delivered() {
    let dir = Daemon::scratch_dir("ttl-down");
    let config = durable_config(&dir, "uring", "always");
    let mut d = Daemon::start_in(&dir, &config);
    let token = d.device("").token.clone();
    assert_eq!(d.push(&token, "short", 1).0, 200);
    assert_eq!(d.push(&token, "long", 300).0, 200);
    d.kill9();
    // Wall time, not luck: the TTL is over once this returns.
    std::thread::sleep(Duration::from_millis(1500));
    let d = Daemon::start_in(&dir, &config);
    let mut dev = d.device(&token);
    let frames = dev.drain_until_pong();
    let keys: Vec<&str> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.msg_key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["long"]);
    assert_eq!(d.status(&token, "short"), 3, "expired");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let dir = Daemon::scratch_dir("lock");
    let config = durable_config(&dir, "epoll", "never");
    let first = Daemon::start_in(&dir, &config);
    let second_dir = dir.join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    // Same data_dir, its own config file.
    let err = Daemon::try_start_in(&second_dir, &config).err().expect("refused");
    assert!(err.contains("in use by another ringpush"), "{err}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damage_in_the_middle_stops_startup_until_repair() {
    let dir = Daemon::scratch_dir("repair");
    let config = durable_config(&dir, "epoll", "always");
    let mut d = Daemon::start_in(&dir, &config);
    let token = d.device("").token.clone();
    for i in 0..20 {
        assert_eq!(d.push(&token, &format!("m{i}"), 300).0, 200);
    }
    d.kill9();
    let shard = ringpush::message::owner_shard(token.as_bytes(), 2);
    let log_dir = dir.join("data").join(format!("shard-{shard}"));
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let err = Daemon::try_start_in(&dir, &config)
        .err()
        .expect("startup refuses");
    assert!(err.contains("corrupt log record"), "{err}");
    assert!(
        err.contains(&segment.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("offset"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .arg("--config")
        .arg(dir.join("ringpush.toml"))
        .arg("repair")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = Daemon::start_in(&dir, &config);
    // The records before the damage are kept.
    assert_eq!(d.status(&token, "m0"), 0);
    let mut dev = d.device(&token);
    assert!(!dev.welcome.as_ref().unwrap().new_token);
    assert_eq!(dev.recv_push().msg_key, "m0");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_full_answers_507_loses_nothing_accepted_and_recovers() {
    let dir = Daemon::scratch_dir("enospc");
    let faults = dir.join("faults");
    std::fs::create_dir_all(&faults).unwrap();
    let config = durable_config(&dir, "uring", "always");
    let mut d = Daemon::start_with_faults(&dir, &config, &faults);
    let token = d.device("").token.clone();
    assert_eq!(d.push(&token, "before", 300).0, 200);

    std::fs::write(faults.join("enospc"), "").unwrap();
    let (code, json) = d.push(&token, "during", 300);
    assert_eq!(code, 507, "{json}");
    assert_eq!(json["ResultCode"], "9002");
    assert_eq!(d.status(&token, "during"), 99_999_999, "not accepted, so unknown");
    let (code, _) = d.push(&token, "during-again", 300);
    assert_eq!(code, 507);

    std::fs::remove_file(faults.join("enospc")).unwrap();
    // The refusal backs off for a second, then the disk is tried again.
    let deadline = Instant::now() + PATIENCE;
    while d.push(&token, "after", 300).0 != 200 {
        assert!(Instant::now() < deadline, "pushes never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.kill9();
    let d = Daemon::start_in(&dir, &config);
    let mut dev = d.device(&token);
    let keys: Vec<String> = (0..2).map(|_| dev.recv_push().msg_key).collect();
    assert_eq!(keys, ["before", "after"]);
    assert!(dev.drain_until_pong().is_empty(), "nothing refused is delivered");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_fsync_error_stops_accepting_and_never_acknowledges_after_it() {
    let dir = Daemon::scratch_dir("fsync-eio");
    let faults = dir.join("faults");
    std::fs::create_dir_all(&faults).unwrap();
    let config = durable_config(&dir, "epoll", "always");
    let mut d = Daemon::start_with_faults(&dir, &config, &faults);
    let token = d.device("").token.clone();
    assert_eq!(d.push(&token, "before", 300).0, 200);

    std::fs::write(faults.join("fsync-eio"), "").unwrap();
    let (code, json) = d.push(&token, "during", 300);
    assert_eq!(code, 503, "{json}");
    assert_eq!(json["ResultCode"], "9001");
    // Even with the disk healthy again, the failed log accepts nothing.
    std::fs::remove_file(faults.join("fsync-eio")).unwrap();
    let (code, json) = d.push(&token, "later", 300);
    assert_eq!((code, json["ResultCode"].as_str()), (503, Some("9001")));
    let (ready, _) = common::raw_http(d.admin, "GET", "/readyz", "");
    assert_eq!(ready, 503, "not ready after a log failure");
    d.kill9();

    let d = Daemon::start_in(&dir, &config);
    let mut dev = d.device(&token);
    assert_eq!(dev.recv_push().msg_key, "before");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Devices that receive and ack everything, recording each msgKey, until
/// the daemon closes their connections.
struct Receivers {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Receivers {
    fn start(d: &Daemon, tokens: &[String], received: &Arc<Mutex<HashMap<String, u32>>>) -> Receivers {
        let threads = tokens
            .iter()
            .map(|token| {
                let mut dev = d.device(token);
                assert_eq!(&dev.token, token, "the token survived");
                let received = received.clone();
                std::thread::spawn(move || {
                    while let Some(frame) = dev.recv() {
                        if let Frame::Push(p) = frame {
                            *received.lock().unwrap().entry(p.msg_key.clone()).or_default() += 1;
                            dev.ack(&[p.id]);
                        }
                    }
                })
            })
            .collect();
        Receivers { threads }
    }

    fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn crash_torture_every_acknowledged_push_is_delivered() {
    let trials: usize = std::env::var("RINGPUSH_TORTURE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = Daemon::scratch_dir("torture");
    // Small segments and frequent checkpoints, so kills also land during
    // compaction and frames kept in the log move between segments.
    let config =
        durable_config(&dir, "uring", "always") + "segment_bytes = 65536\ncompact_after_bytes = 131072\n";
    let d = Daemon::start_in(&dir, &config);
    let tokens: Vec<String> = (0..8).map(|_| d.device("").token.clone()).collect();
    drop(d);
    // Half the devices are online during the load, half only at the end.
    let online = &tokens[..4];
    let received: Arc<Mutex<HashMap<String, u32>>> = Default::default();
    let mut accepted: HashSet<String> = HashSet::new();
    for trial in 0..trials {
        let mut d = Daemon::start_in(&dir, &config);
        let receivers = Receivers::start(&d, online, &received);
        let api = d.api;
        let all = tokens.clone();
        let pusher_stop = Arc::new(AtomicBool::new(false));
        let stop = pusher_stop.clone();
        let pusher = std::thread::spawn(move || {
            let mut ok = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("t{trial}-{i}");
                let token = &all[i % all.len()];
                let body = serde_json::json!({
                    "appId": "demo", "workspaceId": "default", "taskName": "torture",
                    "title": "t", "content": "c", "deliveryType": 1,
                    "targetMsgkey": { token.as_str(): key.as_str() }, "expiredSeconds": 3600,
                });
                match try_raw_http(api, "POST", "/v1/push/simple", &body.to_string()) {
                    Ok((200, _)) => ok.push(key),
                    Ok((code, text)) => panic!("push answered {code}: {text}"),
                    Err(_) => break, // killed mid-request: not acknowledged
                }
                i += 1;
            }
            ok
        });
        // A random moment in the first 300 ms of load.
        std::thread::sleep(Duration::from_millis(20 + random_u64() % 280));
        d.kill9();
        pusher_stop.store(true, Ordering::SeqCst);
        accepted.extend(pusher.join().unwrap());
        receivers.join();
    }
    // The last restart: every device comes online and drains.
    let d = Daemon::start_in(&dir, &config);
    let receivers = Receivers::start(&d, &tokens, &received);
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        let missing: Vec<String> = {
            let got = received.lock().unwrap();
            accepted
                .iter()
                .filter(|k| !got.contains_key(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged pushes never delivered, e.g. {:?}",
            missing.len(),
            accepted.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let duplicates: u32 = received.lock().unwrap().values().map(|n| n - 1).sum();
    println!(
        "crash torture: {trials} kill -9 trials, {} pushes acknowledged, all delivered; {duplicates} duplicate deliveries (at-least-once redelivery of unacked messages)",
        accepted.len()
    );
    drop(d);
    receivers.join();
    let _ = std::fs::remove_dir_all(&dir);
}
