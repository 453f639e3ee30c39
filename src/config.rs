//! The configuration tree: one serde struct per section, defaults that match
//! `config/ringpush.toml`, unknown keys rejected, validated once at load.
//! Nothing else in the daemon reads files or environment for settings.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod env;

/// Largest Push frame the API accepts: a 2 KiB body (push-semantics.md §2)
/// plus the header and field overhead.
pub const MAX_PUSH_FRAME_BYTES: usize = 2048 + 64;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    /// Shard threads; 0 means one per available core.
    pub shards: usize,
    /// `uring` (default; falls back to `epoll` with a warning when the kernel
    /// refuses io_uring) or `epoll`.
    pub io: IoBackend,
    /// Pin each shard thread to a core.
    pub pin_shards: bool,
    pub limits: Limits,
    pub admission: Admission,
    pub delivery: Delivery,
    pub durability: Durability,
    pub stats: Stats,
    pub receipts: Receipts,
    pub device_auth: DeviceAuth,
    pub http: Http,
    pub tls: Tls,
    pub log: Log,
    pub apps: Vec<App>,
}

/// The daemon's own log lines (tracing) on stderr.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `human` (one readable line per event) or `json` (one JSON object a
    /// line, for a log collector). `RINGPUSH_LOG_FORMAT` (an alias of
    /// `RINGPUSH_LOG__FORMAT`) overrides it.
    pub format: LogFormat,
    /// A tracing filter (`info`, `warn,ringpush::api=debug`); `RUST_LOG`,
    /// when set, wins.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The TLS device listener's certificate and session resumption
/// (docs/protocol.md, "TLS"). The listener (`listen.device_tls`) is on
/// when `cert_file` and `key_file` are set and `listen.device_tls_enabled`
/// is true. SIGHUP re-reads the files.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: Option<std::path::PathBuf>,
    /// TLS 1.3 session tickets sent after each full handshake (0: none).
    pub tickets_per_handshake: usize,
    /// TLS 1.2 sessions remembered for session-id resumption (0: none).
    pub session_cache_size: usize,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            tickets_per_handshake: 2,
            session_cache_size: 20_000,
        }
    }
}

/// How devices prove they belong to an app (docs/protocol.md, "Device
/// authentication"); which apps require it is each app's `deviceAuth`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceAuth {
    /// A signed Hello's `timestamp_ms` may differ from the server's clock by
    /// this much either way (1 ..= 300).
    pub max_skew_secs: u64,
    /// Signed-Hello nonces remembered per app, shared by all shards, each
    /// until its timestamp leaves the skew window; past it signed Hellos of
    /// that app get GoAway(overloaded) until older nonces expire.
    pub nonces_per_app: usize,
    /// Longest a credential may still be valid when it is presented: one
    /// minted with a later expiry is refused (a leaked credential must not
    /// work for long).
    pub max_credential_secs: u64,
}

impl Default for DeviceAuth {
    fn default() -> Self {
        Self {
            max_skew_secs: 300,
            nonces_per_app: 1_000_000,
            max_credential_secs: 7 * 24 * 3600,
        }
    }
}

/// Who may open device connections, per source address (`admission`
/// module): caps and connect-rate limits that hold across shards, because
/// SO_REUSEPORT spreads one address's connections over all of them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    /// Open device connections from one address; past it a new one gets
    /// GoAway(too_many_connections).
    pub max_connections_per_address: usize,
    /// Connection attempts one address may make per second, sustained.
    pub connect_rate_per_sec: u32,
    /// Attempts one address may make in a burst above the sustained rate;
    /// once spent, the address is banned.
    pub connect_burst: u32,
    /// How long a ban lasts; its connections meanwhile get GoAway(banned).
    pub ban_secs: u64,
    /// Addresses tracked at once (their counts, buckets and bans); past it
    /// connections from addresses not yet tracked get GoAway(overloaded).
    pub max_tracked_addresses: usize,
    /// IPv6 sources are counted per prefix of this length (one subscriber
    /// usually holds a /64).
    pub ipv6_prefix_len: u8,
    /// Sources exempt from the per-address policy (CIDRs, e.g. a load
    /// balancer); they still count towards `limits.max_connections`.
    pub exempt: Vec<String>,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_connections_per_address: 2000,
            connect_rate_per_sec: 100,
            connect_burst: 500,
            ban_secs: 30,
            max_tracked_addresses: 262_144,
            ipv6_prefix_len: 64,
            exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// Delivery receipts POSTed to each app's `receiptUrl` (docs/api.md,
/// "Receipts").
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Receipts {
    /// The gateway's RSA private key (PKCS#8 PEM, at least 2048 bits) that
    /// signs every receipt. Required when an app has a `receiptUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// PEM certificates trusted for https receipt URLs besides the built-in
    /// public roots (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Receipts waiting or being posted, per app; past it new ones are
    /// dropped and counted (`reason="queue_full"`).
    pub queue_per_app: usize,
    /// POSTs in progress (or waiting to retry) per app.
    pub concurrency_per_app: usize,
    pub connect_timeout_ms: u64,
    /// Whole request, response headers and body included.
    pub request_timeout_ms: u64,
    /// First retry delay; doubled per attempt up to `retry_max_ms`, each
    /// delay jittered between half and all of it.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// A receipt not delivered this long after its ack is dropped and counted
    /// (`reason="expired"`).
    pub max_age_secs: u64,
    /// How long a stopping daemon keeps posting what is queued.
    pub shutdown_grace_ms: u64,
    /// Threads of the sender's runtime: each receipt costs an RSA signature
    /// (about 0.3-0.5 ms for 2048 bits), so one thread posts a few thousand
    /// a second at most.
    pub sender_threads: usize,
    /// 1: one receipt per POST, MPS's format. More: each POST carries a
    /// JSON array of up to this many receipts (whatever is queued), signed
    /// once.
    pub batch_max: usize,
}

impl Default for Receipts {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            ca_file: None,
            queue_per_app: 10_000,
            concurrency_per_app: 16,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            max_age_secs: 3_600,
            shutdown_grace_ms: 5_000,
            sender_threads: 1,
            batch_max: 1,
        }
    }
}

