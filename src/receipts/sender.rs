//! The receipt sender: its own thread and tokio runtime, one worker per app
//! with a `receiptUrl`, posting what the shards queued. Each app has its own
//! queue and at most `concurrency_per_app` receipts posting or waiting to
//! retry, so a slow or dead receiver fills only its own app's queue. One
//! HTTP client for all apps: rustls with the ring provider, public roots
//! plus `ca_file`, keep-alive connections reused per host. A stopping
//! daemon posts for `shutdown_grace_ms`, then saves what is left in the
//! outbox file, which the next start posts first.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use metrics::{Counter, Histogram};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{
    dropped_counter, outbox, AppReceiver, Attempt, Queued, Receipt, ReceiptQueue, RetryPolicy, Signer,
    Verdict,
};
use crate::config::Config;

/// Bytes of a receiver's response body read (and discarded) so that the
/// connection can be reused; a longer body closes it instead.
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// The running sender; `stop` after the shards stopped.
pub struct ReceiptSender {
    stop: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

/// A sender ready to start: its key loaded, its client built, its queues
/// taking receipts (which wait there until `start`).
pub struct Prepared {
    shared: Arc<Shared>,
    apps: Vec<(reqwest::Url, AppReceiver)>,
    runtime: tokio::runtime::Runtime,
    grace: Duration,
    max_age: Duration,
}

/// Loads the signing key and builds the client and the queues, when some app
/// has a `receiptUrl`. The queue goes to the shards; `Prepared::start` once
/// the data directory is locked.
pub fn prepare(config: &Config) -> anyhow::Result<Option<(ReceiptQueue, Prepared)>> {
    let Some((queue, receivers)) = super::queues(config) else {
        return Ok(None);
    };
    let r = &config.receipts;
    let key_file = r
        .signing_key_file
        .as_ref()
        .context("receipts.signing_key_file is not set")?;
    let signer = Arc::new(Signer::load(key_file)?);
    let client = client(config)?;
    let mut apps = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        let url = reqwest::Url::parse(&receiver.url)
            .with_context(|| format!("apps: appId {:?}: receiptUrl {:?}", receiver.app, receiver.url))?;
        apps.push((url, receiver));
    }
    let shared = Arc::new(Shared {
        client,
        signer,
        policy: r.retry_policy(),
        concurrency: r.concurrency_per_app,
        batch_max: r.batch_max,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(r.sender_threads)
        .thread_name("receipts")
        .enable_all()
        .build()
        .context("building the receipt sender's runtime")?;
    Ok(Some((
        queue,
        Prepared {
            shared,
            apps,
            runtime,
            grace: Duration::from_millis(r.shutdown_grace_ms),
            max_age: Duration::from_secs(r.max_age_secs),
        },
    )))
}

impl Prepared {
    /// Queues what the last orderly stop saved in `data_dir` (ahead of
    /// anything new; too old ones are dropped and counted), then starts the
    /// sender thread. Call with the data directory's LOCK held.
    pub fn start(self, data_dir: &Path) -> anyhow::Result<ReceiptSender> {
        let saved = outbox::load(data_dir)?;
        let now_ms = crate::message::unix_ms();
        let now = Instant::now();
        let mut backlogs: Vec<Vec<Queued>> = self.apps.iter().map(|_| Vec::new()).collect();
        let mut dropped = 0;
        for receipt in saved {
            let age = Duration::from_millis(now_ms.saturating_sub(receipt.acked_at_ms));
            let Some(i) = self.apps.iter().position(|(_, r)| r.app == receipt.app) else {
                // The app has no receiptUrl any more.
                dropped += 1;
                continue;
            };
            if age >= self.max_age {
                dropped_counter(&receipt.app, "expired").increment(1);
                dropped += 1;
                continue;
            }
            self.apps[i].1.outstanding.add();
            backlogs[i].push(Queued {
                receipt,
                queued_at: now.checked_sub(age).unwrap_or(now),
            });
        }
        let resumed: usize = backlogs.iter().map(Vec::len).sum();
        if resumed + dropped > 0 {
            info!(resumed, dropped, "receipts saved by the last stop");
        }
        let (stop, stopping) = watch::channel(false);
        let data_dir = data_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("receipts".into())
            .spawn(move || run(self, backlogs, stopping, &data_dir))
            .context("spawning the receipt sender thread")?;
        Ok(ReceiptSender { stop, thread })
    }
}

impl ReceiptSender {
    /// Posts what is queued for at most `shutdown_grace_ms`, then saves the
    /// rest for the next start (if that fails they are dropped and counted,
    /// `reason="shutdown"`). Call once every shard (and with it every
    /// `ReceiptQueue`) is gone, so the queues can end.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        if self.thread.join().is_err() {
            warn!("the receipt sender thread panicked");
        }
    }
}

