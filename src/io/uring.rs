//! The io_uring backend: one ring per shard, built on the `io-uring` crate.
//! Multishot accept on the shard's listener; multishot recv into a ring of
//! provided buffers shared by all the shard's connections, so an idle
//! connection pins no read buffer; one send in flight per connection, all
//! sends of a loop iteration submitted with one `io_uring_enter`. It drives
//! the same `DeliveryCore` as the epoll backend and decides nothing itself.
//!
//! Not used: SQPOLL (a spinning kernel thread per ring costs a core on this
//! class of machine) and SEND_ZC (slower than a copy for frames this small).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tracing::warn;

use crate::admission::Ticket;
use crate::delivery::{ConnId, DeliveryCore, IoAction};
use crate::shard::{Control, ShardContext};
use crate::store::Store;

const BUFFER_GROUP: u16 = 0;
/// Index of the plain and the TLS device listener in `listener_fds`.
const PLAIN: usize = 0;
const TLS: usize = 1;
/// Pause before accepting again after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a completion belongs to; stored in the top byte of `user_data`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Wake = 4,
    Cancel = 5,
    /// Accept on the TLS listener.
    AcceptTls = 6,
}

/// `user_data` layout: op (8 bits) | generation (24 bits) | conn (32 bits).
/// The generation makes completions of a closed connection whose `ConnId`
/// was reused recognisable as stale.
fn user_data(op: Op, generation: u32, conn: ConnId) -> u64 {
    (u64::from(op as u8) << 56) | (u64::from(generation & 0xFF_FFFF) << 32) | (conn as u64 & 0xFFFF_FFFF)
}

fn decode_user_data(data: u64) -> (u8, u32, ConnId) {
    (
        (data >> 56) as u8,
        ((data >> 32) & 0xFF_FFFF) as u32,
        (data & 0xFFFF_FFFF) as ConnId,
    )
}

/// Checks that this kernel and its seccomp policy allow what the backend
/// uses: ring setup, the opcodes, and a provided-buffer ring.
pub fn probe() -> std::io::Result<()> {
    let ring = IoUring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for code in [
        opcode::AcceptMulti::CODE,
        opcode::RecvMulti::CODE,
        opcode::Send::CODE,
        opcode::PollAdd::CODE,
        opcode::AsyncCancel::CODE,
    ] {
        if !probe.is_supported(code) {
            return Err(std::io::Error::other(format!(
                "io_uring opcode {code} unsupported"
            )));
        }
    }
    let buffers = BufferRing::new(&ring, 2, 64)?;
    buffers.unregister(&ring);
    Ok(())
}

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING): the kernel picks a
/// free buffer for each receive and names it in the completion; we hand it
/// back once the core has consumed the bytes.
struct BufferRing {
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    count: u16,
    buffer_bytes: u32,
    /// Our copy of the tail; the shared one is published with Release.
    tail: u16,
}

