//! Two packet layers wired back to back: calls, data both ways, clearing,
//! segmentation of large writes, many circuits, flow control isolation,
//! fairness, refusal, reset, restart, negotiation; proptests for byte-exact
//! delivery under any interleaving and for arbitrary input packets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use smtplink_x25::packet::Modulus;
use smtplink_x25::{
    CircuitId, CircuitState, CloseReason, PacketConfig, PacketEvent, PacketLayer, PacketRole,
};

struct Pair {
    /// The DTE end.
    a: PacketLayer,
    /// The DCE end.
    b: PacketLayer,
    now: Instant,
    max_len: usize,
    ev_a: Vec<PacketEvent>,
    ev_b: Vec<PacketEvent>,
    /// Standalone RR packets sent by A and by B.
    rr_a: usize,
    rr_b: usize,
    /// DATA packets sent by A and by B.
    data_a: usize,
    data_b: usize,
}

/// (is DATA, is RR) for a packet of either modulus.
fn kind(p: &[u8]) -> (bool, bool) {
    let t = p.get(2).copied().unwrap_or(0);
    let mod8 = p.first().is_some_and(|g| g & 0x30 == 0x10);
    let rr = if mod8 { t & 0x1F == 0x01 } else { t == 0x01 };
    (t & 1 == 0, rr)
}

impl Pair {
    fn new(ca: PacketConfig, cb: PacketConfig, max_len: usize) -> Pair {
        let now = Instant::now();
        let mut p = Pair {
            a: PacketLayer::new(ca, PacketRole::Dte),
            b: PacketLayer::new(cb, PacketRole::Dce),
            now,
            max_len,
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            rr_a: 0,
            rr_b: 0,
            data_a: 0,
            data_b: 0,
        };
        p.a.restart(now);
        p.b.restart(now);
        p.pump();
        p
    }

