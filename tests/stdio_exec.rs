//! The `stdio:` and `exec:` transports end to end: real clients (swaks
//! `--pipe`, Python's smtplib over a child's pipes) drive `smtplink serve
//! --listen stdio:`, and one node relays to another by running it with
//! `exec:smtplink serve --listen stdio: ...`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Speaks SMTP with smtplib over the pipes of a child process (smtplib
/// wants a socket; this one writes to the child's stdin and reads its
/// stdout). Sends one message, QUITs, and prints the child's exit status.
const SMTPLIB_OVER_PIPES: &str = r#"
import smtplib, subprocess, sys
argv, sender, rcpt, path = sys.argv[1:-3], sys.argv[-3], sys.argv[-2], sys.argv[-1]

class PipeSock:
    def __init__(self, proc):
        self.proc = proc
    def sendall(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
    def makefile(self, mode):
        return self.proc.stdout
    def close(self):
        self.proc.stdin.close()

proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
s = smtplib.SMTP(local_hostname='client.test')
s.sock = PipeSock(proc)
code, msg = s.getreply()
assert code == 220, (code, msg)
refused = s.sendmail(sender, [rcpt], open(path, 'rb').read(), mail_options=['BODY=8BITMIME'])
assert not refused, refused
s.quit()
print('exit', proc.wait(timeout=20))
"#;

/// Sends each message in its own smtplib session to 127.0.0.1:PORT.
const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port, sender, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
for rcpt, path in zip(rest[0::2], rest[1::2]):
    with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test') as s:
        refused = s.sendmail(sender, [rcpt], open(path, 'rb').read(), mail_options=['BODY=8BITMIME'])
        assert not refused, refused
print('ok')
"#;

/// Runs `cmd` to completion, failing the test if it takes over `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    // Collect the output on a thread so a chatty child never blocks.
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{cmd:?} did not finish in {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The one message stored for `rcpt`, checked to be `body` plus trace
/// fields that name the stdio link.
fn assert_stored(maildir: &Path, rcpt: &str, body: &[u8], by: &str) {
    let files = delivered(maildir, rcpt);
    assert_eq!(files.len(), 1, "{rcpt}: {files:?}");
    let stored = std::fs::read(&files[0]).unwrap();
    // The newest trace fields (this hop's) come first.
    let (trace, _) = split_trace(&stored);
    assert!(
        trace.contains("(stdio)") && trace.contains(&format!("by {by} with ESMTP")),
        "trace headers: {trace:?}"
    );
    assert!(
        strip_trace(&stored) == body,
        "{rcpt}: stored message differs from what was sent"
    );
}

/// Processes with `arg` as one of their arguments (Linux /proc; elsewhere
/// none are found, which only weakens the check).
fn processes_with_arg(arg: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        e.file_name().to_str()?.parse::<u32>().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|&b| b == 0)
            .any(|a| a == arg.as_bytes())
            .then(|| String::from_utf8_lossy(&cmdline).replace('\0', " "))
    })
    .collect()
}

