//! API request authentication (push-semantics.md §5; the wire format is in
//! docs/api.md, "Authentication"): each app's credentials, verifying a
//! request's timestamp, signature and nonce, and deciding which app a
//! request may act for. `verify` is a pure function of the request's method,
//! path, headers and body, the clock and the registry (which holds each
//! app's nonce cache), so all of it is tested without sockets; reading the
//! body and answering is `api::mod`'s. The client side (`HmacSigner`,
//! `string_to_sign`) is here too, so the bench client, the tests and the
//! server share one definition of what is signed.

mod nonces;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};
use parking_lot::Mutex;
use ring::{digest, hmac, signature};

use super::rate_limit::TokenBucket;
use super::result_code::{ApiError, ResultCode};
use crate::config::App;
pub use nonces::{NonceCache, NonceRefusal};

pub const HEADER_APP_ID: &str = "X-Ringpush-AppId";
/// Unix time in milliseconds, decimal.
pub const HEADER_TIMESTAMP: &str = "X-Ringpush-Timestamp";
pub const HEADER_NONCE: &str = "X-Ringpush-Nonce";
pub const HEADER_SIGNATURE_METHOD: &str = "X-Ringpush-Signature-Method";
/// base64url, with or without `=` padding.
pub const HEADER_SIGNATURE: &str = "X-Ringpush-Signature";

/// The most a request's timestamp may differ from the server's clock,
/// either way (the 300 s).
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;
pub const MIN_NONCE_CHARS: usize = 8;
pub const MAX_NONCE_CHARS: usize = 64;
/// Unix milliseconds stay 13 digits until the year 2286.
const MAX_TIMESTAMP_DIGITS: usize = 15;
/// base64url of the largest signature we verify (8192-bit RSA), padded.
const MAX_SIGNATURE_CHARS: usize = 1368;
pub const MIN_RSA_BITS: usize = 2048;
/// ring's `RSA_PKCS1_2048_8192_SHA256` verifies up to this size.
pub const MAX_RSA_BITS: usize = 8192;

/// base64url; decoding accepts the `=` padding or its absence.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureMethod {
    /// HMAC-SHA256 keyed with the app's `apiSecret`.
    HmacSha256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, verified with the app's `publicKey`.
    RsaSha256,
}

impl SignatureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "HMAC-SHA256",
            Self::RsaSha256 => "RSA-SHA256",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::HmacSha256, Self::RsaSha256]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(text))
    }
}

/// Why a request was refused: its result code, and the label of
/// `ringpush_api_auth_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A signed request without one of the five headers.
    MissingHeader,
    /// A header present twice, or not in its format.
    MalformedHeader,
    /// `X-Ringpush-AppId` (or an unsigned request's appId) names no app.
    UnknownApp,
    /// The request names an app other than the one that signed it.
    WrongApp,
    /// The app's `apiEnabled` is false.
    ApiDisabled,
    ClockSkew,
    /// Signed with a method the app has no credential for.
    NoCredential,
    BadSignature,
    ReplayedNonce,
    /// `limits.api_nonces_per_app` unexpired nonces are held for the app.
    NonceCacheFull,
    /// No signature, for an app that does not allow unsigned requests.
    Unsigned,
}

impl Failure {
    pub const ALL: [Failure; 11] = [
        Failure::MissingHeader,
        Failure::MalformedHeader,
        Failure::UnknownApp,
        Failure::WrongApp,
        Failure::ApiDisabled,
        Failure::ClockSkew,
        Failure::NoCredential,
        Failure::BadSignature,
        Failure::ReplayedNonce,
        Failure::NonceCacheFull,
        Failure::Unsigned,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::MalformedHeader => "malformed_header",
            Self::UnknownApp => "unknown_app",
            Self::WrongApp => "wrong_app",
            Self::ApiDisabled => "api_disabled",
            Self::ClockSkew => "clock_skew",
            Self::NoCredential => "no_credential",
            Self::BadSignature => "bad_signature",
            Self::ReplayedNonce => "replayed_nonce",
            Self::NonceCacheFull => "nonce_cache_full",
            Self::Unsigned => "unsigned",
        }
    }

    pub fn code(self) -> ResultCode {
        match self {
            Self::UnknownApp | Self::WrongApp => ResultCode::AccountNoPermission,
            Self::ApiDisabled => ResultCode::RestApiSwitchNotOpen,
            // The signature was good: this is our capacity, so 503 and retry.
            Self::NonceCacheFull => ResultCode::SystemError,
            _ => ResultCode::SignatureMismatch,
        }
    }
}

