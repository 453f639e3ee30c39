//! `config/grafana/ringpush.json` queries only metrics the daemon exports.
//!
//! Every `expr` of every panel (rows nested or not) and every templating
//! query is scanned for `ringpush_` names (`common::promql`), and each must
//! be in the daemon's catalogue, `ringpush::admin::metric_catalogue()`,
//! with the series suffixes its type has (`_bucket` only on bucketed
//! histograms). The catalogue is the described metrics, which
//! `tests/metrics_catalogue.rs` holds equal to what the code emits and a
//! running daemon renders; comparing with it rather than with one scrape
//! also covers the metrics of rare events (an fsync error) that a scrape
//! shows only after they happen. Quantile panels must use
//! `histogram_quantile` over `_bucket` series, the form the exporter's
//! buckets (src/admin.rs) answer.

mod common;

use std::path::Path;

use common::promql::{check_expr, exported, metric_names, not_exported};
use serde_json::Value;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/ringpush.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// (where, expr) for every query of the dashboard.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            found.push((format!("panel {:?}", panel["title"]), expr.to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["definition"].as_str());
        if let Some(query) = query {
            found.push((format!("variable {:?}", variable["name"]), query.to_string()));
        }
    }
    found
}

#[test]
fn every_query_names_exported_metrics() {
    let dashboard = dashboard();
    let exported = exported();
    let queries = queries(&dashboard);
    assert!(queries.len() > 30, "only {} queries", queries.len());
    let mut problems = Vec::new();
    for (place, expr) in &queries {
        assert!(!expr.trim().is_empty(), "{place}: empty query");
        if metric_names(expr).is_empty() {
            problems.push(format!("{place}: names no ringpush_ metric: {expr}"));
        }
        problems.extend(
            check_expr(expr, &exported)
                .into_iter()
                .map(|p| format!("{place}: {p}")),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_panels_the_issue_asks_for_are_there() {
    let dashboard = dashboard();
    let all: String = queries(&dashboard).into_iter().map(|(_, e)| e + "\n").collect();
    for metric in [
        "ringpush_connections",
        "ringpush_connections_closed_total",
        "ringpush_accepts_total",
        "ringpush_messages_delivered_total",
        "ringpush_messages_acked_total",
        "ringpush_ack_latency_seconds_bucket",
        "ringpush_api_to_device_seconds_bucket",
        "ringpush_messages_pending",
        "ringpush_messages_expired_total",
        "ringpush_log_fsync_seconds_bucket",
        "ringpush_sessions",
        "ringpush_io_backend",
    ] {
        assert!(all.contains(metric), "no panel queries {metric}");
    }
    // Quantiles come from buckets, never from a summary's fixed quantiles.
    for (place, expr) in queries(&dashboard) {
        if expr.contains("histogram_quantile") {
            assert!(expr.contains("_bucket") && expr.contains("le"), "{place}: {expr}");
        }
    }
}

#[test]
fn the_data_source_is_a_variable() {
    let dashboard = dashboard();
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{:?}",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{:?}",
                panel["title"]
            );
        }
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"));
}

#[test]
fn names_are_found_and_resolved() {
    let exported = exported();
    let expr = "histogram_quantile(0.99, sum by (le) (rate(ringpush_ack_latency_seconds_bucket[5m]))) \
                / sum(ringpush_connections{backend=\"uring\"}) + not_ringpush_x";
    assert_eq!(
        metric_names(expr),
        ["ringpush_ack_latency_seconds_bucket", "ringpush_connections"]
    );
    assert!(check_expr(expr, &exported).is_empty());
    assert!(not_exported("ringpush_nope_total", &exported).is_some());
    assert!(not_exported("ringpush_connections_bucket", &exported).is_some());
    assert!(not_exported("ringpush_ack_latency_seconds", &exported).is_some());
    assert!(not_exported("ringpush_log_records_per_fsync_bucket", &exported).is_some());
    assert!(not_exported("ringpush_log_records_per_fsync_sum", &exported).is_none());
}
