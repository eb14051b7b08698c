//! TLS for smtplink links, with rustls (ring provider) through tokio-rustls.
//!
//! TLS wraps a [`Link`]'s byte stream, not a socket, so it works on every
//! transport: TCP, serial lines, in-memory pipes, `stdio:`/`exec:`. This
//! crate holds the glue the drivers and the CLI need and nothing SMTP:
//!
//! * [`ServerTls`]: a certificate chain and key loaded from PEM files,
//!   reloadable while sessions run ([`ServerTls::reload`], e.g. on SIGHUP:
//!   new handshakes use the new pair, running sessions keep theirs). It is
//!   the drivers' [`TlsAccept`].
//! * [`ClientTls`]: a client configuration for one [`Trust`] (the built-in
//!   web roots, a PEM bundle, or a pinned certificate); its
//!   [`connector`](ClientTls::connector) is the drivers' [`TlsConnect`] for
//!   one server name.
//! * Implicit TLS (RFC 8314): a `tls+` prefix on any endpoint
//!   (`tls+tcp://127.0.0.1:465`, `tls+serial:///dev/ttyS0?baud=9600`,
//!   `tls+mem://x`) means "connect or listen on the inner endpoint, then
//!   handshake at once": [`implicit_inner`], [`listen`] and [`connect`].
//! * [`generate_self_signed`] (what `smtplink gen-cert` runs) and
//!   [`certificate_pin`].
//!
//! After a handshake the new link's [`LinkInfo::tls`] names the version and
//! cipher suite (for `Received:` headers) and `can_upgrade_tls` is false.
//!
//! # System roots
//!
//! [`Trust::System`] uses the Mozilla root program as compiled into
//! `webpki-roots`, not the operating system's store
//! (`rustls-native-certs`): the result is the same on every machine and
//! in minimal containers without a CA bundle, and nothing is read from
//! disk at run time. A site with its own CA uses [`Trust::Pem`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Registry, TlsAccept, TlsConnect,
    TlsSessionInfo, TransportError,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The endpoint prefix for implicit TLS (RFC 8314).
pub const IMPLICIT_PREFIX: &str = "tls+";

/// How long an implicit-TLS listener waits for a client's handshake.
pub const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Handshakes an implicit-TLS listener runs at once; connections over it
/// are closed at once. The session limits apply only after the handshake,
/// so without this a flood of idle connections would hold file
/// descriptors until the whole server could accept nothing.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Handshakes at once from one peer address, for the same reason.
pub const MAX_PENDING_HANDSHAKES_PER_PEER: usize = 4;

/// What can go wrong setting TLS up (handshake failures are
/// [`TransportError::Tls`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the
    /// certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A trust setting that is not `system`, `pem:PATH` or `pin:sha256:HEX`.
    #[error("invalid TLS trust {text:?}: {reason}")]
    BadTrust {
        /// What was given.
        text: String,
        /// Why it is not valid.
        reason: &'static str,
    },
    /// A server name that is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    BadServerName(String),
    /// Generating or writing a certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
    /// Writing a file failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate in a PEM file (a chain: end entity first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The version and cipher suite a connection agreed on, as `"TLSv1.3"`
/// and `"TLS13_AES_256_GCM_SHA384"`.
fn session_info(conn: &rustls::CommonState, implicit: bool) -> TlsSessionInfo {
    let version = conn
        .protocol_version()
        .map(|v| match v.as_str() {
            Some(s) => s.replace('_', "."),
            None => format!("{v:?}"),
        })
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| {
            let s = c.suite();
            s.as_str().map_or_else(|| format!("{s:?}"), str::to_owned)
        })
        .unwrap_or_default();
    TlsSessionInfo::new(version, cipher, implicit)
}

fn upgraded_info(mut info: LinkInfo, tls: TlsSessionInfo) -> LinkInfo {
    info.can_upgrade_tls = false;
    info.tls = Some(tls);
    info
}

/// The server's certificate and key, reloadable.
///
/// Cloning the handle is cheap; every clone sees reloads.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads a certificate chain (PEM, end entity first) and its private
    /// key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let cert = cert.into();
        let key = key.into();
        let config = Self::build(&cert, &key)?;
        Ok(Arc::new(Self {
            cert,
            key,
            config: RwLock::new(config),
        }))
    }

    fn build(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = load_certificates(cert)?;
        let key = load_key(key)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    /// Reads the files again. On success new handshakes use the new pair;
    /// sessions already running are not touched. On failure the old pair
    /// stays in use and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.cert, &self.key)?;
        match self.config.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.config.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn handshake(&self, link: Link, implicit: bool) -> Result<Link, TransportError> {
        let (stream, info) = link.into_parts();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| TransportError::tls(info.peer.clone(), e.to_string()))?;
        let session = session_info(tls.get_ref().1, implicit);
        debug!(version = %session.version, cipher = %session.cipher, "TLS server handshake done");
        Ok(Link::new(tls, upgraded_info(info, session)))
    }
}

