//! The client side of an SMTP session, as a sans-IO state machine.
//!
//! ```text
//!  [greeting] --220--> [EHLO] --250--> [ready] --send()--> [transaction] --+
//!                        | 5xx           ^  ^                              |
//!                        v               |  +------------------------------+
//!                      [HELO] --250------+          report per recipient
//!  [ready] --quit()--> [QUIT] --221--> [closed]
//!
//!  [EHLO] --250 with STARTTLS--> [STARTTLS] --220--> [upgrading]
//!      --handle_tls_established--> [EHLO] (again, encrypted)
//! ```
//!
//! STARTTLS (RFC 3207) follows [`ClientConfig::tls`]: with
//! [`TlsPolicy::Opportunistic`] (the default) it is used when offered; with
//! [`TlsPolicy::Required`] a server that does not offer it, or refuses it,
//! gets only QUIT and the session fails with the transient
//! [`ClientError::TlsRequired`], before any envelope or message is sent.
//!
//! With PIPELINING the client sends MAIL, every RCPT and DATA in one batch
//! (RFC 2920); otherwise it waits for each reply. It never sends a parameter
//! the server did not advertise, and refuses, before anything is sent, a
//! message it could not deliver faithfully (bare CR/LF, over-long lines,
//! 8-bit data without 8BITMIME, UTF-8 addresses without SMTPUTF8).
//!
//! AUTH (RFC 4954): [`ClientSession::authenticate`] between transactions
//! picks the strongest offered mechanism it may use (SCRAM-SHA-256, then
//! PLAIN, then LOGIN; the last two only where the caller says plaintext
//! passwords are safe) and reports with [`ClientEvent::Authenticated`]. A
//! SCRAM server that cannot prove it knows the credential fails the
//! session, even after a 235.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tracing::{debug, trace};

use crate::address::{ForwardPath, ReversePath};
use crate::command::Command;
use crate::data::dot_stuff;
use crate::error::{AddressError, ApiMisuse, MessageError, ReplyError};
use crate::params::{Body, MailParams, RcptParams};
use crate::reply::{Reply, ReplyCode, ReplyParser};
use crate::sasl::{self, ClientExchange, Credentials, Mechanism, SaslClientError};
use crate::tls::{TlsInfo, TlsPolicy};

/// Longest message line the client sends, CRLF included (RFC 5322 2.1.1:
/// 998 characters plus CRLF).
pub const MAX_TEXT_LINE: usize = 1000;

/// Settings of a client session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name we give in EHLO/HELO.
    pub hello_name: String,
    /// Use PIPELINING when the server offers it.
    pub pipelining: bool,
    /// When to start TLS with STARTTLS. The driver must be able to run a
    /// TLS handshake unless this is [`TlsPolicy::None`].
    pub tls: TlsPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            hello_name: "localhost".into(),
            pipelining: true,
            tls: TlsPolicy::default(),
        }
    }
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The session began with EHLO (else HELO, and nothing below is offered).
    pub esmtp: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH (RFC 4954): the mechanism names offered, upper-cased, in the
    /// server's order (including ones smtplink does not speak).
    pub auth: Vec<String>,
    /// Every keyword line as offered (upper-cased keyword, then its arguments).
    pub raw: Vec<String>,
}

impl Capabilities {
    /// Reads the lines of an EHLO reply after the first (the greeting line).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities {
            esmtp: true,
            ..Default::default()
        };
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            // smtp-sink ends its reply with an empty "250 " line: skip it.
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    for m in words.by_ref() {
                        let m = m.to_ascii_uppercase();
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
            caps.raw.push(line.trim().to_string());
        }
        caps
    }

    /// The mechanisms offered that smtplink speaks, strongest first.
    pub fn auth_mechanisms(&self) -> Vec<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .filter(|m| self.auth.iter().any(|a| a == m.name()))
            .collect()
    }
}

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM.
    pub from: ReversePath,
    /// RCPT TO, in order.
    pub to: Vec<ForwardPath>,
    /// DSN parameters for MAIL (RET, ENVID), sent only when the server
    /// offers DSN (RFC 3461).
    pub dsn: MailParams,
    /// DSN parameters per recipient (NOTIFY, ORCPT), in the order of `to`;
    /// may be shorter (missing ones are empty). Sent only when offered.
    pub rcpt_params: Vec<RcptParams>,
}

