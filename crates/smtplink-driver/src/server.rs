//! The server driver: runs a [`ServerSession`] over a [`Link`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smtplink_engine::{
    CloseReason, Reply, ServerConfig, ServerEvent, ServerSession, ServerTimeout, TlsInfo,
};
use smtplink_transport::{Link, Listener, TlsAccept, TlsSessionInfo, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::backend::{Backend, SessionHandler, SessionInfo};
use crate::error::DriverError;

/// Settings of the server driver.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The engine's settings (limits, host name, extensions).
    pub engine: ServerConfig,
    /// How long a client may take to send the next command, counted from
    /// our last reply, however it trickles in. RFC 5321 4.5.3.2.7 asks for
    /// at least 5 minutes.
    pub command_timeout: Duration,
    /// How long to wait for more message data. RFC 5321 4.5.3.2.7's
    /// server timeout applies here too.
    pub data_timeout: Duration,
    /// Bytes read from the link at a time.
    pub read_buffer: usize,
    /// Most sessions at once; more are told 421 and closed (RFC 5321 7.8:
    /// a server may limit its resources). Each costs a file descriptor.
    pub max_sessions: usize,
    /// Most sessions at once from one peer address, so one client cannot
    /// take every slot.
    pub max_sessions_per_peer: usize,
    /// The server side of TLS (a certificate). With it, STARTTLS
    /// (RFC 3207) is offered on every link that can carry TLS and is not
    /// encrypted already; without it, STARTTLS is not offered.
    pub tls: Option<Arc<dyn TlsAccept>>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            engine: ServerConfig::default(),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(5 * 60),
            read_buffer: 64 * 1024,
            max_sessions: 200,
            max_sessions_per_peer: 20,
            tls: None,
        }
    }
}

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A session id unique across restarts (it goes into Received: ids and
/// logs): the process start time and pid in hex, then a counter.
fn next_session_id() -> String {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let n = SESSION_COUNTER.fetch_add(1, Ordering::Relaxed);
    // The pid too: two processes started in the same second must differ.
    format!("{epoch:X}.{:X}.{n}", std::process::id())
}

/// The two stages of stopping a server.
///
/// `graceful`: stop accepting; idle sessions get 421 at once, a session
/// receiving a message finishes it first. `force`: every session gets 421
/// now and a message in progress is dropped (its sender still has it).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting and drain.
    pub graceful: CancellationToken,
    /// Close everything now.
    pub force: CancellationToken,
}

impl Shutdown {
    /// A fresh pair of tokens.
    pub fn new() -> Self {
        Self::default()
    }
}

/// How a session ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session id.
    pub id: String,
    /// Messages accepted (250 to end of data).
    pub messages: u64,
    /// Why it ended: the engine's reason, or `None` when the link dropped.
    pub close: Option<CloseReason>,
}

/// Runs one server session over `link` until it ends.
///
/// On `shutdown`, a session waiting for a command is told 421 and closed; a
/// session receiving a message finishes that message first.
pub async fn serve_link(
    link: Link,
    settings: Arc<ServerSettings>,
    backend: Arc<dyn Backend>,
    shutdown: Shutdown,
) -> Result<SessionSummary, DriverError> {
    let id = next_session_id();
    let span = info_span!(
        "session",
        role = "server",
        id = %id,
        transport = link.info().kind,
        peer = %link.info().peer
    );
    run_session(id, link, settings, backend, shutdown)
        .instrument(span)
        .await
}

