//! Process lifecycle: logging, starting the shards, the push API and the
//! admin endpoints in order, announcing readiness (the "ringpush ready" line
//! and systemd's READY=1), the watchdog thread, an orderly stop on SIGTERM
//! or SIGINT (STOPPING=1, devices get GoAway with a jittered retry-after,
//! bounded by the drain timeout), and a configuration reload
//! (`reload::Reloader`) on SIGHUP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::config::Config;
use crate::notify::Notifier;

/// Installs the log subscriber: `[log] format` (the environment's
/// `RINGPUSH_LOG_FORMAT` is already in it), human or one JSON object a
/// line, on stderr; `RUST_LOG` wins over `[log] level`. Called once, after
/// the configuration is loaded.
pub fn init_logging(log: &crate::config::Log) {
    use crate::config::LogFormat;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => builder.init(),
        // Fields at the top level, so a collector indexes `conn`, `app`,
        // `msg_id` without unpacking a nested object.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Runs the daemon until SIGTERM or SIGINT; `config_path` is the file
/// SIGHUP re-reads (`None`: the embedded defaults, only TLS reloads).
pub fn run(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let prometheus = crate::admin::install_metrics();
    crate::admin::describe_metrics();
    // First: a NOTIFY_SOCKET that names no socket stops the start at once,
    // rather than after recovery or at systemd's start timeout.
    let notifier = Arc::new(Notifier::from_env().context("NOTIFY_SOCKET")?);
    let drain_timeout = config.delivery.drain_timeout();
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
            shards.stop(drain_timeout);
            return Err(e.context("starting the receipt sender"));
        }
    };
    // After the shards: the data directory's LOCK is held by then.
    let templates = match crate::templates::TemplateStore::open(&config) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            shards.stop(drain_timeout);
            return Err(e.context("loading the templates"));
        }
    };
    let tags = match crate::tags::TagStore::open(&config) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            shards.stop(drain_timeout);
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
    // After every listener is bound and every log replayed, like the line
    // above. The status names the addresses, as the line does, for
    // `systemctl status` (and the tests, which connect on READY=1).
    let admission = shards.admission();
    let (count, backend) = (shards.count(), shards.backend().as_str());
    let status = move || {
        format!(
            "devices connected: {}, shards: {count}, backend: {backend}",
            admission.open()
        )
    };
    notify(
        &notifier,
        &format!(
            "READY=1\nSTATUS={}",
            crate::notify::status_line(&format!(
                "ready: {}; device={} device_tls={} api={} admin={}",
                status(),
                show(shards.local_device_addr()),
                show(shards.local_device_tls_addr()),
                api.api_addr(),
                api.admin_addr(),
            ))
        ),
    );
    let watchdog = crate::watchdog::Watchdog::start(
        notifier.clone(),
        crate::notify::watchdog_interval(),
        shards.heartbeats(),
        shards.handles(),
        Box::new(status),
    )
    .context("starting the watchdog thread")?;
    let mut reloader = crate::reload::Reloader::new(config_path, config.clone(), tls, &api, &shards);
    while signals.wait() == Signal::Reload {
        reloader.reload();
    }
    info!("stopping: refusing new work, sending GoAway to devices");
    // First, so systemd neither restarts a daemon that is stopping on
    // purpose nor kills it at TimeoutStopSec while the drain is within what
    // the configuration allows: the API's grace, the shards' drain and the
    // slack `Shards::stop` allows past it, the receipts' grace, and a
    // second to exit.
    let stop_budget = Duration::from_millis(config.http.shutdown_grace_ms)
        + drain_timeout
        + crate::shard::STOP_SLACK
        + Duration::from_millis(config.receipts.shutdown_grace_ms)
        + Duration::from_secs(1);
    notify(
        &notifier,
        &format!(
            "STOPPING=1\nSTATUS=stopping: draining\nEXTEND_TIMEOUT_USEC={}",
            stop_budget.as_micros()
        ),
    );
    // Before the shards stop: a stopped loop no longer beats.
    if let Some(watchdog) = watchdog {
        watchdog.stop();
    }
    ready.store(false, Ordering::SeqCst);
    api.stop();
    shards.stop(drain_timeout);
    // After the shards: their last commits may still hand over receipts.
    if let Some(receipts) = receipts {
        receipts.stop();
    }
    info!("stopped");
    Ok(())
}

/// Sends a state to systemd; a failure is logged, never fatal (systemd's
/// timeouts are the consequence, and they name the problem).
fn notify(notifier: &Notifier, state: &str) {
    if let Err(e) = notifier.notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
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
