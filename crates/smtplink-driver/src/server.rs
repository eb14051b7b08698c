//! The server driver: runs a [`ServerSession`] over a [`Link`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smtplink_engine::{
    CloseReason, Reply, ServerConfig, ServerEvent, ServerSession, ServerTimeout,
};
use smtplink_transport::{Link, Listener};
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
    /// How long to wait for the next command. RFC 5321 4.5.3.2.7 asks for
    /// at least 5 minutes.
    pub command_timeout: Duration,
    /// How long to wait for more message data. RFC 5321 4.5.3.2.7's
    /// server timeout applies here too.
    pub data_timeout: Duration,
    /// Bytes read from the link at a time.
    pub read_buffer: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            engine: ServerConfig::default(),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(5 * 60),
            read_buffer: 64 * 1024,
        }
    }
}

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A session id unique across restarts (it goes into Received: ids and
/// logs): the process start time in hex, then a counter.
fn next_session_id() -> String {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let n = SESSION_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{epoch:X}.{n}")
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
    shutdown: CancellationToken,
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
    shutdown: CancellationToken,
) -> Result<SessionSummary, DriverError> {
    let mut info = SessionInfo {
        id: id.clone(),
        link: link.info().clone(),
        helo: String::new(),
        esmtp: false,
    };
    info!("session opened");
    let mut handler = match backend.open(&info).await {
        Ok(h) => h,
        Err(reply) => {
            // RFC 5321 3.1: refuse with a 554 (or 421) greeting, then close.
            let _ = link.write_all(&reply.to_bytes()).await;
            let _ = link.shutdown().await;
            return Err(DriverError::Refused(reply));
        }
    };
    let mut session = ServerSession::new(settings.engine.clone());
    let mut state = DriveState {
        messages: 0,
        close: None,
        data_error: None,
        in_message: false,
    };
    let mut buf = vec![0u8; settings.read_buffer.max(512)];
    let mut draining = false;
    let result = loop {
        handle_events(&mut session, handler.as_mut(), &mut info, &mut state).await;
        if let Some(out) = session.poll_transmit() {
            let write = tokio::time::timeout(settings.command_timeout, link.write_all(&out));
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
        if session.is_closed() {
            let _ = link.shutdown().await;
            break Ok(());
        }
        if draining && !session.is_receiving_data() {
            session.shutdown();
            continue;
        }
        let timeout = match session.timeout_kind() {
            ServerTimeout::Command => settings.command_timeout,
            ServerTimeout::Data => settings.data_timeout,
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
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
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
    shutdown: CancellationToken,
}

impl Server {
    /// A server with these settings and this backend.
    pub fn new(settings: ServerSettings, backend: Arc<dyn Backend>) -> Self {
        Self {
            settings: Arc::new(settings),
            backend,
            shutdown: CancellationToken::new(),
        }
    }

    /// A token that, when cancelled, stops accepting and drains sessions.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Accepts on every listener until shutdown, then waits for the
    /// sessions in flight (each finishes the message it is receiving).
    pub async fn run(&self, listeners: Vec<Box<dyn Listener>>) {
        let mut sessions = JoinSet::new();
        let mut acceptors = JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Link>(64);
        for mut listener in listeners {
            let tx = tx.clone();
            let shutdown = self.shutdown.clone();
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
        loop {
            tokio::select! {
                link = rx.recv() => match link {
                    Some(link) => {
                        let settings = self.settings.clone();
                        let backend = self.backend.clone();
                        let shutdown = self.shutdown.clone();
                        sessions.spawn(serve_link(link, settings, backend, shutdown));
                    }
                    None => break,
                },
                _ = self.shutdown.cancelled() => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        acceptors.shutdown().await;
        if !sessions.is_empty() {
            info!(sessions = sessions.len(), "waiting for sessions in flight");
        }
        while sessions.join_next().await.is_some() {}
    }
}