    fn side(&mut self, a: bool) -> &mut PacketLayer {
        if a {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Moves at most one packet each way; true if anything moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        if let Some(p) = self.a.poll_packet(self.max_len, self.now) {
            check_len(&p, self.max_len);
            let (data, rr) = kind(&p);
            self.data_a += usize::from(data);
            self.rr_a += usize::from(rr);
            self.b.handle_packet(&p, self.now);
            moved = true;
        }
        if let Some(p) = self.b.poll_packet(self.max_len, self.now) {
            check_len(&p, self.max_len);
            let (data, rr) = kind(&p);
            self.data_b += usize::from(data);
            self.rr_b += usize::from(rr);
            self.a.handle_packet(&p, self.now);
            moved = true;
        }
        self.collect();
        moved
    }

    /// Steps until quiet. Like a driver, it then sleeps until the next
    /// timer if that is a short one (the delayed ack: at most `ack_delay`
    /// away), and goes on; the long timers (T20-T23) only run through
    /// `advance`.
    fn pump(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step() && !self.short_timer() {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    /// Runs the next timer of either end if it is due within `ack_delay`.
    fn short_timer(&mut self) -> bool {
        let short = self.a.config().ack_delay.max(self.b.config().ack_delay);
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= self.now + short => {
                self.advance(t.saturating_duration_since(self.now));
                true
            }
            _ => false,
        }
    }

    fn collect(&mut self) {
        self.ev_a.extend(std::iter::from_fn(|| self.a.poll_event()));
        self.ev_b.extend(std::iter::from_fn(|| self.b.poll_event()));
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.collect();
    }

    /// A call from one end, accepted by the other: (caller's id, answerer's id).
    fn connect(&mut self, from_a: bool, service: &str) -> (CircuitId, CircuitId) {
        let now = self.now;
        let id = self.side(from_a).call(service, now).unwrap();
        self.pump();
        let events = if from_a {
            &mut self.ev_b
        } else {
            &mut self.ev_a
        };
        let pos = events
            .iter()
            .position(|e| matches!(e, PacketEvent::IncomingCall { service: s, .. } if s == service))
            .expect("incoming call");
        let PacketEvent::IncomingCall { id: theirs, .. } = events.remove(pos) else {
            unreachable!()
        };
        self.side(!from_a).accept(theirs, now);
        self.pump();
        let events = if from_a {
            &mut self.ev_a
        } else {
            &mut self.ev_b
        };
        let pos = events
            .iter()
            .position(|e| *e == PacketEvent::Connected(id))
            .expect("connected");
        events.remove(pos);
        (id, theirs)
    }

    fn closed(&self, a: bool, id: CircuitId) -> Option<CloseReason> {
        let ev = if a { &self.ev_a } else { &self.ev_b };
        let mut found = ev.iter().filter_map(|e| match e {
            PacketEvent::Closed { id: i, reason } if *i == id => Some(*reason),
            _ => None,
        });
        let first = found.next();
        assert!(found.next().is_none(), "two Closed events for {id:?}");
        first
    }
}

/// DATA packets respect max_len; control packets are small anyway.
fn check_len(p: &[u8], max_len: usize) {
    let is_data = p.get(2).is_some_and(|t| t & 1 == 0);
    if is_data {
        assert!(p.len() <= max_len, "DATA of {} bytes > {max_len}", p.len());
    } else {
        assert!(p.len() <= smtplink_x25::packet::MAX_CONTROL_LEN);
    }
}

fn read_all(l: &mut PacketLayer, id: CircuitId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = l.read(id, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

/// One byte stream on a circuit, from `from_a`'s end `src` to `dst`.
struct Flow {
    from_a: bool,
    src: CircuitId,
    dst: CircuitId,
    data: Vec<u8>,
    written: usize,
    got: Vec<u8>,
    reading: bool,
    done_at: Option<usize>,
}

impl Flow {
    fn new(from_a: bool, (src, dst): (CircuitId, CircuitId), data: Vec<u8>) -> Flow {
        Flow {
            from_a,
            src,
            dst,
            data,
            written: 0,
            got: Vec::new(),
            reading: true,
            done_at: None,
        }
    }
    fn done(&self) -> bool {
        self.got.len() == self.data.len()
    }
}

/// Writes, steps and reads until every reading flow is complete or the
/// pair is stuck; returns the number of steps.
fn run(p: &mut Pair, flows: &mut [Flow], max_steps: usize) -> usize {
    for step in 0..max_steps {
        for f in flows.iter_mut() {
            if f.written < f.data.len() {
                let n = p.side(f.from_a).write(f.src, &f.data[f.written..]).unwrap();
                f.written += n;
            }
        }
        let moved = p.step();
        for f in flows.iter_mut() {
            if f.reading {
                let got = read_all(p.side(!f.from_a), f.dst);
                f.got.extend_from_slice(&got);
            }
            if f.done() && f.done_at.is_none() {
                f.done_at = Some(step);
            }
        }
        if flows.iter().filter(|f| f.reading).all(Flow::done) {
            return step;
        }
        if !moved
            && flows
                .iter()
                .all(|f| !f.reading || f.written == f.data.len())
        {
            // Let RRs for the last reads go out.
            if !p.step() {
                return step;
            }
        }
    }
    max_steps
}

fn config() -> PacketConfig {
    PacketConfig::default()
}

#[test]
fn call_data_both_ways_and_clear() {
    for max_len in [1024, 64, 8] {
        let mut p = Pair::new(config(), config(), max_len);
        let (a, b) = p.connect(true, "smtp");
        assert_eq!(p.b.circuit_state(b), Some(CircuitState::Open));
        let mut flows = [
            Flow::new(false, (b, a), b"220 b ESMTP\r\n".to_vec()),
            Flow::new(true, (a, b), b"EHLO a\r\nQUIT\r\n".to_vec()),
        ];
        run(&mut p, &mut flows, 10_000);
        assert!(flows.iter().all(|f| f.got == f.data), "max_len {max_len}");
        // The server's last reply, then the caller clears (RFC 1090 §9).
        assert_eq!(p.b.write(b, b"221 bye\r\n").unwrap(), 9);
        p.pump();
        assert_eq!(read_all(&mut p.a, a), b"221 bye\r\n");
        p.a.clear(a, p.now);
        p.pump();
        assert_eq!(p.closed(true, a), Some(CloseReason::Local));
        assert_eq!(
            p.closed(false, b),
            Some(CloseReason::Cleared {
                cause: 0,
                diagnostic: 0
            })
        );
        assert!(p.a.is_finished(a) && p.b.is_finished(b));
        assert_eq!(p.a.poll_timeout(), None);
        assert_eq!(p.b.poll_timeout(), None);
    }
}

#[test]
fn clear_after_write_delivers_everything_then_eof() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, b) = p.connect(true, "smtp");
    let data = pattern(10_000, 3);
    let mut got = Vec::new();
    let mut buf = [0u8; 100];
    let mut written = 0;
    while written < data.len() {
        written += p.a.write(a, &data[written..]).unwrap();
        p.pump();
        // The reader is slow: one small read per round.
        let n = p.b.read(b, &mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    p.a.clear(a, p.now);
    p.pump();
    // Nothing is cleared while the peer has not read everything.
    assert_eq!(p.a.circuit_state(a), Some(CircuitState::Clearing));
    assert_eq!(p.closed(false, b), None);
    let mut rounds = 0;
    loop {
        p.pump();
        let n = p.b.read(b, &mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 && p.b.is_finished(b) {
            break;
        }
        rounds += 1;
        assert!(rounds < 100_000);
    }
    assert!(got == data);
    assert_eq!(p.closed(true, a), Some(CloseReason::Local));
    assert!(matches!(
        p.closed(false, b),
        Some(CloseReason::Cleared { .. })
    ));
}

#[test]
fn one_mebibyte_both_ways_byte_identical() {
    let mut mod128 = config();
    mod128.modulus = Modulus::Mod128;
    mod128.max_packet = 4096;
    mod128.window = 127;
    mod128.send_buffer = 64 * 1024;
    for (c, max_len) in [(config(), 64), (mod128, 4100), (mod128_small(), 40)] {
        let mut p = Pair::new(c.clone(), c, max_len);
        let (a, b) = p.connect(true, "smtp");
        let mut flows = [
            Flow::new(true, (a, b), pattern(1 << 20, 1)),
            Flow::new(false, (b, a), pattern(1 << 20, 2)),
        ];
        run(&mut p, &mut flows, 10_000_000);
        for f in &flows {
            assert!(f.got == f.data, "max_len {max_len}: {} bytes", f.got.len());
        }
        let s = p.a.stats(a).unwrap();
        assert_eq!(s.bytes_out, 1 << 20);
        assert_eq!(s.bytes_in, 1 << 20);
    }
}

fn mod128_small() -> PacketConfig {
    let mut c = config();
    c.modulus = Modulus::Mod128;
    c.max_packet = 16;
    c.window = 100;
    c
}

#[test]
fn many_circuits_both_directions() {
    let mut p = Pair::new(config(), config(), 200);
    let mut flows = Vec::new();
    let mut a_lcns = Vec::new();
    let mut b_lcns = Vec::new();
    for i in 0..8u8 {
        let (x, y) = p.connect(true, "smtp");
        a_lcns.push(x.lcn());
        flows.push(Flow::new(true, (x, y), pattern(20_000, i)));
        flows.push(Flow::new(false, (y, x), pattern(20_000, i + 8)));
        let (x, y) = p.connect(false, "smtp");
        b_lcns.push(x.lcn());
        flows.push(Flow::new(false, (x, y), pattern(20_000, i + 16)));
        flows.push(Flow::new(true, (y, x), pattern(20_000, i + 24)));
    }
    assert_eq!(
        a_lcns,
        (57..=64).rev().collect::<Vec<u16>>(),
        "DTE from the top"
    );
    assert_eq!(b_lcns, (1..=8).collect::<Vec<u16>>(), "DCE from the bottom");
    run(&mut p, &mut flows, 10_000_000);
    for f in &flows {
        assert!(f.got == f.data);
    }
}

#[test]
fn slow_reader_stalls_only_its_own_circuit() {
    let mut p = Pair::new(config(), config(), 300);
    let c1 = p.connect(true, "smtp");
    let c2 = p.connect(true, "smtp");
    let mut flows = [
        Flow::new(true, c1, pattern(200_000, 1)),
        Flow::new(true, c2, pattern(200_000, 2)),
    ];
    flows[0].reading = false;
    run(&mut p, &mut flows, 1_000_000);
    assert!(flows[1].done());
    // The stalled circuit sent one window and no more; its buffer is full.
    let s = p.a.stats(c1.0).unwrap();
    assert_eq!(s.packets_out, u64::from(s.send_window));
    assert_eq!(p.a.write(c1.0, b"more").unwrap(), 0);
    // Reading again resumes it and Writable comes back.
    flows[0].reading = true;
    run(&mut p, &mut flows, 1_000_000);
    assert!(flows[0].got == flows[0].data);
    assert!(p.ev_a.contains(&PacketEvent::Writable(c1.0)));
}

#[test]
fn round_robin_small_transfer_is_not_stuck_behind_a_big_one() {
    let mut p = Pair::new(config(), config(), 128);
    let big = p.connect(true, "smtp");
    let small = p.connect(true, "smtp");
    let mut flows = [
        Flow::new(true, big, pattern(1 << 20, 1)),
        Flow::new(true, small, pattern(10 * 1024, 2)),
    ];
    // Let the big one get going first.
    for _ in 0..50 {
        let n =
            p.a.write(big.0, &flows[0].data[flows[0].written..])
                .unwrap();
        flows[0].written += n;
        p.step();
        flows[0].got.extend(read_all(&mut p.b, big.1));
    }
    let before = flows[0].got.len();
    run(&mut p, &mut flows, 10_000_000);
    let small_done = flows[1].done_at.unwrap();
    let big_done = flows[0].done_at.unwrap();
    assert!(small_done * 10 < big_done, "{small_done} vs {big_done}");
    // While the small one ran, the big one got about the same share.
    assert!(before < 20_000);
    assert!(flows[0].got == flows[0].data && flows[1].got == flows[1].data);
}

#[test]
fn refusal() {
    let mut p = Pair::new(config(), config(), 128);
    let id = p.a.call("nosuch", p.now).unwrap();
    p.pump();
    let Some(PacketEvent::IncomingCall {
        id: theirs,
        service,
    }) = p.ev_b.pop()
    else {
        panic!("{:?}", p.ev_b)
    };
    assert_eq!(service, "nosuch");
    p.b.refuse(theirs, 0x00, 0x41, p.now);
    p.pump();
    assert_eq!(
        p.closed(true, id),
        Some(CloseReason::Refused {
            cause: 0,
            diagnostic: 0x41
        })
    );
    assert_eq!(p.closed(false, theirs), Some(CloseReason::Local));
    assert!(p.a.is_finished(id));
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn unanswered_incoming_call_times_out() {
    let mut p = Pair::new(config(), config(), 128);
    let id = p.a.call("smtp", p.now).unwrap();
    p.pump();
    let Some(PacketEvent::IncomingCall { id: theirs, .. }) = p.ev_b.pop() else {
        panic!()
    };
    p.advance(config().call_timeout);
    p.pump();
    // Both timers are T21; whichever clears first, both ends are done.
    assert_eq!(p.closed(true, id).map(|_| ()), Some(()));
    assert_eq!(p.closed(false, theirs), Some(CloseReason::Timeout));
    p.pump();
    assert_eq!(p.a.poll_timeout(), None);
    assert_eq!(p.b.poll_timeout(), None);
}

#[test]
fn reset_ends_the_session_at_both_ends() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, b) = p.connect(true, "smtp");
    p.b.write(b, b"220 ready\r\n").unwrap();
    p.pump();
    // A RESET INDICATION as the network would deliver it to A.
    let lcn = a.lcn();
    p.a.handle_packet(&[0x10, lcn as u8, 0x1B, 0x05, 0x00], p.now);
    p.collect();
    p.pump();
    assert_eq!(
        p.closed(true, a),
        Some(CloseReason::Reset {
            cause: 5,
            diagnostic: 0
        })
    );
    assert!(matches!(
        p.closed(false, b),
        Some(CloseReason::Cleared { .. })
    ));
    // Data received before the reset can still be read, then EOF.
    assert_eq!(read_all(&mut p.a, a), b"220 ready\r\n");
    assert!(p.a.is_finished(a));
    // A protocol error detected by B: B resets, A sees the reset.
    let (a, b) = p.connect(true, "smtp");
    p.b.handle_packet(&[0x10, b.lcn() as u8, 0x0E, b'x'], p.now); // P(S)=7
    p.collect();
    p.pump();
    assert_eq!(
        p.closed(false, b),
        Some(CloseReason::ProtocolError { diagnostic: 1 })
    );
    assert_eq!(
        p.closed(true, a),
        Some(CloseReason::Reset {
            cause: 0,
            diagnostic: 1
        })
    );
    assert_eq!(p.a.poll_timeout(), None);
    assert_eq!(p.b.poll_timeout(), None);
}

#[test]
fn restart_mid_session() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, b) = p.connect(true, "smtp");
    let (b2, a2) = p.connect(false, "smtp");
    p.a.restart(p.now);
    p.collect();
    p.pump();
    let r = Some(CloseReason::Restart {
        cause: 0,
        diagnostic: 0,
    });
    for (side, id) in [(true, a), (false, b), (false, b2), (true, a2)] {
        assert_eq!(p.closed(side, id), r);
    }
    // The layer works again.
    let (a, b) = p.connect(true, "smtp");
    p.a.write(a, b"x").unwrap();
    p.pump();
    assert_eq!(read_all(&mut p.b, b), b"x");
}

#[test]
fn link_lost_then_back() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, b) = p.connect(true, "smtp");
    p.a.link_lost(p.now);
    p.b.link_lost(p.now);
    p.collect();
    assert_eq!(p.closed(true, a), Some(CloseReason::LinkLost));
    assert_eq!(p.closed(false, b), Some(CloseReason::LinkLost));
    // A call made while the link is down waits for the restart.
    let early = p.a.call("smtp", p.now).unwrap();
    assert!(p.a.poll_packet(128, p.now).is_none());
    p.a.restart(p.now);
    p.b.restart(p.now);
    p.pump();
    let Some(PacketEvent::IncomingCall { id, .. }) = p.ev_b.pop() else {
        panic!("{:?}", p.ev_b)
    };
    p.b.accept(id, p.now);
    p.pump();
    assert!(p.ev_a.contains(&PacketEvent::Connected(early)));
}

