//! TLS for the integration tests: certificates made with rcgen and
//! written as PEM files, rustls client configurations, and a blocking TLS
//! device (`TlsDevice`) speaking the same frames as `Device`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use ringpush::protocol::{body, decode_slice, Frame, PROTOCOL_VERSION};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::PATIENCE;

/// The name the server certificates are issued for.
pub const SERVER_NAME: &str = "push.test";

/// A certificate authority for server or device certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `name`: (certificate PEM, key PEM).
    pub fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate and key under `dir` as `server.pem`
    /// and `server.key` (replacing earlier ones); returns the `[tls]`
    /// section naming them.
    pub fn write_server_files(&self, dir: &Path) -> String {
        let (cert, key) = self.leaf(SERVER_NAME);
        write_atomically(&dir.join("server.pem"), cert.as_bytes());
        write_atomically(&dir.join("server.key"), key.as_bytes());
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        )
    }

    /// Writes this CA's certificate to `dir/name.ca.pem`; returns the path.
    pub fn write_ca_file(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.ca.pem"));
        write_atomically(&path, self.pem().as_bytes());
        path
    }
}

/// Writes by rename, so a reload never reads half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fresh directory for a test's certificate files.
pub fn cert_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringpush-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client configuration trusting `server_ca`, for the given versions,
/// with an optional client certificate (PEM chain, PEM key).
pub fn client_config(
    server_ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<(String, String)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.pem().as_bytes()).unwrap())
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

pub const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A blocking device over TLS.
pub struct TlsDevice {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    pub token: String,
    pub welcome: Option<body::Welcome>,
}

impl TlsDevice {
    /// Connects and completes the TLS handshake (no Hello yet); `Err`
    /// with the TLS error when the server refuses it.
    pub fn try_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<TlsDevice, std::io::Error> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(PATIENCE))?;
        let conn = ClientConnection::new(config.clone(), ServerName::try_from(SERVER_NAME).unwrap()).unwrap();
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsDevice {
            stream,
            buf: Vec::new(),
            token: String::new(),
            welcome: None,
        })
    }

    pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsDevice {
        Self::try_connect(addr, config).expect("TLS handshake")
    }

    /// The TLS handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    /// Says Hello as a device of `app_id`; returns the answer (Welcome
    /// recorded).
    pub fn hello(&mut self, app_id: &str, token: &str) -> Option<Frame> {
        self.send(&Frame::Hello(Box::new(body::Hello {
            protocol_version: PROTOCOL_VERSION,
            app_id: app_id.into(),
            platform: 1,
            token: token.into(),
            ..Default::default()
        })));
        let answer = self.recv();
        if let Some(Frame::Welcome(w)) = &answer {
            self.token = w.token.clone();
            self.welcome = Some(w.clone());
        }
        answer
    }

    /// Connects, says Hello and expects Welcome.
    pub fn connect_app(addr: SocketAddr, config: &Arc<ClientConfig>, app_id: &str, token: &str) -> TlsDevice {
        let mut device = Self::connect(addr, config);
        match device.hello(app_id, token) {
            Some(Frame::Welcome(_)) => device,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub fn send(&mut self, frame: &Frame) {
        self.stream.write_all(&frame.to_bytes()).unwrap();
        self.stream.flush().unwrap();
    }

    /// The next frame, or `None` when the server closed the connection
    /// (cleanly, with close_notify, or not: `closed_cleanly` tells).
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = decode_slice(&self.buf, 1 << 20).expect("server frames decode") {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read from ringpush over TLS: {e}"),
            }
        }
    }

    /// Reads to the end; true when the server ended with close_notify
    /// (rustls reports a plain EOF as an error).
    pub fn closed_cleanly(&mut self) -> bool {
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).is_ok()
    }

    pub fn recv_push(&mut self) -> body::Push {
        loop {
            match self.recv() {
                Some(Frame::Push(p)) => return *p,
                Some(Frame::Pong(_)) => continue,
                other => panic!("expected Push, got {other:?}"),
            }
        }
    }

    pub fn ack(&mut self, ids: &[u64]) {
        self.send(&Frame::Ack(body::Ids { ids: ids.to_vec() }));
    }

    /// Round-trips a Ping; returns what came before its Pong.
    pub fn drain_until_pong(&mut self) -> Vec<Frame> {
        let marker = 0x5EED;
        self.send(&Frame::Ping(body::Heartbeat { time_ms: marker }));
        let mut before = Vec::new();
        loop {
            match self.recv() {
                Some(Frame::Pong(p)) if p.time_ms == marker => return before,
                Some(frame) => before.push(frame),
                None => panic!("closed while waiting for Pong; got {before:?}"),
            }
        }
    }

    pub fn until_closed(&mut self) -> Vec<Frame> {
        std::iter::from_fn(|| self.recv()).collect()
    }
}

/// A TLS 1.1 ClientHello (legacy version 1.1, no supported_versions
/// extension) offering 1.1-era suites and signature_algorithms.
pub fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x11; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}
