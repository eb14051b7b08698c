//! What the engine knows about TLS: only that a session is encrypted, and
//! how. The handshake itself is the driver's business (the engine never
//! sees a socket or a TLS library).

use std::fmt;

/// A TLS session the driver established on the link, described in plain
/// strings so the engine stays free of TLS libraries.
///
/// Passed to `handle_tls_established` on either session; the server keeps
/// it for the rest of the session ([`ServerSession::tls`]), e.g. for the
/// `Received:` header (RFC 3848 `ESMTPS`) and for whoever decides whether
/// credentials may be sent in the clear.
///
/// [`ServerSession::tls`]: crate::ServerSession::tls
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// The protocol version, e.g. `"TLSv1.3"`.
    pub version: String,
    /// The cipher suite, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher: String,
}

impl TlsInfo {
    /// Info for a session with this version and cipher suite.
    pub fn new(version: impl Into<String>, cipher: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            cipher: cipher.into(),
        }
    }
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "using {} with cipher {}", self.version, self.cipher)
    }
}

/// When the client starts TLS with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Never: the session stays in plaintext even if STARTTLS is offered.
    None,
    /// When the server offers STARTTLS. A server that does not offer it,
    /// or refuses it, gets the mail in plaintext.
    #[default]
    Opportunistic,
    /// Always: a server that does not offer STARTTLS, or refuses it, gets
    /// nothing but QUIT, and the attempt fails temporarily
    /// ([`ClientError::TlsRequired`](crate::ClientError::TlsRequired)).
    Required,
}
