//! What the benchmarks share: the typical notification they push, so every
//! figure in the README is for the same frame.

use ringpush::protocol::{body, Frame};

/// A Push frame with the fields of a typical shipping notification.
pub fn sample_push(id: u64) -> Frame {
    Frame::Push(Box::new(body::Push {
        id,
        msg_key: "order-1234567".into(),
        title: "Your order shipped".into(),
        content: "Parcel 1Z999 left the warehouse and arrives tomorrow before noon.".into(),
        uri: "app://orders/1234567".into(),
        accepted_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_300_000,
        ..Default::default()
    }))
}
