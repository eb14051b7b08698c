//! `x25+…` endpoints: virtual circuits as smtplink [`Link`]s.
//!
//! - `x25+serial:///dev/ttyS0?baud=9600&role=dte` — the full stack on a
//!   serial line. Each end names its role (`dte` on one, `dce` on the
//!   other). Listening on and calling out over the same device share one
//!   line in the process: the peer's calls and ours are circuits on it.
//! - `x25+mem://name` (with the simulator's `baud=`, `ber=`, … when wanted)
//!   — the full stack over an in-process pipe; the connecting end is the
//!   DTE, the listening end the DCE, and a listener's accepted lines also
//!   carry its own calls back to that name. Listening with `role=dte`
//!   instead opens the line (connects) and takes the peer's calls on it,
//!   as on a serial port.
//! - `x25+tcp://host:port` — XOT (RFC 1613): packets straight on TCP, one
//!   connection per circuit, no link layer (TCP is already reliable).
//!
//! Options every form takes: `service=` (the called service in the call
//! user data, default `smtp`), `frame=` (information field bytes: a fixed
//! size, or `auto` to follow the error rate, the default), `window=` (link
//! layer window), `modulus=8|128`. Anything else goes to the inner
//! transport (e.g. `baud=` to the serial port).
//!
//! The inner byte streams come from a [`Registry`] given at construction:
//! it must map `serial` to a raw device opener (no line handshake) and
//! `mem` to an in-process transport.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use smtplink_transport::{
    async_trait, Endpoint, Link, Listener, Operation, Registry, Transport, TransportError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::lapb::Modulus;
use crate::line::{Circuit, Line, LineConfig, Role};

/// The service called when the URL names none (RFC 1090's SMTP).
pub const DEFAULT_SERVICE: &str = "smtp";

/// How many accepted circuits wait for `accept` before calls are refused.
const BACKLOG: usize = 64;

/// The `x25+serial`, `x25+mem` and `x25+tcp` transports (register the same
/// instance under each scheme). Each instance keeps its own table of open
/// lines, so two nodes in one process keep theirs apart.
#[derive(Clone)]
pub struct X25Transport {
    inner: Registry,
    lines: Arc<Mutex<HashMap<String, Line>>>,
    /// Keys this transport listens on through the inner transport: calls
    /// to them wait for the peer's line instead of connecting to ourselves.
    listening: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Told whenever a line is attached.
    attached: Arc<tokio::sync::Notify>,
    base: LineConfig,
}

impl std::fmt::Debug for X25Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X25Transport")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// An `x25+…` endpoint taken apart.
struct Parsed {
    /// The endpoint as the user wrote it (for error messages).
    outer: Endpoint,
    /// The inner endpoint (e.g. `serial:///dev/ttyS0?baud=9600`).
    inner: Endpoint,
    /// Identifies the line in the table: the inner endpoint without options.
    key: String,
    service: String,
    role: Option<Role>,
    config: LineConfig,
    /// Bytes per second of the line, when the URL says (`baud=`).
    line_rate: Option<u32>,
}

impl X25Transport {
    /// A transport whose lines are opened through `inner`, with default
    /// layer settings.
    pub fn new(inner: Registry) -> Self {
        X25Transport {
            inner,
            lines: Arc::new(Mutex::new(HashMap::new())),
            listening: Arc::default(),
            attached: Arc::default(),
            base: LineConfig::new(Role::Dte),
        }
    }

    /// Uses `config` as the starting point for every line (the URL's
    /// options and the role still apply on top).
    #[must_use]
    pub fn with_config(mut self, config: LineConfig) -> Self {
        self.base = config;
        self
    }

    /// The lines open now, by key, with their counters (for logs and
    /// `smtplink queue`).
    pub fn lines(&self) -> Vec<Line> {
        self.table().values().cloned().collect()
    }

