//! The store-and-forward relay: accepted mail goes into a durable spool
//! before the server says 250, and leaves it only when the next hop has
//! taken it (or a bounce was queued for the sender).
//!
//! Modules: [`spool`] (durable message store and envelope records),
//! [`route`] (which next hop takes a domain), [`retry`] (backoff and
//! give-up), [`bounce`] (RFC 3464 delivery status notifications).

pub mod backend;
pub mod bounce;
pub mod mx;
pub mod retry;
pub mod route;
pub mod spool;
pub mod worker;

pub use backend::{RelayBackend, RelayContext};
pub use bounce::{
    header_section, is_bounce_sender, render_bounce, rfc5322_date, Action, BounceInput,
    FailedRecipient,
};
pub use retry::RetryPolicy;
pub use route::{DomainPattern, Route, RouteError, RouteTarget, RouteTls, RoutingTable};
pub use spool::{
    EnvelopeRecord, MessageId, NewEnvelope, NewRecipient, RecipientRecord, RecipientState,
    Recovery, Spool, SpoolError, SpoolLock, SpoolWriter,
};
pub use worker::{RunStats, Worker, WorkerSettings};
