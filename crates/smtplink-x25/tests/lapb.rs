//! Layer 2 (LAPB-like link) tests: exact frame bytes from the standard, and
//! a deterministic two-endpoint harness (virtual clock, full-duplex line
//! with a byte rate, latency, seeded bit errors applied to the real framed
//! length, drops, duplicates, delays and cuts) that checks every unit
//! arrives exactly once, in order, unaltered, and measures goodput.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use smtplink_x25::lapb::{control, ADDRESS_A, ADDRESS_B};
use smtplink_x25::{
    DisconnectReason, FrameConfig, FrameEncoder, Lapb, LapbConfig, LapbEvent, LapbFrame, LapbRole,
    Modulus, Supervisory, Unnumbered,
};

// ---- exact frame bytes -----------------------------------------------------

fn u(kind: Unnumbered, pf: bool) -> LapbFrame {
    LapbFrame::Unnumbered {
        kind,
        pf,
        info: Bytes::new(),
    }
}

fn s(kind: Supervisory, nr: u8, pf: bool) -> LapbFrame {
    LapbFrame::Supervisory { kind, nr, pf }
}

fn i(ns: u8, nr: u8, poll: bool, info: &'static [u8]) -> LapbFrame {
    LapbFrame::Info {
        ns,
        nr,
        poll,
        info: Bytes::from_static(info),
    }
}

#[test]
fn unnumbered_control_bytes() {
    let m = Modulus::Mod8;
    let cases = [
        (Unnumbered::Sabm, false, 0x2F),
        (Unnumbered::Sabm, true, 0x3F),
        (Unnumbered::Sabme, false, 0x6F),
        (Unnumbered::Sabme, true, 0x7F),
        (Unnumbered::Ua, false, 0x63),
        (Unnumbered::Ua, true, 0x73),
        (Unnumbered::Disc, false, 0x43),
        (Unnumbered::Disc, true, 0x53),
        (Unnumbered::Dm, false, 0x0F),
        (Unnumbered::Dm, true, 0x1F),
        (Unnumbered::Frmr, false, 0x87),
        (Unnumbered::Frmr, true, 0x97),
    ];
    for (kind, pf, byte) in cases {
        for modulus in [Modulus::Mod8, Modulus::Mod128] {
            let f = u(kind, pf);
            let wire = f.encode(ADDRESS_A, modulus);
            assert_eq!(&wire[..], &[0x03, byte], "{kind:?} pf={pf}");
            assert_eq!(LapbFrame::parse(&wire, modulus), Ok((ADDRESS_A, f)));
        }
    }
    assert_eq!(control::SABM | control::PF, 0x3F);
    let _ = m;
}

#[test]
fn supervisory_control_bytes_mod8() {
    let m = Modulus::Mod8;
    // RR 0x01, RNR 0x05, REJ 0x09, SREJ 0x0D; P/F is 0x10; N(R) in bits 5-7.
    assert_eq!(
        &s(Supervisory::Rr, 0, false).encode(ADDRESS_B, m)[..],
        &[0x01, 0x01]
    );
    assert_eq!(
        &s(Supervisory::Rr, 5, true).encode(ADDRESS_B, m)[..],
        &[0x01, 0xB1]
    );
    assert_eq!(
        &s(Supervisory::Rnr, 3, false).encode(ADDRESS_B, m)[..],
        &[0x01, 0x65]
    );
    assert_eq!(
        &s(Supervisory::Rej, 7, false).encode(ADDRESS_B, m)[..],
        &[0x01, 0xE9]
    );
    assert_eq!(
        &s(Supervisory::Srej, 2, true).encode(ADDRESS_B, m)[..],
        &[0x01, 0x5D]
    );
    for kind in [
        Supervisory::Rr,
        Supervisory::Rnr,
        Supervisory::Rej,
        Supervisory::Srej,
    ] {
        for nr in 0..8 {
            for pf in [false, true] {
                let f = s(kind, nr, pf);
                assert_eq!(
                    LapbFrame::parse(&f.encode(ADDRESS_B, m), m),
                    Ok((ADDRESS_B, f))
                );
            }
        }
    }
}

#[test]
fn supervisory_control_bytes_mod128() {
    let m = Modulus::Mod128;
    assert_eq!(
        &s(Supervisory::Rr, 0, false).encode(ADDRESS_A, m)[..],
        &[0x03, 0x01, 0x00]
    );
    assert_eq!(
        &s(Supervisory::Rr, 100, true).encode(ADDRESS_A, m)[..],
        &[0x03, 0x01, 0xC9]
    );
    assert_eq!(
        &s(Supervisory::Rnr, 1, false).encode(ADDRESS_A, m)[..],
        &[0x03, 0x05, 0x02]
    );
    assert_eq!(
        &s(Supervisory::Rej, 127, false).encode(ADDRESS_A, m)[..],
        &[0x03, 0x09, 0xFE]
    );
    assert_eq!(
        &s(Supervisory::Srej, 64, true).encode(ADDRESS_A, m)[..],
        &[0x03, 0x0D, 0x81]
    );
    for nr in 0..128 {
        let f = s(Supervisory::Srej, nr, nr % 3 == 0);
        assert_eq!(
            LapbFrame::parse(&f.encode(ADDRESS_A, m), m),
            Ok((ADDRESS_A, f))
        );
    }
}

#[test]
fn information_control_bytes() {
    // Modulo 8: N(R) bits 5-7, P bit 4, N(S) bits 1-3, bit 0 = 0.
    let m = Modulus::Mod8;
    assert_eq!(
        &i(0, 0, false, b"x").encode(ADDRESS_B, m)[..],
        &[0x01, 0x00, b'x']
    );
    assert_eq!(&i(1, 0, false, b"").encode(ADDRESS_B, m)[..], &[0x01, 0x02]);
    assert_eq!(&i(7, 7, true, b"").encode(ADDRESS_B, m)[..], &[0x01, 0xFE]);
    assert_eq!(
        &i(3, 5, false, b"ab").encode(ADDRESS_B, m)[..],
        &[0x01, 0xA6, b'a', b'b']
    );
    // Modulo 128: first byte N(S)<<1, second N(R)<<1 | P.
    let m = Modulus::Mod128;
    assert_eq!(
        &i(0, 0, false, b"").encode(ADDRESS_A, m)[..],
        &[0x03, 0x00, 0x00]
    );
    assert_eq!(
        &i(127, 1, true, b"z").encode(ADDRESS_A, m)[..],
        &[0x03, 0xFE, 0x03, b'z']
    );
    assert_eq!(
        &i(64, 100, false, b"").encode(ADDRESS_A, m)[..],
        &[0x03, 0x80, 0xC8]
    );
    for ns in (0..128).step_by(7) {
        let f = i(ns, 127 - ns, ns % 2 == 0, b"data");
        assert_eq!(
            LapbFrame::parse(&f.encode(ADDRESS_A, m), m),
            Ok((ADDRESS_A, f))
        );
    }
}

