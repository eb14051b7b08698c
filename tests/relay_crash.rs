//! Crash safety of the relay (issue 3): node A, which relays example.net to
//! node B, is killed with SIGKILL at pseudo-random moments (fixed seed)
//! while a client sends to it and while it relays to B. After A's last
//! restart has drained its spool, every message A answered 250 for is in
//! B's Maildirs, byte for byte, for each of its recipients; nothing is
//! partial; duplicates (RFC 5321 6.1 prefers them to a loss) are counted
//! and printed, not failed on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Every pseudo-random choice of the test (message sizes, recipients, the
/// moments of the kills, the client's back-off) comes from this seed.
const SEED: u64 = 0x5eed_0003_c0de_0009;
/// Messages the client sends, one transaction each.
const MESSAGES: usize = 200;
/// SIGKILLs at least, whatever the speed of the machine.
const MIN_KILLS: usize = 20;
/// A's lifetime between two kills, in milliseconds.
const LIFETIME_MS: (u64, u64) = (20, 300);
/// The client sends in bursts (back to back, so that A's queue fills up
/// and kills also fall while it relays a backlog to B), each burst ending
/// after a message with probability 1 in BURST, then pauses for PAUSE_MS.
const BURST: usize = 20;
const PAUSE_MS: (u64, u64) = (300, 900);
/// Mailboxes at B the recipients are drawn from.
const MAILBOXES: usize = 6;

/// xorshift64*: small, good enough, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn below(&mut self, n: usize) -> usize {
        self.range(0, n as u64) as usize
    }
}

/// One message as the client sends it.
struct Sent {
    /// The message (header and body, CRLF lines), before dot-stuffing.
    body: Vec<u8>,
    /// Its recipients, distinct.
    to: Vec<String>,
}

/// Message `n`: a unique Subject and Message-ID, 1 or 2 recipients, mostly
/// small, one in ten between 50 and 200 KB (so that kills also fall in the
/// middle of a transfer), with lines that need dot-stuffing.
fn make_message(n: usize, rng: &mut Rng) -> Sent {
    let first = rng.below(MAILBOXES);
    let to: Vec<String> = (0..1 + rng.below(2))
        .map(|k| format!("user{}@example.net", (first + k) % MAILBOXES))
        .collect();
    let size = if rng.below(10) == 0 {
        rng.range(50_000, 200_000) as usize
    } else {
        rng.range(200, 4_000) as usize
    };
    let mut body = format!(
        "From: a@example.org\r\nTo: {}\r\nSubject: crash-test {n}\r\nMessage-ID: <crash-test-{n}@example.org>\r\n\r\n",
        to.join(", ")
    )
    .into_bytes();
    let mut k = 0;
    while body.len() < size {
        k += 1;
        let line = match rng.below(6) {
            0 => format!(".leading dot, line {k} of crash-test {n}"),
            1 => "..".to_string(),
            2 => String::new(),
            3 => ".".to_string(),
            4 => format!("{:x}{:x}", rng.next(), rng.next()),
            _ => format!("line {k} of crash-test {n}: {:>50}", rng.next()),
        };
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    Sent { body, to }
}

/// RFC 5321 4.5.2 transparency, plus the terminating dot line.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// How one attempt at a transaction ended.
enum Attempt {
    /// 250 to the end of data: A has the message.
    Accepted,
    /// The link broke (or was refused) before the end of data was sent: A
    /// cannot have queued the message.
    Failed(String),
    /// The end of data was sent but no reply came: A may or may not have
    /// queued it (a retry then makes a duplicate).
    Ambiguous(String),
    /// An explicit refusal of the end of data.
    Refused(String),
}

fn read_reply(r: &mut impl BufRead) -> Result<(u16, String), String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        text.push_str(&line);
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("bad reply line {line:?}"))?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text.trim_end().to_string()));
        }
    }
}

fn command(w: &mut TcpStream, r: &mut impl BufRead, line: &str, want: u16) -> Result<(), String> {
    w.write_all(line.as_bytes())
        .map_err(|e| format!("{}: {e}", line.trim_end()))?;
    match read_reply(r)? {
        (code, _) if code == want => Ok(()),
        (_, text) => Err(format!("{} -> {text}", line.trim_end())),
    }
}