impl Envelope {
    /// Parses addresses written without angle brackets (`a@b.org`; an empty
    /// sender is the null path). CR, LF and other control characters are
    /// refused before parsing, so no address can smuggle a command.
    pub fn parse<S: AsRef<str>>(from: &str, to: &[S]) -> Result<Self, MessageError> {
        fn check(address: &str) -> Result<String, MessageError> {
            if address.chars().any(char::is_control) {
                return Err(MessageError::ControlInAddress {
                    address: address.escape_debug().to_string(),
                });
            }
            let a = address.trim();
            Ok(if a.starts_with('<') {
                a.to_string()
            } else {
                format!("<{a}>")
            })
        }
        let bad = |address: &str, reason: AddressError| MessageError::BadAddress {
            address: address.to_string(),
            reason,
        };
        let from_path = ReversePath::parse(&check(from)?, true).map_err(|e| bad(from, e))?;
        let mut paths = Vec::new();
        for t in to {
            let t = t.as_ref();
            paths.push(ForwardPath::parse(&check(t)?, true).map_err(|e| bad(t, e))?);
        }
        if paths.is_empty() {
            return Err(MessageError::NoRecipients);
        }
        Ok(Self {
            from: from_path,
            to: paths,
            dsn: MailParams::default(),
            rcpt_params: Vec::new(),
        })
    }

    fn is_ascii(&self) -> bool {
        self.from.is_ascii() && self.to.iter().all(ForwardPath::is_ascii)
    }
}

/// Checks a message for what SMTP cannot carry: bare CR or LF, lines over
/// [`MAX_TEXT_LINE`]. Returns whether it has 8-bit bytes.
pub fn check_message(body: &[u8]) -> Result<bool, MessageError> {
    let mut line_start = 0;
    let mut line_no = 1;
    let mut i = 0;
    while let Some(off) = memchr::memchr2(b'\r', b'\n', &body[i..]) {
        let pos = i + off;
        if body[pos] == b'\n' || body.get(pos + 1) != Some(&b'\n') {
            return Err(MessageError::BareLineEnding { offset: pos });
        }
        if pos + 2 - line_start > MAX_TEXT_LINE {
            return Err(MessageError::LineTooLong {
                line: line_no,
                limit: MAX_TEXT_LINE,
            });
        }
        i = pos + 2;
        line_start = i;
        line_no += 1;
    }
    if body.len() - line_start + 2 > MAX_TEXT_LINE {
        return Err(MessageError::LineTooLong {
            line: line_no,
            limit: MAX_TEXT_LINE,
        });
    }
    Ok(!body.is_ascii())
}

/// How one recipient fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// The server took responsibility for delivery (RCPT and end of data 2xx).
    Accepted(Reply),
    /// A 4xx: try again later.
    Transient(Reply),
    /// A 5xx: do not try again.
    Permanent(Reply),
}

impl RecipientOutcome {
    fn from_reply(reply: &Reply) -> Self {
        if reply.is_positive() {
            RecipientOutcome::Accepted(reply.clone())
        } else if reply.is_permanent() {
            RecipientOutcome::Permanent(reply.clone())
        } else {
            RecipientOutcome::Transient(reply.clone())
        }
    }

    /// The reply that decided the outcome.
    pub fn reply(&self) -> &Reply {
        match self {
            RecipientOutcome::Accepted(r)
            | RecipientOutcome::Transient(r)
            | RecipientOutcome::Permanent(r) => r,
        }
    }
}

/// The result of sending one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionReport {
    /// Each recipient with its outcome, in envelope order.
    pub recipients: Vec<(ForwardPath, RecipientOutcome)>,
}

impl TransactionReport {
    /// Every recipient accepted.
    pub fn all_accepted(&self) -> bool {
        self.recipients
            .iter()
            .all(|(_, o)| matches!(o, RecipientOutcome::Accepted(_)))
    }

    /// Some recipient failed temporarily (and may be retried).
    pub fn any_transient(&self) -> bool {
        self.recipients
            .iter()
            .any(|(_, o)| matches!(o, RecipientOutcome::Transient(_)))
    }
}

/// What the client tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Greeting and EHLO/HELO are done: messages may be sent.
    Ready(Capabilities),
    /// A message's transaction finished (in whatever way).
    Sent(TransactionReport),
    /// The session is over (QUIT answered, or a fatal error).
    Closed,
    /// The server said 220 to STARTTLS. **Action** for the driver: flush
    /// the output, run the TLS handshake (as the client) on the link, then
    /// call [`ClientSession::handle_tls_established`]. If the handshake
    /// fails, the link is unusable: drop it. Bytes the server sent after
    /// its 220 have been thrown away.
    StartTls,
    /// The answer to [`ClientSession::turn`]: `Ok` means the server said
    /// 250 and the roles have swapped (this client session is over; run a
    /// server session on the same link), `Err` carries the refusal.
    Turn(Result<(), Reply>),
    /// The answer to [`ClientSession::authenticate`]: the mechanism that
    /// worked, or why it did not (the session goes on either way, except
    /// when a SCRAM server failed to prove itself: then the session fails
    /// with [`ClientError::ServerAuthentication`]).
    Authenticated(Result<Mechanism, AuthError>),
}