async fn run_session(
    id: String,
    mut link: Link,
    settings: Arc<ServerSettings>,
    backend: Arc<dyn Backend>,
    shutdown: Shutdown,
) -> Result<SessionSummary, DriverError> {
    let mut info = SessionInfo {
        id: id.clone(),
        link: link.info().clone(),
        helo: String::new(),
        esmtp: false,
    };
    info!(tls = link.info().tls.is_some(), "session opened");
    let mut handler = match backend.open(&info).await {
        Ok(h) => h,
        Err(reply) => {
            // RFC 5321 3.1: refuse with a 554 (or 421) greeting, then close.
            let _ = link.write_all(&reply.to_bytes()).await;
            let _ = link.shutdown().await;
            return Err(DriverError::Refused(reply));
        }
    };
    let mut engine = settings.engine.clone();
    engine.starttls = settings.tls.is_some() && link.info().can_upgrade_tls;
    let mut session = ServerSession::new(engine);
    if let Some(tls) = &link.info().tls {
        // Implicit TLS (RFC 8314): encrypted from the first byte.
        session.handle_tls_established(engine_tls_info(tls));
    }
    let mut state = DriveState {
        messages: 0,
        close: None,
        data_error: None,
        in_message: false,
    };
    let mut buf = vec![0u8; settings.read_buffer.max(512)];
    let mut draining = false;
    let mut command_started = tokio::time::Instant::now();
    // A slow link (a serial line) stretches every timer.
    let scale = info.link.timeout_scale.max(1);
    let result = loop {
        handle_events(&mut session, handler.as_mut(), &mut info, &mut state).await;
        if let Some(out) = session.poll_transmit() {
            // A reply means a command was complete: its timer starts over.
            command_started = tokio::time::Instant::now();
            // Flush too: a buffering or framing link must not sit on a
            // reply the client is waiting for.
            let write = tokio::time::timeout(settings.command_timeout, async {
                link.write_all(&out).await?;
                link.flush().await
            });
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    break Err(DriverError::Io {
                        op: "write",
                        source,
                    })
                }
                Err(_) => break Err(DriverError::Timeout(settings.command_timeout)),
            }
        }
        if session.wants_tls_upgrade() {
            // The 220 to STARTTLS is flushed; nothing the client sent after
            // STARTTLS has been read into the session.
            let Some(acceptor) = settings.tls.clone() else {
                break Err(DriverError::Tls(TransportError::tls(
                    info.link.peer.clone(),
                    "STARTTLS accepted without a TLS configuration",
                )));
            };
            let handshake = settings.command_timeout * scale;
            match tokio::time::timeout(handshake, acceptor.accept(link)).await {
                Ok(Ok(upgraded)) => {
                    link = upgraded;
                    info.link = link.info().clone();
                    info.helo.clear();
                    info.esmtp = false;
                    if let Some(tls) = &link.info().tls {
                        info!(version = %tls.version, cipher = %tls.cipher, "TLS started");
                        session.handle_tls_established(engine_tls_info(tls));
                    }
                    command_started = tokio::time::Instant::now();
                    continue;
                }
                Ok(Err(e)) => {
                    // The link is in an unknown state: drop it (no reply
                    // can be sent in plaintext or in TLS).
                    warn!(error = %e, "TLS handshake failed");
                    return Err(DriverError::Tls(e));
                }
                Err(_) => return Err(DriverError::Timeout(handshake)),
            }
        }
        if session.is_closed() {
            if state.close == Some(CloseReason::Turned) {
                // The 250 is out; the link now carries a session the other
                // way, run by the handler.
                info!("TURN accepted; roles swapped");
                handler.turned(&info, link).await;
                return Ok(SessionSummary {
                    id,
                    messages: state.messages,
                    close: state.close,
                });
            }
            let _ = link.shutdown().await;
            break Ok(());
        }
        if draining && !session.is_receiving_data() {
            session.shutdown();
            continue;
        }
        let timeout = match session.timeout_kind() {
            // The whole command must arrive in time, not each byte of it:
            // otherwise one byte a minute keeps a session (and its file
            // descriptor) forever.
            ServerTimeout::Command => {
                (settings.command_timeout * scale).saturating_sub(command_started.elapsed())
            }
            // Between reads while receiving a message (RFC 5321 4.5.3.2.7).
            ServerTimeout::Data => settings.data_timeout * scale,
        };
        tokio::select! {
            read = tokio::time::timeout(timeout, link.read(&mut buf)) => match read {
                Ok(Ok(0)) => {
                    debug!("peer closed the link");
                    break Ok(());
                }
                Ok(Ok(n)) => session.handle_input(&buf[..n]),
                Ok(Err(source)) => break Err(DriverError::Io { op: "read", source }),
                Err(_) => {
                    debug!(?timeout, "peer timed out");
                    session.handle_timeout();
                }
            },
            _ = shutdown.graceful.cancelled(), if !draining => {
                draining = true;
            }
            _ = shutdown.force.cancelled() => {
                // RFC 5321 3.8: say 421 before closing, even mid-DATA.
                session.shutdown();
            }
        }
    };
    if state.in_message {
        // Link cut or session closed mid-DATA: nothing partial is kept.
        handler.abort().await;
    }
    match &result {
        Ok(()) => info!(messages = state.messages, "session closed"),
        Err(e) => warn!(error = %e, messages = state.messages, "session ended"),
    }
    result.map(|()| SessionSummary {
        id,
        messages: state.messages,
        close: state.close,
    })
}

