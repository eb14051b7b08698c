//! MX routing against a DNS fixture on 127.0.0.1: never the network.
//!
//! The fixture is a tiny authoritative UDP responder for a fixed zone:
//!
//! ```text
//! example.net       MX 20 mx2.example.net.   (listed first: order is ours to fix)
//! example.net       MX 10 mx1.example.net.
//! mx1.example.net   A  127.0.0.1
//! mx2.example.net   A  127.0.0.1
//! nomx.example      A  127.0.0.1             (implicit MX)
//! null.example      MX 0 .                   (null MX, RFC 7505)
//! dangling.example  MX 10 gone.example.      (an exchange that does not exist)
//! servfail.example  → SERVFAIL
//! anything else     → NXDOMAIN
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtplink_driver::{serve_link, ServerSettings, Shutdown};
use smtplink_maildir::MaildirStore;
use smtplink_relay::mx::{MxError, MxResolver, ResolverChoice};
use smtplink_relay::{
    NewEnvelope, NewRecipient, RecipientState, RelayBackend, RelayContext, Route, RoutingTable,
    Spool, Worker, WorkerSettings,
};
use smtplink_transport::Registry;
use tokio::net::{TcpListener, UdpSocket};

// ---------------------------------------------------------------- DNS fixture

const TYPE_A: u16 = 1;
const TYPE_MX: u16 = 15;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;

/// Record data of one type, already in wire form.
enum Rr {
    A(Ipv4Addr),
    Mx(u16, &'static str),
}

/// The zone: `Err(rcode)` for a name that fails, records otherwise (an
/// empty answer for a type the name lacks).
fn zone(name: &str) -> Result<Vec<Rr>, u8> {
    let lo = Ipv4Addr::LOCALHOST;
    Ok(match name {
        "example.net" => vec![Rr::Mx(20, "mx2.example.net"), Rr::Mx(10, "mx1.example.net")],
        "mx1.example.net" | "mx2.example.net" | "nomx.example" => vec![Rr::A(lo)],
        "null.example" => vec![Rr::Mx(0, "")],
        "dangling.example" => vec![Rr::Mx(10, "gone.example")],
        "servfail.example" => return Err(RCODE_SERVFAIL),
        _ => return Err(RCODE_NXDOMAIN),
    })
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The response to one query datagram; `None` for anything that is not a
/// plain one-question query.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // QNAME: uncompressed labels up to the root.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question = query.get(12..pos + 4)?;
    let name = labels.join(".");

    let (rcode, records) = match zone(&name) {
        Ok(rrs) => (0, rrs),
        Err(rcode) => (rcode, Vec::new()),
    };
    let mut answers = Vec::new();
    let mut count = 0u16;
    for rr in records {
        let (rtype, rdata) = match rr {
            Rr::A(ip) => (TYPE_A, ip.octets().to_vec()),
            Rr::Mx(pref, exchange) => {
                let mut d = pref.to_be_bytes().to_vec();
                put_name(&mut d, exchange);
                (TYPE_MX, d)
            }
        };
        if rtype != qtype {
            continue;
        }
        answers.extend_from_slice(&[0xC0, 12]); // the question's name
        answers.extend_from_slice(&rtype.to_be_bytes());
        answers.extend_from_slice(&1u16.to_be_bytes()); // IN
        answers.extend_from_slice(&300u32.to_be_bytes());
        answers.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        answers.extend_from_slice(&rdata);
        count += 1;
    }
    let mut out = Vec::with_capacity(12 + question.len() + answers.len());
    out.extend_from_slice(&query[0..2]); // ID
                                         // QR, the query's opcode, AA, the query's RD; RA and the rcode.
    out.push(0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    out.extend_from_slice(&answers);
    Some(out)
}

/// Starts the fixture on 127.0.0.1 (an ephemeral UDP port); it answers
/// until the test's runtime ends.
async fn dns_fixture() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = answer(&buf[..n]) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

async fn resolver() -> MxResolver {
    MxResolver::new(ResolverChoice::Nameserver(dns_fixture().await)).unwrap()
}

// ------------------------------------------------------------ resolver tests

#[tokio::test]
async fn mx_hosts_in_preference_order() {
    let r = resolver().await;
    let hosts = r.resolve("Example.NET").await.unwrap();
    let names: Vec<(&str, u16)> = hosts
        .iter()
        .map(|h| (h.exchange.as_str(), h.preference))
        .collect();
    assert_eq!(names, [("mx1.example.net", 10), ("mx2.example.net", 20)]);
    for h in &hosts {
        assert_eq!(h.addresses, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    // Both exchanges share an address: it is tried once.
    assert_eq!(
        r.next_hops("example.net", 2525).await.unwrap(),
        ["tcp://127.0.0.1:2525"]
    );
}

#[tokio::test]
async fn no_mx_means_the_domain_itself() {
    let r = resolver().await;
    let hosts = r.resolve("nomx.example").await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].exchange, "nomx.example");
    assert_eq!(hosts[0].preference, 0);
    assert_eq!(hosts[0].addresses, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    assert_eq!(
        r.next_hops("nomx.example", 25).await.unwrap(),
        ["tcp://127.0.0.1:25"]
    );
}

#[tokio::test]
async fn null_mx_fails_for_good() {
    let e = resolver().await.resolve("null.example").await.unwrap_err();
    assert!(matches!(e, MxError::NullMx { .. }), "{e:?}");
    assert!(e.is_permanent());
    assert_eq!(e.status(), (5, 1, 10));
    assert_eq!(
        e.to_string(),
        "MX lookup for null.example: Recipient address has null MX (RFC 7505)"
    );
}

#[tokio::test]
async fn nxdomain_fails_for_good() {
    let e = resolver()
        .await
        .resolve("nowhere.example")
        .await
        .unwrap_err();
    assert!(matches!(e, MxError::NoSuchDomain { .. }), "{e:?}");
    assert!(e.is_permanent());
    assert_eq!(e.status(), (5, 1, 2));
    assert!(
        e.to_string()
            .starts_with("MX lookup for nowhere.example: bad destination system address"),
        "{e}"
    );
}

#[tokio::test]
async fn exchange_without_address_fails_for_good() {
    let e = resolver()
        .await
        .resolve("dangling.example")
        .await
        .unwrap_err();
    assert!(matches!(e, MxError::NoAddress { .. }), "{e:?}");
    assert_eq!(e.status(), (5, 4, 4));
    assert!(e.to_string().contains("gone.example"), "{e}");
}

#[tokio::test]
async fn servfail_is_temporary() {
    let e = resolver()
        .await
        .resolve("servfail.example")
        .await
        .unwrap_err();
    assert!(matches!(e, MxError::Temporary { .. }), "{e:?}");
    assert!(!e.is_permanent());
    assert!(
        e.to_string()
            .starts_with("MX lookup for servfail.example: temporary DNS failure"),
        "{e}"
    );
}

#[tokio::test]
async fn silent_nameserver_is_temporary() {
    // A bound socket that never answers: the lookup times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = MxResolver::with_timeout(
        ResolverChoice::Nameserver(silent.local_addr().unwrap()),
        Some(Duration::from_millis(300)),
    )
    .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), r.resolve("example.net"))
        .await
        .expect("the resolver gives up by itself")
        .unwrap_err();
    assert!(!e.is_permanent(), "{e:?}");
    drop(silent);
}

