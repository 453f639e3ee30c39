//! The device wire protocol: frame header, frame bodies and the codec.
//!
//! A frame is a 6-byte header — body length (`u32`, big-endian), frame type
//! (`u8`), flags (`u8`, must be zero in version 1) — followed by a protobuf
//! body (prost). The decoder checks the length against the configured maximum
//! *before* it looks at, or allocates for, the body, so a hostile length prefix
//! costs nothing. This module knows nothing about sockets, sessions or time;
//! `docs/protocol.md` and `proto/ringpush.proto` are its specification.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

/// Version spoken by this server; a Hello with another version gets
/// `ErrorCode::UnsupportedVersion`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes before the body: length (4), type (1), flags (1).
pub const HEADER_LEN: usize = 6;
/// Default for `limits.max_frame_bytes` (header included).
pub const DEFAULT_MAX_FRAME: usize = 4096;

pub mod body {
    //! Frame bodies. Field numbers are part of the protocol: never reuse one.
    //! Kept in sync with `proto/ringpush.proto` by `tests::proto_file_matches`.
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Hello {
        #[prost(uint32, tag = "1")]
        pub protocol_version: u32,
        #[prost(string, tag = "2")]
        pub app_id: String,
        /// 1 Android, 2 iOS, 7 HarmonyOS (the API's `deliveryType` values).
        #[prost(uint32, tag = "3")]
        pub platform: u32,
        /// Empty on first contact: the server issues one in Welcome.
        #[prost(string, tag = "4")]
        pub token: String,
        /// Signed Hello (device authentication): unix milliseconds when it
        /// was signed.
        #[prost(uint64, tag = "5")]
        pub timestamp_ms: u64,
        /// Signed Hello: 8..=64 characters of A-Z a-z 0-9 - _, new for
        /// every Hello.
        #[prost(string, tag = "6")]
        pub nonce: String,
        /// Signed Hello: HMAC-SHA256 with the app's device secret over
        /// `device_auth::hello_string_to_sign` (32 bytes).
        #[prost(bytes = "vec", tag = "7")]
        pub signature: Vec<u8>,
        /// A credential the app's backend minted (`device_auth`), instead
        /// of a signature.
        #[prost(string, tag = "8")]
        pub credential: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Welcome {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(uint32, tag = "2")]
        pub heartbeat_secs: u32,
        #[prost(uint64, tag = "3")]
        pub server_time_ms: u64,
        /// True when `token` differs from the one the device presented.
        #[prost(bool, tag = "4")]
        pub new_token: bool,
        /// Messages dropped by the pending-queue cap since the device last
        /// heard from us.
        #[prost(uint32, tag = "5")]
        pub missed: u32,
        #[prost(uint32, tag = "6")]
        pub protocol_version: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Push {
        /// Service message id: the id the device acknowledges.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(string, tag = "2")]
        pub msg_key: String,
        #[prost(string, tag = "3")]
        pub title: String,
        #[prost(string, tag = "4")]
        pub content: String,
        #[prost(bool, tag = "5")]
        pub silent: bool,
        /// 0 web URL, 1 in-app deep link (`pushAction`).
        #[prost(uint32, tag = "6")]
        pub action: u32,
        #[prost(string, tag = "7")]
        pub uri: String,
        /// 0 default, 1 big text, 2 picture (`pushStyle`).
        #[prost(uint32, tag = "8")]
        pub push_style: u32,
        #[prost(string, tag = "9")]
        pub icon_urls: String,
        #[prost(string, tag = "10")]
        pub image_urls: String,
        #[prost(map = "string, string", tag = "11")]
        pub extended_params: HashMap<String, String>,
        #[prost(string, tag = "12")]
        pub task_id: String,
        /// Unix milliseconds after which the message is void.
        #[prost(uint64, tag = "13")]
        pub expires_at_ms: u64,
        /// `transparent` (data for the app) or `notify` (show it).
        #[prost(string, tag = "14")]
        pub notify_type: String,
        /// Unix milliseconds when the API accepted the message.
        #[prost(uint64, tag = "15")]
        pub accepted_at_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ids {
        #[prost(uint64, repeated, tag = "1")]
        pub ids: Vec<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Heartbeat {
        #[prost(uint64, tag = "1")]
        pub time_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GoAway {
        #[prost(uint32, tag = "1")]
        pub reason: u32,
        #[prost(uint32, tag = "2")]
        pub retry_after_ms: u32,
        #[prost(string, tag = "3")]
        pub message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Error {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UserBinding {
        #[prost(uint64, tag = "1")]
        pub request_id: u64,
        #[prost(string, tag = "2")]
        pub user_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Group {
        #[prost(uint64, tag = "1")]
        pub request_id: u64,
        #[prost(string, tag = "2")]
        pub group: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VendorToken {
        #[prost(uint64, tag = "1")]
        pub request_id: u64,
        /// `thirdChannel`: 2 Apple, 4 Xiaomi, 5 Huawei, 6 FCM, 7 OPPO, 8 vivo.
        #[prost(uint32, tag = "2")]
        pub third_channel: u32,
        #[prost(string, tag = "3")]
        pub vendor_token: String,
    }

    /// Recall: remove these messages. `ids[i]` and `msg_keys[i]` name one
    /// message; the device answers `RevokeAck` with the ids it applied.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Revoke {
        #[prost(uint64, repeated, tag = "1")]
        pub ids: Vec<u64>,
        #[prost(string, repeated, tag = "2")]
        pub msg_keys: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TokenUpdate {
        #[prost(string, tag = "1")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestResult {
        #[prost(uint64, tag = "1")]
        pub request_id: u64,
        /// A push-semantics result code: 100 success, 3012 empty userId, ...
        #[prost(int32, tag = "2")]
        pub code: i32,
        #[prost(string, tag = "3")]
        pub message: String,
    }
}

/// Why the server closes a connection in an orderly way (GoAway.reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GoAwayReason {
    /// Another connection presented the same token.
    Replaced = 1,
    /// The server is shutting down; reconnect after `retry_after_ms`.
    Shutdown = 2,
    /// The device deleted its token; the next Hello gets a new one.
    TokenDeleted = 3,
    /// The server is saturated; reconnect after `retry_after_ms`.
    Overloaded = 4,
    /// The device's address holds `admission.max_connections_per_address`
    /// connections already; reconnect after `retry_after_ms`.
    TooManyConnections = 5,
    /// The device's address connected faster than the admission rate and
    /// is banned; `retry_after_ms` is the rest of the ban plus jitter.
    Banned = 6,
}

/// Protocol error codes (Error.code). The connection closes after each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The body does not decode as the frame type's protobuf message.
    MalformedFrame = 1,
    /// The header announces more than `limits.max_frame_bytes`.
    FrameTooLarge = 2,
    UnknownFrameType = 3,
    /// Header flags other than zero (reserved in version 1).
    BadFlags = 4,
    /// A frame that is not valid in the session's state, or one only the
    /// server may send.
    UnexpectedFrame = 5,
    HandshakeTimeout = 6,
    IdleTimeout = 7,
    UnsupportedVersion = 8,
    UnknownApp = 9,
    BadPlatform = 10,
    /// The app requires device authentication and the Hello's signature or
    /// credential is missing or does not verify (the reason says which).
    AuthFailed = 11,
    /// The app requires a TLS client certificate issued by its CA
    /// (`clientCaFile`) and the connection has none, or one from another
    /// CA, or is not TLS.
    ClientCertRequired = 20,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        Self::MalformedFrame,
        Self::FrameTooLarge,
        Self::UnknownFrameType,
        Self::BadFlags,
        Self::UnexpectedFrame,
        Self::HandshakeTimeout,
        Self::IdleTimeout,
        Self::UnsupportedVersion,
        Self::UnknownApp,
        Self::BadPlatform,
        Self::AuthFailed,
        Self::ClientCertRequired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnknownFrameType => "unknown_frame_type",
            Self::BadFlags => "bad_flags",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownApp => "unknown_app",
            Self::BadPlatform => "bad_platform",
            Self::AuthFailed => "auth_failed",
            Self::ClientCertRequired => "client_cert_required",
        }
    }
}

impl GoAwayReason {
    pub const ALL: [GoAwayReason; 6] = [
        Self::Replaced,
        Self::Shutdown,
        Self::TokenDeleted,
        Self::Overloaded,
        Self::TooManyConnections,
        Self::Banned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "replaced",
            Self::Shutdown => "shutdown",
            Self::TokenDeleted => "token_deleted",
            Self::Overloaded => "overloaded",
            Self::TooManyConnections => "too_many_connections",
            Self::Banned => "banned",
        }
    }
}

/// Frame type byte. Device → server types are below 0x40, server → device at
/// or above, so a peer sending the other side's frame is easy to reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Ack = 0x02,
    Ping = 0x03,
    DeleteToken = 0x04,
    Bind = 0x05,
    Unbind = 0x06,
    JoinGroup = 0x07,
    LeaveGroup = 0x08,
    LeaveAllGroups = 0x09,
    ReportVendorToken = 0x0A,
    Opened = 0x0B,
    Ignored = 0x0C,
    /// The device removed what a Revoke named (recall); body `Ids`.
    RevokeAck = 0x0D,
    Welcome = 0x41,
    Push = 0x42,
    Pong = 0x43,
    GoAway = 0x44,
    Error = 0x45,
    Revoke = 0x46,
    TokenUpdate = 0x47,
    RequestResult = 0x48,
}

impl FrameType {
    pub const ALL: [FrameType; 21] = [
        Self::Hello,
        Self::Ack,
        Self::Ping,
        Self::DeleteToken,
        Self::Bind,
        Self::Unbind,
        Self::JoinGroup,
        Self::LeaveGroup,
        Self::LeaveAllGroups,
        Self::ReportVendorToken,
        Self::Opened,
        Self::Ignored,
        Self::RevokeAck,
        Self::Welcome,
        Self::Push,
        Self::Pong,
        Self::GoAway,
        Self::Error,
        Self::Revoke,
        Self::TokenUpdate,
        Self::RequestResult,
    ];

    pub fn from_u8(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    pub fn from_device(self) -> bool {
        (self as u8) < 0x40
    }

    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Ack => "ack",
            Self::Ping => "ping",
            Self::DeleteToken => "delete_token",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
            Self::JoinGroup => "join_group",
            Self::LeaveGroup => "leave_group",
            Self::LeaveAllGroups => "leave_all_groups",
            Self::ReportVendorToken => "report_vendor_token",
            Self::Opened => "opened",
            Self::Ignored => "ignored",
            Self::RevokeAck => "revoke_ack",
            Self::Welcome => "welcome",
            Self::Push => "push",
            Self::Pong => "pong",
            Self::GoAway => "go_away",
            Self::Error => "error",
            Self::Revoke => "revoke",
            Self::TokenUpdate => "token_update",
            Self::RequestResult => "request_result",
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Boxed, like Push: with the authentication fields it is the largest
    /// body, and every frame on the per-message path would pay its size.
    Hello(Box<body::Hello>),
    Ack(body::Ids),
    Ping(body::Heartbeat),
    DeleteToken,
    Bind(body::UserBinding),
    Unbind(body::UserBinding),
    JoinGroup(body::Group),
    LeaveGroup(body::Group),
    LeaveAllGroups(body::Group),
    ReportVendorToken(body::VendorToken),
    Opened(body::Ids),
    Ignored(body::Ids),
    RevokeAck(body::Ids),
    Welcome(body::Welcome),
    Push(Box<body::Push>),
    Pong(body::Heartbeat),
    GoAway(body::GoAway),
    Error(body::Error),
    Revoke(body::Revoke),
    TokenUpdate(body::TokenUpdate),
    RequestResult(body::RequestResult),
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Ack(_) => FrameType::Ack,
            Self::Ping(_) => FrameType::Ping,
            Self::DeleteToken => FrameType::DeleteToken,
            Self::Bind(_) => FrameType::Bind,
            Self::Unbind(_) => FrameType::Unbind,
            Self::JoinGroup(_) => FrameType::JoinGroup,
            Self::LeaveGroup(_) => FrameType::LeaveGroup,
            Self::LeaveAllGroups(_) => FrameType::LeaveAllGroups,
            Self::ReportVendorToken(_) => FrameType::ReportVendorToken,
            Self::Opened(_) => FrameType::Opened,
            Self::Ignored(_) => FrameType::Ignored,
            Self::RevokeAck(_) => FrameType::RevokeAck,
            Self::Welcome(_) => FrameType::Welcome,
            Self::Push(_) => FrameType::Push,
            Self::Pong(_) => FrameType::Pong,
            Self::GoAway(_) => FrameType::GoAway,
            Self::Error(_) => FrameType::Error,
            Self::Revoke(_) => FrameType::Revoke,
            Self::TokenUpdate(_) => FrameType::TokenUpdate,
            Self::RequestResult(_) => FrameType::RequestResult,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Self::DeleteToken => 0,
            Self::Hello(b) => b.encoded_len(),
            Self::Ack(b) | Self::Opened(b) | Self::Ignored(b) | Self::RevokeAck(b) => b.encoded_len(),
            Self::Ping(b) | Self::Pong(b) => b.encoded_len(),
            Self::Bind(b) | Self::Unbind(b) => b.encoded_len(),
            Self::JoinGroup(b) | Self::LeaveGroup(b) | Self::LeaveAllGroups(b) => b.encoded_len(),
            Self::ReportVendorToken(b) => b.encoded_len(),
            Self::Welcome(b) => b.encoded_len(),
            Self::Push(b) => b.encoded_len(),
            Self::GoAway(b) => b.encoded_len(),
            Self::Error(b) => b.encoded_len(),
            Self::Revoke(b) => b.encoded_len(),
            Self::TokenUpdate(b) => b.encoded_len(),
            Self::RequestResult(b) => b.encoded_len(),
        }
    }

    /// Bytes this frame takes on the wire, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends header and body to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        let body_len = self.body_len();
        out.put_u32(u32::try_from(body_len).expect("frame body fits in u32"));
        out.put_u8(self.frame_type() as u8);
        out.put_u8(0);
        // encode_raw cannot fail: the length was computed from the same value
        // and BufMut grows (BytesMut / Vec) or the caller sized it.
        match self {
            Self::DeleteToken => {}
            Self::Hello(b) => b.encode_raw(out),
            Self::Ack(b) | Self::Opened(b) | Self::Ignored(b) | Self::RevokeAck(b) => b.encode_raw(out),
            Self::Ping(b) | Self::Pong(b) => b.encode_raw(out),
            Self::Bind(b) | Self::Unbind(b) => b.encode_raw(out),
            Self::JoinGroup(b) | Self::LeaveGroup(b) | Self::LeaveAllGroups(b) => b.encode_raw(out),
            Self::ReportVendorToken(b) => b.encode_raw(out),
            Self::Welcome(b) => b.encode_raw(out),
            Self::Push(b) => b.encode_raw(out),
            Self::GoAway(b) => b.encode_raw(out),
            Self::Error(b) => b.encode_raw(out),
            Self::Revoke(b) => b.encode_raw(out),
            Self::TokenUpdate(b) => b.encode_raw(out),
            Self::RequestResult(b) => b.encode_raw(out),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    fn decode_body(frame_type: FrameType, body: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match frame_type {
            FrameType::Hello => Self::Hello(Box::new(Message::decode(body)?)),
            FrameType::Ack => Self::Ack(Message::decode(body)?),
            FrameType::Ping => Self::Ping(Message::decode(body)?),
            FrameType::DeleteToken => {
                body::Empty::decode(body)?;
                Self::DeleteToken
            }
            FrameType::Bind => Self::Bind(Message::decode(body)?),
            FrameType::Unbind => Self::Unbind(Message::decode(body)?),
            FrameType::JoinGroup => Self::JoinGroup(Message::decode(body)?),
            FrameType::LeaveGroup => Self::LeaveGroup(Message::decode(body)?),
            FrameType::LeaveAllGroups => Self::LeaveAllGroups(Message::decode(body)?),
            FrameType::ReportVendorToken => Self::ReportVendorToken(Message::decode(body)?),
            FrameType::Opened => Self::Opened(Message::decode(body)?),
            FrameType::Ignored => Self::Ignored(Message::decode(body)?),
            FrameType::RevokeAck => Self::RevokeAck(Message::decode(body)?),
            FrameType::Welcome => Self::Welcome(Message::decode(body)?),
            FrameType::Push => Self::Push(Box::new(Message::decode(body)?)),
            FrameType::Pong => Self::Pong(Message::decode(body)?),
            FrameType::GoAway => Self::GoAway(Message::decode(body)?),
            FrameType::Error => Self::Error(Message::decode(body)?),
            FrameType::Revoke => Self::Revoke(Message::decode(body)?),
            FrameType::TokenUpdate => Self::TokenUpdate(Message::decode(body)?),
            FrameType::RequestResult => Self::RequestResult(Message::decode(body)?),
        })
    }
}

/// Encodes a Push frame from a borrowed body: the API encodes one per
/// target from a shared template, without cloning it into a `Frame`.
pub fn encode_push(push: &body::Push) -> Vec<u8> {
    let body_len = push.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.put_u32(u32::try_from(body_len).expect("frame body fits in u32"));
    out.put_u8(FrameType::Push as u8);
    out.put_u8(0);
    push.encode_raw(&mut out);
    out
}

/// Why bytes could not be turned into a frame. Each maps to the `ErrorCode`
/// sent to the device before the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {announced} bytes exceeds the limit of {limit}")]
    TooLarge { announced: u64, limit: usize },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("reserved flags 0x{0:02x} set")]
    BadFlags(u8),
    #[error("malformed {frame_type:?} body: {reason}")]
    Malformed { frame_type: FrameType, reason: String },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnknownType(_) => ErrorCode::UnknownFrameType,
            Self::BadFlags(_) => ErrorCode::BadFlags,
            Self::Malformed { .. } => ErrorCode::MalformedFrame,
        }
    }
}

/// Parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub body_len: usize,
    pub frame_type: FrameType,
}

/// Validates a header from its first `HEADER_LEN` bytes. `max_frame` bounds the
/// whole frame, header included.
pub fn parse_header(bytes: &[u8; HEADER_LEN], max_frame: usize) -> Result<Header, DecodeError> {
    let body_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
    if body_len + HEADER_LEN as u64 > max_frame as u64 {
        return Err(DecodeError::TooLarge {
            announced: body_len + HEADER_LEN as u64,
            limit: max_frame,
        });
    }
    let frame_type = FrameType::from_u8(bytes[4]).ok_or(DecodeError::UnknownType(bytes[4]))?;
    if bytes[5] != 0 {
        return Err(DecodeError::BadFlags(bytes[5]));
    }
    Ok(Header {
        body_len: body_len as usize,
        frame_type,
    })
}

/// Decodes one frame from the front of `buf`, consuming it. `Ok(None)` means
/// more bytes are needed; nothing is consumed then. The header is validated as
/// soon as its six bytes are present, so an oversized or unknown frame is
/// rejected before its body arrives.
pub fn decode_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, DecodeError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = parse_header(head, max_frame)?;
    if buf.len() < HEADER_LEN + header.body_len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(header.body_len);
    Frame::decode_body(header.frame_type, &body)
        .map(Some)
        .map_err(|e| DecodeError::Malformed {
            frame_type: header.frame_type,
            reason: e.to_string(),
        })
}

