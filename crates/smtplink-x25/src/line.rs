//! The async side of the adapter: one task per line drives the framing,
//! the link layer and the packet layer over a byte stream, and every
//! virtual circuit on it is an `AsyncRead + AsyncWrite` handle.
//!
//! The layers below are sans-IO; this module only moves bytes and time
//! between them and a tokio stream. One [`Line`] is one physical line (a
//! serial port, a pipe) or, with [`Line::spawn_xot`], one XOT TCP
//! connection (RFC 1613: X.25 packets over an already reliable stream, so
//! the link layer is skipped). Calls go both ways at once: [`Line::call`]
//! opens a circuit to a service on the other end, [`Line::listen`] takes
//! the other end's calls for a service.
//!
//! Time is tokio's ([`tokio::time::Instant::into_std`]), so a line under a
//! paused test clock runs exactly and replays.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use smtplink_transport::{Link, LinkInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::error::X25Error;
use crate::framing::{DecodeStats, FrameConfig, FrameDecoder, FrameEncoder};
use crate::lapb::{Lapb, LapbConfig, LapbEvent, LapbRole, LapbStats, FRAMING_OVERHEAD};
use crate::packet::{
    CircuitId, CircuitStats, CloseReason, PacketConfig, PacketEvent, PacketLayer, PacketRole,
};

/// The transport kind circuits report in their [`LinkInfo`].
pub const KIND: &str = "x25";

/// XOT (RFC 1613 section 3): every packet on the TCP stream is preceded by
/// a two-octet version (zero) and a two-octet length.
const XOT_HEADER: usize = 4;

/// Clearing cause "not obtainable" (X.25 table 5-7), for calls to a
/// service nobody listens to.
const CAUSE_NOT_OBTAINABLE: u8 = 0x0D;

/// Which end of the line this is. The two ends of a line must differ: the
/// DTE and DCE answer to different link addresses and take logical
/// channels from opposite ends of the range, so calls never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Data terminal equipment (e.g. the site with the modem).
    Dte,
    /// Data circuit-terminating equipment (e.g. the gateway).
    Dce,
}

/// Everything a line needs: its role and the settings of each layer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LineConfig {
    /// Which end this is; the other end must take the other role.
    pub role: Role,
    /// Layer 1: escapes and frame check.
    pub frame: FrameConfig,
    /// Layer 2 (not used over XOT).
    pub lapb: LapbConfig,
    /// Layer 3.
    pub packet: PacketConfig,
    /// How long [`Line::call`] waits for the line to come up and the call
    /// to be accepted.
    pub call_timeout: Duration,
}

impl LineConfig {
    /// Defaults for `role`: the link layer's defaults (modulo 128, SREJ,
    /// adaptive frame size) and circuits with modulo 128 packet numbers,
    /// up to 1024 data bytes per packet and a window of 32, so one circuit
    /// alone can fill a long, fast line.
    pub fn new(role: Role) -> Self {
        let mut packet = PacketConfig::default();
        packet.modulus = crate::packet::Modulus::Mod128;
        packet.max_packet = 2048;
        packet.window = 32;
        packet.send_buffer = 64 * 1024;
        LineConfig {
            role,
            frame: FrameConfig::default(),
            lapb: LapbConfig {
                max_info: 2048 + 4,
                ..LapbConfig::default()
            },
            packet,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// Figures for logs and `smtplink queue`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LineStats {
    /// Frames (or XOT packets) written to the stream.
    pub frames_sent: u64,
    /// Frames (or XOT packets) read from the stream that passed the check.
    pub frames_received: u64,
    /// Bytes written to and read from the stream.
    pub bytes_sent: u64,
    /// Bytes read from the stream.
    pub bytes_received: u64,
    /// What the frame decoder dropped (bad check, length, escape).
    pub decode: DecodeStats,
    /// The link layer's counters (zero over XOT).
    pub lapb: LapbStats,
    /// Circuits opened (both directions) since the line started.
    pub circuits_opened: u64,
    /// Control packets and frames waiting to go out now (bounded, however
    /// the peer behaves).
    pub control_queued: usize,
}

impl std::fmt::Display for LineStats {
    /// One line of figures, for logs and `smtplink queue list`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frames sent {} received {} retransmitted {} bad-check-dropped {} | bytes out {} in {} | circuits {} | frame size {}",
            self.frames_sent,
            self.frames_received,
            self.lapb.i_frames_retransmitted,
            self.decode.dropped(),
            self.bytes_sent,
            self.bytes_received,
            self.circuits_opened,
            self.lapb.info_size
        )
    }
}