    /// Waits (up to `timeout` in all) until every open line has sent
    /// everything and had it acknowledged; `true` if all drained. Call it
    /// before the process exits.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let lines = self.lines();
        let mut all = true;
        let deadline = tokio::time::Instant::now() + timeout;
        for line in lines {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            all &= line.drain(left).await;
        }
        all
    }

    /// Puts an already running line in the table under `key` (the inner
    /// endpoint text without options, e.g. `mem://link`): calls to that
    /// endpoint then go over it. For programs that build their own lines.
    pub fn attach(&self, key: impl Into<String>, line: Line) {
        self.table().insert(key.into(), line);
        self.attached.notify_waiters();
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Line>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The line in the table under `key`, unless it has ended.
    fn open_line(&self, key: &str) -> Option<Line> {
        open_in(&self.table(), key)
    }

    fn parse(&self, endpoint: &Endpoint) -> Result<Parsed, TransportError> {
        let invalid = |reason: String| TransportError::invalid_endpoint(endpoint, reason);
        let Some(inner_scheme) = endpoint.scheme().strip_prefix("x25+") else {
            return Err(invalid(
                "expected an x25+serial, x25+mem or x25+tcp URL".into(),
            ));
        };
        let text = endpoint.to_string();
        let rest = text
            .split_once("://")
            .map(|(_, rest)| rest)
            .ok_or_else(|| invalid("expected scheme://".into()))?;
        let (location, _) = rest.split_once('?').unwrap_or((rest, ""));
        let mut inner_query = Vec::new();
        let mut config = self.base.clone();
        let mut service = DEFAULT_SERVICE.to_owned();
        let mut role = None;
        let mut line_rate = None;
        for (key, value) in endpoint.query_pairs() {
            match key {
                "service" => {
                    if value.is_empty()
                        || value.len() > 64
                        || !value.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(invalid(format!(
                            "service must be a short printable name, not {value:?}"
                        )));
                    }
                    service = value.to_owned();
                }
                "role" => {
                    role = Some(match value {
                        "dte" => Role::Dte,
                        "dce" => Role::Dce,
                        _ => {
                            return Err(invalid(format!("role must be dte or dce, not {value:?}")))
                        }
                    });
                }
                "frame" => {
                    if value == "auto" {
                        config.lapb.adaptive = true;
                    } else {
                        let size: usize = value
                            .parse()
                            .ok()
                            .filter(|s| (16..=4096).contains(s))
                            .ok_or_else(|| {
                                invalid(format!(
                                    "frame must be auto or 16..4096 bytes, not {value:?}"
                                ))
                            })?;
                        config.lapb.adaptive = false;
                        config.lapb.max_info = size;
                        config.lapb.min_info = size;
                    }
                }
                "window" => {
                    config.lapb.window =
                        value.parse().ok().filter(|w| *w >= 1).ok_or_else(|| {
                            invalid(format!("window must be a number from 1, not {value:?}"))
                        })?;
                }
                "modulus" => {
                    config.lapb.modulus = match value {
                        "8" => Modulus::Mod8,
                        "128" => Modulus::Mod128,
                        _ => {
                            return Err(invalid(format!("modulus must be 8 or 128, not {value:?}")))
                        }
                    };
                }
                _ => {
                    if key == "baud" {
                        line_rate = value.parse::<u32>().ok().map(|baud| baud / 10);
                    }
                    inner_query.push(format!("{key}={value}"));
                }
            }
        }
        let max_window = match config.lapb.modulus {
            Modulus::Mod8 => 7,
            Modulus::Mod128 => 127,
        };
        if config.lapb.window > max_window {
            return Err(invalid(format!(
                "window {} is more than modulus {} allows ({max_window})",
                config.lapb.window,
                if max_window == 7 { 8 } else { 128 }
            )));
        }
        if line_rate.is_some() {
            config.lapb.line_rate = line_rate;
        }
        let key = format!("{inner_scheme}://{location}");
        let inner_text = if inner_query.is_empty() {
            key.clone()
        } else {
            format!("{key}?{}", inner_query.join("&"))
        };
        let inner = Endpoint::parse(&inner_text)?;
        Ok(Parsed {
            outer: endpoint.clone(),
            inner,
            key,
            service,
            role,
            config,
            line_rate,
        })
    }

    /// The open line for `parsed`, or a new one over a fresh inner stream.
    async fn line_for(
        &self,
        parsed: &Parsed,
        default_role: Role,
    ) -> Result<(Line, u32), TransportError> {
        if let Some(line) = self.open_line(&parsed.key) {
            return Ok((line, scale_for(parsed.line_rate)));
        }
        if self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&parsed.key)
        {
            return self.wait_for_line(parsed).await;
        }
        let role = parsed.role.unwrap_or(default_role);
        let link = self
            .inner
            .connect(&parsed.inner)
            .await
            .map_err(|e| in_x25_terms(&parsed.outer, Operation::Connect, e))?;
        let scale = link.info().timeout_scale.max(scale_for(parsed.line_rate));
        let mut config = parsed.config.clone();
        config.role = role;
        let line = Line::spawn(link, config, parsed.key.clone());
        // Another task may have opened one meanwhile; the first one wins
        // and ours is dropped (its stream closes).
        let mut table = self.table();
        match open_in(&table, &parsed.key) {
            Some(existing) => Ok((existing, scale)),
            None => {
                table.insert(parsed.key.clone(), line.clone());
                Ok((line, scale))
            }
        }
    }
}

