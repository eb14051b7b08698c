//! The client driver: runs a [`ClientSession`] over a [`Link`].

use std::sync::Arc;
use std::time::Duration;

use smtplink_engine::{
    AuthError, AuthStartError, Capabilities, ClientConfig, ClientError, ClientEvent, ClientSession,
    ClientTimeout, Credentials, Envelope, Mechanism, TlsInfo, TlsPolicy, TransactionReport,
};
use smtplink_transport::{Link, LinkInfo, TlsConnect, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info_span, Instrument, Span};

use crate::error::DriverError;

/// The client timers of RFC 5321 4.5.3.2, each a setting.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// 4.5.3.2.1 initial 220: 5 minutes.
    pub greeting: Duration,
    /// 4.5.3.2.2 MAIL (and EHLO, RSET, QUIT): 5 minutes.
    pub mail: Duration,
    /// 4.5.3.2.3 RCPT: 5 minutes.
    pub rcpt: Duration,
    /// 4.5.3.2.4 DATA initiation: 2 minutes.
    pub data_init: Duration,
    /// 4.5.3.2.5 each data block written: 3 minutes.
    pub data_block: Duration,
    /// 4.5.3.2.6 reply to the end of data: 10 minutes.
    pub data_termination: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            greeting: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_termination: Duration::from_secs(600),
        }
    }
}

impl ClientTimeouts {
    fn for_kind(&self, kind: ClientTimeout) -> Duration {
        match kind {
            ClientTimeout::Greeting => self.greeting,
            ClientTimeout::Mail => self.mail,
            ClientTimeout::Rcpt => self.rcpt,
            ClientTimeout::DataInit => self.data_init,
            ClientTimeout::DataTermination => self.data_termination,
        }
    }
}

/// Settings of the client driver.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// The engine's settings (EHLO name, pipelining).
    pub engine: ClientConfig,
    /// Timers.
    pub timeouts: ClientTimeouts,
    /// The client side of TLS (trust roots or a pin, and the name to
    /// check), used when the engine's [`ClientConfig::tls`] policy starts
    /// STARTTLS. Without it the policy is treated as
    /// [`TlsPolicy::None`], except that [`TlsPolicy::Required`] fails.
    pub tls: Option<Arc<dyn TlsConnect>>,
    /// AUTH (RFC 4954) right after the EHLO (after STARTTLS: the one inside
    /// TLS); `None`: no AUTH.
    pub auth: Option<ClientAuth>,
}

/// What the client authenticates with, and where plaintext passwords may go.
///
/// The engine picks the strongest mechanism offered: SCRAM-SHA-256 on any
/// link, PLAIN or LOGIN only over TLS or on a link marked trusted. The
/// password is never logged (`Debug` shows the user name only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// User name and password.
    pub credentials: Credentials,
    /// The link itself is private (a serial line between two known sites),
    /// so PLAIN and LOGIN may be used without TLS.
    pub trusted_link: bool,
}

/// Random bytes in a SCRAM client nonce (RFC 5802 5.1 asks for a nonce that
/// is hard to predict; 18 bytes give 24 base64 characters, 144 bits).
const NONCE_BYTES: usize = 18;

/// Bytes written to the link per call while sending a body, so the
/// data-block timer of RFC 5321 4.5.3.2.5 applies per block.
const WRITE_BLOCK: usize = 64 * 1024;

/// The answer to [`SmtpClient::turn`].
pub enum Turned {
    /// The server said 250: the link now carries a session the other way
    /// (run a server session on it).
    Link(Link),
    /// The server refused; the client session goes on.
    Refused(Box<SmtpClient>, smtplink_engine::Reply),
}

/// An SMTP client session over a link: connect, send messages, quit.
pub struct SmtpClient {
    link: Link,
    session: ClientSession,
    settings: ClientSettings,
    buf: Vec<u8>,
    span: Span,
}

