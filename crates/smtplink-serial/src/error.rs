//! Errors of the session protocol.

use std::io;
use std::time::Duration;

/// Why a session could not be started or ended cleanly.
///
/// [`SerialTransport`](crate::SerialTransport) reports these inside a
/// [`TransportError::Io`](smtplink_transport::TransportError::Io), through
/// the `From<SessionError> for io::Error` conversion, which picks a kind
/// that [`TransportError::is_transient`](smtplink_transport::TransportError::is_transient)
/// classifies correctly (every one of them is worth retrying later).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The other end did not complete the handshake in time: nothing is
    /// listening on the line, it is busy with a session of its own, or the
    /// line settings (baud rate, parity) differ between the ends.
    #[error(
        "no answer on the serial line within {waited:?} (sent {stage}; is the other end listening, with the same baud rate?)"
    )]
    NoAnswer {
        /// How long the handshake waited.
        waited: Duration,
        /// The last handshake line sent, e.g. `CONNECT`.
        stage: &'static str,
    },

    /// Reading from or writing to the line failed.
    #[error("the serial line failed: {0}")]
    Line(#[source] io::Error),

    /// The underlying stream ended (a pty whose other side went away).
    #[error("the serial line closed")]
    LineClosed,
}

impl From<SessionError> for io::Error {
    fn from(err: SessionError) -> io::Error {
        let kind = match &err {
            SessionError::NoAnswer { .. } => io::ErrorKind::TimedOut,
            SessionError::Line(source) => match source.kind() {
                // A serial device that fails mid-use (unplugged, pty closed)
                // reports EIO; for the relay that is a broken link.
                io::ErrorKind::Other | io::ErrorKind::UnexpectedEof => {
                    io::ErrorKind::ConnectionAborted
                }
                kind => kind,
            },
            SessionError::LineClosed => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, err.to_string())
    }
}
