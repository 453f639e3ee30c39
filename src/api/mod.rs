//! The HTTP push API and the admin endpoints, on their own tokio runtime so
//! that shard threads never run HTTP work. Handlers validate (`push`),
//! route each message to the shard that owns its token, wait for the
//! shard's answer, and reply in the reference's envelope: `RequestId`,
//! `ResultCode`, `ResultMessage`, `PushResult`. Template management is in
//! `templates`, tag management in `tags`, the device registry in
//! `devices`, tasks and statistics in `stats`, recall in `recall`. Every
//! handler starts with `admit` (body read, request authenticated by
//! `auth`) and checks the `appId` it acts for against the caller. `ROUTES`
//! lists every endpoint; `docs/openapi.yaml` must describe exactly those.

pub mod auth;
pub mod devices;
mod fields;
pub mod push;
pub mod rate_limit;
pub mod recall;
pub mod result_code;
pub mod server;
pub mod stats;
pub mod tags;
pub mod templates;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::{AppRegistry, AuthenticatedApp};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::message::{
    owner_shard, unix_ms, Accepted, Command, Message, Reply, SharedMessage, SharedOutcome, StatusReport,
    StorageRefusal,
};
use crate::shard::ShardHandle;
use crate::store::StorageHealth;
use crate::tags::TagStore;
use crate::templates::TemplateStore;
use result_code::{ApiError, ResultCode};

/// Largest request body read; larger ones get 413 and 3050.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A multiple push's body: 100 targets, each with its values and extended
/// params, may need more than `MAX_BODY_BYTES`.
pub const MAX_MULTIPLE_BODY_BYTES: usize = 256 * 1024;
/// How long a handler waits for shards before answering 503.
const SHARD_TIMEOUT: Duration = Duration::from_secs(5);
/// The reference's "unknown" status code.
const STATUS_UNKNOWN: i64 = 99_999_999;

/// One endpoint of the push API.
pub struct Route {
    pub method: Method,
    /// In axum's syntax, which is OpenAPI's: `{name}` for a parameter.
    pub path: &'static str,
    /// The handler, routed for exactly the filter it is given.
    handler: fn(MethodFilter) -> MethodRouter<Arc<ApiState>>,
}

impl Route {
    fn handler(&self) -> MethodRouter<Arc<ApiState>> {
        let filter = MethodFilter::try_from(self.method.clone()).expect("ROUTES name standard methods");
        (self.handler)(filter)
    }
}

