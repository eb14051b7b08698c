//! Layer 3: an X.25 PLP-like packet layer (ITU-T X.25 §5-7), sans-IO.
//!
//! Many virtual circuits share one reliable link (LAPB, or XOT over TCP).
//! [`PacketLayer`] is deterministic and does no I/O: the caller feeds it
//! packets ([`PacketLayer::handle_packet`]) and the time
//! ([`PacketLayer::handle_timeout`]), and drains what it has to say
//! ([`PacketLayer::poll_packet`], [`PacketLayer::poll_event`],
//! [`PacketLayer::poll_timeout`]). Time is an [`Instant`] passed in, never
//! read.
//!
//! # Polling order
//!
//! After every input (a packet, a timeout, or an application call such as
//! `write`, `read`, `accept`, `clear`): drain `poll_event` and act on it,
//! then call `poll_packet` while the link can take a packet, then sleep until
//! `poll_timeout`.
//!
//! # Wire format
//!
//! Every packet starts with the general format identifier (GFI) and the
//! 12-bit logical channel (group + number), then a packet type octet:
//!
//! ```text
//! octet 1: Q D S S | LCGN      SS = 01: modulo 8 (GFI 0x1_), 10: modulo 128 (0x2_)
//! octet 2: LCN
//! octet 3: type                0x0B CALL REQUEST/INCOMING CALL, 0x0F CALL ACCEPTED/CONNECTED,
//!                              0x13 CLEAR REQUEST/INDICATION, 0x17 CLEAR CONFIRMATION,
//!                              0x1B RESET, 0x1F RESET CONFIRMATION, 0xFB RESTART,
//!                              0xFF RESTART CONFIRMATION, RR 0x01, RNR 0x05 (P(R) in bits 8-6
//!                              modulo 8, in octet 4 modulo 128), DATA: bit 1 = 0
//! DATA modulo 8:   P(R)<<5 | M<<4 | P(S)<<1          then user data
//! DATA modulo 128: P(S)<<1, then P(R)<<1 | M         then user data
//! ```
//!
//! A CALL REQUEST carries the address lengths (calling<<4 | called, in
//! digits), the called then the calling X.121 address in BCD, the facility
//! length and the facilities (we always send packet size 0x42 and window
//! size 0x43, both directions), then the call user data: the RFC 1090
//! protocol id `C0 F7 00 00` followed by the service name (for example
//! `smtp`). The answerer may lower packet size and window in CALL ACCEPTED;
//! both ends then use the negotiated values.
//!
//! # Circuits
//!
//! One circuit per SMTP session (RFC 1090 §2). The receiver acknowledges
//! (P(R) in RR or piggy-backed on DATA) only data the application has
//! [`read`](PacketLayer::read), so a slow reader closes only its own
//! circuit's window. `poll_packet` sends control packets first, then
//! acknowledgements that are due, then data round-robin across circuits,
//! one packet per circuit per turn. A write larger than a packet is
//! segmented with the M-bit; the receiver delivers bytes as they come and
//! accepts M=1 on short packets (the link picks the size).
//! [`PacketLayer::clear`] sends CLEAR
//! REQUEST only once the circuit's data has been sent and acknowledged, so
//! the last reply is not lost (RFC 1090 §9: X.25 discards data in transit
//! when a circuit is cleared); with delayed acknowledgements that can take
//! up to the peer's `ack_delay` after the peer read it. A RESET ends the
//! session (RFC 1090 §6): the circuit is reported closed with
//! [`CloseReason::Reset`] and cleared.
//!
//! Acknowledgements are coalesced, because on a slow line each RR costs an
//! I-frame one way and a link-level RR the other. Every DATA packet
//! carries the current P(R), so an acknowledgement owed on a circuit that
//! has data to send rides on that data. A standalone RR goes out only when
//! the application has read at least half the receive window (rounded up)
//! of packets not yet acknowledged, or when
//! [`ack_delay`](PacketConfig::ack_delay) has passed since a read left
//! something unacknowledged (a timer like the others: see
//! [`poll_timeout`](PacketLayer::poll_timeout)). A sender with a full
//! window therefore hears within `ack_delay` of the reader reading, and
//! sooner once half a window has been read; an SMTP command read and
//! answered within `ack_delay` is acknowledged by the reply alone.
//!
//! Reassembly is the byte stream itself: received bytes become readable as
//! each packet arrives, whatever its M-bit (waiting for M=0 could deadlock,
//! since only data that has been read is acknowledged). The D-bit is
//! ignored and never set; Q-bit packets and interrupts are dropped (RFC
//! 1090 §5), though a Q packet's sequence number still counts. We never
//! send RNR: holding back P(R) until the application reads already closes
//! the sender's window; a received RNR stops our data until RR.
//!
//! The two ends must take different [`PacketRole`]s (for instance the end
//! that dials the line is the DTE): two DTEs would both allocate from the
//! top and both ignore the other's colliding call.
//!
//! Every [`CircuitId`] handed to the application (from
//! [`PacketLayer::call`] or [`PacketEvent::IncomingCall`]) gets exactly one
//! [`PacketEvent::Closed`]. After it, buffered data can still be read; then
//! [`PacketLayer::is_finished`] is true.
//!
//! # Circuit states (X.25 §6 names in brackets)
//!
//! ```text
//!  call() -> Calling [p2] --CALL ACCEPTED--> Open [p4/d1] --clear(), data acked--> Clearing [p6]
//!  INCOMING CALL -> Incoming [p3] --accept()--> Open      --RESET--> RESET CONF + CLEAR -> Clearing
//!                              \--refuse()--> Clearing    --CLEAR IND--> CLEAR CONF -> done [p1]
//!  Clearing --CLEAR CONF / CLEAR IND (collision) / T23 twice--> done [p1]
//!  local protocol error in Open: RESET REQUEST [d2] --RESET CONF or T22--> Clearing
//! ```
//!
//! Nothing the peer sends can make this module panic; malformed or
//! unexpected packets are answered with CLEAR (call set-up), RESET (data
//! transfer) or ignored (restart/diagnostic on channel 0, anything during a
//! clear), with the X.25 diagnostic code (Annex E).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::X25Error;

/// RFC 1090 §3: "The first four octets (bytes) of the Call User Data
/// Field, which are commonly used as a protocol identifier, or PRID,
/// should be (hex) C0F70000." The service name (e.g. `smtp`) follows it.
pub const PRID_SMTP: [u8; 4] = [0xC0, 0xF7, 0x00, 0x00];

/// Longest service name: X.25 allows 16 octets of call user data without
/// the fast select facility, and the protocol id takes 4 of them.
pub const MAX_SERVICE_LEN: usize = 12;

/// RFC 1090 §4: M-bit sequences "may be up to 2048 bytes in total length".
/// A sequence is ended (M=0) once it reaches this many bytes, even if more
/// data is queued.
pub const MAX_M_SEQUENCE: usize = 2048;

/// Packet size in force when a CALL carries no packet size facility (X.25 §7.2.2.1).
pub const DEFAULT_PACKET_SIZE: usize = 128;
/// Window in force when a CALL carries no window size facility (X.25 §7.2.2.2).
pub const DEFAULT_WINDOW: u8 = 2;

/// Longest control packet this layer builds (CALL REQUEST with two
/// 15-digit addresses, both facilities and 16 octets of user data). The
/// link must accept units of at least this size; `poll_packet` bounds only
/// data packets by `max_len`.
pub const MAX_CONTROL_LEN: usize = 3 + 1 + 15 + 1 + 6 + 16;

/// Packet type identifiers (X.25 Table 5-1), third octet.
mod ty {
    pub const CALL: u8 = 0x0B;
    pub const CALL_ACCEPTED: u8 = 0x0F;
    pub const CLEAR: u8 = 0x13;
    pub const CLEAR_CONFIRMATION: u8 = 0x17;
    pub const INTERRUPT: u8 = 0x23;
    pub const INTERRUPT_CONFIRMATION: u8 = 0x27;
    pub const RESET: u8 = 0x1B;
    pub const RESET_CONFIRMATION: u8 = 0x1F;
    pub const RESTART: u8 = 0xFB;
    pub const RESTART_CONFIRMATION: u8 = 0xFF;
    pub const DIAGNOSTIC: u8 = 0xF1;
    pub const RR: u8 = 0x01;
    pub const RNR: u8 = 0x05;
    pub const REJ: u8 = 0x09;
}

/// Diagnostic codes (X.25 Annex E) this layer sends.
pub mod diag {
    /// No additional information.
    pub const NONE: u8 = 0;
    /// Invalid P(S).
    pub const INVALID_PS: u8 = 1;
    /// Invalid P(R).
    pub const INVALID_PR: u8 = 2;
    /// Packet type invalid (add the state: 16 + n).
    pub const INVALID_TYPE: u8 = 16;
    /// Packet type invalid for state p2 (waiting for CALL ACCEPTED).
    pub const INVALID_TYPE_P2: u8 = 21;
    /// Packet type invalid for state p3 (incoming call not yet answered).
    pub const INVALID_TYPE_P3: u8 = 22;
    /// Packet type invalid for state d1 (data transfer).
    pub const INVALID_TYPE_D1: u8 = 27;
    /// Unidentifiable packet.
    pub const UNIDENTIFIABLE: u8 = 33;
    /// Packet on unassigned logical channel.
    pub const UNASSIGNED_CHANNEL: u8 = 36;
    /// Reject not subscribed to.
    pub const REJECT_NOT_SUBSCRIBED: u8 = 37;
    /// Packet too short.
    pub const TOO_SHORT: u8 = 38;
    /// Packet too long.
    pub const TOO_LONG: u8 = 39;
    /// Invalid general format identifier.
    pub const INVALID_GFI: u8 = 40;
    /// Restart packet with a non-zero logical channel.
    pub const RESTART_NONZERO_CHANNEL: u8 = 41;
    /// Timer expired.
    pub const TIMER_EXPIRED: u8 = 48;
    /// Timer expired for incoming call.
    pub const TIMER_EXPIRED_INCOMING_CALL: u8 = 49;
    /// Timer expired for reset indication.
    pub const TIMER_EXPIRED_RESET: u8 = 51;
    /// Call set-up problem (used for a wrong protocol id in the call user data).
    pub const CALL_SETUP_PROBLEM: u8 = 64;
    /// Facility parameter not allowed.
    pub const FACILITY_PARAMETER: u8 = 66;
    /// Invalid called DTE address.
    pub const INVALID_CALLED_ADDRESS: u8 = 67;
    /// Invalid calling DTE address.
    pub const INVALID_CALLING_ADDRESS: u8 = 68;
    /// Invalid facility length.
    pub const INVALID_FACILITY_LENGTH: u8 = 69;
}

/// Cause we send in CLEAR, RESET and RESTART: "DTE originated" (X.25
/// §5.2.3.2, §5.5.3.2, §5.6.3.2); the diagnostic says why.
const CAUSE_DTE: u8 = 0;

/// Sequence numbering: modulo 8 (GFI 0x10) or modulo 128 (GFI 0x20). Both
/// ends must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Modulus {
    /// Modulo 8: P(S)/P(R) in three bits, 3-octet data header.
    #[default]
    Mod8,
    /// Modulo 128 ("extended"): seven bits, 4-octet data header.
    Mod128,
}