#[test]
fn negotiation_of_packet_size_and_window() {
    let mut ca = config();
    ca.max_packet = 1024;
    ca.window = 7;
    let mut cb = config();
    cb.max_packet = 128;
    cb.window = 3;
    let mut p = Pair::new(ca, cb, 4096);
    let (a, b) = p.connect(true, "smtp");
    for s in [p.a.stats(a).unwrap(), p.b.stats(b).unwrap()] {
        assert_eq!((s.send_packet, s.recv_packet), (128, 128));
        assert_eq!((s.send_window, s.recv_window), (3, 3));
    }
    // A sends no more than the window before B reads.
    p.a.write(a, &pattern(5000, 1)).unwrap();
    let mut sizes = Vec::new();
    while let Some(pk) = p.a.poll_packet(4096, p.now) {
        sizes.push(pk.len());
        p.b.handle_packet(&pk, p.now);
    }
    assert_eq!(sizes, [131, 131, 131]);
    // The other direction, called by B with its smaller offer.
    let (b2, a2) = p.connect(false, "smtp");
    assert_eq!(p.a.stats(a2).unwrap().send_packet, 128);
    assert_eq!(p.b.stats(b2).unwrap().recv_window, 3);
}

#[test]
fn stale_id_never_reaches_a_new_call() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, b) = p.connect(true, "smtp");
    p.a.clear(a, p.now);
    p.pump();
    let (a2, _) = p.connect(true, "smtp");
    assert_eq!(a.lcn(), a2.lcn());
    assert_ne!(a, a2);
    assert_eq!(p.a.write(a, b"x"), Err(smtplink_x25::X25Error::Closed));
    assert!(p.b.is_finished(b));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Write { from_a: bool, len: usize },
    Read { at_a: bool, len: usize },
    Step { max_len: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), 0usize..3000).prop_map(|(from_a, len)| Op::Write { from_a, len }),
        (any::<bool>(), 0usize..2000).prop_map(|(at_a, len)| Op::Read { at_a, len }),
        (4usize..600).prop_map(|max_len| Op::Step { max_len }),
    ]
}

