//! Serial-line links for smtplink: SMTP between two machines joined by an
//! RS-232 cable, a pair of USB serial adapters, a radio or modem that
//! presents a serial port, or a pseudo-terminal pair made by socat.
//!
//! [`SerialTransport`] handles `serial:///dev/ttyUSB0?baud=9600` endpoints
//! (see [`SerialSettings`] for every option): `connect` opens the port and
//! starts a session as the *caller*; `listen` opens it and hands out one
//! session at a time as the *listener*. Either machine may be either end.
//! The line must be reliable (no lost or corrupted bytes: a cable of
//! reasonable length, or a modem with error correction); noisy lines need
//! the framed X.25 adapter on top.
//!
//! # The session protocol
//!
//! A serial line has no connect or disconnect events: bytes just appear,
//! including the tail of a session that ended badly. So each SMTP session
//! is bracketed by *control lines*, `ESC "SMTPLINK " VERB " " NONCE CR LF`,
//! where NONCE is 16 lower-case hex digits the caller picks at random for
//! each session:
//!
//! ```text
//! caller                                        listener
//!   | ESC SMTPLINK CONNECT n  (again every 0.5 s)   |   discards everything
//!   |---------------------------------------------->|   before a CONNECT
//!   |                          ESC SMTPLINK ACCEPT n |
//!   |<----------------------------------------------|
//!   | ESC SMTPLINK START n                           |
//!   |---------------------------------------------->|
//!   |         ESC SMTPLINK START n, then 220 greeting |
//!   |<----------------------------------------------|
//!   |       ... SMTP, byte for byte, both ways ...   |
//!   | ESC SMTPLINK END n   (each side, on close)     |
//!   |<--------------------------------------------->|
//! ```
//!
//! * **Start.** The caller repeats CONNECT until it gets the ACCEPT with
//!   its nonce (the interval grows on slow lines, see [`Timing::for_baud`]),
//!   then sends START. The listener answers every CONNECT with ACCEPT and
//!   starts the session on the matching START, which it echoes. Each side
//!   discards every byte before the other side's START, so leftovers from
//!   an earlier session, stale answers and line noise never reach SMTP.
//!   A caller with no complete answer within [`Timing::handshake_timeout`]
//!   gives up with a transient error; the relay retries later.
//! * **During the session** SMTP's bytes pass untouched. Each side watches
//!   the incoming bytes for three control lines only: `END` with this
//!   session's nonce, `CONNECT` (any nonce) and `RESET` (any nonce).
//!   Everything else, including other control lines and stray ESC bytes,
//!   is SMTP data.
//! * **End.** Closing the link (SMTP `QUIT`, an error, or just dropping
//!   it) sends `END n`; the other side reads end-of-file, so its server
//!   aborts any unfinished message and ends the session at once. After a
//!   session both sides go back to discarding: the listener waits for the
//!   next CONNECT, the caller closes the port.
//! * **Recovery.** An end that opens the line sends `RESET`: a peer still
//!   in a session with the previous incarnation (it crashed, or the cable
//!   was pulled and put back) gets a "connection reset" error instead of
//!   waiting for SMTP's timeouts. A listener that sees a CONNECT in the
//!   middle of a session knows its caller restarted and ends the session
//!   the same way. A peer that vanishes without a word is caught by the
//!   idle timeout (`idle=` seconds of no traffic either way, 600 by
//!   default). A listener whose port fails (an I/O error: adapter
//!   unplugged, socat restarted) reopens the device path until it is back.
//!
//! Mail that contains an ESC byte followed by `SMTPLINK CONNECT`, 16 hex
//! digits and CR LF (or the same with `RESET`) cannot cross a serial
//! link: it ends the session each time it is sent. No ordinary mail has an
//! ESC at the start of such a line (ISO-2022 text uses `ESC $` and `ESC (`);
//! the END marker is safe whatever the mail says, since its nonce is new
//! for every session and nobody but the two ends knows it.
//!
//! Modem control lines (DTR, DCD) are not used: three-wire cables and ptys
//! do not have them, and the handshake works without.
//!
//! Overhead: 203 bytes per session (CONNECT 36, ACCEPT 35, START 34 each
//! way, END 32 each way), plus one more CONNECT for each repeat the line
//! needed. SMTP itself adds about 220 bytes per session (greeting, EHLO
//! and its reply, QUIT), about 170 per message (MAIL, RCPT, DATA and their
//! replies) and one byte per message line that starts with a dot.
//! On slow lines, give the handshake room: a relay's `connect_timeout`
//! must exceed [`Timing::handshake_timeout`] for the line's rate.
//!
//! # Pseudo-terminals
//!
//! `socat pty,raw,echo=0,link=/tmp/ttyA pty,raw,echo=0,link=/tmp/ttyB`
//! makes a connected pair to try a line without hardware. A pty has no
//! baud rate (it runs at memory speed), and some versions of the serial
//! library cannot set one on it: when setting the rate fails on a pty, the
//! port is opened without setting it (logged at debug level). When socat
//! is restarted the link paths point to new ptys; the listener reopens the
//! path, the caller opens it afresh for every session.
//!
//! # Other streams
//!
//! The protocol lives in [`session`] and works over any byte stream:
//! [`session::call`] and [`session::answer`] turn a stream into a
//! [`session::Session`] (`AsyncRead + AsyncWrite`), e.g. for a terminal
//! server reached over TCP.

