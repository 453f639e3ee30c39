//! Process lifecycle: logging, starting the shards, the push API and the
//! admin endpoints in order, announcing readiness, and an orderly stop on
//! SIGTERM or SIGINT (devices get GoAway with a jittered retry-after).

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
    crate::delivery::describe_metrics();
    crate::admission::describe_metrics();
    crate::device_auth::describe_metrics();
    crate::store::describe_metrics();
    crate::stats::describe_metrics();
    crate::templates::describe_metrics();
    crate::tags::describe_metrics();
    crate::receipts::describe_metrics();
    // Before the shards: a bad signing key stops the start before any log
    // is opened, and the queues exist before the first ack.
    let (receipt_queue, receipts) = match crate::receipts::sender::prepare(&config)? {
        Some((queue, prepared)) => (Some(queue), Some(prepared)),
        None => (None, None),
    };
    let shards = crate::shard::start(&config, receipt_queue).context("starting shards")?;
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
    let stop_signals = StopSignals::install()?;
    ready.store(true, Ordering::SeqCst);
    // The integration tests and operators' scripts read this line; keep its
    // shape.
    println!(
        "ringpush ready: device={} api={} admin={} backend={} shards={}",
        shards.local_device_addr(),
        api.api_addr(),
        api.admin_addr(),
        shards.backend().as_str(),
        shards.count(),
    );
    info!(
        device = %shards.local_device_addr(),
        api = %api.api_addr(),
        admin = %api.admin_addr(),
        backend = shards.backend().as_str(),
        "ringpush ready"
    );
    stop_signals.wait();
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

/// SIGTERM and SIGINT handlers, installed before the daemon says it is
/// ready.
struct StopSignals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Creating the streams installs the handlers; they need a runtime.
        let (term, int) = runtime.block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        })?;
        Ok(Self { runtime, term, int })
    }

    fn wait(mut self) {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.term.recv() => info!("SIGTERM"),
                _ = self.int.recv() => info!("SIGINT"),
            }
        });
    }
}
