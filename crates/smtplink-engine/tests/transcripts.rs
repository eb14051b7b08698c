//! Runs every `tests/transcripts/*.txt` against a `ServerSession`, with no
//! sockets. The format is described in `common/transcript.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::transcript::{self, load, load_all, run, unescape, Step};

#[test]
fn every_transcript_file_has_a_test() {
    let files: Vec<String> = load_all().into_iter().map(|t| t.name).collect();
    let mut listed: Vec<&str> = LISTED.to_vec();
    listed.sort_unstable();
    assert_eq!(
        files, listed,
        "add new transcript files to transcript_tests!"
    );
}

/// One test per transcript as well, so a failure names its file.
macro_rules! transcript_tests {
    ($($name:ident),* $(,)?) => {
        const LISTED: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run(&load(stringify!($name)));
            }
        )*
    };
}

transcript_tests!(
    session_two_messages,
    helo_session,
    pipelined_batch,
    bad_order,
    no_valid_recipients,
    bad_commands,
    size_limit,
    too_many_recipients,
    too_many_errors,
    command_line_too_long,
    data_line_too_long,
    smuggling_normalize,
    smuggling_reject,
    dot_unstuffing,
    rset_mid_transaction,
    ehlo_resets_transaction,
    vrfy_help_noop,
    quit,
    smtputf8,
    extensions_not_offered,
    special_paths,
    timeout_and_shutdown,
    shutdown,
    reject_with_421,
    bare_line_endings_commands,
    bare_line_endings_reject,
    pipelined_refused_mail,
    dsn,
    turn,
    starttls,
    starttls_injection,
    starttls_not_offered,
    auth_scram_rfc7677,
    auth_scram_failures,
    auth_plain_login_encrypted,
    auth_plain_trusted,
    auth_refusals,
    auth_not_offered,
    auth_pipelining,
    auth_line_too_long,
);

// The runner must be able to fail: a transcript that is wrong in each way
// the runner checks is caught.
fn must_fail(text: &str) {
    let t = transcript::Transcript::parse("negative", text);
    let r = std::panic::catch_unwind(|| run(&t));
    assert!(
        r.is_err(),
        "the runner accepted a wrong transcript:\n{text}"
    );
}

const GOOD_START: &str = "#! hostname=h.example\nS: 220 h.example ESMTP smtplink ready\n";

#[test]
fn runner_catches_wrong_transcripts() {
    // The correct version of what follows passes.
    run(&transcript::Transcript::parse(
        "positive",
        &format!("{GOOD_START}C: NOOP\nS: 250 2.0.0 OK\nC: QUIT\nS: 221 2.0.0 h.example closing connection\nCLOSED\n"),
    ));
    // Wrong reply text.
    must_fail(&format!("{GOOD_START}C: NOOP\nS: 250 2.0.0 Ok\n"));
    // A reply nobody listed.
    must_fail(&format!("{GOOD_START}C: NOOP\n"));
    // A reply that never came.
    must_fail(&format!("{GOOD_START}S: 250 2.0.0 OK\n"));
    // CLOSED missing, or claimed when open.
    must_fail(&format!(
        "{GOOD_START}C: QUIT\nS: 221 2.0.0 h.example closing connection\n"
    ));
    must_fail(&format!("{GOOD_START}C: NOOP\nS: 250 2.0.0 OK\nCLOSED\n"));
    // A wildcard on a line without the host name.
    must_fail(&format!("{GOOD_START}C: NOOP\nS: 250 *\n"));
    // A wrong event, and an unlisted one.
    must_fail(&format!("{GOOD_START}C: QUIT\nS: 221 2.0.0 h.example closing connection\nE: Closed Timeout\nCLOSED\n"));
    must_fail(&format!("{GOOD_START}C: HELO x\nS: 250 h.example greets x\nE: Greeted x helo\nC: QUIT\nS: 221 2.0.0 h.example closing connection\nCLOSED\n"));
    // A wrong body.
    must_fail(&format!(
        "{GOOD_START}C: HELO x\nS: 250 h.example greets x\nC: MAIL FROM:<a@b.org>\nA: accept\nS: 250 2.1.0 Sender OK\n\
         C: RCPT TO:<c@d.org>\nA: accept\nS: 250 2.1.5 Recipient OK\nC: DATA\nS: 354 End data with <CR><LF>.<CR><LF>\n\
         C: ..x\nC: .\nA: accept\nS: 250 2.0.0 Message accepted for delivery\nB: ..x\n"
    ));
    // An answer with no decision pending.
    must_fail(&format!("{GOOD_START}A: accept\n"));
}

