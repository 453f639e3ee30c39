//! State-machine tests of the delivery core on a fake clock: no sockets, no
//! sleeping. Each test plays devices and the API against one core and reads
//! back the frames and I/O actions it produces.

use super::*;
use crate::config::App;
use crate::protocol::{decode_slice, FrameType};

mod collapse;
mod recall;
mod receipts;
mod reconfigure;
mod shared;
mod stats;
mod tls;
mod tokens;

const T0_UNIX_MS: u64 = 1_700_000_000_000;

struct Harness {
    core: DeliveryCore,
    t0: Instant,
    now: Instant,
    next_id: u64,
    /// Frames read with a Welcome and not yet returned by `output`.
    leftover: HashMap<ConnId, Vec<Frame>>,
    /// Every journal record committed so far, framed as in the log.
    log: Vec<u8>,
    /// With `with_log_reader`: the log as segments the core reads frames
    /// back from; commits go to the last segment.
    segments: Option<MemorySegments>,
}

/// An in-memory log of numbered segments, read back like the real one.
#[derive(Clone, Default)]
struct MemorySegments(Arc<parking_lot::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>>);

impl MemorySegments {
    /// Appends framed records to segment `segment`; returns where they start.
    fn append(&self, segment: u64, framed: &[u8]) -> Position {
        let mut segments = self.0.lock();
        let bytes = segments.entry(segment).or_default();
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(framed);
        Position { segment, offset }
    }

    fn last_segment(&self) -> u64 {
        self.0.lock().keys().next_back().copied().unwrap_or(1)
    }

    /// Flips one byte of a segment (a bad sector).
    fn damage(&self, segment: u64, offset: usize) {
        self.0.lock().get_mut(&segment).unwrap()[offset] ^= 0x55;
    }
}

impl RecordReader for MemorySegments {
    fn read(&mut self, span: Span, buf: &mut Vec<u8>) -> Result<(u8, Range<usize>), String> {
        let segments = self.0.lock();
        let segment = segments.get(&span.segment).ok_or("no such segment")?;
        let start = span.offset as usize;
        let bytes = segment
            .get(start..start + span.len as usize)
            .ok_or("beyond the segment")?;
        buf.clear();
        buf.extend_from_slice(bytes);
        crate::log::check_record(buf)
    }

    fn forget_before(&mut self, segment: u64) {
        // Deleted, as the store does right after.
        self.0.lock().retain(|&s, _| s >= segment);
    }
}

fn config() -> Config {
    let mut c = Config::default();
    c.apps.push(App {
        max_templates: 0,
        ..App::new("other", "default")
    });
    c
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), 0, 1)
    }

    fn with(config: Config, shard: usize, shards: usize) -> Self {
        let t0 = Instant::now();
        Self {
            core: DeliveryCore::with_wall_clock(shard, shards, &config, t0, T0_UNIX_MS),
            t0,
            now: t0,
            next_id: 1,
            leftover: HashMap::new(),
            log: Vec::new(),
            segments: None,
        }
    }

    /// A core that keeps offline devices' frames in an in-memory log.
    fn with_log_reader() -> Self {
        let mut h = Self::new();
        let segments = MemorySegments::default();
        h.core.set_log_reader(Box::new(segments.clone()));
        h.segments = Some(segments);
        h
    }

    /// A fresh core on the same clock, as after a restart (replay into it).
    fn restarted(&self) -> Self {
        let mut after = Self::new();
        after.t0 = self.t0;
        after.now = self.now;
        after.core = DeliveryCore::with_wall_clock(0, 1, &config(), self.t0, T0_UNIX_MS);
        after
    }

    /// Pending messages whose frame is in memory, not in the log.
    fn frames_in_memory(&self) -> usize {
        self.core
            .devices
            .iter()
            .flat_map(|(_, d)| d.queue.iter())
            .filter(|p| matches!(p.frame, FrameSlot::Memory(_)))
            .count()
    }

    /// What the shard loop does once per iteration: the journal goes to the
    /// "log" and the core hears it is durable.
    fn commit(&mut self) {
        self.core.flush_stats(self.now);
        let framed = self.core.journal().0;
        self.log.extend_from_slice(framed);
        let at = self.segments.as_ref().map(|s| s.append(s.last_segment(), framed));
        self.core.journal_done(Ok(at), self.now);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.on_timers(self.now);
    }

    fn unix_ms(&self) -> u64 {
        T0_UNIX_MS + (self.now - self.t0).as_millis() as u64
    }

    fn connect(&mut self) -> ConnId {
        self.core
            .open_connection(self.now)
            .expect("below the connection cap")
    }

    fn send(&mut self, conn: ConnId, frame: &Frame) {
        self.core.on_bytes(conn, &frame.to_bytes(), self.now);
    }

    fn hello(&mut self, conn: ConnId, app: &str, token: &str) {
        self.send(
            conn,
            &Frame::Hello(Box::new(body::Hello {
                protocol_version: PROTOCOL_VERSION,
                app_id: app.into(),
                platform: 1,
                token: token.into(),
                ..Default::default()
            })),
        );
    }

    /// Connects, says Hello, returns the connection and its Welcome.
    fn device(&mut self, token: &str) -> (ConnId, body::Welcome) {
        let conn = self.connect();
        self.hello(conn, "demo", token);
        let mut frames = self.output(conn);
        match frames.first() {
            Some(Frame::Welcome(w)) => {
                let w = w.clone();
                self.leftover.insert(conn, frames.split_off(1));
                (conn, w)
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Drains actions; returns the frames written to `conn`. Other
    /// connections' output stays queued in the core.
    fn output(&mut self, conn: ConnId) -> Vec<Frame> {
        let mut frames = self.leftover.remove(&conn).unwrap_or_default();
        let actions: Vec<IoAction> = std::iter::from_fn(|| self.core.poll_action()).collect();
        for action in &actions {
            if let IoAction::Send(c) | IoAction::Close(c) = action {
                if *c != conn {
                    continue;
                }
                if let Some(bytes) = self.core.take_outbound(*c) {
                    let mut at = 0;
                    while let Some((frame, used)) = decode_slice(&bytes[at..], 1 << 20).unwrap() {
                        frames.push(frame);
                        at += used;
                    }
                }
            }
        }
        // Keep the other connections' actions for the caller to inspect.
        for action in actions {
            let other = match &action {
                IoAction::Send(c) | IoAction::Close(c) | IoAction::Abort(c) => *c != conn,
                IoAction::HandOff { conn: c, .. } => *c != conn,
            };
            if other
                || matches!(
                    action,
                    IoAction::Close(_) | IoAction::Abort(_) | IoAction::HandOff { .. }
                )
            {
                self.core.actions.push_back(action);
            }
        }
        frames
    }

    /// Drains and returns every action.
    fn actions(&mut self) -> Vec<IoAction> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn push(&mut self, token: &str, msg_key: &str, ttl_secs: u64) -> (u64, Accepted) {
        self.push_app("demo", token, msg_key, ttl_secs)
    }

    fn push_app(&mut self, app: &str, token: &str, msg_key: &str, ttl_secs: u64) -> (u64, Accepted) {
        self.push_with(app, token, msg_key, ttl_secs, None)
    }

    /// Pushes one message with an optional collapse key and commits.
    fn push_with(
        &mut self,
        app: &str,
        token: &str,
        msg_key: &str,
        ttl_secs: u64,
        collapse_key: Option<&str>,
    ) -> (u64, Accepted) {
        let (id, mut rx) = self.push_uncommitted(app, token, msg_key, ttl_secs, collapse_key);
        self.commit();
        let outcomes = rx
            .try_recv()
            .expect("the core answers once the journal is done")
            .expect("the journal was written");
        (id, outcomes[0])
    }

    /// Hands the core one message; the caller commits (or fails) the
    /// journal. Answers the message id and the reply channel.
    fn push_uncommitted(
        &mut self,
        app: &str,
        token: &str,
        msg_key: &str,
        ttl_secs: u64,
        collapse_key: Option<&str>,
    ) -> (
        u64,
        tokio::sync::oneshot::Receiver<Result<Vec<Accepted>, StorageRefusal>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let accepted_at_ms = self.unix_ms();
        let frame = Frame::Push(Box::new(body::Push {
            id,
            msg_key: msg_key.into(),
            title: "t".into(),
            content: "c".into(),
            accepted_at_ms,
            expires_at_ms: accepted_at_ms + ttl_secs * 1000,
            ..Default::default()
        }));
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::Push {
                messages: vec![Message {
                    id,
                    app_id: app.into(),
                    token: token.into(),
                    msg_key: msg_key.into(),
                    accepted_at_ms,
                    expires_at_ms: accepted_at_ms + ttl_secs * 1000,
                    frame: Bytes::from(frame.to_bytes()),
                    task: TaskTag::untasked(crate::stats::PushType::Simple),
                    collapse_key: collapse_key.map(Into::into),
                }],
                reply,
            },
            self.now,
        );
        (id, rx)
    }

    fn status(&mut self, token: &str, msg_key: &str) -> Option<Status> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        self.core.on_command(
            Command::QueryStatus {
                app_id: "demo".into(),
                msg_key: msg_key.into(),
                token: token.into(),
                reply,
            },
            self.now,
        );
        // Held until this iteration's changes are durable, as the shard
        // loop would commit them.
        let answer = rx.try_recv().or_else(|_| {
            self.commit();
            rx.try_recv()
        });
        answer.unwrap().map(|r| r.status)
    }

    fn ack(&mut self, conn: ConnId, ids: &[u64]) {
        self.send(conn, &Frame::Ack(body::Ids { ids: ids.to_vec() }));
    }
}