#[tokio::test]
async fn address_literal_needs_no_dns() {
    let r = resolver().await;
    assert_eq!(
        r.next_hops("[127.0.0.1]", 25).await.unwrap(),
        ["tcp://127.0.0.1:25"]
    );
    assert_eq!(
        r.next_hops("[IPv6:::1]", 25).await.unwrap(),
        ["tcp://[::1]:25"]
    );
}

// ---------------------------------------------------------- through the Worker

/// An SMTP sink on 127.0.0.1: smtplink's own server delivering everything
/// into Maildirs under `root`. Returns its port.
async fn smtp_sink(root: &Path) -> u16 {
    let ctx = Arc::new(RelayContext {
        hostname: "mx1.example.net".into(),
        routes: RoutingTable::default(),
        store: MaildirStore::new(root, "mx1.example.net"),
        spool: None,
        max_hops: 50,
        wake: Arc::new(tokio::sync::Notify::new()),
        allow_turn: false,
    });
    let backend: Arc<dyn smtplink_driver::Backend> = Arc::new(RelayBackend::new(ctx));
    let mut settings = ServerSettings::default();
    settings.engine.hostname = "mx1.example.net".into();
    let settings = Arc::new(settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let link = smtplink_tcp::link_from_stream(stream).unwrap();
            tokio::spawn(serve_link(
                link,
                settings.clone(),
                backend.clone(),
                Shutdown::new(),
            ));
        }
    });
    port
}

