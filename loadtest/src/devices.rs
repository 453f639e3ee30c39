//! Simulated devices: each thread owns a share of the connections in one
//! mio loop. It connects at the paced rate (from source addresses spread over
//! 127.0.0.0/8), says Hello, collects the token from Welcome, acknowledges
//! every Push (one Ack per read, batching the ids), records API-to-device
//! latency from the msgKey, and sends heartbeats. On `Shared::disconnect`
//! every device closes its connection (keeping its token); on
//! `Shared::reconnect` every device connects again at once and says Hello
//! with its saved token, as phones coming back online do. With TLS each
//! connection runs through a rustls client (`crate::tls`); in a reconnect
//! storm every device closes right after its Welcome and connects again,
//! with at most `max_pending_connects` handshakes in flight per thread.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use parking_lot::Mutex;
use ringpush::protocol::{body, decode_slice, Frame, GoAwayReason, PROTOCOL_VERSION};

use crate::stats::{self, Counters};
use crate::tls::{self, TlsClient};

pub struct DeviceConfig {
    pub device_addr: SocketAddr,
    pub app: String,
    pub source_ips: Vec<Ipv4Addr>,
    /// This thread's connections per second (0 = as fast as possible).
    pub connect_rate: f64,
    pub first_index: usize,
    pub count: usize,
    pub record_after: Arc<AtomicBool>,
    /// Disconnect after Welcome: the tokens exist, the devices are offline,
    /// so pushes measure the store path alone.
    pub offline: bool,
    /// The app's deviceSecret: every Hello is signed with it (device
    /// authentication), with the current time and a fresh nonce.
    pub device_secret: Option<String>,
    /// Connect over TLS with this client configuration.
    pub tls: Option<TlsClient>,
    /// This thread's bound on connections opened but not yet welcomed
    /// (0 = none).
    pub max_pending_connects: usize,
    /// Reconnect storm: close each connection at its Welcome and open it
    /// again at once (with the saved token); the latency histogram records
    /// connect-to-Welcome instead of API-to-device.
    pub storm: bool,
}

/// What the device threads share with the rest of the client.
pub struct Shared {
    pub counters: Counters,
    pub tokens: Mutex<Vec<String>>,
    pub stop: AtomicBool,
    /// Close every connection, keeping the tokens (set once).
    pub disconnect: AtomicBool,
    /// Then connect every device again with its token (set once).
    pub reconnect: AtomicBool,
    pub closes: Mutex<std::collections::BTreeMap<String, u64>>,
}

struct Device {
    stream: TcpStream,
    /// Present on TLS connections: every byte goes through it.
    tls: Option<Box<rustls::ClientConnection>>,
    opened_at: Instant,
    partial: Vec<u8>,
    unsent: Vec<u8>,
    welcomed: bool,
    /// From Welcome.
    token: Option<String>,
}

impl Device {
    fn wants_write(&self) -> bool {
        !self.unsent.is_empty() || self.tls.as_ref().is_some_and(|c| c.wants_write())
    }
}

const READ_BYTES: usize = 64 * 1024;

/// Which device slot a thread opens next; the ringpush and the peer device
/// loops share it. Every slot once, paced by `connect_rate` (all at once
/// when every device reconnects after a disconnect), then, in a storm, the
/// slots closed at their Welcome, with at most `max_pending_connects`
/// opened and not yet welcomed.
pub struct ConnectSchedule {
    start: Instant,
    next: usize,
    /// Opened and not yet welcomed (or subscribed): the handshakes in
    /// flight. The loops count them up and down.
    pub pending: usize,
    /// Storm: slots closed at their Welcome, to open again.
    again: VecDeque<usize>,
    disconnected: bool,
    reconnecting: bool,
    opened_this_turn: usize,
}

