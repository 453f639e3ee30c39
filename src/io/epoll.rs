//! The epoll backend (mio, edge-triggered): the fallback when io_uring is
//! unavailable (Docker's default seccomp profile, `kernel.io_uring_disabled`)
//! or when the config says `io = "epoll"`. It drives the same
//! `DeliveryCore` as the io_uring backend and only moves bytes: reads go into
//! one scratch buffer per shard, so an idle connection holds no read buffer.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tracing::warn;

use crate::admission::Ticket;
use crate::delivery::{ConnId, DeliveryCore, IoAction};
use crate::shard::{Control, ShardContext};
use crate::store::Store;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKE: Token = Token(usize::MAX - 2);
const TLS_LISTENER: Token = Token(usize::MAX - 3);
const SCRATCH_BYTES: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Bytes the socket did not take yet; empty (no heap) when caught up.
    unsent: BytesMut,
    /// The connection's admission slot, given back when `Conn` is dropped.
    ticket: Ticket,
}

struct Loop {
    poll: Poll,
    core: DeliveryCore,
    store: Store,
    conns: Vec<Option<Conn>>,
    scratch: Vec<u8>,
    shard: String,
    /// `limits.device_send_buffer_bytes`: 0 keeps the kernel's autotuning.
    send_buffer_bytes: u32,
    open: metrics::Gauge,
    /// Set on stop: a closing connection whose socket has not taken all its
    /// bytes (its GoAway) moves to `lingering` instead of being dropped.
    stopping: bool,
    /// Closed connections still writing their last bytes, until the drain
    /// timeout.
    lingering: Vec<Conn>,
}

pub(crate) fn run(context: ShardContext, core: DeliveryCore, store: Store) -> std::io::Result<()> {
    let poll = Poll::new()?;
    let mut listener = context
        .listener
        .as_ref()
        .map(|l| l.try_clone().map(TcpListener::from_std))
        .transpose()?;
    if let Some(listener) = listener.as_mut() {
        poll.registry().register(listener, LISTENER, Interest::READABLE)?;
    }
    let mut tls_listener = context
        .tls_listener
        .as_ref()
        .map(|(l, _)| l.try_clone().map(TcpListener::from_std))
        .transpose()?;
    if let Some(listener) = tls_listener.as_mut() {
        poll.registry()
            .register(listener, TLS_LISTENER, Interest::READABLE)?;
    }
    poll.registry()
        .register(&mut SourceFd(&context.wake.raw()), WAKE, Interest::READABLE)?;
    let shard = context.id.to_string();
    let mut lp = Loop {
        poll,
        core,
        store,
        // Reserved up front like the core's tables (see INITIAL_CONNECTIONS).
        conns: Vec::with_capacity(
            context
                .config
                .limits
                .max_connections_per_shard
                .min(crate::delivery::INITIAL_CONNECTIONS),
        ),
        scratch: vec![0; SCRATCH_BYTES],
        open: metrics::gauge!("ringpush_connections", "shard" => shard.clone(), "backend" => "epoll"),
        shard,
        send_buffer_bytes: context.config.limits.device_send_buffer_bytes,
        stopping: false,
        lingering: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);
    let mut adopted = Vec::new();
    let mut pulse = super::Pulse::new(&context);
    loop {
        pulse.beat();
        let timeout = [lp.core.next_deadline(), lp.store.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if let Err(e) = lp.poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Instant::now();
        let mut stop = false;
        for event in events.iter() {
            match event.token() {
                LISTENER => {
                    if let Some(listener) = &listener {
                        lp.accept_all(listener, &context, false, now);
                    }
                }
                TLS_LISTENER => {
                    if let Some(listener) = &tls_listener {
                        lp.accept_all(listener, &context, true, now);
                    }
                }
                WAKE => stop |= super::drain_queues(&context, &mut lp.core, now, &mut adopted),
                Token(conn) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        lp.read(conn, now);
                    }
                    if event.is_writable() {
                        // Only what earlier iterations handed over: bytes
                        // the core produced in this one (a Welcome with a
                        // new token, a confirmed rotation) wait for the
                        // commit below and `run_actions`.
                        lp.write_unsent(conn, now);
                    }
                }
            }
        }
        for connection in adopted.drain(..) {
            lp.adopt(connection, now);
        }
        lp.core.on_timers(now);
        // Before any byte of this iteration reaches a socket: a device sees
        // a message or a new token only once the log has it.
        lp.store.commit(&mut lp.core, now);
        lp.run_actions(&context);
        if stop {
            let deadline = now + context.config.delivery.drain_timeout();
            super::stop_accepting(&context);
            lp.stopping = true;
            lp.core.shutdown();
            lp.run_actions(&context);
            lp.store.commit(&mut lp.core, now);
            lp.store.sync_on_stop();
            lp.drain(&mut events, deadline);
            return Ok(());
        }
    }
}

