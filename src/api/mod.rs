//! The HTTP push API and the admin endpoints, on their own tokio runtime so
//! that shard threads never run HTTP work. Every handler starts with
//! `admit` (body read, request authenticated by `auth`), then validates
//! (`push`) with the `appId` it acts for checked against the caller, routes
//! each message to the shard that owns its token, waits for the shard's
//! answer, and replies in the reference's envelope: `RequestId`,
//! `ResultCode`, `ResultMessage`, `PushResult`.

pub mod auth;
pub mod push;
pub mod result_code;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::{AppRegistry, AuthenticatedApp};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::message::{owner_shard, unix_ms, Accepted, Command, Message, StatusReport, StorageRefusal};
use crate::shard::ShardHandle;
use crate::store::StorageHealth;
use result_code::{ApiError, ResultCode};

/// Largest request body read; larger ones get 413 and 3050.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a handler waits for shards before answering 503.
const SHARD_TIMEOUT: Duration = Duration::from_secs(5);
/// The reference's "unknown" status code.
const STATUS_UNKNOWN: i64 = 99_999_999;

struct ApiState {
    config: Config,
    auth: Arc<AppRegistry>,
    shards: Arc<[ShardHandle]>,
    health: Arc<StorageHealth>,
    next_message_id: AtomicU64,
    push_metrics: OpMetrics,
    status_metrics: OpMetrics,
    accepted: metrics::Counter,
}

impl ApiState {
    fn next_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The running HTTP servers.
pub struct HttpServers {
    api_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServers {
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish, and joins.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds the API and admin listeners and serves them on a dedicated thread.
pub fn serve(
    config: &Config,
    shards: &crate::shard::Shards,
    ready: Arc<AtomicBool>,
    prometheus: PrometheusHandle,
) -> anyhow::Result<HttpServers> {
    describe_metrics();
    // One thread runs every HTTP connection: requests are short and the
    // shards do the delivery work, and a current-thread runtime avoids the
    // cross-thread wake-ups of a one-worker pool (measured: fewer context
    // switches per request).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api_listener = runtime.block_on(tokio::net::TcpListener::bind(config.listen.api))?;
    let admin_listener = runtime.block_on(tokio::net::TcpListener::bind(config.listen.admin))?;
    let api_addr = api_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let registry =
        AppRegistry::new(&config.apps, config.limits.api_nonces_per_app)?.refuse_timestamps_before(unix_ms());
    warn_about_unsigned_apps(&registry, api_addr);
    let state = Arc::new(ApiState {
        auth: Arc::new(registry),
        config: config.clone(),
        shards: shards.handles(),
        health: shards.storage_health(),
        // Unique across restarts: past every id in the log, and past every
        // id the last run could have issued unless it averaged 65,536 ids
        // per ms (ids of pushes that were never accepted are not logged).
        next_message_id: AtomicU64::new((unix_ms() << 16).max(shards.max_message_id() + 1)),
        push_metrics: OpMetrics::new("push_simple"),
        status_metrics: OpMetrics::new("message_status"),
        accepted: metrics::counter!("ringpush_messages_accepted_total"),
    });
    let api = Router::new()
        .route("/v1/push/simple", post(simple_push))
        .route("/v1/messages/{msg_key}", get(message_status))
        .with_state(state);
    let admin = crate::admin::router(ready, shards.storage_health(), prometheus);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new().name("api".into()).spawn(move || {
        runtime.block_on(async move {
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            let api = axum::serve(api_listener, api).with_graceful_shutdown(stopped(stop_rx.clone()));
            let admin = axum::serve(admin_listener, admin).with_graceful_shutdown(stopped(stop_rx));
            let (a, b) = tokio::join!(api, admin);
            if let Err(e) = a.and(b) {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    })?;
    Ok(HttpServers {
        api_addr,
        admin_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Unsigned requests are for local demos: say so at every start, louder when
/// the API is reachable from other machines.
fn warn_about_unsigned_apps(registry: &AppRegistry, api_addr: SocketAddr) {
    for app in registry.apps().filter(|a| a.allows_unsigned()) {
        if api_addr.ip().is_loopback() {
            tracing::warn!(
                app = %app.id,
                "app accepts unsigned API requests (allowUnsigned = true): any local process can push as it; \
                 give it an apiSecret or publicKey and remove allowUnsigned outside local demos"
            );
        } else {
            tracing::warn!(
                app = %app.id,
                api = %api_addr,
                "app accepts unsigned API requests (allowUnsigned = true) on a non-loopback address: \
                 anyone who can reach the API can push as it; this is for local demos only"
            );
        }
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "ringpush_api_requests_total",
        "API requests by operation and result code"
    );
    describe_histogram!(
        "ringpush_api_request_duration_seconds",
        Unit::Seconds,
        "API request handling time"
    );
    describe_counter!(
        "ringpush_messages_accepted_total",
        "Messages the API accepted and a shard queued"
    );
    describe_counter!(
        "ringpush_api_auth_failures_total",
        "API requests refused by authentication, by reason"
    );
}

/// A request id: unique within the process (a bijective mix of a counter)
/// and across restarts (a random per-process seed), without a getrandom
/// system call per request.
fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    static SEED: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let mut raw = [0u8; 16];
        let _ = getrandom::fill(&mut raw);
        [
            u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(raw[8..].try_into().expect("8 bytes")),
        ]
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&splitmix64(seed[0].wrapping_add(n)).to_be_bytes());
    raw[8..].copy_from_slice(&splitmix64(seed[1] ^ n).to_be_bytes());
    let mut id = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 15)] as char);
    }
    id
}

/// SplitMix64's finaliser: a bijection on u64 that scatters counter values.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The reference's response envelope.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<'a, T: Serialize> {
    request_id: String,
    result_code: &'a str,
    result_message: &'a str,
    push_result: T,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PushResult<'a> {
    success: bool,
    result_msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    targets: Option<Vec<TargetResult<'a>>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetResult<'a> {
    target: &'a str,
    msg_key: &'a str,
    message_id: String,
    result: &'static str,
}

fn envelope<T: Serialize>(status: u16, code: &str, message: &str, push_result: T) -> Response {
    let body = Envelope {
        request_id: request_id(),
        result_code: code,
        result_message: message,
        push_result,
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        // RFC 9110 §15.5.2: a 401 names the scheme to use.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("X-Ringpush-Signature"),
        );
    }
    response
}

fn error_response(op: &'static str, started: Instant, error: ApiError) -> Response {
    let code = error.code.code().to_string();
    let message = format!("{}: {}", error.code.name(), error.reason);
    record(op, &code, started);
    let result = PushResult {
        success: false,
        result_msg: &message,
        data: None,
        targets: None,
    };
    envelope(error.code.http_status(), &code, &message, result)
}

/// Metric handles for the common outcome, registered once: a labelled
/// `counter!` lookup per request showed in profiles.
struct OpMetrics {
    ok: metrics::Counter,
    duration: metrics::Histogram,
}

impl OpMetrics {
    fn new(op: &'static str) -> Self {
        Self {
            ok: metrics::counter!("ringpush_api_requests_total", "op" => op, "result_code" => "OK"),
            duration: metrics::histogram!("ringpush_api_request_duration_seconds", "op" => op),
        }
    }

