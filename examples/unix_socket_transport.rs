//! A transport of our own, for Unix domain sockets, and a message relayed
//! through it from one node to another.
//!
//! `UnixTransport` below is a complete [`Transport`]: `unix:///path/to/socket`
//! endpoints, a listener that binds the socket file (and removes it again
//! when dropped), links labelled for logs and `Received:` headers. Register
//! it in a [`Registry`] under `unix` and every part of smtplink that
//! connects or listens through the registry can use it: here the relay's
//! delivery worker (for a route `example.net=unix:///...`) and the server.
//!
//! The relay, in one process:
//!
//! * node **B** (`b.test`) listens on `unix://<tempdir>/b.sock` and delivers
//!   mail for `example.net` into Maildirs under the temp dir;
//! * node **A** (`a.test`) routes `example.net` to that socket and has a spool.
//!   A message is submitted to A over an in-memory pipe (A's relay backend
//!   queues it), then one pass of A's delivery worker carries it to B over
//!   the Unix socket.
//!
//! ```text
//! cargo run --example unix_socket_transport
//! ```
//!
//! The `smtplink` program only knows its built-in schemes, so a program
//! with its own transport builds the registry, server and worker itself, as
//! `run()` does.

use std::error::Error;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use smtplink_driver::{
    serve_link, Backend, ClientSettings, ListenerSettings, RelayPolicy, Server, ServerSettings,
    SessionHandler, SessionInfo, Shutdown, SmtpClient,
};
use smtplink_engine::{ClientConfig, Envelope, Reply, ServerConfig};
use smtplink_maildir::MaildirStore;
use smtplink_relay::backend::DEFAULT_MAX_HOPS;
use smtplink_relay::{
    RelayBackend, RelayContext, Route, RoutingTable, RunStats, Spool, Worker, WorkerSettings,
};
use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Registry, Transport, TransportError,
};
use tokio::net::{UnixListener, UnixStream};

/// The link kind reported in [`LinkInfo::kind`].
pub const KIND: &str = "unix";

/// A [`Transport`] for `unix:///path/to/socket` endpoints.
///
/// The path is taken verbatim from the endpoint (three slashes: no host).
/// Connecting to a path where nothing listens (no socket file, or a stale
/// one) fails with [`io::ErrorKind::ConnectionRefused`], which
/// [`TransportError::is_transient`] treats as worth retrying, as with TCP.
#[derive(Debug, Default)]
pub struct UnixTransport;

impl UnixTransport {
    /// The transport; it has no settings.
    pub fn new() -> Self {
        UnixTransport
    }
}

/// The socket path of a `unix:///path` endpoint, or an error saying what
/// is wrong with the endpoint (checked before any I/O).
fn socket_path(endpoint: &Endpoint) -> Result<PathBuf, TransportError> {
    const SHAPE: &str = "expected unix:///path/to/socket";
    if endpoint.is_opaque() {
        return Err(TransportError::invalid_endpoint(endpoint, SHAPE));
    }
    if endpoint.host().is_some() || endpoint.port().is_some() {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            format!("unix endpoints have no host or port ({SHAPE}, with three slashes)"),
        ));
    }
    if endpoint.path().len() <= 1 {
        return Err(TransportError::invalid_endpoint(
            endpoint,
            format!("missing socket path ({SHAPE})"),
        ));
    }
    endpoint.ensure_query_keys(&[])?;
    Ok(PathBuf::from(endpoint.path()))
}

#[async_trait]
impl Transport for UnixTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let path = socket_path(endpoint)?;
        let stream = UnixStream::connect(&path).await.map_err(|err| {
            // No socket file means the peer is not running (yet), the same
            // situation as a TCP port nobody listens on: report it with the
            // kind that says "try again later".
            let err = if err.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no socket at {}", path.display()),
                )
            } else {
                err
            };
            TransportError::io(Operation::Connect, endpoint, err)
        })?;
        Ok(Link::new(stream, LinkInfo::new(KIND, endpoint.to_string())))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        let path = socket_path(endpoint)?;
        let io_error = |err| TransportError::io(Operation::Listen, endpoint, err);
        remove_stale_socket(&path).await.map_err(io_error)?;
        let listener = UnixListener::bind(&path).map_err(io_error)?;
        Ok(Box::new(UnixLinkListener {
            listener,
            path,
            endpoint: endpoint.clone(),
            accepted: 0,
        }))
    }
}

