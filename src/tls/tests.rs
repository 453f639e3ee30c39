//! `TlsSession` against rustls's own client in memory: handshakes (1.2,
//! 1.3, resumed), data both ways, buffers released when idle, alerts,
//! close_notify, client certificates per app, and configuration errors.

use std::sync::Arc;

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;

pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `name`: (certificate PEM, key PEM).
    pub(crate) fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub(crate) struct Fixture {
    pub(crate) server_ca: Ca,
    pub(crate) shared: SharedTlsConfig,
}

pub(crate) fn fixture(apps: &[AppClientAuth]) -> Fixture {
    let server_ca = Ca::new("server ca");
    let (chain, key) = server_ca.leaf("push.example");
    let resumption = Resumption::new(2, 100).unwrap();
    let config = TlsConfig::from_pem(chain.as_bytes(), key.as_bytes(), apps, &resumption).unwrap();
    Fixture {
        server_ca,
        shared: SharedTlsConfig::new(config, resumption),
    }
}

pub(crate) fn client_config(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<(String, String)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

pub(crate) fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config.clone(), ServerName::try_from("push.example").unwrap()).unwrap()
}

/// Moves bytes both ways until neither side has anything to say; returns
/// the plaintext the server received.
fn pump(client: &mut ClientConnection, server: &mut TlsSession) -> Result<(BytesMut, TlsRead), TlsError> {
    let mut plaintext = BytesMut::new();
    let mut seen = TlsRead::default();
    for _ in 0..50 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let mut progressed = false;
        if !to_server.is_empty() {
            let read = server.read_tls(&to_server, &mut plaintext)?;
            seen.handshake_completed |= read.handshake_completed;
            seen.peer_closed |= read.peer_closed;
            progressed = true;
        }
        let mut to_client = BytesMut::new();
        server.write_tls(&[], &mut to_client)?;
        if !to_client.is_empty() {
            client.read_tls(&mut &to_client[..]).unwrap();
            client.process_new_packets().unwrap();
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok((plaintext, seen))
}

/// Feeds `wire` to the client (rustls reads a bounded amount per call)
/// and returns the plaintext.
fn client_receive(client: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !wire.is_empty() {
        client.read_tls(&mut wire).unwrap();
        client.process_new_packets().unwrap();
        let mut chunk = Vec::new();
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut chunk);
        got.extend_from_slice(&chunk);
    }
    got
}

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn tls13_handshake_data_both_ways_and_resumption() {
    let f = fixture(&[]);
    let config = client_config(&f.server_ca, &[&rustls::version::TLS13], None);
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    assert!(s.handshake().is_none());
    let (_, read) = pump(&mut c, &mut s).unwrap();
    assert!(read.handshake_completed);
    assert_eq!(
        s.handshake(),
        Some(Handshake {
            version: TlsVersion::Tls13,
            resumed: false
        })
    );
    // Device → server.
    std::io::Write::write_all(&mut c.writer(), b"hello frame").unwrap();
    let (plain, read) = pump(&mut c, &mut s).unwrap();
    assert_eq!(&plain[..], b"hello frame");
    assert!(!read.handshake_completed, "reported once");
    // Server → device, several records' worth.
    let big = vec![7u8; 40_000];
    let mut out = BytesMut::new();
    s.write_tls(&big, &mut out).unwrap();
    let got = client_receive(&mut c, &out);
    assert!(got == big, "{} bytes came back", got.len());
    assert_eq!(s.buffered_bytes(), 0, "an idle session keeps no buffer");
    // The client kept a ticket: the next connection resumes.
    let mut c2 = client(&config);
    let mut s2 = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c2, &mut s2).unwrap();
    assert_eq!(c2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    assert_eq!(s2.handshake().map(|h| h.resumed), Some(true));
}

#[test]
fn tls12_handshake_and_resumption() {
    let f = fixture(&[]);
    let config = client_config(&f.server_ca, &[&rustls::version::TLS12], None);
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c, &mut s).unwrap();
    assert_eq!(s.handshake().unwrap().version, TlsVersion::Tls12);
    std::io::Write::write_all(&mut c.writer(), b"abc").unwrap();
    assert_eq!(&pump(&mut c, &mut s).unwrap().0[..], b"abc");
    let mut c2 = client(&config);
    let mut s2 = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c2, &mut s2).unwrap();
    assert_eq!(
        s2.handshake(),
        Some(Handshake {
            version: TlsVersion::Tls12,
            resumed: true
        })
    );
}