impl Modulus {
    fn modulo(self) -> u8 {
        match self {
            Modulus::Mod8 => 8,
            Modulus::Mod128 => 128,
        }
    }
    /// The format bits SS of the GFI (upper nibble of octet 1).
    fn gfi(self) -> u8 {
        match self {
            Modulus::Mod8 => 0x10,
            Modulus::Mod128 => 0x20,
        }
    }
    /// Octets before the user data in a DATA packet.
    pub fn data_header_len(self) -> usize {
        match self {
            Modulus::Mod8 => 3,
            Modulus::Mod128 => 4,
        }
    }
    /// Largest window the numbering allows.
    pub fn max_window(self) -> u8 {
        self.modulo() - 1
    }
    fn add(self, a: u8, b: u8) -> u8 {
        ((u16::from(a) + u16::from(b)) % u16::from(self.modulo())) as u8
    }
    fn sub(self, a: u8, b: u8) -> u8 {
        let m = u16::from(self.modulo());
        ((u16::from(a) + m - u16::from(b) % m) % m) as u8
    }
}

/// Which end of the link this is. Only decides logical channel allocation
/// (X.25 §6.1 and Annex A): the DTE takes the highest free channel, the DCE
/// the lowest, so calls from the two ends meet only when nearly all
/// channels are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketRole {
    /// Allocates logical channels from the top.
    Dte,
    /// Allocates logical channels from the bottom.
    Dce,
}

/// Settings for a [`PacketLayer`]. Construct with `Default` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PacketConfig {
    /// P(S)/P(R) modulo 8 or 128; both ends must agree.
    pub modulus: Modulus,
    /// Largest data field offered in CALL (facility 0x42) and accepted when
    /// answering: a power of two 16..=4096 (rounded down into range).
    pub max_packet: usize,
    /// Per-circuit window offered in CALL (facility 0x43) and accepted when
    /// answering: 1..=7 (modulo 8) or 1..=127 (modulo 128).
    pub window: u8,
    /// Logical channels 1..=channels (at most 4095).
    pub channels: u16,
    /// Bytes a circuit buffers before `write` returns `Ok(0)`.
    pub send_buffer: usize,
    /// T21: how long a call may wait for CALL ACCEPTED, and how long an
    /// incoming call waits for `accept`/`refuse`. RFC 1090 §10.1: 100 s.
    pub call_timeout: Duration,
    /// T23: how long to wait for CLEAR CONFIRMATION (sent twice, then the
    /// channel is freed), and how long `clear` waits for the circuit's data
    /// to be acknowledged before clearing anyway. X.25 Table D-2: 180 s.
    pub clear_timeout: Duration,
    /// T22: how long to wait for RESET CONFIRMATION before clearing. 180 s.
    pub reset_timeout: Duration,
    /// T20: how often RESTART REQUEST is repeated until confirmed. 180 s.
    pub restart_timeout: Duration,
    /// Longest wait before data the application has read is acknowledged
    /// by a standalone RR, when no DATA packet carried the acknowledgement
    /// meanwhile and less than half the receive window has been read
    /// (half or more is acknowledged at once). Default 100 ms: long enough
    /// for a local SMTP reply to carry the acknowledgement of the command,
    /// short against the line time of half a window (256-byte packets at
    /// 9600 bit/s: about 0.27 s each, so about 1 s for half of window 7),
    /// so a sender's window does not run dry waiting. `Duration::ZERO`
    /// acknowledges every read at once (one RR per packet read).
    pub ack_delay: Duration,
    /// Our X.121 address (up to 15 digits, may be empty): the calling
    /// address in our CALL REQUESTs.
    pub address: String,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            modulus: Modulus::Mod8,
            max_packet: 256,
            window: 7,
            channels: 64,
            send_buffer: 16 * 1024,
            call_timeout: Duration::from_secs(100),
            clear_timeout: Duration::from_secs(180),
            reset_timeout: Duration::from_secs(180),
            restart_timeout: Duration::from_secs(180),
            ack_delay: Duration::from_millis(100),
            address: String::new(),
        }
    }
}

/// A virtual circuit. The low 12 bits are the logical channel (group << 8 |
/// number); the top 4 bits count reuses of that channel, so a handle kept
/// after its circuit ended never reaches a later call on the same channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircuitId(pub u16);

impl CircuitId {
    /// The logical channel (LCGN << 8 | LCN).
    pub fn lcn(self) -> u16 {
        self.0 & 0x0FFF
    }
}

/// Why a circuit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// We cleared it (`clear` or `refuse`) and the peer confirmed, or the
    /// clears crossed.
    Local,
    /// The peer cleared an open or incoming circuit. After an orderly clear
    /// this is the end of the stream.
    Cleared {
        /// Clearing cause.
        cause: u8,
        /// Diagnostic code.
        diagnostic: u8,
    },
    /// The peer cleared our call before accepting it.
    Refused {
        /// Clearing cause.
        cause: u8,
        /// Diagnostic code.
        diagnostic: u8,
    },
    /// The peer reset the circuit: data in transit may have been lost, so
    /// the session ends (RFC 1090 §6) and the circuit is cleared.
    Reset {
        /// Resetting cause.
        cause: u8,
        /// Diagnostic code.
        diagnostic: u8,
    },
    /// The packet layer was restarted (by us or the peer).
    Restart {
        /// Restarting cause.
        cause: u8,
        /// Diagnostic code.
        diagnostic: u8,
    },
    /// The link under the packet layer went down.
    LinkLost,
    /// The peer broke the protocol on this circuit; we reset or cleared it
    /// with this diagnostic.
    ProtocolError {
        /// The X.25 diagnostic code we sent.
        diagnostic: u8,
    },
    /// T21 (no answer to a call, or the application did not answer an
    /// incoming call) or T23 (no CLEAR CONFIRMATION) ran out.
    Timeout,
    /// Our call met an incoming call on the same channel and lost (we are
    /// the DCE end); call again.
    Collision,
}

/// Where a circuit is, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Our call is out (or waiting for the layer to be ready).
    Calling,
    /// The peer called; waiting for `accept` or `refuse`.
    Incoming,
    /// Data transfer.
    Open,
    /// `clear` was called; waiting for the data to be acknowledged or for
    /// CLEAR CONFIRMATION.
    Clearing,
    /// Ended; buffered data may still be read.
    Closed(CloseReason),
}

/// Per-circuit figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CircuitStats {
    /// User data bytes received.
    pub bytes_in: u64,
    /// User data bytes sent.
    pub bytes_out: u64,
    /// DATA packets received.
    pub packets_in: u64,
    /// DATA packets sent.
    pub packets_out: u64,
    /// RESETs seen or sent on this circuit.
    pub resets: u32,
    /// Negotiated data field size for what we send.
    pub send_packet: usize,
    /// Negotiated data field size for what we receive.
    pub recv_packet: usize,
    /// Negotiated window for what we send.
    pub send_window: u8,
    /// Negotiated window for what we receive.
    pub recv_window: u8,
}

/// What the packet layer tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketEvent {
    /// The peer called `service`; answer with `accept` or `refuse`.
    IncomingCall {
        /// The new circuit.
        id: CircuitId,
        /// The service name from the call user data (after the RFC 1090
        /// protocol id).
        service: String,
    },
    /// Our call was accepted.
    Connected(CircuitId),
    /// Data arrived on a circuit whose receive buffer was empty: `read`
    /// until `Ok(0)`.
    Readable(CircuitId),
    /// A circuit whose `write` was cut short has room again.
    Writable(CircuitId),
    /// The circuit ended; buffered data can still be read.
    Closed {
        /// The circuit.
        id: CircuitId,
        /// Why.
        reason: CloseReason,
    },
}

// ---------------------------------------------------------------------------
// Wire representation
// ---------------------------------------------------------------------------

/// Packet size and window facilities, each as (from the called DTE, from
/// the calling DTE). Packet sizes are log2 of the byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Facilities {
    packet: Option<(u8, u8)>,
    window: Option<(u8, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Packet<'a> {
    Call {
        called: String,
        calling: String,
        facilities: Facilities,
        user_data: &'a [u8],
    },
    CallAccepted {
        facilities: Facilities,
    },
    Clear {
        cause: u8,
        diagnostic: u8,
    },
    ClearConfirmation,
    Data {
        q: bool,
        more: bool,
        ps: u8,
        pr: u8,
        payload: &'a [u8],
    },
    Rr {
        pr: u8,
    },
    Rnr {
        pr: u8,
    },
    Rej,
    Interrupt,
    InterruptConfirmation,
    Reset {
        cause: u8,
        diagnostic: u8,
    },
    ResetConfirmation,
    Restart {
        cause: u8,
        diagnostic: u8,
    },
    RestartConfirmation,
    Diagnostic,
}

/// Parses one packet. `Err` carries the X.25 diagnostic for the reaction.
fn parse(p: &[u8], m: Modulus) -> Result<Packet<'_>, u8> {
    let (Some(&b0), Some(&b1), Some(&t)) = (p.first(), p.get(1), p.get(2)) else {
        return Err(diag::TOO_SHORT);
    };
    if b0 & 0x30 != m.gfi() {
        return Err(diag::INVALID_GFI);
    }
    let lcn = (u16::from(b0 & 0x0F) << 8) | u16::from(b1);
    let rest = p.get(3..).unwrap_or_default();
    let mod8 = m == Modulus::Mod8;
    if t & 1 == 0 {
        let q = b0 & 0x80 != 0;
        return if mod8 {
            Ok(Packet::Data {
                q,
                more: t & 0x10 != 0,
                ps: (t >> 1) & 7,
                pr: t >> 5,
                payload: rest,
            })
        } else {
            let Some((&o4, payload)) = rest.split_first() else {
                return Err(diag::TOO_SHORT);
            };
            Ok(Packet::Data {
                q,
                more: o4 & 1 != 0,
                ps: t >> 1,
                pr: o4 >> 1,
                payload,
            })
        };
    }
    let cause_diag = |rest: &[u8]| {
        (
            rest.first().copied().unwrap_or(0),
            rest.get(1).copied().unwrap_or(0),
        )
    };
    match t {
        ty::CALL => parse_call(rest, m),
        ty::CALL_ACCEPTED => {
            if rest.is_empty() {
                return Ok(Packet::CallAccepted {
                    facilities: Facilities::default(),
                });
            }
            match parse_call(rest, m)? {
                Packet::Call { facilities, .. } => Ok(Packet::CallAccepted { facilities }),
                _ => Err(diag::UNIDENTIFIABLE),
            }
        }
        ty::CLEAR => {
            let (cause, diagnostic) = cause_diag(rest);
            Ok(Packet::Clear { cause, diagnostic })
        }
        ty::CLEAR_CONFIRMATION => Ok(Packet::ClearConfirmation),
        ty::INTERRUPT => Ok(Packet::Interrupt),
        ty::INTERRUPT_CONFIRMATION => Ok(Packet::InterruptConfirmation),
        ty::RESET => {
            let (cause, diagnostic) = cause_diag(rest);
            Ok(Packet::Reset { cause, diagnostic })
        }
        ty::RESET_CONFIRMATION => Ok(Packet::ResetConfirmation),
        ty::RESTART | ty::RESTART_CONFIRMATION if lcn != 0 => Err(diag::RESTART_NONZERO_CHANNEL),
        ty::RESTART => {
            let (cause, diagnostic) = cause_diag(rest);
            Ok(Packet::Restart { cause, diagnostic })
        }
        ty::RESTART_CONFIRMATION => Ok(Packet::RestartConfirmation),
        ty::DIAGNOSTIC => Ok(Packet::Diagnostic),
        _ => {
            let (kind, pr) = if mod8 {
                (t & 0x1F, t >> 5)
            } else {
                let Some(&o4) = rest.first() else {
                    return Err(diag::TOO_SHORT);
                };
                (t, o4 >> 1)
            };
            match kind {
                ty::RR => Ok(Packet::Rr { pr }),
                ty::RNR => Ok(Packet::Rnr { pr }),
                ty::REJ => Ok(Packet::Rej),
                _ => Err(diag::UNIDENTIFIABLE),
            }
        }
    }
}

