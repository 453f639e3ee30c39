//! TLS for device connections, sans-IO: this module owns the server's TLS
//! configuration (certificate chain, key, resumption state, the apps'
//! client-certificate CAs), the pointer that a reload swaps, and one
//! connection's TLS state (`TlsSession`) on rustls's unbuffered API.
//! Ciphertext goes in and plaintext comes out, appended to the caller's
//! buffer; plaintext goes in and ciphertext comes out into the caller's
//! buffer. No sockets, no clock (the caller passes the time a certificate
//! check needs).
//!
//! The unbuffered API lets ringpush own every buffer: a session keeps only
//! the ciphertext of an incomplete record and the TLS records it owes the
//! peer, and frees both when they empty, so an idle session costs rustls's
//! connection state (its keys and handshake summary), not two 16 KiB
//! buffers the buffered `ServerConnection` would keep.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ServerConnectionData, ServerSessionMemoryCache, UnbufferedServerConnection, WebPkiClientVerifier,
};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus};
use rustls::{HandshakeKind, ProtocolVersion, RootCertStore, ServerConfig};

use crate::config::Config;

/// Room reserved for a close_notify alert and whatever key update rustls
/// still owes before it: one sealed record is under 64 bytes.
const CLOSE_NOTIFY_ROOM: usize = 256;
/// Largest plaintext in one TLS record.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Per-record growth from sealing, rounded up (TLS 1.2 AES-GCM: 29 bytes,
/// TLS 1.3: 22).
const RECORD_OVERHEAD: usize = 64;

/// A configuration or file problem, reported at start or on reload.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Why a session failed; the alert rustls chose (if any) is queued in the
/// session: write it with `TlsSession::write_tls` before closing.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {0}")]
    Protocol(rustls::Error),
    #[error("TLS: the session failed earlier")]
    Failed,
}

impl TlsError {
    /// A short label for metrics (`ringpush_tls_handshake_failures_total`).
    pub fn reason(&self) -> &'static str {
        use rustls::Error as E;
        match self {
            Self::Failed => "failed_earlier",
            Self::Protocol(e) => match e {
                E::PeerIncompatible(p) => {
                    let text = format!("{p:?}");
                    if text.contains("Version") || text.contains("Tls12NotOffered") {
                        "protocol_version"
                    } else {
                        "incompatible"
                    }
                }
                E::InvalidCertificate(_) | E::NoCertificatesPresented => "bad_certificate",
                E::DecryptError => "decrypt_error",
                E::PeerMisbehaved(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. } => "peer_misbehaved",
                E::InvalidMessage(_) | E::PeerSentOversizedRecord => "invalid_message",
                E::AlertReceived(_) => "alert_received",
                _ => "other",
            },
        }
    }
}

/// The TLS versions, as metrics and logs name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }
}

/// What a completed handshake agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub version: TlsVersion,
    /// An abbreviated handshake: a TLS 1.3 ticket or a TLS 1.2 session.
    pub resumed: bool,
}

/// What one `read_tls` call changed besides the plaintext it appended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsRead {
    /// The handshake completed in this call (reported once per session).
    pub handshake_completed: bool,
    /// The peer sent close_notify: no more data will come.
    pub peer_closed: bool,
}

/// The outcome of checking a peer's certificate for one app at Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertCheck {
    /// The app does not require a client certificate.
    NotRequired,
    /// The app requires one and its CA verified the peer's chain.
    Verified,
    /// The app requires one and the peer presented none.
    Missing,
    /// The peer's chain does not chain to the app's CA.
    NotTrusted,
}

impl ClientCertCheck {
    pub fn passed(self) -> bool {
        matches!(self, Self::NotRequired | Self::Verified)
    }
}

/// One app's client-certificate policy, as the config states it.
#[derive(Clone, Debug)]
pub struct AppClientAuth {
    pub app_id: String,
    /// PEM certificates of the CA(s) that issue this app's device
    /// certificates; `None`: the app has none.
    pub ca_pem: Option<Vec<u8>>,
    /// Hello is refused (Error 20) without a certificate from `ca_pem`.
    pub required: bool,
}

/// Resumption state that outlives reloads, so a certificate swap does not
/// turn a reconnect storm into full handshakes: the TLS 1.3 (and RFC 5077)
/// ticket keys and the TLS 1.2 session-id cache.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
    tickets_per_handshake: usize,
}