/// Messages (file contents) in `root`'s Maildir for `recipient`.
fn delivered(root: &Path, recipient: &str) -> Vec<String> {
    let dir = MaildirStore::new(root, "x")
        .mailbox_path(recipient)
        .join("new");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| String::from_utf8(std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_delivers_by_mx_and_reports_lookup_failures() {
    let dns = dns_fixture().await;
    let sink_dir = tempfile::tempdir().unwrap();
    let mx_port = smtp_sink(sink_dir.path()).await;

    let spool_dir = tempfile::tempdir().unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(spool_dir.path()).unwrap());
    let ctx = Arc::new(RelayContext {
        hostname: "relay.test".into(),
        routes: RoutingTable::new(vec![
            Route::parse("relay.test=local").unwrap(),
            Route::parse("*=mx").unwrap(),
        ]),
        store: MaildirStore::new(local_dir.path(), "relay.test"),
        spool: Some(spool.clone()),
        max_hops: 50,
        wake: Arc::new(tokio::sync::Notify::new()),
        allow_turn: false,
    });

    let body = b"From: alice@relay.test\r\nTo: bob@example.net\r\nSubject: via MX\r\n\r\nHello over MX.\r\n";
    let mut w = spool.begin().unwrap();
    w.write_all(body).unwrap();
    let id = w
        .commit(NewEnvelope {
            sender: "alice@relay.test".into(),
            arrived: now(),
            peer: "127.0.0.1".into(),
            helo: "client.test".into(),
            envid: None,
            ret: None,
            is_bounce: false,
            recipients: [
                "bob@example.net",
                "carol@example.net",
                "dave@nomx.example",
                "erin@null.example",
                "frank@nowhere.example",
                "grace@servfail.example",
            ]
            .into_iter()
            .map(NewRecipient::new)
            .collect(),
        })
        .unwrap();

    let registry = Registry::new().with("tcp", Arc::new(smtplink_tcp::TcpTransport::new()));
    let settings = WorkerSettings {
        mx_port,
        resolver: ResolverChoice::Nameserver(dns),
        connect_timeout: Duration::from_secs(10),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(ctx, spool.clone(), registry, settings);
    let stats = tokio::time::timeout(Duration::from_secs(120), worker.run_once(None))
        .await
        .expect("one pass finishes");

    // example.net (two recipients, one session) and nomx.example by MX.
    assert_eq!(stats.delivered, 3, "{stats:?}");
    // null MX and NXDOMAIN fail for good, in one bounce to alice.
    assert_eq!(stats.failed, 2, "{stats:?}");
    assert_eq!(stats.bounces, 1, "{stats:?}");
    // SERVFAIL waits for the next try.
    assert_eq!(stats.deferred, 1, "{stats:?}");

    for rcpt in ["bob@example.net", "carol@example.net", "dave@nomx.example"] {
        let got = delivered(sink_dir.path(), rcpt);
        assert_eq!(got.len(), 1, "{rcpt}: {got:?}");
        assert!(got[0].contains("Subject: via MX"), "{}", got[0]);
        assert!(got[0].ends_with("Hello over MX.\r\n"), "{}", got[0]);
    }

    let record = spool.load(&id).unwrap();
    let by_addr = |a: &str| {
        record
            .recipients
            .iter()
            .find(|r| r.address == a)
            .unwrap()
            .clone()
    };
    assert_eq!(by_addr("bob@example.net").state, RecipientState::Delivered);
    let erin = by_addr("erin@null.example");
    assert_eq!(erin.state, RecipientState::Bounced);
    assert!(
        erin.last_reply
            .as_deref()
            .unwrap()
            .contains("MX lookup for null.example: Recipient address has null MX"),
        "{erin:?}"
    );
    let frank = by_addr("frank@nowhere.example");
    assert_eq!(frank.state, RecipientState::Bounced);
    assert!(
        frank
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("MX lookup for nowhere.example:"),
        "{frank:?}"
    );
    let grace = by_addr("grace@servfail.example");
    assert_eq!(grace.state, RecipientState::Pending);
    assert!(
        grace
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("MX lookup for servfail.example: temporary DNS failure"),
        "{grace:?}"
    );

    // The bounce is queued for alice (local), with the null-MX status.
    let bounce = spool
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.is_bounce)
        .expect("a bounce is queued");
    assert_eq!(bounce.recipients[0].address, "alice@relay.test");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut spool.open_message(&bounce.id).unwrap(), &mut text).unwrap();
    assert!(text.contains("Status: 5.1.10"), "{text}");
    assert!(text.contains("Status: 5.1.2"), "{text}");
}
