//! Delivery status notifications ("bounces"): what the relay mails back to
//! the envelope sender when a recipient fails for good, is given up on, or
//! (for `NOTIFY=DELAY`/`SUCCESS`) is delayed or delivered.
//!
//! [`render_bounce`] builds the whole notification as an RFC 5322 message
//! with CRLF line ends, in the shape RFC 3464 prescribes:
//!
//! - a `multipart/report; report-type=delivery-status` (RFC 6522, formerly
//!   RFC 3462) with three parts:
//!   1. `text/plain`: a human-readable explanation naming each recipient and
//!      the reason;
//!   2. `message/delivery-status` (RFC 3464 2): the per-message fields
//!      (`Reporting-MTA`, `Original-Envelope-Id` from RFC 3461 `ENVID`,
//!      `Arrival-Date`), then one group of per-recipient fields for each
//!      recipient (`Original-Recipient` from RFC 3461 `ORCPT`,
//!      `Final-Recipient`, `Action`, `Status` (RFC 3463), `Remote-MTA`,
//!      `Diagnostic-Code`, `Last-Attempt-Date`, `Will-Retry-Until`);
//!   3. the returned content, as RFC 3461 `RET` asks: `text/rfc822-headers`
//!      (RFC 6522) holding only the original's header section for
//!      `RET=HDRS` (the default here, to keep bounces small), or
//!      `message/rfc822` holding the whole original for `RET=FULL`.
//! - `Auto-Submitted: auto-replied` (RFC 3834) so responders stay quiet.
//!   The caller sends the result from the null reverse-path `<>` (RFC 5321
//!   4.5.5 and 6.1; RFC 3461 6.1), which is what keeps a bounce from ever
//!   being bounced: see [`is_bounce_sender`].
//!
//! # Safety of the output
//!
//! Every value interpolated into a header, a delivery-status field or the
//! explanation has its control characters (CR, LF, NUL, TAB, DEL, C1...)
//! replaced by a space and its runs of white space collapsed, so nothing a
//! peer said (a reply text, an address) can start a header line of its
//! own. Long lines are folded at spaces (RFC 5322 2.2.3); a value with no
//! space for 900-odd octets is split hard, so no line of ours is ever over
//! 998 octets (RFC 5322 2.1.1). The original message is copied as is: its
//! lines already obey that limit because the server's DATA codec enforces
//! it.
//!
//! # 7bit and 8bit
//!
//! The `message/delivery-status` part is always 7-bit: a non-ASCII address
//! is written with the `utf-8` address type and `\x{HEX}` escapes of
//! RFC 6533 3, and other non-ASCII text gets the same escapes. The
//! explanation is `charset=utf-8` and `8bit` when an address or reply in it
//! is non-ASCII. The returned headers or message are copied verbatim; when
//! they hold 8-bit octets that part, and the whole report, is labelled
//! `Content-Transfer-Encoding: 8bit`, so the caller must send the
//! notification with `BODY=8BITMIME` (or refuse to relay it to a hop without
//! 8BITMIME). `To:` carries a UTF-8 sender as is (RFC 6532), which needs
//! SMTPUTF8 exactly when the sender address itself did.
//!
//! Everything here is a pure function: the times come in the input, and
//! nothing reads the clock, a random source or a file.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// What happened to one recipient: the `Action` field of RFC 3464 2.3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Delivery failed permanently (5xx, or the give-up age was reached).
    Failed,
    /// Not delivered yet; the relay is still retrying.
    Delayed,
    /// Delivered to the recipient's mailbox (only with `NOTIFY=SUCCESS`).
    Delivered,
    /// Handed on to a next hop that does not offer DSN, so no further
    /// notification will come from there.
    Relayed,
    /// Delivered to an alias or list that expanded to more recipients.
    Expanded,
}

impl Action {
    /// The field value, as RFC 3464 2.3.3 spells it (`failed`, `delayed`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    /// A short phrase for the human-readable part.
    fn phrase(self) -> &'static str {
        match self {
            Action::Failed => "delivery failed permanently",
            Action::Delayed => "delivery delayed, still being retried",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed to a system that sends no delivery notifications",
            Action::Expanded => "delivered to an alias or list and expanded",
        }
    }
}

/// How much of the original message the notification carries: RFC 3461
/// 4.3 `RET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ret {
    /// `RET=FULL`: the whole original as `message/rfc822`.
    Full,
    /// `RET=HDRS`: only its header section as `text/rfc822-headers`. This is
    /// the default (RFC 3461 leaves the choice to the MTA when `RET` is
    /// absent; headers keep bounces small).
    #[default]
    Headers,
}

impl From<smtplink_engine::params::Ret> for Ret {
    fn from(ret: smtplink_engine::params::Ret) -> Self {
        match ret {
            smtplink_engine::params::Ret::Full => Ret::Full,
            smtplink_engine::params::Ret::Hdrs => Ret::Headers,
        }
    }
}

/// Everything a delivery status notification says about one message.
#[derive(Debug, Clone, Copy)]
pub struct BounceInput<'a> {
    /// Our host name: `Reporting-MTA: dns;<this>` and the domain of
    /// `MAILER-DAEMON@<this>` in `From:`.
    pub reporting_mta: &'a str,
    /// The envelope sender the notification goes to (`To:`). Never empty:
    /// the caller never bounces a bounce (see [`is_bounce_sender`]).
    pub original_sender: &'a str,
    /// RFC 3461 `ENVID`, already xtext-decoded: `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// When we accepted the message: `Arrival-Date`.
    pub arrival: SystemTime,
    /// The time of the report: `Date:`, and part of the `Message-ID`.
    pub now: SystemTime,
    /// One entry per reported recipient, in the order to list them.
    pub recipients: &'a [FailedRecipient<'a>],
    /// The original message (CRLF line ends), trace headers included.
    pub original: &'a [u8],
    /// What to return of the original (RFC 3461 `RET`).
    pub ret: Ret,
    /// The domain of the notification's own `Message-ID`.
    pub message_id_domain: &'a str,
}