/// A refused request: which check failed and a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError {
    pub failure: Failure,
    pub reason: String,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(e.failure.code(), e.reason)
    }
}

/// An app as the API sees it: its identity, switches and verifying keys.
pub struct RegisteredApp {
    /// Interned: messages and commands share this allocation.
    pub id: Arc<str>,
    pub workspace_id: Box<str>,
    pub receipt_url: Option<Box<str>>,
    api_enabled: bool,
    allow_unsigned: bool,
    hmac: Option<hmac::Key>,
    rsa: Option<signature::UnparsedPublicKey<Vec<u8>>>,
    /// Shared with the registry a reload builds, so a request seen before
    /// the reload cannot be replayed after it.
    nonces: Arc<Mutex<NonceCache>>,
    /// `apiRatePerSec`/`apiBurst`; `None`: unlimited. Kept across a
    /// reload that leaves both unchanged.
    rate: Option<Arc<TokenBucket>>,
    rate_limited: metrics::Counter,
}

impl std::fmt::Debug for RegisteredApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredApp")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("api_enabled", &self.api_enabled)
            .field("allow_unsigned", &self.allow_unsigned)
            .field("has_api_secret", &self.hmac.is_some())
            .field("has_public_key", &self.rsa.is_some())
            .finish_non_exhaustive()
    }
}

impl RegisteredApp {
    pub fn allows_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// Charges one request to the app's rate limit: 3901 (HTTP 429, with
    /// the seconds until the next request is allowed) when it is spent.
    pub fn take_request(&self, now_ms: u64) -> Result<(), ApiError> {
        let Some(bucket) = &self.rate else {
            return Ok(());
        };
        bucket.try_take(now_ms).map_err(|wait_ms| {
            self.rate_limited.increment(1);
            ApiError::new(
                ResultCode::ApiRateLimited,
                format!(
                    "app {:?} sent more than its apiRatePerSec = {} requests per second; retry after {} ms",
                    self.id,
                    bucket.rate_per_sec(),
                    wait_ms
                ),
            )
            // Retry-After is whole seconds; rounding down would invite an
            // early retry that is refused again.
            .with_retry_after(wait_ms.div_ceil(1000).max(1))
        })
    }
}

/// Every configured app by id, with the failure counters.
pub struct AppRegistry {
    apps: HashMap<Box<str>, Arc<RegisteredApp>>,
    nonces_per_app: usize,
    /// Timestamps before this are refused: nonces live in memory only, so
    /// a request seen before a restart could otherwise be replayed after it.
    not_before_ms: u64,
    failures: [metrics::Counter; Failure::ALL.len()],
}

impl std::fmt::Debug for AppRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.apps.values()).finish()
    }
}

impl AppRegistry {
    /// Builds the registry from validated config (`Config::validate` has
    /// already checked the keys; a bad one is still an error here, not a
    /// panic).
    pub fn new(apps: &[App], nonces_per_app: usize) -> Result<Self, KeyError> {
        Self::build(apps, nonces_per_app, None)
    }