/// A handle on one line; clones share it. The line's task stops when the
/// stream ends or fails, or when every handle and circuit is gone.
#[derive(Clone)]
pub struct Line {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("label", &self.shared.label)
            .finish_non_exhaustive()
    }
}

struct Shared {
    label: String,
    state: Mutex<State>,
    /// Something for the line's task to do (data written, circuit read).
    wake: Notify,
    /// `true` while the link is up; the end reason once the line is gone.
    status: watch::Sender<LineStatus>,
    call_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
enum LineStatus {
    Down,
    Up,
    Ended(String),
}

struct State {
    packets: PacketLayer,
    /// `None` over XOT.
    lapb: Option<Lapb>,
    circuits: HashMap<u16, Slot>,
    calls: HashMap<u16, oneshot::Sender<Result<(), X25Error>>>,
    services: HashMap<String, mpsc::UnboundedSender<Circuit>>,
    stats: LineStats,
    /// The line task's output buffer is empty (kept by the task).
    out_empty: bool,
}

#[derive(Default)]
struct Slot {
    read: Option<Waker>,
    write: Option<Waker>,
    closed: Option<CloseReason>,
    /// The [`Circuit`] handle is gone; the slot goes once the circuit is
    /// closed too.
    dropped: bool,
    /// The peer reused this circuit's id (channel and generation) for a
    /// new call while this handle was still held: the handle must never
    /// touch the layer again, or it would reach the new call.
    stale: bool,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Nothing under this lock panics halfway through an update.
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Line {
    /// Runs the full stack (framing, link layer, packet layer) over
    /// `stream`, a serial port or any byte stream, on a new task. Must be
    /// called inside a tokio runtime.
    pub fn spawn<S>(stream: S, config: LineConfig, label: impl Into<String>) -> Line
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(stream, config, label.into(), true)
    }

    /// Runs the packet layer over an XOT stream (RFC 1613): a TCP
    /// connection, already reliable, so there is no link layer.
    pub fn spawn_xot<S>(stream: S, config: LineConfig, label: impl Into<String>) -> Line
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(stream, config, label.into(), false)
    }