    fn ok(&self, started: Instant) {
        self.ok.increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
    }
}

fn record(op: &'static str, code: &str, started: Instant) {
    metrics::counter!("ringpush_api_requests_total", "op" => op, "result_code" => code.to_string())
        .increment(1);
    metrics::histogram!("ringpush_api_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// The start of every API handler: reads the body (at most
/// `MAX_BODY_BYTES`) and authenticates the request (`auth::authenticate`).
/// The handler must then pass the `appId` it acts for through
/// `AuthenticatedApp::check_app` (or take `default_app`). A refusal comes
/// back as the finished error response, counted under `op`.
async fn admit(
    state: &ApiState,
    op: &'static str,
    started: Instant,
    request: Request,
) -> Result<(AuthenticatedApp, Bytes), Response> {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let err = ApiError::new(
                ResultCode::MsgPayloadTooLong,
                format!("the request body is over {MAX_BODY_BYTES} bytes"),
            );
            let mut response = error_response(op, started, err);
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Err(response);
        }
    };
    match auth::authenticate(&state.auth, &parts, &bytes, unix_ms()) {
        Ok(caller) => Ok((caller, bytes)),
        Err(e) => Err(error_response(op, started, e)),
    }
}

async fn simple_push(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    const OP: &str = "push_simple";
    let started = Instant::now();
    let (caller, bytes) = match admit(&state, OP, started, request).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let request = match push::parse(&bytes, &state.config, &caller) {
        Ok(r) => r,
        Err(e) => return error_response(OP, started, e),
    };
    if let Some(refusal) = state.health.refusal() {
        return error_response(OP, started, storage_error(refusal));
    }
    let messages = match request.messages(unix_ms(), || state.next_id()) {
        Ok(m) => m,
        Err(e) => return error_response(OP, started, e),
    };
    let described: Vec<(Box<str>, Box<str>, u64)> = messages
        .iter()
        .map(|m| (m.token.clone(), m.msg_key.clone(), m.id))
        .collect();
    let outcomes = match route(&state.shards, messages).await {
        Ok(o) => o,
        Err(e) => return error_response(OP, started, e),
    };
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, Accepted::Queued { .. }))
        .count();
    state.accepted.increment(accepted as u64);
    let targets: Vec<TargetResult> = described
        .iter()
        .zip(&outcomes)
        .map(|((token, msg_key, id), outcome)| TargetResult {
            target: token,
            msg_key,
            message_id: id.to_string(),
            result: match outcome {
                Accepted::Queued { online: true } => "delivering",
                Accepted::Queued { online: false } => "queued",
                Accepted::Duplicate => "duplicate",
                Accepted::UnknownToken => "3054",
            },
        })
        .collect();
    if outcomes.iter().all(|o| *o == Accepted::UnknownToken) {
        let code = ResultCode::DeliveryTokenInvalid;
        let message = format!("{}: no device holds these tokens", code.name());
        let code_text = code.code().to_string();
        record(OP, &code_text, started);
        let result = PushResult {
            success: false,
            result_msg: &message,
            data: None,
            targets: Some(targets),
        };
        return envelope(code.http_status(), &code_text, &message, result);
    }
    state.push_metrics.ok(started);
    let result = PushResult {
        success: true,
        result_msg: "",
        data: Some(""),
        targets: Some(targets),
    };
    envelope(200, "OK", "", result)
}