impl Loop {
    fn accept_all(&mut self, listener: &TcpListener, context: &ShardContext, tls: bool, now: Instant) {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    super::count_accept(&self.shard);
                    let socket = socket2::SockRef::from(&stream);
                    let Some(ticket) = super::admit(context, &mut self.core, socket, Some(peer), tls, now)
                    else {
                        continue;
                    };
                    let conn = if !tls {
                        self.register(stream, ticket, None, now)
                    } else if let Some(session) = super::new_tls_session(context) {
                        self.register(stream, ticket, Some(session), now)
                    } else {
                        continue;
                    };
                    super::log_accepted(context.id, conn, peer, tls);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE/ENFILE: the connection waits in the backlog;
                    // the next readiness edge retries.
                    metrics::counter!("ringpush_accept_errors_total", "shard" => self.shard.clone())
                        .increment(1);
                    warn!(shard = %self.shard, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn register(
        &mut self,
        mut stream: TcpStream,
        ticket: Ticket,
        tls: Option<Box<crate::tls::TlsSession>>,
        now: Instant,
    ) -> Option<ConnId> {
        let _ = stream.set_nodelay(true);
        super::cap_send_buffer(socket2::SockRef::from(&stream), self.send_buffer_bytes);
        let is_tls = tls.is_some();
        let opened = match tls {
            Some(tls) => self.core.open_tls_connection(now, tls),
            None => self.core.open_connection(now),
        };
        let Some(conn) = opened else {
            let refusal = self.core.overload_frame();
            if !is_tls {
                let _ = stream.write(&refusal);
            }
            return None;
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(conn), interest) {
            warn!(error = %e, "epoll registration failed");
            self.core.on_closed(conn, now);
            return None;
        }
        if self.conns.len() <= conn {
            self.conns.resize_with(conn + 1, || None);
        }
        self.conns[conn] = Some(Conn {
            stream,
            unsent: BytesMut::new(),
            ticket,
        });
        self.open.increment(1.0);
        Some(conn)
    }

    fn adopt(&mut self, connection: super::Adopted, now: Instant) {
        let super::Adopted {
            fd,
            initial,
            ticket,
            tls,
        } = connection;
        if let Some(conn) = self.register(TcpStream::from(fd), ticket, tls, now) {
            self.core.on_handed_over(conn, &initial, now);
        }
    }

    fn read(&mut self, conn: ConnId, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
                return;
            };
            match c.stream.read(&mut self.scratch) {
                Ok(0) => return self.close_now(conn, now),
                Ok(n) => {
                    self.core.on_bytes(conn, &self.scratch[..n], now);
                    // After a close or hand-off decision the rest stays in
                    // the kernel, for the adopting shard to read.
                    if !self.core.wants_input(conn) {
                        return;
                    }
                    // A short read drained the socket; edge triggering
                    // reports later data, so skip the read that would only
                    // return EAGAIN.
                    if n < self.scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.close_now(conn, now),
            }
        }
    }

    /// Writes what the core has for `conn` after what the socket still owes.
    /// Returns false when the socket failed. Only after the iteration's
    /// commit: the core's bytes may depend on it.
    fn flush(&mut self, conn: ConnId, now: Instant) -> bool {
        let more = self.core.take_outbound(conn);
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return false;
        };
        if let Some(more) = more {
            if c.unsent.is_empty() {
                c.unsent = more;
            } else {
                c.unsent.extend_from_slice(&more);
            }
        }
        self.write_unsent(conn, now)
    }

