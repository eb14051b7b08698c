//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while storing a message.
///
/// Whatever the variant, a failed [`MessageWriter::commit`] has left no file
/// in any `new/` directory, except for the paths listed by
/// [`MaildirError::RollbackIncomplete`]. A server should answer a transient
/// failure (`451 4.3.0`) so the client retries later.
///
/// [`MessageWriter::commit`]: crate::MessageWriter::commit
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaildirError {
    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was applied to.
        path: PathBuf,
        /// What was being done, e.g. `"create directory"`, `"fsync"`, `"rename"`.
        op: &'static str,
        /// The error the operating system reported.
        #[source]
        source: io::Error,
    },
    /// A message was started or committed with no recipient at all.
    #[error("a message needs at least one recipient")]
    NoRecipients,
    /// An earlier [`MessageWriter::write_all`](crate::MessageWriter::write_all)
    /// failed, so the stored copy would be incomplete; the message cannot be
    /// committed.
    #[error("an earlier write failed; the message is incomplete and was not stored")]
    IncompleteMessage,
    /// Delivery failed (`source`), and while undoing it some files that had
    /// already been moved into `new/` could not be removed again. Those
    /// recipients may see the message; a retry by the client may give them
    /// a second copy.
    #[error(
        "{source}; in addition {} file(s) already in new/ could not be removed",
        stranded.len()
    )]
    RollbackIncomplete {
        /// Why delivery failed in the first place.
        #[source]
        source: Box<MaildirError>,
        /// Files in `new/` that may still be there (or were already moved on
        /// by a mail reader).
        stranded: Vec<PathBuf>,
    },
}

impl MaildirError {
    /// Builds [`MaildirError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        MaildirError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
