//! Our client against our server over in-memory pipes: whole sessions,
//! pipelined batches, refusals, and a link cut mid-DATA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_driver::{
    serve_link, Backend, ClientSettings, ServerSettings, SessionHandler, SessionInfo, Shutdown,
    SmtpClient,
};
use smtplink_engine::{
    ClientConfig, EnhancedCode, Envelope, ForwardPath, RcptParams, RecipientOutcome, Reply,
    ReplyCode,
};
use smtplink_transport::Link;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test backend saw.
#[derive(Default, Debug)]
struct Log {
    stored: Vec<(Vec<String>, Vec<u8>)>,
    aborted: usize,
}

/// Stores messages in memory; refuses recipients whose local part starts
/// with "no" (5xx) or "later" (4xx).
struct MemoryBackend(Arc<Mutex<Log>>);

struct MemorySession {
    log: Arc<Mutex<Log>>,
    rcpts: Vec<String>,
    body: Vec<u8>,
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn open(&self, _: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        Ok(Box::new(MemorySession {
            log: self.0.clone(),
            rcpts: vec![],
            body: vec![],
        }))
    }
}

#[async_trait]
impl SessionHandler for MemorySession {
    async fn rcpt(
        &mut self,
        _: &SessionInfo,
        to: &ForwardPath,
        _: &RcptParams,
    ) -> Result<(), Reply> {
        let address = to.to_string();
        if address.starts_with("no") {
            return Err(Reply::new(
                ReplyCode::MAILBOX_UNAVAILABLE,
                EnhancedCode::new(5, 1, 1),
                "No such user",
            ));
        }
        if address.starts_with("later") {
            return Err(Reply::new(
                ReplyCode::new(450).unwrap(),
                EnhancedCode::new(4, 2, 1),
                "Try later",
            ));
        }
        self.rcpts.push(address);
        Ok(())
    }
    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        self.body.extend_from_slice(&chunk);
        Ok(())
    }
    async fn data_end(&mut self, _: &SessionInfo) -> Result<String, Reply> {
        let rcpts = std::mem::take(&mut self.rcpts);
        let body = std::mem::take(&mut self.body);
        self.log.lock().unwrap().stored.push((rcpts, body));
        Ok("stored".into())
    }
    async fn abort(&mut self) {
        self.body.clear();
        self.log.lock().unwrap().aborted += 1;
    }
    async fn reset(&mut self) {
        self.rcpts.clear();
        self.body.clear();
    }
}

fn start_server(link: Link, pipelining: bool) -> (Arc<Mutex<Log>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut settings = ServerSettings::default();
    settings.engine.hostname = "mx.test".into();
    settings.engine.pipelining = pipelining;
    let backend = Arc::new(MemoryBackend(log.clone()));
    let task = tokio::spawn(async move {
        let _ = serve_link(link, Arc::new(settings), backend, Shutdown::new()).await;
    });
    (log, task)
}

fn client_settings() -> ClientSettings {
    ClientSettings {
        engine: ClientConfig {
            hello_name: "client.test".into(),
            pipelining: true,
            tls: smtplink_engine::TlsPolicy::None,
        },
        ..ClientSettings::default()
    }
}

#[tokio::test]
async fn client_sends_two_messages_over_one_session() {
    for pipelining in [true, false] {
        let (a, b) = smtplink_mem::pipe(4096);
        let (log, server) = start_server(b, pipelining);
        let mut client = SmtpClient::handshake(a, client_settings()).await.unwrap();
        assert_eq!(client.capabilities().pipelining, pipelining);
        let body1 = b"Subject: one\r\n\r\n.dot\r\n..two\r\n".to_vec();
        let body2 = b"Subject: two\r\n\r\n\xc3\xa9t\xc3\xa9\r\n".to_vec();
        let env = Envelope::parse("a@example.org", &["b@example.net", "c@example.net"]).unwrap();
        let report = client.send(env, &body1).await.unwrap();
        assert!(report.all_accepted(), "{report:?}");
        let env = Envelope::parse("", &["d@example.net"]).unwrap();
        assert!(client.send(env, &body2).await.unwrap().all_accepted());
        client.quit().await.unwrap();
        server.await.unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.stored.len(), 2);
        assert_eq!(log.stored[0].0, ["b@example.net", "c@example.net"]);
        assert_eq!(log.stored[0].1, body1);
        assert_eq!(log.stored[1].1, body2);
    }
}

