//! A TLS connection through the core with an in-memory rustls client:
//! Hello and Welcome sealed, the TLS session counted and dropped by an
//! abort, a refused Hello closed with close_notify, and the plaintext path
//! untouched.

use std::io::{Read, Write};

use rustls::ClientConnection;

use super::*;
use crate::tls::tests::{client, client_config, fixture};

/// Moves the core's output for `conn` to the client; returns the frames
/// the client decrypted and whether it saw close_notify.
fn to_client(h: &mut Harness, conn: ConnId, client: &mut ClientConnection) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let mut closed = false;
    let mut plain = Vec::new();
    for action in h.actions() {
        if let IoAction::Send(c) | IoAction::Close(c) = action {
            if c != conn {
                continue;
            }
            if let Some(bytes) = h.core.take_outbound(c) {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    client.read_tls(&mut rest).unwrap();
                    let state = client.process_new_packets().unwrap();
                    closed |= state.peer_has_closed();
                    let mut chunk = Vec::new();
                    let _ = client.reader().read_to_end(&mut chunk);
                    plain.extend_from_slice(&chunk);
                }
            }
        }
    }
    let mut at = 0;
    while let Some((frame, used)) = decode_slice(&plain[at..], 1 << 20).unwrap() {
        frames.push(frame);
        at += used;
    }
    (frames, closed)
}

fn to_core(h: &mut Harness, conn: ConnId, client: &mut ClientConnection) {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    h.core.on_bytes(conn, &wire, h.now);
}

fn tls_connection(h: &mut Harness) -> (ConnId, ClientConnection) {
    let f = fixture(&[]);
    let mut c = client(&client_config(&f.server_ca, &[&rustls::version::TLS13], None));
    let session = Box::new(TlsSession::new(f.shared.current()).unwrap());
    let conn = h.core.open_tls_connection(h.now, session).unwrap();
    assert_eq!(h.core.tls_sessions, 1);
    for _ in 0..5 {
        to_core(h, conn, &mut c);
        to_client(h, conn, &mut c);
    }
    assert!(!c.is_handshaking());
    (conn, c)
}

fn hello_bytes(app: &str) -> Vec<u8> {
    Frame::Hello(Box::new(body::Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: app.into(),
        platform: 1,
        ..Default::default()
    }))
    .to_bytes()
}

#[test]
fn hello_and_welcome_travel_sealed_and_an_abort_drops_the_session() {
    let mut h = Harness::new();
    let (conn, mut c) = tls_connection(&mut h);
    // Split the Hello over two records: the decoder joins them as on TCP.
    let hello = hello_bytes("demo");
    c.writer().write_all(&hello[..3]).unwrap();
    to_core(&mut h, conn, &mut c);
    c.writer().write_all(&hello[3..]).unwrap();
    to_core(&mut h, conn, &mut c);
    h.commit();
    let (frames, closed) = to_client(&mut h, conn, &mut c);
    assert!(matches!(frames.first(), Some(Frame::Welcome(_))), "{frames:?}");
    assert!(!closed);
    // A slow reader: past the outbound cap the core aborts.
    h.core
        .on_write_progress(conn, h.core.limits.max_outbound + 1, h.now);
    assert!(h.actions().contains(&IoAction::Abort(conn)));
    assert!(h.core.take_outbound(conn).is_none(), "an abort writes nothing");
    h.core.on_closed(conn, h.now);
    assert_eq!(h.core.tls_sessions, 0, "the TLS session went with the connection");
}

#[test]
fn a_refused_hello_is_sealed_and_followed_by_close_notify() {
    let mut h = Harness::new();
    let (conn, mut c) = tls_connection(&mut h);
    c.writer().write_all(&hello_bytes("no-such-app")).unwrap();
    to_core(&mut h, conn, &mut c);
    let (frames, closed) = to_client(&mut h, conn, &mut c);
    assert!(
        matches!(frames.first(), Some(Frame::Error(e)) if e.code == ErrorCode::UnknownApp as u32),
        "{frames:?}"
    );
    assert!(closed, "close_notify after the Error");
    h.core.on_closed(conn, h.now);
    assert_eq!(h.core.tls_sessions, 0);
}

#[test]
fn garbage_on_a_tls_connection_closes_it_with_an_alert() {
    let mut h = Harness::new();
    let f = fixture(&[]);
    let session = Box::new(TlsSession::new(f.shared.current()).unwrap());
    let conn = h.core.open_tls_connection(h.now, session).unwrap();
    h.core.on_bytes(conn, &hello_bytes("demo"), h.now);
    let actions = h.actions();
    assert!(actions.contains(&IoAction::Close(conn)), "{actions:?}");
    let alert = h.core.take_outbound(conn).expect("the alert");
    assert_eq!(alert[0], 21, "an alert record");
}
