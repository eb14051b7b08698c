//! A link: a reliable byte stream plus what is known about its other end.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The byte stream inside a [`Link`]: anything tokio can read and write that
/// can move between tasks.
///
/// Implemented for every type that qualifies; there is nothing to implement.
pub trait LinkStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + ?Sized> LinkStream for T {}

/// What the drivers, the logs and the `Received:` header may say about a
/// link.
///
/// Build one with [`LinkInfo::new`] and the `with_*` setters; the fields are
/// public to read and adjust. The struct is `#[non_exhaustive]` so transports
/// can learn new facts (a serial line's character timing, say) without
/// breaking code that builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkInfo {
    /// Which transport made the link: `"tcp"`, `"mem"`, `"serial"`, ...
    pub kind: &'static str,
    /// A human label for the other end, e.g. `"127.0.0.1:40312"` or
    /// `"mem://relay#3"`. Safe to log: no credentials, no control characters.
    pub peer: String,
    /// A human label for this end; empty when the transport has none.
    pub local: String,
    /// The peer's IP address, when the link runs over IP.
    pub peer_ip: Option<IpAddr>,
    /// Whether TLS can be started on this link (STARTTLS). The server engine
    /// only advertises STARTTLS when this is true.
    pub can_upgrade_tls: bool,
    /// The write size the link handles best, if it has a preference (a
    /// framed or slow link may want writes no larger than one frame).
    /// `None`: write whatever is ready.
    pub preferred_write_size: Option<usize>,
    /// How much slower than a LAN this link is expected to be; drivers
    /// multiply their protocol timeouts by it. 1 for TCP and memory links.
    pub timeout_scale: u32,
    /// The TLS session running on the link, once one is (set by the TLS
    /// layer after its handshake; `None` for plaintext).
    pub tls: Option<TlsSessionInfo>,
}

/// What a TLS layer says about the session it runs on a link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsSessionInfo {
    /// The protocol version, e.g. `"TLSv1.3"`.
    pub version: String,
    /// The cipher suite, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher: String,
    /// Started at once on connecting (RFC 8314 implicit TLS) rather than
    /// with STARTTLS.
    pub implicit: bool,
}

impl TlsSessionInfo {
    /// Info for a session with this version and cipher suite.
    pub fn new(version: impl Into<String>, cipher: impl Into<String>, implicit: bool) -> Self {
        Self {
            version: version.into(),
            cipher: cipher.into(),
            implicit,
        }
    }
}

impl LinkInfo {
    /// Info for a link of `kind` whose other end is labelled `peer`. Everything
    /// else starts empty, TLS upgrade off, timeouts unscaled.
    pub fn new(kind: &'static str, peer: impl Into<String>) -> Self {
        LinkInfo {
            kind,
            peer: peer.into(),
            local: String::new(),
            peer_ip: None,
            can_upgrade_tls: false,
            preferred_write_size: None,
            timeout_scale: 1,
            tls: None,
        }
    }

    /// Sets the label for this end.
    #[must_use]
    pub fn with_local(mut self, local: impl Into<String>) -> Self {
        self.local = local.into();
        self
    }

    /// Sets the peer's IP address.
    #[must_use]
    pub fn with_peer_ip(mut self, peer_ip: IpAddr) -> Self {
        self.peer_ip = Some(peer_ip);
        self
    }

    /// Sets whether TLS can be started on the link.
    #[must_use]
    pub fn with_tls_upgrade(mut self, can_upgrade_tls: bool) -> Self {
        self.can_upgrade_tls = can_upgrade_tls;
        self
    }

    /// Sets the preferred write size.
    #[must_use]
    pub fn with_preferred_write_size(mut self, size: usize) -> Self {
        self.preferred_write_size = Some(size);
        self
    }

    /// Sets the timeout scale (values below 1 are raised to 1: a link is
    /// never assumed faster than a LAN).
    #[must_use]
    pub fn with_timeout_scale(mut self, scale: u32) -> Self {
        self.timeout_scale = scale.max(1);
        self
    }
}

/// A connected, reliable, ordered byte stream and what is known about it.
///
/// `Link` implements [`AsyncRead`] and [`AsyncWrite`] by delegating to the
/// stream inside, so drivers use it directly. [`Link::into_parts`] takes the
/// stream out, e.g. to wrap it in TLS, and [`Link::from_boxed`] puts it back
/// without boxing twice.
pub struct Link {
    stream: Box<dyn LinkStream>,
    info: LinkInfo,
}

impl Link {
    /// Wraps `stream`, described by `info`.
    pub fn new(stream: impl LinkStream + 'static, info: LinkInfo) -> Self {
        Link {
            stream: Box::new(stream),
            info,
        }
    }

    /// Wraps an already boxed stream (as returned by [`Link::into_parts`]).
    pub fn from_boxed(stream: Box<dyn LinkStream>, info: LinkInfo) -> Self {
        Link { stream, info }
    }

    /// What is known about the link.
    pub fn info(&self) -> &LinkInfo {
        &self.info
    }

    /// Mutable access to the info, for middleware that changes what is
    /// true of the link (e.g. after a TLS upgrade, `can_upgrade_tls` is false).
    pub fn info_mut(&mut self) -> &mut LinkInfo {
        &mut self.info
    }

    /// Splits the link into its stream and its info.
    pub fn into_parts(self) -> (Box<dyn LinkStream>, LinkInfo) {
        (self.stream, self.info)
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn link_delegates_reads_writes_and_shutdown() {
        let (a, b) = tokio::io::duplex(64);
        let mut a = Link::new(a, LinkInfo::new("test", "b").with_local("a"));
        let mut b = Link::new(b, LinkInfo::new("test", "a"));
        a.write_all(b"EHLO x\r\n").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"EHLO x\r\n");
        assert_eq!(a.info().peer, "b");
        assert_eq!(a.info().local, "a");
        assert!(format!("{a:?}").contains("\"b\""));
    }

    #[tokio::test]
    async fn into_parts_and_from_boxed_round_trip() {
        let (a, mut b) = tokio::io::duplex(64);
        let link = Link::new(a, LinkInfo::new("test", "b").with_tls_upgrade(true));
        let (stream, mut info) = link.into_parts();
        info.can_upgrade_tls = false;
        let mut link = Link::from_boxed(stream, info);
        assert!(!link.info().can_upgrade_tls);
        link.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        b.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn info_defaults_and_setters() {
        let info = LinkInfo::new("tcp", "127.0.0.1:1")
            .with_peer_ip(IpAddr::from([127, 0, 0, 1]))
            .with_preferred_write_size(128)
            .with_timeout_scale(0);
        assert_eq!(info.timeout_scale, 1);
        assert_eq!(info.preferred_write_size, Some(128));
        assert!(!info.can_upgrade_tls);
        assert_eq!(info.peer_ip, Some(IpAddr::from([127, 0, 0, 1])));
    }
}
