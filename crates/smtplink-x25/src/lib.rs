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
//! **Status:** layer 1, [`framing`], and layer 2, [`lapb`] (a sans-IO
//! LAPB-like link with SREJ, adaptive T1 and adaptive information size), are
//! built. The packet layer, the async adapter that wraps a stream, the
//! `x25+…` transport registrations and the link figures for `smtplink queue`
//! are not built yet (see issue 5).

pub mod framing;
pub mod lapb;

pub use framing::{
    AccmMap, DecodeStats, FcsKind, FrameCodec, FrameConfig, FrameDecoder, FrameEncoder, FrameError,
    InvalidEscape,
};

pub use lapb::{
    DisconnectReason, FrameReject, Lapb, LapbConfig, LapbEvent, LapbFrame, LapbRole, LapbStats,
    Modulus, Supervisory, Unnumbered,
};
