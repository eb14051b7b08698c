//! A `ClientSession` and a `ServerSession` talking to each other through
//! in-memory queues (see `common/pair.rs`), and a client against a scripted
//! fake server where the real one cannot misbehave in the way needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::pair::{Decision, Pair};
use smtplink_engine::{
    AuthError, AuthStartError, Body, ClientConfig, ClientError, ClientEvent, ClientSession,
    ClientTimeout, Credentials, EnhancedCode, Envelope, ForwardPath, Mechanism, MessageError,
    RecipientOutcome, Reply, ReplyCode, SaslClientError, ScramCredential, SendError, ServerConfig,
    ServerEvent,
};

fn server_config() -> ServerConfig {
    ServerConfig {
        hostname: "mx.example.org".into(),
        ..ServerConfig::default()
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        hello_name: "client.example.net".into(),
        pipelining: true,
        tls: smtplink_engine::TlsPolicy::None,
    }
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    let (c, s, d) = enhanced;
    Reply::new(
        ReplyCode::new(code).unwrap(),
        EnhancedCode::new(c, s, d),
        text,
    )
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::parse(from, to).unwrap()
}

/// Sends one message through an accepting pair and returns the pair.
fn send_one(server: ServerConfig, client: ClientConfig, env: Envelope, body: &[u8]) -> Pair {
    let mut pair = Pair::accepting(client, server);
    pair.ready();
    pair.client.send(env, body).unwrap();
    pair.drive();
    pair
}

#[test]
fn dots_at_line_starts_arrive_intact() {
    // RFC 5321 4.5.2: the client doubles leading dots, the server removes
    // them; the stored message equals what was sent.
    let body = b"Subject: dots\r\n\r\n.\r\n..\r\n.hidden\r\n. x\r\nend.\r\n";
    let mut pair = send_one(
        server_config(),
        client_config(),
        envelope("alice@example.net", &["bob@example.org"]),
        body,
    );
    assert_eq!(pair.stored.len(), 1);
    assert_eq!(pair.stored[0].body, body);
    // On the wire the dots were doubled: the server saw "..\r\n" for ".".
    let wire: Vec<u8> = pair
        .server_deliveries
        .iter()
        .flat_map(|d| d.bytes.to_vec())
        .collect();
    let wire = String::from_utf8(wire).unwrap();
    assert!(
        wire.contains("\r\n..\r\n...\r\n..hidden\r\n.. x\r\nend.\r\n.\r\n"),
        "{wire}"
    );
    assert!(pair.reports()[0].all_accepted());
    pair.quit();
}

#[test]
fn eight_bit_content_with_8bitmime() {
    // RFC 6152 section 3: 8-bit data goes with BODY=8BITMIME.
    let body = "Subject: Grüße\r\n\r\n\u{00e9}t\u{00e9} \u{4f60}\u{597d} \u{1f600}\r\n".as_bytes();
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(&[0x80, 0xff, 0xfe, b'\r', b'\n']); // not even UTF-8
    let mut pair = send_one(
        server_config(),
        client_config(),
        envelope("alice@example.net", &["bob@example.org"]),
        &bytes,
    );
    assert_eq!(pair.stored[0].body, bytes);
    assert_eq!(pair.stored[0].params.body, Some(Body::EightBitMime));
    pair.quit();
}

#[test]
fn seven_bit_content_sends_no_body_parameter() {
    // RFC 6152: BODY is needed only for 8-bit data; nothing unasked is sent.
    let pair = send_one(
        server_config(),
        client_config(),
        envelope("alice@example.net", &["bob@example.org"]),
        b"plain\r\n",
    );
    assert_eq!(pair.stored[0].params.body, None);
}

#[test]
fn empty_body() {
    // RFC 5321 4.1.1.4: an empty message is just the terminating ".".
    let mut pair = send_one(
        server_config(),
        client_config(),
        envelope("alice@example.net", &["bob@example.org"]),
        b"",
    );
    assert_eq!(pair.stored.len(), 1);
    assert_eq!(pair.stored[0].body, b"");
    assert_eq!(pair.stored[0].size, 0);
    assert_eq!(pair.stored[0].params.size, Some(0));
    pair.quit();
}

#[test]
fn body_without_final_crlf_gets_one() {
    // RFC 5321 4.1.1.4: the client must end the content with CRLF before
    // the final dot, so the stored message ends with one.
    let pair = send_one(
        server_config(),
        client_config(),
        envelope("alice@example.net", &["bob@example.org"]),
        b"no newline at the end",
    );
    assert_eq!(pair.stored[0].body, b"no newline at the end\r\n");
    // RFC 1870 section 5: the declared SIZE is the size of what is sent,
    // CRLFs included; the server counted the same octets.
    assert_eq!(pair.stored[0].params.size, Some(pair.stored[0].size));
}

