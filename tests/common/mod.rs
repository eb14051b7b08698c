//! Shared pieces of the end-to-end tests: start `smtplink serve`, find real
//! peers, read Maildirs.
//!
//! A missing peer fails the test when `CI=true` and skips it (saying so on
//! stderr) otherwise.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `smtplink` binary under test.
pub fn smtplink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtplink"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Where an external tool lives, looking in PATH and the sbin directories
/// (Postfix puts smtp-sink in /usr/sbin, often not in a user's PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Returns the tool's path, or `None` after printing why the test is skipped.
/// Panics under CI=true: CI installs every peer, so a missing one is a bug.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    match find_tool(name) {
        Some(p) => Some(p),
        None => skip_or_fail(&format!("{name} is not installed")),
    }
}

/// Whether a Python module can be imported.
pub fn require_python_module(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || skip_or_fail::<()>(&format!("python3 module {module} is not installed")).is_some()
}

fn skip_or_fail<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!("{why}; CI must have it (.ci/install-peers.sh installs it)");
    }
    // Written to the stderr handle, not with eprintln!, so the test
    // harness does not capture it: a skip must be visible in a green run.
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (install the peers with: bash .ci/install-peers.sh)"
    );
    None
}

/// A free TCP port on 127.0.0.1 (for peers that cannot report the port
/// they bound; the tiny race with other processes is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `smtplink serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: mpsc::Receiver<String>,
}

impl Serve {
    /// Starts `smtplink serve` on an ephemeral port with its Maildir in a
    /// fresh temporary directory, plus any extra arguments.
    pub fn start(extra: &[&str]) -> Serve {
        Self::start_named("mx.test", extra)
    }

    /// As [`Serve::start`], with this host name, and the relay's spool in
    /// the same temporary directory (`spool()`).
    pub fn start_named(hostname: &str, extra: &[&str]) -> Serve {
        Self::start_with_config(hostname, None, extra)
    }

    /// As [`Serve::start_named`], with `config` (TOML text) written to a
    /// file in the node's directory and passed with `--config`.
    pub fn start_with_config(hostname: &str, config: Option<&str>, extra: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = smtplink();
        cmd.args([
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
            "--hostname",
            hostname,
        ])
        .arg("--maildir")
        .arg(dir.path().join("maildir"))
        .arg("--spool")
        .arg(dir.path().join("spool"));
        if let Some(config) = config {
            let path = dir.path().join("node.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(extra);
        Self::spawn(cmd, dir)
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Spawns a prepared `serve` command and waits until it listens.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Serve {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        // Kill the child if we panic before handing it to `Serve`.
        struct KillOnPanic(Option<Child>);
        impl Drop for KillOnPanic {
            fn drop(&mut self) {
                if let Some(c) = &mut self.0 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let mut guard = KillOnPanic(Some(child));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[serve] {line}");
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on stderr.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "smtplink serve did not report a listening endpoint ({e}); it said:\n{}",
                    seen.join("\n")
                )
            });
            seen.push(line.clone());
            if let Some(rest) = line.split("endpoint=tcp://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        Serve {
            child: guard.0.take().unwrap(),
            port,
            dir,
            log: rx,
        }
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files in `<maildir>/<mailbox>/new`, sorted by name.
pub fn delivered(maildir: &Path, mailbox: &str) -> Vec<PathBuf> {
    let dir = maildir.join(mailbox).join("new");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Every file under `maildir` (any mailbox, tmp or new).
pub fn all_files(maildir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(maildir, &mut out);
    out
}

/// Splits a stored message into (trace header block, the rest). The trace
/// block is the `Return-Path:` field and the `Received:` field with its
/// folded continuation lines, exactly as `serve` prepends them.
pub fn split_trace(stored: &[u8]) -> (String, Vec<u8>) {
    let mut pos = 0;
    let mut fields = 0;
    loop {
        let end = stored[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("trace header line ends in CRLF");
        let continuation = stored[pos..].starts_with(b"\t") || stored[pos..].starts_with(b" ");
        if !continuation {
            fields += 1;
            if fields == 3 {
                break;
            }
        }
        pos += end + 2;
    }
    (
        String::from_utf8(stored[..pos].to_vec()).unwrap(),
        stored[pos..].to_vec(),
    )
}

/// Strips the leading `Return-Path:` and every leading `Received:` field
/// (with continuation lines): what the hops added in front of a message.
pub fn strip_trace(stored: &[u8]) -> &[u8] {
    let mut pos = 0;
    loop {
        let rest = &stored[pos..];
        let is_trace = rest.starts_with(b"Return-Path:")
            || rest.starts_with(b"Received:")
            || (pos > 0 && (rest.starts_with(b"\t") || rest.starts_with(b" ")));
        if !is_trace {
            return rest;
        }
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(end) => pos += end + 2,
            None => return rest,
        }
    }
}

/// Asserts the trace block is what RFC 5321 4.4 asks for.
pub fn assert_trace(trace: &str, reverse_path: &str) {
    assert!(
        trace.starts_with(&format!("Return-Path: <{reverse_path}>\r\nReceived: from ")),
        "trace headers: {trace:?}"
    );
    assert!(
        trace.contains("by mx.test with"),
        "trace headers: {trace:?}"
    );
}

impl Serve {
    /// Spawns a prepared `serve` command and waits until a line of its log
    /// contains `needle`: for listeners that are not on TCP, e.g.
    /// `"endpoint=serial://"`. `port` is 0.
    pub fn spawn_until(mut cmd: Command, dir: tempfile::TempDir, needle: &str) -> Serve {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[serve] {line}");
                let _ = tx.send(line);
            }
        });
        let serve = Serve {
            child,
            port: 0,
            dir,
            log: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // On panic `serve` is dropped, which kills the child.
            let line = serve.log.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "smtplink serve never logged {needle:?} ({e}); it said:\n{}",
                    seen.join("\n")
                )
            });
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return serve;
            }
        }
    }
}

