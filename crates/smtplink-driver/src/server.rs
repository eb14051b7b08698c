//! The server driver: runs a [`ServerSession`] over a [`Link`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtplink_engine::{
    AuthFailure, CloseReason, CredentialLookup, EnhancedCode, Mechanism, Reply, ReplyCode,
    ReversePath, ServerConfig, ServerEvent, ServerSession, ServerTimeout, TlsInfo,
};
use smtplink_transport::{Link, Listener, TlsAccept, TlsSessionInfo, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::backend::{Backend, RelayPolicy, SessionHandler, SessionInfo, UserStore};
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
    /// AUTH (RFC 4954): where the users are and how failures are slowed
    /// down. `None`: AUTH is not offered.
    pub auth: Option<AuthSettings>,
    /// The settings of the listener sessions come in on;
    /// [`Server::run_listeners`] gives each listener its own.
    pub listener: ListenerSettings,
}

/// What differs from one listener to the next: whom it relays for, whether
/// it wants AUTH, and its limits.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Whom this listener relays for (RFC 5321 7.1); handed to the backend
    /// in [`SessionInfo::relay_policy`]. `None` (the default): chosen from
    /// the listener's endpoint by [`RelayPolicy::default_for`] (trusted on
    /// loopback, local-only elsewhere); [`serve_link`] without a listener
    /// takes local-only.
    pub relay_policy: Option<RelayPolicy>,
    /// MAIL before a successful AUTH gets `530 5.7.0 Authentication
    /// required` (a submission port, RFC 6409 4.3).
    pub require_auth: bool,
    /// Offer PLAIN and LOGIN without TLS: only for a listener no one can
    /// listen in on (loopback, a private serial line).
    pub auth_plaintext: bool,
    /// Most sessions at once on this listener; more are told 421.
    pub max_sessions: usize,
    /// Most sessions at once from one peer address on this listener.
    pub max_sessions_per_peer: usize,
    /// Most commands outside a transaction before an accepted MAIL; then
    /// 421 4.7.0 and the session closes. 0: no limit.
    pub max_commands_before_mail: usize,
    /// Least average rate, in bytes per second, at which message data must
    /// arrive over each [`data_rate_window`](Self::data_rate_window)
    /// (divided by the link's timeout scale for slow lines); a slower
    /// client gets 421 4.4.2 and is dropped, its message not stored. 0: no
    /// minimum.
    pub min_data_rate: u64,
    /// The window over which [`min_data_rate`](Self::min_data_rate) is
    /// averaged.
    pub data_rate_window: Duration,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            relay_policy: None,
            require_auth: false,
            auth_plaintext: false,
            max_sessions: 200,
            max_sessions_per_peer: 20,
            max_commands_before_mail: 50,
            min_data_rate: 100,
            data_rate_window: Duration::from_secs(30),
        }
    }
}

/// AUTH for the server: the users, the mechanisms, and how failed attempts
/// are slowed down and counted per peer address.
#[derive(Clone)]
pub struct AuthSettings {
    /// The users and their senders.
    pub users: Arc<dyn UserStore>,
    /// Mechanisms to offer, in this order (PLAIN and LOGIN only inside TLS
    /// or on a listener with [`ListenerSettings::auth_plaintext`]).
    pub mechanisms: Vec<Mechanism>,
    /// Wait before answering a failed attempt with 535; the n-th failure
    /// of a session waits n times as long, up to
    /// [`failure_delay_max`](Self::failure_delay_max).
    pub failure_delay: Duration,
    /// The longest wait before a 535.
    pub failure_delay_max: Duration,
    /// Failed attempts from one peer address within
    /// [`failure_window`](Self::failure_window) after which further AUTH
    /// gets `454 4.7.0` until the window has moved on.
    pub max_failures: usize,
    /// See [`max_failures`](Self::max_failures).
    pub failure_window: Duration,
    failures: Arc<FailureLog>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mechanisms", &self.mechanisms)
            .field("failure_delay", &self.failure_delay)
            .field("failure_delay_max", &self.failure_delay_max)
            .field("max_failures", &self.max_failures)
            .field("failure_window", &self.failure_window)
            .finish_non_exhaustive()
    }
}

