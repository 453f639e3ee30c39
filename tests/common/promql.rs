//! Checks that PromQL written for ringpush (the Grafana dashboard, the
//! alert rules) names only metrics the daemon exports, against the daemon's
//! own list, `ringpush::admin::metric_catalogue()`. The parse is crude on
//! purpose: every identifier that starts with `ringpush_` is a metric name
//! (no label, function or variable of ours starts so), and the suffixes the
//! exporter adds to histograms are stripped by what the metric is.

use std::collections::BTreeMap;

use ringpush::admin::{metric_catalogue, MetricKind};

/// Every `ringpush_` identifier in `expr`, as written.
pub fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("ringpush_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_ident(bytes[start - 1]) {
            names.push(expr[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    names
}

/// The catalogue as name -> kind.
pub fn exported() -> BTreeMap<String, MetricKind> {
    metric_catalogue().into_iter().map(|m| (m.name, m.kind)).collect()
}

/// Why `name` (as written in a query) is not something the daemon exports,
/// or `None` when it is. A histogram is queried through its series:
/// `_bucket` (only for `_seconds` histograms, the ones with buckets; the
/// others are summaries), `_sum` and `_count`; its bare name exists only
/// as a summary's quantile series.
pub fn not_exported(name: &str, exported: &BTreeMap<String, MetricKind>) -> Option<String> {
    if let Some(kind) = exported.get(name) {
        return match kind {
            MetricKind::Histogram if name.ends_with("_seconds") => Some(format!(
                "{name} is a histogram with buckets: query {name}_bucket, _sum or _count"
            )),
            _ => None,
        };
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return match exported.get(base) {
                Some(MetricKind::Histogram) if suffix != "_bucket" || base.ends_with("_seconds") => None,
                Some(MetricKind::Histogram) => Some(format!(
                    "{base} is exported as a summary (no buckets): use its quantile series, _sum or _count"
                )),
                Some(kind) => Some(format!("{base} is a {}, it has no {suffix}", kind.as_str())),
                None => Some(format!("{name}: no metric {base} (nor {name})")),
            };
        }
    }
    Some(format!("{name}: the daemon exports no such metric"))
}

/// Every problem with the metric names of `expr`.
pub fn check_expr(expr: &str, exported: &BTreeMap<String, MetricKind>) -> Vec<String> {
    metric_names(expr)
        .iter()
        .filter_map(|name| not_exported(name, exported))
        .collect()
}
