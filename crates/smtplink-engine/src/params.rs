//! ESMTP parameters of MAIL and RCPT (RFC 5321 4.1.2 `Mail-parameters`).
//!
//! Only parameters of advertised extensions are accepted: SIZE (RFC 1870),
//! BODY (RFC 6152), SMTPUTF8 (RFC 6531), the DSN parameters RET, ENVID,
//! NOTIFY and ORCPT (RFC 3461), and AUTH (RFC 4954 section 5). Anything
//! else earns a 555.
//!
//! xtext values (ENVID, ORCPT) are decoded here, and a decoded value with a
//! control character (CR, LF, NUL...) is refused with 501, so nothing a
//! peer sends can split a line in a spool record or a header later.

use std::fmt;

use crate::address::{Mailbox, ReversePath};

/// The BODY parameter's value (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
}

/// Parameters of a MAIL command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n`: the client's estimate of the message size in octets.
    pub size: Option<u64>,
    /// `BODY=`
    pub body: Option<Body>,
    /// `SMTPUTF8`
    pub smtputf8: bool,
    /// `RET=FULL|HDRS` (RFC 3461 4.3): what a bounce should carry.
    pub ret: Option<Ret>,
    /// `ENVID=xtext` (RFC 3461 4.4), decoded.
    pub envid: Option<String>,
    /// `AUTH=xtext` (RFC 4954 section 5), decoded: who originally submitted
    /// the message, or `<>` (unknown). A server keeps a mailbox here only
    /// from an authenticated client and turns it into `<>` otherwise, as
    /// the RFC requires.
    pub auth: Option<ReversePath>,
}

/// The RET parameter's value (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// Return the whole message in a bounce.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// One NOTIFY keyword (RFC 3461 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Report success.
    Success,
    /// Report failure.
    Failure,
    /// Report delay.
    Delay,
}

/// Parameters of a RCPT command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`: `Some(vec![])` is `NEVER`; `None` means not given
    /// (RFC 3461 4.1: then FAILURE and maybe DELAY apply).
    pub notify: Option<Vec<Notify>>,
    /// `ORCPT=addr-type;xtext` (RFC 3461 4.2): the type (e.g. `rfc822`)
    /// and the decoded original recipient.
    pub orcpt: Option<(String, String)>,
}

/// Longest ENVID, in octets (RFC 3461 4.4: 100 characters).
pub const MAX_ENVID: usize = 100;
/// Longest ORCPT value, in octets (RFC 3461 4.2: 500 characters).
pub const MAX_ORCPT: usize = 500;
/// Longest AUTH value, in octets (RFC 4954 section 5: it may lengthen
/// MAIL by 500 characters).
pub const MAX_AUTH_PARAM: usize = 500;

/// Decodes xtext (RFC 3461 4): `+XX` hex escapes; a raw `+` or `=` is an
/// error, as is a decoded control character or invalid UTF-8.
pub fn xtext_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = input.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b @ 33..=126 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// Encodes xtext (RFC 3461 4): `+`, `=` and anything outside 33-126 as `+XX`.
pub fn xtext_encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// One `keyword[=value]` as it appeared on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawParam<'a> {
    /// esmtp-keyword, as sent.
    pub keyword: &'a str,
    /// esmtp-value, if any.
    pub value: Option<&'a str>,
}

/// Why a parameter list was refused; decides between 501 and 555.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// Not `keyword[=value]` per the grammar: 501.
    Syntax(String),
    /// A keyword we do not know or did not advertise: 555.
    Unrecognized(String),
    /// A known keyword with a bad value: 501.
    BadValue(String),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Syntax(p) => write!(f, "malformed parameter {p}"),
            ParamError::Unrecognized(p) => write!(f, "parameter {p} not recognized"),
            ParamError::BadValue(p) => write!(f, "bad value in parameter {p}"),
        }
    }
}

