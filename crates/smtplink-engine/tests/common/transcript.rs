//! The transcript format and its runner.
//!
//! A transcript is a conversation with a [`ServerSession`], one step a line:
//!
//! ```text
//! # comment (also blank lines)
//! #! key=value     server config, before the first step (see `apply_config`);
//!                  `encrypted=true` marks the session's link encrypted
//! C: text          the client sends `text` + CRLF (one handle_input call)
//! C:               the client sends an empty line (CRLF)
//! C~ text          the client sends `text` with escapes and no CRLF added:
//!                  \r \n \t \0 \\ \xHH (any byte) \u{HEX} (a char, as UTF-8)
//! S: text          the next line the server sent is exactly `text`
//!                  (without its CRLF). A text ending in `*` matches any line
//!                  starting with what comes before the `*`; allowed only on
//!                  lines that contain the configured host name.
//! A: accept [text]            accept the pending decision (with own text)
//! A: reject CODE [X.Y.Z] text reject it with this reply
//! A: credential PASSWORD SALT_B64 ITERATIONS NONCE
//!                  answer an AuthLookup with the credential made from
//!                  PASSWORD (NONCE: SCRAM's server nonce)
//! A: nouser SALT_B64 ITERATIONS NONCE
//!                  answer an AuthLookup with "no such user" and this decoy
//! X: timeout | shutdown       the driver's timer fired / the app shuts down
//! X: tls           the driver finished a TLS handshake (after E: StartTls)
//! E: event         the next application event (see `describe_event`). If a
//!                  transcript has any E line, every event must be listed.
//! B: text          a line of an expected message body (CRLF appended);
//! B~ text          the same with escapes and nothing appended (`B~` alone:
//!                  an empty body). Consecutive
//!                  B lines make one body; bodies are matched, in order,
//!                  against the messages that reached DataEnd.
//! CLOSED           the session must have closed (otherwise it must not).
//! ```
//!
//! Before every C line, every server line sent so far must have been
//! matched by S lines: a transcript is an exact record of the conversation.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use smtplink_engine::{
    AuthFailure, BareLineEndingPolicy, CloseReason, CredentialLookup, EnhancedCode, Mechanism,
    Reply, ReplyCode, ScramCredential, ServerConfig, ServerEvent, ServerSession,
};

/// One line of a transcript.
#[derive(Debug, Clone)]
pub enum Step {
    Client(Vec<u8>),
    Server(String),
    Answer(Answer),
    Timeout,
    Shutdown,
    TlsEstablished,
    Event(String),
    Body(Vec<u8>),
    Closed,
}

/// The application's answer to a decision.
#[derive(Debug, Clone)]
pub enum Answer {
    Accept,
    AcceptWith(String),
    Reject(Reply),
    Lookup(CredentialLookup, String),
}

fn parse_lookup(spec: &str, known: bool) -> Answer {
    use base64::Engine as _;
    let words: Vec<&str> = spec.split(' ').collect();
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("salt in base64")
    };
    let lookup = match (known, words.as_slice()) {
        (true, [password, salt, iterations, _]) => {
            CredentialLookup::Found(ScramCredential::from_password(
                password,
                &b64(salt),
                iterations.parse().expect("iterations"),
            ))
        }
        (false, [salt, iterations, _]) => CredentialLookup::NoSuchUser {
            decoy_salt: b64(salt),
            iterations: iterations.parse().expect("iterations"),
        },
        _ => panic!("bad lookup answer {spec:?}"),
    };
    let nonce = words.last().expect("nonce").to_string();
    Answer::Lookup(lookup, nonce)
}

/// A parsed transcript file.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub name: String,
    pub config: ServerConfig,
    /// The session's link is encrypted (`#! encrypted=true`).
    pub encrypted: bool,
    pub steps: Vec<(usize, Step)>,
}

/// Decodes the escapes of a `C~`/`B~` line.
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("\\xHH needs two hex digits"));
            }
            Some('u') => {
                assert_eq!(chars.next(), Some('{'), "\\u needs {{HEX}}");
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).expect("bad \\u{} hex"))
                    .expect("\\u{} is not a char");
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            other => panic!("unknown escape \\{other:?} in {s:?}"),
        }
    }
    out
}

fn parse_bool(v: &str) -> bool {
    match v {
        "true" | "yes" | "on" => true,
        "false" | "no" | "off" => false,
        _ => panic!("not a boolean: {v}"),
    }
}