impl SmtpClient {
    /// Reads the greeting and does EHLO (or HELO); returns once messages
    /// can be sent.
    pub async fn handshake(link: Link, settings: ClientSettings) -> Result<Self, DriverError> {
        let mut engine = settings.engine.clone();
        if settings.tls.is_none() && link.info().tls.is_none() {
            match engine.tls {
                TlsPolicy::Required => {
                    return Err(DriverError::Tls(TransportError::tls(
                        link.info().peer.clone(),
                        "TLS required but no TLS client is configured",
                    )))
                }
                _ => engine.tls = TlsPolicy::None,
            }
        }
        let mut session = ClientSession::new(engine);
        if let Some(tls) = &link.info().tls {
            // Implicit TLS (RFC 8314): encrypted before the greeting.
            session.handle_tls_established(TlsInfo::new(tls.version.clone(), tls.cipher.clone()));
        }
        let span = info_span!(
            "session",
            role = "client",
            transport = link.info().kind,
            peer = %link.info().peer
        );
        let mut client = Self {
            link,
            session,
            settings,
            buf: vec![0u8; 16 * 1024],
            span,
        };
        while !matches!(client.next_event().await?, ClientEvent::Ready(_)) {}
        if let Some(auth) = client.settings.auth.clone() {
            if let Err(e) = client.authenticate(&auth).await {
                // Say QUIT politely when the session still stands; the
                // authentication failure is what the caller hears about.
                if !client.session.is_closed() && matches!(e, DriverError::Auth(_)) {
                    let _ = client.quit().await;
                }
                return Err(e);
            }
        }
        Ok(client)
    }

