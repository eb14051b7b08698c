//! Real SMTP clients that nobody here wrote deliver to `smtplink serve`
//! over loopback TCP, and the Maildir must hold exactly what they sent,
//! plus the two trace header fields (RFC 5321 4.4).
//!
//! Peers: Python's smtplib, curl, swaks. A missing peer fails under CI=true
//! and skips (with a message) elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Sends `message` with smtplib: `sendmail(from, to, message, mail_options)`.
/// Returns smtplib's dict of refused recipients, printed by Python.
const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port, path, sender, rcpts, opts = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(','), [o for o in sys.argv[5].split(',') if o]
msg = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test') as s:
    refused = s.sendmail(sender, rcpts, msg, mail_options=opts)
print('refused', refused)
"#;

fn smtplib_send(server: &Serve, message: &[u8], from: &str, to: &[String], opts: &[&str]) {
    let file = server.dir.path().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let out = Command::new("python3")
        .args(["-c", SMTPLIB_SEND, &server.port.to_string()])
        .arg(&file)
        .args([from, &to.join(","), &opts.join(",")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refused {}"), "smtplib: {stdout}");
}

/// Asserts `mailbox` holds exactly one message: trace fields + `message`.
fn assert_stored(server: &Serve, mailbox: &str, from: &str, message: &[u8]) -> String {
    let files = delivered(&server.maildir(), mailbox);
    assert_eq!(files.len(), 1, "messages in {mailbox}/new");
    let stored = std::fs::read(&files[0]).unwrap();
    let (trace, body) = split_trace(&stored);
    assert_trace(&trace, from);
    assert!(
        body == message,
        "{mailbox}: stored body differs from what was sent"
    );
    trace
}

/// Python: a raw socket session to port argv[1] up to a 354 for DATA
/// (EHLO, MAIL, one RCPT to bob@example.net). `s` is the socket and
/// `reply()` reads one whole reply.
const RAW_SESSION_TO_DATA: &str = r#"
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
f = s.makefile('rb')
def reply():
    while True:
        line = f.readline()
        if line[3:4] != b'-':
            return line
reply()
for cmd in [b'EHLO client.test', b'MAIL FROM:<a@example.org>', b'RCPT TO:<bob@example.net>', b'DATA']:
    s.sendall(cmd + b'\r\n'); r = reply()
assert r.startswith(b'354'), r
"#;

fn simple_message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\n\r\nHello Bob,\r\nthis is a test.\r\n"
    )
    .into_bytes()
}

#[test]
fn smtplib_plain_message() {
    if require_tool("python3").is_none() {
        return;
    }
    let server = Serve::start(&[]);
    let message = simple_message("plain");
    smtplib_send(
        &server,
        &message,
        "alice@example.org",
        &["bob@example.net".into()],
        &[],
    );
    let trace = assert_stored(&server, "bob@example.net", "alice@example.org", &message);
    // One recipient: the Received field names it (RFC 5321 4.4 "for").
    assert!(trace.contains("for <bob@example.net>"), "{trace}");
    assert!(trace.contains("from client.test"), "{trace}");
}

#[test]
fn smtplib_one_mebibyte_of_8bit_data() {
    if require_tool("python3").is_none() {
        return;
    }
    let server = Serve::start(&[]);
    let mut message = b"From: a@example.org\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=latin1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
    // Every byte value except CR and LF, 76 to a line, until 1 MiB.
    let mut value: u8 = 0;
    while message.len() < 1024 * 1024 {
        for _ in 0..76 {
            value = value.wrapping_add(1);
            if value == b'\r' || value == b'\n' {
                value += 1;
            }
            message.push(value);
        }
        message.extend_from_slice(b"\r\n");
    }
    smtplib_send(
        &server,
        &message,
        "a@example.org",
        &["bob@example.net".into()],
        &["BODY=8BITMIME"],
    );
    assert_stored(&server, "bob@example.net", "a@example.org", &message);
}

#[test]
fn smtplib_lines_starting_with_dots() {
    if require_tool("python3").is_none() {
        return;
    }
    let server = Serve::start(&[]);
    // smtplib dot-stuffs these (RFC 5321 4.5.2); the server must un-stuff.
    let message =
        b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n. \r\n...\r\nlast\r\n".to_vec();
    smtplib_send(
        &server,
        &message,
        "a@example.org",
        &["bob@example.net".into()],
        &[],
    );
    assert_stored(&server, "bob@example.net", "a@example.org", &message);
}

#[test]
fn smtplib_fifty_recipients() {
    if require_tool("python3").is_none() {
        return;
    }
    let server = Serve::start(&[]);
    let message = simple_message("fifty");
    let rcpts: Vec<String> = (0..50).map(|i| format!("user{i}@Example.NET")).collect();
    smtplib_send(&server, &message, "a@example.org", &rcpts, &[]);
    for i in 0..50 {
        // The domain is lower-cased in the Maildir name, the local part kept.
        let trace = assert_stored(
            &server,
            &format!("user{i}@example.net"),
            "a@example.org",
            &message,
        );
        // Several recipients: no "for" clause, so no Bcc leaks.
        assert!(!trace.contains(" for "), "{trace}");
    }
}

