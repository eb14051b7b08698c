//! `exec:COMMAND ARGS...`: a child process's stdin and stdout as a link.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use smtplink_transport::{
    async_trait, Endpoint, Link, LinkInfo, Listener, Operation, Transport, TransportError,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{oneshot, watch};

use crate::argv::split_command_line;

/// The link kind of an `exec:` link.
pub const EXEC_KIND: &str = "exec";

/// How long a child may run on after its link is closed before it is
/// killed, unless [`ExecTransport::with_exit_grace`] says otherwise.
pub const DEFAULT_EXIT_GRACE: Duration = Duration::from_secs(10);

/// How long a read that met end-of-file waits for the child's exit status,
/// to say in the error why the child went away.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);

/// Longest stderr line logged as one event; longer ones are split.
const STDERR_LINE_MAX: u64 = 4096;

/// A [`Transport`] for `exec:COMMAND ARGS...`: connecting runs the command
/// and speaks over its stdin and stdout.
///
/// `exec:ssh gateway smtplink serve --listen stdio:` reaches an smtplink on
/// another machine through ssh; `exec:nc mail.example 25` reaches a TCP port
/// the way a proxy would. The text after `exec:` is split into words by
/// [`split_command_line`](crate::split_command_line) and run directly, with
/// no shell; use `exec:sh -c '...'` where a shell is wanted. (In a relay
/// route, commas separate targets, so a command cannot contain one.)
///
/// * The child's stderr goes to the log (`tracing`, level INFO), one event
///   per line, tagged with the command and its pid.
/// * Shutting the link down closes the child's stdin. Dropping the link
///   closes both pipes; a child still running [`DEFAULT_EXIT_GRACE`] later
///   is killed. Either way a background task waits for it, so no zombie
///   stays behind, and the runtime shutting down kills it too.
/// * A child that exits unsuccessfully while the link is in use turns the
///   end-of-file (or broken pipe) into an error naming its exit status, such
///   as `child process false exited with status 1`: for a relay, a
///   temporary failure, with the reason in the queue.
///
/// Listening is not supported.
#[derive(Debug, Clone)]
pub struct ExecTransport {
    exit_grace: Duration,
}

impl Default for ExecTransport {
    fn default() -> Self {
        ExecTransport {
            exit_grace: DEFAULT_EXIT_GRACE,
        }
    }
}

impl ExecTransport {
    /// A transport with the [`DEFAULT_EXIT_GRACE`].
    pub fn new() -> Self {
        ExecTransport::default()
    }

    /// Kills a child still running `grace` after its link was dropped.
    #[must_use]
    pub fn with_exit_grace(mut self, grace: Duration) -> Self {
        self.exit_grace = grace;
        self
    }
}

#[async_trait]
impl Transport for ExecTransport {
    async fn connect(&self, endpoint: &Endpoint) -> Result<Link, TransportError> {
        let line = endpoint.opaque().ok_or_else(|| {
            TransportError::invalid_endpoint(endpoint, "expected exec:COMMAND ARGS...")
        })?;
        let argv = split_command_line(line)
            .map_err(|err| TransportError::invalid_endpoint(endpoint, err.to_string()))?;
        let Some((program, args)) = argv.split_first() else {
            return Err(TransportError::invalid_endpoint(
                endpoint,
                "no command given",
            ));
        };
        let io_error = |err| TransportError::io(Operation::Connect, endpoint, err);
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                io_error(io::Error::new(
                    err.kind(),
                    format!("cannot run {program}: {err}"),
                ))
            })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Cannot happen with every stream piped; the child is killed on drop.
            return Err(io_error(io::Error::other("the child's pipes are missing")));
        };
        let name: Arc<str> = Arc::from(program.as_str());
        tokio::spawn(forward_stderr(stderr, name.clone(), pid));
        let (status_tx, status_rx) = watch::channel(None);
        let (closed_tx, closed_rx) = oneshot::channel();
        tokio::spawn(reap(
            child,
            closed_rx,
            status_tx,
            self.exit_grace,
            name.clone(),
            pid,
        ));
        tracing::debug!(%endpoint, ?pid, "exec started");
        let local = pid.map_or_else(|| "exec".to_owned(), |pid| format!("pid {pid}"));
        let stream = ExecStream {
            stdin: Some(stdin),
            stdout,
            exit: ExitWatch {
                status: status_rx,
                waiting: None,
                known: None,
            },
            name,
            _closed: closed_tx,
        };
        Ok(Link::new(
            stream,
            LinkInfo::new(EXEC_KIND, line.to_owned())
                .with_local(local)
                .with_tls_upgrade(true),
        ))
    }

    async fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>, TransportError> {
        Err(TransportError::unsupported(endpoint, Operation::Listen))
    }
}

