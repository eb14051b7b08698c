//! SMTP over the X.25 adapter: two relay nodes in one process over
//! `x25+mem://` through the link simulator, two `smtplink serve` nodes over
//! a socat pty pair with `x25+serial://`, and head-of-line blocking between
//! circuits on one slow line.
//!
//! The simulator runs with fixed seeds, so a failure replays. A missing
//! socat fails the pty test when `CI=true` and skips it otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use smtplink_driver::{
    serve_link, Backend, ClientSettings, Server, ServerSettings, SessionHandler, SessionInfo,
    Shutdown, SmtpClient,
};
use smtplink_engine::{ClientConfig, Envelope, Reply, ServerConfig};
use smtplink_maildir::MaildirStore;
use smtplink_mem::MemTransport;
use smtplink_relay::spool::Spool;
use smtplink_relay::{
    RelayBackend, RelayContext, RetryPolicy, Route, RoutingTable, Worker, WorkerSettings,
};
use smtplink_transport::{Endpoint, Registry};
use smtplink_x25::{Line, LineConfig, Role, X25Transport};
use tokio_util::sync::CancellationToken;

/// One relay node in this process: a server on its listeners, a Maildir
/// for its own domain, a spool and a worker for the other's.
struct Node {
    dir: tempfile::TempDir,
    registry: Registry,
    stop: CancellationToken,
}

impl Node {
    fn maildir(&self) -> std::path::PathBuf {
        self.dir.path().join("maildir")
    }

    fn spool(&self) -> std::path::PathBuf {
        self.dir.path().join("spool")
    }

    async fn start(name: &str, mem: &MemTransport, listen: &[&str], routes: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let x25 = X25Transport::new(Registry::new().with("mem", Arc::new(mem.clone())));
        let registry = Registry::new()
            .with("mem", Arc::new(mem.clone()))
            .with("x25+mem", Arc::new(x25));
        let spool = Arc::new(Spool::open(dir.path().join("spool")).unwrap());
        let routes = RoutingTable::new(routes.iter().map(|r| Route::parse(r).unwrap()).collect());
        let ctx = Arc::new(RelayContext {
            hostname: name.to_owned(),
            routes,
            store: MaildirStore::new(dir.path().join("maildir"), name.to_owned()),
            spool: Some(spool.clone()),
            max_hops: 30,
            wake: Arc::default(),
            allow_turn: false,
        });
        let settings = Arc::new(ServerSettings {
            engine: ServerConfig {
                hostname: name.to_owned(),
                dsn: true,
                ..ServerConfig::default()
            },
            ..ServerSettings::default()
        });
        let worker = Arc::new(Worker::new(
            ctx.clone(),
            spool,
            registry.clone(),
            WorkerSettings {
                client: ClientSettings {
                    engine: ClientConfig {
                        hello_name: name.to_owned(),
                        ..ClientConfig::default()
                    },
                    ..ClientSettings::default()
                },
                retry: RetryPolicy {
                    first_retry: Duration::from_secs(2),
                    ..RetryPolicy::default()
                },
                connect_timeout: Duration::from_secs(60),
                poll_interval: Duration::from_millis(500),
                sessions_per_hop: 4,
                ..WorkerSettings::default()
            },
        ));
        let backend = RelayBackend::new(ctx).with_worker(worker.clone());
        let server = Server::with_shared_settings(settings, Arc::new(backend));
        let stop = server.shutdown().graceful;
        tokio::spawn(worker.run(stop.clone()));
        let mut listeners = Vec::new();
        for url in listen {
            listeners.push(
                registry
                    .listen(&Endpoint::parse(url).unwrap())
                    .await
                    .unwrap(),
            );
        }
        tokio::spawn(async move { server.run(listeners).await });
        Node {
            dir,
            registry,
            stop,
        }
    }