/// A socket file left behind by a process that died cannot be bound again;
/// remove it, but only if nobody answers on it (two listeners must not
/// steal each other's path).
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        // Nothing there (bind creates it), or not a socket (bind reports it).
        return Ok(());
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Incoming links on one socket path. Dropping it removes the socket file.
pub struct UnixLinkListener {
    listener: UnixListener,
    path: PathBuf,
    endpoint: Endpoint,
    accepted: u64,
}

#[async_trait]
impl Listener for UnixLinkListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        // `UnixListener::accept` is cancel-safe, as a Listener's accept
        // must be: the server races it against shutdown.
        let (stream, _addr) = self
            .listener
            .accept()
            .await
            .map_err(|err| TransportError::io(Operation::Accept, &self.endpoint, err))?;
        self.accepted += 1;
        // Connecting sockets are usually unnamed, so number them: the label
        // tells sessions apart in logs and Received: headers.
        let info = LinkInfo::new(KIND, format!("{}#{}", self.endpoint, self.accepted))
            .with_local(self.endpoint.to_string());
        Ok(Link::new(stream, info))
    }

    fn local_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
}

impl Drop for UnixLinkListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What [`run`] saw.
#[derive(Debug)]
pub struct Report {
    /// Where node B listened.
    pub endpoint: String,
    /// Node A's reply to the submission, per recipient: (recipient, code, text).
    pub submitted: Vec<(String, u16, String)>,
    /// What A's delivery worker did in its pass.
    pub stats: RunStats,
    /// Messages still in A's spool afterwards.
    pub left_in_spool: usize,
    /// The links B's sessions came over.
    pub links_at_b: Vec<LinkInfo>,
    /// The message as submitted to A.
    pub sent: Vec<u8>,
    /// The trace header fields in front of the message stored at B
    /// (`Return-Path:`, B's `Received:`, A's `Received:`).
    pub trace: String,
    /// The message stored at B, without those trace fields.
    pub body: Vec<u8>,
}

/// Wraps a backend and notes the link of every session it opens.
struct WatchLinks<B> {
    inner: B,
    links: Arc<Mutex<Vec<LinkInfo>>>,
}

#[async_trait]
impl<B: Backend> Backend for WatchLinks<B> {
    async fn open(&self, info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(info.link.clone());
        self.inner.open(info).await
    }
}

/// The message relayed: 8-bit text and lines that start with dots.
const MESSAGE: &str = "From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: over a Unix domain socket\r\n\
\r\n\
Gr\u{fc}\u{df}e aus dem Socket \u{2014} caf\u{e9}, na\u{ef}ve.\r\n\
.a line that starts with a dot\r\n\
..two dots\r\n\
.\r\n\
the line above is a lone dot, and this is the end.\r\n";

fn relay_context(
    hostname: &str,
    route: &str,
    maildir: PathBuf,
    spool: Option<Arc<Spool>>,
) -> Result<Arc<RelayContext>, Box<dyn Error>> {
    Ok(Arc::new(RelayContext {
        hostname: hostname.into(),
        routes: RoutingTable::new(vec![Route::parse(route)?]),
        store: MaildirStore::new(maildir, hostname),
        spool,
        max_hops: DEFAULT_MAX_HOPS,
        wake: Arc::new(tokio::sync::Notify::new()),
        // TURN is for trusted point-to-point lines; not needed here.
        allow_turn: false,
    }))
}

fn server_settings(hostname: &str) -> ServerSettings {
    ServerSettings {
        engine: ServerConfig {
            hostname: hostname.into(),
            ..ServerConfig::default()
        },
        ..ServerSettings::default()
    }
}

fn client_settings(hello_name: &str) -> ClientSettings {
    ClientSettings {
        engine: ClientConfig {
            hello_name: hello_name.into(),
            ..ClientConfig::default()
        },
        ..ClientSettings::default()
    }
}

/// Splits the trace header fields (`Return-Path:`, `Received:` and their
/// folded continuation lines) off the front of a stored message.
fn split_trace(stored: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    loop {
        let rest = &stored[pos..];
        let is_trace = rest.starts_with(b"Return-Path:")
            || rest.starts_with(b"Received:")
            || (pos > 0 && (rest.starts_with(b"\t") || rest.starts_with(b" ")));
        let line_end = rest.windows(2).position(|w| w == b"\r\n");
        match (is_trace, line_end) {
            (true, Some(end)) => pos += end + 2,
            _ => return stored.split_at(pos),
        }
    }
}

/// The messages in a Maildir's `new/`.
fn delivered(store: &MaildirStore, recipient: &str) -> io::Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(store.mailbox_path(recipient).join("new"))? {
        files.push(std::fs::read(entry?.path())?);
    }
    Ok(files)
}