/// One SMTP transaction with A for message `m`, on a new connection.
fn send_once(port: u16, m: &Sent, stuffed: &[u8]) -> Attempt {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return Attempt::Failed(format!("connect: {e}")),
    };
    // While A is down its port is free: a connection from an ephemeral port
    // to itself (TCP simultaneous open) must not count as A.
    if stream.local_addr().ok() == stream.peer_addr().ok() {
        return Attempt::Failed("connected to itself".into());
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
    let mut w = stream;
    let mut r = match w.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let before_data = (|| {
        match read_reply(&mut r)? {
            (220, _) => {}
            (_, text) => return Err(format!("greeting: {text}")),
        }
        command(&mut w, &mut r, "EHLO client.test\r\n", 250)?;
        command(&mut w, &mut r, "MAIL FROM:<a@example.org>\r\n", 250)?;
        for rcpt in &m.to {
            command(&mut w, &mut r, &format!("RCPT TO:<{rcpt}>\r\n"), 250)?;
        }
        command(&mut w, &mut r, "DATA\r\n", 354)?;
        w.write_all(stuffed).map_err(|e| format!("data: {e}"))
    })();
    if let Err(e) = before_data {
        return Attempt::Failed(e);
    }
    let outcome = match read_reply(&mut r) {
        Ok((250, _)) => Attempt::Accepted,
        Ok((_, text)) => return Attempt::Refused(text),
        Err(e) => return Attempt::Ambiguous(e),
    };
    let _ = w.write_all(b"QUIT\r\n");
    let _ = read_reply(&mut r);
    outcome
}

/// What the client saw.
#[derive(Debug, Default)]
struct ClientReport {
    /// Per message: whether A answered 250 to its end of data.
    accepted: Vec<bool>,
    /// Per message: attempts that sent the end of data and got no reply.
    ambiguous: Vec<usize>,
    /// Attempts that failed before the end of data.
    failed: usize,
    /// End of data refused outright.
    refused: Vec<String>,
    /// Why attempts failed or went unanswered, and how often.
    reasons: BTreeMap<String, usize>,
    /// When the last message was accepted.
    finished: Option<Instant>,
}

/// Sends every message, retrying each (after reconnecting) until A says
/// 250 to its end of data or `deadline` passes.
fn client(port: u16, messages: &[Sent], deadline: Instant) -> ClientReport {
    let mut rng = Rng::new(SEED ^ 0x00c1_1e47);
    let mut report = ClientReport {
        accepted: vec![false; messages.len()],
        ambiguous: vec![0; messages.len()],
        ..ClientReport::default()
    };
    for (n, m) in messages.iter().enumerate() {
        let stuffed = dot_stuff(&m.body);
        while Instant::now() < deadline {
            match send_once(port, m, &stuffed) {
                Attempt::Accepted => {
                    report.accepted[n] = true;
                    if rng.below(BURST) == 0 {
                        std::thread::sleep(Duration::from_millis(
                            rng.range(PAUSE_MS.0, PAUSE_MS.1),
                        ));
                    }
                    break;
                }
                Attempt::Failed(why) => {
                    report.failed += 1;
                    *report.reasons.entry(why).or_default() += 1;
                }
                Attempt::Ambiguous(why) => {
                    report.ambiguous[n] += 1;
                    *report
                        .reasons
                        .entry(format!("after end of data: {why}"))
                        .or_default() += 1;
                }
                Attempt::Refused(text) => report.refused.push(format!("crash-test {n}: {text}")),
            }
            std::thread::sleep(Duration::from_millis(rng.range(5, 25)));
        }
    }
    report.finished = Some(Instant::now());
    report
}

/// A's state that outlives each of its processes.
struct NodeA {
    state: tempfile::TempDir,
    port: u16,
    b_port: u16,
}

impl NodeA {
    fn spool(&self) -> PathBuf {
        self.state.path().join("spool")
    }

    fn maildir(&self) -> PathBuf {
        self.state.path().join("maildir")
    }

