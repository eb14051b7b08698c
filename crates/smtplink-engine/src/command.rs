//! SMTP commands (RFC 5321 4.1): parse one command line, write one.
//!
//! Parsing never fails with a Rust error the session cannot answer: a
//! [`CommandError`] carries the reply the server sends back (500, 501, 553 or
//! 555 with the matching enhanced code).

use std::fmt;

use crate::address::{ForwardPath, ReversePath};
use crate::error::AddressError;
use crate::params::{MailParams, ParamError, RcptParams};
use crate::reply::{EnhancedCode, Reply, ReplyCode};

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> [params]`
    Mail {
        /// The reverse path.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> [params]`
    Rcpt {
        /// The forward path.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY string`
    Vrfy(String),
    /// `EXPN string`
    Expn(String),
    /// `HELP [string]`
    Help(Option<String>),
    /// `TURN` (RFC 821 4.1.1): swap the client and server roles.
    Turn,
    /// `STARTTLS` (RFC 3207): start TLS on the link.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 section 4).
    Auth {
        /// The SASL mechanism name, upper-cased.
        mechanism: String,
        /// The initial response as sent (base64, or `=` for an empty one).
        initial_response: Option<InitialResponse>,
    },
}

/// An AUTH initial response as sent on the wire (base64, or `=`). It may
/// hold a password, so its `Debug` form shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct InitialResponse(pub String);

impl fmt::Debug for InitialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InitialResponse({} octets)", self.0.len())
    }
}

/// Longest SASL mechanism name (RFC 4422 3.1: 1 to 20 characters).
const MAX_MECHANISM_NAME: usize = 20;

/// What the parser needs to know about the session to judge a command.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// The session began with EHLO, so MAIL/RCPT may carry parameters.
    pub esmtp: bool,
    /// SIZE was advertised.
    pub size: bool,
    /// 8BITMIME was advertised.
    pub eightbitmime: bool,
    /// SMTPUTF8 was advertised (a MAIL with the SMTPUTF8 parameter may then
    /// carry a UTF-8 reverse path).
    pub smtputf8: bool,
    /// The current transaction's MAIL carried SMTPUTF8 (RCPT may be UTF-8).
    pub utf8_transaction: bool,
    /// DSN was advertised (RFC 3461: RET, ENVID, NOTIFY, ORCPT).
    pub dsn: bool,
    /// AUTH was advertised (RFC 4954 section 5: the AUTH= MAIL parameter).
    pub auth: bool,
}

/// A command line the server answers with an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb (500 5.5.2).
    Unrecognized,
    /// Syntax error in the arguments (501 5.5.4).
    Syntax(&'static str),
    /// The MAIL path is malformed (501 5.1.7).
    BadSender(AddressError),
    /// The RCPT path is malformed (501 5.1.3).
    BadRecipient(AddressError),
    /// A UTF-8 address outside an SMTPUTF8 transaction (553 5.6.7, RFC 6531 3.5).
    NonAsciiAddress,
    /// A MAIL/RCPT parameter we do not support (555 5.5.4).
    UnknownParameter(String),
    /// A malformed or contradictory parameter (501 5.5.4).
    BadParameter(String),
}

impl CommandError {
    /// The reply the server sends for this error.
    pub fn reply(&self) -> Reply {
        let e = EnhancedCode::new;
        match self {
            CommandError::Unrecognized => {
                Reply::new(ReplyCode::SYNTAX_ERROR, e(5, 5, 2), "Command unrecognized")
            }
            CommandError::Syntax(why) => Reply::new(ReplyCode::PARAMETER_SYNTAX, e(5, 5, 4), *why),
            CommandError::BadSender(why) => Reply::new(
                ReplyCode::PARAMETER_SYNTAX,
                e(5, 1, 7),
                format!("Bad sender address syntax: {why}"),
            ),
            CommandError::BadRecipient(why) => Reply::new(
                ReplyCode::PARAMETER_SYNTAX,
                e(5, 1, 3),
                format!("Bad recipient address syntax: {why}"),
            ),
            CommandError::NonAsciiAddress => Reply::new(
                ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
                e(5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ),
            CommandError::UnknownParameter(p) => Reply::new(
                ReplyCode::PARAMETERS_NOT_RECOGNIZED,
                e(5, 5, 4),
                format!("Parameter {p} not recognized"),
            ),
            CommandError::BadParameter(p) => Reply::new(
                ReplyCode::PARAMETER_SYNTAX,
                e(5, 5, 4),
                format!("Bad parameter {p}"),
            ),
        }
    }
}

impl From<ParamError> for CommandError {
    fn from(e: ParamError) -> Self {
        match e {
            ParamError::Unrecognized(p) => CommandError::UnknownParameter(p),
            ParamError::Syntax(p) | ParamError::BadValue(p) => CommandError::BadParameter(p),
        }
    }
}

impl Command {
    /// The verb as sent on the wire.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::Turn => "TURN",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }

