//! The store-and-forward relay end to end: two `smtplink serve` processes
//! over loopback TCP, real clients (Python's smtplib) in front, and the
//! `smtplink queue` command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn queue(spool: &Path, args: &[&str], routes: &[&str]) -> Output {
    let mut cmd = smtplink();
    cmd.arg("queue").arg("--spool").arg(spool);
    for r in routes {
        cmd.args(["--route", r]);
    }
    cmd.args(args).output().unwrap()
}

/// A routes example.net to B; 50 messages of mixed sizes (up to 2 MiB,
/// 8-bit, dot lines) to several recipients each land in B's Maildirs
/// byte-identical apart from the trace fields, and A's spool empties.
#[test]
fn two_nodes_relay_fifty_messages() {
    if require_tool("python3").is_none() {
        return;
    }
    let b = Serve::start_named("b.test", &[]);
    let route = format!("example.net=tcp://127.0.0.1:{}", b.port);
    let a = Serve::start_named("a.test", &["--route", &route]);
    let work = tempfile::tempdir().unwrap();
    let sizes = [200, 5_000, 64_000, 300_000, 2 * 1024 * 1024];
    let messages: Vec<(Vec<u8>, Vec<String>)> = (0..50)
        .map(|i| {
            let to = (0..1 + i % 3)
                .map(|r| format!("user{}@example.net", (i + r) % 7))
                .collect();
            (message("relay", i, sizes[i % sizes.len()]), to)
        })
        .collect();
    smtplib_batch(a.port, work.path(), &messages);
    let expected: usize = messages.iter().map(|(_, to)| to.len()).sum();
    wait_for("every copy at B", Duration::from_secs(120), || {
        all_files(&b.maildir())
            .iter()
            .filter(|p| p.parent().unwrap().ends_with("new"))
            .count()
            >= expected
    });
    for (i, (body, to)) in messages.iter().enumerate() {
        for rcpt in to {
            let found = delivered(&b.maildir(), rcpt).into_iter().any(|f| {
                let stored = std::fs::read(&f).unwrap();
                strip_trace(&stored) == body.as_slice()
            });
            assert!(found, "message {i} for {rcpt} not at B byte-identical");
        }
    }
    let total = all_files(&b.maildir())
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("new"))
        .count();
    assert_eq!(total, expected, "duplicates at B");
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&a.spool())
    });
}