impl BufferRing {
    fn new(ring: &IoUring, count: u16, buffer_bytes: u32) -> std::io::Result<Self> {
        assert!(count.is_power_of_two());
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        let memory_layout = Layout::from_size_align(usize::from(count) * buffer_bytes as usize, 4096)
            .map_err(std::io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, entries are
        // 16 bytes, buffer_bytes >= 64), as alloc_zeroed requires.
        let (entries, memory) = unsafe {
            (
                alloc_zeroed(entries_layout).cast::<types::BufRingEntry>(),
                alloc_zeroed(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        // Fault the buffers in now: the kernel fills them under load anyway,
        // a page fault inside its copy is slower than here, and the ring
        // then counts in the start-up footprint rather than appearing as
        // per-connection growth during the first connect storm.
        // SAFETY: `memory` was just allocated with `memory_layout`, so all
        // `memory_layout.size()` bytes are ours to write.
        unsafe { std::ptr::write_bytes(memory, std::hint::black_box(0), memory_layout.size()) };
        let mut this = Self {
            entries,
            entries_layout,
            memory,
            memory_layout,
            count,
            buffer_bytes,
            tail: 0,
        };
        // SAFETY: `entries` is page-aligned, zeroed and `count` entries long;
        // it stays allocated until `Drop`, which runs after `unregister` (or
        // after the ring itself is gone, which also ends the registration).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BUFFER_GROUP, 0)?;
        }
        for bid in 0..count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    fn unregister(&self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(BUFFER_GROUP);
    }

    /// Queues buffer `bid` for reuse; visible to the kernel after `publish`.
    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: `index` < count, so the entry is inside the allocation;
        // the kernel reads only entries between its head and the published
        // tail, and this one is past the published tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        // SAFETY: `bid` < count, so the buffer lies inside `memory`.
        let addr = unsafe { self.memory.add(usize::from(bid) * self.buffer_bytes as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buffer_bytes);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in the first entry's reserved field of our
        // live, aligned allocation; the kernel reads it concurrently, hence
        // the atomic view and the Release store that orders the entries
        // written by `push` before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The bytes the kernel wrote into buffer `bid`.
    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.buffer_bytes as usize);
        // SAFETY: bounds checked above; the kernel finished writing this
        // buffer before posting the completion that named it, and will not
        // touch it again until we `push` it back.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.add(usize::from(bid) * self.buffer_bytes as usize),
                len,
            )
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that used
        // them is dropped first (field order in `Backend`).
        unsafe {
            dealloc(self.entries.cast(), self.entries_layout);
            dealloc(self.memory, self.memory_layout);
        }
    }
}

enum ConnState {
    Open,
    /// Close after the in-flight send completes.
    Closing,
    /// Close as soon as the in-flight send, cancelled, completes; its
    /// bytes are not waited for.
    Aborting,
    /// Recv cancelled; waiting for its last completion before the socket
    /// moves to shard `to` with these bytes (plaintext: a TLS session
    /// decrypts what arrives meanwhile and moves too).
    HandingOff {
        to: usize,
        initial: Vec<u8>,
        tls: Option<Box<crate::tls::TlsSession>>,
    },
}

struct Conn {
    fd: OwnedFd,
    generation: u32,
    state: ConnState,
    /// The buffer of the send in flight and how much of it the kernel took.
    /// Its heap allocation must not move or be freed until the completion.
    in_flight: Option<(BytesMut, usize)>,
    /// The core asked for a send while one was in flight.
    send_wanted: bool,
    recv_armed: bool,
    /// The connection's admission slot, given back when `Conn` is dropped.
    ticket: Ticket,
}

/// Field order matters: the ring is dropped before the buffer memory it
/// points at.
struct Backend {
    ring: IoUring,
    buffers: BufferRing,
    core: DeliveryCore,
    store: Store,
    conns: Vec<Option<Conn>>,
    next_generation: u32,
    /// The plain and the TLS listener, each if enabled.
    listener_fds: [Option<i32>; 2],
    wake_fd: i32,
    /// Connections whose multishot recv ended and must be re-armed.
    rearm: Vec<ConnId>,
    /// Accepting paused after EMFILE/ENFILE; re-armed at this time (per
    /// listener, as `listener_fds`).
    accept_retry_at: [Option<Instant>; 2],
    peers: std::sync::Arc<[crate::shard::ShardHandle]>,
    shard: String,
    /// `limits.device_send_buffer_bytes`: 0 keeps the kernel's autotuning.
    send_buffer_bytes: u32,
    open: metrics::Gauge,
    submissions: metrics::Counter,
    enters: metrics::Counter,
    enobufs: metrics::Counter,
}

pub(crate) fn run(context: ShardContext, core: DeliveryCore, store: Store) -> std::io::Result<()> {
    let limits = &context.config.limits;
    let ring = build_ring()?;
    let buffers = BufferRing::new(&ring, limits.recv_buffers, limits.recv_buffer_bytes)?;
    let shard = context.id.to_string();
    let mut b = Backend {
        ring,
        buffers,
        core,
        store,
        // Reserved up front like the core's tables (see INITIAL_CONNECTIONS).
        conns: Vec::with_capacity(
            limits
                .max_connections_per_shard
                .min(crate::delivery::INITIAL_CONNECTIONS),
        ),
        next_generation: 0,
        listener_fds: [
            context.listener.as_ref().map(AsRawFd::as_raw_fd),
            context.tls_listener.as_ref().map(|(l, _)| l.as_raw_fd()),
        ],
        wake_fd: context.wake.raw(),
        rearm: Vec::new(),
        accept_retry_at: [None, None],
        peers: context.peers.clone(),
        open: metrics::gauge!("ringpush_connections", "shard" => shard.clone(), "backend" => "uring"),
        submissions: metrics::counter!("ringpush_uring_submissions_total", "shard" => shard.clone()),
        enters: metrics::counter!("ringpush_uring_enters_total", "shard" => shard.clone()),
        enobufs: metrics::counter!("ringpush_uring_recv_enobufs_total", "shard" => shard.clone()),
        shard,
        send_buffer_bytes: limits.device_send_buffer_bytes,
    };
    b.arm_accept(PLAIN);
    b.arm_accept(TLS);
    b.arm_wake();
    let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    let mut adopted = Vec::new();
    let mut pulse = super::Pulse::new(&context);
    loop {
        pulse.beat();
        b.enter()?;
        completions.extend(
            b.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let now = Instant::now();
        let mut stop = false;
        for (data, result, flags) in completions.drain(..) {
            let (op, generation, conn) = decode_user_data(data);
            match op {
                x if x == Op::Accept as u8 => b.on_accept(&context, PLAIN, result, flags, now),
                x if x == Op::AcceptTls as u8 => b.on_accept(&context, TLS, result, flags, now),
                x if x == Op::Recv as u8 => b.on_recv(conn, generation, result, flags, now),
                x if x == Op::Send as u8 => b.on_send(conn, generation, result, now),
                x if x == Op::Wake as u8 => {
                    if !cqueue::more(flags) {
                        b.arm_wake();
                    }
                    stop |= super::drain_queues(&context, &mut b.core, now, &mut adopted);
                }
                _ => {} // Cancel completions carry nothing we need.
            }
        }
        b.buffers.publish();
        for connection in adopted.drain(..) {
            b.adopt(connection, now);
        }
        for listener in [PLAIN, TLS] {
            if b.accept_retry_at[listener].is_some_and(|at| at <= now) {
                b.accept_retry_at[listener] = None;
                b.arm_accept(listener);
            }
        }
        b.core.on_timers(now);
        // Before any byte of this iteration reaches a socket: a device sees
        // a message or a new token only once the log has it.
        b.store.commit(&mut b.core, now);
        b.run_actions(now);
        for conn in std::mem::take(&mut b.rearm) {
            b.arm_recv(conn);
        }
        if stop {
            let deadline = now + context.config.delivery.drain_timeout();
            super::stop_accepting(&context);
            b.core.shutdown();
            b.run_actions(now);
            b.store.commit(&mut b.core, now);
            b.store.sync_on_stop();
            b.drain_sends(&mut completions, deadline);
            return Ok(());
        }
    }
}

fn build_ring() -> std::io::Result<IoUring> {
    // DEFER_TASKRUN runs completion work only when we enter the ring, which
    // keeps the shard's thread in control of when work happens; it needs
    // SINGLE_ISSUER, true by construction (one thread per ring).
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(16384)
        .build(4096)
        .or_else(|e| {
            warn!(error = %e, "io_uring without DEFER_TASKRUN");
            IoUring::builder().setup_cqsize(16384).build(4096)
        })
}

impl Backend {
    /// Queues an SQE, submitting first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built by this backend points only at memory
            // that outlives its completion: send buffers live in `Conn` until
            // their completion; receives use the provided-buffer ring; other
            // ops carry no pointers.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                warn!(shard = %self.shard, error = %e, "io_uring submit failed while the queue was full");
            }
        }
    }

