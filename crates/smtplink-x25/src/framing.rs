//! Layer 1: RFC 1662 asynchronous HDLC-like framing.
//!
//! A frame on the wire is
//!
//! ```text
//! 0x7E | escape(payload ++ FCS) | 0x7E
//! ```
//!
//! * **Flag** 0x7E opens and closes every frame. The encoder always writes
//!   both flags, even between back-to-back frames (one extra byte per frame,
//!   but a frame whose closing flag is hit by noise costs only that frame,
//!   and an idle line needs no state). The decoder accepts either style: a
//!   single flag shared by two frames, or any number of flags between them.
//! * **Escape**: 0x7E and 0x7D are always sent as 0x7D followed by the byte
//!   XOR 0x20. An [`AccmMap`] names further bytes to escape; the default
//!   escapes nothing else, so CR and LF cost nothing. [`AccmMap::xon_xoff`]
//!   is for lines with software flow control. As RFC 1662 §7.1 prescribes,
//!   the decoder *discards* any raw (unescaped) byte that is in its map: such
//!   a byte was put on the line by flow control or noise, never by the peer.
//! * **FCS**: CRC-32 (the HDLC/PPP FCS-32) by default, CRC-16/X-25 as an
//!   option ([`FcsKind`]); computed over the unescaped payload and sent least
//!   significant byte first, as RFC 1662 does.
//!
//! The decoder is sans-IO ([`FrameDecoder::decode_slice`]) and is also a
//! `tokio_util::codec::Decoder`; [`FrameCodec`] is both `Decoder` and
//! `Encoder` for use with `tokio_util::codec::Framed`. A frame with a bad
//! check, a bad length or a bad escape is dropped and counted in
//! [`DecodeStats`], never passed up; the decoder resynchronises on the next
//! flag. Bytes before the first flag are discarded. Empty frames (two flags
//! in a row) are ignored. The output does not depend on how the input is
//! split into chunks.
//!
//! ```
//! use smtplink_x25::{AccmMap, FrameConfig, FrameDecoder, FrameEncoder};
//!
//! let config = FrameConfig { accm: AccmMap::xon_xoff(), ..FrameConfig::default() };
//! let mut wire = bytes::BytesMut::new();
//! let mut enc = FrameEncoder::new(config);
//! enc.encode_into(b"EHLO a\r\n", &mut wire).unwrap();
//! enc.encode_into(&[0x7E, 0x11], &mut wire).unwrap();
//!
//! let mut dec = FrameDecoder::new(config);
//! let mut frames = Vec::new();
//! for byte in wire.chunks(3) {
//!     dec.decode_all(byte, &mut frames);
//! }
//! assert_eq!(frames, [&b"EHLO a\r\n"[..], &[0x7E, 0x11][..]]);
//! assert_eq!(dec.stats().frames, 2);
//! assert_eq!(dec.stats().dropped(), 0);
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use crc::{Crc, CRC_16_IBM_SDLC, CRC_32_ISO_HDLC};
use tokio_util::codec::{Decoder, Encoder};

/// The flag byte that opens and closes every frame.
pub const FLAG: u8 = 0x7E;
/// The control-escape byte: the next byte is XORed with [`ESCAPE_XOR`].
pub const ESCAPE: u8 = 0x7D;
/// What an escaped byte is XORed with.
pub const ESCAPE_XOR: u8 = 0x20;
/// Default largest payload (excluding the FCS) a decoder accepts.
pub const DEFAULT_MAX_PAYLOAD: usize = 8192;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_SDLC);

/// Which frame check sequence to use. Both ends must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FcsKind {
    /// CRC-32/ISO-HDLC, the PPP FCS-32 (check value 0xCBF43926). 4 bytes.
    #[default]
    Crc32,
    /// CRC-16/X-25 (a.k.a. CRC-16/IBM-SDLC, the PPP FCS-16; check value
    /// 0x906E). 2 bytes. Too weak for mail on a noisy line; for
    /// interoperability only.
    Crc16,
}

impl FcsKind {
    /// Length of the FCS on the wire before escaping, in bytes.
    pub const fn size(self) -> usize {
        match self {
            FcsKind::Crc32 => 4,
            FcsKind::Crc16 => 2,
        }
    }