impl X25Transport {
    /// We listen on this name: our calls go over the line the peer opens,
    /// so wait (up to the call timeout) for it.
    async fn wait_for_line(&self, parsed: &Parsed) -> Result<(Line, u32), TransportError> {
        let deadline = tokio::time::Instant::now() + parsed.config.call_timeout;
        loop {
            let attached = self.attached.notified();
            if let Some(line) = self.open_line(&parsed.key) {
                return Ok((line, scale_for(parsed.line_rate)));
            }
            if tokio::time::timeout_at(deadline, attached).await.is_err() {
                return Err(TransportError::io(
                    Operation::Connect,
                    &parsed.inner,
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no line yet: this end listens here and waits for the other end to open it",
                    ),
                ));
            }
        }
    }
}

/// The line under `key` in `table`, unless it has ended.
fn open_in(table: &HashMap<String, Line>, key: &str) -> Option<Line> {
    table.get(key).filter(|line| !line.is_ended()).cloned()
}

/// SMTP timers stretch on slow lines (as for plain serial links).
fn scale_for(line_rate: Option<u32>) -> u32 {
    line_rate.map_or(1, |bytes_per_second| {
        730u32.div_ceil(bytes_per_second.max(1))
    })
}

fn call_error(endpoint: &Endpoint, error: crate::X25Error) -> TransportError {
    TransportError::io(
        Operation::Connect,
        endpoint,
        io::Error::new(io::ErrorKind::ConnectionRefused, error.to_string()),
    )
}

