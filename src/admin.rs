//! Admin endpoints for operators and orchestrators: `/metrics` (Prometheus
//! text), `/healthz` (the process answers) and `/readyz` (listeners bound,
//! accepting work). Also installs the global metrics recorder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::StorageHealth;

/// Buckets for every `_seconds` histogram: 50 µs to 10 s, dense where push
/// latencies live (sub-millisecond to tens of milliseconds).
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Installs the process-wide recorder. Histograms are exported as
/// Prometheus histograms (not summaries) so they aggregate across shards
/// and instances.
pub fn install_metrics() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
        .install_recorder()
        .expect("the metrics recorder is installed once, at start");
    let upkeep = handle.clone();
    // The exporter needs periodic upkeep to drain histogram buffers.
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .expect("spawn the metrics upkeep thread");
    handle
}

/// Every endpoint the admin listener serves (each a `GET`), and the only
/// source of its router; `tests/openapi_contract.rs` checks them against
/// `docs/openapi.yaml`.
pub const ROUTES: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// `/readyz` is ready once recovery is done and the listeners are bound, and
/// not ready again after a log failure (the node accepts no pushes then).
pub fn router(ready: Arc<AtomicBool>, storage: Arc<StorageHealth>, prometheus: PrometheusHandle) -> Router {
    ROUTES.iter().fold(Router::new(), |router, &path| {
        let handler = match path {
            "/metrics" => {
                let prometheus = prometheus.clone();
                get(move || std::future::ready(prometheus.render()))
            }
            "/healthz" => get(|| std::future::ready("ok\n")),
            "/readyz" => {
                let (ready, storage) = (ready.clone(), storage.clone());
                get(move || {
                    let answer = if storage.is_failed() {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the message log failed\n",
                        )
                    } else if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    };
                    std::future::ready(answer)
                })
            }
            other => unreachable!("admin route {other} has no handler"),
        };
        router.route(path, handler)
    })
}