    /// Writes what the socket still owes from earlier flushes (committed
    /// bytes only) and tells the core how much it still holds (the outbound
    /// cap and the write deadline). Returns false when the socket failed.
    fn write_unsent(&mut self, conn: ConnId, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
            return false;
        };
        while !c.unsent.is_empty() {
            match c.stream.write(&c.unsent) {
                Ok(n) => c.unsent.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let held = c.unsent.len();
                    self.core.on_write_progress(conn, held, now);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        c.unsent = BytesMut::new();
        self.core.on_write_progress(conn, 0, now);
        true
    }

    /// On stop: writes what the lingering connections still owe (their
    /// GoAways) as their sockets take it, until all is written or
    /// `deadline`; then the rest are dropped (closed) and counted.
    fn drain(&mut self, events: &mut Events, deadline: Instant) {
        loop {
            self.lingering.retain_mut(|c| loop {
                match c.stream.write(&c.unsent) {
                    Ok(n) => {
                        c.unsent.advance(n);
                        if c.unsent.is_empty() {
                            return false;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            });
            if self.lingering.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                super::count_drain_abandoned(&self.shard, self.lingering.len());
                return;
            }
            // Writable edges of the lingering sockets (still registered) end
            // the wait early; the cap only bounds a missed edge's cost.
            let _ = self.poll.poll(events, Some(left.min(Duration::from_millis(100))));
        }
    }

    fn close_now(&mut self, conn: ConnId, now: Instant) {
        if let Some(mut c) = self.conns.get_mut(conn).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.open.decrement(1.0);
        }
        self.core.on_closed(conn, now);
    }

    fn run_actions(&mut self, context: &ShardContext) {
        let now = Instant::now();
        while let Some(action) = self.core.poll_action() {
            match action {
                IoAction::Send(conn) => {
                    if !self.flush(conn, now) {
                        self.close_now(conn, now);
                    }
                }
                IoAction::Close(conn) => {
                    let flushed = self.flush(conn, now);
                    let owes = self
                        .conns
                        .get(conn)
                        .and_then(Option::as_ref)
                        .is_some_and(|c| !c.unsent.is_empty());
                    if self.stopping && flushed && owes {
                        if let Some(c) = self.conns.get_mut(conn).and_then(Option::take) {
                            self.lingering.push(c);
                            self.open.decrement(1.0);
                        }
                    }
                    self.close_now(conn, now);
                }
                // Whatever the socket did not take is dropped with `Conn`.
                IoAction::Abort(conn) => self.close_now(conn, now),
                IoAction::HandOff { conn, to, initial } => {
                    if let Some(mut c) = self.conns.get_mut(conn).and_then(Option::take) {
                        let _ = self.poll.registry().deregister(&mut c.stream);
                        self.open.decrement(1.0);
                        let mut tls = self.core.take_tls(conn);
                        // TLS records the socket has not taken yet (the
                        // session tickets) go first from the new shard.
                        if let Some(tls) = tls.as_mut() {
                            tls.requeue_output(&c.unsent);
                        }
                        context.peers[to].control(Control::Adopt(super::Adopted {
                            fd: OwnedFd::from(c.stream),
                            initial: initial.to_vec(),
                            ticket: c.ticket,
                            tls,
                        }));
                    }
                    self.core.on_closed(conn, now);
                }
            }
        }
    }
}