#[test]
fn escapes() {
    assert_eq!(
        unescape(r"a\r\n\t\0\\\x41\xff\u{e9}"),
        b"a\r\n\t\0\\A\xff\xc3\xa9"
    );
    let t = transcript::Transcript::parse("x", "C~ a\\n\nC: b\nC:\n");
    let inputs: Vec<&Vec<u8>> = t
        .steps
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Client(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(
        inputs,
        [&b"a\n".to_vec(), &b"b\r\n".to_vec(), &b"\r\n".to_vec()]
    );
}

/// The smuggling transcripts are about one thing; check it directly too:
/// no MAIL FROM event ever names the smuggled sender.
#[test]
fn smuggled_commands_never_reach_the_application() {
    for name in ["smuggling_normalize", "smuggling_reject"] {
        let t = load(name);
        let (out, events) = transcript::feed_split(&t.config, &t.client_bytes(), &[], &t.answers());
        for e in &events {
            if let smtplink_engine::ServerEvent::MailFrom { from, .. } = e {
                assert_ne!(from.to_string(), "evil@example.net", "{name}");
            }
        }
        let out = String::from_utf8(out).unwrap();
        // Six smuggling messages, each ended once, by its real terminator.
        let (accepted, refused) = (
            out.lines()
                .filter(|l| l.starts_with("250 2.0.0 Message"))
                .count(),
            out.lines().filter(|l| l.starts_with("554 5.6.0")).count(),
        );
        let expected = if name == "smuggling_normalize" {
            (6, 0)
        } else {
            (1, 6)
        };
        assert_eq!((accepted, refused), expected, "{name}: {out}");
    }
}

/// A transcript's whole input in one write (answers given as decisions
/// come up) draws the same replies as the step-by-step conversation: the
/// server's replies depend on the bytes, never on how they arrived
/// (RFC 2920 3.2: no input is lost or reordered).
#[test]
fn whole_input_in_one_write_gives_the_same_replies() {
    for t in load_all().iter().filter(|t| !t.has_driver_steps()) {
        let (out, _) = transcript::feed_split_encrypted(
            &t.config,
            t.encrypted,
            &t.client_bytes(),
            &[],
            &t.answers(),
        );
        let out = String::from_utf8(out).unwrap();
        let got: Vec<&str> = out.split_terminator("\r\n").collect();
        let expected: Vec<&str> = t
            .steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Server(line) => Some(line.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "{}: {got:#?}", t.name);
        for (g, e) in got.iter().zip(&expected) {
            match e.strip_suffix('*') {
                Some(prefix) => assert!(g.starts_with(prefix), "{}: {g:?} vs {e:?}", t.name),
                None => assert_eq!(g, e, "{}", t.name),
            }
        }
    }
}

/// RFC 5321 4.5.3.1.5: "The maximum total length of a reply line including
/// the reply code and the <CRLF> is 512 octets." Replies that echo the
/// client's input (EHLO name, a bad address, an unknown parameter) must
/// still fit, with any multi-byte character kept whole.
#[test]
fn reply_lines_fit_in_512_octets() {
    use smtplink_engine::{ServerConfig, ServerSession};
    let mut s = ServerSession::new(ServerConfig {
        hostname: "mx.example.org".into(),
        ..ServerConfig::default()
    });
    let name = "e".repeat(504); // "EHLO " + name + CRLF = 511 octets
    let label = "b".repeat(900);
    // A UTF-8 value (esmtp-value allows it): the echo must be cut at a
    // character boundary.
    let param = format!("X-{}={}", "p".repeat(300), "é".repeat(300));
    let input = format!(
        "EHLO {name}\r\nMAIL FROM:<a@{label}.org>\r\nMAIL FROM:<a@b.org> {param}\r\nHELO {name}\r\n"
    );
    s.handle_input(input.as_bytes());
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    let out = String::from_utf8(out).expect("cut at character boundaries");
    let lines: Vec<&str> = out.split_terminator("\r\n").collect();
    for line in &lines {
        assert!(line.len() + 2 <= 512, "{} octets: {line:?}", line.len() + 2);
    }
    let codes: Vec<&str> = lines.iter().map(|l| &l[..4]).collect();
    assert_eq!(
        codes,
        ["220 ", "250-", "250-", "250-", "250-", "250-", "250 ", "501 ", "555 ", "250 "]
    );
    // The echo is cut, not dropped.
    assert!(lines[1].starts_with("250-mx.example.org greets eee"));
    assert!(lines[7].starts_with("501 5.1.7 Bad sender address syntax: "));
    assert!(lines[8].starts_with("555 5.5.4 Parameter X-ppp"));
}

/// `max_commands_before_mail`: NOOP/RSET loops count, the next command
/// gets 421 4.7.0 and the session closes; an accepted MAIL resets the
/// count, and QUIT is always answered.
#[test]
fn commands_before_mail_are_limited() {
    use smtplink_engine::{CloseReason, ServerConfig, ServerEvent, ServerSession};
    let config = ServerConfig {
        hostname: "mx.example.org".into(),
        max_commands_before_mail: 3,
        ..ServerConfig::default()
    };
    let drain = |s: &mut ServerSession| {
        let mut out = Vec::new();
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap_or_default()
    };
    let mut s = ServerSession::new(config.clone());
    s.handle_input(b"EHLO c.example\r\nNOOP\r\nRSET\r\nVRFY x\r\n");
    let out = drain(&mut s);
    assert!(
        out.ends_with(
            "421 4.7.0 mx.example.org Too many commands without mail, closing connection\r\n"
        ),
        "{out}"
    );
    assert!(s.is_closed());
    let mut closed = None;
    while let Some(e) = s.poll_event() {
        if let ServerEvent::Closed { reason } = e {
            closed = Some(reason);
        }
    }
    assert_eq!(closed, Some(CloseReason::TooManyCommands));

    // An accepted MAIL starts the count again; QUIT is not counted.
    let mut s = ServerSession::new(config);
    s.handle_input(b"EHLO c.example\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\n");
    while let Some(e) = s.poll_event() {
        if matches!(e, ServerEvent::MailFrom { .. }) {
            s.accept().unwrap_or_default();
        }
    }
    s.handle_input(b"RSET\r\nNOOP\r\nNOOP\r\nQUIT\r\n");
    let out = drain(&mut s);
    assert!(!out.contains("421"), "{out}");
    assert!(
        out.ends_with("221 2.0.0 mx.example.org closing connection\r\n"),
        "{out}"
    );
}