#[test]
fn longest_lines_pass_both_ways() {
    // RFC 5321 4.5.3.1.6: 1000 octets with CRLF, "not counting the leading
    // dot duplicated for transparency". A line of 998 characters that starts
    // with a dot is legal for the client to send and the server to accept.
    let mut body = Vec::new();
    body.extend_from_slice(&[b'x'; 998]);
    body.extend_from_slice(b"\r\n.");
    body.extend_from_slice(&[b'y'; 997]);
    body.extend_from_slice(b"\r\n");
    let mut pair = send_one(
        server_config(),
        client_config(),
        envelope("alice@example.net", &["bob@example.org"]),
        &body,
    );
    assert_eq!(pair.stored.len(), 1, "{:?}", pair.reports());
    assert_eq!(pair.stored[0].body, body);
    pair.quit();
}

/// The script for the 50-recipient tests: the i-th RCPT (0-based) is
/// refused permanently when i % 5 == 1, temporarily when i % 7 == 3.
fn rcpt_script() -> (
    impl FnMut(&ServerEvent) -> Decision,
    Rc<RefCell<Vec<Decision>>>,
) {
    let decided = Rc::new(RefCell::new(Vec::new()));
    let log = decided.clone();
    let mut i = 0usize;
    let script = move |e: &ServerEvent| match e {
        ServerEvent::RcptTo { .. } => {
            let d = if i % 5 == 1 {
                Decision::Reject(reply(550, (5, 1, 1), &format!("No such user {i}")))
            } else if i % 7 == 3 {
                Decision::Reject(reply(450, (4, 2, 1), &format!("Mailbox {i} busy")))
            } else {
                Decision::Accept
            };
            i += 1;
            log.borrow_mut().push(d.clone());
            d
        }
        _ => Decision::Accept,
    };
    (script, decided)
}

fn fifty_recipients(pipelining_server: bool, pipelining_client: bool) {
    let (script, decided) = rcpt_script();
    let server = ServerConfig {
        pipelining: pipelining_server,
        ..server_config()
    };
    let client = ClientConfig {
        pipelining: pipelining_client,
        ..client_config()
    };
    let mut pair = Pair::new(client, server, script);
    let caps = pair.ready();
    assert_eq!(caps.pipelining, pipelining_server);
    let to: Vec<String> = (0..50).map(|i| format!("user{i}@example.org")).collect();
    let env = Envelope::parse("alice@example.net", &to).unwrap();
    pair.client
        .send(env, b"Subject: many\r\n\r\nhi\r\n")
        .unwrap();
    pair.drive();

    let reports = pair.reports();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    let decided = decided.borrow();
    assert_eq!(decided.len(), 50, "the server decided on every recipient");
    assert_eq!(report.recipients.len(), 50);
    let mut accepted = Vec::new();
    for (i, ((path, outcome), decision)) in report.recipients.iter().zip(decided.iter()).enumerate()
    {
        assert_eq!(path.to_string(), format!("user{i}@example.org"));
        match (decision, outcome) {
            // Accepted recipients take the end-of-data reply (RFC 5321 4.2.5).
            (Decision::Accept, RecipientOutcome::Accepted(r)) => {
                assert_eq!(r.code(), ReplyCode::OK);
                accepted.push(path.clone());
            }
            (Decision::Reject(d), RecipientOutcome::Permanent(r))
            | (Decision::Reject(d), RecipientOutcome::Transient(r)) => {
                assert_eq!(r.code(), d.code(), "recipient {i}");
                assert_eq!(r.enhanced(), d.enhanced(), "recipient {i}");
                assert_eq!(r.lines(), d.lines(), "recipient {i}");
                // 4xx is transient, 5xx permanent (RFC 5321 4.2.1).
                assert_eq!(
                    matches!(outcome, RecipientOutcome::Transient(_)),
                    d.is_transient(),
                    "recipient {i}"
                );
            }
            (d, o) => panic!("recipient {i}: decided {d:?}, outcome {o:?}"),
        }
    }
    assert_eq!(accepted.len(), 50 - 10 - 6); // i%5==1: 10; i%7==3 and not i%5==1: 6
    assert_eq!(pair.stored.len(), 1);
    assert_eq!(pair.stored[0].rcpts, accepted);

    let most = pair.max_commands_per_delivery();
    if pipelining_server && pipelining_client {
        // RFC 2920 3.1: MAIL, every RCPT and DATA in one group.
        assert_eq!(most, 52, "one batch of MAIL + 50 RCPT + DATA");
    } else {
        // Without PIPELINING the client waits for each reply (RFC 5321
        // 4.3.2 / RFC 2920 3.1: it may pipeline only if the server offered).
        assert_eq!(
            most, 1,
            "the server saw a batch from a non-pipelining client"
        );
    }
    pair.quit();
}

#[test]
fn fifty_recipients_pipelined() {
    fifty_recipients(true, true);
}

#[test]
fn fifty_recipients_server_without_pipelining() {
    fifty_recipients(false, true);
}

