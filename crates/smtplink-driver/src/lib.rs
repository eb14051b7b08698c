//! Async drivers that run the sans-IO smtplink engine over any [`Link`].
//!
//! The drivers own the link, the buffers and the timers, and nothing else:
//! every SMTP decision is made by `smtplink-engine`. [`server::serve_link`]
//! runs one server session and asks a [`Backend`] (go-smtp style) about
//! senders, recipients and message storage; [`server::Server`] accepts
//! sessions from a [`smtplink_transport::Listener`] and drains them on
//! shutdown. [`client::SmtpClient`] sends messages over a link.
//!
//! Every session runs inside a `tracing` span named `session` with its role,
//! id, transport kind and peer.
//!
//! [`Link`]: smtplink_transport::Link

pub mod backend;
pub mod client;
pub mod error;
pub mod server;

pub use backend::{Backend, RelayPolicy, SessionHandler, SessionInfo, UserStore};
pub use client::{ClientAuth, ClientSettings, ClientTimeouts, SmtpClient, Turned};
pub use error::DriverError;
pub use server::{
    serve_link, AuthSettings, ListenerSettings, Server, ServerSettings, SessionSummary, Shutdown,
};
/// Cancels a server or a session (re-exported: it is part of this API).
pub use tokio_util::sync::CancellationToken;