/// Why AUTH did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No mechanism the client may use is offered (none at all, or only
    /// PLAIN/LOGIN on a link where plaintext passwords are not allowed).
    /// Nothing was sent.
    #[error("no usable AUTH mechanism offered (server offers: {offered:?}; plaintext allowed: {plaintext_allowed})")]
    NoMechanism {
        /// What the server offered.
        offered: Vec<String>,
        /// Whether PLAIN and LOGIN were allowed.
        plaintext_allowed: bool,
    },
    /// The server refused (535 bad credentials, 454 try later, ...).
    #[error("server refused authentication: {0}")]
    Rejected(Reply),
    /// The exchange went wrong on our side of the checks (we cancelled it).
    #[error("authentication exchange failed: {0}")]
    Sasl(#[from] SaslClientError),
}

/// A failure that ends a client session.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the session (greeting, EHLO and HELO, or 421).
    #[error("server refused the session at {stage}: {reply}")]
    Refused {
        /// Which step.
        stage: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// The server sent something that is not an SMTP reply.
    #[error("server broke the protocol: {0}")]
    Protocol(#[from] ReplyError),
    /// A reply arrived that nothing was waiting for.
    #[error("unexpected reply from server: {0}")]
    Unexpected(Reply),
    /// The driver reported a timeout.
    #[error("timed out waiting for the server ({0:?})")]
    Timeout(ClientTimeout),
    /// TLS is required ([`TlsPolicy::Required`]) but the server does not
    /// offer STARTTLS or refused it. Nothing but EHLO and QUIT was sent.
    /// Transient: the server may offer it later.
    #[error("TLS required but not available: {reason}")]
    TlsRequired {
        /// Why, for logs and bounces.
        reason: String,
    },
    /// The server said 235 without proving it knows our SCRAM credential:
    /// it is not the server we meant to talk to.
    #[error("server authentication failed: {0}")]
    ServerAuthentication(SaslClientError),
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused { reply, .. } => !reply.is_permanent(),
            ClientError::ServerAuthentication(_) => false,
            _ => true,
        }
    }
}

/// Which RFC 5321 4.5.3.2 timer applies to the reply awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// 4.5.3.2.1 initial 220: 5 minutes.
    Greeting,
    /// 4.5.3.2.2 MAIL (also EHLO, RSET, QUIT): 5 minutes.
    Mail,
    /// 4.5.3.2.3 RCPT: 5 minutes.
    Rcpt,
    /// 4.5.3.2.4 DATA initiation: 2 minutes.
    DataInit,
    /// 4.5.3.2.5/6 data block and termination: 3 and 10 minutes; the
    /// driver uses the block timer per write and this one for the final reply.
    DataTermination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    Rset,
    Quit,
    Turn,
    StartTls,
    Auth,
}

#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    body: Bytes,
    pipelined: bool,
    mail: Option<Reply>,
    rcpts: Vec<Option<Reply>>,
    data: Option<Reply>,
}

impl Transaction {
    fn any_rcpt_accepted(&self) -> bool {
        self.rcpts.iter().flatten().any(Reply::is_positive)
    }

    fn mail_accepted(&self) -> bool {
        self.mail.as_ref().is_some_and(Reply::is_positive)
    }

    /// Builds the report; `fallback` stands for replies that never came.
    fn report(self, fallback: Option<&Reply>) -> TransactionReport {
        let default = Reply::new(ReplyCode::LOCAL_ERROR, None, "Transaction did not complete");
        let fallback = fallback.unwrap_or(&default);
        let recipients = self
            .envelope
            .to
            .iter()
            .zip(self.rcpts.iter())
            .map(|(to, rcpt)| {
                let decisive = match (&self.mail, rcpt, &self.data) {
                    (Some(m), _, _) if !m.is_positive() => m,
                    (_, Some(r), _) if !r.is_positive() => r,
                    (_, Some(_), Some(d)) => d,
                    _ => fallback,
                };
                (to.clone(), RecipientOutcome::from_reply(decisive))
            })
            .collect();
        TransactionReport { recipients }
    }
}

