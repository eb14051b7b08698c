//! Mailboxes, paths and domains (RFC 5321 4.1.2, 4.1.3; RFC 6531 3.3).
//!
//! Parsing is strict about the grammar and lenient only where the RFC tells a
//! server to be: a source route (`<@a,@b:user@c>`) is accepted and dropped
//! (RFC 5321 4.1.1.3 and appendix C). UTF-8 in local parts and domains is
//! accepted only when the caller says SMTPUTF8 is in force.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::AddressError;

/// Longest local part, in octets (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including the angle brackets, in octets (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Longest label in a domain name (RFC 1035 2.3.4).
const MAX_LABEL: usize = 63;

/// The domain part of a mailbox, or the argument of EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name such as `mail.example.org` (may hold U-labels under SMTPUTF8).
    Name(String),
    /// `[192.0.2.1]`
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`
    Ipv6(Ipv6Addr),
    /// `[tag:content]`, a General-address-literal.
    General {
        /// The Standardized-tag.
        tag: String,
        /// What follows the colon.
        content: String,
    },
}

impl Domain {
    /// Parses a domain or an address literal.
    pub fn parse(input: &str, utf8: bool) -> Result<Self, AddressError> {
        if input.starts_with('[') {
            return parse_address_literal(input);
        }
        if input.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        if input.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong { len: input.len() });
        }
        for label in input.split('.') {
            check_label(label, utf8)?;
        }
        Ok(Domain::Name(input.to_string()))
    }

    /// Whether a name holds non-ASCII characters (a U-label).
    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(n) => n.is_ascii(),
            _ => true,
        }
    }

    /// The domain with ASCII letters lower-cased (domains compare without
    /// regard to case, RFC 5321 2.4).
    pub fn to_lowercase(&self) -> String {
        match self {
            Domain::Name(n) => n.to_lowercase(),
            other => other.to_string(),
        }
    }
}

fn check_label(label: &str, utf8: bool) -> Result<(), AddressError> {
    let bad = || AddressError::BadDomain {
        label: label.to_string(),
    };
    if label.is_empty() || label.len() > MAX_LABEL {
        return Err(bad());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || (utf8 && !c.is_ascii());
    if !label.chars().all(ok_char) || label.starts_with('-') || label.ends_with('-') {
        return Err(bad());
    }
    Ok(())
}

fn parse_address_literal(input: &str) -> Result<Domain, AddressError> {
    let bad = || AddressError::BadAddressLiteral {
        literal: input.to_string(),
    };
    let inner = input
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(bad)?;
    if let Some((tag, content)) = inner.split_once(':') {
        if tag.eq_ignore_ascii_case("IPv6") {
            return content.parse().map(Domain::Ipv6).map_err(|_| bad());
        }
        // General-address-literal: Standardized-tag ":" 1*dcontent.
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !tag.ends_with('-');
        let content_ok = !content.is_empty()
            && content
                .bytes()
                .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
        if tag_ok && content_ok {
            return Ok(Domain::General {
                tag: tag.to_string(),
                content: content.to_string(),
            });
        }
        return Err(bad());
    }
    // IPv4-address-literal: Snum 3("." Snum), Snum = 1*3DIGIT (0-255).
    let octets: Vec<&str> = inner.split('.').collect();
    if octets.len() != 4 {
        return Err(bad());
    }
    let mut bytes = [0u8; 4];
    for (slot, part) in bytes.iter_mut().zip(&octets) {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        *slot = part.parse().map_err(|_| bad())?;
    }
    Ok(Domain::Ipv4(Ipv4Addr::from(bytes)))
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Domain::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// A mailbox `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part as written on the wire: a Dot-string, or a
    /// Quoted-string with its quotes and backslashes.
    local_part: String,
    domain: Domain,
}

