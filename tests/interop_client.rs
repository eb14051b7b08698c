//! `smtplink send` delivers to real SMTP servers nobody here wrote:
//! Postfix's smtp-sink and aiosmtpd, over loopback TCP. Also checks the
//! exit status contract: 0 all accepted, 75 temporary failure, 1 otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "peer did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts smtp-sink on a free port; extra args go before the address.
/// It dumps each transaction into `dump_dir` (-d), so we can read what
/// it received.
fn smtp_sink(dump_dir: &Path, extra: &[&str]) -> Option<(Killed, u16)> {
    let sink = require_tool("smtp-sink")?;
    let port = free_port();
    // smtp-sink drops privileges to -u USER when root; let it write there.
    Command::new("chmod")
        .arg("777")
        .arg(dump_dir)
        .status()
        .unwrap();
    let template = format!("{}/%H%M%S.", dump_dir.display());
    let child = Command::new(sink)
        .args(["-u", "nobody", "-d", &template])
        .args(extra)
        .arg(format!("127.0.0.1:{port}"))
        .arg("64")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Killed(child);
    wait_for_port(port);
    Some((guard, port))
}

fn smtplink_send(port: u16, to: &[&str], message: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("msg.eml");
    std::fs::write(&file, message).unwrap();
    let mut cmd = smtplink();
    cmd.args(["send", "--server", &format!("tcp://127.0.0.1:{port}")])
        .args(["--from", "alice@example.org", "--helo", "client.test"]);
    for t in to {
        cmd.args(["--to", t]);
    }
    cmd.arg(&file).output().unwrap()
}

fn message() -> Vec<u8> {
    b"From: alice@example.org\r\nSubject: to a real server\r\n\r\n.dot line\r\nbody \xe2\x82\xac\r\n".to_vec()
}

#[test]
fn send_to_postfix_smtp_sink() {
    let dump = tempfile::tempdir().unwrap();
    let Some((_sink, port)) = smtp_sink(dump.path(), &[]) else {
        return;
    };
    let out = smtplink_send(port, &["bob@example.net", "carol@example.net"], &message());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": accepted: 250").count(), 2, "{stdout}");
    // The dump holds the envelope, then the message exactly as sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    let dumped = loop {
        let files: Vec<_> = std::fs::read_dir(dump.path()).unwrap().collect();
        if let Some(f) = files.first() {
            break std::fs::read(f.as_ref().unwrap().path()).unwrap();
        }
        assert!(Instant::now() < deadline, "smtp-sink dumped nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = String::from_utf8_lossy(&dumped);
    assert!(text.contains("X-Rcpt-Args: <bob@example.net>"), "{text}");
    assert!(text.contains("X-Mail-Args: <alice@example.org>"), "{text}");
    // 8-bit body: our client asked for BODY=8BITMIME (smtp-sink offers it).
    assert!(text.contains("BODY=8BITMIME"), "{text}");
    // smtp-sink writes the dump with LF line ends, its own Received: field
    // on top and an empty line after the message; between them must be
    // exactly what we sent (un-stuffed: ".dot line" keeps one dot).
    let expected = String::from_utf8(message()).unwrap().replace("\r\n", "\n");
    assert!(text.ends_with(&format!(")\n{expected}\n")), "{text}");
}

#[test]
fn send_exit_status_follows_the_replies() {
    let dump = tempfile::tempdir().unwrap();
    // -f RCPT: every RCPT gets a hard 5xx error.
    let Some((_sink, port)) = smtp_sink(dump.path(), &["-f", "RCPT"]) else {
        return;
    };
    let out = smtplink_send(port, &["bob@example.net"], &message());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": rejected: 5"));

    let dump = tempfile::tempdir().unwrap();
    // -r RCPT: every RCPT gets a soft 4xx error.
    let Some((_sink, port)) = smtp_sink(dump.path(), &["-r", "RCPT"]) else {
        return;
    };
    let out = smtplink_send(port, &["bob@example.net"], &message());
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": deferred: 4"));

    // Nobody listening: a temporary failure too.
    let out = smtplink_send(free_port(), &["bob@example.net"], &message());
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// aiosmtpd with a handler that saves what it received.
const AIOSMTPD_SERVER: &str = r#"
import sys, time
from aiosmtpd.controller import Controller
class Save:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], 'wb') as f:
            f.write(envelope.original_content)
        with open(sys.argv[2] + '.rcpts', 'w') as f:
            f.write(','.join(envelope.rcpt_tos))
        return '250 2.0.0 saved'
c = Controller(Save(), hostname='127.0.0.1', port=int(sys.argv[1]))
c.start()
print('ready', flush=True)
time.sleep(120)
"#;

#[test]
fn send_to_aiosmtpd() {
    if require_tool("python3").is_none() || !require_python_module("aiosmtpd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.eml");
    let port = free_port();
    let mut child = Command::new("python3")
        .args(["-c", AIOSMTPD_SERVER, &port.to_string()])
        .arg(&saved)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let first = BufReader::new(stdout).lines().next().unwrap().unwrap();
    assert_eq!(first, "ready");
    let out = smtplink_send(port, &["bob@example.net", "carol@example.net"], &message());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": accepted: 250").count(), 2, "{stdout}");
    assert_eq!(std::fs::read(&saved).unwrap(), message());
    let rcpts = std::fs::read_to_string(dir.path().join("saved.eml.rcpts")).unwrap();
    assert_eq!(rcpts, "bob@example.net,carol@example.net");
}
