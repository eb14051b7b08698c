//! A ClientSession with a message to send, fed arbitrary server bytes in
//! arbitrary chunks: it never panics, and everything it sends is made of
//! CRLF-terminated lines with no bare CR or LF (no smuggling from us).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplink_engine::{ClientConfig, ClientSession, Envelope};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let stream = if flags & 0x80 != 0 {
        common::remap(stream)
    } else {
        stream.to_vec()
    };
    let mut c = ClientSession::new(ClientConfig {
        hello_name: "client.example.net".into(),
        pipelining: flags & 1 == 0,
    });
    let envelope =
        Envelope::parse("a@example.net", &["b@example.org", "c@example.org"]).expect("envelope");
    let body: &[u8] = if flags & 2 == 0 {
        b"Subject: x\r\n\r\n.dot\r\nbody\r\n"
    } else {
        "8-bit: \u{e9}\r\n".as_bytes()
    };
    let mut out = Vec::new();
    let mut sent = 0;
    for piece in common::pieces(&stream, &common::chunks(stream.len(), *seed)) {
        c.handle_input(piece);
        while c.poll_event().is_some() {}
        if c.is_ready() && sent < 2 {
            sent += 1;
            let _ = c.send(envelope.clone(), body);
        }
        if sent == 2 && c.is_ready() {
            c.quit();
        }
        while let Some(b) = c.poll_transmit() {
            out.extend_from_slice(&b);
        }
    }
    c.handle_eof();
    while c.poll_event().is_some() {}
    assert!(common::only_crlf(&out), "bare CR/LF in client output");
    assert!(out.is_empty() || out.ends_with(b"\r\n"));
});
