//! What the application plugs into the server driver: a go-smtp style
//! `Backend` that opens one `SessionHandler` per session.
//!
//! Each decision the engine asks for becomes one async call here. A handler
//! answers with `Ok` to accept or `Err(reply)` (4xx or 5xx) to refuse.

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_engine::{CredentialLookup, ForwardPath, MailParams, RcptParams, Reply, ReversePath};
use smtplink_transport::{Endpoint, Link, LinkInfo};

/// Facts about a session, for the handler and the trace headers.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// A short id, unique in this process, used in logs and Received: ids.
    pub id: String,
    /// The link the session runs on.
    pub link: LinkInfo,
    /// The name the client gave in EHLO/HELO (empty before it does).
    pub helo: String,
    /// EHLO rather than HELO.
    pub esmtp: bool,
    /// The user the client authenticated as with AUTH (RFC 4954), if any.
    pub auth_user: Option<String>,
    /// Whether the session is encrypted (STARTTLS or implicit TLS).
    pub encrypted: bool,
    /// The relay policy of the listener the session came in on.
    pub relay_policy: RelayPolicy,
}

impl SessionInfo {
    /// Whether this session may send mail to recipients that are not
    /// delivered here (RFC 5321 7.1): by its listener's policy, and for
    /// [`RelayPolicy::Authenticated`] once the client authenticated.
    pub fn may_relay(&self) -> bool {
        match self.relay_policy {
            RelayPolicy::LocalOnly => false,
            RelayPolicy::Authenticated => self.auth_user.is_some(),
            RelayPolicy::Trusted => true,
        }
    }
}

/// Whom a listener relays for (RFC 5321 7.1, RFC 6409). Recipients
/// delivered locally are accepted under every policy; the backend refuses
/// the others with `550 5.7.1` when [`SessionInfo::may_relay`] is false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayPolicy {
    /// Local recipients only: a public port 25.
    #[default]
    LocalOnly,
    /// Also relay for sessions that authenticated (submission, RFC 6409).
    Authenticated,
    /// Relay for anyone on this listener: a serial line to a known site,
    /// loopback submission.
    Trusted,
}

impl RelayPolicy {
    /// The policy's name in configs and flags.
    pub fn name(self) -> &'static str {
        match self {
            RelayPolicy::LocalOnly => "local-only",
            RelayPolicy::Authenticated => "authenticated",
            RelayPolicy::Trusted => "trusted",
        }
    }

    /// The default for a listener at `endpoint`: `trusted` where only this
    /// machine can connect (TCP on a loopback address or `localhost`,
    /// `mem://` in-process listeners), `local-only` everywhere else
    /// (other TCP addresses, serial and X.25 lines, and `stdio:`, which
    /// may be a public port behind inetd).
    pub fn default_for(endpoint: &Endpoint) -> Self {
        let scheme = endpoint.scheme();
        let scheme = scheme.strip_prefix("tls+").unwrap_or(scheme);
        let loopback = match scheme {
            "mem" => true,
            "tcp" | "smtp" => {
                endpoint.host_ip().is_some_and(|ip| ip.is_loopback())
                    || endpoint
                        .host()
                        .is_some_and(|h| h.eq_ignore_ascii_case("localhost"))
            }
            _ => false,
        };
        if loopback {
            RelayPolicy::Trusted
        } else {
            RelayPolicy::LocalOnly
        }
    }

    /// Parses `local-only`, `authenticated` or `trusted`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "local-only" => Some(RelayPolicy::LocalOnly),
            "authenticated" => Some(RelayPolicy::Authenticated),
            "trusted" => Some(RelayPolicy::Trusted),
            _ => None,
        }
    }
}

impl std::fmt::Display for RelayPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where AUTH finds its users: the credential for a name and the senders
/// each user may give in MAIL FROM. Calls are quick (in memory); the
/// driver runs the expensive PBKDF2 part off the async threads itself.
pub trait UserStore: Send + Sync + 'static {
    /// The answer to the engine's credential lookup: the user's stored
    /// credential, or "no such user" with a decoy that is the same every
    /// time for the same name.
    fn lookup(&self, username: &str) -> CredentialLookup;

    /// Whether `username` may use `address` (the MAIL FROM address,
    /// empty for the null sender) as its sender.
    fn may_send_as(&self, username: &str, address: &str) -> bool;
}

/// Makes a handler for each new session.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Called before the greeting; `Err` refuses the session with that
    /// reply (RFC 5321 3.1: a 554 greeting).
    async fn open(&self, info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply>;
}

/// The application's side of one session. Every method has a default that
/// accepts, so a handler implements only what it cares about.
#[async_trait]
pub trait SessionHandler: Send {
    /// EHLO or HELO was accepted; `info.helo` is now set.
    async fn greeted(&mut self, _info: &SessionInfo) {}

    /// MAIL FROM: accept or refuse the sender.
    async fn mail(
        &mut self,
        _info: &SessionInfo,
        _from: &ReversePath,
        _params: &MailParams,
    ) -> Result<(), Reply> {
        Ok(())
    }

    /// RCPT TO: accept or refuse one recipient.
    async fn rcpt(
        &mut self,
        _info: &SessionInfo,
        _to: &ForwardPath,
        _params: &RcptParams,
    ) -> Result<(), Reply> {
        Ok(())
    }

    /// 354 was sent; the body follows. An `Err` is kept and given as the
    /// reply to the end of data (the client cannot be stopped mid-DATA).
    async fn data_start(&mut self, _info: &SessionInfo) -> Result<(), Reply> {
        Ok(())
    }

    /// A piece of the body (un-stuffed, CRLF line endings).
    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply>;

    /// The body is complete. Return `Ok(text)` only once the message is
    /// stored durably; the text goes into the 250 reply (e.g. a queue id).
    async fn data_end(&mut self, info: &SessionInfo) -> Result<String, Reply>;

    /// The message in progress is abandoned (limit broken, link cut,
    /// session closed): drop whatever was received.
    async fn abort(&mut self) {}

    /// The transaction was reset (RSET, EHLO/HELO): forget the envelope.
    async fn reset(&mut self) {}

    /// TURN (RFC 821 4.1.1): whether to swap roles. Say yes only on a
    /// trusted point-to-point link: whoever sends TURN gets to receive
    /// the mail queued for the other side without proving who it is.
    async fn turn_allowed(&mut self, _info: &SessionInfo) -> bool {
        false
    }

    /// TURN was accepted and its 250 sent: `link` now carries a session
    /// the other way, which this handler runs (as the client). The server
    /// session is over.
    async fn turned(&mut self, _info: &SessionInfo, _link: Link) {}
}