    /// On stop: waits until `deadline` (`delivery.drain_timeout_secs`) for
    /// the sends in flight, such as the GoAways, so no buffer the kernel
    /// still reads is freed. If the time runs out, the remaining buffers are
    /// leaked rather than freed under the kernel, and their sockets close
    /// with the process.
    fn drain_sends(&mut self, completions: &mut Vec<(u64, i32, u32)>, deadline: Instant) {
        while self.conns.iter().flatten().any(|c| c.in_flight.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.enter_for(left).is_err() {
                let mut abandoned = 0;
                for c in self.conns.iter_mut().flatten() {
                    if let Some((buf, _)) = c.in_flight.take() {
                        std::mem::forget(buf);
                        abandoned += 1;
                    }
                }
                super::count_drain_abandoned(&self.shard, abandoned);
                return;
            }
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let now = Instant::now();
            for (data, result, _) in completions.drain(..) {
                let (op, generation, conn) = decode_user_data(data);
                if op == Op::Send as u8 {
                    self.on_send(conn, generation, result, now);
                }
            }
        }
    }

    /// Submits everything queued and waits for at least one completion or
    /// the core's next deadline.
    fn enter(&mut self) -> std::io::Result<()> {
        let deadline = [
            self.core.next_deadline(),
            self.accept_retry_at[PLAIN],
            self.accept_retry_at[TLS],
            self.store.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        self.enter_for(wait)
    }

    /// Submits everything queued and waits at most `wait` for a completion.
    fn enter_for(&mut self, wait: Duration) -> std::io::Result<()> {
        let queued = self.ring.submission().len();
        let timespec = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&timespec);
        self.enters.increment(1);
        self.submissions.increment(queued as u64);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn arm_accept(&mut self, listener: usize) {
        let Some(fd) = self.listener_fds[listener] else {
            return;
        };
        let op = if listener == TLS {
            Op::AcceptTls
        } else {
            Op::Accept
        };
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .build()
            .user_data(user_data(op, 0, 0));
        self.push(entry);
    }

    fn arm_wake(&mut self) {
        let entry = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(Op::Wake, 0, 0));
        self.push(entry);
    }

