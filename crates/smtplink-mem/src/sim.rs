//! A link simulator: a pipe pair with the faults of a real serial line,
//! deterministic from a seed and timed on tokio's clock.
//!
//! [`pair`] makes two connected [`Link`]s and a [`SimHandle`]; [`proxy`] puts
//! the same simulated line between two real byte streams (what a
//! `linksim` command needs). Each direction
//! is simulated on its own, as two wires of a serial line are:
//!
//! - **Line rate** ([`SimConfig::baud`]): 8N1 framing, so every byte costs
//!   10 bit times. A byte arrives when its last bit has crossed the line;
//!   bytes written back to back follow each other with no gap, and the
//!   schedule is kept in whole bits, so 1200 bytes at 9600 baud take exactly
//!   1.25 s however they were split into writes.
//! - **Latency** ([`SimConfig::latency`]): one-way delay added to every
//!   byte's arrival (and to end-of-file).
//! - **Bit errors** ([`SimConfig::bit_error_rate`]): each of a byte's 8 data
//!   bits is flipped with this probability, independently (start and stop
//!   bits are not simulated: a framing error is a dropped byte).
//! - **Byte drops** ([`SimConfig::drop_rate`]): each byte is lost with this
//!   probability. A dropped byte still uses its line time.
//! - **Burst errors** ([`SimConfig::bursts`]): a burst starts at a byte with
//!   the given probability and garbles that many bytes (each data bit
//!   flipped with probability 1/2), as a lightning strike or a fading radio
//!   does. Burst flips are counted with the other flipped bits.
//! - **Stalls** ([`SimConfig::stall`]): every `every` (counted from the
//!   moment [`pair`] was called) the line delivers nothing for `for`; bytes
//!   due meanwhile arrive together when the stall ends, in order.
//! - **Cuts** ([`SimConfig::cut_after`], [`SimHandle::cut`]): after the
//!   given number of bytes (both directions together) have been offered, the
//!   line is cut when the last of them arrives. From then on, reads at either
//!   end fail with [`io::ErrorKind::ConnectionReset`] once the bytes that
//!   arrived before the cut are read, bytes still in flight are lost, and
//!   writes fail with [`io::ErrorKind::BrokenPipe`]. Writes that would go past
//!   the limit are cut short, and fail with `BrokenPipe` from then on.
//!
//! Shutting down one end's write side is end-of-file for the other end once
//! the bytes before it have arrived; dropping an end does the same, and
//! makes the other end's writes fail with `BrokenPipe`. Like
//! [`crate::pipe`], each direction buffers at most [`SimConfig::buffer`]
//! bytes (in flight plus unread), and a writer waits while it is full.
//!
//! # Determinism and replaying a failure
//!
//! Faults come from a SplitMix64 generator seeded with [`SimConfig::seed`],
//! one independent stream per direction and per kind of fault, and they
//! depend only on the position of a byte in its direction's byte sequence,
//! never on timing. So the same seed and the same bytes give the same
//! corrupted, dropped and cut bytes; changing the drop rate does not move
//! the bit errors. Timing uses [`tokio::time`], so under a paused clock
//! (`#[tokio::test(start_paused = true)]`) a run is exact and replays
//! identically. To replay a failing randomised test, log the seed it used
//! (`SimConfig` is `Debug`) and rerun with `SimConfig::default().seed(N)`
//! and the same impairments.
//!
//! Note that tokio timers fire on whole milliseconds: a reader waiting for
//! a byte due at 1.0004 s wakes at 1.001 s. The schedule itself is exact, so
//! this rounding never accumulates; it only shows in when a waiting reader
//! observes an arrival.
//!
//! [`pair`] must be called inside a tokio runtime (the clock is read there).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//! use smtplink_mem::sim::{self, SimConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let config = SimConfig::default().seed(7).baud(9600).latency(Duration::from_millis(50));
//! let (mut a, mut b, handle) = sim::pair(config);
//! let start = tokio::time::Instant::now();
//! a.write_all(&[b'x'; 96]).await?;
//! let mut got = [0u8; 96];
//! b.read_exact(&mut got).await?;
//! // 96 bytes x 10 bits at 9600 baud, plus the latency.
//! assert_eq!(start.elapsed(), Duration::from_millis(150));
//! assert_eq!(handle.a_to_b().delivered, 96);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use smtplink_transport::{Endpoint, Link, LinkInfo, TransportError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::{DEFAULT_BUFFER, KIND};

/// Bit times per byte on an 8N1 line: start bit, 8 data bits, stop bit.
pub const BITS_PER_BYTE: u64 = 10;

/// Numbers simulated pairs so their labels tell them apart in logs.
static NEXT_SIM: AtomicU64 = AtomicU64::new(1);

/// The impairments of a simulated line; [`Default`] is a perfect link
/// (no rate limit, no latency, no faults).
///
/// Build one with the setters: `SimConfig::default().baud(9600).seed(1)`.
/// Every impairment applies to each direction separately, except
/// [`cut_after`](SimConfig::cut_after), which counts both.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SimConfig {
    /// Seeds every fault; the same seed gives the same faults.
    pub seed: u64,
    /// Line rate in bits per second, 10 bits per byte (8N1); `None` is
    /// unlimited.
    pub baud: Option<u32>,
    /// One-way delay added to every byte.
    pub latency: Duration,
    /// Probability that a data bit is flipped (0 to 1).
    pub bit_error_rate: f64,
    /// Probability that a byte is lost (0 to 1).
    pub drop_rate: f64,
    /// `(rate, length)`: a burst of `length` garbled bytes starts at a byte
    /// with probability `rate`. `None` (the default) means no bursts.
    pub bursts: Option<(f64, u32)>,
    /// `(every, for)`: the line delivers nothing for `for` once every
    /// `every`. Ignored unless `0 < for < every`.
    pub stall: Option<(Duration, Duration)>,
    /// Cut the line once this many bytes (both directions together) have
    /// been offered to it.
    pub cut_after: Option<u64>,
    /// Bytes buffered per direction (in flight plus unread) before a writer
    /// waits; at least 1. [`DEFAULT_BUFFER`] by default.
    pub buffer: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            baud: None,
            latency: Duration::ZERO,
            bit_error_rate: 0.0,
            drop_rate: 0.0,
            bursts: None,
            stall: None,
            cut_after: None,
            buffer: DEFAULT_BUFFER,
        }
    }
}

