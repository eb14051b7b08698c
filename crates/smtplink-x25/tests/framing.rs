//! Layer 1 (framing) tests: check values, escaping, round trips under any
//! chunking, and corruption never yielding a wrong payload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use smtplink_x25::framing::{ESCAPE, FLAG};
use smtplink_x25::{
    AccmMap, DecodeStats, FcsKind, FrameCodec, FrameConfig, FrameDecoder, FrameEncoder, FrameError,
    InvalidEscape,
};
use tokio_util::codec::{Decoder, Encoder};

fn cfg(fcs: FcsKind, accm: AccmMap) -> FrameConfig {
    FrameConfig {
        fcs,
        accm,
        ..FrameConfig::default()
    }
}

fn encode_all(config: FrameConfig, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut enc = FrameEncoder::new(config);
    let mut out = BytesMut::new();
    for p in payloads {
        enc.encode_into(p, &mut out).unwrap();
    }
    out.to_vec()
}

fn decode(config: FrameConfig, wire: &[u8]) -> (Vec<Bytes>, DecodeStats) {
    let mut dec = FrameDecoder::new(config);
    let mut out = Vec::new();
    dec.decode_all(wire, &mut out);
    (out, *dec.stats())
}

/// Decodes `wire` cut at the (sorted, deduplicated) positions in `cuts`.
fn decode_split(config: FrameConfig, wire: &[u8], cuts: &[usize]) -> (Vec<Bytes>, DecodeStats) {
    let mut dec = FrameDecoder::new(config);
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
        let c = c.min(wire.len()).max(start);
        dec.decode_all(&wire[start..c], &mut out);
        start = c;
    }
    (out, *dec.stats())
}

#[test]
fn crc_check_values() {
    assert_eq!(FcsKind::Crc32.checksum(b"123456789"), 0xCBF4_3926);
    assert_eq!(FcsKind::Crc16.checksum(b"123456789"), 0x906E);
    assert_eq!(FcsKind::Crc32.size(), 4);
    assert_eq!(FcsKind::Crc16.size(), 2);
}

#[test]
fn fcs_is_sent_lsb_first_and_residue_is_good() {
    // CRC-32 of "123456789" is 0xCBF43926: on the wire 26 39 F4 CB.
    let wire = FrameEncoder::default().encode_to_vec(b"123456789").unwrap();
    assert_eq!(wire[0], FLAG);
    assert_eq!(&wire[1..10], b"123456789");
    assert_eq!(&wire[10..14], &[0x26, 0x39, 0xF4, 0xCB]);
    assert_eq!(wire[14], FLAG);
    assert_eq!(wire.len(), 15);
    // The HDLC good-FCS residue: the CRC register over data+FCS (without
    // the final xor) is 0xDEBB20E3, i.e. the checksum is 0x2144DF1C.
    assert_eq!(FcsKind::Crc32.checksum(&wire[1..14]), 0x2144_DF1C);

    let mut enc = FrameEncoder::new(cfg(FcsKind::Crc16, AccmMap::none()));
    let wire = enc.encode_to_vec(b"123456789").unwrap();
    assert_eq!(&wire[10..12], &[0x6E, 0x90]);
    // RFC 1662 good FCS-16 residue 0xF0B8 (before the final complement).
    assert_eq!(FcsKind::Crc16.checksum(&wire[1..12]), 0xF0B8 ^ 0xFFFF);
}

#[test]
fn default_map_escapes_only_flag_and_escape() {
    let payload = b"HELO a\r\n\x11\x13\x00\x1f\xff";
    let wire = FrameEncoder::default().encode_to_vec(payload).unwrap();
    // No escapes in the payload part: it appears verbatim.
    assert_eq!(&wire[1..1 + payload.len()], payload);

    let wire = FrameEncoder::default()
        .encode_to_vec(&[FLAG, ESCAPE, 1])
        .unwrap();
    assert_eq!(&wire[1..6], &[ESCAPE, 0x5E, ESCAPE, 0x5D, 1]);
    let (got, _) = decode(FrameConfig::default(), &wire);
    assert_eq!(got, vec![Bytes::from_static(&[FLAG, ESCAPE, 1])]);
}

