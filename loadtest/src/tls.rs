//! The client side of TLS for the simulated devices: one rustls
//! `ClientConfig` (ring provider, a CA file as the only trust anchor,
//! optionally TLS 1.2 only) shared by every connection, the session store
//! that lets reconnects resume, and the glue that moves a device's bytes
//! through its `ClientConnection` (ciphertext from the socket in, plaintext
//! frames out; plaintext frames in, ciphertext to the socket out).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup, RootCertStore,
};

/// What every TLS device connection of a run shares.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    store: Option<Arc<SharedSessionStore>>,
}

pub struct TlsOptions<'a> {
    pub ca_file: &'a std::path::Path,
    pub server_name: &'a str,
    pub tls12_only: bool,
    /// Keep tickets (TLS 1.3) and sessions (TLS 1.2) so reconnects resume.
    pub resume: bool,
    /// Bound on the TLS 1.3 tickets kept at once.
    pub max_tickets: usize,
}

impl TlsClient {
    pub fn new(options: &TlsOptions<'_>) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(options.ca_file)
            .with_context(|| format!("reading {}", options.ca_file.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", options.ca_file.display()))?;
        if certs.is_empty() {
            bail!("{} holds no certificate", options.ca_file.display());
        }
        for cert in certs {
            roots.add(cert).context("a trust anchor from --tls-ca")?;
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if options.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let provider = Arc::new(phone_like_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("the certificate verifier")?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .context("protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RememberingVerifier::new(verifier)))
            .with_no_client_auth();
        let store = options
            .resume
            .then(|| Arc::new(SharedSessionStore::new(options.max_tickets)));
        config.resumption = if let Some(store) = &store {
            Resumption::store(store.clone())
        } else {
            // Every handshake full, so the full-handshake rate is measured
            // and not a mix.
            Resumption::disabled()
        };
        let server_name = ServerName::try_from(options.server_name.to_string())
            .with_context(|| format!("--tls-server-name {}", options.server_name))?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
            store,
        })
    }

    /// TLS 1.3 tickets waiting in the shared store (`None` without
    /// resumption): zero after a storm means the server sent none.
    pub fn tickets_held(&self) -> Option<usize> {
        let store = self.store.as_ref()?;
        Some(store.servers.lock().values().map(|s| s.tls13.len()).sum())
    }

    pub fn connection(&self) -> anyhow::Result<ClientConnection> {
        Ok(ClientConnection::new(
            self.config.clone(),
            self.server_name.clone(),
        )?)
    }
}

/// ring's suites in the order Android (BoringSSL) and Apple clients offer
/// them on hardware with AES instructions: AES-128-GCM first. rustls's
/// own order puts AES-256-GCM-SHA384 first, whose key schedule runs
/// SHA-384, which has no SHA extensions on x86: the server would spend
/// most of a resumed TLS 1.3 handshake in it, unlike with real phones.
/// The server honours the client's order (rustls's default).
fn phone_like_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// Verifies the server's chain with webpki, and remembers for a minute the
/// one chain it last verified for a name, as browsers' certificate
/// verifiers cache results: in a storm of full handshakes every connection
/// presents the same chain, and verifying its CA signature again each time
/// would make the client, not the server, the bottleneck. The handshake
/// signature (the server proving it holds the key) is checked every time.
#[derive(Debug)]
struct RememberingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    last: Mutex<Option<VerifiedChain>>,
}

#[derive(Debug)]
struct VerifiedChain {
    end_entity: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    server_name: ServerName<'static>,
    until: u64,
}

const REMEMBER_SECS: u64 = 60;

impl RememberingVerifier {
    fn new(inner: Arc<WebPkiServerVerifier>) -> Self {
        Self {
            inner,
            last: Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for RememberingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let same = |chain: &VerifiedChain| {
            chain.until > now.as_secs()
                && chain.end_entity == end_entity.as_ref()
                && chain.server_name == *server_name
                && chain.intermediates.len() == intermediates.len()
                && chain
                    .intermediates
                    .iter()
                    .zip(intermediates)
                    .all(|(a, b)| a == b.as_ref())
        };
        if self.last.lock().as_ref().is_some_and(same) {
            return Ok(ServerCertVerified::assertion());
        }
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        *self.last.lock() = Some(VerifiedChain {
            end_entity: end_entity.to_vec(),
            intermediates: intermediates.iter().map(|c| c.to_vec()).collect(),
            server_name: server_name.to_owned(),
            until: now.as_secs() + REMEMBER_SECS,
        });
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A session store shared by all devices of a run, so that any reconnect
/// can resume with a ticket an earlier connection received. rustls's own
/// `ClientSessionMemoryCache` keeps 8 TLS 1.3 tickets per server, which a
/// storm of hundreds of concurrent handshakes to one server exhausts at
/// once; this one keeps up to `max_tickets` (the newest are used first, as
/// rustls does; the oldest are dropped at the bound).
#[derive(Debug)]
pub struct SharedSessionStore {
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
    max_tickets: usize,
}

#[derive(Debug, Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl SharedSessionStore {
    pub fn new(max_tickets: usize) -> Self {
        Self {
            servers: Mutex::default(),
            max_tickets: max_tickets.max(1),
        }
    }
}

impl ClientSessionStore for SharedSessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.servers.lock().entry(server_name).or_default().kx_hint = Some(group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.servers.lock().get(server_name).and_then(|s| s.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.servers.lock().entry(server_name).or_default().tls12 = Some(value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.servers.lock().get(server_name).and_then(|s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(s) = self.servers.lock().get_mut(server_name) {
            s.tls12 = None;
        }
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut servers = self.servers.lock();
        let tickets = &mut servers.entry(server_name).or_default().tls13;
        if tickets.len() >= self.max_tickets {
            tickets.pop_front();
        }
        tickets.push_back(value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.servers.lock().get_mut(server_name)?.tls13.pop_back()
    }
}

/// How a completed handshake went, for the full/resumed counts.
pub fn resumed(conn: &ClientConnection) -> bool {
    conn.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// Feeds ciphertext read from the socket into `conn` and appends the
/// plaintext it yields to `plain`. `Err` names why the session is over.
pub fn receive(
    conn: &mut ClientConnection,
    mut ciphertext: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), &'static str> {
    // `read_tls` takes at most one buffer's worth per call, and reading an
    // empty slice would mean end of stream to it: feed until consumed.
    while !ciphertext.is_empty() {
        if conn.read_tls(&mut ciphertext).is_err() {
            return Err("tls_buffer_full");
        }
        let state = conn.process_new_packets().map_err(|_| "tls_error")?;
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let at = plain.len();
            plain.resize(at + available, 0);
            conn.reader()
                .read_exact(&mut plain[at..])
                .map_err(|_| "tls_error")?;
        }
        if state.peer_has_closed() {
            return Err("tls_close_notify");
        }
    }
    Ok(())
}

/// Hands `unsent` plaintext to `conn` and writes what ciphertext the socket
/// takes; `false` when the socket failed.
pub fn flush(conn: &mut ClientConnection, stream: &mut impl Write, unsent: &mut Vec<u8>) -> bool {
    if !unsent.is_empty() {
        // Before the handshake completes rustls holds the plaintext (up to
        // its buffer limit) and sends it once it can.
        match conn.writer().write(unsent) {
            Ok(n) => {
                unsent.drain(..n);
            }
            Err(_) => return false,
        }
        if unsent.is_empty() {
            *unsent = Vec::new();
        }
    }
    while conn.wants_write() {
        match conn.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::NotConnected => {
                return true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ServerConfig, ServerConnection};

    /// A CA file on disk and a server configuration with a leaf it signed
    /// for "localhost".
    fn server(name: &str) -> (std::path::PathBuf, Arc<ServerConfig>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params.not_after = rcgen::date_time_ymd(2200, 1, 1);
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
            )
            .unwrap();
        let ca_file = std::env::temp_dir().join(format!("ringpush-bench-{name}-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        (ca_file, Arc::new(config), leaf.der().clone())
    }

    /// One connection in memory: the client says "hello" (handed over
    /// before the handshake completes, as a device's Hello is), the server
    /// answers "welcome"; returns whether the handshake resumed.
    fn exchange(client: &TlsClient, server_config: &Arc<ServerConfig>) -> bool {
        let mut conn = client.connection().unwrap();
        let mut server = ServerConnection::new(server_config.clone()).unwrap();
        let mut unsent = b"hello".to_vec();
        let (mut plain, mut server_plain, mut welcomed) = (Vec::new(), Vec::new(), false);
        for _ in 0..10 {
            let mut to_server = Vec::new();
            assert!(flush(&mut conn, &mut to_server, &mut unsent));
            let mut input = to_server.as_slice();
            while !input.is_empty() {
                server.read_tls(&mut input).unwrap();
                server.process_new_packets().unwrap();
            }
            let _ = server.reader().read_to_end(&mut server_plain);
            if server_plain == b"hello" && !welcomed {
                server.writer().write_all(b"welcome").unwrap();
                welcomed = true;
            }
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            receive(&mut conn, &to_client, &mut plain).unwrap();
            if plain == b"welcome" {
                let suite = conn.negotiated_cipher_suite().unwrap().suite();
                assert!(format!("{suite:?}").contains("AES_128_GCM_SHA256"), "{suite:?}");
                return resumed(&conn);
            }
        }
        panic!("no welcome: client got {plain:?}, server got {server_plain:?}");
    }

    #[test]
    fn reconnects_resume_only_with_the_shared_store() {
        let (ca_file, server_config, _) = server("resume");
        for tls12_only in [false, true] {
            let options = |resume| TlsOptions {
                ca_file: &ca_file,
                server_name: "localhost",
                tls12_only,
                resume,
                max_tickets: 4,
            };
            let resuming = TlsClient::new(&options(true)).unwrap();
            assert!(
                !exchange(&resuming, &server_config),
                "the first handshake is full"
            );
            for _ in 0..6 {
                assert!(exchange(&resuming, &server_config), "tls12_only {tls12_only}");
            }
            let full = TlsClient::new(&options(false)).unwrap();
            assert!(!exchange(&full, &server_config));
            assert!(!exchange(&full, &server_config));
        }
        let _ = std::fs::remove_file(ca_file);
    }

    #[test]
    fn a_remembered_chain_is_still_checked_against_the_name_and_expires() {
        let (ca_file, _, leaf) = server("name");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&ca_file).unwrap())
            .unwrap();
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(phone_like_provider()))
                .build()
                .unwrap();
        let verifier = RememberingVerifier::new(inner);
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        let now = UnixTime::now();
        let check = |n: &str, at: UnixTime| verifier.verify_server_cert(&leaf, &[], &name(n), &[], at);
        assert!(check("localhost", now).is_ok());
        assert!(verifier.last.lock().is_some(), "remembered");
        assert!(check("localhost", now).is_ok());
        assert!(
            check("elsewhere.example", now).is_err(),
            "another name is verified, and fails"
        );
        let much_later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 200 * 365 * 86_400));
        assert!(
            check("localhost", much_later).is_err(),
            "past the remembered minute the chain is verified again (and has expired)"
        );
        let _ = std::fs::remove_file(ca_file);
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (ca_file, _, _) = server("trusted");
        let (_, other_server, _) = server("other");
        let client = TlsClient::new(&TlsOptions {
            ca_file: &ca_file,
            server_name: "localhost",
            tls12_only: false,
            resume: false,
            max_tickets: 4,
        })
        .unwrap();
        let mut conn = client.connection().unwrap();
        let mut server = ServerConnection::new(other_server).unwrap();
        let mut hello = Vec::new();
        assert!(flush(&mut conn, &mut hello, &mut Vec::new()));
        server.read_tls(&mut hello.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut answer = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut answer).unwrap();
        }
        assert_eq!(receive(&mut conn, &answer, &mut Vec::new()), Err("tls_error"));
        let _ = std::fs::remove_file(ca_file);
    }

    #[test]
    fn the_store_keeps_its_bound_and_hands_each_ticket_out_once() {
        let (ca_file, server_config, _) = server("bound");
        let client = TlsClient::new(&TlsOptions {
            ca_file: &ca_file,
            server_name: "localhost",
            tls12_only: false,
            resume: true,
            max_tickets: 3,
        })
        .unwrap();
        // Each connection takes one ticket and brings the server's two.
        assert!(!exchange(&client, &server_config));
        assert_eq!(client.tickets_held(), Some(2));
        assert!(exchange(&client, &server_config));
        assert_eq!(client.tickets_held(), Some(3));
        assert!(exchange(&client, &server_config));
        assert_eq!(client.tickets_held(), Some(3));
        let store = client.store.as_ref().unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        for _ in 0..3 {
            assert!(store.take_tls13_ticket(&name).is_some());
        }
        assert!(store.take_tls13_ticket(&name).is_none());
        assert!(!exchange(&client, &server_config), "no ticket left: full");
        let _ = std::fs::remove_file(ca_file);
    }
}
