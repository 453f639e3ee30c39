//! Hostile clients against the real daemon, on both I/O backends, with
//! measured bounds: length prefixes that claim what they never send, a
//! client that never says Hello, readers too slow to take what they asked
//! for, and addresses that hold or open too many connections. Every refusal
//! must be a GoAway or Error with a reason, every close must give its memory
//! and its admission slot back (checked on /metrics and /proc).

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_for, Daemon, Device, BACKENDS, PATIENCE};
use ringpush::protocol::{body, ErrorCode, Frame, FrameType, GoAwayReason, HEADER_LEN};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A connection to `to` from the loopback address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if let Some(bytes) = rcvbuf {
        // Before connect, so the window the server sees is small from the start.
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket.bind(&SocketAddr::new(IpAddr::V4(from), 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

fn go_away(frame: Option<Frame>) -> body::GoAway {
    match frame {
        Some(Frame::GoAway(g)) => g,
        other => panic!("expected GoAway, got {other:?}"),
    }
}

#[test]
fn a_length_prefix_of_0xffffffff_is_refused_from_the_header() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut device = Device::raw(d.device);
        device.send_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Hello as u8, 0]);
        match device.until_closed().as_slice() {
            [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::FrameTooLarge as u32, "{backend}"),
            other => panic!("{backend}: {other:?}"),
        }
        wait_for("the close to be counted", || {
            d.metric_sum("ringpush_connections_closed_total", "frame_too_large") == 1.0
        });
        // The same after a handshake, on an authenticated connection.
        let mut device = Device::connect(d.device, "");
        device.send_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Ping as u8, 0]);
        match device.until_closed().as_slice() {
            [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::FrameTooLarge as u32, "{backend}"),
            other => panic!("{backend}: {other:?}"),
        }
    }
}

#[test]
fn a_thousand_unauthenticated_max_frame_claims_add_less_than_20_mb() {
    const CONNECTIONS: usize = 1000;
    for backend in BACKENDS {
        // A long handshake deadline: the claims must still be held when
        // the memory is measured.
        let d = Daemon::start(backend, "[delivery]\nhandshake_timeout_secs = 120\n");
        // Settle the allocator and the first-use paths with one connection.
        drop(Device::connect(d.device, ""));
        wait_for("the warm-up connection to close", || {
            d.metric_sum("ringpush_sessions", "") == 0.0
        });
        let before = rss_kib(d.pid());
        let closed_before = d.metric_sum("ringpush_connections_closed_total", "");
        let max = 4096u32; // limits.max_frame_bytes default
        let mut claim = (max - HEADER_LEN as u32).to_be_bytes().to_vec();
        claim.extend_from_slice(&[FrameType::Hello as u8, 0]);
        // The start of a body that never completes.
        claim.extend_from_slice(&[0x0A; 100]);
        let held: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|_| {
                let mut s = TcpStream::connect(d.device).unwrap();
                s.write_all(&claim).unwrap();
                s
            })
            .collect();
        wait_for("every claim to be read", || {
            d.metric_sum("ringpush_sessions", "") == CONNECTIONS as f64
                && d.metric_sum("ringpush_bytes_in_total", "") >= (CONNECTIONS * claim.len()) as f64
        });
        let after = rss_kib(d.pid());
        let grown = after.saturating_sub(before);
        eprintln!(
            "{backend}: {CONNECTIONS} connections each claiming a {max}-byte frame: RSS {before} KiB -> {after} KiB (+{grown} KiB)"
        );
        assert!(grown < 20 * 1024, "{backend}: RSS grew by {grown} KiB");
        assert_eq!(
            d.metric_sum("ringpush_connections_closed_total", ""),
            closed_before
        );
        drop(held);
        wait_for("every claim to be closed", || {
            d.metric_sum("ringpush_sessions", "") == 0.0
        });
    }
}

