//! Property tests: emit/parse round trips, chunk-split invariance, and the
//! client/server pair with random messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use common::pair::{Decision, Pair};
use common::transcript::{feed_split, feed_split_encrypted, load_all, Answer, Transcript};
use smtplink_engine::data::{dot_stuff, DataDecoder, DataLimits, DataProgress};
use smtplink_engine::{
    BareLineEndingPolicy, Body, ClientConfig, Command, DataFault, EnhancedCode, Envelope,
    ParseOptions, RecipientOutcome, Reply, ReplyCode, ReplyParser, ServerConfig, ServerEvent,
};

// ---------------------------------------------------------------------------
// (a) dot_stuff, then DataDecoder: the original comes back and the message
// ends exactly at its terminator (RFC 5321 4.5.2 transparency, 4.1.1.4).
// ---------------------------------------------------------------------------

/// Bytes biased towards what matters to the DATA codec.
fn data_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..max),
        vec(
            prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b' ', 0x80, 0xff]),
            0..max
        ),
        // Well-formed CRLF text with dots at line starts.
        vec("\\.{0,3}[a-z .]{0,6}", 0..12).prop_map(|lines| {
            let mut v = lines.join("\r\n").into_bytes();
            v.extend_from_slice(b"\r\n");
            v
        }),
    ]
}

