//! smtplink-x25 link layer (LAPB-like) on arbitrary frames and timings.
//!
//! Mode 0 (first byte even): one `Lapb` is driven by a script of
//! operations taken from the input: arbitrary frames (address, control,
//! information), timer expiries, sends, busy changes, connects and
//! disconnects. It must never panic, never hand out an empty frame or one
//! longer than `max_info` plus header, and never deliver a unit longer than
//! `max_info`.
//!
//! Mode 1 (first byte odd): two `Lapb`s connected back to back; the input
//! decides which frames are lost, duplicated (only with the selective-reject
//! window of at most half the modulus) and when time moves on. Whatever it
//! decides, the units that arrive are a prefix of those sent, each once, in
//! order, unaltered — unless a `Reset` was reported.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use smtplink_x25::{Lapb, LapbConfig, LapbEvent, LapbRole, Modulus};

fn config(flags: u8) -> LapbConfig {
    let modulus = if flags & 2 == 0 {
        Modulus::Mod8
    } else {
        Modulus::Mod128
    };
    let mut c = LapbConfig::default().with_window(modulus, (flags >> 4) + 1);
    c.selective_reject = flags & 4 == 0;
    c.max_info = 64;
    c.min_info = 8;
    if flags & 8 != 0 {
        c = c.with_line_rate(960);
    }
    c
}

fn single(flags: u8, script: &[u8]) {
    let cfg = config(flags);
    let max_info = cfg.max_info;
    let role = if flags & 1 == 0 { LapbRole::Dte } else { LapbRole::Dce };
    let mut lapb = Lapb::new(cfg, role);
    let t0 = Instant::now();
    let mut now = t0;
    let mut rest = script;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 8 {
            0..=2 => {
                // A frame: length byte, then that many bytes.
                let [len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let (frame, tail) = tail.split_at(n);
                rest = tail;
                lapb.handle_frame(frame, now);
            }
            3 => {
                now += Duration::from_millis(u64::from(op / 8) * 97);
                lapb.handle_timeout(now);
            }
            4 => {
                let _ = lapb.send(Bytes::from(vec![op / 8; usize::from(op / 8) + 1]));
            }
            5 => lapb.set_receiver_busy(op & 0x80 != 0),
            6 => lapb.connect(now),
            _ => {
                if op / 8 == 0x1F {
                    lapb.disconnect(now);
                }
            }
        }
        if let Some(t) = lapb.poll_timeout() {
            if t <= now {
                lapb.handle_timeout(now);
            }
        }
        while let Some(f) = lapb.poll_transmit(now) {
            assert!(f.len() >= 2 && f.len() <= max_info + 3);
        }
        while let Some(ev) = lapb.poll_event() {
            if let LapbEvent::Data(d) = ev {
                assert!(d.len() <= max_info);
            }
        }
        assert!(lapb.preferred_info_size() >= 1 && lapb.preferred_info_size() <= max_info);
    }
}

fn pair(flags: u8, script: &[u8]) {
    let mut cfg = config(flags);
    cfg.selective_reject = true;
    let mut a = Lapb::new(cfg.clone(), LapbRole::Dte);
    let mut b = Lapb::new(cfg, LapbRole::Dce);
    let t0 = Instant::now();
    let mut now = t0;
    a.connect(now);
    b.connect(now);
    let mut sent: Vec<Bytes> = Vec::new();
    let mut got: Vec<Bytes> = Vec::new();
    let mut reset = false;
    let mut next = 0u32;
    let mut ops = script.iter();
    for _ in 0..4 * script.len() + 64 {
        let op = ops.next().copied().unwrap_or(0);
        while a.can_send() && next < 200 {
            next += 1;
            let unit = Bytes::from(next.to_be_bytes().repeat(usize::from(op % 5) + 1));
            if a.send(unit.clone()).is_ok() {
                sent.push(unit);
            }
        }
        // Frames A -> B: bit 0 of op loses, bit 1 duplicates.
        while let Some(f) = a.poll_transmit(now) {
            if op & 1 == 0 {
                b.handle_frame(&f, now);
                if op & 2 != 0 && f.get(1).is_some_and(|c| c & 3 != 3) {
                    b.handle_frame(&f, now);
                }
            }
        }
        while let Some(f) = b.poll_transmit(now) {
            if op & 4 == 0 {
                a.handle_frame(&f, now);
            }
        }
        now += Duration::from_millis(u64::from(op >> 3) * 13);
        for l in [&mut a, &mut b] {
            if l.poll_timeout().is_some_and(|t| t <= now) {
                l.handle_timeout(now);
            }
        }
        while let Some(ev) = b.poll_event() {
            match ev {
                LapbEvent::Data(d) => got.push(d),
                LapbEvent::Reset => reset = true,
                _ => {}
            }
        }
        while let Some(ev) = a.poll_event() {
            if ev == LapbEvent::Reset {
                reset = true;
            }
        }
        if reset {
            return;
        }
        assert!(got.len() <= sent.len());
        assert!(got[..] == sent[..got.len()], "out of order or altered");
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, flags, script @ ..] = data else {
        return;
    };
    if mode & 1 == 0 {
        single(*flags, script);
    } else {
        pair(*flags, script);
    }
});