/// B is down: A queues and `queue list` shows each message with its
/// connection error and next attempt; B comes up; `queue flush` delivers.
#[test]
fn queue_while_next_hop_is_down_then_flush() {
    if require_tool("python3").is_none() {
        return;
    }
    let b_port = free_port();
    let route = format!("example.net=tcp://127.0.0.1:{b_port}");
    let a = Serve::start_named("a.test", &["--route", &route]);
    let work = tempfile::tempdir().unwrap();
    let messages: Vec<(Vec<u8>, Vec<String>)> = (0..3)
        .map(|i| {
            (
                message("relay", i, 2_000),
                vec![format!("bob{i}@example.net")],
            )
        })
        .collect();
    smtplib_batch(a.port, work.path(), &messages);
    // A's worker tries at once and fails: the records say why and when next.
    wait_for("a failed attempt", Duration::from_secs(20), || {
        let out = queue(&a.spool(), &["list"], &[]);
        String::from_utf8_lossy(&out.stdout)
            .matches("attempts 1")
            .count()
            == 3
    });
    let out = queue(&a.spool(), &["list"], &[]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    for i in 0..3 {
        assert!(list.contains(&format!("bob{i}@example.net")), "{list}");
    }
    assert!(list.contains("Connection refused"), "{list}");
    assert!(list.contains("next try in"), "{list}");
    // Without the server's routes, flush would take everything for local
    // mail: it refuses, and the queue is untouched.
    let out = queue(&a.spool(), &["flush"], &[]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&queue(&a.spool(), &["list"], &[]).stdout)
            .matches("attempts")
            .count(),
        3
    );
    // B comes up on the port A routes to.
    let b_dir = tempfile::tempdir().unwrap();
    let mut cmd = smtplink();
    cmd.args([
        "serve",
        "--listen",
        &format!("tcp://127.0.0.1:{b_port}"),
        "--hostname",
        "b.test",
    ])
    .arg("--maildir")
    .arg(b_dir.path().join("maildir"));
    let b = Serve::spawn(cmd, b_dir);
    // Flush with three sessions to the hop: one message each.
    let config = b.dir.path().join("flush.toml");
    std::fs::write(&config, "[relay]\nsessions_per_hop = 3\n").unwrap();
    let out = queue(
        &a.spool(),
        &["--config", config.to_str().unwrap(), "flush"],
        &[&route],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("delivered 3"), "{said}");
    let sessions_at_b = b
        .log
        .try_iter()
        .filter(|l| l.contains("session opened"))
        .count();
    assert_eq!(
        sessions_at_b, 3,
        "sessions_per_hop = 3 opens three sessions"
    );
    for (i, (body, _)) in messages.iter().enumerate() {
        let files = delivered(&b.maildir(), &format!("bob{i}@example.net"));
        assert_eq!(files.len(), 1);
        assert_eq!(
            strip_trace(&std::fs::read(&files[0]).unwrap()),
            body.as_slice()
        );
    }
    assert!(spool_is_empty(&a.spool()));
    let out = queue(&a.spool(), &["list"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("queue is empty"));
}

/// Node B delivers example.net locally and refuses other.example.net
/// ("relaying denied"); it relays nothing, so it offers no DSN. Node A
/// routes both domains to B and keeps example.org (its senders) local.
fn a_relaying_to_b() -> (Serve, Serve) {
    let b = Serve::start_named("b.test", &["--route", "example.net=local"]);
    let hop = format!("tcp://127.0.0.1:{}", b.port);
    let a = Serve::start_named(
        "a.test",
        &[
            "--route",
            &format!("example.net={hop}"),
            "--route",
            &format!("other.example.net={hop}"),
            "--route",
            "example.org=local",
        ],
    );
    (a, b)
}

/// B refuses one recipient (550) and takes the other: the first earns a
/// DSN (RFC 3464) delivered into the sender's Maildir on A, the second is
/// delivered once.
#[test]
fn permanent_failure_bounces_to_the_sender() {
    if require_tool("python3").is_none() {
        return;
    }
    let (a, b) = a_relaying_to_b();
    let work = tempfile::tempdir().unwrap();
    let body = message("relay", 1, 1_000);
    smtplib_batch(
        a.port,
        work.path(),
        &[(
            body.clone(),
            vec!["good@example.net".into(), "bad@other.example.net".into()],
        )],
    );
    wait_for("the bounce at A", Duration::from_secs(30), || {
        !delivered(&a.maildir(), "a@example.org").is_empty()
    });
    let bounce = std::fs::read(&delivered(&a.maildir(), "a@example.org")[0]).unwrap();
    let text = String::from_utf8_lossy(&bounce);
    // Sent from the null sender, as RFC 3464 / RFC 5321 6.1 require.
    assert!(text.starts_with("Return-Path: <>\r\n"), "{text}");
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822;bad@other.example.net"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.7.1"), "{text}");
    assert!(text.contains("Relaying denied"), "{text}");
    assert!(
        !text.contains("Final-Recipient: rfc822;good@example.net"),
        "{text}"
    );
    let good = delivered(&b.maildir(), "good@example.net");
    assert_eq!(good.len(), 1);
    assert_eq!(
        strip_trace(&std::fs::read(&good[0]).unwrap()),
        body.as_slice()
    );
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&a.spool())
    });
}

/// A next hop that accepts connections but never says anything: with the
/// give-up age at a few seconds, the message bounces with a clear reason.
#[test]
fn silent_next_hop_gives_up_and_bounces() {
    if require_tool("python3").is_none() {
        return;
    }
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = format!("example.com=tcp://{}", silent.local_addr().unwrap());
    let a = Serve::start_with_config(
        "a.test",
        Some(
            "[relay]\nfirst_retry = 1\nmax_retry_interval = 1\ngive_up = 3\nconnect_timeout = 1\n",
        ),
        &["--route", &route, "--route", "example.org=local"],
    );
    let work = tempfile::tempdir().unwrap();
    smtplib_batch(
        a.port,
        work.path(),
        &[(message("relay", 7, 500), vec!["x@example.com".into()])],
    );
    wait_for("the give-up bounce", Duration::from_secs(60), || {
        !delivered(&a.maildir(), "a@example.org").is_empty()
    });
    let bounce = std::fs::read(&delivered(&a.maildir(), "a@example.org")[0]).unwrap();
    let text = String::from_utf8_lossy(&bounce);
    assert!(
        text.contains("Final-Recipient: rfc822;x@example.com"),
        "{text}"
    );
    assert!(text.contains("gave up after"), "{text}");
    assert!(text.contains("no answer within"), "{text}");
    drop(silent);
}

/// More `Received:` fields than `max_hops` (default 50) is a mail loop
/// (RFC 5321 6.3): refused with 554 5.4.6, nothing stored or queued.
#[test]
fn a_message_that_loops_is_refused() {
    if require_tool("python3").is_none() {
        return;
    }
    let b = Serve::start_named("b.test", &[]);
    let route = format!("example.net=tcp://127.0.0.1:{}", b.port);
    let a = Serve::start_named("a.test", &["--route", &route]);
    let with_hops = |n: usize| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!(
                "Received: from hop{i}.example by hop{}.example; Thu, 03 Dec 2026 13:42:36 +0000\r\n",
                i + 1
            ));
        }
        m + "Subject: round and round\r\n\r\nbody\r\n"
    };
    let looping = with_hops(51);
    let file = a.dir.path().join("loop.eml");
    std::fs::write(&file, &looping).unwrap();
    let script = r#"
