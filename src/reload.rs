//! SIGHUP: re-reading the configuration file while devices stay connected.
//! Owns which keys change live and which need a restart (`merge_live`),
//! building everything a new configuration needs before anything is
//! swapped, and swapping it: the API's apps and settings (one pointer under
//! a lock, read once per request), every shard's copy (a `Control` message,
//! so the shard loop reads no lock), the TLS certificate. A configuration
//! that does not parse, validate or load is refused whole and the running
//! one stays; both outcomes are logged and counted.
//!
//! Live: `[[apps]]` (added — with their template and tag stores —,
//! removed, credentials, switches, rate limits, device authentication,
//! client CAs) except an app's `receiptUrl` (receipt queues are made at
//! start) and a kept app's `maxTemplates`, `maxTags`, `maxTagUsers`;
//! `limits.max_connections`, `max_connections_per_shard`,
//! `max_outbound_bytes`; `admission` caps, connect rate, burst and ban;
//! `http.body_timeout_ms`; `delivery` timeouts, `heartbeat_secs`,
//! `token_redirect_secs`, `min_ttl_secs`; `device_auth.max_credential_secs`;
//! `tls.cert_file`, `key_file` (when the TLS listener runs). Every other key
//! sized something at start (listeners, threads, tables, queues, stores,
//! the log subscriber) and keeps its running value until a restart; a
//! reload that changes one says so in the log.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::{App, Config};
use crate::shard::ShardHandle;

/// Describes this module's metrics (called once at start).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "ringpush_config_reloads_total",
        "SIGHUP reloads of the configuration file, by result (ok, failed)"
    );
    metrics::describe_gauge!(
        "ringpush_config_last_reload_success",
        "1 when the configuration was last loaded (at start or SIGHUP) and applied, 0 when a reload was refused (the running configuration stayed)"
    );
    metrics::describe_gauge!(
        "ringpush_config_last_reload_timestamp_seconds",
        "When the configuration was last loaded or a reload attempted (unix seconds)"
    );
}