#[test]
fn malformed_frames_are_rejected_by_the_parser() {
    use smtplink_x25::FrameReject;
    assert_eq!(
        LapbFrame::parse(&[], Modulus::Mod8),
        Err(FrameReject::TooShort)
    );
    assert_eq!(
        LapbFrame::parse(&[1], Modulus::Mod8),
        Err(FrameReject::TooShort)
    );
    assert_eq!(
        LapbFrame::parse(&[1, 0x00], Modulus::Mod128),
        Err(FrameReject::TooShort)
    );
    assert_eq!(
        LapbFrame::parse(&[1, 0x01, 2, 3], Modulus::Mod128),
        Err(FrameReject::UnexpectedInfo)
    );
    assert_eq!(
        LapbFrame::parse(&[1, 0x01, 2], Modulus::Mod8),
        Err(FrameReject::UnexpectedInfo)
    );
    assert_eq!(
        LapbFrame::parse(&[1, 0x63, 0], Modulus::Mod8),
        Err(FrameReject::UnexpectedInfo)
    );
    assert_eq!(
        LapbFrame::parse(&[1, 0xFF], Modulus::Mod8),
        Err(FrameReject::Undefined)
    );
}

fn t0() -> Instant {
    Instant::now()
}

fn cfg8() -> LapbConfig {
    LapbConfig::default().with_window(Modulus::Mod8, 4)
}

#[test]
fn state_machine_emits_standard_frames() {
    let now = t0();
    // DTE sends its commands with address B (0x01), DCE with A (0x03).
    let mut dte = Lapb::new(cfg8(), LapbRole::Dte);
    dte.connect(now);
    assert_eq!(&dte.poll_transmit(now).unwrap()[..], &[0x01, 0x3F]);
    assert_eq!(dte.poll_transmit(now), None);
    let mut dce = Lapb::new(LapbConfig::default(), LapbRole::Dce);
    dce.connect(now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x03, 0x7F]);

    // A fresh DCE answers SABM P=1 with UA F=1 (response from DCE: B).
    let mut dce = Lapb::new(cfg8(), LapbRole::Dce);
    dce.handle_frame(&[0x01, 0x3F], now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x73]);
    assert_eq!(dce.poll_event(), Some(LapbEvent::Connected));
    dte.handle_frame(&[0x01, 0x73], now);
    assert_eq!(dte.poll_event(), Some(LapbEvent::Connected));
    assert!(dte.is_connected() && dce.is_connected());

    // First I-frame from the DTE: N(S)=0 N(R)=0; the DCE acknowledges with RR N(R)=1.
    dte.send(Bytes::from_static(b"hello")).unwrap();
    let f = dte.poll_transmit(now).unwrap();
    assert_eq!(&f[..], b"\x01\x00hello");
    dce.handle_frame(&f, now);
    assert_eq!(
        dce.poll_event(),
        Some(LapbEvent::Data(Bytes::from_static(b"hello")))
    );
    // T2: the acknowledgement waits for an I-frame to ride on.
    assert_eq!(dce.poll_transmit(now), None);
    // A reply piggybacks N(R)=1 on the DCE's I-frame (command from DCE: A).
    dce.send(Bytes::from_static(b"hi")).unwrap();
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], b"\x03\x20hi");
    // Busy: RNR, then RR when it clears.
    dce.set_receiver_busy(true);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x25]);
    dce.set_receiver_busy(false);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x21]);
    // A poll (RR P=1 command from DTE, address B) is answered with F=1.
    dce.handle_frame(&[0x01, 0x11], now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x31]);

    // DISC P=1 -> UA F=1 and Disconnected(Remote).
    dce.handle_frame(&[0x01, 0x53], now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x73]);
    assert_eq!(
        dce.poll_event(),
        Some(LapbEvent::Disconnected(DisconnectReason::Remote))
    );
    // Disconnected: a poll is answered with DM F=1.
    dce.handle_frame(&[0x01, 0x11], now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x1F]);
    // Local disconnect sends DISC P=1.
    dte.disconnect(now);
    assert_eq!(&dte.poll_transmit(now).unwrap()[..], &[0x01, 0x53]);
    dte.handle_frame(&[0x01, 0x1F], now);
    assert_eq!(
        dte.poll_event(),
        Some(LapbEvent::Disconnected(DisconnectReason::Local))
    );
}

#[test]
fn out_of_order_frame_draws_srej_mod128_and_rej_mod8_go_back_n() {
    let now = t0();
    let mut dce = Lapb::new(LapbConfig::default(), LapbRole::Dce);
    dce.handle_frame(&[0x01, 0x7F], now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x73]);
    // N(S)=1 arrives before N(S)=0: SREJ N(R)=0 (response from DCE: B).
    dce.handle_frame(b"\x01\x02\x00one", now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x0D, 0x00]);
    dce.handle_frame(b"\x01\x00\x00zero", now);
    assert_eq!(dce.poll_event(), Some(LapbEvent::Connected));
    assert_eq!(
        dce.poll_event(),
        Some(LapbEvent::Data(Bytes::from_static(b"zero")))
    );
    assert_eq!(
        dce.poll_event(),
        Some(LapbEvent::Data(Bytes::from_static(b"one")))
    );
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x01, 0x04]);

    let mut cfg = cfg8();
    cfg.selective_reject = false;
    let mut dce = Lapb::new(cfg, LapbRole::Dce);
    dce.handle_frame(&[0x01, 0x3F], now);
    let _ = dce.poll_transmit(now);
    dce.handle_frame(b"\x01\x02one", now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x09]); // REJ N(R)=0
    dce.handle_frame(b"\x01\x04two", now);
    assert_eq!(dce.poll_transmit(now), None); // one REJ per exception
}

