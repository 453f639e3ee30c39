//! The shared harness of the integration tests: starts the real `ringpush`
//! binary on 127.0.0.1 ephemeral ports with a config of the test's choosing,
//! and gives tests a blocking device client and a minimal HTTP client. Waits
//! are bounded polls for a condition, never sleeps that hope for the best.
//!
//! API signing is on in every test: unless the test's config has its own
//! `[[apps]]`, the daemon gets `SIGNED_DEMO_APP` (the demo app with an
//! apiSecret, unsigned requests refused), and `raw_http`/`http` sign every
//! request as the app it names (`appId` in the query or the JSON body;
//! `TEST_APP` when none) with that app's `test_app_secret`, so a test with
//! several apps configures each with its secret. `send_http` sends exactly
//! the headers it is given, for tests of unsigned, wrongly signed or
//! cross-app requests.

#![allow(dead_code)] // each test file uses its own subset

pub mod promql;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringpush::api::auth::HmacSigner;
use ringpush::protocol::{body, decode_slice, Frame, PROTOCOL_VERSION};

/// Upper bound for anything the daemon should do "at once"; generous so a
/// loaded CI machine does not fail a correct build.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// The app the HTTP helpers sign as, and its secret.
pub const TEST_APP: &str = "demo";
pub const TEST_APP_SECRET: &str = "integration-tests-demo-app-secret";
/// The `[[apps]]` entry every test daemon gets unless its config has one.
pub const SIGNED_DEMO_APP: &str = "[[apps]]\nappId = \"demo\"\nworkspaceId = \"default\"\napiSecret = \"integration-tests-demo-app-secret\"\n";

pub struct Daemon {
    child: Child,
    pub device: SocketAddr,
    /// The TLS device listener, when the config has a certificate.
    pub device_tls: Option<SocketAddr>,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub backend: String,
    dir: PathBuf,
    /// Removed on drop unless the test owns it (restarts reuse it).
    owns_dir: bool,
    /// Everything the daemon wrote to stderr so far.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts ringpush with `io = backend` and the extra TOML `extra`
    /// (top-level keys first, then sections).
    pub fn start(backend: &str, extra: &str) -> Daemon {
        Self::start_with(&format!("io = \"{backend}\"\nshards = 2\n{extra}"))
    }

    pub fn start_with(config: &str) -> Daemon {
        Self::start_with_env(config, &[])
    }