impl SimConfig {
    /// Sets the seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Limits the line to `baud` bits per second (0 means unlimited).
    #[must_use]
    pub fn baud(mut self, baud: u32) -> Self {
        self.baud = (baud > 0).then_some(baud);
        self
    }

    /// Sets the one-way latency.
    #[must_use]
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the probability that each data bit is flipped (clamped to 0..=1).
    #[must_use]
    pub fn bit_error_rate(mut self, rate: f64) -> Self {
        self.bit_error_rate = clamp_probability(rate);
        self
    }

    /// Sets the probability that each byte is lost (clamped to 0..=1).
    #[must_use]
    pub fn drop_rate(mut self, rate: f64) -> Self {
        self.drop_rate = clamp_probability(rate);
        self
    }

    /// Starts a burst of `length` garbled bytes at each byte with
    /// probability `rate` (clamped to 0..=1).
    #[must_use]
    pub fn bursts(mut self, rate: f64, length: u32) -> Self {
        let rate = clamp_probability(rate);
        self.bursts = (rate > 0.0 && length > 0).then_some((rate, length));
        self
    }

    /// Stalls the line for `duration` once every `every`.
    #[must_use]
    pub fn stall(mut self, every: Duration, duration: Duration) -> Self {
        self.stall = Some((every, duration));
        self
    }

    /// Cuts the line after `bytes` bytes, both directions together.
    #[must_use]
    pub fn cut_after(mut self, bytes: u64) -> Self {
        self.cut_after = Some(bytes);
        self
    }

    /// Sets the bytes buffered per direction (at least 1).
    #[must_use]
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(1);
        self
    }

    /// The URL query keys [`SimConfig::from_query`] reads.
    pub const QUERY_KEYS: &'static [&'static str] =
        &["baud", "latency", "ber", "drop", "burst", "seed"];

    /// The impairments a `mem://name?baud=9600&ber=1e-5&...` URL asks for:
    /// `baud`, `latency` (milliseconds), `ber`, `drop`, `burst`
    /// (`RATE:LENGTH`) and `seed`; `None` when it asks for none. Unknown keys
    /// are ignored here (the caller checks them).
    pub fn from_query(endpoint: &Endpoint) -> Result<Option<SimConfig>, TransportError> {
        let invalid = |reason: String| TransportError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let rate = |key: &str, value: &str| -> Result<f64, TransportError> {
            value
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| invalid(format!("{key} must be a probability, not {value:?}")))
        };
        let number = |key: &str, value: &str| -> Result<u64, TransportError> {
            value
                .parse::<u64>()
                .map_err(|_| invalid(format!("{key} must be a whole number, not {value:?}")))
        };
        let mut config = SimConfig::default();
        let mut any = false;
        for (key, value) in endpoint.query_pairs() {
            match key {
                "baud" => {
                    let baud = number(key, value)?;
                    config = config.baud(
                        u32::try_from(baud)
                            .map_err(|_| invalid(format!("baud {baud} is too high")))?,
                    );
                }
                "latency" => config = config.latency(Duration::from_millis(number(key, value)?)),
                "ber" => config = config.bit_error_rate(rate(key, value)?),
                "drop" => config = config.drop_rate(rate(key, value)?),
                "seed" => config = config.seed(number(key, value)?),
                "burst" => {
                    let (r, length) = value.split_once(':').ok_or_else(|| {
                        invalid(format!("burst wants RATE:LENGTH, not {value:?}"))
                    })?;
                    let length = u32::try_from(number(key, length)?)
                        .map_err(|_| invalid(format!("burst length {length} is too long")))?;
                    config = config.bursts(rate(key, r)?, length);
                }
                _ => continue,
            }
            any = true;
        }
        Ok(any.then_some(config))
    }

    /// The line time of `bytes` bytes at the configured rate (zero when the
    /// rate is unlimited); useful for the expected durations in tests.
    pub fn line_time(&self, bytes: u64) -> Duration {
        self.baud
            .map_or(Duration::ZERO, |baud| bit_time(bytes * BITS_PER_BYTE, baud))
    }
}

fn clamp_probability(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

/// How long `bits` bits take at `baud`, rounded up to the nanosecond.
fn bit_time(bits: u64, baud: u32) -> Duration {
    let nanos = (u128::from(bits) * 1_000_000_000).div_ceil(u128::from(baud.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// What happened to the bytes sent in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectionStats {
    /// Bytes the writer handed to the line.
    pub offered: u64,
    /// Bytes the reader has read.
    pub delivered: u64,
    /// Data bits flipped in bytes that were not dropped.
    pub flipped_bits: u64,
    /// Bytes lost to the drop rate.
    pub dropped: u64,
    /// Error bursts started.
    pub bursts: u64,
}

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Written on the first link of the pair, read on the second.
    AToB,
    /// Written on the second link of the pair, read on the first.
    BToA,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::AToB => 0,
            Direction::BToA => 1,
        }
    }
}

