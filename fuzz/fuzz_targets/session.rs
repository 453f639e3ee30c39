//! Arbitrary byte streams from several connections, interleaved with pushes
//! (some with collapse keys), token rotations, the passing of time and the
//! I/O layer's reports of bytes the socket holds back, into one shard's
//! delivery core: it must never panic, and its bookkeeping must stay
//! consistent (`check_invariants`) after every step. Besides raw bytes,
//! one op frames its payload with a valid header of any frame type, so the
//! state machine sees arbitrary sequences of well-framed frames (Hello,
//! Ack, Bind, Revoke acks... in any order and state), not only bytes that
//! rarely get past the header check.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringpush::config::Config;
use ringpush::delivery::{DeliveryCore, IoAction};
use ringpush::message::{Command, Message, Rotation, StorageRefusal};
use ringpush::protocol::{body, decode_slice, Frame, FrameType};

const T0_MS: u64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let mut config = Config::default();
    config.delivery.inflight_window = 4;
    config.delivery.max_pending_per_device = 8;
    let start = Instant::now();
    let mut now = start;
    let mut core = DeliveryCore::with_wall_clock(0, 2, &config, start, T0_MS);
    let mut conns = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let mut next_id = 1;
    // Each chunk: one op byte, then up to 63 bytes of payload.
    for chunk in data.chunks(64) {
        let (op, payload) = chunk.split_first().unwrap();
        let pick = usize::from(*op >> 3);
        match op % 9 {
            0 => conns.extend(core.open_connection(now)),
            1 if !conns.is_empty() => core.on_bytes(conns[pick % conns.len()], payload, now),
            7 if !conns.is_empty() && !payload.is_empty() => {
                let (kind, body) = payload.split_first().unwrap();
                let frame_type = FrameType::ALL[usize::from(*kind) % FrameType::ALL.len()];
                let mut framed = (body.len() as u32).to_be_bytes().to_vec();
                framed.extend_from_slice(&[frame_type as u8, 0]);
                framed.extend_from_slice(body);
                core.on_bytes(conns[pick % conns.len()], &framed, now);
            }
            8 if !conns.is_empty() => {
                // Bytes the socket holds back: up to 16 MiB, past the cap.
                let held = payload
                    .iter()
                    .take(3)
                    .fold(0usize, |n, b| n << 8 | usize::from(*b));
                core.on_write_progress(conns[pick % conns.len()], held, now);
            }
            2 if !conns.is_empty() => {
                let c = conns.swap_remove(pick % conns.len());
                core.on_closed(c, now);
            }
            5 if !tokens.is_empty() => {
                let token = tokens[pick % tokens.len()].clone();
                let (reply, mut answer) = tokio::sync::oneshot::channel();
                core.on_command(
                    Command::RotateToken {
                        app_id: "demo".into(),
                        token: token.as_str().into(),
                        reply,
                    },
                    now,
                );
                // Every third rotation's commit fails: it is undone.
                let result = if payload.first().is_some_and(|b| b % 3 == 0) {
                    Err(StorageRefusal::Full)
                } else {
                    Ok(None)
                };
                core.journal_done(result, now);
                if let Ok(Ok(Rotation::Rotated { token, .. })) = answer.try_recv() {
                    tokens.push(token.into());
                }
            }
            3 | 6 if !tokens.is_empty() => {
                let token = tokens[pick % tokens.len()].clone();
                let now_ms = T0_MS + (now - start).as_millis() as u64;
                let ttl_ms = 1000 * u64::from(payload.first().copied().unwrap_or(1).max(1));
                let frame = Frame::Push(Box::new(body::Push {
                    id: next_id,
                    msg_key: format!("k{next_id}"),
                    ..Default::default()
                }));
                let (reply, _answer) = tokio::sync::oneshot::channel();
                core.on_command(
                    Command::Push {
                        messages: vec![Message {
                            id: next_id,
                            app_id: "demo".into(),
                            token: token.as_str().into(),
                            msg_key: format!("k{next_id}").into(),
                            accepted_at_ms: now_ms,
                            expires_at_ms: now_ms + ttl_ms,
                            frame: Bytes::from(frame.to_bytes()),
                            task: ringpush::message::TaskTag::untasked(ringpush::stats::PushType::Simple),
                            collapse_key: (op % 9 == 6)
                                .then(|| format!("c{}", payload.get(1).copied().unwrap_or(0) % 3).into()),
                        }],
                        reply,
                    },
                    now,
                );
                // Every seventh commit fails: the messages are withdrawn.
                let result = if next_id.is_multiple_of(7) {
                    Err(StorageRefusal::Full)
                } else {
                    Ok(None)
                };
                core.journal_done(result, now);
                next_id += 1;
            }
            _ => {
                now += Duration::from_millis(u64::from(*op) * 50);
                core.on_timers(now);
            }
        }
        while let Some(action) = core.poll_action() {
            match action {
                IoAction::Send(c) => {
                    if let Some(out) = core.take_outbound(c) {
                        let mut at = 0;
                        while let Ok(Some((frame, used))) = decode_slice(&out[at..], 1 << 20) {
                            if let Frame::Welcome(w) = frame {
                                tokens.push(w.token);
                            }
                            at += used;
                        }
                    }
                }
                IoAction::Close(c) | IoAction::Abort(c) | IoAction::HandOff { conn: c, .. } => {
                    core.take_outbound(c);
                    core.on_closed(c, now);
                    conns.retain(|x| *x != c);
                }
            }
        }
        core.check_invariants();
    }
});