#[test]
fn a_client_that_never_says_hello_is_closed_at_the_handshake_deadline() {
    for backend in BACKENDS {
        let d = Daemon::start(backend, "[delivery]\nhandshake_timeout_secs = 1\n");
        let started = Instant::now();
        let mut silent = Device::raw(d.device);
        let frames = silent.until_closed();
        let elapsed = started.elapsed();
        match frames.as_slice() {
            [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::HandshakeTimeout as u32, "{backend}"),
            other => panic!("{backend}: {other:?}"),
        }
        assert!(
            elapsed >= Duration::from_millis(950) && elapsed < PATIENCE,
            "{backend}: closed after {elapsed:?}"
        );
        // Bytes of a Hello dribbled in do not extend the deadline: it is
        // for the whole Hello.
        let started = Instant::now();
        let mut dribbler = Device::raw(d.device);
        let hello = Frame::Hello(Box::new(body::Hello {
            protocol_version: 1,
            app_id: "demo".into(),
            platform: 1,
            token: String::new(),
            ..Default::default()
        }))
        .to_bytes();
        for byte in &hello[..4] {
            dribbler.send_bytes(&[*byte]);
            std::thread::sleep(Duration::from_millis(150));
        }
        match dribbler.until_closed().as_slice() {
            [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::HandshakeTimeout as u32, "{backend}"),
            other => panic!("{backend}: {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(950));
        wait_for("the sessions to be freed", || {
            d.metric_sum("ringpush_sessions", "") == 0.0
                && d.metric_sum("ringpush_connections_closed_total", "handshake_timeout") == 2.0
        });
    }
}

/// Reads one byte a second until told to stop or the socket ends.
fn read_one_byte_a_second(stream: TcpStream) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::io::Read;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut stream = stream;
        stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut byte = [0u8; 1];
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match stream.read(&mut byte) {
                Ok(0) => return,
                Ok(_) => std::thread::sleep(Duration::from_secs(1)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
    stop
}

/// Pings in one write: each asks for a Pong the slow reader will not take.
fn pings(count: usize) -> Vec<u8> {
    let ping = Frame::Ping(body::Heartbeat { time_ms: 1 }).to_bytes();
    ping.repeat(count)
}

#[test]
fn a_reader_at_one_byte_a_second_is_cut_off_at_the_outbound_cap() {
    const CAP: usize = 16 * 1024;
    for backend in BACKENDS {
        let d = Daemon::start(
            backend,
            &format!(
                "[limits]\nmax_outbound_bytes = {CAP}\ndevice_send_buffer_bytes = 16384\n[delivery]\ninflight_window = 4\nwrite_timeout_secs = 600\n"
            ),
        );
        let stream = connect_from(Ipv4Addr::LOCALHOST, d.device, Some(2048));
        let mut device = Device::from_stream(stream.try_clone().unwrap());
        device.handshake("").unwrap();
        let token = device.token.clone();
        let (code, _) = d.push(&token, "held", 600);
        assert_eq!(code, 200);
        let stop = read_one_byte_a_second(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut most = 0.0f64;
        let deadline = Instant::now() + PATIENCE;
        while d.metric_sum("ringpush_connections_closed_total", "slow_reader") < 1.0 {
            assert!(Instant::now() < deadline, "{backend}: never cut off");
            // The server stops reading once it closes; a failed write is fine.
            let _ = writer.write_all(&pings(20_000));
            most = most.max(d.metric_sum("ringpush_outbound_backlog_bytes", ""));
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("{backend}: largest backlog seen {most} bytes (cap {CAP})");
        assert!(most <= CAP as f64, "{backend}: backlog {most} past the cap");
        wait_for("the memory and the slot to be given back", || {
            d.metric_sum("ringpush_outbound_backlog_bytes", "") == 0.0
                && d.metric_sum("ringpush_sessions", "") == 0.0
                && d.metric_sum("ringpush_admission_connections", "") == 0.0
        });
        // Nothing is lost: the unacked message waits for the next connection.
        let mut again = Device::connect(d.device, &token);
        assert_eq!(again.recv_push().msg_key, "held", "{backend}");
    }
}

#[test]
fn a_reader_at_one_byte_a_second_is_cut_off_at_the_write_deadline() {
    for backend in BACKENDS {
        let d = Daemon::start(
            backend,
            // A small kernel send buffer, so the daemon holds bytes back after a
            // few thousand Pongs rather than the megabytes autotuning allows.
            "[limits]\nmax_outbound_bytes = 16777216\ndevice_send_buffer_bytes = 16384\n[delivery]\nwrite_timeout_secs = 2\n",
        );
        let stream = connect_from(Ipv4Addr::LOCALHOST, d.device, Some(2048));
        let mut device = Device::from_stream(stream.try_clone().unwrap());
        device.handshake("").unwrap();
        let stop = read_one_byte_a_second(stream.try_clone().unwrap());
        let mut writer = stream;
        // Keep asking for Pongs: once the kernel's buffers are full the
        // daemon holds bytes back, and they never drain.
        let started = Instant::now();
        let mut most = 0.0f64;
        while d.metric_sum("ringpush_connections_closed_total", "write_timeout") < 1.0 {
            assert!(started.elapsed() < PATIENCE, "{backend}: never cut off");
            // After the abort a write fails; that is the point.
            let _ = writer.write_all(&pings(5000));
            most = most.max(d.metric_sum("ringpush_outbound_backlog_bytes", ""));
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{backend}: cut off after {:?}, largest backlog {most} bytes",
            started.elapsed()
        );
        let elapsed = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            elapsed >= Duration::from_millis(1950),
            "{backend}: cut off after {elapsed:?}"
        );
        assert_eq!(
            d.metric_sum("ringpush_connections_closed_total", "slow_reader"),
            0.0
        );
        wait_for("the memory to be given back", || {
            d.metric_sum("ringpush_outbound_backlog_bytes", "") == 0.0
                && d.metric_sum("ringpush_sessions", "") == 0.0
        });
    }
}

const NO_EXEMPTIONS: &str = "[admission]\nexempt = []\n";

#[test]
fn one_address_at_its_cap_does_not_affect_another() {
    for backend in BACKENDS {
        let d = Daemon::start(
            backend,
            &format!("{NO_EXEMPTIONS}max_connections_per_address = 3\n"),
        );
        let crowded = Ipv4Addr::new(127, 0, 0, 2);
        let mut held: Vec<Device> = (0..3)
            .map(|_| {
                let mut dev = Device::from_stream(connect_from(crowded, d.device, None));
                dev.handshake("").unwrap();
                dev
            })
            .collect();
        let mut fourth = Device::from_stream(connect_from(crowded, d.device, None));
        let g = go_away(fourth.recv());
        assert_eq!(g.reason, GoAwayReason::TooManyConnections as u32, "{backend}");
        assert!((5_000..=30_000).contains(&g.retry_after_ms));
        assert!(fourth.recv().is_none(), "closed after the GoAway");
        let mut neighbour = Device::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 3), d.device, None));
        neighbour.handshake("").expect("another address is not affected");
        // A close gives the slot back.
        drop(held.pop());
        wait_for("the slot to be given back", || {
            d.metric_sum("ringpush_admission_connections", "") == 3.0
        });
        let mut again = Device::from_stream(connect_from(crowded, d.device, None));
        again.handshake("").expect("a freed slot is reusable");
        assert_eq!(
            d.metric_sum("ringpush_connections_closed_total", "address_cap"),
            1.0
        );
    }
}

#[test]
fn past_the_total_cap_even_an_exempt_source_gets_overloaded() {
    for backend in BACKENDS {
        // Loopback is exempt from the per-address rules by default, but
        // not from the total.
        let d = Daemon::start(backend, "[limits]\nmax_connections = 3\n");
        let held: Vec<Device> = (0..3).map(|_| Device::connect(d.device, "")).collect();
        let mut fourth = Device::raw(d.device);
        let g = go_away(fourth.recv());
        assert_eq!(g.reason, GoAwayReason::Overloaded as u32, "{backend}");
        assert!((1_000..=5_000).contains(&g.retry_after_ms));
        assert_eq!(
            d.metric_sum("ringpush_connections_closed_total", "max_connections"),
            1.0
        );
        drop(held);
        wait_for("the slots to be given back", || {
            d.metric_sum("ringpush_admission_connections", "") == 0.0
        });
        Device::connect(d.device, "");
    }
}

#[test]
fn a_flapping_address_is_banned_and_comes_back_after_the_ban() {
    for backend in BACKENDS {
        let d = Daemon::start(
            backend,
            &format!("{NO_EXEMPTIONS}connect_rate_per_sec = 1\nconnect_burst = 10\nban_secs = 3\n"),
        );
        let flapper = Ipv4Addr::new(127, 0, 0, 4);
        let mut banned_at = None;
        for _ in 0..20 {
            let mut dev = Device::from_stream(connect_from(flapper, d.device, None));
            match dev.handshake("") {
                Ok(()) => continue,
                Err(frame) => {
                    let g = go_away(frame);
                    assert_eq!(g.reason, GoAwayReason::Banned as u32, "{backend}");
                    assert!(
                        (3_000..=8_000).contains(&g.retry_after_ms),
                        "{}",
                        g.retry_after_ms
                    );
                    banned_at = Some(Instant::now());
                    break;
                }
            }
        }
        let banned_at = banned_at.expect("20 connects in a burst of 10 are banned");
        assert_eq!(d.metric_sum("ringpush_admission_bans_total", ""), 1.0);
        // Another address is not affected by the ban.
        let mut other = Device::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 5), d.device, None));
        other.handshake("").expect("a ban is per address");
        // During the ban every attempt is refused; after it, one gets in.
        let mut refused_during_ban = 0;
        loop {
            let mut dev = Device::from_stream(connect_from(flapper, d.device, None));
            match dev.handshake("") {
                Ok(()) => break,
                Err(frame) => {
                    assert_eq!(go_away(frame).reason, GoAwayReason::Banned as u32);
                    refused_during_ban += 1;
                }
            }
            assert!(banned_at.elapsed() < PATIENCE, "{backend}: the ban never ended");
            std::thread::sleep(Duration::from_millis(500));
        }
        let waited = banned_at.elapsed();
        assert!(
            waited >= Duration::from_millis(2900),
            "{backend}: let in after {waited:?}"
        );
        assert!(refused_during_ban >= 1);
    }
}