/// One recipient's fields in the notification (RFC 3464 2.3).
#[derive(Debug, Clone, Copy)]
pub struct FailedRecipient<'a> {
    /// The recipient address as delivery saw it: `Final-Recipient`. A bare
    /// address gets the `rfc822;` type; a value that already starts with an
    /// address type (`rfc822;a@b`) is kept as is.
    pub final_recipient: &'a str,
    /// RFC 3461 `ORCPT` as given, `addr-type;addr` (xtext-decoded):
    /// `Original-Recipient`. A value without a type gets `rfc822;`.
    pub original_recipient: Option<&'a str>,
    /// What happened (RFC 3464 2.3.3).
    pub action: Action,
    /// The RFC 3463 enhanced status code, e.g. `(5, 1, 1)`.
    pub status: (u8, u16, u16),
    /// The host that gave the reply, `dns;host` or the endpoint label:
    /// `Remote-MTA`. A bare host name gets `dns;`; anything else without a
    /// type (an endpoint URL) gets `x-smtplink;`.
    pub remote_mta: Option<&'a str>,
    /// The reply or error, e.g. `smtp; 550 5.1.1 No such user`:
    /// `Diagnostic-Code`. A bare SMTP reply (`550 ...`) gets `smtp; `; other
    /// untyped text (a connection error) gets `x-smtplink; `.
    pub diagnostic: Option<&'a str>,
    /// When we last tried: `Last-Attempt-Date`.
    pub last_attempt: Option<SystemTime>,
    /// When we will give up: `Will-Retry-Until`. Written only for
    /// [`Action::Delayed`], as RFC 3464 2.3.7 requires.
    pub will_retry_until: Option<SystemTime>,
}

/// Whether a message with this envelope sender is itself a bounce, so that
/// no notification may be sent about it.
///
/// Only the null reverse-path counts: the empty string (how the engine
/// prints `MAIL FROM:<>`), or the literal `<>`, white space ignored.
/// RFC 5321 4.5.5 and 6.1 and RFC 3461 6.1 make the null path the one
/// mark of a notification. A sender such as `MAILER-DAEMON@host` is *not*
/// treated as a bounce: a real notification never uses it as its envelope
/// sender, and mail that does is ordinary mail that may be bounced.
pub fn is_bounce_sender(sender: &str) -> bool {
    let s = sender.trim();
    s.is_empty() || s == "<>"
}

/// The header section of a message: everything up to and including the
/// empty line that ends it (RFC 5322 2.1). With no empty line (a message of
/// headers only) that is the whole message; a message starting with an
/// empty line has just that line. A bare LF is accepted as a line end too.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < message.len() {
        let rest = &message[start..];
        if rest.starts_with(b"\r\n") {
            return &message[..start + 2];
        }
        if rest.starts_with(b"\n") {
            return &message[..start + 1];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => start += i + 1,
            None => break,
        }
    }
    message
}

/// Formats a time as an RFC 5322 date-time in UTC (shared with the
/// Maildir trace fields, so every date smtplink writes looks the same).
pub use smtplink_maildir::rfc5322_date;

/// Whole seconds since the epoch (rounded down, so negative before it) and
/// the nanoseconds past that second.
fn unix_seconds(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let nanos = d.subsec_nanos();
            if nanos == 0 {
                (-whole, 0)
            } else {
                (-whole - 1, 1_000_000_000 - nanos)
            }
        }
    }
}

/// The hard line limit of RFC 5322 2.1.1, CRLF excluded.
const MAX_LINE: usize = 998;
/// Where we prefer to fold (RFC 5322 2.1.1 "SHOULD be no more than 78").
const SOFT_LINE: usize = 78;

/// Replaces control characters with spaces, collapses white space runs to
/// one space and trims: the value can no longer end a line.
fn clean(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::with_capacity(mapped.len());
    for word in mapped.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A host name for `From:`, `Reporting-MTA` or a `Message-ID`: only the
/// characters of a domain or address literal survive.
fn clean_host(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(*c))
        .collect()
}

/// `\x{HEX}` (RFC 6533 3 `EmbeddedUnicodeChar`) for each non-ASCII
/// character and, when `also` says so, for some ASCII ones.
fn escape_unicode(s: &str, also: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii() || also(c) {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// 7-bit text for a delivery-status field.
fn ds_text(s: &str) -> String {
    escape_unicode(&clean(s), |_| false)
}

/// Splits `type;value` when the part before the first `;` is a plausible
/// type name (an atom of letters, digits, `-`, `_` and `.`).
fn split_typed(s: &str) -> Option<(&str, &str)> {
    let (ty, rest) = s.split_once(';')?;
    let ok = !ty.is_empty()
        && ty.len() <= 40
        && ty
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then_some((ty, rest))
}

/// An address field value (`Final-Recipient`, `Original-Recipient`):
/// `type;address`, with the `utf-8` type and RFC 6533 `utf-8-addr-xtext`
/// when the address is not ASCII.
fn ds_address(s: &str) -> String {
    let s = clean(s);
    let (ty, addr) = match split_typed(&s) {
        Some((ty, addr)) => (ty, addr.trim()),
        None => ("rfc822", s.as_str()),
    };
    if !addr.is_ascii() || ty.eq_ignore_ascii_case("utf-8") {
        // QCHAR excludes space, '+', '=' and '\' besides non-ASCII.
        let x = escape_unicode(addr, |c| matches!(c, ' ' | '+' | '=' | '\\'));
        format!("utf-8;{x}")
    } else {
        format!("{ty};{addr}")
    }
}

/// A value without its `type;` prefix (an address, an MTA name, a
/// diagnostic), cleaned, for the human-readable part.
fn bare_address(s: &str) -> String {
    let s = clean(s);
    match split_typed(&s) {
        Some((_, addr)) => addr.trim().to_owned(),
        None => s,
    }
}

/// `Remote-MTA` value: typed as given, `dns;` for a bare host name,
/// `x-smtplink;` for anything else (an endpoint URL).
fn ds_mta(s: &str) -> String {
    let s = ds_text(s);
    if split_typed(&s).is_some() {
        return s;
    }
    let looks_like_host = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    if looks_like_host {
        format!("dns;{s}")
    } else {
        format!("x-smtplink;{s}")
    }
}

/// Whether `s` starts like an SMTP reply: a 2xx..5xx code, then the end,
/// a space or a hyphen.
fn is_smtp_reply(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && (b'2'..=b'5').contains(&b[0])
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && (b.len() == 3 || b[3] == b' ' || b[3] == b'-')
}

/// `Diagnostic-Code` value: typed as given, `smtp; ` for a bare SMTP
/// reply, `x-smtplink; ` for other text.
fn ds_diagnostic(s: &str) -> String {
    let s = ds_text(s);
    if split_typed(&s).is_some() {
        return s;
    }
    if is_smtp_reply(&s) {
        format!("smtp; {s}")
    } else {
        format!("x-smtplink; {s}")
    }
}

/// Appends `line` and CRLF to `out`, folded at spaces so that lines stay
/// within 78 octets where a space allows it and never exceed 998. Each
/// continuation line starts with `cont` (which replaces the space broken
/// at); no break is made in the first `min_break` octets. A run of more
/// than 900-odd octets without a space is split hard.
fn push_folded(out: &mut String, line: &str, cont: &str, min_break: usize) {
    let mut rest = line;
    let mut first = true;
    loop {
        let prefix = if first { 0 } else { cont.len() };
        let soft = SOFT_LINE.saturating_sub(prefix);
        let hard = MAX_LINE - prefix;
        if rest.len() <= soft {
            out.push_str(rest);
            break;
        }
        let bytes = rest.as_bytes();
        let lo = if first { min_break.max(1) } else { 1 };
        // Never break at the last octet: the next line would be empty.
        let last = bytes.len() - 1;
        let before = (lo..=soft.min(last)).rev().find(|&i| bytes[i] == b' ');
        let after = || (soft.max(lo)..=hard.min(last)).find(|&i| bytes[i] == b' ');
        match before.or_else(after) {
            Some(i) => {
                out.push_str(&rest[..i]);
                out.push_str("\r\n");
                out.push_str(cont);
                rest = &rest[i + 1..];
            }
            None if rest.len() <= hard => {
                out.push_str(rest);
                break;
            }
            None => {
                let mut k = hard;
                while !rest.is_char_boundary(k) {
                    k -= 1;
                }
                out.push_str(&rest[..k]);
                out.push_str("\r\n");
                out.push_str(cont);
                rest = &rest[k..];
            }
        }
        first = false;
    }
    out.push_str("\r\n");
}

/// Appends the header or field `name: value`, folded.
fn push_field(out: &mut String, name: &str, value: &str) {
    push_folded(out, &format!("{name}: {value}"), " ", name.len() + 2);
}

/// Appends a line of the human-readable part, wrapped: an indented line
/// continues four columns further in, a paragraph at the margin.
fn push_text(out: &mut String, line: &str) {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let cont = if indent == 0 {
        String::new()
    } else {
        " ".repeat(indent + 4)
    };
    push_folded(out, line, &cont, indent + 1);
}

/// 64-bit FNV-1a, enough to make identifiers differ; not a secret.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// A length-prefixed field, so that ("ab","c") and ("a","bc") differ.
    fn field(&mut self, b: &[u8]) {
        self.bytes(&(b.len() as u64).to_le_bytes());
        self.bytes(b);
    }
}

/// A hash of everything the notification is about.
fn input_hash(input: &BounceInput) -> u64 {
    let mut h = Fnv::new();
    let (secs, nanos) = unix_seconds(input.now);
    h.field(&secs.to_le_bytes());
    h.field(&nanos.to_le_bytes());
    h.field(&unix_seconds(input.arrival).0.to_le_bytes());
    h.field(input.reporting_mta.as_bytes());
    h.field(input.original_sender.as_bytes());
    h.field(input.envid.unwrap_or("").as_bytes());
    for r in input.recipients {
        h.field(r.final_recipient.as_bytes());
        h.field(r.action.as_str().as_bytes());
        let (a, b, c) = r.status;
        h.field(&[a]);
        h.field(&b.to_le_bytes());
        h.field(&c.to_le_bytes());
        h.field(r.diagnostic.unwrap_or("").as_bytes());
    }
    h.field(input.original);
    h.0
}

/// Whether `needle` occurs anywhere in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w[0] == needle[0] && w == needle)
}