mod error;
pub mod session;
mod settings;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Transport, TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, OwnedMutexGuard};
use tokio_serial::SerialStream;

pub use error::SessionError;
pub use session::Timing;
pub use settings::SerialSettings;
/// The serial library, re-exported for its setting types ([`DataBits`],
/// [`Parity`], [`StopBits`], [`FlowControl`]) and [`SerialStream`].
///
/// [`DataBits`]: tokio_serial::DataBits
/// [`Parity`]: tokio_serial::Parity
/// [`StopBits`]: tokio_serial::StopBits
/// [`FlowControl`]: tokio_serial::FlowControl
pub use tokio_serial;

use session::Session;

/// The link kind reported in [`LinkInfo::kind`].
pub const KIND: &str = "serial";

/// A [`Transport`] for `serial:///path/to/device?baud=N&...` endpoints.
///
/// One value can serve many devices. Within it, connecting to a device
/// that already carries a session waits until that session ends (a line
/// carries one session at a time). A device that a process listens on
/// cannot also be called out on by the same or another process: the port
/// is opened for exclusive use.
#[derive(Debug, Clone, Default)]
pub struct SerialTransport {
    timing: Option<Timing>,
    lines: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

impl SerialTransport {
    /// A transport with handshake timers derived from each endpoint's baud
    /// rate ([`Timing::for_baud`]).
    pub fn new() -> Self {
        SerialTransport::default()
    }

    /// Uses these handshake timers for every endpoint instead. The idle
    /// timeout still comes from the endpoint's `idle=` option.
    #[must_use]
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = Some(timing);
        self
    }

    fn timing_for(&self, settings: &SerialSettings) -> Timing {
        let mut timing = self
            .timing
            .clone()
            .unwrap_or_else(|| Timing::for_baud(settings.baud));
        timing.idle_timeout = settings.idle_timeout;
        timing
    }

    /// The lock that keeps this process to one outgoing session per device.
    fn line_lock(&self, settings: &SerialSettings) -> Arc<tokio::sync::Mutex<()>> {
        let key = std::fs::canonicalize(&settings.path).unwrap_or_else(|_| settings.path.clone());
        let mut lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines.entry(key).or_default().clone()
    }

    /// Listens on `endpoint`; [`Transport::listen`] without the box.
    ///
    /// Opens the device now, so that a missing, busy or wrong device is
    /// reported at once rather than at the first session.
    pub async fn bind(&self, endpoint: &Endpoint) -> Result<SerialListener, TransportError> {
        let settings = SerialSettings::from_endpoint(endpoint)?;
        let mut port = Port::open(&settings)
            .await
            .map_err(|err| TransportError::io(Operation::Listen, endpoint, err))?;
        announce(&mut port, &settings).await;
        tracing::debug!(%endpoint, "serial listening");
        Ok(SerialListener {
            timing: self.timing_for(&settings),
            settings,
            endpoint: endpoint.clone(),
            port: Some(port),
            returned: None,
        })
    }
}

