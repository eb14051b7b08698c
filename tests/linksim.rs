//! `smtplink linksim`: the simulated line as a proxy between real endpoints.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{delivered, message, require_tool, smtplib_batch, smtplink, strip_trace, Serve};

/// Python's smtplib through `linksim --once` at 57600 baud into `serve`:
/// the message arrives byte-identical and the counters account for every
/// byte of both directions.
#[test]
fn smtplib_through_linksim_arrives_and_is_counted() {
    if require_tool("python3").is_none() {
        return;
    }
    let serve = Serve::start(&[]);
    let mut linksim = smtplink()
        .args(["linksim", "--a", "tcp://127.0.0.1:0", "--b", &serve.url()])
        .args([
            "--baud",
            "57600",
            "--latency",
            "20",
            "--seed",
            "3",
            "--once",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(linksim.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("linksim did not say where it listens: {line:?}"));

    let body = message("linksim", 1, 4000);
    let work = tempfile::tempdir().unwrap();
    smtplib_batch(
        port,
        work.path(),
        &[(body.clone(), vec!["rcpt@mx.test".into()])],
    );

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = linksim.wait().unwrap();
    assert!(status.success(), "linksim: {status:?}\n{rest}");
    let files = delivered(&serve.maildir(), "rcpt@mx.test");
    assert_eq!(files.len(), 1);
    assert_eq!(strip_trace(&std::fs::read(&files[0]).unwrap()), &body[..]);

    // "A->B offered N delivered N ..." for both directions: a clean line
    // delivers every byte offered, and the client sent at least the message.
    let counters: Vec<(u64, u64)> = rest
        .lines()
        .filter(|l| l.contains("offered"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| -> u64 {
                let i = words.iter().position(|w| *w == key).unwrap();
                words[i + 1].parse().unwrap()
            };
            (after("offered"), after("delivered"))
        })
        .collect();
    assert_eq!(counters.len(), 2, "{rest}");
    assert!(counters.iter().all(|(o, d)| o == d), "{rest}");
    assert!(counters[0].0 > body.len() as u64, "{rest}");
    assert!(counters[1].0 > 0, "{rest}");
}

#[test]
fn bad_rates_are_configuration_errors() {
    for flags in [
        &["--ber", "2"][..],
        &["--drop=-1"][..],
        &["--burst", "1e-5"][..],
    ] {
        let out = smtplink()
            .args([
                "linksim",
                "--a",
                "tcp://127.0.0.1:0",
                "--b",
                "tcp://127.0.0.1:9",
            ])
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flags[0].split('=').next().unwrap()),
            "{flags:?}: {stderr}"
        );
    }
    let out = smtplink()
        .args(["linksim", "--a", "mem://x", "--b", "tcp://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

/// `bench-link` over the adapter on a noisy line: every message intact,
/// the table ends with `goodput F` and F is a fraction.
#[test]
fn bench_link_reports_goodput_and_loses_nothing() {
    let out = smtplink()
        .args([
            "bench-link",
            "--baud",
            "9600",
            "--ber",
            "1e-4",
            "--seed",
            "2",
        ])
        .args(["--messages", "4", "--size", "3000", "--sessions", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4 sent, 4 intact, 0 corrupted, 0 missing"),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap();
    let goodput: f64 = last.strip_prefix("goodput ").unwrap().parse().unwrap();
    assert!(goodput > 0.0 && goodput < 1.0, "{last}");
}

/// Raw SMTP on the same kind of line has no error correction: at a bit
/// error rate of 1e-3 something is lost or altered, and the exit status
/// says so.
#[test]
fn bench_link_raw_on_a_noisy_line_shows_the_damage() {
    let out = smtplink()
        .args([
            "bench-link",
            "--raw",
            "--baud",
            "9600",
            "--ber",
            "1e-3",
            "--seed",
            "2",
        ])
        .args(["--messages", "4", "--size", "3000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("4 intact"), "{stdout}");
}
