//! The HTTP/1.1 connection loop of the API and admin listeners, in place of
//! `axum::serve`, for the limits it lacks: a header read timeout (slowloris;
//! it also bounds how long a kept-alive connection sits idle), a cap on the
//! request head's size, and a cap on open connections, each counted in
//! `ringpush_http_limit_hits_total{server, limit}` when hit. The body read
//! timeout is `api::admit`'s (it answers 408), because only the handler
//! knows when it reads a body. Graceful stop: no new connections, each open
//! one finishes its request in progress and closes.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Http;

/// One listener's limits, from `[http]`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn from_config(http: &Http) -> Self {
        Self {
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            max_header_bytes: http.max_header_bytes,
            max_connections: http.max_connections,
            shutdown_grace: Duration::from_millis(http.shutdown_grace_ms),
        }
    }
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "ringpush_http_limit_hits_total",
        "HTTP limits hit, by server (api, admin) and limit: connections (http.max_connections, closed at accept), header_timeout (http.header_timeout_ms, closed), header_size (http.max_header_bytes, 431), body_timeout (http.body_timeout_ms, 408), body_size (3050 with 413), shutdown_grace (connections dropped at stop after http.shutdown_grace_ms)"
    );
    metrics::describe_gauge!(
        "ringpush_http_connections",
        "Open HTTP connections, by server (api, admin)"
    );
}

/// Counts one hit of `limit` on `server`.
pub fn limit_hit(server: &'static str, limit: &'static str) {
    metrics::counter!("ringpush_http_limit_hits_total", "server" => server, "limit" => limit).increment(1);
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` answers is not `Send`: drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Serves `router` on `listener` until `stop` turns true, then lets the
/// open connections finish and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    server: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let open = metrics::gauge!("ringpush_http_connections", "server" => server);
    let mut connections: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                open.set(connections.len() as f64);
            }
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and the like: the listener stays, and a
                        // short pause keeps the loop from spinning.
                        tracing::warn!(server, error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= limits.max_connections {
                    limit_hit(server, "connections");
                    drop(stream);
                    continue;
                }
                connections.spawn(connection(stream, router.clone(), limits.clone(), server, stop.clone()));
                open.set(connections.len() as f64);
            }
        }
    }
    drop(listener);
    // Each connection finishes the request it is in and closes; one still
    // trickling a head or a body is not waited for past the grace period.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            server,
            connections = connections.len(),
            "HTTP connections still busy after http.shutdown_grace_ms; dropping them"
        );
        limit_hit(server, "shutdown_grace");
        connections.shutdown().await;
    }
    open.set(0.0);
}

async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: Limits,
    server: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(router);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            limit_hit(server, "header_timeout");
        } else if e.is_parse_too_large() {
            limit_hit(server, "header_size");
        }
    }
}