impl Default for ConnectSchedule {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectSchedule {
    /// Connections opened per turn of a loop connecting as fast as it can,
    /// so that it still reads what arrives.
    const PER_TURN: usize = 256;

    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            next: 0,
            pending: 0,
            again: VecDeque::new(),
            disconnected: false,
            reconnecting: false,
            opened_this_turn: 0,
        }
    }

    /// Every device closed (`Shared::disconnect`): no first connects until
    /// `reconnect`.
    pub fn disconnect(&mut self) {
        self.disconnected = true;
    }

    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    /// Every device connects again, at once, from the first slot.
    pub fn reconnect(&mut self) {
        self.reconnecting = true;
        self.next = 0;
    }

    pub fn reconnecting(&self) -> bool {
        self.reconnecting
    }

    /// A storm slot to open again.
    pub fn again(&mut self, slot: usize) {
        self.again.push_back(slot);
    }

    /// The slot to open now; `None` ends this turn of the loop.
    pub fn next_slot(&mut self, config: &DeviceConfig, now: Instant) -> Option<usize> {
        let slot = self.pick(config, now);
        match slot {
            Some(_) => self.opened_this_turn += 1,
            None => self.opened_this_turn = 0,
        }
        slot
    }

    fn pick(&mut self, config: &DeviceConfig, now: Instant) -> Option<usize> {
        let unpaced = config.connect_rate == 0.0 || self.reconnecting || config.storm;
        if self.throttled(config) || (unpaced && self.opened_this_turn >= Self::PER_TURN) {
            return None;
        }
        if self.first_connects_due(config) {
            if config.connect_rate > 0.0 && !self.reconnecting {
                let due = self.start + Duration::from_secs_f64(self.next as f64 / config.connect_rate);
                if due > now {
                    return None;
                }
            }
            self.next += 1;
            return Some(self.next - 1);
        }
        self.again.pop_front()
    }

    fn first_connects_due(&self, config: &DeviceConfig) -> bool {
        self.next < config.count && (!self.disconnected || self.reconnecting)
    }

    fn throttled(&self, config: &DeviceConfig) -> bool {
        config.max_pending_connects > 0 && self.pending >= config.max_pending_connects
    }

    /// How long the loop may wait for events: briefly while connections
    /// are due and may be opened.
    pub fn poll_timeout(&self, config: &DeviceConfig) -> Duration {
        if (self.first_connects_due(config) || !self.again.is_empty()) && !self.throttled(config) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        }
    }
}