/// A MIME boundary (RFC 2046 5.1.1: at most 70 characters, none of them
/// special) derived from `seed` that occurs in none of `parts`. Each try
/// rehashes, and finite content can hold only finitely many candidates, so
/// the loop ends.
fn choose_boundary(seed: u64, parts: &[&[u8]]) -> String {
    let mut h = Fnv(seed);
    h.bytes(b"boundary");
    let mut n: u32 = 0;
    loop {
        let candidate = format!("=_smtplink-dsn-{:016x}-{n}", h.0);
        if !parts.iter().any(|p| contains(p, candidate.as_bytes())) {
            return candidate;
        }
        n = n.wrapping_add(1);
        h.bytes(&n.to_le_bytes());
    }
}

/// A short explanation of common RFC 3463 codes for the human-readable part.
fn status_text(status: (u8, u16, u16)) -> Option<&'static str> {
    Some(match (status.1, status.2) {
        (0, 0) => "other or undefined status",
        (1, 1) => "bad destination mailbox address",
        (1, 2) => "bad destination system address",
        (1, 3) => "bad destination mailbox address syntax",
        (1, 6) => "destination mailbox has moved",
        (1, 10) => "recipient address has a null MX",
        (2, 1) => "mailbox disabled, not accepting messages",
        (2, 2) => "mailbox full",
        (2, 3) => "message length exceeds administrative limit",
        (3, 4) => "message too big for system",
        (4, 1) => "no answer from host",
        (4, 2) => "bad connection",
        (4, 3) => "directory server failure",
        (4, 4) => "unable to route",
        (4, 6) => "routing loop detected",
        (4, 7) => "delivery time expired",
        (5, 0) => "other or undefined protocol status",
        (5, 3) => "too many recipients",
        (6, 0) => "other or undefined media error",
        (7, 1) => "delivery not authorized, message refused",
        _ => return None,
    })
}

/// The first part: the explanation for a person.
fn human_part(input: &BounceInput, host: &str, kind: Kind) -> String {
    let mut t = String::new();
    push_text(&mut t, &format!("This is the mail system at host {host}."));
    t.push_str("\r\n");
    let attached = match input.ret {
        Ret::Full => "Your message is attached below.",
        Ret::Headers => "The headers of your message are attached below.",
    };
    let intro = match kind {
        Kind::Failure => format!(
            "I'm sorry to have to inform you that your message could not be delivered \
             to one or more recipients. {attached}"
        ),
        Kind::Delay => format!(
            "This is only a warning: your message has not been delivered yet to the \
             recipients below. The mail system will keep trying; you do not need to \
             send it again. {attached}"
        ),
        Kind::Success => format!(
            "Your message was delivered to the recipients below, as you asked to be \
             told. {attached}"
        ),
    };
    push_text(&mut t, &intro);
    t.push_str("\r\n");
    push_text(
        &mut t,
        &format!("The message arrived on {}.", rfc5322_date(input.arrival)),
    );
    for r in input.recipients {
        t.push_str("\r\n");
        let addr = bare_address(r.final_recipient);
        push_text(&mut t, &format!("<{addr}>: {}", r.action.phrase()));
        if let Some(orig) = r.original_recipient {
            let orig = bare_address(orig);
            if !orig.is_empty() && orig != addr {
                push_text(&mut t, &format!("    originally addressed to <{orig}>"));
            }
        }
        let (a, b, c) = r.status;
        let status = match status_text(r.status) {
            Some(text) => format!("    status {a}.{b}.{c} ({text})"),
            None => format!("    status {a}.{b}.{c}"),
        };
        push_text(&mut t, &status);
        let mta = r.remote_mta.map(bare_address).filter(|s| !s.is_empty());
        let diag = r.diagnostic.map(bare_address).filter(|s| !s.is_empty());
        match (mta, diag) {
            (Some(mta), Some(diag)) if is_smtp_reply(&diag) => {
                push_text(&mut t, &format!("    {mta} said: {diag}"));
            }
            (Some(mta), Some(diag)) => push_text(&mut t, &format!("    {mta}: {diag}")),
            (Some(mta), None) => push_text(&mut t, &format!("    remote system: {mta}")),
            (None, Some(diag)) => push_text(&mut t, &format!("    reason: {diag}")),
            (None, None) => {}
        }
        if let Some(at) = r.last_attempt {
            push_text(&mut t, &format!("    last attempt: {}", rfc5322_date(at)));
        }
        if r.action == Action::Delayed {
            if let Some(until) = r.will_retry_until {
                push_text(
                    &mut t,
                    &format!("    will keep trying until: {}", rfc5322_date(until)),
                );
            }
        }
    }
    t
}