fn apply_config(config: &mut ServerConfig, key: &str, value: &str) {
    let num = || value.parse::<usize>().expect("number");
    match key {
        "hostname" => config.hostname = value.to_string(),
        "max_command_line" => config.max_command_line = num(),
        "max_text_line" => config.max_text_line = num(),
        "max_message_size" => config.max_message_size = num() as u64,
        "max_recipients" => config.max_recipients = num(),
        "max_errors" => config.max_errors = num(),
        "bare_line_endings" => {
            config.bare_line_endings = match value {
                "normalize" => BareLineEndingPolicy::Normalize,
                "reject" => BareLineEndingPolicy::Reject,
                _ => panic!("bare_line_endings is normalize or reject"),
            }
        }
        "smtputf8" => config.smtputf8 = parse_bool(value),
        "eightbitmime" => config.eightbitmime = parse_bool(value),
        "pipelining" => config.pipelining = parse_bool(value),
        "dsn" => config.dsn = parse_bool(value),
        "starttls" => config.starttls = parse_bool(value),
        "auth_mechanisms" => {
            config.auth_mechanisms = value
                .split(',')
                .filter(|m| !m.is_empty())
                .map(|m| Mechanism::from_name(m.trim()).expect("mechanism name"))
                .collect()
        }
        "auth_plaintext_trusted" => config.auth_plaintext_trusted = parse_bool(value),
        _ => panic!("unknown config key {key}"),
    }
}

/// Parses `CODE [X.Y.Z] text` into a reply.
pub fn parse_reply_spec(spec: &str) -> Reply {
    let (code, rest) = spec.split_once(' ').unwrap_or((spec, ""));
    let code = ReplyCode::new(code.parse().expect("reply code")).expect("valid reply code");
    let (enhanced, text) = match rest.split_once(' ') {
        Some((first, text)) if looks_enhanced(first) => (Some(first), text),
        None if looks_enhanced(rest) => (Some(rest), ""),
        _ => (None, rest),
    };
    let enhanced = enhanced.map(|e| {
        let mut parts = e.split('.').map(|p| p.parse::<u16>().expect("digits"));
        let (c, s, d) = (
            parts.next().expect("class"),
            parts.next().expect("subject"),
            parts.next().expect("detail"),
        );
        EnhancedCode::new(u8::try_from(c).expect("class"), s, d).expect("valid enhanced code")
    });
    Reply::new(code, enhanced, text)
}

fn looks_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Transcript {
    pub fn parse(name: &str, text: &str) -> Self {
        let mut config = ServerConfig::default();
        let mut encrypted = false;
        let mut steps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if let Some(kv) = line.strip_prefix("#!") {
                assert!(steps.is_empty(), "{name}:{n}: config after the first step");
                let (k, v) = kv.trim().split_once('=').expect("#! key=value");
                if k.trim() == "encrypted" {
                    encrypted = parse_bool(v.trim());
                } else {
                    apply_config(&mut config, k.trim(), v.trim());
                }
                continue;
            }
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let step = if line == "C:" {
                Step::Client(b"\r\n".to_vec())
            } else if let Some(t) = line.strip_prefix("C: ") {
                Step::Client(format!("{t}\r\n").into_bytes())
            } else if let Some(t) = line.strip_prefix("C~ ") {
                Step::Client(unescape(t))
            } else if let Some(t) = line.strip_prefix("S: ") {
                Step::Server(t.to_string())
            } else if let Some(t) = line.strip_prefix("A: ") {
                Step::Answer(match t.split_once(' ') {
                    None if t == "accept" => Answer::Accept,
                    Some(("accept", text)) => Answer::AcceptWith(text.to_string()),
                    Some(("reject", spec)) => Answer::Reject(parse_reply_spec(spec)),
                    Some(("credential", spec)) => parse_lookup(spec, true),
                    Some(("nouser", spec)) => parse_lookup(spec, false),
                    _ => panic!("{name}:{n}: bad answer {t:?}"),
                })
            } else if let Some(t) = line.strip_prefix("X: ") {
                match t {
                    "timeout" => Step::Timeout,
                    "shutdown" => Step::Shutdown,
                    "tls" => Step::TlsEstablished,
                    _ => panic!("{name}:{n}: bad X line {t:?}"),
                }
            } else if let Some(t) = line.strip_prefix("E: ") {
                Step::Event(t.to_string())
            } else if line == "B:" {
                Step::Body(b"\r\n".to_vec())
            } else if line == "B~" {
                // An empty body (or nothing more to add to this one).
                Step::Body(Vec::new())
            } else if let Some(t) = line.strip_prefix("B: ") {
                Step::Body(format!("{t}\r\n").into_bytes())
            } else if let Some(t) = line.strip_prefix("B~ ") {
                Step::Body(unescape(t))
            } else if line == "CLOSED" {
                Step::Closed
            } else {
                panic!("{name}:{n}: unrecognised line {line:?}");
            };
            steps.push((n, step));
        }
        Transcript {
            name: name.to_string(),
            config,
            encrypted,
            steps,
        }
    }

    /// Everything the client sends, concatenated.
    pub fn client_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, s) in &self.steps {
            if let Step::Client(b) = s {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// The application's answers, in order.
    pub fn answers(&self) -> Vec<Answer> {
        self.steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Answer(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether the transcript needs steps other than input and answers
    /// (timers, shutdown) at particular points.
    pub fn has_driver_steps(&self) -> bool {
        self.steps
            .iter()
            .any(|(_, s)| matches!(s, Step::Timeout | Step::Shutdown | Step::TlsEstablished))
    }
}

pub fn transcript_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts")
}

/// Every transcript file, sorted by name.
pub fn load_all() -> Vec<Transcript> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(transcript_dir())
        .expect("tests/transcripts")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("read transcript");
            let name = p.file_stem().expect("name").to_string_lossy().into_owned();
            Transcript::parse(&name, &text)
        })
        .collect()
}