    /// Parses one command line, without its CRLF.
    pub fn parse(line: &[u8], opts: &ParseOptions) -> Result<Command, CommandError> {
        let (verb, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        let verb = std::str::from_utf8(verb)
            .map_err(|_| CommandError::Unrecognized)?
            .to_ascii_uppercase();
        let rest = match rest {
            Some(r) => Some(
                std::str::from_utf8(r)
                    .map_err(|_| CommandError::Syntax("Argument is not valid UTF-8"))?,
            ),
            None => None,
        };
        if rest.is_some_and(|r| r.chars().any(char::is_control)) {
            return Err(CommandError::Syntax("Control character in argument"));
        }
        let arg = rest.map(str::trim).filter(|r| !r.is_empty());
        match verb.as_str() {
            "EHLO" | "HELO" => {
                let domain = arg.ok_or(CommandError::Syntax("Domain name required"))?;
                // Keep only the first word: some clients append junk, and the
                // name is only used for the Received: header.
                let domain = domain.split(' ').next().unwrap_or(domain).to_string();
                // RFC 5321 4.1.1.1: a Domain or address literal, so ASCII.
                // The grammar is not enforced further (real clients send
                // names with '_'), but non-ASCII would reach replies and the
                // Received: field of messages that are not SMTPUTF8.
                if !domain.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(CommandError::Syntax(
                        "EHLO/HELO takes a domain name or address literal",
                    ));
                }
                Ok(if verb == "EHLO" {
                    Command::Ehlo(domain)
                } else {
                    Command::Helo(domain)
                })
            }
            "MAIL" => parse_mail(rest.unwrap_or(""), opts),
            "RCPT" => parse_rcpt(rest.unwrap_or(""), opts),
            "DATA" | "RSET" | "QUIT" | "TURN" | "STARTTLS" => {
                if arg.is_some() {
                    // RFC 3207 4: STARTTLS with a parameter is 501.
                    return Err(CommandError::Syntax("No arguments allowed"));
                }
                Ok(match verb.as_str() {
                    "DATA" => Command::Data,
                    "RSET" => Command::Rset,
                    "TURN" => Command::Turn,
                    "STARTTLS" => Command::StartTls,
                    _ => Command::Quit,
                })
            }
            "NOOP" => Ok(Command::Noop),
            "VRFY" => Ok(Command::Vrfy(
                arg.ok_or(CommandError::Syntax("Argument required"))?
                    .to_string(),
            )),
            "EXPN" => Ok(Command::Expn(
                arg.ok_or(CommandError::Syntax("Argument required"))?
                    .to_string(),
            )),
            "HELP" => Ok(Command::Help(arg.map(str::to_string))),
            "AUTH" => parse_auth(arg),
            _ => Err(CommandError::Unrecognized),
        }
    }

    /// The wire form, CRLF included.
    pub fn to_line(&self) -> String {
        let mut s = String::from(self.verb());
        match self {
            Command::Ehlo(d) | Command::Helo(d) => {
                s.push(' ');
                s.push_str(d);
            }
            Command::Mail { from, params } => {
                s.push_str(&format!(" FROM:<{from}>"));
                params.write_to(&mut s);
            }
            Command::Rcpt { to, params } => {
                s.push_str(&format!(" TO:<{to}>"));
                params.write_to(&mut s);
            }
            Command::Vrfy(a) | Command::Expn(a) | Command::Help(Some(a)) => {
                s.push(' ');
                s.push_str(a);
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                s.push(' ');
                s.push_str(mechanism);
                if let Some(r) = initial_response {
                    s.push(' ');
                    s.push_str(&r.0);
                }
            }
            Command::Data
            | Command::Rset
            | Command::Noop
            | Command::Quit
            | Command::Turn
            | Command::StartTls
            | Command::Help(None) => {}
        }
        s.push_str("\r\n");
        s
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_line().trim_end())
    }
}

/// Strips `keyword:` (case-insensitive) and any spaces after it. RFC 5321
/// forbids the spaces, but many clients send `MAIL FROM: <a@b>` and every
/// major server accepts it.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest[keyword.len()..].trim_start_matches(' '))
}

