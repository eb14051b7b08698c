//! The serial transport over real pseudo-terminals made by socat.
//!
//! A missing socat fails these tests when `CI=true` and skips them (saying
//! so on stderr) otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smtplink_serial::{SerialTransport, Timing};
use smtplink_transport::{Endpoint, Transport, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A socat pty pair at `dir/ttyA` and `dir/ttyB`, killed on drop.
struct Socat {
    child: Child,
    dir: PathBuf,
}

impl Socat {
    fn start(dir: &Path) -> Option<Socat> {
        let Ok(child) = Command::new("socat")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                dir.join("ttyA").display()
            ))
            .arg(format!(
                "pty,raw,echo=0,link={}",
                dir.join("ttyB").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "socat is not installed; CI must have it");
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: socat is not installed (bash .ci/install-peers.sh)"
            );
            return None;
        };
        let socat = Socat {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(dir.join("ttyA").exists() && dir.join("ttyB").exists()) {
            assert!(Instant::now() < deadline, "socat made no ptys");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(socat)
    }

    fn url(&self, end: &str) -> Endpoint {
        format!("serial://{}/{end}?baud=115200", self.dir.display())
            .parse()
            .unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // socat removes its links on exit; make sure before reusing them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.dir.join("ttyA").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        self.stop();
    }
}

fn transport() -> SerialTransport {
    SerialTransport::new().with_timing(Timing {
        handshake_interval: Duration::from_millis(100),
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: None,
    })
}

#[tokio::test]
async fn sessions_over_a_pty_pair() {
    let dir = tempfile::tempdir().unwrap();
    let Some(socat) = Socat::start(dir.path()) else {
        return;
    };
    let transport = transport();
    let mut listener = transport.listen(&socat.url("ttyB")).await.unwrap();
    let a = socat.url("ttyA");
    assert_eq!(listener.local_endpoint(), socat.url("ttyB"));
    for round in 0..3 {
        let (client, server) = tokio::join!(transport.connect(&a), listener.accept());
        let mut client = client.unwrap();
        let mut server = server.unwrap();
        assert_eq!(client.info().kind, "serial");
        // Not transparent to binary TLS records: see link_info.
        assert!(!client.info().can_upgrade_tls);
        assert_eq!(
            server.info().peer,
            format!("serial:{}/ttyB", dir.path().display())
        );

        server.write_all(b"220 hello\r\n").await.unwrap();
        let mut greeting = [0u8; 11];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 hello\r\n");

        // 8-bit data, both ways, then the caller's close is the server's EOF.
        let body: Vec<u8> = (0..=255u8).cycle().take(100_000 + round).collect();
        let mut got = Vec::new();
        let (sent, read) = tokio::join!(
            async {
                client.write_all(&body).await?;
                client.shutdown().await
            },
            server.read_to_end(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        assert_eq!(got, body, "round {round}");
        server.write_all(b"221 bye\r\n").await.unwrap();
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"221 bye\r\n");
    }
}

#[tokio::test]
async fn dropping_a_link_mid_session_ends_it_for_the_other_side() {
    let dir = tempfile::tempdir().unwrap();
    let Some(socat) = Socat::start(dir.path()) else {
        return;
    };
    let transport = transport();
    let mut listener = transport.listen(&socat.url("ttyB")).await.unwrap();
    let a = socat.url("ttyA");
    let (client, server) = tokio::join!(transport.connect(&a), listener.accept());
    let mut client = client.unwrap();
    let mut server = server.unwrap();
    client.write_all(b"DATA\r\nhalf a mess").await.unwrap();
    drop(client);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut got))
        .await
        .expect("the server sees EOF")
        .unwrap();
    assert_eq!(got, b"DATA\r\nhalf a mess");
    drop(server);
    // The line is clean for the next session.
    let (client, server) = tokio::join!(transport.connect(&a), listener.accept());
    let mut client = client.unwrap();
    let mut server = server.unwrap();
    client.write_all(b"EHLO a\r\n").await.unwrap();
    let mut line = [0u8; 8];
    server.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"EHLO a\r\n");
}

#[tokio::test]
async fn busy_and_unanswered_ports_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some(socat) = Socat::start(dir.path()) else {
        return;
    };
    let transport = transport();
    let listener = transport.listen(&socat.url("ttyB")).await.unwrap();
    // The listener has ttyB for itself.
    let err = transport.bind(&socat.url("ttyB")).await.unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(!err.is_transient());
    // Nobody accepts on ttyB (the listener is not in accept): no answer.
    let quick = SerialTransport::new().with_timing(Timing {
        handshake_interval: Duration::from_millis(50),
        handshake_timeout: Duration::from_millis(300),
        idle_timeout: None,
    });
    let err = quick.connect(&socat.url("ttyA")).await.unwrap_err();
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(err.is_transient(), "{err}");
    drop(listener);
    // A device that does not exist.
    let missing: Endpoint = format!("serial://{}/ttyZ?baud=9600", dir.path().display())
        .parse()
        .unwrap();
    let err = transport.connect(&missing).await.unwrap_err();
    assert!(matches!(err, TransportError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no such serial device"), "{err}");
}

#[tokio::test]
async fn the_listener_reopens_after_the_line_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut socat) = Socat::start(dir.path()) else {
        return;
    };
    let transport = transport();
    let mut listener = transport.listen(&socat.url("ttyB")).await.unwrap();
    let a = socat.url("ttyA");
    let (client, server) = tokio::join!(transport.connect(&a), listener.accept());
    let mut client = client.unwrap();
    let mut server = server.unwrap();
    client.write_all(b"MAIL FROM:<a@b>\r\n").await.unwrap();
    let mut line = [0u8; 17];
    server.read_exact(&mut line).await.unwrap();
    // Cut: both ends see the line fail.
    socat.stop();
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
        .await
        .expect("the cut is noticed")
        .unwrap_err();
    assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    drop((client, server));
    // Restore: same paths, new ptys.
    let socat = Socat::start(dir.path()).unwrap();
    let a = socat.url("ttyA");
    let (client, server) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(transport.connect(&a), listener.accept())
    })
    .await
    .expect("a session after the line is back");
    let mut client = client.unwrap();
    let mut server = server.unwrap();
    server.write_all(b"220 back\r\n").await.unwrap();
    let mut greeting = [0u8; 10];
    client.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 back\r\n");
}