#[async_trait]
impl TlsAccept for ServerTls {
    async fn accept(&self, link: Link) -> Result<Link, TransportError> {
        self.handshake(link, false).await
    }
}

/// Whom a client trusts to be the server.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// The Mozilla root program (`webpki-roots`), and the server's
    /// certificate must name the host connected to.
    System,
    /// The CA certificates in this PEM file, with the name checked.
    Pem(PathBuf),
    /// Exactly the certificate whose DER encoding has this SHA-256 digest
    /// (the end-entity certificate; no CA, name or expiry check, but the
    /// handshake signature is still verified, so the server must hold the
    /// key).
    Pin([u8; 32]),
    /// Any certificate (the handshake signature is still verified): what
    /// opportunistic TLS between MTAs does by default (RFC 7435, Postfix
    /// `may`). It stops passive eavesdroppers, not an active attacker.
    Any,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::System => f.write_str("system"),
            Trust::Pem(p) => write!(f, "pem:{}", p.display()),
            Trust::Pin(d) => write!(f, "pin:sha256:{}", hex(d)),
            Trust::Any => f.write_str("any"),
        }
    }
}

impl FromStr for Trust {
    type Err = TlsError;

    /// `system`, `pem:/path/to/ca.pem` or `pin:sha256:<64 hex digits>`
    /// (colons between the hex pairs are allowed, as `openssl x509
    /// -fingerprint -sha256` prints them).
    fn from_str(text: &str) -> Result<Self, TlsError> {
        let bad = |reason| TlsError::BadTrust {
            text: text.to_owned(),
            reason,
        };
        if text == "system" {
            return Ok(Trust::System);
        }
        if text == "any" {
            return Ok(Trust::Any);
        }
        if let Some(path) = text.strip_prefix("pem:") {
            if path.is_empty() {
                return Err(bad("pem: needs a file path"));
            }
            return Ok(Trust::Pem(PathBuf::from(path)));
        }
        if let Some(digest) = text.strip_prefix("pin:sha256:") {
            let digits: String = digest.chars().filter(|c| *c != ':').collect();
            if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("pin:sha256: needs 64 hex digits"));
            }
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
                    .map_err(|_| bad("pin:sha256: needs 64 hex digits"))?;
            }
            return Ok(Trust::Pin(out));
        }
        Err(bad("expected system, pem:PATH, pin:sha256:HEX or any"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 digest of a certificate's DER encoding.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `pin:sha256:…` trust text for the first certificate in a PEM file.
pub fn certificate_pin(cert_pem: &Path) -> Result<String, TlsError> {
    let certs = load_certificates(cert_pem)?;
    Ok(Trust::Pin(sha256(certs[0].as_ref())).to_string())
}

/// Accepts exactly one end-entity certificate, by digest (or any, without
/// a pin), and verifies the handshake signatures with it.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = sha256(end_entity.as_ref());
        if got == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate pin mismatch: expected sha256:{}, got sha256:{}",
                hex(&pin),
                hex(&got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for one [`Trust`].
#[derive(Clone)]
pub struct ClientTls {
    trust: Trust,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Builds the configuration (reads the PEM bundle for [`Trust::Pem`]).
    pub fn new(trust: &Trust) -> Result<Self, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = match trust {
            Trust::System => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pem(path) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certificates(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| pem_error(path, format!("not a usable CA: {e}")))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pin(_) | Trust::Any => {
                let pin = match trust {
                    Trust::Pin(pin) => Some(*pin),
                    _ => None,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider }))
                    .with_no_client_auth()
            }
        };
        Ok(Self {
            trust: trust.clone(),
            config: Arc::new(config),
        })
    }

    /// The trust this configuration checks with.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// A connector that checks the server's certificate names
    /// `server_name` (a DNS name or an IP address; not checked with a pin).
    pub fn connector(&self, server_name: &str) -> Result<Arc<dyn TlsConnect>, TlsError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::BadServerName(server_name.to_owned()))?;
        Ok(Arc::new(TlsConnector {
            config: self.config.clone(),
            name,
        }))
    }
}

/// The name a client checks for `endpoint`: its host, or `fallback` for
/// endpoints without one (serial, mem, exec).
pub fn server_name_for(endpoint: &Endpoint, fallback: &str) -> String {
    let endpoint = implicit_inner(endpoint)
        .ok()
        .flatten()
        .unwrap_or_else(|| endpoint.clone());
    match endpoint.scheme() {
        "tcp" | "smtp" => endpoint.host().unwrap_or(fallback).to_owned(),
        _ => fallback.to_owned(),
    }
}

/// The client side of TLS for one server name.
struct TlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TlsConnect for TlsConnector {
    async fn connect(&self, link: Link) -> Result<Link, TransportError> {
        let (stream, info) = link.into_parts();
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(self.name.clone(), stream)
            .await
            .map_err(|e| TransportError::tls(info.peer.clone(), e.to_string()))?;
        let session = session_info(tls.get_ref().1, false);
        debug!(version = %session.version, cipher = %session.cipher, "TLS client handshake done");
        Ok(Link::new(tls, upgraded_info(info, session)))
    }
}