    /// `start_with` with extra environment variables for the daemon.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = std::env::temp_dir().join(format!(
            "ringpush-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let env: Vec<(&str, std::ffi::OsString)> = env.iter().map(|&(k, v)| (k, v.into())).collect();
        let mut daemon = Self::spawn(&dir, config, None, &env).unwrap_or_else(|e| panic!("{e}"));
        daemon.owns_dir = true;
        daemon
    }

    /// Replaces the daemon's configuration file with `config` (as given
    /// to `start_with`, completed the same way), atomically; a SIGHUP then
    /// reloads it.
    pub fn rewrite_config(&self, config: &str) {
        let path = self.dir.join("ringpush.toml");
        let tmp = self.dir.join(".ringpush.toml.tmp");
        std::fs::write(&tmp, full_config(&self.dir, config)).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// Replaces the configuration file with exactly `text`.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(self.dir.join("ringpush.toml"), text).unwrap();
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A fresh directory for a test that restarts the daemon on the same
    /// data; the test removes it.
    pub fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringpush-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts ringpush with its config and data under `dir`; starting again
    /// with the same `dir` is a restart on the same data.
    pub fn start_in(dir: &std::path::Path, config: &str) -> Daemon {
        Self::try_start_in(dir, config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start_in`, but a daemon that exits before it is ready is an
    /// `Err` with its exit status and stderr.
    pub fn try_start_in(dir: &std::path::Path, config: &str) -> Result<Daemon, String> {
        Self::spawn(dir, config, None, &[])
    }

    /// `start_in` with extra environment variables (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`) and, optionally, a fault directory.
    pub fn start_in_with_env(
        dir: &std::path::Path,
        config: &str,
        faults: Option<&std::path::Path>,
        env: &[(&str, std::ffi::OsString)],
    ) -> Daemon {
        Self::spawn(dir, config, faults, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `start_in` with fault injection: a file named `enospc` or
    /// `fsync-eio` in `faults` makes the log's next write or fsync fail.
    pub fn start_with_faults(dir: &std::path::Path, config: &str, faults: &std::path::Path) -> Daemon {
        Self::spawn(dir, config, Some(faults), &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(
        dir: &std::path::Path,
        config: &str,
        faults: Option<&std::path::Path>,
        env: &[(&str, std::ffi::OsString)],
    ) -> Result<Daemon, String> {
        let dir = dir.to_path_buf();
        let text = full_config(&dir, config);
        let path = dir.join("ringpush.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringpush"))
            .arg("--config")
            .arg(&path)
            // RINGPUSH_TEST_LOG=info shows the daemons' info lines.
            .env(
                "RUST_LOG",
                std::env::var("RINGPUSH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(faults.map(|f| (ringpush::log::FAULT_DIR_ENV, f)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringpush");
        // Stderr is echoed (the test output shows it) and kept, so a
        // refused start can be asserted on.
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let kept = stderr_text.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("ringpush ready:") => break line,
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait().unwrap();
                    let _ = stderr_thread.join();
                    let text = stderr_text.lock().unwrap().clone();
                    return Err(format!("ringpush exited before it was ready: {status}\n{text}"));
                }
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
                .to_string()
        };
        Ok(Daemon {
            device: field("device").parse().unwrap(),
            device_tls: field("device_tls").parse().ok(),
            api: field("api").parse().unwrap(),
            admin: field("admin").parse().unwrap(),
            backend: field("backend"),
            child,
            dir,
            owns_dir: false,
            stderr: stderr_text,
        })
    }

    /// Sends `signal` (a `kill -s` name such as HUP) to the daemon.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit on its own, panicking after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for ringpush") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringpush still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the process gets no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("wait for ringpush")
    }

    pub fn device(&self, token: &str) -> Device {
        Device::connect(self.device, token)
    }

    /// A request signed as the app it names (`TEST_APP` when none).
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        http(self.api, method, path, body)
    }

    /// A request with exactly `headers` (none: unsigned).
    pub fn http_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        let (status, text) = send_http(self.api, method, path, headers, body)
            .unwrap_or_else(|e| panic!("HTTP {method} {path}: {e}"));
        (status, json_of(status, &text))
    }

    /// Simple push of one message; returns the response JSON.
    pub fn push(&self, token: &str, msg_key: &str, ttl_secs: u64) -> (u16, serde_json::Value) {
        let body = serde_json::json!({
            "appId": "demo", "workspaceId": "default", "taskName": "test",
            "title": "hello", "content": format!("content of {msg_key}"),
            "deliveryType": 1, "targetMsgkey": { token: msg_key },
            "expiredSeconds": ttl_secs,
        });
        self.http("POST", "/v1/push/simple", &body.to_string())
    }

    /// The status code of a message for a token (-1/0/1/2/3/4, 99999999).
    pub fn status(&self, token: &str, msg_key: &str) -> i64 {
        let (code, json) = self.http("GET", &format!("/v1/messages/{msg_key}?target={token}"), "");
        assert_eq!(code, 200, "{json}");
        json["PushResult"]["Data"]["status"]
            .as_i64()
            .expect("numeric status")
    }

    /// Polls until the status is `want`, panicking after PATIENCE.
    pub fn wait_status(&self, token: &str, msg_key: &str, want: i64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.status(token, msg_key);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "status of {msg_key} stayed {got}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the device query until the daemon holds `token`'s device as
    /// offline (a dropped connection is closed by its shard asynchronously),
    /// panicking after PATIENCE.
    pub fn wait_offline(&self, token: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let query = format!("/v1/devices?appId={TEST_APP}&workspaceId=default&token={token}");
            let (_, json) = self.http("GET", &query, "");
            let online = &json["PushResult"]["Data"]["devices"][0]["online"];
            if *online == serde_json::Value::Bool(false) {
                return;
            }
            assert!(Instant::now() < deadline, "{token} stayed online: {json}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sum of a metric's samples whose labels contain `label` ("" for all).
    pub fn metric_sum(&self, name: &str, label: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn metrics(&self) -> String {
        let (code, body) = raw_http(self.admin, "GET", "/metrics", "");
        assert_eq!(code, 200);
        body
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The file the daemon gets for the test's `config`: its own `[[apps]]` or
/// `SIGNED_DEMO_APP`, data under `dir` unless it says otherwise, and every
/// listener on an ephemeral loopback port.
fn full_config(dir: &std::path::Path, config: &str) -> String {
    let (top, sections) = split_top_level(config);
    let sections = if sections.contains("[[apps]]") {
        sections
    } else {
        format!("{sections}\n{SIGNED_DEMO_APP}")
    };
    let sections = if sections.contains("[durability]") {
        sections
    } else {
        format!(
            "{sections}\n[durability]\ndata_dir = \"{}\"\nfsync = \"never\"\n",
            dir.join("data").display()
        )
    };
    format!(
            "{top}\n[listen]\ndevice = \"127.0.0.1:0\"\ndevice_tls = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{sections}"
        )
}

static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Splits TOML into the lines before the first section header and the rest,
/// so the harness can add its `[listen]` section without clobbering either.
fn split_top_level(config: &str) -> (String, String) {
    let mut top = String::new();
    let mut rest = String::new();
    let mut in_section = false;
    for line in config.lines() {
        in_section |= line.trim_start().starts_with('[');
        let out = if in_section { &mut rest } else { &mut top };
        out.push_str(line);
        out.push('\n');
    }
    (top, rest)
}

/// A blocking device connection.
pub struct Device {
    stream: TcpStream,
    buf: Vec<u8>,
    pub token: String,
    pub welcome: Option<body::Welcome>,
}

impl Device {
    pub fn raw(addr: SocketAddr) -> Device {
        let stream = TcpStream::connect(addr).expect("connect to the device listener");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Device {
            stream,
            buf: Vec::new(),
            token: String::new(),
            welcome: None,
        }
    }

    /// A device on a socket the test connected itself (from a chosen source
    /// address, with chosen buffer sizes).
    pub fn from_stream(stream: TcpStream) -> Device {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Device {
            stream,
            buf: Vec::new(),
            token: String::new(),
            welcome: None,
        }
    }

    /// Says Hello as a device of app `demo` and reads the Welcome, or
    /// returns the frame that came instead (`None`: closed).
    pub fn handshake(&mut self, token: &str) -> Result<(), Option<Frame>> {
        self.send(&Frame::Hello(Box::new(body::Hello {
            protocol_version: PROTOCOL_VERSION,
            app_id: "demo".into(),
            platform: 1,
            token: token.into(),
            ..Default::default()
        })));
        match self.recv() {
            Some(Frame::Welcome(w)) => {
                self.token = w.token.clone();
                self.welcome = Some(w);
                Ok(())
            }
            other => Err(other),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Connects as a device of app `demo` and completes the handshake.
    pub fn connect(addr: SocketAddr, token: &str) -> Device {
        Self::connect_app(addr, "demo", token)
    }

    /// Connects as a device of `app_id` and completes the handshake.
    pub fn connect_app(addr: SocketAddr, app_id: &str, token: &str) -> Device {
        let mut device = Self::raw(addr);
        device.send(&Frame::Hello(Box::new(body::Hello {
            protocol_version: PROTOCOL_VERSION,
            app_id: app_id.into(),
            platform: 1,
            token: token.into(),
            ..Default::default()
        })));
        match device.recv() {
            Some(Frame::Welcome(w)) => {
                device.token = w.token.clone();
                device.welcome = Some(w);
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        device
    }

    /// Connects and sends `hello` as it is; returns the connection and the
    /// server's first answer (Welcome, Error, GoAway; `None`: closed).
    pub fn hello(addr: SocketAddr, hello: body::Hello) -> (Device, Option<Frame>) {
        let mut device = Self::raw(addr);
        device.send(&Frame::Hello(Box::new(hello)));
        let answer = device.recv();
        if let Some(Frame::Welcome(w)) = &answer {
            device.token = w.token.clone();
            device.welcome = Some(w.clone());
        }
        (device, answer)
    }

    /// Connects as a device of `app_id` with a Hello signed with
    /// `device_secret(app_id)`, and completes the handshake.
    pub fn connect_signed(addr: SocketAddr, app_id: &str, token: &str) -> Device {
        let hello = signed_hello(app_id, token, &device_secret(app_id), now_ms(), &fresh_nonce());
        match Self::hello(addr, hello) {
            (device, Some(Frame::Welcome(_))) => device,
            (_, other) => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub fn send(&mut self, frame: &Frame) {
        self.stream.write_all(&frame.to_bytes()).unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = decode_slice(&self.buf, 1 << 20).expect("server frames decode") {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from ringpush: {e}"),
            }
        }
    }

    /// The next Push, acknowledged. Pongs in between are skipped.
    pub fn recv_push(&mut self) -> body::Push {
        loop {
            match self.recv() {
                Some(Frame::Push(p)) => return *p,
                Some(Frame::Pong(_)) => continue,
                other => panic!("expected Push, got {other:?}"),
            }
        }
    }

    pub fn ack(&mut self, ids: &[u64]) {
        self.send(&Frame::Ack(body::Ids { ids: ids.to_vec() }));
    }

    /// Round-trips a Ping and returns every frame that arrived before its
    /// Pong: the server handles a connection's frames in order, so anything
    /// it meant to send before the Ping is in that list.
    pub fn drain_until_pong(&mut self) -> Vec<Frame> {
        let marker = 0x5EED;
        self.send(&Frame::Ping(body::Heartbeat { time_ms: marker }));
        let mut before = Vec::new();
        loop {
            match self.recv() {
                Some(Frame::Pong(p)) if p.time_ms == marker => return before,
                Some(frame) => before.push(frame),
                None => panic!("closed while waiting for Pong; got {before:?}"),
            }
        }
    }

    /// Reads until the server closes; returns what came before.
    pub fn until_closed(&mut self) -> Vec<Frame> {
        std::iter::from_fn(|| self.recv()).collect()
    }
}

/// The deviceSecret tests give app `app_id`.
pub fn device_secret(app_id: &str) -> String {
    format!("integration-tests-{app_id}-device-secret")
}

/// A Hello of `app_id` presenting `token`, signed with `secret`.
pub fn signed_hello(app_id: &str, token: &str, secret: &str, timestamp_ms: u64, nonce: &str) -> body::Hello {
    let mut hello = body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: app_id.into(),
        platform: 1,
        token: token.into(),
        ..Default::default()
    };
    ringpush::device_auth::sign_hello(secret.as_bytes(), &mut hello, timestamp_ms, nonce);
    hello
}

/// The `[[apps]]` entry of an app with signed API requests and, when
/// `device_auth`, required device authentication; secrets from
/// `test_app_secret` and `device_secret`.
pub fn app_entry(app_id: &str, device_auth: bool) -> String {
    let mut entry = format!(
        "[[apps]]\nappId = \"{app_id}\"\nworkspaceId = \"default\"\napiSecret = \"{}\"\n",
        test_app_secret(app_id)
    );
    if device_auth {
        entry.push_str(&format!(
            "deviceSecret = \"{}\"\ndeviceAuth = \"required\"\n",
            device_secret(app_id)
        ));
    }
    entry
}

/// The apiSecret tests give app `app_id`.
pub fn test_app_secret(app_id: &str) -> String {
    if app_id == TEST_APP {
        TEST_APP_SECRET.to_string()
    } else {
        format!("integration-tests-{app_id}-app-secret")
    }
}

/// The app a request names: `appId` in the query, else in the JSON body,
/// else `TEST_APP`.
fn named_app(path: &str, body: &str) -> String {
    let in_query = path.split_once('?').and_then(|(_, query)| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("appId=").map(str::to_string))
    });
    let in_body = || {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("appId")?.as_str().map(str::to_string))
    };
    in_query
        .or_else(in_body)
        .filter(|app| !app.is_empty())
        .unwrap_or_else(|| TEST_APP.to_string())
}

/// One HTTP/1.1 request with `Connection: close`, signed as the app it
/// names; returns status and body.
pub fn raw_http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    try_raw_http(addr, method, path, body).unwrap_or_else(|e| panic!("HTTP {method} {path}: {e}"))
}

/// `raw_http` that reports a failed connection (a killed daemon) as `Err`.
pub fn try_raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let app = named_app(path, body);
    let signer = HmacSigner::new(app.as_str(), test_app_secret(&app).as_bytes());
    send_http(addr, method, path, &sign(&signer, method, path, body), body)
}

/// The authentication headers of one request: now, and a nonce never used
/// before by this process (nor, in practice, by another).
pub fn sign(signer: &HmacSigner, method: &str, path: &str, body: &str) -> Vec<(String, String)> {
    signer
        .sign(method, path, body.as_bytes(), now_ms(), &fresh_nonce())
        .pairs()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

pub fn fresh_nonce() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{:x}-{n:x}-{nanos:x}", std::process::id())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One HTTP/1.1 request with exactly the given extra headers.
pub fn send_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    send_http_head(addr, method, path, headers, body).map(|(status, _, body)| (status, body))
}

/// `send_http` that also returns the response head (status line and
/// headers).
pub fn send_http_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "incomplete HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, head.to_string(), body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = raw_http(addr, method, path, body);
    (status, json_of(status, &text))
}

fn json_of(status: u16, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{status} {text:?} is not JSON: {e}"))
}

/// Polls until `f` holds, panicking with `what` after PATIENCE.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