#[test]
fn fifty_recipients_client_without_pipelining() {
    fifty_recipients(true, false);
}

#[test]
fn all_recipients_refused() {
    // RFC 2920 3.1 / RFC 5321 3.3: after every RCPT failed, DATA gets 554 and
    // no content is sent; each recipient keeps its own refusal.
    for pipelining in [true, false] {
        let mut pair = Pair::new(
            ClientConfig {
                pipelining,
                ..client_config()
            },
            server_config(),
            |e: &ServerEvent| match e {
                ServerEvent::RcptTo { .. } => {
                    Decision::Reject(reply(550, (5, 1, 1), "No such user"))
                }
                _ => Decision::Accept,
            },
        );
        pair.ready();
        pair.client
            .send(
                envelope("a@example.net", &["x@example.org", "y@example.org"]),
                b"hi\r\n",
            )
            .unwrap();
        pair.drive();
        let report = &pair.reports()[0];
        assert!(report
            .recipients
            .iter()
            .all(|(_, o)| matches!(o, RecipientOutcome::Permanent(r) if r.code().get() == 550)));
        assert!(pair.stored.is_empty());
        assert!(!pair
            .server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::DataStart)));
        // The session is usable afterwards.
        assert!(pair.client.is_ready());
        pair.quit();
    }
}

#[test]
fn sender_refused() {
    // A refused MAIL decides every recipient (RFC 5321 4.1.1.2 / 3.3).
    for pipelining in [true, false] {
        let mut pair = Pair::new(
            ClientConfig {
                pipelining,
                ..client_config()
            },
            server_config(),
            |e: &ServerEvent| match e {
                ServerEvent::MailFrom { .. } => {
                    Decision::Reject(reply(550, (5, 7, 1), "Sender refused"))
                }
                _ => Decision::Accept,
            },
        );
        pair.ready();
        pair.client
            .send(
                envelope("a@example.net", &["x@example.org", "y@example.org"]),
                b"hi\r\n",
            )
            .unwrap();
        pair.drive();
        let report = &pair.reports()[0];
        for (_, o) in &report.recipients {
            assert!(
                matches!(o, RecipientOutcome::Permanent(r) if r.code().get() == 550 && r.text() == "Sender refused"),
                "{o:?}"
            );
        }
        assert!(pair.stored.is_empty());
        pair.quit();
    }
}

#[test]
fn message_refused_at_end_of_data() {
    // RFC 5321 4.2.5: the reply to the end of data decides for every
    // recipient that was accepted.
    let mut pair = Pair::new(
        client_config(),
        server_config(),
        |e: &ServerEvent| match e {
            ServerEvent::DataEnd { .. } => Decision::Reject(reply(451, (4, 3, 0), "Disk full")),
            _ => Decision::Accept,
        },
    );
    pair.ready();
    pair.client
        .send(envelope("a@example.net", &["x@example.org"]), b"hi\r\n")
        .unwrap();
    pair.drive();
    assert!(matches!(
        &pair.reports()[0].recipients[0].1,
        RecipientOutcome::Transient(r) if r.code().get() == 451
    ));
    assert!(pair.reports()[0].any_transient());
    pair.quit();
}

#[test]
fn server_421_mid_transaction_makes_everything_transient() {
    // RFC 5321 3.8: 421 means the server is closing; nothing was delivered,
    // so every recipient is to be retried (4.2.1: 4yz is transient).
    for pipelining in [true, false] {
        let mut n = 0;
        let mut pair = Pair::new(
            ClientConfig {
                pipelining,
                ..client_config()
            },
            server_config(),
            move |e: &ServerEvent| match e {
                ServerEvent::RcptTo { .. } => {
                    n += 1;
                    if n == 2 {
                        Decision::Reject(reply(421, (4, 3, 2), "mx.example.org Going down"))
                    } else {
                        Decision::Accept
                    }
                }
                _ => Decision::Accept,
            },
        );
        pair.ready();
        pair.client
            .send(
                envelope(
                    "a@example.net",
                    &["x@example.org", "y@example.org", "z@example.org"],
                ),
                b"hi\r\n",
            )
            .unwrap();
        pair.drive();
        let reports = pair.reports();
        assert_eq!(reports.len(), 1);
        for (to, o) in &reports[0].recipients {
            assert!(matches!(o, RecipientOutcome::Transient(_)), "{to}: {o:?}");
        }
        assert!(pair.stored.is_empty());
        assert!(pair.server.is_closed());
        assert!(pair.client.is_closed());
        assert!(matches!(pair.client.error(), Some(e) if e.is_transient()));
    }
}