/// Address block, facilities and user data of CALL / CALL ACCEPTED.
fn parse_call(rest: &[u8], m: Modulus) -> Result<Packet<'_>, u8> {
    let Some((&lengths, rest)) = rest.split_first() else {
        return Err(diag::TOO_SHORT);
    };
    let called_n = usize::from(lengths & 0x0F);
    let calling_n = usize::from(lengths >> 4);
    let nbytes = (called_n + calling_n).div_ceil(2);
    let (Some(addr), Some(rest)) = (rest.get(..nbytes), rest.get(nbytes..)) else {
        return Err(diag::TOO_SHORT);
    };
    let mut called = String::with_capacity(called_n);
    let mut calling = String::with_capacity(calling_n);
    for i in 0..called_n + calling_n {
        let byte = addr.get(i / 2).copied().unwrap_or(0);
        let digit = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
        let (out, bad) = if i < called_n {
            (&mut called, diag::INVALID_CALLED_ADDRESS)
        } else {
            (&mut calling, diag::INVALID_CALLING_ADDRESS)
        };
        if digit > 9 {
            return Err(bad);
        }
        out.push(char::from(b'0' + digit));
    }
    let Some((&flen, rest)) = rest.split_first() else {
        return Err(diag::TOO_SHORT);
    };
    let flen = usize::from(flen);
    let (Some(fac), Some(user_data)) = (rest.get(..flen), rest.get(flen..)) else {
        return Err(diag::INVALID_FACILITY_LENGTH);
    };
    // 128 octets with fast select; more is never valid.
    if user_data.len() > 128 {
        return Err(diag::TOO_LONG);
    }
    let facilities = parse_facilities(fac, m)?;
    Ok(Packet::Call {
        called,
        calling,
        facilities,
        user_data,
    })
}

/// X.25 §7.1: the two top bits of a facility code give its parameter
/// length (1, 2, 3 octets, or a length octet). Unknown facilities are
/// skipped.
fn parse_facilities(mut f: &[u8], m: Modulus) -> Result<Facilities, u8> {
    let mut out = Facilities::default();
    while let Some((&code, rest)) = f.split_first() {
        let (len, rest) = match code >> 6 {
            0 => (1, rest),
            1 => (2, rest),
            2 => (3, rest),
            _ => match rest.split_first() {
                Some((&n, rest)) => (usize::from(n), rest),
                None => return Err(diag::INVALID_FACILITY_LENGTH),
            },
        };
        let (Some(params), Some(rest)) = (rest.get(..len), rest.get(len..)) else {
            return Err(diag::INVALID_FACILITY_LENGTH);
        };
        match (code, params) {
            (0x42, &[a, b]) => {
                if !(4..=12).contains(&a) || !(4..=12).contains(&b) {
                    return Err(diag::FACILITY_PARAMETER);
                }
                out.packet = Some((a, b));
            }
            (0x43, &[a, b]) => {
                let ok = 1..=m.max_window();
                if !ok.contains(&a) || !ok.contains(&b) {
                    return Err(diag::FACILITY_PARAMETER);
                }
                out.window = Some((a, b));
            }
            _ => {}
        }
        f = rest;
    }
    Ok(out)
}

fn header(m: Modulus, lcn: u16, t: u8) -> BytesMut {
    let mut b = BytesMut::with_capacity(16);
    b.put_u8(m.gfi() | ((lcn >> 8) as u8 & 0x0F));
    b.put_u8(lcn as u8);
    b.put_u8(t);
    b
}

fn put_addresses(b: &mut BytesMut, called: &str, calling: &str) {
    b.put_u8(((calling.len() as u8 & 0x0F) << 4) | (called.len() as u8 & 0x0F));
    let digits: Vec<u8> = called
        .bytes()
        .chain(calling.bytes())
        .map(|d| d.wrapping_sub(b'0') & 0x0F)
        .collect();
    for pair in digits.chunks(2) {
        let hi = pair.first().copied().unwrap_or(0);
        let lo = pair.get(1).copied().unwrap_or(0);
        b.put_u8((hi << 4) | lo);
    }
}

fn put_facilities(b: &mut BytesMut, f: Facilities) {
    let mut fac = Vec::with_capacity(6);
    if let Some((a, c)) = f.packet {
        fac.extend_from_slice(&[0x42, a, c]);
    }
    if let Some((a, c)) = f.window {
        fac.extend_from_slice(&[0x43, a, c]);
    }
    b.put_u8(fac.len() as u8);
    b.put_slice(&fac);
}

fn enc_call(
    m: Modulus,
    lcn: u16,
    called: &str,
    calling: &str,
    f: Facilities,
    user_data: &[u8],
) -> Bytes {
    let mut b = header(m, lcn, ty::CALL);
    put_addresses(&mut b, called, calling);
    put_facilities(&mut b, f);
    b.put_slice(user_data);
    b.freeze()
}

fn enc_call_accepted(m: Modulus, lcn: u16, f: Facilities) -> Bytes {
    let mut b = header(m, lcn, ty::CALL_ACCEPTED);
    put_addresses(&mut b, "", "");
    put_facilities(&mut b, f);
    b.freeze()
}

fn enc_cause(m: Modulus, lcn: u16, t: u8, cause: u8, diagnostic: u8) -> Bytes {
    let mut b = header(m, lcn, t);
    b.put_u8(cause);
    b.put_u8(diagnostic);
    b.freeze()
}

fn enc_bare(m: Modulus, lcn: u16, t: u8) -> Bytes {
    header(m, lcn, t).freeze()
}

fn enc_flow(m: Modulus, lcn: u16, t: u8, pr: u8) -> Bytes {
    match m {
        Modulus::Mod8 => header(m, lcn, t | (pr << 5)).freeze(),
        Modulus::Mod128 => {
            let mut b = header(m, lcn, t);
            b.put_u8(pr << 1);
            b.freeze()
        }
    }
}

fn enc_data(m: Modulus, lcn: u16, ps: u8, pr: u8, more: bool, payload: &[u8]) -> Bytes {
    let mut b = match m {
        Modulus::Mod8 => header(m, lcn, (pr << 5) | (u8::from(more) << 4) | (ps << 1)),
        Modulus::Mod128 => {
            let mut b = header(m, lcn, ps << 1);
            b.put_u8((pr << 1) | u8::from(more));
            b
        }
    };
    b.put_slice(payload);
    b.freeze()
}

fn log2_size(size: usize) -> u8 {
    (usize::BITS - 1 - size.max(1).leading_zeros()) as u8
}

fn valid_address(a: &str) -> bool {
    a.len() <= 15 && a.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------
// Circuits
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// p2; `sent` once the CALL REQUEST went out.
    Calling { sent: bool },
    /// p3.
    Incoming,
    /// p4 / d1.
    Open,
    /// d2: we sent RESET REQUEST after a protocol error.
    Resetting,
    /// p6: we sent CLEAR REQUEST with this cause and diagnostic.
    Clearing {
        cause: u8,
        diagnostic: u8,
        retries: u8,
    },
    /// p1 again: the channel is free.
    Done,
}

#[derive(Debug)]
struct Circuit {
    id: CircuitId,
    wire: Wire,
    /// Set once the Closed event went out.
    reason: Option<CloseReason>,
    deadline: Option<Instant>,
    remote_address: String,
    service: String,
    clear_requested: bool,
    // Negotiated.
    send_packet: usize,
    recv_packet: usize,
    send_window: u8,
    recv_window: u8,
    // Sending.
    tx: BytesMut,
    vs: u8,
    /// Lowest P(S) not yet acknowledged (the last P(R) received).
    dr: u8,
    peer_busy: bool,
    write_blocked: bool,
    seq_len: usize,
    // Receiving.
    vr: u8,
    /// One entry per accepted DATA packet not yet wholly read (empty
    /// entries for Q packets wait behind unread ones, then count as read).
    rx: VecDeque<Bytes>,
    rx_len: usize,
    /// The P(R) we last sent.
    pr_sent: u8,
    /// When a standalone RR becomes due for data read but not yet
    /// acknowledged (the delayed-ack timer).
    ack_deadline: Option<Instant>,
    /// The delayed-ack timer ran out: RR on the next `poll_packet`.
    ack_due: bool,
    stats: CircuitStats,
}

impl Circuit {
    fn new(id: CircuitId, wire: Wire, config: &PacketConfig, now: Instant) -> Self {
        Circuit {
            id,
            wire,
            reason: None,
            deadline: Some(now + config.call_timeout),
            remote_address: String::new(),
            service: String::new(),
            clear_requested: false,
            send_packet: config.max_packet,
            recv_packet: config.max_packet,
            send_window: config.window,
            recv_window: config.window,
            tx: BytesMut::new(),
            vs: 0,
            dr: 0,
            peer_busy: false,
            write_blocked: false,
            seq_len: 0,
            vr: 0,
            rx: VecDeque::new(),
            rx_len: 0,
            pr_sent: 0,
            ack_deadline: None,
            ack_due: false,
            stats: CircuitStats::default(),
        }
    }

    fn ack_point(&self, m: Modulus) -> u8 {
        m.sub(self.vr, (self.rx.len() % 128) as u8)
    }

    /// Packets read (wholly) but not yet acknowledged.
    fn unacked(&self, m: Modulus) -> u8 {
        m.sub(self.ack_point(m), self.pr_sent)
    }

    /// Starts the delayed-ack timer if something read is unacknowledged and
    /// the timer is not already running. Without a time (nothing has told
    /// the layer the time yet) the RR is due at once.
    fn arm_ack(&mut self, m: Modulus, now: Option<Instant>, delay: Duration) {
        if self.unacked(m) == 0 || self.ack_deadline.is_some() || self.ack_due {
            return;
        }
        match now {
            Some(now) => self.ack_deadline = Some(now + delay),
            None => self.ack_due = true,
        }
    }

    /// Whether a standalone RR should go out now: something is
    /// unacknowledged, no DATA packet can carry it, and half the receive
    /// window has been read or the delayed-ack timer ran out.
    fn rr_due(&self, m: Modulus, cap: usize, now: Instant) -> bool {
        let unacked = self.unacked(m);
        unacked > 0
            && !self.can_send_data(m, cap)
            && (unacked >= self.recv_window.div_ceil(2)
                || self.ack_due
                || self.ack_deadline.is_some_and(|d| d <= now))
    }

    /// Records that P(R) `pr` (the current ack point) went out.
    fn sent_pr(&mut self, pr: u8) {
        self.pr_sent = pr;
        self.ack_deadline = None;
        self.ack_due = false;
    }

    fn pop_read(&mut self) {
        while self.rx.front().is_some_and(|s| s.is_empty()) {
            self.rx.pop_front();
        }
    }

    fn can_send_data(&self, m: Modulus, cap: usize) -> bool {
        self.wire == Wire::Open
            && self.reason.is_none()
            && cap > 0
            && !self.tx.is_empty()
            && !self.peer_busy
            && m.sub(self.vs, self.dr) < self.send_window
    }

