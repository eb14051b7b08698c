//! In-memory links for smtplink: tests, examples and in-process relays with
//! no sockets at all.
//!
//! [`pipe`] makes one connected pair of [`Link`]s. [`MemTransport`] is a
//! [`Transport`] for `mem://name` endpoints: listeners register a name in the
//! transport's namespace and `connect` reaches them, much like TCP on
//! loopback but deterministic and free of ports. Both sides of a memory link
//! are a [`tokio::io::duplex`] pair, so shutting one side down is seen as
//! end-of-file by the other, and a full buffer makes the writer wait.

pub mod sim;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Transport, TransportError,
};
use tokio::sync::mpsc;

/// The link kind reported in [`LinkInfo::kind`].
pub const KIND: &str = "mem";

/// Default bytes buffered in each direction of a memory link: enough for a
/// pipelined command batch and a large DATA chunk, small enough that a reader
/// that stops reading soon stalls its writer, as a socket would.
pub const DEFAULT_BUFFER: usize = 64 * 1024;

/// Connections queued for a listener before `connect` has to wait for
/// `accept`; the role a TCP listen backlog plays.
const BACKLOG: usize = 128;

/// Numbers pipes so their labels tell them apart in logs.
static NEXT_PIPE: AtomicU64 = AtomicU64::new(1);

/// A connected pair of in-memory links, each buffering up to `buffer` bytes
/// per direction (at least 1: a zero-byte buffer could never move a byte).
///
/// The links are labelled `mem:pipe#N/a` and `mem:pipe#N/b`; each one's
/// `peer` is the other's label. TLS can be started over them (it only needs
/// a byte stream), which lets STARTTLS be tested without sockets.
pub fn pipe(buffer: usize) -> (Link, Link) {
    let number = NEXT_PIPE.fetch_add(1, Ordering::Relaxed);
    let a_label = format!("mem:pipe#{number}/a");
    let b_label = format!("mem:pipe#{number}/b");
    let (a, b) = tokio::io::duplex(buffer.max(1));
    (
        Link::new(a, mem_info(&b_label, &a_label)),
        Link::new(b, mem_info(&a_label, &b_label)),
    )
}

fn mem_info(peer: &str, local: &str) -> LinkInfo {
    LinkInfo::new(KIND, peer)
        .with_local(local)
        .with_tls_upgrade(true)
}

/// A [`Transport`] for `mem://name` endpoints within one process.
///
/// Each `MemTransport::new()` is its own namespace, so parallel tests cannot
/// collide; clones share it. Listening on a name that already has a listener
/// fails with [`io::ErrorKind::AddrInUse`]; connecting to a name nobody
/// listens on fails with [`io::ErrorKind::ConnectionRefused`] (transient, as
/// with TCP). Dropping the listener frees the name.
///
/// Accepted links are labelled `mem://name#N` (the N-th connection to that
/// name), and the connecting side's peer is `mem://name`.
#[derive(Clone)]
pub struct MemTransport {
    namespace: Arc<Namespace>,
    buffer: usize,
}

#[derive(Default)]
struct Namespace {
    listeners: Mutex<HashMap<String, Registration>>,
    /// Tells listeners apart, so a listener that is dropped only ever
    /// removes its own registration.
    next_listener_id: AtomicU64,
}

struct Registration {
    listener_id: u64,
    connections: mpsc::Sender<Link>,
    connections_made: u64,
}