/// The second part's body: the `message/delivery-status` fields.
fn status_part(input: &BounceInput, host: &str) -> String {
    let mut d = String::new();
    push_field(&mut d, "Reporting-MTA", &format!("dns;{host}"));
    if let Some(envid) = input.envid {
        let envid = ds_text(envid);
        if !envid.is_empty() {
            push_field(&mut d, "Original-Envelope-Id", &envid);
        }
    }
    push_field(&mut d, "Arrival-Date", &rfc5322_date(input.arrival));
    for r in input.recipients {
        d.push_str("\r\n");
        if let Some(orig) = r.original_recipient {
            if !clean(orig).is_empty() {
                push_field(&mut d, "Original-Recipient", &ds_address(orig));
            }
        }
        push_field(&mut d, "Final-Recipient", &ds_address(r.final_recipient));
        push_field(&mut d, "Action", r.action.as_str());
        let (a, b, c) = r.status;
        push_field(&mut d, "Status", &format!("{a}.{b}.{c}"));
        if let Some(mta) = r.remote_mta {
            if !clean(mta).is_empty() {
                push_field(&mut d, "Remote-MTA", &ds_mta(mta));
            }
        }
        if let Some(diag) = r.diagnostic {
            if !clean(diag).is_empty() {
                push_field(&mut d, "Diagnostic-Code", &ds_diagnostic(diag));
            }
        }
        if let Some(at) = r.last_attempt {
            push_field(&mut d, "Last-Attempt-Date", &rfc5322_date(at));
        }
        if r.action == Action::Delayed {
            if let Some(until) = r.will_retry_until {
                push_field(&mut d, "Will-Retry-Until", &rfc5322_date(until));
            }
        }
    }
    d
}

/// What the notification as a whole reports, for its subject and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// At least one recipient failed (or the list is empty).
    Failure,
    /// Every recipient is delayed.
    Delay,
    /// Every recipient was delivered, relayed or expanded.
    Success,
}

fn kind(recipients: &[FailedRecipient]) -> Kind {
    if recipients.is_empty() {
        Kind::Failure
    } else if recipients.iter().all(|r| r.action == Action::Delayed) {
        Kind::Delay
    } else if recipients.iter().all(|r| {
        matches!(
            r.action,
            Action::Delivered | Action::Relayed | Action::Expanded
        )
    }) {
        Kind::Success
    } else {
        Kind::Failure
    }
}