    fn start<S>(stream: S, config: LineConfig, label: String, with_lapb: bool) -> Line
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (packet_role, lapb_role) = match config.role {
            Role::Dte => (PacketRole::Dte, LapbRole::Dte),
            Role::Dce => (PacketRole::Dce, LapbRole::Dce),
        };
        let state = State {
            packets: PacketLayer::new(config.packet.clone(), packet_role),
            lapb: with_lapb.then(|| Lapb::new(config.lapb.clone(), lapb_role)),
            circuits: HashMap::new(),
            calls: HashMap::new(),
            services: HashMap::new(),
            stats: LineStats::default(),
            out_empty: true,
        };
        let (status, _) = watch::channel(LineStatus::Down);
        let shared = Arc::new(Shared {
            label,
            state: Mutex::new(state),
            wake: Notify::new(),
            status,
            call_timeout: config.call_timeout,
        });
        let task = Driver {
            shared: shared.clone(),
            decoder: FrameDecoder::new(config.frame),
            encoder: FrameEncoder::new(config.frame),
            xot_in: BytesMut::new(),
            out: BytesMut::new(),
            warned_same_role: false,
        };
        let span = tracing::info_span!("x25", line = %shared.label);
        tokio::spawn(tracing::Instrument::instrument(task.run(stream), span));
        Line { shared }
    }

    /// The label given at spawn (for logs).
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Whether the line has ended (stream closed or failed).
    pub fn is_ended(&self) -> bool {
        matches!(*self.shared.status.borrow(), LineStatus::Ended(_))
    }

    /// The line's counters.
    pub fn stats(&self) -> LineStats {
        lock(&self.shared).figures()
    }

    /// Counters of one open circuit.
    pub fn circuit_stats(&self, circuit: &Circuit) -> Option<CircuitStats> {
        lock(&self.shared).packets.stats(circuit.id)
    }

    /// Calls `service` on the other end: waits for the line to come up,
    /// sends CALL REQUEST and returns the circuit once it is accepted.
    pub async fn call(&self, service: &str) -> Result<Circuit, X25Error> {
        let deadline = tokio::time::Instant::now() + self.shared.call_timeout;
        let mut status = self.shared.status.subscribe();
        loop {
            let current = status.borrow_and_update().clone();
            match current {
                LineStatus::Up => break,
                LineStatus::Ended(why) => return Err(X25Error::LineEnded(why)),
                LineStatus::Down => {}
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(X25Error::LineEnded("line task gone".into())),
                Err(_) => return Err(X25Error::CallTimeout),
            }
        }
        let (answer, answered) = oneshot::channel();
        let id = {
            let mut state = lock(&self.shared);
            let id = state.packets.call(service, now())?;
            state.calls.insert(id.0, answer);
            state.circuits.insert(id.0, Slot::default());
            id
        };
        self.shared.wake.notify_one();
        let circuit = Circuit::new(self.shared.clone(), id);
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(Ok(()))) => {
                lock(&self.shared).stats.circuits_opened += 1;
                Ok(circuit)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(X25Error::LineEnded("line task gone".into())),
            // Dropping the circuit clears the call.
            Err(_) => Err(X25Error::CallTimeout),
        }
    }

    /// Takes the other end's calls for `service`. Calls for a service with
    /// no listener are refused; a second listener for one service replaces
    /// the first.
    pub fn listen(&self, service: &str) -> Incoming {
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.shared)
            .services
            .insert(service.to_owned(), sender);
        Incoming {
            receiver,
            line: self.clone(),
        }
    }

    /// Waits (up to `timeout`) until everything written on the line has
    /// gone out and been acknowledged, or the line has ended; `true` if it
    /// drained. A process that stops calls this so the last replies of its
    /// sessions (the 250 for a message it stored) reach the other end:
    /// otherwise the peer would send the message again.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_ended() {
                return true;
            }
            {
                let state = lock(&self.shared);
                let lapb_idle = state.lapb.as_ref().is_none_or(Lapb::is_idle);
                if lapb_idle && state.packets.is_idle() && state.out_empty {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the line has ended and says why.
    pub async fn ended(&self) -> String {
        let mut status = self.shared.status.subscribe();
        loop {
            if let LineStatus::Ended(why) = &*status.borrow_and_update() {
                return why.clone();
            }
            if status.changed().await.is_err() {
                return "line task gone".into();
            }
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        // The task checks whether anyone still holds the line.
        self.shared.wake.notify_one();
    }
}

/// Incoming circuits for one service on one line.
#[derive(Debug)]
pub struct Incoming {
    receiver: mpsc::UnboundedReceiver<Circuit>,
    line: Line,
}

impl Incoming {
    /// The next call; `None` once the line has ended.
    pub async fn accept(&mut self) -> Option<Circuit> {
        self.receiver.recv().await
    }

    /// The line the calls arrive on.
    pub fn line(&self) -> &Line {
        &self.line
    }
}

/// One virtual circuit: a reliable, ordered byte stream to the other end.
/// Shutting down the write side clears the call once everything written
/// has been acknowledged (RFC 1090: the caller clears after the 221).
/// A circuit that was reset or lost with its line fails reads and writes
/// with [`io::ErrorKind::ConnectionReset`]; an orderly clear by the other
/// end is end-of-file.
pub struct Circuit {
    shared: Arc<Shared>,
    id: CircuitId,
    cleared: bool,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("line", &self.shared.label)
            .field("lcn", &self.id.lcn())
            .finish()
    }
}

impl Circuit {
    fn new(shared: Arc<Shared>, id: CircuitId) -> Self {
        Circuit {
            shared,
            id,
            cleared: false,
        }
    }

    /// The logical channel number.
    pub fn channel(&self) -> u16 {
        self.id.lcn()
    }

    /// The packet layer's id of the circuit (channel and generation).
    pub fn circuit_id(&self) -> CircuitId {
        self.id
    }

    /// A [`Link`] for the SMTP drivers: kind `x25`, the peer labelled by
    /// line and channel, TLS upgrade possible (it is a byte stream), and
    /// timers stretched by `timeout_scale` for slow lines.
    pub fn into_link(self, timeout_scale: u32) -> Link {
        let label = format!("{}#lcn{}", self.shared.label, self.id.lcn());
        let info = LinkInfo::new(KIND, label.clone())
            .with_local(label)
            .with_tls_upgrade(true)
            .with_timeout_scale(timeout_scale.max(1));
        Link::new(self, info)
    }

    fn closed_error(reason: Option<&CloseReason>) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            match reason {
                Some(reason) => format!("x25 circuit ended: {reason:?}"),
                None => "x25 circuit ended".to_owned(),
            },
        )
    }
}

