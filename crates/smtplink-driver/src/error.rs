//! The driver's error type.

use std::io;

use smtplink_engine::{AuthError, ClientError, Reply, SendError};
use smtplink_transport::TransportError;
use thiserror::Error;

/// Why a driver stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DriverError {
    /// Reading from or writing to the link failed.
    #[error("link {op} failed: {source}")]
    Io {
        /// "read" or "write".
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The link gave no bytes within the RFC 5321 4.5.3.2 timer.
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(std::time::Duration),
    /// Opening or accepting a link failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The client session failed (refused, protocol error, link closed).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The message could not be sent as it is (nothing was sent).
    #[error(transparent)]
    Send(#[from] SendError),
    /// A TLS handshake failed, or TLS was needed and not configured. The
    /// link is unusable; transient (retry later), never a plaintext fallback.
    #[error("{0}")]
    Tls(TransportError),
    /// AUTH failed: nothing usable offered (no credentials were sent), the
    /// server refused them (535 permanent, 454 temporary, RFC 4954 6), or
    /// the exchange broke off.
    #[error("authentication: {0}")]
    Auth(AuthError),
    /// The backend refused the session before the greeting.
    #[error("session refused: {0}")]
    Refused(Reply),
    /// A bug or a failed helper task (e.g. the AUTH check panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DriverError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DriverError::Io { .. } | DriverError::Timeout(_) => true,
            DriverError::Transport(e) => e.is_transient(),
            DriverError::Tls(_) => true,
            DriverError::Client(e) => e.is_transient(),
            // The message cannot be sent as it is; but a session that is
            // not ready (the server closed it with 421) may work next time.
            DriverError::Send(SendError::Message(_)) => false,
            DriverError::Send(_) => true,
            // A refusal is as permanent as its code says (535 bad
            // credentials: retrying the same ones cannot help); no usable
            // mechanism or a broken exchange may be fixed on the server.
            DriverError::Auth(AuthError::Rejected(r)) => !r.is_permanent(),
            DriverError::Auth(_) => true,
            DriverError::Refused(r) => !r.is_permanent(),
            DriverError::Internal(_) => true,
        }
    }
}
