//! The session protocol: how an SMTP session starts and ends on a line that
//! has no connect or disconnect events of its own.
//!
//! Nothing here knows about serial ports: [`call`] and [`answer`] run the
//! handshake over any byte stream and return a [`Session`], which carries
//! the SMTP bytes untouched and turns the end marker into end-of-file. The
//! [crate docs](crate#the-session-protocol) describe the protocol itself.
//!
//! Use this module directly to run serial-style sessions over a stream the
//! [`SerialTransport`](crate::SerialTransport) cannot open itself, e.g. a
//! terminal server's TCP port or a radio modem's socket.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::SessionError;

/// Every control line starts with these bytes: ESC, then `SMTPLINK `.
///
/// ESC never starts a line of SMTP commands, replies or RFC 5322 text (the
/// ISO-2022 escapes found in some mail are `ESC $`, `ESC (` and the like).
pub const MAGIC: &[u8] = b"\x1bSMTPLINK ";

/// The longest control line: magic, the longest verb, a space, 16 hex
/// digits, CR LF. Anything longer is not a control line.
const MAX_CONTROL: usize = MAGIC.len() + 7 + 1 + 16 + 2;

/// Bytes read from the stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How long an orderly close may take to send the end marker.
const END_TIMEOUT: Duration = Duration::from_secs(5);

/// A session's random identifier, written as 16 lower-case hex digits.
///
/// The caller picks a fresh one for every session. It ties the handshake's
/// answers to this attempt (a stale answer from an earlier attempt is
/// ignored) and makes the end marker something no mail can contain by
/// accident or on purpose: nobody but the two ends knows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(u64);

impl Nonce {
    /// A fresh random nonce (from the standard library's randomly keyed
    /// hasher, mixed with the time and a counter).
    pub fn random() -> Nonce {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        Nonce(hasher.finish())
    }

    /// The nonce with this value (for tests and transcripts).
    pub fn from_u64(value: u64) -> Nonce {
        Nonce(value)
    }

    /// The nonce's value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    fn parse(hex: &[u8]) -> Option<Nonce> {
        if hex.len() != 16 || !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let text = std::str::from_utf8(hex).ok()?;
        u64::from_str_radix(text, 16).ok().map(Nonce)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({self})")
    }
}

/// The kinds of control line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Caller to listener: "I want a session with this nonce" (repeated
    /// until answered).
    Connect,
    /// Listener to caller: "ready for the session with this nonce".
    Accept,
    /// Both ways, once: "SMTP starts after this line". The caller sends it
    /// on the first matching ACCEPT; the listener echoes it and then sends
    /// the SMTP greeting.
    Start,
    /// Both ways: "I will send nothing more in this session" (the
    /// end-of-file of a half-close).
    End,
    /// Sent by an end that has just opened the line: "whatever session you
    /// think you are in is over".
    Reset,
}

impl Verb {
    fn word(self) -> &'static [u8] {
        match self {
            Verb::Connect => b"CONNECT",
            Verb::Accept => b"ACCEPT",
            Verb::Start => b"START",
            Verb::End => b"END",
            Verb::Reset => b"RESET",
        }
    }

    fn parse(word: &[u8]) -> Option<Verb> {
        [
            Verb::Connect,
            Verb::Accept,
            Verb::Start,
            Verb::End,
            Verb::Reset,
        ]
        .into_iter()
        .find(|verb| verb.word() == word)
    }
}

/// One control line: a verb and the session nonce it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// What the line says.
    pub verb: Verb,
    /// Which session it is about.
    pub nonce: Nonce,
}

impl Control {
    /// The control line `verb` for `nonce`.
    pub fn new(verb: Verb, nonce: Nonce) -> Control {
        Control { verb, nonce }
    }

    /// The bytes on the line: `ESC "SMTPLINK " VERB " " NONCE CR LF`.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut line = Vec::with_capacity(MAX_CONTROL);
        line.extend_from_slice(MAGIC);
        line.extend_from_slice(self.verb.word());
        line.push(b' ');
        line.extend_from_slice(self.nonce.to_string().as_bytes());
        line.extend_from_slice(b"\r\n");
        line
    }
}