fn push_ids(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.id),
            _ => None,
        })
        .collect()
}

fn error_code(frames: &[Frame]) -> Option<u32> {
    frames.iter().find_map(|f| match f {
        Frame::Error(e) => Some(e.code),
        _ => None,
    })
}

fn go_away_reason(frames: &[Frame]) -> Option<u32> {
    frames.iter().find_map(|f| match f {
        Frame::GoAway(g) => Some(g.reason),
        _ => None,
    })
}

#[test]
fn hello_gets_a_fresh_unguessable_token() {
    let mut h = Harness::new();
    let (_, a) = h.device("");
    let (_, b) = h.device("");
    assert!(a.new_token && b.new_token);
    assert_ne!(a.token, b.token);
    assert!(a.token.len() >= 22, "128 bits of randomness: {}", a.token);
    assert_eq!(a.heartbeat_secs, 60);
    assert_eq!(a.server_time_ms, T0_UNIX_MS);
}

#[test]
fn tokens_stay_distinct_across_pool_refills() {
    let mut source = TokenSource::new();
    let tokens: std::collections::HashSet<String> = (0..2000).map(|_| source.next()).collect();
    assert_eq!(tokens.len(), 2000);
    assert!(tokens.iter().all(|t| t.len() == 22));
}

#[test]
fn online_device_gets_the_push_and_its_ack_is_recorded() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, accepted) = h.push(&w.token, "k1", 60);
    assert_eq!(accepted, Accepted::Queued { online: true });
    let frames = h.output(conn);
    assert_eq!(push_ids(&frames), [id]);
    assert_eq!(h.status(&w.token, "k1"), Some(Status::Pending));
    h.ack(conn, &[id]);
    assert_eq!(h.status(&w.token, "k1"), Some(Status::Acked));
    assert_eq!(h.core.pending_count(), 0);
}

#[test]
fn a_status_query_waits_until_the_ack_it_shows_is_durable() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k1", 60);
    h.output(conn);
    h.commit();
    h.ack(conn, &[id]);
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    let query = |reply| Command::QueryStatus {
        app_id: "demo".into(),
        msg_key: "k1".into(),
        token: w.token.as_str().into(),
        reply,
    };
    h.core.on_command(query(reply), h.now);
    assert!(rx.try_recv().is_err(), "answered before the ack is in the log");
    h.commit();
    assert_eq!(rx.try_recv().unwrap().unwrap().status, Status::Acked);
    // With nothing uncommitted a query is answered at once.
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.on_command(query(reply), h.now);
    assert_eq!(rx.try_recv().unwrap().unwrap().status, Status::Acked);
}

#[test]
fn offline_device_gets_pending_messages_on_reconnect_in_order() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    let ids: Vec<u64> = (0..3).map(|i| h.push(&w.token, &format!("k{i}"), 60).0).collect();
    h.advance(Duration::from_secs(30));
    let (conn2, w2) = h.device(&w.token);
    assert_eq!(w2.token, w.token);
    assert!(!w2.new_token);
    // The Welcome came first; the pushes follow in acceptance order.
    let frames = h.output(conn2);
    assert_eq!(push_ids(&frames), ids);
}

#[test]
fn expired_messages_are_never_delivered_and_are_freed_by_the_timer() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    h.push(&w.token, "short", 5);
    let (long_id, _) = h.push(&w.token, "long", 60);
    assert_eq!(h.core.pending_count(), 2);
    h.advance(Duration::from_millis(5_010));
    // Freed by the timer wheel without the device coming back.
    assert_eq!(h.core.pending_count(), 1);
    assert_eq!(h.status(&w.token, "short"), Some(Status::Expired));
    let (conn2, _) = h.device(&w.token);
    assert_eq!(push_ids(&h.output(conn2)), [long_id]);
}

#[test]
fn a_message_is_not_written_after_its_expiry_even_between_ticks() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    h.push(&w.token, "k", 1);
    // Move the clock without running timers: fill_window must still refuse.
    h.now += Duration::from_millis(1_500);
    let (conn2, _) = h.device(&w.token);
    assert!(push_ids(&h.output(conn2)).is_empty());
    assert_eq!(h.status(&w.token, "k"), Some(Status::Expired));
}

#[test]
fn handshake_deadline_closes_a_silent_connection() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.advance(Duration::from_secs(9));
    assert!(h.actions().is_empty());
    h.advance(Duration::from_millis(1_010));
    let frames = h.output(conn);
    assert_eq!(error_code(&frames), Some(ErrorCode::HandshakeTimeout as u32));
    assert!(h.actions().contains(&IoAction::Close(conn)));
}

#[test]
fn pings_keep_a_connection_alive_and_silence_closes_it() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    for _ in 0..5 {
        h.advance(Duration::from_secs(100));
        h.send(conn, &Frame::Ping(body::Heartbeat { time_ms: 7 }));
        let frames = h.output(conn);
        assert_eq!(frames, [Frame::Pong(body::Heartbeat { time_ms: 7 })]);
    }
    h.advance(Duration::from_secs(179));
    assert!(h.actions().is_empty());
    h.advance(Duration::from_millis(1_100));
    assert_eq!(error_code(&h.output(conn)), Some(ErrorCode::IdleTimeout as u32));
}