fn engine_tls_info(tls: &TlsSessionInfo) -> TlsInfo {
    TlsInfo::new(tls.version.clone(), tls.cipher.clone())
}

struct DriveState {
    messages: u64,
    close: Option<CloseReason>,
    data_error: Option<Reply>,
    in_message: bool,
}

/// Hands every pending event to the handler and answers decisions.
async fn handle_events(
    session: &mut ServerSession,
    handler: &mut dyn SessionHandler,
    info: &mut SessionInfo,
    state: &mut DriveState,
) {
    while let Some(event) = session.poll_event() {
        let answer = match event {
            ServerEvent::Greeted { name, esmtp } => {
                info.helo = name;
                info.esmtp = esmtp;
                handler.greeted(info).await;
                None
            }
            ServerEvent::MailFrom { from, params } => {
                Some(handler.mail(info, &from, &params).await.map(|()| None))
            }
            ServerEvent::RcptTo { to, params } => {
                Some(handler.rcpt(info, &to, &params).await.map(|()| None))
            }
            ServerEvent::DataStart => {
                state.in_message = true;
                state.data_error = handler.data_start(info).await.err();
                None
            }
            ServerEvent::DataChunk(chunk) => {
                if state.data_error.is_none() {
                    state.data_error = handler.data_chunk(chunk).await.err();
                }
                None
            }
            ServerEvent::DataEnd { size } => {
                state.in_message = false;
                let result = match state.data_error.take() {
                    Some(reply) => {
                        handler.abort().await;
                        Err(reply)
                    }
                    None => handler.data_end(info).await.map(Some),
                };
                if result.is_ok() {
                    state.messages += 1;
                    info!(size, "message accepted");
                }
                Some(result)
            }
            ServerEvent::DataAborted { fault } => {
                debug!(?fault, "message refused");
                state.in_message = false;
                handler.abort().await;
                None
            }
            ServerEvent::TransactionReset => {
                handler.reset().await;
                None
            }
            ServerEvent::Turn => {
                if handler.turn_allowed(info).await {
                    Some(Ok(Some("OK, turning around".to_string())))
                } else {
                    Some(Err(Reply::new(
                        smtplink_engine::ReplyCode::NOT_IMPLEMENTED,
                        smtplink_engine::EnhancedCode::new(5, 5, 1),
                        "TURN is not allowed on this link",
                    )))
                }
            }
            ServerEvent::StartTls => {
                // A transaction cannot be open (the engine refuses
                // STARTTLS inside one); the handshake follows the flush.
                debug!("STARTTLS accepted");
                None
            }
            // AUTH is not wired to a credential store yet: a session whose
            // config names mechanisms gets 454 for every lookup.
            ServerEvent::AuthLookup { .. } => Some(Err(Reply::new(
                smtplink_engine::ReplyCode::AUTH_TEMPORARY_FAILURE,
                smtplink_engine::EnhancedCode::new(4, 7, 0),
                "Temporary authentication failure",
            ))),
            ServerEvent::Authenticated { .. } | ServerEvent::AuthFailed { .. } => None,
            ServerEvent::Closed { reason } => {
                debug!(?reason, "engine closed the session");
                state.close = Some(reason);
                None
            }
        };
        let outcome = match answer {
            None => Ok(()),
            Some(Ok(None)) => session.accept(),
            Some(Ok(Some(text))) => session.accept_with(&text),
            Some(Err(reply)) => session.reject(reply),
        };
        if let Err(misuse) = outcome {
            // A handler answered with a 2xx/3xx "rejection": a bug in the
            // handler. Fail safe with a temporary error.
            warn!(%misuse, "handler gave an illegal answer");
            let _ = session.reject(Reply::new(
                smtplink_engine::ReplyCode::LOCAL_ERROR,
                smtplink_engine::EnhancedCode::new(4, 3, 0),
                "Local error in processing",
            ));
        }
    }
}

/// Accepts sessions from listeners and runs each in its own task.
pub struct Server {
    settings: Arc<ServerSettings>,
    backend: Arc<dyn Backend>,
    shutdown: Shutdown,
}