    /// The registry of a reloaded configuration: apps that stay keep their
    /// nonce memory (and their rate bucket when its settings are the
    /// same), and the start-time cut-off for timestamps stays.
    pub fn reconfigure(&self, apps: &[App]) -> Result<Self, KeyError> {
        let mut next = Self::build(apps, self.nonces_per_app, Some(self))?;
        next.not_before_ms = self.not_before_ms;
        Ok(next)
    }

    fn build(apps: &[App], nonces_per_app: usize, previous: Option<&Self>) -> Result<Self, KeyError> {
        let mut registered = HashMap::with_capacity(apps.len());
        for app in apps {
            let rsa = match &app.public_key {
                Some(pem) => Some(signature::UnparsedPublicKey::new(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    rsa_public_key_from_pem(pem)?,
                )),
                None => None,
            };
            let before = previous.and_then(|p| p.apps.get(app.app_id.as_str()));
            let nonces = match before {
                Some(b) => b.nonces.clone(),
                None => Arc::new(Mutex::new(NonceCache::new(nonces_per_app))),
            };
            let rate = match before.map(|b| &b.rate) {
                Some(Some(bucket))
                    if bucket.rate_per_sec() == app.api_rate_per_sec
                        && bucket.burst() == app.api_burst.max(1) =>
                {
                    Some(bucket.clone())
                }
                Some(None) if app.api_rate_per_sec == 0 => None,
                _ => TokenBucket::new(app.api_rate_per_sec, app.api_burst).map(Arc::new),
            };
            let entry = RegisteredApp {
                id: before.map_or_else(|| Arc::from(app.app_id.as_str()), |b| b.id.clone()),
                workspace_id: app.workspace_id.as_str().into(),
                receipt_url: app.receipt_url.as_deref().map(Into::into),
                api_enabled: app.api_enabled,
                allow_unsigned: app.allow_unsigned,
                hmac: app
                    .api_secret
                    .as_ref()
                    .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose())),
                rsa,
                nonces,
                rate,
                rate_limited: metrics::counter!("ringpush_api_rate_limited_total", "app" => app.app_id.clone()),
            };
            registered.insert(app.app_id.as_str().into(), Arc::new(entry));
        }
        Ok(Self {
            apps: registered,
            nonces_per_app,
            not_before_ms: 0,
            failures: Failure::ALL
                .map(|f| metrics::counter!("ringpush_api_auth_failures_total", "reason" => f.label())),
        })
    }

    /// Refuses requests stamped before `started_ms` (the daemon's start):
    /// the nonces of earlier requests were not kept across the restart. A
    /// sender whose clock lags by L is refused only for the first L after a
    /// start.
    pub fn refuse_timestamps_before(mut self, started_ms: u64) -> Self {
        self.not_before_ms = started_ms;
        self
    }

    pub fn get(&self, app_id: &str) -> Option<&Arc<RegisteredApp>> {
        self.apps.get(app_id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &Arc<RegisteredApp>> {
        self.apps.values()
    }

    /// Counts the failure and describes it.
    fn refuse(&self, failure: Failure, reason: impl Into<String>) -> AuthError {
        self.failures[failure as usize].increment(1);
        AuthError {
            failure,
            reason: reason.into(),
        }
    }
}

/// Who sent a request: an app that proved it holds its credential, or an
/// unsigned caller that may act only for apps with `allowUnsigned = true`.
/// Every handler must pass the `appId` it acts for through `check_app` (or
/// use `default_app`) before reading or changing that app's data.
#[derive(Clone, Debug)]
pub struct AuthenticatedApp {
    registry: Arc<AppRegistry>,
    signed_by: Option<Arc<RegisteredApp>>,
}

impl AuthenticatedApp {
    /// An unsigned caller (what `verify` returns for a request without
    /// authentication headers).
    pub fn unsigned(registry: Arc<AppRegistry>) -> Self {
        Self {
            registry,
            signed_by: None,
        }
    }

    /// The app that signed the request; `None` when it was unsigned.
    pub fn signed_by(&self) -> Option<&RegisteredApp> {
        self.signed_by.as_deref()
    }

    /// The app named in the request (body `appId` or query `appId`) if the
    /// caller may act for it: 8014 when it is not the signing app or does
    /// not exist, -1 when an unsigned caller names an app that requires
    /// signatures, 3032 when an unsigned caller names an app whose API is
    /// off.
    pub fn check_app(&self, app_id: &str) -> Result<&RegisteredApp, ApiError> {
        if let Some(app) = &self.signed_by {
            if *app.id == *app_id {
                return Ok(app);
            }
            // The same answer whether or not `app_id` exists: one app
            // learns nothing about another.
            return Err(self
                .registry
                .refuse(
                    Failure::WrongApp,
                    format!("the request is signed by app {:?}, not {app_id:?}", app.id),
                )
                .into());
        }
        let app = self.registry.get(app_id).ok_or_else(|| {
            self.registry
                .refuse(Failure::UnknownApp, format!("no app {app_id:?} is configured"))
        })?;
        self.check_unsigned(app)
    }

    /// The app a request acts for when it names none: the signing app, or
    /// for an unsigned request the only configured app (3003 when there are
    /// several).
    pub fn default_app(&self) -> Result<&RegisteredApp, ApiError> {
        if let Some(app) = &self.signed_by {
            return Ok(app);
        }
        let mut apps = self.registry.apps.values();
        match (apps.next(), apps.next()) {
            (Some(only), None) => self.check_unsigned(only),
            _ => Err(ApiError::new(
                ResultCode::NeedAppIdWorkspaceId,
                "appId is required",
            )),
        }
    }

    fn check_unsigned<'a>(&self, app: &'a RegisteredApp) -> Result<&'a RegisteredApp, ApiError> {
        if !app.allow_unsigned {
            return Err(self
                .registry
                .refuse(
                    Failure::Unsigned,
                    format!(
                        "app {:?} requires signed requests: {HEADER_SIGNATURE} and the other \
                         X-Ringpush-* headers are missing (docs/api.md, Authentication)",
                        app.id
                    ),
                )
                .into());
        }
        if !app.api_enabled {
            return Err(self
                .registry
                .refuse(Failure::ApiDisabled, api_disabled(app))
                .into());
        }
        // A signed request was charged in `api::admit`; an unsigned one
        // names its app only here.
        app.take_request(crate::message::unix_ms())?;
        Ok(app)
    }
}