    /// Submits messages over `submit` (a plain mem:// listener of the node).
    async fn submit(&self, submit: &str, messages: &[(Vec<u8>, String)]) {
        let link = self
            .registry
            .connect(&Endpoint::parse(submit).unwrap())
            .await
            .unwrap();
        let mut client = SmtpClient::handshake(link, ClientSettings::default())
            .await
            .unwrap();
        for (body, to) in messages {
            let envelope = Envelope::parse("sender@example.org", &[to]).unwrap();
            let report = client.send(envelope, body).await.unwrap();
            assert!(report.all_accepted(), "{report:?}");
        }
        client.quit().await.unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every message is in `maildir` exactly once, byte-identical apart from
/// the trace fields, and nothing else (no partial, no duplicate).
fn assert_exactly(maildir: &Path, mailbox: &str, messages: &[(Vec<u8>, String)]) {
    let files = delivered(maildir, mailbox);
    let bodies: Vec<Vec<u8>> = files
        .iter()
        .map(|f| strip_trace(&std::fs::read(f).unwrap()).to_vec())
        .collect();
    for (i, (body, _)) in messages.iter().enumerate() {
        let copies = bodies.iter().filter(|b| *b == body).count();
        assert_eq!(copies, 1, "message {i} in {mailbox}");
    }
    assert_eq!(files.len(), messages.len(), "nothing else in {mailbox}");
    let tmp = maildir.join(mailbox).join("tmp");
    assert!(
        std::fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()),
        "no partial message in {}",
        tmp.display()
    );
}

fn batch(tag: &str, to: &str, count: usize) -> Vec<(Vec<u8>, String)> {
    (0..count)
        .map(|i| (message(tag, i, 600 + 97 * (i % 7)), to.to_owned()))
        .collect()
}

/// Two relay nodes joined by one simulated 9600-baud line with a bit error
/// rate of 1e-5 (seed 11): 25 messages each way, submitted at once, four
/// sessions per direction, all on circuits of the one line. Every message
/// arrives once, byte-identical; both spools empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_nodes_both_ways_over_x25_mem_through_the_simulator() {
    let mem = MemTransport::new();
    let line = "x25+mem://line";
    // B listens for the line; A opens it (role=dte) through the simulator
    // and takes B's calls on it. Both route the other's domain to it.
    let b = Node::start(
        "b.test",
        &mem,
        &[line, "mem://submit-b"],
        &["b.test=local", &format!("a.test={line}")],
    )
    .await;
    let a_line = format!("{line}?role=dte&baud=9600&ber=1e-5&seed=11");
    let a = Node::start(
        "a.test",
        &mem,
        &[&a_line, "mem://submit-a"],
        &["a.test=local", &format!("b.test={line}?role=dte")],
    )
    .await;
    let to_b = batch("a-to-b", "user@b.test", 25);
    let to_a = batch("b-to-a", "user@a.test", 25);
    tokio::join!(
        a.submit("mem://submit-a", &to_b),
        b.submit("mem://submit-b", &to_a)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let done = delivered(&b.maildir(), "user@b.test").len() >= to_b.len()
            && delivered(&a.maildir(), "user@a.test").len() >= to_a.len()
            && spool_is_empty(&a.spool())
            && spool_is_empty(&b.spool());
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all delivered: {} at B, {} at A",
            delivered(&b.maildir(), "user@b.test").len(),
            delivered(&a.maildir(), "user@a.test").len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_exactly(&b.maildir(), "user@b.test", &to_b);
    assert_exactly(&a.maildir(), "user@a.test", &to_a);
}

/// A sink that records each message as it finishes arriving: its Subject,
/// the TLS version of its session (`None`: plaintext, from the link facts
/// the server driver gives the handler), its body and the instant.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Arrival>>>);

#[derive(Clone)]
struct Arrival {
    subject: String,
    tls: Option<String>,
    body: Vec<u8>,
    at: tokio::time::Instant,
}

struct RecorderSession {
    recorder: Recorder,
    body: Vec<u8>,
}

#[async_trait]
impl Backend for Recorder {
    async fn open(&self, _: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        Ok(Box::new(RecorderSession {
            recorder: self.clone(),
            body: Vec::new(),
        }))
    }
}

#[async_trait]
impl SessionHandler for RecorderSession {
    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        self.body.extend_from_slice(&chunk);
        Ok(())
    }

    async fn data_end(&mut self, info: &SessionInfo) -> Result<String, Reply> {
        let body = std::mem::take(&mut self.body);
        let head = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let subject = head
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_owned();
        self.recorder.0.lock().unwrap().push(Arrival {
            subject,
            tls: info.link.tls.as_ref().map(|t| t.version.clone()),
            body,
            at: tokio::time::Instant::now(),
        });
        Ok("ok".into())
    }
}

/// Two lines joined by a simulated line with `config`, the link layers
/// told its rate; A is the DTE.
fn simulated_lines(config: smtplink_mem::sim::SimConfig) -> (Line, Line) {
    let rate = config.baud.map(|baud| baud / 10);
    let (a, b, _) = smtplink_mem::sim::pair(config);
    let mut config_a = LineConfig::new(Role::Dte);
    let mut config_b = LineConfig::new(Role::Dce);
    config_a.lapb.line_rate = rate;
    config_b.lapb.line_rate = rate;
    (Line::spawn(a, config_a, "a"), Line::spawn(b, config_b, "b"))
}

