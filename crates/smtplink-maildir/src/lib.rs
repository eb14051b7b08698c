//! Durable Maildir delivery for smtplink: stores each accepted message once
//! per recipient, in a Maildir per recipient (`<root>/<mailbox>/{tmp,new,cur}`),
//! with `Return-Path:` and `Received:` trace header fields in front.
//!
//! A message is written into `tmp/` while it arrives and reaches `new/` only
//! in [`MessageWriter::commit`], after the file and every directory involved
//! have been fsync'd. That is the point at which a server may answer `250`
//! to the end of DATA. A message that is dropped before commit, or whose
//! commit fails, leaves nothing in any `new/`. See the design notes ("What
//! nothing lost means").
//!
//! Recipient addresses come from the network; [`mailbox_dir_name`] maps each
//! one to a single safe directory name. All I/O is blocking `std::fs`; an
//! async server calls it through `spawn_blocking`.
//!
//! ```no_run
//! use smtplink_maildir::{MaildirStore, TraceInfo};
//!
//! # fn main() -> Result<(), smtplink_maildir::MaildirError> {
//! let store = MaildirStore::new("/var/mail/smtplink", "mx.example.net");
//! let trace = TraceInfo {
//!     reverse_path: "alice@example.org".into(),
//!     helo: "client.example.org".into(),
//!     peer: "192.0.2.7".into(),
//!     peer_ip: Some("192.0.2.7".parse().expect("valid IP")),
//!     protocol: "ESMTP".into(),
//!     id: "1A2B3C".into(),
//!     recipients: vec!["bob@example.net".into()],
//!     tls: None,
//! };
//! let mut msg = store.begin(&trace)?;
//! msg.write_all(b"Subject: hi\r\n\r\nHello.\r\n")?;
//! let stored = msg.commit(&trace.recipients)?;
//! assert_eq!(stored.len(), 1);
//! # Ok(())
//! # }
//! ```

mod error;
mod mailbox;
mod store;
mod trace;

pub use error::MaildirError;
pub use mailbox::{mailbox_dir_name, MAX_MAILBOX_NAME_LEN};
pub use store::{MaildirStore, MessageWriter};
pub use trace::{protocol_name, rfc5322_date, TraceInfo};

#[cfg(test)]
mod tests;
