//! `ringpush-bench`: holds N device connections to a ringpush server, drives
//! simple pushes through its HTTP API at a chosen rate, and reports connect
//! rate, delivered and acked messages per second, API-to-device latency, the
//! server's RSS growth per connection and the client's own CPU; devices
//! connect over plain TCP or TLS, and a reconnect storm measures connects
//! (full or resumed handshakes) per second. With `--procs N` the run is
//! spread over N client processes (`procs`). See `loadtest/README.md` for
//! the scenarios.

mod devices;
mod floor_client;
mod mqtt;
mod nats;
mod peers;
mod procs;
mod pusher;
mod stats;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use devices::{DeviceConfig, Shared};
use peers::Target;
use procs::{Barrier, ChildReport, Share};
use ringpush::api::auth::HmacSigner;
use stats::{Counters, Summary};

#[derive(Parser, Debug, Clone)]
#[command(name = "ringpush-bench", version, about)]
struct Args {
    /// Device connections to hold.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Connections opened per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    connect_rate: u64,
    /// Device event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The device listener [default: 127.0.0.1:7070, or 127.0.0.1:7071
    /// with --tls].
    #[arg(long)]
    device_addr: Option<SocketAddr>,
    /// Connect devices over TLS (rustls, ring provider); needs --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// PEM file of the CA certificate(s) to trust: the only trust anchors.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name to verify the server's certificate against (and send as SNI
    /// when it is a DNS name) [default: the IP address of --device-addr].
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Offer TLS 1.2 only (default: 1.3 and 1.2, the server chooses).
    #[arg(long, requires = "tls")]
    tls12: bool,
    /// Keep session tickets (TLS 1.3) or sessions (1.2) in one store shared
    /// by all devices, so reconnects resume. Without it every handshake is
    /// full.
    #[arg(long, requires = "tls")]
    tls_resume: bool,
    /// Reconnect storm for --duration seconds after --warmup: each device
    /// connects, says Hello, closes at its Welcome and connects again.
    /// Reports connects + Hello per second and full vs resumed handshakes.
    #[arg(long, conflicts_with_all = ["hold", "offline", "push_rate", "broadcasts", "offline_broadcasts"])]
    reconnect_storm: bool,
    /// At most this many connections opened and not yet welcomed at once,
    /// over all threads (0 = no bound).
    #[arg(long, default_value_t = 0)]
    max_pending_connects: usize,
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    #[arg(long, default_value = "demo")]
    app: String,
    /// The app's apiSecret: pushes are signed with HMAC-SHA256. Without it
    /// they go unsigned (the demo app of the default config takes them).
    /// Prefer the environment variable: a command line is visible in ps.
    #[arg(long, env = "RINGPUSH_BENCH_APP_SECRET", hide_env_values = true)]
    app_secret: Option<String>,
    /// The app's deviceSecret: every Hello is signed with it (for apps with
    /// deviceAuth = "required"). Prefer the environment variable.
    #[arg(long, env = "RINGPUSH_BENCH_DEVICE_SECRET", hide_env_values = true)]
    device_secret: Option<String>,
    #[arg(long, default_value = "default")]
    workspace: String,
    /// Source addresses for device connections: a range `A-B`, a comma list,
    /// or `none` (the kernel's choice). Spreading over 127.0.0.0/8 lets N
    /// exceed one address's ephemeral ports.
    #[arg(long, default_value = "127.0.0.2-127.0.0.250")]
    source_ips: String,
    /// Messages per second offered through the API (0 = only hold
    /// connections).
    #[arg(long, default_value_t = 0)]
    push_rate: u64,
    /// The push endpoint: simple (title and content) or multiple (the
    /// bench template, personalised per target).
    #[arg(long, value_enum, default_value_t = pusher::PushKind::Simple)]
    push_kind: pusher::PushKind,
    /// Targets per request (the API allows up to 10 for simple, 100 for
    /// multiple).
    #[arg(long, default_value_t = 10)]
    targets_per_request: usize,
    /// Keep-alive HTTP connections, each a thread with its share of the rate.
    #[arg(long, default_value_t = 2)]
    push_connections: usize,
    /// Seconds of measured pushing (or of holding with --hold).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of pushing before measuring starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Bytes of title + content per message (at least 10).
    #[arg(long, default_value_t = 32)]
    payload_bytes: usize,
    /// expiredSeconds of each push.
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// The server's pid, to report its RSS growth per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Devices disconnect after Welcome, so every push is stored for an
    /// offline device (measures the durable accept path alone).
    #[arg(long)]
    offline: bool,
    /// Hold the connections idle for --duration seconds (no pushes).
    #[arg(long)]
    hold: bool,
    /// After connecting, send this many broadcasts (POST /v1/push/broadcast
    /// to every Android device of the app), one every
    /// --broadcast-interval-ms, and measure how long each takes to reach
    /// every connected device (the latency histogram; its max is the time
    /// until the last device had the last broadcast).
    #[arg(long, default_value_t = 0)]
    broadcasts: u64,
    #[arg(long, default_value_t = 1000)]
    broadcast_interval_ms: u64,
    /// After connecting, every device disconnects; then this many
    /// broadcasts are sent while all devices are offline (the server's RSS
    /// before and after is reported with --server-pid: what a stored
    /// broadcast costs with that many offline devices).
    #[arg(long, default_value_t = 0)]
    offline_broadcasts: u64,
    /// With --offline-broadcasts: then every device reconnects at once with
    /// its saved token, and the run measures how long until every device
    /// has every broadcast it missed.
    #[arg(long)]
    catch_up: bool,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The system under test: ringpush, a peer (mosquitto, nats: devices
    /// and publishers speak its protocol at --peer-addr) or ringpush-floor
    /// (devices at --device-addr, its control socket at --api-addr).
    #[arg(long, value_enum, default_value_t = Target::Ringpush)]
    target: Target,
    /// The peer's address (default 127.0.0.1:1883 for mosquitto,
    /// 127.0.0.1:4222 for nats).
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// Client processes: this binary runs itself N times, each with a
    /// disjoint slice of the devices and 1/N of the rates, and merges their
    /// summaries (a process may open at most ~20,000 descriptors here).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    procs: u64,
    /// Set by the parent of `--procs`: this child's index.
    #[arg(long, hide = true, requires = "proc_count")]
    proc_index: Option<usize>,
    /// Set by the parent of `--procs`: how many children.
    #[arg(long, hide = true, default_value_t = 1)]
    proc_count: usize,
}

impl Args {
    /// The part of the run this process owns.
    fn share(&self) -> Share {
        match self.proc_index {
            Some(index) => Share {
                index,
                count: self.proc_count.max(1),
            },
            None => Share::WHOLE,
        }
    }

