//! The DATA codec: dot_stuff then DataDecoder gives the body back and ends
//! exactly at the terminator (RFC 5321 4.5.2, 4.1.1.4); and the decoder on
//! raw input gives the same result whole or in chunks.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtplink_engine::data::{dot_stuff, DataDecoder, DataLimits, DataProgress};
use smtplink_engine::{BareLineEndingPolicy, DataFault};

#[path = "common.rs"]
mod common;

type Outcome = (Vec<u8>, bool, Vec<u8>, Option<DataFault>, u64);

fn decode(pieces: &[&[u8]], limits: DataLimits) -> Outcome {
    let mut d = DataDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut ended = false;
    for piece in pieces {
        buf.extend_from_slice(piece);
        if !ended && d.decode(&mut buf, &mut out) == DataProgress::End {
            ended = true;
        }
    }
    (out.to_vec(), ended, buf.to_vec(), d.fault(), d.size())
}

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

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let body = if seed & 0x80 != 0 {
        common::remap(body)
    } else {
        body.to_vec()
    };
    let mut expected = body.clone();
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    let mut wire = dot_stuff(&body);
    wire.extend_from_slice(b"QUIT\r\n");
    let cuts = common::chunks(wire.len(), seed);
    let unlimited = |policy| DataLimits {
        max_line: usize::MAX,
        max_size: u64::MAX,
        bare_line_endings: policy,
    };

    let (out, ended, rest, fault, _) = decode(
        &common::pieces(&wire, &cuts),
        unlimited(BareLineEndingPolicy::Reject),
    );
    assert!(ended);
    assert_eq!(rest, b"QUIT\r\n");
    if common::only_crlf(&body) {
        assert_eq!(fault, None);
        assert_eq!(out, expected);
    } else {
        assert_eq!(fault, Some(DataFault::BareLineEnding));
        assert!(expected.starts_with(&out));
    }
    let (out, ended, rest, fault, _) = decode(
        &common::pieces(&wire, &cuts),
        unlimited(BareLineEndingPolicy::Normalize),
    );
    assert!(ended);
    assert_eq!(rest, b"QUIT\r\n");
    assert_eq!(fault, None);
    assert_eq!(out, normalized(&expected));

    // Raw (unstuffed) input with small limits: whole == chunked.
    let limits = DataLimits {
        max_line: usize::from(seed % 16) + 1,
        max_size: u64::from(seed / 4),
        bare_line_endings: if seed & 1 == 0 {
            BareLineEndingPolicy::Normalize
        } else {
            BareLineEndingPolicy::Reject
        },
    };
    let whole = decode(&[&body], limits);
    let chunked = decode(
        &common::pieces(&body, &common::chunks(body.len(), seed)),
        limits,
    );
    assert_eq!(whole, chunked);
});