#[test]
fn unacked_messages_close_the_connection_and_are_redelivered_with_the_same_id() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 3600);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.send(conn, &Frame::Ping(body::Heartbeat { time_ms: 1 }));
    h.output(conn);
    h.advance(Duration::from_millis(30_010));
    assert!(h.actions().contains(&IoAction::Close(conn)));
    h.core.on_closed(conn, h.now);
    let (conn2, _) = h.device(&w.token);
    assert_eq!(push_ids(&h.output(conn2)), [id]);
    h.ack(conn2, &[id]);
    assert_eq!(h.status(&w.token, "k"), Some(Status::Acked));
}

#[test]
fn the_in_flight_window_bounds_unacked_messages() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let ids: Vec<u64> = (0..40)
        .map(|i| h.push(&w.token, &format!("k{i}"), 60).0)
        .collect();
    let first = push_ids(&h.output(conn));
    assert_eq!(first, ids[..32]);
    h.ack(conn, &ids[..10]);
    assert_eq!(push_ids(&h.output(conn)), ids[32..40]);
}

#[test]
fn overflow_drops_the_oldest_unsent_and_tells_the_device() {
    let mut cfg = config();
    cfg.delivery.max_pending_per_device = 5;
    cfg.delivery.inflight_window = 2;
    let mut h = Harness::with(cfg, 0, 1);
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    for i in 0..7 {
        h.push(&w.token, &format!("k{i}"), 60);
    }
    assert_eq!(h.status(&w.token, "k0"), Some(Status::Dropped));
    assert_eq!(h.status(&w.token, "k1"), Some(Status::Dropped));
    assert_eq!(h.status(&w.token, "k2"), Some(Status::Pending));
    let (conn2, w2) = h.device(&w.token);
    assert_eq!(w2.missed, 2);
    assert_eq!(push_ids(&h.output(conn2)).len(), 2, "window of 2");
}

#[test]
fn a_second_connection_replaces_the_first_and_nothing_is_lost() {
    let mut h = Harness::new();
    let (old, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    assert_eq!(push_ids(&h.output(old)), [id]);
    let new = h.connect();
    h.hello(new, "demo", &w.token);
    let old_frames = h.output(old);
    assert_eq!(go_away_reason(&old_frames), Some(GoAwayReason::Replaced as u32));
    let new_frames = h.output(new);
    assert!(matches!(&new_frames[0], Frame::Welcome(x) if x.token == w.token));
    assert_eq!(
        push_ids(&new_frames),
        [id],
        "the unacked message moves to the new connection"
    );
    // The old socket's close arrives late; the new connection stays attached.
    h.core.on_closed(old, h.now);
    let (id2, accepted) = h.push(&w.token, "k2", 60);
    assert_eq!(accepted, Accepted::Queued { online: true });
    assert_eq!(push_ids(&h.output(new)), [id2]);
}

#[test]
fn delete_token_wipes_the_device_and_the_next_hello_gets_a_new_token() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    h.push(&w.token, "k", 60);
    let (conn2, _) = h.device(&w.token);
    h.output(conn2);
    h.send(conn2, &Frame::DeleteToken);
    assert_eq!(
        go_away_reason(&h.output(conn2)),
        Some(GoAwayReason::TokenDeleted as u32)
    );
    h.core.on_closed(conn2, h.now);
    assert_eq!(h.core.pending_count(), 0);
    assert_eq!(h.status(&w.token, "k"), Some(Status::Dropped));
    assert_eq!(h.push(&w.token, "k9", 60).1, Accepted::UnknownToken);
    let (_, w3) = h.device(&w.token);
    assert!(w3.new_token);
    assert_ne!(w3.token, w.token);
}

#[test]
fn a_token_owned_by_another_shard_is_handed_off_with_its_bytes() {
    let mut h = Harness::with(config(), 0, 2);
    let token = (0..)
        .map(|i| format!("tok{i}"))
        .find(|t| owner_shard(t.as_bytes(), 2) == 1)
        .unwrap();
    let conn = h.connect();
    let hello = Frame::Hello(Box::new(body::Hello {
        protocol_version: 1,
        app_id: "demo".into(),
        platform: 1,
        token: token.clone(),
        ..Default::default()
    }));
    let mut bytes = hello.to_bytes();
    let ping = Frame::Ping(body::Heartbeat { time_ms: 3 }).to_bytes();
    bytes.extend_from_slice(&ping[..4]);
    h.core.on_bytes(conn, &bytes, h.now);
    assert_eq!(
        h.actions(),
        [IoAction::HandOff {
            conn,
            to: 1,
            initial: Bytes::from(bytes)
        }]
    );
    h.core.on_closed(conn, h.now);
    assert_eq!(h.core.connection_count(), 0);
}

/// One reconnect-storm round as the io_uring backend plays it, for every
/// device: connect, Hello, Welcome (its send in flight, then taken: the
/// write deadline is armed), peer close; and as many connections presenting
/// another shard's tokens, handed off and closed here.
fn reconnect_round(h: &mut Harness, own: &[String], foreign: &[String]) {
    for token in own {
        let (conn, _) = h.device(token);
        h.core.on_write_progress(conn, 120, h.now);
        h.core.on_write_progress(conn, 0, h.now);
        h.core.on_closed(conn, h.now);
    }
    for token in foreign {
        let conn = h.connect();
        h.hello(conn, "demo", token);
        assert!(matches!(&h.actions()[..], [IoAction::HandOff { to: 1, .. }]));
        h.core.on_closed(conn, h.now);
    }
}

#[test]
fn reconnect_storms_leave_no_growing_state_behind() {
    let mut h = Harness::with(config(), 0, 2);
    let own: Vec<String> = (0..2_000).map(|_| h.device("").1.token).collect();
    let foreign: Vec<String> = (0..)
        .map(|i| format!("foreign-{i}"))
        .filter(|t| owner_shard(t.as_bytes(), 2) == 1)
        .take(2_000)
        .collect();
    h.actions();
    let conns: Vec<ConnId> = h.core.sessions.iter().map(|(c, _)| c).collect();
    for conn in conns {
        h.core.on_closed(conn, h.now);
    }
    // Each round leaves three deadlines per own device (handshake, idle,
    // write; none due within the test's first 5 s) and one per hand-off:
    // 8,000 a round, 80,000 after ten rounds unless dead ones are dropped.
    let mut compacted = false;
    let mut before = h.core.timer_entries().0;
    for _ in 0..10 {
        reconnect_round(&mut h, &own, &foreign);
        h.advance(Duration::from_millis(500));
        let (entries, dead) = h.core.timer_entries();
        assert!(
            entries <= 2 * DEAD_TIMERS_BEFORE_COMPACTION + 10_000,
            "{entries} timer entries ({dead} dead) for no open connection"
        );
        compacted |= entries < before + 8_000;
        before = entries;
        assert_eq!(h.core.connection_count(), 0);
        assert_eq!(h.core.devices.len(), own.len());
        assert_eq!(h.core.by_token.len(), own.len());
        assert!(h.core.retired.is_empty() && h.core.revokes.is_empty());
        assert!(h.core.status_gc.is_empty() && h.core.actions.is_empty());
    }
    assert!(compacted, "the storm never reached the compaction floor");
    // Every deadline left comes due and goes; none is for a live connection.
    h.advance(Duration::from_secs(200));
    assert_eq!(h.core.timer_entries(), (0, 0));
    h.core.check_invariants();
}