pub fn run(config: DeviceConfig, shared: Arc<Shared>) -> Histogram<u64> {
    let mut histogram = stats::latency_histogram();
    let mut poll = Poll::new().expect("create a poll instance");
    let mut events = Events::with_capacity(4096);
    let mut devices: Vec<Option<Device>> = (0..config.count).map(|_| None).collect();
    // Tokens of the devices closed on `disconnect`, by index.
    let mut saved_tokens: Vec<Option<String>> = vec![None; config.count];
    // Unique across threads and runs: the process, this thread's first
    // device and a counter.
    let nonce_prefix = format!("b{:x}-{:x}-", std::process::id(), config.first_index);
    let mut hellos_signed = 0u64;
    let mut hello = |token: Option<&String>| {
        let mut hello = body::Hello {
            protocol_version: PROTOCOL_VERSION,
            app_id: config.app.clone(),
            platform: 1,
            token: token.cloned().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(secret) = &config.device_secret {
            hellos_signed += 1;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let nonce = format!("{nonce_prefix}{hellos_signed:x}-{now_ms:x}");
            ringpush::device_auth::sign_hello(secret.as_bytes(), &mut hello, now_ms, &nonce);
        }
        Frame::Hello(Box::new(hello)).to_bytes()
    };
    let mut scratch = vec![0u8; READ_BYTES];
    // Plaintext out of TLS sessions, reused.
    let mut plain = Vec::new();
    let mut schedule = ConnectSchedule::new();
    let mut heartbeat = Duration::from_secs(60);
    let mut next_ping = Instant::now() + heartbeat;
    let mut ids: Vec<u64> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        if !schedule.disconnected() && shared.disconnect.load(Ordering::Relaxed) {
            schedule.disconnect();
            for (slot, saved) in devices.iter_mut().zip(saved_tokens.iter_mut()) {
                if let Some(mut device) = slot.take() {
                    let _ = poll.registry().deregister(&mut device.stream);
                    schedule.pending -= usize::from(!device.welcomed);
                    *saved = device.token.take();
                    Counters::add(&shared.counters.disconnected, 1);
                }
            }
        }
        if schedule.disconnected() && !schedule.reconnecting() && shared.reconnect.load(Ordering::Relaxed) {
            schedule.reconnect();
        }
        // Open the connections that are due by the pacing schedule (all at
        // once when reconnecting).
        let now = Instant::now();
        while let Some(slot) = schedule.next_slot(&config, now) {
            let index = config.first_index + slot;
            let opening = connect(&config, index).and_then(|stream| {
                let tls = match &config.tls {
                    Some(client) => Some(Box::new(client.connection().map_err(std::io::Error::other)?)),
                    None => None,
                };
                Ok((stream, tls))
            });
            match opening {
                Ok((mut stream, tls)) => {
                    poll.registry()
                        .register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                        .expect("register a device socket");
                    let token = saved_tokens[slot].take();
                    devices[slot] = Some(Device {
                        stream,
                        tls,
                        opened_at: now,
                        partial: Vec::new(),
                        unsent: hello(token.as_ref()),
                        welcomed: false,
                        token,
                    });
                    schedule.pending += 1;
                }
                Err(_) => {
                    Counters::add(&shared.counters.connect_errors, 1);
                    if config.storm {
                        schedule.again(slot);
                    }
                }
            }
        }
        let timeout = schedule.poll_timeout(&config);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            panic!("poll failed: {e}");
        }
        let record = config.record_after.load(Ordering::Relaxed);
        for event in events.iter() {
            let i = event.token().0;
            let Some(device) = devices[i].as_mut() else {
                continue;
            };
            if event.is_writable() && device.wants_write() && !flush(device) {
                if config.storm {
                    saved_tokens[i] = device.token.take();
                    schedule.again(i);
                }
                schedule.pending -= close(&mut devices[i], &mut poll, &shared, "write_error");
                continue;
            }
            if !(event.is_readable() || event.is_read_closed()) {
                continue;
            }
            let mut closed = None;
            let was_welcomed = device.welcomed;
            loop {
                match device.stream.read(&mut scratch) {
                    Ok(0) => {
                        closed = Some("eof");
                        break;
                    }
                    Ok(n) => {
                        let received = match device.tls.as_deref_mut() {
                            None => Ok(&scratch[..n]),
                            Some(conn) => {
                                plain.clear();
                                tls::receive(conn, &scratch[..n], &mut plain).map(|()| plain.as_slice())
                            }
                        };
                        let outcome = received.and_then(|bytes| {
                            handle_bytes(
                                device,
                                bytes,
                                &shared,
                                &mut ids,
                                (record && !config.storm).then_some(&mut histogram),
                                &mut heartbeat,
                            )
                        });
                        if let Err(reason) = outcome {
                            closed = Some(reason);
                            break;
                        }
                        // A short read drained the socket; with edge
                        // triggering, later data raises a new event, so the
                        // read that would only say EAGAIN is skipped.
                        if n < scratch.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = Some("read_error");
                        break;
                    }
                }
            }
            if !ids.is_empty() {
                Counters::add(&shared.counters.acked, ids.len() as u64);
                Frame::Ack(body::Ids {
                    ids: std::mem::take(&mut ids),
                })
                .encode(&mut device.unsent);
                if !flush(device) {
                    closed = closed.or(Some("write_error"));
                }
            } else if device.tls.as_ref().is_some_and(|c| c.wants_write()) && !flush(device) {
                // Handshake messages, or the Hello rustls held until the
                // handshake completed.
                closed = closed.or(Some("write_error"));
            }
            if device.welcomed && !was_welcomed {
                schedule.pending -= 1;
                if let Some(conn) = &device.tls {
                    let kind = if tls::resumed(conn) {
                        &shared.counters.tls_resumed
                    } else {
                        &shared.counters.tls_full
                    };
                    Counters::add(kind, 1);
                }
            }
            if let Some(reason) = closed {
                if config.storm {
                    saved_tokens[i] = device.token.take();
                    schedule.again(i);
                }
                schedule.pending -= close(&mut devices[i], &mut poll, &shared, reason);
            } else if config.storm && device.welcomed {
                if record {
                    let _ = histogram.record((device.opened_at.elapsed().as_micros() as u64).max(1));
                }
                let _ = poll.registry().deregister(&mut device.stream);
                saved_tokens[i] = device.token.take();
                devices[i] = None;
                schedule.again(i);
            } else if config.offline && device.welcomed {
                let _ = poll.registry().deregister(&mut device.stream);
                devices[i] = None;
            }
        }
        if Instant::now() >= next_ping {
            next_ping = Instant::now() + heartbeat;
            let ping = Frame::Ping(body::Heartbeat { time_ms: 0 }).to_bytes();
            for device in devices.iter_mut().flatten().filter(|d| d.welcomed) {
                device.unsent.extend_from_slice(&ping);
                flush(device);
            }
        }
    }
    histogram
}