    /// The check value of `data` (widened to `u32` for CRC-16).
    pub fn checksum(self, data: &[u8]) -> u32 {
        match self {
            FcsKind::Crc32 => CRC32.checksum(data),
            FcsKind::Crc16 => u32::from(CRC16.checksum(data)),
        }
    }

    /// Appends the FCS of `data`, least significant byte first.
    fn push_fcs(self, data: &[u8], out: &mut Vec<u8>) {
        let fcs = self.checksum(data).to_le_bytes();
        out.extend_from_slice(&fcs[..self.size()]);
    }

    /// Whether `frame` (payload followed by its FCS) checks out.
    fn verify(self, frame: &[u8]) -> bool {
        let n = self.size();
        let Some(split) = frame.len().checked_sub(n) else {
            return false;
        };
        let (payload, fcs) = frame.split_at(split);
        let want = self.checksum(payload).to_le_bytes();
        fcs == &want[..n]
    }
}

/// A byte that cannot be added to an [`AccmMap`]: either it, once escaped,
/// would be a flag or escape byte (0x5E, 0x5D), or its escaped form (or the
/// byte whose escaped form it is) is already in the map, so the receiver
/// would discard half of an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("byte {0:#04x} cannot be added to the escape map")]
pub struct InvalidEscape(pub u8);

/// The set of bytes escaped in addition to 0x7E and 0x7D (an RFC 1662
/// "Async-Control-Character-Map", generalised to all 256 byte values).
///
/// The receiver discards raw bytes that are in its map, so both ends should
/// use the same map (or the receiver a subset of the sender's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccmMap {
    bits: [u64; 4],
}

impl AccmMap {
    /// Escapes nothing beyond 0x7E and 0x7D (the default).
    pub const fn none() -> Self {
        AccmMap { bits: [0; 4] }
    }

    /// For lines with software flow control: also escapes XON (0x11) and
    /// XOFF (0x13) and their parity-bit forms 0x91 and 0x93.
    pub fn xon_xoff() -> Self {
        let mut m = AccmMap::none();
        for b in [0x11, 0x13, 0x91, 0x93] {
            m.set(b);
        }
        m
    }

    /// The RFC 1662 32-bit ACCM: bit `n` set escapes control character `n`
    /// (0x00..=0x1F). `from_async_map(0xFFFF_FFFF)` is PPP's default before
    /// LCP negotiation; `from_async_map(0x000A_0000)` is XON/XOFF only.
    pub fn from_async_map(map: u32) -> Self {
        let mut m = AccmMap::none();
        for b in 0..32u8 {
            if map & (1 << b) != 0 {
                m.set(b);
            }
        }
        m
    }

    /// This map with `byte` added. 0x7E and 0x7D are always escaped and may
    /// be given (no effect).
    pub fn with(mut self, byte: u8) -> Result<Self, InvalidEscape> {
        if byte == FLAG || byte == ESCAPE {
            return Ok(self);
        }
        let partner = byte ^ ESCAPE_XOR;
        if partner == FLAG || partner == ESCAPE || self.contains(partner) {
            return Err(InvalidEscape(byte));
        }
        self.set(byte);
        Ok(self)
    }

    /// Whether `byte` is in the map (0x7E and 0x7D are not: they are
    /// escaped regardless, see [`AccmMap::escapes`]).
    pub const fn contains(&self, byte: u8) -> bool {
        self.bits[(byte >> 6) as usize] & (1u64 << (byte & 63)) != 0
    }

    /// Whether the encoder escapes `byte`: 0x7E, 0x7D and the map.
    pub const fn escapes(&self, byte: u8) -> bool {
        byte == FLAG || byte == ESCAPE || self.contains(byte)
    }

    fn set(&mut self, byte: u8) {
        self.bits[(byte >> 6) as usize] |= 1u64 << (byte & 63);
    }
}