impl Mailbox {
    /// Parses `local-part@domain` (no angle brackets).
    pub fn parse(input: &str, utf8: bool) -> Result<Self, AddressError> {
        if !utf8 && !input.is_ascii() {
            return Err(AddressError::NonAscii);
        }
        let local_end = local_part_end(input, utf8)?;
        let local_part = &input[..local_end];
        if local_part.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong {
                len: local_part.len(),
            });
        }
        let domain = input[local_end..]
            .strip_prefix('@')
            .ok_or(AddressError::MissingAt)?;
        Ok(Self {
            local_part: local_part.to_string(),
            domain: Domain::parse(domain, utf8)?,
        })
    }

    /// The local part as written (quoted local parts keep their quotes).
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether the address is all ASCII (else it needs SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// Byte index where the local part ends (at the `@`), validating it.
fn local_part_end(input: &str, utf8: bool) -> Result<usize, AddressError> {
    if input.starts_with('"') {
        // Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126,
        // quoted-pairSMTP = "\" %d32-126 (RFC 5321 4.1.2), plus UTF-8 (RFC 6531).
        let bytes = input.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => return Ok(i + 1),
                b'\\' => match bytes.get(i + 1) {
                    Some(32..=126) => i += 2,
                    _ => return Err(AddressError::BadLocalPart),
                },
                32..=126 => i += 1,
                0x80.. if utf8 => i += 1,
                _ => return Err(AddressError::BadLocalPart),
            }
        }
        return Err(AddressError::BadLocalPart);
    }
    // The first "@": atext has none (a later one may be in an address literal).
    let end = input.find('@').ok_or(AddressError::MissingAt)?;
    let dot_string = &input[..end];
    // Dot-string = Atom *("." Atom), Atom = 1*atext.
    for atom in dot_string.split('.') {
        if atom.is_empty() || !atom.chars().all(|c| is_atext(c, utf8)) {
            return Err(AddressError::BadLocalPart);
        }
    }
    Ok(end)
}

/// `atext` of RFC 5322 3.2.3, extended with UTF-8 by RFC 6531 3.3.
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
}