    fn public_state(&self) -> CircuitState {
        if let Some(r) = self.reason {
            return CircuitState::Closed(r);
        }
        match self.wire {
            Wire::Calling { .. } => CircuitState::Calling,
            Wire::Incoming => CircuitState::Incoming,
            Wire::Open if self.clear_requested => CircuitState::Clearing,
            Wire::Open => CircuitState::Open,
            Wire::Resetting | Wire::Clearing { .. } => CircuitState::Clearing,
            Wire::Done => CircuitState::Closed(CloseReason::Local),
        }
    }

    fn stats(&self) -> CircuitStats {
        CircuitStats {
            send_packet: self.send_packet,
            recv_packet: self.recv_packet,
            send_window: self.send_window,
            recv_window: self.recv_window,
            ..self.stats
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerState {
    /// Before the first `restart`, or after `link_lost`.
    Down,
    /// r2: RESTART REQUEST sent.
    Restarting,
    /// r1.
    Ready,
}

/// The packet layer: virtual circuits over one link. See the module docs
/// for the polling order and the rules it follows.
#[derive(Debug)]
pub struct PacketLayer {
    config: PacketConfig,
    role: PacketRole,
    state: LayerState,
    restart_deadline: Option<Instant>,
    /// Circuits holding a logical channel, by channel.
    live: BTreeMap<u16, Circuit>,
    /// Ended circuits kept so their data can still be read.
    gone: HashMap<CircuitId, Circuit>,
    generation: HashMap<u16, u16>,
    ctrl: VecDeque<Bytes>,
    events: VecDeque<PacketEvent>,
    /// Round-robin cursor: the channel to offer a data turn first.
    next_turn: u16,
    /// The latest time the caller gave us; `read` (which takes none) times
    /// the delayed acknowledgement from it, so the RR can only come early.
    clock: Option<Instant>,
}

impl PacketLayer {
    /// Control packets or frames waiting to go out (bounded; for figures
    /// and tests).
    pub fn queued_control(&self) -> usize {
        self.ctrl.len()
    }

    /// Nothing waits to go out and everything sent was acknowledged: no
    /// control packet queued, no circuit with unsent or unacknowledged
    /// data or an acknowledgement owed. A process that stops waits for
    /// this, so its last replies are not lost with it.
    pub fn is_idle(&self) -> bool {
        self.ctrl.is_empty()
            && self
                .live
                .values()
                .all(|c| c.tx.is_empty() && c.vs == c.dr && !c.ack_due && c.ack_deadline.is_none())
    }

    /// A packet layer that is down until [`restart`](Self::restart).
    /// Out-of-range settings are brought into range (timeouts to at most a
    /// year; an invalid own address becomes empty).
    pub fn new(mut config: PacketConfig, role: PacketRole) -> Self {
        let size = config.max_packet.clamp(16, 4096);
        config.max_packet = 1 << log2_size(size);
        config.window = config.window.clamp(1, config.modulus.max_window());
        config.channels = config.channels.clamp(1, 4095);
        config.send_buffer = config.send_buffer.max(1);
        // Deadlines are `now + timeout`; keep that sum from overflowing.
        let year = Duration::from_secs(365 * 24 * 3600);
        for t in [
            &mut config.call_timeout,
            &mut config.clear_timeout,
            &mut config.reset_timeout,
            &mut config.restart_timeout,
            &mut config.ack_delay,
        ] {
            *t = (*t).min(year);
        }
        if !valid_address(&config.address) {
            config.address.clear();
        }
        PacketLayer {
            config,
            role,
            state: LayerState::Down,
            restart_deadline: None,
            live: BTreeMap::new(),
            gone: HashMap::new(),
            generation: HashMap::new(),
            ctrl: VecDeque::new(),
            events: VecDeque::new(),
            next_turn: 0,
            clock: None,
        }
    }

    /// Notes the time the caller passed in.
    fn tick(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    /// The settings in force (after range corrections).
    pub fn config(&self) -> &PacketConfig {
        &self.config
    }

    fn m(&self) -> Modulus {
        self.config.modulus
    }

    /// The link is up (first time, or again after a link reset): send
    /// RESTART REQUEST. Every circuit the peer knew of ends with
    /// [`CloseReason::Restart`]; calls not yet sent survive and go out once
    /// the restart is confirmed.
    pub fn restart(&mut self, now: Instant) {
        self.tick(now);
        self.ctrl.clear();
        self.end_all(CloseReason::Restart {
            cause: CAUSE_DTE,
            diagnostic: diag::NONE,
        });
        self.ctrl
            .push_back(enc_cause(self.m(), 0, ty::RESTART, CAUSE_DTE, diag::NONE));
        self.state = LayerState::Restarting;
        self.restart_deadline = Some(now + self.config.restart_timeout);
    }

    /// The link went down: every circuit the peer knew of ends with
    /// [`CloseReason::LinkLost`]. Call [`restart`](Self::restart) when it is
    /// back.
    pub fn link_lost(&mut self, now: Instant) {
        self.tick(now);
        self.ctrl.clear();
        self.end_all(CloseReason::LinkLost);
        self.state = LayerState::Down;
        self.restart_deadline = None;
    }

    /// Calls `service` (RFC 1090 protocol id + name in the call user data)
    /// with an empty called address. The CALL REQUEST goes out once the
    /// layer is ready; [`PacketEvent::Connected`] or
    /// [`PacketEvent::Closed`] follows.
    pub fn call(&mut self, service: &str, now: Instant) -> Result<CircuitId, X25Error> {
        self.call_to("", service, now)
    }

    /// [`call`](Self::call) with a called X.121 address (digits only, up to 15).
    pub fn call_to(
        &mut self,
        address: &str,
        service: &str,
        now: Instant,
    ) -> Result<CircuitId, X25Error> {
        self.tick(now);
        if service.len() > MAX_SERVICE_LEN || !service.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(X25Error::InvalidService);
        }
        if !valid_address(address) {
            return Err(X25Error::InvalidAddress);
        }
        let channels = 1..=self.config.channels;
        let free = |lcn: &u16| !self.live.contains_key(lcn);
        let lcn = match self.role {
            PacketRole::Dte => channels.rev().find(free),
            PacketRole::Dce => channels.clone().find(free),
        }
        .ok_or(X25Error::NoFreeChannel)?;
        let id = self.new_id(lcn);
        let mut c = Circuit::new(id, Wire::Calling { sent: false }, &self.config, now);
        c.remote_address = address.to_owned();
        c.service = service.to_owned();
        self.live.insert(lcn, c);
        Ok(id)
    }

    fn new_id(&mut self, lcn: u16) -> CircuitId {
        let g = self.generation.entry(lcn).or_insert(0);
        *g = (*g + 1) & 0x0F;
        let id = CircuitId((*g << 12) | (lcn & 0x0FFF));
        self.gone.remove(&id);
        id
    }

    /// Ends every circuit the peer knew of (restart, link lost).
    fn end_all(&mut self, reason: CloseReason) {
        for c in self.live.values_mut() {
            if c.wire == (Wire::Calling { sent: false }) {
                continue;
            }
            notify(&mut self.events, c, reason);
            c.wire = Wire::Done;
        }
        self.sweep();
    }

    /// Moves circuits whose channel is free again out of `live`.
    fn sweep(&mut self) {
        let done: Vec<u16> = self
            .live
            .iter()
            .filter(|(_, c)| c.wire == Wire::Done)
            .map(|(lcn, _)| *lcn)
            .collect();
        for lcn in done {
            if let Some(mut c) = self.live.remove(&lcn) {
                c.tx = BytesMut::new();
                c.deadline = None;
                c.ack_deadline = None;
                self.gone.insert(c.id, c);
            }
        }
    }

    fn get(&self, id: CircuitId) -> Option<&Circuit> {
        match self.live.get(&id.lcn()) {
            Some(c) if c.id == id => Some(c),
            _ => self.gone.get(&id),
        }
    }

    fn get_mut(&mut self, id: CircuitId) -> Option<&mut Circuit> {
        if self.live.get(&id.lcn()).is_some_and(|c| c.id == id) {
            self.live.get_mut(&id.lcn())
        } else {
            self.gone.get_mut(&id)
        }
    }

    /// Answers an [`PacketEvent::IncomingCall`] with CALL ACCEPTED, carrying
    /// the negotiated packet sizes and windows. No effect on a circuit that
    /// is not an unanswered incoming call.
    pub fn accept(&mut self, id: CircuitId, now: Instant) {
        self.tick(now);
        let m = self.m();
        let Some(c) = self.live.get_mut(&id.lcn()).filter(|c| c.id == id) else {
            return;
        };
        if c.wire != Wire::Incoming {
            return;
        }
        // First parameter: from the called DTE (us); second: from the caller.
        let f = Facilities {
            packet: Some((log2_size(c.send_packet), log2_size(c.recv_packet))),
            window: Some((c.send_window, c.recv_window)),
        };
        push_control(&mut self.ctrl, enc_call_accepted(m, id.lcn(), f));
        c.wire = Wire::Open;
        c.deadline = None;
    }

    /// Refuses an [`PacketEvent::IncomingCall`] with CLEAR REQUEST (cause,
    /// diagnostic). [`PacketEvent::Closed`] with [`CloseReason::Local`]
    /// follows once confirmed. No effect on other circuits.
    pub fn refuse(&mut self, id: CircuitId, cause: u8, diagnostic: u8, now: Instant) {
        self.tick(now);
        let m = self.m();
        let t23 = self.config.clear_timeout;
        let Some(c) = self.live.get_mut(&id.lcn()).filter(|c| c.id == id) else {
            return;
        };
        if c.wire == Wire::Incoming {
            start_clear(&mut self.ctrl, m, c, cause, diagnostic, now + t23);
        }
    }

    /// Orderly close. On an open circuit, CLEAR REQUEST goes out only once
    /// everything written has been sent and acknowledged (the peer read it),
    /// or after the clear timeout (T23) if the peer never reads. RFC 1090
    /// §9: the caller clears after the 221 reply. A call not yet answered is
    /// cleared at once. [`PacketEvent::Closed`] follows.
    pub fn clear(&mut self, id: CircuitId, now: Instant) {
        self.tick(now);
        let m = self.m();
        let t23 = self.config.clear_timeout;
        let Some(c) = self.live.get_mut(&id.lcn()).filter(|c| c.id == id) else {
            return;
        };
        match c.wire {
            Wire::Calling { sent: false } => {
                notify(&mut self.events, c, CloseReason::Local);
                c.wire = Wire::Done;
                self.sweep();
            }
            Wire::Calling { sent: true } | Wire::Incoming => {
                start_clear(&mut self.ctrl, m, c, CAUSE_DTE, diag::NONE, now + t23);
            }
            Wire::Open if !c.clear_requested => {
                c.clear_requested = true;
                c.deadline = Some(now + t23);
                self.progress(now);
            }
            _ => {}
        }
    }

    /// Queues bytes on a circuit (calling, incoming or open). Returns how
    /// many were taken: `Ok(0)` (or a short count) when the send buffer is
    /// full; [`PacketEvent::Writable`] follows when there is room.
    pub fn write(&mut self, id: CircuitId, data: &[u8]) -> Result<usize, X25Error> {
        let limit = self.config.send_buffer;
        let Some(c) = self.get_mut(id) else {
            return Err(X25Error::UnknownCircuit);
        };
        let open = matches!(c.wire, Wire::Calling { .. } | Wire::Incoming | Wire::Open);
        if !open || c.clear_requested || c.reason.is_some() {
            return Err(X25Error::Closed);
        }
        let n = limit.saturating_sub(c.tx.len()).min(data.len());
        c.tx.extend_from_slice(data.get(..n).unwrap_or_default());
        if n < data.len() {
            c.write_blocked = true;
        }
        Ok(n)
    }

    /// Reads received bytes in order. `Ok(0)` with
    /// [`is_finished`](Self::is_finished) false means "nothing yet" (wait
    /// for [`PacketEvent::Readable`]). Reading is what acknowledges data to
    /// the sender: on the next DATA packet of this circuit, or in an RR from
    /// `poll_packet` once half the receive window has been read or
    /// [`ack_delay`](PacketConfig::ack_delay) has passed (timed from the
    /// last instant given to the layer, since `read` takes none).
    pub fn read(&mut self, id: CircuitId, buf: &mut [u8]) -> Result<usize, X25Error> {
        let (m, clock, delay) = (self.m(), self.clock, self.config.ack_delay);
        let Some(c) = self.get_mut(id) else {
            return Err(X25Error::UnknownCircuit);
        };
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = c.rx.front_mut() else {
                break;
            };
            let k = front.len().min(buf.len() - n);
            if let (Some(dst), Some(src)) = (buf.get_mut(n..n + k), front.get(..k)) {
                dst.copy_from_slice(src);
            }
            front.advance(k);
            n += k;
            c.pop_read();
        }
        c.rx_len = c.rx_len.saturating_sub(n);
        c.arm_ack(m, clock, delay);
        Ok(n)
    }

    /// True once the circuit has ended (cleared, reset, restart, link lost,
    /// or our own clear is under way) and every received byte has been
    /// read: end of stream. [`circuit_state`](Self::circuit_state) says why.
    /// True for unknown ids.
    pub fn is_finished(&self, id: CircuitId) -> bool {
        let Some(c) = self.get(id) else {
            return true;
        };
        c.rx_len == 0
            && (c.reason.is_some()
                || matches!(c.wire, Wire::Resetting | Wire::Clearing { .. } | Wire::Done))
    }

    /// Where a circuit is; `None` for unknown ids.
    pub fn circuit_state(&self, id: CircuitId) -> Option<CircuitState> {
        self.get(id).map(Circuit::public_state)
    }

    /// The peer's X.121 address: the calling address of an incoming call,
    /// the called address of ours. Empty if none was given.
    pub fn remote_address(&self, id: CircuitId) -> Option<&str> {
        self.get(id).map(|c| c.remote_address.as_str())
    }

    /// Figures for a circuit, including the negotiated sizes and windows.
    pub fn stats(&self, id: CircuitId) -> Option<CircuitStats> {
        self.get(id).map(Circuit::stats)
    }

    /// Forgets an ended circuit (its id becomes unknown and its unread
    /// data is dropped); clears it first if it is still live. Ended
    /// circuits are otherwise kept until their channel has been reused 16
    /// times, so that `read`, `is_finished` and `circuit_state` keep working.
    pub fn release(&mut self, id: CircuitId, now: Instant) {
        if self.gone.remove(&id).is_none() {
            self.clear(id, now);
        }
    }

    /// Queues CLEAR REQUEST on open circuits whose `clear` is waiting and
    /// whose data has all been acknowledged.
    fn progress(&mut self, now: Instant) {
        let m = self.m();
        let t23 = self.config.clear_timeout;
        for c in self.live.values_mut() {
            if c.wire == Wire::Open && c.clear_requested && c.tx.is_empty() && c.vs == c.dr {
                start_clear(&mut self.ctrl, m, c, CAUSE_DTE, diag::NONE, now + t23);
            }
        }
    }

    /// One packet received from the link (LAPB I-frame information field,
    /// or an XOT payload). Never panics; see the module docs for how bad
    /// packets are answered.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant) {
        self.tick(now);
        let (Some(&b0), Some(&b1)) = (packet.first(), packet.get(1)) else {
            return;
        };
        let lcn = (u16::from(b0 & 0x0F) << 8) | u16::from(b1);
        let parsed = parse(packet, self.m());
        if lcn == 0 {
            self.on_channel0(parsed, now);
            return;
        }
        if self.state != LayerState::Ready {
            // r2/r3: everything but restart packets is ignored.
            return;
        }
        if self.live.contains_key(&lcn) {
            self.on_circuit(lcn, parsed, now);
        } else {
            self.on_free(lcn, parsed, now);
        }
        self.sweep();
    }

    fn on_channel0(&mut self, parsed: Result<Packet<'_>, u8>, now: Instant) {
        let m = self.m();
        match (parsed, self.state) {
            (Ok(Packet::Restart { .. }), LayerState::Restarting) => {
                // Our circuits are already gone. If our RESTART REQUEST
                // has not left yet, confirm theirs instead; if it has, the
                // two crossed and neither is confirmed (X.25 §4.5).
                if !self.ctrl.is_empty() {
                    self.ctrl.clear();
                    self.ctrl
                        .push_back(enc_bare(m, 0, ty::RESTART_CONFIRMATION));
                }
                self.state = LayerState::Ready;
                self.restart_deadline = None;
            }
            (Ok(Packet::Restart { cause, diagnostic }), _) => {
                self.ctrl.clear();
                self.end_all(CloseReason::Restart { cause, diagnostic });
                self.ctrl
                    .push_back(enc_bare(m, 0, ty::RESTART_CONFIRMATION));
                self.state = LayerState::Ready;
                self.restart_deadline = None;
            }
            (Ok(Packet::RestartConfirmation), LayerState::Restarting) => {
                self.state = LayerState::Ready;
                self.restart_deadline = None;
            }
            // Unexpected confirmations, DIAGNOSTIC, anything else on
            // channel 0: ignored (answering could start a loop).
            _ => {}
        }
        let _ = now;
    }

    fn on_free(&mut self, lcn: u16, parsed: Result<Packet<'_>, u8>, now: Instant) {
        let m = self.m();
        match parsed {
            Ok(Packet::Call {
                calling,
                facilities,
                user_data,
                ..
            }) => self.incoming_call(lcn, calling, facilities, user_data, now),
            Ok(Packet::Clear { .. }) => {
                self.ctrl
                    .push_back(enc_bare(m, lcn, ty::CLEAR_CONFIRMATION));
            }
            Ok(
                Packet::Data { .. }
                | Packet::Rr { .. }
                | Packet::Rnr { .. }
                | Packet::Rej
                | Packet::Interrupt
                | Packet::Reset { .. }
                | Packet::CallAccepted { .. },
            ) => {
                push_control(
                    &mut self.ctrl,
                    enc_cause(m, lcn, ty::CLEAR, CAUSE_DTE, diag::UNASSIGNED_CHANNEL),
                );
            }
            // Confirmations and unparseable packets on a free channel are
            // ignored: answering a CLEAR with a CLEAR could loop.
            _ => {}
        }
    }

    fn incoming_call(
        &mut self,
        lcn: u16,
        calling: String,
        facilities: Facilities,
        user_data: &[u8],
        now: Instant,
    ) {
        let m = self.m();
        let refuse = |ctrl: &mut VecDeque<Bytes>, d: u8| {
            push_control(ctrl, enc_cause(m, lcn, ty::CLEAR, CAUSE_DTE, d));
        };
        if lcn > self.config.channels {
            return refuse(&mut self.ctrl, diag::UNASSIGNED_CHANNEL);
        }
        let service = match user_data.strip_prefix(&PRID_SMTP[..]) {
            Some(s) if s.len() <= MAX_SERVICE_LEN && s.iter().all(u8::is_ascii_graphic) => {
                String::from_utf8_lossy(s).into_owned()
            }
            _ => return refuse(&mut self.ctrl, diag::CALL_SETUP_PROBLEM),
        };
        // The answerer may lower what was offered, never raise it.
        let mine = log2_size(self.config.max_packet);
        let default = log2_size(DEFAULT_PACKET_SIZE);
        let (p_called, p_calling) = facilities.packet.unwrap_or((default, default));
        let (w_called, w_calling) = facilities
            .window
            .unwrap_or((DEFAULT_WINDOW, DEFAULT_WINDOW));
        let id = self.new_id(lcn);
        let mut c = Circuit::new(id, Wire::Incoming, &self.config, now);
        c.send_packet = 1 << p_called.min(mine);
        c.recv_packet = 1 << p_calling.min(mine);
        c.send_window = w_called.min(self.config.window);
        c.recv_window = w_calling.min(self.config.window);
        c.remote_address = calling;
        c.service.clone_from(&service);
        self.live.insert(lcn, c);
        self.events
            .push_back(PacketEvent::IncomingCall { id, service });
    }

    fn on_circuit(&mut self, lcn: u16, parsed: Result<Packet<'_>, u8>, now: Instant) {
        let m = self.m();
        let role = self.role;
        let mine_packet = log2_size(self.config.max_packet);
        let mine_window = self.config.window;
        let t22 = self.config.reset_timeout;
        let t23 = self.config.clear_timeout;
        let ack_delay = self.config.ack_delay;
        let ctrl = &mut self.ctrl;
        let events = &mut self.events;
        let Some(c) = self.live.get_mut(&lcn) else {
            return;
        };
        let id = c.id;
        // Restart packets on a circuit channel, DIAGNOSTIC: ignored.
        if matches!(
            parsed,
            Err(diag::RESTART_NONZERO_CHANNEL) | Ok(Packet::Diagnostic)
        ) {
            return;
        }
        let confirm_clear = |ctrl: &mut VecDeque<Bytes>| {
            push_control(ctrl, enc_bare(m, lcn, ty::CLEAR_CONFIRMATION));
        };
        let setup_error = |ctrl: &mut VecDeque<Bytes>,
                           events: &mut VecDeque<PacketEvent>,
                           c: &mut Circuit,
                           d: u8| {
            start_clear(ctrl, m, c, CAUSE_DTE, d, now + t23);
            notify(events, c, CloseReason::ProtocolError { diagnostic: d });
        };
        if matches!(c.wire, Wire::Calling { .. }) && matches!(parsed, Ok(Packet::Call { .. })) {
            // Call collision (X.25 §5.2.5): the DTE's call proceeds; as
            // the DCE we give ours up and take theirs.
            if role == PacketRole::Dce {
                notify(events, c, CloseReason::Collision);
                c.wire = Wire::Done;
                self.sweep();
                self.on_free(lcn, parsed, now);
            }
            return;
        }
        match c.wire {
            Wire::Calling { sent: false } => {}
            Wire::Calling { sent: true } => match parsed {
                Ok(Packet::CallAccepted { facilities }) => {
                    let (pa, pb) = facilities.packet.unwrap_or((mine_packet, mine_packet));
                    let (wa, wb) = facilities.window.unwrap_or((mine_window, mine_window));
                    if pa > mine_packet || pb > mine_packet || wa > mine_window || wb > mine_window
                    {
                        return setup_error(ctrl, events, c, diag::FACILITY_PARAMETER);
                    }
                    // First parameter: from the called DTE, i.e. to us.
                    c.recv_packet = 1 << pa;
                    c.send_packet = 1 << pb;
                    c.recv_window = wa;
                    c.send_window = wb;
                    c.wire = Wire::Open;
                    c.deadline = None;
                    events.push_back(PacketEvent::Connected(id));
                }
                Ok(Packet::Clear { cause, diagnostic }) => {
                    confirm_clear(ctrl);
                    notify(events, c, CloseReason::Refused { cause, diagnostic });
                    c.wire = Wire::Done;
                }
                Ok(_) => setup_error(ctrl, events, c, diag::INVALID_TYPE_P2),
                Err(d) => setup_error(ctrl, events, c, d),
            },
            Wire::Incoming => match parsed {
                Ok(Packet::Clear { cause, diagnostic }) => {
                    confirm_clear(ctrl);
                    notify(events, c, CloseReason::Cleared { cause, diagnostic });
                    c.wire = Wire::Done;
                }
                Ok(_) => setup_error(ctrl, events, c, diag::INVALID_TYPE_P3),
                Err(d) => setup_error(ctrl, events, c, d),
            },
            Wire::Open => {
                let result = match parsed {
                    Ok(Packet::Data {
                        q, ps, pr, payload, ..
                    }) => on_data(events, m, c, q, ps, pr, payload).map(|()| {
                        // A Q packet with nothing unread before it counts
                        // as read at once.
                        c.arm_ack(m, Some(now), ack_delay);
                    }),
                    Ok(Packet::Rr { pr }) => on_ack(m, c, pr).map(|()| c.peer_busy = false),
                    Ok(Packet::Rnr { pr }) => on_ack(m, c, pr).map(|()| c.peer_busy = true),
                    Ok(Packet::Rej) => Err(diag::REJECT_NOT_SUBSCRIBED),
                    // RFC 1090 §5: interrupts are not used and are ignored.
                    Ok(Packet::Interrupt | Packet::InterruptConfirmation) => Ok(()),
                    Ok(Packet::ResetConfirmation) => Ok(()),
                    Ok(Packet::Reset { cause, diagnostic }) => {
                        // RFC 1090 §6: a reset ends the session; clear.
                        c.stats.resets += 1;
                        push_control(ctrl, enc_bare(m, lcn, ty::RESET_CONFIRMATION));
                        start_clear(ctrl, m, c, CAUSE_DTE, diag::NONE, now + t23);
                        notify(events, c, CloseReason::Reset { cause, diagnostic });
                        Ok(())
                    }
                    Ok(Packet::Clear { cause, diagnostic }) => {
                        confirm_clear(ctrl);
                        notify(events, c, CloseReason::Cleared { cause, diagnostic });
                        c.wire = Wire::Done;
                        Ok(())
                    }
                    Ok(_) => Err(diag::INVALID_TYPE_D1),
                    Err(d) => Err(d),
                };
                if let Err(d) = result {
                    // Procedure error in data transfer: RESET REQUEST (X.25
                    // §4.4.3); the session is over, so clear after it.
                    c.stats.resets += 1;
                    push_control(ctrl, enc_cause(m, lcn, ty::RESET, CAUSE_DTE, d));
                    c.wire = Wire::Resetting;
                    c.tx.clear();
                    c.deadline = Some(now + t22);
                    notify(events, c, CloseReason::ProtocolError { diagnostic: d });
                }
            }
            Wire::Resetting => match parsed {
                Ok(Packet::Reset { .. } | Packet::ResetConfirmation) => {
                    start_clear(ctrl, m, c, CAUSE_DTE, diag::NONE, now + t23);
                }
                Ok(Packet::Clear { .. }) => {
                    confirm_clear(ctrl);
                    c.wire = Wire::Done;
                }
                _ => {}
            },
            Wire::Clearing { .. } => {
                // p6: only CLEAR CONFIRMATION or a crossing CLEAR count.
                if let Ok(Packet::Clear { .. } | Packet::ClearConfirmation) = parsed {
                    notify(events, c, CloseReason::Local);
                    c.wire = Wire::Done;
                }
            }
            Wire::Done => {}
        }
    }

    /// The next packet for the link, or `None`. Control packets come first
    /// (restart, call set-up, clearing, reset), then calls waiting for the
    /// layer to be ready, then RR for circuits whose acknowledgement is due
    /// (half the receive window read, or `ack_delay` passed) and cannot
    /// ride on data, then one DATA packet from the next circuit in
    /// round-robin order. A DATA packet is at most `max_len` bytes in all
    /// and its data field at most the negotiated packet size. Control
    /// packets are at most [`MAX_CONTROL_LEN`] bytes whatever `max_len` is.
    #[must_use]
    pub fn poll_packet(&mut self, max_len: usize, now: Instant) -> Option<Bytes> {
        self.tick(now);
        self.progress(now);
        if let Some(p) = self.ctrl.pop_front() {
            return Some(p);
        }
        if self.state != LayerState::Ready {
            return None;
        }
        let m = self.m();
        let config = &self.config;
        if let Some(c) = self
            .live
            .values_mut()
            .find(|c| c.wire == (Wire::Calling { sent: false }))
        {
            c.wire = Wire::Calling { sent: true };
            let p = log2_size(config.max_packet);
            let f = Facilities {
                packet: Some((p, p)),
                window: Some((config.window, config.window)),
            };
            let mut user_data = PRID_SMTP.to_vec();
            user_data.extend_from_slice(c.service.as_bytes());
            return Some(enc_call(
                m,
                c.id.lcn(),
                &c.remote_address,
                &config.address,
                f,
                &user_data,
            ));
        }
        let cap = max_len.saturating_sub(m.data_header_len());
        for (lcn, c) in self.live.iter_mut() {
            if c.wire == Wire::Open && c.rr_due(m, cap, now) {
                let ack = c.ack_point(m);
                c.sent_pr(ack);
                return Some(enc_flow(m, *lcn, ty::RR, ack));
            }
        }
        let start = self.next_turn;
        let lcn = self
            .live
            .range(start..)
            .chain(self.live.range(..start))
            .find(|(_, c)| c.can_send_data(m, cap))
            .map(|(lcn, _)| *lcn)?;
        let c = self.live.get_mut(&lcn)?;
        let n = c.tx.len().min(c.send_packet).min(cap);
        let chunk = c.tx.split_to(n);
        let more = !c.tx.is_empty() && c.seq_len + n < MAX_M_SEQUENCE;
        c.seq_len = if more { c.seq_len + n } else { 0 };
        // Always the current P(R): this acknowledges everything read, so
        // no RR is owed for it any more.
        let pr = c.ack_point(m);
        c.sent_pr(pr);
        let packet = enc_data(m, lcn, c.vs, pr, more, &chunk);
        c.vs = m.add(c.vs, 1);
        c.stats.packets_out += 1;
        c.stats.bytes_out += n as u64;
        if c.write_blocked && c.tx.len() <= self.config.send_buffer / 2 {
            c.write_blocked = false;
            self.events.push_back(PacketEvent::Writable(c.id));
        }
        self.next_turn = lcn + 1;
        Some(packet)
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PacketEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let restart = match self.state {
            LayerState::Restarting => self.restart_deadline,
            _ => None,
        };
        let acks = self
            .live
            .values()
            .filter(|c| c.wire == Wire::Open)
            .filter_map(|c| c.ack_deadline);
        self.live
            .values()
            .filter_map(|c| c.deadline)
            .chain(acks)
            .chain(restart)
            .min()
    }

    /// Runs the timers that are due: T20 (repeat RESTART REQUEST), T21
    /// (clear an unanswered call, or an incoming call the application did
    /// not answer), T22 (clear after an unconfirmed reset), T23 (repeat
    /// CLEAR REQUEST once, then free the channel), the wait of `clear`
    /// for the peer to acknowledge our data, and the delayed-ack timer (the
    /// RR then goes out on the next `poll_packet`).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        let m = self.m();
        if self.state == LayerState::Restarting && self.restart_deadline.is_some_and(|d| d <= now) {
            if self.ctrl.is_empty() {
                self.ctrl
                    .push_back(enc_cause(m, 0, ty::RESTART, CAUSE_DTE, diag::NONE));
            }
            self.restart_deadline = Some(now + self.config.restart_timeout);
        }
        let t23 = self.config.clear_timeout;
        for c in self.live.values_mut() {
            if c.wire == Wire::Open && c.ack_deadline.is_some_and(|d| d <= now) {
                c.ack_deadline = None;
                c.ack_due = true;
            }
            if c.deadline.is_none_or(|d| d > now) {
                continue;
            }
            c.deadline = None;
            match c.wire {
                Wire::Calling { sent: false } => {
                    notify(&mut self.events, c, CloseReason::Timeout);
                    c.wire = Wire::Done;
                }
                Wire::Calling { sent: true } => {
                    start_clear(
                        &mut self.ctrl,
                        m,
                        c,
                        CAUSE_DTE,
                        diag::TIMER_EXPIRED,
                        now + t23,
                    );
                    notify(&mut self.events, c, CloseReason::Timeout);
                }
                Wire::Incoming => {
                    let d = diag::TIMER_EXPIRED_INCOMING_CALL;
                    start_clear(&mut self.ctrl, m, c, CAUSE_DTE, d, now + t23);
                    notify(&mut self.events, c, CloseReason::Timeout);
                }
                Wire::Open => {
                    if c.clear_requested {
                        start_clear(&mut self.ctrl, m, c, CAUSE_DTE, diag::NONE, now + t23);
                    }
                }
                Wire::Resetting => {
                    let d = diag::TIMER_EXPIRED_RESET;
                    start_clear(&mut self.ctrl, m, c, CAUSE_DTE, d, now + t23);
                }
                Wire::Clearing {
                    cause,
                    diagnostic,
                    retries,
                } => {
                    if retries == 0 {
                        self.ctrl
                            .push_back(enc_cause(m, c.id.lcn(), ty::CLEAR, cause, diagnostic));
                        c.wire = Wire::Clearing {
                            cause,
                            diagnostic,
                            retries: 1,
                        };
                        c.deadline = Some(now + t23);
                    } else {
                        notify(&mut self.events, c, CloseReason::Timeout);
                        c.wire = Wire::Done;
                    }
                }
                Wire::Done => {}
            }
        }
        self.sweep();
    }
}