#[test]
fn curl_uploads_a_message() {
    let Some(curl) = require_tool("curl") else {
        return;
    };
    let server = Serve::start(&[]);
    let message = simple_message("curl");
    let file = server.dir.path().join("curl.eml");
    std::fs::write(&file, &message).unwrap();
    let out = Command::new(curl)
        .args([
            "-sS",
            "--url",
            &format!("smtp://127.0.0.1:{}/client.test", server.port),
        ])
        .args([
            "--mail-from",
            "alice@example.org",
            "--mail-rcpt",
            "bob@example.net",
        ])
        .arg("--upload-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_stored(&server, "bob@example.net", "alice@example.org", &message);
}

#[test]
fn swaks_pipelines_a_message_to_two_recipients() {
    let Some(swaks) = require_tool("swaks") else {
        return;
    };
    let server = Serve::start(&[]);
    let message = simple_message("swaks");
    let file = server.dir.path().join("swaks.eml");
    // swaks sends the file and then CRLF.CRLF, so a file ending in CRLF
    // would gain an empty line; give it the message without its last CRLF.
    std::fs::write(&file, &message[..message.len() - 2]).unwrap();
    let out = Command::new(swaks)
        .args(["--server", &format!("127.0.0.1:{}", server.port)])
        .args([
            "--from",
            "alice@example.org",
            "--to",
            "bob@example.net,carol@example.net",
        ])
        .args(["--helo", "client.test", "--pipeline", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks: {transcript}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // swaks really pipelined: it only does so when PIPELINING is offered.
    assert!(transcript.contains("PIPELINING"), "{transcript}");
    for rcpt in ["bob@example.net", "carol@example.net"] {
        assert_stored(&server, rcpt, "alice@example.org", &message);
    }
}

/// A client that drops the TCP connection in the middle of DATA leaves
/// nothing behind: no message in new/, no stray file in tmp/.
#[test]
fn link_cut_mid_data_stores_nothing() {
    if require_tool("python3").is_none() {
        return;
    }
    let server = Serve::start(&[]);
    let script = format!(
        "{RAW_SESSION_TO_DATA}{}",
        r#"
s.sendall(b'Subject: cut\r\n\r\n' + b'x' * 100000 + b'\r\n')
s.close()
print('cut')
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script, &server.port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server notices the cut; then a full message goes through, which
    // proves the first one was handled before we look.
    let message = simple_message("after-cut");
    smtplib_send(
        &server,
        &message,
        "a@example.org",
        &["carol@example.net".into()],
        &[],
    );
    std::thread::sleep(Duration::from_millis(200));
    let files = all_files(&server.maildir());
    let leftovers: Vec<_> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("bob@example.net"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial message left behind: {leftovers:?}"
    );
    assert_stored(&server, "carol@example.net", "a@example.org", &message);
}

/// Ctrl-C stops `serve` cleanly: a session in the middle of DATA finishes
/// its message (250), then gets 421; the process exits 0.
#[test]
fn ctrl_c_finishes_the_message_in_flight() {
    if require_tool("python3").is_none() {
        return;
    }
    let server = Serve::start(&[]);
    let script = format!(
        "{RAW_SESSION_TO_DATA}{}",
        r#"
s.sendall(b'Subject: in flight\r\n\r\nfirst half\r\n')
print('in-data', flush=True)
sys.stdin.readline()
s.sendall(b'second half\r\n.\r\n')
print(reply().decode().strip(), flush=True)
print(reply().decode().strip(), flush=True)
"#
    );
    let mut client = Command::new("python3")
        .args(["-c", &script, &server.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "in-data");
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let end_of_data = lines.next().unwrap().unwrap();
    let after = lines.next().unwrap().unwrap();
    assert!(
        end_of_data.starts_with("250 "),
        "end of data: {end_of_data}"
    );
    assert!(after.starts_with("421 "), "after the message: {after}");
    client.wait().unwrap();
    let mut server = server;
    let status = server.interrupt();
    assert!(status.success(), "serve exit status {status}");
    assert_eq!(delivered(&server.maildir(), "bob@example.net").len(), 1);
}

/// The README's first command: `smtplink serve` with no arguments and no
/// config listens on 127.0.0.1:2525 and stores into ./maildir.
#[test]
fn readme_first_command_with_curl() {
    let Some(curl) = require_tool("curl") else {
        return;
    };
    assert!(
        std::net::TcpListener::bind("127.0.0.1:2525").is_ok(),
        "port 2525 is busy: is a `smtplink serve` from the README still running? Stop it first"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = smtplink();
    cmd.arg("serve").current_dir(dir.path());
    let server = Serve::spawn(cmd, dir);
    assert_eq!(server.port, 2525);
    let message = simple_message("readme");
    let file = server.dir.path().join("readme.eml");
    std::fs::write(&file, &message).unwrap();
    let out = Command::new(curl)
        .args(["-sS", "--url", "smtp://127.0.0.1:2525"])
        .args([
            "--mail-from",
            "me@example.org",
            "--mail-rcpt",
            "you@example.net",
        ])
        .arg("--upload-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = delivered(&server.dir.path().join("maildir"), "you@example.net");
    assert_eq!(files.len(), 1);
}