pub fn load(name: &str) -> Transcript {
    let path = transcript_dir().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).expect("read transcript");
    Transcript::parse(name, &text)
}

/// The compact form of an event used by `E:` lines. DataChunk is never
/// described: chunks are gathered into bodies.
pub fn describe_event(e: &ServerEvent) -> String {
    match e {
        ServerEvent::Greeted { name, esmtp } => {
            format!("Greeted {name} {}", if *esmtp { "esmtp" } else { "helo" })
        }
        ServerEvent::MailFrom { from, params } => {
            // The parameters in their wire form, decoded values re-encoded.
            let mut s = format!("MailFrom <{from}>");
            params.write_to(&mut s);
            s
        }
        ServerEvent::RcptTo { to, params } => {
            let mut s = format!("RcptTo <{to}>");
            params.write_to(&mut s);
            s
        }
        ServerEvent::DataStart => "DataStart".into(),
        ServerEvent::DataChunk(_) => "DataChunk".into(),
        ServerEvent::DataEnd { size } => format!("DataEnd {size}"),
        ServerEvent::DataAborted { fault } => format!("DataAborted {fault:?}"),
        ServerEvent::TransactionReset => "TransactionReset".into(),
        ServerEvent::Turn => "Turn".into(),
        ServerEvent::StartTls => "StartTls".into(),
        ServerEvent::AuthLookup {
            mechanism,
            username,
        } => format!("AuthLookup {mechanism} {username}"),
        ServerEvent::Authenticated {
            mechanism,
            username,
        } => format!("Authenticated {mechanism} {username}"),
        ServerEvent::AuthFailed {
            mechanism,
            username,
            reason,
        } => format!(
            "AuthFailed {mechanism} {} {}",
            username.as_deref().unwrap_or("-"),
            match reason {
                AuthFailure::BadCredentials => "BadCredentials",
                AuthFailure::Malformed => "Malformed",
                AuthFailure::Cancelled => "Cancelled",
                AuthFailure::LineTooLong => "LineTooLong",
                AuthFailure::Refused => "Refused",
                _ => "Other",
            }
        ),
        ServerEvent::Closed { reason } => format!(
            "Closed {}",
            match reason {
                CloseReason::Quit => "Quit",
                CloseReason::TooManyErrors => "TooManyErrors",
                CloseReason::Timeout => "Timeout",
                CloseReason::Shutdown => "Shutdown",
                CloseReason::Turned => "Turned",
                CloseReason::TooManyCommands => "TooManyCommands",
            }
        ),
    }
}

/// Applies an answer to the session's pending decision.
pub fn answer(session: &mut ServerSession, a: &Answer) {
    let r = match a {
        Answer::Accept => session.accept(),
        Answer::AcceptWith(t) => session.accept_with(t),
        Answer::Reject(reply) => session.reject(reply.clone()),
        Answer::Lookup(lookup, nonce) => session.answer_auth_lookup(lookup.clone(), nonce),
    };
    r.expect("the decision was answered");
}

