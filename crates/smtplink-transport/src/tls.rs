//! The hook through which drivers start TLS on a link without knowing the
//! TLS library: `smtplink-tls` implements these traits with rustls.

use std::fmt;

use crate::{async_trait, Link, TransportError};

/// Runs the server side of a TLS handshake on a link (after STARTTLS, or
/// at once for implicit TLS).
///
/// The returned link carries the encrypted stream; its
/// [`LinkInfo::tls`](crate::LinkInfo::tls) says which version and cipher
/// were agreed and its `can_upgrade_tls` is false.
#[async_trait]
pub trait TlsAccept: Send + Sync + fmt::Debug {
    /// Handshakes as the server. An error means the link is unusable.
    async fn accept(&self, link: Link) -> Result<Link, TransportError>;
}

/// Runs the client side of a TLS handshake on a link. One value knows the
/// server name to check and the trust (roots or a pin) to check it with.
#[async_trait]
pub trait TlsConnect: Send + Sync + fmt::Debug {
    /// Handshakes as the client. An error (an untrusted certificate, a pin
    /// mismatch, a failed handshake) means the link is unusable.
    async fn connect(&self, link: Link) -> Result<Link, TransportError>;
}