fn layer_config() -> impl Strategy<Value = PacketConfig> {
    (any::<bool>(), 4u32..=10, 1u8..=127, 1usize..20_000).prop_map(|(m128, p, w, sb)| {
        let mut c = PacketConfig::default();
        c.modulus = if m128 { Modulus::Mod128 } else { Modulus::Mod8 };
        c.max_packet = 1 << p;
        c.window = if m128 { w } else { w % 7 + 1 };
        c.send_buffer = sb;
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_writes_reads_and_sizes_deliver_bytes_exactly(
        (ca, cb) in layer_config().prop_flat_map(|a| {
            let m = a.modulus;
            (Just(a), layer_config().prop_map(move |mut b| {
                b.modulus = m;
                b.window = b.window.min(m_max(m));
                b
            }))
        }),
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let mut p = Pair::new(ca, cb, 64);
        let (a, b) = p.connect(true, "smtp");
        let sent_ab = pattern(1 << 16, 5);
        let sent_ba = pattern(1 << 16, 6);
        let (mut wa, mut wb) = (0usize, 0usize);
        let (mut ga, mut gb) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Write { from_a: true, len } => {
                    let end = (wa + len).min(sent_ab.len());
                    wa += p.a.write(a, &sent_ab[wa..end]).unwrap();
                }
                Op::Write { from_a: false, len } => {
                    let end = (wb + len).min(sent_ba.len());
                    wb += p.b.write(b, &sent_ba[wb..end]).unwrap();
                }
                Op::Read { at_a, len } => {
                    let mut buf = vec![0u8; len];
                    let (l, id, out) = if at_a { (&mut p.a, a, &mut ga) } else { (&mut p.b, b, &mut gb) };
                    let n = l.read(id, &mut buf).unwrap();
                    out.extend_from_slice(&buf[..n]);
                }
                Op::Step { max_len } => {
                    p.max_len = max_len;
                    p.step();
                }
            }
        }
        p.max_len = 64;
        for _ in 0..1_000_000 {
            let moved = p.step();
            let ra = read_all(&mut p.a, a);
            let rb = read_all(&mut p.b, b);
            let idle = !moved && ra.is_empty() && rb.is_empty();
            ga.extend(ra);
            gb.extend(rb);
            if idle {
                break;
            }
        }
        prop_assert_eq!(&gb[..], &sent_ab[..wa]);
        prop_assert_eq!(&ga[..], &sent_ba[..wb]);
    }

    #[test]
    fn arbitrary_packets_never_panic(
        m128 in any::<bool>(),
        packets in prop::collection::vec(
            (any::<u8>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..40)),
            0..60,
        ),
    ) {
        let mut c = PacketConfig::default();
        if m128 {
            c.modulus = Modulus::Mod128;
        }
        let gfi = if m128 { 0x20 } else { 0x10 };
        let mut p = Pair::new(c.clone(), c, 64);
        let (a, b) = p.connect(true, "smtp");
        let (b2, _) = p.connect(false, "smtp");
        p.a.write(a, &pattern(3000, 1)).unwrap();
        p.b.write(b2, &pattern(3000, 2)).unwrap();
        let lcns = [a.lcn(), b.lcn(), b2.lcn(), 0, 5];
        for (sel, to_a, body) in packets {
            // Half the packets aimed at a live channel with a valid GFI so
            // they reach deep states; the rest raw.
            let pkt = if sel & 1 == 0 {
                let lcn = lcns[usize::from(sel >> 1) % lcns.len()];
                let mut v = vec![gfi | (sel & 0x80) | ((lcn >> 8) as u8), lcn as u8];
                v.extend_from_slice(&body);
                v
            } else {
                body
            };
            let now = p.now;
            p.side(to_a).handle_packet(&pkt, now);
            if sel % 5 == 0 {
                p.advance(Duration::from_secs(60));
            }
            p.step();
            let _ = read_all(&mut p.a, a);
            let _ = read_all(&mut p.b, b);
        }
        // Still sane: it goes quiet once the timers have run, and every id
        // was closed at most once.
        for _ in 0..10 {
            p.advance(Duration::from_secs(200));
            for _ in 0..10_000 {
                if !p.step() { break; }
            }
        }
        let mut seen = HashSet::new();
        for e in p.ev_a.iter() {
            if let PacketEvent::Closed { id, .. } = e {
                prop_assert!(seen.insert(*id));
            }
        }
        prop_assert_eq!(p.a.poll_timeout(), None);
        let _ = p.a.call("smtp", p.now);
    }
}

