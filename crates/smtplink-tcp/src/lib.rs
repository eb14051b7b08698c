//! TCP links for smtplink: `tcp://host:port` endpoints over tokio sockets.
//!
//! [`TcpTransport`] connects (trying each address a host name resolves to,
//! in turn) and listens on IPv4 or IPv6. Links report the peer's address and
//! can be upgraded to TLS. [`link_from_stream`] wraps a socket you already
//! have, for programs that accept connections themselves.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Transport, TransportError,
};
use tokio::net::{TcpListener, TcpStream};

/// The link kind reported in [`LinkInfo::kind`].
pub const KIND: &str = "tcp";

/// A [`Transport`] for `tcp://host:port`.
///
/// `host` is an IPv4 address, an IPv6 address in brackets (`tcp://[::1]:25`)
/// or a name resolved with the system resolver. TCP takes no query options,
/// and the scheme is not checked, so the same transport can be registered
/// under other names.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    connect_timeout: Option<Duration>,
}

impl TcpTransport {
    /// A transport that leaves connect timeouts to the operating system.
    pub fn new() -> Self {
        TcpTransport::default()
    }

    /// Gives up on each address after `timeout`, then tries the next one.
    ///
    /// Without this, an unreachable first address (often IPv6 on a host
    /// without a route) can hold up the connection for the kernel's full
    /// SYN retry time, a minute or more, before the working address is tried.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Listens on `endpoint`; [`Transport::listen`] without the box.
    pub async fn bind(&self, endpoint: &Endpoint) -> Result<TcpLinkListener, TransportError> {
        let addresses = resolve(endpoint, Operation::Listen).await?;
        let mut last_error = None;
        for address in &addresses {
            match TcpListener::bind(address).await {
                Ok(listener) => {
                    let local = listener
                        .local_addr()
                        .map_err(|err| TransportError::io(Operation::Listen, endpoint, err))?;
                    let local_endpoint = endpoint.with_socket_addr(local);
                    tracing::debug!(endpoint = %local_endpoint, "tcp listening");
                    return Ok(TcpLinkListener {
                        listener,
                        local_endpoint,
                    });
                }
                Err(err) => last_error = Some((*address, err)),
            }
        }
        Err(TransportError::io(
            Operation::Listen,
            endpoint,
            last_attempt_error(addresses.len(), last_error),
        ))
    }

    async fn connect_one(&self, address: SocketAddr) -> io::Result<TcpStream> {
        match self.connect_timeout {
            None => TcpStream::connect(address).await,
            Some(timeout) => tokio::time::timeout(timeout, TcpStream::connect(address))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    )
                })?,
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let addresses = resolve(endpoint, Operation::Connect).await?;
        let mut last_error = None;
        for address in &addresses {
            match self.connect_one(*address).await {
                Ok(stream) => {
                    let link = link_from_stream(stream)
                        .map_err(|err| TransportError::io(Operation::Connect, endpoint, err))?;
                    tracing::debug!(%endpoint, peer = %link.info().peer, "tcp connected");
                    return Ok(link);
                }
                Err(err) => {
                    tracing::debug!(%endpoint, %address, error = %err, "tcp connect attempt failed");
                    last_error = Some((*address, err));
                }
            }
        }
        Err(TransportError::io(
            Operation::Connect,
            endpoint,
            last_attempt_error(addresses.len(), last_error),
        ))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        Ok(Box::new(self.bind(endpoint).await?))
    }
}

/// Checks that `endpoint` is `scheme://host:port` and resolves the host.
/// Never returns an empty list.
async fn resolve(
    endpoint: &Endpoint,
    operation: Operation,
) -> Result<Vec<SocketAddr>, TransportError> {
    let (host, port) = endpoint.host_and_port()?;
    if !matches!(endpoint.path(), "" | "/") {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "tcp endpoints have no path (expected tcp://host:port)",
        ));
    }
    endpoint.ensure_query_keys(&[])?;
    // An IP literal needs no resolver (and must not wait on one).
    if let Some(ip) = endpoint.host_ip() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|err| {
            TransportError::io(
                operation,
                endpoint,
                io::Error::new(err.kind(), format!("cannot resolve '{host}': {err}")),
            )
        })?
        .collect();
    if addresses.is_empty() {
        return Err(TransportError::io(
            operation,
            endpoint,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("'{host}' has no addresses"),
            ),
        ));
    }
    Ok(addresses)
}

