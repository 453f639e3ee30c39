//! The floor's io_uring worker: multishot accept, one recv in flight per
//! connection into its own 256-byte buffer (the floor's device traffic is
//! Hello, Ping and small Acks), one send in flight per connection, every
//! submission of a loop iteration in one `io_uring_enter`. Not used: SQPOLL
//! and provided-buffer rings (ringpush's backend has those; the floor keeps
//! the simplest shape that still batches syscalls).

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::control::{unix_micros, JobKind, Shared};
use crate::frames::{self, Answer, Scanner};
use crate::schedule::Schedule;

const RECV_BYTES: usize = 256;
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;

fn user_data(op: u64, index: usize) -> u64 {
    (op << 56) | index as u64
}

struct Conn {
    fd: OwnedFd,
    /// The kernel writes here while `recv_in_flight`.
    buf: Box<[u8; RECV_BYTES]>,
    scanner: Scanner,
    /// Frames queued while a send is in flight.
    out: Vec<u8>,
    /// The kernel reads from here while `send_in_flight`; never touched then.
    sending: Vec<u8>,
    sent_of_sending: usize,
    recv_in_flight: bool,
    send_in_flight: bool,
    closing: bool,
    /// Its place in `live` once welcomed.
    live_at: Option<usize>,
}

struct Worker {
    ring: IoUring,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: Vec<usize>,
}

impl Worker {
    fn push(&mut self, entry: squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: every entry pushed here points into a buffer that lives
            // until its completion: a `Conn`'s boxed `buf` (recv) or its
            // `sending` vector (send), neither touched nor freed while the
            // operation is in flight (`recv_in_flight`, `send_in_flight`
            // gate `release`), or no buffer at all (accept).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self, index: usize) -> std::io::Result<()> {
        let conn = self.conns[index].as_mut().expect("armed connections exist");
        let entry = opcode::Recv::new(
            types::Fd(conn.fd.as_raw_fd()),
            conn.buf.as_mut_ptr(),
            RECV_BYTES as u32,
        )
        .build()
        .user_data(user_data(RECV, index));
        conn.recv_in_flight = true;
        self.push(entry)
    }

