//! A real Prometheus (Debian's `prometheus` package) scrapes a real daemon,
//! and `config/prometheus/ringpush-rules.yml` passes `promtool check rules`,
//! loads into that Prometheus and evaluates without error against the
//! daemon's series.
//!
//! Prometheus and promtool are found on PATH. Without them these tests skip
//! with a message saying how to install them, unless
//! `RINGPUSH_REQUIRE_PROMETHEUS=1` (CI sets it: `.ci/run` installs the
//! package), when a missing tool fails the test. The rule expressions are
//! also checked against the daemon's metric list like the dashboard's
//! (`common::promql`), which needs no tool.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::promql::{check_expr, exported};
use common::*;

const RULES: &str = "config/prometheus/ringpush-rules.yml";

fn rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(RULES)
}

/// `tool` on PATH; `None` (the test skips) when it is missing, unless
/// RINGPUSH_REQUIRE_PROMETHEUS=1 says it must be there.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let required = std::env::var("RINGPUSH_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{name} is not on PATH and RINGPUSH_REQUIRE_PROMETHEUS=1: apt-get install prometheus"
        );
        eprintln!("SKIPPED: {name} is not on PATH (apt-get install prometheus to run this test)");
    }
    found
}

#[test]
fn rules_pass_promtool() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let output = Command::new(promtool)
        .args(["check", "rules"])
        .arg(rules_path())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool check rules {RULES}:\n{text}");
}

/// Every `expr` of the rules file.
fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_path()).unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&text).expect("the rules file is YAML");
    let mut exprs = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
            exprs.push((name.to_string(), rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    exprs
}

#[test]
fn rules_name_exported_metrics() {
    let exported = exported();
    let exprs = rule_exprs();
    assert!(exprs.len() >= 10, "{} rules", exprs.len());
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|(alert, expr)| {
            check_expr(expr, &exported)
                .into_iter()
                .map(move |p| format!("{alert}: {p}"))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts `binary` scraping `target` every second, with the rules file.
    /// Prometheus cannot listen on port 0, so the port is one the kernel
    /// just handed out and released; should another process take it first,
    /// Prometheus exits and the next attempt gets another.
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("ringpush-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{:?}]\n\
             scrape_configs:\n  - job_name: ringpush\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules_path().display().to_string()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        for _attempt in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let mut child = Command::new(binary)
                .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start prometheus");
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!("prometheus on {addr} exited ({status}); trying another port");
                    break;
                }
                if matches!(send_http(addr, "GET", "/-/ready", &[], ""), Ok((200, _))) {
                    return Prometheus { child, addr, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("prometheus on {addr} was not ready within {PATIENCE:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("prometheus did not start on any of 5 ports");
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = send_http(self.addr, "GET", path, &[], "").expect("query prometheus");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("prometheus answers JSON")
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let answer = self.get(&format!("/api/v1/query?query={}", percent_encode(promql)));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until `promql` has a result, panicking after PATIENCE.
    fn wait_for(&self, promql: &str) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let result = self.query(promql);
            if !result.is_empty() {
                return result;
            }
            let targets = self.get("/api/v1/targets");
            assert!(
                Instant::now() < deadline,
                "{promql} stayed empty; targets: {targets}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_daemon_and_evaluates_the_rules() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let d = Daemon::start("uring", "");
    // Some delivery, so that the histogram series exist to query.
    let mut dev = d.device("");
    let (code, json) = d.push(&dev.token, "m1", 300);
    assert_eq!(code, 200, "{json}");
    let push = dev.recv_push();
    dev.ack(&[push.id]);
    d.wait_status(&dev.token, "m1", 2);

    let prometheus = Prometheus::start(&binary, d.admin);
    prometheus.wait_for("up{job=\"ringpush\"} == 1");
    let backend = prometheus.wait_for("ringpush_io_backend{job=\"ringpush\"} == 1");
    assert_eq!(backend[0]["metric"]["backend"], d.backend.as_str(), "{backend:?}");
    prometheus.wait_for("ringpush_messages_acked_total{job=\"ringpush\"} > 0");
    prometheus.wait_for("histogram_quantile(0.99, sum by (le) (ringpush_ack_latency_seconds_bucket))");
    prometheus.wait_for("ringpush_process_resident_memory_bytes / ringpush_process_memory_limit_bytes < 1");

    // Every rule loaded, and each has been evaluated without an error (a
    // bad vector match only shows at evaluation, against real series).
    let expected = rule_exprs().len();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rules = prometheus.get("/api/v1/rules");
        let all: Vec<&serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let errors: Vec<String> = all
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(errors.is_empty(), "rules failed to evaluate: {errors:?}");
        if all.len() == expected && all.iter().all(|r| r["health"] == "ok") {
            // Nothing is wrong with a healthy idle daemon.
            let firing: Vec<_> = all
                .iter()
                .filter(|r| r["state"] == "firing")
                .map(|r| r["name"].clone())
                .collect();
            assert!(firing.is_empty(), "alerts firing on a healthy daemon: {firing:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rules not all evaluated: {rules}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