fn api_disabled(app: &RegisteredApp) -> String {
    format!("the API of app {:?} is switched off (apiEnabled = false)", app.id)
}

/// Authenticates one request. A request with none of the five headers is
/// unsigned (each app it names is checked by `check_app`); one with any of
/// them must carry all five and verify: the app exists (else 8014), the
/// timestamp is within 300 s of `now_ms`, the signature over
/// `string_to_sign` verifies with the app's credential for the method, the
/// app's API is on (else 3032), and the nonce is new for the app. Only a
/// request that verified records its nonce, so forged requests cannot use
/// up an app's nonces.
pub fn verify(
    registry: &Arc<AppRegistry>,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: u64,
) -> Result<AuthenticatedApp, AuthError> {
    let header = |name: &'static str| -> Result<Option<&str>, AuthError> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(registry.refuse(Failure::MalformedHeader, format!("{name} appears more than once")));
        }
        first
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| registry.refuse(Failure::MalformedHeader, format!("{name} is not ASCII text")))
    };
    let [app_id, timestamp, nonce, method_name, signature] = [
        header(HEADER_APP_ID)?,
        header(HEADER_TIMESTAMP)?,
        header(HEADER_NONCE)?,
        header(HEADER_SIGNATURE_METHOD)?,
        header(HEADER_SIGNATURE)?,
    ];
    let Some(app_id) = app_id else {
        if [timestamp, nonce, method_name, signature]
            .iter()
            .any(Option::is_some)
        {
            return Err(registry.refuse(
                Failure::MissingHeader,
                format!("{HEADER_APP_ID} is required on a signed request"),
            ));
        }
        return Ok(AuthenticatedApp::unsigned(registry.clone()));
    };
    let app = registry
        .get(app_id)
        .ok_or_else(|| registry.refuse(Failure::UnknownApp, format!("no app {app_id:?} is configured")))?;
    let timestamp = required(registry, timestamp, HEADER_TIMESTAMP)?;
    let nonce = required(registry, nonce, HEADER_NONCE)?;
    let method_name = required(registry, method_name, HEADER_SIGNATURE_METHOD)?;
    let signature = required(registry, signature, HEADER_SIGNATURE)?;

    let timestamp_ms = parse_timestamp(timestamp).ok_or_else(|| {
        registry.refuse(
            Failure::MalformedHeader,
            format!("{HEADER_TIMESTAMP} must be unix time in milliseconds (decimal digits)"),
        )
    })?;
    let skew_ms = now_ms.abs_diff(timestamp_ms);
    if skew_ms > MAX_CLOCK_SKEW_MS {
        let side = if timestamp_ms > now_ms {
            "ahead of"
        } else {
            "behind"
        };
        return Err(registry.refuse(
            Failure::ClockSkew,
            format!(
                "{HEADER_TIMESTAMP} is {:.1} s {side} the server's clock; at most {} s either way \
                 (it is in milliseconds; is the sender's clock synchronised?)",
                skew_ms as f64 / 1000.0,
                MAX_CLOCK_SKEW_MS / 1000
            ),
        ));
    }
    if timestamp_ms < registry.not_before_ms {
        return Err(registry.refuse(
            Failure::ClockSkew,
            format!(
                "{HEADER_TIMESTAMP} is before this server started: nonces are not kept across a \
                 restart, so such requests could be replays; sign again with the current time"
            ),
        ));
    }
    if !valid_nonce(nonce) {
        return Err(registry.refuse(
            Failure::MalformedHeader,
            format!(
                "{HEADER_NONCE} must be {MIN_NONCE_CHARS}..={MAX_NONCE_CHARS} characters of A-Z a-z 0-9 - _"
            ),
        ));
    }
    let method_kind = SignatureMethod::parse(method_name).ok_or_else(|| {
        registry.refuse(
            Failure::MalformedHeader,
            format!("{HEADER_SIGNATURE_METHOD} must be HMAC-SHA256 or RSA-SHA256"),
        )
    })?;
    let signature = decode_signature(signature).ok_or_else(|| {
        registry.refuse(
            Failure::MalformedHeader,
            format!("{HEADER_SIGNATURE} is not base64url"),
        )
    })?;

    let to_sign = string_to_sign(method, path_and_query, app_id, timestamp, nonce, body);
    let verified = match method_kind {
        SignatureMethod::HmacSha256 => {
            let key = app.hmac.as_ref().ok_or_else(|| {
                registry.refuse(
                    Failure::NoCredential,
                    format!("app {app_id:?} has no apiSecret; sign with RSA-SHA256"),
                )
            })?;
            // Constant time: ring compares the tags without early exit.
            hmac::verify(key, to_sign.as_bytes(), &signature).is_ok()
        }
        SignatureMethod::RsaSha256 => {
            let key = app.rsa.as_ref().ok_or_else(|| {
                registry.refuse(
                    Failure::NoCredential,
                    format!("app {app_id:?} has no publicKey; sign with HMAC-SHA256"),
                )
            })?;
            key.verify(to_sign.as_bytes(), &signature).is_ok()
        }
    };
    if !verified {
        return Err(registry.refuse(
            Failure::BadSignature,
            format!(
                "{HEADER_SIGNATURE} does not match the request (signed string: method, path and \
                 query, app id, timestamp, nonce and the body's SHA-256, see docs/api.md)"
            ),
        ));
    }
    if !app.api_enabled {
        return Err(registry.refuse(Failure::ApiDisabled, api_disabled(app)));
    }
    app.nonces
        .lock()
        .insert(nonce.as_bytes(), timestamp_ms, now_ms)
        .map_err(|refusal| match refusal {
            NonceRefusal::Replayed => registry.refuse(
                Failure::ReplayedNonce,
                format!(
                    "{HEADER_NONCE} was already used by a recent request of this app (a replay?); \
                     use a new random nonce for every request"
                ),
            ),
            NonceRefusal::Full => registry.refuse(
                Failure::NonceCacheFull,
                format!(
                    "app {app_id:?} sent more signed requests in the replay window than \
                     limits.api_nonces_per_app allows; retry shortly"
                ),
            ),
        })?;
    Ok(AuthenticatedApp {
        registry: registry.clone(),
        signed_by: Some(app.clone()),
    })
}