/// Framing parameters shared by encoder and decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameConfig {
    /// The frame check.
    pub fcs: FcsKind,
    /// Bytes escaped besides 0x7E/0x7D (and discarded when received raw).
    pub accm: AccmMap,
    /// Largest payload in bytes, excluding the FCS. The decoder drops longer
    /// frames (counted as `too_long`); the encoder refuses them.
    pub max_payload: usize,
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            fcs: FcsKind::Crc32,
            accm: AccmMap::none(),
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why a payload could not be framed (or an I/O error from `Framed`).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// An empty payload cannot be sent: the receiver ignores empty frames.
    #[error("empty frame payload")]
    Empty,
    /// The payload is longer than `max_payload`.
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// I/O error from the underlying stream (when used with `Framed`).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes payloads into frames.
#[derive(Debug, Clone, Default)]
pub struct FrameEncoder {
    config: FrameConfig,
    scratch: Vec<u8>,
}

impl FrameEncoder {
    /// An encoder with the given parameters.
    pub fn new(config: FrameConfig) -> Self {
        FrameEncoder {
            config,
            scratch: Vec::new(),
        }
    }

    /// The parameters.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Appends the frame for `payload` (opening flag, escaped payload and
    /// FCS, closing flag) to `dst`.
    pub fn encode_into(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.is_empty() {
            return Err(FrameError::Empty);
        }
        if payload.len() > self.config.max_payload {
            return Err(FrameError::TooLong {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        self.scratch.clear();
        self.config.fcs.push_fcs(payload, &mut self.scratch);
        let accm = self.config.accm;
        let escaped = payload
            .iter()
            .chain(self.scratch.iter())
            .filter(|&&b| accm.escapes(b))
            .count();
        dst.reserve(payload.len() + self.scratch.len() + escaped + 2);
        dst.put_u8(FLAG);
        for &b in payload.iter().chain(self.scratch.iter()) {
            if accm.escapes(b) {
                dst.put_u8(ESCAPE);
                dst.put_u8(b ^ ESCAPE_XOR);
            } else {
                dst.put_u8(b);
            }
        }
        dst.put_u8(FLAG);
        Ok(())
    }

    /// The frame for `payload` as a new buffer.
    pub fn encode_to_vec(&mut self, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut dst = BytesMut::new();
        self.encode_into(payload, &mut dst)?;
        Ok(dst.to_vec())
    }
}

impl Encoder<&[u8]> for FrameEncoder {
    type Error = FrameError;
    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(item, dst)
    }
}

impl Encoder<Bytes> for FrameEncoder {
    type Error = FrameError;
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(&item, dst)
    }
}

/// What the decoder has seen: frames passed up, and frames dropped by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeStats {
    /// Good frames passed up.
    pub frames: u64,
    /// Frames dropped because the FCS did not match.
    pub bad_fcs: u64,
    /// Frames dropped as shorter than the FCS plus one byte.
    pub too_short: u64,
    /// Frames dropped as longer than `max_payload` plus the FCS.
    pub too_long: u64,
    /// Frames dropped for a bad escape: 0x7D followed by the flag (the RFC
    /// 1662 abort sequence).
    pub bad_escape: u64,
    /// Partial frames dropped at end of stream.
    pub truncated: u64,
    /// Bytes discarded while hunting for the first flag.
    pub hunt_bytes: u64,
    /// Raw bytes discarded because they are in the escape map.
    pub accm_discarded: u64,
}

impl DecodeStats {
    /// All frames dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.bad_fcs + self.too_short + self.too_long + self.bad_escape + self.truncated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first flag: discard.
    Hunt,
    /// Inside a frame (or between frames, with an empty buffer).
    Frame,
    /// Inside a frame that already exceeds the maximum: discard to the flag.
    Overlong,
}

/// Decodes frames out of a byte stream.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    config: FrameConfig,
    state: State,
    escaped: bool,
    buf: Vec<u8>,
    stats: DecodeStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(FrameConfig::default())
    }
}

impl FrameDecoder {
    /// A decoder with the given parameters, hunting for the first flag.
    pub fn new(config: FrameConfig) -> Self {
        FrameDecoder {
            config,
            state: State::Hunt,
            escaped: false,
            buf: Vec::new(),
            stats: DecodeStats::default(),
        }
    }