/// `body` as the decoder must deliver it: with the CRLF that dot_stuff
/// appends when the body does not end in one (RFC 5321 4.1.1.4).
fn with_final_crlf(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Whether every CR and LF in `b` is part of a CRLF pair (RFC 5321 2.3.8).
fn only_crlf(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

/// The Normalize policy as specified: each bare CR or LF becomes CRLF.
fn normalized(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            (b'\r' | b'\n', _) => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Feeds `input` in pieces cut at `cuts`; returns (content, ended, rest, fault).
fn decode_in_pieces(
    input: &[u8],
    cuts: &[usize],
    policy: BareLineEndingPolicy,
) -> (Vec<u8>, bool, Vec<u8>, Option<DataFault>) {
    let mut d = DataDecoder::new(DataLimits {
        max_line: usize::MAX,
        max_size: u64::MAX,
        bare_line_endings: policy,
    });
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut ended = false;
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        buf.extend_from_slice(&input[start..cut]);
        start = cut;
        if !ended && d.decode(&mut buf, &mut out) == DataProgress::End {
            ended = true;
        }
    }
    (out.to_vec(), ended, buf.to_vec(), d.fault())
}

fn cuts_for(len: usize, picks: &[Index]) -> Vec<usize> {
    let mut c: Vec<usize> = picks.iter().map(|i| i.index(len + 1)).collect();
    c.sort_unstable();
    c
}

proptest! {
    #[test]
    fn dot_stuff_then_decode_gives_the_original(
        body in data_bytes(200),
        trailing in vec(any::<u8>(), 0..20),
        picks in vec(any::<Index>(), 0..8),
    ) {
        let mut wire = dot_stuff(&body);
        wire.extend_from_slice(&trailing);
        let cuts = cuts_for(wire.len(), &picks);
        let expected = with_final_crlf(&body);

        // Reject keeps the raw bytes: a CRLF-only body comes back as it was.
        let (out, ended, rest, fault) =
            decode_in_pieces(&wire, &cuts, BareLineEndingPolicy::Reject);
        prop_assert!(ended, "the terminator was not found");
        prop_assert_eq!(&rest, &trailing, "ended somewhere other than the terminator");
        if only_crlf(&body) {
            prop_assert_eq!(fault, None);
            prop_assert_eq!(&out, &expected);
        } else {
            // A bare CR/LF spoils the message; what was delivered up to
            // then is still the original, byte for byte.
            prop_assert_eq!(fault, Some(DataFault::BareLineEnding));
            prop_assert!(expected.starts_with(&out));
        }

        // Normalize: the same message with bare endings made CRLF.
        let (out, ended, rest, fault) =
            decode_in_pieces(&wire, &cuts, BareLineEndingPolicy::Normalize);
        prop_assert!(ended);
        prop_assert_eq!(&rest, &trailing);
        prop_assert_eq!(fault, None);
        prop_assert_eq!(out, normalized(&expected));
    }

    /// Any input, decoded whole or in pieces, gives the same result.
    #[test]
    fn data_decoder_is_split_invariant(
        input in data_bytes(300),
        picks in vec(any::<Index>(), 0..10),
        reject in any::<bool>(),
    ) {
        let policy = if reject { BareLineEndingPolicy::Reject } else { BareLineEndingPolicy::Normalize };
        let whole = decode_in_pieces(&input, &[], policy);
        let pieces = decode_in_pieces(&input, &cuts_for(input.len(), &picks), policy);
        prop_assert_eq!(whole, pieces);
    }
}

// ---------------------------------------------------------------------------
// (b) A server session fed the same bytes whole or split anywhere sends the
// same bytes and raises the same events (DataChunks compared by content).
// ---------------------------------------------------------------------------

type Run = (Vec<u8>, Vec<ServerEvent>);

/// Compares two runs; on a difference, says where, readably.
fn same_run(a: &Run, b: &Run) -> Result<(), TestCaseError> {
    if a.0 != b.0 {
        let at = a.0.iter().zip(&b.0).take_while(|(x, y)| x == y).count();
        let from = at.saturating_sub(80);
        return Err(TestCaseError::fail(format!(
            "output differs at byte {at}:\n{:?}\nvs\n{:?}",
            String::from_utf8_lossy(&a.0[from..a.0.len().min(at + 80)]),
            String::from_utf8_lossy(&b.0[from..b.0.len().min(at + 80)]),
        )));
    }
    if a.1 != b.1 {
        let at = a.1.iter().zip(&b.1).take_while(|(x, y)| x == y).count();
        let show = |v: &[ServerEvent]| -> String {
            v.iter()
                .skip(at.saturating_sub(1))
                .take(3)
                .map(|e| {
                    let s = format!("{e:?}");
                    if s.len() > 200 {
                        format!("{}...", &s[..200])
                    } else {
                        s
                    }
                })
                .collect::<Vec<_>>()
                .join("\n  ")
        };
        return Err(TestCaseError::fail(format!(
            "events differ at {at}:\n  {}\nvs\n  {}",
            show(&a.1),
            show(&b.1)
        )));
    }
    Ok(())
}

fn transcripts() -> &'static [Transcript] {
    static ALL: OnceLock<Vec<Transcript>> = OnceLock::new();
    ALL.get_or_init(|| {
        load_all()
            .into_iter()
            .filter(|t| !t.has_driver_steps())
            .collect()
    })
}

proptest! {
    #[test]
    fn transcript_input_split_anywhere(
        which in any::<Index>(),
        picks in vec(any::<Index>(), 0..16),
    ) {
        let t = which.get(transcripts());
        let input = t.client_bytes();
        let answers = t.answers();
        let whole = feed_split_encrypted(&t.config, t.encrypted, &input, &[], &answers);
        let split = feed_split_encrypted(&t.config, t.encrypted, &input, &cuts_for(input.len(), &picks), &answers);
        same_run(&whole, &split).map_err(|e| TestCaseError::fail(format!("{}: {e}", t.name)))?;
    }
}

#[test]
fn every_transcript_fed_one_byte_at_a_time() {
    for t in transcripts() {
        let input = t.client_bytes();
        let answers = t.answers();
        let whole = feed_split_encrypted(&t.config, t.encrypted, &input, &[], &answers);
        let every: Vec<usize> = (1..input.len()).collect();
        let bytewise = feed_split_encrypted(&t.config, t.encrypted, &input, &every, &answers);
        if let Err(e) = same_run(&whole, &bytewise) {
            panic!("{}: {e}", t.name);
        }
    }
}

/// Pieces of SMTP to build random sessions from (stalwart's alphabet idea).
const TOKENS: &[&str] = &[
    "EHLO c.example\r\n",
    "HELO c.example\r\n",
    "MAIL FROM:<a@b.example>\r\n",
    "MAIL FROM:<a@b.example> SIZE=20\r\n",
    "MAIL FROM:<> BODY=8BITMIME\r\n",
    "RCPT TO:<c@d.example>\r\n",
    "RCPT TO:<Postmaster>\r\n",
    "DATA\r\n",
    "RSET\r\n",
    "NOOP\r\n",
    "QUIT\r\n",
    "VRFY x\r\n",
    "BOGUS\r\n",
    "\r\n",
    "\n",
    "\r",
    ".",
    "..",
    ".\r\n",
    "\r\n.\r\n",
    "\n.\n",
    "text ",
    "é",
    "\u{0}",
    "MAIL FROM:<",
    "EHLO ",
    " X-PARAM=",
];

fn soup() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            8 => prop::sample::select(TOKENS).prop_map(|t| t.as_bytes().to_vec()),
            1 => Just(vec![b'x'; 700]),
            1 => vec(any::<u8>(), 0..8),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

fn small_config() -> impl Strategy<Value = ServerConfig> {
    (
        any::<bool>(),
        20u64..300,
        1usize..4,
        2usize..12,
        20usize..80,
        any::<bool>(),
    )
        .prop_map(
            |(reject, size, rcpts, errors, line, pipelining)| ServerConfig {
                hostname: "mx.example".into(),
                max_message_size: size,
                max_recipients: rcpts,
                max_errors: errors,
                max_text_line: line,
                pipelining,
                bare_line_endings: if reject {
                    BareLineEndingPolicy::Reject
                } else {
                    BareLineEndingPolicy::Normalize
                },
                ..ServerConfig::default()
            },
        )
}

fn answers() -> impl Strategy<Value = Vec<Answer>> {
    vec(
        prop_oneof![
            3 => Just(Answer::Accept),
            1 => Just(Answer::Reject(Reply::new(
                ReplyCode::MAILBOX_UNAVAILABLE,
                EnhancedCode::new(5, 1, 1),
                "no",
            ))),
        ],
        0..10,
    )
}

proptest! {
    #[test]
    fn random_sessions_split_anywhere(
        config in small_config(),
        input in soup(),
        answers in answers(),
        picks in vec(any::<Index>(), 0..16),
    ) {
        let whole = feed_split(&config, &input, &[], &answers);
        let split = feed_split(&config, &input, &cuts_for(input.len(), &picks), &answers);
        same_run(&whole, &split)?;
        let every: Vec<usize> = (1..input.len()).collect();
        let bytewise = feed_split(&config, &input, &every, &answers);
        same_run(&whole, &bytewise)?;
        // Whatever the input, the output is a sequence of well-formed
        // replies (RFC 5321 4.2) with nothing left over.
        let mut p = ReplyParser::new();
        p.push(&whole.0);
        while p.next_reply().unwrap().is_some() {}
        prop_assert_eq!(p.buffered(), 0);
        // RFC 5321 4.5.3.1.5: reply lines of at most 512 octets.
        for line in whole.0.split_inclusive(|&b| b == b'\n') {
            prop_assert!(line.len() <= 512, "reply line of {} octets", line.len());
        }
    }
}

// ---------------------------------------------------------------------------
// (c) Reply::write_to, then ReplyParser: the same replies (RFC 5321 4.2,
// 4.2.1 multi-line form; RFC 2034 / RFC 3463 enhanced codes).
// ---------------------------------------------------------------------------

fn reply_strategy(enhanced: bool) -> impl Strategy<Value = Reply> {
    (
        2u16..=5,
        0u16..=5,
        0u16..=9,
        0u16..=999,
        0u16..=999,
        vec("[^\\p{Cc}]{0,40}", 1..5),
    )
        .prop_map(move |(a, b, c, subject, detail, lines)| {
            let code = ReplyCode::new(a * 100 + b * 10 + c).unwrap();
            // RFC 3463 section 2: the class matches the reply's first digit;
            // RFC 2034: no enhanced code on 3xx.
            let e = if enhanced && a != 3 {
                EnhancedCode::new(u8::try_from(a).unwrap(), subject, detail)
            } else {
                None
            };
            Reply::multiline(code, e, lines)
        })
}

fn replies() -> impl Strategy<Value = (bool, Vec<Reply>)> {
    any::<bool>().prop_flat_map(|enhanced| (Just(enhanced), vec(reply_strategy(enhanced), 1..4)))
}

proptest! {
    #[test]
    fn reply_round_trip((enhanced, sent) in replies(), picks in vec(any::<Index>(), 0..8)) {
        let mut wire = Vec::new();
        for r in &sent {
            r.write_to(&mut wire);
        }
        // Every line ends in CRLF and holds no other CR or LF.
        for line in wire.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            prop_assert_eq!(line.last(), Some(&b'\r'));
            prop_assert!(!line[..line.len() - 1].contains(&b'\r'));
        }
        let mut p = ReplyParser::new();
        // A client parses enhanced codes only when the server offered
        // ENHANCEDSTATUSCODES (RFC 2034 section 3).
        p.set_parse_enhanced(enhanced);
        let mut got = Vec::new();
        let mut start = 0;
        for &cut in cuts_for(wire.len(), &picks).iter().chain(std::iter::once(&wire.len())) {
            p.push(&wire[start..cut]);
            start = cut;
            while let Some(r) = p.next_reply().unwrap() {
                got.push(r);
            }
        }
        prop_assert_eq!(got, sent);
        prop_assert_eq!(p.buffered(), 0);
    }
}