/// Renders the delivery status notification for `input` as a complete
/// RFC 5322 message with CRLF line ends, ready to be sent from `<>` to
/// `input.original_sender` (see the module documentation for its shape).
///
/// The subject is `Undelivered Mail Returned to Sender`, or
/// `Delayed Mail (still being retried)` when every recipient is
/// [`Action::Delayed`], or `Successful Mail Delivery Report` when every
/// one was delivered, relayed or expanded. The `Message-ID` and the MIME
/// boundary derive from `now` and a hash of the input; the boundary is
/// checked against the content and changed until it occurs nowhere in it.
/// When the returned original holds 8-bit octets, the result does too and
/// must be sent with `BODY=8BITMIME`.
pub fn render_bounce(input: &BounceInput) -> Vec<u8> {
    let mut host = clean_host(input.reporting_mta);
    if host.is_empty() {
        host = "localhost".to_owned();
    }
    let mut id_domain = clean_host(input.message_id_domain);
    if id_domain.is_empty() {
        id_domain = host.clone();
    }
    let kind = kind(input.recipients);
    let hash = input_hash(input);

    let human = human_part(input, &host, kind);
    let status = status_part(input, &host);
    let returned: &[u8] = match input.ret {
        Ret::Full => input.original,
        Ret::Headers => header_section(input.original),
    };
    let human_8bit = !human.is_ascii();
    let returned_8bit = !returned.is_ascii();

    let boundary = choose_boundary(hash, &[returned, human.as_bytes(), status.as_bytes()]);

    let (secs, nanos) = unix_seconds(input.now);
    let mut h = String::new();
    push_field(&mut h, "Date", &rfc5322_date(input.now));
    push_field(
        &mut h,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    push_field(&mut h, "To", &format!("<{}>", clean(input.original_sender)));
    let subject = match kind {
        Kind::Failure => "Undelivered Mail Returned to Sender",
        Kind::Delay => "Delayed Mail (still being retried)",
        Kind::Success => "Successful Mail Delivery Report",
    };
    push_field(&mut h, "Subject", subject);
    push_field(
        &mut h,
        "Message-ID",
        &format!("<{secs}.{nanos:09}.{hash:016x}@{id_domain}>"),
    );
    push_field(&mut h, "Auto-Submitted", "auto-replied");
    push_field(&mut h, "MIME-Version", "1.0");
    push_field(
        &mut h,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    let top_cte = if human_8bit || returned_8bit {
        "8bit"
    } else {
        "7bit"
    };
    push_field(&mut h, "Content-Transfer-Encoding", top_cte);
    h.push_str("\r\n");
    h.push_str("This is a MIME-encapsulated message.\r\n");

    // Part 1: explanation.
    let _ = write!(h, "\r\n--{boundary}\r\n");
    push_field(&mut h, "Content-Description", "Notification");
    if human_8bit {
        push_field(&mut h, "Content-Type", "text/plain; charset=utf-8");
        push_field(&mut h, "Content-Transfer-Encoding", "8bit");
    } else {
        push_field(&mut h, "Content-Type", "text/plain; charset=us-ascii");
    }
    h.push_str("\r\n");
    h.push_str(&human);

    // Part 2: delivery status.
    let _ = write!(h, "\r\n--{boundary}\r\n");
    push_field(&mut h, "Content-Description", "Delivery report");
    push_field(&mut h, "Content-Type", "message/delivery-status");
    h.push_str("\r\n");
    h.push_str(&status);

    // Part 3: the original, whole or headers only.
    let _ = write!(h, "\r\n--{boundary}\r\n");
    match input.ret {
        Ret::Full => {
            push_field(&mut h, "Content-Description", "Undelivered Message");
            push_field(&mut h, "Content-Type", "message/rfc822");
        }
        Ret::Headers => {
            push_field(&mut h, "Content-Description", "Undelivered Message Headers");
            push_field(&mut h, "Content-Type", "text/rfc822-headers");
        }
    }
    if returned_8bit {
        push_field(&mut h, "Content-Transfer-Encoding", "8bit");
    }
    h.push_str("\r\n");

    let mut out = h.into_bytes();
    out.reserve(returned.len() + boundary.len() + 10);
    out.extend_from_slice(returned);
    // The CRLF before the closing delimiter belongs to the delimiter
    // (RFC 2046 5.1.1), so the part's content is `returned` exactly.
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    use std::time::Duration;

    /// 2026-12-03T13:42:36Z
    const T: u64 = 1_796_305_356;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const ORIGINAL: &[u8] =
        b"Received: from a.example by b.example; Thu, 03 Dec 2026 13:00:00 +0000\r\n\
From: Alice <alice@example.org>\r\n\
To: bob@example.net, carol@example.net\r\n\
Subject: Lunch\r\n\
Message-ID: <lunch-1@example.org>\r\n\
\r\n\
Shall we meet at noon?\r\n\
BODY-ONLY-MARKER\r\n";

    fn failed(addr: &'static str) -> FailedRecipient<'static> {
        FailedRecipient {
            final_recipient: addr,
            original_recipient: None,
            action: Action::Failed,
            status: (5, 1, 1),
            remote_mta: Some("dns;mx.example.net"),
            diagnostic: Some("smtp; 550 5.1.1 No such user"),
            last_attempt: Some(at(T - 60)),
            will_retry_until: None,
        }
    }

    fn input<'a>(recipients: &'a [FailedRecipient<'a>], ret: Ret) -> BounceInput<'a> {
        BounceInput {
            reporting_mta: "relay.example.org",
            original_sender: "alice@example.org",
            envid: Some("QQ314159"),
            arrival: at(T - 3600),
            now: at(T),
            recipients,
            original: ORIGINAL,
            ret,
            message_id_domain: "relay.example.org",
        }
    }

    fn lines(b: &[u8]) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
        assert_eq!(v.pop(), Some(&b""[..]), "ends with a line end");
        v
    }

    /// Every line ends in CRLF (no bare CR or LF) and is at most 998 octets.
    fn assert_well_formed(b: &[u8]) {
        for line in lines(b) {
            let line = line.strip_suffix(b"\r").expect("CRLF line end");
            assert!(!line.contains(&b'\r'), "bare CR in {line:?}");
            assert!(line.len() <= MAX_LINE, "line of {} octets", line.len());
        }
    }

    /// The names of the top-level header fields, in order.
    fn header_names(b: &[u8]) -> Vec<String> {
        let head = header_section(b);
        lines(head)
            .into_iter()
            .filter(|l| !l.is_empty() && l != b"\r" && l[0] != b' ' && l[0] != b'\t')
            .map(|l| {
                let l = String::from_utf8_lossy(l);
                l.split_once(':').expect("a field").0.to_owned()
            })
            .collect()
    }

    /// The raw (undecoded) content of MIME part `i` of the parsed message.
    fn raw_part<'a>(msg: &'a [u8], p: &mail_parser::MessagePart) -> &'a [u8] {
        &msg[p.raw_body_offset() as usize..p.raw_end_offset() as usize]
    }

    /// Splits a delivery-status body into groups of unfolded fields.
    fn groups(body: &str) -> Vec<Vec<(String, String)>> {
        let unfolded = body.replace("\r\n ", " ");
        unfolded
            .split("\r\n\r\n")
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                g.split("\r\n")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (n, v) = l.split_once(':').expect("field");
                        (n.to_owned(), v.trim().to_owned())
                    })
                    .collect()
            })
            .collect()
    }

    fn boundary_of(out: &[u8]) -> String {
        let msg = MessageParser::default().parse(out).expect("parses");
        msg.root_part()
            .content_type()
            .and_then(|ct| ct.attribute("boundary"))
            .expect("boundary")
            .to_owned()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn bounce_null_sender_only() {
        assert!(is_bounce_sender(""));
        assert!(is_bounce_sender("<>"));
        assert!(is_bounce_sender("  "));
        assert!(!is_bounce_sender("MAILER-DAEMON@example.org"));
        assert!(!is_bounce_sender("mailer-daemon"));
        assert!(!is_bounce_sender("alice@example.org"));
    }

    #[test]
    fn bounce_header_section() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n\r\n"), b"A: 1\r\n\r\n");
        assert_eq!(header_section(b"A: 1\r\nB: 2\r\n"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(header_section(b"A: 1"), b"A: 1");
        assert_eq!(header_section(b"\r\nbody\r\n"), b"\r\n");
        assert_eq!(header_section(b""), b"");
        assert_eq!(header_section(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n\n");
        // A folded header is still header.
        assert_eq!(
            header_section(b"A: 1\r\n 2\r\n\r\nx"),
            b"A: 1\r\n 2\r\n\r\n"
        );
    }

    #[test]
    fn bounce_structure_headers_only() {
        let mut orcpt = failed("bob@example.net");
        orcpt.original_recipient = Some("rfc822;Bob@Example.NET");
        let rcpts = [orcpt, {
            let mut r = failed("carol@example.net");
            r.status = (5, 4, 7);
            r.remote_mta = None;
            r.diagnostic = Some("connection timed out");
            r.last_attempt = None;
            r
        }];
        let out = render_bounce(&input(&rcpts, Ret::Headers));
        assert_well_formed(&out);
        assert_eq!(
            header_names(&out),
            [
                "Date",
                "From",
                "To",
                "Subject",
                "Message-ID",
                "Auto-Submitted",
                "MIME-Version",
                "Content-Type",
                "Content-Transfer-Encoding"
            ]
        );

        let msg = MessageParser::default().parse(&out).expect("parses");
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(
            msg.date().map(|d| d.to_rfc3339()).as_deref(),
            Some("2026-12-03T13:42:36Z")
        );
        let from = msg.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay.example.org"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        let to = msg.to().and_then(|a| a.first()).expect("to");
        assert_eq!(to.address(), Some("alice@example.org"));
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        let id = msg.message_id().expect("message id");
        assert!(id.ends_with("@relay.example.org"), "{id}");

        let root = msg.root_part();
        let ct = root.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let boundary = ct.attribute("boundary").expect("boundary").to_owned();
        assert!(!contains(ORIGINAL, boundary.as_bytes()));
        let ids = match &root.body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("not multipart: {other:?}"),
        };
        assert_eq!(ids.len(), 3);
        let parts: Vec<_> = ids.iter().map(|&i| msg.part(i).expect("part")).collect();
        let types: Vec<String> = parts
            .iter()
            .map(|p| {
                let ct = p.content_type().expect("part type");
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        // 1: names each recipient and reason.
        let text = String::from_utf8(raw_part(&out, parts[0]).to_vec()).unwrap();
        assert!(
            text.contains("<bob@example.net>: delivery failed permanently"),
            "{text}"
        );
        assert!(
            text.contains("originally addressed to <Bob@Example.NET>"),
            "{text}"
        );
        assert!(
            text.contains("    mx.example.net said: 550 5.1.1 No such user\r\n"),
            "{text}"
        );
        assert!(text.contains("<carol@example.net>"), "{text}");
        assert!(text.contains("5.4.7 (delivery time expired)"), "{text}");
        assert!(
            text.contains("    reason: connection timed out\r\n"),
            "{text}"
        );
        // Paragraphs wrap at the margin, within 78 columns.
        assert!(text.lines().all(|l| l.len() <= SOFT_LINE), "{text}");

        // 2: the fields, group by group.
        let ds = String::from_utf8(raw_part(&out, parts[1]).to_vec()).unwrap();
        assert_eq!(
            groups(&ds),
            vec![
                pairs(&[
                    ("Reporting-MTA", "dns;relay.example.org"),
                    ("Original-Envelope-Id", "QQ314159"),
                    ("Arrival-Date", "Thu, 03 Dec 2026 12:42:36 +0000"),
                ]),
                pairs(&[
                    ("Original-Recipient", "rfc822;Bob@Example.NET"),
                    ("Final-Recipient", "rfc822;bob@example.net"),
                    ("Action", "failed"),
                    ("Status", "5.1.1"),
                    ("Remote-MTA", "dns;mx.example.net"),
                    ("Diagnostic-Code", "smtp; 550 5.1.1 No such user"),
                    ("Last-Attempt-Date", "Thu, 03 Dec 2026 13:41:36 +0000"),
                ]),
                pairs(&[
                    ("Final-Recipient", "rfc822;carol@example.net"),
                    ("Action", "failed"),
                    ("Status", "5.4.7"),
                    ("Diagnostic-Code", "x-smtplink; connection timed out"),
                ]),
            ]
        );
        // Exactly one blank line between groups, none after the last.
        assert!(ds.starts_with("Reporting-MTA: dns;relay.example.org\r\n"));
        assert!(ds.ends_with("x-smtplink; connection timed out\r\n"));
        assert_eq!(ds.matches("\r\n\r\n").count(), 2);

        // 3: the header section only, exactly.
        assert_eq!(raw_part(&out, parts[2]), header_section(ORIGINAL));
        assert!(!contains(&out, b"Shall we meet"));
        assert!(!contains(&out, b"BODY-ONLY-MARKER"));
        assert!(contains(&out, b"Subject: Lunch\r\n"));
        assert!(!contains(&out, b"8bit"));
    }

    #[test]
    fn bounce_full_returns_whole_message() {
        let rcpts = [failed("bob@example.net")];
        let out = render_bounce(&input(&rcpts, Ret::Full));
        assert_well_formed(&out);
        let msg = MessageParser::default().parse(&out).expect("parses");
        let ids = match &msg.root_part().body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("not multipart: {other:?}"),
        };
        assert_eq!(ids.len(), 3);
        let third = msg.part(ids[2]).unwrap();
        let ct = third.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("message", Some("rfc822")));
        assert_eq!(raw_part(&out, third), ORIGINAL);
        let inner = third.message().expect("nested message");
        assert_eq!(inner.subject(), Some("Lunch"));
        assert!(inner.body_text(0).unwrap().contains("BODY-ONLY-MARKER"));
        assert!(!contains(&out, b"Content-Transfer-Encoding: 8bit"));
    }

    #[test]
    fn bounce_eight_bit_original_is_labelled() {
        let original = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve body\r\n".as_bytes();
        let rcpts = [failed("bob@example.net")];
        let mut inp = input(&rcpts, Ret::Full);
        inp.original = original;
        let out = render_bounce(&inp);
        assert_well_formed(&out);
        let head = String::from_utf8_lossy(header_section(&out)).into_owned();
        assert!(
            head.contains("Content-Transfer-Encoding: 8bit\r\n"),
            "{head}"
        );
        let msg = MessageParser::default().parse(&out).unwrap();
        let ids = match &msg.root_part().body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("{other:?}"),
        };
        let third = msg.part(ids[2]).unwrap();
        assert_eq!(raw_part(&out, third), original);
        assert!(third
            .headers()
            .iter()
            .any(|h| h.name().eq_ignore_ascii_case("Content-Transfer-Encoding")));
        // The delivery-status part stays 7-bit.
        let ds = raw_part(&out, msg.part(ids[1]).unwrap());
        assert!(ds.is_ascii());
    }

    #[test]
    fn bounce_delayed_subject_and_fields() {
        let rcpts = [FailedRecipient {
            final_recipient: "rfc822;bob@example.net",
            original_recipient: Some("bob@example.net"),
            action: Action::Delayed,
            status: (4, 4, 1),
            remote_mta: Some("tcp://127.0.0.1:2526"),
            diagnostic: Some("421 4.4.1 try later"),
            last_attempt: Some(at(T - 10)),
            will_retry_until: Some(at(T + 86_400 * 4)),
        }];
        let out = render_bounce(&input(&rcpts, Ret::Headers));
        assert_well_formed(&out);
        let msg = MessageParser::default().parse(&out).unwrap();
        assert_eq!(msg.subject(), Some("Delayed Mail (still being retried)"));
        let ids = match &msg.root_part().body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("{other:?}"),
        };
        let ds = String::from_utf8(raw_part(&out, msg.part(ids[1]).unwrap()).to_vec()).unwrap();
        assert_eq!(
            groups(&ds)[1],
            pairs(&[
                ("Original-Recipient", "rfc822;bob@example.net"),
                ("Final-Recipient", "rfc822;bob@example.net"),
                ("Action", "delayed"),
                ("Status", "4.4.1"),
                ("Remote-MTA", "x-smtplink;tcp://127.0.0.1:2526"),
                ("Diagnostic-Code", "smtp; 421 4.4.1 try later"),
                ("Last-Attempt-Date", "Thu, 03 Dec 2026 13:42:26 +0000"),
                ("Will-Retry-Until", "Mon, 07 Dec 2026 13:42:36 +0000"),
            ])
        );

        // Mixed: not "all delayed", so a failure report; Will-Retry-Until
        // only on the delayed one.
        let mut f = failed("carol@example.net");
        f.will_retry_until = Some(at(T));
        let mixed = [rcpts[0], f];
        let out = render_bounce(&input(&mixed, Ret::Headers));
        let msg = MessageParser::default().parse(&out).unwrap();
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("Will-Retry-Until:").count(), 1);

        // All delivered: a success report.
        let mut d = failed("dave@example.net");
        d.action = Action::Delivered;
        d.status = (2, 0, 0);
        let out = render_bounce(&input(&[d], Ret::Headers));
        let msg = MessageParser::default().parse(&out).unwrap();
        assert_eq!(msg.subject(), Some("Successful Mail Delivery Report"));
    }

    #[test]
    fn bounce_header_injection_is_neutralised() {
        let evil_rcpt = FailedRecipient {
            final_recipient: "bob@example.net\r\nAction: delivered",
            original_recipient: Some("rfc822;x@y\nStatus: 2.0.0"),
            action: Action::Failed,
            status: (5, 1, 1),
            remote_mta: Some("mx.example.net\r\n\r\nInjected-Group: 1"),
            diagnostic: Some("smtp; 550 no\r\nBcc: victim@example.com\r\n\r\n--fake\0\x1b"),
            last_attempt: None,
            will_retry_until: None,
        };
        let rcpts = [evil_rcpt];
        let mut inp = input(&rcpts, Ret::Headers);
        inp.original_sender = "alice@example.org>\r\nBcc: victim@example.com\r\nX-Evil: 1";
        inp.envid = Some("id\r\nSubject: pwned");
        inp.reporting_mta = "relay.example.org\r\nX-Evil: 2";
        inp.message_id_domain = "d.example\r\nX-Evil: 3";
        let out = render_bounce(&inp);
        assert_well_formed(&out);
        assert_eq!(
            header_names(&out),
            [
                "Date",
                "From",
                "To",
                "Subject",
                "Message-ID",
                "Auto-Submitted",
                "MIME-Version",
                "Content-Type",
                "Content-Transfer-Encoding"
            ]
        );
        let msg = MessageParser::default().parse(&out).unwrap();
        assert!(msg.header_raw("Bcc").is_none());
        assert!(msg.header_raw("X-Evil").is_none());
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let ids = match &msg.root_part().body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ids.len(), 3);
        let ds = String::from_utf8(raw_part(&out, msg.part(ids[1]).unwrap()).to_vec()).unwrap();
        let g = groups(&ds);
        assert_eq!(g.len(), 2, "{ds}");
        let names: Vec<&str> = g[1].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Original-Recipient",
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code"
            ]
        );
        assert_eq!(g[1][2].1, "failed");
        assert_eq!(g[1][3].1, "5.1.1");
        assert_eq!(g[1][1].1, "rfc822;bob@example.net Action: delivered");
        let names0: Vec<&str> = g[0].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names0,
            ["Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"]
        );
        // No line anywhere in our own text starts with an injected name.
        for line in lines(&out) {
            for bad in [&b"Bcc:"[..], b"X-Evil:", b"Injected-Group:", b"--fake"] {
                assert!(
                    !line.starts_with(bad),
                    "{:?}",
                    String::from_utf8_lossy(line)
                );
            }
        }
        assert!(!out.contains(&0) && !out.contains(&0x1b));
    }

    #[test]
    fn bounce_boundary_regenerated_on_collision() {
        let first = choose_boundary(42, &[]);
        assert_eq!(first, choose_boundary(42, &[b"unrelated"]));
        // Content holding the first candidate forces another one.
        let text = format!("--{first}\r\n");
        let second = choose_boundary(42, &[b"x", text.as_bytes()]);
        assert_ne!(first, second);
        // And holding both forces a third.
        let both = format!("{first} {second}");
        let third = choose_boundary(42, &[both.as_bytes()]);
        assert!(third != first && third != second);
        for b in [&first, &second, &third] {
            assert!(b.len() <= 70 && b.bytes().all(|c| c.is_ascii_graphic()));
        }
    }

    #[test]
    fn bounce_boundary_absent_from_content() {
        let rcpts = [failed("bob@example.net")];
        let plain = render_bounce(&input(&rcpts, Ret::Full));
        let b0 = boundary_of(&plain);
        // Originals and diagnostics that contain earlier boundaries, as
        // delimiter lines: whatever is chosen occurs only in the
        // Content-Type parameter and our four delimiter lines.
        let original = format!("Subject: x\r\n\r\n--{b0}\r\nbody\r\n--{b0}--\r\n").into_bytes();
        let diag = format!("550 --{b0}");
        let mut r = failed("bob@example.net");
        r.diagnostic = Some(&diag);
        let rcpts2 = [r];
        for ret in [Ret::Full, Ret::Headers] {
            let mut inp = input(&rcpts2, ret);
            inp.original = &original;
            let out = render_bounce(&inp);
            assert_well_formed(&out);
            let b = boundary_of(&out);
            assert!(!contains(&original, b.as_bytes()));
            let text = String::from_utf8_lossy(&out);
            assert_eq!(text.matches(&b).count(), 5, "{text}");
            assert_eq!(text.matches(&format!("--{b}")).count(), 4);
            let msg = MessageParser::default().parse(&out).unwrap();
            let ids = match &msg.root_part().body {
                PartType::Multipart(ids) => ids.clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(ids.len(), 3);
            if ret == Ret::Full {
                assert_eq!(raw_part(&out, msg.part(ids[2]).unwrap()), &original[..]);
            }
        }
    }

    #[test]
    fn bounce_long_values_are_folded() {
        let long_diag = format!("550 5.7.1 {}", "word ".repeat(400));
        let no_space = "x".repeat(3000);
        let long_addr = format!("{}@example.net", "a".repeat(1500));
        let rcpts = [FailedRecipient {
            final_recipient: &long_addr,
            original_recipient: None,
            action: Action::Failed,
            status: (5, 7, 1),
            remote_mta: Some(&no_space),
            diagnostic: Some(&long_diag),
            last_attempt: None,
            will_retry_until: None,
        }];
        let mut inp = input(&rcpts, Ret::Headers);
        inp.original_sender = &long_addr;
        let out = render_bounce(&inp);
        assert_well_formed(&out);
        let msg = MessageParser::default().parse(&out).unwrap();
        let ids = match &msg.root_part().body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ids.len(), 3);
        let ds = String::from_utf8(raw_part(&out, msg.part(ids[1]).unwrap()).to_vec()).unwrap();
        let g = groups(&ds);
        let diag = &g[1].iter().find(|(n, _)| n == "Diagnostic-Code").unwrap().1;
        // Folding at spaces loses nothing.
        assert_eq!(diag, &format!("smtp; {}", long_diag.trim_end()));
        // Folded lines stay near 78 octets when there are spaces.
        for line in ds.split("\r\n").filter(|l| l.contains("word")) {
            assert!(line.len() <= SOFT_LINE, "{line}");
        }
    }

    #[test]
    fn bounce_non_ascii_addresses() {
        let rcpts = [FailedRecipient {
            final_recipient: "j\u{f6}rg@b\u{fc}cher.example",
            original_recipient: Some("utf-8;j\u{f6}rg+x@b\u{fc}cher.example"),
            action: Action::Failed,
            status: (5, 1, 1),
            remote_mta: None,
            diagnostic: Some("550 unbekannt: j\u{f6}rg"),
            last_attempt: None,
            will_retry_until: None,
        }];
        let out = render_bounce(&input(&rcpts, Ret::Headers));
        assert_well_formed(&out);
        let msg = MessageParser::default().parse(&out).unwrap();
        let ids = match &msg.root_part().body {
            PartType::Multipart(ids) => ids.clone(),
            other => panic!("{other:?}"),
        };
        let text_part = msg.part(ids[0]).unwrap();
        assert_eq!(
            text_part.content_type().unwrap().attribute("charset"),
            Some("utf-8")
        );
        let ds = raw_part(&out, msg.part(ids[1]).unwrap());
        assert!(ds.is_ascii());
        let g = groups(std::str::from_utf8(ds).unwrap());
        assert_eq!(g[1][0].1, "utf-8;j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.example");
        assert_eq!(g[1][1].1, "utf-8;j\\x{F6}rg@b\\x{FC}cher.example");
        assert_eq!(g[1][4].1, "smtp; 550 unbekannt: j\\x{F6}rg");
    }

    #[test]
    fn bounce_message_id_differs_with_time_and_input() {
        let rcpts = [failed("bob@example.net")];
        let id = |inp: &BounceInput| {
            let out = render_bounce(inp);
            let msg = MessageParser::default().parse(&out).unwrap();
            msg.message_id().unwrap().to_owned()
        };
        let a = input(&rcpts, Ret::Headers);
        let mut b = a;
        b.now = at(T) + Duration::from_nanos(1);
        let rcpts2 = [failed("carol@example.net")];
        let c = input(&rcpts2, Ret::Headers);
        let ids = [id(&a), id(&b), id(&c)];
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        // Same input, same id: the function is pure.
        assert_eq!(id(&a), ids[0]);
        assert_eq!(render_bounce(&a), render_bounce(&a));
    }

    #[test]
    fn bounce_empty_original_and_odd_hosts() {
        let rcpts = [failed("bob@example.net")];
        for ret in [Ret::Full, Ret::Headers] {
            let mut inp = input(&rcpts, ret);
            inp.original = b"";
            inp.reporting_mta = "\r\n";
            inp.message_id_domain = "";
            inp.envid = Some("\r\n");
            let out = render_bounce(&inp);
            assert_well_formed(&out);
            let msg = MessageParser::default().parse(&out).unwrap();
            assert_eq!(
                msg.from().and_then(|a| a.first()).and_then(|a| a.address()),
                Some("MAILER-DAEMON@localhost")
            );
            assert!(msg.message_id().unwrap().ends_with("@localhost"));
            assert!(!contains(&out, b"Original-Envelope-Id"));
        }
    }

    #[test]
    fn bounce_engine_ret_converts() {
        assert_eq!(Ret::from(smtplink_engine::params::Ret::Full), Ret::Full);
        assert_eq!(Ret::from(smtplink_engine::params::Ret::Hdrs), Ret::Headers);
        assert_eq!(Ret::default(), Ret::Headers);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn bounce_any_input_stays_well_formed(
            sender in "\\PC{0,40}|[\\x00-\\x7f]{0,40}",
            diag in "[\\x00-\\x7f]{0,300}|\\PC{0,300}",
            mta in "[\\x00-\\x7f]{0,60}",
            rcpt in "[\\x00-\\x7f]{0,60}",
            envid in "[\\x00-\\x7f]{0,60}",
            word in "[a-z]{0,2000}",
        ) {
            let long = format!("{diag} {word} {diag}");
            let rcpts = [FailedRecipient {
                final_recipient: &rcpt,
                original_recipient: Some(&rcpt),
                action: Action::Failed,
                status: (5, 0, 0),
                remote_mta: Some(&mta),
                diagnostic: Some(&long),
                last_attempt: Some(at(T)),
                will_retry_until: None,
            }];
            let mut inp = input(&rcpts, Ret::Headers);
            inp.original_sender = &sender;
            inp.envid = Some(&envid);
            let out = render_bounce(&inp);
            assert_well_formed(&out);
            proptest::prop_assert_eq!(header_names(&out).len(), 9);
            let msg = MessageParser::default().parse(&out).unwrap();
            let ids = match &msg.root_part().body {
                PartType::Multipart(ids) => ids.clone(),
                other => panic!("{other:?}"),
            };
            proptest::prop_assert_eq!(ids.len(), 3);
            let ds = String::from_utf8(raw_part(&out, msg.part(ids[1]).unwrap()).to_vec()).unwrap();
            let g = groups(&ds);
            proptest::prop_assert_eq!(g.len(), 2);
            proptest::prop_assert!(g[1].iter().any(|(n, v)| n == "Action" && v == "failed"));
        }
    }

    /// A second, independent parser (Python's `email` package) agrees on
    /// the structure.
    #[test]
    fn bounce_python_email_agrees() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let script = r#"