    /// AUTH with the configured credentials (RFC 4954). PLAIN and LOGIN
    /// only over TLS or a trusted link; the SCRAM nonce comes from the
    /// operating system's secure random source.
    async fn authenticate(&mut self, auth: &ClientAuth) -> Result<Mechanism, DriverError> {
        let plaintext_allowed = self.session.tls().is_some() || auth.trusted_link;
        let mut random = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut random).map_err(|e| DriverError::Io {
            op: "random",
            source: std::io::Error::other(e.to_string()),
        })?;
        let nonce = smtplink_engine::sasl::nonce_from_bytes(&random);
        let chosen = match self
            .session
            .authenticate(&auth.credentials, plaintext_allowed, &nonce)
        {
            Ok(m) => m,
            Err(AuthStartError::Auth(e)) => {
                self.span
                    .in_scope(|| debug!(error = %e, "not authenticating"));
                return Err(DriverError::Auth(e));
            }
            Err(AuthStartError::Api(e)) => {
                return Err(DriverError::Send(smtplink_engine::SendError::Api(e)))
            }
            Err(e) => {
                return Err(DriverError::Auth(AuthError::Rejected(
                    smtplink_engine::Reply::new(
                        smtplink_engine::ReplyCode::LOCAL_ERROR,
                        None,
                        e.to_string(),
                    ),
                )))
            }
        };
        // The user name only; never the password or a SASL payload.
        self.span
            .in_scope(|| debug!(mechanism = %chosen, user = %auth.credentials.username, "AUTH"));
        loop {
            if let ClientEvent::Authenticated(result) = self.next_event().await? {
                return match result {
                    Ok(m) => {
                        self.span
                            .in_scope(|| debug!(mechanism = %m, "authenticated"));
                        Ok(m)
                    }
                    Err(e) => {
                        self.span
                            .in_scope(|| debug!(error = %e, "authentication failed"));
                        Err(DriverError::Auth(e))
                    }
                };
            }
        }
    }

    /// What the server offered (after STARTTLS: what it offered inside TLS).
    pub fn capabilities(&self) -> &Capabilities {
        self.session.capabilities()
    }

    /// The TLS session, when the link is encrypted.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.session.tls()
    }

    /// What is known about the link (after STARTTLS, the encrypted one).
    pub fn link_info(&self) -> &LinkInfo {
        self.link.info()
    }

    /// Runs the client TLS handshake after the server's 220 to STARTTLS.
    async fn start_tls(&mut self) -> Result<(), DriverError> {
        let Some(connector) = self.settings.tls.clone() else {
            return Err(DriverError::Tls(TransportError::tls(
                self.link.info().peer.clone(),
                "STARTTLS without a TLS client configuration",
            )));
        };
        let placeholder = Link::new(tokio::io::duplex(1).0, self.link.info().clone());
        let link = std::mem::replace(&mut self.link, placeholder);
        let timeout = self.settings.timeouts.mail * link.info().timeout_scale.max(1);
        let link = match tokio::time::timeout(timeout, connector.connect(link)).await {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return Err(DriverError::Tls(e));
            }
            Err(_) => return Err(DriverError::Timeout(timeout)),
        };
        let info = link
            .info()
            .tls
            .as_ref()
            .map(|t| TlsInfo::new(t.version.clone(), t.cipher.clone()))
            .unwrap_or_default();
        debug!(version = %info.version, cipher = %info.cipher, "TLS started");
        self.link = link;
        self.session.handle_tls_established(info);
        Ok(())
    }

    /// Sends one message; `body` must use CRLF line endings.
    ///
    /// `Ok` carries the outcome per recipient, whatever the server said. An
    /// `Err` means the message was not sent at all ([`DriverError::Send`])
    /// or the session broke; the session cannot be used after the latter.
    pub async fn send(
        &mut self,
        envelope: Envelope,
        body: &[u8],
    ) -> Result<TransactionReport, DriverError> {
        self.session.send(envelope, body)?;
        loop {
            if let ClientEvent::Sent(report) = self.next_event().await? {
                return Ok(report);
            }
        }
    }

    /// Says QUIT and closes the link.
    pub async fn quit(mut self) -> Result<(), DriverError> {
        self.session.quit();
        let result = loop {
            match self.next_event().await {
                Ok(ClientEvent::Closed) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        let _ = self.link.shutdown().await;
        result
    }

    /// Asks the server to swap roles (TURN, RFC 821 4.1.1).
    pub async fn turn(mut self) -> Result<Turned, DriverError> {
        self.session
            .turn()
            .map_err(|e| DriverError::Send(smtplink_engine::SendError::Api(e)))?;
        loop {
            match self.next_event().await {
                Ok(ClientEvent::Turn(Ok(()))) => return Ok(Turned::Link(self.link)),
                Ok(ClientEvent::Turn(Err(reply))) => {
                    return Ok(Turned::Refused(Box::new(self), reply))
                }
                // The session closed itself once TURN succeeded; the Turn
                // event comes first, so a Closed here is a failure.
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event, inside the session's span.
    async fn next_event(&mut self) -> Result<ClientEvent, DriverError> {
        let span = self.span.clone();
        async {
            loop {
                if let Some(event) = self.step().await? {
                    return Ok(event);
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Flushes output, then returns the next event, reading when none is
    /// ready. A session error is returned as `Err`.
    async fn step(&mut self) -> Result<Option<ClientEvent>, DriverError> {
        while let Some(out) = self.session.poll_transmit() {
            for block in out.chunks(WRITE_BLOCK) {
                let timeout =
                    self.settings.timeouts.data_block * self.link.info().timeout_scale.max(1);
                match tokio::time::timeout(timeout, self.link.write_all(block)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(source)) => {
                        return Err(DriverError::Io {
                            op: "write",
                            source,
                        })
                    }
                    Err(_) => return Err(DriverError::Timeout(timeout)),
                }
            }
            self.link.flush().await.map_err(|source| DriverError::Io {
                op: "write",
                source,
            })?;
        }
        if let Some(event) = self.session.poll_event() {
            if event == ClientEvent::StartTls {
                self.start_tls().await?;
                return Ok(None);
            }
            if let (ClientEvent::Closed, Some(e)) = (&event, self.session.error()) {
                return Err(DriverError::Client(e.clone()));
            }
            return Ok(Some(event));
        }
        if self.session.is_closed() {
            return Err(DriverError::Client(
                self.session
                    .error()
                    .cloned()
                    .unwrap_or(ClientError::Unexpected(smtplink_engine::Reply::new(
                        smtplink_engine::ReplyCode::SERVICE_NOT_AVAILABLE,
                        None,
                        "session closed",
                    ))),
            ));
        }
        let Some(kind) = self.session.timeout_kind() else {
            return Ok(None);
        };
        // A slow link (a serial line) stretches every timer.
        let timeout = self.settings.timeouts.for_kind(kind) * self.link.info().timeout_scale.max(1);
        match tokio::time::timeout(timeout, self.link.read(&mut self.buf)).await {
            Ok(Ok(0)) => {
                debug!("server closed the link");
                self.session.handle_eof();
            }
            Ok(Ok(n)) => self.session.handle_input(&self.buf[..n]),
            Ok(Err(source)) => return Err(DriverError::Io { op: "read", source }),
            Err(_) => self.session.handle_timeout(),
        }
        Ok(None)
    }
}