/// `verify` for an axum request: what `api::admit`, the start of every
/// handler, calls. The path is the request line's, not a router-rewritten
/// one.
pub fn authenticate(
    registry: &Arc<AppRegistry>,
    parts: &Parts,
    body: &[u8],
    now_ms: u64,
) -> Result<AuthenticatedApp, ApiError> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    verify(
        registry,
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        body,
        now_ms,
    )
    .map_err(ApiError::from)
}

/// What a signature covers, lines joined by `\n` (no trailing newline):
/// the HTTP method, the path and query exactly as on the request line, the
/// app id, the timestamp and nonce headers as sent, and the lowercase hex
/// SHA-256 of the body bytes (of the empty string for a GET). The app id is
/// in it so that two apps given the same secret by mistake still cannot
/// replay each other's requests.
pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    app_id: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let body_hash = digest::digest(&digest::SHA256, body);
    let mut text = String::with_capacity(
        method.len() + path_and_query.len() + app_id.len() + timestamp.len() + nonce.len() + 69,
    );
    for part in [method, path_and_query, app_id, timestamp, nonce] {
        text.push_str(part);
        text.push('\n');
    }
    for b in body_hash.as_ref() {
        text.push(HEX[usize::from(b >> 4)] as char);
        text.push(HEX[usize::from(b & 15)] as char);
    }
    text
}

