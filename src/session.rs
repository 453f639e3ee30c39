//! One device connection as the core sees it: where it is in the handshake,
//! the bytes of a frame that arrived only in part, the bytes waiting for the
//! socket (and how many the I/O layer still holds, for the outbound cap and
//! the write deadline), and the activity clock for the idle deadline. No
//! sockets here.
//!
//! Buffers are empty `BytesMut`s (no heap) unless a frame is split across
//! reads or output is waiting, so an idle session costs its struct only.
//! A TLS connection also holds its `TlsSession`, boxed beside the buffers:
//! `partial` and `outbound` then hold plaintext, and the TLS session turns
//! it into and out of ciphertext at the edges (`DeliveryCore::on_bytes`,
//! `take_outbound`), so the frame decoder runs unchanged and a plaintext
//! connection pays one empty pointer.

use std::time::Instant;

use bytes::BytesMut;

use crate::delivery::DeviceId;
use crate::protocol::{self, DecodeError, Frame};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Connected; only Hello is acceptable, before the handshake deadline.
    AwaitingHello,
    /// Welcome sent; the session serves this device.
    Active(DeviceId),
    /// A close was decided: input is ignored, output is being flushed.
    Closing,
}

pub struct Session {
    pub state: SessionState,
    /// Distinguishes this connection from earlier ones that had the same
    /// `ConnId`, for timers that outlive a connection.
    pub generation: u32,
    pub last_activity: Instant,
    /// A `Send` action is outstanding for this session.
    pub send_requested: bool,
    /// The ack-timeout timer is armed.
    pub ack_timer_armed: bool,
    /// Bytes the I/O layer holds that the socket has not taken, as last
    /// reported (`DeliveryCore::on_write_progress`).
    pub io_unsent: u32,
    /// While `io_unsent` is non-zero: since when it has been, without a
    /// break (the start of the write deadline), in wrapping milliseconds of
    /// the core's clock; 4 bytes where an `Instant` would take 16, and
    /// correct for any stall shorter than 49 days.
    pub blocked_since_ms: u32,
    /// The write-deadline timer is armed.
    pub write_timer_armed: bool,
    /// Deadlines of this connection in the core's timer wheel (handshake,
    /// idle, ack, write: at most four); they become dead entries when the
    /// connection closes.
    pub timers_in_wheel: u8,
    /// An abort was decided; the I/O layer drops what it holds.
    pub aborted: bool,
    partial: BytesMut,
    pub outbound: BytesMut,
    /// The connection's TLS state; `None` on the plain listener.
    pub tls: Option<Box<crate::tls::TlsSession>>,
}

/// What `Session::read` found in the input.
pub enum Decoded {
    Frame(Frame),
    NeedMore,
    Invalid(DecodeError),
}

impl Session {
    pub fn new(generation: u32, now: Instant) -> Self {
        Self {
            state: SessionState::AwaitingHello,
            generation,
            last_activity: now,
            send_requested: false,
            ack_timer_armed: false,
            io_unsent: 0,
            blocked_since_ms: 0,
            write_timer_armed: false,
            timers_in_wheel: 0,
            aborted: false,
            partial: BytesMut::new(),
            outbound: BytesMut::new(),
            tls: None,
        }
    }

    pub fn device(&self) -> Option<DeviceId> {
        match self.state {
            SessionState::Active(device) => Some(device),
            _ => None,
        }
    }

    /// Joins new input with any partial frame from earlier reads. Returns the
    /// bytes to decode; the caller hands back how many it consumed through
    /// `keep_unconsumed`.
    pub fn take_input(&mut self, input: &[u8]) -> Input {
        if self.partial.is_empty() {
            Input::Borrowed
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(input);
            Input::Joined(joined)
        }
    }

    /// Heap bytes held for a partial frame: what arrived, never what a
    /// header announced.
    pub fn partial_capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Keeps `rest` (the start of an incomplete frame) for the next read.
    pub fn keep_unconsumed(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            // Drop the allocation: an idle session must not pin a buffer.
            self.partial = BytesMut::new();
        } else {
            self.partial = BytesMut::from(rest);
        }
    }
}

/// Where the bytes to decode live for one `on_bytes` call.
pub enum Input {
    /// Decode straight from the caller's receive buffer.
    Borrowed,
    /// A partial frame from before, with the new bytes appended.
    Joined(BytesMut),
}

/// Decodes the frame at the front of `bytes`.
pub fn decode_next(bytes: &[u8], max_frame: usize) -> (Decoded, usize) {
    match protocol::decode_slice(bytes, max_frame) {
        Ok(Some((frame, used))) => (Decoded::Frame(frame), used),
        Ok(None) => (Decoded::NeedMore, 0),
        Err(e) => (Decoded::Invalid(e), 0),
    }
}
