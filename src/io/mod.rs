//! The I/O layer: the two backends that drive a shard's `DeliveryCore`
//! (`uring`, `epoll`), and what they share — the eventfd that wakes a shard,
//! draining its queues, the loop's heartbeat (and the test hook that stalls
//! it), and thread pinning. This is the only layer allowed
//! `unsafe`, each use with the reason it is sound.

pub mod epoll;
pub mod uring;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::{Refusal, Ticket};
use crate::config::IoBackend;
use crate::delivery::DeliveryCore;
use crate::shard::{Control, ShardContext};
use crate::store::Store;

/// A non-blocking eventfd with a flag so that a burst of commands costs one
/// write(2): producers write only when the shard is not already woken.
pub struct EventFd {
    fd: OwnedFd,
    woken: AtomicBool,
}

impl EventFd {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd(2) takes no pointers; a negative result is an error
        // and is checked before the fd is used.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `raw` is a fresh descriptor owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            woken: AtomicBool::new(false),
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live stack buffer to our own fd.
            // EAGAIN (counter at its maximum) still leaves the fd readable,
            // which is all a wake needs.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// Called by the shard before it drains its queues, so a command queued
    /// after the drain starts wakes it again.
    pub fn reset(&self) {
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live stack buffer from our own
        // non-blocking fd; EAGAIN is harmless.
        unsafe { libc::read(self.fd.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
        self.woken.store(false, Ordering::Release);
    }
}

/// Pins the calling thread to one CPU. Failure (a restricted cpuset) only
/// costs locality, so it is logged, not fatal.
pub fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it;
    // sched_setaffinity reads it for the calling thread (pid 0).
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        tracing::warn!(core, error = %std::io::Error::last_os_error(), "could not pin shard thread");
    }
}

pub(crate) fn run_shard(context: ShardContext, core: DeliveryCore, store: Store, backend: IoBackend) {
    let shard = context.id;
    let result = match backend {
        IoBackend::Uring => uring::run(context, core, store),
        IoBackend::Epoll => epoll::run(context, core, store),
    };
    if let Err(e) = result {
        tracing::error!(shard, error = %e, "shard loop failed");
    }
}

/// A shard loop's heartbeat: called once per loop iteration, it publishes
/// the iteration count for the watchdog (`shard::Heartbeats`).
pub(crate) struct Pulse {
    heartbeats: Arc<crate::shard::Heartbeats>,
    shard: usize,
    iterations: u64,
    /// `RINGPUSH_FAULT_DIR/stall-shard-N`, read once at start: while that
    /// file exists the loop blocks, as a shard stuck in a system call or an
    /// endless loop would (the watchdog's integration test), and says so
    /// with a file `stall-shard-N.stalled` beside it.
    stall_marker: Option<PathBuf>,
}

impl Pulse {
    pub(crate) fn new(context: &ShardContext) -> Self {
        let stall_marker = std::env::var_os(crate::log::FAULT_DIR_ENV)
            .map(|dir| PathBuf::from(dir).join(format!("stall-shard-{}", context.id)));
        Self {
            heartbeats: context.heartbeats.clone(),
            shard: context.id,
            iterations: 0,
            stall_marker,
        }
    }

    /// One loop iteration done. Costs a branch and a relaxed store unless
    /// the fault directory is set.
    pub(crate) fn beat(&mut self) {
        if let Some(marker) = &self.stall_marker {
            if marker.exists() {
                tracing::warn!(shard = self.shard, "stalled by the fault hook");
                let stalled = marker.with_extension("stalled");
                let _ = std::fs::write(&stalled, b"");
                while marker.exists() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = std::fs::remove_file(&stalled);
            }
        }
        self.iterations += 1;
        self.heartbeats.beat(self.shard, self.iterations);
    }
}

/// A connection handed over by another shard: its socket, the plaintext
/// that shard already read (decrypted, on TLS), its admission slot, and its
/// TLS session (with any ciphertext of an incomplete record).
pub struct Adopted {
    pub fd: OwnedFd,
    pub initial: Vec<u8>,
    pub ticket: Ticket,
    pub tls: Option<Box<crate::tls::TlsSession>>,
}

/// Applies queued API commands to the core and collects adopted connections
/// for the backend to register. Returns `true` when the shard must stop.
pub(crate) fn drain_queues(
    context: &ShardContext,
    core: &mut DeliveryCore,
    now: Instant,
    adopted: &mut Vec<Adopted>,
) -> bool {
    context.wake.reset();
    let mut stop = false;
    while let Ok(message) = context.control.try_recv() {
        match message {
            Control::Adopt(connection) => adopted.push(connection),
            Control::Stop => stop = true,
            Control::Reconfigure(settings) => {
                core.reconfigure(&settings.config, settings.device_auth.clone());
            }
        }
    }
    // Bounded so a flood of pushes cannot starve socket I/O for long.
    for command in context.commands.try_iter().take(4096) {
        core.on_command(command, now);
    }
    if !context.commands.is_empty() {
        context.wake.wake();
    }
    stop
}

/// A TLS session for a socket the TLS listener accepted, on the current
/// configuration (a reload changes what later accepts get).
pub(crate) fn new_tls_session(context: &ShardContext) -> Option<Box<crate::tls::TlsSession>> {
    let (_, shared) = context.tls_listener.as_ref()?;
    match crate::tls::TlsSession::new(shared.current()) {
        Ok(session) => Some(Box::new(session)),
        Err(e) => {
            tracing::warn!(shard = context.id, error = %e, "could not start a TLS session");
            None
        }
    }
}