pub(crate) fn connect(config: &DeviceConfig, index: usize) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    if !config.source_ips.is_empty() {
        let ip = config.source_ips[index % config.source_ips.len()];
        // Port 0 with IP_BIND_ADDRESS_NO_PORT lets the kernel pick the port
        // at connect time per 4-tuple, so each source address gets its own
        // ~28k ports.
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&config.device_addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

fn bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size for an integer
    // option on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Decodes what arrived; `Err` names why the server closed the session.
fn handle_bytes(
    device: &mut Device,
    bytes: &[u8],
    shared: &Shared,
    ids: &mut Vec<u64>,
    mut histogram: Option<&mut Histogram<u64>>,
    heartbeat: &mut Duration,
) -> Result<(), &'static str> {
    let joined;
    let input: &[u8] = if device.partial.is_empty() {
        bytes
    } else {
        device.partial.extend_from_slice(bytes);
        joined = std::mem::take(&mut device.partial);
        &joined
    };
    let mut at = 0;
    let now_us = stats::unix_micros();
    let result = loop {
        match decode_slice(&input[at..], 1 << 20) {
            Ok(Some((frame, used))) => {
                at += used;
                match frame {
                    Frame::Push(push) => {
                        Counters::add(&shared.counters.delivered, 1);
                        ids.push(push.id);
                        if let (Some(h), Some(sent)) =
                            (histogram.as_deref_mut(), stats::sent_micros(&push.msg_key))
                        {
                            let _ = h.record(now_us.saturating_sub(sent).max(1));
                        }
                    }
                    Frame::Welcome(w) => {
                        device.welcomed = true;
                        *heartbeat = Duration::from_secs(u64::from(w.heartbeat_secs.max(1)));
                        if device.token.is_none() {
                            shared.tokens.lock().push(w.token.clone());
                        }
                        device.token = Some(w.token);
                        Counters::add(&shared.counters.connected, 1);
                    }
                    Frame::GoAway(g) => {
                        break Err(match g.reason {
                            r if r == GoAwayReason::Replaced as u32 => "go_away_replaced",
                            r if r == GoAwayReason::Shutdown as u32 => "go_away_shutdown",
                            r if r == GoAwayReason::Overloaded as u32 => "go_away_overloaded",
                            _ => "go_away_other",
                        })
                    }
                    Frame::Error(_) => break Err("error_frame"),
                    _ => {}
                }
            }
            Ok(None) => break Ok(()),
            Err(_) => break Err("undecodable_frame"),
        }
    };
    if at < input.len() {
        device.partial = input[at..].to_vec();
    }
    result
}