/// What [`parse_control`] makes of bytes starting with ESC.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A control line of this many bytes.
    Control(Control, usize),
    /// Could still become a control line: need more bytes.
    Incomplete,
    /// Not a control line.
    No,
}

fn parse_control(bytes: &[u8]) -> Parsed {
    let head = bytes.len().min(MAGIC.len());
    if bytes[..head] != MAGIC[..head] {
        return Parsed::No;
    }
    let window = &bytes[..bytes.len().min(MAX_CONTROL)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= MAX_CONTROL {
            Parsed::No
        } else {
            Parsed::Incomplete
        };
    };
    let line = &bytes[..=lf];
    let Some(body) = line
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
    else {
        return Parsed::No;
    };
    let Some(space) = body.iter().position(|&b| b == b' ') else {
        return Parsed::No;
    };
    match (
        Verb::parse(&body[..space]),
        Nonce::parse(&body[space + 1..]),
    ) {
        (Some(verb), Some(nonce)) => Parsed::Control(Control { verb, nonce }, line.len()),
        _ => Parsed::No,
    }
}

/// Finds the first control line in `bytes` that `wanted` accepts.
///
/// Returns how many leading bytes are certainly not part of such a line
/// (content), and the line with its length if one starts right after them.
/// When neither covers all of `bytes`, the rest may still become a control
/// line and must be kept until more bytes arrive. The rest never contains
/// a line feed, so a peer that stops after a complete SMTP line is never
/// kept waiting.
fn scan(bytes: &[u8], wanted: impl Fn(&Control) -> bool) -> (usize, Option<(Control, usize)>) {
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&b| b == MAGIC[0]) {
        let at = from + offset;
        match parse_control(&bytes[at..]) {
            Parsed::Control(control, len) if wanted(&control) => return (at, Some((control, len))),
            Parsed::Incomplete => return (at, None),
            Parsed::Control(..) | Parsed::No => from = at + 1,
        }
    }
    (bytes.len(), None)
}

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started the session with CONNECT.
    Caller,
    /// Answered the CONNECT.
    Listener,
}

/// Timers of the session protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How often the caller repeats CONNECT until it is answered.
    pub handshake_interval: Duration,
    /// How long a handshake may take in all: the caller gives up (a
    /// transient "no answer" error), the listener forgets a caller that
    /// stopped halfway and waits for the next.
    pub handshake_timeout: Duration,
    /// A session in which no byte moves either way for this long fails
    /// with a timeout (a peer that vanished without a word). `None`: only
    /// SMTP's own timeouts apply.
    pub idle_timeout: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            handshake_interval: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

impl Timing {
    /// Timers suited to a line of `baud` bits per second: the interval
    /// leaves room for a CONNECT and its ACCEPT to cross the line several
    /// times over, and the handshake timeout for a dozen tries.
    pub fn for_baud(baud: u32) -> Timing {
        let mut timing = Timing::default();
        // About 10 bits per character (start, 8 data, stop).
        let bytes_per_second = u64::from(baud.max(1)) / 10 + 1;
        let round_trip_ms = 2 * 1000 * MAX_CONTROL as u64 / bytes_per_second;
        timing.handshake_interval = timing
            .handshake_interval
            .max(Duration::from_millis(3 * round_trip_ms));
        timing.handshake_timeout = timing.handshake_timeout.max(timing.handshake_interval * 12);
        timing
    }
}

/// Bytes moved on the line, handshake and markers included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounters {
    /// Bytes read from the line.
    pub read: u64,
    /// Bytes written to the line.
    pub written: u64,
}

