//! The receipt sender: its own thread and tokio runtime, one worker per app
//! with a `receiptUrl`, posting what the shards queued. Each app has its own
//! queue and at most `concurrency_per_app` receipts posting or waiting to
//! retry, so a slow or dead receiver fills only its own app's queue. One
//! HTTP client for all apps: rustls with the ring provider, public roots
//! plus `ca_file`, keep-alive connections reused per host.

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
    dropped_counter, AppReceiver, Attempt, Outstanding, Queued, ReceiptQueue, RetryPolicy, Signer, Verdict,
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

/// Loads the signing key, builds the client and starts the sender thread,
/// when some app has a `receiptUrl`. The queue goes to the shards.
pub fn start(config: &Config) -> anyhow::Result<Option<(ReceiptQueue, ReceiptSender)>> {
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
    });
    let grace = Duration::from_millis(r.shutdown_grace_ms);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the receipt sender's runtime")?;
    let (stop, stopping) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("receipts".into())
        .spawn(move || run(runtime, shared, apps, stopping, grace))
        .context("spawning the receipt sender thread")?;
    Ok(Some((queue, ReceiptSender { stop, thread })))
}

impl ReceiptSender {
    /// Posts what is queued for at most `shutdown_grace_ms`, then drops the
    /// rest (counted, `reason="shutdown"`). Call once every shard (and with
    /// it every `ReceiptQueue`) is gone, so the queues can end.
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

fn run(
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    apps: Vec<(reqwest::Url, AppReceiver)>,
    mut stopping: watch::Receiver<bool>,
    grace: Duration,
) {
    let counts: Vec<(Arc<str>, Arc<Outstanding>)> = apps
        .iter()
        .map(|(_, r)| (r.app.clone(), r.outstanding.clone()))
        .collect();
    runtime.block_on(async move {
        let mut workers = JoinSet::new();
        for (url, receiver) in apps {
            workers.spawn(app_worker(shared.clone(), url, receiver));
        }
        let finished = async { while workers.join_next().await.is_some() {} };
        let deadline = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = finished => {}
            () = deadline => {}
        }
    });
    // Dropping the runtime cancels whatever still posts or waits.
    drop(runtime);
    for (app, outstanding) in counts {
        let left = outstanding.get();
        if left > 0 {
            warn!(app = %app, receipts = left, "stopping with receipts not delivered; they are dropped");
            dropped_counter(&app, "shutdown").increment(left as u64);
        }
    }
    info!("receipt sender stopped");
}

struct AppMetrics {
    ok: Counter,
    rejected: Counter,
    failed: Counter,
    retries: Counter,
    dropped_rejected: Counter,
    dropped_expired: Counter,
    latency: Histogram,
}

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
        }
    }
}

/// Takes an app's receipts off its queue while fewer than
/// `concurrency_per_app` are in progress; ends when the queue has closed
/// (every shard stopped) and all are done.
async fn app_worker(shared: Arc<Shared>, url: reqwest::Url, mut receiver: AppReceiver) {
    let permits = Arc::new(Semaphore::new(shared.concurrency));
    let metrics = Arc::new(AppMetrics::new(&receiver.app));
    let url = Arc::new(url);
    let mut posting = JoinSet::new();
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(queued) = receiver.rx.recv().await else {
            break;
        };
        let (shared, url, metrics, outstanding) = (
            shared.clone(),
            url.clone(),
            metrics.clone(),
            receiver.outstanding.clone(),
        );
        posting.spawn(async move {
            deliver(&shared, &url, &metrics, queued).await;
            outstanding.done();
            drop(permit);
        });
        while posting.try_join_next().is_some() {}
    }
    while posting.join_next().await.is_some() {}
}

/// Posts one receipt until it is delivered, rejected or too old.
async fn deliver(shared: &Shared, url: &reqwest::Url, metrics: &AppMetrics, queued: Queued) {
    let body = Bytes::from(queued.receipt.body());
    let sign = shared.signer.sign(&body);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let started = Instant::now();
        let attempt = post(&shared.client, url, &sign, body.clone()).await;
        metrics.latency.record(started.elapsed().as_secs_f64());
        let random = getrandom::u64().unwrap_or(u64::from(attempts));
        let verdict = shared
            .policy
            .verdict(attempt, attempts, queued.queued_at.elapsed(), random);
        match verdict {
            Verdict::Delivered => {
                metrics.ok.increment(1);
                return;
            }
            Verdict::Rejected => {
                metrics.rejected.increment(1);
                metrics.dropped_rejected.increment(1);
                warn!(app = %queued.receipt.app, msg_key = %queued.receipt.msg_key, ?attempt, "the receipt URL rejected a receipt; dropped");
                return;
            }
            Verdict::Retry(delay) => {
                metrics.failed.increment(1);
                metrics.retries.increment(1);
                tokio::time::sleep(delay).await;
            }
            Verdict::Expired => {
                metrics.failed.increment(1);
                metrics.dropped_expired.increment(1);
                warn!(app = %queued.receipt.app, msg_key = %queued.receipt.msg_key, attempts, ?attempt, "a receipt reached receipts.max_age_secs undelivered; dropped");
                return;
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