    /// These arguments as one child of `--procs` runs them: its share of
    /// every rate and bound (the devices are sliced in `run`).
    fn for_child(&self) -> Args {
        let share = self.share();
        let mut args = self.clone();
        args.push_rate = share.of(self.push_rate);
        args.connect_rate = share.of_bound(self.connect_rate);
        args.max_pending_connects = share.of_bound(self.max_pending_connects as u64) as usize;
        args.push_connections = (share.of(self.push_connections as u64) as usize).max(1);
        args
    }
}

/// What `run` measured: the summary and the histograms behind it (a child
/// of `--procs` hands them to its parent whole).
struct Outcome {
    summary: Summary,
    latency: hdrhistogram::Histogram<u64>,
    api_latency: hdrhistogram::Histogram<u64>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let result = if args.proc_index.is_some() {
        let _ = PROGRESS_LABEL.set(format!("[p{}] ", args.share().index));
        run(&args.for_child()).map(|outcome| {
            let report = ChildReport {
                latency: procs::histogram_counts(&outcome.latency),
                api_latency: procs::histogram_counts(&outcome.api_latency),
                summary: outcome.summary,
            };
            println!(
                "summary {}",
                serde_json::to_string(&report).expect("summary serialises")
            );
            report.summary
        })
    } else if args.procs > 1 {
        check_procs(&args)
            .and_then(|()| procs::run_parent(args.procs as usize, args.devices as u64, &INTERRUPTED))
            .map(|summary| print_summary(&args, summary))
    } else {
        run(&args).map(|outcome| print_summary(&args, outcome.summary))
    };
    match result {
        Ok(summary) if summary.errors() > 0 => ExitCode::from(2),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpush-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(args: &Args, summary: Summary) -> Summary {
    summary.print_human();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serialises")
        );
    }
    summary
}

/// Scenarios whose counts cannot close across processes.
fn check_procs(args: &Args) -> anyhow::Result<()> {
    if args.target == Target::Floor && args.push_rate > 0 && !args.hold {
        bail!(
            "--procs > 1 with --target floor and --push-rate: the floor writes to devices of every process, so no \
             process can tell when its frames have all arrived; run point-to-point against the floor in one process"
        );
    }
    if args.devices < args.procs as usize {
        bail!("--procs {} needs at least as many --devices", args.procs);
    }
    Ok(())
}

/// Prefixes a child's progress lines with its index.
static PROGRESS_LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Says `ready <phase>` to the parent of `--procs` and waits until every
/// process is there; a parent that stops the run instead interrupts it.
fn meet(barrier: &Barrier, phase: &str) {
    if !barrier.wait(phase) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
}

fn run(args: &Args) -> anyhow::Result<Outcome> {
    let share = args.share();
    let barrier = Barrier::new(args.proc_index.is_some());
    let (first_device, devices) = share.devices(args.devices);
    // Only the leading process reads the server: the others' readings
    // would count its growth several times over.
    let server_pid = args.server_pid.filter(|_| share.leads());
    raise_fd_limit(devices + args.push_connections + 64)?;
    let source_ips = parse_source_ips(&args.source_ips)?;
    let device_addr = args
        .device_addr
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], if args.tls { 7071 } else { 7070 })));
    let tls_client = match (&args.tls_ca, args.tls) {
        (Some(ca_file), true) => Some(tls::TlsClient::new(&tls::TlsOptions {
            ca_file,
            server_name: &args
                .tls_server_name
                .clone()
                .unwrap_or_else(|| device_addr.ip().to_string()),
            tls12_only: args.tls12,
            resume: args.tls_resume,
            // Two tickets per connection (rustls's default) for every
            // device, so a storm never runs dry.
            max_tickets: (2 * devices).max(64),
        })?),
        _ => None,
    };
    let threads = args.threads.clamp(1, devices.max(1));
    let wall_start = Instant::now();
    let cpu_start = stats::own_cpu_seconds();
    let target = args.target;
    let peer_addr = args.peer_addr.or(target.default_peer_addr());
    let mut summary = Summary {
        target,
        devices: devices as u64,
        procs: 1,
        offered_rate: if args.hold { 0 } else { args.push_rate },
        ..Default::default()
    };
    summary.server_rss_before_kib = server_pid.and_then(stats::rss_kib);
    summary.server_cpu_before_seconds = server_pid.and_then(stats::process_cpu_seconds);
    if let Some(reason) = target.unsupported(args.offline, args.offline_broadcasts > 0) {
        eprintln!("skipped: {reason}");
        summary.unsupported.push(reason);
        return Ok(Outcome {
            summary,
            latency: stats::latency_histogram(),
            api_latency: stats::latency_histogram(),
        });
    }
    if target == Target::Nats && (args.push_rate > 0 || args.broadcasts > 0) {
        summary
            .unsupported
            .push("acknowledged delivery: not supported by core NATS (at most once; acked stays 0)".into());
    }

    let shared = Arc::new(Shared {
        counters: Counters::default(),
        tokens: Default::default(),
        stop: AtomicBool::new(false),
        disconnect: AtomicBool::new(false),
        reconnect: AtomicBool::new(false),
        closes: Default::default(),
    });
    let record = Arc::new(AtomicBool::new(false));
    let mut device_threads = Vec::new();
    let per_thread = devices.div_ceil(threads);
    // Every process starts connecting together.
    meet(&barrier, "start");
    for t in 0..threads {
        let first = t * per_thread;
        let count = per_thread.min(devices.saturating_sub(first));
        let config = DeviceConfig {
            device_addr: peer_addr.unwrap_or(device_addr),
            app: args.app.clone(),
            source_ips: source_ips.clone(),
            connect_rate: args.connect_rate as f64 / threads as f64,
            first_index: first_device + first,
            count,
            record_after: record.clone(),
            offline: args.offline,
            device_secret: args.device_secret.clone(),
            tls: tls_client.clone(),
            max_pending_connects: args.max_pending_connects.div_ceil(threads),
            storm: args.reconnect_storm,
        };
        let shared = shared.clone();
        device_threads.push(
            std::thread::Builder::new()
                .name(format!("devices-{t}"))
                .spawn(move || match target {
                    Target::Ringpush | Target::Floor => devices::run(config, shared),
                    peer => peers::run_devices(peer, config, shared),
                })?,
        );
    }

    // Connect phase: poll often for an accurate rate, print once a second.
    let connect_start = Instant::now();
    let give_up = connect_start + Duration::from_secs(args.connect_timeout);
    let mut next_line = connect_start + Duration::from_secs(1);
    let c = &shared.counters;
    loop {
        let done = Counters::get(&c.connected) + Counters::get(&c.connect_errors);
        // A storm never settles: it is measured below.
        if args.reconnect_storm
            || done >= devices as u64
            || Instant::now() > give_up
            || INTERRUPTED.load(Ordering::SeqCst)
        {
            break;
        }
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            progress(connect_start, &shared);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    summary.connect_seconds = connect_start.elapsed().as_secs_f64();
    summary.connected = Counters::get(&c.connected);
    summary.connect_rate = summary.connected as f64 / summary.connect_seconds.max(1e-9);
    if !args.reconnect_storm {
        say(format_args!(
            "connected {} of {devices} in {:.2}s ({:.0}/s)",
            summary.connected, summary.connect_seconds, summary.connect_rate
        ));
        // Every device of every process is connected before anything is
        // measured.
        meet(&barrier, "connected");
    }

    if args.server_pid.is_some() && !args.reconnect_storm {
        // Let the server finish its handshake work before measuring (every
        // process waits, so they stay in step).
        std::thread::sleep(Duration::from_secs(2));
    }
    if let Some(pid) = server_pid.filter(|_| !args.reconnect_storm) {
        summary.server_rss_after_kib = stats::rss_kib(pid);
        if let (Some(before), Some(after)) = (summary.server_rss_before_kib, summary.server_rss_after_kib) {
            summary.server_rss_per_connection_bytes =
                Some(after.saturating_sub(before) as f64 * 1024.0 / summary.connected.max(1) as f64);
        }
    }

    let signer = args
        .app_secret
        .as_ref()
        .map(|secret| Arc::new(HmacSigner::new(args.app.as_str(), secret.as_bytes())));
    let mut push_errors = std::collections::BTreeMap::new();
    let mut api_latency = stats::latency_histogram();
    if args.reconnect_storm {
        let storm = reconnect_storm(args, server_pid, &shared, &record, connect_start);
        // Every Welcome of the run counts as a connection here.
        summary.connected = Counters::get(&c.connected);
        summary.connect_seconds = connect_start.elapsed().as_secs_f64();
        summary.connect_rate = storm.welcomes_per_sec;
        summary.storm = Some(storm);
    } else if args.offline_broadcasts > 0 {
        // Every device goes offline; the server must notice each close.
        let offline0 = Counters::get(&c.disconnected);
        shared.disconnect.store(true, Ordering::SeqCst);
        wait_for(
            || Counters::get(&c.disconnected) - offline0 >= summary.connected,
            30,
        );
        // Every device of every process is offline before anything is sent.
        meet(&barrier, "offline");
        std::thread::sleep(Duration::from_secs(1));
        let rss_before = server_pid.and_then(stats::rss_kib);
        let started = Instant::now();
        if share.leads() {
            let mut broadcaster = Broadcaster::new(args, signer.as_deref(), &shared)?;
            for i in 0..args.offline_broadcasts {
                broadcaster.send(i, &mut push_errors)?;
                Counters::add(&c.messages_sent, 1);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        let rss_after = server_pid.and_then(stats::rss_kib);
        // Every broadcast is stored before any device comes back.
        meet(&barrier, "stored");
        summary.offline_broadcasts = Some(stats::OfflineBroadcasts {
            offline_devices: summary.connected,
            broadcasts: args.offline_broadcasts,
            seconds,
            server_rss_before_kib: rss_before,
            server_rss_after_kib: rss_after,
            server_rss_per_broadcast_bytes: rss_before
                .zip(rss_after)
                .map(|(b, a)| a.saturating_sub(b) as f64 * 1024.0 / args.offline_broadcasts as f64),
            catch_up_seconds: None,
            catch_up_requested: args.catch_up,
            caught_up_devices: 0,
        });
        if share.leads() {
            say(format_args!(
                "{} broadcasts stored for {} offline devices in {seconds:.2}s; server RSS {rss_before:?} -> {rss_after:?} KiB",
                args.offline_broadcasts, summary.connected
            ));
        }
        if args.catch_up {
            record.store(true, Ordering::SeqCst);
            let delivered0 = Counters::get(&c.delivered);
            let reconnected0 = Counters::get(&c.connected);
            let want = args.offline_broadcasts * summary.connected;
            let started = Instant::now();
            shared.reconnect.store(true, Ordering::SeqCst);
            let caught_up = wait_for(|| Counters::get(&c.delivered) - delivered0 >= want, 60);
            let report = summary.offline_broadcasts.as_mut().expect("set above");
            report.catch_up_seconds = caught_up.then(|| started.elapsed().as_secs_f64());
            report.caught_up_devices = Counters::get(&c.connected) - reconnected0;
            say(format_args!(
                "catch-up: {} devices reconnected, {} of {want} broadcasts delivered in {:.3}s",
                report.caught_up_devices,
                Counters::get(&c.delivered) - delivered0,
                started.elapsed().as_secs_f64()
            ));
            summary.measured_seconds = started.elapsed().as_secs_f64();
            // Let the last acks go out.
            std::thread::sleep(Duration::from_millis(200));
        }
    } else if args.broadcasts > 0 {
        record.store(true, Ordering::SeqCst);
        let delivered0 = Counters::get(&c.delivered);
        let started = Instant::now();
        if share.leads() {
            let mut broadcaster = Broadcaster::new(args, signer.as_deref(), &shared)?;
            for i in 0..args.broadcasts {
                broadcaster.send(i, &mut push_errors)?;
                Counters::add(&c.messages_sent, 1);
                std::thread::sleep(Duration::from_millis(args.broadcast_interval_ms));
            }
        }
        // The other processes wait for the last broadcast to be sent.
        meet(&barrier, "broadcasts-sent");
        let want = delivered0 + args.broadcasts * summary.connected;
        let give_up = Instant::now() + Duration::from_secs(10);
        while Counters::get(&c.delivered) < want && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(5));
        }
        summary.measured_seconds = started.elapsed().as_secs_f64();
        // Let the last acks go out.
        std::thread::sleep(Duration::from_millis(200));
    } else if args.hold || args.push_rate == 0 {
        let until = Instant::now() + Duration::from_secs(if args.hold { args.duration } else { 0 });
        while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(1));
            progress(connect_start, &shared);
        }
    } else {
        let phase_start = Instant::now();
        let warm_until = phase_start + Duration::from_secs(args.warmup);
        let until = warm_until + Duration::from_secs(args.duration);
        if args.push_kind == pusher::PushKind::Multiple && target == Target::Ringpush {
            pusher::ensure_template(args.api_addr, &args.app, &args.workspace, signer.as_deref())?;
        }
        let mut pushers = Vec::new();
        // The floor schedules every frame itself: one command, whole rate.
        let push_connections = if target == Target::Floor {
            1
        } else {
            args.push_connections.max(1)
        };
        for p in 0..push_connections {
            let config = pusher::PushConfig {
                kind: args.push_kind,
                api_addr: args.api_addr,
                app: args.app.clone(),
                workspace: args.workspace.clone(),
                signer: signer.clone(),
                rate: args.push_rate as f64 / push_connections as f64,
                targets_per_request: args.targets_per_request.clamp(1, args.push_kind.max_targets()),
                ttl_secs: args.ttl,
                until,
                // Distinct per process too: nonces and msgKeys derive from it.
                seed: 0x9E37_79B9 + (share.index * 4096 + p) as u64,
                record_after: record.clone(),
                payload_bytes: args.payload_bytes.max(10),
            };
            let shared = shared.clone();
            let api_addr = args.api_addr;
            pushers.push(
                std::thread::Builder::new()
                    .name(format!("push-{p}"))
                    .spawn(move || match (target, peer_addr) {
                        (Target::Floor, _) => floor_client::run(api_addr, config, shared),
                        (_, Some(broker)) => peers::run_publisher(target, broker, config, shared),
                        _ => pusher::run(config, shared),
                    })?,
            );
        }
        let mut marks = None;
        let mut next_line = phase_start + Duration::from_secs(1);
        while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
            if marks.is_none() && Instant::now() >= warm_until {
                record.store(true, Ordering::SeqCst);
                marks = Some((
                    Instant::now(),
                    Counters::get(&c.delivered),
                    Counters::get(&c.acked),
                    Counters::get(&c.messages_sent),
                ));
            }
            if Instant::now() >= next_line {
                next_line += Duration::from_secs(1);
                progress(phase_start, &shared);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (mark_at, delivered0, acked0, accepted0) = marks.unwrap_or((
            phase_start,
            Counters::get(&c.delivered),
            Counters::get(&c.acked),
            Counters::get(&c.messages_sent),
        ));
        let measured = mark_at.elapsed().as_secs_f64().max(1e-9);
        summary.measured_seconds = measured;
        summary.delivered_per_sec = (Counters::get(&c.delivered) - delivered0) as f64 / measured;
        summary.acked_per_sec = (Counters::get(&c.acked) - acked0) as f64 / measured;
        summary.accepted_per_sec = (Counters::get(&c.messages_sent) - accepted0) as f64 / measured;
        shared
            .stop
            .store(INTERRUPTED.load(Ordering::SeqCst), Ordering::SeqCst);
        for p in pushers {
            if let Ok(outcome) = p.join() {
                for (k, v) in outcome.errors {
                    *push_errors.entry(k).or_default() += v;
                }
                api_latency
                    .add(&outcome.api_latency)
                    .context("merging histograms")?;
            }
        }
        summary.api_latency = stats::Latency::from(&api_latency);
        // Let in-flight messages land so the latency tail and the totals
        // are complete: each one the API accepted for an online device
        // arrives (bounded, for targets that may drop some).
        if !args.offline {
            wait_for(
                || Counters::get(&c.delivered) >= Counters::get(&c.messages_sent),
                10,
            );
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut histogram = stats::latency_histogram();
    for t in device_threads {
        if let Ok(h) = t.join() {
            histogram.add(&h).context("merging histograms")?;
        }
    }
    summary.latency = stats::Latency::from(&histogram);
    summary.messages_sent = Counters::get(&c.messages_sent);
    summary.delivered_total = Counters::get(&c.delivered);
    summary.acked_total = Counters::get(&c.acked);
    summary.behind_schedule = Counters::get(&c.behind_schedule);
    summary.connect_errors = Counters::get(&c.connect_errors);
    summary.http_errors = push_errors;
    summary.closed_by_server = shared.closes.lock().clone();
    if args.tls {
        summary.tls = Some(stats::TlsHandshakes {
            versions: if args.tls12 { "1.2" } else { "1.3" }.to_string(),
            resumption: args.tls_resume,
            full: Counters::get(&c.tls_full),
            resumed: Counters::get(&c.tls_resumed),
            tickets_held: tls_client.as_ref().and_then(tls::TlsClient::tickets_held),
        });
    }
    summary.wall_seconds = wall_start.elapsed().as_secs_f64();
    summary.client_cpu_seconds = stats::own_cpu_seconds() - cpu_start;
    summary.server_cpu_seconds = server_pid
        .and_then(stats::process_cpu_seconds)
        .zip(summary.server_cpu_before_seconds)
        .map(|(after, before)| after - before);
    summary.client_cpu_percent_of_one_core = 100.0 * summary.client_cpu_seconds / summary.wall_seconds;
    summary.interrupted = INTERRUPTED.load(Ordering::SeqCst);
    Ok(Outcome {
        summary,
        latency: histogram,
        api_latency,
    })
}

/// The storm runs from the start; measures the window after the warmup.
fn reconnect_storm(
    args: &Args,
    server_pid: Option<u32>,
    shared: &Shared,
    record: &AtomicBool,
    started: Instant,
) -> stats::Storm {
    let c = &shared.counters;
    let warm_until = started + Duration::from_secs(args.warmup);
    let until = warm_until + Duration::from_secs(args.duration);
    let mut next_line = started + Duration::from_secs(1);
    let mut marks = None;
    let sample = || {
        (
            Instant::now(),
            Counters::get(&c.connected),
            Counters::get(&c.tls_full),
            Counters::get(&c.tls_resumed),
            stats::own_cpu_seconds(),
            server_pid.and_then(stats::process_cpu_seconds),
        )
    };
    while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
        if marks.is_none() && Instant::now() >= warm_until {
            record.store(true, Ordering::SeqCst);
            marks = Some(sample());
        }
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            progress(started, shared);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (at0, welcomes0, full0, resumed0, cpu0, server0) = marks.unwrap_or_else(sample);
    let (at1, welcomes1, full1, resumed1, cpu1, server1) = sample();
    let seconds = (at1 - at0).as_secs_f64().max(1e-9);
    stats::Storm {
        seconds,
        welcomes: welcomes1 - welcomes0,
        welcomes_per_sec: (welcomes1 - welcomes0) as f64 / seconds,
        full_handshakes: full1 - full0,
        resumed_handshakes: resumed1 - resumed0,
        client_cpu_seconds: cpu1 - cpu0,
        server_cpu_seconds: server0.zip(server1).map(|(a, b)| b - a),
        max_pending_connects: args.max_pending_connects as u64,
    }
}

/// Polls `done` every 5 ms for at most `seconds`; whether it came true.
fn wait_for(mut done: impl FnMut() -> bool, seconds: u64) -> bool {
    let give_up = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        if Instant::now() > give_up || INTERRUPTED.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Posts broadcasts to every Android device of the app (pushStatus 1: bound
/// or not), each msgKey carrying its send time.
struct Broadcaster<'a> {
    client: Option<pusher::HttpClient>,
    peer: Option<peers::PeerBroadcaster>,
    shared: &'a Shared,
    args: &'a Args,
    signer: Option<&'a HmacSigner>,
    content: String,
}

impl<'a> Broadcaster<'a> {
    fn new(args: &'a Args, signer: Option<&'a HmacSigner>, shared: &'a Shared) -> anyhow::Result<Self> {
        let peer = match args.peer_addr.or(args.target.default_peer_addr()) {
            Some(broker) => Some(peers::PeerBroadcaster::new(
                args.target,
                broker,
                args.ttl,
                args.payload_bytes.max(10),
            )?),
            None => None,
        };
        Ok(Self {
            client: match args.target {
                Target::Ringpush => Some(pusher::HttpClient::connect(args.api_addr)?),
                _ => None,
            },
            peer,
            shared,
            args,
            signer,
            content: "x".repeat(args.payload_bytes.max(10)),
        })
    }

    fn send(&mut self, i: u64, errors: &mut std::collections::BTreeMap<String, u64>) -> anyhow::Result<()> {
        const PATH: &str = "/v1/push/broadcast";
        let args = self.args;
        if let Some(peer) = self.peer.as_mut() {
            return peer.send(i, errors);
        }
        let Some(client) = self.client.as_mut() else {
            floor_client::broadcast(
                args.api_addr,
                args.payload_bytes.max(10),
                args.ttl,
                i,
                self.shared,
                errors,
            );
            return Ok(());
        };
        let body = serde_json::json!({
            "appId": args.app, "workspaceId": args.workspace, "taskName": "bench broadcast",
            "title": "broadcast", "content": self.content,
            "deliveryType": 1, "pushStatus": 1, "unBindPeriod": 4,
            "msgkey": stats::msg_key(i, stats::unix_micros()), "expiredSeconds": args.ttl,
        })
        .to_string();
        let mut headers = String::new();
        if let Some(signer) = self.signer {
            let nonce = format!("bc{:x}-{i:x}", stats::unix_micros());
            pusher::sign_into(&mut headers, signer, PATH, &body, &nonce);
        }
        let (status, answer) = client.post(PATH, &headers, &body)?;
        if status != 200 {
            *errors.entry(format!("broadcast_{status}")).or_default() += 1;
            eprintln!("broadcast {i}: HTTP {status}: {answer}");
        }
        Ok(())
    }
}

fn progress_label() -> &'static str {
    PROGRESS_LABEL.get().map_or("", String::as_str)
}

/// One stderr line in one write, prefixed with the process's label, so
/// the lines of `--procs` children do not interleave.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("{}{line}\n", progress_label());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn progress(since: Instant, shared: &Shared) {
    let c = &shared.counters;
    say(format_args!(
        "[{:>5.1}s] connected {} errors {} | sent {} delivered {} acked {} | http errors {} behind {}",
        since.elapsed().as_secs_f64(),
        Counters::get(&c.connected),
        Counters::get(&c.connect_errors),
        Counters::get(&c.messages_sent),
        Counters::get(&c.delivered),
        Counters::get(&c.acked),
        Counters::get(&c.http_errors),
        Counters::get(&c.behind_schedule),
    ));
}

fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    if spec == "none" || spec.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((a, b)) = spec.split_once('-') {
        let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse()?, b.parse()?);
        let (a, b) = (u32::from(a), u32::from(b));
        if a > b || b - a > 1 << 20 {
            bail!("source address range {spec} is empty or too large");
        }
        return Ok((a..=b).map(Ipv4Addr::from).collect());
    }
    spec.split(',')
        .map(|s| s.trim().parse().context("a source address"))
        .collect()
}

/// Raises the soft descriptor limit to the hard one and checks `needed`
/// fits: the machine's hard limit is a fact of life, so say so clearly.
fn raise_fd_limit(needed: usize) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    if needed as u64 > limit.rlim_cur {
        bail!(
            "{needed} descriptors needed but this process may open {}; spread the devices over more processes with --procs",
            limit.rlim_cur
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_specs() {
        assert_eq!(parse_source_ips("none").unwrap(), Vec::<Ipv4Addr>::new());
        assert_eq!(parse_source_ips("127.0.0.2-127.0.0.4").unwrap().len(), 3);
        assert_eq!(parse_source_ips("127.0.0.9,127.0.0.10").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
    }
}