/// One client-side SMTP session.
///
/// Polling order: after [`handle_input`](Self::handle_input) (or
/// [`send`](Self::send), [`quit`](Self::quit)), drain
/// [`poll_transmit`](Self::poll_transmit) to the link and
/// [`poll_event`](Self::poll_event) to the application. A fatal error is
/// sticky: [`error`](Self::error) keeps returning it.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    parser: ReplyParser,
    output: BytesMut,
    events: VecDeque<ClientEvent>,
    expect: VecDeque<Expect>,
    capabilities: Capabilities,
    ready: bool,
    txn: Option<Transaction>,
    error: Option<ClientError>,
    closed: bool,
    /// The 220 to STARTTLS came; waiting for the driver's handshake.
    upgrading: bool,
    tls: Option<TlsInfo>,
    auth: Option<ClientAuth>,
}

/// An AUTH exchange in progress.
#[derive(Debug)]
struct ClientAuth {
    exchange: ClientExchange,
    /// An initial response too long for the AUTH line (RFC 4954 section 4:
    /// the line stays within 512 octets), sent after the empty challenge.
    deferred: Option<Vec<u8>>,
    /// We cancelled with `*` for this reason; the server's 501 ends it.
    cancelled: Option<SaslClientError>,
}

impl ClientSession {
    /// Starts a session that waits for the server's greeting.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            parser: ReplyParser::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            capabilities: Capabilities::default(),
            ready: false,
            txn: None,
            error: None,
            closed: false,
            upgrading: false,
            tls: None,
            auth: None,
        }
    }

    /// The driver finished the TLS handshake after [`ClientEvent::StartTls`]
    /// (or, for implicit TLS, before the greeting: then call it right after
    /// [`new`](Self::new)). After STARTTLS the client forgets what the
    /// server offered and says EHLO again (RFC 3207 4.2).
    pub fn handle_tls_established(&mut self, info: TlsInfo) {
        if self.closed {
            return;
        }
        debug!(version = %info.version, cipher = %info.cipher, "TLS established");
        self.tls = Some(info);
        self.parser = ReplyParser::new();
        if std::mem::take(&mut self.upgrading) {
            self.capabilities = Capabilities::default();
            let name = self.config.hello_name.clone();
            self.command(&Command::Ehlo(name), Expect::Ehlo);
        }
    }

    /// The TLS session, once established; `None` in plaintext.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Whether the session waits for the driver's TLS handshake.
    pub fn wants_tls_upgrade(&self) -> bool {
        self.upgrading
    }

    /// What the server offered (valid once [`ClientEvent::Ready`] came).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Whether a new message may be given to [`send`](Self::send).
    pub fn is_ready(&self) -> bool {
        self.ready && self.txn.is_none() && self.auth.is_none() && !self.closed
    }

    /// Authenticates with AUTH (RFC 4954), between transactions. Picks the
    /// strongest offered mechanism: SCRAM-SHA-256, then PLAIN, then LOGIN;
    /// PLAIN and LOGIN only when `plaintext_allowed` (the link is encrypted,
    /// or trusted). `nonce` is SCRAM's client nonce, fresh from a secure
    /// random source (e.g. [`sasl::nonce_from_bytes`] of 18 random bytes).
    ///
    /// Returns the mechanism chosen; the outcome comes as
    /// [`ClientEvent::Authenticated`]. When nothing usable is offered,
    /// returns [`AuthError::NoMechanism`] and sends nothing: credentials
    /// never go out unprotected.
    pub fn authenticate(
        &mut self,
        credentials: &Credentials,
        plaintext_allowed: bool,
        nonce: &str,
    ) -> Result<Mechanism, AuthStartError> {
        if !self.is_ready() || !self.expect.is_empty() {
            return Err(ApiMisuse::NotReady.into());
        }
        let mechanism = self
            .capabilities
            .auth_mechanisms()
            .into_iter()
            .find(|m| plaintext_allowed || !m.sends_password())
            .ok_or_else(|| AuthError::NoMechanism {
                offered: self.capabilities.auth.clone(),
                plaintext_allowed,
            })?;
        if mechanism == Mechanism::ScramSha256 && !sasl::is_valid_nonce(nonce) {
            return Err(ApiMisuse::BadNonce.into());
        }
        let (exchange, initial) = ClientExchange::start(mechanism, credentials, nonce);
        let mut line = format!("AUTH {}", mechanism.name());
        let mut deferred = None;
        if let Some(initial) = initial {
            let encoded = if initial.is_empty() {
                "=".to_string()
            } else {
                sasl::encode(&initial)
            };
            // RFC 4954 section 4: an initial response that would make the
            // line longer than 512 octets goes after an empty challenge.
            if line.len() + 1 + encoded.len() + 2 <= 512 {
                line.push(' ');
                line.push_str(&encoded);
            } else {
                deferred = Some(initial);
            }
        }
        // Not traced: the line may carry a password.
        trace!(%mechanism, "client AUTH");
        line.push_str("\r\n");
        self.output.extend_from_slice(line.as_bytes());
        self.expect.push_back(Expect::Auth);
        self.auth = Some(ClientAuth {
            exchange,
            deferred,
            cancelled: None,
        });
        Ok(mechanism)
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<&ClientError> {
        self.error.as_ref()
    }

    /// Bytes to send to the server, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Which timer applies to the reply being waited for; `None` when
    /// nothing is outstanding.
    pub fn timeout_kind(&self) -> Option<ClientTimeout> {
        Some(match self.expect.front()? {
            Expect::Greeting => ClientTimeout::Greeting,
            Expect::StartTls => ClientTimeout::Mail,
            Expect::Rcpt(_) => ClientTimeout::Rcpt,
            Expect::Data => ClientTimeout::DataInit,
            Expect::DataEnd => ClientTimeout::DataTermination,
            Expect::Ehlo
            | Expect::Helo
            | Expect::Mail
            | Expect::Rset
            | Expect::Quit
            | Expect::Turn
            | Expect::Auth => ClientTimeout::Mail,
        })
    }

    /// The driver's timer expired.
    pub fn handle_timeout(&mut self) {
        if let Some(kind) = self.timeout_kind() {
            self.fail(ClientError::Timeout(kind), None);
        }
    }

    /// The link closed under us.
    pub fn handle_eof(&mut self) {
        if !self.closed {
            let eof = Reply::new(
                ReplyCode::SERVICE_NOT_AVAILABLE,
                None,
                "Connection closed by server",
            );
            let expecting_quit = self.expect.front() == Some(&Expect::Quit);
            if expecting_quit {
                // A server that drops the line after QUIT without a 221 has
                // still done what we asked.
                self.close();
            } else {
                self.fail(
                    ClientError::Refused {
                        stage: "connection",
                        reply: eof.clone(),
                    },
                    Some(&eof),
                );
            }
        }
    }

    /// Queues one message. The body must use CRLF line endings; it is
    /// dot-stuffed here. Nothing is sent when an error is returned.
    pub fn send(&mut self, envelope: Envelope, body: &[u8]) -> Result<(), SendError> {
        if !self.is_ready() {
            return Err(SendError::Api(ApiMisuse::NotReady));
        }
        if envelope.to.is_empty() {
            return Err(MessageError::NoRecipients.into());
        }
        let eight_bit = check_message(body)?;
        let caps = &self.capabilities;
        let mut params = MailParams::default();
        if let Some(limit) = caps.size {
            // RFC 1870 section 5: the size of the message as transmitted,
            // CRLFs included, so the CRLF that `dot_stuff` adds to a body
            // that lacks one counts (RFC 5321 4.1.1.4).
            let added_crlf = !body.is_empty() && !body.ends_with(b"\r\n");
            let size = body.len() as u64 + if added_crlf { 2 } else { 0 };
            if limit > 0 && size > limit {
                return Err(MessageError::TooBig { size, limit }.into());
            }
            params.size = Some(size);
        }
        if eight_bit {
            if !caps.eightbitmime {
                return Err(MessageError::EightBitNotOffered.into());
            }
            params.body = Some(Body::EightBitMime);
        }
        if !envelope.is_ascii() {
            if !caps.smtputf8 {
                return Err(MessageError::Utf8NotOffered.into());
            }
            params.smtputf8 = true;
        }
        if caps.dsn {
            params.ret = envelope.dsn.ret;
            params.envid = envelope.dsn.envid.clone();
        }
        let pipelined = self.config.pipelining && caps.pipelining;
        let txn = Transaction {
            rcpts: vec![None; envelope.to.len()],
            envelope,
            body: Bytes::from(dot_stuff(body)),
            pipelined,
            mail: None,
            data: None,
        };
        self.command(
            &Command::Mail {
                from: txn.envelope.from.clone(),
                params,
            },
            Expect::Mail,
        );
        if pipelined {
            for i in 0..txn.envelope.to.len() {
                let rcpt = rcpt_command(&txn.envelope, i, self.capabilities.dsn);
                self.command(&rcpt, Expect::Rcpt(i));
            }
            self.command(&Command::Data, Expect::Data);
        }
        self.txn = Some(txn);
        Ok(())
    }

    /// Asks the server to swap roles (TURN, RFC 821 4.1.1). Only between
    /// transactions; the answer comes as [`ClientEvent::Turn`].
    pub fn turn(&mut self) -> Result<(), ApiMisuse> {
        if !self.is_ready() || !self.expect.is_empty() {
            return Err(ApiMisuse::NotReady);
        }
        self.command(&Command::Turn, Expect::Turn);
        Ok(())
    }

    /// Ends the session politely with QUIT.
    pub fn quit(&mut self) {
        if self.closed || self.expect.contains(&Expect::Quit) {
            return;
        }
        self.command(&Command::Quit, Expect::Quit);
    }

    /// Feeds bytes received from the server.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.closed {
            return;
        }
        if self.upgrading {
            debug!(bytes = data.len(), "discarding plaintext while TLS starts");
            return;
        }
        self.parser.push(data);
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => self.handle_reply(reply),
                Ok(None) => return,
                Err(e) => return self.fail(ClientError::Protocol(e), None),
            }
            if self.closed {
                return;
            }
            if self.upgrading {
                // Whatever the server sent after its 220 to STARTTLS came
                // in plaintext and must not be read as if it came through
                // TLS (CVE-2011-0411, the client side).
                let extra = self.parser.buffered();
                if extra > 0 {
                    debug!(bytes = extra, "discarding plaintext after 220 to STARTTLS");
                }
                self.parser = ReplyParser::new();
                return;
            }
        }
    }

    /// TLS is required but not to be had: QUIT, and fail transiently.
    fn tls_unavailable(&mut self, reason: String) {
        self.output
            .extend_from_slice(Command::Quit.to_line().as_bytes());
        self.fail(ClientError::TlsRequired { reason }, None);
    }

    /// After a successful EHLO: STARTTLS if wanted and possible, else ready.
    fn after_ehlo(&mut self) {
        let offered = self.capabilities.starttls;
        match (self.config.tls, self.tls.is_some(), offered) {
            (TlsPolicy::None, _, _) | (_, true, _) => self.become_ready(),
            (_, false, true) => self.command(&Command::StartTls, Expect::StartTls),
            (TlsPolicy::Opportunistic, false, false) => self.become_ready(),
            (TlsPolicy::Required, false, false) => {
                self.tls_unavailable("server does not offer STARTTLS".into())
            }
        }
    }

    fn command(&mut self, command: &Command, expect: Expect) {
        trace!(command = %command, "client command");
        self.output.extend_from_slice(command.to_line().as_bytes());
        self.expect.push_back(expect);
    }

    fn close(&mut self) {
        self.closed = true;
        self.ready = false;
        self.expect.clear();
        self.events.push_back(ClientEvent::Closed);
    }

    fn fail(&mut self, error: ClientError, reply: Option<&Reply>) {
        debug!(%error, "client session failed");
        if let Some(txn) = self.txn.take() {
            self.events.push_back(ClientEvent::Sent(txn.report(reply)));
        }
        self.error.get_or_insert(error);
        self.close();
    }

    fn handle_reply(&mut self, reply: Reply) {
        trace!(reply = %reply, "client got reply");
        let Some(expect) = self.expect.pop_front() else {
            if reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE {
                // RFC 5321 3.8: a server may say 421 and close at any time,
                // e.g. when it times out an idle client.
                return self.fail(
                    ClientError::Refused {
                        stage: "idle session",
                        reply,
                    },
                    None,
                );
            }
            return self.fail(ClientError::Unexpected(reply), None);
        };
        if reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE && expect != Expect::Quit {
            // 421 at any point: the server is closing the channel.
            return self.fail(
                ClientError::Refused {
                    stage: "session",
                    reply: reply.clone(),
                },
                Some(&reply),
            );
        }
        match expect {
            Expect::Greeting => {
                if reply.code() != ReplyCode::SERVICE_READY {
                    return self.fail(
                        ClientError::Refused {
                            stage: "greeting",
                            reply,
                        },
                        None,
                    );
                }
                let name = self.config.hello_name.clone();
                self.command(&Command::Ehlo(name), Expect::Ehlo);
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.capabilities = Capabilities::from_ehlo(&reply);
                    self.parser
                        .set_parse_enhanced(self.capabilities.enhanced_status_codes);
                    self.after_ehlo();
                } else if reply.is_permanent() {
                    // RFC 5321 3.2: a server that does not know EHLO gets HELO.
                    let name = self.config.hello_name.clone();
                    self.command(&Command::Helo(name), Expect::Helo);
                } else {
                    self.fail(
                        ClientError::Refused {
                            stage: "EHLO",
                            reply,
                        },
                        None,
                    );
                }
            }
            Expect::Helo => {
                if reply.is_positive() {
                    self.capabilities = Capabilities::default();
                    self.after_ehlo();
                } else {
                    self.fail(
                        ClientError::Refused {
                            stage: "HELO",
                            reply,
                        },
                        None,
                    );
                }
            }
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt(i) => self.on_rcpt(i, reply),
            Expect::Data => self.on_data(reply),
            Expect::DataEnd => {
                if let Some(txn) = &mut self.txn {
                    // After an empty DATA (every RCPT refused) the reply
                    // changes nothing: outcomes come from the RCPT replies.
                    if txn.any_rcpt_accepted() && txn.mail_accepted() {
                        txn.data = Some(reply);
                    }
                }
                self.finish_transaction();
            }
            Expect::Rset => self.finish_transaction(),
            Expect::Quit => self.close(),
            Expect::StartTls => {
                if reply.code() == ReplyCode::SERVICE_READY {
                    self.upgrading = true;
                    self.events.push_back(ClientEvent::StartTls);
                } else if self.config.tls == TlsPolicy::Required {
                    self.tls_unavailable(format!("server refused STARTTLS: {reply}"));
                } else {
                    // RFC 3207 4.1: the client may go on without TLS.
                    debug!(%reply, "STARTTLS refused; going on in plaintext");
                    self.become_ready();
                }
            }
            Expect::Auth => self.on_auth(reply),
            Expect::Turn => {
                if reply.code() == ReplyCode::OK {
                    // This side is a server now; the client session ends
                    // without QUIT.
                    self.closed = true;
                    self.ready = false;
                    self.events.push_back(ClientEvent::Turn(Ok(())));
                } else {
                    self.events.push_back(ClientEvent::Turn(Err(reply)));
                }
            }
        }
    }

    fn on_auth(&mut self, reply: Reply) {
        let Some(mut auth) = self.auth.take() else {
            return;
        };
        let mechanism = auth.exchange.mechanism();
        if reply.code() == ReplyCode::AUTH_CHALLENGE && auth.cancelled.is_none() {
            let text = reply.lines().first().map(String::as_str).unwrap_or("");
            let response = match auth.deferred.take() {
                Some(initial) if text.is_empty() => Ok(initial),
                _ => sasl::decode_response(text.as_bytes())
                    .ok_or(SaslClientError::MalformedChallenge)
                    .and_then(|challenge| auth.exchange.challenge(&challenge)),
            };
            let line = match response {
                Ok(data) => format!("{}\r\n", sasl::encode(&data)),
                Err(e) => {
                    // RFC 4954 section 4: "*" cancels; the server says 501.
                    debug!(error = %e, "cancelling AUTH");
                    auth.cancelled = Some(e);
                    "*\r\n".to_string()
                }
            };
            self.output.extend_from_slice(line.as_bytes());
            self.expect.push_back(Expect::Auth);
            self.auth = Some(auth);
            return;
        }
        if reply.code() == ReplyCode::AUTH_SUCCEEDED {
            // A SCRAM server must have proved itself first; one we
            // cancelled on must not let us in anyway.
            let verdict = match auth.cancelled {
                Some(e) => Err(e),
                None => auth.exchange.finish(),
            };
            return match verdict {
                Ok(()) => self
                    .events
                    .push_back(ClientEvent::Authenticated(Ok(mechanism))),
                Err(e) => self.fail(ClientError::ServerAuthentication(e), None),
            };
        }
        let error = match auth.cancelled {
            Some(e) => AuthError::Sasl(e),
            None => AuthError::Rejected(reply),
        };
        self.events
            .push_back(ClientEvent::Authenticated(Err(error)));
    }

    fn become_ready(&mut self) {
        self.ready = true;
        self.events
            .push_back(ClientEvent::Ready(self.capabilities.clone()));
    }

    fn on_mail(&mut self, reply: Reply) {
        let Some(txn) = &mut self.txn else { return };
        let ok = reply.is_positive();
        txn.mail = Some(reply);
        if txn.pipelined {
            return;
        }
        if ok {
            let rcpt = rcpt_command(&txn.envelope, 0, self.capabilities.dsn);
            self.command(&rcpt, Expect::Rcpt(0));
        } else {
            self.finish_transaction();
        }
    }

    fn on_rcpt(&mut self, i: usize, reply: Reply) {
        let Some(txn) = &mut self.txn else { return };
        if let Some(slot) = txn.rcpts.get_mut(i) {
            *slot = Some(reply);
        }
        if txn.pipelined {
            return;
        }
        if i + 1 < txn.envelope.to.len() {
            let rcpt = rcpt_command(&txn.envelope, i + 1, self.capabilities.dsn);
            self.command(&rcpt, Expect::Rcpt(i + 1));
        } else if txn.any_rcpt_accepted() {
            self.command(&Command::Data, Expect::Data);
        } else {
            self.command(&Command::Rset, Expect::Rset);
        }
    }

    fn on_data(&mut self, reply: Reply) {
        let Some(txn) = &mut self.txn else { return };
        if reply.code() == ReplyCode::START_MAIL_INPUT {
            if txn.any_rcpt_accepted() && txn.mail_accepted() {
                let body = txn.body.clone();
                self.output.extend_from_slice(&body);
            } else {
                // RFC 2920 3.1: every RCPT failed but DATA got 354 anyway;
                // send an empty message so no content is delivered.
                self.output.extend_from_slice(b".\r\n");
            }
            self.expect.push_back(Expect::DataEnd);
            return;
        }
        if txn.any_rcpt_accepted() {
            txn.data = Some(reply);
        }
        if txn.mail_accepted() {
            self.command(&Command::Rset, Expect::Rset);
        } else {
            self.finish_transaction();
        }
    }

    fn finish_transaction(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.events.push_back(ClientEvent::Sent(txn.report(None)));
        }
    }
}

