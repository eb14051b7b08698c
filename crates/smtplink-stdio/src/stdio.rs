//! `stdio:`: one SMTP session on the process's own stdin and stdout.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Transport, TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// The link kind (and peer label) of a `stdio:` link.
pub const STDIO_KIND: &str = "stdio";

/// Bytes read from stdin at a time.
const CHUNK: usize = 16 * 1024;

/// Set once a listener has claimed this process's stdin and stdout.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// A [`Transport`] for `stdio:`: listening hands out exactly one link, over
/// this process's standard input and output.
///
/// This is how a program that someone else connected runs one SMTP session:
/// inetd or systemd socket activation (`Accept=yes`), an ssh forced command,
/// a parent process in the style of `sendmail -bs`, or the `exec:` transport
/// of another smtplink. After that one link the listener is
/// [exhausted](TransportError::Exhausted), so a server whose only listener
/// is `stdio:` ends when the session does.
///
/// Only one `stdio:` listener can exist in a process; a second `listen`
/// fails. Connecting is not supported: there is nothing to call.
///
/// Everything written to stdout belongs to the SMTP session, so a program
/// using this transport must log to stderr (smtplink does).
#[derive(Debug, Clone, Default)]
pub struct StdioTransport;

impl StdioTransport {
    /// The transport; it holds no state of its own.
    pub fn new() -> Self {
        StdioTransport
    }
}

#[async_trait]
impl Transport for StdioTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        Err(TransportError::unsupported(endpoint, Operation::Connect))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        check_endpoint(endpoint)?;
        if CLAIMED.swap(true, Ordering::SeqCst) {
            return Err(TransportError::io(
                Operation::Listen,
                endpoint,
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "stdin and stdout already belong to another stdio: listener",
                ),
            ));
        }
        tracing::debug!(%endpoint, "stdio listening");
        Ok(Box::new(StdioListener {
            streams: Some(Streams::Process),
            endpoint: endpoint.clone(),
        }))
    }
}

/// Accepts `stdio:` and nothing else: no host, path or options.
fn check_endpoint(endpoint: &Endpoint) -> Result<(), TransportError> {
    match endpoint.opaque() {
        Some("") => Ok(()),
        _ => Err(TransportError::invalid_endpoint(
            endpoint,
            "expected stdio: with nothing after it",
        )),
    }
}

/// What the one link is made of.
enum Streams {
    /// This process's stdin and stdout.
    Process,
    /// Handles given by a test.
    #[cfg(test)]
    Given(Box<dyn Read + Send>, Box<dyn AsyncWrite + Send + Unpin>),
}

/// The listener from [`StdioTransport`]: the first
/// [`accept`](Listener::accept) returns the link over stdin and stdout, every
/// later one fails with [`TransportError::Exhausted`].
pub struct StdioListener {
    streams: Option<Streams>,
    endpoint: Endpoint,
}

impl std::fmt::Debug for StdioListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioListener")
            .field("accepted", &self.streams.is_none())
            .finish()
    }
}

impl StdioListener {
    #[cfg(test)]
    fn with_streams(
        reader: impl Read + Send + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        StdioListener {
            streams: Some(Streams::Given(Box::new(reader), Box::new(writer))),
            endpoint: Endpoint::parse("stdio:").unwrap_or_else(|_| unreachable!()),
        }
    }
}

#[async_trait]
impl Listener for StdioListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        let Some(streams) = self.streams.take() else {
            return Err(TransportError::exhausted(&self.endpoint));
        };
        let io_error = |err| TransportError::io(Operation::Accept, &self.endpoint, err);
        let stream = match streams {
            Streams::Process => StdioStream {
                reader: ThreadReader::spawn(io::stdin()).map_err(io_error)?,
                writer: Box::new(tokio::io::stdout()),
            },
            #[cfg(test)]
            Streams::Given(reader, writer) => StdioStream {
                reader: ThreadReader::spawn(reader).map_err(io_error)?,
                writer,
            },
        };
        tracing::debug!("stdio session starts");
        Ok(Link::new(
            stream,
            LinkInfo::new(STDIO_KIND, STDIO_KIND)
                .with_local(STDIO_KIND)
                .with_tls_upgrade(true),
        ))
    }

    fn local_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
}

/// Standard input and output as one stream.
///
/// Shutting it down flushes stdout but cannot close it (the descriptor
/// belongs to the process); the peer sees end-of-file when the process
/// exits, which for `smtplink serve --listen stdio:` is right after the
/// session.
struct StdioStream {
    reader: ThreadReader,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
}

