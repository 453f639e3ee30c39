//! Life under systemd on the real daemon, both I/O backends, with a fake
//! systemd: a datagram socket in a temp directory given as NOTIFY_SOCKET.
//! READY=1 (with STATUS=) comes once the device listener takes devices,
//! WATCHDOG=1 keeps coming while every shard loop advances and stops while a
//! shard is stalled (the RINGPUSH_FAULT_DIR/stall-shard-N hook), SIGTERM
//! sends STOPPING=1 first, every device gets GoAway(shutdown) with a
//! retry-after within the configured spread, the process exits within the
//! drain timeout even when a device does not read, and what the API
//! accepted before the stop is delivered after a restart on the same data.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{wait_for, Daemon, Device, PATIENCE};
use ringpush::protocol::{body, Frame, GoAwayReason};

/// The notification socket systemd would own.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeSystemd {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        Self { socket, path }
    }

    /// The environment systemd gives a `Type=notify` service, with
    /// `WatchdogSec=` when `watchdog` is set.
    fn env(&self, watchdog: Option<Duration>) -> Vec<(&'static str, OsString)> {
        let mut env = vec![("NOTIFY_SOCKET", self.path.clone().into_os_string())];
        if let Some(interval) = watchdog {
            env.push(("WATCHDOG_USEC", interval.as_micros().to_string().into()));
        }
        env
    }

    /// The next notification, panicking after PATIENCE.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {PATIENCE:?}: {e}"));
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Reads notifications until one has the line `line`; returns it.
    fn wait_for(&self, line: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let message = self.next();
            if message.lines().any(|l| l == line) {
                return message;
            }
            assert!(Instant::now() < deadline, "no {line} within {PATIENCE:?}");
        }
    }

    /// Every notification already queued, without waiting.
    fn queued(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        self.socket.set_nonblocking(false).unwrap();
        out
    }
}