/// Sends each message to the shard owning its token (one command per shard,
/// request order kept within a shard) and gathers the outcomes in the
/// messages' order.
async fn route(shards: &Arc<[ShardHandle]>, messages: Vec<Message>) -> Result<Vec<Accepted>, ApiError> {
    let count = messages.len();
    let mut per_shard: Vec<(Vec<Message>, Vec<usize>)> =
        (0..shards.len()).map(|_| Default::default()).collect();
    for (i, message) in messages.into_iter().enumerate() {
        let shard = owner_shard(message.token.as_bytes(), shards.len());
        per_shard[shard].0.push(message);
        per_shard[shard].1.push(i);
    }
    let mut waiting = Vec::new();
    for (shard, (messages, positions)) in per_shard.into_iter().enumerate() {
        if messages.is_empty() {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        if shards[shard].send(Command::Push { messages, reply }).is_err() {
            metrics::counter!("ringpush_api_shard_queue_full_total", "shard" => shard.to_string())
                .increment(1);
            return Err(overloaded());
        }
        waiting.push((answer, positions));
    }
    let mut outcomes = vec![Accepted::UnknownToken; count];
    for (answer, positions) in waiting {
        let answers = tokio::time::timeout(SHARD_TIMEOUT, answer)
            .await
            .map_err(|_| ApiError::new(ResultCode::SystemError, "a shard did not answer in time"))?
            .map_err(|_| ApiError::new(ResultCode::SystemError, "a shard stopped"))?
            .map_err(storage_error)?;
        for (position, outcome) in positions.into_iter().zip(answers) {
            outcomes[position] = outcome;
        }
    }
    Ok(outcomes)
}

fn storage_error(refusal: StorageRefusal) -> ApiError {
    match refusal {
        StorageRefusal::Full => ApiError::new(
            ResultCode::StorageFull,
            "the disk is full; nothing was accepted; retry when space is back",
        ),
        StorageRefusal::Failed => ApiError::new(
            ResultCode::StorageFailed,
            "the message log failed (an fsync error); this node accepts nothing until restarted",
        ),
    }
}

fn overloaded() -> ApiError {
    ApiError::new(
        ResultCode::SystemError,
        "overloaded: a shard's queue is full; retry shortly",
    )
}

async fn message_status(
    State(state): State<Arc<ApiState>>,
    Path(msg_key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "message_status";
    let started = Instant::now();
    let caller = match admit(&state, OP, started, request).await {
        Ok((caller, _)) => caller,
        Err(response) => return response,
    };
    let Some(token) = query.get("target").filter(|t| !t.is_empty()) else {
        return error_response(
            OP,
            started,
            ApiError::new(ResultCode::TokenOrUserIdNull, "target is required"),
        );
    };
    // Without appId: the signing app, or the only configured one.
    let app = match query.get("appId") {
        Some(app_id) => caller.check_app(app_id),
        None => caller.default_app(),
    };
    let app_id = match app {
        Ok(app) => app.id.clone(),
        Err(e) => return error_response(OP, started, e),
    };
    let shard = owner_shard(token.as_bytes(), state.shards.len());
    let (reply, answer) = oneshot::channel();
    let command = Command::QueryStatus {
        app_id,
        msg_key: msg_key.as_str().into(),
        token: token.as_str().into(),
        reply,
    };
    if state.shards[shard].send(command).is_err() {
        return error_response(OP, started, overloaded());
    }
    let report: Option<StatusReport> = match tokio::time::timeout(SHARD_TIMEOUT, answer).await {
        Ok(Ok(r)) => r,
        _ => {
            return error_response(
                OP,
                started,
                ApiError::new(ResultCode::SystemError, "the shard did not answer"),
            )
        }
    };
    let data = match report {
        Some(r) => json!({
            "msgKey": msg_key, "target": token,
            "status": r.status.code(), "statusName": r.status.name(),
            "messageId": r.message_id.to_string(),
            "acceptedAt": r.accepted_at_ms, "expiresAt": r.expires_at_ms, "ackedAt": r.acked_at_ms,
        }),
        None => json!({
            "msgKey": msg_key, "target": token,
            "status": STATUS_UNKNOWN, "statusName": "Unknown",
        }),
    };
    state.status_metrics.ok(started);
    envelope(
        200,
        "OK",
        "",
        json!({"Success": true, "ResultMsg": "", "Data": data}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_shaped_like_the_reference() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = ids.iter().next().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
