//! The server's TLS adapter (`ringpush::tls::TlsSession`) against a real
//! rustls client and arbitrary bytes: the input chooses the client (TLS 1.3
//! or 1.2 only, a client certificate or none, a resumed session or a full
//! one), then a sequence of operations moves the two sides' bytes, splits,
//! corrupts, drops, injects and requeues them, sends application data both
//! ways and closes, so arbitrary bytes reach the session before, during and
//! after a real handshake. It must never panic; once it failed it stays
//! failed; the handshake is reported once and agrees with `handshake()`;
//! and while nothing was tampered with, the server's plaintext is exactly
//! a prefix of what the client sent.
//!
//! The certificates in `fuzz/tls/` are fixed test certificates (a CA whose
//! key was thrown away, a server leaf for "localhost" and a client leaf);
//! nothing secret. rustls draws its own randomness, so a crashing input may
//! need a few runs to reproduce when the crash depends on key material.
#![no_main]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringpush::tls::{AppClientAuth, ClientCertCheck, Resumption, TlsConfig, TlsSession};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

const CA: &[u8] = include_bytes!("../tls/ca.pem");
const SERVER_CHAIN: &[u8] = include_bytes!("../tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../tls/server.key");
const CLIENT_CHAIN: &[u8] = include_bytes!("../tls/client.pem");
const CLIENT_KEY: &[u8] = include_bytes!("../tls/client.key");

struct Fixture {
    server: Arc<TlsConfig>,
    /// Indexed by the input's first byte: bit 0 TLS 1.2 only, bit 1 with a
    /// client certificate.
    clients: Vec<Arc<ClientConfig>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let resumption = Resumption::new(2, 64).expect("resumption state");
        let apps = [
            AppClientAuth {
                app_id: "demo".into(),
                ca_pem: Some(CA.to_vec()),
                required: true,
            },
            AppClientAuth {
                app_id: "open".into(),
                ca_pem: None,
                required: false,
            },
        ];
        let server = TlsConfig::from_pem(SERVER_CHAIN, SERVER_KEY, &apps, &resumption).expect("the test certificate loads");
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(CA).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut clients = Vec::new();
        for flags in 0..4u8 {
            let versions: &[&rustls::SupportedProtocolVersion] = if flags & 1 == 1 {
                &[&rustls::version::TLS12]
            } else {
                rustls::DEFAULT_VERSIONS
            };
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone());
            let config = if flags & 2 == 2 {
                let chain = CertificateDer::pem_slice_iter(CLIENT_CHAIN).collect::<Result<Vec<_>, _>>().unwrap();
                let key = PrivateKeyDer::from_pem_slice(CLIENT_KEY).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            } else {
                builder.with_no_client_auth()
            };
            clients.push(Arc::new(config));
        }
        Fixture {
            server: Arc::new(server),
            clients,
        }
    })
}

/// One client and one server session and the bytes in flight between them.
struct Pair {
    client: Option<ClientConnection>,
    server: TlsSession,
    to_server: Vec<u8>,
    to_client: BytesMut,
    /// What the client handed to rustls as application data.
    client_sent: Vec<u8>,
    server_plain: BytesMut,
    server_failed: bool,
    /// `close` was called: like the daemon (a Closing session drops its
    /// input), the harness feeds the session nothing more. rustls asserts
    /// (debug builds) when a record fails after its close_notify.
    server_closed: bool,
    handshake_reported: bool,
    tampered: bool,
}

impl Pair {
    fn new(config: Arc<ClientConfig>) -> Self {
        let name = ServerName::try_from("localhost").unwrap();
        Self {
            client: ClientConnection::new(config, name).ok(),
            server: TlsSession::new(fixture().server.clone()).expect("a session"),
            to_server: Vec::new(),
            to_client: BytesMut::new(),
            client_sent: Vec::new(),
            server_plain: BytesMut::new(),
            server_failed: false,
            server_closed: false,
            handshake_reported: false,
            tampered: false,
        }
    }

    /// What the client owes the server joins the bytes in flight.
    fn client_output(&mut self) {
        if let Some(client) = self.client.as_mut() {
            while client.wants_write() {
                if client.write_tls(&mut self.to_server).is_err() {
                    break;
                }
            }
        }
    }

    /// The server reads `bytes` (all in flight, or a part).
    fn server_reads(&mut self, bytes: &[u8]) {
        if self.server_closed {
            return;
        }
        let was_handshaking = self.server.is_handshaking();
        match self.server.read_tls(bytes, &mut self.server_plain) {
            Ok(read) => {
                assert!(!self.server_failed, "a failed session read again");
                if read.handshake_completed {
                    assert!(!self.handshake_reported, "the handshake is reported once");
                    assert!(was_handshaking);
                    self.handshake_reported = true;
                }
                assert_eq!(self.server.is_handshaking(), self.server.handshake().is_none());
                assert_eq!(self.handshake_reported, !self.server.is_handshaking());
            }
            Err(_) => self.server_failed = true,
        }
        // Whatever it owes (handshake, tickets, an alert) goes out.
        let _ = self.server.write_tls(&[], &mut self.to_client);
        if !self.tampered {
            assert!(
                self.client_sent.starts_with(&self.server_plain),
                "the server's plaintext is what the client sent"
            );
        }
    }