/// `smtplink serve --listen stdio:` as swaks `--pipe` and as smtplib over
/// pipes: each message lands byte-identical apart from the trace fields,
/// and serve exits 0 once the session is over.
#[test]
fn stdio_serves_one_session_and_exits() {
    let work = tempfile::tempdir().unwrap();
    let maildir = work.path().join("maildir");
    let bin = env!("CARGO_BIN_EXE_smtplink");
    let serve_argv = [
        bin,
        "serve",
        "--listen",
        "stdio:",
        "--maildir",
        maildir.to_str().unwrap(),
        "--hostname",
        "mx.test",
    ];
    let mut ran = 0;

    if let Some(swaks) = require_tool("swaks") {
        let body = message("pipe", 1, 30_000);
        let file = work.path().join("swaks.eml");
        // swaks ends the data with CRLF "." CRLF itself; a file that ends
        // in CRLF would gain an empty line.
        std::fs::write(&file, body.strip_suffix(b"\r\n").unwrap()).unwrap();
        // A wrapper records serve's exit status (swaks does not say).
        let status_file = work.path().join("swaks-serve.status");
        let wrapper = work.path().join("serve.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nRUST_LOG=info \"$@\"\necho $? > '{}'\n",
                status_file.display()
            ),
        )
        .unwrap();
        let started = Instant::now();
        let out = run_with_timeout(
            Command::new(swaks)
                .arg("--pipe")
                .arg(format!("sh {} {}", wrapper.display(), serve_argv.join(" ")))
                .args(["--from", "a@example.org", "--to", "swaks@example.net"])
                .args(["--helo", "client.test"])
                .arg("--data")
                .arg(format!("@{}", file.display())),
            Duration::from_secs(20),
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "swaks: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("<-  250 2.0.0"), "{said}");
        wait_for("serve to exit", Duration::from_secs(10), || {
            status_file.exists()
        });
        assert_eq!(
            std::fs::read_to_string(&status_file).unwrap().trim(),
            "0",
            "serve's exit status"
        );
        println!("swaks --pipe session: {:?}", started.elapsed());
        assert_stored(&maildir, "swaks@example.net", &body, "mx.test");
        ran += 1;
    }

    if require_tool("python3").is_some() {
        let body = message("pipe", 2, 200_000);
        let file = work.path().join("smtplib.eml");
        std::fs::write(&file, &body).unwrap();
        let started = Instant::now();
        let out = run_with_timeout(
            Command::new("python3")
                .args(["-c", SMTPLIB_OVER_PIPES])
                .args(serve_argv)
                .args(["a@example.org", "smtplib@example.net"])
                .arg(&file),
            Duration::from_secs(20),
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "smtplib: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(said.trim(), "exit 0", "serve's exit status");
        println!("smtplib over pipes: {:?}", started.elapsed());
        assert_stored(&maildir, "smtplib@example.net", &body, "mx.test");
        ran += 1;
    }
    if ran == 0 {
        return;
    }
    assert!(
        processes_with_arg(maildir.to_str().unwrap()).is_empty(),
        "serve is still running"
    );
}

/// Node A relays example.net by running node B as
/// `exec:smtplink serve --listen stdio: ...`: every message reaches B's
/// Maildir byte-identical apart from the trace fields, A's spool empties,
/// and no B process is left behind.
#[test]
fn exec_relays_to_a_stdio_node() {
    if require_tool("python3").is_none() {
        return;
    }
    let b_dir = tempfile::tempdir().unwrap();
    let b_maildir = b_dir.path().join("maildir");
    let route = format!(
        "example.net=exec:{} serve --listen stdio: --maildir {} --hostname b.test",
        env!("CARGO_BIN_EXE_smtplink"),
        b_maildir.display()
    );
    let a = Serve::start_named("a.test", &["--route", &route]);
    let work = tempfile::tempdir().unwrap();
    let messages: Vec<(String, Vec<u8>)> = [500, 40_000, 300_000]
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            (
                format!("user{i}@example.net"),
                message("pipe", 10 + i, size),
            )
        })
        .collect();
    let mut args: Vec<PathBuf> = Vec::new();
    for (i, (rcpt, body)) in messages.iter().enumerate() {
        let file = work.path().join(format!("m{i}.eml"));
        std::fs::write(&file, body).unwrap();
        args.push(rcpt.into());
        args.push(file);
    }
    let started = Instant::now();
    let out = run_with_timeout(
        Command::new("python3")
            .args(["-c", SMTPLIB_SEND, &a.port.to_string(), "a@example.org"])
            .args(&args),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "smtplib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("every message at B", Duration::from_secs(20), || {
        messages
            .iter()
            .all(|(rcpt, _)| !delivered(&b_maildir, rcpt).is_empty())
    });
    println!("3 messages relayed over exec: {:?}", started.elapsed());
    for (rcpt, body) in &messages {
        assert_stored(&b_maildir, rcpt, body, "b.test");
    }
    let stored = all_files(&b_maildir)
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("new"))
        .count();
    assert_eq!(stored, messages.len(), "duplicates at B");
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        std::fs::read_dir(a.spool().join("env")).map_or(true, |mut d| d.next().is_none())
    });
    // Each B served its session and exited; A reaped it.
    wait_for("B processes to exit", Duration::from_secs(10), || {
        processes_with_arg(b_maildir.to_str().unwrap()).is_empty()
    });
}

/// A route to a command that exits at once leaves the message queued, and
/// `smtplink queue list` says why: the child's exit status.
#[test]
fn exec_child_that_exits_early_defers_with_its_status() {
    if require_tool("python3").is_none() {
        return;
    }
    let a = Serve::start_named("a.test", &["--route", "example.net=exec:false"]);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("m.eml");
    std::fs::write(&file, message("pipe", 20, 2_000)).unwrap();
    let out = run_with_timeout(
        Command::new("python3")
            .args(["-c", SMTPLIB_SEND, &a.port.to_string(), "a@example.org"])
            .arg("dave@example.net")
            .arg(&file),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = || {
        let out = smtplink()
            .arg("queue")
            .arg("--spool")
            .arg(a.spool())
            .arg("list")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("a failed attempt", Duration::from_secs(20), || {
        list().contains("attempts 1")
    });
    let listing = list();
    assert!(listing.contains("dave@example.net"), "{listing}");
    assert!(
        listing.contains("pending"),
        "deferred, not failed: {listing}"
    );
    assert!(
        listing.contains("child process false exited with status 1"),
        "{listing}"
    );
}