impl AsyncRead for Circuit {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = lock(&this.shared);
        if state.circuits.get(&this.id.0).is_none_or(|slot| slot.stale) {
            return Poll::Ready(Err(Self::closed_error(None)));
        }
        let result = state.packets.read(this.id, buf.initialize_unfilled());
        match result {
            Ok(0) if buf.remaining() > 0 => {
                let closed = state.circuits.get(&this.id.0).and_then(|slot| slot.closed);
                if state.packets.is_finished(this.id) || closed.is_some() {
                    return Poll::Ready(match closed {
                        Some(reason) if !is_orderly(&reason) => {
                            Err(Self::closed_error(Some(&reason)))
                        }
                        _ => Ok(()),
                    });
                }
                if let Some(slot) = state.circuits.get_mut(&this.id.0) {
                    slot.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                buf.advance(n);
                drop(state);
                // Reading opens the window: an RR may be due.
                this.shared.wake.notify_one();
                Poll::Ready(Ok(()))
            }
            Err(_) => {
                let closed = state.circuits.get(&this.id.0).and_then(|slot| slot.closed);
                Poll::Ready(match closed {
                    Some(reason) if is_orderly(&reason) => Ok(()),
                    other => Err(Self::closed_error(other.as_ref())),
                })
            }
        }
    }
}

