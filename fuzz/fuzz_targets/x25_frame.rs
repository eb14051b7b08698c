//! smtplink-x25 framing decoder on arbitrary bytes, whole and in chunks:
//! never panics, gives the same frames and the same counters however the
//! bytes arrive, and every frame it returns re-encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplink_x25::{AccmMap, FcsKind, FrameConfig, FrameDecoder, FrameEncoder};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let [flags, seed, input @ ..] = data else {
        return;
    };
    let config = FrameConfig {
        fcs: if flags & 1 == 0 {
            FcsKind::Crc32
        } else {
            FcsKind::Crc16
        },
        accm: match (flags >> 1) & 3 {
            0 => AccmMap::none(),
            1 => AccmMap::xon_xoff(),
            2 => AccmMap::from_async_map(u32::MAX),
            _ => AccmMap::from_async_map(0x5555_5555),
        },
        // Small limits reach the too-long path quickly.
        max_payload: if flags & 8 == 0 {
            8192
        } else {
            usize::from(flags >> 4) + 1
        },
    };

    let mut whole = FrameDecoder::new(config);
    let mut frames = Vec::new();
    whole.decode_all(input, &mut frames);
    whole.finish();

    let mut chunked = FrameDecoder::new(config);
    let mut frames2 = Vec::new();
    for piece in common::pieces(input, &common::chunks(input.len(), *seed)) {
        chunked.decode_all(piece, &mut frames2);
    }
    chunked.finish();
    assert_eq!(frames, frames2);
    assert_eq!(whole.stats(), chunked.stats());
    assert_eq!(whole.stats().frames as usize, frames.len());

    let mut enc = FrameEncoder::new(config);
    for frame in &frames {
        assert!(!frame.is_empty() && frame.len() <= config.max_payload);
        let wire = enc
            .encode_to_vec(frame)
            .expect("a decoded frame re-encodes");
        let mut dec = FrameDecoder::new(config);
        let mut again = Vec::new();
        dec.decode_all(&wire, &mut again);
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0], frame);
        assert_eq!(dec.stats().dropped(), 0);
    }
});