impl AsyncRead for StdioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for StdioStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// Reads a blocking reader on a thread of its own.
///
/// Not `tokio::io::stdin`: that one reads on tokio's blocking pool, and a
/// read in progress there cannot be cancelled, so the runtime could not shut
/// down (and the process not exit) until the peer sent another byte or
/// closed its end. A plain thread does not hold up the exit.
struct ThreadReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ThreadReader {
    fn spawn(mut reader: impl Read + Send + 'static) -> io::Result<Self> {
        let (tx, chunks) = mpsc::channel(2);
        std::thread::Builder::new()
            .name("smtplink-stdin".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; CHUNK];
                let item = match reader.read(&mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(buf)
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => Err(err),
                };
                let last = !matches!(&item, Ok(bytes) if !bytes.is_empty());
                // Fails only when the link was dropped: nobody reads any more.
                if tx.blocking_send(item).is_err() || last {
                    break;
                }
            })?;
        Ok(ThreadReader {
            chunks,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl AsyncRead for ThreadReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.remaining().min(self.chunk.len() - self.pos);
                let start = self.pos;
                buf.put_slice(&self.chunk[start..start + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.chunks.poll_recv(cx)) {
                Some(Ok(chunk)) if !chunk.is_empty() => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(err)) => {
                    self.done = true;
                    return Poll::Ready(Err(err));
                }
                Some(Ok(_)) | None => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn one_link_then_exhausted() {
        let input: &[u8] = b"EHLO client.test\r\nQUIT\r\n";
        let (writer, mut peer) = tokio::io::duplex(1024);
        let mut listener = StdioListener::with_streams(input, writer);
        assert_eq!(listener.local_endpoint().to_string(), "stdio:");

        let mut link = listener.accept().await.unwrap();
        assert_eq!(link.info().kind, "stdio");
        assert_eq!(link.info().peer, "stdio");
        assert!(link.info().can_upgrade_tls);

        let mut got = Vec::new();
        link.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, input);
        link.write_all(b"221 bye\r\n").await.unwrap();
        link.shutdown().await.unwrap();
        drop(link);
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"221 bye\r\n");

        let err = listener.accept().await.unwrap_err();
        assert!(matches!(err, TransportError::Exhausted { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert!(listener.accept().await.is_err(), "stays exhausted");
    }

    #[tokio::test]
    async fn reads_arrive_in_pieces_larger_than_the_buffer() {
        let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (writer, _peer) = tokio::io::duplex(16);
        let mut listener = StdioListener::with_streams(std::io::Cursor::new(input.clone()), writer);
        let mut link = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        loop {
            let n = link.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, input);
    }

    #[tokio::test]
    async fn a_read_error_reaches_the_link() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let (writer, _peer) = tokio::io::duplex(16);
        let mut listener = StdioListener::with_streams(Broken, writer);
        let mut link = listener.accept().await.unwrap();
        let mut buf = [0u8; 8];
        let err = link.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(link.read(&mut buf).await.unwrap(), 0, "then end of file");
    }

    #[tokio::test]
    async fn only_stdio_colon_is_accepted() {
        let transport = StdioTransport::new();
        for text in ["stdio:x", "stdio://host"] {
            let ep = Endpoint::parse(text).unwrap();
            let Err(err) = transport.listen(&ep).await else {
                panic!("{text}: listening succeeded")
            };
            assert!(
                matches!(err, TransportError::InvalidEndpoint { .. }),
                "{text}: {err:?}"
            );
        }
        let ep = Endpoint::parse("stdio:").unwrap();
        let err = transport.connect(&ep).await.unwrap_err();
        assert!(matches!(err, TransportError::Unsupported { .. }), "{err:?}");
    }

    /// The only test that claims the test process's stdio (it never
    /// accepts, so nothing is read from it).
    #[tokio::test]
    async fn a_second_stdio_listener_is_refused() {
        let transport = StdioTransport::new();
        let ep = Endpoint::parse("stdio:").unwrap();
        let first = transport.listen(&ep).await.unwrap();
        assert_eq!(first.local_endpoint().to_string(), "stdio:");
        let Err(err) = transport.listen(&ep).await else {
            panic!("a second listener was allowed")
        };
        assert_eq!(err.io_kind(), Some(io::ErrorKind::ResourceBusy));
        assert!(err.to_string().contains("already belong"), "{err}");
    }
}