/// The error to report after trying `tried` addresses: the last failure,
/// saying which address it was when there was more than one to choose from.
fn last_attempt_error(tried: usize, last: Option<(SocketAddr, io::Error)>) -> io::Error {
    match last {
        Some((_, err)) if tried == 1 => err,
        // The kind is kept so `is_transient` still classifies it.
        Some((address, err)) => io::Error::new(
            err.kind(),
            format!("tried {tried} addresses, last {address}: {err}"),
        ),
        None => io::Error::new(io::ErrorKind::NotFound, "no addresses to try"),
    }
}

/// Wraps a connected socket in a [`Link`]: kind `"tcp"`, peer and local
/// labels `ip:port`, the peer's IP, TLS upgrade possible.
///
/// Sets `TCP_NODELAY`: SMTP sends many small commands and replies and waits
/// for each answer, which is exactly the pattern where Nagle's algorithm
/// meeting delayed ACKs adds a pause of tens of milliseconds per round trip.
///
/// Fails only if the socket cannot report its addresses (it was already
/// disconnected).
pub fn link_from_stream(stream: TcpStream) -> io::Result<Link> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    if let Err(err) = stream.set_nodelay(true) {
        // Only a latency optimisation; the link works without it.
        tracing::warn!(%peer, error = %err, "could not set TCP_NODELAY");
    }
    let info = LinkInfo::new(KIND, peer.to_string())
        .with_local(local.to_string())
        .with_peer_ip(peer.ip())
        .with_tls_upgrade(true);
    Ok(Link::new(stream, info))
}

/// Incoming TCP links on one bound address, from [`TcpTransport::bind`] or
/// [`Transport::listen`].
#[derive(Debug)]
pub struct TcpLinkListener {
    listener: TcpListener,
    local_endpoint: Endpoint,
}

