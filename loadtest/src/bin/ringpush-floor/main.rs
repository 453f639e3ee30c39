//! `ringpush-floor`: the machine's floor for the bench. It speaks just
//! enough of ringpush's device protocol for `ringpush-bench --target floor`
//! to run its scenarios — each Hello gets a pre-encoded Welcome, each Ping a
//! Pong, Acks are counted — and on a command from its control socket writes
//! pre-encoded Push frames (id and msgKey patched in place) to random
//! device connections on an open-loop schedule, or one to every connection.
//! No sessions, tokens, storage, API or TLS: what ringpush does beyond this
//! is what its figures cost above the floor's. io_uring and epoll workers,
//! one per thread, each with its own SO_REUSEPORT listener.

mod control;
mod epoll;
mod frames;
mod schedule;
mod uring;

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Uring,
    Epoll,
}

#[derive(Parser, Debug)]
#[command(name = "ringpush-floor", version, about)]
struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Uring)]
    backend: Backend,
    /// Device listener (ringpush's default device port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Control socket (ringpush's default API port, so the bench's
    /// --api-addr default reaches it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    control: SocketAddr,
    /// Worker threads (0 = one per available core, as ringpush's shards).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpush-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    raise_fd_limit();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let shared = Arc::new(control::Shared::default());
    let mut workers = Vec::new();
    // Port 0 picks a port for the first listener; the others share it.
    let mut listen = args.listen;
    for worker in 0..threads {
        let listener = reuseport_listener(listen).with_context(|| format!("listening on {listen}"))?;
        listen = listener.local_addr()?;
        let shared = shared.clone();
        let (index, count) = (worker as u64, threads as u64);
        workers.push(
            std::thread::Builder::new()
                .name(format!("floor-{worker}"))
                .spawn(move || match args.backend {
                    Backend::Uring => uring::run(listener, &shared, index, count),
                    Backend::Epoll => epoll::run(listener, &shared, index, count),
                })?,
        );
    }
    let control =
        TcpListener::bind(args.control).with_context(|| format!("control socket {}", args.control))?;
    eprintln!(
        "ringpush-floor ready: {:?}, {threads} workers, devices on {listen}, control on {}",
        args.backend,
        control.local_addr()?
    );
    let control_shared = shared.clone();
    std::thread::spawn(move || control::serve(control, control_shared, threads as u64));
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).context("worker"),
            Err(_) => anyhow::bail!("a worker panicked"),
        }
    }
    Ok(())
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Raises the soft descriptor limit to the hard one: the floor holds as
/// many connections as the bench opens.
fn raise_fd_limit() {
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
}