impl AsyncWrite for Circuit {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cleared {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut state = lock(&this.shared);
        if let Some(reason) = state.circuits.get(&this.id.0).and_then(|s| s.closed) {
            return Poll::Ready(Err(Self::closed_error(Some(&reason))));
        }
        if !state.circuits.contains_key(&this.id.0) {
            return Poll::Ready(Err(Self::closed_error(None)));
        }
        match state.packets.write(this.id, data) {
            Ok(0) if !data.is_empty() => {
                if let Some(slot) = state.circuits.get_mut(&this.id.0) {
                    slot.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                drop(state);
                this.shared.wake.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(Self::closed_error(None))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already queued on the line; the task sends
        // them as soon as the window allows.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.cleared {
            this.cleared = true;
            let mut state = lock(&this.shared);
            if state.circuits.get(&this.id.0).is_none_or(|slot| slot.stale) {
                return Poll::Ready(Ok(()));
            }
            state.packets.clear(this.id, now());
            drop(state);
            this.shared.wake.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Circuit {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        let stale = state.circuits.get(&self.id.0).is_none_or(|slot| slot.stale);
        if stale {
            // Our id now names someone else's call (or nothing): leave it.
            if state
                .circuits
                .get(&self.id.0)
                .is_some_and(|slot| slot.stale)
            {
                state.circuits.remove(&self.id.0);
            }
            return;
        }
        if !self.cleared {
            state.packets.clear(self.id, now());
        }
        // The slot stays until the layer reports the circuit closed, so
        // the line's task knows a clear is still in flight.
        if let Some(slot) = state.circuits.get_mut(&self.id.0) {
            slot.dropped = true;
            if slot.closed.is_some() {
                state.circuits.remove(&self.id.0);
                // Nobody can read what is left: let the layer forget it.
                state.packets.release(self.id, now());
            }
        }
        drop(state);
        self.shared.wake.notify_one();
    }
}

/// The line's task: owns the stream and the codecs.
struct Driver {
    shared: Arc<Shared>,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    /// XOT bytes read but not yet a whole packet.
    xot_in: BytesMut,
    /// Bytes ready for the stream.
    out: BytesMut,
    /// The same-role warning was logged (once per line is enough).
    warned_same_role: bool,
}

/// Refill `out` from the layers only below this, so the link layer hands
/// out a frame (and starts its timer) about when the line can take it.
const OUT_LOW_WATER: usize = 64;

impl Driver {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut input = vec![0u8; 4096];
        {
            let mut state = lock(&self.shared);
            let now = now();
            match &mut state.lapb {
                Some(lapb) => lapb.connect(now),
                None => {
                    state.packets.restart(now);
                    self.shared.status.send_replace(LineStatus::Up);
                }
            }
        }
        let why = loop {
            let deadline = {
                let shared = self.shared.clone();
                let mut state = lock(&shared);
                self.pump(&mut state);
                state.out_empty = self.out.is_empty();
                let deadline = match (&state.lapb, state.packets.poll_timeout()) {
                    (Some(lapb), packets) => earliest(lapb.poll_timeout(), packets),
                    (None, packets) => packets,
                };
                deadline.map(tokio::time::Instant::from_std)
            };
            // Nobody but this task holds the line, and the last clears
            // have gone out and been confirmed: stop.
            if Arc::strong_count(&self.shared) == 1
                && self.out.is_empty()
                && lock(&self.shared).circuits.is_empty()
            {
                break "no longer used".to_owned();
            }
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // A fixed order (input first: it carries acknowledgements)
            // keeps a simulated run the same for the same seed.
            tokio::select! {
                biased;
                read = reader.read(&mut input) => match read {
                    Ok(0) => break "the stream ended".to_owned(),
                    Ok(n) => {
                        if !self.received(&input[..n]) {
                            break "the peer broke the XOT framing".to_owned();
                        }
                    }
                    Err(e) => break format!("read: {e}"),
                },
                written = writer.write(&self.out), if !self.out.is_empty() => match written {
                    Ok(0) => break "the stream refused more bytes".to_owned(),
                    Ok(n) => {
                        self.out.advance(n);
                        {
                            let mut state = lock(&self.shared);
                            state.stats.bytes_sent += n as u64;
                            state.out_empty = self.out.is_empty();
                        }
                        if self.out.is_empty() {
                            if let Err(e) = writer.flush().await {
                                break format!("flush: {e}");
                            }
                        }
                    }
                    Err(e) => break format!("write: {e}"),
                },
                () = sleep => {
                    let mut state = lock(&self.shared);
                    let now = now();
                    if let Some(lapb) = &mut state.lapb {
                        lapb.handle_timeout(now);
                    }
                    state.packets.handle_timeout(now);
                }
                () = self.shared.wake.notified() => {}
            }
        };
        let shared = self.shared.clone();
        let mut state = lock(&shared);
        tracing::info!(reason = %why, figures = %state.figures(), "x25 line ended");
        state.packets.link_lost(now());
        self.pump(&mut state);
        // Calls waiting for an answer, listeners and circuits all learn.
        for (_, call) in state.calls.drain() {
            let _ = call.send(Err(X25Error::LineEnded(why.clone())));
        }
        state.services.clear();
        for slot in state.circuits.values_mut() {
            if slot.closed.is_none() {
                slot.closed = Some(CloseReason::LinkLost);
            }
            wake(&mut slot.read);
            wake(&mut slot.write);
        }
        drop(state);
        self.shared.status.send_replace(LineStatus::Ended(why));
    }

    /// Bytes from the stream: whole frames (or XOT packets) go up. `false`
    /// when the stream broke the XOT framing and the line must end.
    fn received(&mut self, bytes: &[u8]) -> bool {
        let mut state = lock(&self.shared);
        state.stats.bytes_received += bytes.len() as u64;
        let now = now();
        if state.lapb.is_some() {
            let mut frames = Vec::new();
            self.decoder.decode_all(bytes, &mut frames);
            state.stats.decode = *self.decoder.stats();
            state.stats.frames_received += frames.len() as u64;
            if let Some(lapb) = &mut state.lapb {
                for frame in frames {
                    lapb.handle_frame(&frame, now);
                }
                // Only a link that cannot come up is worth the look.
                if !self.warned_same_role
                    && !lapb.is_connected()
                    && lapb.stats().same_role_frames > 0
                {
                    self.warned_same_role = true;
                    tracing::warn!(
                        "x25: the other end uses the same role as this one; one end of a line must say role=dte, the other role=dce"
                    );
                }
            }
        } else {
            self.xot_in.extend_from_slice(bytes);
            while self.xot_in.len() >= XOT_HEADER {
                if self.xot_in[..2] != [0, 0] {
                    // RFC 1613 3: version 0 is the only one there is.
                    tracing::info!("x25: XOT header with a version other than 0; ending the line");
                    self.xot_in.clear();
                    return false;
                }
                let length = usize::from(u16::from_be_bytes([self.xot_in[2], self.xot_in[3]]));
                if self.xot_in.len() < XOT_HEADER + length {
                    break;
                }
                self.xot_in.advance(XOT_HEADER);
                let packet = self.xot_in.split_to(length).freeze();
                state.stats.frames_received += 1;
                state.packets.handle_packet(&packet, now);
            }
        }
        true
    }

    /// Moves events and data between the layers until nothing moves, then
    /// fills the output buffer.
    fn pump(&mut self, state: &mut State) {
        let now = now();
        loop {
            let mut moved = false;
            let State {
                packets,
                lapb,
                circuits,
                calls,
                services,
                stats,
                out_empty: _,
            } = state;
            if let Some(lapb) = lapb.as_mut() {
                while let Some(event) = lapb.poll_event() {
                    moved = true;
                    match event {
                        LapbEvent::Connected => {
                            tracing::debug!("x25 link up");
                            packets.restart(now);
                            self.shared.status.send_replace(LineStatus::Up);
                        }
                        LapbEvent::Data(packet) => packets.handle_packet(&packet, now),
                        LapbEvent::Reset => {
                            tracing::info!("x25 link reset: circuits restart");
                            packets.link_lost(now);
                            packets.restart(now);
                        }
                        LapbEvent::Disconnected(reason) => {
                            tracing::info!(?reason, "x25 link down; setting it up again");
                            packets.link_lost(now);
                            self.shared.status.send_replace(LineStatus::Down);
                            lapb.connect(now);
                        }
                        // Later kinds of event need nothing from us.
                        #[allow(unreachable_patterns)]
                        _ => {}
                    }
                }
                while lapb.can_send() {
                    match packets.poll_packet(lapb.preferred_info_size(), now) {
                        Some(packet) => {
                            moved = true;
                            if lapb.send(packet).is_err() {
                                tracing::warn!("x25: link layer refused a packet it had room for");
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
            while let Some(event) = packets.poll_event() {
                moved = true;
                match event {
                    PacketEvent::IncomingCall { id, service } => {
                        let listener = services.get(&service).filter(|s| !s.is_closed()).cloned();
                        // A handle for an earlier circuit with this id may
                        // still be held (the channel was reused until its
                        // generation wrapped): never give two handles one
                        // stream.
                        let in_use = circuits.contains_key(&id.0);
                        match listener {
                            Some(_) if in_use => {
                                tracing::warn!(channel = id.lcn(), "x25: refusing a call on a channel whose previous circuit is still held");
                                if let Some(slot) = circuits.get_mut(&id.0) {
                                    slot.stale = true;
                                    slot.closed.get_or_insert(CloseReason::LinkLost);
                                    wake(&mut slot.read);
                                    wake(&mut slot.write);
                                }
                                packets.refuse(id, CAUSE_NOT_OBTAINABLE, 0, now);
                            }
                            Some(listener) => {
                                packets.accept(id, now);
                                circuits.insert(id.0, Slot::default());
                                stats.circuits_opened += 1;
                                let circuit = Circuit::new(self.shared.clone(), id);
                                if let Err(refused) = listener.send(circuit) {
                                    // Dropping it clears the call.
                                    drop(refused);
                                }
                            }
                            None => {
                                tracing::info!(%service, "x25: refusing a call for a service nobody listens to");
                                packets.refuse(id, CAUSE_NOT_OBTAINABLE, 0, now);
                            }
                        }
                    }
                    PacketEvent::Connected(id) => {
                        if let Some(call) = calls.remove(&id.0) {
                            let _ = call.send(Ok(()));
                        }
                    }
                    PacketEvent::Readable(id) => {
                        if let Some(slot) = circuits.get_mut(&id.0) {
                            wake(&mut slot.read);
                        }
                    }
                    PacketEvent::Writable(id) => {
                        if let Some(slot) = circuits.get_mut(&id.0) {
                            wake(&mut slot.write);
                        }
                    }
                    PacketEvent::Closed { id, reason } => {
                        if let Some(call) = calls.remove(&id.0) {
                            let _ = call.send(Err(X25Error::CallRefused(format!("{reason:?}"))));
                        }
                        if let Some(slot) = circuits.get_mut(&id.0) {
                            if slot.dropped {
                                circuits.remove(&id.0);
                                packets.release(id, now);
                            } else {
                                slot.closed = Some(reason);
                                wake(&mut slot.read);
                                wake(&mut slot.write);
                            }
                        }
                    }
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }
            if !moved {
                break;
            }
        }
        if self.out.len() >= OUT_LOW_WATER {
            return;
        }
        match &mut state.lapb {
            Some(lapb) => {
                while self.out.len() < OUT_LOW_WATER {
                    let Some(frame) = lapb.poll_transmit(now) else {
                        break;
                    };
                    let before = self.out.len();
                    if let Err(e) = self.encoder.encode_into(&frame, &mut self.out) {
                        tracing::warn!(error = %e, "x25: cannot frame a link-layer frame");
                        continue;
                    }
                    // Escapes: the link layer paces by what the line carries.
                    let written = self.out.len() - before;
                    lapb.add_wire_bytes(written.saturating_sub(frame.len() + FRAMING_OVERHEAD));
                    state.stats.frames_sent += 1;
                }
            }
            None => {
                let max = state.packets_max();
                while self.out.len() < OUT_LOW_WATER {
                    let Some(packet) = state.packets.poll_packet(max, now) else {
                        break;
                    };
                    let Ok(length) = u16::try_from(packet.len()) else {
                        tracing::warn!(len = packet.len(), "x25: packet too long for XOT");
                        continue;
                    };
                    self.out.put_u16(0);
                    self.out.put_u16(length);
                    self.out.extend_from_slice(&packet);
                    state.stats.frames_sent += 1;
                }
            }
        }
    }
}

impl State {
    /// The line's counters with the layers' own filled in.
    fn figures(&self) -> LineStats {
        let mut stats = self.stats.clone();
        stats.control_queued = self.packets.queued_control();
        if let Some(lapb) = &self.lapb {
            stats.lapb = lapb.stats();
            stats.control_queued += lapb.queued_control();
        }
        stats
    }

    /// The largest packet XOT may carry in one go: the configured data
    /// size plus room for the longest (modulo 128) data packet header.
    fn packets_max(&self) -> usize {
        self.packets.config().max_packet + 4
    }
}

/// An orderly end of a circuit reads as end-of-file; anything else (reset,
/// restart, lost link) is an error, so SMTP never takes a cut for an end.
fn is_orderly(reason: &CloseReason) -> bool {
    matches!(reason, CloseReason::Local | CloseReason::Cleared { .. })
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

fn earliest(
    a: Option<std::time::Instant>,
    b: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