/// Sends RESET on a freshly opened port (best effort: a line that cannot
/// take it fails again at the handshake, where it is handled).
async fn announce(port: &mut Port, settings: &SerialSettings) {
    match tokio::time::timeout(Duration::from_secs(2), session::send_reset(port)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::debug!(device = %settings.path.display(), error = %err, "serial: could not send RESET");
        }
        Err(_) => {
            tracing::debug!(device = %settings.path.display(), "serial: RESET not sent within 2 s");
        }
    }
}

fn link_info(settings: &SerialSettings) -> LinkInfo {
    // Data blocks of 64 KiB must fit the SMTP block timers (3 minutes):
    // slow lines stretch them.
    let scale = 7_300u32.div_ceil(settings.baud.max(1));
    LinkInfo::new(KIND, settings.label())
        .with_local(settings.label())
        // No STARTTLS here: the session layer holds back a trailing ESC
        // (it could start a control line) until more bytes come, so binary
        // TLS data whose flight ends in 0x1B stalls both ends (seen in CI).
        // SMTP text never contains ESC. For TLS on a serial line use
        // x25+serial://, whose framing is transparent to any byte.
        .with_tls_upgrade(false)
        .with_timeout_scale(scale)
}

#[async_trait]
impl Transport for SerialTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let settings = SerialSettings::from_endpoint(endpoint)?;
        let guard = self.line_lock(&settings).lock_owned().await;
        // An earlier session's port may still be closing on a blocking
        // thread (e.g. after a cancelled connect): give it a moment.
        let mut tries = 0;
        let port = loop {
            match Port::open(&settings).await {
                Ok(port) => break port,
                Err(err) if err.kind() == io::ErrorKind::ResourceBusy && tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(TransportError::io(Operation::Connect, endpoint, err)),
            }
        };
        let timing = self.timing_for(&settings);
        let session = session::call(port, &timing)
            .await
            .map_err(|err| TransportError::io(Operation::Connect, endpoint, err.into()))?;
        tracing::debug!(%endpoint, nonce = %session.nonce(), "serial connected");
        Ok(Link::new(
            SerialLink {
                session: Some(session),
                on_close: Some(OnClose::Release(guard)),
            },
            link_info(&settings),
        ))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        Ok(Box::new(self.bind(endpoint).await?))
    }
}

/// Sessions on one serial device, one at a time, from
/// [`SerialTransport::bind`] or [`Transport::listen`].
///
/// [`accept`](Listener::accept) waits until the link of the previous
/// session is closed or dropped, then for the next caller's handshake.
/// When the port fails (unplugged, pty gone), it is reopened, retrying
/// until the device is back; `accept` does not return an error for that.
#[derive(Debug)]
pub struct SerialListener {
    settings: SerialSettings,
    endpoint: Endpoint,
    timing: Timing,
    port: Option<Port>,
    returned: Option<oneshot::Receiver<Option<Port>>>,
}