fn notify(events: &mut VecDeque<PacketEvent>, c: &mut Circuit, reason: CloseReason) {
    if c.reason.is_none() {
        c.reason = Some(reason);
        events.push_back(PacketEvent::Closed { id: c.id, reason });
    }
}

fn start_clear(
    ctrl: &mut VecDeque<Bytes>,
    m: Modulus,
    c: &mut Circuit,
    cause: u8,
    diagnostic: u8,
    deadline: Instant,
) {
    push_control(ctrl, enc_cause(m, c.id.lcn(), ty::CLEAR, cause, diagnostic));
    c.wire = Wire::Clearing {
        cause,
        diagnostic,
        retries: 0,
    };
    c.tx.clear();
    c.deadline = Some(deadline);
}

/// P(R) must lie between the last P(R) received and the next P(S) to send.
fn on_ack(m: Modulus, c: &mut Circuit, pr: u8) -> Result<(), u8> {
    if m.sub(pr, c.dr) > m.sub(c.vs, c.dr) {
        return Err(diag::INVALID_PR);
    }
    c.dr = pr;
    Ok(())
}

fn on_data(
    events: &mut VecDeque<PacketEvent>,
    m: Modulus,
    c: &mut Circuit,
    q: bool,
    ps: u8,
    pr: u8,
    payload: &[u8],
) -> Result<(), u8> {
    if payload.len() > c.recv_packet {
        return Err(diag::TOO_LONG);
    }
    // In order, and inside the window we advertised by our last P(R).
    if ps != c.vr || m.sub(c.vr, c.pr_sent) >= c.recv_window {
        return Err(diag::INVALID_PS);
    }
    on_ack(m, c, pr)?;
    c.vr = m.add(c.vr, 1);
    c.stats.packets_in += 1;
    c.stats.bytes_in += payload.len() as u64;
    let was_empty = c.rx_len == 0;
    if q {
        // RFC 1090 §5: qualified data is not used; its sequence number
        // counts, its content is dropped.
        c.rx.push_back(Bytes::new());
    } else {
        c.rx.push_back(Bytes::copy_from_slice(payload));
        c.rx_len += payload.len();
    }
    c.pop_read();
    if was_empty && c.rx_len > 0 {
        events.push_back(PacketEvent::Readable(c.id));
    }
    Ok(())
}

