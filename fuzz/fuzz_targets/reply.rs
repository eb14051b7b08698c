//! ReplyParser on arbitrary bytes, whole and in chunks: never panics, gives
//! the same replies (and the same first error) however the bytes arrive,
//! and every reply it produces writes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplink_engine::{Reply, ReplyParser};

#[path = "common.rs"]
mod common;

fn parse(pieces: &[&[u8]]) -> (Vec<Reply>, bool) {
    let mut p = ReplyParser::new();
    let mut out = Vec::new();
    for piece in pieces {
        p.push(piece);
        loop {
            match p.next_reply() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let input = if seed & 0x80 != 0 {
        common::remap(input)
    } else {
        input.to_vec()
    };
    let whole = parse(&[&input]);
    let chunked = parse(&common::pieces(&input, &common::chunks(input.len(), seed)));
    assert_eq!(whole, chunked);
    for r in &whole.0 {
        let mut wire = Vec::new();
        r.write_to(&mut wire);
        let mut p = ReplyParser::with_limits(usize::MAX, usize::MAX);
        p.push(&wire);
        assert_eq!(p.next_reply().expect("re-parse").as_ref(), Some(r));
        assert_eq!(p.buffered(), 0);
    }
});