    fn arm_recv(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return;
        };
        if c.recv_armed || !matches!(c.state, ConnState::Open) {
            return;
        }
        c.recv_armed = true;
        let entry = opcode::RecvMulti::new(types::Fd(c.fd.as_raw_fd()), BUFFER_GROUP)
            .build()
            .user_data(user_data(Op::Recv, c.generation, conn));
        self.push(entry);
    }

    fn on_accept(&mut self, context: &ShardContext, listener: usize, result: i32, flags: u32, now: Instant) {
        if result < 0 {
            metrics::counter!("ringpush_accept_errors_total", "shard" => self.shard.clone()).increment(1);
            if matches!(
                -result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            ) {
                // Out of descriptors or memory: the connection waits in the
                // backlog. Re-arming at once would fail at once, in a loop.
                if !cqueue::more(flags) {
                    self.accept_retry_at[listener] = Some(now + ACCEPT_BACKOFF);
                }
                warn!(shard = %self.shard, errno = -result, "accept failed; retrying shortly");
            } else if !cqueue::more(flags) {
                self.arm_accept(listener);
            }
            return;
        }
        if !cqueue::more(flags) {
            self.arm_accept(listener);
        }
        super::count_accept(&self.shard);
        // SAFETY: a non-negative accept result is a new descriptor that only
        // this completion refers to.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        let socket = socket2::SockRef::from(&fd);
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        let tls = listener == TLS;
        let Some(ticket) = super::admit(context, &mut self.core, socket, peer, tls, now) else {
            return;
        };
        let conn = if !tls {
            self.register(fd, ticket, None, now)
        } else if let Some(session) = super::new_tls_session(context) {
            self.register(fd, ticket, Some(session), now)
        } else {
            return;
        };
        if let Some(peer) = peer {
            super::log_accepted(context.id, conn, peer, tls);
        }
    }

    fn adopt(&mut self, connection: super::Adopted, now: Instant) {
        let super::Adopted {
            fd,
            initial,
            ticket,
            tls,
        } = connection;
        if let Some(conn) = self.register(fd, ticket, tls, now) {
            self.core.on_handed_over(conn, &initial, now);
        }
    }

    fn register(
        &mut self,
        fd: OwnedFd,
        ticket: Ticket,
        tls: Option<Box<crate::tls::TlsSession>>,
        now: Instant,
    ) -> Option<ConnId> {
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
        super::cap_send_buffer(socket2::SockRef::from(&fd), self.send_buffer_bytes);
        let is_tls = tls.is_some();
        let opened = match tls {
            Some(tls) => self.core.open_tls_connection(now, tls),
            None => self.core.open_connection(now),
        };
        let Some(conn) = opened else {
            if !is_tls {
                let refusal = self.core.overload_frame();
                // Best effort on a non-blocking write; the socket closes on drop.
                let _ = socket2::SockRef::from(&fd).send(&refusal);
            }
            return None;
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        if self.conns.len() <= conn {
            self.conns.resize_with(conn + 1, || None);
        }
        self.conns[conn] = Some(Conn {
            fd,
            generation: self.next_generation & 0xFF_FFFF,
            state: ConnState::Open,
            in_flight: None,
            send_wanted: false,
            recv_armed: false,
            ticket,
        });
        self.open.increment(1.0);
        self.arm_recv(conn);
        Some(conn)
    }

    fn live(&mut self, conn: ConnId, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(conn)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == generation)
    }

    fn on_recv(&mut self, conn: ConnId, generation: u32, result: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let data_len = usize::try_from(result).unwrap_or(0);
        let buffers = &self.buffers;
        let Some(c) = self
            .conns
            .get_mut(conn)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == generation)
        else {
            if let Some(bid) = bid {
                self.buffers.push(bid);
            }
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        match &mut c.state {
            ConnState::HandingOff { initial, tls, .. } => {
                if let Some(bid) = bid {
                    let bytes = buffers.bytes(bid, data_len);
                    match tls {
                        None => initial.extend_from_slice(bytes),
                        Some(tls) => {
                            // A failure stays in the session: the adopting
                            // shard's first read reports it and closes.
                            let mut plaintext = BytesMut::new();
                            let _ = tls.read_tls(bytes, &mut plaintext);
                            initial.extend_from_slice(&plaintext);
                        }
                    }
                }
            }
            ConnState::Closing | ConnState::Aborting => {}
            ConnState::Open if result > 0 => {
                let bid = bid.expect("a receive with data names its buffer");
                self.core.on_bytes(conn, self.buffers.bytes(bid, data_len), now);
                if !self.core.wants_input(conn) {
                    // A hand-off (or close) was decided: act now, so later
                    // completions of this batch find the connection handing
                    // off and keep their bytes for the adopting shard.
                    self.buffers.push(bid);
                    self.run_actions(now);
                    return self.after_recv(conn, generation, now);
                }
            }
            ConnState::Open if result == -libc::ENOBUFS => {
                // Every shared buffer was in use; they are back once this
                // batch is processed, so re-arm then.
                self.enobufs.increment(1);
            }
            ConnState::Open => {
                // EOF or a socket error: the device is gone.
                if let Some(bid) = bid {
                    self.buffers.push(bid);
                }
                self.peer_gone(conn, now);
                return;
            }
        }
        if let Some(bid) = bid {
            self.buffers.push(bid);
        }
        self.after_recv(conn, generation, now);
    }

    /// Re-arms a receive that ended, or completes a hand-off waiting for it.
    fn after_recv(&mut self, conn: ConnId, generation: u32, now: Instant) {
        let Some(c) = self.live(conn, generation) else {
            return;
        };
        if !c.recv_armed {
            match c.state {
                ConnState::Open => self.rearm.push(conn),
                ConnState::HandingOff { .. } => self.finish_hand_off(conn, now),
                ConnState::Closing | ConnState::Aborting => {}
            }
        }
    }

    fn peer_gone(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return;
        };
        if c.in_flight.is_none() {
            self.finish_close(conn, now);
        } else if !matches!(c.state, ConnState::Aborting) {
            c.state = ConnState::Closing;
        }
    }

    fn on_send(&mut self, conn: ConnId, generation: u32, result: i32, now: Instant) {
        let Some(c) = self.live(conn, generation) else {
            return;
        };
        let Some((buf, mut sent)) = c.in_flight.take() else {
            return;
        };
        if result < 0 || matches!(c.state, ConnState::Aborting) {
            // The kernel is done with `buf`: this was its completion.
            self.finish_close(conn, now);
            return;
        }
        sent += result as usize;
        if sent < buf.len() {
            self.submit_send(conn, buf, sent, now);
            return;
        }
        if matches!(c.state, ConnState::HandingOff { .. }) {
            if !c.recv_armed {
                self.finish_hand_off(conn, now);
            }
            return;
        }
        let closing = matches!(c.state, ConnState::Closing);
        let wanted = c.send_wanted;
        // The socket took everything it was given: the write deadline
        // starts over with the next send.
        self.core.on_write_progress(conn, 0, now);
        if wanted || closing {
            if let Some(c) = self.live(conn, generation) {
                c.send_wanted = false;
            }
            self.start_send(conn, now);
        }
        let idle = self.live(conn, generation).is_some_and(|c| c.in_flight.is_none());
        if closing && idle {
            self.finish_close(conn, now);
        }
    }

    /// Starts a send of whatever the core has queued, unless one is in
    /// flight already (then it follows when that completes).
    fn start_send(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return;
        };
        if c.in_flight.is_some() {
            c.send_wanted = true;
            return;
        }
        if let Some(buf) = self.core.take_outbound(conn) {
            self.submit_send(conn, buf, 0, now);
        }
    }

    /// Submits `buf[offset..]`; until its completion those bytes count as
    /// held back by the socket (the outbound cap, the write deadline).
    fn submit_send(&mut self, conn: ConnId, buf: BytesMut, offset: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return;
        };
        let held = buf.len() - offset;
        let len = u32::try_from(held).unwrap_or(u32::MAX);
        // SAFETY (for the pointer in the SQE): `buf` moves into `c.in_flight`
        // below; moving a BytesMut does not move its heap allocation, and it
        // is neither mutated nor dropped until this send's completion.
        let ptr = buf[offset..].as_ptr();
        let entry = opcode::Send::new(types::Fd(c.fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(Op::Send, c.generation, conn));
        c.in_flight = Some((buf, offset));
        self.push(entry);
        self.core.on_write_progress(conn, held, now);
    }

    fn finish_close(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(conn).and_then(Option::take) {
            // shutdown() ends the multishot recv (it completes with 0) and
            // sends FIN even though the pending recv still holds a reference
            // to the socket; the descriptor is closed by the drop.
            let _ = socket2::SockRef::from(&c.fd).shutdown(std::net::Shutdown::Both);
            self.open.decrement(1.0);
        }
        self.core.on_closed(conn, now);
    }

    /// Closes now, or once the send in flight completes: it is cancelled
    /// and the socket shut down, so the completion comes without the peer
    /// reading (the kernel may still hold the buffer until then).
    fn abort(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            self.core.on_closed(conn, now);
            return;
        };
        if c.in_flight.is_none() {
            self.finish_close(conn, now);
            return;
        }
        if matches!(c.state, ConnState::Aborting) {
            return;
        }
        c.state = ConnState::Aborting;
        c.send_wanted = false;
        let _ = socket2::SockRef::from(&c.fd).shutdown(std::net::Shutdown::Both);
        let target = user_data(Op::Send, c.generation, conn);
        let entry =
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(Op::Cancel, c.generation, conn));
        self.push(entry);
    }

    fn begin_hand_off(&mut self, conn: ConnId, to: usize, initial: Vec<u8>, now: Instant) {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return;
        };
        c.state = ConnState::HandingOff {
            to,
            initial,
            tls: self.core.take_tls(conn),
        };
        if c.recv_armed {
            let target = user_data(Op::Recv, c.generation, conn);
            let entry =
                opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(user_data(Op::Cancel, c.generation, conn));
            self.push(entry);
        } else {
            self.finish_hand_off(conn, now);
        }
    }

    fn finish_hand_off(&mut self, conn: ConnId, now: Instant) {
        // A send in flight (a TLS session's tickets) completes here first:
        // its buffer must outlive it, and its bytes precede the new
        // shard's. `on_send` comes back here.
        if self
            .conns
            .get(conn)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.in_flight.is_some())
        {
            return;
        }
        let Some(c) = self.conns.get_mut(conn).and_then(Option::take) else {
            return;
        };
        self.open.decrement(1.0);
        if let ConnState::HandingOff { to, initial, tls } = c.state {
            self.peers[to].control(Control::Adopt(super::Adopted {
                fd: c.fd,
                initial,
                ticket: c.ticket,
                tls,
            }));
        }
        self.core.on_closed(conn, now);
    }

    fn run_actions(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                IoAction::Send(conn) => self.start_send(conn, now),
                IoAction::Abort(conn) => self.abort(conn, now),
                IoAction::Close(conn) => {
                    let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
                        self.core.on_closed(conn, now);
                        continue;
                    };
                    c.state = ConnState::Closing;
                    self.start_send(conn, now);
                    let idle = self.conns[conn].as_ref().is_some_and(|c| c.in_flight.is_none());
                    if idle {
                        self.finish_close(conn, now);
                    }
                }
                IoAction::HandOff { conn, to, initial } => {
                    self.begin_hand_off(conn, to, initial.to_vec(), now)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let data = user_data(Op::Send, 0x12_3456, 0xABCD);
        assert_eq!(decode_user_data(data), (Op::Send as u8, 0x12_3456, 0xABCD));
    }
}