fn flush(device: &mut Device) -> bool {
    if let Some(conn) = device.tls.as_deref_mut() {
        return tls::flush(conn, &mut device.stream, &mut device.unsent);
    }
    while !device.unsent.is_empty() {
        match device.stream.write(&device.unsent) {
            Ok(n) => {
                device.unsent.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::NotConnected => {
                return true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    device.unsent = Vec::new();
    true
}

/// Drops a device the server closed (or that failed); 1 when it was still
/// waiting for its Welcome (so no longer a pending connect), else 0.
fn close(slot: &mut Option<Device>, poll: &mut Poll, shared: &Shared, reason: &'static str) -> usize {
    let Some(mut device) = slot.take() else {
        return 0;
    };
    let _ = poll.registry().deregister(&mut device.stream);
    if !device.welcomed {
        Counters::add(&shared.counters.connect_errors, 1);
    }
    Counters::add(&shared.counters.closed_by_server, 1);
    *shared.closes.lock().entry(reason.to_string()).or_default() += 1;
    usize::from(!device.welcomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: usize, connect_rate: f64, max_pending_connects: usize, storm: bool) -> DeviceConfig {
        DeviceConfig {
            device_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            app: "demo".into(),
            source_ips: Vec::new(),
            connect_rate,
            first_index: 0,
            count,
            record_after: Arc::new(AtomicBool::new(false)),
            offline: false,
            device_secret: None,
            tls: None,
            max_pending_connects,
            storm,
        }
    }

    fn turn(schedule: &mut ConnectSchedule, config: &DeviceConfig, now: Instant) -> Vec<usize> {
        std::iter::from_fn(|| schedule.next_slot(config, now)).collect()
    }

    #[test]
    fn paced_connects_open_what_is_due_and_no_more() {
        let config = config(100, 1000.0, 0, false);
        let mut schedule = ConnectSchedule::new();
        let start = schedule.start;
        // 1,000/s: slots 0..=10 are due after 10 ms.
        assert_eq!(
            turn(&mut schedule, &config, start + Duration::from_millis(10)),
            (0..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            turn(&mut schedule, &config, start + Duration::from_millis(10)),
            Vec::<usize>::new()
        );
        assert_eq!(schedule.poll_timeout(&config), Duration::from_millis(1));
        assert_eq!(
            turn(&mut schedule, &config, start + Duration::from_secs(1)).len(),
            89
        );
        assert_eq!(schedule.poll_timeout(&config), Duration::from_millis(100));
    }

    #[test]
    fn unpaced_connects_come_in_turns_and_stop_at_the_pending_bound() {
        let config = config(1000, 0.0, 0, false);
        let mut schedule = ConnectSchedule::new();
        let now = Instant::now();
        assert_eq!(turn(&mut schedule, &config, now).len(), ConnectSchedule::PER_TURN);
        assert_eq!(turn(&mut schedule, &config, now).len(), ConnectSchedule::PER_TURN);

        let bounded = self::config(1000, 0.0, 10, false);
        let mut schedule = ConnectSchedule::new();
        // The loop counts each slot it opens as pending.
        let mut opened = 0;
        while schedule.next_slot(&bounded, now).is_some() {
            schedule.pending += 1;
            opened += 1;
        }
        assert_eq!(opened, 10);
        assert_eq!(schedule.next_slot(&bounded, now), None);
        assert_eq!(schedule.poll_timeout(&bounded), Duration::from_millis(100));
        schedule.pending -= 1;
        assert_eq!(schedule.next_slot(&bounded, now), Some(10));
    }

    #[test]
    fn a_storm_reopens_closed_slots_after_the_first_connects() {
        let config = config(3, 0.0, 0, true);
        let mut schedule = ConnectSchedule::new();
        let now = Instant::now();
        assert_eq!(turn(&mut schedule, &config, now), vec![0, 1, 2]);
        schedule.again(1);
        schedule.again(0);
        assert_eq!(schedule.poll_timeout(&config), Duration::from_millis(1));
        assert_eq!(turn(&mut schedule, &config, now), vec![1, 0]);
    }

    #[test]
    fn after_a_disconnect_nothing_opens_until_every_device_reconnects_at_once() {
        let config = config(5, 1.0, 0, false);
        let mut schedule = ConnectSchedule::new();
        let start = schedule.start;
        assert_eq!(turn(&mut schedule, &config, start), vec![0]);
        schedule.disconnect();
        assert_eq!(
            turn(&mut schedule, &config, start + Duration::from_secs(60)),
            Vec::<usize>::new()
        );
        schedule.reconnect();
        // Reconnecting is not paced: all five at once, from the first.
        assert_eq!(turn(&mut schedule, &config, start), vec![0, 1, 2, 3, 4]);
    }
}