impl Namespace {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Registration>> {
        // Nothing under this lock can panic halfway through an update, so a
        // poisoned map is still consistent.
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemTransport {
    /// A transport with a fresh, empty namespace and [`DEFAULT_BUFFER`].
    pub fn new() -> Self {
        MemTransport::with_buffer(DEFAULT_BUFFER)
    }

    /// A transport with a fresh, empty namespace whose links buffer up to
    /// `buffer` bytes per direction (at least 1).
    pub fn with_buffer(buffer: usize) -> Self {
        MemTransport {
            namespace: Arc::new(Namespace::default()),
            buffer: buffer.max(1),
        }
    }

    /// Bytes buffered per direction on links this transport makes.
    pub fn buffer_size(&self) -> usize {
        self.buffer
    }

    /// Starts listening on `endpoint`; [`Transport::listen`] without the box.
    pub fn bind(&self, endpoint: &Endpoint) -> Result<MemListener, TransportError> {
        let name = listener_name(endpoint, &[])?;
        let (sender, receiver) = mpsc::channel(BACKLOG);
        let listener_id = self
            .namespace
            .next_listener_id
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut listeners = self.namespace.lock();
            if listeners.contains_key(name) {
                return Err(TransportError::io(
                    Operation::Listen,
                    endpoint,
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("'{name}' already has a listener"),
                    ),
                ));
            }
            listeners.insert(
                name.to_owned(),
                Registration {
                    listener_id,
                    connections: sender,
                    connections_made: 0,
                },
            );
        }
        tracing::debug!(%endpoint, "mem listener registered");
        Ok(MemListener {
            namespace: Arc::clone(&self.namespace),
            name: name.to_owned(),
            listener_id,
            local_endpoint: endpoint.clone(),
            incoming: receiver,
        })
    }
}

impl Default for MemTransport {
    fn default() -> Self {
        MemTransport::new()
    }
}

impl std::fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self.namespace.lock().keys().cloned().collect();
        names.sort();
        f.debug_struct("MemTransport")
            .field("buffer", &self.buffer)
            .field("listening", &names)
            .finish()
    }
}

/// The name in `mem://name`; anything else in the endpoint is a mistake.
fn listener_name<'a>(endpoint: &'a Endpoint, keys: &[&str]) -> Result<&'a str, TransportError> {
    let Some(name) = endpoint.host() else {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "missing name (expected mem://name)",
        ));
    };
    if endpoint.port().is_some() {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "mem endpoints have no port (expected mem://name)",
        ));
    }
    if !matches!(endpoint.path(), "" | "/") {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            "mem endpoints have no path (expected mem://name)",
        ));
    }
    endpoint.ensure_query_keys(keys)?;
    Ok(name)
}

fn refused(endpoint: &Endpoint, name: &str) -> TransportError {
    TransportError::io(
        Operation::Connect,
        endpoint,
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("nothing is listening on '{name}'"),
        ),
    )
}

#[async_trait]
impl Transport for MemTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let name = listener_name(endpoint, sim::SimConfig::QUERY_KEYS)?;
        let (connections, number) = {
            let mut listeners = self.namespace.lock();
            let Some(registration) = listeners.get_mut(name) else {
                return Err(refused(endpoint, name));
            };
            registration.connections_made += 1;
            (
                registration.connections.clone(),
                registration.connections_made,
            )
        };
        let listener_label = format!("mem://{name}");
        let connection_label = format!("mem://{name}#{number}");
        let (client, server) = match sim::SimConfig::from_query(endpoint)? {
            // A simulated line, when the URL asks for impairments.
            Some(config) => {
                let (client, server, _) = sim::pair(config.buffer(self.buffer));
                let (client, mut client_info) = client.into_parts();
                let (server, mut server_info) = server.into_parts();
                client_info.peer = listener_label.clone();
                client_info.local = connection_label.clone();
                server_info.peer = connection_label.clone();
                server_info.local = listener_label.clone();
                (
                    Link::from_boxed(client, client_info),
                    Link::from_boxed(server, server_info),
                )
            }
            None => {
                let (client, server) = tokio::io::duplex(self.buffer);
                (
                    Link::new(client, mem_info(&listener_label, &connection_label)),
                    Link::new(server, mem_info(&connection_label, &listener_label)),
                )
            }
        };
        // The lock is released before waiting: a full backlog must not block
        // other names, or the listener's own drop.
        connections
            .send(server)
            .await
            .map_err(|_| refused(endpoint, name))?;
        tracing::debug!(%endpoint, connection = %connection_label, "mem connection queued");
        Ok(client)
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        Ok(Box::new(self.bind(endpoint)?))
    }
}