#[tokio::test]
async fn per_recipient_outcomes_in_a_pipelined_batch() {
    let (a, b) = smtplink_mem::pipe(4096);
    let (log, _server) = start_server(b, true);
    let mut client = SmtpClient::handshake(a, client_settings()).await.unwrap();
    let env = Envelope::parse(
        "a@example.org",
        &[
            "ok1@example.net",
            "nobody@example.net",
            "later@example.net",
            "ok2@example.net",
        ],
    )
    .unwrap();
    let report = client
        .send(env, b"Subject: mixed\r\n\r\nhi\r\n")
        .await
        .unwrap();
    let kinds: Vec<&str> = report
        .recipients
        .iter()
        .map(|(_, o)| match o {
            RecipientOutcome::Accepted(_) => "accepted",
            RecipientOutcome::Transient(_) => "transient",
            RecipientOutcome::Permanent(_) => "permanent",
        })
        .collect();
    assert_eq!(kinds, ["accepted", "permanent", "transient", "accepted"]);
    assert_eq!(report.recipients[1].1.reply().code().get(), 550);
    // Every recipient refused: nothing is stored, the session stays usable.
    let env = Envelope::parse("a@example.org", &["no1@example.net", "no2@example.net"]).unwrap();
    let report = client
        .send(env, b"Subject: none\r\n\r\nhi\r\n")
        .await
        .unwrap();
    assert!(report
        .recipients
        .iter()
        .all(|(_, o)| matches!(o, RecipientOutcome::Permanent(_))));
    client.quit().await.unwrap();
    assert_eq!(log.lock().unwrap().stored.len(), 1);
}

/// A pipelined batch written in one piece gets its replies in order, in
/// as few writes as the server can manage (RFC 2920 3.2).
#[tokio::test]
async fn raw_pipelined_batch_gets_ordered_replies() {
    let (mut a, b) = smtplink_mem::pipe(1 << 16);
    let (log, server) = start_server(b, true);
    a.write_all(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<nobody@example.net>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n").await.unwrap();
    let mut transcript = Vec::new();
    a.read_to_end(&mut transcript).await.unwrap();
    server.await.unwrap();
    let text = String::from_utf8(transcript).unwrap();
    let codes: Vec<&str> = text
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        ["220", "250", "250", "250", "550", "354", "250", "221"],
        "{text}"
    );
    assert_eq!(
        log.lock().unwrap().stored[0].1,
        b"Subject: x\r\n\r\nbody\r\n"
    );
}

/// The client drops the link in the middle of DATA: the backend is told
/// to abort and nothing is stored.
#[tokio::test]
async fn link_dropped_mid_data_stores_nothing() {
    let (mut a, b) = smtplink_mem::pipe(1 << 16);
    let (log, server) = start_server(b, true);
    a.write_all(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: cut\r\n\r\npartial line\r\nand more").await.unwrap();
    // Wait for the 354 so we know the server is inside DATA.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("354 ") {
        let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    drop(a);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let log = log.lock().unwrap();
    assert!(log.stored.is_empty());
    assert_eq!(log.aborted, 1);
}

/// An idle client is told 421 when the command timer runs out
/// (RFC 5321 4.5.3.2.7), on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn idle_client_gets_421_after_the_command_timeout() {
    let (mut a, b) = smtplink_mem::pipe(4096);
    let log = Arc::new(Mutex::new(Log::default()));
    let settings = ServerSettings {
        command_timeout: Duration::from_secs(300),
        ..ServerSettings::default()
    };
    let backend = Arc::new(MemoryBackend(log));
    let server = tokio::spawn(serve_link(b, Arc::new(settings), backend, Shutdown::new()));
    let mut out = Vec::new();
    a.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("220 "), "{text}");
    assert!(text.contains("\r\n421 4.4.2 "), "{text}");
    server.await.unwrap().unwrap();
}

/// Shutdown: an idle session gets 421 at once.
#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let (mut a, b) = smtplink_mem::pipe(4096);
    let token = Shutdown::new();
    let backend = Arc::new(MemoryBackend(Arc::default()));
    let server = tokio::spawn(serve_link(
        b,
        Arc::new(ServerSettings::default()),
        backend,
        token.clone(),
    ));
    let mut buf = [0u8; 512];
    let n = a.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    token.graceful.cancel();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.starts_with(b"421 4.3.2 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    server.await.unwrap().unwrap();
}