fn required<'h>(registry: &AppRegistry, value: Option<&'h str>, name: &str) -> Result<&'h str, AuthError> {
    value.ok_or_else(|| {
        registry.refuse(
            Failure::MissingHeader,
            format!("{name} is required on a signed request"),
        )
    })
}

fn parse_timestamp(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_TIMESTAMP_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn valid_nonce(nonce: &str) -> bool {
    (MIN_NONCE_CHARS..=MAX_NONCE_CHARS).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_signature(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() > MAX_SIGNATURE_CHARS {
        return None;
    }
    BASE64URL.decode(text).ok()
}

/// base64url without padding, as `X-Ringpush-Signature` carries it.
pub fn encode_signature(signature: &[u8]) -> String {
    BASE64URL.encode(signature)
}

/// Signs requests for one app with its `apiSecret`. The key is prepared
/// once; signing a request costs a SHA-256 of the body and an HMAC.
pub struct HmacSigner {
    app_id: String,
    key: hmac::Key,
}

impl std::fmt::Debug for HmacSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacSigner")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl HmacSigner {
    pub fn new(app_id: impl Into<String>, secret: &[u8]) -> Self {
        Self {
            app_id: app_id.into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The authentication headers of one request. `nonce` must be new for
    /// every request (8–64 of A-Z a-z 0-9 - _).
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp_ms: u64,
        nonce: &str,
    ) -> SignedHeaders {
        let timestamp = timestamp_ms.to_string();
        let to_sign = string_to_sign(method, path_and_query, &self.app_id, &timestamp, nonce, body);
        let tag = hmac::sign(&self.key, to_sign.as_bytes());
        SignedHeaders {
            app_id: self.app_id.clone(),
            timestamp,
            nonce: nonce.to_string(),
            method: SignatureMethod::HmacSha256,
            signature: encode_signature(tag.as_ref()),
        }
    }
}

/// The five header values of a signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub app_id: String,
    pub timestamp: String,
    pub nonce: String,
    pub method: SignatureMethod,
    pub signature: String,
}

impl SignedHeaders {
    /// (name, value) pairs, in the documented order.
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            (HEADER_APP_ID, &self.app_id),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_SIGNATURE_METHOD, self.method.as_str()),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM block: {0}")]
    Pem(String),
    #[error(
        "the PEM block is {0:?}, expected \"PUBLIC KEY\" (SubjectPublicKeyInfo; \
         `openssl pkey -pubin -in KEY.pem` or `openssl rsa -RSAPublicKey_in -pubout` converts)"
    )]
    Label(String),
    #[error("not a DER SubjectPublicKeyInfo: {0}")]
    Der(String),
    #[error("not an RSA key (algorithm {0})")]
    NotRsa(String),
    #[error("an RSA key of {0} bits; at least {MIN_RSA_BITS} are required")]
    TooSmall(usize),
    #[error("an RSA key of {0} bits; at most {MAX_RSA_BITS} are supported")]
    TooLarge(usize),
    #[error("the RSA public exponent must be odd and between 3 and 2^33 - 1")]
    BadExponent,
}