/// Every endpoint the API listener serves, and the only source of its
/// router: `tests/openapi_contract.rs` checks that `docs/openapi.yaml`
/// describes exactly these, so a new endpoint goes here and into the spec.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        path: "/v1/push/simple",
        handler: |m| on(m, simple_push),
    },
    Route {
        method: Method::POST,
        path: "/v1/push/template",
        handler: |m| on(m, template_push),
    },
    Route {
        method: Method::POST,
        path: "/v1/push/multiple",
        handler: |m| on(m, multiple_push),
    },
    Route {
        method: Method::POST,
        path: "/v1/push/broadcast",
        handler: |m| {
            on(m, |State(state): State<Arc<ApiState>>, request: Request| {
                fanout_push(state, push::PushKind::Broadcast, request)
            })
        },
    },
    Route {
        method: Method::POST,
        path: "/v1/push/group",
        handler: |m| {
            on(m, |State(state): State<Arc<ApiState>>, request: Request| {
                fanout_push(state, push::PushKind::Group, request)
            })
        },
    },
    Route {
        method: Method::POST,
        path: "/v1/push/tag",
        handler: |m| {
            on(m, |State(state): State<Arc<ApiState>>, request: Request| {
                fanout_push(state, push::PushKind::Tag, request)
            })
        },
    },
    Route {
        method: Method::POST,
        path: "/v1/push/recall",
        handler: |m| on(m, recall::message),
    },
    Route {
        method: Method::POST,
        path: "/v1/push/recall-task",
        handler: |m| on(m, recall::task),
    },
    Route {
        method: Method::GET,
        path: "/v1/messages/{msgKey}",
        handler: |m| on(m, message_status),
    },
    Route {
        method: Method::POST,
        path: "/v1/users/bind",
        handler: |m| registry(m, devices::Operation::Bind),
    },
    Route {
        method: Method::POST,
        path: "/v1/users/unbind",
        handler: |m| registry(m, devices::Operation::Unbind),
    },
    Route {
        method: Method::POST,
        path: "/v1/groups/join",
        handler: |m| registry(m, devices::Operation::JoinGroup),
    },
    Route {
        method: Method::POST,
        path: "/v1/groups/leave",
        handler: |m| registry(m, devices::Operation::LeaveGroup),
    },
    Route {
        method: Method::POST,
        path: "/v1/groups/leave-all",
        handler: |m| registry(m, devices::Operation::LeaveAllGroups),
    },
    Route {
        method: Method::POST,
        path: "/v1/devices/vendor-token",
        handler: |m| registry(m, devices::Operation::VendorToken),
    },
    Route {
        method: Method::POST,
        path: "/v1/devices/token-update",
        handler: |m| on(m, devices::rotate),
    },
    Route {
        method: Method::GET,
        path: "/v1/devices",
        handler: |m| on(m, devices::query),
    },
    Route {
        method: Method::GET,
        path: "/v1/tasks",
        handler: |m| on(m, stats::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/tasks/{taskId}",
        handler: |m| on(m, stats::detail),
    },
    Route {
        method: Method::GET,
        path: "/v1/statistics",
        handler: |m| on(m, stats::statistics),
    },
    Route {
        method: Method::POST,
        path: "/v1/templates",
        handler: |m| on(m, templates::create),
    },
    Route {
        method: Method::GET,
        path: "/v1/templates",
        handler: |m| on(m, templates::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/templates/{templateName}",
        handler: |m| on(m, templates::read),
    },
    Route {
        method: Method::PUT,
        path: "/v1/templates/{templateName}",
        handler: |m| on(m, templates::update),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/templates/{templateName}",
        handler: |m| on(m, templates::delete),
    },
    Route {
        method: Method::POST,
        path: "/v1/tags",
        handler: |m| on(m, tags::create),
    },
    Route {
        method: Method::GET,
        path: "/v1/tags",
        handler: |m| on(m, tags::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/tags/{tagName}",
        handler: |m| on(m, tags::read),
    },
    Route {
        method: Method::PUT,
        path: "/v1/tags/{tagName}",
        handler: |m| on(m, tags::replace),
    },
    Route {
        method: Method::PATCH,
        path: "/v1/tags/{tagName}",
        handler: |m| on(m, tags::change_users),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/tags/{tagName}",
        handler: |m| on(m, tags::delete),
    },
];

/// A device registry change endpoint.
fn registry(filter: MethodFilter, operation: devices::Operation) -> MethodRouter<Arc<ApiState>> {
    on(
        filter,
        move |State(state): State<Arc<ApiState>>, request: Request| {
            devices::change(state, operation, request)
        },
    )
}

/// What a SIGHUP may change under the API's feet: the apps (credentials,
/// rate limits, switches) and the configuration handlers read (TTL bounds).
/// Handlers take a snapshot per request; a reload swaps both at once.
pub struct ApiLive {
    pub config: Arc<Config>,
    pub auth: Arc<AppRegistry>,
}

pub type SharedApiLive = Arc<parking_lot::RwLock<ApiLive>>;

struct ApiState {
    live: SharedApiLive,
    shards: Arc<[ShardHandle]>,
    health: Arc<StorageHealth>,
    next_message_id: AtomicU64,
    templates: Arc<TemplateStore>,
    tags: Arc<TagStore>,
    push_metrics: OpMetrics,
    template_push_metrics: OpMetrics,
    multiple_push_metrics: OpMetrics,
    status_metrics: OpMetrics,
    accepted: metrics::Counter,
}

impl ApiState {
    fn config(&self) -> Arc<Config> {
        self.live.read().config.clone()
    }

    fn auth(&self) -> Arc<AppRegistry> {
        self.live.read().auth.clone()
    }

    /// Service message ids and task ids, from one sequence.
    fn next_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The running HTTP servers.
pub struct HttpServers {
    live: SharedApiLive,
    templates: Arc<TemplateStore>,
    tags: Arc<TagStore>,
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

    /// The apps and settings a reload swaps.
    pub fn live(&self) -> SharedApiLive {
        self.live.clone()
    }

    /// The stores a reload adds new apps' templates and tags to.
    pub fn stores(&self) -> (Arc<TemplateStore>, Arc<TagStore>) {
        (self.templates.clone(), self.tags.clone())
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
    templates: Arc<TemplateStore>,
    tags: Arc<TagStore>,
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
    let live = Arc::new(parking_lot::RwLock::new(ApiLive {
        config: Arc::new(config.clone()),
        auth: Arc::new(registry),
    }));
    let stores = (templates.clone(), tags.clone());
    let state = Arc::new(ApiState {
        live: live.clone(),
        shards: shards.handles(),
        health: shards.storage_health(),
        // Unique across restarts: past every id in the log, and past every
        // id the last run could have issued unless it averaged 65,536 ids
        // per ms (ids of pushes that were never accepted are not logged).
        next_message_id: AtomicU64::new((unix_ms() << 16).max(shards.max_message_id() + 1)),
        templates,
        tags,
        push_metrics: OpMetrics::new("push_simple"),
        template_push_metrics: OpMetrics::new("push_template"),
        multiple_push_metrics: OpMetrics::new("push_multiple"),
        status_metrics: OpMetrics::new("message_status"),
        accepted: metrics::counter!("ringpush_messages_accepted_total"),
    });
    let api = ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, route.handler())
        })
        .with_state(state);
    let admin = crate::admin::router(ready, shards.storage_health(), prometheus);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = server::Limits::from_config(&config.http);
    let thread = std::thread::Builder::new().name("api".into()).spawn(move || {
        runtime.block_on(async move {
            let api = server::serve(api_listener, api, limits.clone(), "api", stop_rx.clone());
            let admin = server::serve(admin_listener, admin, limits, "admin", stop_rx);
            tokio::join!(api, admin);
        });
    })?;
    Ok(HttpServers {
        live,
        templates: stores.0,
        tags: stores.1,
        api_addr,
        admin_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Unsigned requests are for local demos: say so at every start, louder when
/// the API is reachable from other machines.
pub(crate) fn warn_about_unsigned_apps(registry: &AppRegistry, api_addr: SocketAddr) {
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

/// Describes the API's metrics; `crate::admin::describe_metrics` lists it.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    server::describe_metrics();
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
    describe_counter!(
        "ringpush_api_rate_limited_total",
        "API requests refused with 3901 (HTTP 429) because their app sent more than apiRatePerSec, by app"
    );
    describe_counter!(
        "ringpush_api_shard_queue_full_total",
        "API commands refused because the shard's queue (limits.shard_queue) was full or the shard was gone; the request got 9000 (HTTP 503), by shard"
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

/// A successful answer carrying `data` as `PushResult.Data`, counted under
/// `op`.
fn answer(op: &'static str, started: Instant, data: serde_json::Value) -> Response {
    record(op, "OK", started);
    envelope(
        200,
        "OK",
        "",
        json!({"Success": true, "ResultMsg": "", "Data": data}),
    )
}

/// `answer` or `error_response`, whichever `result` is.
fn respond(op: &'static str, started: Instant, result: Result<serde_json::Value, ApiError>) -> Response {
    match result {
        Ok(data) => answer(op, started, data),
        Err(e) => error_response(op, started, e),
    }
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
    let mut response = envelope(error.http_status(), &code, &message, result);
    if let Some(secs) = error.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if error.code == ResultCode::RequestTimeout {
        // The rest of the body may still come; the connection cannot carry
        // another request after it (RFC 9110 §15.5.9).
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Metric handles for the common outcome, registered once: a labelled
/// `counter!` lookup per request showed in profiles.
struct OpMetrics {
    op: &'static str,
    ok: metrics::Counter,
    duration: metrics::Histogram,
}

impl OpMetrics {
    fn new(op: &'static str) -> Self {
        Self {
            op,
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

async fn simple_push(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let metrics = &state.push_metrics;
    let started = Instant::now();
    let request = match admit(&state, request)
        .await
        .and_then(|(caller, bytes)| push::parse(&bytes, &state.config(), &caller))
    {
        Ok(r) => r,
        Err(e) => return error_response(metrics.op, started, e),
    };
    deliver(&state, metrics, started, request, 0).await
}

/// `POST /v1/push/template`: a simple push whose title, content and uri
/// come from a template.
async fn template_push(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let metrics = &state.template_push_metrics;
    let started = Instant::now();
    let request = match admit(&state, request)
        .await
        .and_then(|(caller, bytes)| {
            push::parse_templated(&bytes, &state.config(), &caller, push::PushKind::Template)
        })
        .and_then(|push| render(&state, push))
    {
        Ok(r) => r,
        Err(e) => return error_response(metrics.op, started, e),
    };
    deliver(&state, metrics, started, request, 0).await
}

/// `POST /v1/push/multiple`: one template, personalised per target, under
/// one task id.
async fn multiple_push(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let metrics = &state.multiple_push_metrics;
    let started = Instant::now();
    let request = match admit_up_to(&state, request, MAX_MULTIPLE_BODY_BYTES)
        .await
        .and_then(|(caller, bytes)| {
            push::parse_templated(&bytes, &state.config(), &caller, push::PushKind::Multiple)
        })
        .and_then(|push| render(&state, push))
    {
        Ok(r) => r,
        Err(e) => return error_response(metrics.op, started, e),
    };
    let task_id = state.next_id();
    deliver(&state, metrics, started, request, task_id).await
}

/// Looks up the push's template in its app's templates (3022 when there is
/// none of that name) and renders it.
fn render(state: &ApiState, push: push::TemplatedPush) -> Result<push::PushRequest, ApiError> {
    let template = state
        .templates
        .get(push.app_id(), &push.template_name)
        .ok_or_else(|| {
            ApiError::new(
                ResultCode::TemplateNotExist,
                format!("no template named {:?} in this app", push.template_name),
            )
        })?;
    push.render(&template)
}

/// Gives a tag push its tag's users as they are now (3102 when the app has
/// no tag of that name); other pushes pass through.
fn resolve_tag(state: &ApiState, mut request: push::PushRequest) -> Result<push::PushRequest, ApiError> {
    let Some(name) = request.tag_name() else {
        return Ok(request);
    };
    let tag = state.tags.get(&request.app_id, name).ok_or_else(|| {
        ApiError::new(
            ResultCode::TagNotExist,
            format!("no tag named {name:?} in this app"),
        )
    })?;
    request.resolve_tag(tag.users.clone());
    Ok(request)
}

/// Hands a validated push to the shards and answers per target. `task_id`
/// (0: none) goes into every message and, as a decimal string, into
/// `PushResult.Data`.
async fn deliver(
    state: &ApiState,
    metrics: &OpMetrics,
    started: Instant,
    request: push::PushRequest,
    task_id: u64,
) -> Response {
    let op = metrics.op;
    if let Some(refusal) = state.health.refusal() {
        return error_response(op, started, storage_error(refusal));
    }
    if !request.to_tokens() {
        return shared_push(state, op, started, request, task_id).await;
    }
    let messages = match request.messages(unix_ms(), task_id, || state.next_id()) {
        Ok(m) => m,
        Err(e) => return error_response(op, started, e),
    };
    let described: Vec<(Box<str>, Box<str>, u64)> = messages
        .iter()
        .map(|m| (m.token.clone(), m.msg_key.clone(), m.id))
        .collect();
    let outcomes = match route(&state.shards, messages).await {
        Ok(o) => o,
        Err(e) => return error_response(op, started, e),
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
        record(op, &code_text, started);
        let result = PushResult {
            success: false,
            result_msg: &message,
            data: None,
            targets: Some(targets),
        };
        return envelope(code.http_status(), &code_text, &message, result);
    }
    metrics.ok(started);
    let task = task_text(task_id);
    let result = PushResult {
        success: true,
        result_msg: "",
        data: Some(&task),
        targets: Some(targets),
    };
    envelope(200, "OK", "", result)
}

/// A task id as `PushResult.Data` shows it: empty for none.
fn task_text(task_id: u64) -> String {
    if task_id == 0 {
        String::new()
    } else {
        task_id.to_string()
    }
}

/// `POST /v1/push/broadcast`, `/v1/push/group` and `/v1/push/tag`, each
/// with a title and content or by template.
async fn fanout_push(state: Arc<ApiState>, kind: push::PushKind, request: Request) -> Response {
    let op = match kind {
        push::PushKind::Broadcast => "push_broadcast",
        push::PushKind::Tag => "push_tag",
        _ => "push_group",
    };
    let started = Instant::now();
    let request = match admit(&state, request)
        .await
        .and_then(|(caller, bytes)| push::parse_fanout(&bytes, &state.config(), &caller, kind))
        .and_then(|parsed| match parsed {
            push::Parsed::Ready(request) => Ok(request),
            push::Parsed::Templated(push) => render(&state, push),
        })
        .and_then(|request| resolve_tag(&state, request))
    {
        Ok(r) => r,
        Err(e) => return error_response(op, started, e),
    };
    if let Some(refusal) = state.health.refusal() {
        return error_response(op, started, storage_error(refusal));
    }
    let task_id = state.next_id();
    shared_push(&state, op, started, request, task_id).await
}

/// A push stored once and delivered by every shard to its own devices: to
/// users, a group or a platform. Answers per target for users, and the task
/// id with how many devices are in the audience now for the others.
/// `task_id` is 0 for a simple or template push to users.
async fn shared_push(
    state: &ApiState,
    op: &'static str,
    started: Instant,
    request: push::PushRequest,
    task_id: u64,
) -> Response {
    let messages = match request.shared_messages(unix_ms(), task_id, || state.next_id()) {
        Ok(m) => m,
        Err(e) => return error_response(op, started, e),
    };
    let outcomes = match publish(state, &messages).await {
        Ok(o) => o,
        Err(e) => return error_response(op, started, e),
    };
    let stored = outcomes.iter().filter(|o| !o.duplicate).count();
    state.accepted.increment(stored as u64);
    record(op, "OK", started);
    if request.audience == push::AudienceKind::Users {
        let targets: Vec<TargetResult> = request
            .targets
            .iter()
            .zip(&messages)
            .zip(&outcomes)
            .map(|(((user, msg_key), message), outcome)| TargetResult {
                target: user,
                msg_key,
                message_id: message.id.to_string(),
                result: match outcome {
                    o if o.duplicate => "duplicate",
                    o if o.online > 0 => "delivering",
                    o if o.matched > 0 => "queued",
                    _ => "NoBindInfo",
                },
            })
            .collect();
        let task = task_text(task_id);
        let result = PushResult {
            success: true,
            result_msg: "",
            data: Some(&task),
            targets: Some(targets),
        };
        return envelope(200, "OK", "", result);
    }
    let (message, outcome) = (&messages[0], outcomes[0]);
    // How many userIds the tag held (a tag push only).
    let tag_users = match &message.audience {
        crate::message::Audience::Tag { users, .. } => Some(users.len()),
        _ => None,
    };
    let task = task_id.to_string();
    let mut result = json!({
        "Success": true, "ResultMsg": "", "Data": task,
        "MessageId": message.id.to_string(),
        "Duplicate": outcome.duplicate,
        "Devices": outcome.matched, "Online": outcome.online,
    });
    if let Some(users) = tag_users {
        result["Users"] = users.into();
    }
    envelope(200, "OK", "", result)
}

/// Hands shared messages to every shard; sums what the shards did with
/// each (every shard stores each message and delivers to its own devices).
async fn publish(state: &ApiState, messages: &[Arc<SharedMessage>]) -> Result<Vec<SharedOutcome>, ApiError> {
    let answers = ask_all(state, |reply| Command::Publish {
        messages: messages.to_vec(),
        reply,
    })
    .await?;
    let mut total = vec![SharedOutcome::default(); messages.len()];
    for answer in answers {
        for (sum, outcome) in total.iter_mut().zip(answer.map_err(storage_error)?) {
            sum.duplicate |= outcome.duplicate;
            sum.refused |= outcome.refused;
            sum.matched += outcome.matched;
            sum.online += outcome.online;
        }
    }
    if total.iter().any(|o| o.refused) {
        return Err(ApiError::new(
            ResultCode::SystemError,
            "a shard holds delivery.max_shared_messages_per_shard broadcast, group and user messages; retry with the same msgKey once some expire",
        ));
    }
    Ok(total)
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

/// The start of every API handler: reads the body (at most
/// `MAX_BODY_BYTES`) and authenticates the request (`auth::authenticate`).
/// The handler must then pass the `appId` it acts for through
/// `AuthenticatedApp::check_app` (`fields::app`, `resolve_app`) or take
/// `default_app` before it reads or changes that app's data.
async fn admit(state: &ApiState, request: Request) -> Result<(AuthenticatedApp, Bytes), ApiError> {
    admit_up_to(state, request, MAX_BODY_BYTES).await
}

/// `admit` for a body of at most `limit` bytes (else 3050 with HTTP 413).
async fn admit_up_to(
    state: &ApiState,
    request: Request,
    limit: usize,
) -> Result<(AuthenticatedApp, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    // From the configuration in force: a reload may change it.
    let body_timeout = Duration::from_millis(state.config().http.body_timeout_ms);
    let read = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, limit));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            server::limit_hit("api", "body_size");
            return Err(ApiError::new(
                ResultCode::MsgPayloadTooLong,
                format!("the request body is over {limit} bytes"),
            )
            .with_http_status(413));
        }
        Err(_) => {
            server::limit_hit("api", "body_timeout");
            return Err(ApiError::new(
                ResultCode::RequestTimeout,
                format!(
                    "the request body did not arrive within http.body_timeout_ms = {} ms",
                    body_timeout.as_millis()
                ),
            ));
        }
    };
    let now_ms = unix_ms();
    let caller = auth::authenticate(&state.auth(), &parts, &bytes, now_ms)?;
    if let Some(app) = caller.signed_by() {
        app.take_request(now_ms)?;
    }
    Ok((caller, bytes))
}

/// Decodes a UTF-8 JSON body into `T` (3031 when not UTF-8, 3028 when not
/// the expected JSON).
fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(ResultCode::RequestShouldBeUtf8, "the request body must be UTF-8"))?;
    serde_json::from_str(text).map_err(|e| ApiError::new(ResultCode::InvalidParam, format!("the body: {e}")))
}

/// The app named by `appId` and `workspaceId` if the caller may act for it
/// (`fields::app`: 3003, 8014, 3007).
fn resolve_app(
    caller: &AuthenticatedApp,
    app_id: Option<&str>,
    workspace_id: Option<&str>,
) -> Result<Arc<str>, ApiError> {
    fields::app(caller, app_id.unwrap_or(""), workspace_id.unwrap_or(""))
}

/// Sends one command to one shard and waits for its answer.
async fn ask<T>(
    state: &ApiState,
    shard: usize,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    if state.shards[shard].send(command(reply)).is_err() {
        metrics::counter!("ringpush_api_shard_queue_full_total", "shard" => shard.to_string()).increment(1);
        return Err(overloaded());
    }
    tokio::time::timeout(SHARD_TIMEOUT, answer)
        .await
        .map_err(|_| ApiError::new(ResultCode::SystemError, "a shard did not answer in time"))?
        .map_err(|_| ApiError::new(ResultCode::SystemError, "a shard stopped"))
}

/// Sends a command to every shard and gathers the answers in shard order.
async fn ask_all<T>(
    state: &ApiState,
    mut command: impl FnMut(Reply<T>) -> Command,
) -> Result<Vec<T>, ApiError> {
    let mut waiting = Vec::with_capacity(state.shards.len());
    for (shard, handle) in state.shards.iter().enumerate() {
        let (reply, answer) = oneshot::channel();
        if handle.send(command(reply)).is_err() {
            metrics::counter!("ringpush_api_shard_queue_full_total", "shard" => shard.to_string())
                .increment(1);
            return Err(overloaded());
        }
        waiting.push(answer);
    }
    let mut answers = Vec::with_capacity(waiting.len());
    for answer in waiting {
        answers.push(
            tokio::time::timeout(SHARD_TIMEOUT, answer)
                .await
                .map_err(|_| ApiError::new(ResultCode::SystemError, "a shard did not answer in time"))?
                .map_err(|_| ApiError::new(ResultCode::SystemError, "a shard stopped"))?,
        );
    }
    Ok(answers)
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
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "message_status";
    let started = Instant::now();
    let caller = match admit(&state, request).await {
        Ok((caller, _)) => caller,
        Err(e) => return error_response(OP, started, e),
    };
    // Axum's own rejection (a msgKey that is not UTF-8) would be plain text,
    // outside the envelope.
    let msg_key = match path {
        Ok(Path(msg_key)) => msg_key,
        Err(e) => {
            let error = ApiError::new(ResultCode::InvalidParam, format!("the msgKey in the path: {e}"));
            return error_response(OP, started, error);
        }
    };
    let user = query.get("userId").filter(|u| !u.is_empty());
    let Some(token) = query.get("target").filter(|t| !t.is_empty()).or(user) else {
        return error_response(
            OP,
            started,
            ApiError::new(
                ResultCode::TokenOrUserIdNull,
                "target (a token) or userId is required",
            ),
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
    let data = match user {
        Some(user) => user_status(&state, app_id, &msg_key, user).await,
        None => token_status(&state, app_id, &msg_key, token).await,
    };
    let data = match data {
        Ok(data) => data,
        Err(e) => return error_response(OP, started, e),
    };
    state.status_metrics.ok(started);
    envelope(
        200,
        "OK",
        "",
        json!({"Success": true, "ResultMsg": "", "Data": data}),
    )
}

/// The status of a message for one device token.
async fn token_status(
    state: &ApiState,
    app_id: Arc<str>,
    msg_key: &str,
    token: &str,
) -> Result<serde_json::Value, ApiError> {
    let shard = owner_shard(token.as_bytes(), state.shards.len());
    let report: Option<StatusReport> = ask(state, shard, |reply| Command::QueryStatus {
        app_id,
        msg_key: msg_key.into(),
        token: token.into(),
        reply,
    })
    .await?;
    Ok(match report {
        Some(r) => json!({
            "msgKey": msg_key, "target": token,
            "status": r.status.code(), "statusName": r.status.name(),
            "messageId": r.message_id.to_string(),
            "acceptedAt": r.accepted_at_ms, "expiresAt": r.expires_at_ms, "ackedAt": r.acked_at_ms,
            "recalled": r.recall != crate::message::RecallMark::None, "recall": r.recall.name(),
        }),
        None => json!({
            "msgKey": msg_key, "target": token,
            "status": STATUS_UNKNOWN, "statusName": "Unknown",
        }),
    })
}

/// The status of a message pushed to a user, over every shard's devices
/// bound to the user: Acked once any acknowledged it, else Expired after the
/// TTL, else NoBindInfo while no device is bound, else waiting.
async fn user_status(
    state: &ApiState,
    app_id: Arc<str>,
    msg_key: &str,
    user: &str,
) -> Result<serde_json::Value, ApiError> {
    let reports = ask_all(state, |reply| Command::QueryUserStatus {
        app_id: app_id.clone(),
        msg_key: msg_key.into(),
        user_id: user.into(),
        reply,
    })
    .await?;
    let reports: Vec<_> = reports.into_iter().flatten().collect();
    let Some(first) = reports.first() else {
        return Ok(json!({
            "msgKey": msg_key, "userId": user,
            "status": STATUS_UNKNOWN, "statusName": "Unknown",
        }));
    };
    let bound: u32 = reports.iter().map(|r| r.bound).sum();
    let acked: u32 = reports.iter().map(|r| r.acked).sum();
    let acked_at = reports.iter().filter_map(|r| r.first_acked_at_ms).min();
    let recalled = reports.iter().any(|r| r.recalled);
    let status = if acked > 0 {
        crate::message::Status::Acked
    } else if recalled {
        crate::message::Status::Recalled
    } else if first.expires_at_ms <= unix_ms() {
        crate::message::Status::Expired
    } else if bound == 0 {
        crate::message::Status::NoBindInfo
    } else {
        crate::message::Status::Pending
    };
    Ok(json!({
        "msgKey": msg_key, "userId": user,
        "status": status.code(), "statusName": status.name(),
        "messageId": first.message_id.to_string(),
        "acceptedAt": first.accepted_at_ms, "expiresAt": first.expires_at_ms, "ackedAt": acked_at,
        "devices": bound, "devicesAcked": acked, "recalled": recalled,
    }))
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