fn value<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn ready_comes_once_devices_can_connect_and_the_watchdog_pings_while_shards_advance() {
    for backend in common::BACKENDS {
        let dir = Daemon::scratch_dir(&format!("notify-ready-{backend}"));
        let systemd = FakeSystemd::bind(&dir);
        // Reads READY=1 while the daemon starts and connects a device at
        // once, with the address READY's status names: READY means ready.
        let reader = std::thread::spawn({
            let socket = systemd.socket.try_clone().unwrap();
            move || {
                let systemd = FakeSystemd {
                    socket,
                    path: PathBuf::new(),
                };
                let ready = systemd.wait_for("READY=1");
                let status = value(&ready, "STATUS").expect("STATUS= with READY=1").to_string();
                let device: SocketAddr = status
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("device="))
                    .expect("device= in the status")
                    .parse()
                    .unwrap();
                let mut dev = Device::raw(device);
                dev.handshake("").expect("a Welcome right after READY=1");
                (status, dev)
            }
        });
        let config = format!("io = \"{backend}\"\nshards = 2\n");
        let d = Daemon::start_in_with_env(
            &dir,
            &config,
            None,
            &systemd.env(Some(Duration::from_millis(200))),
        );
        let (status, _device) = reader.join().unwrap();
        assert!(
            status.starts_with(&format!(
                "ready: devices connected: 0, shards: 2, backend: {backend};"
            )),
            "{status}"
        );
        assert!(status.contains(&format!("device={}", d.device)), "{status}");
        let mut pings = 0;
        let mut periodic_status = None;
        while pings < 5 || periodic_status.is_none() {
            let message = systemd.next();
            pings += message.lines().filter(|&l| l == "WATCHDOG=1").count();
            if let Some(status) = value(&message, "STATUS") {
                periodic_status = Some(status.to_string());
            }
        }
        assert_eq!(
            periodic_status.unwrap(),
            format!("devices connected: 1, shards: 2, backend: {backend}")
        );
        // No assertion that no look found a shard stuck: with 200 ms a
        // loaded machine may well leave a healthy shard unscheduled for the
        // 100 ms between two looks; the pings above are what must hold.
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_stalled_shard_stops_the_watchdog_pings_until_it_moves_again() {
    for backend in common::BACKENDS {
        let dir = Daemon::scratch_dir(&format!("notify-stall-{backend}"));
        let faults = dir.join("faults");
        std::fs::create_dir_all(&faults).unwrap();
        let systemd = FakeSystemd::bind(&dir);
        let config = format!("io = \"{backend}\"\nshards = 2\n");
        let d = Daemon::start_in_with_env(
            &dir,
            &config,
            Some(&faults),
            &systemd.env(Some(Duration::from_millis(200))),
        );
        systemd.wait_for("WATCHDOG=1");
        let marker = faults.join("stall-shard-1");
        std::fs::write(&marker, b"").unwrap();
        let stuck = |d: &Daemon| d.metric_sum("ringpush_watchdog_stuck_total", "shard=\"1\"");
        wait_for("shard 1 to stall", || {
            faults.join("stall-shard-1.stalled").exists()
        });
        // Of two looks that count after this reading, the second read the
        // shard's last count (the first's count came after the shard
        // blocked), and the watchdog sends what a look decides before the
        // next one: from then on no ping is on its way or can follow.
        let seen = stuck(&d);
        wait_for("two looks at the stalled shard", || stuck(&d) >= seen + 2.0);
        systemd.queued();
        let seen = stuck(&d);
        wait_for("three more stuck looks", || stuck(&d) >= seen + 3.0);
        let after: Vec<String> = systemd.queued();
        assert!(
            after.iter().all(|m| !m.lines().any(|l| l == "WATCHDOG=1")),
            "{backend}: pinged while shard 1 was stalled: {after:?}"
        );
        std::fs::remove_file(&marker).unwrap();
        systemd.wait_for("WATCHDOG=1");
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn push_to(d: &Daemon, token: &str, msg_key: &str) {
    let (code, json) = d.push(token, msg_key, 600);
    assert_eq!(code, 200, "{json}");
    assert_eq!(json["ResultCode"], "OK", "{json}");
}

fn shutdown_go_away(frames: &[Frame]) -> &body::GoAway {
    match frames.last() {
        Some(Frame::GoAway(g)) if g.reason == GoAwayReason::Shutdown as u32 => g,
        other => panic!("expected GoAway(shutdown) last, got {other:?} after {frames:?}"),
    }
}

#[test]
fn sigterm_says_stopping_sends_every_device_go_away_and_a_restart_delivers_what_was_accepted() {
    for backend in common::BACKENDS {
        let dir = Daemon::scratch_dir(&format!("notify-drain-{backend}"));
        let systemd = FakeSystemd::bind(&dir);
        let config = format!(
            "io = \"{backend}\"\nshards = 2\n[delivery]\ndrain_timeout_secs = 15\nshutdown_retry_min_ms = 1500\nshutdown_retry_max_ms = 2500\n[durability]\ndata_dir = \"{}\"\nfsync = \"interval\"\nfsync_interval_ms = 60000\n",
            dir.join("data").display()
        );
        let mut d = Daemon::start_in_with_env(&dir, &config, None, &systemd.env(None));
        systemd.wait_for("READY=1");
        // Online devices, each holding one message it has not acked.
        let mut online: Vec<Device> = (0..6).map(|_| d.device("")).collect();
        for (i, dev) in online.iter_mut().enumerate() {
            push_to(&d, &dev.token, &format!("inflight-{i}"));
            assert_eq!(dev.recv_push().msg_key, format!("inflight-{i}"));
        }
        // An offline device with messages waiting.
        let offline = d.device("").token.clone();
        d.wait_offline(&offline);
        for i in 0..3 {
            push_to(&d, &offline, &format!("waiting-{i}"));
        }

        let stopped_at = Instant::now();
        d.signal("TERM");
        let stopping = systemd.wait_for("STOPPING=1");
        let extend: u64 = value(&stopping, "EXTEND_TIMEOUT_USEC")
            .expect("EXTEND_TIMEOUT_USEC with STOPPING=1")
            .parse()
            .unwrap();
        assert!(
            extend >= 5_000_000,
            "{backend}: asks for at least the drain: {extend}"
        );
        for dev in &mut online {
            let frames = dev.until_closed();
            let g = shutdown_go_away(&frames);
            assert!(
                (1500..=2500).contains(&g.retry_after_ms),
                "{backend}: retry-after {}",
                g.retry_after_ms
            );
        }
        let status = d.wait_exit(PATIENCE);
        assert!(status.success(), "{backend}: {status}");
        let took = stopped_at.elapsed();
        eprintln!("{backend}: SIGTERM to exit with 6 devices: {took:?}");
        assert!(
            took < Duration::from_secs(15),
            "{backend}: devices that read let the stop finish before the drain timeout: {took:?}"
        );

        // Interval fsync with a minute's interval: only the stop's own
        // fsync made the last pushes durable, and the process exit keeps
        // the page cache either way; the restart reads them back.
        let d = Daemon::start_in(&dir, &config);
        for (i, old) in online.iter().enumerate() {
            let mut dev = d.device(&old.token);
            assert_eq!(dev.token, old.token);
            let again = dev.recv_push();
            assert_eq!(again.msg_key, format!("inflight-{i}"), "{backend}");
            dev.ack(&[again.id]);
            d.wait_status(&old.token, &again.msg_key, 2);
        }
        let mut dev = d.device(&offline);
        let keys: Vec<String> = (0..3).map(|_| dev.recv_push().msg_key).collect();
        assert_eq!(keys, ["waiting-0", "waiting-1", "waiting-2"], "{backend}");
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A device whose socket takes nothing more: the daemon holds bytes for it
/// (Pongs), so its GoAway can never leave.
fn wedged_device(d: &Daemon) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    // Before connect, so the window the server sees is small from the start.
    socket.set_recv_buffer_size(2048).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).into())
        .unwrap();
    socket.connect(&d.device.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    let mut device = Device::from_stream(stream.try_clone().unwrap());
    device.handshake("").unwrap();
    // The largest Ping (and Pong): the most bytes per frame the debug build
    // must handle.
    let ping = Frame::Ping(body::Heartbeat { time_ms: u64::MAX }).to_bytes();
    let pings = ping.repeat(2000);
    // Blocking writes of whole frames until the socket fails (the daemon
    // exited): a write cut short by a timeout would leave half a frame and
    // get the connection closed as a protocol error.
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || while writer.write_all(&pings).is_ok() {});
    // The config caps the daemon's send buffer (device_send_buffer_bytes):
    // with the kernel's autotuning it grows to a few MB first, which in a
    // debug build took minutes of pings on a busy machine.
    let deadline = Instant::now() + 6 * PATIENCE;
    while d.metric_sum("ringpush_outbound_backlog_bytes", "") == 0.0 {
        assert!(Instant::now() < deadline, "the daemon never held bytes back");
        std::thread::sleep(Duration::from_millis(50));
    }
    stream
}

#[test]
fn a_device_that_does_not_read_cannot_hold_the_stop_past_the_drain_timeout() {
    for backend in common::BACKENDS {
        let dir = Daemon::scratch_dir(&format!("notify-wedged-{backend}"));
        let config = format!(
            "io = \"{backend}\"\nshards = 1\n[limits]\nmax_outbound_bytes = 16777216\ndevice_send_buffer_bytes = 16384\n[delivery]\nwrite_timeout_secs = 3600\ndrain_timeout_secs = 1\n"
        );
        let mut d = Daemon::start_in(&dir, &config);
        let _wedged = wedged_device(&d);
        let mut polite = d.device("");
        let term_at = Instant::now();
        d.signal("TERM");
        let frames = polite.until_closed();
        eprintln!(
            "{backend}: polite device closed {:?} after SIGTERM",
            term_at.elapsed()
        );
        shutdown_go_away(&frames);
        // The shard stopped listening before it sent the GoAways (and it is
        // still draining, or the process is gone): a device is refused.
        let refused = std::net::TcpStream::connect(d.device).map(drop).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{backend}");
        // Without the bound the shard would wait for the wedged socket for
        // ever (write_timeout_secs is an hour).
        let stopped_at = Instant::now();
        let status = d.wait_exit(PATIENCE);
        assert!(status.success(), "{backend}: {status}");
        eprintln!(
            "{backend}: exit {:?} after the GoAway, drain timeout 1 s",
            stopped_at.elapsed()
        );
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