    /// The parameters.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Counters of frames passed up and dropped.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Consumes bytes of `input` up to and including the flag that closes
    /// the next good frame, and returns how many it consumed and that frame
    /// (if any). With `None`, all of `input` was consumed. Call again with
    /// the rest of the input until it is empty.
    pub fn decode_slice(&mut self, input: &[u8]) -> (usize, Option<Bytes>) {
        for (i, &b) in input.iter().enumerate() {
            if let Some(frame) = self.push_byte(b) {
                return (i + 1, Some(frame));
            }
        }
        (input.len(), None)
    }

    /// Decodes all of `input`, appending good frames to `out`.
    pub fn decode_all(&mut self, mut input: &[u8], out: &mut Vec<Bytes>) {
        while !input.is_empty() {
            let (n, frame) = self.decode_slice(input);
            out.extend(frame);
            input = &input[n..];
        }
    }

    /// The stream has ended: drops (and counts) any partial frame and goes
    /// back to hunting for a flag.
    pub fn finish(&mut self) {
        let partial = match self.state {
            State::Hunt => false,
            State::Overlong => true,
            State::Frame => self.escaped || !self.buf.is_empty(),
        };
        if partial {
            self.stats.truncated += 1;
        }
        self.buf.clear();
        self.escaped = false;
        self.state = State::Hunt;
    }

    fn push_byte(&mut self, b: u8) -> Option<Bytes> {
        if b == FLAG {
            return self.end_frame();
        }
        match self.state {
            State::Hunt => {
                self.stats.hunt_bytes += 1;
                None
            }
            State::Overlong => None,
            State::Frame => {
                if self.config.accm.contains(b) {
                    self.stats.accm_discarded += 1;
                    return None;
                }
                if b == ESCAPE && !self.escaped {
                    self.escaped = true;
                    return None;
                }
                let byte = if self.escaped { b ^ ESCAPE_XOR } else { b };
                self.escaped = false;
                self.buf.push(byte);
                if self.buf.len() > self.config.max_payload + self.config.fcs.size() {
                    self.buf.clear();
                    self.state = State::Overlong;
                }
                None
            }
        }
    }

    /// A flag: close the current frame (if any) and open the next.
    fn end_frame(&mut self) -> Option<Bytes> {
        let state = std::mem::replace(&mut self.state, State::Frame);
        let escaped = std::mem::take(&mut self.escaped);
        match state {
            State::Hunt => None,
            State::Overlong => {
                self.stats.too_long += 1;
                None
            }
            State::Frame => {
                if escaped {
                    self.stats.bad_escape += 1;
                    self.buf.clear();
                    return None;
                }
                if self.buf.is_empty() {
                    return None;
                }
                let fcs_len = self.config.fcs.size();
                if self.buf.len() < fcs_len + 1 {
                    self.stats.too_short += 1;
                    self.buf.clear();
                    return None;
                }
                if !self.config.fcs.verify(&self.buf) {
                    self.stats.bad_fcs += 1;
                    self.buf.clear();
                    return None;
                }
                self.buf.truncate(self.buf.len() - fcs_len);
                self.stats.frames += 1;
                let frame = Bytes::copy_from_slice(&self.buf);
                self.buf.clear();
                Some(frame)
            }
        }
    }
}

impl Decoder for FrameDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let (n, frame) = self.decode_slice(src);
        let _ = src.split_to(n);
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                self.finish();
                Ok(None)
            }
        }
    }
}

/// Encoder and decoder in one, for `tokio_util::codec::Framed`.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec {
    /// The sending half.
    pub encoder: FrameEncoder,
    /// The receiving half.
    pub decoder: FrameDecoder,
}

impl FrameCodec {
    /// A codec whose both halves use `config`.
    pub fn new(config: FrameConfig) -> Self {
        FrameCodec {
            encoder: FrameEncoder::new(config),
            decoder: FrameDecoder::new(config),
        }
    }

    /// The decoder's counters.
    pub fn stats(&self) -> &DecodeStats {
        self.decoder.stats()
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.decoder.decode(src)
    }
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.decoder.decode_eof(src)
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;
    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encoder.encode_into(item, dst)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encoder.encode_into(&item, dst)
    }
}