/// Runs an SMTP server session on every circuit called in on `line`.
fn serve_circuits(line: &Line, settings: ServerSettings, backend: Recorder) {
    let mut incoming = line.listen("smtp");
    let settings = Arc::new(settings);
    let backend: Arc<dyn Backend> = Arc::new(backend);
    tokio::spawn(async move {
        while let Some(circuit) = incoming.accept().await {
            tokio::spawn(serve_link(
                circuit.into_link(1),
                settings.clone(),
                backend.clone(),
                Shutdown::new(),
            ));
        }
    });
}

/// Head-of-line: on one 9600-baud line (about 18 minutes for 1 MiB), a
/// 10 KiB message sent 30 s after a 1 MiB one started arrives within a
/// minute of being sent, long before the big one finishes. Paused clock:
/// exact and quick.
#[tokio::test(start_paused = true)]
async fn a_small_message_overtakes_a_big_one_on_the_same_line() {
    let config = smtplink_mem::sim::SimConfig::default().seed(3).baud(9600);
    let (line_a, line_b) = simulated_lines(config);
    let recorder = Recorder::default();
    let settings = ServerSettings {
        command_timeout: Duration::from_secs(7200),
        data_timeout: Duration::from_secs(7200),
        ..ServerSettings::default()
    };
    serve_circuits(&line_b, settings, recorder.clone());
    let send = |line: Line, subject: &'static str, size: usize| async move {
        let link = line.call("smtp").await.unwrap().into_link(1);
        let mut client = SmtpClient::handshake(link, ClientSettings::default())
            .await
            .unwrap();
        let mut body = format!("Subject: {subject}\r\n\r\n").into_bytes();
        while body.len() < size {
            body.extend_from_slice(
                b"0123456789 abcdefghijklmnopqrstuvwxyz 0123456789 abcdefghijklmnopqrst\r\n",
            );
        }
        let envelope = Envelope::parse("a@a.test", &["b@b.test"]).unwrap();
        let sent_at = tokio::time::Instant::now();
        assert!(client.send(envelope, &body).await.unwrap().all_accepted());
        client.quit().await.unwrap();
        sent_at
    };
    let start = tokio::time::Instant::now();
    let big = tokio::spawn(send(line_a.clone(), "big", 1 << 20));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let small_sent = send(line_a.clone(), "small", 10 * 1024).await;
    big.await.unwrap();
    let arrivals = recorder.0.lock().unwrap().clone();
    let at = |subject: &str| {
        arrivals
            .iter()
            .find(|a| a.subject == subject)
            .map(|a| a.at)
            .unwrap()
    };
    let small_took = at("small") - small_sent;
    let big_took = at("big") - start;
    eprintln!("small: {small_took:?} after it was sent; big: {big_took:?}");
    // 1 MiB at 960 bytes/s cannot cross in less than 1092 s.
    assert!(big_took > Duration::from_secs(1092), "{big_took:?}");
    // 10 KiB alone needs 11 s; sharing the line about twice that.
    assert!(small_took < Duration::from_secs(60), "{small_took:?}");
}