/// The push API's and admin endpoints' HTTP connections: timeouts against
/// slow clients, a header size cap and a cap on connections.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// A request's headers must have arrived this long after the server
    /// began waiting for them, else the connection is closed (slowloris).
    /// The wait begins at connect and after each answer, so this is also
    /// how long a kept-alive connection may sit idle.
    pub header_timeout_ms: u64,
    /// A request's body must have arrived this long after its headers,
    /// else it is answered 408 (3902) and the connection closed.
    pub body_timeout_ms: u64,
    /// Largest request head (request line and headers); past it 431 and
    /// the connection is closed.
    pub max_header_bytes: usize,
    /// Open connections per listener (API, admin); past it new ones are
    /// closed at accept until some end.
    pub max_connections: usize,
    /// On stop: how long requests in progress may take to finish before
    /// their connections are dropped.
    pub shutdown_grace_ms: u64,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
            shutdown_grace_ms: 5000,
        }
    }
}

impl Receipts {
    pub fn retry_policy(&self) -> crate::receipts::RetryPolicy {
        crate::receipts::RetryPolicy {
            initial: Duration::from_millis(self.retry_initial_ms),
            max: Duration::from_millis(self.retry_max_ms),
            max_age: Duration::from_secs(self.max_age_secs),
        }
    }
}

/// Longest `device_auth.max_skew_secs`: the nonce cache is sized for it.
pub const MAX_DEVICE_SKEW_SECS: u64 = 300;

/// What the push statistics keep, per shard (docs/api.md, "Statistics").
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Stats {
    /// Per-minute buckets are kept this long (minute granularity reaches
    /// back this far); hour and day answers come from hourly buckets.
    pub minute_retention_hours: u64,
    /// Hourly buckets and tasks are kept this long; at least 90 (the
    /// longest query range) and the longest TTL.
    pub hour_retention_days: u64,
    /// Tasks (multiple, broadcast, group pushes) kept per app per shard for
    /// the task list; past it the oldest goes once the longest TTL has
    /// passed since it was created, else the new task is not listed.
    pub max_tasks_per_app: usize,
    /// How long after its ack a message may be reported opened or ignored.
    pub report_window_hours: u64,
    /// Acknowledged messages each device may still report opened or
    /// ignored (its last ones); older ones are forgotten.
    pub reportable_per_device: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            minute_retention_hours: 48,
            hour_retention_days: 90,
            max_tasks_per_app: 100_000,
            report_window_hours: 7 * 24,
            reportable_per_device: 8,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Plain TCP device listener.
    pub device: SocketAddr,
    /// TLS device listener (needs `[tls]` cert_file and key_file).
    pub device_tls: SocketAddr,
    /// Serve the plain device listener.
    pub device_enabled: bool,
    /// Serve the TLS device listener when a certificate is configured.
    pub device_tls_enabled: bool,
    /// HTTP push API.
    pub api: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// listen(2) backlog of the device listener.
    pub backlog: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    Uring,
    Epoll,
}

impl IoBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Epoll => "epoll",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame a device may send, header included.
    pub max_frame_bytes: usize,
    /// Device connections across all shards; past it new connections get
    /// GoAway(overloaded).
    pub max_connections: usize,
    /// Percent of `shard_queue` that, once filled with API commands the
    /// shard has not applied yet, makes it refuse new connections with
    /// GoAway(overloaded): the shard is behind on work it already took.
    pub overload_queue_percent: u8,
    /// Device connections per shard; past it new connections get
    /// GoAway(overloaded).
    pub max_connections_per_shard: usize,
    /// Bytes queued for one connection that the socket has not taken yet;
    /// past it the connection is closed (a slow reader).
    pub max_outbound_bytes: usize,
    /// Provided receive buffers per shard (io_uring backend), power of two.
    pub recv_buffers: u16,
    /// Size of each provided receive buffer.
    pub recv_buffer_bytes: u32,
    /// Commands queued from the API to one shard before the API answers 503.
    pub shard_queue: usize,
    /// Request nonces remembered per app for replay detection (each for at
    /// most twice the allowed clock skew); past it signed requests of that
    /// app are refused until older nonces expire.
    pub api_nonces_per_app: usize,
    /// SO_SNDBUF of every device socket (the kernel doubles it for its
    /// bookkeeping); 0 leaves the kernel's autotuning (net.ipv4.tcp_wmem),
    /// which lets a device that stops reading pin up to tcp_wmem's maximum
    /// of kernel memory on top of `max_outbound_bytes`.
    pub device_send_buffer_bytes: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Seconds a new connection has to send Hello.
    pub handshake_timeout_secs: u64,
    /// Seconds a connection may keep bytes waiting that its socket does
    /// not take; then it is closed (a slow or stalled reader).
    pub write_timeout_secs: u64,
    /// Heartbeat interval told to devices; a connection silent for three of
    /// them is closed.
    pub heartbeat_secs: u32,
    /// Seconds a sent message may stay unacknowledged before the connection is
    /// considered dead and closed (the message is redelivered on reconnect).
    pub ack_timeout_secs: u64,
    /// Messages sent to a device and not yet acknowledged.
    pub inflight_window: usize,
    /// Messages kept for one device; past it the oldest unsent one is dropped
    /// and the device is told how many it missed.
    pub max_pending_per_device: usize,
    pub min_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// How long a message's status stays queryable after it is acked or
    /// expired.
    pub status_retention_secs: u64,
    /// Final (acked, expired, dropped) statuses kept per shard; past it the
    /// oldest are forgotten early and counted. Pending ones are always kept.
    pub max_final_statuses_per_shard: usize,
    /// Broadcast, group and user messages stored per shard (each once,
    /// however many devices it is for) until their TTL ends; past it new
    /// ones are refused (9000) and counted.
    pub max_shared_messages_per_shard: usize,
    /// Messages accepted longer ago than this cannot be recalled (3028).
    pub recall_window_secs: u64,
    /// Revokes waiting for one device's RevokeAck; past it the oldest is
    /// dropped and counted.
    pub max_revokes_per_device: usize,
    /// Messages a shard remembers for recall by task id or by userId (every
    /// shared message, every multiple-push message); past it the oldest are
    /// forgotten early and counted.
    pub max_recall_index_per_shard: usize,
    /// After a token rotation, how long a Hello with the old token still
    /// reaches the device (and is told the new token) unless the device
    /// presents the new one first. 0: the old token is unknown at once, so a
    /// device offline during the rotation starts over with a fresh token.
    pub token_redirect_secs: u64,
    /// On stop (SIGTERM, SIGINT): how long shards wait for the GoAways and
    /// any other bytes still owed to devices to leave before they close the
    /// remaining sockets anyway; also bounds (plus `shard::STOP_SLACK`) how
    /// long the daemon waits for a shard thread to end.
    pub drain_timeout_secs: u64,
    /// On stop, every device is told to come back after a retry-after drawn
    /// uniformly from `shutdown_retry_min_ms ..= shutdown_retry_max_ms`, so
    /// the reconnects after a restart spread out instead of arriving at once.
    pub shutdown_retry_min_ms: u32,
    pub shutdown_retry_max_ms: u32,
}

