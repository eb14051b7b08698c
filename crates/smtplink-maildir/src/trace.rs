//! The trace header fields (`Return-Path:`, `Received:`) put in front of
//! every stored message.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line, in bytes without CRLF, that folding aims for (RFC 5322 2.1.1).
const SOFT_LINE_LIMIT: usize = 78;

/// Cap, in bytes, on each interpolated token or path; it keeps every line
/// under RFC 5322's hard limit of 998 bytes whatever the peer sent. SMTP's
/// own limits (a 256-byte path, a 512-byte command line) stay well below.
const FIELD_CAP: usize = 900;

/// Cap, in bytes, on a comment's text before `(`, `)` and `\` are escaped
/// (escaping at most doubles it).
const COMMENT_CAP: usize = 440;

/// What the trace header fields of a stored message say: who sent it, from
/// where, over what, and for whom.
///
/// Every string may come from the peer. [`TraceInfo::render`] removes control
/// characters (CR and LF included) from all of them, so no header field can
/// be injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceInfo {
    /// The reverse-path from `MAIL FROM`, without angle brackets; `""` for
    /// the null sender `<>`.
    pub reverse_path: String,
    /// The domain (or address literal) the client gave in `HELO`/`EHLO`.
    pub helo: String,
    /// What the transport knows about the other end, e.g. `"127.0.0.1"`,
    /// a host name, or `"mem://x#1"`.
    pub peer: String,
    /// The peer's IP address, when the link has one.
    pub peer_ip: Option<IpAddr>,
    /// The `with` protocol name of RFC 3848: `"SMTP"`, `"ESMTP"`,
    /// `"ESMTPS"`, `"ESMTPA"`, `"ESMTPSA"`, `"UTF8SMTP"`, ...
    pub protocol: String,
    /// The server's identifier for this message (the `id` clause).
    pub id: String,
    /// The envelope recipients, in order; the first decides where the
    /// message is staged while it is received (see
    /// [`MaildirStore::begin`](crate::MaildirStore::begin)).
    pub recipients: Vec<String>,
    /// The TLS session the message came over, e.g. `"TLSv1.3"` and
    /// `"TLS13_AES_256_GCM_SHA384"`; rendered as the comment
    /// `(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)` after the
    /// `with` clause. `None` for plaintext.
    pub tls: Option<(String, String)>,
}

/// The RFC 3848 / RFC 6531 `with` protocol name: `SMTP` (HELO), `ESMTP`,
/// then `S` when TLS was in use and `A` when the client authenticated
/// (`ESMTPS`, `ESMTPA`, `ESMTPSA`); `UTF8SMTP…` for SMTPUTF8 transactions.
/// (RFC 3848 names no TLS variant of plain `SMTP`.)
pub fn protocol_name(esmtp: bool, tls: bool, authenticated: bool, utf8: bool) -> String {
    let base = match (utf8, esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => return "SMTP".into(),
    };
    let mut name = base.to_owned();
    if tls {
        name.push('S');
    }
    if authenticated {
        name.push('A');
    }
    name
}

