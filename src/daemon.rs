//! Process lifecycle: logging, starting the shards, the push API and the
//! admin endpoints in order, announcing readiness, an orderly stop on
//! SIGTERM or SIGINT (devices get GoAway with a jittered retry-after), and
//! `reload` on SIGHUP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::config::Config;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    let prometheus = crate::admin::install_metrics();
    crate::admin::describe_metrics();
    // Before the shards: a bad signing key stops the start before any log
    // is opened, and the queues exist before the first ack.
    let (receipt_queue, receipts) = match crate::receipts::sender::prepare(&config)? {
        Some((queue, prepared)) => (Some(queue), Some(prepared)),
        None => (None, None),
    };
    // Before the shards: an unreadable certificate stops the start.
    let tls = load_tls(&config)?;
    let shards = crate::shard::start(&config, receipt_queue, tls.clone()).context("starting shards")?;
    // After the shards: the data directory's LOCK is held, so the outbox
    // file of the last stop is this daemon's to read.
    let receipts = match receipts.map(|r| r.start(&config.durability.data_dir)).transpose() {
        Ok(sender) => sender,
        Err(e) => {
            shards.stop();
            return Err(e.context("starting the receipt sender"));
        }
    };
    // After the shards: the data directory's LOCK is held by then.
    let templates = match crate::templates::TemplateStore::open(&config) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            shards.stop();
            return Err(e.context("loading the templates"));
        }
    };
    let tags = match crate::tags::TagStore::open(&config) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            shards.stop();
            return Err(e.context("loading the tags"));
        }
    };
    let ready = Arc::new(AtomicBool::new(false));
    let api = crate::api::serve(&config, &shards, templates, tags, ready.clone(), prometheus)
        .context("starting the HTTP servers")?;
    // Before "ready": a SIGTERM sent as soon as the line is read must stop
    // the daemon cleanly, not kill it with the default action.
    let mut signals = Signals::install()?;
    ready.store(true, Ordering::SeqCst);
    // The integration tests and operators' scripts read this line; keep its
    // shape.
    let show = |addr: Option<std::net::SocketAddr>| addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    println!(
        "ringpush ready: device={} api={} admin={} backend={} shards={} device_tls={}",
        show(shards.local_device_addr()),
        api.api_addr(),
        api.admin_addr(),
        shards.backend().as_str(),
        shards.count(),
        show(shards.local_device_tls_addr()),
    );
    info!(
        device = %show(shards.local_device_addr()),
        device_tls = %show(shards.local_device_tls_addr()),
        api = %api.api_addr(),
        admin = %api.admin_addr(),
        backend = shards.backend().as_str(),
        "ringpush ready"
    );
    while signals.wait() == Signal::Reload {
        reload(&config, tls.as_deref());
    }
    info!("stopping: refusing new work, sending GoAway to devices");
    ready.store(false, Ordering::SeqCst);
    api.stop();
    shards.stop();
    // After the shards: their last commits may still hand over receipts.
    if let Some(receipts) = receipts {
        receipts.stop();
    }
    info!("stopped");
    Ok(())
}

/// The TLS configuration the TLS listener starts with; `None` when no
/// certificate is configured or `listen.device_tls_enabled` is off.
fn load_tls(config: &Config) -> anyhow::Result<Option<Arc<crate::tls::SharedTlsConfig>>> {
    if !config.listen.device_tls_enabled {
        return Ok(None);
    }
    let resumption =
        crate::tls::Resumption::new(config.tls.tickets_per_handshake, config.tls.session_cache_size)?;
    let loaded = crate::tls::TlsConfig::load(config, &resumption).context("loading the TLS certificate")?;
    Ok(loaded.map(|tls| Arc::new(crate::tls::SharedTlsConfig::new(tls, resumption))))
}

/// SIGHUP: re-reads what can change without a restart. Today the TLS
/// certificate, key and the apps' client CAs: connections accepted from
/// now on use the new files, open sessions keep theirs. A file that does
/// not load keeps the running configuration and logs why.
pub fn reload(config: &Config, tls: Option<&crate::tls::SharedTlsConfig>) {
    let Some(tls) = tls else {
        info!("SIGHUP: nothing to reload (TLS is off)");
        return;
    };
    match tls.reload(config) {
        Ok(()) => {
            metrics::counter!("ringpush_tls_reloads_total", "result" => "ok").increment(1);
            info!("SIGHUP: reloaded the TLS certificate, key and client CAs");
        }
        Err(e) => {
            metrics::counter!("ringpush_tls_reloads_total", "result" => "failed").increment(1);
            tracing::error!(error = %e, "SIGHUP: TLS reload failed; the running certificate stays");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload) handlers, installed
/// before the daemon says it is ready.
struct Signals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Creating the streams installs the handlers; they need a runtime.
        let (term, int, hup) = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })?;
        Ok(Self {
            runtime,
            term,
            int,
            hup,
        })
    }

    fn wait(&mut self) -> Signal {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM"); Signal::Stop }
                _ = self.int.recv() => { info!("SIGINT"); Signal::Stop }
                _ = self.hup.recv() => { info!("SIGHUP"); Signal::Reload }
            }
        })
    }
}