/// A view of a simulated pair for tests and reports: counters, and a way to
/// cut the line by hand. Cloning it is cheap; it does not keep the links
/// open.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("a_to_b", &self.a_to_b())
            .field("b_to_a", &self.b_to_a())
            .field("cut", &self.is_cut())
            .finish()
    }
}

impl SimHandle {
    /// Counters for one direction.
    pub fn stats(&self, direction: Direction) -> DirectionStats {
        lock(&self.shared).lines[direction.index()].stats
    }

    /// Counters for bytes written on the first link.
    pub fn a_to_b(&self) -> DirectionStats {
        self.stats(Direction::AToB)
    }

    /// Counters for bytes written on the second link.
    pub fn b_to_a(&self) -> DirectionStats {
        self.stats(Direction::BToA)
    }

    /// Whether the line has been cut (the cut may take effect later, when
    /// the last byte before it arrives).
    pub fn is_cut(&self) -> bool {
        lock(&self.shared).cut_at.is_some()
    }

    /// Cuts the line now: bytes in flight are lost, and both ends fail as
    /// described in the [module docs](self).
    pub fn cut(&self) {
        let mut shared = lock(&self.shared);
        let now = Instant::now();
        shared.cut_at = Some(shared.cut_at.map_or(now, |at| at.min(now)));
        shared.wake_all();
    }

    /// The configuration the pair was made with.
    pub fn config(&self) -> SimConfig {
        lock(&self.shared).config.clone()
    }
}

/// A connected pair of simulated links and the handle that watches them.
///
/// The links are labelled `mem:sim#N/a` and `mem:sim#N/b`, of kind
/// [`KIND`]; bytes written on the first are read on the second
/// ([`Direction::AToB`]) and the other way round. Must be called inside a
/// tokio runtime.
pub fn pair(config: SimConfig) -> (Link, Link, SimHandle) {
    let number = NEXT_SIM.fetch_add(1, Ordering::Relaxed);
    let a_label = format!("mem:sim#{number}/a");
    let b_label = format!("mem:sim#{number}/b");
    let now = Instant::now();
    let shared = Arc::new(Mutex::new(Shared {
        lines: [
            Line::new(config.seed, 0, now),
            Line::new(config.seed, 1, now),
        ],
        // A line cut after no bytes at all is cut from the start.
        cut_at: (config.cut_after == Some(0)).then_some(now),
        offered_total: 0,
        origin: now,
        config,
    }));
    let a = SimEnd::new(Arc::clone(&shared), Direction::AToB);
    let b = SimEnd::new(Arc::clone(&shared), Direction::BToA);
    (
        Link::new(a, sim_info(&b_label, &a_label)),
        Link::new(b, sim_info(&a_label, &b_label)),
        SimHandle { shared },
    )
}

/// Runs the simulated line between two real byte streams, e.g. a TCP
/// connection and a serial port, or two pty pairs: bytes read from `x` are
/// written to `y` as if they had crossed the line ([`Direction::AToB`]), and
/// the other way round.
///
/// Returns the handle at once and a future that moves the bytes; it ends
/// with `Ok` once both directions have reached end-of-file (each end-of-file
/// is passed on as a shutdown), or with an error once either side fails,
/// e.g. when the simulated line is cut. A stream is dropped as soon as its
/// side is done, which is how its peer learns of a cut. Must be called
/// inside a tokio runtime.
pub fn proxy<X, Y>(
    x: X,
    y: Y,
    config: SimConfig,
) -> (SimHandle, impl Future<Output = io::Result<()>> + Send)
where
    X: AsyncRead + AsyncWrite + Send + Unpin,
    Y: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (a, b, handle) = pair(config);
    // Each side owns its streams and drops them as soon as its copy ends,
    // so the other side sees end-of-file or a broken pipe and ends too,
    // while bytes already on the line still reach their reader.
    let left = async move {
        let (mut x, mut a) = (x, a);
        tokio::io::copy_bidirectional(&mut x, &mut a).await
    };
    let right = async move {
        let (mut b, mut y) = (b, y);
        tokio::io::copy_bidirectional(&mut b, &mut y).await
    };
    let run = async move {
        let (left, right) = tokio::join!(left, right);
        left?;
        right?;
        Ok(())
    };
    (handle, run)
}

fn sim_info(peer: &str, local: &str) -> LinkInfo {
    LinkInfo::new(KIND, peer)
        .with_local(local)
        .with_tls_upgrade(true)
}

/// SplitMix64 (Steele, Lea and Flood, 2014): tiny, fast, and good enough to
/// place faults; not for anything secret.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64, stream: u64) -> Self {
        let mut rng = SplitMix64(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        // Decorrelate neighbouring seeds before the first draw.
        rng.next_u64();
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.unit() <= probability
    }

    /// Error-free bits before the next error: geometric with success
    /// probability `rate`, so a low rate costs one draw per error, not per
    /// bit.
    fn gap(&mut self, rate: f64) -> u64 {
        if rate <= 0.0 {
            u64::MAX
        } else if rate >= 1.0 {
            0
        } else {
            // `as` saturates, which is what a huge gap should do.
            (self.unit().ln() / (-rate).ln_1p()).floor() as u64
        }
    }
}

/// One direction of the line.
struct Line {
    /// Bytes not yet read, with the instant each arrives.
    queue: VecDeque<(Instant, u8)>,
    flip_rng: SplitMix64,
    drop_rng: SplitMix64,
    burst_rng: SplitMix64,
    /// Bytes still to garble in the current burst.
    burst_left: u32,
    /// Error-free data bits before the next flip; `None` until first drawn.
    flip_gap: Option<u64>,
    /// Start of the current busy period of the transmitter and the bits
    /// sent in it: departures are computed from these in whole bits, so
    /// rounding never accumulates.
    busy_start: Instant,
    busy_bits: u64,
    /// When the transmitter finishes its last byte.
    tx_free_at: Instant,
    /// Arrival of the last byte queued (arrivals never go backwards).
    last_arrival: Instant,
    /// Set by shutdown or drop of the writer: end-of-file at this instant.
    eof_at: Option<Instant>,
    /// The reading end was dropped: writes fail.
    reader_gone: bool,
    reader_waker: Option<Waker>,
    writer_waker: Option<Waker>,
    stats: DirectionStats,
}