/// A socat pty pair between two `smtplink serve` nodes speaking
/// `x25+serial://`: 50 messages, 25 each way at once, four sessions per
/// direction on the one line. All arrive once, byte-identical.
#[test]
fn two_serve_nodes_both_ways_over_x25_serial_on_a_pty_pair() {
    if require_tool("python3").is_none() {
        return;
    }
    let Some(socat) = require_tool("socat") else {
        return;
    };
    let ptys = tempfile::tempdir().unwrap();
    let end = |name: &str| ptys.path().join(name);
    let mut socat = std::process::Command::new(socat)
        .arg(format!("pty,raw,echo=0,link={}", end("ttyA").display()))
        .arg(format!("pty,raw,echo=0,link={}", end("ttyB").display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("socat's ptys", Duration::from_secs(10), || {
        end("ttyA").exists() && end("ttyB").exists()
    });
    let url = |name: &str, role: &str| {
        format!(
            "x25+serial://{}?baud=115200&role={role}",
            end(name).display()
        )
    };
    let a_line = url("ttyA", "dte");
    let b_line = url("ttyB", "dce");
    let config = "[relay]\nsessions_per_hop = 4\n";
    let b = Serve::start_with_config(
        "b.test",
        Some(config),
        &[
            "--listen",
            &b_line,
            "--route",
            "b.test=local",
            "--route",
            &format!("a.test={b_line}"),
        ],
    );
    let a = Serve::start_with_config(
        "a.test",
        Some(config),
        &[
            "--listen",
            &a_line,
            "--route",
            "a.test=local",
            "--route",
            &format!("b.test={a_line}"),
        ],
    );
    let work_a = tempfile::tempdir().unwrap();
    let work_b = tempfile::tempdir().unwrap();
    let to_b: Vec<(Vec<u8>, Vec<String>)> = (0..25)
        .map(|i| {
            (
                message("pty-a-to-b", i, 800 + 1500 * (i % 5)),
                vec!["user@b.test".to_string()],
            )
        })
        .collect();
    let to_a: Vec<(Vec<u8>, Vec<String>)> = (0..25)
        .map(|i| {
            (
                message("pty-b-to-a", i, 800 + 1500 * (i % 5)),
                vec!["user@a.test".to_string()],
            )
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| smtplib_batch(a.port, work_a.path(), &to_b));
        s.spawn(|| smtplib_batch(b.port, work_b.path(), &to_a));
    });
    wait_for(
        "every message at both ends",
        Duration::from_secs(120),
        || {
            delivered(&b.maildir(), "user@b.test").len() >= 25
                && delivered(&a.maildir(), "user@a.test").len() >= 25
        },
    );
    let pairs = |v: &[(Vec<u8>, Vec<String>)]| -> Vec<(Vec<u8>, String)> {
        v.iter().map(|(m, to)| (m.clone(), to[0].clone())).collect()
    };
    assert_exactly(&b.maildir(), "user@b.test", &pairs(&to_b));
    assert_exactly(&a.maildir(), "user@a.test", &pairs(&to_a));
    wait_for("both spools to empty", Duration::from_secs(30), || {
        spool_is_empty(&a.spool()) && spool_is_empty(&b.spool())
    });
    let circuits = b
        .log
        .try_iter()
        .filter(|l| l.contains("session opened") && l.contains("x25"))
        .count();
    assert!(circuits >= 2, "B saw {circuits} x25 sessions");
    // `queue list` shows the line's figures that A's serve publishes.
    wait_for("A's x25 line figures", Duration::from_secs(15), || {
        a.spool().join("x25-lines.txt").exists()
    });
    let out = smtplink()
        .args(["queue", "--spool"])
        .arg(a.spool())
        .arg("list")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("x25 lines"), "{listing}");
    assert!(
        listing.contains("frames sent") && listing.contains("[up]"),
        "{listing}"
    );
    let _ = socat.kill();
    let _ = socat.wait();
}

/// STARTTLS inside an X.25 virtual circuit over the simulated line (with
/// bit errors, which the frame check and ARQ hide): the driver server with
/// a `gen-cert` pair on one end, `SmtpClient` with TLS required and the
/// certificate pinned on the other. The message arrives intact, and the
/// server saw the session encrypted.
#[tokio::test]
async fn starttls_over_an_x25_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pin = smtplink_tls::write_self_signed(&["b.test".to_owned()], &cert, &key).unwrap();
    let server_tls = smtplink_tls::ServerTls::load(&cert, &key).unwrap();
    let connector = smtplink_tls::ClientTls::new(&pin.parse().unwrap())
        .unwrap()
        .connector("b.test")
        .unwrap();

    let config = smtplink_mem::sim::SimConfig::default()
        .seed(11)
        .baud(115_200)
        .bit_error_rate(1e-6);
    let (line_a, line_b) = simulated_lines(config);
    let recorder = Recorder::default();
    let settings = ServerSettings {
        engine: ServerConfig {
            hostname: "b.test".into(),
            ..ServerConfig::default()
        },
        tls: Some(server_tls),
        ..ServerSettings::default()
    };
    serve_circuits(&line_b, settings, recorder.clone());

    let link = line_a.call("smtp").await.unwrap().into_link(1);
    let settings = ClientSettings {
        engine: ClientConfig {
            hello_name: "a.test".into(),
            tls: smtplink_engine::TlsPolicy::Required,
            ..ClientConfig::default()
        },
        tls: Some(connector),
        ..ClientSettings::default()
    };
    let mut client = tokio::time::timeout(
        Duration::from_secs(60),
        SmtpClient::handshake(link, settings),
    )
    .await
    .unwrap()
    .unwrap();
    let version = client.tls().map(|t| t.version.clone()).unwrap();
    assert!(version.starts_with("TLSv1."), "{version}");
    assert_eq!(client.link_info().kind, "x25");
    let mut body = b"From: a@a.test\r\nSubject: sealed\r\n\r\n".to_vec();
    for i in 0..200 {
        body.extend_from_slice(format!("line {i} over TLS over X.25\r\n").as_bytes());
    }
    let envelope = Envelope::parse("a@a.test", &["b@b.test"]).unwrap();
    let report = client.send(envelope, &body).await.unwrap();
    assert!(report.all_accepted(), "{report:?}");
    client.quit().await.unwrap();

    let got = recorder.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].tls.as_deref(), Some(version.as_str()));
    assert_eq!(got[0].body, body);
}