/// Relays one message from node A to node B over a Unix domain socket.
pub async fn run() -> Result<Report, Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let endpoint: Endpoint = format!("unix://{}", dir.path().join("b.sock").display()).parse()?;
    let registry = Registry::new().with("unix", Arc::new(UnixTransport::new()));

    // Node B: listens on the socket, delivers example.net locally.
    let b_store = MaildirStore::new(dir.path().join("b-maildir"), "b.test");
    let b_ctx = relay_context("b.test", "example.net=local", b_store.root().into(), None)?;
    let links = Arc::new(Mutex::new(Vec::new()));
    let b_server = Server::new(
        server_settings("b.test"),
        Arc::new(WatchLinks {
            inner: RelayBackend::new(b_ctx),
            links: links.clone(),
        }),
    );
    let b_stop = b_server.shutdown();
    let listener = registry.listen(&endpoint).await?;
    let b_task = tokio::spawn(async move { b_server.run(vec![listener]).await });

    // Node A: routes example.net over the socket, through its spool.
    let spool = Arc::new(Spool::open(dir.path().join("a-spool"))?);
    let a_ctx = relay_context(
        "a.test",
        &format!("example.net={endpoint}"),
        dir.path().join("a-maildir"),
        Some(spool.clone()),
    )?;

    // Submit the message to A (its relay backend queues it in the spool)
    // over an in-memory pipe.
    let (client_link, server_link) = smtplink_mem::pipe(64 * 1024);
    // A relays for this submitter: a session handed to `serve_link`
    // directly is local-only unless its settings say otherwise.
    let a_settings = ServerSettings {
        listener: ListenerSettings {
            relay_policy: Some(RelayPolicy::Trusted),
            ..ListenerSettings::default()
        },
        ..server_settings("a.test")
    };
    let a_session = tokio::spawn(serve_link(
        server_link,
        Arc::new(a_settings),
        Arc::new(RelayBackend::new(a_ctx.clone())),
        Shutdown::new(),
    ));
    let mut client = SmtpClient::handshake(client_link, client_settings("submitter.test")).await?;
    let envelope = Envelope::parse("alice@example.org", &["bob@example.net"])?;
    let outcome = client.send(envelope, MESSAGE.as_bytes()).await?;
    client.quit().await?;
    a_session.await??;
    let submitted = outcome
        .recipients
        .iter()
        .map(|(rcpt, outcome)| {
            let reply = outcome.reply();
            (rcpt.to_string(), reply.code().get(), reply.text())
        })
        .collect();

    // One pass of A's delivery worker: it connects through the registry,
    // so over the Unix socket.
    let worker = Worker::new(
        a_ctx,
        spool.clone(),
        registry,
        WorkerSettings {
            client: client_settings("a.test"),
            connect_timeout: Duration::from_secs(10),
            ..WorkerSettings::default()
        },
    );
    let stats = worker.run_once(None).await;
    let queued = spool.list()?;

    b_stop.graceful.cancel();
    b_task.await?;

    let mut arrived = delivered(&b_store, "bob@example.net").unwrap_or_default();
    let Some(stored) = arrived.pop() else {
        let why: Vec<String> = queued
            .iter()
            .flat_map(|record| &record.recipients)
            .map(|r| format!("<{}>: {:?}", r.address, r.last_reply))
            .collect();
        return Err(format!("nothing arrived at B ({stats:?}; A's queue: {why:?})").into());
    };
    if !arrived.is_empty() {
        return Err(format!("{} copies arrived at B", arrived.len() + 1).into());
    }
    let (trace, body) = split_trace(&stored);
    let links_at_b = links.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(Report {
        endpoint: endpoint.to_string(),
        submitted,
        stats,
        left_in_spool: queued.len(),
        links_at_b,
        sent: MESSAGE.as_bytes().to_vec(),
        trace: String::from_utf8_lossy(trace).into_owned(),
        body: body.to_vec(),
    })
}

#[allow(dead_code)] // unused when tests/examples.rs includes this file
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let report = run().await?;
    println!("B listened on {}", report.endpoint);
    for (rcpt, code, text) in &report.submitted {
        println!("A accepted <{rcpt}>: {code} {text}");
    }
    println!(
        "A's worker: {} delivered, {} deferred, {} failed; {} left in A's spool",
        report.stats.delivered, report.stats.deferred, report.stats.failed, report.left_in_spool
    );
    for link in &report.links_at_b {
        println!("B had a session over {} from {}", link.kind, link.peer);
    }
    println!("arrived at B:\n{}", report.trace);
    println!("{}", String::from_utf8_lossy(&report.body));
    println!(
        "identical to what was sent, apart from the trace fields: {}",
        report.body == report.sent
    );
    Ok(())
}