#[test]
fn server_shutdown_during_data_makes_everything_transient() {
    let mut pair = Pair::accepting(client_config(), server_config());
    pair.segment = 7; // a slow link: the body arrives in pieces
    pair.ready();
    let body = b"line one\r\nline two\r\nline three\r\n".repeat(10);
    pair.client
        .send(
            envelope("a@example.net", &["x@example.org", "y@example.org"]),
            &body,
        )
        .unwrap();
    assert!(pair.drive_until(|p| p.server.is_receiving_data()));
    pair.step();
    pair.server.shutdown();
    pair.drive();
    assert!(pair.stored.is_empty(), "a partial message is never stored");
    for (to, o) in &pair.reports()[0].recipients {
        assert!(
            matches!(o, RecipientOutcome::Transient(r) if r.code().get() == 421),
            "{to}: {o:?}"
        );
    }
    assert!(pair.client.is_closed());
}

#[test]
fn client_timeout_waiting_for_end_of_data_reply_is_transient() {
    // The application stalls on storing the message; after the RFC 5321
    // 4.5.3.2.6 ten minutes the client gives up. It cannot know whether the
    // message was taken, so it must retry (6.1 accepts a duplicate).
    let mut pair = Pair::new(
        client_config(),
        server_config(),
        |e: &ServerEvent| match e {
            ServerEvent::DataEnd { .. } => Decision::Hold,
            _ => Decision::Accept,
        },
    );
    pair.ready();
    pair.client
        .send(envelope("a@example.net", &["x@example.org"]), b"hi\r\n")
        .unwrap();
    pair.drive();
    assert_eq!(
        pair.client.timeout_kind(),
        Some(ClientTimeout::DataTermination)
    );
    // Nine minutes are not enough...
    pair.idle_for(Duration::from_secs(9 * 60));
    assert!(pair.reports().is_empty());
    // ...ten are.
    pair.idle_for(Duration::from_secs(10 * 60));
    let report = &pair.reports()[0];
    assert!(matches!(
        report.recipients[0].1,
        RecipientOutcome::Transient(_)
    ));
    assert_eq!(
        pair.client.error(),
        Some(&ClientError::Timeout(ClientTimeout::DataTermination))
    );
}

#[test]
fn idle_server_times_out_with_421() {
    // RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for a command.
    let mut pair = Pair::accepting(client_config(), server_config());
    pair.ready();
    pair.idle_for(Duration::from_secs(4 * 60));
    assert!(!pair.server.is_closed());
    pair.idle_for(Duration::from_secs(5 * 60));
    assert!(pair.server.is_closed());
    // The client hears the 421 and closes; nothing was outstanding, and
    // trying again later may work (RFC 5321 4.2.1: 4yz).
    assert!(pair.client.is_closed());
    assert!(pair.client.error().is_some_and(ClientError::is_transient));
    assert!(pair.reports().is_empty());
}

#[test]
fn too_many_recipients_are_deferred() {
    // RFC 5321 4.5.3.1.10: the server answers 452 past its limit; for the
    // client that is a transient outcome for those recipients only.
    let server = ServerConfig {
        max_recipients: 3,
        ..server_config()
    };
    let to: Vec<String> = (0..5).map(|i| format!("u{i}@example.org")).collect();
    let pair = send_one(
        server,
        client_config(),
        Envelope::parse("a@example.net", &to).unwrap(),
        b"hi\r\n",
    );
    let outcomes: Vec<bool> = pair.reports()[0]
        .recipients
        .iter()
        .map(|(_, o)| match o {
            RecipientOutcome::Accepted(_) => true,
            RecipientOutcome::Transient(r) => {
                assert_eq!(r.code().get(), 452);
                false
            }
            RecipientOutcome::Permanent(r) => panic!("permanent {r}"),
        })
        .collect();
    assert_eq!(outcomes, [true, true, true, false, false]);
    assert_eq!(pair.stored[0].rcpts.len(), 3);
}

#[test]
fn smtputf8_envelope() {
    // RFC 6531 3.4: a UTF-8 envelope goes with the SMTPUTF8 parameter.
    let env = Envelope::parse("用户@例子.广告", &["δοκιμή@παράδειγμα.δοκιμή"]).unwrap();
    let mut pair = send_one(server_config(), client_config(), env.clone(), b"hi\r\n");
    assert!(pair.stored[0].params.smtputf8);
    assert_eq!(pair.stored[0].from, env.from);
    assert_eq!(pair.stored[0].rcpts, env.to);
    pair.quit();

    // Without SMTPUTF8 on offer, the client refuses before sending anything.
    let server = ServerConfig {
        smtputf8: false,
        ..server_config()
    };
    let mut pair = Pair::accepting(client_config(), server);
    pair.ready();
    let err = pair.client.send(env, b"hi\r\n").unwrap_err();
    assert_eq!(err, SendError::Message(MessageError::Utf8NotOffered));
    assert!(pair.client.poll_transmit().is_none());
}

