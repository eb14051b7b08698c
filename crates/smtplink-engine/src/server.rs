//! The server side of an SMTP session, as a sans-IO state machine.
//!
//! ```text
//!            greeting (220 queued at creation)
//!                 |
//!                 v
//!   +------> [ no HELO ] --EHLO/HELO--> [ greeted ] <------------------+
//!   |                                     |   ^                        |
//!   |                           MAIL ok   |   | RSET, EHLO/HELO        | 250/4xx/5xx
//!   |                                     v   |                        | to end of data
//!   |                                [ in transaction ] --DATA 354--> [ data ]
//!   |
//!   +-- any state: QUIT, too many errors, timeout --> [ closed ]
//!
//!   [ no HELO ] or [ greeted ] --STARTTLS 220--> [ upgrading ]
//!       --handle_tls_established--> [ no HELO ] (encrypted; no STARTTLS again)
//! ```
//!
//! Decisions the application owns (accept this sender? this recipient? is
//! the message stored?) are [`ServerEvent`]s that pause the session until
//! [`ServerSession::accept`] or [`ServerSession::reject`] answers them.
//! Replies to pipelined commands come out in order because the session
//! handles one command at a time and keeps unread input buffered.
//!
//! # AUTH (RFC 4954)
//!
//! Offered only when [`ServerConfig::auth_mechanisms`] names mechanisms;
//! PLAIN and LOGIN only once the link is encrypted
//! ([`ServerSession::set_encrypted`]) or on a listener trusted with
//! plaintext passwords. Once AUTH starts, every line the client sends is
//! part of the exchange until it ends (235, or a 4xx/5xx): a command
//! pipelined behind AUTH is read as a SASL response, never run, since AUTH
//! changes the session's state and so, like EHLO, must end a pipelined
//! group (RFC 2920 3.1). The credential check is a decision,
//! [`ServerEvent::AuthLookup`], answered with
//! [`ServerSession::answer_auth_lookup`] or a rejection.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tracing::{debug, trace};

use crate::address::{ForwardPath, ReversePath};
use crate::command::{Command, ParseOptions};
use crate::data::{
    find_line_end, BareLineEndingPolicy, DataDecoder, DataFault, DataLimits, DataProgress,
    LineEnding,
};
use crate::error::ApiMisuse;
use crate::params::{Body, MailParams, RcptParams};
use crate::reply::{EnhancedCode, Reply, ReplyCode};
use crate::sasl::{
    self, AuthFailure, CredentialLookup, Mechanism, ServerExchange, ServerStep, MAX_SASL_LINE,
};
use crate::tls::TlsInfo;

/// Settings of a server session. Every limit has a default from the RFCs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our host name, used in the greeting and in replies.
    pub hostname: String,
    /// Longest command line in octets, CRLF included. RFC 5321 4.5.3.1.4
    /// sets 512. MAIL and RCPT may be up to [`PARAMETER_ALLOWANCE`] longer
    /// because ESMTP parameters extend them (RFC 1870 section 3 and others).
    pub max_command_line: usize,
    /// Longest text line of a message, CRLF included (RFC 5321 4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// Largest message in octets, advertised with SIZE (RFC 1870).
    pub max_message_size: u64,
    /// Most recipients per message. RFC 5321 4.5.3.1.8 requires at least 100.
    pub max_recipients: usize,
    /// Protocol errors (unknown commands, bad syntax, bad sequence, long
    /// lines) tolerated before the server answers 421 and hangs up.
    pub max_errors: usize,
    /// What to do with a bare CR or LF in commands and in message data.
    pub bare_line_endings: BareLineEndingPolicy,
    /// Offer SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Offer 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Offer DSN (RFC 3461). Only an application that can send delivery
    /// status notifications should (the relay does; Maildir-only does not).
    pub dsn: bool,
    /// Offer STARTTLS (RFC 3207). The driver sets it only when it has a
    /// certificate and the link can carry TLS; it is never offered once
    /// the session is encrypted.
    pub starttls: bool,
    /// SASL mechanisms to offer with AUTH (RFC 4954), in this order. Empty
    /// (the default): no AUTH. PLAIN and LOGIN are offered only when the
    /// session is encrypted or `auth_plaintext_trusted` is set; asked for
    /// anyway, they get 538.
    pub auth_mechanisms: Vec<Mechanism>,
    /// Offer PLAIN and LOGIN on an unencrypted link too: only for a
    /// listener no one can listen in on (loopback, a private serial line).
    pub auth_plaintext_trusted: bool,
    /// Most commands a client may send outside a mail transaction before
    /// its MAIL is accepted (RSET, NOOP, HELP, VRFY, EHLO, AUTH... loops
    /// all count; QUIT does not); the next one gets 421 4.7.0 and the
    /// session closes. An accepted MAIL starts the count again. 0 (the
    /// engine's default): no limit; the `smtplink` server uses 50.
    pub max_commands_before_mail: usize,
}

/// Extra octets allowed on MAIL and RCPT lines for ESMTP parameters.
pub const PARAMETER_ALLOWANCE: usize = 512;

/// Longest reply line in octets, code and CRLF included (RFC 5321 4.5.3.1.5).
const MAX_REPLY_LINE: usize = 512;