/// `rsaEncryption` (RFC 8017, appendix C).
const RSA_ENCRYPTION: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The PKCS#1 RSAPublicKey DER inside a PEM "PUBLIC KEY"
/// (SubjectPublicKeyInfo), which is the form ring verifies with. Lines may
/// be indented (a TOML multi-line string). Refused unless it is RSA with a
/// modulus of 2048..=8192 bits and an exponent ring accepts, so a key that
/// could never verify is a config error, not a run of -1 answers.
pub fn rsa_public_key_from_pem(pem: &str) -> Result<Vec<u8>, KeyError> {
    let mut text = String::with_capacity(pem.len());
    for line in pem.lines().map(str::trim).filter(|l| !l.is_empty()) {
        text.push_str(line);
        text.push('\n');
    }
    let (label, der) =
        spki::der::pem::decode_vec(text.as_bytes()).map_err(|e| KeyError::Pem(e.to_string()))?;
    if label != "PUBLIC KEY" {
        return Err(KeyError::Label(label.to_string()));
    }
    let info =
        spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()).map_err(|e| KeyError::Der(e.to_string()))?;
    if info.algorithm.oid != RSA_ENCRYPTION {
        return Err(KeyError::NotRsa(info.algorithm.oid.to_string()));
    }
    // RFC 3279 §2.3.1: the parameters are NULL (some encoders omit them).
    if info.algorithm.parameters.is_some_and(|p| !p.is_null()) {
        return Err(KeyError::Der("rsaEncryption parameters must be NULL".into()));
    }
    let key = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| KeyError::Der("the key's bit string is not whole bytes".into()))?;
    let rsa = pkcs1::RsaPublicKey::try_from(key).map_err(|e| KeyError::Der(format!("RSAPublicKey: {e}")))?;
    let modulus = rsa.modulus.as_bytes();
    let bits = modulus.first().map_or(0, |&top| {
        (modulus.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    if bits < MIN_RSA_BITS {
        return Err(KeyError::TooSmall(bits));
    }
    if bits > MAX_RSA_BITS {
        return Err(KeyError::TooLarge(bits));
    }
    let exponent = rsa.public_exponent.as_bytes();
    let odd = exponent.last().is_some_and(|b| b & 1 == 1);
    let value = (exponent.len() <= 5).then(|| exponent.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
    if !odd || !value.is_some_and(|e| (3..1 << 33).contains(&e)) {
        return Err(KeyError::BadExponent);
    }
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests;