/// On stop, before the GoAways: no new device connections. shutdown(2) on a
/// listening socket takes it out of the listen state (Linux resets the
/// connections waiting in its backlog, and SO_REUSEPORT sends new ones to
/// the shards still listening, or refuses them once none is), so a device
/// is refused at once rather than accepted by the kernel and dropped
/// without a word at exit.
pub(crate) fn stop_accepting(context: &ShardContext) {
    let plain = context.listener.iter();
    let tls = context.tls_listener.iter().map(|(listener, _)| listener);
    for listener in plain.chain(tls) {
        let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Both);
    }
}

/// Connections a stopping shard closed with bytes still unsent (their
/// GoAway) because `delivery.drain_timeout_secs` ran out.
pub(crate) fn count_drain_abandoned(shard: &str, connections: usize) {
    tracing::warn!(
        shard,
        connections,
        "drain timeout: closing connections with bytes unsent"
    );
    metrics::counter!("ringpush_drain_abandoned_total", "shard" => shard.to_string())
        .increment(connections as u64);
}

/// Caps a device socket's kernel send buffer (`limits.device_send_buffer_bytes`,
/// 0: leave the kernel's autotuning). A failure leaves the default: the cap
/// bounds kernel memory, it is not needed for correctness.
pub(crate) fn cap_send_buffer(socket: socket2::SockRef<'_>, bytes: u32) {
    if bytes != 0 {
        let _ = socket.set_send_buffer_size(bytes as usize);
    }
}

/// Describes the I/O layer's metrics; `crate::admin::describe_metrics`
/// lists it.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "ringpush_accepts_total",
        "Device connections accepted by a shard's listeners, before admission"
    );
    describe_counter!(
        "ringpush_accept_errors_total",
        "accept(2) failures of a shard's device listeners (EMFILE/ENFILE: out of file descriptors; the connection waits in the backlog)"
    );
    describe_gauge!(
        "ringpush_connections",
        "Device sockets a shard's I/O loop holds open, by backend"
    );
    describe_counter!(
        "ringpush_uring_submissions_total",
        "io_uring submission queue entries a shard submitted"
    );
    describe_counter!(
        "ringpush_uring_enters_total",
        "io_uring_enter(2) calls of a shard (submissions per enter is the batching)"
    );
    describe_counter!(
        "ringpush_uring_recv_enobufs_total",
        "io_uring receives that found the shard's provided buffers (limits.recv_buffers) all in use; the receive is re-armed"
    );
    describe_gauge!(
        "ringpush_io_backend",
        "1 for the I/O backend the shards run (uring, or epoll as configured or as the fallback)"
    );
}

/// The first line of a connection's story (debug): its id on this shard
/// and its address. The core's lines about it carry the same `conn`.
pub(crate) fn log_accepted(
    shard: usize,
    conn: Option<crate::delivery::ConnId>,
    peer: std::net::SocketAddr,
    tls: bool,
) {
    match conn {
        Some(conn) => tracing::debug!(shard, conn, %peer, tls, "connection accepted"),
        None => {
            tracing::debug!(shard, %peer, tls, reason = "max_connections_per_shard", "connection refused at accept")
        }
    }
}

pub(crate) fn count_accept(shard: &str) {
    metrics::counter!("ringpush_accepts_total", "shard" => shard.to_string()).increment(1);
}

/// Decides on a socket just accepted from `peer`: its admission slot, or
/// `None` once the refusal (a GoAway with a reason and a retry-after) was
/// written, best effort and without blocking; the caller then drops the
/// socket, which closes it. A socket of the TLS listener (`tls`) is closed
/// without the GoAway: its client expects a ServerHello, and no key exists
/// yet to seal a frame with. A shard whose API command queue is past
/// `limits.overload_queue_percent` full is behind on work it already took,
/// and refuses new connections as overloaded rather than let them time out.
pub(crate) fn admit(
    context: &ShardContext,
    core: &mut DeliveryCore,
    socket: socket2::SockRef<'_>,
    peer: Option<std::net::SocketAddr>,
    tls: bool,
    now: Instant,
) -> Option<Ticket> {
    // No address: the peer reset the connection before we asked.
    let peer = peer?;
    let limits = &context.config.limits;
    let busy = shard_busy(
        context.commands.len(),
        limits.shard_queue,
        limits.overload_queue_percent,
    );
    let decision = if busy {
        Err(Refusal::ShardBusy)
    } else {
        context.admission.admit(peer.ip(), now)
    };
    match decision {
        Ok(ticket) => Some(ticket),
        Err(refusal) => {
            tracing::debug!(shard = context.id, %peer, tls, refusal = ?refusal, "connection refused at accept");
            let frame = core.refusal_frame(refusal);
            if !tls {
                let _ = socket.send(&frame);
            }
            None
        }
    }
}

/// A shard is busy when `queued` API commands fill `percent` of its queue.
fn shard_busy(queued: usize, capacity: usize, percent: u8) -> bool {
    queued.saturating_mul(100) >= capacity.saturating_mul(usize::from(percent))
}

#[cfg(test)]
mod tests {
    use super::shard_busy;

    #[test]
    fn a_shard_is_busy_from_its_queue_threshold_on() {
        assert!(!shard_busy(0, 65_536, 75));
        assert!(!shard_busy(49_151, 65_536, 75));
        assert!(shard_busy(49_152, 65_536, 75));
        assert!(shard_busy(65_536, 65_536, 100));
        assert!(!shard_busy(65_535, 65_536, 100));
        assert!(shard_busy(1, 10, 1), "1% of a tiny queue is one command");
    }
}