#[test]
fn invalid_nr_draws_frmr_and_reset() {
    let now = t0();
    let mut dce = Lapb::new(cfg8(), LapbRole::Dce);
    dce.handle_frame(&[0x01, 0x3F], now);
    let _ = dce.poll_transmit(now);
    assert_eq!(dce.poll_event(), Some(LapbEvent::Connected));
    // RR N(R)=3 while nothing was sent.
    dce.handle_frame(&[0x01, 0x61], now);
    assert_eq!(dce.poll_event(), Some(LapbEvent::Reset));
    let frmr = dce.poll_transmit(now).unwrap();
    assert_eq!(&frmr[..2], &[0x01, 0x87]);
    assert_eq!(frmr.len(), 5);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x03, 0x3F]); // SABM P=1
    assert_eq!(dce.stats().frmr_sent, 1);
}

// ---- the simulated line ----------------------------------------------------

/// splitmix64: small, seeded, good enough for fault injection.
#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug, Default)]
struct LineCfg {
    /// Bytes per second.
    rate: u32,
    latency: Duration,
    ber: f64,
    /// Extra probability of losing a frame.
    drop: f64,
    /// Probability of delivering an I- or S-frame twice.
    dup: f64,
    /// Probability of delaying an I- or S-frame by up to two frame times.
    delay: f64,
    /// Every frame on the wire during these intervals is lost.
    cuts: Vec<(Duration, Duration)>,
    /// Frame numbers (in send order) to lose.
    lose: Vec<u64>,
}

struct Line {
    cfg: LineCfg,
    rng: Rng,
    busy_until: Duration,
    in_flight: Vec<(Duration, u64, Bytes)>,
    order: u64,
    sent: u64,
    wire_bytes: u64,
}

impl Line {
    fn new(cfg: LineCfg, seed: u64) -> Self {
        Line {
            cfg,
            rng: Rng(seed),
            busy_until: Duration::ZERO,
            in_flight: Vec::new(),
            order: 0,
            sent: 0,
            wire_bytes: 0,
        }
    }

    fn transmit(&mut self, now: Duration, frame: Bytes, enc: &mut FrameEncoder) {
        let wire_len = enc.encode_to_vec(&frame).unwrap().len();
        let n = self.sent;
        self.sent += 1;
        self.wire_bytes += wire_len as u64;
        let start = self.busy_until.max(now);
        let dur = Duration::from_secs_f64(wire_len as f64 / f64::from(self.cfg.rate));
        let end = start + dur;
        self.busy_until = end;
        let mut arrive = end + self.cfg.latency;
        let cut = self.cfg.cuts.iter().any(|&(s, e)| start < e && end > s);
        let p_ok = (1.0 - self.cfg.ber).powf(8.0 * wire_len as f64);
        let bit_error = self.rng.f64() >= p_ok;
        let dropped = self.rng.f64() < self.cfg.drop;
        if cut || bit_error || dropped || self.cfg.lose.contains(&n) {
            return;
        }
        let numbered = frame.get(1).is_some_and(|c| c & 3 != 3);
        if numbered && self.rng.f64() < self.cfg.dup {
            let extra = dur.mul_f64(2.0 * self.rng.f64());
            self.push(arrive + extra, frame.clone());
        }
        if numbered && self.rng.f64() < self.cfg.delay {
            arrive += dur.mul_f64(2.0 * self.rng.f64());
        }
        self.push(arrive, frame);
    }

    fn push(&mut self, at: Duration, frame: Bytes) {
        self.order += 1;
        self.in_flight.push((at, self.order, frame));
    }

    fn next_arrival(&self) -> Option<Duration> {
        self.in_flight.iter().map(|f| f.0).min()
    }

    fn take_due(&mut self, now: Duration) -> Vec<Bytes> {
        let mut due: Vec<_> = self
            .in_flight
            .iter()
            .filter(|f| f.0 <= now)
            .cloned()
            .collect();
        self.in_flight.retain(|f| f.0 > now);
        due.sort_by_key(|f| (f.0, f.1));
        due.into_iter().map(|f| f.2).collect()
    }
}

/// One endpoint: a Lapb plus an application that sends `total` bytes in
/// units of the preferred size, and records what it receives.
struct End {
    lapb: Lapb,
    total: usize,
    queued: usize,
    sent_units: Vec<Bytes>,
    received: Vec<Bytes>,
    events: Vec<LapbEvent>,
    next_id: u32,
    /// Reply with one unit of `.1` bytes after every `.0` units received
    /// (a trickle of reverse I-frames, like packet-layer acks and SMTP
    /// replies).
    reply: Option<(usize, usize)>,
    /// Replies due and not yet queued.
    replies_owed: usize,
}

impl End {
    fn new(lapb: Lapb, total: usize) -> Self {
        End {
            lapb,
            total,
            queued: 0,
            sent_units: Vec::new(),
            received: Vec::new(),
            events: Vec::new(),
            next_id: 0,
            reply: None,
            replies_owed: 0,
        }
    }

    fn unit(&mut self, len: usize) -> Bytes {
        // Mail-like text, unique per unit: an id, then letters.
        self.next_id += 1;
        let mut v = format!("{:08}:", self.next_id).into_bytes();
        let mut x = u64::from(self.next_id).wrapping_mul(0x2545_F491_4F6C_DD1D);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(b" abcdefghijklmnopqrstuvwxyz\r\n"[(x % 29) as usize]);
        }
        v.truncate(len);
        Bytes::from(v)
    }

    fn pump_app(&mut self) {
        while let Some(ev) = self.lapb.poll_event() {
            if let LapbEvent::Data(d) = &ev {
                self.received.push(d.clone());
                if let Some((every, _)) = self.reply {
                    if self.received.len().is_multiple_of(every) {
                        self.replies_owed += 1;
                    }
                }
            } else {
                self.events.push(ev);
            }
        }
        while let (Some((_, len)), true) = (self.reply, self.replies_owed > 0) {
            if !self.lapb.can_send() {
                break;
            }
            let unit = self.unit(len);
            self.lapb.send(unit.clone()).unwrap();
            self.replies_owed -= 1;
            self.sent_units.push(unit);
        }
        while self.queued < self.total && self.lapb.can_send() {
            let len = self
                .lapb
                .preferred_info_size()
                .min(self.total - self.queued)
                .max(1);
            let unit = self.unit(len);
            self.lapb.send(unit.clone()).unwrap();
            self.queued += len;
            self.sent_units.push(unit);
        }
    }
}

struct Sim {
    t0: Instant,
    now: Duration,
    a: End,
    b: End,
    ab: Line,
    ba: Line,
    enc: FrameEncoder,
    /// When B received the last byte of A's data.
    done_at: Option<Duration>,
    /// Run to the time limit even when both transfers are complete.
    run_to_limit: bool,
    /// Frames A and B handed to their lines, by kind.
    a_tx: FrameCount,
    b_tx: FrameCount,
}