impl AuthSettings {
    /// AUTH with these users and the defaults: SCRAM-SHA-256, PLAIN and
    /// LOGIN; 1 s before a 535, growing to 5 s; after 5 failures from one
    /// address within 15 minutes, 454 until they age out.
    pub fn new(users: Arc<dyn UserStore>) -> Self {
        Self {
            users,
            mechanisms: Mechanism::ALL.to_vec(),
            failure_delay: Duration::from_secs(1),
            failure_delay_max: Duration::from_secs(5),
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
            failures: Arc::new(FailureLog::default()),
        }
    }

    /// The wait before the 535 for the `n`-th failure of a session.
    fn delay(&self, n: u32) -> Duration {
        self.failure_delay
            .saturating_mul(n.max(1))
            .min(self.failure_delay_max.max(self.failure_delay))
    }
}

/// Recent AUTH failures per peer address, shared by every session (and
/// every listener) of a server.
#[derive(Default)]
struct FailureLog {
    peers: Mutex<HashMap<String, VecDeque<tokio::time::Instant>>>,
}

impl FailureLog {
    /// Checks `peer` and, unless it is blocked, counts this attempt as a
    /// failure at once (under the same lock): parallel sessions from one
    /// address cannot all pass the check before any failure is recorded.
    /// A success takes it back ([`forgive`](Self::forgive)).
    fn blocked_or_reserve(&self, peer: &str, max: usize, window: Duration) -> bool {
        if self.blocked(peer, max, window) {
            return true;
        }
        self.record(peer, window);
        false
    }

