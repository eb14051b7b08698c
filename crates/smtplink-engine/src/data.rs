//! The DATA codec (RFC 5321 4.5.2 and 4.1.1.4): dot-stuffing on the way out,
//! un-stuffing and end-of-data detection on the way in.
//!
//! Only `CRLF . CRLF` ends a message. A line boundary for un-stuffing is any
//! line ending (CRLF, bare LF or bare CR), but a `.` line ends the message
//! only when both the line before it and the dot line itself end in CRLF.
//! So `LF . LF`, `CR . CR`, `LF . CRLF` and the like are content and can
//! never end a message or start a second one (SMTP smuggling).

use bytes::{Buf, BytesMut};

/// What to do with a CR or LF that is not part of a CRLF pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLineEndingPolicy {
    /// Treat it as a line ending and store CRLF instead (the default: what
    /// Postfix's `smtpd_forbid_bare_newline = normalize` does). End of data
    /// still needs a real `CRLF . CRLF`.
    #[default]
    Normalize,
    /// Refuse: a command line with one gets 500; a message with one is read
    /// to its end and then refused with 554 5.6.0.
    Reject,
}

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// CR LF
    Crlf,
    /// LF alone
    BareLf,
    /// CR alone
    BareCr,
}

/// Finds the end of the next line in `buf`: `(content_len, ending, ending_len)`.
/// `None` when no complete line ending is in the buffer yet (a CR at the very
/// end might still be followed by LF).
pub(crate) fn find_line_end(buf: &[u8]) -> Option<(usize, LineEnding, usize)> {
    let i = memchr::memchr2(b'\r', b'\n', buf)?;
    if buf[i] == b'\n' {
        return Some((i, LineEnding::BareLf, 1));
    }
    match buf.get(i + 1) {
        None => None,
        Some(b'\n') => Some((i, LineEnding::Crlf, 2)),
        Some(_) => Some((i, LineEnding::BareCr, 1)),
    }
}

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    /// Longest text line in octets, CRLF included (RFC 5321 4.5.3.1.6: 1000).
    pub max_line: usize,
    /// Largest message in octets, after un-stuffing.
    pub max_size: u64,
    /// Bare CR/LF handling.
    pub bare_line_endings: BareLineEndingPolicy,
}

/// What went wrong in a message; the message is refused at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFault {
    /// Larger than `max_size`.
    TooBig,
    /// A line longer than `max_line`.
    LineTooLong,
    /// A bare CR or LF under [`BareLineEndingPolicy::Reject`].
    BareLineEnding,
}

/// Progress of [`DataDecoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    /// All usable input consumed; more is needed.
    NeedMore,
    /// `CRLF . CRLF` seen and consumed; bytes after it are left in the input.
    End,
}

/// Un-stuffs a DATA stream and finds its end, incrementally.
///
/// Feed it the input buffer with [`DataDecoder::decode`]; it consumes what
/// it can, appends message bytes to an output buffer and leaves any bytes it
/// must see more of (a CR, a dot at a line start) in the input.
#[derive(Debug)]
pub struct DataDecoder {
    limits: DataLimits,
    at_line_start: bool,
    /// Whether the line before the current one ended in CRLF. The line
    /// before the first is the DATA command, so it starts true.
    previous_ended_crlf: bool,
    line_len: usize,
    size: u64,
    fault: Option<DataFault>,
}

impl DataDecoder {
    /// A decoder for one message.
    pub fn new(limits: DataLimits) -> Self {
        Self {
            limits,
            at_line_start: true,
            previous_ended_crlf: true,
            line_len: 0,
            size: 0,
            fault: None,
        }
    }

    /// Message octets so far (after un-stuffing, counting those discarded
    /// after a fault).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first fault seen, if any. Once there is one, no more output is
    /// produced; the decoder only looks for the end.
    pub fn fault(&self) -> Option<DataFault> {
        self.fault
    }

    fn set_fault(&mut self, fault: DataFault) {
        self.fault.get_or_insert(fault);
    }

