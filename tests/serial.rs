//! Mail over a serial line: two `smtplink serve` nodes joined by a socat
//! pseudo-terminal pair. A takes mail over TCP and relays it over
//! `serial://` to B, which stores it in its Maildirs.
//!
//! A missing socat or python3 fails these tests when `CI=true` and skips
//! them otherwise. The protocol overhead measurement at the end is
//! `#[ignore]`d; run it with
//! `cargo test --test serial -- --ignored --nocapture overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A socat pty pair at `dir/ttyA` and `dir/ttyB`; killed on drop.
struct Line {
    socat: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Line {
    /// Starts socat, or returns `None` (after saying why) when it is missing.
    fn start() -> Option<Line> {
        let socat = require_tool("socat")?;
        let mut line = Line {
            socat,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        line.up();
        Some(line)
    }

    fn path(&self, end: &str) -> PathBuf {
        self.dir.path().join(end)
    }

    /// `serial://` URL of one end at 115200 baud.
    fn url(&self, end: &str) -> String {
        format!("serial://{}?baud=115200", self.path(end).display())
    }

    /// Connects the two ends (new ptys behind the same link paths).
    fn up(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(&self.socat)
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.path("ttyA").display()
            ))
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.path("ttyB").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for("socat's ptys", Duration::from_secs(10), || {
            self.path("ttyA").exists() && self.path("ttyB").exists()
        });
    }

    /// Cuts the line: both ends' ptys go away.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // socat removes its links on the way out.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.path("ttyA").exists() || self.path("ttyB").exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.down();
    }
}

/// Files in `new/` (delivered) and in `tmp/` (being written) of every
/// mailbox under `maildir`.
fn maildir_files(maildir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let files = all_files(maildir);
    let in_dir = |name: &str| -> Vec<PathBuf> {
        files
            .iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with(name)))
            .cloned()
            .collect()
    };
    (in_dir("new"), in_dir("tmp"))
}

/// B: `smtplink serve` listening on the line's B end, delivering locally.
fn serve_b(line: &Line) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = smtplink();
    cmd.args([
        "serve",
        "--listen",
        &line.url("ttyB"),
        "--hostname",
        "b.test",
    ])
    .arg("--maildir")
    .arg(dir.path().join("maildir"));
    Serve::spawn_until(cmd, dir, "endpoint=serial://")
}

/// Checks every message reached each of its recipients at B exactly once,
/// byte-identical apart from the trace fields.
fn assert_all_delivered(b: &Serve, messages: &[(Vec<u8>, Vec<String>)]) {
    for (i, (body, to)) in messages.iter().enumerate() {
        for rcpt in to {
            let copies = delivered(&b.maildir(), rcpt)
                .into_iter()
                .filter(|f| strip_trace(&std::fs::read(f).unwrap()) == body.as_slice())
                .count();
            assert_eq!(copies, 1, "message {i} for {rcpt} at B");
        }
    }
    let expected: usize = messages.iter().map(|(_, to)| to.len()).sum();
    let (new, _) = maildir_files(&b.maildir());
    assert_eq!(
        new.len(),
        expected,
        "nothing else (partial, duplicate) at B"
    );
}

/// A routes example.net over the serial line to B: 20 messages of mixed
/// sizes (up to 256 KiB, 8-bit, dot lines) all arrive byte-identical apart
/// from the trace fields, and A's spool empties.
#[test]
fn two_nodes_over_a_serial_line() {
    if require_tool("python3").is_none() {
        return;
    }
    let Some(line) = Line::start() else {
        return;
    };
    let started = Instant::now();
    let b = serve_b(&line);
    let route = format!("example.net={}", line.url("ttyA"));
    let a = Serve::start_named("a.test", &["--route", &route]);
    let work = tempfile::tempdir().unwrap();
    let sizes = [300, 4_000, 40_000, 150_000, 256 * 1024];
    let messages: Vec<(Vec<u8>, Vec<String>)> = (0..20)
        .map(|i| {
            let to = (0..1 + i % 2)
                .map(|r| format!("user{}@example.net", (i + r) % 5))
                .collect();
            (message("serial", i, sizes[i % sizes.len()]), to)
        })
        .collect();
    smtplib_batch(a.port, work.path(), &messages);
    let expected: usize = messages.iter().map(|(_, to)| to.len()).sum();
    wait_for("every copy at B", Duration::from_secs(60), || {
        maildir_files(&b.maildir()).0.len() >= expected
    });
    assert_all_delivered(&b, &messages);
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&a.spool())
    });
    let sessions = b
        .log
        .try_iter()
        .filter(|l| l.contains("session opened") && l.contains("serial"))
        .count();
    assert!(sessions >= 1, "B saw no serial session");
    eprintln!(
        "two_nodes_over_a_serial_line: {expected} copies in {:?}",
        started.elapsed()
    );
}