/// Frames sent by one end, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct FrameCount {
    i: u64,
    /// RR frames (polls and finals included).
    rr: u64,
    /// RR frames with neither P nor F: bare acknowledgements.
    rr_plain: u64,
    other_s: u64,
    u: u64,
}

impl FrameCount {
    fn count(&mut self, frame: &[u8], modulus: Modulus) {
        match LapbFrame::parse(frame, modulus) {
            Ok((_, LapbFrame::Info { .. })) => self.i += 1,
            Ok((
                _,
                LapbFrame::Supervisory {
                    kind: Supervisory::Rr,
                    pf,
                    ..
                },
            )) => {
                self.rr += 1;
                if !pf {
                    self.rr_plain += 1;
                }
            }
            Ok((_, LapbFrame::Supervisory { .. })) => self.other_s += 1,
            _ => self.u += 1,
        }
    }
}

impl Sim {
    fn new(config: LapbConfig, line: LineCfg, total_a: usize, total_b: usize, seed: u64) -> Self {
        let config = config.with_line_rate(line.rate);
        let mut sim = Sim {
            t0: Instant::now(),
            now: Duration::ZERO,
            a: End::new(Lapb::new(config.clone(), LapbRole::Dte), total_a),
            b: End::new(Lapb::new(config, LapbRole::Dce), total_b),
            ab: Line::new(line.clone(), seed),
            ba: Line::new(line, seed ^ 0xDEAD_BEEF),
            enc: FrameEncoder::new(FrameConfig::default()),
            done_at: None,
            run_to_limit: false,
            a_tx: FrameCount::default(),
            b_tx: FrameCount::default(),
        };
        let now = sim.t0;
        sim.a.lapb.connect(now);
        sim.b.lapb.connect(now);
        sim
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn finished(&self) -> bool {
        let a_bytes: usize = self.b.received.iter().map(Bytes::len).sum();
        let b_bytes: usize = self.a.received.iter().map(Bytes::len).sum();
        a_bytes >= self.a.total
            && b_bytes >= self.b.total
            && self.a.replies_owed == 0
            && self.b.replies_owed == 0
            && self.a.received.len() == self.b.sent_units.len()
            && self.b.received.len() == self.a.sent_units.len()
    }

    /// Runs until both transfers completed or `limit` of virtual time.
    fn run(&mut self, limit: Duration) {
        let mut spins = 0;
        while self.now < limit {
            let now = self.instant();
            for f in self.ab.take_due(self.now) {
                self.b.lapb.handle_frame(&f, now);
            }
            for f in self.ba.take_due(self.now) {
                self.a.lapb.handle_frame(&f, now);
            }
            for end in [&mut self.a, &mut self.b] {
                if end.lapb.poll_timeout().is_some_and(|t| t <= now) {
                    end.lapb.handle_timeout(now);
                }
                end.pump_app();
            }
            let modulus = self.a.lapb.config().modulus;
            while let Some(f) = self.a.lapb.poll_transmit(now) {
                self.a_tx.count(&f, modulus);
                self.ab.transmit(self.now, f, &mut self.enc);
            }
            while let Some(f) = self.b.lapb.poll_transmit(now) {
                self.b_tx.count(&f, modulus);
                self.ba.transmit(self.now, f, &mut self.enc);
            }
            self.a.pump_app();
            self.b.pump_app();
            if self.done_at.is_none() {
                let got: usize = self.b.received.iter().map(Bytes::len).sum();
                if got >= self.a.total {
                    self.done_at = Some(self.now);
                }
            }
            if self.finished() && !self.run_to_limit {
                return;
            }
            let next = [
                self.ab.next_arrival(),
                self.ba.next_arrival(),
                self.a.lapb.poll_timeout().map(|t| t - self.t0),
                self.b.lapb.poll_timeout().map(|t| t - self.t0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return;
            };
            if next <= self.now {
                spins += 1;
                assert!(spins < 1000, "no progress at {:?}", self.now);
            } else {
                spins = 0;
                self.now = next;
            }
        }
    }

    fn check_exactly_once(&self) {
        assert_eq!(
            self.b.received.len(),
            self.a.sent_units.len(),
            "A->B unit count"
        );
        assert!(self.b.received == self.a.sent_units, "A->B units differ");
        assert!(self.a.received == self.b.sent_units, "B->A units differ");
        let resets = |e: &End| e.events.iter().filter(|e| **e == LapbEvent::Reset).count();
        assert_eq!(resets(&self.a) + resets(&self.b), 0, "no reset expected");
    }

    /// A->B information bytes per line byte-second, until B had them all.
    fn goodput(&self) -> f64 {
        let t = self.done_at.unwrap_or(self.now).as_secs_f64();
        self.a.total as f64 / (f64::from(self.ab.cfg.rate) * t)
    }

    fn report(&self, name: &str) {
        let s = self.a.lapb.stats();
        let units = self.a.sent_units.len() as f64;
        let t = self.done_at.unwrap_or(self.now).as_secs_f64();
        // With a 3-byte packet header per unit (layer 3), what SMTP would see.
        let smtp = (self.a.total as f64 - 3.0 * units) / (f64::from(self.ab.cfg.rate) * t);
        println!(
            "{name}: goodput {:.3} (minus 3-byte packet headers {:.3}), line busy {:.3}, over {:.1} s; \
             info size {} ber~{:.1e} srtt {:?} rto {:?}; I {} retx {} srej rx {} timeouts {} dup {}",
            self.goodput(),
            smtp,
            self.ab.wire_bytes as f64 / (f64::from(self.ab.cfg.rate) * t),
            t,
            s.info_size,
            s.ber_estimate,
            s.srtt,
            s.rto,
            s.i_frames_sent,
            s.i_frames_retransmitted,
            s.srej_received,
            s.timeouts,
            self.b.lapb.stats().duplicates_discarded,
        );
        println!("{name}: frames A->B {:?}, B->A {:?}", self.a_tx, self.b_tx);
    }
}

fn line(rate: u32, latency_ms: u64, ber: f64) -> LineCfg {
    LineCfg {
        rate,
        latency: Duration::from_millis(latency_ms),
        ber,
        ..LineCfg::default()
    }
}

fn transfer(
    config: LapbConfig,
    line: LineCfg,
    total_a: usize,
    total_b: usize,
    seed: u64,
    limit_s: u64,
) -> Sim {
    let mut sim = Sim::new(config, line, total_a, total_b, seed);
    sim.run(Duration::from_secs(limit_s));
    assert!(sim.finished(), "transfer did not finish by {:?}", sim.now);
    sim.check_exactly_once();
    sim
}

#[test]
fn clean_line_exactly_once_both_ways() {
    let sim = transfer(
        LapbConfig::default(),
        line(960, 20, 0.0),
        50_000,
        5_000,
        1,
        600,
    );
    sim.report("9600 clean");
    assert_eq!(sim.a.lapb.stats().i_frames_retransmitted, 0);
}

#[test]
fn goodput_9600_ber0() {
    let sim = transfer(
        LapbConfig::default(),
        line(960, 20, 0.0),
        200_000,
        2_000,
        2,
        1000,
    );
    sim.report("9600 BER 0");
    assert!(sim.goodput() >= 0.98, "goodput {}", sim.goodput());
}

#[test]
fn goodput_9600_ber_1e5() {
    let sim = transfer(
        LapbConfig::default(),
        line(960, 20, 1e-5),
        200_000,
        2_000,
        3,
        1000,
    );
    sim.report("9600 BER 1e-5");
    assert!(sim.goodput() >= 0.92, "goodput {}", sim.goodput());
}

#[test]
fn goodput_9600_ber_1e4() {
    let sim = transfer(
        LapbConfig::default(),
        line(960, 20, 1e-4),
        150_000,
        2_000,
        4,
        1000,
    );
    sim.report("9600 BER 1e-4");
    assert!(sim.goodput() >= 0.80, "goodput {}", sim.goodput());
}

#[test]
fn goodput_115200_300ms() {
    let sim = transfer(
        LapbConfig::default(),
        line(11_520, 300, 0.0),
        1_000_000,
        10_000,
        5,
        1000,
    );
    sim.report("115200 300ms BER 0");
    assert!(sim.goodput() >= 0.97, "goodput {}", sim.goodput());
}

#[test]
fn goodput_115200_300ms_ber_1e5() {
    let sim = transfer(
        LapbConfig::default(),
        line(11_520, 300, 1e-5),
        1_000_000,
        10_000,
        6,
        1000,
    );
    sim.report("115200 300ms BER 1e-5");
    assert!(sim.goodput() >= 0.85, "goodput {}", sim.goodput());
}

#[test]
fn drops_dups_and_delays() {
    let mut l = line(960, 50, 1e-5);
    l.drop = 0.05;
    l.dup = 0.05;
    l.delay = 0.05;
    let sim = transfer(LapbConfig::default(), l, 60_000, 6_000, 7, 1000);
    sim.report("9600 drops+dups+delays");
}

#[test]
fn cut_mid_transfer_then_recovery() {
    let mut l = line(960, 20, 1e-5);
    l.cuts = vec![(Duration::from_secs(20), Duration::from_secs(35))];
    let sim = transfer(LapbConfig::default(), l, 60_000, 3_000, 8, 1000);
    sim.report("9600 cut 15 s");
    assert!(sim.a.lapb.stats().timeouts > 0);
}

#[test]
fn go_back_n_and_mod8_variants() {
    let mut rej = LapbConfig::default();
    rej.selective_reject = false;
    let sim = transfer(rej, line(960, 20, 1e-4), 30_000, 3_000, 9, 1000);
    sim.report("9600 BER 1e-4 REJ mod128");
    assert!(sim.a.lapb.stats().rej_received > 0 || sim.b.lapb.stats().rej_sent > 0);

    let sim = transfer(cfg8(), line(960, 20, 1e-4), 30_000, 3_000, 10, 1000);
    sim.report("9600 BER 1e-4 SREJ mod8 k=4");

    let mut rej8 = LapbConfig::default().with_window(Modulus::Mod8, 7);
    rej8.selective_reject = false;
    // No duplicates here: with k = 7 of 8 a stray old N(R) is ambiguous
    // (as on any HDLC link; real lines do not duplicate frames).
    let sim = transfer(rej8, line(960, 20, 1e-4), 30_000, 3_000, 11, 1000);
    sim.report("9600 BER 1e-4 REJ mod8 k=7");
}

#[test]
fn unpaced_when_line_rate_unknown() {
    let mut sim = Sim::new(
        LapbConfig::default(),
        line(960, 20, 1e-4),
        30_000,
        3_000,
        12,
    );
    // Forget the line rate on both ends: frames queue in the line.
    sim.a.lapb = Lapb::new(LapbConfig::default(), LapbRole::Dte);
    sim.b.lapb = Lapb::new(LapbConfig::default(), LapbRole::Dce);
    let now = sim.instant();
    sim.a.lapb.connect(now);
    sim.b.lapb.connect(now);
    sim.run(Duration::from_secs(1000));
    assert!(sim.finished());
    sim.check_exactly_once();
    sim.report("9600 BER 1e-4 unpaced");
}

#[test]
fn lost_ua_at_setup_does_not_reset() {
    let mut l = line(960, 20, 0.0);
    // Frame 0 from B is its SABM, 1 its UA to A's SABM... lose the first few of B's.
    l.lose = vec![0, 1];
    let mut sim = Sim::new(LapbConfig::default(), line(960, 20, 0.0), 20_000, 2_000, 13);
    sim.ba = Line::new(l, 13);
    sim.run(Duration::from_secs(600));
    assert!(sim.finished());
    sim.check_exactly_once();
}

#[test]
fn dead_line_is_noticed_and_resets() {
    let mut l = line(960, 20, 0.0);
    l.cuts = vec![(Duration::from_secs(5), Duration::from_secs(100_000))];
    let mut sim = Sim::new(LapbConfig::default(), l, 100_000, 0, 14);
    sim.run_to_limit = true;
    sim.run(Duration::from_secs(3000));
    let ev = &sim.a.events;
    assert_eq!(ev.first(), Some(&LapbEvent::Connected));
    assert!(ev.contains(&LapbEvent::Reset), "{ev:?}");
    assert_eq!(
        ev.last(),
        Some(&LapbEvent::Disconnected(DisconnectReason::Timeout)),
        "{ev:?}"
    );
    // B, idle, notices too through its keep-alive polls.
    assert!(
        sim.b.events.contains(&LapbEvent::Reset),
        "{:?}",
        sim.b.events
    );
}

#[test]
fn peer_reset_mid_transfer_is_reported() {
    let mut sim = Sim::new(LapbConfig::default(), line(960, 20, 0.0), 20_000, 0, 15);
    sim.run(Duration::from_secs(5));
    // A restarts its link (as after a crash): B must report Reset, and then both are up again.
    let now = sim.instant();
    sim.a.lapb = Lapb::new(LapbConfig::default().with_line_rate(960), LapbRole::Dte);
    sim.a.lapb.connect(now);
    sim.a.total = 0;
    sim.run_to_limit = true;
    sim.run(Duration::from_secs(30));
    assert!(
        sim.b.events.contains(&LapbEvent::Reset),
        "{:?}",
        sim.b.events
    );
    assert_eq!(sim.b.events.last(), Some(&LapbEvent::Connected));
    assert!(sim.a.lapb.is_connected() && sim.b.lapb.is_connected());
}

#[test]
fn adaptive_size_follows_error_rate() {
    let sim = transfer(
        LapbConfig::default(),
        line(960, 20, 1e-4),
        100_000,
        0,
        16,
        1000,
    );
    let size = sim.a.lapb.stats().info_size;
    assert!((64..=300).contains(&size), "size {size} at 1e-4");
    let sim = transfer(
        LapbConfig::default(),
        line(960, 20, 0.0),
        20_000,
        0,
        17,
        1000,
    );
    assert_eq!(sim.a.lapb.stats().info_size, 1024);
    let mut fixed = LapbConfig::default();
    fixed.adaptive = false;
    let sim = transfer(fixed, line(960, 20, 1e-4), 20_000, 0, 18, 1000);
    assert_eq!(sim.a.lapb.preferred_info_size(), 1024);
}

/// Two ends connected back to back, no line in between.
fn connected_pair(config: LapbConfig, now: Instant) -> (Lapb, Lapb) {
    let mut a = Lapb::new(config.clone(), LapbRole::Dte);
    let mut b = Lapb::new(config, LapbRole::Dce);
    a.connect(now);
    while let Some(f) = a.poll_transmit(now) {
        b.handle_frame(&f, now);
    }
    while let Some(f) = b.poll_transmit(now) {
        a.handle_frame(&f, now);
    }
    assert_eq!(a.poll_event(), Some(LapbEvent::Connected));
    assert_eq!(b.poll_event(), Some(LapbEvent::Connected));
    (a, b)
}

/// Sends `n` units of `len` bytes from `a` to `b` without loss, the
/// acknowledgements going back at once.
fn send_clean(a: &mut Lapb, b: &mut Lapb, n: usize, len: usize, now: Instant) {
    for _ in 0..n {
        a.send(Bytes::from(vec![b'x'; len])).unwrap();
        while let Some(f) = a.poll_transmit(now) {
            b.handle_frame(&f, now);
        }
        while b.poll_event().is_some() {}
        let later = b.poll_timeout().unwrap_or(now).max(now);
        while let Some(f) = b.poll_transmit(later) {
            a.handle_frame(&f, later);
        }
    }
}

#[test]
fn short_frames_do_not_make_the_size_grow() {
    // A run of short clean frames (commands, acknowledgements) says little
    // about long ones: the size grows only once the bits of 8 frames of
    // the current size have gone out without a loss.
    let now = t0();
    let (mut a, mut b) = connected_pair(LapbConfig::default(), now);
    let start = a.preferred_info_size();
    assert_eq!(start, 256);
    send_clean(&mut a, &mut b, 60, 8, now);
    assert_eq!(a.preferred_info_size(), start);
    send_clean(&mut a, &mut b, 9, start, now);
    assert_eq!(a.preferred_info_size(), 2 * start);
}

#[test]
fn escaped_bytes_move_the_pacing_clock() {
    // Layer 1 reports the bytes its escapes added: the next I-frame is
    // released that much later.
    let now = t0();
    let config = LapbConfig::default().with_line_rate(1000);
    let release = |extra: usize| {
        let (mut a, _b) = connected_pair(config.clone(), now);
        a.send(Bytes::from(vec![b'x'; 100])).unwrap();
        a.send(Bytes::from(vec![b'x'; 100])).unwrap();
        assert!(a.poll_transmit(now).is_some());
        a.add_wire_bytes(extra);
        assert_eq!(a.poll_transmit(now), None, "paced");
        a.poll_timeout().unwrap()
    };
    assert_eq!(release(50) - release(0), Duration::from_millis(50));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever frames are lost (any pattern, plus random duplicates and
    /// delays), delivery stays exactly-once and in order.
    #[test]
    fn random_loss_never_breaks_delivery(
        seed in any::<u64>(),
        lose_ab in proptest::collection::vec(0u64..400, 0..60),
        lose_ba in proptest::collection::vec(0u64..400, 0..60),
        drop in 0.0f64..0.15,
        dup in 0.0f64..0.05,
        selective in any::<bool>(),
        mod8 in any::<bool>(),
    ) {
        let mut config = if mod8 {
            LapbConfig::default().with_window(Modulus::Mod8, 3)
        } else {
            LapbConfig::default()
        };
        config.selective_reject = selective;
        let mut l = line(960, 30, 0.0);
        l.drop = drop;
        // Duplicates and delays reorder frames by up to two frame times.
        // Modulo 8 leaves a slack of only M - 2k = 2 frames against stale
        // copies, too little for that (as on any modulo-8 HDLC link; real
        // serial lines neither duplicate nor reorder), so only modulo 128
        // gets them.
        if !mod8 {
            l.dup = dup;
            l.delay = dup;
        }
        let mut sim = Sim::new(config, l.clone(), 12_000, 1_500, seed);
        sim.ab.cfg.lose = lose_ab;
        sim.ba.cfg.lose = lose_ba;
        sim.run(Duration::from_secs(3000));
        prop_assert!(sim.finished(), "not finished at {:?}", sim.now);
        sim.check_exactly_once();
    }
}

/// The targets of issue 5 hold for every seed, not just one: 100 KB at
/// 9600 baud, ten seeds per bit error rate.
#[test]
fn goodput_holds_across_seeds() {
    for (ber, floor) in [(1e-4, 0.80), (1e-5, 0.91), (0.0, 0.98)] {
        let mut g = Vec::new();
        for seed in 20..30 {
            let sim = transfer(
                LapbConfig::default(),
                line(960, 20, ber),
                100_000,
                1_000,
                seed,
                2000,
            );
            g.push(sim.goodput());
        }
        let min = g.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        println!("9600 BER {ber:e} over 10 seeds: min {min:.3} mean {mean:.3}");
        assert!(min >= floor, "BER {ber}: {g:?}");
    }
}

/// One-way bulk transfer with a trickle of reverse I-frames (an 8-byte
/// reply for every second unit, like packet-layer acknowledgements and SMTP
/// replies): the sending end piggybacks its acknowledgements on its own
/// I-frames instead of answering each reverse I-frame with an RR.
#[test]
fn trickle_of_reverse_frames_is_acknowledged_by_piggybacking() {
    for (ber, seed, floor) in [(0.0, 40, 0.98), (1e-5, 41, 0.92), (1e-4, 42, 0.80)] {
        let mut sim = Sim::new(LapbConfig::default(), line(960, 20, ber), 100_000, 0, seed);
        sim.b.reply = Some((2, 8));
        sim.run(Duration::from_secs(2000));
        assert!(sim.finished(), "not finished at {:?}", sim.now);
        sim.check_exactly_once();
        sim.report(&format!("9600 BER {ber:e} trickle"));
        let reverse_i = sim.b_tx.i;
        assert!(reverse_i >= 40, "reverse I-frames {reverse_i}");
        println!(
            "BER {ber:e}: A sent {} RR ({} bare) for {} reverse I-frames; goodput {:.3}",
            sim.a_tx.rr,
            sim.a_tx.rr_plain,
            reverse_i,
            sim.goodput()
        );
        // Before T2, A answered every reverse I-frame with an RR. Now A
        // always has an I-frame ready while its transfer runs, so a bare RR
        // is owed only after its last I-frame (B's replies to the last few
        // units) or while its window is closed; polls (RR P=1 on T1) are
        // counted in `rr` and bounded by the timeouts.
        assert!(
            sim.a_tx.rr_plain <= reverse_i / 10 + 3,
            "{} bare RR for {reverse_i} reverse I-frames",
            sim.a_tx.rr_plain
        );
        let timeouts = sim.a.lapb.stats().timeouts;
        assert!(
            sim.a_tx.rr <= reverse_i / 10 + 3 + 2 * timeouts,
            "{} RR for {reverse_i} reverse I-frames",
            sim.a_tx.rr
        );
        assert!(sim.goodput() >= floor, "goodput {}", sim.goodput());
    }
}

/// A peer that sends one I-frame and then nothing has it acknowledged by
/// RR when T2 runs out, before its own T1: no retransmission, no timeout.
#[test]
fn lone_i_frame_is_acknowledged_within_t2() {
    let t0 = t0();
    let config = LapbConfig::default().with_line_rate(960);
    // Derived T2 at 9600 baud: one 1024-byte frame takes 1.08 s, more than
    // T1/8 = 375 ms.
    let t2 = Duration::from_millis(375);
    let mut a = Lapb::new(config.clone(), LapbRole::Dte);
    let mut b = Lapb::new(config, LapbRole::Dce);
    a.connect(t0);
    b.handle_frame(&a.poll_transmit(t0).unwrap(), t0);
    a.handle_frame(&b.poll_transmit(t0).unwrap(), t0);
    let latency = Duration::from_millis(50);
    a.send(Bytes::from_static(b"MAIL FROM:<a@b>\r\n")).unwrap();
    let f = a.poll_transmit(t0).unwrap();
    let t1 = t0 + latency;
    b.handle_frame(&f, t1);
    assert_eq!(b.poll_transmit(t1), None, "the acknowledgement waits");
    assert_eq!(b.poll_timeout(), Some(t1 + t2));
    assert_eq!(b.poll_transmit(t1 + t2 / 2), None);
    let a_t1 = a.poll_timeout().unwrap();
    let rr = b.poll_transmit(t1 + t2).unwrap();
    assert_eq!(&rr[..], &[0x01, 0x01, 0x02]); // RR N(R)=1
    let arrival = t1 + t2 + latency + Duration::from_millis(20);
    assert!(arrival < a_t1, "RR at {arrival:?}, A's T1 at {a_t1:?}");
    a.handle_frame(&rr, arrival);
    assert!(a.poll_timeout().unwrap() >= arrival + Duration::from_secs(10));
    assert_eq!(a.stats().timeouts, 0);
    assert_eq!(b.stats().rr_sent, 1);

    // The same through the line harness, with nothing else to send.
    let mut sim = Sim::new(LapbConfig::default(), line(960, 20, 0.0), 40, 0, 21);
    sim.run_to_limit = true;
    sim.run(Duration::from_secs(8));
    assert!(sim.finished());
    sim.check_exactly_once();
    assert_eq!(sim.a.lapb.stats().i_frames_sent, 1);
    assert_eq!(sim.a.lapb.stats().i_frames_retransmitted, 0);
    assert_eq!(sim.a.lapb.stats().timeouts, 0);
    assert_eq!(sim.b_tx.rr_plain, 1);
}

/// Acknowledgements that must not wait for T2.
#[test]
fn urgent_acknowledgements_are_not_delayed() {
    let now = t0();
    let connect = |cfg: LapbConfig| {
        let mut dce = Lapb::new(cfg, LapbRole::Dce);
        dce.handle_frame(&[0x01, 0x3F], now); // SABM P=1
        assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x73]);
        dce
    };
    // Modulo 8, k = 4: the second unacknowledged frame (half the window)
    // draws RR N(R)=2 at once.
    let mut dce = connect(cfg8());
    dce.handle_frame(b"\x01\x00a", now);
    assert_eq!(dce.poll_transmit(now), None);
    dce.handle_frame(b"\x01\x02b", now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x41]);
    // A repeated frame (the peer is resending): RR again at once.
    dce.handle_frame(b"\x01\x02b", now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x41]);
    // A poll is answered with F=1 at once, covering a waiting frame.
    dce.handle_frame(b"\x01\x04c", now);
    assert_eq!(dce.poll_transmit(now), None);
    dce.handle_frame(&[0x01, 0x11], now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x71]);
    assert_eq!(dce.poll_transmit(now), None, "nothing owed after F=1");
    assert_eq!(dce.poll_timeout().map(|t| t > now), Some(true));
    // Busy: RNR at once, even with an I-frame of our own going out.
    dce.send(Bytes::from_static(b"x")).unwrap();
    dce.set_receiver_busy(true);
    let frames: Vec<_> = std::iter::from_fn(|| dce.poll_transmit(now)).collect();
    assert!(frames.iter().any(|f| f[..] == [0x01, 0x65]), "{frames:?}");
    // REJ (go-back-N) goes at once and carries the acknowledgement.
    let mut rej = cfg8();
    rej.selective_reject = false;
    let mut dce = connect(rej);
    dce.handle_frame(b"\x01\x00a", now);
    dce.handle_frame(b"\x01\x04c", now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x29]); // REJ N(R)=1
    assert_eq!(dce.poll_transmit(now), None);
    // The retransmission that fills the gap is acknowledged at once.
    dce.handle_frame(b"\x01\x02b", now);
    assert_eq!(&dce.poll_transmit(now).unwrap()[..], &[0x01, 0x41]);
}