fn m_max(m: Modulus) -> u8 {
    m.max_window()
}

#[test]
fn call_collision_the_dte_call_wins() {
    let mut c = config();
    c.channels = 1;
    let mut p = Pair::new(c.clone(), c, 128);
    let from_a = p.a.call("smtp", p.now).unwrap();
    let from_b = p.b.call("smtp", p.now).unwrap();
    assert_eq!(from_a.lcn(), from_b.lcn());
    p.pump();
    assert_eq!(p.closed(false, from_b), Some(CloseReason::Collision));
    let Some(PacketEvent::IncomingCall { id, .. }) = p
        .ev_b
        .iter()
        .find(|e| matches!(e, PacketEvent::IncomingCall { .. }))
        .cloned()
    else {
        panic!("{:?}", p.ev_b)
    };
    p.b.accept(id, p.now);
    p.pump();
    assert!(p.ev_a.contains(&PacketEvent::Connected(from_a)));
    assert_eq!(
        p.b.call("smtp", p.now),
        Err(smtplink_x25::X25Error::NoFreeChannel)
    );
}

#[test]
fn control_packets_go_before_queued_data() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, _b) = p.connect(true, "smtp");
    p.a.write(a, &pattern(10_000, 1)).unwrap();
    let _ = p.a.poll_packet(128, p.now).unwrap();
    let other = p.a.call("smtp", p.now).unwrap();
    let next = p.a.poll_packet(128, p.now).unwrap();
    assert_eq!(next[2], 0x0B, "CALL REQUEST first");
    assert_eq!(u16::from(next[1]), other.lcn());
    p.a.clear(other, p.now);
    let next = p.a.poll_packet(128, p.now).unwrap();
    assert_eq!(next[2], 0x13, "then its CLEAR REQUEST");
}

