//! What the application plugs into the server driver: a go-smtp style
//! `Backend` that opens one `SessionHandler` per session.
//!
//! Each decision the engine asks for becomes one async call here. A handler
//! answers with `Ok` to accept or `Err(reply)` (4xx or 5xx) to refuse.

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_engine::{ForwardPath, MailParams, RcptParams, Reply, ReversePath};
use smtplink_transport::{Link, LinkInfo};

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