/// The RCPT command for recipient `i`, with its DSN parameters only when
/// the server offers DSN (never send what was not advertised).
fn rcpt_command(envelope: &Envelope, i: usize, dsn: bool) -> Command {
    let params = match envelope.rcpt_params.get(i) {
        Some(p) if dsn => p.clone(),
        _ => RcptParams::default(),
    };
    Command::Rcpt {
        to: envelope.to[i].clone(),
        params,
    }
}

/// Why [`ClientSession::authenticate`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthStartError {
    /// Nothing usable offered (nothing was sent).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Not between transactions, or a bad nonce.
    #[error(transparent)]
    Api(#[from] ApiMisuse),
}

/// Why [`ClientSession::send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message or envelope cannot be sent as it is.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The session is not ready for a message.
    #[error(transparent)]
    Api(#[from] ApiMisuse),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn unsolicited_421_while_idle_closes_as_transient() {
        let mut c = ClientSession::new(ClientConfig::default());
        c.handle_input(b"220 mx ESMTP\r\n");
        assert_eq!(c.poll_transmit().unwrap(), &b"EHLO localhost\r\n"[..]);
        c.handle_input(b"250-mx\r\n250 PIPELINING\r\n");
        assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
        // RFC 5321 3.8: the server may give up on an idle client with 421.
        c.handle_input(b"421 4.4.2 mx Timeout, closing connection\r\n");
        assert!(c.is_closed());
        let e = c.error().unwrap();
        assert!(matches!(e, ClientError::Refused { .. }), "{e:?}");
        assert!(e.is_transient());
    }

    /// RFC 3461 parameters go out only to a server that offers DSN.
    #[test]
    fn dsn_parameters_only_when_offered() {
        for (ehlo, expect_dsn) in [
            (&b"250-mx\r\n250 DSN\r\n"[..], true),
            (&b"250 mx\r\n"[..], false),
        ] {
            let mut c = ClientSession::new(ClientConfig::default());
            c.handle_input(b"220 mx ESMTP\r\n");
            let _ = c.poll_transmit();
            c.handle_input(ehlo);
            let mut env = Envelope::parse("a@example.org", &["b@example.net"]).unwrap();
            env.dsn.ret = Some(crate::Ret::Hdrs);
            env.dsn.envid = Some("id 1".into());
            env.rcpt_params = vec![RcptParams {
                notify: Some(vec![crate::Notify::Failure]),
                orcpt: Some(("rfc822".into(), "b@example.net".into())),
            }];
            c.send(env, b"x\r\n").unwrap();
            let mut wire = c.poll_transmit().unwrap().to_vec();
            c.handle_input(b"250 ok\r\n");
            wire.extend_from_slice(&c.poll_transmit().unwrap());
            let wire = String::from_utf8(wire).unwrap();
            let with = "MAIL FROM:<a@example.org> RET=HDRS ENVID=id+201\r\nRCPT TO:<b@example.net> NOTIFY=FAILURE ORCPT=rfc822;b@example.net\r\n";
            let without = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n";
            assert_eq!(wire, if expect_dsn { with } else { without });
        }
    }

    #[test]
    fn check_message_finds_bare_endings_and_long_lines() {
        assert_eq!(check_message(b"a\r\nb\r\n"), Ok(false));
        assert_eq!(check_message(b"\xc3\xa9\r\n"), Ok(true));
        assert_eq!(
            check_message(b"a\nb"),
            Err(MessageError::BareLineEnding { offset: 1 })
        );
        assert_eq!(
            check_message(b"a\r\rb"),
            Err(MessageError::BareLineEnding { offset: 1 })
        );
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n");
        assert!(matches!(
            check_message(&long),
            Err(MessageError::LineTooLong { line: 1, .. })
        ));
        assert!(check_message(&long[1..]).is_ok());
    }
}
