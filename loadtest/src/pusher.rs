//! The API side of a run: keep-alive HTTP/1.1 connections that post simple
//! or multiple (template, up to 100 targets) pushes to random online
//! devices on an open-loop schedule (the send time
//! of request k is fixed in advance, so a slow server shows up as latency and
//! as "behind schedule", never as a quietly lower offered rate).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringpush::api::auth::HmacSigner;

use crate::devices::Shared;
use crate::stats::{self, Counters};

/// Which push endpoint a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PushKind {
    /// `POST /v1/push/simple`: title and content, up to 10 targets.
    Simple,
    /// `POST /v1/push/multiple`: the bench template, personalised per
    /// target, up to 100 targets.
    Multiple,
}

impl PushKind {
    pub fn max_targets(self) -> usize {
        match self {
            Self::Simple => 10,
            Self::Multiple => 100,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Simple => "/v1/push/simple",
            Self::Multiple => "/v1/push/multiple",
        }
    }
}

/// The template multiple pushes fill: `#n#` the message's sequence number,
/// `#c#` the payload.
pub const BENCH_TEMPLATE: &str = "ringpush_bench";

/// Creates `BENCH_TEMPLATE` in the app (one already there is fine).
pub fn ensure_template(
    api_addr: SocketAddr,
    app: &str,
    workspace: &str,
    signer: Option<&HmacSigner>,
) -> anyhow::Result<()> {
    const PATH: &str = "/v1/templates";
    let body = serde_json::json!({
        "appId": app, "workspaceId": workspace, "templateName": BENCH_TEMPLATE,
        "title": "bench #n#", "content": "#c#",
    })
    .to_string();
    let mut headers = String::new();
    if let Some(signer) = signer {
        sign_into(
            &mut headers,
            signer,
            PATH,
            &body,
            &format!("tpl{:x}", stats::unix_micros()),
        );
    }
    let (status, answer) = HttpClient::connect(api_addr)?.post(PATH, &headers, &body)?;
    let code = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["ResultCode"].as_str().map(str::to_string))
        .unwrap_or_default();
    match (status, code.as_str()) {
        (200, _) | (409, "3036") => Ok(()),
        _ => anyhow::bail!("creating the bench template: HTTP {status}: {answer}"),
    }
}

pub struct PushConfig {
    pub kind: PushKind,
    pub api_addr: SocketAddr,
    pub app: String,
    pub workspace: String,
    /// Signs every push (the HMAC key is prepared once); `None`: unsigned.
    pub signer: Option<Arc<HmacSigner>>,
    /// Messages per second for this connection.
    pub rate: f64,
    pub targets_per_request: usize,
    pub ttl_secs: u64,
    pub until: Instant,
    pub seed: u64,
    /// Set once the warm-up is over: API latencies are recorded from then.
    pub record_after: Arc<AtomicBool>,
    /// Bytes of title + content per message.
    pub payload_bytes: usize,
}

/// What one push connection saw.
pub struct PushOutcome {
    /// HTTP errors by status and result code.
    pub errors: BTreeMap<String, u64>,
    /// From each request's scheduled send time to its response, in µs
    /// (measured from the schedule, so queueing behind a slow response
    /// counts: no coordinated omission).
    pub api_latency: Histogram<u64>,
}