/// Cuts reply text so every line fits in [`MAX_REPLY_LINE`]. Some replies
/// echo what the client sent (its EHLO name, a bad parameter or address),
/// which can be nearly as long as a command line.
fn fit_reply_lines(reply: &Reply) -> std::borrow::Cow<'_, Reply> {
    // "250-" or "250 ", then "x.y.z " if there is an enhanced code, then CRLF.
    let overhead = 4 + reply.enhanced().map_or(0, |e| e.to_string().len() + 1) + 2;
    let room = MAX_REPLY_LINE.saturating_sub(overhead);
    if reply.lines().iter().all(|l| l.len() <= room) {
        return std::borrow::Cow::Borrowed(reply);
    }
    let cut = |l: &String| {
        let mut end = room.min(l.len());
        while !l.is_char_boundary(end) {
            end -= 1;
        }
        l[..end].to_string()
    };
    std::borrow::Cow::Owned(Reply::multiline(
        reply.code(),
        reply.enhanced(),
        reply.lines().iter().map(cut),
    ))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            max_command_line: 512,
            max_text_line: 1000,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            bare_line_endings: BareLineEndingPolicy::Normalize,
            smtputf8: true,
            eightbitmime: true,
            pipelining: true,
            dsn: false,
            starttls: false,
            auth_mechanisms: Vec::new(),
            auth_plaintext_trusted: false,
            max_commands_before_mail: 0,
        }
    }
}

/// What the server tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The client said EHLO (`esmtp`) or HELO. Any transaction was reset.
    Greeted {
        /// The name the client gave.
        name: String,
        /// EHLO rather than HELO.
        esmtp: bool,
    },
    /// MAIL FROM. **Decision**: answer with accept or reject.
    MailFrom {
        /// The reverse path.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// RCPT TO. **Decision**: answer with accept or reject.
    RcptTo {
        /// The forward path.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// DATA was accepted (354 sent); [`ServerEvent::DataChunk`]s follow.
    DataStart,
    /// Message bytes: un-stuffed, CRLF line endings.
    DataChunk(Bytes),
    /// The whole message has arrived. **Decision**: accept only once the
    /// message is stored durably; reject (4xx/5xx) otherwise.
    DataEnd {
        /// Message size in octets.
        size: u64,
    },
    /// The message broke a limit; drop what was received. The session
    /// reads on to the end of data and replies itself. No decision.
    DataAborted {
        /// Which limit.
        fault: DataFault,
    },
    /// The transaction was abandoned (RSET, or EHLO/HELO mid-transaction).
    TransactionReset,
    /// AUTH: the client named the user it wants to be. **Decision**:
    /// answer with [`ServerSession::answer_auth_lookup`] (the user's
    /// credential, or "no such user" with a decoy), or reject (454 4.7.0
    /// when the credential store is unavailable or the client has failed
    /// too often; 535 5.7.8 to refuse the user outright).
    AuthLookup {
        /// The mechanism in use.
        mechanism: Mechanism,
        /// The user name (authentication identity): UTF-8, no control
        /// characters, at most 255 octets.
        username: String,
    },
    /// AUTH succeeded (235 sent); the session now belongs to this user
    /// ([`ServerSession::authenticated_user`]). No decision.
    Authenticated {
        /// The mechanism used.
        mechanism: Mechanism,
        /// The user.
        username: String,
    },
    /// AUTH failed (the reply is sent). No decision; the application may
    /// count failures and refuse later lookups (454) or shut the session.
    AuthFailed {
        /// The mechanism tried.
        mechanism: Mechanism,
        /// The user name, if the client got as far as giving one.
        username: Option<String>,
        /// What went wrong.
        reason: AuthFailure,
    },
    /// TURN (RFC 821 4.1.1). **Decision**: accept only on a trusted
    /// point-to-point link, where the application then runs a client
    /// session on the same link (the engine's session ends with the 250);
    /// reject (502) everywhere else.
    Turn,
    /// STARTTLS was accepted and its 220 is queued. **Action** for the
    /// driver: flush the output, run the TLS handshake (as the server) on
    /// the link, then call [`ServerSession::handle_tls_established`]; if
    /// the handshake fails, close the link. Input that arrived after the
    /// command has been thrown away (RFC 3207 / CVE-2011-0411), and input
    /// given to the session before the call is ignored.
    StartTls,
    /// The session is over; flush the remaining output and close the link.
    /// A message whose [`ServerEvent::DataEnd`] has not come is incomplete
    /// and must be dropped.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a server session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said QUIT.
    Quit,
    /// The client made more than `max_errors` protocol errors.
    TooManyErrors,
    /// The driver reported a timeout.
    Timeout,
    /// The application asked to close (e.g. shutting down).
    Shutdown,
    /// TURN was accepted: the link now carries a session the other way.
    Turned,
    /// The client sent more than `max_commands_before_mail` commands
    /// without starting a transaction.
    TooManyCommands,
}

/// Which RFC 5321 4.5.3.2 timer the driver should run while waiting for input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTimeout {
    /// Waiting for a command (4.5.3.2.7: at least 5 minutes).
    Command,
    /// Receiving message data.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt,
    DataEnd,
    Turn,
    AuthLookup,
}

#[derive(Debug)]
struct Transaction {
    params: MailParams,
    recipients: Vec<ForwardPath>,
    rcpt_attempted: bool,
    pending_rcpt: Option<ForwardPath>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Command,
    /// Inside an AUTH exchange: lines are SASL responses.
    Auth,
    Data,
    /// The 220 to STARTTLS is out; waiting for the driver's handshake.
    Upgrading,
    Closed,
}

