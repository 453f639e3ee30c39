//! Shard threads: one per core, each with its own device listeners (plain
//! and TLS, SO_REUSEPORT), its own I/O backend and its own `DeliveryCore`. This file
//! owns starting and stopping them and the two ways work reaches a shard: the
//! bounded command queue the API fills (`ShardHandle::send`) and the control
//! queue shards use to hand connections to each other, which also carries
//! stops and reloaded configurations (`reconfigure`); and each loop's
//! heartbeat, which the watchdog reads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::{error, info, warn};

use crate::admission::Admission;
use crate::config::{Config, IoBackend};
use crate::delivery::DeliveryCore;
use crate::io::EventFd;
use crate::message::Command;
use crate::store::{DataDir, StorageHealth, Store};

/// Shard-to-shard and lifecycle messages; never refused, never dropped.
pub enum Control {
    /// A connection whose token this shard owns, with the (plaintext)
    /// bytes read so far, its admission slot (still held: the connection
    /// lives on) and, from the TLS listener, its TLS session.
    Adopt(crate::io::Adopted),
    /// Send every device GoAway(shutdown), flush, and end the thread.
    Stop,
    /// A reloaded configuration (`reload`): applied between two loop
    /// iterations, so the shard's hot path reads its own copy, never a lock.
    Reconfigure(Arc<ShardSettings>),
}

/// What a reload hands every shard: the effective configuration and the
/// device authentication all shards share.
pub struct ShardSettings {
    pub config: Config,
    pub device_auth: Arc<crate::device_auth::DeviceAuth>,
}

/// Queues `settings` on every shard; each applies it at its next wake-up.
pub fn reconfigure(handles: &[ShardHandle], settings: Arc<ShardSettings>) {
    for handle in handles {
        handle.control(Control::Reconfigure(settings.clone()));
    }
}

/// The API's way into one shard.
pub struct ShardHandle {
    commands: Sender<Command>,
    control: Sender<Control>,
    wake: Arc<EventFd>,
}

impl ShardHandle {
    /// Queues a command; `Err` gives it back when the queue is full (the API
    /// answers 503 rather than buffering without bound).
    pub fn send(&self, command: Command) -> Result<(), Command> {
        match self.commands.try_send(command) {
            Ok(()) => {
                self.wake.wake();
                Ok(())
            }
            Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => Err(c),
        }
    }

    /// Makes the shard run one loop iteration even if nothing else is due:
    /// the watchdog's way to see an idle shard advance.
    pub fn wake(&self) {
        self.wake.wake();
    }

    pub(crate) fn control(&self, message: Control) {
        // A send fails only when the shard thread is gone (shutting down);
        // the socket in an Adopt is then closed by its drop, which is right.
        let _ = self.control.send(message);
        self.wake.wake();
    }
}

/// What a stopping shard may take beyond the drain timeout: the iteration
/// the Stop arrived in (up to 4096 commands, maybe a checkpoint), its last
/// commit and fsync.
pub const STOP_SLACK: Duration = Duration::from_secs(5);

/// How far each shard loop has got. A loop stores its iteration count after
/// every iteration (one relaxed store to a line no other shard writes: no
/// syscall, no lock on the hot path); the watchdog compares two readings.
pub struct Heartbeats(Box<[CachePadded]>);

/// One counter per cache line, so shards do not invalidate each other's.
#[repr(align(64))]
#[derive(Default)]
struct CachePadded(AtomicU64);

impl Heartbeats {
    pub fn new(shards: usize) -> Self {
        Self((0..shards).map(|_| CachePadded::default()).collect())
    }

    pub fn beat(&self, shard: usize, iterations: u64) {
        self.0[shard].0.store(iterations, Ordering::Relaxed);
    }

    /// Every shard's iteration count, in shard order.
    pub fn read(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).collect()
    }
}

/// What a shard thread receives at start.
pub(crate) struct ShardContext {
    pub id: usize,
    pub config: Config,
    /// The plain device listener; `None` when `listen.device_enabled` is off.
    pub listener: Option<std::net::TcpListener>,
    /// The TLS device listener and the configuration its accepts use;
    /// `None` when TLS is off.
    pub tls_listener: Option<(std::net::TcpListener, Arc<crate::tls::SharedTlsConfig>)>,
    pub commands: Receiver<Command>,
    pub control: Receiver<Control>,
    pub wake: Arc<EventFd>,
    pub peers: Arc<[ShardHandle]>,
    /// The per-address policy all shards share.
    pub admission: Arc<Admission>,
    /// Where this shard's loop reports its progress (index `id`).
    pub heartbeats: Arc<Heartbeats>,
}