// ---------------------------------------------------------------------------
// (d) MAIL/RCPT: a valid line parses, and writing the command gives the same
// line back (RFC 5321 4.1.1.2, 4.1.1.3, 4.1.2 grammar, 4.1.3 literals).
// ---------------------------------------------------------------------------

/// `atext` of RFC 5322 3.2.3 (RFC 5321 4.1.2 Atom).
const ATEXT: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
/// A few non-ASCII letters for RFC 6531 3.3 (UTF-8 atext and U-labels).
const UTF8_LETTERS: &str = "äöüßéñ用户例子δοκιμή";

fn atom(utf8: bool) -> impl Strategy<Value = String> {
    let mut chars: Vec<char> = ATEXT.chars().collect();
    if utf8 {
        chars.extend(UTF8_LETTERS.chars());
    }
    vec(prop::sample::select(chars), 1..8).prop_map(|c| c.into_iter().collect())
}

fn dot_string(utf8: bool) -> impl Strategy<Value = String> {
    vec(atom(utf8), 1..4).prop_map(|atoms| atoms.join("."))
}

/// Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP =
/// "\" %d32-126 (RFC 5321 4.1.2).
fn quoted_string() -> impl Strategy<Value = String> {
    let qtext: Vec<char> = (32u8..=126)
        .filter(|&b| b != b'"' && b != b'\\')
        .map(char::from)
        .collect();
    let pair: Vec<char> = (32u8..=126).map(char::from).collect();
    vec(
        prop_oneof![
            3 => prop::sample::select(qtext).prop_map(|c| c.to_string()),
            1 => prop::sample::select(pair).prop_map(|c| format!("\\{c}")),
        ],
        0..12,
    )
    .prop_map(|parts| format!("\"{}\"", parts.concat()))
}