#[async_trait]
impl Transport for X25Transport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let parsed = self.parse(endpoint)?;
        if parsed.inner.scheme() == "tcp" {
            let address = tcp_address(&parsed.inner)?;
            let stream = TcpStream::connect(&address)
                .await
                .map_err(|e| TransportError::io(Operation::Connect, endpoint, e))?;
            let _ = stream.set_nodelay(true);
            let mut config = parsed.config.clone();
            config.role = Role::Dte;
            let line = Line::spawn_xot(stream, config, format!("xot://{address}"));
            let circuit = line
                .call(&parsed.service)
                .await
                .map_err(|e| call_error(endpoint, e))?;
            return Ok(circuit.into_link(1));
        }
        if parsed.inner.scheme() == "serial" && parsed.role.is_none() {
            return Err(role_required(endpoint));
        }
        let (line, scale) = self.line_for(&parsed, Role::Dte).await?;
        let circuit = line
            .call(&parsed.service)
            .await
            .map_err(|e| call_error(endpoint, e))?;
        Ok(circuit.into_link(scale))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        let parsed = self.parse(endpoint)?;
        let (sender, receiver) = mpsc::channel(BACKLOG);
        let scale = scale_for(parsed.line_rate);
        match parsed.inner.scheme() {
            "tcp" => {
                let address = tcp_address(&parsed.inner)?;
                let listener = TcpListener::bind(&address)
                    .await
                    .map_err(|e| TransportError::io(Operation::Listen, endpoint, e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| TransportError::io(Operation::Listen, endpoint, e))?;
                let local_endpoint = Endpoint::parse(&format!("x25+tcp://{local}"))?;
                let mut config = parsed.config.clone();
                config.role = Role::Dce;
                let service = parsed.service.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let line = Line::spawn_xot(stream, config.clone(), format!("xot://{peer}"));
                        if sender.is_closed() {
                            return;
                        }
                        let mut incoming = line.listen(&service);
                        let circuits = sender.clone();
                        let call_timeout = config.call_timeout;
                        // Each connection on its own task: one caller that
                        // never calls must not hold up the next.
                        tokio::spawn(async move {
                            // XOT carries one circuit per connection (RFC
                            // 1613): no call in time, and the line (and its
                            // connection) is dropped.
                            match tokio::time::timeout(call_timeout, incoming.accept()).await {
                                Ok(Some(circuit)) => {
                                    if circuits.send(circuit.into_link(1)).await.is_ok() {
                                        let _ = forward(incoming, circuits, 1).await;
                                    }
                                }
                                Ok(None) => {}
                                Err(_) => {
                                    tracing::info!(%peer, "x25: XOT connection without a call; closing it")
                                }
                            }
                        });
                    }
                });
                Ok(Box::new(X25Listener {
                    receiver,
                    local_endpoint,
                }))
            }
            scheme if scheme == "serial" || parsed.role.is_some() => {
                // A line we open ourselves (a serial port, or the calling
                // end of a mem:// line): take the peer's calls on it.
                if parsed.role.is_none() {
                    return Err(role_required(endpoint));
                }
                // Open now, so a missing or busy device is reported at once.
                let (line, scale) = self.line_for(&parsed, Role::Dte).await?;
                let this = self.clone();
                let service = parsed.service.clone();
                let mut line = Some(line);
                tokio::spawn(async move {
                    loop {
                        let current = match line.take() {
                            Some(line) => line,
                            None => match this.line_for(&parsed, Role::Dte).await {
                                Ok((line, _)) => line,
                                Err(e) => {
                                    tracing::warn!(error = %e, "x25: cannot reopen the line; retrying");
                                    tokio::time::sleep(Duration::from_secs(2)).await;
                                    continue;
                                }
                            },
                        };
                        let incoming = current.listen(&service);
                        if forward(incoming, sender.clone(), scale).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                Ok(Box::new(X25Listener {
                    receiver,
                    local_endpoint: endpoint.clone(),
                }))
            }
            _ => {
                // Any other inner transport that listens (mem://): every
                // accepted stream is a line of its own, and the latest one
                // also carries our calls to this name.
                let mut inner = self
                    .inner
                    .listen(&parsed.inner)
                    .await
                    .map_err(|e| in_x25_terms(endpoint, Operation::Listen, e))?;
                self.listening
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(parsed.key.clone());
                let this = self.clone();
                let service = parsed.service.clone();
                tokio::spawn(async move {
                    loop {
                        let link = match inner.accept().await {
                            Ok(link) => link,
                            Err(e) => {
                                tracing::warn!(error = %e, "x25: accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        let mut config = parsed.config.clone();
                        config.role = parsed.role.unwrap_or(Role::Dce);
                        let line = Line::spawn(link, config, parsed.key.clone());
                        this.attach(parsed.key.clone(), line.clone());
                        let incoming = line.listen(&service);
                        let sender = sender.clone();
                        tokio::spawn(async move {
                            let _ = forward(incoming, sender, scale).await;
                        });
                    }
                });
                Ok(Box::new(X25Listener {
                    receiver,
                    local_endpoint: endpoint.clone(),
                }))
            }
        }
    }
}

/// Passes a line's incoming circuits to the listener until the line ends
/// (`Ok`) or the listener is gone (`Err`).
async fn forward(
    mut incoming: crate::line::Incoming,
    sender: mpsc::Sender<Link>,
    scale: u32,
) -> Result<(), ()> {
    while let Some(circuit) = incoming.accept().await {
        let link: Link = Circuit::into_link(circuit, scale);
        if sender.send(link).await.is_err() {
            return Err(());
        }
    }
    Ok(())
}

/// An error of the inner transport, told about the `x25+…` endpoint the
/// user wrote (and, for a bad option, with the adapter's own options).
fn in_x25_terms(outer: &Endpoint, operation: Operation, error: TransportError) -> TransportError {
    match error {
        TransportError::InvalidEndpoint { reason, .. } => TransportError::invalid_endpoint(
            outer,
            format!("{reason}; the x25 adapter itself takes service, role, frame, window, modulus"),
        ),
        other => match other.io_kind() {
            // Same kind, so the same transient/permanent verdict.
            Some(kind) => {
                TransportError::io(operation, outer, io::Error::new(kind, other.to_string()))
            }
            None => other,
        },
    }
}

/// A line this end opens itself has no "caller": the URL must say which
/// end it is.
fn role_required(endpoint: &Endpoint) -> TransportError {
    TransportError::invalid_endpoint(
        endpoint,
        "say which end of the line this is: role=dte here and role=dce on the other end",
    )
}

fn tcp_address(endpoint: &Endpoint) -> Result<String, TransportError> {
    let host = endpoint.host().unwrap_or("127.0.0.1");
    let port = endpoint.port().ok_or_else(|| {
        TransportError::invalid_endpoint(endpoint, "x25+tcp needs a port (XOT's is 1998)")
    })?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Circuits called in on an `x25+…` endpoint.
#[derive(Debug)]
pub struct X25Listener {
    receiver: mpsc::Receiver<Link>,
    local_endpoint: Endpoint,
}

#[async_trait]
impl Listener for X25Listener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        self.receiver.recv().await.ok_or_else(|| {
            TransportError::io(
                Operation::Accept,
                &self.local_endpoint,
                io::Error::new(io::ErrorKind::NotConnected, "the x25 line is gone"),
            )
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local_endpoint.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use smtplink_transport::Transport;

    async fn connect_error(url: &str) -> String {
        let transport = X25Transport::new(Registry::new());
        let endpoint = Endpoint::parse(url).unwrap();
        transport.connect(&endpoint).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn bad_options_are_named() {
        for (url, expect) in [
            ("x25+serial:///dev/ttyS0?baud=9600", "role=dte"),
            (
                "x25+serial:///dev/ttyS0?baud=9600&role=both",
                "role must be dte or dce",
            ),
            ("x25+mem://x?window=0", "window"),
            (
                "x25+mem://x?modulus=8&window=9",
                "more than modulus 8 allows",
            ),
            ("x25+mem://x?frame=8", "frame must be auto"),
            ("x25+mem://x?service=a%20b", "service"),
            ("x25+tcp://127.0.0.1", "needs a port"),
        ] {
            let error = connect_error(url).await;
            assert!(error.contains(expect), "{url}: {error}");
        }
    }

    #[test]
    fn inner_endpoint_keeps_only_the_inner_options() {
        let transport = X25Transport::new(Registry::new());
        let endpoint = Endpoint::parse(
            "x25+serial:///dev/ttyS0?baud=9600&role=dte&service=smtp&window=16&flow=none",
        )
        .unwrap();
        let parsed = transport.parse(&endpoint).unwrap();
        assert_eq!(
            parsed.inner.to_string(),
            "serial:///dev/ttyS0?baud=9600&flow=none"
        );
        assert_eq!(parsed.key, "serial:///dev/ttyS0");
        assert_eq!(parsed.role, Some(Role::Dte));
        assert_eq!(parsed.config.lapb.window, 16);
        assert_eq!(parsed.line_rate, Some(960));
        assert_eq!(parsed.service, "smtp");
    }

    #[tokio::test]
    async fn a_listener_on_mem_waits_for_the_peer_line_instead_of_calling_itself() {
        let mem = smtplink_mem_free_registry();
        let transport = X25Transport::new(mem.clone()).with_config({
            let mut config = LineConfig::new(Role::Dte);
            config.call_timeout = Duration::from_millis(200);
            config
        });
        let endpoint = Endpoint::parse("x25+mem://line").unwrap();
        let _listener = transport.listen(&endpoint).await.unwrap();
        let error = transport.connect(&endpoint).await.unwrap_err().to_string();
        assert!(error.contains("no line yet"), "{error}");
    }

    /// XOT: a connection that never calls must not hold up the next caller
    /// (each connection is served on its own task).
    #[tokio::test]
    async fn an_idle_xot_connection_does_not_block_the_next_caller() {
        let transport = X25Transport::new(Registry::new());
        let mut listener = transport
            .listen(&Endpoint::parse("x25+tcp://127.0.0.1:0").unwrap())
            .await
            .unwrap();
        let port = listener.local_endpoint().port().unwrap();
        let _idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let url = Endpoint::parse(&format!("x25+tcp://127.0.0.1:{port}")).unwrap();
        let caller = transport.connect(&url);
        let (called, accepted) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(caller, listener.accept())
        })
        .await
        .expect("the second caller was held up");
        let (mut called, mut accepted) = (called.unwrap(), accepted.unwrap());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        called.write_all(b"220 hello\r\n").await.unwrap();
        let mut got = [0u8; 11];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"220 hello\r\n");
    }

    /// A registry whose `mem` transport is a minimal in-crate stand-in:
    /// listening works, and connecting is never expected.
    fn smtplink_mem_free_registry() -> Registry {
        struct ListenOnly;
        struct Never;
        #[async_trait]
        impl Listener for Never {
            async fn accept(&mut self) -> Result<Link, TransportError> {
                std::future::pending().await
            }
            fn local_endpoint(&self) -> Endpoint {
                Endpoint::parse("mem://line").unwrap()
            }
        }
        #[async_trait]
        impl Transport for ListenOnly {
            async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
                Err(TransportError::unsupported(endpoint, Operation::Connect))
            }
            async fn listen(&self, _: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
                Ok(Box::new(Never))
            }
        }
        Registry::new().with("mem", Arc::new(ListenOnly))
    }
}
