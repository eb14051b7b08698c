//! The smtplink SMTP engine: SMTP as a pure function of bytes in and bytes
//! out, with no I/O, no async runtime and no clock of its own.
//!
//! It holds the wire grammar ([`Command`], [`Reply`], [`address`] paths and
//! [`params`]), the DATA codec ([`data`]), and two state machines,
//! [`ServerSession`] and [`ClientSession`]. A driver (see `smtplink-driver`)
//! moves bytes between a link and a session; everything SMTP decides
//! happens here, so every rule can be tested with byte strings and every
//! session replayed from a transcript.
//!
//! # Contract
//!
//! - Inputs: `handle_input(&[u8])` with whatever arrived (any split of the
//!   stream gives the same result), `handle_timeout()` when the timer the
//!   session named with `timeout_kind()` expired, and the application's
//!   decisions (`accept`/`reject` on the server, `send`/`quit` on the client).
//! - Outputs: `poll_event()` until `None`, then `poll_transmit()` until
//!   `None`; send the bytes in order. When `is_closed()`, flush and close.
//! - A bad command from the peer earns an SMTP reply, never a Rust error.
//!   Errors are reserved for API misuse and for a peer that is not speaking
//!   SMTP at all; those end the session and stay set.
//! - STARTTLS (RFC 3207) is an event for the driver: the server's
//!   [`ServerEvent::StartTls`] and the client's [`ClientEvent::StartTls`].
//!   The driver flushes the output, runs the TLS handshake on the link and
//!   calls `handle_tls_established` with a [`TlsInfo`]; the session is then
//!   back in its pre-EHLO state. Bytes that arrived after the STARTTLS
//!   command (server) or after its 220 reply (client) were received in
//!   plaintext and are thrown away, never read as if they came through TLS
//!   (CVE-2011-0411).

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod error;
pub mod params;
pub mod reply;
pub mod sasl;
pub mod server;
pub mod tls;

pub use address::{Domain, ForwardPath, Mailbox, ReversePath};
pub use client::{
    AuthError, AuthStartError, Capabilities, ClientConfig, ClientError, ClientEvent, ClientSession,
    ClientTimeout, Envelope, RecipientOutcome, SendError, TransactionReport,
};
pub use command::{Command, CommandError, InitialResponse, ParseOptions};
pub use data::{BareLineEndingPolicy, DataFault};
pub use error::{AddressError, ApiMisuse, MessageError, ReplyError};
pub use params::{Body, MailParams, Notify, RcptParams, Ret};
pub use reply::{EnhancedCode, Reply, ReplyCode, ReplyParser, Severity};
pub use sasl::{
    AuthFailure, CredentialLookup, Credentials, Mechanism, SaslClientError, ScramCredential,
};
pub use server::{CloseReason, ServerConfig, ServerEvent, ServerSession, ServerTimeout};
pub use tls::{TlsInfo, TlsPolicy};
