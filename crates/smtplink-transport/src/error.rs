//! The one error type every transport returns.

use std::fmt;
use std::io;

use crate::Endpoint;

/// What a transport was doing when it failed; named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening an outgoing link.
    Connect,
    /// Starting to accept incoming links.
    Listen,
    /// Taking the next incoming link from a listener.
    Accept,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Connect => "connect",
            Operation::Listen => "listen",
            Operation::Accept => "accept",
        })
    }
}

/// Why a transport could not connect, listen or accept.
///
/// The variants split blame: [`InvalidEndpoint`](Self::InvalidEndpoint),
/// [`UnknownScheme`](Self::UnknownScheme) and
/// [`Unsupported`](Self::Unsupported) mean the caller asked for something that
/// cannot work and retrying will not help; [`Io`](Self::Io) means the link
/// itself failed, and [`is_transient`](Self::is_transient) says whether trying
/// again later might succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The endpoint text does not parse, or lacks something the transport
    /// needs (a port, a host, a device path).
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as the user wrote it (or as far as it could be read).
        endpoint: String,
        /// What is wrong with it, e.g. "missing port".
        reason: String,
    },

    /// No transport is registered for the endpoint's scheme.
    #[error("unknown scheme '{scheme}' ({})", describe_known(known))]
    UnknownScheme {
        /// The scheme that was asked for.
        scheme: String,
        /// The schemes the registry does know, sorted.
        known: Vec<String>,
    },

    /// The transport exists but cannot do this, e.g. listening on `exec:`.
    #[error("{endpoint}: this transport cannot {operation}")]
    Unsupported {
        /// The endpoint the operation was asked for.
        endpoint: String,
        /// What was asked for.
        operation: Operation,
    },

    /// The operating system or the underlying stream reported a failure.
    ///
    /// Transports that have their own error types wrap them in an
    /// [`io::Error`] with the closest [`io::ErrorKind`], so that
    /// [`TransportError::is_transient`] can classify them.
    // The source text is repeated in the message on purpose: a plain `{}`
    // (what tracing's `%err` prints) must say what went wrong, and
    // "connect tcp://h:25" alone does not. Reporters that walk the source
    // chain will show the OS text twice; that is the lesser evil.
    #[error("{operation} {endpoint}: {source}")]
    Io {
        /// What was being attempted.
        operation: Operation,
        /// The endpoint it was attempted on.
        endpoint: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },

    /// A TLS handshake on the link failed, or TLS was required and could
    /// not be had (bad or untrusted certificate, pin mismatch, no common
    /// protocol version, the peer hung up mid-handshake). Transient: the
    /// link is gone, and the peer's setup may be fixed later.
    #[error("TLS with {peer}: {reason}")]
    Tls {
        /// The link's peer label.
        peer: String,
        /// What went wrong.
        reason: String,
    },

    /// The listener will hand out no more links, e.g. `stdio:` after its
    /// one session. Not a failure: whoever accepts stops accepting on it.
    #[error("no more links to accept on {endpoint}")]
    Exhausted {
        /// The listener's endpoint.
        endpoint: String,
    },
}

fn describe_known(known: &[String]) -> String {
    if known.is_empty() {
        "no transports are registered".to_owned()
    } else {
        format!("known schemes: {}", known.join(", "))
    }
}

impl TransportError {
    /// An [`Io`](Self::Io) error for `operation` on `endpoint`.
    pub fn io(operation: Operation, endpoint: &Endpoint, source: io::Error) -> Self {
        TransportError::Io {
            operation,
            endpoint: endpoint.to_string(),
            source,
        }
    }

    /// An [`InvalidEndpoint`](Self::InvalidEndpoint) error for an endpoint
    /// that parsed but is missing something this transport needs.
    pub fn invalid_endpoint(endpoint: &Endpoint, reason: impl Into<String>) -> Self {
        TransportError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.into(),
        }
    }

    /// A [`Tls`](Self::Tls) error on the link to `peer`.
    pub fn tls(peer: impl Into<String>, reason: impl Into<String>) -> Self {
        TransportError::Tls {
            peer: peer.into(),
            reason: reason.into(),
        }
    }

    /// An [`Unsupported`](Self::Unsupported) error: this transport cannot do
    /// `operation` at all.
    pub fn unsupported(endpoint: &Endpoint, operation: Operation) -> Self {
        TransportError::Unsupported {
            endpoint: endpoint.to_string(),
            operation,
        }
    }

    /// An [`Exhausted`](Self::Exhausted) error: `endpoint`'s listener has
    /// no more links to give.
    pub fn exhausted(endpoint: &Endpoint) -> Self {
        TransportError::Exhausted {
            endpoint: endpoint.to_string(),
        }
    }

    /// True when trying again later might succeed: the peer refused, reset
    /// or aborted the connection, or something timed out or was unreachable.
    ///
    /// Configuration mistakes (bad endpoint, unknown scheme, unsupported
    /// operation) are never transient. Neither is a failed name lookup: the
    /// resolver does not say portably whether the failure was temporary, and
    /// treating a typo as transient would retry it forever.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::NetworkDown
                    | io::ErrorKind::AddrNotAvailable
            ),
            TransportError::Tls { .. } => true,
            _ => false,
        }
    }

    /// The kind of the underlying I/O failure, if this is an
    /// [`Io`](Self::Io) error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            TransportError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// The endpoint the error is about, if it names one.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            TransportError::InvalidEndpoint { endpoint, .. }
            | TransportError::Unsupported { endpoint, .. }
            | TransportError::Io { endpoint, .. }
            | TransportError::Exhausted { endpoint } => Some(endpoint),
            TransportError::UnknownScheme { .. } | TransportError::Tls { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn io_message_names_operation_and_endpoint() {
        let ep: Endpoint = "tcp://127.0.0.1:9".parse().unwrap();
        let err = TransportError::io(
            Operation::Connect,
            &ep,
            io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused"),
        );
        assert_eq!(
            err.to_string(),
            "connect tcp://127.0.0.1:9: Connection refused"
        );
        assert!(err.is_transient());
        assert_eq!(err.endpoint(), Some("tcp://127.0.0.1:9"));
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn unknown_scheme_lists_known_ones() {
        let err = TransportError::UnknownScheme {
            scheme: "foo".into(),
            known: vec!["mem".into(), "tcp".into()],
        };
        assert_eq!(
            err.to_string(),
            "unknown scheme 'foo' (known schemes: mem, tcp)"
        );
        assert!(!err.is_transient());
        let none = TransportError::UnknownScheme {
            scheme: "foo".into(),
            known: vec![],
        };
        assert!(none.to_string().contains("no transports are registered"));
    }

    #[test]
    fn exhausted_names_the_endpoint_and_is_not_transient() {
        let ep: Endpoint = "stdio:".parse().unwrap();
        let err = TransportError::exhausted(&ep);
        assert_eq!(err.to_string(), "no more links to accept on stdio:");
        assert_eq!(err.endpoint(), Some("stdio:"));
        assert!(!err.is_transient());
    }

    #[test]
    fn configuration_errors_are_not_transient() {
        let ep: Endpoint = "exec:true".parse().unwrap();
        assert!(!TransportError::unsupported(&ep, Operation::Listen).is_transient());
        assert!(!TransportError::invalid_endpoint(&ep, "x").is_transient());
        let err = TransportError::io(
            Operation::Listen,
            &ep,
            io::Error::new(io::ErrorKind::AddrInUse, "in use"),
        );
        assert!(!err.is_transient());
        assert_eq!(err.io_kind(), Some(io::ErrorKind::AddrInUse));
    }
}
