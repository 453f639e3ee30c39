//! The sans-IO delivery core of one shard (interface; the implementation
//! lands next).

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::config::Config;
use crate::message::Command;

/// Index of a connection in the shard's session slab. Reused after
/// `on_closed`.
pub type ConnId = usize;

/// What the I/O layer must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoAction {
    /// The connection has bytes to write: call `take_outbound`.
    Send(ConnId),
    /// Write what `take_outbound` still returns, close the socket, then call
    /// `on_closed`.
    Close(ConnId),
    /// Stop reading; hand the socket with `initial` (plus anything read after)
    /// to shard `to`, then call `on_closed`.
    HandOff { conn: ConnId, to: usize, initial: Bytes },
}

pub struct DeliveryCore {
    _private: (),
}

impl DeliveryCore {
    pub fn new(_shard_id: usize, _shard_count: usize, _config: &Config, _now: Instant) -> Self {
        Self { _private: () }
    }
    pub fn open_connection(&mut self, _now: Instant) -> Option<ConnId> {
        None
    }
    pub fn overload_frame(&self) -> Bytes {
        Bytes::new()
    }
    pub fn on_bytes(&mut self, _conn: ConnId, _bytes: &[u8], _now: Instant) {}
    pub fn on_closed(&mut self, _conn: ConnId, _now: Instant) {}
    pub fn on_command(&mut self, _cmd: Command, _now: Instant) {}
    pub fn on_timers(&mut self, _now: Instant) {}
    pub fn next_deadline(&self) -> Option<Instant> {
        None
    }
    pub fn poll_action(&mut self) -> Option<IoAction> {
        None
    }
    pub fn take_outbound(&mut self, _conn: ConnId) -> Option<BytesMut> {
        None
    }
    pub fn connection_count(&self) -> usize {
        0
    }
}
