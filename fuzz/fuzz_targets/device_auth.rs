//! Untrusted Hello bodies into device authentication: the protobuf decode of
//! the Hello, then `DeviceAuth::check` (nonce, timestamp, signature, and the
//! credential decoder: base64url, JSON claims, lengths) for an app that
//! requires it. Never panics; a Hello accepted by its credential must carry
//! one that decodes, names the Hello's app and has not expired. Input that
//! is not a Hello is tried as a credential text on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpush::config::{App, Config, DeviceAuthMode, Secret};
use ringpush::device_auth::{decode_credential, DeviceAuth, Proof};
use ringpush::protocol::{decode_slice, Frame, FrameType, HEADER_LEN};

const T0_MS: u64 = 1_767_225_600_000;

fuzz_target!(|data: &[u8]| {
    let config = Config {
        apps: vec![App {
            device_secret: Some(Secret::new("device-secret-of-the-doc-example")),
            device_auth: DeviceAuthMode::Required,
            allow_unsigned: true,
            ..App::new("demo", "default")
        }],
        ..Config::default()
    };
    let auth = DeviceAuth::new(&config, T0_MS - 60_000);
    // The body as a Hello frame, through the device codec itself.
    let mut frame = Vec::with_capacity(HEADER_LEN + data.len());
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(&[FrameType::Hello as u8, 0]);
    frame.extend_from_slice(data);
    match decode_slice(&frame, 1 << 16) {
        Ok(Some((Frame::Hello(hello), _))) => {
            // Twice: the second sees the nonce the first may have recorded.
            for _ in 0..2 {
                if let Ok(Proof::Credential) = auth.check(&hello, T0_MS) {
                    let decoded = decode_credential(&hello.credential).expect("accepted, so it decodes");
                    assert_eq!(decoded.claims.app_id, hello.app_id);
                    assert!(decoded.claims.exp > T0_MS);
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(data) {
                let _ = decode_credential(text);
            }
        }
    }
});
