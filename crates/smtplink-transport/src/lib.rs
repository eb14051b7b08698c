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
//! SMTP has no checksums, sequence numbers or retransmission of its own, and
//! each side waits for the other's reply before going on, so:
//!
//! * **Reliable and ordered.** Bytes arrive complete, unaltered and in the
//!   order written, or the link fails with an error: never silently lost,
//!   duplicated or reordered. A corrupted byte is a corrupted message. A noisy
//!   medium (a bare radio or a long serial line) needs a layer that detects
//!   and repairs errors (an error-correcting modem, a framed protocol with
//!   retransmission) before it is a link.
//! * **A stream, not packets.** Reads may return any split of what was
//!   written (half a command, three replies at once); the engine reassembles
//!   lines, so a transport must not add, drop or pad bytes at its own
//!   framing boundaries.
//! * **Written bytes go out without waiting for more.** `poll_flush` pushes
//!   out anything buffered and returns once it is on its way. Both drivers
//!   flush after each batch of commands or replies, so a stream that
//!   buffers writes (a `BufWriter`, a framing layer) may hold bytes until
//!   its `poll_flush`, but must send them then.
//! * **A clean end.** `poll_shutdown` ends the write direction: the peer
//!   reads end-of-file (a 0-byte read) after the last byte. Reading EOF
//!   means the peer will send nothing more. Dropping the link closes it.
//!
//! # Writing your own transport
//!
//! `examples/unix_socket_transport.rs` in the repository is a complete one
//! (Unix domain sockets), with a message relayed through it. In short:
//!
//! 1. Implement [`Transport`] (with the re-exported [`macro@async_trait`])
//!    for a type that is `Send + Sync`: one value serves every endpoint of
//!    its scheme, from many tasks at once. `connect` opens a stream;
//!    `listen` returns a [`Listener`], or [`TransportError::unsupported`]
//!    when the medium cannot wait for calls.
//! 2. Check the endpoint before any I/O with the [`Endpoint`] helpers
//!    ([`Endpoint::host_and_port`], [`Endpoint::path`],
//!    [`Endpoint::query_as`], [`Endpoint::ensure_query_keys`]) and report
//!    what is wrong with [`TransportError::invalid_endpoint`].
//! 3. Report failures with [`TransportError::io`] and the closest
//!    [`std::io::ErrorKind`]: [`TransportError::is_transient`] decides from
//!    the kind whether the relay tries again later (peer not there:
//!    `ConnectionRefused`, `TimedOut`, ...) or gives up at once (a
//!    configuration mistake).
//! 4. Wrap each stream in a [`Link`] with a [`LinkInfo`]: `kind` names the
//!    transport, `peer` labels the other end for logs and `Received:`
//!    headers (the server also counts its per-peer session limit by it when
//!    there is no `peer_ip`, so label accepted links per connection or per
//!    peer machine, not all alike). `timeout_scale` and
//!    `preferred_write_size` describe a slow or framed medium; they are
//!    hints the drivers do not act on yet, so a slow line also needs longer
//!    timeouts in the server and client settings.
//! 5. A [`Listener`] reports where it really listens in `local_endpoint`
//!    (e.g. the port chosen for port 0). Its `accept` returns a transient
//!    error when only that one connection failed, and
//!    [`TransportError::exhausted`] when no more links will come (a medium
//!    that carries one session). The server drops a pending `accept` when
//!    it stops, and dropping the listener frees the endpoint.
//! 6. Register it under its scheme in a [`Registry`]: listen through it for
//!    the server, and give it to the relay's delivery worker so routes to
//!    endpoints of that scheme reach it. (The `smtplink` program has a fixed
//!    set of schemes: a transport of your own runs in a program that builds
//!    its own registry, server and worker, as the example does.)
//!
//! A driver also takes a stream you already have, with no transport at all:
//! any `AsyncRead + AsyncWrite + Send + Unpin` becomes a link with
//! `Link::new(stream, LinkInfo::new("kind", "peer label"))` (see
//! `examples/duplex_without_transport.rs`). A transport is only needed to
//! reach a peer by endpoint URL.
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
mod tls;

pub use endpoint::Endpoint;
pub use error::{Operation, TransportError};
pub use link::{Link, LinkInfo, LinkStream, TlsSessionInfo};
pub use registry::Registry;
pub use tls::{TlsAccept, TlsConnect};

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
    /// [`TransportError::Exhausted`] means the listener has no more links
    /// to give (`stdio:` serves one): stop accepting on it.
    async fn accept(&mut self) -> Result<Link, TransportError>;

    /// Where the listener actually is, e.g. with the port the system chose
    /// when asked to listen on port 0.
    fn local_endpoint(&self) -> Endpoint;
}