impl SerialListener {
    /// The device's settings.
    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }

    /// Opens the device again, waiting for it to come back if need be.
    async fn reopen(&self) -> Port {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match Port::open(&self.settings).await {
                Ok(mut port) => {
                    announce(&mut port, &self.settings).await;
                    if warned {
                        tracing::info!(endpoint = %self.endpoint, "serial line back");
                    }
                    return port;
                }
                Err(err) => {
                    if warned {
                        tracing::debug!(endpoint = %self.endpoint, error = %err, "serial device still unavailable");
                    } else {
                        tracing::warn!(endpoint = %self.endpoint, error = %err, "serial device unavailable; retrying until it is back");
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[async_trait]
impl Listener for SerialListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        loop {
            if let Some(returned) = self.returned.as_mut() {
                // Cancel-safe: polling the receiver by reference.
                let port = returned.await.ok().flatten();
                self.returned = None;
                self.port = port;
            }
            let port = match self.port.take() {
                Some(port) => port,
                None => self.reopen().await,
            };
            match session::answer(port, &self.timing).await {
                Ok(session) => {
                    let (tx, rx) = oneshot::channel();
                    self.returned = Some(rx);
                    tracing::debug!(endpoint = %self.endpoint, nonce = %session.nonce(), "serial accepted");
                    return Ok(Link::new(
                        SerialLink {
                            session: Some(session),
                            on_close: Some(OnClose::Return(tx)),
                        },
                        link_info(&self.settings),
                    ));
                }
                Err(err) => {
                    tracing::warn!(endpoint = %self.endpoint, error = %err, "serial line failed while waiting for a caller; reopening");
                }
            }
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
}

/// An open serial port as the session protocol uses it.
///
/// Flushing is a no-op: bytes written to the port are in the kernel's
/// buffer, on their way (the port's own flush waits in `tcdrain`, which
/// would block a runtime thread for seconds on a slow line). Dropping it
/// closes the device on a blocking thread, since closing a tty waits for
/// its output to drain.
#[derive(Debug)]
struct Port(Option<SerialStream>);

impl Port {
    async fn open(settings: &SerialSettings) -> io::Result<Port> {
        settings.open().map(|stream| Port(Some(stream)))
    }

    /// Closes the device and waits until it is closed.
    async fn close(mut self) {
        if let Some(stream) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || drop(stream)).await;
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut SerialStream>> {
        match self.0.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "serial port closed",
            )),
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || drop(stream));
                }
                Err(_) => drop(stream),
            }
        }
    }
}

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What happens to the port when a session's link goes away.
#[derive(Debug)]
enum OnClose {
    /// Listener side: hand the port back for the next session (`None` if
    /// the line failed and must be reopened).
    Return(oneshot::Sender<Option<Port>>),
    /// Caller side: close the port, then let the next caller open it.
    Release(OwnedMutexGuard<()>),
}

/// The stream inside a serial [`Link`]: a session on an open port.
/// Dropping it ends the session (sending END if `shutdown` did not) in a
/// background task.
#[derive(Debug)]
struct SerialLink {
    session: Option<Session<Port>>,
    on_close: Option<OnClose>,
}

impl SerialLink {
    fn session(&mut self) -> io::Result<Pin<&mut Session<Port>>> {
        match self.session.as_mut() {
            Some(session) => Ok(Pin::new(session)),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "serial session closed",
            )),
        }
    }
}

async fn close_session(session: Session<Port>, on_close: Option<OnClose>) {
    let (port, result) = session.finish().await;
    let healthy = match &result {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(error = %err, "serial: line failed during the session");
            false
        }
    };
    match on_close {
        Some(OnClose::Return(tx)) if healthy => {
            let _ = tx.send(Some(port));
        }
        Some(OnClose::Return(tx)) => {
            port.close().await;
            let _ = tx.send(None);
        }
        Some(OnClose::Release(guard)) => {
            port.close().await;
            drop(guard);
        }
        None => port.close().await,
    }
}

impl Drop for SerialLink {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let on_close = self.on_close.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(close_session(session, on_close));
            }
            // No runtime to send END with: the port just closes, and the
            // other end notices through RESET or its timeouts.
            Err(_) => drop((session, on_close)),
        }
    }
}

impl AsyncRead for SerialLink {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().session() {
            Ok(session) => session.poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for SerialLink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().session() {
            Ok(session) => session.poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().session() {
            Ok(session) => session.poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().session() {
            Ok(session) => session.poll_shutdown(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

/// The serial device as a raw byte stream, for adapters that run their own
/// protocol on the line (the X.25 adapter) or simply move bytes (`smtplink
/// linksim`): no CONNECT/ACCEPT handshake, no one-session-at-a-time lock.
///
/// `connect` opens the device (exclusively, with the endpoint's settings);
/// `listen` is not supported: whoever opens a raw line decides on their own
/// protocol who calls whom.
#[derive(Debug, Clone, Default)]
pub struct RawSerialTransport;

impl RawSerialTransport {
    /// The raw transport.
    pub fn new() -> Self {
        RawSerialTransport
    }
}

#[async_trait]
impl Transport for RawSerialTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let settings = SerialSettings::from_endpoint(endpoint)?;
        let port = settings
            .open()
            .map_err(|err| TransportError::io(Operation::Connect, endpoint, err))?;
        Ok(Link::new(port, link_info(&settings)))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        Err(TransportError::unsupported(endpoint, Operation::Listen))
    }
}
