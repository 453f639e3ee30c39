//! The floor's epoll worker (through mio): edge-triggered sockets, reads
//! into one scratch buffer shared by all connections, writes straight from
//! a per-connection output buffer that is empty (and unallocated) when the
//! socket keeps up.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::{TcpListener as MioListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::control::{unix_micros, JobKind, Shared};
use crate::frames::{self, Answer, Scanner};
use crate::schedule::Schedule;

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    scanner: Scanner,
    out: Vec<u8>,
    /// Its place in `live` once welcomed.
    live_at: Option<usize>,
}

pub fn run(listener: TcpListener, shared: &Shared, worker: u64, workers: u64) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = MioListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Welcomed connections, the push targets.
    let mut live: Vec<usize> = Vec::new();
    let mut dirty: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let (welcome, pong) = (frames::welcome(), frames::pong());
    let mut schedule = Schedule::new(worker, workers);
    loop {
        // mio rounds the wait up to whole milliseconds (epoll_wait).
        match poll.poll(&mut events, Some(schedule.wait(Instant::now()))) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        };
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let index = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(
                                &mut stream,
                                Token(index),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[index] = Some(Conn {
                                stream,
                                scanner: Scanner::default(),
                                out: Vec::new(),
                                live_at: None,
                            });
                            shared.connections.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // Out of descriptors or an aborted connection: the
                        // next readiness event retries.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let index = event.token().0;
            let Some(conn) = conns[index].as_mut() else {
                continue;
            };
            let mut closed = false;
            let mut welcomed = false;
            if event.is_readable() || event.is_read_closed() {
                loop {
                    match conn.stream.read(&mut scratch) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => {
                            let out = &mut conn.out;
                            match conn.scanner.feed(&scratch[..n], |answer| match answer {
                                Answer::Welcome => {
                                    out.extend_from_slice(&welcome);
                                    welcomed = true;
                                }
                                Answer::Pong => out.extend_from_slice(&pong),
                            }) {
                                Ok(acked) => {
                                    shared.acked.fetch_add(acked, Ordering::Relaxed);
                                }
                                Err(_) => {
                                    closed = true;
                                    break;
                                }
                            }
                            if n < scratch.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if welcomed && conn.live_at.is_none() {
                    conn.live_at = Some(live.len());
                    live.push(index);
                }
            }
            if !closed && !flush(conn) {
                closed = true;
            }
            if closed {
                if let Some(mut conn) = conns[index].take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                    if let Some(at) = conn.live_at {
                        live.swap_remove(at);
                        if let Some(&moved) = live.get(at) {
                            conns[moved].as_mut().expect("live connections exist").live_at = Some(at);
                        }
                    }
                    free.push(index);
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(job) = schedule.refresh(shared) {
            if let JobKind::Broadcast { seq } = job.kind {
                for &index in &live {
                    let conn = conns[index].as_mut().expect("live connections exist");
                    job.template.stamp(seq, job.start_unix_us, &mut conn.out);
                    dirty.push(index);
                }
                shared.sent.fetch_add(live.len() as u64, Ordering::Relaxed);
            }
            shared.broadcast_done.fetch_add(1, Ordering::AcqRel);
        }
        let now = Instant::now();
        let stamp_us = unix_micros();
        while let Some(seq) = schedule.next_due(now, shared) {
            if live.is_empty() {
                break;
            }
            let index = live[schedule.pick(live.len())];
            let conn = conns[index].as_mut().expect("live connections exist");
            schedule
                .job()
                .expect("a push job")
                .template
                .stamp(seq, stamp_us, &mut conn.out);
            dirty.push(index);
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        for index in dirty.drain(..) {
            if let Some(conn) = conns[index].as_mut() {
                // A failed write shows as a read error or EOF next.
                flush(conn);
            }
        }
    }
}

/// Writes what is pending; false when the connection failed.
fn flush(conn: &mut Conn) -> bool {
    while !conn.out.is_empty() {
        match conn.stream.write(&conn.out) {
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.out = Vec::new();
    true
}