impl Server {
    /// A server with these settings and this backend.
    pub fn new(settings: ServerSettings, backend: Arc<dyn Backend>) -> Self {
        Self::with_shared_settings(Arc::new(settings), backend)
    }

    /// A server whose settings are shared with others (e.g. a relay that
    /// serves sessions after TURN with the same setup).
    pub fn with_shared_settings(settings: Arc<ServerSettings>, backend: Arc<dyn Backend>) -> Self {
        Self {
            settings,
            backend,
            shutdown: Shutdown::new(),
        }
    }

    /// The tokens that stop the server: cancel `graceful` to stop
    /// accepting and drain, then `force` to close what is left.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Accepts on every listener until shutdown, then waits for the
    /// sessions in flight (each finishes the message it is receiving).
    ///
    /// A listener whose `accept` returns [`TransportError::Exhausted`] is
    /// done; once every listener is, `run` waits for the sessions and
    /// returns without a shutdown (`stdio:` serves one session this way).
    pub async fn run(&self, listeners: Vec<Box<dyn Listener>>) {
        let mut sessions = JoinSet::new();
        let mut acceptors = JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Link>(64);
        for mut listener in listeners {
            let tx = tx.clone();
            let shutdown = self.shutdown.graceful.clone();
            acceptors.spawn(async move {
                let local = listener.local_endpoint();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(link) => {
                                if tx.send(link).await.is_err() {
                                    return;
                                }
                            }
                            Err(TransportError::Exhausted { .. }) => {
                                debug!(listener = %local, "listener has no more links");
                                return;
                            }
                            Err(e) => {
                                warn!(listener = %local, error = %e, "accept failed");
                                // Do not spin on a persistent error (e.g. EMFILE).
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            });
        }
        drop(tx);
        let mut per_peer: HashMap<String, usize> = HashMap::new();
        loop {
            tokio::select! {
                link = rx.recv() => match link {
                    Some(link) => self.start_session(link, &mut sessions, &mut per_peer).await,
                    None => break,
                },
                _ = self.shutdown.graceful.cancelled() => break,
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    release(&mut per_peer, done);
                }
            }
        }
        acceptors.shutdown().await;
        // (Not worth saying when the listeners ran out, e.g. after stdio:.)
        if !sessions.is_empty() && self.shutdown.graceful.is_cancelled() {
            info!(sessions = sessions.len(), "waiting for sessions in flight");
        }
        while sessions.join_next().await.is_some() {}
    }

    /// Runs a session for `link`, unless a session limit is reached: then
    /// the client is told 421 and the link closed.
    async fn start_session(
        &self,
        mut link: Link,
        sessions: &mut JoinSet<String>,
        per_peer: &mut HashMap<String, usize>,
    ) {
        let peer = peer_key(&link);
        let from_peer = per_peer.get(&peer).copied().unwrap_or(0);
        let refusal = if sessions.len() >= self.settings.max_sessions {
            Some("Too many sessions, try again later")
        } else if from_peer >= self.settings.max_sessions_per_peer {
            Some("Too many sessions from your address, try again later")
        } else {
            None
        };
        if let Some(text) = refusal {
            warn!(peer = %link.info().peer, text, "session refused");
            let reply = Reply::new(
                smtplink_engine::ReplyCode::SERVICE_NOT_AVAILABLE,
                smtplink_engine::EnhancedCode::new(4, 7, 0),
                format!("{} {text}", self.settings.engine.hostname),
            );
            // Do not let a client that does not read hold up the accept loop.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = link.write_all(&reply.to_bytes()).await;
                let _ = link.shutdown().await;
            })
            .await;
            return;
        }
        *per_peer.entry(peer.clone()).or_insert(0) += 1;
        let settings = self.settings.clone();
        let backend = self.backend.clone();
        let shutdown = self.shutdown.clone();
        sessions.spawn(async move {
            let _ = serve_link(link, settings, backend, shutdown).await;
            peer
        });
    }
}

/// Sessions are counted per IP address (per label for links without one).
fn peer_key(link: &Link) -> String {
    let info = link.info();
    info.peer_ip
        .map_or_else(|| info.peer.clone(), |ip| ip.to_string())
}

fn release(per_peer: &mut HashMap<String, usize>, done: Result<String, tokio::task::JoinError>) {
    if let Ok(peer) = done {
        if let Some(n) = per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&peer);
            }
        }
    }
}