/// Splits a parameter string into `keyword[=value]` pairs.
///
/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`;
/// `esmtp-value = 1*(%d33-60 / %d62-126)`, plus UTF-8 under SMTPUTF8.
pub fn split_params(input: &str) -> Result<Vec<RawParam<'_>>, ParamError> {
    let mut out = Vec::new();
    for token in input.split(' ').filter(|t| !t.is_empty()) {
        let (keyword, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.chars().all(|c| {
                    let b = c as u32;
                    (33..=60).contains(&b) || (62..=126).contains(&b) || !c.is_ascii()
                })
        });
        if !keyword_ok || !value_ok {
            return Err(ParamError::Syntax(token.to_string()));
        }
        out.push(RawParam { keyword, value });
    }
    Ok(out)
}

impl MailParams {
    /// Parses MAIL parameters. Which ones are allowed depends on what the
    /// server advertised, so the caller filters with `allowed`.
    pub fn parse(input: &str, allowed: impl Fn(&str) -> bool) -> Result<Self, ParamError> {
        let mut params = MailParams::default();
        let mut seen: Vec<String> = Vec::new();
        for p in split_params(input)? {
            let upper = p.keyword.to_ascii_uppercase();
            let original = match p.value {
                Some(v) => format!("{}={v}", p.keyword),
                None => p.keyword.to_string(),
            };
            if !allowed(&upper) {
                return Err(ParamError::Unrecognized(original));
            }
            // A repeated parameter is ambiguous; refuse rather than guess.
            if seen.contains(&upper) {
                return Err(ParamError::BadValue(original));
            }
            seen.push(upper.clone());
            match (upper.as_str(), p.value) {
                ("SIZE", Some(v))
                    if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    // RFC 1870 3: size-value = 1*20DIGIT. A value past u64 is
                    // still a size, just one over any limit: 552, not 501.
                    params.size = Some(v.parse().unwrap_or(u64::MAX));
                }
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                    params.body = Some(Body::SevenBit)
                }
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    params.body = Some(Body::EightBitMime)
                }
                ("SMTPUTF8", None) => params.smtputf8 = true,
                ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => params.ret = Some(Ret::Full),
                ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => params.ret = Some(Ret::Hdrs),
                ("ENVID", Some(v)) if v.len() <= MAX_ENVID => {
                    params.envid = Some(xtext_decode(v).ok_or(ParamError::BadValue(original))?);
                }
                ("AUTH", Some(v)) if v.len() <= MAX_AUTH_PARAM => {
                    params.auth = Some(parse_auth_param(v).ok_or(ParamError::BadValue(original))?);
                }
                ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => {
                    return Err(ParamError::BadValue(original))
                }
                _ => return Err(ParamError::Unrecognized(original)),
            }
        }
        if !params.smtputf8 && params.auth.as_ref().is_some_and(|a| !a.is_ascii()) {
            return Err(ParamError::BadValue("AUTH".into()));
        }
        Ok(params)
    }

    /// Appends the wire form (` SIZE=n BODY=8BITMIME SMTPUTF8`) to `out`.
    pub fn write_to(&self, out: &mut String) {
        if let Some(size) = self.size {
            out.push_str(&format!(" SIZE={size}"));
        }
        match self.body {
            Some(Body::SevenBit) => out.push_str(" BODY=7BIT"),
            Some(Body::EightBitMime) => out.push_str(" BODY=8BITMIME"),
            None => {}
        }
        if self.smtputf8 {
            out.push_str(" SMTPUTF8");
        }
        match self.ret {
            Some(Ret::Full) => out.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => out.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &self.envid {
            out.push_str(" ENVID=");
            out.push_str(&xtext_encode(envid));
        }
        match &self.auth {
            Some(ReversePath::Null) => out.push_str(" AUTH=<>"),
            Some(ReversePath::Mailbox(m)) => {
                out.push_str(" AUTH=");
                out.push_str(&xtext_encode(&m.to_string()));
            }
            None => {}
        }
    }

    /// The same parameters without the DSN ones (for a next hop that does
    /// not offer DSN).
    pub fn without_dsn(&self) -> Self {
        Self {
            ret: None,
            envid: None,
            ..self.clone()
        }
    }
}

impl RcptParams {
    /// Parses RCPT parameters; NOTIFY and ORCPT only when DSN is offered.
    pub fn parse(input: &str, dsn: bool) -> Result<Self, ParamError> {
        let mut params = RcptParams::default();
        for p in split_params(input)? {
            let upper = p.keyword.to_ascii_uppercase();
            let original = match p.value {
                Some(v) => format!("{}={v}", p.keyword),
                None => p.keyword.to_string(),
            };
            match (dsn, upper.as_str(), p.value) {
                (true, "NOTIFY", Some(v)) if params.notify.is_none() => {
                    params.notify = Some(parse_notify(v).ok_or(ParamError::BadValue(original))?);
                }
                (true, "ORCPT", Some(v)) if params.orcpt.is_none() && v.len() <= MAX_ORCPT => {
                    let (kind, addr) = v
                        .split_once(';')
                        .ok_or(ParamError::BadValue(original.clone()))?;
                    let kind_ok = !kind.is_empty()
                        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    let addr = xtext_decode(addr).filter(|a| !a.is_empty());
                    match (kind_ok, addr) {
                        (true, Some(addr)) => params.orcpt = Some((kind.to_string(), addr)),
                        _ => return Err(ParamError::BadValue(original)),
                    }
                }
                (true, "NOTIFY" | "ORCPT", _) => return Err(ParamError::BadValue(original)),
                _ => return Err(ParamError::Unrecognized(original)),
            }
        }
        Ok(params)
    }

    /// Appends the wire form (` NOTIFY=... ORCPT=...`) to `out`.
    pub fn write_to(&self, out: &mut String) {
        if let Some(notify) = &self.notify {
            out.push_str(" NOTIFY=");
            if notify.is_empty() {
                out.push_str("NEVER");
            }
            let words: Vec<&str> = notify
                .iter()
                .map(|n| match n {
                    Notify::Success => "SUCCESS",
                    Notify::Failure => "FAILURE",
                    Notify::Delay => "DELAY",
                })
                .collect();
            out.push_str(&words.join(","));
        }
        if let Some((kind, addr)) = &self.orcpt {
            out.push_str(&format!(" ORCPT={kind};{}", xtext_encode(addr)));
        }
    }
}

/// The AUTH parameter's value (RFC 4954 section 5): xtext of `<>` or of a
/// mailbox. xtext decoding already refuses control characters, so no CR or
/// LF can reach a spool record or a header through it (Exim's 21Nails).
fn parse_auth_param(value: &str) -> Option<ReversePath> {
    let decoded = xtext_decode(value)?;
    if decoded == "<>" {
        return Some(ReversePath::Null);
    }
    Mailbox::parse(&decoded, true)
        .ok()
        .map(ReversePath::Mailbox)
}

/// `NEVER` or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 4.1).
fn parse_notify(value: &str) -> Option<Vec<Notify>> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for word in value.split(',') {
        let n = match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => Notify::Success,
            "FAILURE" => Notify::Failure,
            "DELAY" => Notify::Delay,
            _ => return None,
        };
        if out.contains(&n) {
            return None;
        }
        out.push(n);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn known_parameters() {
        let p = MailParams::parse("SIZE=1000 body=8bitmime SMTPUTF8", all).unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        let mut s = String::new();
        p.write_to(&mut s);
        assert_eq!(s, " SIZE=1000 BODY=8BITMIME SMTPUTF8");
    }

    /// RFC 1870 3: size-value is 1*20DIGIT, so 20 nines are a valid (huge)
    /// size that earns 552 later, not a syntax error.
    #[test]
    fn twenty_digit_size_is_valid_syntax() {
        let p = MailParams::parse("SIZE=99999999999999999999", all).unwrap();
        assert_eq!(p.size, Some(u64::MAX));
    }

    #[test]
    fn unknown_and_unadvertised_are_555() {
        assert!(matches!(
            MailParams::parse("FOO=bar", all),
            Err(ParamError::Unrecognized(_))
        ));
        assert!(matches!(
            MailParams::parse("SIZE=10", |k| k != "SIZE"),
            Err(ParamError::Unrecognized(_))
        ));
        assert!(matches!(
            RcptParams::parse("NOTIFY=NEVER", false),
            Err(ParamError::Unrecognized(_))
        ));
    }

    #[test]
    fn dsn_parameters_rfc3461() {
        let p = MailParams::parse("RET=HDRS ENVID=QQ314159+2Bx", all).unwrap();
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ314159+x"));
        let r = RcptParams::parse(
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+40example.org",
            true,
        )
        .unwrap();
        assert_eq!(r.notify, Some(vec![Notify::Success, Notify::Failure]));
        assert_eq!(r.orcpt, Some(("rfc822".into(), "Bob@example.org".into())));
        let mut s = String::new();
        r.write_to(&mut s);
        assert_eq!(s, " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@example.org");
        let never = RcptParams::parse("notify=never", true).unwrap();
        assert_eq!(never.notify, Some(vec![]));
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SOMETIMES",
            "ORCPT=rfc822",
            "ORCPT=rfc822;a+0Db",
            "ORCPT=;a",
            "NOTIFY=DELAY NOTIFY=DELAY",
        ] {
            assert!(
                matches!(RcptParams::parse(bad, true), Err(ParamError::BadValue(_))),
                "{bad}"
            );
        }
        // xtext may not smuggle a line break (the 21Nails lesson).
        for bad in [
            "ENVID=a+0D+0Ab",
            "ENVID=a+00",
            "ENVID=a=b",
            "ENVID=+4",
            "ENVID=+zz",
            "RET=ALL",
        ] {
            assert!(MailParams::parse(bad, all).is_err(), "{bad}");
        }
        let long = format!("ENVID={}", "x".repeat(MAX_ENVID + 1));
        assert!(MailParams::parse(&long, all).is_err());
    }

    /// RFC 4954 section 5, and no line break or header smuggled through
    /// the xtext (the 21Nails lesson).
    #[test]
    fn auth_parameter() {
        let p = MailParams::parse("AUTH=e+3Dmc2@example.com", all).unwrap();
        assert_eq!(p.auth.as_ref().unwrap().to_string(), "e=mc2@example.com");
        let mut s = String::new();
        p.write_to(&mut s);
        assert_eq!(s, " AUTH=e+3Dmc2@example.com");
        let p = MailParams::parse("AUTH=<>", all).unwrap();
        assert_eq!(p.auth, Some(ReversePath::Null));
        for bad in [
            "AUTH=<e+2Cvil+0D+0AX-Header>",
            "AUTH=a@b.org+0D+0AX-Injected:+20yes",
            "AUTH=a+0A@b.org",
            "AUTH=a+00@b.org",
            "AUTH=<a@b.org>",
            "AUTH=nobody",
            "AUTH=a@b.org AUTH=<>",
            "AUTH=+C3+A9@b.org",
        ] {
            assert!(
                matches!(MailParams::parse(bad, all), Err(ParamError::BadValue(_))),
                "{bad}"
            );
        }
        assert!(MailParams::parse("AUTH=+C3+A9@b.org SMTPUTF8", all).is_ok());
        let long = format!("AUTH={}@b.org", "x".repeat(MAX_AUTH_PARAM));
        assert!(MailParams::parse(&long, all).is_err());
        assert!(matches!(
            MailParams::parse("AUTH=<>", |k| k != "AUTH"),
            Err(ParamError::Unrecognized(_))
        ));
    }

    #[test]
    fn xtext_round_trips() {
        for s in ["plain", "a+b=c", "sp ace", "ünï"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn bad_values_and_syntax_are_501() {
        for bad in [
            "SIZE=abc",
            "SIZE",
            "BODY=BINARYMIME",
            "SMTPUTF8=yes",
            "SIZE=1 SIZE=2",
            "SIZE=99999999999999999999999",
        ] {
            assert!(
                matches!(MailParams::parse(bad, all), Err(ParamError::BadValue(_))),
                "{bad}"
            );
        }
        for bad in ["=x", "-A=1", "A=", "A=b=c", "A=\u{1}"] {
            assert!(
                matches!(split_params(bad), Err(ParamError::Syntax(_))),
                "{bad}"
            );
        }
    }
}
