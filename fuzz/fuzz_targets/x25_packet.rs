//! smtplink-x25 packet layer on arbitrary packets, with circuits open in
//! several states (calling, incoming, open both ways, data queued): never
//! panics, DATA packets it builds fit `max_len`, and each circuit is closed
//! at most once.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smtplink_x25::packet::Modulus;
use smtplink_x25::{PacketConfig, PacketEvent, PacketLayer, PacketRole};

fuzz_target!(|data: &[u8]| {
    let [flags, window, input @ ..] = data else {
        return;
    };
    let mut config = PacketConfig::default();
    let gfi = if flags & 1 == 0 {
        0x10
    } else {
        config.modulus = Modulus::Mod128;
        0x20
    };
    config.max_packet = 16 << ((flags >> 1) & 7);
    config.window = *window;
    config.send_buffer = 1 + usize::from(*window) * 16;
    let role = if flags & 0x10 == 0 {
        PacketRole::Dte
    } else {
        PacketRole::Dce
    };
    let mut now = Instant::now();
    let mut l = PacketLayer::new(config, role);
    let mut closed = HashSet::new();
    let mut drain = |l: &mut PacketLayer, max_len: usize, now: Instant| {
        while let Some(p) = l.poll_packet(max_len, now) {
            if p.get(2).is_some_and(|t| t & 1 == 0) {
                assert!(p.len() <= max_len);
            }
        }
        while let Some(e) = l.poll_event() {
            if let PacketEvent::Closed { id, .. } = e {
                assert!(closed.insert(id), "two Closed events");
            }
        }
    };

    l.restart(now);
    l.handle_packet(&[gfi, 0x00, 0xFF], now);
    // Two calls out (one accepted), two calls in (one accepted).
    let out1 = l.call("smtp", now).ok();
    let out2 = l.call("smtp", now).ok();
    drain(&mut l, 128, now);
    let mut ids = Vec::new();
    if let Some(id) = out1 {
        let lcn = id.lcn();
        l.handle_packet(&[gfi | (lcn >> 8) as u8, lcn as u8, 0x0F], now);
        ids.push(id);
    }
    ids.extend(out2);
    for lcn in [30u8, 31] {
        l.handle_packet(
            &[gfi, lcn, 0x0B, 0x00, 0x00, 0xC0, 0xF7, 0x00, 0x00, b's'],
            now,
        );
    }
    while let Some(e) = l.poll_event() {
        if let PacketEvent::IncomingCall { id, .. } = e {
            if ids.len() == 2 {
                l.accept(id, now);
            }
            ids.push(id);
        }
    }
    for id in &ids {
        let _ = l.write(*id, &[b'x'; 300]);
    }
    drain(&mut l, 128, now);
    let lcns: Vec<u16> = ids.iter().map(|id| id.lcn()).chain([0, 7]).collect();

    // Then packets: [len, op, bytes...]. Bit 0 of op aims the packet at a
    // live channel with a valid GFI (bytes follow the channel number).
    let mut rest = input;
    let mut buf = [0u8; 512];
    while let [len, op, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let packet = if op & 1 == 1 {
            let lcn = lcns[usize::from(op >> 1) % lcns.len()];
            let mut v = vec![gfi | (op & 0x80) | (lcn >> 8) as u8, lcn as u8];
            v.extend_from_slice(body);
            v
        } else {
            body.to_vec()
        };
        l.handle_packet(&packet, now);
        let id = ids[usize::from(*len) % ids.len().max(1)..].first().copied();
        match (op >> 4) & 7 {
            0 => {
                now += Duration::from_secs(u64::from(*len));
                l.handle_timeout(now);
            }
            1 | 2 => {
                if let Some(id) = id {
                    let _ = l.read(id, &mut buf[..usize::from(op & 0x3F)]);
                }
            }
            3 => {
                if let Some(id) = id {
                    let _ = l.write(id, body);
                }
            }
            4 => {
                if let Some(id) = id {
                    l.clear(id, now);
                }
            }
            5 => {
                if let Some(id) = id {
                    l.accept(id, now);
                }
            }
            _ => {}
        }
        drain(&mut l, usize::from(op & 0x7F), now);
    }
    // Every timer eventually runs out.
    for _ in 0..8 {
        now += Duration::from_secs(300);
        l.handle_timeout(now);
        drain(&mut l, 64, now);
    }
    assert_eq!(l.poll_timeout(), None);
});