    /// The attempt counted by `blocked_or_reserve` succeeded.
    fn forgive(&self, peer: &str) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        if let Some(times) = peers.get_mut(peer) {
            times.pop_back();
            if times.is_empty() {
                peers.remove(peer);
            }
        }
    }

    /// Forgets failures older than `window`; true when `peer` still has
    /// `max` or more.
    fn blocked(&self, peer: &str, max: usize, window: Duration) -> bool {
        let Ok(mut peers) = self.peers.lock() else {
            return false;
        };
        let now = tokio::time::Instant::now();
        let recent = peers.get_mut(peer).map_or(0, |times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                times.pop_front();
            }
            times.len()
        });
        if recent == 0 {
            peers.remove(peer);
        }
        max > 0 && recent >= max
    }

    fn record(&self, peer: &str, window: Duration) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        let now = tokio::time::Instant::now();
        // Keep the map small: drop peers whose failures all aged out.
        if peers.len() > 10_000 {
            peers.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= window)
            });
        }
        peers.entry(peer.to_string()).or_default().push_back(now);
    }
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
            auth: None,
            listener: ListenerSettings::default(),
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
        auth_user: None,
        encrypted: link.info().tls.is_some(),
        relay_policy: settings.listener.relay_policy.unwrap_or_default(),
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
    engine.auth_mechanisms = settings
        .auth
        .as_ref()
        .map(|a| a.mechanisms.clone())
        .unwrap_or_default();
    engine.auth_plaintext_trusted = settings.listener.auth_plaintext;
    engine.max_commands_before_mail = settings.listener.max_commands_before_mail;
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
        peer: peer_key(&link),
        auth_failures: 0,
        auth_work: None,
    };
    // Bytes of message data received in the current min_data_rate window.
    let mut rate: Option<(tokio::time::Instant, u64)> = None;
    let mut buf = vec![0u8; settings.read_buffer.max(512)];
    let mut draining = false;
    let mut command_started = tokio::time::Instant::now();
    // A slow link (a serial line) stretches every timer.
    let scale = info.link.timeout_scale.max(1);
    let result = loop {
        handle_events(
            &mut session,
            handler.as_mut(),
            &mut info,
            &mut state,
            &settings,
        )
        .await;
        if let Some((lookup, nonce)) = state.auth_work.take() {
            // For PLAIN and LOGIN this runs PBKDF2 (100,000 rounds by
            // default): not on the async threads.
            let answered = tokio::task::spawn_blocking(move || {
                let result = session.answer_auth_lookup(lookup, &nonce);
                (session, result)
            })
            .await;
            match answered {
                Ok((back, result)) => {
                    session = back;
                    if let Err(misuse) = result {
                        warn!(%misuse, "AUTH lookup answer refused");
                        let _ = session.reject(auth_unavailable());
                    }
                }
                Err(e) => break Err(DriverError::Internal(format!("AUTH check failed: {e}"))),
            }
            continue;
        }
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
                    info.encrypted = true;
                    // The engine forgets AUTH at the upgrade (RFC 3207 4.2).
                    info.auth_user = None;
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
        let min_rate = settings.listener.min_data_rate;
        let window = settings.listener.data_rate_window;
        if session.is_receiving_data() && min_rate > 0 && !window.is_zero() {
            rate.get_or_insert_with(|| (tokio::time::Instant::now(), 0));
        } else {
            rate = None;
        }
        let rate_deadline = rate.map(|(start, _)| start + window);
        tokio::select! {
            read = tokio::time::timeout(timeout, link.read(&mut buf)) => match read {
                Ok(Ok(0)) => {
                    debug!("peer closed the link");
                    break Ok(());
                }
                Ok(Ok(n)) => {
                    if let Some((_, bytes)) = &mut rate {
                        *bytes += n as u64;
                    }
                    session.handle_input(&buf[..n]);
                }
                Ok(Err(source)) => break Err(DriverError::Io { op: "read", source }),
                Err(_) => {
                    debug!(?timeout, "peer timed out");
                    session.handle_timeout();
                }
            },
            _ = sleep_until_opt(rate_deadline), if rate_deadline.is_some() => {
                let bytes = rate.map_or(0, |(_, b)| b);
                // A slow line (timeout scale) may be slower by as much.
                let needed = min_rate as f64 * window.as_secs_f64() / f64::from(scale);
                if (bytes as f64) < needed {
                    warn!(bytes, ?window, "message data arriving too slowly; dropping the session");
                    session.close_with_reply(Reply::new(
                        ReplyCode::SERVICE_NOT_AVAILABLE,
                        EnhancedCode::new(4, 4, 2),
                        format!(
                            "{} Data arriving too slowly, closing connection",
                            settings.engine.hostname
                        ),
                    ));
                } else {
                    rate = Some((tokio::time::Instant::now(), 0));
                }
            }
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// 454 4.7.0: AUTH cannot be checked now.
fn auth_unavailable() -> Reply {
    Reply::new(
        ReplyCode::AUTH_TEMPORARY_FAILURE,
        EnhancedCode::new(4, 7, 0),
        "Temporary authentication failure",
    )
}

fn engine_tls_info(tls: &TlsSessionInfo) -> TlsInfo {
    TlsInfo::new(tls.version.clone(), tls.cipher.clone())
}

struct DriveState {
    messages: u64,
    close: Option<CloseReason>,
    data_error: Option<Reply>,
    in_message: bool,
    /// The peer's address (the key of the AUTH failure log).
    peer: String,
    /// Failed AUTH attempts in this session.
    auth_failures: u32,
    /// A credential lookup to answer off the async threads, with its
    /// SCRAM server nonce.
    auth_work: Option<(CredentialLookup, String)>,
}

/// Hands every pending event to the handler and answers decisions.
async fn handle_events(
    session: &mut ServerSession,
    handler: &mut dyn SessionHandler,
    info: &mut SessionInfo,
    state: &mut DriveState,
    settings: &ServerSettings,
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
                Some(match mail_permission(info, &from, settings) {
                    Err(reply) => Err(reply),
                    Ok(()) => handler.mail(info, &from, &params).await.map(|()| None),
                })
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
            ServerEvent::AuthLookup {
                mechanism,
                username,
            } => match &settings.auth {
                None => Some(Err(auth_unavailable())),
                Some(auth)
                    if auth.failures.blocked_or_reserve(
                        &state.peer,
                        auth.max_failures,
                        auth.failure_window,
                    ) =>
                {
                    warn!(%mechanism, "AUTH refused: too many failures from this address");
                    Some(Err(Reply::new(
                        ReplyCode::AUTH_TEMPORARY_FAILURE,
                        EnhancedCode::new(4, 7, 0),
                        "Too many failed authentication attempts, try again later",
                    )))
                }
                Some(auth) => {
                    // SCRAM's server nonce (RFC 5802): 18 random bytes.
                    let mut random = [0u8; 18];
                    match getrandom::getrandom(&mut random) {
                        Ok(()) => {
                            let nonce = smtplink_engine::sasl::nonce_from_bytes(&random);
                            state.auth_work = Some((auth.users.lookup(&username), nonce));
                            // The session waits for this answer: nothing
                            // more comes out of it before.
                            return;
                        }
                        Err(e) => {
                            warn!(error = %e, "no random numbers for AUTH");
                            Some(Err(auth_unavailable()))
                        }
                    }
                }
            },
            ServerEvent::Authenticated {
                mechanism,
                username,
            } => {
                info!(%mechanism, user = %username, "authenticated");
                if let Some(auth) = &settings.auth {
                    auth.failures.forgive(&state.peer);
                }
                info.auth_user = Some(username);
                None
            }
            ServerEvent::AuthFailed {
                mechanism,
                username,
                reason,
            } => {
                match (&settings.auth, reason) {
                    (Some(auth), AuthFailure::BadCredentials) => {
                        // Already counted when the lookup began.
                        state.auth_failures += 1;
                        let delay = auth.delay(state.auth_failures);
                        warn!(
                            %mechanism,
                            user = username.as_deref().unwrap_or(""),
                            failures = state.auth_failures,
                            ?delay,
                            "authentication failed"
                        );
                        // The 535 is queued; it goes out after the wait.
                        tokio::time::sleep(delay).await;
                    }
                    _ => debug!(%mechanism, ?reason, "AUTH ended without success"),
                }
                None
            }
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

/// The driver's own checks of MAIL FROM, before the handler's: AUTH
/// required on this listener (530 5.7.0), and an authenticated user may
/// give only the senders the users file allows (553 5.7.1).
fn mail_permission(
    info: &SessionInfo,
    from: &ReversePath,
    settings: &ServerSettings,
) -> Result<(), Reply> {
    if settings.listener.require_auth && info.auth_user.is_none() {
        return Err(Reply::new(
            ReplyCode::AUTH_REQUIRED,
            EnhancedCode::new(5, 7, 0),
            "Authentication required",
        ));
    }
    if let (Some(user), Some(auth)) = (&info.auth_user, &settings.auth) {
        let address = from.to_string();
        if !auth.users.may_send_as(user, &address) {
            warn!(user = %user, sender = %address, "sender not allowed for this user");
            return Err(Reply::new(
                ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
                EnhancedCode::new(5, 7, 1),
                format!("<{address}>: Sender address not allowed for {user}"),
            ));
        }
    }
    Ok(())
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
    /// Every listener gets [`ServerSettings::listener`].
    ///
    /// A listener whose `accept` returns [`TransportError::Exhausted`] is
    /// done; once every listener is, `run` waits for the sessions and
    /// returns without a shutdown (`stdio:` serves one session this way).
    pub async fn run(&self, listeners: Vec<Box<dyn Listener>>) {
        let with_settings = listeners
            .into_iter()
            .map(|l| (l, self.settings.listener.clone()))
            .collect();
        self.run_listeners(with_settings).await;
    }

    /// As [`run`](Self::run), each listener with its own settings (relay
    /// policy, AUTH requirement, limits). [`ServerSettings::max_sessions`]
    /// and [`ServerSettings::max_sessions_per_peer`] still cap the total
    /// over all listeners.
    pub async fn run_listeners(&self, listeners: Vec<(Box<dyn Listener>, ListenerSettings)>) {
        let mut sessions = JoinSet::new();
        let mut acceptors = JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Link, usize)>(64);
        let mut per_listener = Vec::new();
        for (index, (mut listener, mut listener_settings)) in listeners.into_iter().enumerate() {
            let policy = *listener_settings
                .relay_policy
                .get_or_insert_with(|| RelayPolicy::default_for(&listener.local_endpoint()));
            debug!(listener = %listener.local_endpoint(), relay_policy = %policy, "listener ready");
            per_listener.push(Arc::new(ServerSettings {
                listener: listener_settings,
                ..(*self.settings).clone()
            }));
            let tx = tx.clone();
            let shutdown = self.shutdown.graceful.clone();
            acceptors.spawn(async move {
                let local = listener.local_endpoint();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(link) => {
                                if tx.send((link, index)).await.is_err() {
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
        let mut counts = SessionCounts::default();
        loop {
            tokio::select! {
                link = rx.recv() => match link {
                    Some((link, index)) => {
                        let settings = per_listener[index].clone();
                        self.start_session(link, index, settings, &mut sessions, &mut counts).await;
                    }
                    None => break,
                },
                _ = self.shutdown.graceful.cancelled() => break,
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    counts.release(done);
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
        index: usize,
        settings: Arc<ServerSettings>,
        sessions: &mut JoinSet<(usize, String)>,
        counts: &mut SessionCounts,
    ) {
        let peer = peer_key(&link);
        let listener = &settings.listener;
        let on_listener = counts.listener.get(&index).copied().unwrap_or(0);
        let from_peer = counts.peer.get(&peer).copied().unwrap_or(0);
        let from_peer_here = counts
            .listener_peer
            .get(&(index, peer.clone()))
            .copied()
            .unwrap_or(0);
        let refusal = if sessions.len() >= self.settings.max_sessions
            || on_listener >= listener.max_sessions
        {
            Some("Too many sessions, try again later")
        } else if from_peer >= self.settings.max_sessions_per_peer
            || from_peer_here >= listener.max_sessions_per_peer
        {
            Some("Too many sessions from your address, try again later")
        } else {
            None
        };
        if let Some(text) = refusal {
            warn!(peer = %link.info().peer, text, "session refused");
            let reply = Reply::new(
                ReplyCode::SERVICE_NOT_AVAILABLE,
                EnhancedCode::new(4, 7, 0),
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
        counts.add(index, &peer);
        let backend = self.backend.clone();
        let shutdown = self.shutdown.clone();
        sessions.spawn(async move {
            let _ = serve_link(link, settings, backend, shutdown).await;
            (index, peer)
        });
    }
}

/// Sessions running, per listener, per peer, and per both.
#[derive(Default)]
struct SessionCounts {
    listener: HashMap<usize, usize>,
    peer: HashMap<String, usize>,
    listener_peer: HashMap<(usize, String), usize>,
}

impl SessionCounts {
    fn add(&mut self, index: usize, peer: &str) {
        *self.listener.entry(index).or_insert(0) += 1;
        *self.peer.entry(peer.to_string()).or_insert(0) += 1;
        *self
            .listener_peer
            .entry((index, peer.to_string()))
            .or_insert(0) += 1;
    }

    fn release(&mut self, done: Result<(usize, String), tokio::task::JoinError>) {
        let Ok((index, peer)) = done else {
            return;
        };
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        down(&mut self.listener, index);
        down(&mut self.peer, peer.clone());
        down(&mut self.listener_peer, (index, peer));
    }
}

/// Sessions are counted per IP address (per label for links without one).
fn peer_key(link: &Link) -> String {
    let info = link.info();
    info.peer_ip.map_or_else(
        || info.peer.clone(),
        |ip| match ip {
            // One IPv6 site usually holds a whole /64: count it as one
            // peer, or an attacker rotating addresses in it escapes every
            // per-peer limit.
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            other => other.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Ten attempts from one address whose lookups all start before any of
    /// them has failed (parallel sessions): only `max` get through.
    #[tokio::test]
    async fn parallel_attempts_cannot_outrun_the_failure_limit() {
        let log = FailureLog::default();
        let window = Duration::from_secs(900);
        let passed = (0..10)
            .filter(|_| !log.blocked_or_reserve("192.0.2.1", 5, window))
            .count();
        assert_eq!(passed, 5);
        // A success gives its attempt back; another address is unaffected.
        log.forgive("192.0.2.1");
        assert!(!log.blocked_or_reserve("192.0.2.1", 5, window));
        assert!(!log.blocked_or_reserve("192.0.2.2", 5, window));
    }
}