    /// A new A process on the same port, spool and Maildir.
    fn start(&self) -> Serve {
        let config = self.state.path().join("a.toml");
        if !config.exists() {
            // Quick retries after a restart (the worker also makes a pass
            // as soon as it starts).
            std::fs::write(
                &config,
                "[relay]\nfirst_retry = 1\nmax_retry_interval = 1\nconnect_timeout = 5\n",
            )
            .unwrap();
        }
        let mut cmd = smtplink();
        cmd.args([
            "serve",
            "--listen",
            &format!("tcp://127.0.0.1:{}", self.port),
            "--hostname",
            "a.test",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--maildir")
        .arg(self.maildir())
        .arg("--spool")
        .arg(self.spool())
        .args([
            "--route",
            &format!("example.net=tcp://127.0.0.1:{}", self.b_port),
        ]);
        let serve = Serve::spawn(cmd, tempfile::tempdir().unwrap());
        assert_eq!(serve.port, self.port);
        serve
    }
}

/// SIGKILL, and reap.
fn kill(mut serve: Serve) {
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every file in A's spool, and the records, for a failure message.
fn spool_dump(spool: &Path) -> String {
    let mut out = String::new();
    for sub in ["tmp", "msg", "env", "lock", "corrupt"] {
        out.push_str(&format!("{sub}/: {:?}\n", names(&spool.join(sub))));
    }
    for name in names(&spool.join("env")) {
        let text = std::fs::read_to_string(spool.join("env").join(&name)).unwrap_or_default();
        out.push_str(&format!("env/{name}:\n{text}\n"));
    }
    out
}

/// The trace fields (each with its continuation lines) in front of a
/// stored message, and the message after them.
fn trace_fields(stored: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let rest = strip_trace(stored);
    let trace = &stored[..stored.len() - rest.len()];
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for (i, w) in trace.windows(2).enumerate() {
        if w == b"\r\n" {
            let next = i + 2;
            let continued = trace.get(next).is_some_and(|&b| b == b' ' || b == b'\t');
            if !continued {
                fields.push(&trace[start..next]);
                start = next;
            }
        }
    }
    (fields, rest)
}

/// The `n` of `Subject: crash-test <n>` in a message's header.
fn subject_number(message: &[u8]) -> Option<usize> {
    let key = b"\r\nSubject: crash-test ";
    let at = message.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = message[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[test]
fn relay_survives_sigkill_at_random_moments() {
    let started = Instant::now();
    let mut rng = Rng::new(SEED);
    let messages: Arc<Vec<Sent>> =
        Arc::new((0..MESSAGES).map(|n| make_message(n, &mut rng)).collect());

    let b = Serve::start_named("b.test", &[]);
    let node = NodeA {
        state: tempfile::tempdir().unwrap(),
        port: free_port(),
        b_port: b.port,
    };
    let mut a = node.start();

    let sender = {
        let messages = messages.clone();
        let port = node.port;
        let deadline = Instant::now() + Duration::from_secs(120);
        std::thread::Builder::new()
            .name("crash-client".into())
            .spawn(move || client(port, &messages, deadline))
            .unwrap()
    };

    // Kill A at pseudo-random moments until the client is done, and at
    // least MIN_KILLS times.
    let mut kills = 0;
    let mut kills_while_sending = 0;
    let mut kills_while_queued = 0;
    while !sender.is_finished() || kills < MIN_KILLS {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the client did not finish"
        );
        std::thread::sleep(Duration::from_millis(
            rng.range(LIFETIME_MS.0, LIFETIME_MS.1),
        ));
        let sending = !sender.is_finished();
        let queued = !names(&node.spool().join("env")).is_empty();
        kill(a);
        kills += 1;
        kills_while_sending += usize::from(sending);
        kills_while_queued += usize::from(queued);
        a = node.start();
    }
    let report = sender.join().unwrap();
    let sent_done = report.finished.unwrap().duration_since(started);

    // The last A drains its spool.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !names(&node.spool().join("env")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "A's spool did not drain:\n{}",
            spool_dump(&node.spool())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = started.elapsed();

    // What is at B: every file in any new/ is exactly one whole message.
    let mut copies: BTreeMap<(usize, String), Vec<Vec<u8>>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in all_files(&b.maildir()) {
        let folder = file.parent().unwrap();
        if !folder.ends_with("new") {
            problems.push(format!("{} is not in a new/ folder", file.display()));
            continue;
        }
        let mailbox = folder
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let stored = std::fs::read(&file).unwrap();
        let (fields, message) = trace_fields(&stored);
        let Some(n) = subject_number(message).filter(|&n| n < MESSAGES) else {
            problems.push(format!("{} is no message of the test", file.display()));
            continue;
        };
        if message != messages[n].body.as_slice() {
            problems.push(format!(
                "{} (crash-test {n}) differs from what was sent: {} bytes stored, {} sent",
                file.display(),
                message.len(),
                messages[n].body.len()
            ));
            continue;
        }
        if !messages[n].to.contains(&mailbox) {
            problems.push(format!(
                "{} (crash-test {n}) is in a mailbox it was not sent to",
                file.display()
            ));
            continue;
        }
        // A's Received: field is the last trace field (B's is in front of
        // it): the same A field means the same spooled copy sent twice.
        let from_a = fields
            .iter()
            .rev()
            .find(|f| f.starts_with(b"Received:"))
            .map_or_else(Vec::new, |f| f.to_vec());
        copies.entry((n, mailbox)).or_default().push(from_a);
    }

    // Every acknowledged message, for each recipient; count duplicates.
    let mut missing = Vec::new();
    let mut duplicates = 0;
    let mut relay_duplicates = 0;
    let mut client_duplicates = 0;
    for (n, m) in messages.iter().enumerate() {
        for rcpt in &m.to {
            let Some(list) = copies.get(&(n, rcpt.clone())) else {
                if report.accepted[n] {
                    missing.push(format!("crash-test {n} for {rcpt}"));
                }
                continue;
            };
            let mut distinct = list.clone();
            distinct.sort();
            distinct.dedup();
            duplicates += list.len() - 1;
            // A spooled copy delivered more than once: the kill fell
            // between B's 250 and A's record of it.
            relay_duplicates += list.len() - distinct.len();
            // More than one spooled copy: the kill fell between A's commit
            // and the client's reading of the 250, and the client retried.
            client_duplicates += distinct.len() - 1;
            if distinct.len() - 1 > report.ambiguous[n] {
                problems.push(format!(
                    "crash-test {n} for {rcpt}: {} copies spooled by A, but only {} unanswered end(s) of data",
                    distinct.len(),
                    report.ambiguous[n]
                ));
            }
        }
    }
    let unacked: Vec<usize> = (0..MESSAGES).filter(|&n| !report.accepted[n]).collect();
    let ambiguous: usize = report.ambiguous.iter().sum();
    let summary = format!(
        "crash test (seed {SEED:#x}): {MESSAGES} messages, {} acknowledged; {kills} SIGKILLs \
         ({kills_while_sending} while the client was sending, {kills_while_queued} with mail queued); \
         client attempts failed before end of data: {}, unanswered end of data: {ambiguous}; \
         copies at B: {}; DUPLICATES: {duplicates} ({relay_duplicates} re-relayed by A, \
         {client_duplicates} re-sent by the client); sending took {:.1} s, drained at {:.1} s",
        MESSAGES - unacked.len(),
        report.failed,
        copies.values().map(Vec::len).sum::<usize>(),
        sent_done.as_secs_f64(),
        drained.as_secs_f64(),
    );
    println!("{summary}");
    println!(
        "client attempts that did not get a 250: {:?}",
        report.reasons
    );

    assert!(kills >= MIN_KILLS && kills_while_sending > 0, "{summary}");
    assert!(
        unacked.is_empty(),
        "never acknowledged: {unacked:?}; {summary}"
    );
    assert!(
        report.refused.is_empty(),
        "A refused end of data: {:?}; {summary}",
        report.refused
    );
    assert!(missing.is_empty(), "MISSING at B: {missing:?}; {summary}");
    assert!(problems.is_empty(), "{problems:#?}; {summary}");

    // A's spool is clean: what kills left (tmp/ files, messages without
    // records, stale locks) was repaired at the next start, and the last
    // A removed what it delivered.
    for sub in ["tmp", "msg", "env", "lock", "corrupt"] {
        let left = names(&node.spool().join(sub));
        assert!(
            left.is_empty(),
            "A's spool {sub}/ still has {left:?}; {summary}"
        );
    }
    // Nothing was for A's own Maildir.
    let local = all_files(&node.maildir());
    assert!(local.is_empty(), "A's Maildir has {local:?}; {summary}");
    kill(a);
}