/// The line is cut (socat killed) while a large message is crossing and
/// restored a moment later: B keeps nothing partial, A retries, and every
/// message arrives once.
#[test]
fn line_cut_and_restored_mid_transfer() {
    if require_tool("python3").is_none() {
        return;
    }
    let Some(mut line) = Line::start() else {
        return;
    };
    let started = Instant::now();
    let b = serve_b(&line);
    let a = Serve::start_with_config(
        "a.test",
        Some("[relay]\nfirst_retry = 1\nmax_retry_interval = 1\nconnect_timeout = 10\n"),
        &["--route", &format!("example.net={}", line.url("ttyA"))],
    );
    // A large message first (it takes a while to cross), then small ones.
    let mut messages = vec![(
        message("serial", 0, 16 * 1024 * 1024),
        vec!["big@example.net".into()],
    )];
    messages.extend((1..4).map(|i| {
        (
            message("serial", i, 3_000),
            vec![format!("small{i}@example.net")],
        )
    }));
    let work = tempfile::tempdir().unwrap();
    smtplib_batch(a.port, work.path(), &messages[..1]);
    // Cut the line as soon as B has started writing the big message.
    wait_for(
        "the big message to start crossing",
        Duration::from_secs(30),
        || {
            let (_, tmp) = maildir_files(&b.maildir());
            tmp.iter()
                .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
        },
    );
    line.down();
    let cut_at = Instant::now();
    let (new, _) = maildir_files(&b.maildir());
    assert!(
        new.is_empty(),
        "the big message was complete before the cut"
    );
    // Mail queued while the line is down goes too, once it is back.
    smtplib_batch(a.port, work.path(), &messages[1..]);
    std::thread::sleep(Duration::from_millis(1500));
    let (new, _) = maildir_files(&b.maildir());
    assert!(new.is_empty(), "a partial message was delivered: {new:?}");
    line.up();
    wait_for("every message at B", Duration::from_secs(45), || {
        maildir_files(&b.maildir()).0.len() >= messages.len()
    });
    assert_all_delivered(&b, &messages);
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&a.spool())
    });
    wait_for("B's tmp/ to be clean", Duration::from_secs(5), || {
        maildir_files(&b.maildir()).1.is_empty()
    });
    let failed = b
        .log
        .try_iter()
        .filter(|l| l.contains("session ended") && l.contains("serial"))
        .count();
    assert!(failed >= 1, "B never saw the cut session fail");
    eprintln!(
        "line_cut_and_restored_mid_transfer: {:?} in all, {:?} after the cut",
        started.elapsed(),
        cut_at.elapsed()
    );
}

/// Bytes that cross the line per byte of message: handshake, SMTP
/// commands and replies, dot-stuffing and end markers all counted. Our
/// SMTP client and server talk over a socat pty pair through the session
/// protocol, with every byte written to either end counted.
///
/// `cargo test --test serial -- --ignored --nocapture overhead`
#[test]
#[ignore = "a measurement, not a test: run it by name"]
fn overhead() {
    let Some(line) = Line::start() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("text    message  in session     message bytes  line bytes  per message byte");
    for dotted in [false, true] {
        for (size, count) in [(1024, 1), (1 << 20, 1), (1024, 10), (1 << 20, 10)] {
            let bodies: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    if dotted {
                        message("serial", i, size)
                    } else {
                        plain_message(i, size)
                    }
                })
                .collect();
            let (payload, on_line) = runtime.block_on(measure::one_session(&line, &bodies));
            println!(
                "{:<7} {:<8} {:<14} {payload:>13} {on_line:>11}  {:.4}",
                if dotted { "dotted" } else { "plain" },
                if size == 1024 { "1 KiB" } else { "1 MiB" },
                format!("{count} message{}", if count == 1 { "" } else { "s" }),
                on_line as f64 / payload as f64
            );
        }
    }
    println!(
        "plain: 76-character lines, none starting with a dot; dotted: the test \
         generator's 8-bit lines, half of them starting with a dot (each costs \
         one more byte). The session framing is 203 bytes per session."
    );
}