    fn deliver_to_server(&mut self, at_most: usize) {
        let n = at_most.min(self.to_server.len());
        let bytes: Vec<u8> = self.to_server.drain(..n).collect();
        if !bytes.is_empty() {
            self.server_reads(&bytes);
        }
    }

    fn deliver_to_client(&mut self) {
        let bytes = std::mem::take(&mut self.to_client);
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut input = &bytes[..];
        while !input.is_empty() {
            let ok = client.read_tls(&mut input).is_ok() && client.process_new_packets().is_ok();
            if !ok {
                // A client that failed is gone; the server carries on.
                self.client = None;
                return;
            }
            let mut sink = Vec::new();
            let _ = client.reader().read_to_end(&mut sink);
        }
    }

    fn pump(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.client_output();
            if self.to_server.is_empty() && self.to_client.is_empty() {
                return;
            }
            self.deliver_to_server(usize::MAX);
            self.deliver_to_client();
        }
    }

    fn client_sends(&mut self, plaintext: &[u8]) {
        if let Some(client) = self.client.as_mut() {
            if let Ok(n) = client.writer().write(plaintext) {
                self.client_sent.extend_from_slice(&plaintext[..n]);
            }
        }
        self.client_output();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, ops)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let client_config = fixture.clients[usize::from(flags & 3)].clone();
    if flags & 4 == 4 {
        // A clean first connection leaves a ticket (1.3) or session (1.2)
        // in the client's store for the fuzzed one to resume.
        let mut first = Pair::new(client_config.clone());
        first.pump(10);
        first.client_sends(b"hello");
        first.pump(4);
    }
    let mut pair = Pair::new(client_config);
    // Each op: a kind byte, a length byte, then that many payload bytes.
    let mut rest = ops;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let number = payload
            .iter()
            .take(2)
            .fold(0usize, |n, b| n << 8 | usize::from(*b));
        match kind % 12 {
            0 => pump_once(&mut pair),
            1 => pair.pump(10),
            2 => {
                pair.tampered = true;
                pair.server_reads(payload);
            }
            3 => pair.client_sends(payload),
            4 if !pair.to_server.is_empty() => {
                pair.tampered = true;
                let at = number % pair.to_server.len();
                pair.to_server[at] ^= payload.get(2).copied().unwrap_or(1).max(1);
            }
            // A socket handing over part of what arrived.
            5 => {
                pair.client_output();
                pair.deliver_to_server(number);
            }
            6 => {
                let mut out = BytesMut::new();
                let _ = pair.server.write_tls(payload, &mut out);
                pair.to_client.extend_from_slice(&out);
            }
            7 => {
                let mut out = BytesMut::new();
                pair.server.close(&mut out);
                pair.server_closed = true;
                pair.to_client.extend_from_slice(&out);
            }
            // A socket taking part of a write: the rest goes back.
            8 if !pair.to_client.is_empty() => {
                let keep = number % (pair.to_client.len() + 1);
                let unsent = pair.to_client.split_off(keep);
                pair.server.requeue_output(&unsent);
                let mut out = BytesMut::new();
                let _ = pair.server.write_tls(&[], &mut out);
                assert!(out.starts_with(&unsent), "requeued bytes go out first");
                pair.to_client.extend_from_slice(&out);
            }
            9 if !pair.to_server.is_empty() => {
                pair.tampered = true;
                let at = number % pair.to_server.len();
                pair.to_server.truncate(at);
            }
            10 => {
                pair.tampered = true;
                let at = number % (pair.to_server.len() + 1);
                pair.to_server.splice(at..at, payload.iter().copied());
            }
            11 => {
                let now = UnixTime::now();
                for app in ["demo", "open", "unknown"] {
                    let check = pair.server.check_client_cert(app, now);
                    if app == "demo" && pair.handshake_reported && !pair.tampered && !pair.server_failed {
                        let presented = flags & 2 == 2;
                        assert_eq!(
                            check,
                            if presented { ClientCertCheck::Verified } else { ClientCertCheck::Missing },
                            "flags {flags}"
                        );
                    }
                }
                let _ = pair.server.buffered_bytes();
            }
            _ => {}
        }
    }
    // However it ended, the session still closes and writes.
    let mut out = BytesMut::new();
    pair.server.close(&mut out);
    let _ = pair.server.write_tls(b"late", &mut out);
});

fn pump_once(pair: &mut Pair) {
    pair.client_output();
    pair.deliver_to_server(usize::MAX);
    pair.deliver_to_client();
}