impl Resumption {
    /// `tickets_per_handshake` TLS 1.3 tickets after each full handshake
    /// (0: none); `session_cache_size` TLS 1.2 sessions remembered (0: no
    /// cache).
    pub fn new(tickets_per_handshake: usize, session_cache_size: usize) -> Result<Self, TlsConfigError> {
        let ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let cache: Arc<dyn rustls::server::StoresServerSessions> = if session_cache_size == 0 {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(session_cache_size)
        };
        Ok(Self {
            ticketer,
            cache,
            tickets_per_handshake,
        })
    }
}

/// One generation of the TLS configuration: what connections accepted
/// while it is current use for their whole life.
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    apps: HashMap<Box<str>, AppVerifier>,
}

struct AppVerifier {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    required: bool,
}

impl TlsConfig {
    /// Reads `[tls]`'s certificate chain and key and every app's
    /// `clientCaFile`. `Ok(None)` when no certificate is configured (the
    /// TLS listener is off).
    pub fn load(config: &Config, resumption: &Resumption) -> Result<Option<Self>, TlsConfigError> {
        let (Some(cert_file), Some(key_file)) = (&config.tls.cert_file, &config.tls.key_file) else {
            return Ok(None);
        };
        let chain = read_file(cert_file)?;
        let key = read_file(key_file)?;
        let mut apps = Vec::new();
        for app in &config.apps {
            let ca_pem = app.client_ca_file.as_deref().map(read_file).transpose()?;
            apps.push(AppClientAuth {
                app_id: app.app_id.clone(),
                ca_pem,
                required: app.require_client_cert,
            });
        }
        Self::from_pem(&chain, &key, &apps, resumption)
            .map(Some)
            .map_err(|e| match e {
                TlsConfigError::Pem { path, reason } if path == CHAIN => TlsConfigError::Pem {
                    path: cert_file.display().to_string(),
                    reason,
                },
                TlsConfigError::Pem { path, reason } if path == KEY => TlsConfigError::Pem {
                    path: key_file.display().to_string(),
                    reason,
                },
                other => other,
            })
    }

