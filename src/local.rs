//! Local delivery for `serve`: a driver [`Backend`] that stores every
//! accepted message into a Maildir per recipient.
//!
//! The 250 to the end of data is sent only after
//! [`MessageWriter::commit`] returned, i.e. after every copy is fsync'd
//! into its `new/`. Any storage failure is a 451, and nothing is left in
//! any `new/`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_driver::{Backend, SessionHandler, SessionInfo};
use smtplink_engine::{
    EnhancedCode, ForwardPath, MailParams, RcptParams, Reply, ReplyCode, ReversePath,
};
use smtplink_maildir::{MaildirError, MaildirStore, MessageWriter, TraceInfo};
use tracing::{error, info};

/// Stores mail for every recipient into Maildirs under one root.
pub struct MaildirBackend {
    store: Arc<MaildirStore>,
}

impl MaildirBackend {
    pub fn new(store: MaildirStore) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

#[async_trait]
impl Backend for MaildirBackend {
    async fn open(&self, _info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        Ok(Box::new(MaildirSession {
            store: self.store.clone(),
            reverse_path: String::new(),
            smtputf8: false,
            recipients: Vec::new(),
            writer: None,
        }))
    }
}

struct MaildirSession {
    store: Arc<MaildirStore>,
    reverse_path: String,
    smtputf8: bool,
    recipients: Vec<String>,
    writer: Option<MessageWriter>,
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(1);

fn storage_failure(e: &MaildirError) -> Reply {
    error!(error = %e, "storing the message failed");
    Reply::new(
        ReplyCode::LOCAL_ERROR,
        EnhancedCode::new(4, 3, 0),
        "Local error in processing; message not stored, try again later",
    )
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MaildirError> + Send + 'static,
) -> Result<T, Reply> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(storage_failure(&e)),
        Err(join) => {
            error!(error = %join, "storage task failed");
            Err(Reply::new(
                ReplyCode::LOCAL_ERROR,
                EnhancedCode::new(4, 3, 0),
                "Local error in processing",
            ))
        }
    }
}

impl MaildirSession {
    fn recipient_name(&self, to: &ForwardPath) -> String {
        postmaster_mailbox(to, self.store.hostname())
    }
}

/// The mailbox name for a recipient. "postmaster" is case-insensitive
/// (RFC 5321 4.5.1), quoted or not, so every spelling of it lands in one
/// `postmaster@<domain>`; `<Postmaster>` with no domain (4.1.1.3) is ours.
fn postmaster_mailbox(to: &ForwardPath, hostname: &str) -> String {
    match to {
        ForwardPath::Postmaster => format!("postmaster@{}", hostname.to_ascii_lowercase()),
        ForwardPath::Mailbox(m) => {
            let local = m.local_part().trim_matches('"');
            if local.eq_ignore_ascii_case("postmaster") {
                format!("postmaster@{}", m.domain().to_lowercase())
            } else {
                m.to_string()
            }
        }
    }
}

#[async_trait]
impl SessionHandler for MaildirSession {
    async fn mail(
        &mut self,
        _info: &SessionInfo,
        from: &ReversePath,
        params: &MailParams,
    ) -> Result<(), Reply> {
        self.reverse_path = from.to_string();
        self.smtputf8 = params.smtputf8;
        self.recipients.clear();
        Ok(())
    }

    async fn rcpt(
        &mut self,
        _info: &SessionInfo,
        to: &ForwardPath,
        _params: &RcptParams,
    ) -> Result<(), Reply> {
        let name = self.recipient_name(to);
        self.recipients.push(name);
        Ok(())
    }

    async fn data_start(&mut self, info: &SessionInfo) -> Result<(), Reply> {
        let id = format!(
            "{}.{}",
            info.id,
            MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // RFC 3848 / RFC 6531 protocol names for the `with` clause.
        let protocol = match (info.esmtp, self.smtputf8) {
            (_, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, false) => "SMTP",
        };
        let trace = TraceInfo {
            reverse_path: self.reverse_path.clone(),
            helo: info.helo.clone(),
            // RFC 5321 4.4 TCP-info is an address literal, optionally after
            // a name: give the IP alone when there is one (never "ip:port").
            peer: info
                .link
                .peer_ip
                .map_or_else(|| info.link.peer.clone(), |ip| ip.to_string()),
            peer_ip: info.link.peer_ip,
            protocol: protocol.into(),
            id,
            recipients: self.recipients.clone(),
        };
        let store = self.store.clone();
        self.writer = Some(blocking(move || store.begin(&trace)).await?);
        Ok(())
    }

    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        let Some(mut writer) = self.writer.take() else {
            return Err(storage_failure(&MaildirError::IncompleteMessage));
        };
        self.writer = Some(
            blocking(move || {
                writer.write_all(&chunk)?;
                Ok(writer)
            })
            .await?,
        );
        Ok(())
    }

    async fn data_end(&mut self, info: &SessionInfo) -> Result<String, Reply> {
        let Some(writer) = self.writer.take() else {
            return Err(storage_failure(&MaildirError::IncompleteMessage));
        };
        let recipients = std::mem::take(&mut self.recipients);
        let file_size = writer.total_size();
        let count = recipients.len();
        let paths = blocking(move || writer.commit(&recipients)).await?;
        info!(session = %info.id, file_size, recipients = count, mailboxes = paths.len(), "stored");
        Ok(match paths.len() {
            1 => "Message stored in 1 mailbox".to_string(),
            n => format!("Message stored in {n} mailboxes"),
        })
    }

    async fn abort(&mut self) {
        if let Some(writer) = self.writer.take() {
            // Removing the tmp file is blocking I/O too.
            let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
        }
    }

    async fn reset(&mut self) {
        self.abort().await;
        self.recipients.clear();
        self.reverse_path.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_spelling_of_postmaster_is_one_mailbox() {
        let parse = |s: &str| ForwardPath::parse(s, false).unwrap();
        for p in [
            "<Postmaster>",
            "<POSTMASTER@MX.test>",
            "<\"postmaster\"@mx.test>",
            "<postmaster@mx.test>",
        ] {
            assert_eq!(
                postmaster_mailbox(&parse(p), "MX.test"),
                "postmaster@mx.test",
                "{p}"
            );
        }
        assert_eq!(
            postmaster_mailbox(&parse("<Bob@MX.test>"), "mx.test"),
            "Bob@MX.test"
        );
    }
}
