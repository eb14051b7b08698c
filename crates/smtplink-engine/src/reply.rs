//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 3463, RFC 2034).
//!
//! [`Reply`] is what a server sends and a client reads. [`ReplyParser`] reads
//! replies incrementally from a byte stream, one complete (possibly
//! multi-line) reply at a time.

use std::fmt;

use bytes::{Buf, BytesMut};

use crate::error::ReplyError;

/// A three-digit SMTP reply code (RFC 5321 4.2).
///
/// The first digit is 2..=5, the second 0..=5 and the third 0..=9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// 211 System status.
    pub const SYSTEM_STATUS: Self = Self(211);
    /// 214 Help message.
    pub const HELP: Self = Self(214);
    /// 220 Service ready.
    pub const SERVICE_READY: Self = Self(220);
    /// 221 Service closing transmission channel.
    pub const CLOSING: Self = Self(221);
    /// 250 Requested mail action okay, completed.
    pub const OK: Self = Self(250);
    /// 252 Cannot VRFY user, but will accept message.
    pub const CANNOT_VRFY: Self = Self(252);
    /// 354 Start mail input; end with `<CRLF>.<CRLF>`.
    pub const START_MAIL_INPUT: Self = Self(354);
    /// 421 Service not available, closing transmission channel.
    pub const SERVICE_NOT_AVAILABLE: Self = Self(421);
    /// 451 Requested action aborted: local error in processing.
    pub const LOCAL_ERROR: Self = Self(451);
    /// 452 Requested action not taken: insufficient system storage.
    pub const INSUFFICIENT_STORAGE: Self = Self(452);
    /// 500 Syntax error, command unrecognized (also: line too long).
    pub const SYNTAX_ERROR: Self = Self(500);
    /// 501 Syntax error in parameters or arguments.
    pub const PARAMETER_SYNTAX: Self = Self(501);
    /// 502 Command not implemented.
    pub const NOT_IMPLEMENTED: Self = Self(502);
    /// 503 Bad sequence of commands.
    pub const BAD_SEQUENCE: Self = Self(503);
    /// 504 Command parameter not implemented.
    pub const PARAMETER_NOT_IMPLEMENTED: Self = Self(504);
    /// 550 Requested action not taken: mailbox unavailable.
    pub const MAILBOX_UNAVAILABLE: Self = Self(550);
    /// 552 Requested mail action aborted: exceeded storage allocation.
    pub const EXCEEDED_STORAGE: Self = Self(552);
    /// 553 Requested action not taken: mailbox name not allowed.
    pub const MAILBOX_NAME_NOT_ALLOWED: Self = Self(553);
    /// 554 Transaction failed.
    pub const TRANSACTION_FAILED: Self = Self(554);
    /// 555 MAIL FROM/RCPT TO parameters not recognized or not implemented.
    pub const PARAMETERS_NOT_RECOGNIZED: Self = Self(555);
    /// 235 Authentication succeeded (RFC 4954).
    pub const AUTH_SUCCEEDED: Self = Self(235);
    /// 334 Authentication challenge, base64 in the text (RFC 4954).
    pub const AUTH_CHALLENGE: Self = Self(334);
    /// 454 Temporary authentication failure (RFC 4954).
    pub const AUTH_TEMPORARY_FAILURE: Self = Self(454);
    /// 535 Authentication credentials invalid (RFC 4954).
    pub const AUTH_INVALID: Self = Self(535);
    /// 538 Encryption required for the requested mechanism (RFC 4954).
    pub const AUTH_ENCRYPTION_REQUIRED: Self = Self(538);
    /// 530: authentication required (RFC 4954 section 6).
    pub const AUTH_REQUIRED: Self = Self(530);

    /// Makes a code, checking the digit ranges of RFC 5321 4.2.
    pub fn new(code: u16) -> Option<Self> {
        let (first, second) = (code / 100, (code / 10) % 10);
        ((2..=5).contains(&first) && second <= 5).then_some(Self(code))
    }

    /// The numeric value.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The class of the reply, from its first digit.
    pub fn severity(self) -> Severity {
        match self.0 / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }

    /// 2xx.
    pub fn is_positive_completion(self) -> bool {
        self.severity() == Severity::PositiveCompletion
    }
    /// 4xx: try again later.
    pub fn is_transient(self) -> bool {
        self.severity() == Severity::TransientNegative
    }
    /// 5xx: do not repeat the same request.
    pub fn is_permanent(self) -> bool {
        self.severity() == Severity::PermanentNegative
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The class of a reply (RFC 5321 4.2.1, first digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 2yz
    PositiveCompletion,
    /// 3yz
    PositiveIntermediate,
    /// 4yz
    TransientNegative,
    /// 5yz
    PermanentNegative,
}

/// An enhanced mail system status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// 0..=999.
    pub subject: u16,
    /// 0..=999.
    pub detail: u16,
}