    /// Hands the pending frames to the kernel unless a send is in flight.
    fn arm_send(&mut self, index: usize) -> std::io::Result<()> {
        let Some(conn) = self.conns[index].as_mut() else {
            return Ok(());
        };
        if conn.send_in_flight || conn.closing {
            return Ok(());
        }
        if conn.sent_of_sending >= conn.sending.len() {
            if conn.out.is_empty() {
                return Ok(());
            }
            conn.sending.clear();
            std::mem::swap(&mut conn.sending, &mut conn.out);
            conn.sent_of_sending = 0;
        }
        let rest = &conn.sending[conn.sent_of_sending..];
        let entry = opcode::Send::new(types::Fd(conn.fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .build()
            .user_data(user_data(SEND, index));
        conn.send_in_flight = true;
        self.push(entry)
    }

    /// Starts closing: a recv in flight ends when the socket is shut down;
    /// the connection is freed once nothing is in flight.
    fn close(&mut self, index: usize, shared: &Shared) {
        let Some(conn) = self.conns[index].as_mut() else {
            return;
        };
        if !conn.closing {
            conn.closing = true;
            let _ = socket2::SockRef::from(&conn.fd).shutdown(std::net::Shutdown::Both);
        }
        if conn.recv_in_flight || conn.send_in_flight {
            return;
        }
        let conn = self.conns[index].take().expect("checked above");
        if let Some(at) = conn.live_at {
            self.live.swap_remove(at);
            if let Some(&moved) = self.live.get(at) {
                self.conns[moved]
                    .as_mut()
                    .expect("live connections exist")
                    .live_at = Some(at);
            }
        }
        self.free.push(index);
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn accepted(&mut self, fd: OwnedFd, shared: &Shared) -> std::io::Result<()> {
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.conns[index] = Some(Conn {
            fd,
            buf: Box::new([0; RECV_BYTES]),
            scanner: Scanner::default(),
            out: Vec::new(),
            sending: Vec::new(),
            sent_of_sending: 0,
            recv_in_flight: false,
            send_in_flight: false,
            closing: false,
            live_at: None,
        });
        shared.connections.fetch_add(1, Ordering::Relaxed);
        self.arm_recv(index)
    }

    fn received(
        &mut self,
        index: usize,
        result: i32,
        shared: &Shared,
        answers: &Answers,
    ) -> std::io::Result<()> {
        let Some(conn) = self.conns[index].as_mut() else {
            return Ok(());
        };
        conn.recv_in_flight = false;
        if result <= 0 || conn.closing {
            self.close(index, shared);
            return Ok(());
        }
        let mut welcomed = false;
        let out = &mut conn.out;
        let fed = conn
            .scanner
            .feed(&conn.buf[..result as usize], |answer| match answer {
                Answer::Welcome => {
                    out.extend_from_slice(&answers.welcome);
                    welcomed = true;
                }
                Answer::Pong => out.extend_from_slice(&answers.pong),
            });
        match fed {
            Ok(acked) => shared.acked.fetch_add(acked, Ordering::Relaxed),
            Err(_) => {
                self.close(index, shared);
                return Ok(());
            }
        };
        if welcomed && conn.live_at.is_none() {
            conn.live_at = Some(self.live.len());
            self.live.push(index);
        }
        self.arm_recv(index)?;
        self.arm_send(index)
    }

    fn sent(&mut self, index: usize, result: i32, shared: &Shared) -> std::io::Result<()> {
        let Some(conn) = self.conns[index].as_mut() else {
            return Ok(());
        };
        conn.send_in_flight = false;
        if result < 0 || conn.closing {
            self.close(index, shared);
            return Ok(());
        }
        conn.sent_of_sending += result as usize;
        self.arm_send(index)
    }
}

struct Answers {
    welcome: Vec<u8>,
    pong: Vec<u8>,
}

pub fn run(listener: TcpListener, shared: &Shared, worker_index: u64, workers: u64) -> std::io::Result<()> {
    let mut worker = Worker {
        ring: IoUring::new(4096)?,
        conns: Vec::new(),
        free: Vec::new(),
        live: Vec::new(),
    };
    let answers = Answers {
        welcome: frames::welcome(),
        pong: frames::pong(),
    };
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(user_data(ACCEPT, 0));
    worker.push(accept.clone())?;
    let mut schedule = Schedule::new(worker_index, workers);
    let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
    let mut dirty: Vec<usize> = Vec::new();
    loop {
        let timespec = types::Timespec::from(schedule.wait(Instant::now()));
        let args = types::SubmitArgs::new().timespec(&timespec);
        match worker.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        completions.clear();
        completions.extend(
            worker
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &completions {
            let index = (data & 0xFFFF_FFFF) as usize;
            match data >> 56 {
                ACCEPT => {
                    if result >= 0 {
                        // SAFETY: a successful accept completion's result is
                        // a new descriptor that nothing else owns.
                        let fd = unsafe { OwnedFd::from_raw_fd(result) };
                        worker.accepted(fd, shared)?;
                    }
                    if !cqueue::more(flags) {
                        // Multishot accept ended (out of descriptors, or
                        // an error): arm it again.
                        worker.push(accept.clone())?;
                    }
                }
                RECV => worker.received(index, result, shared, &answers)?,
                SEND => worker.sent(index, result, shared)?,
                _ => {}
            }
        }
        if let Some(job) = schedule.refresh(shared) {
            if let JobKind::Broadcast { seq } = job.kind {
                for &index in &worker.live {
                    let conn = worker.conns[index].as_mut().expect("live connections exist");
                    job.template.stamp(seq, job.start_unix_us, &mut conn.out);
                    dirty.push(index);
                }
                shared.sent.fetch_add(worker.live.len() as u64, Ordering::Relaxed);
            }
            shared.broadcast_done.fetch_add(1, Ordering::AcqRel);
        }
        let now = Instant::now();
        let stamp_us = unix_micros();
        while let Some(seq) = schedule.next_due(now, shared) {
            if worker.live.is_empty() {
                break;
            }
            let index = worker.live[schedule.pick(worker.live.len())];
            let conn = worker.conns[index].as_mut().expect("live connections exist");
            schedule
                .job()
                .expect("a push job")
                .template
                .stamp(seq, stamp_us, &mut conn.out);
            dirty.push(index);
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        for index in std::mem::take(&mut dirty) {
            worker.arm_send(index)?;
        }
    }
}
