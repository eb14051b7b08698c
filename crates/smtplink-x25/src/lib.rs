//! X.25-style reliable virtual circuits over a noisy byte stream.
//!
//! A real serial line is not the reliable byte stream SMTP assumes: noise
//! flips bits, bytes drop, and one line carries one conversation at a time.
//! This crate is the adapter that fixes that, in three layers stacked the way
//! X.25 stacks them: (1) **framing** — RFC 1662 asynchronous HDLC-like frames
//! with a strong frame check, so corrupt frames are caught and dropped;
//! (2) a **LAPB-like link layer** — numbered, acknowledged, retransmitted
//! frames, so every frame arrives once and in order; (3) an **X.25 PLP-like
//! packet layer** — many virtual circuits over the one link, each an
//! `AsyncRead + AsyncWrite` that smtplink can run an SMTP session over.
//!
//! Layers: [`framing`] (RFC 1662 frames with a 32-bit check), [`lapb`]
//! (a sans-IO LAPB-like link: SREJ, adaptive T1 and adaptive information
//! size), [`packet`] (the sans-IO packet layer: calls with the RFC 1090
//! protocol id, facility negotiation, per-circuit windows, M-bit
//! segmentation, clear/reset/restart, timers T20-T23), [`line`] (the tokio
//! task that runs them over a byte stream; circuits are `AsyncRead +
//! AsyncWrite`) and [`transport`] (`x25+serial://`, `x25+mem://`,
//! `x25+tcp://` as smtplink transports).
//!
//! As in X.25, the link and packet layers number their frames and packets
//! independently: [`Modulus`] (re-exported from [`lapb`]) is the link
//! layer's, `packet::Modulus` the packet layer's.

pub mod error;
pub mod framing;
pub mod lapb;
pub mod line;
pub mod packet;

pub use error::X25Error;
pub use packet::{
    CircuitId, CircuitState, CircuitStats, CloseReason, PacketConfig, PacketEvent, PacketLayer,
    PacketRole,
};
pub mod transport;

pub use line::{Circuit, Incoming, Line, LineConfig, LineStats, Role};
pub use transport::X25Transport;

pub use framing::{
    AccmMap, DecodeStats, FcsKind, FrameCodec, FrameConfig, FrameDecoder, FrameEncoder, FrameError,
    InvalidEscape,
};

pub use lapb::{
    DisconnectReason, FrameReject, Lapb, LapbConfig, LapbEvent, LapbFrame, LapbRole, LapbStats,
    Modulus, Supervisory, Unnumbered,
};