/// What a transcript run saw, for the runner's checks.
struct Run<'t> {
    t: &'t Transcript,
    session: ServerSession,
    /// Transmitted bytes not yet matched by S lines.
    output: Vec<u8>,
    events: VecDeque<String>,
    body: Option<Vec<u8>>,
    bodies: Vec<Vec<u8>>,
}

impl Run<'_> {
    fn drain(&mut self, at: usize) {
        while let Some(e) = self.session.poll_event() {
            match &e {
                ServerEvent::DataStart => self.body = Some(Vec::new()),
                ServerEvent::DataChunk(b) => {
                    let body = self
                        .body
                        .as_mut()
                        .unwrap_or_else(|| panic!("{}:{at}: DataChunk outside DATA", self.t.name));
                    body.extend_from_slice(b);
                }
                ServerEvent::DataEnd { size } => {
                    let body = self.body.take().expect("DataEnd after DataStart");
                    // RFC 1870 section 5: the size is the octets of the message
                    // content (un-stuffed), which is exactly what was delivered.
                    assert_eq!(
                        *size,
                        body.len() as u64,
                        "{}:{at}: DataEnd size vs delivered body",
                        self.t.name
                    );
                    self.bodies.push(body);
                }
                ServerEvent::DataAborted { .. } => self.body = None,
                _ => {}
            }
            if !matches!(e, ServerEvent::DataChunk(_)) {
                self.events.push_back(describe_event(&e));
            }
        }
        while let Some(b) = self.session.poll_transmit() {
            self.output.extend_from_slice(&b);
        }
    }

    fn next_line(&mut self, at: usize, expected: &str) -> String {
        let Some(end) = self.output.windows(2).position(|w| w == b"\r\n") else {
            panic!(
                "{}:{at}: expected server line {expected:?}, but the server has sent only {:?}",
                self.t.name,
                String::from_utf8_lossy(&self.output)
            );
        };
        let line: Vec<u8> = self.output.drain(..end + 2).collect();
        let text = &line[..end];
        assert!(
            !text.contains(&b'\r') && !text.contains(&b'\n'),
            "{}:{at}: reply line holds a bare CR/LF: {:?}",
            self.t.name,
            String::from_utf8_lossy(text)
        );
        String::from_utf8(text.to_vec()).expect("reply lines are UTF-8")
    }
}

/// A session for `config`, its link marked encrypted or not.
pub fn new_session(config: &ServerConfig, encrypted: bool) -> ServerSession {
    let mut s = ServerSession::new(config.clone());
    s.set_encrypted(encrypted);
    s
}

