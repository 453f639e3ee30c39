//! Arbitrary bytes into the frame decoder: it must never panic, never
//! consume a partial frame, and every frame it returns must re-encode to a
//! frame that decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringpush::protocol::{decode_frame, decode_slice};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut buf, 4096) {
        let bytes = frame.to_bytes();
        let (again, used) = decode_slice(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(again, frame);
    }
});