#[test]
fn compaction_keeps_the_deadlines_of_open_connections() {
    let mut h = Harness::new();
    // One device stays connected through a storm of others; its idle
    // deadline must survive every compaction and still close it.
    let (kept, w) = h.device("");
    h.output(kept);
    let others: Vec<String> = (0..1_000).map(|_| h.device("").1.token).collect();
    h.actions();
    let conns: Vec<ConnId> = h
        .core
        .sessions
        .iter()
        .map(|(c, _)| c)
        .filter(|&c| c != kept)
        .collect();
    for conn in conns {
        h.core.on_closed(conn, h.now);
    }
    for _ in 0..10 {
        reconnect_round(&mut h, &others, &[]);
        h.advance(Duration::from_millis(100));
    }
    assert!(h.core.timer_entries().0 < 10 * 3 * others.len());
    let idle = Duration::from_secs(3 * u64::from(config().delivery.heartbeat_secs));
    h.advance(idle);
    assert_eq!(
        error_code(&h.output(kept)),
        Some(ErrorCode::IdleTimeout as u32),
        "{w:?}"
    );
}

#[test]
fn new_devices_get_tokens_this_shard_owns() {
    let mut h = Harness::with(config(), 1, 3);
    for _ in 0..20 {
        let (_, w) = h.device("");
        assert_eq!(owner_shard(w.token.as_bytes(), 3), 1);
    }
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let mut h = Harness::new();
    let (good, w) = h.device("");
    let (bad, _) = h.device("");
    h.core
        .on_bytes(bad, &[0, 0, 0, 1, FrameType::Ack as u8, 0, 0xFF], h.now);
    assert_eq!(error_code(&h.output(bad)), Some(ErrorCode::MalformedFrame as u32));
    assert!(h.actions().contains(&IoAction::Close(bad)));
    let (id, _) = h.push(&w.token, "k", 60);
    assert_eq!(push_ids(&h.output(good)), [id]);
}

#[test]
fn an_oversized_header_is_refused_before_its_body_arrives() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    h.core
        .on_bytes(conn, &[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Ack as u8, 0], h.now);
    assert_eq!(error_code(&h.output(conn)), Some(ErrorCode::FrameTooLarge as u32));
}

#[test]
fn frames_split_at_every_byte_are_reassembled() {
    let mut h = Harness::new();
    let conn = h.connect();
    let mut bytes = Frame::Hello(Box::new(body::Hello {
        protocol_version: 1,
        app_id: "demo".into(),
        platform: 2,
        token: String::new(),
        ..Default::default()
    }))
    .to_bytes();
    Frame::Ping(body::Heartbeat { time_ms: 9 }).encode(&mut bytes);
    for b in &bytes {
        h.core.on_bytes(conn, std::slice::from_ref(b), h.now);
    }
    let frames = h.output(conn);
    assert!(matches!(frames[0], Frame::Welcome(_)));
    assert_eq!(frames[1], Frame::Pong(body::Heartbeat { time_ms: 9 }));
}

#[test]
fn frames_before_hello_and_server_frames_are_refused() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.send(conn, &Frame::Ack(body::Ids { ids: vec![1] }));
    assert_eq!(
        error_code(&h.output(conn)),
        Some(ErrorCode::UnexpectedFrame as u32)
    );
    let (conn2, _) = h.device("");
    h.send(conn2, &Frame::Pong(body::Heartbeat { time_ms: 1 }));
    assert_eq!(
        error_code(&h.output(conn2)),
        Some(ErrorCode::UnexpectedFrame as u32)
    );
}

#[test]
fn hello_is_validated() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.hello(conn, "nope", "");
    assert_eq!(error_code(&h.output(conn)), Some(ErrorCode::UnknownApp as u32));
    let conn = h.connect();
    h.send(
        conn,
        &Frame::Hello(Box::new(body::Hello {
            protocol_version: 2,
            app_id: "demo".into(),
            platform: 1,
            token: String::new(),
            ..Default::default()
        })),
    );
    assert_eq!(
        error_code(&h.output(conn)),
        Some(ErrorCode::UnsupportedVersion as u32)
    );
    let conn = h.connect();
    h.send(
        conn,
        &Frame::Hello(Box::new(body::Hello {
            protocol_version: 1,
            app_id: "demo".into(),
            platform: 3,
            token: String::new(),
            ..Default::default()
        })),
    );
    assert_eq!(error_code(&h.output(conn)), Some(ErrorCode::BadPlatform as u32));
}

#[test]
fn a_token_of_another_app_is_useless_there() {
    let mut h = Harness::new();
    let (_, w) = h.device("");
    assert_eq!(h.push_app("other", &w.token, "k", 60).1, Accepted::UnknownToken);
    let conn = h.connect();
    h.hello(conn, "other", &w.token);
    let frames = h.output(conn);
    assert!(matches!(&frames[0], Frame::Welcome(x) if x.new_token && x.token != w.token));
}

#[test]
fn a_retried_push_is_accepted_once() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    assert_eq!(h.push(&w.token, "k", 60).1, Accepted::Queued { online: true });
    assert_eq!(h.push(&w.token, "k", 60).1, Accepted::Duplicate);
    assert_eq!(push_ids(&h.output(conn)).len(), 1);
}

#[test]
fn statuses_are_collected_after_retention() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    h.output(conn);
    h.ack(conn, &[id]);
    let retention = config().delivery.status_retention();
    h.advance(retention - Duration::from_secs(1));
    assert_eq!(h.status(&w.token, "k"), Some(Status::Acked));
    h.core.on_timers(h.now + Duration::from_secs(2));
    assert_eq!(h.status(&w.token, "k"), None);
}

#[test]
fn final_statuses_are_capped_oldest_first() {
    let mut cfg = config();
    cfg.delivery.max_final_statuses_per_shard = 3;
    let mut h = Harness::with(cfg, 0, 1);
    let (conn, w) = h.device("");
    for i in 0..5 {
        let (id, _) = h.push(&w.token, &format!("k{i}"), 60);
        h.output(conn);
        h.ack(conn, &[id]);
    }
    h.advance(Duration::from_millis(20));
    assert_eq!(h.status(&w.token, "k0"), None);
    assert_eq!(h.status(&w.token, "k1"), None);
    assert_eq!(h.status(&w.token, "k2"), Some(Status::Acked));
    assert_eq!(h.status(&w.token, "k4"), Some(Status::Acked));
}

#[test]
fn a_device_that_writes_but_never_reads_is_closed_at_the_outbound_cap() {
    let mut cfg = config();
    cfg.limits.max_outbound_bytes = 80_000;
    let mut h = Harness::with(cfg, 0, 1);
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 60);
    // Pings whose Pongs the socket never takes (nobody calls take_outbound).
    let ping = Frame::Ping(body::Heartbeat { time_ms: 1 }).to_bytes();
    let mut sent = 0;
    while !h.core.actions.contains(&IoAction::Abort(conn)) {
        h.core.on_bytes(conn, &ping, h.now);
        sent += ping.len();
        assert!(sent < 200_000, "the cap must trip");
    }
    assert!(h.core.take_outbound(conn).is_none(), "the memory is released");
    h.core.on_closed(conn, h.now);
    let (conn2, _) = h.device(&w.token);
    assert_eq!(
        push_ids(&h.output(conn2)),
        [id],
        "its messages wait for the next connection"
    );
}

