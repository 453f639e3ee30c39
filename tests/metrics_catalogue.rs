//! The metrics catalogue cannot drift from the code. Three views of "the
//! metrics ringpush exports" must agree:
//!
//! - the daemon's own list, `ringpush::admin::metric_catalogue()` (what
//!   `describe_metrics` describes: names, types and help text);
//! - `docs/metrics.md`, whose table rows name each metric and its type;
//! - what a real daemon renders on `/metrics` after it has done some work
//!   (a device connects, gets a push, acks it), on both I/O backends: every
//!   rendered metric must be in the catalogue with the same type and have
//!   its `# HELP` line (the exporter prints HELP only for described names).
//!
//! The last view cannot see metrics of rare events (an fsync error), which
//! the exporter renders only once they happen; for those, every described
//! name must also appear in the source outside its description, i.e. some
//! code emits it, and every `"ringpush_..."` string in the source must be
//! described.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use common::*;
use ringpush::admin::{metric_catalogue, MetricKind};

/// `docs/metrics.md` rows: `| \`name\` | type | labels | meaning |`.
fn documented() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md")).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| c.starts_with("ringpush_"))
        else {
            continue;
        };
        let kind = cells.get(2).copied().unwrap_or_default().to_string();
        assert!(
            rows.insert(name.to_string(), kind).is_none(),
            "docs/metrics.md lists {name} twice"
        );
    }
    rows
}

#[test]
fn docs_list_exactly_the_described_metrics() {
    let described: BTreeMap<String, String> = metric_catalogue()
        .into_iter()
        .map(|m| (m.name, m.kind.as_str().to_string()))
        .collect();
    let documented = documented();
    let missing: Vec<_> = described
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    let stale: Vec<_> = documented
        .keys()
        .filter(|n| !described.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "described but not in docs/metrics.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/metrics.md but not described: {stale:?}"
    );
    for (name, kind) in &described {
        assert_eq!(
            &documented[name], kind,
            "docs/metrics.md gives {name} the wrong type"
        );
    }
}

/// Every `"ringpush_..."` string literal in `src/`, with its count.
fn names_in_source() -> BTreeMap<String, usize> {
    fn walk(dir: &Path, found: &mut BTreeMap<String, usize>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for quoted in text.split('"').skip(1).step_by(2) {
                    // A prefix ("ringpush_") is not a name.
                    let is_name = quoted.starts_with("ringpush_")
                        && !quoted.ends_with('_')
                        && quoted
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if is_name {
                        *found.entry(quoted.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
    found
}

#[test]
fn source_emits_exactly_the_described_metrics() {
    let described: BTreeSet<String> = metric_catalogue().into_iter().map(|m| m.name).collect();
    let in_source = names_in_source();
    let undescribed: Vec<_> = in_source.keys().filter(|n| !described.contains(*n)).collect();
    assert!(
        undescribed.is_empty(),
        "emitted but never described (add them to a describe_metrics): {undescribed:?}"
    );
    // Described once; a second mention is the code that emits it.
    let never_emitted: Vec<_> = described
        .iter()
        .filter(|n| in_source.get(*n).copied().unwrap_or(0) < 2)
        .collect();
    assert!(
        never_emitted.is_empty(),
        "described but never emitted: {never_emitted:?}"
    );
}

/// `# TYPE name kind` and `# HELP name ...` lines of a scrape.
fn rendered(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut types = BTreeMap::new();
    let mut helped = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                types.insert(name.to_string(), kind.to_string());
            }
            (Some("#"), Some("HELP"), Some(name), _) => {
                helped.insert(name.to_string());
            }
            _ => {}
        }
    }
    (types, helped)
}

#[test]
fn a_working_daemon_renders_only_catalogued_metrics() {
    let catalogue: BTreeMap<String, MetricKind> =
        metric_catalogue().into_iter().map(|m| (m.name, m.kind)).collect();
    for backend in BACKENDS {
        let d = Daemon::start(backend, "");
        let mut dev = d.device("");
        let (code, json) = d.push(&dev.token, "m1", 300);
        assert_eq!(code, 200, "{json}");
        let push = dev.recv_push();
        dev.ack(&[push.id]);
        d.wait_status(&dev.token, "m1", 2);
        // The shard records the ack's latency as it handles the Ack; the
        // status query above went through the same shard afterwards, but
        // poll anyway rather than rely on that ordering.
        let deadline = Instant::now() + PATIENCE;
        let text = loop {
            let text = d.metrics();
            if text.contains("ringpush_ack_latency_seconds_bucket") {
                break text;
            }
            assert!(Instant::now() < deadline, "no ack latency after an ack:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let (types, helped) = rendered(&text);
        for (name, kind) in &types {
            let Some(described) = catalogue.get(name) else {
                panic!("{backend}: /metrics renders {name} ({kind}), which is not in the catalogue");
            };
            // Histograms without buckets (only `_seconds` ones have them)
            // are rendered as summaries.
            let expected = match described {
                MetricKind::Histogram if !name.ends_with("_seconds") => "summary",
                other => other.as_str(),
            };
            assert_eq!(kind, expected, "{backend}: {name}");
            assert!(helped.contains(name), "{backend}: {name} has no # HELP");
        }
        for core in [
            "ringpush_io_backend",
            "ringpush_connections",
            "ringpush_messages_accepted_total",
            "ringpush_messages_delivered_total",
            "ringpush_messages_acked_total",
            "ringpush_messages_pending",
            "ringpush_ack_latency_seconds",
            "ringpush_api_to_device_seconds",
            "ringpush_api_requests_total",
            "ringpush_process_resident_memory_bytes",
            "ringpush_process_max_fds",
            "ringpush_process_memory_limit_bytes",
        ] {
            assert!(
                types.contains_key(core),
                "{backend}: {core} not rendered:\n{text}"
            );
        }
        let backend_line = format!("ringpush_io_backend{{backend=\"{}\"}} 1", d.backend);
        assert!(text.contains(&backend_line), "{backend}: no {backend_line}");
    }
}