pub struct Shards {
    handles: Arc<[ShardHandle]>,
    threads: Vec<JoinHandle<()>>,
    /// One message per shard thread that ended (normally or by panic).
    ended: Receiver<usize>,
    heartbeats: Arc<Heartbeats>,
    admission: Arc<Admission>,
    backend: IoBackend,
    device_addr: Option<SocketAddr>,
    device_tls_addr: Option<SocketAddr>,
    health: Arc<StorageHealth>,
    max_message_id: u64,
    device_auth: Arc<crate::device_auth::DeviceAuth>,
    _data_dir: DataDir,
}

impl Shards {
    pub fn handles(&self) -> Arc<[ShardHandle]> {
        self.handles.clone()
    }

    /// The backend actually running (io_uring may have fallen back to epoll).
    pub fn backend(&self) -> IoBackend {
        self.backend
    }

    /// The bound plain device address (the real port when the config says
    /// 0); `None` when that listener is off.
    pub fn local_device_addr(&self) -> Option<SocketAddr> {
        self.device_addr
    }

    /// The bound TLS device address; `None` when TLS is off.
    pub fn local_device_tls_addr(&self) -> Option<SocketAddr> {
        self.device_tls_addr
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    pub fn heartbeats(&self) -> Arc<Heartbeats> {
        self.heartbeats.clone()
    }

    /// The per-address policy every shard's accepts consult; its `open()`
    /// counts the device connections of the whole daemon.
    pub fn admission(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    pub fn storage_health(&self) -> Arc<StorageHealth> {
        self.health.clone()
    }

    /// The device authentication every shard shares (a reload builds the
    /// next one from it, keeping its nonce memory).
    pub fn device_auth(&self) -> Arc<crate::device_auth::DeviceAuth> {
        self.device_auth.clone()
    }

    /// Highest message id found in the logs: the API issues ids above it.
    pub fn max_message_id(&self) -> u64 {
        self.max_message_id
    }

    /// Tells every shard to send GoAway to its devices, drain and stop;
    /// waits for them, but not past `delivery.drain_timeout_secs` plus
    /// `STOP_SLACK`: a shard stuck in a system call must not keep the
    /// process from exiting. What the API accepted is in the log already,
    /// so leaving such a thread behind loses nothing; to the log it is a
    /// crash (a torn tail is cut at the next start).
    pub fn stop(self, drain_timeout: Duration) {
        for handle in self.handles.iter() {
            handle.control(Control::Stop);
        }
        let deadline = Instant::now() + drain_timeout + STOP_SLACK;
        let mut running = self.threads.len();
        while running > 0 {
            match self.ended.recv_deadline(deadline) {
                Ok(_) => running -= 1,
                Err(_) => break,
            }
        }
        if running > 0 {
            let stuck: Vec<usize> = self
                .threads
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.is_finished())
                .map(|(id, _)| id)
                .collect();
            error!(
                ?stuck,
                "shards did not stop within the drain timeout; exiting without them"
            );
            return;
        }
        for thread in self.threads {
            if thread.join().is_err() {
                warn!("a shard thread panicked while stopping");
            }
        }
    }
}

/// Locks the data directory, recovers every shard's log (in parallel), binds
/// the listeners and starts `config.shard_count()` shard threads. Returns
/// only when every shard has replayed its log, so the API and readiness come
/// after recovery.
pub fn start(
    config: &Config,
    receipts: Option<crate::receipts::ReceiptQueue>,
    tls: Option<Arc<crate::tls::SharedTlsConfig>>,
) -> anyhow::Result<Shards> {
    let count = config.shard_count();
    let data_dir = DataDir::open(&config.durability.data_dir, count)?;
    let health = Arc::new(StorageHealth::default());
    let device_auth = Arc::new(crate::device_auth::DeviceAuth::new(
        config,
        crate::message::unix_ms(),
    ));
    let mut recovered = recover_all(config, count, &health, &device_auth)?;
    if let Some(queue) = receipts {
        for (_, store) in &mut recovered {
            store.set_receipts(queue.clone());
        }
    }
    let max_message_id = recovered
        .iter()
        .map(|(core, _)| core.max_message_id())
        .max()
        .unwrap_or(0);
    let backend = choose_backend(config);
    let listeners = if config.listen.device_enabled {
        bind_listeners(config.listen.device, config.listen.backlog, count)
            .with_context(|| format!("binding the device listener on {}", config.listen.device))?
    } else {
        Vec::new()
    };
    let device_addr = listeners.first().map(|l| l.local_addr()).transpose()?;
    let tls_listeners = match &tls {
        Some(_) => bind_listeners(config.listen.device_tls, config.listen.backlog, count)
            .with_context(|| format!("binding the TLS device listener on {}", config.listen.device_tls))?,
        None => Vec::new(),
    };
    let device_tls_addr = tls_listeners.first().map(|l| l.local_addr()).transpose()?;
    let mut listeners = listeners.into_iter();
    let mut tls_listeners = tls_listeners.into_iter();
    let mut handles = Vec::with_capacity(count);
    let mut receivers = Vec::with_capacity(count);
    for _ in 0..count {
        let (commands_tx, commands_rx) = crossbeam_channel::bounded(config.limits.shard_queue);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(EventFd::new().context("creating a shard's eventfd")?);
        handles.push(ShardHandle {
            commands: commands_tx,
            control: control_tx,
            wake: wake.clone(),
        });
        receivers.push((commands_rx, control_rx, wake));
    }
    let handles: Arc<[ShardHandle]> = handles.into();
    let admission = Admission::new(config);
    let heartbeats = Arc::new(Heartbeats::new(count));
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::with_capacity(count);
    let shard_parts = receivers.into_iter().zip(recovered);
    for (id, ((commands, control, wake), (core, store))) in shard_parts.enumerate() {
        let context = ShardContext {
            id,
            config: config.clone(),
            listener: listeners.next(),
            tls_listener: tls_listeners.next().zip(tls.clone()),
            commands,
            control,
            wake,
            peers: handles.clone(),
            admission: admission.clone(),
            heartbeats: heartbeats.clone(),
        };
        let pin = config.pin_shards.then_some(id % cores);
        let ended = EndSignal(ended_tx.clone(), id);
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let _ended = ended;
                if let Some(core) = pin {
                    crate::io::pin_to_core(core);
                }
                crate::io::run_shard(context, core, store, backend);
            })
            .context("spawning a shard thread")?;
        threads.push(thread);
    }
    metrics::gauge!("ringpush_io_backend", "backend" => backend.as_str()).set(1.0);
    info!(
        shards = count,
        backend = backend.as_str(),
        device = ?device_addr,
        device_tls = ?device_tls_addr,
        "shards started"
    );
    Ok(Shards {
        handles,
        threads,
        ended,
        heartbeats,
        admission,
        backend,
        device_addr,
        device_tls_addr,
        health,
        max_message_id,
        device_auth,
        _data_dir: data_dir,
    })
}