#[test]
fn bytes_the_socket_holds_back_count_towards_the_outbound_cap() {
    let mut cfg = config();
    cfg.limits.max_outbound_bytes = 80_000;
    let mut h = Harness::with(cfg, 0, 1);
    let (conn, _) = h.device("");
    h.core.on_write_progress(conn, 79_000, h.now);
    assert!(!h.core.actions.contains(&IoAction::Abort(conn)));
    assert_eq!(h.core.outbound_backlog, 79_000);
    // A Pong on top of what the I/O layer holds crosses the cap.
    let ping = Frame::Ping(body::Heartbeat { time_ms: 1 }).to_bytes();
    while !h.core.actions.contains(&IoAction::Abort(conn)) {
        h.core.on_bytes(conn, &ping, h.now);
        assert!(h.core.sessions[conn].outbound.len() < 2000, "the cap must trip");
    }
    assert!(h.core.take_outbound(conn).is_none());
    h.core.on_closed(conn, h.now);
    assert_eq!(h.core.outbound_backlog, 0, "a closed connection holds nothing");
}

#[test]
fn a_socket_that_holds_bytes_past_the_write_deadline_is_aborted() {
    let mut cfg = config();
    cfg.delivery.ack_timeout_secs = 300;
    let mut h = Harness::with(cfg, 0, 1);
    let (conn, w) = h.device("");
    let (id, _) = h.push(&w.token, "k", 600);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.core.on_write_progress(conn, 500, h.now);
    h.advance(Duration::from_secs(20));
    // Some progress, but the socket never took everything: still stalled.
    h.core.on_write_progress(conn, 300, h.now);
    h.advance(Duration::from_secs(9));
    assert!(!h
        .core
        .actions
        .iter()
        .any(|a| matches!(a, IoAction::Abort(_) | IoAction::Close(_))));
    h.advance(Duration::from_millis(1100));
    assert!(
        h.core.actions.contains(&IoAction::Abort(conn)),
        "{:?}",
        h.core.actions
    );
    assert!(h.core.take_outbound(conn).is_none());
    h.core.on_closed(conn, h.now);
    assert_eq!(h.core.outbound_backlog, 0);
    let (conn2, _) = h.device(&w.token);
    assert_eq!(
        push_ids(&h.output(conn2)),
        [id],
        "the unacked message is sent again"
    );
}

#[test]
fn a_socket_that_drains_restarts_the_write_deadline() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    for _ in 0..4 {
        h.core.on_write_progress(conn, 4096, h.now);
        h.advance(Duration::from_secs(20));
        h.core.on_write_progress(conn, 0, h.now);
    }
    assert!(
        !h.core.actions.contains(&IoAction::Abort(conn)),
        "80 s of short stalls"
    );
    h.core.on_write_progress(conn, 4096, h.now);
    h.advance(Duration::from_secs(31));
    assert!(h.core.actions.contains(&IoAction::Abort(conn)));
}

#[test]
fn a_stalled_close_is_aborted_at_the_write_deadline() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    h.core.on_write_progress(conn, 100, h.now);
    h.core.shutdown();
    h.output(conn);
    assert!(h.core.actions.contains(&IoAction::Close(conn)));
    h.core.actions.clear();
    h.advance(Duration::from_secs(31));
    assert_eq!(h.core.actions, [IoAction::Abort(conn)]);
}

#[test]
fn shutdown_tells_every_device_to_come_back_within_the_configured_spread() {
    let mut c = config();
    c.delivery.shutdown_retry_min_ms = 2_000;
    c.delivery.shutdown_retry_max_ms = 2_300;
    let mut h = Harness::with(c, 0, 1);
    let conns: Vec<ConnId> = (0..40).map(|_| h.device("").0).collect();
    h.core.shutdown();
    let mut seen = std::collections::HashSet::new();
    for conn in conns {
        let frames = h.output(conn);
        let Some(Frame::GoAway(g)) = frames.last() else {
            panic!("{frames:?}");
        };
        assert_eq!(g.reason, GoAwayReason::Shutdown as u32);
        assert!(
            (2_000..=2_300).contains(&g.retry_after_ms),
            "{}",
            g.retry_after_ms
        );
        seen.insert(g.retry_after_ms);
    }
    assert!(seen.len() > 10, "40 devices share {} retry-afters", seen.len());
}

#[test]
fn refusals_say_why_and_when_to_come_back() {
    use crate::admission::Refusal;
    let mut h = Harness::new();
    let goaway = |bytes: Bytes| match decode_slice(&bytes, 4096).unwrap() {
        Some((Frame::GoAway(g), _)) => g,
        other => panic!("{other:?}"),
    };
    for _ in 0..50 {
        let g = goaway(h.core.refusal_frame(Refusal::Banned {
            remaining: Duration::from_secs(20),
        }));
        assert_eq!(g.reason, GoAwayReason::Banned as u32);
        assert!(
            (21_000..=25_000).contains(&g.retry_after_ms),
            "{}",
            g.retry_after_ms
        );
        let g = goaway(h.core.refusal_frame(Refusal::AddressCap));
        assert_eq!(g.reason, GoAwayReason::TooManyConnections as u32);
        assert!((5_000..=30_000).contains(&g.retry_after_ms));
        for r in [Refusal::TotalCap, Refusal::ShardBusy, Refusal::TableFull] {
            let g = goaway(h.core.refusal_frame(r));
            assert_eq!(g.reason, GoAwayReason::Overloaded as u32);
            assert!((1_000..=5_000).contains(&g.retry_after_ms));
        }
    }
}

#[test]
fn a_length_claim_allocates_only_the_bytes_that_arrived() {
    let mut h = Harness::new();
    let max = h.core.limits.max_frame;
    let conn = h.connect();
    // A Hello header announcing the largest allowed frame, and 100 bytes.
    let mut claim = ((max - crate::protocol::HEADER_LEN) as u32)
        .to_be_bytes()
        .to_vec();
    claim.extend_from_slice(&[FrameType::Hello as u8, 0]);
    claim.extend_from_slice(&[0x12; 100]);
    h.core.on_bytes(conn, &claim, h.now);
    let held = h.core.sessions[conn].partial_capacity();
    assert!(held <= claim.len(), "holds {held} bytes for a claim of {max}");
    assert!(h.output(conn).is_empty(), "still waiting for the rest");

    // 0xFFFFFFFF: refused from the header, nothing kept.
    let huge = h.connect();
    h.core
        .on_bytes(huge, &[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Hello as u8, 0], h.now);
    assert_eq!(h.core.sessions[huge].partial_capacity(), 0);
    match h.output(huge).as_slice() {
        [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::FrameTooLarge as u32),
        other => panic!("{other:?}"),
    }
    assert!(h.core.actions.contains(&IoAction::Close(huge)));
}

#[test]
fn device_requests_get_result_codes() {
    let mut h = Harness::new();
    let (conn, _) = h.device("");
    let result = |frames: Vec<Frame>| match frames.as_slice() {
        [Frame::RequestResult(r)] => (r.request_id, r.code),
        other => panic!("{other:?}"),
    };
    h.send(
        conn,
        &Frame::Bind(body::UserBinding {
            request_id: 1,
            user_id: String::new(),
        }),
    );
    assert_eq!(result(h.output(conn)), (1, 3012));
    h.send(
        conn,
        &Frame::Bind(body::UserBinding {
            request_id: 2,
            user_id: "alice".into(),
        }),
    );
    assert_eq!(result(h.output(conn)), (2, 100));
    h.send(
        conn,
        &Frame::JoinGroup(body::Group {
            request_id: 3,
            group: "news".into(),
        }),
    );
    assert_eq!(result(h.output(conn)), (3, 100));
    h.send(
        conn,
        &Frame::ReportVendorToken(body::VendorToken {
            request_id: 4,
            third_channel: 3,
            vendor_token: "x".into(),
        }),
    );
    assert_eq!(result(h.output(conn)), (4, 3028));
    // A userId is up to 60 characters, not bytes (as the API counts).
    for (id, user_id, code) in [(5, "é".repeat(60), 100), (6, "é".repeat(61), 3028)] {
        h.send(
            conn,
            &Frame::Bind(body::UserBinding {
                request_id: id,
                user_id,
            }),
        );
        assert_eq!(result(h.output(conn)), (id, code));
    }
}