/// Runs a transcript; panics with the file and line on the first mismatch.
pub fn run(t: &Transcript) {
    let mut r = Run {
        t,
        session: new_session(&t.config, t.encrypted),
        output: Vec::new(),
        events: VecDeque::new(),
        body: None,
        bodies: Vec::new(),
    };
    r.drain(0);
    let strict_events = t.steps.iter().any(|(_, s)| matches!(s, Step::Event(_)));
    let mut expected_bodies: Vec<Vec<u8>> = Vec::new();
    let mut in_body = false;
    let mut says_closed = false;
    let host = t.config.hostname.clone();
    for (at, step) in &t.steps {
        let at = *at;
        if !matches!(step, Step::Body(_)) {
            in_body = false;
        }
        match step {
            Step::Client(bytes) => {
                assert!(
                    r.output.is_empty(),
                    "{}:{at}: the server sent {:?} that no S line matched",
                    t.name,
                    String::from_utf8_lossy(&r.output)
                );
                r.session.handle_input(bytes);
                r.drain(at);
            }
            Step::Server(expected) => {
                let actual = r.next_line(at, expected);
                if let Some(prefix) = expected.strip_suffix('*') {
                    assert!(
                        actual.contains(&host),
                        "{}:{at}: wildcard used on a line without the host name: {actual:?}",
                        t.name
                    );
                    assert!(
                        actual.starts_with(prefix),
                        "{}:{at}: expected {expected:?}, got {actual:?}",
                        t.name
                    );
                } else {
                    assert_eq!(&actual, expected, "{}:{at}: server line", t.name);
                }
            }
            Step::Answer(a) => {
                assert!(
                    r.session.wants_decision(),
                    "{}:{at}: A line but no decision is pending",
                    t.name
                );
                answer(&mut r.session, a);
                r.drain(at);
            }
            Step::Timeout => {
                r.session.handle_timeout();
                r.drain(at);
            }
            Step::Shutdown => {
                r.session.shutdown();
                r.drain(at);
            }
            Step::TlsEstablished => {
                r.session
                    .handle_tls_established(smtplink_engine::TlsInfo::new(
                        "TLSv1.3",
                        "TLS13_AES_256_GCM_SHA384",
                    ));
                r.drain(at);
            }
            Step::Event(expected) => {
                let actual = r.events.pop_front().unwrap_or_else(|| {
                    panic!("{}:{at}: expected event {expected:?}, none left", t.name)
                });
                assert_eq!(&actual, expected, "{}:{at}: event", t.name);
            }
            Step::Body(bytes) => {
                if !in_body {
                    expected_bodies.push(Vec::new());
                    in_body = true;
                }
                expected_bodies
                    .last_mut()
                    .expect("a body group")
                    .extend_from_slice(bytes);
            }
            Step::Closed => says_closed = true,
        }
    }
    assert!(
        r.output.is_empty(),
        "{}: the server sent {:?} that no S line matched",
        t.name,
        String::from_utf8_lossy(&r.output)
    );
    assert!(
        !r.session.wants_decision(),
        "{}: a decision was left unanswered",
        t.name
    );
    if strict_events {
        assert!(
            r.events.is_empty(),
            "{}: events no E line listed: {:?}",
            t.name,
            r.events
        );
    }
    if !expected_bodies.is_empty() {
        let show = |v: &Vec<Vec<u8>>| -> Vec<String> {
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        };
        assert_eq!(
            show(&r.bodies),
            show(&expected_bodies),
            "{}: message bodies",
            t.name
        );
        assert_eq!(
            r.bodies, expected_bodies,
            "{}: message bodies (bytes)",
            t.name
        );
    }
    assert_eq!(
        r.session.is_closed(),
        says_closed,
        "{}: closed state (the transcript {} CLOSED)",
        t.name,
        if says_closed { "says" } else { "does not say" }
    );
    if says_closed {
        // A closed session ignores whatever else arrives.
        r.session.handle_input(b"NOOP\r\nQUIT\r\n");
        assert!(
            r.session.poll_transmit().is_none(),
            "{}: output after close",
            t.name
        );
    }
}

/// Feeds `input` split at `splits` into a fresh session, answering decisions
/// from `answers` in order (then accepting). Returns every transmitted byte
/// and the event descriptions, with consecutive DataChunks merged.
pub fn feed_split(
    config: &ServerConfig,
    input: &[u8],
    splits: &[usize],
    answers: &[Answer],
) -> (Vec<u8>, Vec<ServerEvent>) {
    feed_split_encrypted(config, false, input, splits, answers)
}

/// [`feed_split`] on a link marked encrypted or not.
pub fn feed_split_encrypted(
    config: &ServerConfig,
    encrypted: bool,
    input: &[u8],
    splits: &[usize],
    answers: &[Answer],
) -> (Vec<u8>, Vec<ServerEvent>) {
    let mut session = new_session(config, encrypted);
    let mut out = Vec::new();
    let mut events: Vec<ServerEvent> = Vec::new();
    let mut answers = answers.iter();
    let mut pump =
        |session: &mut ServerSession, out: &mut Vec<u8>, events: &mut Vec<ServerEvent>| {
            loop {
                let mut progressed = false;
                while let Some(e) = session.poll_event() {
                    progressed = true;
                    match (events.last_mut(), e) {
                        (Some(ServerEvent::DataChunk(prev)), ServerEvent::DataChunk(more)) => {
                            let mut joined = prev.to_vec();
                            joined.extend_from_slice(&more);
                            *prev = joined.into();
                        }
                        (_, e) => events.push(e),
                    }
                }
                if session.wants_decision() {
                    progressed = true;
                    match answers.next() {
                        Some(a) => answer(session, a),
                        None => session.accept().expect("accept"),
                    }
                }
                if !progressed {
                    break;
                }
            }
            while let Some(b) = session.poll_transmit() {
                out.extend_from_slice(&b);
            }
        };
    pump(&mut session, &mut out, &mut events);
    let mut start = 0;
    for &cut in splits.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        session.handle_input(&input[start..cut]);
        pump(&mut session, &mut out, &mut events);
        start = cut;
    }
    (out, events)
}