/// "child process false exited with status 1", or "... was killed by
/// signal 9".
fn describe_exit(program: &str, status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("child process {program} exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("child process {program} was killed by signal {signal}");
        }
    }
    format!("child process {program} ended: {status}")
}

/// Logs each line the child writes to stderr.
async fn forward_stderr(stderr: ChildStderr, name: Arc<str>, pid: Option<u32>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(STDERR_LINE_MAX)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // No control characters in the log (a child's colours, or
                // a forged log line).
                let text: String = String::from_utf8_lossy(&line)
                    .trim_end()
                    .chars()
                    .map(|c| {
                        if c.is_control() && c != '\t' {
                            '\u{fffd}'
                        } else {
                            c
                        }
                    })
                    .collect();
                if !text.is_empty() {
                    tracing::info!(command = %name, pid, "stderr: {text}");
                }
            }
        }
    }
}

/// Waits for the child and publishes its exit status. Once the link is
/// dropped, the child has `grace` to exit before it is killed.
async fn reap(
    mut child: Child,
    closed: oneshot::Receiver<()>,
    status_tx: watch::Sender<Option<ExitStatus>>,
    grace: Duration,
    name: Arc<str>,
    pid: Option<u32>,
) {
    let early = tokio::select! {
        status = child.wait() => Some(status),
        _ = closed => None,
    };
    let status = match early {
        Some(status) => status,
        None => match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(command = %name, pid, ?grace, "child still running after its link closed; killing it");
                if let Err(err) = child.start_kill() {
                    tracing::warn!(command = %name, pid, error = %err, "cannot kill the child");
                }
                child.wait().await
            }
        },
    };
    match status {
        Ok(status) => {
            if status.success() {
                tracing::debug!(command = %name, pid, "child exited");
            } else {
                tracing::warn!(command = %name, pid, "{}", describe_exit(&name, status));
            }
            status_tx.send_replace(Some(status));
        }
        Err(err) => tracing::warn!(command = %name, pid, error = %err, "cannot wait for the child"),
    }
}

type StatusFuture = Pin<Box<dyn Future<Output = Option<ExitStatus>> + Send>>;

/// The child's exit status, as far as a link needs it.
struct ExitWatch {
    status: watch::Receiver<Option<ExitStatus>>,
    waiting: Option<StatusFuture>,
    /// The answer, once there is one (`None` inside: not known in time).
    known: Option<Option<ExitStatus>>,
}

impl ExitWatch {
    /// The exit status, waiting up to [`EXIT_STATUS_WAIT`] for the child to
    /// exit; `None` when it did not (or could not be waited for).
    fn poll_status(&mut self, cx: &mut Context<'_>) -> Poll<Option<ExitStatus>> {
        if let Some(known) = self.known {
            return Poll::Ready(known);
        }
        let mut rx = self.status.clone();
        let waiting = self.waiting.get_or_insert_with(|| {
            Box::pin(async move {
                let changed = tokio::time::timeout(EXIT_STATUS_WAIT, rx.wait_for(Option::is_some));
                match changed.await {
                    Ok(Ok(status)) => *status,
                    _ => None,
                }
            })
        });
        let status = ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        self.known = Some(status);
        Poll::Ready(status)
    }
}

/// The child's stdin and stdout as one stream.
struct ExecStream {
    /// `None` after shutdown: dropping it closes the child's stdin.
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    exit: ExitWatch,
    name: Arc<str>,
    /// Dropped with the stream: tells the reaper the link is gone.
    _closed: oneshot::Sender<()>,
}

impl ExecStream {
    /// `err`, or an error naming the child's exit status when it failed.
    fn poll_explain(
        &mut self,
        cx: &mut Context<'_>,
        kind: io::ErrorKind,
        err: Option<io::Error>,
    ) -> Poll<Option<io::Error>> {
        let status = ready!(self.exit.poll_status(cx));
        Poll::Ready(match status {
            Some(status) if !status.success() => {
                Some(io::Error::new(kind, describe_exit(&self.name, status)))
            }
            _ => err,
        })
    }
}