/// Reads control lines during the handshake, throwing away everything else.
struct Handshake<'a, S> {
    stream: &'a mut S,
    buf: Vec<u8>,
    counters: LineCounters,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<'_, S> {
    /// The next control line of any kind; other bytes are discarded.
    /// Cancel-safe: the only await is one read.
    async fn next_control(&mut self) -> Result<Control, SessionError> {
        loop {
            let (junk, found) = scan(&self.buf, |_| true);
            if let Some((control, len)) = found {
                self.buf.drain(..junk + len);
                return Ok(control);
            }
            if junk > 0 {
                tracing::trace!(bytes = junk, "serial: discarding bytes outside a session");
                self.buf.drain(..junk);
            }
            let mut chunk = [0u8; 512];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(SessionError::Line)?;
            if n == 0 {
                return Err(SessionError::LineClosed);
            }
            self.counters.read += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, control: Control) -> Result<(), SessionError> {
        let line = control.to_bytes();
        self.stream
            .write_all(&line)
            .await
            .map_err(SessionError::Line)?;
        self.stream.flush().await.map_err(SessionError::Line)?;
        self.counters.written += line.len() as u64;
        Ok(())
    }
}

/// Starts a session as the caller: repeats CONNECT until a matching ACCEPT
/// arrives, sends START and waits for the listener's START.
///
/// Everything else on the line (leftovers of an earlier session, stale
/// answers, noise) is discarded. Fails with [`SessionError::NoAnswer`] when
/// the listener does not complete the handshake within
/// [`Timing::handshake_timeout`].
pub async fn call<S>(mut stream: S, timing: &Timing) -> Result<Session<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nonce = Nonce::random();
    let deadline = Instant::now() + timing.handshake_timeout;
    let mut hs = Handshake {
        stream: &mut stream,
        buf: Vec::new(),
        counters: LineCounters::default(),
    };
    let no_answer = |stage: &'static str| SessionError::NoAnswer {
        waited: timing.handshake_timeout,
        stage,
    };
    // CONNECT, again every interval, until our ACCEPT.
    'connect: loop {
        hs.send(Control::new(Verb::Connect, nonce)).await?;
        let next_try = (Instant::now() + timing.handshake_interval).min(deadline);
        loop {
            match tokio::time::timeout_at(next_try, hs.next_control()).await {
                Err(_) if Instant::now() >= deadline => return Err(no_answer("CONNECT")),
                Err(_) => continue 'connect,
                Ok(control) => {
                    if control? == Control::new(Verb::Accept, nonce) {
                        break 'connect;
                    }
                }
            }
        }
    }
    hs.send(Control::new(Verb::Start, nonce)).await?;
    // Duplicate ACCEPTs (for repeated CONNECTs) come before the START echo.
    loop {
        match tokio::time::timeout_at(deadline, hs.next_control()).await {
            Err(_) => return Err(no_answer("START")),
            Ok(control) => {
                if control? == Control::new(Verb::Start, nonce) {
                    break;
                }
            }
        }
    }
    let Handshake { buf, counters, .. } = hs;
    tracing::debug!(%nonce, "serial: session started (caller)");
    Ok(Session::new(
        stream,
        Role::Caller,
        nonce,
        buf,
        counters,
        timing,
    ))
}

/// Waits for a caller and starts a session as the listener.
///
/// Discards everything until a CONNECT, answers each CONNECT with ACCEPT,
/// and starts the session on the caller's START (echoing it). A newer
/// CONNECT replaces a caller that went quiet; a caller that does not send
/// START within [`Timing::handshake_timeout`] is forgotten. Waits as long
/// as it takes otherwise; fails only when the line fails.
pub async fn answer<S>(mut stream: S, timing: &Timing) -> Result<Session<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = Handshake {
        stream: &mut stream,
        buf: Vec::new(),
        counters: LineCounters::default(),
    };
    let mut pending: Option<(Nonce, Instant)> = None;
    let nonce = loop {
        let control = match pending {
            None => hs.next_control().await?,
            Some((nonce, deadline)) => {
                match tokio::time::timeout_at(deadline, hs.next_control()).await {
                    Ok(control) => control?,
                    Err(_) => {
                        tracing::debug!(%nonce, "serial: caller never sent START; waiting again");
                        pending = None;
                        continue;
                    }
                }
            }
        };
        match control.verb {
            Verb::Connect => {
                hs.send(Control::new(Verb::Accept, control.nonce)).await?;
                pending = Some((control.nonce, Instant::now() + timing.handshake_timeout));
            }
            Verb::Start if pending.is_some_and(|(nonce, _)| nonce == control.nonce) => {
                hs.send(control).await?;
                break control.nonce;
            }
            _ => {}
        }
    };
    let Handshake { buf, counters, .. } = hs;
    tracing::debug!(%nonce, "serial: session started (listener)");
    Ok(Session::new(
        stream,
        Role::Listener,
        nonce,
        buf,
        counters,
        timing,
    ))
}

