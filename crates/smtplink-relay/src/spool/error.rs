//! The spool's one error type.

use std::io;
use std::path::PathBuf;

use super::MessageId;

/// Everything that can go wrong in the spool.
///
/// A failed [`SpoolWriter::commit`](super::SpoolWriter::commit) has queued
/// nothing (it removed what it had written); the server answers a transient
/// failure (`451 4.3.0`) and the client retries. A failed
/// [`SpoolLock::update`](super::SpoolLock::update) has left either the old or
/// the new record on disk, never a mix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"create directory"`, `"fsync"`,
        /// `"rename"`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// An envelope record could not be encoded, or the file does not hold a
    /// valid record for its id.
    #[error("cannot {op} envelope record {}: {source}", path.display())]
    Record {
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The record file.
        path: PathBuf,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// No message with this id is queued (never was, or already removed).
    #[error("no message {id} in the spool ({} is missing)", path.display())]
    NotFound {
        /// The id asked for.
        id: MessageId,
        /// The file that is missing: the envelope record, or the message
        /// file for [`Spool::open_message`](super::Spool::open_message).
        path: PathBuf,
    },
    /// A string given as a message id is not one (see
    /// [`MessageId::parse`]).
    #[error("not a message id: {input:?}")]
    InvalidId {
        /// The string refused (at most its first 80 characters).
        input: String,
    },
    /// A message was committed with no recipient at all.
    #[error("a message needs at least one recipient")]
    NoRecipients,
    /// An earlier [`SpoolWriter::write_all`](super::SpoolWriter::write_all)
    /// failed, so the message would be incomplete; it was not queued.
    #[error("an earlier write to {} failed; the message is incomplete and was not queued", path.display())]
    IncompleteMessage {
        /// The staging file.
        path: PathBuf,
    },
}

impl SpoolError {
    /// Builds [`SpoolError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether this says the message is not (or no longer) in the spool.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SpoolError::NotFound { .. })
    }
}
