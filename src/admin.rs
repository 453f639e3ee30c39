//! Admin endpoints for operators and orchestrators: `/metrics` (Prometheus
//! text), `/healthz` (the process answers) and `/readyz` (listeners bound,
//! accepting work). Also installs the global metrics recorder and owns the
//! list of every metric the daemon describes (`describe_metrics`,
//! `metric_catalogue`), which `docs/metrics.md` and the dashboards are
//! checked against.

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

/// Describes every metric the daemon exports (the `# HELP` text and type of
/// `/metrics`). The daemon calls it once at start; `metric_catalogue`
/// replays it, so a module's metrics are listed by adding its
/// `describe_metrics` here and nowhere else.
pub fn describe_metrics() {
    crate::delivery::describe_metrics();
    crate::admission::describe_metrics();
    crate::device_auth::describe_metrics();
    crate::store::describe_metrics();
    crate::stats::describe_metrics();
    crate::templates::describe_metrics();
    crate::tags::describe_metrics();
    crate::receipts::describe_metrics();
    crate::tls::describe_metrics();
    crate::api::describe_metrics();
    crate::io::describe_metrics();
    crate::watchdog::describe_metrics();
    crate::reload::describe_metrics();
    metrics::describe_gauge!(
        "ringpush_process_resident_memory_bytes",
        metrics::Unit::Bytes,
        "Resident memory of the daemon (VmRSS), read at each scrape"
    );
    metrics::describe_gauge!(
        "ringpush_process_memory_limit_bytes",
        metrics::Unit::Bytes,
        "The memory the daemon may use, read at each scrape: its cgroup's limit (systemd MemoryMax=) or the host's memory, whichever is less"
    );
    metrics::describe_gauge!(
        "ringpush_process_max_fds",
        "The daemon's open file limit (RLIMIT_NOFILE, systemd's LimitNOFILE), read at each scrape: one per device connection, plus listeners and log files"
    );
}

/// Sets the process gauges from /proc/self, once per scrape: two small
/// reads, no `unsafe`, and no background thread to keep them fresh.
fn record_process_metrics() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kib) = proc_field(&status, "VmRSS:") {
        metrics::gauge!("ringpush_process_resident_memory_bytes").set(kib * 1024.0);
    }
    if let Some(limit) = memory_limit() {
        metrics::gauge!("ringpush_process_memory_limit_bytes").set(limit);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(soft) = proc_field(&limits, "Max open files") {
        metrics::gauge!("ringpush_process_max_fds").set(soft);
    }
}

/// The memory this process may use: its cgroup's limit (systemd's
/// `MemoryMax=`; cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`) when
/// it is below the host's memory, else the host's `MemTotal`.
fn memory_limit() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let host = proc_field(&meminfo, "MemTotal:")? * 1024.0;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cgroup_limit = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let file = match controllers {
            "" => format!("/sys/fs/cgroup{path}/memory.max"),
            "memory" => format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
            _ => return None,
        };
        // "max" (v2) or a huge number (v1) when unlimited; an unreadable
        // file (a cgroup namespace's path) is no limit we can see.
        std::fs::read_to_string(file).ok()?.trim().parse::<f64>().ok()
    });
    Some(cgroup_limit.map_or(host, |limit| limit.min(host)))
}

/// The first number after `label` on the line that starts with it.
fn proc_field(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|line| line.starts_with(label))?;
    line[label.len()..].split_whitespace().next()?.parse().ok()
}

/// How a metric is exported: its Prometheus `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// The word `/metrics` and `docs/metrics.md` use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric as `describe_metrics` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedMetric {
    pub name: String,
    pub kind: MetricKind,
    pub help: String,
}

/// Every metric `describe_metrics` describes, sorted by name. Gathered by a
/// recorder local to this call, so it works before, after or without the
/// process-wide recorder and leaves that one untouched.
pub fn metric_catalogue() -> Vec<DescribedMetric> {
    let catalogue = Catalogue::default();
    metrics::with_local_recorder(&catalogue, describe_metrics);
    let mut described = catalogue.described.into_inner();
    described.sort_by(|a, b| a.name.cmp(&b.name));
    // A module that describes a name twice keeps one entry, as the
    // exporter does (the last description wins there too).
    described.dedup_by(|later, earlier| {
        later.name == earlier.name && {
            *earlier = later.clone();
            true
        }
    });
    described
}

/// A recorder that only writes down descriptions.
#[derive(Default)]
struct Catalogue {
    described: parking_lot::Mutex<Vec<DescribedMetric>>,
}

impl Catalogue {
    fn note(&self, name: metrics::KeyName, kind: MetricKind, help: metrics::SharedString) {
        self.described.lock().push(DescribedMetric {
            name: name.as_str().to_string(),
            kind,
            help: help.to_string(),
        });
    }
}

impl metrics::Recorder for Catalogue {
    fn describe_counter(&self, key: metrics::KeyName, _: Option<metrics::Unit>, help: metrics::SharedString) {
        self.note(key, MetricKind::Counter, help);
    }

    fn describe_gauge(&self, key: metrics::KeyName, _: Option<metrics::Unit>, help: metrics::SharedString) {
        self.note(key, MetricKind::Gauge, help);
    }

    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        _: Option<metrics::Unit>,
        help: metrics::SharedString,
    ) {
        self.note(key, MetricKind::Histogram, help);
    }

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
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
                get(move || {
                    record_process_metrics();
                    std::future::ready(prometheus.render())
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_lists_each_metric_once_with_help() {
        let catalogue = metric_catalogue();
        assert!(catalogue.len() > 50, "{} metrics", catalogue.len());
        for pair in catalogue.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} twice or unsorted", pair[1].name);
        }
        for metric in &catalogue {
            assert!(metric.name.starts_with("ringpush_"), "{}", metric.name);
            assert!(!metric.help.is_empty(), "{} has no help text", metric.name);
            // Prometheus conventions the dashboards and rules rely on.
            let counter = metric.kind == MetricKind::Counter;
            assert_eq!(counter, metric.name.ends_with("_total"), "{}", metric.name);
        }
    }

    #[test]
    fn process_fields_parse() {
        let status = "Name:\tringpush\nVmRSS:\t   12345 kB\n";
        assert_eq!(proc_field(status, "VmRSS:"), Some(12345.0));
        let limits = "Max open files            1048576              1048576              files\n";
        assert_eq!(proc_field(limits, "Max open files"), Some(1048576.0));
        assert_eq!(proc_field(limits, "Max processes"), None);
        // This process's own files have both.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(proc_field(&own, "VmRSS:").is_some_and(|kib| kib > 0.0));
        assert!(memory_limit().is_some_and(|bytes| bytes > 1e6));
    }
}