#[test]
fn the_connection_cap_refuses_with_go_away() {
    let mut cfg = config();
    cfg.limits.max_connections_per_shard = 2;
    let mut h = Harness::with(cfg, 0, 1);
    assert!(h.core.open_connection(h.now).is_some());
    assert!(h.core.open_connection(h.now).is_some());
    assert!(h.core.open_connection(h.now).is_none());
    let frame = h.core.overload_frame();
    let (frame, _) = decode_slice(&frame, 4096).unwrap().unwrap();
    match frame {
        Frame::GoAway(g) => {
            assert_eq!(g.reason, GoAwayReason::Overloaded as u32);
            assert!((1000..=5000).contains(&g.retry_after_ms));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn per_connection_state_stays_small() {
    // The idle-connection memory bar is 1 KiB per device in total; these are
    // the core's shares of it (without heap bytes such as the token).
    let session = std::mem::size_of::<Session>();
    let device = std::mem::size_of::<Device>();
    // 128 since a session counts its deadlines in the timer wheel, so that
    // closed connections' ones can be dropped (`compact_timers`).
    assert!(session <= 128, "Session is {session} bytes");
    // 200 since devices carry their registration, bind and last-seen times
    // and a cursor into the shared messages (broadcast filters, catch-up);
    // 208 with the pointer to their ring of reportable messages (statistics).
    assert!(device <= 208, "Device is {device} bytes");
}

mod properties {
    //! Random interleavings of pushes, acks, disconnects, reconnects and
    //! time, checked against the delivery rules.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            ttl_secs: u64,
        },
        /// A push with one of two collapse keys.
        PushCollapsing {
            ttl_secs: u64,
            key: bool,
        },
        AckAll,
        AckFirst,
        Disconnect,
        Reconnect,
        Advance {
            millis: u64,
        },
        /// Recalls the n-th message pushed (modulo how many there are).
        Recall {
            nth: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..20).prop_map(|ttl_secs| Op::Push { ttl_secs }),
            2 => (1u64..20, any::<bool>()).prop_map(|(ttl_secs, key)| Op::PushCollapsing { ttl_secs, key }),
            2 => Just(Op::AckAll),
            2 => Just(Op::AckFirst),
            1 => Just(Op::Disconnect),
            1 => Just(Op::Reconnect),
            2 => (1u64..5000).prop_map(|millis| Op::Advance { millis }),
            1 => (0usize..64).prop_map(|nth| Op::Recall { nth }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn delivery_rules_hold(ops in prop::collection::vec(op(), 1..80)) {
            let mut cfg = config();
            cfg.delivery.inflight_window = 4;
            cfg.delivery.max_pending_per_device = 8;
            cfg.delivery.heartbeat_secs = 3600;
            cfg.delivery.ack_timeout_secs = 3600;
            let mut h = Harness::with(cfg, 0, 1);
            let (first, w) = h.device("");
            let token = w.token.clone();
            let mut conn = Some(first);
            let mut expires: HashMap<u64, u64> = HashMap::new();
            let mut acked: std::collections::HashSet<u64> = Default::default();
            let mut unacked_seen: Vec<u64> = Vec::new();
            let mut last_written: Option<u64> = None;
            let mut pushed: Vec<u64> = Vec::new();
            let mut recalled: std::collections::HashSet<u64> = Default::default();
            for op in ops {
                match op {
                    Op::Push { ttl_secs } => {
                        let key = format!("k{}", h.next_id);
                        let (id, accepted) = h.push(&token, &key, ttl_secs);
                        let queued = matches!(accepted, Accepted::Queued { .. });
                        prop_assert!(queued, "push refused: {:?}", accepted);
                        expires.insert(id, h.unix_ms() + ttl_secs * 1000);
                        pushed.push(id);
                    }
                    Op::Recall { nth } => {
                        if !pushed.is_empty() {
                            let id = pushed[nth % pushed.len()];
                            let (reply, _rx) = tokio::sync::oneshot::channel();
                            h.core.on_command(
                                Command::Recall {
                                    app_id: "demo".into(),
                                    target: crate::message::RecallTarget::Token {
                                        msg_key: format!("k{id}").into(),
                                        token: token.clone().into(),
                                    },
                                    not_before_ms: 0,
                                    reply,
                                },
                                h.now,
                            );
                            h.commit();
                            recalled.insert(id);
                        }
                    }
                    Op::PushCollapsing { ttl_secs, key } => {
                        let msg_key = format!("k{}", h.next_id);
                        let collapse = if key { "a" } else { "b" };
                        let (id, accepted) = h.push_with("demo", &token, &msg_key, ttl_secs, Some(collapse));
                        let queued = matches!(accepted, Accepted::Queued { .. });
                        prop_assert!(queued, "push refused: {:?}", accepted);
                        expires.insert(id, h.unix_ms() + ttl_secs * 1000);
                        // At most one unsent message per key.
                        let d = &h.core.devices[h.core.by_token[token.as_str()]];
                        let unsent = d.queue.iter().skip(d.in_flight);
                        let same = unsent.filter(|p| p.collapse_key.as_deref() == Some(collapse)).count();
                        prop_assert!(same <= 1, "{} unsent messages with key {}", same, collapse);
                    }
                    Op::AckAll | Op::AckFirst => {
                        if let Some(c) = conn {
                            let ids: Vec<u64> = if matches!(op, Op::AckAll) {
                                std::mem::take(&mut unacked_seen)
                            } else if unacked_seen.is_empty() {
                                vec![]
                            } else {
                                vec![unacked_seen.remove(0)]
                            };
                            acked.extend(&ids);
                            h.ack(c, &ids);
                        }
                    }
                    Op::Disconnect => {
                        if let Some(c) = conn.take() {
                            h.core.on_closed(c, h.now);
                            unacked_seen.clear();
                            last_written = None;
                        }
                    }
                    Op::Reconnect => {
                        if conn.is_none() {
                            let (c, w) = h.device(&token);
                            prop_assert_eq!(&w.token, &token);
                            conn = Some(c);
                        }
                    }
                    Op::Advance { millis } => h.advance(Duration::from_millis(millis)),
                }
                if let Some(c) = conn {
                    for frame in h.output(c) {
                        if let Frame::Revoke(r) = &frame {
                            for id in &r.ids {
                                prop_assert!(recalled.contains(id), "Revoke of {} never recalled", id);
                            }
                        }
                        if let Frame::Push(p) = frame {
                            prop_assert!(!recalled.contains(&p.id), "recalled {} was written", p.id);
                            prop_assert!(!acked.contains(&p.id), "acked {} was written again", p.id);
                            prop_assert!(expires[&p.id] > h.unix_ms(), "{} written after expiry", p.id);
                            if let Some(prev) = last_written {
                                prop_assert!(p.id > prev, "order: {} after {}", p.id, prev);
                            }
                            last_written = Some(p.id);
                            unacked_seen.push(p.id);
                        }
                    }
                    // Expired messages leave the window even while in flight.
                    let now_ms = h.unix_ms();
                    unacked_seen.retain(|id| expires[id] > now_ms && !recalled.contains(id));
                    prop_assert!(unacked_seen.len() <= 4, "window exceeded: {:?}", unacked_seen);
                }
                h.core.check_invariants();
            }
        }
    }
}

/// A checkpoint of `core` as one byte string (no log reader: positions unknown).
fn checkpoint_of(core: &mut DeliveryCore) -> Vec<u8> {
    let mut checkpoint = Vec::new();
    core.write_checkpoint(|chunk, _| {
        checkpoint.extend_from_slice(chunk);
        Ok::<_, UnreadableFrame>(None)
    })
    .unwrap();
    checkpoint
}

/// Splits framed log records (length, CRC, kind, payload) and replays each
/// into `core`.
fn replay_into(core: &mut DeliveryCore, framed: &[u8], now: Instant) -> usize {
    replay_segment_into(core, framed, None, now)
}

/// Like `replay_into`, telling the core where each record is when `framed`
/// is the whole of segment `segment`.
fn replay_segment_into(core: &mut DeliveryCore, framed: &[u8], segment: Option<u64>, now: Instant) -> usize {
    let mut records = 0;
    let mut offset = 0;
    while offset < framed.len() {
        let (kind, payload) = {
            let len = u32::from_le_bytes(framed[offset..offset + 4].try_into().unwrap()) as usize;
            crate::log::check_record(&framed[offset..offset + 8 + len]).unwrap()
        };
        let at = segment.map(|segment| Position {
            segment,
            offset: offset as u64,
        });
        let record = &framed[offset..offset + payload.end];
        core.replay(kind, &record[payload.clone()], at, now).unwrap();
        offset += payload.end;
        records += 1;
    }
    core.finish_replay();
    records
}

/// A device with three messages (one acked, two waiting), one offline
/// device with two, a bound user; returns (online token, offline token).
fn durable_scenario(h: &mut Harness) -> (String, String) {
    let offline = {
        let (conn, w) = h.device("");
        h.core.on_closed(conn, h.now);
        w.token
    };
    let (conn, w) = h.device("");
    h.send(
        conn,
        &Frame::Bind(body::UserBinding {
            request_id: 1,
            user_id: "alice".into(),
        }),
    );
    let ids: Vec<u64> = (0..3).map(|i| h.push(&w.token, &format!("a{i}"), 60).0).collect();
    h.push(&offline, "b0", 60);
    h.push(&offline, "b1", 60);
    h.output(conn);
    h.ack(conn, &ids[..1]);
    h.commit();
    h.core.check_invariants();
    (w.token, offline)
}

fn assert_restored(h: &mut Harness, online: &str, offline: &str) {
    h.core.check_invariants();
    assert_eq!(h.core.pending_count(), 4);
    assert_eq!(h.status(online, "a0"), Some(Status::Acked));
    assert_eq!(h.status(online, "a1"), Some(Status::Pending));
    assert_eq!(h.status(offline, "b1"), Some(Status::Pending));
    let (conn, w) = h.device(online);
    assert!(!w.new_token, "the token survived");
    let keys: Vec<String> = h
        .output(conn)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.msg_key),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["a1", "a2"], "pending messages come back in order");
    let d = h.core.by_token[online];
    assert_eq!(h.core.devices[d].user_id.as_deref(), Some("alice"));
    assert_eq!(h.push(online, "a0", 60).1, Accepted::Duplicate, "dedup survives");
}