#[test]
fn every_escape_case_decodes() {
    let cases: &[&[u8]] = &[
        &[FLAG],
        &[ESCAPE],
        &[FLAG, FLAG],
        &[ESCAPE, ESCAPE],
        &[ESCAPE, FLAG, ESCAPE],
        &[0x5D, 0x5E],
        &[0x20, ESCAPE, 0x20],
    ];
    for map in [
        AccmMap::none(),
        AccmMap::xon_xoff(),
        AccmMap::from_async_map(u32::MAX),
    ] {
        for fcs in [FcsKind::Crc32, FcsKind::Crc16] {
            let config = cfg(fcs, map);
            let payloads: Vec<Vec<u8>> = cases.iter().map(|c| c.to_vec()).collect();
            let wire = encode_all(config, &payloads);
            let (got, stats) = decode(config, &wire);
            assert_eq!(got, payloads, "{fcs:?} {map:?}");
            assert_eq!(stats.dropped(), 0);
        }
    }
}

#[test]
fn escaped_non_special_bytes_are_accepted() {
    // A sender may escape any byte; 0x7D 0x61 is 'A'.
    let payload = b"A";
    let mut frame = payload.to_vec();
    frame.extend_from_slice(&FcsKind::Crc32.checksum(payload).to_le_bytes());
    let mut wire = vec![FLAG, ESCAPE, b'A' ^ 0x20];
    wire.extend_from_slice(&frame[1..]);
    wire.push(FLAG);
    let (got, _) = decode(FrameConfig::default(), &wire);
    assert_eq!(got, vec![Bytes::from_static(b"A")]);
}

#[test]
fn every_byte_value_round_trips() {
    let all: Vec<u8> = (0..=255u8).collect();
    let singles: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for map in [
        AccmMap::none(),
        AccmMap::xon_xoff(),
        AccmMap::from_async_map(u32::MAX),
    ] {
        for fcs in [FcsKind::Crc32, FcsKind::Crc16] {
            let config = cfg(fcs, map);
            let wire = encode_all(config, std::slice::from_ref(&all));
            assert_eq!(decode(config, &wire).0, vec![Bytes::from(all.clone())]);
            let wire = encode_all(config, &singles);
            let (got, stats) = decode(config, &wire);
            assert_eq!(got.len(), 256);
            assert!(got.iter().zip(&singles).all(|(g, s)| g[..] == s[..]));
            assert_eq!(stats.frames, 256);
        }
    }
}

#[test]
fn xon_xoff_map_never_emits_raw_flow_control() {
    let all: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let config = cfg(FcsKind::Crc32, AccmMap::xon_xoff());
    let mut payloads = vec![all];
    // Payloads whose FCS contains the flow-control bytes too.
    payloads.extend((0..2000u32).map(|i| i.to_le_bytes().to_vec()));
    let wire = encode_all(config, &payloads);
    for b in [0x11, 0x13, 0x91, 0x93] {
        assert!(!wire.contains(&b), "raw {b:#04x} on the wire");
    }
    let (got, _) = decode(config, &wire);
    assert_eq!(got.len(), payloads.len());
    assert!(got.iter().zip(&payloads).all(|(g, p)| g[..] == p[..]));

    // XON/XOFF inserted by the line are discarded by the receiver.
    let mut noisy = Vec::new();
    for (i, &b) in wire.iter().enumerate() {
        if i % 7 == 3 {
            noisy.push(if i % 2 == 0 { 0x11 } else { 0x93 });
        }
        noisy.push(b);
    }
    let (got2, stats) = decode(config, &noisy);
    assert_eq!(got2, got);
    assert!(stats.accm_discarded > 0);
}

#[test]
fn accm_map_rules() {
    let m = AccmMap::xon_xoff();
    for b in [0x11, 0x13, 0x91, 0x93] {
        assert!(m.contains(b) && m.escapes(b));
    }
    assert!(!m.contains(b'\r') && !m.escapes(b'\n'));
    assert!(AccmMap::none().escapes(FLAG) && AccmMap::none().escapes(ESCAPE));
    assert!(!AccmMap::none().contains(FLAG));
    assert_eq!(
        AccmMap::from_async_map(0x000A_0000),
        AccmMap::none().with(0x11).unwrap().with(0x13).unwrap()
    );
    // Bytes whose escaped form would be a flag/escape, or whose escaped
    // form is already in the map, are refused.
    assert_eq!(AccmMap::none().with(0x5E), Err(InvalidEscape(0x5E)));
    assert_eq!(AccmMap::none().with(0x5D), Err(InvalidEscape(0x5D)));
    assert_eq!(m.with(0x31), Err(InvalidEscape(0x31)));
    assert_eq!(AccmMap::none().with(FLAG), Ok(AccmMap::none()));
}