impl TraceInfo {
    /// Renders the two trace header fields that go in front of the message,
    /// each ending in CRLF:
    ///
    /// ```text
    /// Return-Path: <reverse-path>
    /// Received: from <helo> (<peer> [<ip>])
    ///         by <by_host> with <protocol> id <id>
    ///         for <recipient>; Thu, 03 Dec 2026 13:42:36 +0000
    /// ```
    ///
    /// (RFC 5321 4.4, RFC 5322 3.6.7). The null sender gives
    /// `Return-Path: <>`. The `for` clause appears only when there is exactly
    /// one recipient: listing several would disclose Bcc recipients to each
    /// other. The `(...)` comment shows the peer and its address as an
    /// address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`); a part that is
    /// unknown or repeats the other is left out, and so are `with` and `id`
    /// when empty. An empty HELO name is written as `unknown`. Lines are
    /// folded with CRLF + TAB so that none exceeds 78 bytes where that can be
    /// avoided, and none ever exceeds 998. The date is `now` in UTC.
    ///
    /// Sanitising: control characters (CR, LF, TAB, NUL, DEL, C1) and the
    /// Unicode line and paragraph separators are removed from every field.
    /// In the single-token fields (HELO name, host, protocol, id), white
    /// space and `( ) \ ; " < > ,` become `_`, so a peer cannot forge extra
    /// clauses; in the comment, `(`, `)` and `\` are escaped. Each field is
    /// capped at 900 bytes.
    pub fn render(&self, by_host: &str, now: SystemTime) -> Vec<u8> {
        let mut out = format!("Return-Path: <{}>\r\n", path_text(&self.reverse_path)).into_bytes();
        out.extend_from_slice(&self.render_received(by_host, now));
        out
    }

    /// The `Received:` field alone, as [`render`](Self::render) writes it:
    /// what a relaying hop adds. `Return-Path:` belongs only to the final
    /// delivery (RFC 5321 4.4).
    pub fn render_received(&self, by_host: &str, now: SystemTime) -> Vec<u8> {
        let mut out = String::new();
        let mut lines: Vec<Vec<String>> = Vec::with_capacity(3);

        let mut from = vec![
            "from".to_owned(),
            token(&self.helo).unwrap_or_else(|| "unknown".to_owned()),
        ];
        let peer = comment_text(&self.peer);
        let literal = self.peer_ip.map(address_literal);
        // Leave the peer out when it only repeats the address.
        let redundant = peer.is_empty()
            || self.peer_ip.is_some_and(|ip| peer == ip.to_string())
            || literal
                .as_ref()
                .is_some_and(|lit| *lit == peer || *lit == format!("[{peer}]"));
        match (redundant, literal) {
            (false, Some(lit)) => {
                from.push(format!("({peer}"));
                from.push(format!("{lit})"));
            }
            (true, Some(lit)) => from.push(format!("({lit})")),
            (false, None) => from.push(format!("({peer})")),
            (true, None) => {}
        }
        lines.push(from);

        let mut by = vec![
            "by".to_owned(),
            token(by_host).unwrap_or_else(|| "localhost".to_owned()),
        ];
        if let Some(protocol) = token(&self.protocol) {
            by.push("with".to_owned());
            by.push(protocol);
        }
        if let Some((version, cipher)) = &self.tls {
            let (version, cipher) = (token(version), token(cipher));
            if let (Some(version), Some(cipher)) = (version, cipher) {
                by.push(format!("(using {version}"));
                by.push("with".to_owned());
                by.push("cipher".to_owned());
                by.push(format!("{cipher})"));
            }
        }
        if let Some(id) = token(&self.id) {
            by.push("id".to_owned());
            by.push(id);
        }
        lines.push(by);

        if let [only] = self.recipients.as_slice() {
            lines.push(vec!["for".to_owned(), format!("<{}>", path_text(only))]);
        }

        if let Some(last) = lines.last_mut().and_then(|line| line.last_mut()) {
            last.push(';');
        }
        if let Some(line) = lines.last_mut() {
            line.push(rfc5322_date(now));
        }

        let mut folder = Folder::new("Received:");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                folder.break_line();
            }
            for word in line {
                folder.word(word);
            }
        }
        out.push_str(&folder.out);
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Builds a folded header field from words that must not be split.
struct Folder {
    out: String,
    line_len: usize,
    at_line_start: bool,
}

impl Folder {
    fn new(name: &str) -> Self {
        Folder {
            out: name.to_owned(),
            line_len: name.len(),
            at_line_start: false,
        }
    }