    fn emit(&mut self, out: &mut BytesMut, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.limits.max_size {
            self.set_fault(DataFault::TooBig);
        }
        if self.fault.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    /// Passes on line content, counted against both limits. Only the bytes
    /// before the first one over a limit go out, so any split of the input
    /// gives the same output (a line arriving whole or in pieces).
    fn content(&mut self, out: &mut BytesMut, bytes: &[u8]) {
        let line_room = self.limits.max_line.saturating_sub(self.line_len);
        let size_room =
            usize::try_from(self.limits.max_size.saturating_sub(self.size)).unwrap_or(usize::MAX);
        if self.fault.is_none() {
            out.extend_from_slice(&bytes[..bytes.len().min(line_room).min(size_room)]);
        }
        if bytes.len() > line_room.min(size_room) {
            self.set_fault(if line_room <= size_room {
                DataFault::LineTooLong
            } else {
                DataFault::TooBig
            });
        }
        self.line_len += bytes.len();
        self.size += bytes.len() as u64;
    }

    fn count_line(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > self.limits.max_line {
            self.set_fault(DataFault::LineTooLong);
        }
    }

    /// Consumes bytes from `input`, appending message content to `out`.
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> DataProgress {
        loop {
            if self.at_line_start {
                match input.first() {
                    None => return DataProgress::NeedMore,
                    Some(b'.') => {
                        if input.len() < 2 || (input[1] == b'\r' && input.len() < 3) {
                            return DataProgress::NeedMore;
                        }
                        if self.previous_ended_crlf && input.starts_with(b".\r\n") {
                            input.advance(3);
                            return DataProgress::End;
                        }
                        // Un-stuff: RFC 5321 4.5.2 deletes the leading dot
                        // only "if there are other characters on the line";
                        // a lone dot that is not the terminator (its line
                        // or the one before ended bare) stays content.
                        // The deleted dot does not count towards the line
                        // limit: 4.5.3.1.6 is 1000 octets "not counting the
                        // leading dot duplicated for transparency".
                        if !matches!(input[1], b'\r' | b'\n') {
                            input.advance(1);
                        }
                    }
                    Some(_) => {}
                }
                self.at_line_start = false;
            }
            match find_line_end(input) {
                None => {
                    // Keep a trailing CR: it may be the first half of CRLF.
                    let take = if input.last() == Some(&b'\r') {
                        input.len() - 1
                    } else {
                        input.len()
                    };
                    let chunk = input.split_to(take);
                    self.content(out, &chunk);
                    return DataProgress::NeedMore;
                }
                Some((len, ending, ending_len)) => {
                    let line = input.split_to(len + ending_len);
                    self.content(out, &line[..len]);
                    self.count_line(ending_len);
                    match (ending, self.limits.bare_line_endings) {
                        (LineEnding::Crlf, _) => self.emit(out, b"\r\n"),
                        (_, BareLineEndingPolicy::Normalize) => self.emit(out, b"\r\n"),
                        (_, BareLineEndingPolicy::Reject) => {
                            self.emit(out, &line[len..]);
                            self.set_fault(DataFault::BareLineEnding);
                        }
                    }
                    self.previous_ended_crlf = ending == LineEnding::Crlf;
                    self.at_line_start = true;
                    self.line_len = 0;
                }
            }
        }
    }
}

/// Dot-stuffs `body` for transmission and appends the end-of-data marker.
///
/// A dot at the start of any line (after CRLF, bare LF or bare CR, matching
/// how [`DataDecoder`] finds line starts) gets a second dot. If `body` does
/// not end with CRLF, one is added before the final `.CRLF`, as RFC 5321
/// 4.1.1.4 requires.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n' || b == b'\r';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn limits(policy: BareLineEndingPolicy) -> DataLimits {
        DataLimits {
            max_line: 1000,
            max_size: 1 << 20,
            bare_line_endings: policy,
        }
    }

    /// Decodes `input` whole; returns (content, ended, rest, fault).
    fn decode_with(
        input: &[u8],
        policy: BareLineEndingPolicy,
    ) -> (Vec<u8>, bool, Vec<u8>, Option<DataFault>) {
        let mut d = DataDecoder::new(limits(policy));
        let mut inp = BytesMut::from(input);
        let mut out = BytesMut::new();
        let ended = d.decode(&mut inp, &mut out) == DataProgress::End;
        (out.to_vec(), ended, inp.to_vec(), d.fault())
    }

    fn decode(input: &[u8]) -> (Vec<u8>, bool, Vec<u8>) {
        let (o, e, r, _) = decode_with(input, BareLineEndingPolicy::Normalize);
        (o, e, r)
    }

    #[test]
    fn crlf_dot_crlf_ends_data() {
        let (out, ended, rest) = decode(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert!(ended);
        assert_eq!(rest, b"QUIT\r\n");
        // An empty message: the dot line right after DATA.
        assert_eq!(decode(b".\r\n"), (vec![], true, vec![]));
    }

    #[test]
    fn leading_dots_are_unstuffed() {
        let (out, ended, _) = decode(b"..hidden\r\n...\r\n.x\r\n.\r\n");
        assert_eq!(out, b".hidden\r\n..\r\nx\r\n");
        assert!(ended);
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        // Each of these would end the message on a lenient server.
        for variant in [
            &b"a\n.\nMAIL FROM:<x@y>\n"[..],
            b"a\r.\rMAIL FROM:<x@y>\r",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\r\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n\x00.\r\nMAIL FROM:<x@y>\r\n",
        ] {
            for policy in [
                BareLineEndingPolicy::Normalize,
                BareLineEndingPolicy::Reject,
            ] {
                let (_, ended, rest, _) = decode_with(variant, policy);
                assert!(!ended, "{variant:?} ended the message under {policy:?}");
                assert!(rest.is_empty() || rest == b"\r", "{variant:?}: {rest:?}");
            }
        }
    }

    #[test]
    fn bare_endings_are_normalised_or_flagged() {
        let (out, _, _, fault) = decode_with(b"a\nb\rc\r\n", BareLineEndingPolicy::Normalize);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
        assert_eq!(fault, None);
        let (_, _, _, fault) = decode_with(b"a\nb\r\n", BareLineEndingPolicy::Reject);
        assert_eq!(fault, Some(DataFault::BareLineEnding));
    }

    #[test]
    fn line_limit_counts_crlf_rfc5321_4_5_3_1_6() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode_with(&ok, BareLineEndingPolicy::Normalize).3, None);
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, ended, _, fault) = decode_with(&long, BareLineEndingPolicy::Normalize);
        assert!(ended);
        assert_eq!(fault, Some(DataFault::LineTooLong));
    }

    #[test]
    fn size_limit_discards_but_finds_end() {
        let mut d = DataDecoder::new(DataLimits {
            max_size: 10,
            ..limits(BareLineEndingPolicy::Normalize)
        });
        let mut inp = BytesMut::from(&b"0123456789\r\nmore\r\n.\r\n"[..]);
        let mut out = BytesMut::new();
        assert_eq!(d.decode(&mut inp, &mut out), DataProgress::End);
        assert_eq!(d.fault(), Some(DataFault::TooBig));
        assert_eq!(d.size(), 18);
    }

    #[test]
    fn waits_on_a_trailing_cr_or_dot() {
        let mut d = DataDecoder::new(limits(BareLineEndingPolicy::Normalize));
        let mut out = BytesMut::new();
        let mut inp = BytesMut::from(&b"abc\r"[..]);
        assert_eq!(d.decode(&mut inp, &mut out), DataProgress::NeedMore);
        assert_eq!(&inp[..], b"\r");
        inp.extend_from_slice(b"\n.");
        assert_eq!(d.decode(&mut inp, &mut out), DataProgress::NeedMore);
        assert_eq!(&inp[..], b".");
        inp.extend_from_slice(b"\r");
        assert_eq!(d.decode(&mut inp, &mut out), DataProgress::NeedMore);
        inp.extend_from_slice(b"\n");
        assert_eq!(d.decode(&mut inp, &mut out), DataProgress::End);
        assert_eq!(&out[..], b"abc\r\n");
    }

    #[test]
    fn stuffing_rfc5321_4_5_2() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }
}