/// The running configuration and everything a reload swaps.
pub struct Reloader {
    path: Option<PathBuf>,
    running: Config,
    tls: Option<Arc<crate::tls::SharedTlsConfig>>,
    api: crate::api::SharedApiLive,
    templates: Arc<crate::templates::TemplateStore>,
    tags: Arc<crate::tags::TagStore>,
    shards: Arc<[ShardHandle]>,
    device_auth: Arc<crate::device_auth::DeviceAuth>,
    admission: Arc<crate::admission::Admission>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        running: Config,
        tls: Option<Arc<crate::tls::SharedTlsConfig>>,
        api: &crate::api::HttpServers,
        shards: &crate::shard::Shards,
    ) -> Self {
        let (templates, tags) = api.stores();
        // The configuration in force loaded: the gauges mean "is the file
        // on disk what runs" from the start, not only after a first SIGHUP.
        metrics::gauge!("ringpush_config_last_reload_success").set(1.0);
        metrics::gauge!("ringpush_config_last_reload_timestamp_seconds")
            .set(crate::message::unix_ms() as f64 / 1000.0);
        Self {
            path,
            running,
            tls,
            api: api.live(),
            templates,
            tags,
            shards: shards.handles(),
            device_auth: shards.device_auth(),
            admission: shards.admission(),
        }
    }

    /// Re-reads the file given with `--config` (with the environment's
    /// overrides, which a running process cannot see change) and applies
    /// what may change live. Without a file only the TLS files are re-read.
    pub fn reload(&mut self) {
        metrics::gauge!("ringpush_config_last_reload_timestamp_seconds")
            .set(crate::message::unix_ms() as f64 / 1000.0);
        let result = match &self.path {
            Some(path) => self.reload_from(path.clone()),
            None => self.reload_tls_only(),
        };
        let (label, success) = match &result {
            Ok(()) => ("ok", 1.0),
            Err(e) => {
                error!(error = %format!("{e:#}"), "SIGHUP: configuration refused; the running one stays");
                ("failed", 0.0)
            }
        };
        metrics::counter!("ringpush_config_reloads_total", "result" => label).increment(1);
        metrics::gauge!("ringpush_config_last_reload_success").set(success);
    }

    fn reload_tls_only(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else {
            info!("SIGHUP: no --config file and TLS is off: nothing to reload");
            return Ok(());
        };
        reload_tls(tls, &self.running)?;
        info!("SIGHUP: reloaded the TLS certificate, key and client CAs");
        Ok(())
    }

    fn reload_from(&mut self, path: PathBuf) -> anyhow::Result<()> {
        let loaded = Config::load(&path)?;
        let (next, needs_restart) = merge_live(&self.running, &loaded, self.tls.is_some());
        // The merge may pair a new value with a running one that the new
        // file changed too (a cap and what it must exceed).
        next.validate().map_err(|e| {
            anyhow::anyhow!("{e} (with the keys that need a restart at their running values)")
        })?;
        // Everything that can fail is built before anything is swapped.
        let registry = self.api.read().auth.reconfigure(&next.apps)?;
        let tls = match &self.tls {
            Some(shared) => Some((shared, load_tls(shared, &next)?)),
            None => None,
        };
        let device_auth = Arc::new(self.device_auth.reconfigure(&next));
        // Added apps get their stores before the API knows them; a store
        // of an app the API does not serve is never read.
        self.templates.add_apps(&next.apps)?;
        self.tags.add_apps(&next.apps)?;

        let registry = Arc::new(registry);
        crate::api::warn_about_unsigned_apps(&registry, next.listen.api);
        {
            let mut api = self.api.write();
            api.config = Arc::new(next.clone());
            api.auth = registry;
        }
        crate::shard::reconfigure(
            &self.shards,
            Arc::new(crate::shard::ShardSettings {
                config: next.clone(),
                device_auth: device_auth.clone(),
            }),
        );
        self.admission.set_limits(&next);
        if let Some((shared, fresh)) = tls {
            shared.replace(fresh);
            metrics::counter!("ringpush_tls_reloads_total", "result" => "ok").increment(1);
        }
        for key in &needs_restart {
            warn!(key = %key, "SIGHUP: changed in the file but needs a restart; the running value stays");
        }
        let (added, removed, changed) = app_changes(&self.running.apps, &next.apps);
        let settings = changed_keys(&self.running, &next);
        info!(
            file = %path.display(),
            apps_added = ?added,
            apps_removed = ?removed,
            apps_changed = ?changed,
            settings = ?settings,
            needs_restart = needs_restart.len(),
            "SIGHUP: configuration reloaded; device sessions kept"
        );
        self.running = next;
        self.device_auth = device_auth;
        Ok(())
    }
}

fn load_tls(shared: &crate::tls::SharedTlsConfig, config: &Config) -> anyhow::Result<crate::tls::TlsConfig> {
    let loaded = crate::tls::TlsConfig::load(config, shared.resumption()).map_err(|e| {
        metrics::counter!("ringpush_tls_reloads_total", "result" => "failed").increment(1);
        anyhow::anyhow!("loading the TLS certificate: {e}")
    })?;
    loaded.ok_or_else(|| {
        metrics::counter!("ringpush_tls_reloads_total", "result" => "failed").increment(1);
        anyhow::anyhow!("tls.cert_file and tls.key_file are no longer set (turning TLS off needs a restart)")
    })
}

fn reload_tls(shared: &crate::tls::SharedTlsConfig, config: &Config) -> anyhow::Result<()> {
    let fresh = load_tls(shared, config)?;
    shared.replace(fresh);
    metrics::counter!("ringpush_tls_reloads_total", "result" => "ok").increment(1);
    Ok(())
}