fn local_part(utf8: bool) -> impl Strategy<Value = String> {
    prop_oneof![3 => dot_string(utf8), 1 => quoted_string()]
        .prop_filter("RFC 5321 4.5.3.1.1: 64 octets", |l| l.len() <= 64)
}

fn label(utf8: bool) -> impl Strategy<Value = String> {
    let mut ends: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789".chars().collect();
    if utf8 {
        ends.extend(UTF8_LETTERS.chars());
    }
    let mut inner = ends.clone();
    inner.push('-');
    (
        prop::sample::select(ends.clone()),
        vec(prop::sample::select(inner), 0..8),
        prop::sample::select(ends),
        any::<bool>(),
    )
        .prop_map(|(first, mid, last, single)| {
            if single {
                first.to_string()
            } else {
                let mut s = first.to_string();
                s.extend(mid);
                s.push(last);
                s
            }
        })
}

/// Domain, IPv4, IPv6 or General-address-literal (RFC 5321 4.1.2, 4.1.3).
fn domain(utf8: bool) -> impl Strategy<Value = String> {
    // dcontent = %d33-90 / %d94-126
    let dcontent: Vec<char> = (33u8..=126)
        .filter(|b| !(91..=93).contains(b))
        .map(char::from)
        .collect();
    prop_oneof![
        4 => vec(label(utf8), 1..4).prop_map(|l| l.join(".")),
        1 => any::<[u8; 4]>().prop_map(|a| format!("[{}.{}.{}.{}]", a[0], a[1], a[2], a[3])),
        1 => any::<u128>().prop_map(|a| format!("[IPv6:{}]", std::net::Ipv6Addr::from(a))),
        1 => (
            "[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?"
                .prop_filter("not the IPv6 tag", |t| !t.eq_ignore_ascii_case("ipv6")),
            vec(prop::sample::select(dcontent), 1..12),
        )
            .prop_map(|(tag, content)| format!("[{tag}:{}]", content.into_iter().collect::<String>())),
    ]
}