/// Sends pushes until `until`.
pub fn run(config: PushConfig, shared: Arc<Shared>) -> PushOutcome {
    let mut errors = BTreeMap::new();
    let mut api_latency = stats::latency_histogram();
    let tokens: Vec<String> = shared.tokens.lock().clone();
    if tokens.is_empty() || config.rate <= 0.0 {
        return PushOutcome { errors, api_latency };
    }
    let mut client = match HttpClient::connect(config.api_addr) {
        Ok(c) => c,
        Err(e) => {
            errors.insert(format!("connect: {e}"), 1);
            return PushOutcome { errors, api_latency };
        }
    };
    let content = "x".repeat(config.payload_bytes - 5);
    let interval = Duration::from_secs_f64(config.targets_per_request as f64 / config.rate);
    let start = Instant::now();
    let mut rng = config.seed | 1;
    let mut sequence = config.seed << 40;
    let mut request = 0u64;
    // Unique across connections (seed) and runs (start time) while the
    // server remembers nonces.
    let nonce_prefix = format!("b{:x}-{:x}-", stats::unix_micros(), config.seed);
    let mut auth_headers = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let due = start + interval.mul_f64(request as f64);
        if due >= config.until {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(10) {
            Counters::add(&shared.counters.behind_schedule, 1);
        }
        request += 1;
        let sent_us = stats::unix_micros();
        // Distinct targets: a request may not name a device twice.
        let mut chosen = std::collections::HashSet::new();
        while chosen.len() < config.targets_per_request.min(tokens.len()) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            chosen.insert((rng % tokens.len() as u64) as usize);
        }
        let n = chosen.len() as u64;
        let body = match config.kind {
            PushKind::Simple => {
                let mut targets = serde_json::Map::new();
                for &t in &chosen {
                    sequence += 1;
                    targets.insert(tokens[t].clone(), stats::msg_key(sequence, sent_us).into());
                }
                serde_json::json!({
                    "appId": config.app, "workspaceId": config.workspace, "taskName": "bench",
                    "title": "bench", "content": content, "deliveryType": 1,
                    "targetMsgkey": targets, "expiredSeconds": config.ttl_secs,
                })
            }
            PushKind::Multiple => {
                let targets: Vec<serde_json::Value> = chosen
                    .iter()
                    .map(|&t| {
                        sequence += 1;
                        serde_json::json!({
                            "target": tokens[t], "msgKey": stats::msg_key(sequence, sent_us),
                            "templateKeyValue": {"n": sequence.to_string(), "c": content},
                        })
                    })
                    .collect();
                serde_json::json!({
                    "appId": config.app, "workspaceId": config.workspace, "taskName": "bench",
                    "templateName": BENCH_TEMPLATE, "deliveryType": 1,
                    "targetMsgs": targets, "expiredSeconds": config.ttl_secs,
                })
            }
        }
        .to_string();
        let path = config.kind.path();
        auth_headers.clear();
        if let Some(signer) = &config.signer {
            let nonce = format!("{nonce_prefix}{request:x}");
            sign_into(&mut auth_headers, signer, path, &body, &nonce);
        }
        Counters::add(&shared.counters.requests_sent, 1);
        let answer = client.post(path, &auth_headers, &body);
        if config.record_after.load(Ordering::Relaxed) {
            let _ = api_latency.record((due.elapsed().as_micros() as u64).max(1));
        }
        match answer {
            Ok((200, _)) => Counters::add(&shared.counters.messages_sent, n),
            Ok((status, text)) => {
                Counters::add(&shared.counters.http_errors, 1);
                let code = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["ResultCode"].as_str().map(str::to_string))
                    .unwrap_or_default();
                *errors.entry(format!("{status} {code}")).or_default() += 1;
            }
            Err(e) => {
                Counters::add(&shared.counters.http_errors, 1);
                *errors.entry(format!("io: {}", e.kind())).or_default() += 1;
                match HttpClient::connect(config.api_addr) {
                    Ok(c) => client = c,
                    Err(_) => break,
                }
            }
        }
    }
    PushOutcome { errors, api_latency }
}

/// Appends the authentication header lines (each ending in CRLF) of a
/// POST of `body` to `path`, signed now with `nonce`.
pub fn sign_into(headers: &mut String, signer: &HmacSigner, path: &str, body: &str, nonce: &str) {
    let signed = signer.sign("POST", path, body.as_bytes(), stats::unix_micros() / 1000, nonce);
    for (name, value) in signed.pairs() {
        headers.push_str(name);
        headers.push_str(": ");
        headers.push_str(value);
        headers.push_str("\r\n");
    }
}

/// A minimal keep-alive HTTP/1.1 client: enough for JSON POSTs with
/// Content-Length responses, which is what the push API sends.
pub struct HttpClient {
    reader: BufReader<TcpStream>,
    host: String,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// `headers`: extra header lines, each ending in CRLF.
    pub fn post(&mut self, path: &str, headers: &str, body: &str) -> std::io::Result<(u16, String)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
            self.host,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut response = vec![0u8; length];
        self.reader.read_exact(&mut response)?;
        Ok((status, String::from_utf8_lossy(&response).into_owned()))
    }
}