/// Sends every message with one smtplib session each; prints "ok N".
const SMTPLIB_BATCH: &str = r#"
import smtplib, sys, json
port, spec = int(sys.argv[1]), json.load(open(sys.argv[2]))
for m in spec:
    with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test') as s:
        refused = s.sendmail(m['from'], m['to'], open(m['file'], 'rb').read(), mail_options=m['opts'])
        assert not refused, refused
print('ok', len(spec))
"#;

/// A message of about `size` bytes: 8-bit text, lines starting with dots;
/// `tag` goes into the Subject.
pub fn message(tag: &str, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: a@example.org\r\nTo: several\r\nSubject: {tag} test {i}\r\nMessage-ID: <{i}@example.org>\r\n\r\n"
    )
    .into_bytes();
    let mut n = 0u32;
    while m.len() < size {
        n += 1;
        let line = match n % 4 {
            0 => format!(".dot line {n} of message {i}"),
            1 => format!("caf\u{e9} na\u{ef}ve line {n} \u{2014} \u{fc}ber"),
            2 => "..".to_string(),
            _ => format!("{:>70}", n),
        };
        m.extend_from_slice(line.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m
}

pub fn smtplib_batch(port: u16, dir: &Path, messages: &[(Vec<u8>, Vec<String>)]) {
    let mut spec = Vec::new();
    for (i, (body, to)) in messages.iter().enumerate() {
        let file = dir.join(format!("m{i}.eml"));
        std::fs::write(&file, body).unwrap();
        spec.push(format!(
            "{{\"from\": \"a@example.org\", \"to\": [{}], \"file\": \"{}\", \"opts\": [\"BODY=8BITMIME\"]}}",
            to.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(","),
            file.display()
        ));
    }
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, format!("[{}]", spec.join(","))).unwrap();
    let out = Command::new("python3")
        .args(["-c", SMTPLIB_BATCH, &port.to_string()])
        .arg(&spec_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a relay spool holds no message (no envelope record).
pub fn spool_is_empty(spool: &Path) -> bool {
    std::fs::read_dir(spool.join("env")).map_or(true, |mut d| d.next().is_none())
}

/// Polls `done` every 50 ms until it holds; fails after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A self-signed pair for localhost and 127.0.0.1 made by `smtplink
/// gen-cert`, and the pin it printed; the files live as long as this.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[allow(dead_code)]
    pub pin: String,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
pub fn gen_cert() -> Cert {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let out = smtplink()
        .args(["gen-cert", "localhost", "127.0.0.1", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(pin.starts_with("pin:sha256:"), "{pin}");
    Cert {
        cert,
        key,
        pin,
        _dir: dir,
    }
}

/// A fake SMTP server on 127.0.0.1 for one client, for tests that watch
/// what a client sends: it greets with `220 plain ESMTP`, answers each
/// complete line with `answer(line)` (nothing when that is `None`), and
/// hands back everything the client sent once it hangs up. Returns the
/// port and the task.
pub async fn fake_server(
    answer: fn(&str) -> Option<&'static [u8]>,
) -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        tcp.write_all(b"220 plain ESMTP\r\n").await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = 0;
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            let lines: Vec<&str> = text.split_inclusive("\r\n").collect();
            while answered < lines.len() && lines[answered].ends_with("\r\n") {
                let line = lines[answered];
                answered += 1;
                if let Some(reply) = answer(line) {
                    // The client may already have hung up (after QUIT).
                    let _ = tcp.write_all(reply).await;
                }
            }
        }
        String::from_utf8(seen).unwrap()
    });
    (port, task)
}

/// Writes a small message with Subject `tag` and body `text` to
/// `dir/tag.eml` and returns its path.
pub fn message_file(dir: &Path, tag: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{tag}.eml"));
    std::fs::write(
        &path,
        format!("From: a@example.org\r\nSubject: {tag}\r\n\r\n{text}\r\n"),
    )
    .unwrap();
    path
}
