//! ESMTP parameters of MAIL and RCPT (RFC 5321 4.1.2 `Mail-parameters`).
//!
//! Only parameters of advertised extensions are accepted: SIZE (RFC 1870),
//! BODY (RFC 6152) and SMTPUTF8 (RFC 6531). Anything else earns a 555.

use std::fmt;

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
}

/// Parameters of a RCPT command. No extension we offer defines one yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {}

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
                    params.size = Some(v.parse().map_err(|_| ParamError::BadValue(original))?);
                }
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                    params.body = Some(Body::SevenBit)
                }
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    params.body = Some(Body::EightBitMime)
                }
                ("SMTPUTF8", None) => params.smtputf8 = true,
                ("SIZE" | "BODY" | "SMTPUTF8", _) => return Err(ParamError::BadValue(original)),
                _ => return Err(ParamError::Unrecognized(original)),
            }
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
    }
}

impl RcptParams {
    /// Parses RCPT parameters; we advertise none, so any is a 555.
    pub fn parse(input: &str) -> Result<Self, ParamError> {
        match split_params(input)?.first() {
            None => Ok(RcptParams {}),
            Some(p) => Err(ParamError::Unrecognized(p.keyword.to_string())),
        }
    }
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
            RcptParams::parse("NOTIFY=NEVER"),
            Err(ParamError::Unrecognized(_))
        ));
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