/// Splits `<path> params` where the path may hold a `>` or `"` inside a
/// quoted local part or inside an address literal (RFC 5321 4.1.3:
/// General-address-literal `dcontent` includes both).
fn split_path(input: &str) -> Option<(&str, &str)> {
    if !input.starts_with('<') {
        return None;
    }
    let bytes = input.as_bytes();
    let (mut i, mut quoted, mut literal) = (1, false, false);
    while i < bytes.len() {
        match bytes[i] {
            _ if literal => literal = bytes[i] != b']',
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'[' if !quoted => literal = true,
            b'>' if !quoted => {
                let rest = &input[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return None;
                }
                return Some((&input[..=i], rest));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_mail(rest: &str, opts: &ParseOptions) -> Result<Command, CommandError> {
    let rest = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax(
        "Syntax: MAIL FROM:<address> [parameters]",
    ))?;
    let (path, params) =
        split_path(rest).ok_or(CommandError::BadSender(AddressError::MissingBrackets))?;
    if !opts.esmtp && !params.trim().is_empty() {
        return Err(CommandError::UnknownParameter(params.trim().to_string()));
    }
    let params = MailParams::parse(params, |k| match k {
        "SIZE" => opts.size,
        "BODY" => opts.eightbitmime,
        "SMTPUTF8" => opts.smtputf8,
        "RET" | "ENVID" => opts.dsn,
        "AUTH" => opts.auth,
        _ => false,
    })?;
    let from = ReversePath::parse(path, params.smtputf8).map_err(|e| match e {
        AddressError::NonAscii => CommandError::NonAsciiAddress,
        e => CommandError::BadSender(e),
    })?;
    Ok(Command::Mail { from, params })
}

/// `AUTH mechanism [initial-response]` (RFC 4954 section 4). Whether the
/// mechanism is offered, and whether the response is valid base64, is the
/// server's to judge (504, 501 5.5.2).
fn parse_auth(arg: Option<&str>) -> Result<Command, CommandError> {
    let arg = arg.ok_or(CommandError::Syntax(
        "Syntax: AUTH mechanism [initial-response]",
    ))?;
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
        return Err(CommandError::Syntax(
            "Syntax: AUTH mechanism [initial-response]",
        ));
    };
    // RFC 4422 3.1: sasl-mech = 1*20mech-char, mech-char = UPPER-ALPHA /
    // DIGIT / "-" / "_" (taken case-insensitively, as servers do).
    if mechanism.len() > MAX_MECHANISM_NAME
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CommandError::Syntax("Bad mechanism name"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial_response: initial.map(|r| InitialResponse(r.to_string())),
    })
}

fn parse_rcpt(rest: &str, opts: &ParseOptions) -> Result<Command, CommandError> {
    let rest = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax(
        "Syntax: RCPT TO:<address> [parameters]",
    ))?;
    let (path, params) =
        split_path(rest).ok_or(CommandError::BadRecipient(AddressError::MissingBrackets))?;
    if !opts.esmtp && !params.trim().is_empty() {
        return Err(CommandError::UnknownParameter(params.trim().to_string()));
    }
    let params = RcptParams::parse(params, opts.dsn)?;
    let to = ForwardPath::parse(path, opts.utf8_transaction).map_err(|e| match e {
        AddressError::NonAscii => CommandError::NonAsciiAddress,
        e => CommandError::BadRecipient(e),
    })?;
    Ok(Command::Rcpt { to, params })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ESMTP: ParseOptions = ParseOptions {
        esmtp: true,
        size: true,
        eightbitmime: true,
        smtputf8: true,
        utf8_transaction: false,
        dsn: false,
        auth: false,
    };

    fn parse(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes(), &ESMTP)
    }

    fn code(s: &str) -> u16 {
        parse(s).unwrap_err().reply().code().get()
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse("ehlo client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(parse("HeLo x").unwrap(), Command::Helo("x".into()));
        assert_eq!(parse("data").unwrap(), Command::Data);
        assert_eq!(parse("NOOP anything at all").unwrap(), Command::Noop);
        assert_eq!(
            parse("help mail").unwrap(),
            Command::Help(Some("mail".into()))
        );
    }

    #[test]
    fn mail_from_forms() {
        let Command::Mail { from, params } =
            parse("MAIL FROM:<a@b.org> SIZE=42 BODY=8BITMIME").unwrap()
        else {
            panic!()
        };
        assert_eq!(from.to_string(), "a@b.org");
        assert_eq!(params.size, Some(42));
        assert_eq!(parse("mail from:<>").unwrap().to_string(), "MAIL FROM:<>");
        // Space after the colon: tolerated, as by every major server.
        assert!(parse("MAIL FROM: <a@b.org>").is_ok());
        // A quoted '>' does not end the path.
        assert!(parse(r#"MAIL FROM:<"a>b"@c.org>"#).is_ok());
    }

    #[test]
    fn replies_for_bad_commands() {
        assert_eq!(code("FOO"), 500);
        assert_eq!(code("MAILFROM:<a@b>"), 500);
        assert_eq!(code("MAIL TO:<a@b.org>"), 501);
        assert_eq!(code("MAIL FROM:a@b.org"), 501);
        assert_eq!(code("MAIL FROM:<a@b.org>junk"), 501);
        assert_eq!(code("RCPT TO:<a@>"), 501);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(code("EHLO a\u{202e}b"), 501);
        assert_eq!(code("HELO h\u{e9}te"), 501);
        assert_eq!(code("DATA now"), 501);
        assert_eq!(code("QUIT please"), 501);
        assert_eq!(code("VRFY"), 501);
        assert_eq!(code("MAIL FROM:<a@b.org> FOO=1"), 555);
        assert_eq!(code("RCPT TO:<a@b.org> NOTIFY=NEVER"), 555);
        assert_eq!(code("MAIL FROM:<a@b.org> SIZE=x"), 501);
        assert_eq!(code("RCPT TO:<用户@例子.广告>"), 553);
        assert_eq!(code("MAIL FROM:<用户@例子.广告>"), 553);
        assert_eq!(code("MAIL FROM:<a@b.org>\u{0}"), 501);
        let e = parse("MAIL FROM:<a b@c.org>").unwrap_err().reply();
        assert_eq!(e.enhanced(), EnhancedCode::new(5, 1, 7));
    }

    #[test]
    fn parameters_need_ehlo_and_advertisement() {
        let helo = ParseOptions::default();
        let e = Command::parse(b"MAIL FROM:<a@b.org> SIZE=1", &helo).unwrap_err();
        assert_eq!(e.reply().code().get(), 555);
        let no_size = ParseOptions {
            size: false,
            ..ESMTP
        };
        let e = Command::parse(b"MAIL FROM:<a@b.org> SIZE=1", &no_size).unwrap_err();
        assert_eq!(e.reply().code().get(), 555);
    }

    #[test]
    fn smtputf8_parameter_allows_utf8_sender() {
        assert!(parse("MAIL FROM:<用户@例子.广告> SMTPUTF8").is_ok());
        let in_txn = ParseOptions {
            utf8_transaction: true,
            ..ESMTP
        };
        assert!(Command::parse("RCPT TO:<用户@例子.广告>".as_bytes(), &in_txn).is_ok());
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let e = Command::parse(b"MAIL FROM:<\xff@b.org>", &ESMTP).unwrap_err();
        assert_eq!(e.reply().code().get(), 501);
        let e = Command::parse(b"\xffAIL", &ESMTP).unwrap_err();
        assert_eq!(e.reply().code().get(), 500);
    }

    #[test]
    fn auth_command() {
        let c = parse("auth plain AHRpbQB0YW5zdGFhZnRhbnN0YWFm").unwrap();
        assert_eq!(c.to_line(), "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
        assert!(!format!("{c:?}").contains("AHRpbQ"), "payload in Debug");
        assert_eq!(parse("AUTH LOGIN").unwrap().to_line(), "AUTH LOGIN\r\n");
        assert_eq!(parse("AUTH X-Y_Z =").unwrap().to_line(), "AUTH X-Y_Z =\r\n");
        assert_eq!(code("AUTH"), 501);
        assert_eq!(code("AUTH PLAIN a b"), 501);
        assert_eq!(code("AUTH PL@IN"), 501);
        assert_eq!(code("AUTH ABCDEFGHIJKLMNOPQRSTU"), 501);
        // AUTH= on MAIL only where AUTH is advertised.
        assert_eq!(code("MAIL FROM:<a@b.org> AUTH=<>"), 555);
        let with_auth = ParseOptions {
            auth: true,
            ..ESMTP
        };
        assert!(Command::parse(b"MAIL FROM:<a@b.org> AUTH=<>", &with_auth).is_ok());
    }

    #[test]
    fn writing_commands() {
        let c = parse("MAIL FROM:<a@b.org> SIZE=10").unwrap();
        assert_eq!(c.to_line(), "MAIL FROM:<a@b.org> SIZE=10\r\n");
        assert_eq!(
            parse("RCPT TO:<Postmaster>").unwrap().to_line(),
            "RCPT TO:<Postmaster>\r\n"
        );
        assert_eq!(Command::Quit.to_line(), "QUIT\r\n");
    }
}