/// For a `tls+…` endpoint, the endpoint inside; `None` for any other.
pub fn implicit_inner(endpoint: &Endpoint) -> Result<Option<Endpoint>, TransportError> {
    if !endpoint.scheme().starts_with(IMPLICIT_PREFIX) {
        return Ok(None);
    }
    let text = endpoint.to_string();
    let inner = text.get(IMPLICIT_PREFIX.len()..).unwrap_or_default();
    let inner = Endpoint::parse(inner)?;
    if inner.scheme().starts_with(IMPLICIT_PREFIX) {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "TLS inside TLS is not supported",
        ));
    }
    Ok(Some(inner))
}

fn mark_implicit(mut link: Link) -> Link {
    if let Some(tls) = &mut link.info_mut().tls {
        tls.implicit = true;
    }
    link
}

/// Connects to `endpoint` through `registry`; for a `tls+…` endpoint,
/// connects to the inner one and handshakes at once with `tls`
/// (which must then be given).
pub async fn connect(
    registry: &Registry,
    endpoint: &Endpoint,
    tls: Option<&dyn TlsConnect>,
) -> Result<Link, TransportError> {
    let Some(inner) = implicit_inner(endpoint)? else {
        return registry.connect(endpoint).await;
    };
    let Some(tls) = tls else {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "implicit TLS needs a TLS client configuration",
        ));
    };
    let link = registry.connect(&inner).await?;
    Ok(mark_implicit(tls.connect(link).await?))
}

/// Listens on `endpoint` through `registry`; for a `tls+…` endpoint,
/// listens on the inner one and hands out only links whose TLS handshake
/// (with `tls`, which must then be given) succeeded. Handshakes run in
/// their own tasks, so a slow client does not hold up the others.
pub async fn listen(
    registry: &Registry,
    endpoint: &Endpoint,
    tls: Option<Arc<ServerTls>>,
) -> Result<Box<dyn Listener>, TransportError> {
    let Some(inner_endpoint) = implicit_inner(endpoint)? else {
        return registry.listen(endpoint).await;
    };
    let Some(tls) = tls else {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "implicit TLS needs a certificate (--tls-cert/--tls-key or [tls])",
        ));
    };
    let mut inner = registry.listen(&inner_endpoint).await?;
    let local = inner.local_endpoint();
    let local = Endpoint::parse(&format!("{IMPLICIT_PREFIX}{local}")).unwrap_or(local);
    let (tx, rx) = mpsc::channel::<Link>(16);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    let per_peer: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let task = tokio::spawn(async move {
        loop {
            let link = match inner.accept().await {
                Ok(link) => link,
                Err(TransportError::Exhausted { .. }) => return,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    if !e.is_transient() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                debug!(peer = %link.info().peer, "too many TLS handshakes in progress; closing");
                continue;
            };
            let peer_ip = link.info().peer_ip;
            let peer_slot = match peer_ip {
                Some(ip) => {
                    let mut counts = per_peer
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let count = counts.entry(ip).or_insert(0);
                    if *count >= MAX_PENDING_HANDSHAKES_PER_PEER {
                        debug!(%ip, "too many TLS handshakes from this address; closing");
                        continue;
                    }
                    *count += 1;
                    Some(PeerSlot {
                        ip,
                        counts: per_peer.clone(),
                    })
                }
                None => None,
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _peer_slot = peer_slot;
                let peer = link.info().peer.clone();
                let handshake = tls.handshake(link, true);
                match tokio::time::timeout(ACCEPT_HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(link)) => {
                        let _ = tx.send(link).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "implicit TLS handshake failed"),
                    Err(_) => debug!(%peer, "implicit TLS handshake timed out"),
                }
            });
        }
    });
    Ok(Box::new(ImplicitListener {
        rx,
        task,
        local,
        endpoint: endpoint.clone(),
    }))
}

/// One handshake in progress from `ip`; counted down when dropped.
struct PeerSlot {
    ip: std::net::IpAddr,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

struct ImplicitListener {
    rx: mpsc::Receiver<Link>,
    task: tokio::task::JoinHandle<()>,
    local: Endpoint,
    endpoint: Endpoint,
}

impl Drop for ImplicitListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Listener for ImplicitListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| TransportError::exhausted(&self.endpoint))
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}

/// A self-signed certificate and its key, both PEM, for `names` (DNS
/// names or IP addresses; the first is the subject).
pub fn generate_self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// Writes a self-signed pair for `names` to `cert` and `key` (the key
/// readable by its owner only, on Unix). Returns the certificate's pin.
pub fn write_self_signed(names: &[String], cert: &Path, key: &Path) -> Result<String, TlsError> {
    let (cert_pem, key_pem) = generate_self_signed(names)?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    write_private(key, key_pem.as_bytes()).map_err(write_err(key))?;
    std::fs::write(cert, cert_pem.as_bytes()).map_err(write_err(cert))?;
    certificate_pin(cert)
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(test)]
mod tests;