#[test]
fn receiver_busy_mid_transfer_loses_nothing() {
    let mut sim = Sim::new(
        LapbConfig::default(),
        line(960, 20, 1e-5),
        30_000,
        2_000,
        19,
    );
    sim.run_to_limit = true;
    sim.run(Duration::from_secs(8));
    sim.b.lapb.set_receiver_busy(true);
    sim.run(Duration::from_secs(14));
    let during = sim.b.received.len();
    sim.run(Duration::from_secs(20));
    assert_eq!(sim.b.received.len(), during, "delivered while busy");
    assert!(sim.a.lapb.stats().rnr_received > 0);
    sim.b.lapb.set_receiver_busy(false);
    sim.run_to_limit = false;
    sim.run(Duration::from_secs(600));
    assert!(sim.finished());
    sim.check_exactly_once();
}

#[test]
fn disconnect_then_reconnect() {
    let mut sim = Sim::new(LapbConfig::default(), line(960, 20, 0.0), 5_000, 0, 20);
    sim.run(Duration::from_secs(60));
    assert!(sim.finished());
    let now = sim.instant();
    sim.a.lapb.disconnect(now);
    sim.run_to_limit = true;
    sim.run(Duration::from_secs(70));
    assert_eq!(
        sim.a.events.last(),
        Some(&LapbEvent::Disconnected(DisconnectReason::Local))
    );
    assert_eq!(
        sim.b.events.last(),
        Some(&LapbEvent::Disconnected(DisconnectReason::Remote))
    );
    assert!(!sim.a.lapb.is_connected() && !sim.b.lapb.is_connected());
    // B may set the link up again; A, having disconnected, refuses with DM.
    let now = sim.instant();
    sim.b.lapb.connect(now);
    sim.run(Duration::from_secs(80));
    assert_eq!(
        sim.b.events.last(),
        Some(&LapbEvent::Disconnected(DisconnectReason::Refused))
    );
    // A connects again: both up.
    let now = sim.instant();
    sim.a.lapb.connect(now);
    sim.run(Duration::from_secs(90));
    assert!(sim.a.lapb.is_connected() && sim.b.lapb.is_connected());
    assert_eq!(sim.b.events.last(), Some(&LapbEvent::Connected));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary frames, sends and timer runs never panic, and what comes out
    /// stays within the limits.
    #[test]
    fn arbitrary_frames_never_panic(
        mod8 in any::<bool>(),
        selective in any::<bool>(),
        dce in any::<bool>(),
        ops in proptest::collection::vec(
            (0u8..6, proptest::collection::vec(any::<u8>(), 0..12)), 0..80),
    ) {
        let mut cfg = if mod8 {
            LapbConfig::default().with_window(Modulus::Mod8, 7)
        } else {
            LapbConfig::default()
        };
        cfg.selective_reject = selective;
        cfg.max_info = 8;
        cfg.min_info = 4;
        let role = if dce { LapbRole::Dce } else { LapbRole::Dte };
        let mut lapb = Lapb::new(cfg.with_line_rate(960), role);
        let t0 = Instant::now();
        let mut now = t0;
        for (op, mut bytes) in ops {
            match op {
                0 | 1 => {
                    // Mostly well-addressed frames, so the state machine is reached.
                    if let Some(a) = bytes.first_mut() {
                        *a = if *a & 1 == 0 { ADDRESS_A } else { ADDRESS_B };
                    }
                    lapb.handle_frame(&bytes, now);
                }
                2 => {
                    now += Duration::from_millis(u64::from(bytes.first().copied().unwrap_or(0)) * 50);
                    lapb.handle_timeout(now);
                }
                3 => {
                    let _ = lapb.send(Bytes::from(bytes));
                }
                4 => lapb.connect(now),
                _ => lapb.set_receiver_busy(bytes.len() % 2 == 0),
            }
            while let Some(f) = lapb.poll_transmit(now) {
                prop_assert!(f.len() >= 2 && f.len() <= 8 + 3);
                let modulus = if mod8 { Modulus::Mod8 } else { Modulus::Mod128 };
                prop_assert!(LapbFrame::parse(&f, modulus).is_ok());
            }
            while let Some(ev) = lapb.poll_event() {
                if let LapbEvent::Data(d) = ev {
                    prop_assert!(d.len() <= 8);
                }
            }
            // Running the timers that are due leaves none due: no busy loop.
            if lapb.poll_timeout().is_some_and(|t| t <= now) {
                lapb.handle_timeout(now);
                while lapb.poll_transmit(now).is_some() {}
                prop_assert!(lapb.poll_timeout().is_none_or(|t| t > now), "timer still due");
            }
        }
    }
}