/// Tells `Shards::stop` that a shard thread ended, from its drop, so a
/// panic is reported too.
struct EndSignal(Sender<usize>, usize);

impl Drop for EndSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// Builds each shard's core and replays its log into it, one thread per
/// shard, so restart time is the largest shard's replay, not the sum.
fn recover_all(
    config: &Config,
    count: usize,
    health: &Arc<StorageHealth>,
    device_auth: &Arc<crate::device_auth::DeviceAuth>,
) -> anyhow::Result<Vec<(DeliveryCore, Store)>> {
    let started = std::time::Instant::now();
    let results: Vec<anyhow::Result<(DeliveryCore, Store, crate::store::Recovered)>> =
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..count)
                .map(|id| {
                    let health = health.clone();
                    let device_auth = device_auth.clone();
                    scope.spawn(move || {
                        let now = std::time::Instant::now();
                        let mut core = DeliveryCore::new(id, count, config, now);
                        core.share_device_auth(device_auth);
                        let (store, recovered) = Store::recover(config, id, &mut core, health, now)?;
                        Ok((core, store, recovered))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a recovery thread panicked")))
                })
                .collect()
        });
    let mut shards = Vec::with_capacity(count);
    let mut records = 0;
    let mut pending = 0;
    for result in results {
        let (core, store, recovered) = result?;
        records += recovered.records;
        pending += core.pending_count();
        shards.push((core, store));
    }
    info!(
        records,
        pending,
        ms = started.elapsed().as_millis() as u64,
        data_dir = %config.durability.data_dir.display(),
        "recovered the message log"
    );
    Ok(shards)
}

/// io_uring when configured and the kernel allows it; epoll otherwise.
fn choose_backend(config: &Config) -> IoBackend {
    match config.io {
        IoBackend::Epoll => IoBackend::Epoll,
        IoBackend::Uring => match crate::io::uring::probe() {
            Ok(()) => IoBackend::Uring,
            Err(e) => {
                warn!(error = %e, "io_uring is unavailable; falling back to epoll");
                IoBackend::Epoll
            }
        },
    }
}

/// One listener per shard on `addr` (the first fixes the port when `addr`
/// says 0).
fn bind_listeners(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_listener(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_listener(bound, backlog)?);
    }
    Ok(listeners)
}

fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    // Every shard binds the same port; the kernel spreads connections.
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}
