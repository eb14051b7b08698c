//! The crate's error type.
//!
//! Only API misuse is an error: anything the peer sends is answered on the
//! wire (CLEAR, RESET, RESTART with a diagnostic) or ignored, and shows up
//! as a [`crate::packet::CloseReason`], never as an `Err`.

/// What went wrong with a call into this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X25Error {
    /// The circuit id is not (or no longer) known.
    #[error("no such virtual circuit")]
    UnknownCircuit,
    /// Every logical channel is busy.
    #[error("no free logical channel")]
    NoFreeChannel,
    /// The service name does not fit the call user data (at most 12
    /// printable ASCII bytes, so that protocol id + name stay within the
    /// 16 octets X.25 allows without fast select).
    #[error("invalid service name for the call user data")]
    InvalidService,
    /// An X.121 address must be at most 15 decimal digits.
    #[error("invalid X.121 address (at most 15 decimal digits)")]
    InvalidAddress,
    /// The circuit is being cleared or has ended: no more writes.
    #[error("virtual circuit is closed for writing")]
    Closed,
    /// The line under the circuits ended (stream closed or failed).
    #[error("x25 line ended: {0}")]
    LineEnded(String),
    /// The line did not come up, or the call was not answered, in time.
    #[error("x25 call timed out (line down or no answer)")]
    CallTimeout,
    /// The other end cleared our call.
    #[error("x25 call refused: {0}")]
    CallRefused(String),
}