// ---------------------------------------------------------------------------
// Acknowledgement coalescing
// ---------------------------------------------------------------------------

/// 1 MiB one way, the reader reading everything as it arrives: (DATA
/// packets A sent, RR packets B sent, steps taken).
fn one_way_rr_count(c: PacketConfig, max_len: usize) -> (usize, usize, usize) {
    let mut p = Pair::new(c.clone(), c, max_len);
    let (a, b) = p.connect(true, "smtp");
    let (rr_a0, rr_b0, data_b0) = (p.rr_a, p.rr_b, p.data_b);
    let mut flows = [Flow::new(true, (a, b), pattern(1 << 20, 7))];
    let steps = run(&mut p, &mut flows, 10_000_000);
    assert!(flows[0].got == flows[0].data);
    p.pump();
    assert_eq!(p.rr_a, rr_a0, "the sender owes nothing");
    assert_eq!(p.data_b, data_b0, "the reader sends no data");
    (p.data_a, p.rr_b - rr_b0, steps)
}

#[test]
fn rr_packets_for_one_mebibyte_one_way() {
    let mut w32 = config();
    w32.modulus = Modulus::Mod128;
    w32.window = 32;
    let mut w7 = config();
    w7.window = 7;
    for (c, max_len) in [(w7, 3 + 256), (w32, 4 + 256)] {
        let w = usize::from(c.window);
        let (packets, rr, steps) = one_way_rr_count(c.clone(), max_len);
        assert_eq!(packets, 4096);
        // Half a window (rounded up) per RR, plus a few for the tail.
        assert!(rr <= packets / w.div_ceil(2) + 3, "window {w}: {rr} RR");
        // Before: ack_delay zero acknowledges every packet read.
        let mut every = c.clone();
        every.ack_delay = Duration::ZERO;
        let (packets0, rr0, steps0) = one_way_rr_count(every, max_len);
        assert_eq!((packets0, rr0), (4096, 4096), "window {w}");
        // And the transfer is no slower for it.
        assert!(steps <= steps0, "window {w}: {steps} steps vs {steps0}");
        eprintln!("window {w}: {packets} DATA, {rr} RR (every read acked: {rr0}); steps {steps} vs {steps0}");
    }
}