#[test]
fn ciphertext_split_into_single_bytes_still_decrypts() {
    let f = fixture(&[]);
    let config = client_config(&f.server_ca, &[&rustls::version::TLS13], None);
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c, &mut s).unwrap();
    std::io::Write::write_all(&mut c.writer(), b"split me").unwrap();
    let mut wire = Vec::new();
    c.write_tls(&mut wire).unwrap();
    let mut plain = BytesMut::new();
    for byte in &wire {
        s.read_tls(std::slice::from_ref(byte), &mut plain).unwrap();
    }
    assert_eq!(&plain[..], b"split me");
    assert_eq!(s.buffered_bytes(), 0);
}

#[test]
fn close_notify_both_ways() {
    let f = fixture(&[]);
    let config = client_config(&f.server_ca, &[&rustls::version::TLS13], None);
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c, &mut s).unwrap();
    let mut out = BytesMut::new();
    s.write_tls(b"goaway", &mut out).unwrap();
    s.close(&mut out);
    let len = out.len();
    s.close(&mut out);
    assert_eq!(out.len(), len, "close_notify once");
    c.read_tls(&mut &out[..]).unwrap();
    let state = c.process_new_packets().unwrap();
    assert!(state.peer_has_closed());
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c.reader(), &mut got);
    assert_eq!(got, b"goaway");
    // Nothing is sealed after close_notify.
    let mut after = BytesMut::new();
    s.write_tls(b"late", &mut after).unwrap();
    assert!(after.is_empty());
    // The client's own close_notify is reported.
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c, &mut s).unwrap();
    c.send_close_notify();
    let (_, read) = pump(&mut c, &mut s).unwrap();
    assert!(read.peer_closed);
}

#[test]
fn garbage_fails_with_an_alert() {
    let f = fixture(&[]);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    let mut plain = BytesMut::new();
    let err = s
        .read_tls(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain)
        .unwrap_err();
    assert!(!err.reason().is_empty());
    let mut out = BytesMut::new();
    s.write_tls(&[], &mut out).unwrap();
    assert_eq!(out.first(), Some(&21), "an alert record: {out:?}");
    assert!(matches!(s.read_tls(b"more", &mut plain), Err(TlsError::Failed)));
    assert_eq!(s.buffered_bytes(), 0);
}

#[test]
fn a_corrupt_client_hello_gets_one_alert() {
    // A ClientHello record claiming 65,535 bytes: rustls refuses it while
    // deframing. Collecting the alert must not make rustls read the bad
    // record again (a second fatal alert; a panic with debug assertions).
    let f = fixture(&[]);
    let config = client_config(&f.server_ca, &[&rustls::version::TLS13], None);
    let mut c = client(&config);
    let mut hello = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut hello).unwrap();
    }
    hello[3] = 0xff;
    hello[4] = 0xff;
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    let mut plain = BytesMut::new();
    assert!(s.read_tls(&hello, &mut plain).is_err());
    let mut out = BytesMut::new();
    s.write_tls(&[], &mut out).unwrap();
    assert_eq!(out.len(), 7, "one alert record: {out:?}");
    assert_eq!(out.first(), Some(&21));
}

/// A TLS 1.1 ClientHello (no supported_versions extension) with 1.1 and
/// 1.2-era suites.
pub(crate) fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x11; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
                                           // signature_algorithms (rustls wants it before it looks at versions):
                                           // ecdsa_secp256r1_sha256, rsa_pkcs1_sha256.
    body.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn tls11_is_refused_with_protocol_version() {
    let f = fixture(&[]);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    let err = s
        .read_tls(&tls11_client_hello(), &mut BytesMut::new())
        .unwrap_err();
    assert_eq!(err.reason(), "protocol_version", "{err:?}");
    let mut out = BytesMut::new();
    s.write_tls(&[], &mut out).unwrap();
    // Alert record: fatal (2), protocol_version (70).
    assert_eq!(&out[..1], &[21]);
    assert_eq!(&out[out.len() - 2..], &[2, 70]);
}