/// Control packets queued for the peer at most; more are dropped. A peer
/// that keeps sending but never reads (a flood of packets that each earn
/// an answer) must not make us buffer answers without limit; the ones
/// dropped are recovered by the protocol's own timers if the peer is
/// honest after all.
const MAX_QUEUED_CONTROL: usize = 1024;

/// Queues a control packet unless [`MAX_QUEUED_CONTROL`] are already waiting.
fn push_control(queue: &mut VecDeque<Bytes>, item: Bytes) {
    if queue.len() < MAX_QUEUED_CONTROL {
        queue.push_back(item);
    }
}

#[cfg(test)]
mod tests {
    //! Exact packet bytes (ITU-T X.25 §5-7 formats) through the public API.
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::field_reassign_with_default
    )]

    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn drain(l: &mut PacketLayer, now: Instant) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| l.poll_packet(1024, now))
            .map(|b| b.to_vec())
            .collect()
    }

    /// After a read of less than half the window: no RR at once; the
    /// delayed-ack timer is at `now + ack_delay`, and when it runs out the
    /// RR goes out. Returns what was sent then.
    fn delayed_ack(l: &mut PacketLayer, now: Instant) -> Vec<Vec<u8>> {
        assert!(drain(l, now).is_empty(), "no RR before ack_delay");
        let t = now + l.config().ack_delay;
        assert_eq!(l.poll_timeout(), Some(t));
        l.handle_timeout(t);
        assert_eq!(l.poll_timeout(), None);
        drain(l, t)
    }

    fn events(l: &mut PacketLayer) -> Vec<PacketEvent> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    /// A ready layer (restart sent and confirmed).
    fn ready(config: PacketConfig, role: PacketRole, now: Instant) -> PacketLayer {
        let mut l = PacketLayer::new(config, role);
        l.restart(now);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x00, 0xFB, 0x00, 0x00]]);
        l.handle_packet(&[0x10, 0x00, 0xFF], now);
        l
    }

    const CALL_SMTP_LCN64: [u8; 19] = [
        0x10, 0x40, 0x0B, // GFI mod 8, LCN 64, CALL REQUEST
        0x00, // no addresses
        0x06, 0x42, 0x08, 0x08, 0x43, 0x07, 0x07, // 256-byte packets, window 7
        0xC0, 0xF7, 0x00, 0x00, b's', b'm', b't', b'p', // RFC 1090 PRID + service
    ];

    /// DTE layer with an open circuit on LCN 64 (256 bytes, window 7).
    fn open_dte(now: Instant) -> (PacketLayer, CircuitId) {
        let mut l = ready(PacketConfig::default(), PacketRole::Dte, now);
        let id = l.call("smtp", now).unwrap();
        assert_eq!(id.lcn(), 64, "the DTE takes the highest channel");
        assert_eq!(drain(&mut l, now), [CALL_SMTP_LCN64.to_vec()]);
        l.handle_packet(&[0x10, 0x40, 0x0F], now);
        assert_eq!(events(&mut l), [PacketEvent::Connected(id)]);
        (l, id)
    }

    #[test]
    fn call_request_and_accept_bytes() {
        let now = t0();
        let (l, id) = open_dte(now);
        let s = l.stats(id).unwrap();
        assert_eq!(
            (s.send_packet, s.recv_packet, s.send_window, s.recv_window),
            (256, 256, 7, 7)
        );
        assert_eq!(l.circuit_state(id), Some(CircuitState::Open));
    }

    #[test]
    fn call_request_addresses_in_bcd() {
        let now = t0();
        let mut config = PacketConfig::default();
        config.address = "1234".into();
        config.max_packet = 128;
        config.window = 2;
        let mut l = ready(config, PacketRole::Dce, now);
        let id = l.call_to("567", "smtp", now).unwrap();
        assert_eq!(id.lcn(), 1, "the DCE takes the lowest channel");
        assert_eq!(
            drain(&mut l, now),
            [vec![
                0x10, 0x01, 0x0B, 0x43, 0x56, 0x71, 0x23, 0x40, 0x06, 0x42, 0x07, 0x07, 0x43, 0x02,
                0x02, 0xC0, 0xF7, 0x00, 0x00, b's', b'm', b't', b'p'
            ]]
        );
        assert_eq!(l.remote_address(id), Some("567"));
        assert_eq!(l.call_to("12a", "smtp", now), Err(X25Error::InvalidAddress));
        assert_eq!(
            l.call("smtp with space", now),
            Err(X25Error::InvalidService)
        );
        assert_eq!(l.call("thirteen-char", now), Err(X25Error::InvalidService));
    }

    #[test]
    fn incoming_call_negotiates_down_and_accepts() {
        let now = t0();
        let mut config = PacketConfig::default();
        config.max_packet = 128;
        config.window = 3;
        let mut l = ready(config, PacketRole::Dce, now);
        // INCOMING CALL on LCN 0x123 (group 1), calling address "42",
        // offering 1024/512-byte packets and windows 7/5.
        let mut call = vec![
            0x11, 0x23, 0x0B, 0x20, 0x42, 0x06, 0x42, 0x0A, 0x09, 0x43, 0x07, 0x05,
        ];
        call.extend_from_slice(&[0xC0, 0xF7, 0x00, 0x00, b's', b'm', b't', b'p']);
        let mut config = l.config().clone();
        config.channels = 4095;
        let mut l2 = ready(config, PacketRole::Dce, now);
        l.handle_packet(&call, now);
        // Channel 0x123 is above our 64 channels: cleared, "unassigned".
        assert_eq!(drain(&mut l, now), [vec![0x11, 0x23, 0x13, 0x00, 36]]);
        assert!(events(&mut l).is_empty());

        l2.handle_packet(&call, now);
        let ev = events(&mut l2);
        let [PacketEvent::IncomingCall { id, service }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(service, "smtp");
        assert_eq!(id.lcn(), 0x123);
        assert_eq!(l2.remote_address(*id), Some("42"));
        l2.accept(*id, now);
        // CALL ACCEPTED: no addresses, packet size 128 both ways, windows 3/3.
        assert_eq!(
            drain(&mut l2, now),
            [vec![
                0x11, 0x23, 0x0F, 0x00, 0x06, 0x42, 0x07, 0x07, 0x43, 0x03, 0x03
            ]]
        );
        let s = l2.stats(*id).unwrap();
        assert_eq!(
            (s.send_packet, s.recv_packet, s.send_window, s.recv_window),
            (128, 128, 3, 3)
        );
    }

    #[test]
    fn incoming_call_without_facilities_uses_defaults() {
        let now = t0();
        let mut l = ready(PacketConfig::default(), PacketRole::Dce, now);
        l.handle_packet(&[0x10, 0x05, 0x0B, 0x00, 0x00, 0xC0, 0xF7, 0, 0, b'x'], now);
        let Some(PacketEvent::IncomingCall { id, service }) = l.poll_event() else {
            panic!()
        };
        assert_eq!(service, "x");
        let s = l.stats(id).unwrap();
        assert_eq!(
            (s.send_packet, s.send_window),
            (DEFAULT_PACKET_SIZE, DEFAULT_WINDOW)
        );
    }

    #[test]
    fn wrong_protocol_id_is_cleared() {
        let now = t0();
        let mut l = ready(PacketConfig::default(), PacketRole::Dce, now);
        // X.29 PAD protocol id 01000000.
        l.handle_packet(&[0x10, 0x05, 0x0B, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00], now);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x05, 0x13, 0x00, 64]]);
        assert!(l.poll_event().is_none());
    }

    #[test]
    fn data_rr_rnr_bytes_mod8() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        assert_eq!(l.write(id, b"HELO").unwrap(), 4);
        // DATA P(S)=0 P(R)=0 M=0.
        assert_eq!(drain(&mut l, now), [b"\x10\x40\x00HELO".to_vec()]);
        // Peer DATA P(S)=0, P(R)=1 (acks ours), "hi".
        l.handle_packet(b"\x10\x40\x20hi", now);
        assert_eq!(events(&mut l), [PacketEvent::Readable(id)]);
        // Not read yet: no acknowledgement.
        assert!(drain(&mut l, now).is_empty());
        let mut buf = [0u8; 8];
        assert_eq!(l.read(id, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        // RR P(R)=1, after the ack delay (one packet < half of window 7).
        assert_eq!(delayed_ack(&mut l, now), [vec![0x10, 0x40, 0x21]]);
        // RNR P(R)=1: no data until RR.
        l.handle_packet(&[0x10, 0x40, 0x25], now);
        assert_eq!(l.write(id, b"x").unwrap(), 1);
        assert!(drain(&mut l, now).is_empty());
        l.handle_packet(&[0x10, 0x40, 0x21], now);
        // DATA P(S)=1 P(R)=1.
        assert_eq!(drain(&mut l, now), [b"\x10\x40\x22x".to_vec()]);
    }

    #[test]
    fn segmentation_sets_m_bit() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        let data: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        assert_eq!(l.write(id, &data).unwrap(), 600);
        let p = drain(&mut l, now);
        assert_eq!(p.len(), 3);
        assert_eq!(&p[0][..3], &[0x10, 0x40, 0x10]); // P(S)=0, M=1
        assert_eq!(&p[1][..3], &[0x10, 0x40, 0x12]); // P(S)=1, M=1
        assert_eq!(&p[2][..3], &[0x10, 0x40, 0x04]); // P(S)=2, M=0
        assert_eq!((p[0].len(), p[1].len(), p[2].len()), (259, 259, 91));
        // A small max_len: shorter packets, still M=1 while more follows.
        assert_eq!(l.write(id, &data[..100]).unwrap(), 100);
        let a = l.poll_packet(64, now).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a[2], 0x16); // P(S)=3, M=1
    }

    #[test]
    fn short_packet_with_m_bit_is_reassembled() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.handle_packet(b"\x10\x40\x10ab", now); // P(S)=0 M=1
        l.handle_packet(b"\x10\x40\x12cd", now); // P(S)=1 M=1
        l.handle_packet(b"\x10\x40\x04e", now); // P(S)=2 M=0
        let mut buf = [0u8; 16];
        assert_eq!(l.read(id, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"abcde");
        assert_eq!(delayed_ack(&mut l, now), [vec![0x10, 0x40, 0x61]]); // RR P(R)=3
    }

    #[test]
    fn modulo_128_bytes() {
        let now = t0();
        let mut config = PacketConfig::default();
        config.modulus = Modulus::Mod128;
        config.window = 127;
        config.max_packet = 4096;
        let mut l = PacketLayer::new(config, PacketRole::Dte);
        l.restart(now);
        assert_eq!(drain(&mut l, now), [vec![0x20, 0x00, 0xFB, 0x00, 0x00]]);
        l.handle_packet(&[0x20, 0x00, 0xFF], now);
        let id = l.call("smtp", now).unwrap();
        let call = drain(&mut l, now);
        assert_eq!(
            &call[0][..11],
            &[0x20, 0x40, 0x0B, 0x00, 0x06, 0x42, 0x0C, 0x0C, 0x43, 0x7F, 0x7F]
        );
        l.handle_packet(&[0x20, 0x40, 0x0F], now);
        let _ = events(&mut l);
        l.write(id, b"abc").unwrap();
        // DATA: P(S)=0 in octet 3, P(R)=0 M=0 in octet 4.
        assert_eq!(drain(&mut l, now), [b"\x20\x40\x00\x00abc".to_vec()]);
        // Peer: P(S)=0, P(R)=1, M=1.
        l.handle_packet(b"\x20\x40\x00\x03z", now);
        let mut buf = [0u8; 4];
        assert_eq!(l.read(id, &mut buf).unwrap(), 1);
        // RR modulo 128: 0x01 then P(R)<<1.
        assert_eq!(delayed_ack(&mut l, now), [vec![0x20, 0x40, 0x01, 0x02]]);
        // RNR modulo 128 parses.
        l.handle_packet(&[0x20, 0x40, 0x05, 0x02], now);
        l.write(id, b"q").unwrap();
        assert!(drain(&mut l, now).is_empty());
        // A modulo 8 packet is a format error: RESET, diagnostic 40.
        l.handle_packet(&[0x10, 0x40, 0x21], now);
        assert_eq!(drain(&mut l, now), [vec![0x20, 0x40, 0x1B, 0x00, 40]]);
    }

    #[test]
    fn orderly_clear_waits_for_ack() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.write(id, b"221 bye\r\n").unwrap();
        l.clear(id, now);
        assert_eq!(l.circuit_state(id), Some(CircuitState::Clearing));
        assert_eq!(drain(&mut l, now), [b"\x10\x40\x00221 bye\r\n".to_vec()]);
        // Not acknowledged yet: no CLEAR.
        assert!(drain(&mut l, now).is_empty());
        l.handle_packet(&[0x10, 0x40, 0x21], now); // RR P(R)=1
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x13, 0x00, 0x00]]);
        l.handle_packet(&[0x10, 0x40, 0x17], now); // CLEAR CONFIRMATION
        assert_eq!(
            events(&mut l),
            [PacketEvent::Closed {
                id,
                reason: CloseReason::Local
            }]
        );
        assert!(l.is_finished(id));
        assert_eq!(l.write(id, b"x"), Err(X25Error::Closed));
    }

    #[test]
    fn peer_clear_confirmed_and_data_still_readable() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.handle_packet(b"\x10\x40\x00221\r\n", now);
        l.handle_packet(&[0x10, 0x40, 0x13, 0x00, 0x00], now);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x17]]);
        let ev = events(&mut l);
        assert_eq!(
            ev.last(),
            Some(&PacketEvent::Closed {
                id,
                reason: CloseReason::Cleared {
                    cause: 0,
                    diagnostic: 0
                }
            })
        );
        assert!(!l.is_finished(id));
        let mut buf = [0u8; 16];
        assert_eq!(l.read(id, &mut buf).unwrap(), 5);
        assert!(l.is_finished(id));
        assert_eq!(l.read(id, &mut buf).unwrap(), 0);
    }

    #[test]
    fn reset_ends_the_session() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.handle_packet(&[0x10, 0x40, 0x1B, 0x07, 0x00], now);
        assert_eq!(
            drain(&mut l, now),
            [vec![0x10, 0x40, 0x1F], vec![0x10, 0x40, 0x13, 0x00, 0x00]]
        );
        assert_eq!(
            events(&mut l),
            [PacketEvent::Closed {
                id,
                reason: CloseReason::Reset {
                    cause: 7,
                    diagnostic: 0
                }
            }]
        );
        assert!(l.is_finished(id));
        l.handle_packet(&[0x10, 0x40, 0x17], now);
        assert!(l.poll_event().is_none(), "one Closed per circuit");
        assert_eq!(l.stats(id).unwrap().resets, 1);
    }

    #[test]
    fn invalid_ps_and_pr_reset_with_diagnostic() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.handle_packet(b"\x10\x40\x06x", now); // P(S)=3, expected 0
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x1B, 0x00, 1]]);
        assert_eq!(
            events(&mut l),
            [PacketEvent::Closed {
                id,
                reason: CloseReason::ProtocolError { diagnostic: 1 }
            }]
        );
        // RESET CONFIRMATION: now the clear.
        l.handle_packet(&[0x10, 0x40, 0x1F], now);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x13, 0x00, 0x00]]);

        let (mut l, _) = open_dte(now);
        l.handle_packet(&[0x10, 0x40, 0x41], now); // RR P(R)=2, nothing sent
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x1B, 0x00, 2]]);
    }

    #[test]
    fn window_overrun_is_invalid_ps() {
        let now = t0();
        let mut config = PacketConfig::default();
        config.window = 2;
        let mut l = ready(config, PacketRole::Dte, now);
        let id = l.call("smtp", now).unwrap();
        let _ = drain(&mut l, now);
        l.handle_packet(&[0x10, 0x40, 0x0F], now);
        l.handle_packet(b"\x10\x40\x00a", now);
        l.handle_packet(b"\x10\x40\x02b", now);
        l.handle_packet(b"\x10\x40\x04c", now); // third packet, window 2
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x1B, 0x00, 1]]);
        let mut buf = [0u8; 4];
        assert_eq!(
            l.read(id, &mut buf).unwrap(),
            2,
            "data before the error stays readable"
        );
    }

    #[test]
    fn packets_on_free_channels() {
        let now = t0();
        let mut l = ready(PacketConfig::default(), PacketRole::Dte, now);
        l.handle_packet(b"\x10\x07\x00data", now);
        l.handle_packet(&[0x10, 0x07, 0x13, 0x00, 0x00], now);
        l.handle_packet(&[0x10, 0x07, 0x17], now);
        l.handle_packet(&[0x10, 0x07, 0x1F], now);
        assert_eq!(
            drain(&mut l, now),
            [vec![0x10, 0x07, 0x13, 0x00, 36], vec![0x10, 0x07, 0x17]]
        );
    }

    #[test]
    fn restart_from_peer_ends_circuits_and_is_confirmed() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.handle_packet(&[0x10, 0x00, 0xFB, 0x07, 0x00], now);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x00, 0xFF]]);
        assert_eq!(
            events(&mut l),
            [PacketEvent::Closed {
                id,
                reason: CloseReason::Restart {
                    cause: 7,
                    diagnostic: 0
                }
            }]
        );
        // Restart on a non-zero channel is ignored.
        l.handle_packet(&[0x10, 0x01, 0xFB, 0x00, 0x00], now);
        assert!(drain(&mut l, now).is_empty());
    }

    #[test]
    fn restart_collision_is_not_confirmed() {
        let now = t0();
        let mut l = PacketLayer::new(PacketConfig::default(), PacketRole::Dte);
        l.restart(now);
        let _ = drain(&mut l, now);
        l.handle_packet(&[0x10, 0x00, 0xFB, 0x00, 0x00], now);
        assert!(drain(&mut l, now).is_empty());
        // Ready: calls go out.
        l.call("smtp", now).unwrap();
        assert_eq!(drain(&mut l, now).len(), 1);
        // Peer's RESTART before ours left: confirm it instead.
        let mut l = PacketLayer::new(PacketConfig::default(), PacketRole::Dte);
        l.restart(now);
        l.handle_packet(&[0x10, 0x00, 0xFB, 0x00, 0x00], now);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x00, 0xFF]]);
    }

    #[test]
    fn timers() {
        let now = t0();
        let config = PacketConfig::default();
        let (t20, t21, t23) = (
            config.restart_timeout,
            config.call_timeout,
            config.clear_timeout,
        );
        let mut l = PacketLayer::new(config, PacketRole::Dte);
        l.restart(now);
        let _ = drain(&mut l, now);
        // T20: RESTART REQUEST again.
        assert_eq!(l.poll_timeout(), Some(now + t20));
        l.handle_timeout(now + t20);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x00, 0xFB, 0x00, 0x00]]);
        l.handle_packet(&[0x10, 0x00, 0xFF], now);
        // T21: the call is cleared with diagnostic 48.
        let id = l.call("smtp", now).unwrap();
        let _ = drain(&mut l, now);
        assert_eq!(l.poll_timeout(), Some(now + t21));
        l.handle_timeout(now + t21);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x13, 0x00, 48]]);
        assert_eq!(
            events(&mut l),
            [PacketEvent::Closed {
                id,
                reason: CloseReason::Timeout
            }]
        );
        // T23: CLEAR once more, then the channel is free.
        let t = now + t21 + t23;
        l.handle_timeout(t);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x13, 0x00, 48]]);
        l.handle_timeout(t + t23);
        assert!(drain(&mut l, now).is_empty());
        assert_eq!(l.poll_timeout(), None);
        let id2 = l.call("smtp", now).unwrap();
        assert_eq!(id2.lcn(), 64);
        assert_ne!(id2, id, "a reused channel gets a new id");
        assert_eq!(
            l.circuit_state(id),
            Some(CircuitState::Closed(CloseReason::Timeout))
        );
    }

    #[test]
    fn t22_clears_after_unconfirmed_reset() {
        let now = t0();
        let (mut l, _id) = open_dte(now);
        l.handle_packet(&[0x10, 0x40, 0x09], now); // REJ: not subscribed
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x1B, 0x00, 37]]);
        let t22 = l.config().reset_timeout;
        l.handle_timeout(now + t22);
        assert_eq!(drain(&mut l, now), [vec![0x10, 0x40, 0x13, 0x00, 51]]);
    }

    #[test]
    fn facility_parsing() {
        let m = Modulus::Mod8;
        // Class A (1 octet), class C (3), class D (length octet), then ours.
        let f = [
            0x01, 0x00, 0x81, 1, 2, 3, 0xC1, 2, 9, 9, 0x42, 0x04, 0x0C, 0x43, 1, 7,
        ];
        assert_eq!(
            parse_facilities(&f, m),
            Ok(Facilities {
                packet: Some((4, 12)),
                window: Some((1, 7))
            })
        );
        assert_eq!(
            parse_facilities(&[0x42, 0x0D, 0x07], m),
            Err(diag::FACILITY_PARAMETER)
        );
        assert_eq!(
            parse_facilities(&[0x43, 0x08, 0x02], m),
            Err(diag::FACILITY_PARAMETER)
        );
        assert_eq!(
            parse_facilities(&[0x43, 0x08, 0x02], Modulus::Mod128).map(|f| f.window),
            Ok(Some((8, 2)))
        );
        assert_eq!(
            parse_facilities(&[0x42, 0x07], m),
            Err(diag::INVALID_FACILITY_LENGTH)
        );
        assert_eq!(
            parse_facilities(&[0xC0], m),
            Err(diag::INVALID_FACILITY_LENGTH)
        );
    }

    #[test]
    fn interrupt_and_q_bit_ignored() {
        let now = t0();
        let (mut l, id) = open_dte(now);
        l.handle_packet(&[0x10, 0x40, 0x23, 0x55], now);
        l.handle_packet(b"\x90\x40\x00qualified", now); // Q=1, P(S)=0
        l.handle_packet(b"\x10\x40\x02plain", now); // P(S)=1
        let mut buf = [0u8; 32];
        assert_eq!(l.read(id, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"plain");
        assert_eq!(delayed_ack(&mut l, now), [vec![0x10, 0x40, 0x41]]); // RR P(R)=2
    }
}