/// Longest `delivery.drain_timeout_secs`: ten minutes. A stopping daemon
/// asks systemd for the time (EXTEND_TIMEOUT_USEC), so TimeoutStopSec does
/// not cut a configured drain short.
pub const MAX_DRAIN_TIMEOUT_SECS: u64 = 600;
/// Longest `delivery.shutdown_retry_max_ms`: an hour.
pub const MAX_SHUTDOWN_RETRY_MS: u32 = 3_600_000;

/// Longest `delivery.token_redirect_secs`: a year.
pub const MAX_TOKEN_REDIRECT_SECS: u64 = 365 * 24 * 3600;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Durability {
    /// Holds one log directory per shard and the lock file.
    pub data_dir: std::path::PathBuf,
    /// When the API may answer: `always`, `interval` or `never`.
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: the longest a written record waits for its
    /// fsync, so the most a crash (of the machine, not the process) loses.
    pub fsync_interval_ms: u64,
    /// A log segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Compaction: once this many bytes were logged since the last
    /// checkpoint, and at least twice that checkpoint's size, the live state
    /// is rewritten and older segments are deleted.
    pub compact_after_bytes: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    Always,
    Interval,
    Never,
}

impl FsyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Interval => "interval",
            Self::Never => "never",
        }
    }
}

impl Default for Durability {
    fn default() -> Self {
        Self {
            data_dir: "./data".into(),
            fsync: FsyncMode::Always,
            fsync_interval_ms: 100,
            segment_bytes: 64 << 20,
            compact_after_bytes: 256 << 20,
        }
    }
}

impl Durability {
    pub fn log_config(&self, shard: usize) -> crate::log::LogConfig {
        crate::log::LogConfig {
            dir: self.data_dir.join(format!("shard-{shard}")),
            segment_bytes: self.segment_bytes,
            fsync: match self.fsync {
                FsyncMode::Always => crate::log::FsyncPolicy::Always,
                FsyncMode::Interval => {
                    crate::log::FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms))
                }
                FsyncMode::Never => crate::log::FsyncPolicy::Never,
            },
        }
    }
}

/// An app (tenant) and its API credentials. Keys are camelCase, like the
/// reference's `appId`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct App {
    pub app_id: String,
    pub workspace_id: String,
    /// HMAC-SHA256 key for request signatures (at least 16 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_secret: Option<Secret>,
    /// PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY") of an RSA key of at least
    /// 2048 bits, for RSA-SHA256 request signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// false: every API call for this app is refused with 3032.
    #[serde(default = "enabled")]
    pub api_enabled: bool,
    /// Where delivery receipts go (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_url: Option<String>,
    /// Accept API requests without a signature. For local demos only.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Templates the app may hold; past it a new one gets 3056.
    #[serde(default = "default_max_templates")]
    pub max_templates: usize,
    /// Tags the app may hold; past it a new one gets 3103.
    #[serde(default = "default_max_tags")]
    pub max_tags: usize,
    /// userIds one tag may hold (after duplicates are removed); past it a
    /// change gets 3028.
    #[serde(default = "default_max_tag_users")]
    pub max_tag_users: usize,
    /// HMAC-SHA256 key devices sign their Hello with, and the app's backend
    /// mints device credentials with (at least 16 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<Secret>,
    /// `off` (default): a Hello naming the app is enough. `required`: a
    /// Hello must carry a signature or a credential made with
    /// `deviceSecret`.
    #[serde(default)]
    pub device_auth: DeviceAuthMode,
    /// API requests per second for this app (token bucket); past it 3901
    /// with HTTP 429 and Retry-After. 0: unlimited.
    #[serde(default = "default_api_rate")]
    pub api_rate_per_sec: u32,
    /// Requests the bucket holds: how many may come at once after a quiet
    /// spell. At least 1 when the rate is limited.
    #[serde(default = "default_api_burst")]
    pub api_burst: u32,
    /// PEM CA certificate(s) that issue this app's device certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// A Hello of this app over TLS needs a client certificate that chains
    /// to `clientCaFile`; otherwise (and over plain TCP) it gets Error 20.
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuthMode {
    #[default]
    Off,
    Required,
}

fn default_api_rate() -> u32 {
    10_000
}

fn default_api_burst() -> u32 {
    20_000
}

fn default_max_tags() -> usize {
    crate::tags::DEFAULT_MAX_TAGS
}

fn default_max_tag_users() -> usize {
    crate::tags::DEFAULT_MAX_TAG_USERS
}

fn default_max_templates() -> usize {
    crate::templates::DEFAULT_MAX_TEMPLATES
}

fn enabled() -> bool {
    true
}