#[test]
fn client_certificates_are_checked_per_app() {
    let alpha = Ca::new("alpha devices");
    let beta = Ca::new("beta devices");
    let apps = [
        AppClientAuth {
            app_id: "alpha".into(),
            ca_pem: Some(alpha.pem().into_bytes()),
            required: true,
        },
        AppClientAuth {
            app_id: "beta".into(),
            ca_pem: Some(beta.pem().into_bytes()),
            required: true,
        },
        AppClientAuth {
            app_id: "open".into(),
            ca_pem: None,
            required: false,
        },
    ];
    let f = fixture(&apps);
    let connect = |cert: Option<(String, String)>| {
        let config = client_config(&f.server_ca, &[&rustls::version::TLS13], cert);
        let mut c = client(&config);
        let mut s = TlsSession::new(f.shared.current()).unwrap();
        pump(&mut c, &mut s).unwrap();
        assert!(!s.is_handshaking());
        s
    };
    let anonymous = connect(None);
    assert_eq!(
        anonymous.check_client_cert("alpha", now()),
        ClientCertCheck::Missing
    );
    assert_eq!(
        anonymous.check_client_cert("open", now()),
        ClientCertCheck::NotRequired
    );
    let alpha_device = connect(Some(alpha.leaf("device-1")));
    assert_eq!(alpha_device.peer_certificates().len(), 1);
    assert_eq!(
        alpha_device.check_client_cert("alpha", now()),
        ClientCertCheck::Verified
    );
    assert_eq!(
        alpha_device.check_client_cert("beta", now()),
        ClientCertCheck::NotTrusted
    );
    assert!(alpha_device.check_client_cert("open", now()).passed());
    // A certificate from a CA no app trusts fails the handshake itself.
    let stranger = Ca::new("nobody");
    let config = client_config(&f.server_ca, &[&rustls::version::TLS13], Some(stranger.leaf("x")));
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    let err = pump(&mut c, &mut s).expect_err("refused");
    assert_eq!(err.reason(), "bad_certificate", "{err:?}");
}

#[test]
fn a_replaced_config_serves_new_sessions_and_old_ones_continue() {
    let f = fixture(&[]);
    let config = client_config(&f.server_ca, &[&rustls::version::TLS13], None);
    let mut c = client(&config);
    let mut s = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c, &mut s).unwrap();
    let other = Ca::new("other server ca");
    let (chain, key) = other.leaf("push.example");
    let fresh = TlsConfig::from_pem(chain.as_bytes(), key.as_bytes(), &[], f.shared.resumption()).unwrap();
    f.shared.replace(fresh);
    std::io::Write::write_all(&mut c.writer(), b"still here").unwrap();
    assert_eq!(&pump(&mut c, &mut s).unwrap().0[..], b"still here");
    let new_config = client_config(&other, &[&rustls::version::TLS13], None);
    let mut c2 = client(&new_config);
    let mut s2 = TlsSession::new(f.shared.current()).unwrap();
    pump(&mut c2, &mut s2).unwrap();
    assert!(!s2.is_handshaking());
}

#[test]
fn bad_pem_is_a_clear_error() {
    let resumption = Resumption::new(2, 10).unwrap();
    let ca = Ca::new("ca");
    let (chain, key) = ca.leaf("x");
    let no_cert = TlsConfig::from_pem(b"nothing here", key.as_bytes(), &[], &resumption).err();
    assert!(no_cert.unwrap().to_string().contains("no CERTIFICATE"));
    let no_key = TlsConfig::from_pem(chain.as_bytes(), b"nothing", &[], &resumption).err();
    assert!(no_key.is_some());
    let (_, other_key) = ca.leaf("y");
    let mismatch = TlsConfig::from_pem(chain.as_bytes(), other_key.as_bytes(), &[], &resumption).err();
    assert!(mismatch.is_some(), "a key that does not match the certificate");
    let bad_ca = [AppClientAuth {
        app_id: "a".into(),
        ca_pem: Some(b"garbage".to_vec()),
        required: true,
    }];
    let err = TlsConfig::from_pem(chain.as_bytes(), key.as_bytes(), &bad_ca, &resumption).err();
    assert!(err.unwrap().to_string().contains("clientCaFile of app a"));
}

/// Mutated handshakes and records never panic: each run either fails with
/// an error or goes on; a failed session only reports `Failed` after.
#[test]
fn mutated_input_never_panics() {
    let f = fixture(&[]);
    let config = client_config(
        &f.server_ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        None,
    );
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let mut c = client(&config);
        let mut s = TlsSession::new(f.shared.current()).unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        // Flip a few bytes of the ClientHello, or of a later record.
        let flips = 1 + (next() % 4) as usize;
        for _ in 0..flips {
            let at = (next() as usize) % wire.len();
            wire[at] ^= (next() % 255 + 1) as u8;
        }
        let mut plain = BytesMut::new();
        let mut at = 0;
        while at < wire.len() {
            let take = 1 + (next() as usize) % 64;
            let end = (at + take).min(wire.len());
            if s.read_tls(&wire[at..end], &mut plain).is_err() {
                assert!(
                    matches!(s.read_tls(b"x", &mut plain), Err(TlsError::Failed)),
                    "round {round}"
                );
                break;
            }
            at = end;
        }
        let mut out = BytesMut::new();
        let _ = s.write_tls(b"frame", &mut out);
        s.close(&mut out);
    }
}