/// Forced shutdown: a session inside DATA is told 421 at once and its
/// message is dropped (the backend aborts), RFC 5321 3.8.
#[tokio::test]
async fn forced_shutdown_mid_data_says_421_and_drops_the_message() {
    let (mut a, b) = smtplink_mem::pipe(1 << 16);
    let log = Arc::new(Mutex::new(Log::default()));
    let shutdown = Shutdown::new();
    let backend = Arc::new(MemoryBackend(log.clone()));
    let server = tokio::spawn(serve_link(
        b,
        Arc::new(ServerSettings::default()),
        backend,
        shutdown.clone(),
    ));
    a.write_all(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n\r\nhalf").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("354 ") {
        let n = a.read(&mut buf).await.unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    // Graceful alone waits for the message; force closes it.
    shutdown.graceful.cancel();
    shutdown.force.cancel();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), a.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.starts_with(b"421 4.3.2 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    server.await.unwrap().unwrap();
    let log = log.lock().unwrap();
    assert!(log.stored.is_empty());
    assert_eq!(log.aborted, 1);
}

/// Over `max_sessions`, a new client is told 421 4.7.0 and closed while
/// the sessions already running carry on.
#[tokio::test]
async fn sessions_over_the_limit_get_421() {
    use smtplink_driver::Server;
    use smtplink_transport::{Endpoint, Transport};
    let transport = smtplink_mem::MemTransport::new();
    let endpoint = Endpoint::parse("mem://limited").unwrap();
    let listener = transport.listen(&endpoint).await.unwrap();
    let settings = ServerSettings {
        max_sessions: 1,
        ..ServerSettings::default()
    };
    let server = Arc::new(Server::new(
        settings,
        Arc::new(MemoryBackend(Arc::default())),
    ));
    let shutdown = server.shutdown();
    let running = {
        let server = server.clone();
        tokio::spawn(async move { server.run(vec![listener]).await })
    };
    let mut first = transport.connect(&endpoint).await.unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    let mut second = transport.connect(&endpoint).await.unwrap();
    let mut refused = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut refused))
        .await
        .unwrap()
        .unwrap();
    assert!(
        refused.starts_with(b"421 4.7.0 "),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    // The first session still works.
    first.write_all(b"NOOP\r\n").await.unwrap();
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"250 "));
    shutdown.graceful.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
}

/// The command timer counts from the last reply, so a command trickled in
/// one byte at a time cannot keep a session open past it.
#[tokio::test(start_paused = true)]
async fn trickled_command_still_times_out() {
    let (mut a, b) = smtplink_mem::pipe(4096);
    let settings = ServerSettings {
        command_timeout: Duration::from_secs(300),
        ..ServerSettings::default()
    };
    let backend = Arc::new(MemoryBackend(Arc::default()));
    let server = tokio::spawn(serve_link(b, Arc::new(settings), backend, Shutdown::new()));
    let mut buf = [0u8; 512];
    let n = a.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    let start = tokio::time::Instant::now();
    let mut closed = Vec::new();
    for byte in b"NOOP xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if a.write_all(&[*byte]).await.is_err() {
            // The server hung up: collect what it said before.
            let _ = a.read_to_end(&mut closed).await;
            break;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), a.read(&mut buf)).await {
            closed.extend_from_slice(&buf[..n]);
            if n == 0 || closed.starts_with(b"421") {
                break;
            }
        }
    }
    assert!(
        closed.starts_with(b"421 4.4.2 "),
        "{}",
        String::from_utf8_lossy(&closed)
    );
    assert!(
        start.elapsed() <= Duration::from_secs(361),
        "{:?}",
        start.elapsed()
    );
    server.await.unwrap().unwrap();
}

/// A server that stops right after storing a message says its 250 and a
/// 421 in one write (what `serve` does on Ctrl-C). The client's next
/// message cannot go on this session, and that is a temporary failure: a
/// relay must defer it, not bounce it.
#[tokio::test]
async fn a_421_after_the_250_makes_the_next_message_a_temporary_failure() {
    let (a, mut b) = smtplink_mem::pipe(4096);
    let server = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        b.write_all(b"220 fake ready\r\n").await.unwrap();
        let script: [(&[u8], &[u8]); 3] = [
            (b"EHLO", b"250-fake\r\n250 PIPELINING\r\n"),
            (b"DATA\r\n", b"250 ok\r\n250 ok\r\n354 go\r\n"),
            (b"\r\n.\r\n", b"250 stored\r\n421 shutting down\r\n"),
        ];
        for (until, reply) in script {
            while !seen.windows(until.len()).any(|w| w == until) {
                let n = b.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            seen.clear();
            b.write_all(reply).await.unwrap();
        }
        // Keep the link open a moment: the client must not need EOF to
        // learn the session is over.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let mut client = SmtpClient::handshake(a, client_settings()).await.unwrap();
    let env = Envelope::parse("a@example.org", &["b@example.net"]).unwrap();
    let report = client
        .send(env, b"Subject: one\r\n\r\nx\r\n")
        .await
        .unwrap();
    assert!(report.all_accepted(), "{report:?}");
    let env = Envelope::parse("a@example.org", &["b@example.net"]).unwrap();
    match client.send(env, b"Subject: two\r\n\r\ny\r\n").await {
        Ok(report) => assert!(report.any_transient(), "{report:?}"),
        Err(e) => assert!(e.is_transient(), "{e}"),
    }
    server.await.unwrap();
}
