//! The transport layer of smtplink: how an SMTP session gets a byte stream.
//!
//! SMTP needs nothing from the network but a reliable, ordered, two-way byte
//! stream, so this crate reduces every way of reaching a peer (TCP, a serial
//! line, an in-memory pipe, an X.25 circuit, a child process) to the same
//! three pieces:
//!
//! * [`Link`]: a connected stream ([`AsyncRead`](tokio::io::AsyncRead) +
//!   [`AsyncWrite`](tokio::io::AsyncWrite)) plus
//!   [`LinkInfo`], what the logs and the `Received:` header say about the
//!   other end.
//! * [`Transport`]: makes links, by connecting to an [`Endpoint`] or by
//!   listening on one and handing out a [`Listener`].
//! * [`Registry`]: picks the transport by the endpoint's scheme
//!   (`tcp://127.0.0.1:25`, `mem://relay`, `exec:ssh gw nc localhost 25`).
//!
//! The SMTP engine never sees any of this; only the drivers do. Transport
//! crates depend on this one, never on each other or on the engine.
//!
//! # What a link must guarantee
//!
//! * Bytes arrive complete, unaltered and in order, or the link fails with an
//!   error. A noisy medium needs an adapter that makes it reliable first (the
//!   X.25 transport is one).
//! * `poll_shutdown` ends the stream in the write direction: the peer reads
//!   end-of-file (a 0-byte read) after the last byte. Reading EOF means the
//!   peer will send nothing more.
//! * `poll_flush` returns once written bytes are on their way; the drivers
//!   flush after each batch of replies or commands.
//! * Dropping the link closes it.
//!
//! # Writing your own transport
//!
//! Implement [`Transport`] (with the re-exported [`macro@async_trait`]) for a type
//! that connects and, if it can, listens; wrap each stream in a [`Link`] with a
//! [`LinkInfo`]; register it under a scheme. Report failures as
//! [`TransportError`]: use [`TransportError::io`] with the closest
//! [`std::io::ErrorKind`] so [`TransportError::is_transient`] can tell a busy
//! peer from a configuration mistake, and
//! [`TransportError::unsupported`] for what the medium cannot do.
//! A driver can also take a stream directly, with no transport at all:
//! `Link::new(stream, info)`.
//!
//! ```
//! use std::sync::Arc;
//! use smtplink_transport::{
//!     async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Registry, Transport,
//!     TransportError,
//! };
//!
//! /// Every connection reaches a task that echoes bytes back.
//! struct Echo;
//!
//! #[async_trait]
//! impl Transport for Echo {
//!     async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
//!         let (near, far) = tokio::io::duplex(4096);
//!         tokio::spawn(async move {
//!             let (mut read, mut write) = tokio::io::split(far);
//!             let _ = tokio::io::copy(&mut read, &mut write).await;
//!         });
//!         Ok(Link::new(near, LinkInfo::new("echo", endpoint.to_string())))
//!     }
//!
//!     async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
//!         Err(TransportError::unsupported(endpoint, Operation::Listen))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let registry = Registry::new().with("echo", Arc::new(Echo));
//! let mut link = registry.connect(&"echo://anywhere".parse()?).await?;
//! link.write_all(b"NOOP\r\n").await?;
//! let mut reply = [0u8; 6];
//! link.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"NOOP\r\n");
//! # Ok(())
//! # }
//! ```

mod endpoint;
mod error;
mod link;
mod registry;

pub use endpoint::Endpoint;
pub use error::{Operation, TransportError};
pub use link::{Link, LinkInfo, LinkStream};
pub use registry::Registry;

/// Re-exported so transport implementations use the same `async_trait` as
/// the traits they implement.
pub use async_trait::async_trait;

/// A way of making links: connecting to endpoints and listening on them.
///
/// One value serves every endpoint of its scheme and may be used from many
/// tasks at once. See the [crate docs](crate) for what the links must
/// guarantee and an example.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Opens a link to `endpoint`.
    ///
    /// Errors: [`TransportError::InvalidEndpoint`] when the endpoint lacks
    /// something this transport needs, [`TransportError::Io`] when the
    /// attempt fails (check [`TransportError::is_transient`] before retrying).
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError>;

    /// Starts accepting links on `endpoint`.
    ///
    /// Transports that cannot listen return
    /// [`TransportError::Unsupported`].
    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError>;
}

/// Incoming links on one endpoint, from [`Transport::listen`].
///
/// Dropping the listener stops accepting and frees the endpoint.
#[async_trait]
pub trait Listener: Send {
    /// Waits for the next incoming link.
    ///
    /// An error may concern only the one connection being accepted (the
    /// peer gave up before it was accepted): when
    /// [`TransportError::is_transient`] is true, keep accepting.
    async fn accept(&mut self) -> Result<Link, TransportError>;

    /// Where the listener actually is, e.g. with the port the system chose
    /// when asked to listen on port 0.
    fn local_endpoint(&self) -> Endpoint;
}