#[test]
fn every_close_path_gives_the_admission_slot_back() {
    for backend in BACKENDS {
        let d = Daemon::start(
            backend,
            &format!("{NO_EXEMPTIONS}max_connections_per_address = 5\nconnect_rate_per_sec = 10000\nconnect_burst = 10000\n[delivery]\nhandshake_timeout_secs = 1\n"),
        );
        let source = Ipv4Addr::new(127, 0, 0, 6);
        let mut tokens: Vec<String> = Vec::new();
        for i in 0..60 {
            let mut dev = Device::from_stream(connect_from(source, d.device, None));
            match i % 4 {
                // Peer closes after a handshake (and, with a token from
                // another shard, after a hand-off between shards).
                0 | 1 => {
                    let token: String = tokens.get(i % 3).cloned().unwrap_or_default();
                    dev.handshake(&token).unwrap();
                    tokens.push(dev.token.clone());
                }
                // The server closes on a protocol error.
                2 => {
                    dev.send_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0]);
                    dev.until_closed();
                }
                // Peer closes before Hello.
                _ => {}
            }
            drop(dev);
            // 60 connections from an address capped at 5: they all get in
            // only because each close gave its slot back.
            wait_for("the slot to be given back", || {
                d.metric_sum("ringpush_admission_connections", "") == 0.0
            });
        }
        // The handshake deadline and a replaced connection are close paths too.
        let _silent: Vec<Device> = (0..5)
            .map(|_| Device::from_stream(connect_from(source, d.device, None)))
            .collect();
        wait_for("the silent ones to be closed at the deadline", || {
            d.metric_sum("ringpush_admission_connections", "") == 0.0
        });
        let mut first = Device::from_stream(connect_from(source, d.device, None));
        first.handshake("").unwrap();
        let mut second = Device::from_stream(connect_from(source, d.device, None));
        second.handshake(&first.token).unwrap();
        assert_eq!(go_away(first.recv()).reason, GoAwayReason::Replaced as u32);
        drop(second);
        wait_for("the count to return to zero", || {
            d.metric_sum("ringpush_admission_connections", "") == 0.0
                && d.metric_sum("ringpush_sessions", "") == 0.0
        });
    }
}