impl EnhancedCode {
    /// Makes a code; `None` when a part is out of the RFC 3463 ranges.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if (class == 2 || class == 4 || class == 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// Parses `d.ddd.ddd` at the start of `text`; returns the code and the rest
    /// of the text after the separating space.
    pub fn parse_prefix(text: &str) -> Option<(Self, &str)> {
        let (token, rest) = match text.find(' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, ""),
        };
        let mut parts = token.split('.');
        let class = parse_digits(parts.next()?, 1)?;
        let subject = parse_digits(parts.next()?, 3)?;
        let detail = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() {
            return None;
        }
        let class = u8::try_from(class).ok()?;
        Some((Self::new(class, subject, detail)?, rest))
    }
}

fn parse_digits(s: &str, max_len: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete SMTP reply: a code, an optional enhanced status code and one or
/// more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// A reply with one line of text. CR, LF and other control characters in
    /// `text` are replaced by spaces, so a reply can never inject a line.
    pub fn new(code: ReplyCode, enhanced: Option<EnhancedCode>, text: impl AsRef<str>) -> Self {
        Self {
            code,
            enhanced,
            lines: vec![sanitize_text(text.as_ref())],
        }
    }

    /// A multi-line reply; an empty `lines` gives one empty line.
    pub fn multiline<I, S>(code: ReplyCode, enhanced: Option<EnhancedCode>, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut lines: Vec<String> = lines
            .into_iter()
            .map(|l| sanitize_text(l.as_ref()))
            .collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Self {
            code,
            enhanced,
            lines,
        }
    }

    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The enhanced status code, when the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// All text lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.code.is_positive_completion()
    }
    /// 4xx.
    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code.is_permanent()
    }

    /// Appends the wire form (`code[-| ][enhanced ]text CRLF` per line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(enhanced) = self.enhanced {
                out.extend_from_slice(enhanced.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.text())
    }
}

fn sanitize_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Default longest reply line accepted by [`ReplyParser`]. RFC 5321 4.5.3.1.5
/// sets 512 octets; real servers send longer EHLO lines (long AUTH lists),
/// so the reader allows headroom.
pub const DEFAULT_MAX_REPLY_LINE: usize = 4096;

/// Default most lines in one multi-line reply. Real EHLO replies have a few
/// dozen; the cap stops a hostile server from growing memory without bound.
pub const DEFAULT_MAX_REPLY_LINES: usize = 256;

/// Reads replies from a byte stream, incrementally.
///
/// Feed received bytes with [`ReplyParser::push`], then take complete replies
/// with [`ReplyParser::next_reply`] until it returns `Ok(None)`.
/// Replies are parsed leniently where real servers differ from the grammar:
/// a bare LF ends a line, and a final line may be just the code (`250`) or
/// the code and a space with no text (Postfix's `smtp-sink`).
#[derive(Debug)]
pub struct ReplyParser {
    buf: BytesMut,
    pending: Vec<(ReplyCode, String)>,
    max_line: usize,
    max_lines: usize,
    parse_enhanced: bool,
}

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyParser {
    /// A parser with the default limits.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_REPLY_LINE, DEFAULT_MAX_REPLY_LINES)
    }

    /// A parser with explicit line-length and line-count limits.
    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            pending: Vec::new(),
            max_line,
            max_lines,
            parse_enhanced: true,
        }
    }

    /// Whether to split an enhanced status code off the text (on by default;
    /// RFC 2034 says they are only meaningful after the server advertised
    /// ENHANCEDSTATUSCODES, and a text starting with digits and dots is rare).
    pub fn set_parse_enhanced(&mut self, on: bool) {
        self.parse_enhanced = on;
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet part of a complete reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    ///
    /// An error means the stream is not SMTP (or a limit was hit); the
    /// connection should be dropped.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > self.max_line {
                    return Err(ReplyError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                return Ok(None);
            };
            if nl > self.max_line {
                return Err(ReplyError::LineTooLong {
                    limit: self.max_line,
                });
            }
            let mut line = &self.buf[..nl];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let parsed = parse_reply_line(line);
            self.buf.advance(nl + 1);
            let (code, last, text) = parsed?;
            if let Some((first, _)) = self.pending.first() {
                if *first != code {
                    return Err(ReplyError::CodeMismatch {
                        first: first.get(),
                        then: code.get(),
                    });
                }
            }
            self.pending.push((code, text));
            if self.pending.len() > self.max_lines {
                return Err(ReplyError::TooManyLines {
                    limit: self.max_lines,
                });
            }
            if last {
                return Ok(Some(self.finish()));
            }
        }
    }

    fn finish(&mut self) -> Reply {
        let lines = std::mem::take(&mut self.pending);
        let code = lines.first().map(|(c, _)| *c).unwrap_or(ReplyCode::OK);
        let mut enhanced = None;
        let mut texts: Vec<String> = lines.into_iter().map(|(_, t)| t).collect();
        if self.parse_enhanced && code.get() / 100 != 3 {
            // RFC 3463: the enhanced code's class must match the reply's.
            let first = texts
                .first()
                .and_then(|t| EnhancedCode::parse_prefix(t))
                .filter(|(e, _)| u16::from(e.class) == code.get() / 100)
                .map(|(e, _)| e);
            if let Some(e) = first {
                enhanced = Some(e);
                let prefix = e.to_string();
                for t in &mut texts {
                    if let Some(rest) = t.strip_prefix(prefix.as_str()) {
                        *t = rest.strip_prefix(' ').unwrap_or(rest).to_string();
                    }
                }
            }
        }
        Reply {
            code,
            enhanced,
            lines: texts,
        }
    }
}