fn mailbox(utf8: bool) -> impl Strategy<Value = String> {
    (local_part(utf8), domain(utf8))
        .prop_map(|(l, d)| format!("{l}@{d}"))
        .prop_filter("RFC 5321 4.5.3.1.3: path of 256 octets", |m| {
            m.len() + 2 <= 256
        })
}

const ESMTP: ParseOptions = ParseOptions {
    esmtp: true,
    size: true,
    eightbitmime: true,
    smtputf8: true,
    utf8_transaction: false,
    dsn: true,
    auth: true,
};

proptest! {
    #[test]
    fn mail_round_trip(
        utf8 in any::<bool>(),
        null in prop::bool::weighted(0.1),
        mbox_ascii in mailbox(false),
        mbox_utf8 in mailbox(true),
        size in proptest::option::of(any::<u64>()),
        body in proptest::option::of(any::<bool>()),
    ) {
        let path = if null { String::new() } else if utf8 { mbox_utf8 } else { mbox_ascii };
        let mut line = format!("MAIL FROM:<{path}>");
        if let Some(n) = size {
            line.push_str(&format!(" SIZE={n}"));
        }
        match body {
            Some(true) => line.push_str(" BODY=8BITMIME"),
            Some(false) => line.push_str(" BODY=7BIT"),
            None => {}
        }
        let smtputf8 = utf8 && !path.is_ascii();
        if smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        let cmd = Command::parse(line.as_bytes(), &ESMTP)
            .map_err(|e| TestCaseError::fail(format!("{line:?}: {e:?}")))?;
        let Command::Mail { from, params } = &cmd else {
            return Err(TestCaseError::fail("not MAIL"));
        };
        prop_assert_eq!(from.to_string(), path);
        prop_assert_eq!(params.size, size);
        prop_assert_eq!(params.body, body.map(|b| if b { Body::EightBitMime } else { Body::SevenBit }));
        prop_assert_eq!(params.smtputf8, smtputf8);
        prop_assert_eq!(cmd.to_line(), format!("{line}\r\n"));
        prop_assert_eq!(Command::parse(line.as_bytes(), &ESMTP).unwrap(), cmd);
    }

    #[test]
    fn rcpt_round_trip(
        utf8 in any::<bool>(),
        postmaster in prop::bool::weighted(0.05),
        mbox_ascii in mailbox(false),
        mbox_utf8 in mailbox(true),
        route in vec(vec(label(false), 1..3).prop_map(|l| l.join(".")), 0..3),
    ) {
        let path = if postmaster { "Postmaster".to_string() } else if utf8 { mbox_utf8 } else { mbox_ascii };
        let opts = ParseOptions { utf8_transaction: utf8, ..ESMTP };
        let line = format!("RCPT TO:<{path}>");
        let cmd = Command::parse(line.as_bytes(), &opts)
            .map_err(|e| TestCaseError::fail(format!("{line:?}: {e:?}")))?;
        let Command::Rcpt { to, .. } = &cmd else {
            return Err(TestCaseError::fail("not RCPT"));
        };
        prop_assert_eq!(to.to_string(), path.clone());
        prop_assert_eq!(cmd.to_line(), format!("{line}\r\n"));

        // A source route is accepted and dropped (RFC 5321 4.1.1.3, C).
        if !route.is_empty() && !postmaster {
            let adl: Vec<String> = route.iter().map(|d| format!("@{d}")).collect();
            let routed = format!("RCPT TO:<{}:{path}>", adl.join(","));
            if routed.len() - "RCPT TO:".len() <= 256 {
                let c = Command::parse(routed.as_bytes(), &opts)
                    .map_err(|e| TestCaseError::fail(format!("{routed:?}: {e:?}")))?;
                prop_assert_eq!(c, cmd);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (e) Client and server engines together, random messages: what the
// application stores is what was sent, and every recipient's outcome is
// what the server decided.
// ---------------------------------------------------------------------------

/// A message line without CR or LF (RFC 5321 2.3.8), sometimes 8-bit,
/// sometimes starting with dots, sometimes at the 998-character limit.
fn message_line() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => 0x20u8..0x7f,
        1 => Just(b'.'),
        1 => 0x80u8..=0xff,
        1 => Just(b'\t'),
    ];
    prop_oneof![
        8 => vec(byte, 0..60),
        1 => (990usize..=998, any::<bool>()).prop_map(|(n, dot)| {
            let mut v = vec![b'y'; n];
            if dot {
                v[0] = b'.';
            }
            v
        }),
        1 => prop::sample::select(vec![&b"."[..], b"..", b".\t", b"From x"]).prop_map(<[u8]>::to_vec),
    ]
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    (vec(message_line(), 0..16), any::<bool>()).prop_map(|(lines, final_crlf)| {
        let mut body = lines.join(&b"\r\n"[..]);
        if final_crlf && !lines.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        body
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accept,
    Permanent,
    Transient,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn pair_delivers_random_messages(
        body in message(),
        fates in vec(prop_oneof![4 => Just(Fate::Accept), 1 => Just(Fate::Permanent), 1 => Just(Fate::Transient)], 1..8),
        pipelining in any::<bool>(),
        segment in prop_oneof![Just(usize::MAX), 1usize..64],
    ) {
        let server = ServerConfig {
            hostname: "mx.example.org".into(),
            pipelining,
            ..ServerConfig::default()
        };
        let script_fates = fates.clone();
        let mut n = 0;
        let mut pair = Pair::new(ClientConfig::default(), server, move |e: &ServerEvent| match e {
            ServerEvent::RcptTo { .. } => {
                let fate = script_fates[n];
                n += 1;
                match fate {
                    Fate::Accept => Decision::Accept,
                    Fate::Permanent => Decision::Reject(Reply::new(ReplyCode::MAILBOX_UNAVAILABLE, EnhancedCode::new(5, 1, 1), "no")),
                    Fate::Transient => Decision::Reject(Reply::new(ReplyCode::new(450).unwrap(), EnhancedCode::new(4, 2, 1), "busy")),
                }
            }
            _ => Decision::Accept,
        });
        pair.segment = segment;
        pair.ready();
        let to: Vec<String> = (0..fates.len()).map(|i| format!("r{i}@example.org")).collect();
        let env = Envelope::parse("sender@example.net", &to).unwrap();
        pair.client.send(env.clone(), &body).unwrap();
        pair.drive();

        let reports = pair.reports();
        prop_assert_eq!(reports.len(), 1);
        for ((path, outcome), fate) in reports[0].recipients.iter().zip(&fates) {
            let ok = match (fate, outcome) {
                (Fate::Accept, RecipientOutcome::Accepted(_)) => true,
                (Fate::Permanent, RecipientOutcome::Permanent(r)) => r.code().get() == 550,
                (Fate::Transient, RecipientOutcome::Transient(r)) => r.code().get() == 450,
                _ => false,
            };
            prop_assert!(ok, "{}: {:?} became {:?}", path, fate, outcome);
        }
        let accepted: Vec<_> = env
            .to
            .iter()
            .zip(&fates)
            .filter(|(_, f)| **f == Fate::Accept)
            .map(|(p, _)| p.clone())
            .collect();
        if accepted.is_empty() {
            prop_assert!(pair.stored.is_empty());
        } else {
            prop_assert_eq!(pair.stored.len(), 1);
            let m = &pair.stored[0];
            prop_assert_eq!(&m.body, &with_final_crlf(&body));
            prop_assert_eq!(&m.rcpts, &accepted);
            // RFC 1870 section 5: declared SIZE = octets the server counted.
            prop_assert_eq!(m.params.size, Some(m.size));
            // RFC 6152: BODY=8BITMIME exactly when there is 8-bit data.
            prop_assert_eq!(m.params.body == Some(Body::EightBitMime), !body.is_ascii());
        }
        let most = pair.max_commands_per_delivery();
        if pipelining {
            if segment == usize::MAX {
                // RFC 2920 3.1: MAIL, the RCPTs and DATA in one group.
                prop_assert_eq!(most, fates.len() + 2);
            }
        } else {
            prop_assert!(most <= 1, "a non-pipelining server got {} commands at once", most);
        }
        pair.quit();
    }
}

/// AUTH with arbitrary initial responses and responses (base64 of random
/// bytes, or random text) never panics, always answers with well-formed
/// replies, ends every exchange with one reply, and never authenticates a
/// client that does not know the password.
fn sasl_session_input() -> impl Strategy<Value = (usize, Option<Vec<u8>>, Vec<Vec<u8>>, bool)> {
    use base64::Engine as _;
    let b64 = |v: Vec<u8>| {
        base64::engine::general_purpose::STANDARD
            .encode(v)
            .into_bytes()
    };
    let payload = prop_oneof![
        vec(any::<u8>(), 0..200).prop_map(b64),
        vec(any::<u8>(), 0..200),
        Just(b"*".to_vec()),
        Just(b"=".to_vec()),
        Just(Vec::new()),
    ];
    (
        0..3usize,
        proptest::option::of(payload.clone()),
        vec(payload, 0..6),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn arbitrary_sasl_responses_never_panic((mech, initial, responses, encrypted) in sasl_session_input()) {
        use smtplink_engine::{CredentialLookup, Mechanism, ReplyParser, ScramCredential, ServerSession};
        let mechanism = Mechanism::ALL[mech];
        let mut s = ServerSession::new(ServerConfig {
            auth_mechanisms: Mechanism::ALL.to_vec(),
            max_errors: 100,
            ..ServerConfig::default()
        });
        s.set_encrypted(encrypted);
        let mut input = b"EHLO c.example\r\nAUTH ".to_vec();
        input.extend_from_slice(mechanism.name().as_bytes());
        if let Some(i) = &initial {
            input.push(b' ');
            input.extend_from_slice(i);
        }
        input.extend_from_slice(b"\r\n");
        for r in &responses {
            input.extend_from_slice(r);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"NOOP\r\n");
        s.handle_input(&input);
        let credential = ScramCredential::from_password("pencil", b"salt", 4096);
        let mut authenticated = false;
        loop {
            while let Some(e) = s.poll_event() {
                authenticated |= matches!(e, ServerEvent::Authenticated { .. });
            }
            if !s.wants_decision() {
                break;
            }
            s.answer_auth_lookup(CredentialLookup::Found(credential.clone()), "srvnonce").unwrap();
        }
        prop_assert!(!authenticated, "authenticated without the password");
        let mut out = Vec::new();
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
        let mut parser = ReplyParser::new();
        parser.push(&out);
        let mut replies = 0;
        while let Some(r) = parser.next_reply().unwrap() {
            prop_assert!(r.lines().iter().all(|l| l.len() <= 512));
            replies += 1;
        }
        prop_assert!(replies >= 3, "{}", String::from_utf8_lossy(&out));
    }
}