/// Sends a RESET line: "whatever session you are in with me is over".
///
/// An end sends it when it (re)opens the line, so that a peer still inside
/// a session with its previous incarnation fails at once instead of
/// waiting for a timeout.
pub async fn send_reset<S>(stream: &mut S) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream
        .write_all(&Control::new(Verb::Reset, Nonce::random()).to_bytes())
        .await?;
    stream.flush().await
}

#[derive(Debug)]
enum ReadState {
    Open,
    /// The peer's END arrived: end-of-file from now on.
    Ended,
    /// The peer restarted or a new caller appeared.
    Reset(Verb),
    /// The line failed (error or end of the underlying stream).
    Failed(io::ErrorKind, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    Open,
    /// Sending the END marker; this many bytes of it are out.
    Ending(usize),
    Ended,
}

/// One SMTP session on the line, after the handshake.
///
/// Reads and writes carry SMTP's bytes unchanged. Reading returns
/// end-of-file once the peer's END marker arrives; a RESET or a CONNECT
/// from the other end (it restarted) is a `ConnectionReset` error; with
/// [`Timing::idle_timeout`] set, a line on which nothing moves either way
/// for that long is a `TimedOut` error. `shutdown` sends our END marker.
///
/// Only whole control lines for this session are taken out of the stream
/// (see the [crate docs](crate#the-session-protocol)); every other byte is
/// passed through.
#[derive(Debug)]
pub struct Session<S> {
    stream: S,
    role: Role,
    nonce: Nonce,
    /// Bytes read from the line and not yet handed out: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    read_state: ReadState,
    write_state: WriteState,
    end_line: Vec<u8>,
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<Sleep>>>,
    counters: LineCounters,
    line_failed: bool,
}

impl<S> Session<S> {
    fn new(
        stream: S,
        role: Role,
        nonce: Nonce,
        leftover: Vec<u8>,
        counters: LineCounters,
        timing: &Timing,
    ) -> Session<S> {
        Session {
            stream,
            role,
            nonce,
            rbuf: leftover,
            rpos: 0,
            read_state: ReadState::Open,
            write_state: WriteState::Open,
            end_line: Control::new(Verb::End, nonce).to_bytes(),
            idle_timeout: timing.idle_timeout,
            idle: timing
                .idle_timeout
                .map(|idle| Box::pin(tokio::time::sleep(idle))),
            counters,
            line_failed: false,
        }
    }

    /// This session's nonce.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes moved on the line so far, the handshake included.
    pub fn counters(&self) -> LineCounters {
        self.counters
    }

    /// Whether the line itself failed (an I/O error or the stream ended),
    /// as opposed to the session ending: a failed line should be reopened
    /// before the next session.
    pub fn line_failed(&self) -> bool {
        self.line_failed
    }

    /// The stream, without sending anything. Bytes already read from it
    /// but not yet returned by `read` are dropped.
    pub fn into_inner(self) -> S {
        self.stream
    }

    fn touch(&mut self) {
        if let (Some(idle), Some(timeout)) = (self.idle.as_mut(), self.idle_timeout) {
            idle.as_mut().reset(Instant::now() + timeout);
        }
    }

    fn fail(&mut self, err: &io::Error) {
        self.line_failed = true;
        self.read_state = ReadState::Failed(err.kind(), err.to_string());
    }