#[test]
fn full_window_sender_hears_within_ack_delay() {
    let mut mod128 = config();
    mod128.modulus = Modulus::Mod128;
    let cases = [(config(), 1u8), (config(), 2), (config(), 3), (config(), 7)]
        .into_iter()
        .chain([(mod128.clone(), 32), (mod128, 127)]);
    for (mut c, w) in cases {
        c.window = w;
        c.max_packet = 128;
        c.send_buffer = 64 * 1024;
        let delay = c.ack_delay;
        let half = usize::from(w.div_ceil(2));
        for k in 1..=usize::from(w) {
            let mut p = Pair::new(c.clone(), c.clone(), 200);
            let (a, b) = p.connect(true, "smtp");
            let total = 128 * (2 * usize::from(w) + 1);
            assert_eq!(p.a.write(a, &pattern(total, 1)).unwrap(), total);
            p.pump();
            // The window is full and the reader has read nothing.
            assert_eq!(p.a.stats(a).unwrap().packets_out, u64::from(w));
            assert!(p.a.poll_packet(200, p.now).is_none());
            // Some time later the reader reads k packets and a half.
            p.advance(Duration::from_secs(3));
            let mut buf = vec![0u8; 128 * k + 64];
            assert_eq!(
                p.b.read(b, &mut buf).unwrap(),
                buf.len().min(128 * usize::from(w))
            );
            let read_at = p.now;
            let rr = match p.b.poll_packet(200, p.now) {
                Some(rr) => {
                    assert!(k >= half, "W {w} k {k}: RR before the delay");
                    rr
                }
                None => {
                    assert!(k < half, "W {w} k {k}: half a window read, no RR");
                    let t = p.b.poll_timeout().expect("delayed-ack timer");
                    assert!(t <= read_at + delay, "W {w} k {k}");
                    p.advance(t - p.now);
                    p.b.poll_packet(200, p.now).expect("RR at the timer")
                }
            };
            assert!(p.now <= read_at + delay);
            assert!(kind(&rr).1, "an RR");
            p.a.handle_packet(&rr, p.now);
            // The sender's window opened by exactly what was read.
            let mut sent = 0;
            while let Some(d) = p.a.poll_packet(200, p.now) {
                assert!(kind(&d).0);
                sent += 1;
            }
            assert_eq!(sent, k, "W {w} k {k}");
        }
    }
}