impl App {
    /// An app with its API on and no credentials: give it one (or
    /// `allow_unsigned`) before `Config::validate`.
    pub fn new(app_id: impl Into<String>, workspace_id: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            workspace_id: workspace_id.into(),
            api_secret: None,
            public_key: None,
            api_enabled: true,
            receipt_url: None,
            allow_unsigned: false,
            max_templates: crate::templates::DEFAULT_MAX_TEMPLATES,
            max_tags: crate::tags::DEFAULT_MAX_TAGS,
            max_tag_users: crate::tags::DEFAULT_MAX_TAG_USERS,
            device_secret: None,
            device_auth: DeviceAuthMode::Off,
            api_rate_per_sec: default_api_rate(),
            api_burst: default_api_burst(),
            client_ca_file: None,
            require_client_cert: false,
        }
    }
}

/// A credential from the config file. Its Debug and Serialize show
/// `<redacted>`, so neither logs nor `check-config` print it (and the
/// placeholder is too short to be accepted back as a secret).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub const REDACTED: &'static str = "<redacted>";

    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Self::REDACTED)
    }
}

/// Shortest `apiSecret`: 128 bits, even when it is ASCII text.
pub const MIN_API_SECRET_BYTES: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Listen::default(),
            shards: 0,
            io: IoBackend::Uring,
            pin_shards: true,
            limits: Limits::default(),
            admission: Admission::default(),
            delivery: Delivery::default(),
            durability: Durability::default(),
            stats: Stats::default(),
            receipts: Receipts::default(),
            device_auth: DeviceAuth::default(),
            http: Http::default(),
            tls: Tls::default(),
            log: Log::default(),
            // The demo app takes unsigned requests so that the README's
            // curl works on the default loopback API address.
            apps: vec![App {
                allow_unsigned: true,
                ..App::new("demo", "default")
            }],
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            device: "0.0.0.0:7070".parse().expect("literal address"),
            device_tls: "0.0.0.0:7071".parse().expect("literal address"),
            device_enabled: true,
            device_tls_enabled: true,
            api: "127.0.0.1:8080".parse().expect("literal address"),
            admin: "127.0.0.1:9464".parse().expect("literal address"),
            backlog: 4096,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: crate::protocol::DEFAULT_MAX_FRAME,
            max_connections: 1_000_000,
            overload_queue_percent: 75,
            max_connections_per_shard: 500_000,
            max_outbound_bytes: 256 * 1024,
            recv_buffers: 1024,
            recv_buffer_bytes: 4096,
            shard_queue: 65_536,
            api_nonces_per_app: 2_000_000,
            device_send_buffer_bytes: 0,
        }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            handshake_timeout_secs: 10,
            write_timeout_secs: 30,
            heartbeat_secs: 60,
            ack_timeout_secs: 30,
            inflight_window: 32,
            max_pending_per_device: 1000,
            min_ttl_secs: 1,
            max_ttl_secs: 72 * 3600,
            status_retention_secs: 7 * 24 * 3600,
            max_final_statuses_per_shard: 1_000_000,
            max_shared_messages_per_shard: 1_000_000,
            recall_window_secs: 7 * 24 * 3600,
            max_revokes_per_device: 100,
            max_recall_index_per_shard: 1_000_000,
            token_redirect_secs: 30 * 24 * 3600,
            drain_timeout_secs: 10,
            shutdown_retry_min_ms: 1_000,
            shutdown_retry_max_ms: 10_000,
        }
    }
}

impl Delivery {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(3 * u64::from(self.heartbeat_secs))
    }
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.ack_timeout_secs)
    }
    pub fn status_retention(&self) -> Duration {
        Duration::from_secs(self.status_retention_secs)
    }
    pub fn recall_window(&self) -> Duration {
        Duration::from_secs(self.recall_window_secs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}{section}: {}", error.to_string().trim_end())]
    Parse {
        path: String,
        /// Not `source`: its text is this error's message, and a chain
        /// printed with `{:#}` would say it twice.
        error: Box<toml::de::Error>,
        /// ` (in [table])` when the error is inside a table: toml's
        /// message quotes the line but not the table it belongs to.
        section: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("environment override {0}")]
    Env(String),
}