/// One server-side SMTP session.
///
/// Polling order, after every [`handle_input`](Self::handle_input) or
/// decision: drain [`poll_event`](Self::poll_event) (answering decisions as
/// they come), then send everything [`poll_transmit`](Self::poll_transmit)
/// returns. When [`is_closed`](Self::is_closed) is true after the transmit is
/// flushed, close the link.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<ServerEvent>,
    phase: Phase,
    helo: Option<(String, bool)>,
    txn: Option<Transaction>,
    pending: Option<Pending>,
    decoder: Option<DataDecoder>,
    data_out: BytesMut,
    errors: usize,
    /// Commands outside a transaction since the last accepted MAIL.
    commands_without_mail: usize,
    discarding_long_line: bool,
    /// The line being discarded belongs to an AUTH exchange (500 5.5.6).
    long_line_is_auth: bool,
    /// The link is encrypted (set by the driver once TLS is up).
    encrypted: bool,
    /// Who the client authenticated as.
    authenticated: Option<String>,
    /// The AUTH exchange in progress.
    sasl: Option<ServerExchange>,
    /// The last MAIL was refused. A pipelining client has already sent its
    /// RCPTs and DATA (RFC 2920); their 503s are expected, not errors.
    mail_refused: bool,
    /// Whether (and how) the session is encrypted: set by
    /// [`ServerSession::handle_tls_established`]. Other rules (AUTH over
    /// plaintext, the `Received:` protocol name) read it.
    tls: Option<TlsInfo>,
}

impl ServerSession {
    /// Starts a session; the 220 greeting is queued for transmission.
    pub fn new(config: ServerConfig) -> Self {
        let greeting = Reply::new(
            ReplyCode::SERVICE_READY,
            None,
            format!("{} ESMTP smtplink ready", config.hostname),
        );
        let mut s = Self {
            config,
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            phase: Phase::Command,
            helo: None,
            txn: None,
            pending: None,
            decoder: None,
            data_out: BytesMut::new(),
            errors: 0,
            commands_without_mail: 0,
            discarding_long_line: false,
            long_line_is_auth: false,
            encrypted: false,
            authenticated: None,
            sasl: None,
            mail_refused: false,
            tls: None,
        };
        s.send(&greeting);
        s
    }

    /// The session's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Tells the session that the link below is encrypted by other means
    /// than our own TLS (which [`handle_tls_established`] records). PLAIN
    /// and LOGIN are offered only on an encrypted link, unless the listener
    /// is trusted ([`ServerConfig::auth_plaintext_trusted`]).
    ///
    /// [`handle_tls_established`]: Self::handle_tls_established
    pub fn set_encrypted(&mut self, encrypted: bool) {
        self.encrypted = encrypted;
    }

