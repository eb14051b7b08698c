//! Errors of the engine, split by who is to blame (as rustls does): the peer
//! sent something that is not SMTP, or the application misused the API.
//!
//! A malformed *command* is not an error here: the server answers it with a
//! reply and goes on. These errors end a session.

use thiserror::Error;

/// Why an address could not be parsed (RFC 5321 4.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The path is not enclosed in `<` `>`.
    #[error("path must be enclosed in angle brackets")]
    MissingBrackets,
    /// No `@` between local part and domain.
    #[error("mailbox has no '@'")]
    MissingAt,
    /// The local part is neither a Dot-string nor a Quoted-string.
    #[error("malformed local part")]
    BadLocalPart,
    /// Nothing after the `@`.
    #[error("empty domain")]
    EmptyDomain,
    /// A label of the domain is malformed.
    #[error("malformed domain label {label:?}")]
    BadDomain {
        /// The offending label.
        label: String,
    },
    /// An address literal in brackets is malformed.
    #[error("malformed address literal {literal:?}")]
    BadAddressLiteral {
        /// The literal as given.
        literal: String,
    },
    /// A source route (`@a,@b:`) is malformed.
    #[error("malformed source route")]
    BadSourceRoute,
    /// Non-ASCII characters without SMTPUTF8.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// Local part over 64 octets.
    #[error("local part is {len} octets, the limit is 64")]
    LocalPartTooLong {
        /// Its length.
        len: usize,
    },
    /// Domain over 255 octets.
    #[error("domain is {len} octets, the limit is 255")]
    DomainTooLong {
        /// Its length.
        len: usize,
    },
    /// Path over 256 octets.
    #[error("path is {len} octets, the limit is 256")]
    PathTooLong {
        /// Its length.
        len: usize,
    },
}

/// A server sent something that is not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The line does not start with a valid three-digit code and a separator.
    #[error("malformed reply line {line:?}")]
    Malformed {
        /// The start of the line.
        line: String,
    },
    /// A multi-line reply changed its code midway.
    #[error("multi-line reply changed code from {first} to {then}")]
    CodeMismatch {
        /// The first line's code.
        first: u16,
        /// The offending line's code.
        then: u16,
    },
    /// A reply line is longer than the parser accepts.
    #[error("reply line longer than {limit} octets")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// A multi-line reply has more lines than the parser accepts.
    #[error("reply has more than {limit} lines")]
    TooManyLines {
        /// The limit.
        limit: usize,
    },
}

/// The application called the engine at the wrong time or with an illegal
/// answer. This is a bug in the caller, never caused by the peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// A decision was given but none was pending.
    #[error("no decision is pending")]
    NoDecisionPending,
    /// A rejection was given with a 2xx/3xx reply, or an acceptance with a
    /// failure reply.
    #[error("reply {code} is not a legal answer here")]
    IllegalReply {
        /// The code given.
        code: u16,
    },
    /// A message was submitted while the client is not ready for one.
    #[error("the client session is not ready for a new message")]
    NotReady,
    /// The pending decision needs another kind of answer (an AUTH lookup
    /// is answered with a credential or a rejection, nothing else).
    #[error("the pending decision needs a different kind of answer")]
    WrongAnswer,
    /// A SCRAM nonce that is not 1 to 100 printable characters without `,`.
    #[error("the SCRAM nonce is not 1 to 100 printable ASCII characters without ','")]
    BadNonce,
}

/// Why the client refuses to send a message, before anything goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A CR or LF that is not part of a CRLF pair.
    #[error("message has a bare CR or LF at offset {offset}; lines must end with CRLF")]
    BareLineEnding {
        /// Byte offset of the bare character.
        offset: usize,
    },
    /// A line longer than RFC 5322's 998 characters (1000 with CRLF).
    #[error("message line {line} is longer than {limit} octets")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// The limit, CRLF included.
        limit: usize,
    },
    /// An address holds CR, LF or other control characters (command injection).
    #[error("address {address:?} holds control characters")]
    ControlInAddress {
        /// The address, escaped.
        address: String,
    },
    /// An address is malformed.
    #[error("bad address {address:?}: {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: AddressError,
    },
    /// No recipients were given.
    #[error("a message needs at least one recipient")]
    NoRecipients,
    /// The message is larger than the server's SIZE limit.
    #[error("message is {size} octets, the server accepts at most {limit}")]
    TooBig {
        /// The message size.
        size: u64,
        /// The server's limit.
        limit: u64,
    },
    /// 8-bit content, but the server did not offer 8BITMIME (RFC 6152).
    #[error("message has 8-bit content and the server does not offer 8BITMIME")]
    EightBitNotOffered,
    /// Non-ASCII addresses, but the server did not offer SMTPUTF8 (RFC 6531).
    #[error("non-ASCII address and the server does not offer SMTPUTF8")]
    Utf8NotOffered,
}