impl Line {
    fn new(seed: u64, index: u64, now: Instant) -> Self {
        Line {
            queue: VecDeque::new(),
            flip_rng: SplitMix64::new(seed, 2 * index + 1),
            drop_rng: SplitMix64::new(seed, 2 * index + 2),
            // Streams 1..=4 are taken by flips and drops of both directions.
            burst_rng: SplitMix64::new(seed, 5 + index),
            burst_left: 0,
            flip_gap: None,
            busy_start: now,
            busy_bits: 0,
            tx_free_at: now,
            last_arrival: now,
            eof_at: None,
            reader_gone: false,
            reader_waker: None,
            writer_waker: None,
            stats: DirectionStats::default(),
        }
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }

    /// Flips data bits of `byte` (least significant first, as a UART sends
    /// them) and returns it with the number flipped.
    fn corrupt(&mut self, mut byte: u8, rate: f64) -> (u8, u64) {
        if rate <= 0.0 {
            return (byte, 0);
        }
        let mut flips = 0;
        let mut position = 0u64;
        while position < 8 {
            let gap = match self.flip_gap {
                Some(gap) => gap,
                None => self.flip_rng.gap(rate),
            };
            if gap >= 8 - position {
                self.flip_gap = Some(gap - (8 - position));
                break;
            }
            position += gap;
            byte ^= 1 << position;
            flips += 1;
            position += 1;
            self.flip_gap = None;
        }
        (byte, flips)
    }

    /// Garbles `byte` if it falls in an error burst (starting one with
    /// probability `rate`), returning it with the number of bits flipped.
    fn burst(&mut self, byte: u8, bursts: Option<(f64, u32)>) -> (u8, u64) {
        let Some((rate, length)) = bursts else {
            return (byte, 0);
        };
        if self.burst_left == 0 && self.burst_rng.chance(rate) {
            self.burst_left = length;
            self.stats.bursts += 1;
        }
        if self.burst_left == 0 {
            return (byte, 0);
        }
        self.burst_left -= 1;
        // Random bits, not inverted ones: a burst is noise, not a pattern.
        let mask = (self.burst_rng.next_u64() & 0xFF) as u8;
        (byte ^ mask, u64::from(mask.count_ones()))
    }
}

struct Shared {
    config: SimConfig,
    lines: [Line; 2],
    /// The instant the line is cut, once it is known.
    cut_at: Option<Instant>,
    /// Bytes offered in both directions, for `cut_after`.
    offered_total: u64,
    /// Where stall periods are counted from.
    origin: Instant,
}

impl Shared {
    fn wake_all(&mut self) {
        for line in &mut self.lines {
            line.wake_reader();
            line.wake_writer();
        }
    }

    /// Moves an arrival that falls in a stall to the end of that stall.
    fn after_stall(&self, arrival: Instant) -> Instant {
        let Some((every, duration)) = self.config.stall else {
            return arrival;
        };
        if every.is_zero() || duration.is_zero() || duration >= every {
            return arrival;
        }
        let elapsed = arrival.saturating_duration_since(self.origin).as_nanos();
        let period = every.as_nanos();
        let k = elapsed / period;
        if k >= 1 && elapsed - k * period < duration.as_nanos() {
            let start = u64::try_from(k * period).unwrap_or(u64::MAX);
            self.origin + Duration::from_nanos(start) + duration
        } else {
            arrival
        }
    }