import email, sys
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.compat32)
assert not m.defects, m.defects
assert m.get_content_type() == "multipart/report", m.get_content_type()
assert m.get_param("report-type") == "delivery-status"
assert m["Subject"] == "Undelivered Mail Returned to Sender", m["Subject"]
assert m["Auto-Submitted"] == "auto-replied"
assert m["Bcc"] is None
parts = m.get_payload()
assert len(parts) == 3, len(parts)
assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"], [p.get_content_type() for p in parts]
for p in parts:
    assert not p.defects, p.defects
ds = parts[1].get_payload()
# compat32 parses message/delivery-status into a list of header blocks.
assert len(ds) == 3, len(ds)
assert ds[0]["Reporting-MTA"] == "dns;relay.example.org"
assert ds[0]["Original-Envelope-Id"] == "QQ314159"
assert ds[1]["Final-Recipient"] == "rfc822;bob@example.net"
assert ds[1]["Action"] == "failed"
assert ds[1]["Status"] == "5.1.1"
assert ds[2]["Final-Recipient"] == "rfc822;carol@example.net"
assert ds[2]["Bcc"] is None
hdrs = parts[2].get_payload()
assert "Subject: Lunch" in hdrs and "Shall we meet" not in hdrs
print("ok")
"#;
        let mut carol = failed("carol@example.net");
        carol.diagnostic = Some("smtp; 550 no\r\nBcc: victim@example.com");
        let rcpts = [failed("bob@example.net"), carol];
        let out = render_bounce(&input(&rcpts, Ret::Headers));
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("python3 is needed in CI: {e}");
                }
                eprintln!("SKIPPED bounce_python_email_agrees: python3 not found ({e})");
                return;
            }
        };
        child.stdin.take().unwrap().write_all(&out).unwrap();
        let result = child.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "python3 disagrees:\n{}\n{}",
            String::from_utf8_lossy(&result.stderr),
            String::from_utf8_lossy(&out)
        );
        assert_eq!(String::from_utf8_lossy(&result.stdout).trim(), "ok");
    }
}