struct Shared {
    client: reqwest::Client,
    signer: Arc<Signer>,
    policy: RetryPolicy,
    concurrency: usize,
    batch_max: usize,
}

fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let r = &config.receipts;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &r.ca_file {
        let context = || format!("receipts.ca_file {}", path.display());
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(context)?
            .collect::<Result<Vec<_>, _>>()
            .with_context(context)?;
        if certs.is_empty() {
            anyhow::bail!("{} holds no \"BEGIN CERTIFICATE\" PEM block", context());
        }
        for cert in certs {
            roots.add(cert).with_context(context)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("the receipt client's TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_millis(r.connect_timeout_ms))
        .timeout(Duration::from_millis(r.request_timeout_ms))
        // A receipt goes where the app said, not where a redirect points.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(r.concurrency_per_app)
        .user_agent(concat!("ringpush/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the receipt HTTP client")
}

fn run(prepared: Prepared, backlogs: Vec<Vec<Queued>>, mut stopping: watch::Receiver<bool>, data_dir: &Path) {
    let Prepared {
        shared,
        apps,
        runtime,
        grace,
        ..
    } = prepared;
    let (abandon, abandoned_rx) = watch::channel(false);
    let left = runtime.block_on(async move {
        let mut workers = JoinSet::new();
        for ((url, receiver), backlog) in apps.into_iter().zip(backlogs) {
            workers.spawn(app_worker(
                shared.clone(),
                url,
                receiver,
                backlog,
                abandoned_rx.clone(),
            ));
        }
        let deadline = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(deadline);
        let mut left = Vec::new();
        let mut abandoning = false;
        loop {
            tokio::select! {
                joined = workers.join_next() => match joined {
                    Some(Ok(receipts)) => left.extend(receipts),
                    Some(Err(e)) => warn!(error = %e, "a receipt worker failed"),
                    None => break,
                },
                () = &mut deadline, if !abandoning => {
                    abandoning = true;
                    let _ = abandon.send(true);
                }
            }
        }
        left
    });
    // Cancels what is left; a DNS lookup on a blocking thread is not
    // waited for beyond a second.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outbox::save(data_dir, &left) {
        Ok(()) if left.is_empty() => {}
        Ok(()) => info!(
            receipts = left.len(),
            file = %outbox::path(data_dir).display(),
            "receipts not delivered before the stop are saved for the next start"
        ),
        Err(e) => {
            warn!(error = %format!("{e:#}"), receipts = left.len(), "could not save the undelivered receipts; they are dropped");
            for r in &left {
                dropped_counter(&r.app, "shutdown").increment(1);
            }
        }
    }
    info!("receipt sender stopped");
}

/// Resolves once the sender gives up on what is in progress (the stop's
/// grace is over).
async fn abandoned(mut abandon: watch::Receiver<bool>) {
    let _ = abandon.wait_for(|a| *a).await;
}

struct AppMetrics {
    ok: Counter,
    rejected: Counter,
    failed: Counter,
    retries: Counter,
    dropped_rejected: Counter,
    dropped_expired: Counter,
    latency: Histogram,
    /// Drops are logged at most once per `DROP_LOG_INTERVAL` per app: a
    /// wrong URL would otherwise log every receipt.
    last_drop_log: parking_lot::Mutex<Option<Instant>>,
}

const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl AppMetrics {
    fn new(app: &str) -> Self {
        let sent = |result: &'static str| metrics::counter!("ringpush_receipts_sent_total", "app" => app.to_string(), "result" => result);
        Self {
            ok: sent("ok"),
            rejected: sent("rejected"),
            failed: sent("retry"),
            retries: metrics::counter!("ringpush_receipt_retries_total", "app" => app.to_string()),
            dropped_rejected: dropped_counter(app, "rejected"),
            dropped_expired: dropped_counter(app, "expired"),
            latency: metrics::histogram!("ringpush_receipt_send_seconds", "app" => app.to_string()),
            last_drop_log: parking_lot::Mutex::new(None),
        }
    }

    /// Whether a drop may be logged now (the metric counts every one).
    fn may_log_drop(&self) -> bool {
        let mut last = self.last_drop_log.lock();
        let now = Instant::now();
        if last.is_some_and(|at| now < at + DROP_LOG_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Takes an app's receipts (first `backlog`, then its queue) while fewer
/// than `concurrency_per_app` POSTs are in progress, up to `batch_max` a
/// POST (what is queued at that moment; a batch never waits to fill). Ends
/// when the queue has closed (every shard stopped) and all are done, or
/// when abandoned: then it answers what was not delivered.
async fn app_worker(
    shared: Arc<Shared>,
    url: reqwest::Url,
    mut receiver: AppReceiver,
    backlog: Vec<Queued>,
    abandon: watch::Receiver<bool>,
) -> Vec<Receipt> {
    let permits = Arc::new(Semaphore::new(shared.concurrency));
    let metrics = Arc::new(AppMetrics::new(&receiver.app));
    let url = Arc::new(url);
    let mut backlog = backlog.into_iter();
    let mut posting = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = abandoned(abandon.clone()) => break,
        };
        let first = match backlog.next() {
            Some(queued) => queued,
            None => tokio::select! {
                queued = receiver.rx.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
                () = abandoned(abandon.clone()) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < shared.batch_max {
            match backlog.next().or_else(|| receiver.rx.try_recv().ok()) {
                Some(queued) => batch.push(queued),
                None => break,
            }
        }
        let (shared, url, metrics, outstanding, abandon) = (
            shared.clone(),
            url.clone(),
            metrics.clone(),
            receiver.outstanding.clone(),
            abandon.clone(),
        );
        posting.spawn(async move {
            let n = batch.len();
            let left = deliver(&shared, &url, &metrics, batch, abandon).await;
            for _ in 0..n {
                outstanding.done();
            }
            drop(permit);
            left
        });
        while posting.try_join_next().is_some() {}
    }
    let mut left: Vec<Receipt> = backlog.map(|q| q.receipt).collect();
    if *abandon.borrow() {
        receiver.rx.close();
        while let Ok(queued) = receiver.rx.try_recv() {
            left.push(queued.receipt);
        }
    }
    // Those never handed to `deliver` leave the gauge here.
    for _ in 0..left.len() {
        receiver.outstanding.done();
    }
    while let Some(done) = posting.join_next().await {
        if let Ok(receipts) = done {
            left.extend(receipts);
        }
    }
    left
}

/// Posts one receipt (or with `batch_max` > 1, an array of them: one
/// signature for all) until it is delivered, rejected or too old; gives
/// them back if abandoned first.
async fn deliver(
    shared: &Shared,
    url: &reqwest::Url,
    metrics: &AppMetrics,
    batch: Vec<Queued>,
    abandon: watch::Receiver<bool>,
) -> Vec<Receipt> {
    let n = batch.len() as u64;
    let receipts: Vec<Receipt> = batch.iter().map(|q| q.receipt.clone()).collect();
    let body = Bytes::from(if shared.batch_max > 1 {
        super::batch_body(&receipts)
    } else {
        receipts[0].body()
    });
    let sign = shared.signer.sign(&body);
    // The oldest decides when retrying stops.
    let queued_at = batch
        .iter()
        .map(|q| q.queued_at)
        .min()
        .expect("a batch is never empty");
    let first = &receipts[0];
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let started = Instant::now();
        // A POST cut off here may have reached the receiver: it gets the
        // receipt again after the restart (at least once).
        let attempt = tokio::select! {
            attempt = post(&shared.client, url, &sign, body.clone()) => attempt,
            () = abandoned(abandon.clone()) => return receipts,
        };
        metrics.latency.record(started.elapsed().as_secs_f64());
        let random = getrandom::u64().unwrap_or(u64::from(attempts));
        let verdict = shared
            .policy
            .verdict(attempt, attempts, queued_at.elapsed(), random);
        match verdict {
            Verdict::Delivered => {
                metrics.ok.increment(n);
                return Vec::new();
            }
            Verdict::Rejected => {
                metrics.rejected.increment(n);
                metrics.dropped_rejected.increment(n);
                if metrics.may_log_drop() {
                    warn!(app = %first.app, msg_key = %first.msg_key, receipts = n, ?attempt, "the receipt URL rejected a receipt; dropped (further drops of this app for 10 s are only counted in ringpush_receipts_dropped_total)");
                }
                return Vec::new();
            }
            Verdict::Retry(delay) => {
                metrics.failed.increment(n);
                metrics.retries.increment(n);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = abandoned(abandon.clone()) => return receipts,
                }
            }
            Verdict::Expired => {
                metrics.failed.increment(n);
                metrics.dropped_expired.increment(n);
                if metrics.may_log_drop() {
                    warn!(app = %first.app, msg_key = %first.msg_key, receipts = n, attempts, ?attempt, "a receipt reached receipts.max_age_secs undelivered; dropped (further drops of this app for 10 s are only counted in ringpush_receipts_dropped_total)");
                }
                return Vec::new();
            }
        }
    }
}

async fn post(client: &reqwest::Client, url: &reqwest::Url, sign: &str, body: Bytes) -> Attempt {
    let sent = client
        .post(url.clone())
        .query(&[("sign", sign)])
        .header(reqwest::header::CONTENT_TYPE, "application/json;charset=UTF-8")
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(_) => return Attempt::Failed,
    };
    let status = response.status().as_u16();
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_RESPONSE_BYTES {
            break;
        }
    }
    Attempt::Status(status)
}