#[test]
fn client_refuses_bare_line_endings_before_sending() {
    // RFC 5321 2.3.8: CR and LF only as CRLF. The client refuses rather
    // than guess (and so can never be the relay in a smuggling attack).
    let mut pair = Pair::accepting(client_config(), server_config());
    pair.ready();
    for (body, offset) in [
        (&b"line\nnext\r\n"[..], 4),
        (b"a\r\nb\rc\r\n", 4),
        (b"ends in CR\r", 10),
        (b"\n.\nMAIL FROM:<x@y.org>\r\n", 0),
    ] {
        let err = pair
            .client
            .send(envelope("a@example.net", &["x@example.org"]), body)
            .unwrap_err();
        assert_eq!(
            err,
            SendError::Message(MessageError::BareLineEnding { offset })
        );
        assert!(pair.client.poll_transmit().is_none(), "nothing is sent");
        assert!(pair.client.is_ready(), "the session is still usable");
    }
}

#[test]
fn client_refuses_control_characters_in_addresses() {
    // An address with CR/LF would inject a command (RFC 5321 4.1.2: paths
    // hold no control characters).
    for bad in [
        "x@example.org>\r\nRCPT TO:<evil@example.org",
        "x@example.org\n",
        "x@exa\rmple.org",
        "x\u{0}@example.org",
    ] {
        let err = Envelope::parse("a@example.net", &[bad]).unwrap_err();
        assert!(
            matches!(err, MessageError::ControlInAddress { .. }),
            "{bad:?}: {err:?}"
        );
        let err = Envelope::parse(bad, &["x@example.org"]).unwrap_err();
        assert!(
            matches!(err, MessageError::ControlInAddress { .. }),
            "{bad:?}: {err:?}"
        );
        // And the path parser refuses them too, for callers that build
        // envelopes by hand.
        assert!(
            ForwardPath::parse(&format!("<{bad}>"), true).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn client_refuses_messages_over_the_advertised_size() {
    // RFC 1870 section 4: SIZE advertises the fixed maximum; 6.2 / 5: the
    // client should not send a larger message. Size counts CRLFs.
    let server = ServerConfig {
        max_message_size: 100,
        ..server_config()
    };
    let mut pair = Pair::accepting(client_config(), server);
    let caps = pair.ready();
    assert_eq!(caps.size, Some(100));
    let mut big = vec![b'x'; 99];
    big.extend_from_slice(b"\r\n"); // 101 octets
    let err = pair
        .client
        .send(envelope("a@example.net", &["x@example.org"]), &big)
        .unwrap_err();
    assert_eq!(
        err,
        SendError::Message(MessageError::TooBig {
            size: 101,
            limit: 100
        })
    );
    assert!(pair.client.poll_transmit().is_none());
    // 99 octets of text without a final CRLF become 101 on the wire (the
    // client adds the CRLF, RFC 5321 4.1.1.4): also too big.
    let err = pair
        .client
        .send(envelope("a@example.net", &["x@example.org"]), &[b'x'; 99])
        .unwrap_err();
    assert_eq!(
        err,
        SendError::Message(MessageError::TooBig {
            size: 101,
            limit: 100
        })
    );
    assert!(pair.client.poll_transmit().is_none());
    // Exactly 100 octets: the client sends it and the server agrees.
    let mut exact = vec![b'x'; 98];
    exact.extend_from_slice(b"\r\n");
    pair.client
        .send(envelope("a@example.net", &["x@example.org"]), &exact)
        .unwrap();
    pair.drive();
    assert_eq!(pair.stored.len(), 1);
    assert_eq!(pair.stored[0].params.size, Some(100));
    assert_eq!(pair.stored[0].size, 100);
    pair.quit();
}

#[test]
fn client_refuses_eight_bit_without_8bitmime() {
    // RFC 6152 section 3: no 8-bit data unless the server offered 8BITMIME.
    let server = ServerConfig {
        eightbitmime: false,
        ..server_config()
    };
    let mut pair = Pair::accepting(client_config(), server);
    pair.ready();
    let err = pair
        .client
        .send(
            envelope("a@example.net", &["x@example.org"]),
            "Grüße\r\n".as_bytes(),
        )
        .unwrap_err();
    assert_eq!(err, SendError::Message(MessageError::EightBitNotOffered));
    assert!(pair.client.poll_transmit().is_none());
    // 7-bit is fine, and no BODY parameter is sent to a server that did
    // not offer it.
    pair.client
        .send(
            envelope("a@example.net", &["x@example.org"]),
            b"Gruesse\r\n",
        )
        .unwrap();
    pair.drive();
    assert_eq!(pair.stored[0].params.body, None);
    pair.quit();
}

#[test]
fn client_refuses_overlong_lines() {
    // RFC 5321 4.5.3.1.6 / RFC 5322 2.1.1: at most 998 characters a line.
    let mut pair = Pair::accepting(client_config(), server_config());
    pair.ready();
    let mut body = b"ok\r\n".to_vec();
    body.extend_from_slice(&[b'x'; 999]);
    body.extend_from_slice(b"\r\n");
    let err = pair
        .client
        .send(envelope("a@example.net", &["x@example.org"]), &body)
        .unwrap_err();
    assert_eq!(
        err,
        SendError::Message(MessageError::LineTooLong {
            line: 2,
            limit: 1000
        })
    );
    assert!(pair.client.poll_transmit().is_none());
}

#[test]
fn two_messages_in_one_session() {
    let mut pair = Pair::accepting(client_config(), server_config());
    pair.ready();
    for i in 0..2 {
        let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
        pair.client
            .send(
                envelope("a@example.net", &["x@example.org"]),
                body.as_bytes(),
            )
            .unwrap();
        // A second send before the first finished is API misuse.
        assert!(pair
            .client
            .send(envelope("a@example.net", &["x@example.org"]), b"x\r\n")
            .is_err());
        pair.drive();
        assert_eq!(pair.stored[i].body, body.as_bytes());
    }
    assert_eq!(pair.reports().len(), 2);
    pair.quit();
}

// ---- A scripted fake server, for what ServerSession never does. ----

/// Feeds `reply` to the client and returns what it sent back.
fn exchange(client: &mut ClientSession, reply: &str) -> String {
    client.handle_input(reply.as_bytes());
    let mut out = Vec::new();
    while let Some(b) = client.poll_transmit() {
        out.extend_from_slice(&b);
    }
    String::from_utf8(out).unwrap()
}

fn events(client: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    // RFC 5321 3.2 and 4.1.4: a server that does not know EHLO answers 500
    // or 502 ("501, 500, 502, or 550 failure replies MUST be returned as
    // appropriate"); the client then uses HELO, and no extension at all.
    for refusal in [
        "500 5.5.2 Command unrecognized\r\n",
        "502 Command not implemented\r\n",
    ] {
        let mut c = ClientSession::new(client_config());
        assert_eq!(
            exchange(&mut c, "220 old.example.org SMTP\r\n"),
            "EHLO client.example.net\r\n"
        );
        assert_eq!(exchange(&mut c, refusal), "HELO client.example.net\r\n");
        assert_eq!(exchange(&mut c, "250 old.example.org\r\n"), "");
        let ev = events(&mut c);
        let Some(ClientEvent::Ready(caps)) = ev.first() else {
            panic!("{ev:?}")
        };
        assert!(!caps.esmtp && !caps.pipelining && caps.size.is_none());
        // No parameters after HELO (RFC 5321 2.2.1), no pipelining, and no
        // 8-bit data.
        assert_eq!(
            c.send(
                envelope("a@example.net", &["x@example.org"]),
                "ü\r\n".as_bytes()
            ),
            Err(SendError::Message(MessageError::EightBitNotOffered))
        );
        c.send(
            envelope("a@example.net", &["x@example.org", "y@example.org"]),
            b"hi\r\n",
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&c.poll_transmit().unwrap()).unwrap(),
            "MAIL FROM:<a@example.net>\r\n"
        );
        assert_eq!(
            exchange(&mut c, "250 ok\r\n"),
            "RCPT TO:<x@example.org>\r\n"
        );
        assert_eq!(
            exchange(&mut c, "550 no\r\n"),
            "RCPT TO:<y@example.org>\r\n"
        );
        assert_eq!(exchange(&mut c, "250 ok\r\n"), "DATA\r\n");
        assert_eq!(exchange(&mut c, "354 go\r\n"), "hi\r\n.\r\n");
        assert_eq!(exchange(&mut c, "250 queued\r\n"), "");
        let ev = events(&mut c);
        let [ClientEvent::Sent(report)] = &ev[..] else {
            panic!("{ev:?}")
        };
        // x got the 550, y the 250 and then the end-of-data 250.
        assert!(
            matches!(&report.recipients[0].1, RecipientOutcome::Permanent(r) if r.code().get() == 550),
            "{report:?}"
        );
        assert!(
            matches!(&report.recipients[1].1, RecipientOutcome::Accepted(r) if r.text() == "queued"),
            "{report:?}"
        );
        c.quit();
        assert_eq!(c.poll_transmit().as_deref(), Some(&b"QUIT\r\n"[..]));
        assert_eq!(exchange(&mut c, "221 bye\r\n"), "");
        assert!(c.is_closed() && c.error().is_none());
    }
}

#[test]
fn helo_refused_too_ends_the_session() {
    let mut c = ClientSession::new(client_config());
    exchange(&mut c, "220 old.example.org SMTP\r\n");
    assert_eq!(
        exchange(&mut c, "502 no\r\n"),
        "HELO client.example.net\r\n"
    );
    exchange(&mut c, "550 go away\r\n");
    assert!(c.is_closed());
    assert!(matches!(c.error(), Some(ClientError::Refused { .. })));
    assert!(!c.error().unwrap().is_transient());
}

#[test]
fn client_sends_only_advertised_parameters() {
    // RFC 5321 2.2.1 / RFC 1870 / RFC 6152: a parameter only when offered.
    // SIZE offered without 8BITMIME: SIZE is sent, BODY is not.
    let mut c = ClientSession::new(client_config());
    exchange(&mut c, "220 mx.example.org ESMTP\r\n");
    exchange(
        &mut c,
        "250-mx.example.org\r\n250-SIZE 1000\r\n250 ENHANCEDSTATUSCODES\r\n",
    );
    c.send(envelope("a@example.net", &["x@example.org"]), b"hi\r\n")
        .unwrap();
    // No PIPELINING offered: only MAIL goes out.
    assert_eq!(
        std::str::from_utf8(&c.poll_transmit().unwrap()).unwrap(),
        "MAIL FROM:<a@example.net> SIZE=4\r\n"
    );
}

#[test]
fn client_pipelines_only_when_offered() {
    // RFC 2920 3.1: with PIPELINING offered, MAIL/RCPT/DATA go as one group
    // with DATA last.
    let mut c = ClientSession::new(client_config());
    exchange(&mut c, "220 mx.example.org ESMTP\r\n");
    exchange(&mut c, "250-mx.example.org\r\n250 PIPELINING\r\n");
    c.send(
        envelope("a@example.net", &["x@example.org", "y@example.org"]),
        b"hi\r\n",
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&c.poll_transmit().unwrap()).unwrap(),
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n"
    );
    // Replies in order; the body goes only after 354.
    assert_eq!(exchange(&mut c, "250 a\r\n250 b\r\n250 c\r\n"), "");
    assert_eq!(exchange(&mut c, "354 go\r\n"), "hi\r\n.\r\n");
}

#[test]
fn greeting_refused() {
    // RFC 5321 3.1: a 554 greeting means no service; the client must not
    // go on (and 554 is permanent).
    let mut c = ClientSession::new(client_config());
    assert_eq!(exchange(&mut c, "554 no service here\r\n"), "");
    assert!(c.is_closed());
    assert!(!c.error().unwrap().is_transient());
}

// ---- AUTH (RFC 4954) between the real client and server. ----

fn auth_pair(mechanisms: &[Mechanism], encrypted: bool) -> Pair {
    let server = ServerConfig {
        auth_mechanisms: mechanisms.to_vec(),
        ..server_config()
    };
    let mut pair = Pair::accepting(client_config(), server);
    pair.server.set_encrypted(encrypted);
    pair.users.push((
        "user".into(),
        ScramCredential::from_password("pencil", b"0123456789abcdef", 4096),
    ));
    pair.ready();
    pair
}

fn auth_outcome(pair: &Pair) -> Option<Result<Mechanism, AuthError>> {
    pair.client_events.iter().find_map(|e| match e {
        ClientEvent::Authenticated(r) => Some(r.clone()),
        _ => None,
    })
}

#[test]
fn each_mechanism_authenticates_and_the_session_goes_on() {
    for mechanism in Mechanism::ALL {
        let mut pair = auth_pair(&[mechanism], true);
        let chosen = pair
            .client
            .authenticate(&Credentials::new("user", "pencil"), true, "clientNonce42")
            .unwrap();
        assert_eq!(chosen, mechanism);
        pair.drive();
        assert_eq!(auth_outcome(&pair), Some(Ok(mechanism)), "{mechanism}");
        assert_eq!(pair.server.authenticated_user(), Some("user"));
        assert!(pair.server_events.contains(&ServerEvent::Authenticated {
            mechanism,
            username: "user".into()
        }));
        // The password never appears on the wire in clear with SCRAM.
        let wire: Vec<u8> = pair
            .server_deliveries
            .iter()
            .flat_map(|d| d.bytes.to_vec())
            .collect();
        assert!(!String::from_utf8_lossy(&wire).contains("pencil"));
        pair.client
            .send(
                envelope("user@example.net", &["bob@example.org"]),
                b"hi\r\n",
            )
            .unwrap();
        pair.drive();
        assert!(pair.reports()[0].all_accepted(), "{mechanism}");
        pair.quit();
    }
}

#[test]
fn client_prefers_scram_and_keeps_passwords_off_plaintext_links() {
    let mut pair = auth_pair(
        &[Mechanism::Login, Mechanism::Plain, Mechanism::ScramSha256],
        true,
    );
    let creds = Credentials::new("user", "pencil");
    assert_eq!(
        pair.client.authenticate(&creds, true, "n1").unwrap(),
        Mechanism::ScramSha256
    );
    pair.drive();
    assert_eq!(auth_outcome(&pair), Some(Ok(Mechanism::ScramSha256)));

    // Only PLAIN and LOGIN offered (a trusted listener), but the client's
    // link is not safe for passwords: nothing is sent.
    let server = ServerConfig {
        auth_mechanisms: vec![Mechanism::Plain, Mechanism::Login],
        auth_plaintext_trusted: true,
        ..server_config()
    };
    let mut pair = Pair::accepting(client_config(), server);
    pair.users.push((
        "user".into(),
        ScramCredential::from_password("pencil", b"salt", 4096),
    ));
    pair.ready();
    let sent_before = pair.server_deliveries.len();
    let err = pair.client.authenticate(&creds, false, "n1").unwrap_err();
    assert!(
        matches!(&err, AuthStartError::Auth(AuthError::NoMechanism { offered, plaintext_allowed: false }) if offered == &["PLAIN", "LOGIN"]),
        "{err:?}"
    );
    assert!(pair.client.poll_transmit().is_none());
    pair.drive();
    assert_eq!(pair.server_deliveries.len(), sent_before);
    // Allowed: PLAIN beats LOGIN.
    assert_eq!(
        pair.client.authenticate(&creds, true, "n1").unwrap(),
        Mechanism::Plain
    );
    pair.drive();
    assert_eq!(auth_outcome(&pair), Some(Ok(Mechanism::Plain)));
    // A server without AUTH: a clear error, nothing sent.
    let mut pair = Pair::accepting(client_config(), server_config());
    pair.ready();
    assert!(matches!(
        pair.client.authenticate(&creds, true, "n1"),
        Err(AuthStartError::Auth(AuthError::NoMechanism { .. }))
    ));
    assert!(pair.client.poll_transmit().is_none());
}

#[test]
fn wrong_password_and_unknown_user_are_refused_and_the_session_goes_on() {
    for mechanism in Mechanism::ALL {
        for (user, password) in [("user", "wrong"), ("nobody", "pencil")] {
            let mut pair = auth_pair(&[mechanism], true);
            pair.client
                .authenticate(&Credentials::new(user, password), true, "abc")
                .unwrap();
            pair.drive();
            let Some(Err(AuthError::Rejected(reply))) = auth_outcome(&pair) else {
                panic!("{mechanism} {user}: {:?}", auth_outcome(&pair))
            };
            assert_eq!(reply.code().get(), 535);
            assert_eq!(pair.server.authenticated_user(), None);
            assert!(pair.client.is_ready());
            pair.quit();
        }
    }
}

/// A server that says 235 without a valid ServerSignature is not the
/// server that holds our credential: the client fails the session.
#[test]
fn scram_client_rejects_a_server_that_cannot_prove_itself() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let start = |c: &mut ClientSession| {
        exchange(c, "220 mx ESMTP\r\n");
        exchange(c, "250-mx\r\n250 AUTH SCRAM-SHA-256\r\n");
        c.authenticate(
            &Credentials::new("user", "pencil"),
            false,
            "rOprNGfwEbeRWgbNEkqO",
        )
        .unwrap();
        let line = String::from_utf8(c.poll_transmit().unwrap().to_vec()).unwrap();
        assert_eq!(
            line,
            format!(
                "AUTH SCRAM-SHA-256 {}\r\n",
                b64("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            )
        );
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = exchange(c, &format!("334 {}\r\n", b64(server_first)));
        assert_eq!(fin, format!("{}\r\n", b64("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")));
    };
    // 235 straight after client-final: no signature at all.
    let mut c = ClientSession::new(client_config());
    start(&mut c);
    exchange(&mut c, "235 2.7.0 ok\r\n");
    assert!(c.is_closed());
    assert_eq!(
        c.error(),
        Some(&ClientError::ServerAuthentication(
            SaslClientError::ServerSignature
        ))
    );
    // A wrong signature: the client cancels, and a 235 anyway still fails.
    let mut c = ClientSession::new(client_config());
    start(&mut c);
    let cancel = exchange(
        &mut c,
        &format!(
            "334 {}\r\n",
            b64("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        ),
    );
    assert_eq!(cancel, "*\r\n");
    exchange(&mut c, "235 2.7.0 ok\r\n");
    assert!(c.is_closed());
    assert!(!c.error().unwrap().is_transient());
    // The right signature, then 235: authenticated.
    let mut c = ClientSession::new(client_config());
    start(&mut c);
    assert_eq!(
        exchange(
            &mut c,
            &format!(
                "334 {}\r\n",
                b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            )
        ),
        "\r\n"
    );
    exchange(&mut c, "235 2.7.0 ok\r\n");
    let ev = events(&mut c);
    assert!(
        ev.contains(&ClientEvent::Authenticated(Ok(Mechanism::ScramSha256))),
        "{ev:?}"
    );
    assert!(c.is_ready());
    // A cancelled exchange answered 501: an error event, the session goes on.
    let mut c = ClientSession::new(client_config());
    start(&mut c);
    exchange(
        &mut c,
        &format!(
            "334 {}\r\n",
            b64("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        ),
    );
    exchange(&mut c, "501 5.0.0 Authentication cancelled\r\n");
    let ev = events(&mut c);
    assert!(
        ev.contains(&ClientEvent::Authenticated(Err(AuthError::Sasl(
            SaslClientError::ServerSignature
        )))),
        "{ev:?}"
    );
    assert!(c.is_ready());
}
