//! A ServerSession fed arbitrary bytes in arbitrary chunks, accepting every
//! decision: it never panics, its output is always a sequence of complete,
//! well-formed replies (RFC 5321 4.2) whose lines fit in 512 octets
//! (4.5.3.1.5), and it is the same however the input was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplink_engine::{
    BareLineEndingPolicy, ReplyParser, ServerConfig, ServerEvent, ServerSession,
};

#[path = "common.rs"]
mod common;

fn run(config: &ServerConfig, pieces: &[&[u8]]) -> (Vec<u8>, Vec<ServerEvent>) {
    let mut s = ServerSession::new(config.clone());
    let mut out = Vec::new();
    let mut events: Vec<ServerEvent> = Vec::new();
    let pump = |s: &mut ServerSession, out: &mut Vec<u8>, events: &mut Vec<ServerEvent>| loop {
        let mut moved = false;
        while let Some(e) = s.poll_event() {
            moved = true;
            match (events.last_mut(), e) {
                (Some(ServerEvent::DataChunk(prev)), ServerEvent::DataChunk(more)) => {
                    let mut joined = prev.to_vec();
                    joined.extend_from_slice(&more);
                    *prev = joined.into();
                }
                (_, e) => events.push(e),
            }
        }
        if s.wants_decision() {
            moved = true;
            s.accept().expect("a pending decision can be accepted");
        }
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
        if !moved {
            break;
        }
    };
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
    let stream = if flags & 0x80 != 0 {
        common::remap(stream)
    } else {
        stream.to_vec()
    };
    let small = flags & 4 != 0;
    let config = ServerConfig {
        hostname: "mx.example.org".into(),
        bare_line_endings: if flags & 1 != 0 {
            BareLineEndingPolicy::Reject
        } else {
            BareLineEndingPolicy::Normalize
        },
        pipelining: flags & 2 == 0,
        max_message_size: if small { 64 } else { 25 << 20 },
        max_text_line: if small { 16 } else { 1000 },
        max_recipients: if small { 2 } else { 100 },
        max_errors: if small { 3 } else { 10 },
        eightbitmime: flags & 8 == 0,
        smtputf8: flags & 16 == 0,
        ..ServerConfig::default()
    };
    let whole = run(&config, &[&stream]);
    let chunked = run(
        &config,
        &common::pieces(&stream, &common::chunks(stream.len(), *seed)),
    );
    assert_eq!(whole, chunked, "the split changed the session");

    let out = &whole.0;
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
        assert!(
            !line[..line.len() - 2].contains(&b'\r'),
            "bare CR: {line:?}"
        );
        assert!(line.len() <= 512, "reply line of {} octets", line.len());
    }
    let mut p = ReplyParser::new();
    p.push(out);
    while p.next_reply().expect("well-formed replies").is_some() {}
    assert_eq!(p.buffered(), 0);
});