impl AsyncRead for ExecStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        ready!(Pin::new(&mut self.stdout).poll_read(cx, buf))?;
        if buf.filled().len() > before || !wanted {
            return Poll::Ready(Ok(()));
        }
        // End of file: an error if the child failed, else a clean end.
        match ready!(self.poll_explain(cx, io::ErrorKind::ConnectionAborted, None)) {
            Some(err) => Poll::Ready(Err(err)),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ExecStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        };
        match ready!(Pin::new(stdin).poll_write(cx, data)) {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                let explained = ready!(self.poll_explain(cx, io::ErrorKind::BrokenPipe, Some(err)));
                Poll::Ready(Err(explained.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the child closed its stdin")
                })))
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(stdin) = self.stdin.as_mut() {
            ready!(Pin::new(stdin).poll_flush(cx))?;
        }
        // Closing our end is what makes the child read end-of-file.
        self.stdin = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ep(text: &str) -> Endpoint {
        Endpoint::parse(text).unwrap()
    }

    /// Whether a process with this pid still exists (a zombie counts).
    fn exists(pid: &str) -> bool {
        std::process::Command::new("kill")
            .args(["-0", pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    async fn wait_gone(pid: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while exists(pid) {
            assert!(Instant::now() < deadline, "child {pid} was not reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn cat_echoes_and_is_reaped() {
        let mut link = ExecTransport::new().connect(&ep("exec:cat")).await.unwrap();
        assert_eq!(link.info().kind, "exec");
        assert_eq!(link.info().peer, "cat");
        let pid = link.info().local.strip_prefix("pid ").unwrap().to_owned();

        link.write_all(b"EHLO x\r\n").await.unwrap();
        link.flush().await.unwrap();
        let mut got = [0u8; 8];
        link.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"EHLO x\r\n");

        link.write_all(b"QUIT\r\n").await.unwrap();
        link.shutdown().await.unwrap();
        let mut rest = Vec::new();
        link.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"QUIT\r\n", "cat exits 0: a clean end of file");
        drop(link);
        wait_gone(&pid).await;
    }

    #[tokio::test]
    async fn arguments_are_split_and_quoted() {
        let mut link = ExecTransport::new()
            .connect(&ep(r#"exec:printf "%s|%s" 'a b' "c""#))
            .await
            .unwrap();
        let mut out = String::new();
        link.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "a b|c");
    }

    #[tokio::test]
    async fn a_child_that_exits_at_once_is_an_error_with_its_status() {
        let mut link = ExecTransport::new()
            .connect(&ep("exec:false"))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let err = link.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(err.to_string(), "child process false exited with status 1");
    }

    #[tokio::test]
    async fn writing_to_a_dead_child_names_its_status() {
        let mut link = ExecTransport::new()
            .connect(&ep("exec:sh -c 'echo going away >&2; exit 3'"))
            .await
            .unwrap();
        // Wait until it is gone, so the write meets a closed pipe.
        let mut buf = [0u8; 8];
        let err = link.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().ends_with("exited with status 3"), "{err}");
        let chunk = vec![b'x'; 256 * 1024];
        let err = link.write_all(&chunk).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(err.to_string(), "child process sh exited with status 3");
    }

    #[tokio::test]
    async fn the_childs_stderr_goes_to_the_log() {
        #[derive(Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
        impl io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // The test runtime has one thread, so the spawned tasks log here.
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut link = ExecTransport::new()
            .connect(&ep(
                r#"exec:sh -c 'printf "first line\n\033[31mred\n" >&2'"#,
            ))
            .await
            .unwrap();
        let mut rest = Vec::new();
        link.read_to_end(&mut rest).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
            if log.contains("red") {
                assert!(log.contains("stderr: first line command=sh"), "{log}");
                assert!(log.contains("stderr: \u{fffd}[31mred"), "{log}");
                break;
            }
            assert!(Instant::now() < deadline, "not logged: {log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_killed_child_names_the_signal() {
        let mut link = ExecTransport::new()
            .connect(&ep("exec:sh -c 'kill -9 $$'"))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let err = link.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "child process sh was killed by signal 9");
    }

    #[tokio::test]
    async fn a_child_that_ignores_its_closed_stdin_is_killed_after_the_grace() {
        let transport = ExecTransport::new().with_exit_grace(Duration::from_millis(200));
        let link = transport.connect(&ep("exec:sleep 30")).await.unwrap();
        let pid = link.info().local.strip_prefix("pid ").unwrap().to_owned();
        assert!(exists(&pid));
        let started = Instant::now();
        drop(link);
        wait_gone(&pid).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_program_says_so() {
        let err = ExecTransport::new()
            .connect(&ep("exec:/nonexistent/smtplink-test-program --flag"))
            .await
            .unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
        let text = err.to_string();
        assert!(
            text.starts_with("connect exec:/nonexistent/smtplink-test-program --flag: cannot run /nonexistent/smtplink-test-program: "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_command_lines_are_invalid_endpoints() {
        let transport = ExecTransport::new();
        for (text, reason) in [
            ("exec:", "no command given"),
            ("exec:   ", "no command given"),
            ("exec:ssh \"gw", "unterminated \" quote"),
            ("exec://host", "expected exec:COMMAND"),
        ] {
            let err = transport.connect(&ep(text)).await.unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidEndpoint { .. }),
                "{text}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
        let Err(err) = transport.listen(&ep("exec:cat")).await else {
            panic!("exec: cannot listen")
        };
        assert!(matches!(err, TransportError::Unsupported { .. }), "{err:?}");
    }
}