/// A message of `size` bytes (or a little more) of 76-character lines of
/// plain text, none starting with a dot.
fn plain_message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!("From: a@example.org\r\nTo: b@example.net\r\nSubject: plain {i}\r\n\r\n")
        .into_bytes();
    let mut n = 0u32;
    while m.len() < size {
        n += 1;
        m.extend_from_slice(
            format!("{n:>8} the quick brown fox jumps over the lazy dog, again and again\r\n")
                .as_bytes(),
        );
    }
    m
}

mod measure {
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use async_trait::async_trait;
    use bytes::Bytes;
    use smtplink_driver::{
        serve_link, Backend, ClientSettings, ServerSettings, SessionHandler, SessionInfo, Shutdown,
        SmtpClient,
    };
    use smtplink_engine::{Envelope, RecipientOutcome, Reply};
    use smtplink_serial::{session, SerialSettings, Timing};
    use smtplink_transport::{Link, LinkInfo};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::Line;

    /// Counts the bytes written through it.
    struct Counting<S> {
        inner: S,
        written: Arc<AtomicU64>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = polled {
                self.written.fetch_add(n as u64, Ordering::Relaxed);
            }
            polled
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Takes every message and forgets it.
    struct Sink;

    #[async_trait]
    impl Backend for Sink {
        async fn open(&self, _info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
            Ok(Box::new(Sink))
        }
    }

    #[async_trait]
    impl SessionHandler for Sink {
        async fn data_chunk(&mut self, _chunk: Bytes) -> Result<(), Reply> {
            Ok(())
        }

        async fn data_end(&mut self, _info: &SessionInfo) -> Result<String, Reply> {
            Ok("ok".into())
        }
    }

    fn open(
        line: &Line,
        end: &str,
        written: &Arc<AtomicU64>,
    ) -> Counting<smtplink_serial::tokio_serial::SerialStream> {
        let settings = SerialSettings::from_endpoint(&line.url(end).parse().unwrap()).unwrap();
        Counting {
            inner: settings.open().unwrap(),
            written: written.clone(),
        }
    }

    /// One session carrying `bodies`: returns the message bytes and the
    /// bytes written to the line by both ends.
    pub async fn one_session(line: &Line, bodies: &[Vec<u8>]) -> (u64, u64) {
        let written = Arc::new(AtomicU64::new(0));
        let timing = Timing::default();
        let (caller, listener) = tokio::join!(
            session::call(open(line, "ttyA", &written), &timing),
            session::answer(open(line, "ttyB", &written), &timing)
        );
        let client_link = Link::new(caller.unwrap(), LinkInfo::new("serial", "ttyB"));
        let server_link = Link::new(listener.unwrap(), LinkInfo::new("serial", "ttyA"));
        let server = tokio::spawn(serve_link(
            server_link,
            Arc::new(ServerSettings::default()),
            Arc::new(Sink),
            Shutdown::new(),
        ));
        let mut client = SmtpClient::handshake(client_link, ClientSettings::default())
            .await
            .unwrap();
        let mut payload = 0;
        for body in bodies {
            payload += body.len() as u64;
            let envelope = Envelope::parse("a@example.org", &["b@example.net"]).unwrap();
            let report = client.send(envelope, body).await.unwrap();
            assert!(report
                .recipients
                .iter()
                .all(|(_, o)| matches!(o, RecipientOutcome::Accepted(_))));
        }
        client.quit().await.unwrap();
        server.await.unwrap().unwrap();
        (payload, written.load(Ordering::Relaxed))
    }
}