/// `rounds` exchanges: A writes 30 bytes, B reads them, B's driver polls
/// (as it does after every input), B answers with 30 bytes, A reads, A's
/// driver polls. `late` puts `ack_delay` between B's read and its reply.
fn request_response(c: PacketConfig, rounds: usize, late: bool) -> Pair {
    let mut p = Pair::new(c.clone(), c, 128);
    let (a, b) = p.connect(true, "smtp");
    p.pump();
    let (rr_a0, rr_b0) = (p.rr_a, p.rr_b);
    p.rr_a = 0;
    p.rr_b = 0;
    assert_eq!((rr_a0, rr_b0), (0, 0));
    let cmd = pattern(30, 1);
    let reply = pattern(30, 2);
    for _ in 0..rounds {
        p.a.write(a, &cmd).unwrap();
        p.step();
        assert_eq!(read_all(&mut p.b, b), cmd);
        p.step();
        if late {
            p.advance(p.b.config().ack_delay);
            p.step();
        }
        p.b.write(b, &reply).unwrap();
        p.step();
        assert_eq!(read_all(&mut p.a, a), reply);
        p.step();
    }
    p
}

#[test]
fn request_response_acks_ride_on_the_reply() {
    let rounds = 20;
    let mut p = request_response(config(), rounds, false);
    assert_eq!((p.rr_a, p.rr_b), (0, 0), "no standalone RR at all");
    assert_eq!((p.data_a, p.data_b), (rounds, rounds));
    // A's acknowledgement of the last reply goes out after ack_delay.
    p.pump();
    assert_eq!((p.rr_a, p.rr_b), (1, 0));
    // Before: one RR per SMTP line each way.
    let mut every = config();
    every.ack_delay = Duration::ZERO;
    let p = request_response(every, rounds, false);
    assert_eq!((p.rr_a, p.rr_b), (rounds, rounds));
    // A reply slower than ack_delay: B's RR goes out first.
    let p = request_response(config(), rounds, true);
    assert_eq!((p.rr_a, p.rr_b), (0, rounds));
}

#[test]
fn orderly_clear_waits_at_most_ack_delay_for_the_peer_ack() {
    let mut p = Pair::new(config(), config(), 128);
    let (a, b) = p.connect(true, "smtp");
    p.b.write(b, b"221 bye\r\n").unwrap();
    p.b.clear(b, p.now);
    p.step();
    let t = p.now;
    assert_eq!(read_all(&mut p.a, a), b"221 bye\r\n");
    for _ in 0..10 {
        p.step();
    }
    // A read it but has said nothing yet: no CLEAR so far.
    assert_eq!(p.closed(false, b), None);
    assert_eq!(p.a.poll_timeout(), Some(t + config().ack_delay));
    p.pump();
    assert_eq!(p.now, t + config().ack_delay);
    assert_eq!(p.rr_a, 1);
    assert_eq!(p.closed(false, b), Some(CloseReason::Local));
    assert!(matches!(
        p.closed(true, a),
        Some(CloseReason::Cleared { .. })
    ));
    assert_eq!(p.a.poll_timeout(), None);
    assert_eq!(p.b.poll_timeout(), None);
}