/// Parses one reply line (without its line ending): code, whether it is the
/// last line, and the text.
fn parse_reply_line(line: &[u8]) -> Result<(ReplyCode, bool, String), ReplyError> {
    let bad = || ReplyError::Malformed {
        line: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
    };
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let value = line[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let code = ReplyCode::new(value).ok_or_else(bad)?;
    let (last, text) = match line.get(3) {
        None => (true, &line[3..3]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(bad()),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Reply> {
        let mut p = ReplyParser::new();
        p.push(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply().unwrap() {
            out.push(r);
        }
        out
    }

    #[test]
    fn single_line_reply() {
        let r = parse_all(b"220 mail.example.org ESMTP ready\r\n");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code().get(), 220);
        assert_eq!(r[0].lines(), ["mail.example.org ESMTP ready"]);
    }

    #[test]
    fn multi_line_reply_rfc5321_4_2_1() {
        // The example of RFC 5321 4.2.1.
        let r = parse_all(b"250-First line\r\n250-Second line\r\n250-234 Text beginning with numbers\r\n250 The last line\r\n");
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].lines(),
            [
                "First line",
                "Second line",
                "234 Text beginning with numbers",
                "The last line"
            ]
        );
    }

    #[test]
    fn bare_code_and_empty_text_end_a_reply() {
        // smtp-sink ends its EHLO reply with "250 " and nothing after it.
        let r = parse_all(b"250-host\r\n250-PIPELINING\r\n250 \r\n");
        assert_eq!(r[0].lines(), ["host", "PIPELINING", ""]);
        let r = parse_all(b"250\r\n");
        assert_eq!(r[0].lines(), [""]);
    }

    #[test]
    fn enhanced_code_is_split_off() {
        let r = parse_all(b"550-5.1.1 No such user\r\n550 5.1.1 here\r\n");
        assert_eq!(r[0].enhanced(), EnhancedCode::new(5, 1, 1));
        assert_eq!(r[0].lines(), ["No such user", "here"]);
        // A class that does not match the reply is text, not a code.
        let r = parse_all(b"250 5.1.1 odd\r\n");
        assert_eq!(r[0].enhanced(), None);
    }

    #[test]
    fn mismatched_codes_and_garbage_are_errors() {
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n251 b\r\n");
        assert!(matches!(
            p.next_reply(),
            Err(ReplyError::CodeMismatch { .. })
        ));
        let mut p = ReplyParser::new();
        p.push(b"HTTP/1.1 400 Bad\r\n");
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.push(b"250x\r\n");
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.push(b"160 no\r\n");
        assert!(p.next_reply().is_err());
    }

    #[test]
    fn incomplete_input_waits_and_limits_hold() {
        let mut p = ReplyParser::with_limits(16, 2);
        p.push(b"250-a\r\n250");
        assert_eq!(p.next_reply().unwrap(), None);
        p.push(b" b\r\n");
        assert!(p.next_reply().unwrap().is_some());
        p.push(&[b'2'; 17]);
        assert!(matches!(
            p.next_reply(),
            Err(ReplyError::LineTooLong { .. })
        ));
        let mut p = ReplyParser::with_limits(16, 2);
        p.push(b"250-a\r\n250-b\r\n250-c\r\n");
        assert!(matches!(
            p.next_reply(),
            Err(ReplyError::TooManyLines { .. })
        ));
    }

    #[test]
    fn writing_puts_the_space_on_the_last_line_only() {
        let r = Reply::multiline(ReplyCode::OK, None, ["a", "b"]);
        assert_eq!(r.to_bytes(), b"250-a\r\n250 b\r\n");
        let r = Reply::new(ReplyCode::OK, EnhancedCode::new(2, 1, 0), "ok");
        assert_eq!(r.to_bytes(), b"250 2.1.0 ok\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(ReplyCode::OK, None, "a\r\n250 b");
        assert_eq!(r.to_bytes(), b"250 a  250 b\r\n");
    }

    #[test]
    fn code_ranges_follow_rfc5321() {
        assert!(ReplyCode::new(199).is_none());
        assert!(ReplyCode::new(260).is_none());
        assert!(ReplyCode::new(600).is_none());
        assert!(ReplyCode::new(559).is_some());
    }
}
