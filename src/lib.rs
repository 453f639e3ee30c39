//! ringpush: a push gateway daemon. Devices hold long-lived connections to
//! per-core shards (io_uring, or epoll as a fallback); app backends push
//! through a thin HTTP API; messages wait for offline devices within their TTL
//! and stay pending until the device acknowledges them.
//!
//! Layers, from the wire inwards: `io` moves bytes, `shard` runs one loop per
//! core, `delivery` and `session` are the sans-IO core, `protocol` is the
//! codec, `device_auth` checks a Hello's proof of its app; `templates` holds
//! the apps' message templates and `tags` their user tags; `api` and `admin`
//! are the HTTP faces; `receipts` posts signed delivery receipts to the apps;
//! `notify` and `watchdog` speak systemd's notification protocol.

pub mod admin;
pub mod admission;
pub mod api;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod device_auth;
pub mod framed_file;
pub mod io;
pub mod journal;
pub mod log;
pub mod message;
pub mod notify;
pub mod protocol;
pub mod receipts;
pub mod reload;
pub mod session;
pub mod shard;
pub mod stats;
pub mod store;
pub mod tags;
pub mod templates;
pub mod timer;
pub mod tls;
pub mod watchdog;