/// 400 runs: 9600 baud at BER 1e-4 with 20..220 ms latency, and 115200
/// baud with 300 ms at BER 0..2e-4; drops, duplicates, delays, and a cut
/// of up to 45 s in a third of them; SREJ and REJ. Slow in debug builds:
/// `cargo test --release -p smtplink-x25 --test lapb -- --ignored`.
#[test]
#[ignore]
fn stress_many_seeds() {
    let mut bad = Vec::new();
    for seed in 100..300u64 {
        for selective in [true, false] {
            let mut c = LapbConfig::default();
            c.selective_reject = selective;
            let mut l = if seed % 2 == 0 {
                line(960, 20 + seed % 200, 1e-4)
            } else {
                line(11_520, 300, 1e-4 * (seed % 3) as f64)
            };
            l.drop = 0.03;
            l.dup = 0.05;
            l.delay = 0.05;
            if seed % 3 == 0 {
                l.cuts = vec![(Duration::from_secs(5), Duration::from_secs(5 + seed % 40))];
            }
            let mut sim = Sim::new(
                c,
                l,
                if seed % 2 == 0 { 20_000 } else { 200_000 },
                3_000,
                seed,
            );
            sim.run(Duration::from_secs(5000));
            let ok = sim.finished()
                && sim.b.received == sim.a.sent_units
                && sim.a.received == sim.b.sent_units;
            let resets = sim
                .a
                .events
                .iter()
                .chain(sim.b.events.iter())
                .filter(|e| **e == LapbEvent::Reset)
                .count();
            if !ok || resets > 0 {
                bad.push((seed, selective, ok, resets, sim.now));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}