#[test]
fn replaying_the_journal_restores_devices_messages_and_statuses() {
    let mut h = Harness::new();
    let (online, offline) = durable_scenario(&mut h);
    let mut after = h.restarted();
    assert!(replay_into(&mut after.core, &h.log, h.now) > 0);
    assert_restored(&mut after, &online, &offline);
}

#[test]
fn a_checkpoint_replays_to_the_same_state_alone_or_after_the_journal() {
    let mut h = Harness::new();
    let (online, offline) = durable_scenario(&mut h);
    let checkpoint = checkpoint_of(&mut h.core);
    // Alone (older segments deleted), and after the whole journal (a crash
    // before they were deleted): both are the same state.
    let mut with_journal = h.log.clone();
    with_journal.extend_from_slice(&checkpoint);
    for log in [checkpoint, with_journal] {
        let mut after = h.restarted();
        replay_into(&mut after.core, &log, h.now);
        assert_restored(&mut after, &online, &offline);
    }
}

#[test]
fn a_failed_commit_withdraws_messages_before_any_device_sees_them() {
    let mut h = Harness::new();
    let (conn, w) = h.device("");
    h.commit();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    let frame = Frame::Push(Box::new(body::Push {
        id: 99,
        msg_key: "k".into(),
        ..Default::default()
    }));
    h.core.on_command(
        Command::Push {
            messages: vec![Message {
                id: 99,
                app_id: "demo".into(),
                token: w.token.as_str().into(),
                msg_key: "k".into(),
                accepted_at_ms: h.unix_ms(),
                expires_at_ms: h.unix_ms() + 60_000,
                frame: Bytes::from(frame.to_bytes()),
                task: TaskTag::untasked(crate::stats::PushType::Simple),
                collapse_key: None,
            }],
            reply,
        },
        h.now,
    );
    assert!(
        push_ids(&h.output(conn)).is_empty(),
        "nothing is sent before the commit"
    );
    assert!(rx.try_recv().is_err(), "nor answered");
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert_eq!(rx.try_recv().unwrap(), Err(StorageRefusal::Full));
    assert!(push_ids(&h.output(conn)).is_empty());
    assert_eq!(h.core.pending_count(), 0);
    assert_eq!(h.status(&w.token, "k"), None, "as if never accepted");
    h.core.check_invariants();
}

#[test]
fn a_message_whose_ttl_ended_during_downtime_expires_on_replay() {
    let mut h = Harness::new();
    let token = {
        let (conn, w) = h.device("");
        h.core.on_closed(conn, h.now);
        w.token
    };
    h.push(&token, "short", 1);
    h.push(&token, "long", 600);
    // Restart 5 s later on the wall clock.
    let later_ms = T0_UNIX_MS + 5_000;
    let mut after = Harness::new();
    after.core = DeliveryCore::with_wall_clock(0, 1, &config(), after.t0, later_ms);
    replay_into(&mut after.core, &h.log, after.now);
    after.advance(Duration::from_millis(20));
    assert_eq!(after.status(&token, "short"), Some(Status::Expired));
    let (conn, _) = after.device(&token);
    let keys: Vec<String> = after
        .output(conn)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.msg_key),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["long"]);
}

fn push_keys(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.msg_key.clone()),
            _ => None,
        })
        .collect()
}

fn offline_device(h: &mut Harness) -> String {
    let (conn, w) = h.device("");
    h.core.on_closed(conn, h.now);
    w.token
}

#[test]
fn offline_devices_messages_wait_in_the_log_not_in_memory() {
    let mut h = Harness::with_log_reader();
    let token = offline_device(&mut h);
    for i in 0..5 {
        h.push(&token, &format!("k{i}"), 60);
    }
    assert_eq!(
        h.frames_in_memory(),
        0,
        "an offline device's frames stay in the log"
    );
    let (conn, _) = h.device(&token);
    let frames = h.output(conn);
    assert_eq!(push_keys(&frames), ["k0", "k1", "k2", "k3", "k4"]);
    assert!(frames.iter().all(|f| match f {
        Frame::Push(p) => p.title == "t" && p.content == "c",
        _ => true,
    }));
    // An online device's message is written at once, from memory.
    h.push(&token, "live", 60);
    assert_eq!(push_keys(&h.output(conn)), ["live"]);
    assert_eq!(h.frames_in_memory(), 1);
    h.core.check_invariants();
}