/// The configuration to run after a reload from `running` to `loaded`:
/// `loaded` with every key that cannot change live put back to its running
/// value, and the names of the keys so kept (those `loaded` changed).
/// `tls_running`: the TLS listener is up, so its files may change.
pub fn merge_live(running: &Config, loaded: &Config, tls_running: bool) -> (Config, Vec<String>) {
    let mut next = loaded.clone();
    let r = running;
    next.listen = r.listen.clone();
    next.shards = r.shards;
    next.io = r.io;
    next.pin_shards = r.pin_shards;
    next.durability = r.durability.clone();
    next.stats = r.stats.clone();
    next.receipts = r.receipts.clone();
    // The table's size and keys, and the exempt list, are fixed at start;
    // the caps, rate and ban are atomics (`Admission::set_limits`).
    next.admission.max_tracked_addresses = r.admission.max_tracked_addresses;
    next.admission.ipv6_prefix_len = r.admission.ipv6_prefix_len;
    next.admission.exempt = r.admission.exempt.clone();
    // The HTTP servers' loops copied their limits at start; the body
    // timeout is read per request.
    next.http = crate::config::Http {
        body_timeout_ms: loaded.http.body_timeout_ms,
        ..r.http.clone()
    };
    next.log = r.log.clone();
    next.tls.tickets_per_handshake = r.tls.tickets_per_handshake;
    next.tls.session_cache_size = r.tls.session_cache_size;
    if !tls_running {
        next.tls.cert_file = r.tls.cert_file.clone();
        next.tls.key_file = r.tls.key_file.clone();
    }
    next.device_auth.max_skew_secs = r.device_auth.max_skew_secs;
    next.device_auth.nonces_per_app = r.device_auth.nonces_per_app;
    let (l, rl) = (&mut next.limits, &r.limits);
    l.max_frame_bytes = rl.max_frame_bytes;
    l.overload_queue_percent = rl.overload_queue_percent;
    l.recv_buffers = rl.recv_buffers;
    l.recv_buffer_bytes = rl.recv_buffer_bytes;
    l.shard_queue = rl.shard_queue;
    l.api_nonces_per_app = rl.api_nonces_per_app;
    l.device_send_buffer_bytes = rl.device_send_buffer_bytes;
    let (d, rd) = (&mut next.delivery, &r.delivery);
    d.inflight_window = rd.inflight_window;
    d.max_pending_per_device = rd.max_pending_per_device;
    // The recall index and statistics keep entries for the longest TTL and
    // the recall window they were sized with.
    d.max_ttl_secs = rd.max_ttl_secs;
    d.recall_window_secs = rd.recall_window_secs;
    d.status_retention_secs = rd.status_retention_secs;
    d.max_final_statuses_per_shard = rd.max_final_statuses_per_shard;
    d.max_shared_messages_per_shard = rd.max_shared_messages_per_shard;
    d.max_revokes_per_device = rd.max_revokes_per_device;
    d.max_recall_index_per_shard = rd.max_recall_index_per_shard;
    let mut kept = changed_keys(loaded, &next);
    for app in &mut next.apps {
        // Receipt queues and the template and tag stores are made per app
        // at start.
        let before = r.apps.iter().find(|b| b.app_id == app.app_id);
        let restart_only = |a: &App| {
            (
                a.receipt_url.clone(),
                a.max_templates,
                a.max_tags,
                a.max_tag_users,
            )
        };
        let wanted = restart_only(app);
        let kept_values = match before {
            Some(b) => restart_only(b),
            None => (None, app.max_templates, app.max_tags, app.max_tag_users),
        };
        if wanted != kept_values {
            kept.push(format!(
                "apps[{}]: receiptUrl, maxTemplates, maxTags, maxTagUsers",
                app.app_id
            ));
            (
                app.receipt_url,
                app.max_templates,
                app.max_tags,
                app.max_tag_users,
            ) = kept_values;
        }
    }
    (next, kept)
}

/// Dotted names of the keys outside `[[apps]]` whose values differ.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let table = |c: &Config| {
        let mut value = toml::Value::try_from(c).expect("a config serializes");
        if let toml::Value::Table(t) = &mut value {
            t.remove("apps");
        }
        value
    };
    let mut out = Vec::new();
    diff("", &table(a), &table(b), &mut out);
    out
}

fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (x.get(key), y.get(key)) {
                    (Some(v), Some(w)) => diff(&name, v, w, out),
                    _ => out.push(name),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Apps added, removed and changed (any key, secrets included) from
/// `before` to `after`, by id.
fn app_changes(before: &[App], after: &[App]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let find = |apps: &[App], id: &str| apps.iter().find(|a| a.app_id == id).cloned();
    let added = after
        .iter()
        .filter(|a| find(before, &a.app_id).is_none())
        .map(|a| a.app_id.clone())
        .collect();
    let removed = before
        .iter()
        .filter(|a| find(after, &a.app_id).is_none())
        .map(|a| a.app_id.clone())
        .collect();
    let changed = after
        .iter()
        .filter(|a| find(before, &a.app_id).is_some_and(|b| b != **a))
        .map(|a| a.app_id.clone())
        .collect();
    (added, removed, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\napiSecret = \"0123456789abcdef\"\n";

    fn config(text: &str) -> Config {
        Config::from_toml(&format!("{text}\n{APP}")).unwrap()
    }

    #[test]
    fn live_keys_change_and_the_others_keep_their_running_value() {
        let running = config("");
        let loaded = config(
            "shards = 7\n[listen]\napi = \"127.0.0.1:1\"\n[delivery]\nheartbeat_secs = 20\n\
             inflight_window = 16\n[limits]\nmax_connections_per_shard = 10\n\
             [admission]\nmax_connections_per_address = 5\nipv6_prefix_len = 48\n\
             [http]\nbody_timeout_ms = 500\nheader_timeout_ms = 500\n",
        );
        let (next, kept) = merge_live(&running, &loaded, false);
        assert_eq!(next.delivery.heartbeat_secs, 20);
        assert_eq!(next.limits.max_connections_per_shard, 10);
        assert_eq!(next.shards, running.shards);
        assert_eq!(next.listen, running.listen);
        assert_eq!(next.delivery.inflight_window, running.delivery.inflight_window);
        assert_eq!(
            kept,
            [
                "admission.ipv6_prefix_len",
                "delivery.inflight_window",
                "http.header_timeout_ms",
                "listen.api",
                "shards"
            ]
        );
        assert_eq!(
            changed_keys(&running, &next),
            [
                "admission.max_connections_per_address",
                "delivery.heartbeat_secs",
                "http.body_timeout_ms",
                "limits.max_connections_per_shard"
            ]
        );
    }

    #[test]
    fn apps_change_live_except_what_was_sized_at_start() {
        let running = config("");
        let text =
            "[receipts]\nsigning_key_file = \"/k.pem\"\n[[apps]]\nappId = \"a\"\nworkspaceId = \"w\"\n\
                    apiSecret = \"fedcba9876543210\"\nmaxTags = 5\n\
                    [[apps]]\nappId = \"b\"\nworkspaceId = \"w\"\nallowUnsigned = true\n\
                    receiptUrl = \"https://b.example/r\"\n";
        let loaded = Config::from_toml(text).unwrap();
        let (next, kept) = merge_live(&running, &loaded, false);
        assert_eq!(next.apps.len(), 2);
        assert_eq!(next.apps[0].api_secret, loaded.apps[0].api_secret);
        assert_eq!(next.apps[0].max_tags, running.apps[0].max_tags);
        assert_eq!(next.apps[1].receipt_url, None);
        assert!(
            kept.contains(&"receipts.signing_key_file".to_string()),
            "{kept:?}"
        );
        assert_eq!(
            kept.iter().filter(|k| k.starts_with("apps[")).count(),
            2,
            "{kept:?}"
        );
        let (added, removed, changed) = app_changes(&running.apps, &next.apps);
        assert_eq!(
            (added, removed, changed),
            (vec!["b".into()], vec![], vec!["a".into()])
        );
    }

    #[test]
    fn tls_files_change_live_only_when_the_listener_runs() {
        let running = config("");
        let loaded = config("[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n");
        assert_eq!(merge_live(&running, &loaded, true).0.tls, loaded.tls);
        let (next, kept) = merge_live(&running, &loaded, false);
        assert_eq!(next.tls, running.tls);
        assert_eq!(kept, ["tls.cert_file", "tls.key_file"]);
    }
}