/// Decodes one frame from a byte slice; returns the frame and the bytes used.
/// Used where the caller keeps its own buffer (the bench client, fuzzing).
pub fn decode_slice(bytes: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = parse_header(head, max_frame)?;
    let total = HEADER_LEN + header.body_len;
    if bytes.len() < total {
        return Ok(None);
    }
    Frame::decode_body(header.frame_type, &bytes[HEADER_LEN..total])
        .map(|frame| Some((frame, total)))
        .map_err(|e| DecodeError::Malformed {
            frame_type: header.frame_type,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _#:/.-]{0,24}"
    }

    fn arb_ids() -> impl Strategy<Value = body::Ids> {
        prop::collection::vec(any::<u64>(), 0..40).prop_map(|ids| body::Ids { ids })
    }

    fn arb_push() -> impl Strategy<Value = body::Push> {
        (
            (
                any::<u64>(),
                arb_string(),
                arb_string(),
                arb_string(),
                any::<bool>(),
            ),
            (0u32..2, arb_string(), 0u32..3, arb_string(), arb_string()),
            prop::collection::hash_map(arb_string(), arb_string(), 0..5),
            (arb_string(), any::<u64>(), arb_string(), any::<u64>()),
        )
            .prop_map(
                |(
                    (id, msg_key, title, content, silent),
                    (action, uri, push_style, icon_urls, image_urls),
                    extended_params,
                    (task_id, expires_at_ms, notify_type, accepted_at_ms),
                )| body::Push {
                    id,
                    msg_key,
                    title,
                    content,
                    silent,
                    action,
                    uri,
                    push_style,
                    icon_urls,
                    image_urls,
                    extended_params,
                    task_id,
                    expires_at_ms,
                    notify_type,
                    accepted_at_ms,
                },
            )
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let binding = || {
            (any::<u64>(), arb_string())
                .prop_map(|(request_id, user_id)| body::UserBinding { request_id, user_id })
        };
        let group =
            || (any::<u64>(), arb_string()).prop_map(|(request_id, group)| body::Group { request_id, group });
        prop_oneof![
            (
                (any::<u32>(), arb_string(), any::<u32>(), arb_string()),
                (
                    any::<u64>(),
                    arb_string(),
                    prop::collection::vec(any::<u8>(), 0..40),
                    arb_string()
                )
            )
                .prop_map(
                    |(
                        (protocol_version, app_id, platform, token),
                        (timestamp_ms, nonce, signature, credential),
                    )| {
                        Frame::Hello(Box::new(body::Hello {
                            protocol_version,
                            app_id,
                            platform,
                            token,
                            timestamp_ms,
                            nonce,
                            signature,
                            credential,
                        }))
                    }
                ),
            arb_ids().prop_map(Frame::Ack),
            any::<u64>().prop_map(|time_ms| Frame::Ping(body::Heartbeat { time_ms })),
            Just(Frame::DeleteToken),
            binding().prop_map(Frame::Bind),
            binding().prop_map(Frame::Unbind),
            group().prop_map(Frame::JoinGroup),
            group().prop_map(Frame::LeaveGroup),
            group().prop_map(Frame::LeaveAllGroups),
            (any::<u64>(), any::<u32>(), arb_string()).prop_map(
                |(request_id, third_channel, vendor_token)| Frame::ReportVendorToken(body::VendorToken {
                    request_id,
                    third_channel,
                    vendor_token
                })
            ),
            arb_ids().prop_map(Frame::Opened),
            arb_ids().prop_map(Frame::Ignored),
            arb_ids().prop_map(Frame::RevokeAck),
            (
                arb_string(),
                any::<u32>(),
                any::<u64>(),
                any::<bool>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    |(token, heartbeat_secs, server_time_ms, new_token, missed, protocol_version)| {
                        Frame::Welcome(body::Welcome {
                            token,
                            heartbeat_secs,
                            server_time_ms,
                            new_token,
                            missed,
                            protocol_version,
                        })
                    }
                ),
            arb_push().prop_map(|p| Frame::Push(Box::new(p))),
            any::<u64>().prop_map(|time_ms| Frame::Pong(body::Heartbeat { time_ms })),
            (any::<u32>(), any::<u32>(), arb_string()).prop_map(|(reason, retry_after_ms, message)| {
                Frame::GoAway(body::GoAway {
                    reason,
                    retry_after_ms,
                    message,
                })
            }),
            (any::<u32>(), arb_string())
                .prop_map(|(code, reason)| Frame::Error(body::Error { code, reason })),
            (
                prop::collection::vec(any::<u64>(), 0..8),
                prop::collection::vec(arb_string(), 0..4)
            )
                .prop_map(|(ids, msg_keys)| Frame::Revoke(body::Revoke { ids, msg_keys })),
            arb_string().prop_map(|token| Frame::TokenUpdate(body::TokenUpdate { token })),
            (any::<u64>(), any::<i32>(), arb_string()).prop_map(|(request_id, code, message)| {
                Frame::RequestResult(body::RequestResult {
                    request_id,
                    code,
                    message,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in arb_frame()) {
            let bytes = frame.to_bytes();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            let mut buf = BytesMut::from(&bytes[..]);
            let decoded = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(&decoded, &frame);
            prop_assert!(buf.is_empty());
            let (from_slice, used) = decode_slice(&bytes, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(from_slice, frame);
            prop_assert_eq!(used, bytes.len());
        }

        #[test]
        fn every_strict_prefix_asks_for_more(frame in arb_frame()) {
            let bytes = frame.to_bytes();
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                prop_assert_eq!(decode_frame(&mut buf, 1 << 20), Ok(None));
                prop_assert_eq!(buf.len(), cut, "a partial frame must not be consumed");
            }
        }

        #[test]
        fn frames_back_to_back_decode_in_order(frames in prop::collection::vec(arb_frame(), 1..8)) {
            let mut buf = BytesMut::new();
            for f in &frames {
                f.encode(&mut buf);
            }
            for f in &frames {
                let decoded = decode_frame(&mut buf, 1 << 20).unwrap();
                prop_assert_eq!(decoded.as_ref(), Some(f));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_frame(&mut buf, 4096) {}
        }
    }

    proptest! {
        #[test]
        fn encode_push_matches_the_frame_encoder(push in arb_push()) {
            let via_frame = Frame::Push(Box::new(push.clone())).to_bytes();
            prop_assert_eq!(encode_push(&push), via_frame);
        }
    }

    #[test]
    fn max_length_prefix_is_rejected_from_the_header_alone() {
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, FrameType::Hello as u8, 0][..]);
        let before = buf.capacity();
        let err = decode_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                announced: 0xFFFF_FFFF + HEADER_LEN as u64,
                limit: DEFAULT_MAX_FRAME
            }
        );
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert_eq!(buf.capacity(), before, "no allocation for the announced body");
    }

    #[test]
    fn limit_counts_the_header() {
        let frame = Frame::Ping(body::Heartbeat { time_ms: 1 });
        let len = frame.encoded_len();
        let mut ok = BytesMut::from(&frame.to_bytes()[..]);
        assert!(decode_frame(&mut ok, len).unwrap().is_some());
        let mut too_big = BytesMut::from(&frame.to_bytes()[..]);
        assert!(matches!(
            decode_frame(&mut too_big, len - 1),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_type_and_flags_are_rejected() {
        let mut unknown = BytesMut::from(&[0, 0, 0, 0, 0x3F, 0][..]);
        assert_eq!(
            decode_frame(&mut unknown, 64),
            Err(DecodeError::UnknownType(0x3F))
        );
        let mut flagged = BytesMut::from(&[0, 0, 0, 0, FrameType::Ping as u8, 1][..]);
        assert_eq!(decode_frame(&mut flagged, 64), Err(DecodeError::BadFlags(1)));
    }

    #[test]
    fn malformed_body_is_rejected_with_its_type() {
        // Field 1 as a length-delimited string but the length runs past the end.
        let mut buf = BytesMut::from(&[0, 0, 0, 2, FrameType::Hello as u8, 0, 0x12, 0x05][..]);
        let err = decode_frame(&mut buf, 64).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Malformed {
                frame_type: FrameType::Hello,
                ..
            }
        ));
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn direction_is_encoded_in_the_type() {
        for t in FrameType::ALL {
            assert_eq!(FrameType::from_u8(t as u8), Some(t));
            let device = matches!(
                t,
                FrameType::Hello
                    | FrameType::Ack
                    | FrameType::Ping
                    | FrameType::DeleteToken
                    | FrameType::Bind
                    | FrameType::Unbind
                    | FrameType::JoinGroup
                    | FrameType::LeaveGroup
                    | FrameType::LeaveAllGroups
                    | FrameType::ReportVendorToken
                    | FrameType::Opened
                    | FrameType::Ignored
                    | FrameType::RevokeAck
            );
            assert_eq!(t.from_device(), device, "{t:?}");
        }
    }

    #[test]
    fn hello_hex_example_from_the_spec() {
        // docs/protocol.md shows this exact frame.
        let hello = Frame::Hello(Box::new(body::Hello {
            protocol_version: 1,
            app_id: "demo".into(),
            platform: 1,
            token: String::new(),
            ..Default::default()
        }));
        assert_eq!(
            hex(&hello.to_bytes()),
            "0000000a 01 00 0801 1204 64656d6f 1801".replace(' ', "")
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
