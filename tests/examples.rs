//! Runs the examples under examples/ and checks what they report, so they
//! cannot rot: each example's `run()` is called directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // its `main` and some report fields are for `cargo run`
#[path = "../examples/unix_socket_transport.rs"]
mod unix_socket_transport;

#[allow(dead_code)]
#[path = "../examples/duplex_without_transport.rs"]
mod duplex_without_transport;

use std::time::Duration;

/// Generous: each example finishes in well under a second.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_transport_relays_a_message() {
    let report = tokio::time::timeout(LIMIT, unix_socket_transport::run())
        .await
        .expect("example timed out")
        .expect("example failed");

    assert!(
        report.endpoint.starts_with("unix:///"),
        "{}",
        report.endpoint
    );
    assert_eq!(report.submitted.len(), 1);
    for (rcpt, code, text) in &report.submitted {
        assert_eq!(*code, 250, "A refused <{rcpt}>: {code} {text}");
    }
    assert_eq!(report.stats.delivered, 1, "{:?}", report.stats);
    assert_eq!(report.stats.deferred + report.stats.failed, 0);
    assert_eq!(report.left_in_spool, 0, "A's spool did not empty");

    // B's one session came over the Unix socket, not some other way.
    assert_eq!(report.links_at_b.len(), 1, "{:?}", report.links_at_b);
    let link = &report.links_at_b[0];
    assert_eq!(link.kind, "unix");
    assert!(
        link.peer.starts_with(&format!("{}#", report.endpoint)),
        "{}",
        link.peer
    );

    // Byte-identical apart from the trace fields: B's Return-Path: and
    // Received:, then A's Received:.
    assert_eq!(
        String::from_utf8_lossy(&report.body),
        String::from_utf8_lossy(&report.sent)
    );
    assert_eq!(report.body, report.sent);
    assert!(
        report
            .trace
            .starts_with("Return-Path: <alice@example.org>\r\nReceived: from a.test"),
        "{}",
        report.trace
    );
    assert!(report.trace.contains("by b.test"), "{}", report.trace);
    assert!(report.trace.contains("by a.test"), "{}", report.trace);
    assert_eq!(report.trace.matches("Received:").count(), 2);
}

#[tokio::test]
async fn unix_transport_reports_endpoint_mistakes_and_absent_peers() {
    use smtplink_transport::{Endpoint, Transport, TransportError};
    use unix_socket_transport::UnixTransport;

    let transport = UnixTransport::new();
    for (text, reason) in [
        ("unix://host/tmp/x.sock", "no host or port"),
        ("unix://", "missing socket path"),
        ("unix:/tmp/x.sock", "expected unix:///path/to/socket"),
        ("unix:///tmp/x.sock?mode=600", "unknown option 'mode'"),
    ] {
        let endpoint: Endpoint = text.parse().unwrap();
        let err = transport.connect(&endpoint).await.unwrap_err();
        assert!(
            matches!(err, TransportError::InvalidEndpoint { .. }),
            "{text}: {err:?}"
        );
        assert!(err.to_string().contains(reason), "{text}: {err}");
        assert!(transport.listen(&endpoint).await.is_err(), "{text}");
    }

    // Nobody listening: a transient error, so a relay retries later.
    let dir = tempfile::tempdir().unwrap();
    let endpoint: Endpoint = format!("unix://{}", dir.path().join("none.sock").display())
        .parse()
        .unwrap();
    let err = transport.connect(&endpoint).await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    // Listening twice on one path is refused while the first listener
    // lives; dropping it frees the path (and removes the socket file).
    let first = transport.listen(&endpoint).await.unwrap();
    let err = transport.listen(&endpoint).await.err().unwrap();
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::AddrInUse), "{err}");
    drop(first);
    assert!(!dir.path().join("none.sock").exists());
    let again = transport.listen(&endpoint).await.unwrap();
    assert_eq!(again.local_endpoint(), endpoint);
}

#[tokio::test]
async fn duplex_without_transport_sends_two_messages() {
    let report = tokio::time::timeout(LIMIT, duplex_without_transport::run())
        .await
        .expect("example timed out")
        .expect("example failed");

    assert_eq!(report.server_link.kind, "duplex");
    assert_eq!(report.sent.len(), 2);
    assert!(!report.sent[0].is_ascii(), "the first message is 8-bit");
    assert!(
        report.sent[1]
            .split(|&b| b == b'\n')
            .any(|l| l.starts_with(b".")),
        "the second has lines starting with dots"
    );

    // Three recipients over the two messages, each answered 250.
    let recipients: Vec<(usize, &str)> = report
        .replies
        .iter()
        .map(|(index, rcpt, _, _)| (*index, rcpt.as_str()))
        .collect();
    assert_eq!(
        recipients,
        [
            (0, "anna@example.net"),
            (0, "ben@example.net"),
            (1, "carl@example.net")
        ]
    );
    for (index, rcpt, code, text) in &report.replies {
        assert_eq!(*code, 250, "message {index} <{rcpt}>: {code} {text}");
    }

    // What the backend got is exactly what was sent: no trace fields are
    // added by this backend, and dot-stuffing is undone.
    assert_eq!(report.received.len(), 2);
    for (sent, received) in report.sent.iter().zip(&report.received) {
        assert_eq!(received.body, *sent);
    }
    assert_eq!(report.received[0].from, "juergen@example.org");
    assert_eq!(
        report.received[0].to,
        ["anna@example.net", "ben@example.net"]
    );
    assert_eq!(report.received[1].to, ["carl@example.net"]);
}