impl Config {
    /// The file at `path` with the environment's overrides (`config::env`),
    /// validated.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_and_env(&text, std::env::vars()).map_err(|e| match e {
            ConfigError::Parse { error, section, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                error,
                section,
            },
            other => other,
        })
    }

    /// `load` of the file when there is one, else the embedded defaults
    /// with the environment's overrides.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None => Self::from_toml_and_env("", std::env::vars()),
        }
    }

    /// Parses and validates `text` alone (no environment).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_and_env(text, std::iter::empty())
    }

    /// Parses `text`, applies the `RINGPUSH_*` overrides among `vars`, and
    /// validates the result.
    pub fn from_toml_and_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_error = |source: toml::de::Error| ConfigError::Parse {
            path: "<config>".into(),
            section: source
                .span()
                .and_then(|span| table_at(text, span.start))
                .map_or_else(String::new, |table| format!(" (in {table})")),
            error: Box::new(source),
        };
        // The file alone first, so its errors point at its line, column
        // and table; then the overrides, each checked by `env::apply`.
        let from_file: Config = toml::from_str(text).map_err(parse_error)?;
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let applied = env::apply(&mut table, vars)?;
        let config = if applied.is_empty() {
            from_file
        } else {
            toml::Value::Table(table).try_into().map_err(parse_error)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Shard threads to start.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let l = &self.limits;
        let d = &self.delivery;
        if l.max_frame_bytes < 64 || l.max_frame_bytes > 16 << 20 {
            return invalid(format!(
                "limits.max_frame_bytes = {} (allowed 64 ..= 16777216)",
                l.max_frame_bytes
            ));
        }
        if !l.recv_buffers.is_power_of_two() {
            return invalid(format!(
                "limits.recv_buffers = {} must be a power of two",
                l.recv_buffers
            ));
        }
        let durability = &self.durability;
        if durability.data_dir.as_os_str().is_empty() {
            return invalid("durability.data_dir must not be empty".into());
        }
        if durability.fsync == FsyncMode::Interval && !(1..=60_000).contains(&durability.fsync_interval_ms) {
            return invalid(format!(
                "durability.fsync_interval_ms = {} (allowed 1 ..= 60000)",
                durability.fsync_interval_ms
            ));
        }
        // Offsets into a segment are kept in 32 bits (frames on disk are
        // referenced by segment and offset); a segment may overshoot its
        // size by one commit, so the bound leaves room.
        if !(1 << 16..=1 << 30).contains(&durability.segment_bytes) {
            return invalid(format!(
                "durability.segment_bytes = {} (allowed 65536 ..= 1073741824)",
                durability.segment_bytes
            ));
        }
        if durability.compact_after_bytes < durability.segment_bytes {
            return invalid("durability.compact_after_bytes must be at least segment_bytes".into());
        }
        if (l.recv_buffer_bytes as usize) < 512 {
            return invalid("limits.recv_buffer_bytes must be at least 512".into());
        }
        // A full in-flight window of the largest pushes (2 KiB bodies) must
        // fit, or a healthy device would be closed as a slow reader.
        let window_bytes = d.inflight_window.saturating_mul(MAX_PUSH_FRAME_BYTES) + l.max_frame_bytes;
        if l.max_outbound_bytes < window_bytes {
            return invalid(format!(
                "limits.max_outbound_bytes = {} is below inflight_window x {MAX_PUSH_FRAME_BYTES} + max_frame_bytes = {window_bytes}",
                l.max_outbound_bytes
            ));
        }
        if l.device_send_buffer_bytes != 0 && !(4096..=16 << 20).contains(&l.device_send_buffer_bytes) {
            return Err(ConfigError::Invalid(format!(
                "limits.device_send_buffer_bytes = {} must be 0 (the kernel's autotuning) or 4096 ..= 16777216",
                l.device_send_buffer_bytes
            )));
        }
        if l.shard_queue == 0 || l.max_connections_per_shard == 0 || l.api_nonces_per_app == 0 {
            return invalid(
                "limits.shard_queue, limits.max_connections_per_shard and limits.api_nonces_per_app must be > 0"
                    .into(),
            );
        }
        if d.min_ttl_secs == 0 || d.min_ttl_secs > d.max_ttl_secs {
            return invalid(format!(
                "delivery.min_ttl_secs = {} and max_ttl_secs = {}: need 1 <= min <= max",
                d.min_ttl_secs, d.max_ttl_secs
            ));
        }
        if d.inflight_window == 0 || d.max_pending_per_device < d.inflight_window {
            return invalid("delivery.inflight_window must be > 0 and <= max_pending_per_device".into());
        }
        if d.recall_window_secs == 0 || d.max_revokes_per_device == 0 {
            return invalid(
                "delivery.recall_window_secs and delivery.max_revokes_per_device must be > 0".into(),
            );
        }
        if l.max_connections == 0 || !(1..=100).contains(&l.overload_queue_percent) {
            return invalid(format!(
                "limits.max_connections = {} must be > 0 and limits.overload_queue_percent = {} in 1 ..= 100",
                l.max_connections, l.overload_queue_percent
            ));
        }
        let a = &self.admission;
        if a.max_connections_per_address == 0
            || a.connect_rate_per_sec == 0
            || a.connect_burst == 0
            || a.ban_secs == 0
            || a.max_tracked_addresses == 0
        {
            return invalid(
                "admission.max_connections_per_address, connect_rate_per_sec, connect_burst, ban_secs and max_tracked_addresses must be > 0"
                    .into(),
            );
        }
        if !(1..=128).contains(&a.ipv6_prefix_len) {
            return invalid(format!(
                "admission.ipv6_prefix_len = {} (allowed 1 ..= 128)",
                a.ipv6_prefix_len
            ));
        }
        for cidr in &a.exempt {
            if let Err(e) = crate::admission::Cidr::parse(cidr) {
                return invalid(format!("admission.exempt: {cidr:?}: {e}"));
            }
        }
        if d.heartbeat_secs == 0
            || d.handshake_timeout_secs == 0
            || d.ack_timeout_secs == 0
            || d.write_timeout_secs == 0
        {
            return invalid("delivery timeouts and heartbeat_secs must be > 0".into());
        }
        if d.write_timeout_secs > 86_400 {
            return invalid(format!(
                "delivery.write_timeout_secs = {} (allowed 1 ..= 86400)",
                d.write_timeout_secs
            ));
        }
        if d.drain_timeout_secs > MAX_DRAIN_TIMEOUT_SECS {
            return invalid(format!(
                "delivery.drain_timeout_secs = {} (allowed 0 ..= {MAX_DRAIN_TIMEOUT_SECS})",
                d.drain_timeout_secs
            ));
        }
        if d.shutdown_retry_min_ms > d.shutdown_retry_max_ms
            || d.shutdown_retry_max_ms > MAX_SHUTDOWN_RETRY_MS
        {
            return invalid(format!(
                "delivery.shutdown_retry_min_ms = {}, shutdown_retry_max_ms = {} (allowed min <= max <= {MAX_SHUTDOWN_RETRY_MS})",
                d.shutdown_retry_min_ms, d.shutdown_retry_max_ms
            ));
        }
        if d.token_redirect_secs > MAX_TOKEN_REDIRECT_SECS {
            return invalid(format!(
                "delivery.token_redirect_secs = {} (allowed 0 ..= {MAX_TOKEN_REDIRECT_SECS})",
                d.token_redirect_secs
            ));
        }
        let s = &self.stats;
        if s.minute_retention_hours == 0 || s.minute_retention_hours > 24 * 90 {
            return invalid(format!(
                "stats.minute_retention_hours = {} (allowed 1 ..= 2160)",
                s.minute_retention_hours
            ));
        }
        if s.hour_retention_days < 90 || s.hour_retention_days > 3660 {
            return invalid(format!(
                "stats.hour_retention_days = {} (allowed 90 ..= 3660: queries reach back 90 days)",
                s.hour_retention_days
            ));
        }
        if s.report_window_hours == 0 {
            return invalid("stats.report_window_hours must be > 0".into());
        }
        if s.reportable_per_device > 255 {
            return invalid(format!(
                "stats.reportable_per_device = {} (allowed 0 ..= 255)",
                s.reportable_per_device
            ));
        }
        let r = &self.receipts;
        if r.queue_per_app == 0 || !(1..=1024).contains(&r.concurrency_per_app) {
            return invalid(format!(
                "receipts.queue_per_app = {} (allowed >= 1) and receipts.concurrency_per_app = {} (allowed 1 ..= 1024)",
                r.queue_per_app, r.concurrency_per_app
            ));
        }
        if !(1..=1000).contains(&r.batch_max) {
            return invalid(format!(
                "receipts.batch_max = {} (allowed 1 ..= 1000)",
                r.batch_max
            ));
        }
        if !(1..=64).contains(&r.sender_threads) {
            return invalid(format!(
                "receipts.sender_threads = {} (allowed 1 ..= 64)",
                r.sender_threads
            ));
        }
        if r.connect_timeout_ms == 0 || r.request_timeout_ms == 0 || r.max_age_secs == 0 {
            return invalid(
                "receipts.connect_timeout_ms, receipts.request_timeout_ms and receipts.max_age_secs must be > 0"
                    .into(),
            );
        }
        if r.retry_initial_ms == 0 || r.retry_initial_ms > r.retry_max_ms {
            return invalid(format!(
                "receipts.retry_initial_ms = {} and retry_max_ms = {}: need 1 <= initial <= max",
                r.retry_initial_ms, r.retry_max_ms
            ));
        }
        let a = &self.device_auth;
        if !(1..=MAX_DEVICE_SKEW_SECS).contains(&a.max_skew_secs) {
            return invalid(format!(
                "device_auth.max_skew_secs = {} (allowed 1 ..= {MAX_DEVICE_SKEW_SECS})",
                a.max_skew_secs
            ));
        }
        if a.nonces_per_app == 0 || a.max_credential_secs == 0 {
            return invalid(
                "device_auth.nonces_per_app and device_auth.max_credential_secs must be > 0".into(),
            );
        }
        let h = &self.http;
        if h.header_timeout_ms == 0 || h.body_timeout_ms == 0 || h.max_connections == 0 {
            return invalid("http.header_timeout_ms, body_timeout_ms and max_connections must be > 0".into());
        }
        if !(1024..=1 << 20).contains(&h.max_header_bytes) {
            return invalid(format!(
                "http.max_header_bytes = {} (allowed 1024 ..= 1048576)",
                h.max_header_bytes
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid(format!("log.level = {:?}: {e}", self.log.level));
        }
        if self.apps.is_empty() {
            return invalid("at least one [[apps]] entry is needed".into());
        }
        let t = &self.tls;
        if t.cert_file.is_some() != t.key_file.is_some() {
            return invalid("tls.cert_file and tls.key_file must be set together".into());
        }
        if t.tickets_per_handshake > 16 {
            return invalid(format!(
                "tls.tickets_per_handshake = {} (allowed 0 ..= 16)",
                t.tickets_per_handshake
            ));
        }
        if r.signing_key_file.is_none() {
            if let Some(app) = self.apps.iter().find(|a| a.receipt_url.is_some()) {
                return invalid(format!(
                    "apps: appId {:?} has a receiptUrl, so receipts.signing_key_file (the gateway's \
                     PKCS#8 PEM RSA private key that signs receipts) must be set",
                    app.app_id
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for app in &self.apps {
            if app.app_id.is_empty() || app.app_id.len() > 64 {
                return invalid(format!("apps: appId {:?} must be 1..=64 bytes", app.app_id));
            }
            if !seen.insert(&app.app_id) {
                return invalid(format!("apps: appId {:?} appears twice", app.app_id));
            }
            app.validate()
                .map_err(|e| ConfigError::Invalid(format!("apps: appId {:?}: {e}", app.app_id)))?;
        }
        Ok(())
    }
}

impl App {
    fn validate(&self) -> Result<(), String> {
        if self.max_templates > crate::templates::MAX_MAX_TEMPLATES {
            return Err(format!(
                "maxTemplates = {} (allowed 0 ..= {})",
                self.max_templates,
                crate::templates::MAX_MAX_TEMPLATES
            ));
        }
        if self.max_tags > crate::tags::MAX_MAX_TAGS {
            return Err(format!(
                "maxTags = {} (allowed 0 ..= {})",
                self.max_tags,
                crate::tags::MAX_MAX_TAGS
            ));
        }
        if !(1..=crate::tags::MAX_MAX_TAG_USERS).contains(&self.max_tag_users) {
            return Err(format!(
                "maxTagUsers = {} (allowed 1 ..= {})",
                self.max_tag_users,
                crate::tags::MAX_MAX_TAG_USERS
            ));
        }
        if let Some(secret) = &self.api_secret {
            if secret.expose().len() < MIN_API_SECRET_BYTES {
                return Err(format!(
                    "apiSecret must be at least {MIN_API_SECRET_BYTES} bytes (use random bytes, e.g. `openssl rand -base64 32`)"
                ));
            }
        }
        if let Some(pem) = &self.public_key {
            crate::api::auth::rsa_public_key_from_pem(pem).map_err(|e| format!("publicKey: {e}"))?;
        }
        if self.api_secret.is_none() && self.public_key.is_none() && !self.allow_unsigned {
            return Err(
                "no API credential: set apiSecret (HMAC-SHA256) or publicKey (RSA-SHA256), \
                 or allowUnsigned = true for a local demo"
                    .into(),
            );
        }
        if let Some(url) = &self.receipt_url {
            validate_http_url(url).map_err(|e| format!("receiptUrl {url:?}: {e}"))?;
        }
        if let Some(secret) = &self.device_secret {
            if secret.expose().len() < MIN_API_SECRET_BYTES {
                return Err(format!(
                    "deviceSecret must be at least {MIN_API_SECRET_BYTES} bytes (use random bytes, e.g. `openssl rand -base64 32`)"
                ));
            }
        }
        if self.require_client_cert && self.client_ca_file.is_none() {
            return Err("requireClientCert = true needs a clientCaFile".into());
        }
        if self.device_auth == DeviceAuthMode::Required && self.device_secret.is_none() {
            return Err("deviceAuth = \"required\" needs a deviceSecret".into());
        }
        if self.api_rate_per_sec > 0 && self.api_burst == 0 {
            return Err("apiBurst must be at least 1 when apiRatePerSec is set".into());
        }
        Ok(())
    }
}

/// The table header (`[delivery]`, `[[apps]]` #2) that byte `offset` of
/// `text` falls under; `None` at the top level.
fn table_at(text: &str, offset: usize) -> Option<String> {
    let mut header: Option<(String, usize)> = None;
    let mut apps = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if at > offset {
            break;
        }
        let trimmed = line.trim();
        if trimmed.starts_with("[[") {
            let name = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            if name == "apps" {
                apps += 1;
            }
            header = Some((format!("[[{name}]]"), apps));
        } else if trimmed.starts_with('[') {
            header = Some((trimmed.split(']').next().unwrap_or("").to_string() + "]", 0));
        }
        at += line.len();
    }
    header.map(|(name, n)| match n {
        0 => name,
        n => format!("{name} entry #{n}"),
    })
}

/// An absolute http or https URL with a host.
fn validate_http_url(url: &str) -> Result<(), &'static str> {
    let uri: axum::http::Uri = url.parse().map_err(|_| "not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err("has no host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_auth_and_rate_limits_are_validated() {
        let app = |keys: &str| app_error(&format!("apiSecret = \"0123456789abcdef\"\n{keys}"));
        assert_eq!(
            app("deviceSecret = \"0123456789abcdef\"\ndeviceAuth = \"required\""),
            ""
        );
        assert!(app("deviceAuth = \"required\"").contains("needs a deviceSecret"));
        assert!(app("deviceSecret = \"short\"").contains("deviceSecret must be at least 16 bytes"));
        assert!(app("deviceAuth = \"maybe\"").contains("unknown variant"));
        assert!(app("apiRatePerSec = 5\napiBurst = 0").contains("apiBurst"));
        assert_eq!(app("apiRatePerSec = 0\napiBurst = 0"), "");
        let section = |text: &str| {
            Config::from_toml(&format!(
                "{text}\n[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\n"
            ))
        };
        assert!(section("[device_auth]\nmax_skew_secs = 301").is_err());
        assert!(section("[device_auth]\nmax_skew_secs = 0").is_err());
        assert!(section("[device_auth]\nnonces_per_app = 0").is_err());
        assert!(section("[http]\nmax_connections = 0").is_err());
        assert!(section("[http]\nmax_header_bytes = 100").is_err());
        assert!(section("[http]\nidle_timeout_ms = 5")
            .unwrap_err()
            .to_string()
            .contains("idle_timeout_ms"));
        // The device secret is redacted like the API's.
        let text = "[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\ndeviceSecret = \"device-secret-never-shown\"\n";
        let config = Config::from_toml(text).unwrap();
        for shown in [format!("{config:?}"), toml::to_string_pretty(&config).unwrap()] {
            assert!(!shown.contains("device-secret-never-shown"), "{shown}");
        }
    }

    #[test]
    fn tls_settings_are_validated() {
        let base = "[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\n";
        let with = |extra: &str| Config::from_toml(&format!("{extra}\n{base}"));
        let only_cert = with("[tls]\ncert_file = \"/x.pem\"").unwrap_err().to_string();
        assert!(only_cert.contains("set together"), "{only_cert}");
        assert!(with("[tls]\ntickets_per_handshake = 17").is_err());
        let no_ca = Config::from_toml(&format!("{base}requireClientCert = true\n"))
            .unwrap_err()
            .to_string();
        assert!(no_ca.contains("needs a clientCaFile"), "{no_ca}");
        let listen = with("[listen]\ndevice_enabled = false\ndevice_tls = \"127.0.0.1:7443\"").unwrap();
        assert!(!listen.listen.device_enabled);
        assert_eq!(listen.tls.tickets_per_handshake, 2);
        assert_eq!(listen.tls.session_cache_size, 20_000);
    }

    #[test]
    fn shipped_file_matches_the_defaults() {
        let text = include_str!("../config/ringpush.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    /// Every key the defaults serialize is in the shipped file, set or in a
    /// comment, in its own section: a new key cannot go undocumented.
    #[test]
    fn shipped_file_shows_every_key() {
        let text = include_str!("../config/ringpush.toml");
        let toml::Value::Table(defaults) = toml::Value::try_from(Config::default()).unwrap() else {
            panic!("a table");
        };
        // Each section's lines, comments included, with `#` and indentation
        // stripped.
        let mut sections: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                current = name.to_string();
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.to_string();
            }
            sections
                .entry(current.clone())
                .or_default()
                .push(line.to_string());
        }
        let shown = |section: &str, key: &str| {
            sections.get(section).is_some_and(|lines| {
                lines
                    .iter()
                    .any(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
            })
        };
        let mut missing = Vec::new();
        for (key, value) in &defaults {
            match value {
                toml::Value::Table(table) => {
                    missing.extend(
                        table
                            .keys()
                            .filter(|k| !shown(key, k))
                            .map(|k| format!("{key}.{k}")),
                    );
                }
                toml::Value::Array(apps) => {
                    for app in apps {
                        let toml::Value::Table(app) = app else { continue };
                        missing.extend(
                            app.keys()
                                .filter(|k| !shown(key, k))
                                .map(|k| format!("{key}.{k}")),
                        );
                    }
                }
                _ if !shown("", key) => missing.push(key.clone()),
                _ => {}
            }
        }
        assert!(missing.is_empty(), "config/ringpush.toml lacks {missing:?}");
    }

    #[test]
    fn tag_limits_are_bounded() {
        let app = |extra: &str| {
            Config::from_toml(&format!(
                "[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\n{extra}\n"
            ))
        };
        assert_eq!(app("").unwrap().apps[0].max_tag_users, 500_000);
        assert!(app("maxTags = 0\nmaxTagUsers = 5000000").is_ok());
        assert!(app("maxTags = 100001")
            .unwrap_err()
            .to_string()
            .contains("maxTags"));
        assert!(app("maxTagUsers = 0")
            .unwrap_err()
            .to_string()
            .contains("maxTagUsers"));
        assert!(app("maxTagUsers = 5000001").is_err());
    }

    #[test]
    fn unknown_keys_are_named_with_their_table() {
        let err = Config::from_toml("[delivery]\nheartbeat = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("heartbeat") && err.contains("(in [delivery])"),
            "{err}"
        );
        let app = "[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\n";
        let err = Config::from_toml(&format!("{app}{app}apikey = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apikey") && err.contains("[[apps]] entry #2"),
            "{err}"
        );
        let err = Config::from_toml("shard = 2\n[limits]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard") && !err.contains("(in"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::from_toml("[delivery]\nmin_ttl_secs = 10\nmax_ttl_secs = 5\n").is_err());
        assert!(Config::from_toml("[limits]\nrecv_buffers = 1000\n").is_err());
        assert!(Config::from_toml("[limits]\ndevice_send_buffer_bytes = 100\n").is_err());
        assert!(Config::from_toml("[limits]\ndevice_send_buffer_bytes = 16384\n").is_ok());
        assert!(Config::from_toml("io = \"poll\"\n").is_err());
        assert!(Config::from_toml("[delivery]\ndrain_timeout_secs = 601\n").is_err());
        assert!(Config::from_toml("[delivery]\ndrain_timeout_secs = 0\n").is_ok());
        assert!(Config::from_toml(
            "[delivery]\nshutdown_retry_min_ms = 5000\nshutdown_retry_max_ms = 4000\n"
        )
        .is_err());
        assert!(Config::from_toml("[delivery]\nshutdown_retry_max_ms = 3600001\n").is_err());
        assert!(Config::from_toml(
            "[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\nmaxTemplates = 10001\n"
        )
        .is_err());
    }

    fn app_error(keys: &str) -> String {
        let text = format!("[[apps]]\nappId = \"shop\"\nworkspaceId = \"prod\"\n{keys}\n");
        match Config::from_toml(&text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn apps_need_a_credential_unless_they_allow_unsigned() {
        let err = app_error("");
        assert!(
            err.contains("\"shop\"") && err.contains("no API credential"),
            "{err}"
        );
        assert_eq!(app_error("allowUnsigned = true"), "");
        assert_eq!(app_error("apiSecret = \"0123456789abcdef\""), "");
        let key = include_str!("../tests/fixtures/rsa-2048-public.pem");
        assert_eq!(app_error(&format!("publicKey = \"\"\"\n{key}\"\"\"")), "");
    }

    #[test]
    fn bad_app_credentials_and_urls_are_refused_with_their_key() {
        let short = app_error("apiSecret = \"0123456789abcde\"");
        assert!(short.contains("apiSecret must be at least 16 bytes"), "{short}");
        // The redaction placeholder can never be taken back as a secret.
        assert!(!app_error(&format!("apiSecret = {:?}", Secret::REDACTED)).is_empty());
        let small = include_str!("../tests/fixtures/rsa-1024-public.pem");
        let err = app_error(&format!("publicKey = \"\"\"\n{small}\"\"\""));
        assert!(err.contains("publicKey") && err.contains("1024 bits"), "{err}");
        let ec = include_str!("../tests/fixtures/ec-p256-public.pem");
        assert!(app_error(&format!("publicKey = \"\"\"\n{ec}\"\"\"")).contains("not an RSA key"));
        for url in [
            "ftp://x.example/r",
            "shop.example/receipts",
            "https://",
            "http:// spaces",
        ] {
            let err = app_error(&format!("allowUnsigned = true\nreceiptUrl = {url:?}"));
            assert!(err.contains("receiptUrl"), "{url}: {err}");
        }
        // A valid URL still needs the gateway's signing key.
        let url = "receiptUrl = \"https://shop.example:8443/push/receipts?x=1\"";
        let err = app_error(&format!("allowUnsigned = true\n{url}"));
        assert!(
            err.contains("\"shop\" has a receiptUrl") && err.contains("receipts.signing_key_file"),
            "{err}"
        );
        let text = format!(
            "[receipts]\nsigning_key_file = \"/etc/ringpush/receipts.key\"\n\
             [[apps]]\nappId = \"shop\"\nworkspaceId = \"prod\"\nallowUnsigned = true\n{url}\n"
        );
        Config::from_toml(&text).unwrap();
        assert!(app_error("allowUnsigned = true\napikey = 1").contains("apikey"));
    }

    #[test]
    fn receipt_limits_are_checked() {
        let receipts = |keys: &str| Config::from_toml(&format!("[receipts]\n{keys}\n"));
        assert!(receipts("queue_per_app = 1\nconcurrency_per_app = 1024").is_ok());
        for bad in [
            "queue_per_app = 0",
            "concurrency_per_app = 0",
            "concurrency_per_app = 1025",
            "sender_threads = 0",
            "sender_threads = 65",
            "batch_max = 0",
            "batch_max = 1001",
            "connect_timeout_ms = 0",
            "request_timeout_ms = 0",
            "max_age_secs = 0",
            "retry_initial_ms = 0",
            "retry_initial_ms = 5000\nretry_max_ms = 4000",
        ] {
            let err = receipts(bad).unwrap_err().to_string();
            assert!(err.contains("receipts."), "{bad}: {err}");
        }
        assert!(receipts("retries = 3")
            .unwrap_err()
            .to_string()
            .contains("retries"));
    }

    #[test]
    fn secrets_never_show_in_debug_or_serialized_config() {
        let secret = "a-very-secret-value-0123456789";
        let text = format!("[[apps]]\nappId = \"shop\"\nworkspaceId = \"prod\"\napiSecret = \"{secret}\"\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.apps[0].api_secret.as_ref().unwrap().expose(),
            secret.as_bytes()
        );
        let debug = format!("{config:?}");
        let toml = toml::to_string_pretty(&config).unwrap();
        for shown in [&debug, &toml] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains(Secret::REDACTED), "{shown}");
        }
    }

    #[test]
    fn new_app_keys_have_their_defaults() {
        let config =
            Config::from_toml("[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\nallowUnsigned = true\n")
                .unwrap();
        let app = &config.apps[0];
        assert!(app.api_enabled && app.api_secret.is_none() && app.public_key.is_none());
        assert!(app.receipt_url.is_none());
        assert!(Config::from_toml("").unwrap().apps[0].allow_unsigned);
    }
}