#[test]
fn a_frame_the_log_cannot_give_back_is_dropped_visibly_and_the_queue_goes_on() {
    let mut h = Harness::with_log_reader();
    let token = offline_device(&mut h);
    h.push(&token, "bad", 60);
    h.push(&token, "good", 60);
    let d = h.core.by_token[token.as_str()];
    let FrameSlot::Log(span) = h.core.devices[d].queue[0].frame else {
        panic!("the frame is in the log");
    };
    let segments = h.segments.clone().unwrap();
    segments.damage(span.segment, span.offset as usize + span.len as usize - 3);
    let (conn, _) = h.device(&token);
    assert_eq!(push_keys(&h.output(conn)), ["good"]);
    assert_eq!(h.status(&token, "bad"), Some(Status::Dropped));
    assert_eq!(h.core.pending_count(), 1);
    h.core.check_invariants();
}

#[test]
fn a_checkpoint_takes_over_the_frames_so_older_segments_can_go() {
    let mut h = Harness::with_log_reader();
    let offline = offline_device(&mut h);
    h.push(&offline, "o0", 60);
    h.push(&offline, "o1", 60);
    // A message written while its device was online, unacked when it left:
    // in memory until the checkpoint.
    let (conn, w) = h.device("");
    h.push(&w.token, "w0", 60);
    h.output(conn);
    h.core.on_closed(conn, h.now);
    assert_eq!(h.frames_in_memory(), 1);
    let segments = h.segments.clone().unwrap();
    let written = h
        .core
        .write_checkpoint(|chunk, _| Ok::<_, UnreadableFrame>(Some(segments.append(2, chunk))))
        .unwrap();
    h.core.checkpoint_done(written, 2);
    assert_eq!(
        segments.0.lock().keys().copied().collect::<Vec<_>>(),
        [2],
        "segment 1 is gone"
    );
    assert_eq!(h.frames_in_memory(), 0);
    let (conn, _) = h.device(&offline);
    assert_eq!(push_keys(&h.output(conn)), ["o0", "o1"]);
    let (conn, _) = h.device(&w.token);
    assert_eq!(push_keys(&h.output(conn)), ["w0"]);
    // And the checkpoint alone replays to the same messages.
    let mut after = h.restarted();
    after.core.set_log_reader(Box::new(segments.clone()));
    let checkpoint = segments.0.lock()[&2].clone();
    replay_segment_into(&mut after.core, &checkpoint, Some(2), h.now);
    assert_eq!(after.frames_in_memory(), 0, "replayed frames stay in the log");
    let (conn, _) = after.device(&offline);
    assert_eq!(push_keys(&after.output(conn)), ["o0", "o1"]);
    after.core.check_invariants();
}

#[test]
fn an_unreadable_frame_fails_the_checkpoint_and_keeps_the_older_segments() {
    let mut h = Harness::with_log_reader();
    let token = offline_device(&mut h);
    h.push(&token, "k", 60);
    let segments = h.segments.clone().unwrap();
    // The message's own record (a statistics record follows it).
    let d = h.core.by_token[&*token];
    let FrameSlot::Log(span) = h.core.devices[d].queue[0].frame else {
        panic!("the frame is in the log");
    };
    segments.damage(1, (span.offset + span.len - 2) as usize);
    let result = h
        .core
        .write_checkpoint(|chunk, _| Ok::<_, UnreadableFrame>(Some(segments.append(2, chunk))));
    assert!(result.is_err());
    assert!(segments.0.lock().contains_key(&1));
}

/// A config where app "other" requires device authentication.
fn device_auth_config(nonces_per_app: usize) -> Config {
    let mut c = config();
    c.apps[1].device_secret = Some(crate::config::Secret::new(DEVICE_SECRET));
    c.apps[1].device_auth = crate::config::DeviceAuthMode::Required;
    c.device_auth.nonces_per_app = nonces_per_app;
    c
}

const DEVICE_SECRET: &str = "core-test-device-secret";

fn signed_hello(token: &str, unix_ms: u64, nonce: &str) -> Frame {
    let mut hello = body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: "other".into(),
        platform: 1,
        token: token.into(),
        ..Default::default()
    };
    device_auth::sign_hello(DEVICE_SECRET.as_bytes(), &mut hello, unix_ms, nonce);
    Frame::Hello(Box::new(hello))
}

#[test]
fn device_auth_refuses_a_bare_hello_and_a_full_nonce_cache_says_come_back() {
    let mut h = Harness::with(device_auth_config(1), 0, 1);
    let conn = h.connect();
    h.hello(conn, "other", "");
    let frames = h.output(conn);
    assert_eq!(error_code(&frames), Some(ErrorCode::AuthFailed as u32));
    assert!(matches!(&frames[0], Frame::Error(e) if e.reason.starts_with("missing")));
    assert_eq!(h.actions(), vec![IoAction::Close(conn)]);
    // The other app is unaffected.
    h.device("");

    let conn = h.connect();
    h.send(conn, &signed_hello("", h.unix_ms(), "nonce-0001"));
    assert!(matches!(h.output(conn).first(), Some(Frame::Welcome(_))));
    // The cache holds one nonce: the next signed Hello is told to come back.
    let conn = h.connect();
    h.send(conn, &signed_hello("", h.unix_ms(), "nonce-0002"));
    let frames = h.output(conn);
    assert_eq!(go_away_reason(&frames), Some(GoAwayReason::Overloaded as u32));
    assert!(matches!(&frames[0], Frame::GoAway(g) if g.retry_after_ms == NONCE_CACHE_RETRY_MS));
    // Once the first nonce's timestamp has left the window, there is room.
    h.advance(Duration::from_secs(302));
    let conn = h.connect();
    h.send(conn, &signed_hello("", h.unix_ms(), "nonce-0003"));
    assert!(matches!(h.output(conn).first(), Some(Frame::Welcome(_))));
}

#[test]
fn device_auth_is_checked_on_the_owner_shard_only() {
    let mut h0 = Harness::with(device_auth_config(100), 0, 2);
    let mut h1 = Harness::with(device_auth_config(100), 1, 2);
    h1.core.share_device_auth(h0.core.device_auth.clone());
    let token = (0..)
        .map(|i| format!("token-{i}"))
        .find(|t| owner_shard(t.as_bytes(), 2) == 1)
        .unwrap();
    let hello = signed_hello(&token, h0.unix_ms(), "nonce-0001");
    // Shard 0 hands the connection over without looking at the proof...
    let conn = h0.connect();
    h0.send(conn, &hello);
    assert!(matches!(&h0.actions()[..], [IoAction::HandOff { to: 1, .. }]));
    // ...so the owner records the nonce, once.
    let conn = h1.connect();
    h1.send(conn, &hello);
    assert!(matches!(h1.output(conn).first(), Some(Frame::Welcome(_))));
    let conn = h1.connect();
    h1.send(conn, &hello);
    let frames = h1.output(conn);
    assert!(
        matches!(&frames[0], Frame::Error(e) if e.reason.starts_with("replayed_nonce")),
        "{frames:?}"
    );
}