    /// Builds a configuration from PEM bytes: the certificate chain (leaf
    /// first), its private key, and the apps' client-certificate CAs.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        apps: &[AppClientAuth],
        resumption: &Resumption,
    ) -> Result<Self, TlsConfigError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(CHAIN, e))?;
        if chain.is_empty() {
            return Err(TlsConfigError::Pem {
                path: CHAIN.into(),
                reason: "no CERTIFICATE in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(KEY, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut union = RootCertStore::empty();
        let mut verifiers = HashMap::new();
        for app in apps {
            let verifier = match &app.ca_pem {
                Some(pem) => {
                    let mut roots = RootCertStore::empty();
                    for cert in CertificateDer::pem_slice_iter(pem) {
                        let cert =
                            cert.map_err(|e| pem_error(&format!("clientCaFile of app {}", app.app_id), e))?;
                        roots.add(cert.clone()).map_err(|e| TlsConfigError::Pem {
                            path: format!("clientCaFile of app {}", app.app_id),
                            reason: e.to_string(),
                        })?;
                        union
                            .add(cert)
                            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
                    }
                    if roots.is_empty() {
                        return Err(TlsConfigError::Pem {
                            path: format!("clientCaFile of app {}", app.app_id),
                            reason: "no CERTIFICATE in the file".into(),
                        });
                    }
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                            .build()
                            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
                    Some(verifier)
                }
                None => None,
            };
            verifiers.insert(
                app.app_id.as_str().into(),
                AppVerifier {
                    verifier,
                    required: app.required,
                },
            );
        }
        // Asked for, never demanded, at the handshake: which app a device
        // belongs to is known only at Hello, where its app's own CA decides.
        let client_verifier = if union.is_empty() {
            WebPkiClientVerifier::no_client_auth()
        } else {
            WebPkiClientVerifier::builder_with_provider(Arc::new(union), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        server.ticketer = resumption.ticketer.clone();
        server.session_storage = resumption.cache.clone();
        server.send_tls13_tickets = resumption.tickets_per_handshake;
        Ok(Self {
            server: Arc::new(server),
            apps: verifiers,
        })
    }

    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    /// Whether `app`'s client-certificate policy accepts a peer that
    /// presented `chain` (leaf first; empty: none). An app this
    /// configuration does not know has no policy.
    pub fn check_client_cert(
        &self,
        app: &str,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> ClientCertCheck {
        let Some(policy) = self.apps.get(app) else {
            return ClientCertCheck::NotRequired;
        };
        if !policy.required {
            return ClientCertCheck::NotRequired;
        }
        let Some((leaf, intermediates)) = chain.split_first() else {
            return ClientCertCheck::Missing;
        };
        match &policy.verifier {
            Some(v) if v.verify_client_cert(leaf, intermediates, now).is_ok() => ClientCertCheck::Verified,
            _ => ClientCertCheck::NotTrusted,
        }
    }
}

const CHAIN: &str = "<certificate chain>";
const KEY: &str = "<private key>";

fn pem_error(path: &str, e: rustls::pki_types::pem::Error) -> TlsConfigError {
    TlsConfigError::Pem {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The current TLS configuration, shared by every shard and swapped whole
/// by a reload. A shard reads it once per TLS accept (a read lock and an
/// `Arc` clone); sessions keep the generation they started with.
pub struct SharedTlsConfig {
    current: RwLock<Arc<TlsConfig>>,
    resumption: Resumption,
}

impl SharedTlsConfig {
    pub fn new(config: TlsConfig, resumption: Resumption) -> Self {
        Self {
            current: RwLock::new(Arc::new(config)),
            resumption,
        }
    }

    pub fn current(&self) -> Arc<TlsConfig> {
        self.current.read().clone()
    }

    /// The resumption state new generations must share.
    pub fn resumption(&self) -> &Resumption {
        &self.resumption
    }

    /// Makes `config` current for connections accepted from now on.
    pub fn replace(&self, config: TlsConfig) {
        *self.current.write() = Arc::new(config);
    }

    /// Re-reads the files `config` names and swaps them in; on any error
    /// the current configuration stays.
    pub fn reload(&self, config: &Config) -> Result<(), TlsConfigError> {
        match TlsConfig::load(config, &self.resumption)? {
            Some(fresh) => {
                self.replace(fresh);
                Ok(())
            }
            None => Err(TlsConfigError::Rustls(
                "tls.cert_file and tls.key_file are no longer set".into(),
            )),
        }
    }
}

/// One connection's TLS state. Box it: rustls's connection state is
/// large, and a plaintext connection must not pay for it.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// The configuration generation the session started with: its apps'
    /// CAs decide the client-certificate check at Hello.
    config: Arc<TlsConfig>,
    /// Ciphertext of an incomplete record; no heap when empty.
    incoming: Vec<u8>,
    /// TLS records owed to the peer (handshake, tickets, alerts); no heap
    /// when empty.
    outgoing: BytesMut,
    handshake_reported: bool,
    close_notify_sent: bool,
    failed: bool,
}

impl TlsSession {
    pub fn new(config: Arc<TlsConfig>) -> Result<Self, TlsError> {
        let conn = UnbufferedServerConnection::new(config.server.clone()).map_err(TlsError::Protocol)?;
        Ok(Self {
            conn,
            config,
            incoming: Vec::new(),
            outgoing: BytesMut::new(),
            handshake_reported: false,
            close_notify_sent: false,
            failed: false,
        })
    }

    /// Feeds ciphertext from the socket. Decrypted application data is
    /// appended to `plaintext`; TLS records owed to the peer wait in the
    /// session (`wants_write`, `write_tls`). On `Err` the session is dead:
    /// write what `write_tls` gives (the alert), then close.
    pub fn read_tls(&mut self, ciphertext: &[u8], plaintext: &mut BytesMut) -> Result<TlsRead, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        self.incoming.extend_from_slice(ciphertext);
        let mut read = TlsRead::default();
        let result = self.process(Some(plaintext), &mut read.peer_closed);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        } else if self.incoming.capacity() > 4 * self.incoming.len() + MAX_RECORD_PLAINTEXT {
            // A large read left a record's start: keep the bytes, not the read.
            self.incoming.shrink_to_fit();
        }
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        if !self.handshake_reported && !self.conn.is_handshaking() {
            self.handshake_reported = true;
            read.handshake_completed = true;
        }
        Ok(read)
    }

    /// TLS records are waiting to be written (handshake messages, tickets,
    /// an alert).
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Appends to `out` the TLS records owed to the peer, then `plaintext`
    /// sealed into application-data records. Plaintext can be sealed only
    /// once the handshake is complete and before close_notify; otherwise
    /// it is dropped (a connection closing before its handshake has no one
    /// to tell).
    pub fn write_tls(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), TlsError> {
        let result = if !self.failed && !self.close_notify_sent && !plaintext.is_empty() && self.may_encrypt()
        {
            self.seal(plaintext)
        } else {
            Ok(())
        };
        self.drain_outgoing(out);
        result.map_err(|e| self.fail(e))
    }

    /// Gives back ciphertext from `write_tls` or `close` that the socket
    /// did not take, to be written first next time (a connection handed
    /// to another shard carries it there).
    pub fn requeue_output(&mut self, ciphertext: &[u8]) {
        if ciphertext.is_empty() {
            return;
        }
        let mut joined = BytesMut::with_capacity(ciphertext.len() + self.outgoing.len());
        joined.extend_from_slice(ciphertext);
        joined.extend_from_slice(&self.outgoing);
        self.outgoing = joined;
    }

    /// Appends what `write_tls(&[], out)` would, then a close_notify alert
    /// (once, and only after the handshake: before it there is no key to
    /// seal it with).
    pub fn close(&mut self, out: &mut BytesMut) {
        if !self.failed && !self.close_notify_sent && self.may_encrypt() {
            self.close_notify_sent = true;
            let _ = self.with_write_traffic(|traffic, outgoing| {
                let start = outgoing.len();
                outgoing.resize(start + CLOSE_NOTIFY_ROOM, 0);
                let written = traffic.queue_close_notify(&mut outgoing[start..]).unwrap_or(0);
                outgoing.truncate(start + written);
                Ok(())
            });
        }
        self.drain_outgoing(out);
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The agreed version and whether the session resumed; `None` during
    /// the handshake.
    pub fn handshake(&self) -> Option<Handshake> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            ProtocolVersion::TLSv1_3 => TlsVersion::Tls13,
            _ => TlsVersion::Tls12,
        };
        let resumed = self.conn.handshake_kind() == Some(HandshakeKind::Resumed);
        Some(Handshake { version, resumed })
    }

    /// The certificate chain the peer presented (leaf first), verified at
    /// the handshake against the union of the apps' CAs; empty if none.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        self.conn.peer_certificates().unwrap_or(&[])
    }

    /// Whether `app`'s client-certificate policy accepts this peer.
    pub fn check_client_cert(&self, app: &str, now: UnixTime) -> ClientCertCheck {
        self.config.check_client_cert(app, self.peer_certificates(), now)
    }

    /// Heap bytes held in this session's own buffers (not rustls's state).
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity()
    }

    fn may_encrypt(&self) -> bool {
        !self.conn.is_handshaking()
    }

    fn fail(&mut self, e: rustls::Error) -> TlsError {
        self.failed = true;
        // rustls queued its alert (if it chose one); collect it for the
        // caller's last write. One call only, with the input still there
        // (rustls's handshake joiner keeps offsets into it): rustls hands
        // out a queued record before it reads, but a second call would
        // deframe the bad record again and send a second fatal alert (a
        // debug assertion in rustls; found by
        // fuzz/fuzz_targets/tls_session.rs).
        let mut incoming = std::mem::take(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
            self.conn.process_tls_records(&mut incoming).state
        {
            encode_into(&mut encode, &mut self.outgoing);
        }
        TlsError::Protocol(e)
    }

    fn drain_outgoing(&mut self, out: &mut BytesMut) {
        if self.outgoing.is_empty() {
            return;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.outgoing);
        } else {
            out.extend_from_slice(&self.outgoing);
        }
        self.outgoing = BytesMut::new();
    }

    fn process(
        &mut self,
        plaintext: Option<&mut BytesMut>,
        peer_closed: &mut bool,
    ) -> Result<(), rustls::Error> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let result = self.process_with(&mut incoming, plaintext, peer_closed);
        self.incoming = incoming;
        result
    }

    /// Runs rustls over `incoming` until it needs more input, moving
    /// decrypted data to `plaintext` and owed records to `outgoing`, and
    /// removing what it consumed from the front of `incoming`.
    fn process_with(
        &mut self,
        incoming: &mut Vec<u8>,
        mut plaintext: Option<&mut BytesMut>,
        peer_closed: &mut bool,
    ) -> Result<(), rustls::Error> {
        // Each turn makes progress (a record consumed or emitted); the
        // bound only guards against a rustls state that would not.
        for _ in 0..100_000 {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(incoming);
            let next = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result = Ok(true);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                if let Some(p) = plaintext.as_deref_mut() {
                                    p.extend_from_slice(record.payload);
                                }
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::ReadEarlyData(mut early)) => {
                    // Never offered (max_early_data_size is 0); dropped if
                    // it ever came.
                    while let Some(record) = early.next_record() {
                        if let Ok(record) = record {
                            discard += record.discard;
                        }
                    }
                    Ok(true)
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, &mut self.outgoing);
                    Ok(true)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The bytes wait in `outgoing` until the caller writes.
                    transmit.done();
                    Ok(true)
                }
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(true)
                }
                Ok(_) => Ok(false),
            };
            incoming.drain(..discard);
            match next {
                Err(e) => return Err(e),
                Ok(true) => continue,
                Ok(false) => return Ok(()),
            }
        }
        Err(rustls::Error::General(
            "TLS state machine made no progress".into(),
        ))
    }

    /// Calls `f` with rustls's write state, after flushing owed records.
    fn with_write_traffic(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, ServerConnectionData>,
            &mut BytesMut,
        ) -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut f = Some(f);
        let mut result = Err(rustls::Error::HandshakeNotComplete);
        for _ in 0..100_000 {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut incoming);
            let again = match state {
                Err(e) => {
                    result = Err(e);
                    false
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, &mut self.outgoing);
                    true
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    true
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if let Some(f) = f.take() {
                        result = f(&mut traffic, &mut self.outgoing);
                    }
                    false
                }
                // Records that arrived are read by `read_tls`; here they
                // stay in `incoming` for it.
                Ok(_) => false,
            };
            incoming.drain(..discard);
            if !again {
                break;
            }
        }
        self.incoming = incoming;
        result
    }

    fn seal(&mut self, plaintext: &[u8]) -> Result<(), rustls::Error> {
        self.with_write_traffic(|traffic, outgoing| {
            let records = plaintext.len().div_ceil(MAX_RECORD_PLAINTEXT).max(1);
            let mut room = plaintext.len() + records * RECORD_OVERHEAD + CLOSE_NOTIFY_ROOM;
            let start = outgoing.len();
            loop {
                outgoing.resize(start + room, 0);
                match traffic.encrypt(plaintext, &mut outgoing[start..]) {
                    Ok(written) => {
                        outgoing.truncate(start + written);
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(need)) if need.required_size > room => {
                        room = need.required_size;
                    }
                    Err(e) => {
                        outgoing.truncate(start);
                        return Err(rustls::Error::General(e.to_string()));
                    }
                }
            }
        })
    }
}