#[test]
fn garbage_before_first_flag_is_discarded() {
    let wire = FrameEncoder::default().encode_to_vec(b"hello").unwrap();
    let mut stream = b"line noise \x00\xff\x7d".to_vec();
    let garbage = stream.len() as u64;
    stream.extend_from_slice(&wire);
    let (got, stats) = decode(FrameConfig::default(), &stream);
    assert_eq!(got, vec![Bytes::from_static(b"hello")]);
    assert_eq!(stats.hunt_bytes, garbage);
    assert_eq!(stats.dropped(), 0);
}

#[test]
fn empty_frames_and_shared_flags() {
    let a = FrameEncoder::default().encode_to_vec(b"a").unwrap();
    let b = FrameEncoder::default().encode_to_vec(b"b").unwrap();
    // Many flags between frames, and a flag shared by two frames.
    let mut stream = vec![FLAG; 5];
    stream.extend_from_slice(&a);
    stream.extend_from_slice(&[FLAG; 3]);
    stream.extend_from_slice(&b[..b.len() - 1]);
    stream.extend_from_slice(&a[..]);
    let (got, stats) = decode(FrameConfig::default(), &stream);
    let want: Vec<Bytes> = ["a", "b", "a"]
        .iter()
        .map(|s| Bytes::from(s.as_bytes()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(stats.dropped(), 0);
    assert_eq!(stats.frames, 3);
}

#[test]
fn bad_frames_are_counted_and_decoder_resyncs() {
    let good = FrameEncoder::default().encode_to_vec(b"good").unwrap();
    let config = FrameConfig {
        max_payload: 16,
        ..FrameConfig::default()
    };
    let mut stream = Vec::new();
    // Bad FCS.
    let mut bad = good.clone();
    bad[2] ^= 0x01;
    stream.extend_from_slice(&bad);
    stream.extend_from_slice(&good);
    // Too short: FCS length or less.
    stream.extend_from_slice(&[FLAG, 1, 2, 3, 4, FLAG]);
    stream.extend_from_slice(&[FLAG, 1, FLAG]);
    stream.extend_from_slice(&good);
    // Bad escape: 0x7D then the flag (abort).
    stream.extend_from_slice(&[FLAG, 1, 2, 3, 4, 5, ESCAPE, FLAG]);
    stream.extend_from_slice(&good);
    // Too long.
    stream.push(FLAG);
    stream.extend_from_slice(&[0x55; 100]);
    stream.push(FLAG);
    stream.extend_from_slice(&good);
    // A frame exactly at the maximum is fine.
    let max = FrameEncoder::new(config).encode_to_vec(&[9; 16]).unwrap();
    stream.extend_from_slice(&max);
    // Truncated at end of stream.
    stream.extend_from_slice(&good[..5]);

    let mut dec = FrameDecoder::new(config);
    let mut got = Vec::new();
    dec.decode_all(&stream, &mut got);
    dec.finish();
    let want = vec![
        Bytes::from_static(b"good"),
        Bytes::from_static(b"good"),
        Bytes::from_static(b"good"),
        Bytes::from_static(b"good"),
        Bytes::from(vec![9u8; 16]),
    ];
    assert_eq!(got, want);
    let s = *dec.stats();
    assert_eq!(
        (
            s.bad_fcs,
            s.too_short,
            s.bad_escape,
            s.too_long,
            s.truncated
        ),
        (1, 2, 1, 1, 1)
    );
    assert_eq!(s.frames, 5);
    assert_eq!(s.dropped(), 6);
}

#[test]
fn encoder_refuses_empty_and_overlong() {
    let mut enc = FrameEncoder::new(FrameConfig {
        max_payload: 4,
        ..FrameConfig::default()
    });
    assert!(matches!(enc.encode_to_vec(b""), Err(FrameError::Empty)));
    assert!(matches!(
        enc.encode_to_vec(b"12345"),
        Err(FrameError::TooLong { len: 5, max: 4 })
    ));
    assert!(enc.encode_to_vec(b"1234").is_ok());
}

#[test]
fn tokio_codec_round_trip_and_eof() {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(Bytes::from_static(b"one"), &mut buf).unwrap();
    codec.encode(&b"two"[..], &mut buf).unwrap();
    buf.extend_from_slice(&[FLAG, 1, 2]);
    let mut got = Vec::new();
    while let Some(f) = codec.decode(&mut buf).unwrap() {
        got.push(f);
    }
    assert!(buf.is_empty());
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    assert_eq!(
        got,
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    assert_eq!(codec.stats().truncated, 1);
    assert_eq!(codec.stats().frames, 2);
}

/// Every bit of a three-frame stream flipped in turn: no frame other than
/// the originals ever comes out, they come out in order, and at most the
/// frame hit by the flip is lost.
fn check_single_bit_flips(payloads: &[Vec<u8>]) {
    let config = FrameConfig::default();
    let wire = encode_all(config, payloads);
    for bit in 0..wire.len() * 8 {
        let mut bad = wire.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let (got, stats) = decode(config, &bad);
        let mut rest = payloads.iter();
        for g in &got {
            assert!(
                rest.any(|p| p[..] == g[..]),
                "bit {bit}: corrupt or out-of-order frame {g:?}"
            );
        }
        assert!(
            got.len() + 1 >= payloads.len(),
            "bit {bit}: lost more than one frame"
        );
        assert_eq!(stats.frames as usize, got.len());
    }
}

#[test]
fn single_bit_errors_never_pass_fixed() {
    check_single_bit_flips(&[
        b"MAIL FROM:<a@b>\r\n".to_vec(),
        vec![FLAG, ESCAPE, 0x5E, 0x5D, 0x20, 0x7C, 0x7F, 0xFE, 0xFD],
        (0..=255u8).collect(),
        b"x".to_vec(),
    ]);
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    // Bias towards the special bytes so escapes are common.
    let byte = prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(vec![FLAG, ESCAPE, 0x5E, 0x5D, 0x11, 0x13, 0x91, 0x93]),
    ];
    prop::collection::vec(byte, 1..200)
}

fn any_map() -> impl Strategy<Value = AccmMap> {
    prop_oneof![
        Just(AccmMap::none()),
        Just(AccmMap::xon_xoff()),
        any::<u32>().prop_map(AccmMap::from_async_map),
    ]
}

fn any_fcs() -> impl Strategy<Value = FcsKind> {
    prop_oneof![Just(FcsKind::Crc32), Just(FcsKind::Crc16)]
}

proptest! {
    #[test]
    fn any_payloads_round_trip_under_any_split(
        payloads in prop::collection::vec(payload(), 0..12),
        mut cuts in prop::collection::vec(0usize..4000, 0..40),
        map in any_map(),
        fcs in any_fcs(),
    ) {
        let config = cfg(fcs, map);
        let wire = encode_all(config, &payloads);
        cuts.sort_unstable();
        let (whole, s1) = decode(config, &wire);
        let (split, s2) = decode_split(config, &wire, &cuts);
        let want: Vec<Bytes> = payloads.iter().cloned().map(Bytes::from).collect();
        prop_assert_eq!(&whole, &want);
        prop_assert_eq!(&split, &want);
        prop_assert_eq!(s1, s2);
        prop_assert_eq!(s1.dropped(), 0);
    }

    #[test]
    fn byte_at_a_time_equals_whole_on_garbage(
        stream in prop::collection::vec(
            prop_oneof![3 => any::<u8>(), 1 => Just(FLAG), 1 => Just(ESCAPE)], 0..600),
        mut cuts in prop::collection::vec(0usize..600, 0..40),
        map in any_map(),
    ) {
        let config = FrameConfig { accm: map, max_payload: 64, ..FrameConfig::default() };
        cuts.sort_unstable();
        let whole = decode(config, &stream);
        let split = decode_split(config, &stream, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn single_bit_errors_never_pass(
        payloads in prop::collection::vec(payload(), 1..4),
        bit in any::<prop::sample::Index>(),
    ) {
        let config = FrameConfig::default();
        let wire = encode_all(config, &payloads);
        let mut bad = wire.clone();
        let bit = bit.index(wire.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        let (got, _) = decode(config, &bad);
        let mut rest = payloads.iter();
        for g in &got {
            prop_assert!(rest.any(|p| p[..] == g[..]), "corrupt frame {:?}", g);
        }
        prop_assert!(got.len() + 1 >= payloads.len());
    }
}

#[test]
fn single_bit_errors_never_pass_exhaustive_random() {
    // Exhaustive flips over a few pseudo-random streams (fixed seed).
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..8 {
        let payloads: Vec<Vec<u8>> = (0..3)
            .map(|_| {
                let len = 1 + (next() % 64) as usize;
                (0..len)
                    .map(|_| match next() % 6 {
                        0 => FLAG,
                        1 => ESCAPE,
                        _ => next() as u8,
                    })
                    .collect()
            })
            .collect();
        check_single_bit_flips(&payloads);
    }
}