    /// An error for the current read state, or `None` when still open.
    fn read_error(&self) -> Option<io::Result<()>> {
        match &self.read_state {
            ReadState::Open => None,
            ReadState::Ended => Some(Ok(())),
            ReadState::Reset(verb) => Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                match verb {
                    Verb::Connect => "a new session was started from the other end of the line",
                    _ => "the other end of the line restarted",
                },
            ))),
            ReadState::Failed(kind, text) => Some(Err(io::Error::new(*kind, text.clone()))),
        }
    }

    fn idle_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "nothing moved on the serial line for {:?}",
                self.idle_timeout.unwrap_or_default()
            ),
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Ends the session: sends our END marker (unless `shutdown` already
    /// did, or the line failed), waiting at most a few seconds, and returns
    /// the stream for the next session.
    ///
    /// The result is `Err` when the line failed, now or earlier: the stream
    /// should then be closed and the line reopened before the next session.
    pub async fn finish(mut self) -> (S, Result<(), SessionError>) {
        if !self.line_failed {
            match tokio::time::timeout(END_TIMEOUT, self.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => self.fail(&err),
                Err(_) => {
                    let err = io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the end marker could not be sent (is the line flow-controlled?)",
                    );
                    self.fail(&err);
                }
            }
        }
        let result = match (&self.read_state, self.line_failed) {
            (ReadState::Failed(kind, text), true) => {
                Err(SessionError::Line(io::Error::new(*kind, text.clone())))
            }
            _ => Ok(()),
        };
        (self.stream, result)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Session<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(result) = this.read_error() {
                return Poll::Ready(result);
            }
            if this.rpos < this.rbuf.len() {
                let role = this.role;
                let nonce = this.nonce;
                let (content, control) = scan(&this.rbuf[this.rpos..], |c| match c.verb {
                    Verb::End => c.nonce == nonce,
                    Verb::Reset | Verb::Connect => true,
                    Verb::Accept | Verb::Start => false,
                });
                if content > 0 {
                    let n = content.min(buf.remaining());
                    buf.put_slice(&this.rbuf[this.rpos..this.rpos + n]);
                    this.rpos += n;
                    return Poll::Ready(Ok(()));
                }
                if let Some((control, len)) = control {
                    this.rpos += len;
                    this.read_state = match control.verb {
                        Verb::End => {
                            tracing::debug!(%nonce, ?role, "serial: the other end ended the session");
                            ReadState::Ended
                        }
                        verb => {
                            tracing::debug!(%nonce, ?role, ?verb, "serial: the other end restarted");
                            ReadState::Reset(verb)
                        }
                    };
                    continue;
                }
                // A possible control line is incomplete: read more.
            }
            if this.rpos > 0 {
                this.rbuf.drain(..this.rpos);
                this.rpos = 0;
            }
            let start = this.rbuf.len();
            this.rbuf.resize(start + READ_CHUNK, 0);
            let mut raw = ReadBuf::new(&mut this.rbuf[start..]);
            let polled = Pin::new(&mut this.stream).poll_read(cx, &mut raw);
            let got = raw.filled().len();
            this.rbuf.truncate(start + got);
            match polled {
                Poll::Ready(Ok(())) if got == 0 => {
                    let err = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the serial line closed in the middle of a session",
                    );
                    this.fail(&err);
                }
                Poll::Ready(Ok(())) => {
                    this.counters.read += got as u64;
                    this.touch();
                }
                Poll::Ready(Err(err)) => {
                    this.fail(&err);
                }
                Poll::Pending => {
                    if let Some(idle) = this.idle.as_mut() {
                        if idle.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(this.idle_error()));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Session<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_state != WriteState::Open {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the session was already closed for writing",
            )));
        }
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.counters.written += n as u64;
                this.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => {
                this.fail(&err);
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                if let Some(idle) = this.idle.as_mut() {
                    if idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(this.idle_error()));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.write_state {
                WriteState::Ended => return Poll::Ready(Ok(())),
                WriteState::Open => this.write_state = WriteState::Ending(0),
                WriteState::Ending(sent) if sent == this.end_line.len() => {
                    ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
                    this.write_state = WriteState::Ended;
                    tracing::debug!(nonce = %this.nonce, role = ?this.role, "serial: session end sent");
                }
                WriteState::Ending(sent) => {
                    match ready!(Pin::new(&mut this.stream).poll_write(cx, &this.end_line[sent..]))
                    {
                        Ok(0) => {
                            let err = io::Error::new(
                                io::ErrorKind::WriteZero,
                                "the serial line took no more bytes",
                            );
                            this.fail(&err);
                            return Poll::Ready(Err(err));
                        }
                        Ok(n) => {
                            this.counters.written += n as u64;
                            this.write_state = WriteState::Ending(sent + n);
                        }
                        Err(err) => {
                            this.fail(&err);
                            return Poll::Ready(Err(err));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{duplex, DuplexStream};

    fn fast() -> Timing {
        Timing {
            handshake_interval: Duration::from_millis(50),
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(5)),
        }
    }

    async fn pair() -> (Session<DuplexStream>, Session<DuplexStream>) {
        let (a, b) = duplex(1 << 16);
        let timing = fast();
        let (caller, listener) = tokio::join!(call(a, &timing), answer(b, &timing));
        (caller.unwrap(), listener.unwrap())
    }

    #[test]
    fn control_lines_round_trip() {
        let nonce = Nonce::from_u64(0x0123_4567_89ab_cdef);
        for verb in [
            Verb::Connect,
            Verb::Accept,
            Verb::Start,
            Verb::End,
            Verb::Reset,
        ] {
            let line = Control::new(verb, nonce).to_bytes();
            assert!(line.len() <= MAX_CONTROL);
            assert_eq!(
                parse_control(&line),
                Parsed::Control(Control::new(verb, nonce), line.len())
            );
            for cut in 1..line.len() {
                assert_eq!(parse_control(&line[..cut]), Parsed::Incomplete, "{cut}");
            }
        }
        assert_eq!(
            Control::new(Verb::End, nonce).to_bytes(),
            b"\x1bSMTPLINK END 0123456789abcdef\r\n"
        );
    }

    #[test]
    fn near_misses_are_content() {
        for text in [
            &b"\x1bSMTPLINK END 0123456789ABCDEF\r\n"[..],
            b"\x1bSMTPLINK END 0123456789abcde\r\n",
            b"\x1bSMTPLINK FOO 0123456789abcdef\r\n",
            b"\x1bSMTPLINK END 0123456789abcdef\n",
            b"\x1bSMTPLINK END  0123456789abcdef\r\n",
            b"\x1bSMTPLINKEND 0123456789abcdef\r\n",
            b"\x1b$B",
        ] {
            assert_eq!(parse_control(text), Parsed::No, "{text:?}");
        }
        // ESC followed by something else is content at once.
        assert_eq!(scan(b"a\x1b$Bb", |_| true), (5, None));
        // A possible marker at the end is held back, but never past a LF.
        assert_eq!(scan(b"abc\x1bSMTP", |_| true), (3, None));
        assert_eq!(scan(b"abc\x1bSMTP\r\n", |_| true), (10, None));
    }

    #[test]
    fn nonces_differ_and_print_as_hex() {
        let a = Nonce::random();
        let b = Nonce::random();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(Nonce::parse(a.to_string().as_bytes()), Some(a));
    }

    #[tokio::test]
    async fn bytes_cross_untouched_and_end_is_eof() {
        let (mut caller, mut listener) = pair().await;
        assert_eq!(caller.nonce(), listener.nonce());
        // Everything but a whole END line for this session passes through,
        // including markers of other sessions and bare ESCs.
        let mut payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        payload.extend_from_slice(b"\r\n\x1bSMTPLINK END 0000000000000000\r\n");
        payload.extend_from_slice(b"\x1bSMTPLINK ACCEPT 0000000000000000\r\n\x1b");
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            caller.write_all(&payload).await.unwrap();
            caller.shutdown().await.unwrap();
            caller
        });
        let mut got = Vec::new();
        listener.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
        let caller = writer.await.unwrap();
        // The listener's side still works after the caller's half-close.
        listener.write_all(b"221 bye\r\n").await.unwrap();
        listener.shutdown().await.unwrap();
        let mut caller = caller;
        let mut rest = Vec::new();
        caller.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"221 bye\r\n");
        assert!(caller.counters().written >= expected.len() as u64);
    }

    #[tokio::test]
    async fn leftovers_and_stale_answers_are_discarded() {
        let (mut a, b) = duplex(1 << 16);
        // The listener's side of the line still holds the tail of an old
        // session and stale control lines.
        a.write_all(b"250 2.0.0 old reply\r\n\x1bSMTPLINK START 1111111111111111\r\n")
            .await
            .unwrap();
        let timing = fast();
        let listener = tokio::spawn(async move { answer(b, &timing).await });
        let mut caller = call(a, &fast()).await.unwrap();
        let mut listener = listener.await.unwrap().unwrap();
        caller.write_all(b"EHLO a\r\n").await.unwrap();
        let mut line = [0u8; 8];
        listener.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"EHLO a\r\n");
    }

    #[tokio::test]
    async fn caller_gives_up_without_a_listener() {
        let (a, mut b) = duplex(1 << 16);
        let timing = Timing {
            handshake_interval: Duration::from_millis(20),
            handshake_timeout: Duration::from_millis(200),
            idle_timeout: None,
        };
        let err = call(a, &timing).await.unwrap_err();
        assert!(matches!(err, SessionError::NoAnswer { .. }), "{err}");
        // It kept repeating CONNECT with one nonce.
        let mut sent = vec![0u8; 4096];
        let n = b.read(&mut sent).await.unwrap();
        let text = String::from_utf8_lossy(&sent[..n]);
        assert!(text.matches("SMTPLINK CONNECT").count() >= 3, "{text}");
    }

    #[tokio::test]
    async fn a_new_caller_resets_the_listeners_session() {
        let (mut a, b) = duplex(1 << 16);
        let timing = fast();
        let listener = tokio::spawn(async move { answer(b, &timing).await });
        // The first caller's session...
        let mut first = call(&mut a, &fast()).await.unwrap();
        let mut listener = listener.await.unwrap().unwrap();
        first
            .write_all(b"MAIL FROM:<x@y>\r\nDATA\r\npart")
            .await
            .unwrap();
        drop(first);
        // ...and the caller restarts: its CONNECT arrives mid-DATA.
        a.write_all(&Control::new(Verb::Connect, Nonce::random()).to_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let err = listener.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(got, b"MAIL FROM:<x@y>\r\nDATA\r\npart");
        assert!(!listener.line_failed());
    }

    #[tokio::test]
    async fn reset_from_a_restarted_listener_fails_the_caller() {
        let (mut caller, listener) = pair().await;
        let mut line = listener.into_inner();
        send_reset(&mut line).await.unwrap();
        let mut buf = [0u8; 16];
        let err = caller.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn end_then_next_session_on_the_same_line() {
        let (a, b) = duplex(1 << 16);
        let timing = fast();
        let (caller, listener) = tokio::join!(call(a, &timing), answer(b, &timing));
        let (mut caller, mut listener) = (caller.unwrap(), listener.unwrap());
        let first = caller.nonce();
        caller.write_all(b"QUIT\r\n").await.unwrap();
        // Unread bytes are left on the line when both ends finish.
        listener.write_all(b"221 bye\r\n").await.unwrap();
        let ((a, first_end), (b, second_end)) = tokio::join!(caller.finish(), listener.finish());
        first_end.unwrap();
        second_end.unwrap();
        let (caller, listener) = tokio::join!(call(a, &timing), answer(b, &timing));
        let (mut caller, mut listener) = (caller.unwrap(), listener.unwrap());
        assert_ne!(caller.nonce(), first);
        listener.write_all(b"220 hi\r\n").await.unwrap();
        let mut greeting = [0u8; 8];
        caller.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 hi\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_time_out() {
        let (mut caller, _listener) = pair().await;
        let mut buf = [0u8; 16];
        let err = caller.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_vanished_line_is_an_error() {
        let (mut caller, listener) = pair().await;
        drop(listener);
        let mut buf = [0u8; 16];
        let err = caller.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(caller.line_failed());
        assert!(caller.finish().await.1.is_err());
    }
}
