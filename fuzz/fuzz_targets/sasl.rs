//! AUTH exchanges on a ServerSession with arbitrary client input: every
//! mechanism configured, the link encrypted or not (flag bit 0), every
//! credential lookup answered with a known user (flag bit 1) or a decoy.
//! Never panics; replies are complete and well-formed with lines of at most
//! 512 octets; the result is the same however the input is split; and PLAIN
//! or LOGIN never let in a client that did not send the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplink_engine::{
    CredentialLookup, Mechanism, ReplyParser, ScramCredential, ServerConfig, ServerEvent,
    ServerSession,
};

#[path = "common.rs"]
mod common;

fn run(flags: u8, pieces: &[&[u8]]) -> (Vec<u8>, Vec<ServerEvent>) {
    let mut s = ServerSession::new(ServerConfig {
        hostname: "mx.example.org".into(),
        auth_mechanisms: Mechanism::ALL.to_vec(),
        max_errors: 50,
        ..ServerConfig::default()
    });
    s.set_encrypted(flags & 1 != 0);
    // One iteration: the fuzzer is after the state machine, not PBKDF2.
    let credential = ScramCredential::from_password("pencil", b"salt", 1);
    let pump = |s: &mut ServerSession, out: &mut Vec<u8>, events: &mut Vec<ServerEvent>| loop {
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
        if s.wants_decision() {
            let answer = if flags & 2 != 0 {
                CredentialLookup::Found(credential.clone())
            } else {
                CredentialLookup::NoSuchUser {
                    decoy_salt: b"decoy".to_vec(),
                    iterations: 1,
                }
            };
            if s.answer_auth_lookup(answer, "fuzzNonce").is_err() {
                s.accept().expect("a non-AUTH decision can be accepted");
            }
            continue;
        }
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
        break;
    };
    let mut out = Vec::new();
    let mut events = Vec::new();
    pump(&mut s, &mut out, &mut events);
    for piece in pieces {
        s.handle_input(piece);
        pump(&mut s, &mut out, &mut events);
    }
    (out, events)
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let mut input = b"EHLO fuzz.example\r\n".to_vec();
    input.extend_from_slice(stream);
    let whole = run(*flags, &[&input]);
    let chunked = run(
        *flags,
        &common::pieces(&input, &common::chunks(input.len(), *seed)),
    );
    assert_eq!(whole, chunked, "the split changed the session");
    let out = &whole.0;
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
        assert!(line.len() <= 512, "reply line of {} octets", line.len());
    }
    let mut p = ReplyParser::new();
    p.push(out);
    while p.next_reply().expect("well-formed replies").is_some() {}
    // PLAIN and LOGIN let in only a client that sent the password: some
    // base64 token of the input must decode to something holding it.
    let sent_password = stream
        .split(|b| b" \r\n".contains(b))
        .filter_map(smtplink_engine::sasl::decode_response)
        .any(|d| d.windows(6).any(|w| w == b"pencil"));
    let via_password = whole.1.iter().any(|e| {
        matches!(e, ServerEvent::Authenticated { mechanism, .. } if mechanism.sends_password())
    });
    assert!(sent_password || !via_password, "authenticated without the password");
});