/// Appends one handshake or alert record rustls produced to `out`.
fn encode_into(encode: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut BytesMut) {
    let start = out.len();
    let needed = match encode.encode(&mut []) {
        Err(EncodeError::InsufficientSize(need)) => need.required_size,
        // Empty, or already taken: nothing to append.
        _ => return,
    };
    out.resize(start + needed, 0);
    match encode.encode(&mut out[start..]) {
        Ok(written) => out.truncate(start + written),
        Err(_) => out.truncate(start),
    }
}

/// Describes the TLS metrics for `/metrics` help text.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "ringpush_tls_handshakes_total",
        "TLS handshakes by result (ok, failed), version (1.2, 1.3; none when failed) and resumed"
    );
    describe_counter!(
        "ringpush_tls_handshake_failures_total",
        "Failed TLS handshakes by reason (protocol_version, bad_certificate, decrypt_error, peer_misbehaved, invalid_message, alert_received, incompatible, other)"
    );
    describe_counter!(
        "ringpush_tls_errors_total",
        "TLS errors on established sessions, by reason; the connection is closed"
    );
    describe_gauge!("ringpush_tls_sessions", "Open TLS device connections, per shard");
    describe_counter!(
        "ringpush_tls_reloads_total",
        "Certificate reloads on SIGHUP by result (ok, failed: the running certificate stays)"
    );
    describe_counter!(
        "ringpush_tls_client_cert_refusals_total",
        "Hellos refused with Error 20 (client_cert_required)"
    );
}

/// Sessions move between shard threads with their sockets.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<TlsSession>();
    is_send::<SharedTlsConfig>();
};

#[cfg(test)]
pub(crate) mod tests;