/// Incoming links for one `mem://name`; dropping it frees the name.
pub struct MemListener {
    namespace: Arc<Namespace>,
    name: String,
    listener_id: u64,
    local_endpoint: Endpoint,
    incoming: mpsc::Receiver<Link>,
}

impl std::fmt::Debug for MemListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemListener")
            .field("endpoint", &self.local_endpoint.to_string())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Listener for MemListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        match self.incoming.recv().await {
            Some(link) => Ok(link),
            // The registration holds a sender for as long as this listener
            // exists, so this is unreachable in practice; report it rather
            // than panic.
            None => Err(TransportError::io(
                Operation::Accept,
                &self.local_endpoint,
                io::Error::new(io::ErrorKind::NotConnected, "listener was unregistered"),
            )),
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local_endpoint.clone()
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        let mut listeners = self.namespace.lock();
        if listeners
            .get(&self.name)
            .is_some_and(|registration| registration.listener_id == self.listener_id)
        {
            listeners.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ep(text: &str) -> Endpoint {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn pipe_carries_bytes_both_ways_and_eof() {
        let (mut a, mut b) = pipe(16);
        assert_eq!(a.info().kind, "mem");
        assert_eq!(a.info().peer, b.info().local);
        assert_eq!(b.info().peer, a.info().local);
        assert!(a.info().peer.starts_with("mem:pipe#"));

        // More than the buffer, so the writer has to wait for the reader.
        let message = vec![b'x'; 100];
        let writer = tokio::spawn(async move {
            a.write_all(&message).await.unwrap();
            a.shutdown().await.unwrap();
            let mut reply = String::new();
            a.read_to_string(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100);
        b.write_all(b"250 OK\r\n").await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), "250 OK\r\n");
    }

    #[tokio::test]
    async fn pipe_with_zero_buffer_still_moves_bytes() {
        let (mut a, mut b) = pipe(0);
        let mut got = [0u8; 2];
        // A one-byte buffer: the write can only finish while the read runs.
        let (written, read) = tokio::join!(a.write_all(b"hi"), b.read_exact(&mut got));
        written.unwrap();
        read.unwrap();
        assert_eq!(&got, b"hi");
    }

    #[tokio::test]
    async fn listen_connect_exchange() {
        let transport = MemTransport::new();
        let mut listener = transport.listen(&ep("mem://relay")).await.unwrap();
        assert_eq!(listener.local_endpoint(), ep("mem://relay"));

        let mut client = transport.connect(&ep("mem://relay")).await.unwrap();
        let mut server = listener.accept().await.unwrap();
        assert_eq!(server.info().kind, "mem");
        assert_eq!(server.info().peer, "mem://relay#1");
        assert_eq!(server.info().local, "mem://relay");
        assert_eq!(client.info().peer, "mem://relay");
        assert_eq!(client.info().local, "mem://relay#1");
        assert_eq!(server.info().peer_ip, None);

        server.write_all(b"220 ready\r\n").await.unwrap();
        let mut greeting = [0u8; 11];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 ready\r\n");

        client.write_all(b"QUIT\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn name_in_use_then_free_after_drop() {
        let transport = MemTransport::new();
        let listener = transport.listen(&ep("mem://x")).await.unwrap();
        let err = transport.listen(&ep("mem://x")).await.err().unwrap();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::AddrInUse));
        assert_eq!(
            err.to_string(),
            "listen mem://x: 'x' already has a listener"
        );

        // A clone shares the namespace, so it sees the name taken too.
        let clone = transport.clone();
        assert!(clone.listen(&ep("mem://x")).await.is_err());

        drop(listener);
        let mut again = clone.listen(&ep("mem://x")).await.unwrap();
        let _client = transport.connect(&ep("mem://x")).await.unwrap();
        let server = again.accept().await.unwrap();
        // Connection numbers restart with the new listener.
        assert_eq!(server.info().peer, "mem://x#1");
    }

    #[tokio::test]
    async fn separate_transports_have_separate_namespaces() {
        let one = MemTransport::new();
        let two = MemTransport::new();
        let _listener = one.listen(&ep("mem://x")).await.unwrap();
        assert!(two.listen(&ep("mem://x")).await.is_ok());
    }

    #[tokio::test]
    async fn connect_without_listener_is_refused_and_transient() {
        let transport = MemTransport::new();
        let err = transport.connect(&ep("mem://nobody")).await.unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::ConnectionRefused));
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "connect mem://nobody: nothing is listening on 'nobody'"
        );

        let listener = transport.listen(&ep("mem://gone")).await.unwrap();
        drop(listener);
        let err = transport.connect(&ep("mem://gone")).await.unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::ConnectionRefused));
    }

    #[tokio::test]
    async fn two_concurrent_connections_to_one_listener() {
        let transport = MemTransport::with_buffer(8);
        assert_eq!(transport.buffer_size(), 8);
        let mut listener = transport.listen(&ep("mem://hub")).await.unwrap();

        let server = tokio::spawn(async move {
            let mut sessions = Vec::new();
            for _ in 0..2 {
                let mut link = listener.accept().await.unwrap();
                sessions.push(tokio::spawn(async move {
                    let label = link.info().peer.clone();
                    let mut request = Vec::new();
                    link.read_to_end(&mut request).await.unwrap();
                    // Echo back with the label, so each client can check it
                    // talked to its own session.
                    link.write_all(label.as_bytes()).await.unwrap();
                    link.write_all(b" ").await.unwrap();
                    link.write_all(&request).await.unwrap();
                    link.shutdown().await.unwrap();
                }));
            }
            for session in sessions {
                session.await.unwrap();
            }
        });

        let one = transport.connect(&ep("mem://hub")).await.unwrap();
        let two = transport.connect(&ep("mem://hub")).await.unwrap();
        assert_eq!(one.info().local, "mem://hub#1");
        assert_eq!(two.info().local, "mem://hub#2");
        let talk = |mut link: Link, text: &'static str| async move {
            link.write_all(text.as_bytes()).await.unwrap();
            link.shutdown().await.unwrap();
            let mut reply = String::new();
            link.read_to_string(&mut reply).await.unwrap();
            reply
        };
        // Both sessions are open at once; join drives them concurrently.
        let (reply_one, reply_two) =
            tokio::join!(talk(one, "first session"), talk(two, "second session"));
        assert_eq!(reply_one, "mem://hub#1 first session");
        assert_eq!(reply_two, "mem://hub#2 second session");
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn impairments_in_the_url_put_a_simulated_line_in_between() {
        let transport = MemTransport::new();
        let mut listener = transport.bind(&ep("mem://line")).unwrap();
        let mut client = transport
            .connect(&ep("mem://line?baud=9600&latency=50&seed=3"))
            .await
            .unwrap();
        let mut server = listener.accept().await.unwrap();
        assert_eq!(client.info().peer, "mem://line");
        let start = tokio::time::Instant::now();
        client.write_all(&[b'x'; 96]).await.unwrap();
        let mut got = [0u8; 96];
        server.read_exact(&mut got).await.unwrap();
        // 96 bytes x 10 bits at 9600 baud, plus 50 ms.
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(150));
        for bad in [
            "mem://line?ber=2",
            "mem://line?baud=fast",
            "mem://line?burst=0.1",
        ] {
            let err = transport.connect(&ep(bad)).await.unwrap_err();
            assert!(
                err.to_string()
                    .contains(bad.split('?').nth(1).unwrap().split('=').next().unwrap()),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn bad_endpoints_are_rejected() {
        let transport = MemTransport::new();
        for (text, reason) in [
            ("mem://", "missing name"),
            ("mem://x:25", "no port"),
            ("mem://x/path", "no path"),
            ("mem://x?buffer=1", "unknown option 'buffer'"),
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

    #[test]
    fn debug_lists_listening_names() {
        let transport = MemTransport::new();
        let _listener = transport.bind(&ep("mem://b")).unwrap();
        let _other = transport.bind(&ep("mem://a")).unwrap();
        let text = format!("{transport:?}");
        assert!(text.contains("[\"a\", \"b\"]"), "{text}");
    }
}