import smtplib, sys
try:
    with smtplib.SMTP('127.0.0.1', int(sys.argv[1])) as s:
        s.sendmail('a@example.org', ['x@example.net'], open(sys.argv[2], 'rb').read())
    print('accepted')
except smtplib.SMTPDataError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &a.port.to_string()])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("refused 554 5.4.6"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spool_is_empty(&a.spool()));
    // 50 fields is still fine.
    let fifty = with_hops(50);
    assert_eq!(fifty.matches("Received:").count(), 50);
    std::fs::write(&file, &fifty).unwrap();
    let out = Command::new("python3")
        .args(["-c", script, &a.port.to_string()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("accepted"));
}

/// RFC 3461 NOTIFY honoured: SUCCESS to a next hop without DSN earns a
/// "relayed" notice; NEVER on a refused recipient earns no bounce.
#[test]
fn notify_success_and_never_are_honoured() {
    if require_tool("python3").is_none() {
        return;
    }
    let (a, b) = a_relaying_to_b();
    let file = a.dir.path().join("dsn.eml");
    std::fs::write(&file, message("relay", 3, 800)).unwrap();
    let script = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1])) as s:
    s.ehlo('client.test')
    assert s.has_extn('dsn'), s.esmtp_features
    msg = open(sys.argv[2], 'rb').read()
    s.mail('a@example.org', ['RET=HDRS', 'ENVID=QQ314159'])
    assert s.rcpt('good@example.net', ['NOTIFY=SUCCESS', 'ORCPT=rfc822;Good@example.net'])[0] == 250
    assert s.rcpt('bad@other.example.net', ['NOTIFY=NEVER'])[0] == 250
    code, _ = s.data(msg)
    assert code == 250, code
print('sent')
"#;
    let out = Command::new("python3")
        .args(["-c", script, &a.port.to_string()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the success notice at A", Duration::from_secs(30), || {
        !delivered(&a.maildir(), "a@example.org").is_empty()
    });
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&a.spool())
    });
    let notices = delivered(&a.maildir(), "a@example.org");
    assert_eq!(
        notices.len(),
        1,
        "exactly one notice: success for good, none for NEVER"
    );
    let text = String::from_utf8_lossy(&std::fs::read(&notices[0]).unwrap()).into_owned();
    assert!(
        text.contains("Final-Recipient: rfc822;good@example.net"),
        "{text}"
    );
    assert!(
        text.contains("Original-Recipient: rfc822;Good@example.net"),
        "{text}"
    );
    assert!(text.contains("Original-Envelope-Id: QQ314159"), "{text}");
    assert!(text.contains("Action: relayed"), "{text}");
    assert!(!text.contains("bad@other.example.net"), "{text}");
    assert_eq!(delivered(&b.maildir(), "good@example.net").len(), 1);
}

/// TURN (RFC 821) on a trusted point-to-point route: B holds mail for A's
/// domain; A calls B to send its own mail, says TURN, and receives B's
/// held mail in the same session.
#[test]
fn turn_brings_back_the_mail_held_for_the_caller() {
    if require_tool("python3").is_none() {
        return;
    }
    let b = Serve::start_named(
        "b.test",
        &[
            "--allow-turn",
            "--route",
            "example.net=local",
            "--route",
            "example.org=hold",
        ],
    );
    let work = tempfile::tempdir().unwrap();
    // Mail for A's users waits at B: nobody dials for `hold`.
    let held = message("relay", 11, 3_000);
    let mut batch = vec![(held.clone(), vec!["x@example.org".to_string()])];
    smtplib_batch(b.port, work.path(), &batch);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !spool_is_empty(&b.spool()),
        "held mail must stay at B until A calls"
    );
    // A has mail for B; its route says TURN after sending.
    let route = format!("example.net=tcp://127.0.0.1:{},turn", b.port);
    let a = Serve::start_named(
        "a.test",
        &["--route", &route, "--route", "example.org=local"],
    );
    let outgoing = message("relay", 12, 4_000);
    batch = vec![(outgoing.clone(), vec!["y@example.net".to_string()])];
    smtplib_batch(a.port, work.path(), &batch);
    wait_for("B's held mail at A", Duration::from_secs(30), || {
        !delivered(&a.maildir(), "x@example.org").is_empty()
    });
    let got = std::fs::read(&delivered(&a.maildir(), "x@example.org")[0]).unwrap();
    assert_eq!(strip_trace(&got), held.as_slice());
    let sent = delivered(&b.maildir(), "y@example.net");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        strip_trace(&std::fs::read(&sent[0]).unwrap()),
        outgoing.as_slice()
    );
    wait_for("B's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&b.spool())
    });
    wait_for("A's spool to empty", Duration::from_secs(10), || {
        spool_is_empty(&a.spool())
    });
}