    /// Whether the link is encrypted: our TLS is up, or the driver said so.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted || self.tls.is_some()
    }

    /// The user the client authenticated as with AUTH, if it did.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The mechanisms offered to this session right now: those configured,
    /// less PLAIN and LOGIN on a link that is neither encrypted nor trusted.
    pub fn offered_mechanisms(&self) -> Vec<Mechanism> {
        let mut out: Vec<Mechanism> = Vec::new();
        for &m in &self.config.auth_mechanisms {
            if self.mechanism_allowed_here(m) && !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    fn mechanism_allowed_here(&self, m: Mechanism) -> bool {
        !m.sends_password() || self.is_encrypted() || self.config.auth_plaintext_trusted
    }

    /// Answers [`ServerEvent::AuthLookup`] with the user's stored credential
    /// or with "no such user". `server_nonce` is SCRAM's server nonce, drawn
    /// fresh from a secure random source for every exchange (e.g.
    /// [`sasl::nonce_from_bytes`] of 18 random bytes); other mechanisms
    /// ignore it. For PLAIN and LOGIN this runs PBKDF2 with the
    /// credential's iteration count, which takes a while.
    ///
    /// A rejection ([`reject`](Self::reject)) is the other legal answer.
    pub fn answer_auth_lookup(
        &mut self,
        lookup: CredentialLookup,
        server_nonce: &str,
    ) -> Result<(), ApiMisuse> {
        match self.pending {
            Some(Pending::AuthLookup) => {}
            Some(_) => return Err(ApiMisuse::WrongAnswer),
            None => return Err(ApiMisuse::NoDecisionPending),
        }
        let Some(mut exchange) = self.sasl.take() else {
            return Err(ApiMisuse::NoDecisionPending);
        };
        if exchange.mechanism() == Mechanism::ScramSha256 && !sasl::is_valid_nonce(server_nonce) {
            self.sasl = Some(exchange);
            return Err(ApiMisuse::BadNonce);
        }
        self.pending = None;
        let step = exchange.answer_lookup(lookup, server_nonce);
        self.sasl = Some(exchange);
        self.auth_step(step);
        self.process();
        Ok(())
    }

    /// Feeds bytes received from the client.
    ///
    /// While a decision is pending the bytes are only buffered, so answer
    /// decisions before reading more from the link (the drivers do), or the
    /// buffer grows with whatever the peer sends.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Upgrading {
            // Plaintext after STARTTLS: never executed (CVE-2011-0411).
            debug!(bytes = data.len(), "discarding input while TLS starts");
            return;
        }
        self.input.extend_from_slice(data);
        self.process();
    }

    /// The driver's timer for [`timeout_kind`](Self::timeout_kind) expired:
    /// answer 421 (RFC 5321 4.5.3.2) and close.
    pub fn handle_timeout(&mut self) {
        if self.phase != Phase::Closed {
            self.close_with(
                Reply::new(
                    ReplyCode::SERVICE_NOT_AVAILABLE,
                    EnhancedCode::new(4, 4, 2),
                    format!("{} Timeout, closing connection", self.config.hostname),
                ),
                CloseReason::Timeout,
            );
        }
    }

    /// The driver finished the TLS handshake: the session is encrypted and
    /// starts over in its pre-EHLO state (RFC 3207 4.2: forget everything
    /// learnt before, the client must say EHLO again). Also for implicit
    /// TLS (RFC 8314), called right after [`new`](Self::new): the queued
    /// greeting stays queued.
    pub fn handle_tls_established(&mut self, info: TlsInfo) {
        if self.phase == Phase::Closed {
            return;
        }
        debug!(version = %info.version, cipher = %info.cipher, "TLS established");
        self.tls = Some(info);
        self.phase = Phase::Command;
        self.helo = None;
        self.txn = None;
        self.pending = None;
        self.decoder = None;
        self.input.clear();
        self.discarding_long_line = false;
        self.mail_refused = false;
        // Nothing negotiated in plaintext survives, AUTH included (RFC
        // 3207 4.2).
        self.sasl = None;
        self.authenticated = None;
    }

    /// The TLS session, once [`handle_tls_established`](Self::handle_tls_established)
    /// was called; `None` while the session is in plaintext.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Whether the session is encrypted.
    pub fn is_tls_active(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the session waits for the driver's TLS handshake
    /// (after [`ServerEvent::StartTls`]).
    pub fn wants_tls_upgrade(&self) -> bool {
        self.phase == Phase::Upgrading
    }

    /// The application is shutting down: answer 421 and close.
    pub fn shutdown(&mut self) {
        if self.phase != Phase::Closed {
            self.close_with(
                Reply::new(
                    ReplyCode::SERVICE_NOT_AVAILABLE,
                    EnhancedCode::new(4, 3, 2),
                    format!("{} Service shutting down", self.config.hostname),
                ),
                CloseReason::Shutdown,
            );
        }
    }

    /// The application ends the session with `reply` (a 421, e.g. for a
    /// client that sends its message too slowly): the reply is queued, a
    /// message in progress is incomplete (drop it), and the session closes
    /// with [`CloseReason::Shutdown`].
    pub fn close_with_reply(&mut self, reply: Reply) {
        if self.phase != Phase::Closed {
            self.close_with(reply, CloseReason::Shutdown);
        }
    }

    /// Bytes to send to the client, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// The next event for the application, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Which timer applies while waiting for more input.
    pub fn timeout_kind(&self) -> ServerTimeout {
        if self.phase == Phase::Data {
            ServerTimeout::Data
        } else {
            ServerTimeout::Command
        }
    }

    /// Whether a decision event awaits an answer.
    pub fn wants_decision(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the session is inside DATA (a cut link now loses the message).
    pub fn is_receiving_data(&self) -> bool {
        self.phase == Phase::Data
    }

    /// Accepts the pending decision with the standard reply.
    pub fn accept(&mut self) -> Result<(), ApiMisuse> {
        let text = match self.pending {
            Some(Pending::Mail) => "Sender OK",
            Some(Pending::Rcpt) => "Recipient OK",
            Some(Pending::DataEnd) => "Message accepted for delivery",
            Some(Pending::Turn) => "OK, turning around",
            Some(Pending::AuthLookup) => return Err(ApiMisuse::WrongAnswer),
            None => return Err(ApiMisuse::NoDecisionPending),
        };
        self.accept_with(text)
    }

    /// Accepts the pending decision with a reply text of the application's
    /// (e.g. `"queued as 1A2B"`).
    pub fn accept_with(&mut self, text: &str) -> Result<(), ApiMisuse> {
        if self.pending == Some(Pending::AuthLookup) {
            return Err(ApiMisuse::WrongAnswer);
        }
        let pending = self.pending.take().ok_or(ApiMisuse::NoDecisionPending)?;
        let enhanced = match pending {
            Pending::Mail => EnhancedCode::new(2, 1, 0),
            Pending::Rcpt => EnhancedCode::new(2, 1, 5),
            Pending::DataEnd | Pending::Turn | Pending::AuthLookup => EnhancedCode::new(2, 0, 0),
        };
        self.send(&Reply::new(ReplyCode::OK, enhanced, text));
        match pending {
            Pending::Mail => {
                self.mail_refused = false;
                self.commands_without_mail = 0;
            }
            Pending::Rcpt => {
                if let Some(txn) = &mut self.txn {
                    if let Some(to) = txn.pending_rcpt.take() {
                        txn.recipients.push(to);
                    }
                }
            }
            Pending::DataEnd => self.txn = None,
            Pending::Turn => {
                // The roles swap: this server session is over, and nothing
                // after TURN in the input belongs to it.
                self.phase = Phase::Closed;
                self.input.clear();
                self.events.push_back(ServerEvent::Closed {
                    reason: CloseReason::Turned,
                });
                return Ok(());
            }
            // Refused above, before the decision was taken.
            Pending::AuthLookup => {}
        }
        self.process();
        Ok(())
    }

    /// Rejects the pending decision; `reply` must be 4xx or 5xx.
    pub fn reject(&mut self, reply: Reply) -> Result<(), ApiMisuse> {
        if self.pending.is_none() {
            return Err(ApiMisuse::NoDecisionPending);
        }
        if !(reply.is_transient() || reply.is_permanent()) {
            return Err(ApiMisuse::IllegalReply {
                code: reply.code().get(),
            });
        }
        match self.pending.take() {
            Some(Pending::Mail) | Some(Pending::DataEnd) => self.txn = None,
            Some(Pending::Turn) => {}
            Some(Pending::AuthLookup) => {
                if let Some(exchange) = self.sasl.take() {
                    self.events.push_back(ServerEvent::AuthFailed {
                        mechanism: exchange.mechanism(),
                        username: exchange.username().map(str::to_string),
                        reason: AuthFailure::Refused,
                    });
                }
                self.phase = Phase::Command;
            }
            Some(Pending::Rcpt) => {
                if let Some(txn) = &mut self.txn {
                    txn.pending_rcpt = None;
                }
            }
            None => {}
        }
        let closes = reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE;
        self.send(&reply);
        if closes {
            // RFC 5321 3.8: a 421 means the server is closing the channel.
            self.phase = Phase::Closed;
            self.events.push_back(ServerEvent::Closed {
                reason: CloseReason::Shutdown,
            });
            return Ok(());
        }
        self.process();
        Ok(())
    }

    fn send(&mut self, reply: &Reply) {
        trace!(reply = %reply, "server reply");
        let mut buf = Vec::new();
        fit_reply_lines(reply).write_to(&mut buf);
        self.output.extend_from_slice(&buf);
    }

    fn reply(&mut self, code: ReplyCode, enhanced: (u8, u16, u16), text: &str) {
        let (c, s, d) = enhanced;
        self.send(&Reply::new(code, EnhancedCode::new(c, s, d), text));
    }

    fn close_with(&mut self, reply: Reply, reason: CloseReason) {
        self.send(&reply);
        self.phase = Phase::Closed;
        self.decoder = None;
        self.pending = None;
        self.input.clear();
        self.events.push_back(ServerEvent::Closed { reason });
    }

    /// Counts a protocol error; hangs up when the budget is spent.
    fn protocol_error(&mut self, reply: Reply) {
        self.send(&reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            debug!(errors = self.errors, "too many protocol errors");
            self.close_with(
                Reply::new(
                    ReplyCode::SERVICE_NOT_AVAILABLE,
                    EnhancedCode::new(4, 7, 0),
                    format!(
                        "{} Too many errors, closing connection",
                        self.config.hostname
                    ),
                ),
                CloseReason::TooManyErrors,
            );
        }
    }

    /// RCPT or DATA without a transaction: a protocol error, unless it
    /// follows a refused MAIL in a pipelined batch.
    fn no_transaction(&mut self, text: &str) {
        if self.mail_refused {
            self.reply(ReplyCode::BAD_SEQUENCE, (5, 5, 1), text);
        } else {
            self.sequence_error(text);
        }
    }

    fn sequence_error(&mut self, text: &str) {
        self.protocol_error(Reply::new(
            ReplyCode::BAD_SEQUENCE,
            EnhancedCode::new(5, 5, 1),
            text,
        ));
    }

    /// Works through buffered input until it runs out, a decision is
    /// pending, or the session closes.
    fn process(&mut self) {
        while self.pending.is_none() {
            match self.phase {
                Phase::Closed | Phase::Upgrading => return,
                Phase::Data => {
                    if !self.process_data() {
                        return;
                    }
                }
                Phase::Auth => {
                    let Some(line) = self.next_command_line() else {
                        return;
                    };
                    self.handle_sasl_line(line);
                }
                Phase::Command => {
                    let Some(line) = self.next_command_line() else {
                        return;
                    };
                    match line {
                        CommandLine::Ok(line) => self.handle_command_line(&line),
                        CommandLine::TooLong { auth: true } => self.protocol_error(Reply::new(
                            ReplyCode::SYNTAX_ERROR,
                            EnhancedCode::new(5, 5, 6),
                            "Authentication exchange line is too long",
                        )),
                        CommandLine::TooLong { auth: false } => self.protocol_error(Reply::new(
                            ReplyCode::SYNTAX_ERROR,
                            EnhancedCode::new(5, 5, 2),
                            "Line too long",
                        )),
                        CommandLine::BareEnding => self.protocol_error(Reply::new(
                            ReplyCode::SYNTAX_ERROR,
                            EnhancedCode::new(5, 5, 2),
                            "Bare CR or LF not allowed; end lines with CRLF",
                        )),
                    }
                }
            }
        }
    }

    /// Whether `line` is an AUTH command line on a server that offers AUTH:
    /// those may be as long as any line of the exchange.
    fn is_auth_command(&self, line: &[u8]) -> bool {
        !self.config.auth_mechanisms.is_empty()
            && line.len() >= 5
            && line[..5].eq_ignore_ascii_case(b"AUTH ")
    }

    fn next_command_line(&mut self) -> Option<CommandLine> {
        let in_auth = self.phase == Phase::Auth;
        let limit = self.config.max_command_line + PARAMETER_ALLOWANCE;
        // RFC 4954 section 4: lines of an AUTH exchange may be 12,288 octets.
        let buffer_limit = if in_auth || !self.config.auth_mechanisms.is_empty() {
            limit.max(MAX_SASL_LINE)
        } else {
            limit
        };
        let Some((len, ending, ending_len)) = find_line_end(&self.input) else {
            if self.input.len() > buffer_limit {
                if !self.discarding_long_line {
                    self.long_line_is_auth = in_auth || self.is_auth_command(&self.input);
                }
                // Throw the overlong line away as it arrives, but keep a
                // trailing CR that may start the CRLF that ends it.
                let keep = usize::from(self.input.last() == Some(&b'\r'));
                let drop = self.input.len() - keep;
                self.input.advance(drop);
                self.discarding_long_line = true;
            }
            return None;
        };
        let line = self.input.split_to(len + ending_len);
        if std::mem::take(&mut self.discarding_long_line) {
            let auth = std::mem::take(&mut self.long_line_is_auth);
            return Some(CommandLine::TooLong { auth });
        }
        let content = line.freeze().slice(..len);
        let is_auth_line = in_auth || self.is_auth_command(&content);
        let is_mail_or_rcpt = content.len() >= 4
            && (content[..4].eq_ignore_ascii_case(b"MAIL")
                || content[..4].eq_ignore_ascii_case(b"RCPT"));
        let own_limit = if is_auth_line {
            MAX_SASL_LINE
        } else if is_mail_or_rcpt {
            limit
        } else {
            self.config.max_command_line
        };
        // Length before line ending: a line this long that arrives in pieces
        // is discarded above before its ending is seen, so judging it by its
        // ending here would make the reply depend on how the input was split.
        if len + 2 > own_limit {
            return Some(CommandLine::TooLong { auth: is_auth_line });
        }
        if ending != LineEnding::Crlf
            && self.config.bare_line_endings == BareLineEndingPolicy::Reject
        {
            return Some(CommandLine::BareEnding);
        }
        Some(CommandLine::Ok(content))
    }

    fn parse_options(&self) -> ParseOptions {
        let esmtp = self.helo.as_ref().is_some_and(|(_, e)| *e);
        ParseOptions {
            esmtp,
            size: esmtp,
            eightbitmime: esmtp && self.config.eightbitmime,
            smtputf8: esmtp && self.config.smtputf8,
            utf8_transaction: self.txn.as_ref().is_some_and(|t| t.params.smtputf8),
            dsn: esmtp && self.config.dsn,
            auth: esmtp && !self.offered_mechanisms().is_empty(),
        }
    }

    fn handle_command_line(&mut self, line: &[u8]) {
        let limit = self.config.max_commands_before_mail;
        let is_quit = line.len() == 4 && line.eq_ignore_ascii_case(b"QUIT");
        if limit > 0 && self.txn.is_none() && !is_quit {
            self.commands_without_mail += 1;
            if self.commands_without_mail > limit {
                debug!(limit, "too many commands without a transaction");
                return self.close_with(
                    Reply::new(
                        ReplyCode::SERVICE_NOT_AVAILABLE,
                        EnhancedCode::new(4, 7, 0),
                        format!(
                            "{} Too many commands without mail, closing connection",
                            self.config.hostname
                        ),
                    ),
                    CloseReason::TooManyCommands,
                );
            }
        }
        let command = match Command::parse(line, &self.parse_options()) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = ?e, "bad command");
                if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"MAIL") && self.txn.is_none()
                {
                    self.mail_refused = true;
                }
                self.protocol_error(e.reply());
                return;
            }
        };
        trace!(command = command.verb(), "server command");
        // The leniency for a refused MAIL covers the rest of its pipelined
        // batch (RCPTs, then DATA) and nothing after it.
        if !matches!(command, Command::Rcpt { .. } | Command::Data) {
            self.mail_refused = false;
        }
        match command {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Rset => {
                self.reset_transaction();
                self.reply(ReplyCode::OK, (2, 0, 0), "OK");
            }
            Command::Noop => self.reply(ReplyCode::OK, (2, 0, 0), "OK"),
            Command::Quit => {
                let text = format!("{} closing connection", self.config.hostname);
                self.close_with(
                    Reply::new(ReplyCode::CLOSING, EnhancedCode::new(2, 0, 0), text),
                    CloseReason::Quit,
                );
            }
            Command::Vrfy(_) => self.reply(
                ReplyCode::CANNOT_VRFY,
                (2, 0, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Expn(_) => {
                self.reply(ReplyCode::NOT_IMPLEMENTED, (5, 5, 1), "EXPN not available")
            }
            Command::Help(_) => self.reply(
                ReplyCode::HELP,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            ),
            Command::Turn => {
                if self.txn.is_some() {
                    return self.sequence_error("TURN inside a mail transaction");
                }
                if self.helo.is_none() {
                    return self.sequence_error("Send EHLO or HELO first");
                }
                self.pending = Some(Pending::Turn);
                self.events.push_back(ServerEvent::Turn);
            }
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(
                &mechanism,
                initial_response.as_ref().map(|r| r.0.as_bytes()),
            ),
        }
    }

    /// AUTH (RFC 4954 section 4).
    fn auth(&mut self, mechanism: &str, initial: Option<&[u8]>) {
        if self.config.auth_mechanisms.is_empty() {
            return self.protocol_error(Reply::new(
                ReplyCode::NOT_IMPLEMENTED,
                EnhancedCode::new(5, 5, 1),
                "AUTH not available",
            ));
        }
        if !self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp) {
            return self.sequence_error("Send EHLO first");
        }
        if self.authenticated.is_some() {
            return self.sequence_error("Already authenticated");
        }
        if self.txn.is_some() {
            return self.sequence_error("AUTH not permitted during a mail transaction");
        }
        let Some(mechanism) =
            Mechanism::from_name(mechanism).filter(|m| self.config.auth_mechanisms.contains(m))
        else {
            return self.protocol_error(Reply::new(
                ReplyCode::PARAMETER_NOT_IMPLEMENTED,
                EnhancedCode::new(5, 5, 4),
                "Unrecognized authentication type",
            ));
        };
        if !self.mechanism_allowed_here(mechanism) {
            return self.reply(
                ReplyCode::AUTH_ENCRYPTION_REQUIRED,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            );
        }
        let initial = match initial.map(sasl::decode_response) {
            None => None,
            Some(Some(data)) => Some(data),
            Some(None) => {
                self.events.push_back(ServerEvent::AuthFailed {
                    mechanism,
                    username: None,
                    reason: AuthFailure::Malformed,
                });
                return self.protocol_error(Reply::new(
                    ReplyCode::PARAMETER_SYNTAX,
                    EnhancedCode::new(5, 5, 2),
                    "Cannot decode base64 initial response",
                ));
            }
        };
        debug!(%mechanism, "AUTH started");
        let (exchange, step) = ServerExchange::start(mechanism, initial);
        self.sasl = Some(exchange);
        self.auth_step(step);
    }

    /// One line of an AUTH exchange.
    fn handle_sasl_line(&mut self, line: CommandLine) {
        let content = match line {
            CommandLine::Ok(content) => content,
            CommandLine::TooLong { .. } => {
                return self.auth_failed(AuthFailure::LineTooLong, None, None)
            }
            CommandLine::BareEnding => {
                return self.auth_failed(
                    AuthFailure::Malformed,
                    None,
                    Some("Bare CR or LF not allowed"),
                )
            }
        };
        if &content[..] == b"*" {
            return self.auth_failed(AuthFailure::Cancelled, None, None);
        }
        let Some(data) = sasl::decode_response(&content) else {
            return self.auth_failed(
                AuthFailure::Malformed,
                None,
                Some("Cannot decode base64 response"),
            );
        };
        let Some(exchange) = self.sasl.as_mut() else {
            self.phase = Phase::Command;
            return;
        };
        let step = exchange.respond(data);
        self.auth_step(step);
    }

    /// Acts on what the mechanism wants next.
    fn auth_step(&mut self, step: ServerStep) {
        let Some(mechanism) = self.sasl.as_ref().map(ServerExchange::mechanism) else {
            self.phase = Phase::Command;
            return;
        };
        match step {
            ServerStep::Challenge(data) => {
                self.phase = Phase::Auth;
                self.send(&Reply::new(
                    ReplyCode::AUTH_CHALLENGE,
                    None,
                    sasl::encode(&data),
                ));
            }
            ServerStep::Lookup(username) => {
                // Lines that arrive meanwhile stay buffered: they belong to
                // the exchange, never to the command loop.
                self.phase = Phase::Auth;
                self.pending = Some(Pending::AuthLookup);
                self.events.push_back(ServerEvent::AuthLookup {
                    mechanism,
                    username,
                });
            }
            ServerStep::Success(username) => {
                self.sasl = None;
                self.phase = Phase::Command;
                debug!(%mechanism, "AUTH succeeded");
                self.reply(
                    ReplyCode::AUTH_SUCCEEDED,
                    (2, 7, 0),
                    "Authentication successful",
                );
                self.authenticated = Some(username.clone());
                self.events.push_back(ServerEvent::Authenticated {
                    mechanism,
                    username,
                });
            }
            ServerStep::Fail(reason, username) => self.auth_failed(reason, username, None),
        }
    }

    /// Ends the exchange with the reply for `reason`; `username` if the
    /// mechanism knows it better than the exchange's state does.
    fn auth_failed(&mut self, reason: AuthFailure, username: Option<String>, text: Option<&str>) {
        self.phase = Phase::Command;
        let Some(exchange) = self.sasl.take() else {
            return;
        };
        debug!(mechanism = %exchange.mechanism(), ?reason, "AUTH failed");
        self.events.push_back(ServerEvent::AuthFailed {
            mechanism: exchange.mechanism(),
            username: username.or_else(|| exchange.username().map(str::to_string)),
            reason,
        });
        let e = EnhancedCode::new;
        match reason {
            AuthFailure::BadCredentials | AuthFailure::Refused => self.send(&Reply::new(
                ReplyCode::AUTH_INVALID,
                e(5, 7, 8),
                "Authentication credentials invalid",
            )),
            AuthFailure::Cancelled => self.send(&Reply::new(
                ReplyCode::PARAMETER_SYNTAX,
                e(5, 0, 0),
                "Authentication cancelled",
            )),
            AuthFailure::Malformed => self.protocol_error(Reply::new(
                ReplyCode::PARAMETER_SYNTAX,
                e(5, 5, 2),
                text.unwrap_or("Malformed authentication response"),
            )),
            AuthFailure::LineTooLong => self.protocol_error(Reply::new(
                ReplyCode::SYNTAX_ERROR,
                e(5, 5, 6),
                "Authentication exchange line is too long",
            )),
        }
    }

    /// STARTTLS (RFC 3207 4): 220, then nothing more in plaintext.
    fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.sequence_error("TLS already active");
        }
        if !self.config.starttls {
            return self.protocol_error(Reply::new(
                ReplyCode::NOT_IMPLEMENTED,
                EnhancedCode::new(5, 5, 1),
                "STARTTLS not offered",
            ));
        }
        if self.txn.is_some() {
            return self.sequence_error("STARTTLS inside a mail transaction");
        }
        self.reply(ReplyCode::SERVICE_READY, (2, 0, 0), "Ready to start TLS");
        // Anything the client pipelined behind STARTTLS arrived in
        // plaintext: throw it away rather than run it inside TLS
        // (CVE-2011-0411).
        if !self.input.is_empty() {
            debug!(
                bytes = self.input.len(),
                "discarding input sent after STARTTLS"
            );
            self.input.clear();
        }
        self.phase = Phase::Upgrading;
        self.events.push_back(ServerEvent::StartTls);
    }

    fn reset_transaction(&mut self) {
        self.mail_refused = false;
        if self.txn.take().is_some() {
            self.events.push_back(ServerEvent::TransactionReset);
        }
    }

    fn hello(&mut self, name: String, esmtp: bool) {
        // RFC 5321 4.1.4: EHLO/HELO mid-transaction resets it.
        self.reset_transaction();
        self.helo = Some((name.clone(), esmtp));
        let host = self.config.hostname.clone();
        let first = format!("{host} greets {name}");
        if esmtp {
            let mut lines = vec![first];
            if self.config.pipelining {
                lines.push("PIPELINING".into());
            }
            lines.push(format!("SIZE {}", self.config.max_message_size));
            if self.config.eightbitmime {
                lines.push("8BITMIME".into());
            }
            if self.config.smtputf8 {
                lines.push("SMTPUTF8".into());
            }
            if self.config.dsn {
                lines.push("DSN".into());
            }
            if self.config.starttls && self.tls.is_none() {
                lines.push("STARTTLS".into());
            }
            let mechanisms = self.offered_mechanisms();
            if !mechanisms.is_empty() {
                let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
                lines.push(format!("AUTH {}", names.join(" ")));
            }
            lines.push("ENHANCEDSTATUSCODES".into());
            self.send(&Reply::multiline(ReplyCode::OK, None, lines));
        } else {
            self.send(&Reply::new(ReplyCode::OK, None, first));
        }
        self.events.push_back(ServerEvent::Greeted { name, esmtp });
    }

    fn mail(&mut self, from: ReversePath, mut params: MailParams) {
        // RFC 4954 section 5: from a client that has not authenticated, an
        // AUTH=<mailbox> counts as AUTH=<>. An authenticated client's value
        // is kept; the application decides whether it trusts it.
        if self.authenticated.is_none() && params.auth.is_some() {
            params.auth = Some(ReversePath::Null);
        }
        if self.txn.is_some() {
            return self.sequence_error("Nested MAIL command");
        }
        // Until the application accepts it.
        self.mail_refused = true;
        if self.helo.is_none() {
            return self.sequence_error("Send EHLO or HELO first");
        }
        if params
            .size
            .is_some_and(|size| size > self.config.max_message_size)
        {
            // RFC 1870 section 6.1: a declared size over the limit is 552.
            return self.reply(
                ReplyCode::EXCEEDED_STORAGE,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
        }
        if params.body == Some(Body::EightBitMime) && !self.config.eightbitmime {
            return self.reply(
                ReplyCode::PARAMETERS_NOT_RECOGNIZED,
                (5, 5, 4),
                "8BITMIME not offered",
            );
        }
        self.txn = Some(Transaction {
            params: params.clone(),
            recipients: Vec::new(),
            rcpt_attempted: false,
            pending_rcpt: None,
        });
        self.pending = Some(Pending::Mail);
        self.events
            .push_back(ServerEvent::MailFrom { from, params });
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams) {
        let max = self.config.max_recipients;
        let Some(txn) = &mut self.txn else {
            return self.no_transaction("Need MAIL before RCPT");
        };
        txn.rcpt_attempted = true;
        if txn.recipients.len() >= max {
            // RFC 5321 4.5.3.1.10: 452 tells the client to send the rest later.
            return self.reply(
                ReplyCode::INSUFFICIENT_STORAGE,
                (4, 5, 3),
                "Too many recipients",
            );
        }
        txn.pending_rcpt = Some(to.clone());
        self.pending = Some(Pending::Rcpt);
        self.events.push_back(ServerEvent::RcptTo { to, params });
    }

    fn data(&mut self) {
        let Some(txn) = &self.txn else {
            self.no_transaction("Need MAIL before DATA");
            // DATA is the last command of a pipelined group (RFC 2920 3.1).
            self.mail_refused = false;
            return;
        };
        if txn.recipients.is_empty() {
            if txn.rcpt_attempted {
                // RFC 2920 3.1: DATA after all RCPTs failed gets 554.
                return self.reply(
                    ReplyCode::TRANSACTION_FAILED,
                    (5, 5, 1),
                    "No valid recipients",
                );
            }
            return self.sequence_error("Need RCPT before DATA");
        }
        self.send(&Reply::new(
            ReplyCode::START_MAIL_INPUT,
            None,
            "End data with <CR><LF>.<CR><LF>",
        ));
        self.phase = Phase::Data;
        self.decoder = Some(DataDecoder::new(DataLimits {
            max_line: self.config.max_text_line,
            max_size: self.config.max_message_size,
            bare_line_endings: self.config.bare_line_endings,
        }));
        self.events.push_back(ServerEvent::DataStart);
    }

    /// Returns false when more input is needed.
    fn process_data(&mut self) -> bool {
        let Some(decoder) = &mut self.decoder else {
            self.phase = Phase::Command;
            return true;
        };
        let had_fault = decoder.fault().is_some();
        let progress = decoder.decode(&mut self.input, &mut self.data_out);
        let fault = decoder.fault();
        let size = decoder.size();
        if !self.data_out.is_empty() {
            let chunk = self.data_out.split().freeze();
            self.events.push_back(ServerEvent::DataChunk(chunk));
        }
        if let (false, Some(fault)) = (had_fault, fault) {
            self.events.push_back(ServerEvent::DataAborted { fault });
        }
        if progress == DataProgress::NeedMore {
            return false;
        }
        self.decoder = None;
        self.phase = Phase::Command;
        match fault {
            None => {
                self.pending = Some(Pending::DataEnd);
                self.events.push_back(ServerEvent::DataEnd { size });
            }
            Some(fault) => {
                self.txn = None;
                match fault {
                    DataFault::TooBig => self.reply(
                        ReplyCode::EXCEEDED_STORAGE,
                        (5, 3, 4),
                        "Message size exceeds fixed maximum message size",
                    ),
                    DataFault::LineTooLong => self.reply(
                        ReplyCode::TRANSACTION_FAILED,
                        (5, 6, 0),
                        &format!(
                            "Message has a line longer than {} octets",
                            self.config.max_text_line
                        ),
                    ),
                    DataFault::BareLineEnding => self.reply(
                        ReplyCode::TRANSACTION_FAILED,
                        (5, 6, 0),
                        "Message has a bare CR or LF; lines must end with CRLF",
                    ),
                }
            }
        }
        true
    }
}

enum CommandLine {
    Ok(Bytes),
    /// Over its limit; `auth` when it belongs to an AUTH exchange.
    TooLong {
        auth: bool,
    },
    BareEnding,
}