#[test]
fn a_reconnect_storm_leaves_no_dead_deadlines_behind() {
    // The core's compaction floor (delivery::DEAD_TIMERS_BEFORE_COMPACTION):
    // past it, closed connections' deadlines go once they are half the wheel.
    const FLOOR: f64 = 16_384.0;
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        // Devices of both shards: about half of each round's connections
        // land on the shard that does not own their token and move.
        let tokens: Vec<String> = (0..64).map(|_| Device::connect(d.device, "").token).collect();
        let compacted = |shard: &str| d.metric_sum("ringpush_timer_compactions_total", shard) >= 1.0;
        let shards = ["shard=\"0\"", "shard=\"1\""];
        let mut connections = 0;
        // Each connection leaves two to four deadlines behind (handshake,
        // idle due in 3 min, write on io_uring; one where it was handed off):
        // without compaction they would all still be there.
        while !shards.iter().all(|s| compacted(s)) {
            assert!(
                connections < 80_000,
                "{backend}: {connections} connections and no compaction on both shards"
            );
            std::thread::scope(|scope| {
                let device = d.device;
                for chunk in tokens.chunks(16) {
                    scope.spawn(move || {
                        for _ in 0..20 {
                            for token in chunk {
                                drop(Device::connect(device, token));
                            }
                        }
                    });
                }
            });
            connections += tokens.len() * 20;
        }
        for shard in shards {
            let timers = d.metric_sum("ringpush_timers", shard);
            assert!(
                timers <= 2.0 * FLOOR,
                "{backend} {shard}: {timers} timer entries after {connections} connections"
            );
        }
        wait_for("the closes to be seen", || {
            d.metric_sum("ringpush_sessions", "") == 0.0
        });
    }
}