    /// Appends a word, folding first if it would push the line past 78.
    fn word(&mut self, word: &str) {
        if self.at_line_start {
            self.at_line_start = false;
        } else if self.line_len + 1 + word.len() > SOFT_LINE_LIMIT {
            self.out.push_str("\r\n\t");
            self.line_len = 1;
        } else {
            self.out.push(' ');
            self.line_len += 1;
        }
        self.out.push_str(word);
        self.line_len += word.len();
    }

    /// Starts a continuation line (CRLF TAB).
    fn break_line(&mut self) {
        self.out.push_str("\r\n\t");
        self.line_len = 1;
        self.at_line_start = true;
    }
}

/// Whether a character is removed from every interpolated field.
fn is_stripped(ch: char) -> bool {
    ch.is_control() || ch == '\u{2028}' || ch == '\u{2029}'
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A path (inside `<...>`): control characters removed.
fn path_text(s: &str) -> String {
    cap(s.chars().filter(|&c| !is_stripped(c)).collect(), FIELD_CAP)
}

/// A single token: no controls, no white space, nothing that could end the
/// token or start a comment, quoted string or clause. `None` if empty.
fn token(s: &str) -> Option<String> {
    let t: String = s
        .chars()
        .filter(|&c| !is_stripped(c))
        .map(|c| {
            if c.is_whitespace() || "()\\;\"<>,".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let t = cap(t, FIELD_CAP);
    (!t.is_empty()).then_some(t)
}

/// Text for inside a `( ... )` comment: no controls, and `(`, `)`, `\`
/// written as quoted pairs so the comment stays balanced.
fn comment_text(s: &str) -> String {
    let plain = cap(
        s.chars().filter(|&c| !is_stripped(c)).collect(),
        COMMENT_CAP,
    );
    let mut out = String::with_capacity(plain.len());
    for c in plain.chars() {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An IP address as an RFC 5321 address literal. An IPv4-mapped IPv6
/// address is shown as the IPv4 address it is.
fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

/// Formats a time as an RFC 5322 3.3 date-time in UTC, e.g.
/// `Thu, 03 Dec 2026 13:42:36 +0000`. Times outside the years 1900..=9999
/// (which the grammar cannot express) are clamped to them.
pub fn rfc5322_date(t: SystemTime) -> String {
    // 1900-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const MIN: i64 = -2_208_988_800;
    const MAX: i64 = 253_402_300_799;
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            // Round down, so 0.5 s before the epoch is 23:59:59.
            -whole.saturating_add(i64::from(d.subsec_nanos() > 0))
        }
    }
    .clamp(MIN, MAX);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 1970-01-01 was a Thursday. rem_euclid keeps both indices in range.
    let weekday = WEEKDAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month as usize + 11) % 12];
    format!(
        "{weekday}, {day:02} {month_name} {year:04} {:02}:{:02}:{:02} +0000",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Converts a count of days since 1970-01-01 to a proleptic Gregorian
/// (year, month 1..=12, day 1..=31). Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-12-03 13:42:36 UTC.
    const T: u64 = 1_796_305_356;

    fn sample() -> TraceInfo {
        TraceInfo {
            reverse_path: "alice@example.org".into(),
            helo: "client.example.org".into(),
            peer: "client.example.org".into(),
            peer_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
            protocol: "ESMTP".into(),
            id: "1A2B3C".into(),
            recipients: vec!["bob@example.net".into()],
            tls: None,
        }
    }

    #[test]
    fn tls_comment_and_protocol_names() {
        let mut t = sample();
        t.protocol = protocol_name(true, true, false, false);
        t.tls = Some(("TLSv1.3".into(), "TLS13_AES_256_GCM_SHA384".into()));
        let s = text(&t);
        let unfolded = s.replace("\r\n\t", " ");
        assert!(
            unfolded.contains("with ESMTPS (using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)"),
            "{s}"
        );
        assert_well_formed(&s);
        // A peer-supplied string cannot close the comment early.
        t.tls = Some(("TLSv1.3) x (y".into(), "C".into()));
        assert_well_formed(&text(&t));
        assert!(!text(&t).contains(") x ("));
        assert_eq!(protocol_name(false, true, false, false), "SMTP");
        assert_eq!(protocol_name(true, false, true, false), "ESMTPA");
        assert_eq!(protocol_name(true, true, true, false), "ESMTPSA");
        assert_eq!(protocol_name(true, true, false, true), "UTF8SMTPS");
    }

    fn text(t: &TraceInfo) -> String {
        String::from_utf8(t.render("mx.example.net", at(T))).unwrap()
    }

    fn assert_well_formed(s: &str) {
        assert!(s.ends_with("\r\n"));
        // Exactly two fields: each line not starting with TAB starts a field.
        let lines: Vec<&str> = s.trim_end_matches("\r\n").split("\r\n").collect();
        let fields = lines.iter().filter(|l| !l.starts_with('\t')).count();
        assert_eq!(fields, 2, "{s:?}");
        assert!(lines[0].starts_with("Return-Path: <"));
        assert!(lines[1].starts_with("Received: "));
        for line in &lines {
            assert!(line.len() <= 998, "line of {} bytes", line.len());
            assert!(!line.contains('\r') && !line.contains('\n'));
            assert!(
                !line.chars().skip(1).any(|c| c.is_control()),
                "control in {line:?}"
            );
        }
        // No bare CR or LF anywhere.
        assert_eq!(s.matches('\r').count(), s.matches("\r\n").count());
        assert_eq!(s.matches('\n').count(), s.matches("\r\n").count());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29)); // leap century
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28)); // not a leap year
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        // Every day of 1900..2400 follows the previous one.
        let mut prev = civil_from_days(-25_567);
        assert_eq!(prev, (1900, 1, 1));
        for d in -25_566..157_000 {
            let cur = civil_from_days(d);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                cur == next_day || cur == next_month || cur == next_year,
                "{prev:?} -> {cur:?}"
            );
            if cur == next_month || cur == next_year {
                let leap = (prev.0 % 4 == 0 && prev.0 % 100 != 0) || prev.0 % 400 == 0;
                let len = match prev.1 {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                assert_eq!(prev.2, len, "{prev:?}");
            }
            prev = cur;
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(at(T)), "Thu, 03 Dec 2026 13:42:36 +0000");
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_709_164_799)),
            "Wed, 28 Feb 2024 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_709_164_800)),
            "Thu, 29 Feb 2024 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH - Duration::from_millis(500)),
            "Wed, 31 Dec 1969 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(at(2_147_483_648)),
            "Tue, 19 Jan 2038 03:14:08 +0000"
        );
        assert_eq!(
            rfc5322_date(at(T) + Duration::from_millis(999)),
            "Thu, 03 Dec 2026 13:42:36 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH - Duration::from_secs(86_400)),
            "Wed, 31 Dec 1969 00:00:00 +0000"
        );
        // Clamped to the years the RFC 5322 grammar can express.
        assert_eq!(
            rfc5322_date(UNIX_EPOCH - Duration::from_secs(3_000_000_000)),
            "Mon, 01 Jan 1900 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(400_000_000_000)),
            "Fri, 31 Dec 9999 23:59:59 +0000"
        );
    }

    #[test]
    fn render_one_recipient() {
        assert_eq!(
            text(&sample()),
            "Return-Path: <alice@example.org>\r\n\
             Received: from client.example.org (client.example.org [192.0.2.7])\r\n\
             \tby mx.example.net with ESMTP id 1A2B3C\r\n\
             \tfor <bob@example.net>; Thu, 03 Dec 2026 13:42:36 +0000\r\n"
        );
    }

    #[test]
    fn render_several_recipients_has_no_for_clause() {
        let mut t = sample();
        t.recipients.push("carol@example.net".into());
        let s = text(&t);
        assert!(!s.contains("for"), "{s}");
        assert!(!s.contains("bob"), "{s}");
        assert!(
            s.ends_with(
                "\tby mx.example.net with ESMTP id 1A2B3C; Thu, 03 Dec 2026 13:42:36 +0000\r\n"
            ),
            "{s}"
        );
        assert_well_formed(&s);
    }

    #[test]
    fn null_sender() {
        let mut t = sample();
        t.reverse_path.clear();
        assert!(text(&t).starts_with("Return-Path: <>\r\nReceived: "));
    }

    #[test]
    fn peer_forms() {
        let mut t = sample();
        t.peer = "192.0.2.7".into();
        assert!(text(&t).contains("from client.example.org ([192.0.2.7])\r\n"));
        t.peer = "mem://x#1".into();
        t.peer_ip = None;
        assert!(text(&t).contains("from client.example.org (mem://x#1)\r\n"));
        t.peer.clear();
        assert!(text(&t).contains("from client.example.org\r\n"));
        t.peer_ip = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert!(text(&t).contains("from client.example.org ([IPv6:::1])\r\n"));
        t.peer_ip = Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped()));
        assert!(text(&t).contains("([192.0.2.9])"));
        t.peer = "192.0.2.9".into();
        assert!(text(&t).contains("([192.0.2.9])"));
        t.peer.clear();
        t.helo.clear();
        assert!(text(&t).contains("Received: from unknown ([192.0.2.9])"));
        t.protocol.clear();
        t.id.clear();
        assert!(text(&t).contains("\tby mx.example.net\r\n"));
    }

    #[test]
    fn header_injection_is_impossible() {
        let mut t = sample();
        t.helo = "evil\r\nX-Injected: yes\r\n\r\nbody".into();
        t.reverse_path = "a@b>\r\nX-Injected: 1".into();
        t.peer = "p\n(x)\\".into();
        t.protocol = "ESMTP\rX-Injected: 2".into();
        t.id = "id\0\u{85}\u{2028}x".into();
        t.recipients = vec!["bob@x\r\nBcc: someone@y".into()];
        let s = String::from_utf8(t.render("mx\r\nX-Injected: 3", at(T))).unwrap();
        assert_well_formed(&s);
        for line in s.split("\r\n") {
            assert!(!line.starts_with("X-Injected"), "{s}");
            assert!(!line.starts_with("Bcc"), "{s}");
        }
        assert!(s.contains("from evilX-Injected:_yesbody"), "{s}");
        assert!(s.contains("(p\\(x\\)\\\\"), "{s}");
        assert!(s.contains("id idx;") || s.contains("id idx\r\n"), "{s}");
    }

    #[test]
    fn clause_forgery_is_neutralised() {
        let mut t = sample();
        t.helo = "x by trusted.example with ESMTP id 1; Mon, 01 Jan 2024".into();
        let s = text(&t);
        assert!(
            s.contains("from x_by_trusted.example_with_ESMTP_id_1__Mon__01_Jan_2024"),
            "{s}"
        );
    }

    #[test]
    fn long_fields_fold_and_stay_under_998() {
        let mut t = sample();
        t.helo = "h".repeat(5000);
        t.peer = "(".repeat(5000);
        t.reverse_path = "r".repeat(5000);
        t.recipients = vec!["q".repeat(5000)];
        t.id = "i".repeat(5000);
        let s = text(&t);
        assert_well_formed(&s);

        // Moderately long values fold where they can: no line over 78.
        let mut t = sample();
        t.helo = "a-rather-long-client-host-name.subdomain.example.org".into();
        t.peer = "another-long-reverse-dns-name.isp.example.net".into();
        t.recipients = vec!["someone.with.a.long.name@department.example.net".into()];
        let s = text(&t);
        assert_well_formed(&s);
        for line in s.split("\r\n") {
            assert!(line.len() <= 78, "{line:?} is {} bytes", line.len());
        }
        assert!(s.contains(";\r\n\tThu, 03 Dec 2026"), "{s}");
    }
}