    /// Whether the cut has happened by `now`.
    fn is_cut_by(&self, now: Instant) -> bool {
        self.cut_at.is_some_and(|at| now >= at)
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // No update under this lock can panic halfway, so a poisoned state is
    // still consistent.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One end of a simulated pair: writes into one [`Line`], reads from the
/// other.
struct SimEnd {
    shared: Arc<Mutex<Shared>>,
    tx: usize,
    rx: usize,
    read_sleep: Option<Pin<Box<Sleep>>>,
}

impl SimEnd {
    fn new(shared: Arc<Mutex<Shared>>, writes: Direction) -> Self {
        let tx = writes.index();
        SimEnd {
            shared,
            tx,
            rx: 1 - tx,
            read_sleep: None,
        }
    }

    /// Polls a timer for `deadline`; `Ready` once it has passed.
    fn poll_sleep_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        match &mut self.read_sleep {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
            }
            None => self.read_sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        match &mut self.read_sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

fn broken_pipe(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, reason.to_owned())
}

impl AsyncRead for SimEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let deadline = {
                let mut shared = lock(&this.shared);
                let now = Instant::now();
                let cut_at = shared.cut_at;
                let line = &mut shared.lines[this.rx];
                let mut read = 0u64;
                while buf.remaining() > 0 {
                    match line.queue.front() {
                        Some(&(arrival, byte))
                            if arrival <= now && cut_at.is_none_or(|at| arrival <= at) =>
                        {
                            buf.put_slice(&[byte]);
                            line.queue.pop_front();
                            read += 1;
                        }
                        _ => break,
                    }
                }
                if read > 0 || buf.remaining() == 0 {
                    line.stats.delivered += read;
                    line.wake_writer();
                    return Poll::Ready(Ok(()));
                }
                if cut_at.is_some_and(|at| now >= at) {
                    line.queue.clear();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "simulated line was cut",
                    )));
                }
                let next = match line.queue.front() {
                    Some(&(arrival, _)) => Some(arrival),
                    None => match line.eof_at {
                        Some(eof) if now >= eof => return Poll::Ready(Ok(())),
                        eof => eof,
                    },
                };
                line.reader_waker = Some(cx.waker().clone());
                match (next, cut_at) {
                    (Some(next), Some(cut)) => Some(next.min(cut)),
                    (next, cut) => next.or(cut),
                }
            };
            match deadline {
                Some(deadline) => {
                    if this.poll_sleep_until(cx, deadline).is_pending() {
                        return Poll::Pending;
                    }
                    // The timer fired: look again.
                }
                None => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for SimEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut guard = lock(&this.shared);
        let shared = &mut *guard;
        let now = Instant::now();
        let limit = shared.config.cut_after.unwrap_or(u64::MAX);
        if shared.is_cut_by(now) || shared.offered_total >= limit {
            return Poll::Ready(Err(broken_pipe("simulated line was cut")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let line = &shared.lines[this.tx];
        if line.eof_at.is_some() {
            return Poll::Ready(Err(broken_pipe("write after shutdown")));
        }
        if line.reader_gone {
            return Poll::Ready(Err(broken_pipe("simulated peer is gone")));
        }
        let room = shared.config.buffer.max(1).saturating_sub(line.queue.len());
        if room == 0 {
            shared.lines[this.tx].writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let left = usize::try_from(limit - shared.offered_total).unwrap_or(usize::MAX);
        let count = buf.len().min(room).min(left);

        let baud = shared.config.baud;
        let latency = shared.config.latency;
        let ber = shared.config.bit_error_rate;
        let drop_rate = shared.config.drop_rate;
        let bursts = shared.config.bursts;
        let mut arrivals = Vec::with_capacity(count);
        {
            let line = &mut shared.lines[this.tx];
            if now >= line.tx_free_at {
                line.busy_start = now;
                line.busy_bits = 0;
            }
            for _ in 0..count {
                let departure = match baud {
                    Some(baud) => {
                        line.busy_bits += BITS_PER_BYTE;
                        let at = line.busy_start + bit_time(line.busy_bits, baud);
                        line.tx_free_at = at;
                        at
                    }
                    None => now,
                };
                arrivals.push(departure + latency);
            }
        }
        for arrival in &mut arrivals {
            *arrival = shared.after_stall(*arrival);
        }
        let line = &mut shared.lines[this.tx];
        for (&byte, arrival) in buf[..count].iter().zip(arrivals) {
            let arrival = arrival.max(line.last_arrival);
            line.last_arrival = arrival;
            let (byte, flips) = line.corrupt(byte, ber);
            let (byte, burst_flips) = line.burst(byte, bursts);
            let flips = flips + burst_flips;
            if line.drop_rng.chance(drop_rate) {
                line.stats.dropped += 1;
            } else {
                line.stats.flipped_bits += flips;
                line.queue.push_back((arrival, byte));
            }
        }
        line.stats.offered += count as u64;
        let last_arrival = line.last_arrival;
        line.wake_reader();
        shared.offered_total += count as u64;
        if shared.offered_total >= limit && shared.cut_at.is_none() {
            shared.cut_at = Some(last_arrival);
            shared.wake_all();
        }
        Poll::Ready(Ok(count))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut shared = lock(&this.shared);
        let latency = shared.config.latency;
        let line = &mut shared.lines[this.tx];
        if line.eof_at.is_none() {
            let now = Instant::now();
            line.eof_at = Some(line.last_arrival.max(now.max(line.tx_free_at) + latency));
            line.wake_reader();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimEnd {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        let latency = shared.config.latency;
        let now = Instant::now();
        let tx = &mut shared.lines[self.tx];
        if tx.eof_at.is_none() {
            tx.eof_at = Some(tx.last_arrival.max(now.max(tx.tx_free_at) + latency));
        }
        tx.wake_reader();
        let rx = &mut shared.lines[self.rx];
        rx.reader_gone = true;
        rx.queue.clear();
        rx.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Writes `data` on `a` and reads it all on `b`; returns what arrived
    /// and how long the last byte took.
    async fn send(a: &mut Link, b: &mut Link, data: &[u8]) -> (Vec<u8>, Duration) {
        let start = Instant::now();
        let (written, got) = tokio::join!(a.write_all(data), async {
            let mut got = Vec::new();
            let mut chunk = [0u8; 512];
            while got.len() < data.len() {
                let n = b.read(&mut chunk).await.unwrap();
                assert!(n > 0, "unexpected end of file");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        written.unwrap();
        (got, start.elapsed())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn perfect_link_passes_bytes_unchanged_and_instantly() {
        let (mut a, mut b, handle) = pair(SimConfig::default());
        assert_eq!(a.info().kind, "mem");
        assert_eq!(a.info().peer, b.info().local);
        let data = pattern(200_000);
        let (got, took) = send(&mut a, &mut b, &data).await;
        assert_eq!(got, data);
        assert_eq!(took, Duration::ZERO);
        let (got, _) = send(&mut b, &mut a, b"250 OK\r\n").await;
        assert_eq!(got, b"250 OK\r\n");
        let stats = handle.a_to_b();
        assert_eq!(stats.offered, 200_000);
        assert_eq!(stats.delivered, 200_000);
        assert_eq!((stats.flipped_bits, stats.dropped), (0, 0));
        assert_eq!(handle.b_to_a().delivered, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn baud_cap_timing_is_exact() {
        let config = SimConfig::default().baud(9600);
        assert_eq!(config.line_time(1200), ms(1250));
        let (mut a, mut b, _) = pair(config);
        let data = pattern(1200);
        let (got, took) = send(&mut a, &mut b, &data).await;
        assert_eq!(got, data);
        assert_eq!(took, ms(1250));

        // Many small writes cost the same as one large one: the schedule is
        // kept in whole bits, not rounded per byte.
        let start = Instant::now();
        let reader = async {
            let mut got = vec![0u8; 1200];
            b.read_exact(&mut got).await.unwrap();
            start.elapsed()
        };
        let writer = async {
            for chunk in data.chunks(7) {
                a.write_all(chunk).await.unwrap();
            }
        };
        let (took, ()) = tokio::join!(reader, writer);
        assert_eq!(took, ms(1250));

        // The other direction is independent and just as exact.
        let (_, took) = send(&mut b, &mut a, &pattern(96)).await;
        assert_eq!(took, ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn both_directions_run_at_full_rate_at_once() {
        let (mut a, mut b, _) = pair(SimConfig::default().baud(9600));
        let start = Instant::now();
        let (ra, rb) = tokio::join!(
            async {
                a.write_all(&pattern(960)).await.unwrap();
                let mut got = vec![0u8; 960];
                a.read_exact(&mut got).await.unwrap();
                start.elapsed()
            },
            async {
                b.write_all(&pattern(960)).await.unwrap();
                let mut got = vec![0u8; 960];
                b.read_exact(&mut got).await.unwrap();
                start.elapsed()
            }
        );
        assert_eq!((ra, rb), (ms(1000), ms(1000)));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_exact_and_adds_to_line_time() {
        let (mut a, mut b, _) = pair(SimConfig::default().latency(ms(300)));
        let (got, took) = send(&mut a, &mut b, b"HELO x\r\n").await;
        assert_eq!(got, b"HELO x\r\n");
        assert_eq!(took, ms(300));
        // A round trip is two latencies.
        let start = Instant::now();
        a.write_all(b"ping").await.unwrap();
        let mut word = [0u8; 4];
        b.read_exact(&mut word).await.unwrap();
        b.write_all(b"pong").await.unwrap();
        a.read_exact(&mut word).await.unwrap();
        assert_eq!(&word, b"pong");
        assert_eq!(start.elapsed(), ms(600));

        let (mut a, mut b, _) = pair(SimConfig::default().baud(9600).latency(ms(300)));
        let (_, took) = send(&mut a, &mut b, &pattern(1200)).await;
        assert_eq!(took, ms(1550));
    }

    #[tokio::test(start_paused = true)]
    async fn end_of_file_arrives_after_the_data() {
        let (mut a, mut b, _) = pair(SimConfig::default().baud(9600).latency(ms(100)));
        let start = Instant::now();
        a.write_all(&pattern(96)).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, pattern(96));
        assert_eq!(start.elapsed(), ms(200));
        // Writing after shutdown fails; the other direction still works.
        assert_eq!(
            a.write_all(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        b.write_all(b"bye").await.unwrap();
        drop(b);
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_an_end_breaks_the_peers_writes() {
        let (mut a, b, _) = pair(SimConfig::default());
        drop(b);
        let err = a.write_all(b"hello").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let mut got = Vec::new();
        assert_eq!(a.read_to_end(&mut got).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_makes_the_writer_wait() {
        let (mut a, mut b, _) = pair(SimConfig::default().buffer(16));
        let mut writer = tokio::spawn(async move {
            a.write_all(&[7u8; 40]).await.unwrap();
            a
        });
        tokio::time::sleep(ms(10)).await;
        assert!(!writer.is_finished());
        let mut got = vec![0u8; 40];
        let (read, a) = tokio::join!(b.read_exact(&mut got), &mut writer);
        read.unwrap();
        drop(a.unwrap());
        assert_eq!(got, [7u8; 40]);
    }

    async fn corrupted(seed: u64, rate: f64, data: &[u8]) -> (Vec<u8>, DirectionStats) {
        let config = SimConfig::default()
            .seed(seed)
            .baud(115_200)
            .bit_error_rate(rate);
        let (mut a, mut b, handle) = pair(config);
        let (got, _) = send(&mut a, &mut b, data).await;
        (got, handle.a_to_b())
    }

    #[tokio::test(start_paused = true)]
    async fn bit_flips_are_reproducible_and_near_the_rate() {
        let data = pattern(100_000);
        let rate = 1e-3;
        let (first, stats) = corrupted(42, rate, &data).await;
        let (again, stats_again) = corrupted(42, rate, &data).await;
        let (other, _) = corrupted(43, rate, &data).await;
        assert_eq!(first, again, "same seed, same corruption");
        assert_eq!(stats, stats_again);
        assert_ne!(first, other, "another seed, other corruption");

        let flipped: u64 = first
            .iter()
            .zip(&data)
            .map(|(x, y)| u64::from((x ^ y).count_ones()))
            .sum();
        assert_eq!(flipped, stats.flipped_bits);
        // 800 000 bits at 1e-3: 800 expected, standard deviation about 28.
        let expected = 800.0;
        let deviation = (flipped as f64 - expected).abs();
        assert!(
            deviation < 5.0 * 28.3,
            "{flipped} flips, expected ~{expected}"
        );
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.delivered, 100_000);
    }

    #[tokio::test(start_paused = true)]
    async fn every_bit_flips_at_rate_one_and_none_at_zero() {
        let data = pattern(1000);
        let (got, stats) = corrupted(1, 1.0, &data).await;
        assert!(got.iter().zip(&data).all(|(x, y)| *x == !*y));
        assert_eq!(stats.flipped_bits, 8000);
        let (got, stats) = corrupted(1, 0.0, &data).await;
        assert_eq!(got, data);
        assert_eq!(stats.flipped_bits, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drops_are_reproducible_and_still_use_line_time() {
        let run = |seed| async move {
            let config = SimConfig::default().seed(seed).baud(9600).drop_rate(0.01);
            let (mut a, mut b, handle) = pair(config);
            let data: Vec<u8> = (0..9600u32).map(|i| (i % 256) as u8).collect();
            let start = Instant::now();
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            (got, start.elapsed(), handle.a_to_b())
        };
        let (got, took, stats) = run(5).await;
        let (again, _, _) = run(5).await;
        let (other, _, _) = run(6).await;
        assert_eq!(got, again);
        assert_ne!(got, other);
        assert_eq!(stats.offered, 9600);
        assert_eq!(stats.dropped + stats.delivered, 9600);
        assert_eq!(got.len() as u64, stats.delivered);
        // 9600 bytes at 1%: 96 expected, standard deviation about 10.
        assert!((50..150).contains(&stats.dropped), "{stats:?}");
        // What arrives is the sent bytes with some left out, in order.
        let data: Vec<u8> = (0..9600u32).map(|i| (i % 256) as u8).collect();
        let mut rest = data.iter();
        assert!(got.iter().all(|byte| rest.any(|sent| sent == byte)));
        // Dropped bytes still took their line time: 10 s for 9600 bytes.
        assert_eq!(took, ms(10_000));
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_garble_runs_of_bytes_reproducibly() {
        let data = pattern(50_000);
        let run = |seed| {
            let data = data.clone();
            async move {
                let config = SimConfig::default().seed(seed).bursts(1e-3, 16);
                let (mut a, mut b, handle) = pair(config);
                let (got, _) = send(&mut a, &mut b, &data).await;
                (got, handle.a_to_b())
            }
        };
        let (got, stats) = run(5).await;
        let (again, _) = run(5).await;
        assert_eq!(got, again, "same seed, same bursts");
        // 50,000 bytes at 1e-3 per byte (less the bytes inside bursts):
        // about 48 bursts, standard deviation about 7.
        assert!((20..80).contains(&stats.bursts), "{stats:?}");
        let damaged: Vec<usize> = got
            .iter()
            .zip(&data)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| i)
            .collect();
        assert!(!damaged.is_empty());
        // Damage comes in runs no longer than a burst: no damaged byte is
        // isolated from its burst by more than 16 positions.
        let runs = damaged.windows(2).filter(|w| w[1] - w[0] > 16).count() + 1;
        assert!(runs as u64 <= stats.bursts, "{runs} runs, {stats:?}");
        let flipped: u64 = got
            .iter()
            .zip(&data)
            .map(|(x, y)| u64::from((x ^ y).count_ones()))
            .sum();
        assert_eq!(flipped, stats.flipped_bits);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_rate_does_not_move_the_bit_errors() {
        // Bytes 0, 1, 2, ... (mod 256) so a corrupted byte is easy to place.
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 256) as u8).collect();
        let (clean, _) = corrupted(9, 1e-2, &data).await;
        let config = SimConfig::default()
            .seed(9)
            .bit_error_rate(1e-2)
            .drop_rate(0.3);
        let (mut a, mut b, handle) = pair(config);
        a.write_all(&data).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let stats = handle.a_to_b();
        assert!(stats.dropped > 5000, "{stats:?}");
        // What arrives is the drop-free corrupted stream with bytes left
        // out: the same flips at the same positions.
        let mut rest = clean.iter();
        assert!(got.iter().all(|byte| rest.any(|sent| sent == byte)));
        assert!(stats.flipped_bits > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stalls_hold_bytes_until_the_stall_ends() {
        // Stalled from 1.0 s to 1.5 s, 2.0 s to 2.5 s, ...
        let config = SimConfig::default().stall(ms(1000), ms(500));
        let (mut a, mut b, _) = pair(config);
        let start = Instant::now();
        tokio::time::sleep(ms(1100)).await;
        let (got, took) = send(&mut a, &mut b, b"held").await;
        assert_eq!(got, b"held");
        assert_eq!(took, ms(400));
        assert_eq!(start.elapsed(), ms(1500));
        // Outside a stall the link is instant again.
        tokio::time::sleep(ms(100)).await;
        let (_, took) = send(&mut a, &mut b, b"free").await;
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn cut_after_is_seen_at_both_ends() {
        let config = SimConfig::default().baud(9600).cut_after(100);
        let (mut a, mut b, handle) = pair(config);
        // The 100th byte is the last one carried; the write stops there.
        let err = a.write_all(&pattern(150)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(handle.is_cut());
        let mut got = vec![0u8; 100];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(100));
        let mut more = [0u8; 1];
        let err = b.read(&mut more).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let err = b.write_all(b"reply").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let err = a.read(&mut more).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(handle.a_to_b().offered, 100);

        let (mut a, mut b, handle) = pair(SimConfig::default().cut_after(0));
        assert!(handle.is_cut());
        assert!(a.write_all(b"x").await.is_err());
        assert!(b.read(&mut more).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn cut_counts_both_directions_and_loses_bytes_in_flight() {
        let config = SimConfig::default().latency(ms(100)).cut_after(10);
        let (mut a, mut b, handle) = pair(config);
        a.write_all(b"HELO x\r\n").await.unwrap();
        // b's reply is written before a's bytes arrive: the line is cut
        // when the 10th byte ("RE") arrives, so the cut is at 100 ms.
        assert_eq!(b.write(b"REPLY").await.unwrap(), 2);
        assert!(b.write(b"PLY").await.is_err());
        let mut got = vec![0u8; 8];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"HELO x\r\n");
        let mut two = [0u8; 2];
        a.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"RE");
        assert!(a.read(&mut two).await.is_err());
        assert!(b.read(&mut two).await.is_err());

        // A hand-made cut loses what is still on the wire.
        let (mut a, mut b, handle2) = pair(SimConfig::default().latency(ms(100)));
        a.write_all(b"lost").await.unwrap();
        handle2.cut();
        let err = b.read(&mut two).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(handle2.a_to_b().delivered, 0);
        assert_eq!(handle.a_to_b().offered + handle.b_to_a().offered, 10);
    }

    /// Stores every message it is given.
    struct StoreAll(Arc<Mutex<Vec<Vec<u8>>>>);

    struct StoreSession {
        stored: Arc<Mutex<Vec<Vec<u8>>>>,
        body: Vec<u8>,
    }

    #[smtplink_transport::async_trait]
    impl smtplink_driver::Backend for StoreAll {
        async fn open(
            &self,
            _: &smtplink_driver::SessionInfo,
        ) -> Result<Box<dyn smtplink_driver::SessionHandler>, smtplink_engine::Reply> {
            Ok(Box::new(StoreSession {
                stored: Arc::clone(&self.0),
                body: Vec::new(),
            }))
        }
    }

    #[smtplink_transport::async_trait]
    impl smtplink_driver::SessionHandler for StoreSession {
        async fn data_chunk(&mut self, chunk: bytes::Bytes) -> Result<(), smtplink_engine::Reply> {
            self.body.extend_from_slice(&chunk);
            Ok(())
        }
        async fn data_end(
            &mut self,
            _: &smtplink_driver::SessionInfo,
        ) -> Result<String, smtplink_engine::Reply> {
            let body = std::mem::take(&mut self.body);
            self.stored.lock().unwrap().push(body);
            Ok("stored".into())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn smtp_session_over_a_clean_9600_baud_line() {
        use smtplink_driver::{serve_link, ClientSettings, ServerSettings, Shutdown, SmtpClient};
        use smtplink_engine::{ClientConfig, Envelope};

        let config = SimConfig::default().seed(1).baud(9600);
        let (a, b, handle) = pair(config.clone());
        let stored = Arc::new(Mutex::new(Vec::new()));
        let mut settings = ServerSettings::default();
        settings.engine.hostname = "mx.test".into();
        let backend = Arc::new(StoreAll(Arc::clone(&stored)));
        let server = tokio::spawn(async move {
            serve_link(b, Arc::new(settings), backend, Shutdown::new()).await
        });

        let start = Instant::now();
        let client_settings = ClientSettings {
            engine: ClientConfig {
                hello_name: "client.test".into(),
                pipelining: true,
                tls: smtplink_engine::TlsPolicy::None,
            },
            ..ClientSettings::default()
        };
        let mut client = SmtpClient::handshake(a, client_settings).await.unwrap();
        let mut body = b"Subject: over the line\r\n\r\n".to_vec();
        for line in 0..40 {
            body.extend_from_slice(format!("line {line} of a slow message\r\n").as_bytes());
        }
        let envelope = Envelope::parse("a@example.org", &["b@example.net"]).unwrap();
        let report = client.send(envelope, &body).await.unwrap();
        assert!(report.all_accepted(), "{report:?}");
        client.quit().await.unwrap();
        let took = start.elapsed();
        server.await.unwrap().unwrap();
        assert_eq!(*stored.lock().unwrap(), [body]);

        // SMTP is lock-step here (each side writes only after reading), so
        // the session takes the line time of every byte exchanged, plus at
        // most a timer tick (1 ms) per turn of the conversation; pipelining
        // can only make it shorter than the sum, never shorter than the
        // busier direction.
        let up = handle.a_to_b();
        let down = handle.b_to_a();
        assert_eq!((up.delivered, down.delivered), (up.offered, down.offered));
        let total = config.line_time(up.offered + down.offered);
        let busier = config.line_time(up.offered.max(down.offered));
        let turns = 12;
        assert!(took >= busier, "{took:?} < {busier:?}");
        assert!(
            took <= total + ms(turns),
            "{took:?} > {total:?} + {turns} ms"
        );
        // Only short commands and replies overlap (the message body crosses
        // alone), so the sum is close: within 5 %.
        assert!(took >= total.mul_f64(0.95), "{took:?} vs {total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn proxy_puts_the_line_between_two_streams() {
        let (mut x, x_inner) = tokio::io::duplex(1024);
        let (y_inner, mut y) = tokio::io::duplex(1024);
        let config = SimConfig::default().baud(9600).latency(ms(20));
        let (handle, run) = proxy(x_inner, y_inner, config);
        let task = tokio::spawn(run);

        let start = Instant::now();
        x.write_all(&pattern(960)).await.unwrap();
        let mut got = vec![0u8; 960];
        y.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(960));
        assert_eq!(start.elapsed(), ms(1020));
        y.write_all(b"221 bye\r\n").await.unwrap();
        y.shutdown().await.unwrap();
        x.shutdown().await.unwrap();
        let mut reply = Vec::new();
        x.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"221 bye\r\n");
        task.await.unwrap().unwrap();
        assert_eq!(handle.a_to_b().delivered, 960);
        assert_eq!(handle.b_to_a().delivered, 9);

        // A cut ends the proxy with an error and closes both streams.
        let (mut x, x_inner) = tokio::io::duplex(1024);
        let (y_inner, mut y) = tokio::io::duplex(1024);
        let (handle, run) = proxy(x_inner, y_inner, SimConfig::default().cut_after(5));
        let task = tokio::spawn(run);
        x.write_all(b"HELO there\r\n").await.unwrap();
        let mut got = Vec::new();
        y.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HELO ");
        assert!(task.await.unwrap().is_err());
        assert!(handle.is_cut());
        let mut rest = Vec::new();
        assert_eq!(x.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