/// The argument of MAIL FROM: a mailbox or the null path `<>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: no bounce may be sent (used by bounces themselves).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses `<>` or a path in angle brackets.
    pub fn parse(input: &str, utf8: bool) -> Result<Self, AddressError> {
        if input == "<>" {
            return Ok(ReversePath::Null);
        }
        parse_path(input, utf8).map(ReversePath::Mailbox)
    }

    /// The mailbox, unless this is the null path.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// Whether the path is all ASCII.
    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ReversePath {
    /// The address without brackets; the null path prints as an empty string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// The argument of RCPT TO: a mailbox or the special `<Postmaster>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain (RFC 5321 4.1.1.3); every server must
    /// accept it.
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Parses a path in angle brackets, or `<Postmaster>`.
    pub fn parse(input: &str, utf8: bool) -> Result<Self, AddressError> {
        if input.eq_ignore_ascii_case("<postmaster>") {
            return Ok(ForwardPath::Postmaster);
        }
        parse_path(input, utf8).map(ForwardPath::Mailbox)
    }

    /// The mailbox, unless this is the bare `<Postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ForwardPath::Postmaster => None,
            ForwardPath::Mailbox(m) => Some(m),
        }
    }

    /// Whether the path is all ASCII.
    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ForwardPath {
    /// The address without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("Postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Parses `"<" [ A-d-l ":" ] Mailbox ">"`, dropping any source route.
fn parse_path(input: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    if input.len() > MAX_PATH {
        return Err(AddressError::PathTooLong { len: input.len() });
    }
    let inner = input
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .ok_or(AddressError::MissingBrackets)?;
    let mailbox = if inner.starts_with('@') {
        // A-d-l = At-domain *( "," At-domain ); each is validated, then ignored.
        let (route, mailbox) = inner.split_once(':').ok_or(AddressError::BadSourceRoute)?;
        for at_domain in route.split(',') {
            let domain = at_domain
                .strip_prefix('@')
                .ok_or(AddressError::BadSourceRoute)?;
            Domain::parse(domain, utf8).map_err(|_| AddressError::BadSourceRoute)?;
        }
        mailbox
    } else {
        inner
    };
    Mailbox::parse(mailbox, utf8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn mbox(s: &str) -> Result<Mailbox, AddressError> {
        Mailbox::parse(s, false)
    }

    #[test]
    fn dot_strings_from_rfc5321() {
        let m = mbox("John.Smith@example.com").unwrap();
        assert_eq!(m.local_part(), "John.Smith");
        assert_eq!(m.domain(), &Domain::Name("example.com".into()));
        assert!(mbox("a!#$%&'*+-/=?^_`{|}~z@x.org").is_ok());
        for bad in [
            ".a@x", "a.@x", "a..b@x", "a b@x", "a(b)@x", "@x", "a@", "ax",
        ] {
            assert!(mbox(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn quoted_local_parts() {
        let m = mbox(r#""John Smith"@example.com"#).unwrap();
        assert_eq!(m.local_part(), r#""John Smith""#);
        assert!(mbox(r#""a\"b@c"@x.org"#).is_ok());
        assert!(mbox(r#""a@b"@x.org"#).is_ok());
        assert!(mbox(r#""unterminated@x.org"#).is_err());
        assert!(mbox("\"a\rb\"@x.org").is_err());
        assert!(mbox("\"a\\\nb\"@x.org").is_err());
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            mbox("a@[192.0.2.1]").unwrap().domain(),
            &Domain::Ipv4("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            mbox("a@[IPv6:2001:db8::1]").unwrap().domain(),
            &Domain::Ipv6("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            mbox("a@[IPv6:::ffff:192.0.2.1]")
                .unwrap()
                .domain()
                .to_string(),
            "[IPv6:::ffff:192.0.2.1]"
        );
        assert!(matches!(
            mbox("a@[x-tag:stuff]").unwrap().domain(),
            Domain::General { .. }
        ));
        for bad in [
            "a@[256.1.1.1]",
            "a@[1.2.3]",
            "a@[IPv6:zz::1]",
            "a@[1.2.3.4",
            "a@[]",
        ] {
            assert!(mbox(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domain_labels() {
        for bad in ["a@-x.org", "a@x-.org", "a@x..org", "a@x_y.org", "a@x.org."] {
            assert!(mbox(bad).is_err(), "{bad}");
        }
        let long_label = "a".repeat(64);
        assert!(mbox(&format!("a@{long_label}.org")).is_err());
    }

    #[test]
    fn length_limits_rfc5321_4_5_3_1() {
        let local = "a".repeat(MAX_LOCAL_PART);
        assert!(mbox(&format!("{local}@x.org")).is_ok());
        let local = "a".repeat(MAX_LOCAL_PART + 1);
        assert!(matches!(
            mbox(&format!("{local}@x.org")),
            Err(AddressError::LocalPartTooLong { .. })
        ));
        let path = format!("<a@{}.org>", "b.".repeat(130));
        assert!(ReversePath::parse(&path, false).is_err());
    }

    #[test]
    fn null_and_postmaster_paths() {
        assert_eq!(ReversePath::parse("<>", false).unwrap(), ReversePath::Null);
        assert_eq!(
            ForwardPath::parse("<postMaster>", false).unwrap(),
            ForwardPath::Postmaster
        );
        assert!(ForwardPath::parse("<>", false).is_err());
        assert!(matches!(
            ForwardPath::parse("<Postmaster@x.org>", false).unwrap(),
            ForwardPath::Mailbox(_)
        ));
    }

    #[test]
    fn source_routes_are_accepted_and_dropped() {
        let p = ForwardPath::parse("<@hosta.int,@jkl.org:userc@d.bar.org>", false).unwrap();
        assert_eq!(p.to_string(), "userc@d.bar.org");
        assert!(ForwardPath::parse("<@hosta.int userc@d.bar.org>", false).is_err());
        assert!(ForwardPath::parse("<@:u@d.org>", false).is_err());
    }

    #[test]
    fn utf8_only_with_smtputf8() {
        assert_eq!(mbox("用户@例子.广告"), Err(AddressError::NonAscii));
        let m = Mailbox::parse("用户@例子.广告", true).unwrap();
        assert!(!m.is_ascii());
        assert!(Mailbox::parse("\"jösé\"@x.org", true).is_ok());
    }

    #[test]
    fn brackets_required() {
        assert_eq!(
            ReversePath::parse("a@b.org", false),
            Err(AddressError::MissingBrackets)
        );
    }
}