impl TcpLinkListener {
    /// The bound socket address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[async_trait]
impl Listener for TcpLinkListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        let (stream, _peer) = self
            .listener
            .accept()
            .await
            .map_err(|err| TransportError::io(Operation::Accept, &self.local_endpoint, err))?;
        let link = link_from_stream(stream)
            .map_err(|err| TransportError::io(Operation::Accept, &self.local_endpoint, err))?;
        tracing::debug!(endpoint = %self.local_endpoint, peer = %link.info().peer, "tcp accepted");
        Ok(link)
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local_endpoint.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::net::{IpAddr, Ipv6Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ep(text: &str) -> Endpoint {
        text.parse().unwrap()
    }

    /// Listens on `listen_on`, connects to the bound endpoint, and checks
    /// bytes flow both ways and shutdown arrives as EOF.
    async fn round_trip(listen_on: &str) {
        let transport = TcpTransport::new();
        let mut listener = transport.listen(&ep(listen_on)).await.unwrap();
        let bound = listener.local_endpoint();
        assert_eq!(bound.scheme(), "tcp");
        assert_ne!(bound.port(), Some(0), "the real port is reported");

        let (client, server) = tokio::join!(transport.connect(&bound), listener.accept());
        let mut client = client.unwrap();
        let mut server = server.unwrap();

        assert_eq!(client.info().kind, "tcp");
        assert!(client.info().can_upgrade_tls);
        assert_eq!(client.info().peer, server.info().local);
        assert_eq!(server.info().peer, client.info().local);
        assert_eq!(client.info().peer_ip, bound.host_ip());
        assert_eq!(
            client.info().peer,
            bound.socket_addr_str().unwrap(),
            "peer label is ip:port"
        );

        server.write_all(b"220 hello\r\n").await.unwrap();
        let mut greeting = [0u8; 11];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 hello\r\n");

        client.write_all(b"QUIT\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"QUIT\r\n");

        server.write_all(b"221 bye\r\n").await.unwrap();
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"221 bye\r\n");
    }

    #[tokio::test]
    async fn ipv4_round_trip() {
        round_trip("tcp://127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn ipv6_round_trip() {
        // Containers and CI runners often have no IPv6 loopback at all.
        if let Err(err) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
            println!("skipping ipv6_round_trip: cannot bind [::1]: {err}");
            return;
        }
        round_trip("tcp://[::1]:0").await;
    }

    #[tokio::test]
    async fn listening_on_a_name_reports_the_bound_ip() {
        let transport = TcpTransport::new();
        let listener = transport.bind(&ep("tcp://localhost:0")).await.unwrap();
        let bound = listener.local_endpoint();
        let ip = bound.host_ip().expect("bound endpoint has an IP");
        assert!(ip.is_loopback(), "{bound}");
        assert_eq!(bound.port(), Some(listener.local_addr().unwrap().port()));
    }

    #[tokio::test]
    async fn connect_by_name() {
        let transport = TcpTransport::new();
        let mut listener = transport.bind(&ep("tcp://127.0.0.1:0")).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // "localhost" may resolve to ::1 first; the transport must fall back
        // to 127.0.0.1 when nothing listens there.
        let target = ep(&format!("tcp://localhost:{port}"));
        let (client, server) = tokio::join!(transport.connect(&target), listener.accept());
        let client = client.unwrap();
        server.unwrap();
        assert_eq!(client.info().peer_ip, Some(IpAddr::from([127, 0, 0, 1])));
    }

    #[tokio::test]
    async fn refused_connect_is_transient_and_names_the_endpoint() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = ep(&format!("tcp://127.0.0.1:{port}"));
        let err = TcpTransport::new().connect(&endpoint).await.unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::ConnectionRefused));
        assert!(err.is_transient());
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("connect tcp://127.0.0.1:{port}: ")),
            "{message}"
        );
    }

    #[tokio::test]
    async fn listening_on_a_taken_port_fails_with_addr_in_use() {
        let transport = TcpTransport::new();
        let first = transport.bind(&ep("tcp://127.0.0.1:0")).await.unwrap();
        let err = transport.bind(&first.local_endpoint()).await.unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::AddrInUse));
        assert!(!err.is_transient());
        assert!(
            err.to_string().starts_with("listen tcp://127.0.0.1:"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_endpoints_are_rejected_before_any_io() {
        let transport = TcpTransport::new();
        for (text, reason) in [
            ("tcp://127.0.0.1", "missing port"),
            ("tcp://:25", "missing host"),
            ("tcp://127.0.0.1:25/x", "no path"),
            ("tcp://127.0.0.1:25?tls=1", "unknown option 'tls'"),
            ("tcp:127.0.0.1:25", "expected tcp://host:port"),
        ] {
            let err = transport.connect(&ep(text)).await.unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidEndpoint { .. }),
                "{text}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{text}: {err}");
            assert!(transport.listen(&ep(text)).await.is_err());
        }
    }

    #[tokio::test]
    async fn unresolvable_name_is_not_transient() {
        // .invalid is reserved (RFC 2606) and never resolves.
        let err = TcpTransport::new()
            .connect(&ep("tcp://no-such-host.invalid:25"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot resolve 'no-such-host.invalid'"),
            "{err}"
        );
        assert!(!err.is_transient(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_timeout_gives_up_with_timed_out() {
        // A non-routable address from TEST-NET-1 (RFC 5737) never answers;
        // with time paused the timeout fires without waiting for real.
        let transport = TcpTransport::new().with_connect_timeout(Duration::from_secs(5));
        let err = transport
            .connect(&ep("tcp://192.0.2.1:25"))
            .await
            .unwrap_err();
        // Some sandboxes reject the route outright instead of dropping SYNs.
        if err.io_kind() == Some(io::ErrorKind::TimedOut) {
            assert!(err.is_transient());
            assert!(err.to_string().contains("no answer within 5s"), "{err}");
        } else {
            println!("route to 192.0.2.1 failed fast instead of timing out: {err}");
        }
    }
}
