#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pair {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    server: Arc<ServerTls>,
    pin: String,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let pin = write_self_signed(&["localhost".into()], &cert, &key).unwrap();
    let server = ServerTls::load(&cert, &key).unwrap();
    Pair {
        _dir: dir,
        cert,
        server,
        pin,
    }
}

fn links() -> (Link, Link) {
    let (a, b) = tokio::io::duplex(4096);
    let info = LinkInfo::new("test", "peer").with_tls_upgrade(true);
    (Link::new(a, info.clone()), Link::new(b, info))
}

async fn run(
    server: &ServerTls,
    trust: &Trust,
    name: &str,
) -> (Result<Link, TransportError>, Result<Link, TransportError>) {
    let (c, s) = links();
    let connector = ClientTls::new(trust).unwrap().connector(name).unwrap();
    tokio::join!(connector.connect(c), server.accept(s))
}

#[tokio::test]
async fn pem_trust_handshakes_and_reports_the_session() {
    let p = pair();
    let (c, s) = run(&p.server, &Trust::Pem(p.cert.clone()), "localhost").await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let tls = c.info().tls.clone().unwrap();
    assert_eq!(tls.version, "TLSv1.3");
    assert!(tls.cipher.starts_with("TLS13_"), "{}", tls.cipher);
    assert!(!c.info().can_upgrade_tls);
    assert_eq!(s.info().tls.as_ref().unwrap().cipher, tls.cipher);
    c.write_all(b"EHLO x\r\n").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"EHLO x\r\n");
}

#[tokio::test]
async fn wrong_name_and_unknown_ca_fail() {
    let p = pair();
    let (c, _) = run(&p.server, &Trust::Pem(p.cert.clone()), "other.example").await;
    assert!(c.unwrap_err().is_transient());
    let (c, _) = run(&p.server, &Trust::System, "localhost").await;
    let e = c.unwrap_err();
    assert!(matches!(e, TransportError::Tls { .. }), "{e}");
}

#[tokio::test]
async fn pin_matches_any_name_and_mismatch_fails() {
    let p = pair();
    let trust: Trust = p.pin.parse().unwrap();
    let (c, s) = run(&p.server, &trust, "mail.example.net").await;
    c.unwrap();
    s.unwrap();
    let other: Trust = format!("pin:sha256:{}", "ab".repeat(32)).parse().unwrap();
    let (c, _) = run(&p.server, &other, "localhost").await;
    let e = c.unwrap_err().to_string();
    assert!(e.contains("pin mismatch"), "{e}");
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_handshakes() {
    let p = pair();
    let old_pin: Trust = p.pin.parse().unwrap();
    let key = p.cert.with_file_name("key.pem");
    let new_pin = write_self_signed(&["localhost".into()], &p.cert, &key).unwrap();
    let (c, _) = run(&p.server, &old_pin, "localhost").await;
    c.unwrap();
    p.server.reload().unwrap();
    let (c, _) = run(&p.server, &old_pin, "localhost").await;
    assert!(c.is_err());
    let (c, _) = run(&p.server, &new_pin.parse().unwrap(), "localhost").await;
    c.unwrap();
    // A broken file keeps the old pair.
    std::fs::write(&p.cert, "garbage").unwrap();
    assert!(p.server.reload().is_err());
    let (c, _) = run(&p.server, &new_pin.parse().unwrap(), "localhost").await;
    c.unwrap();
}

#[test]
fn trust_parses_and_prints() {
    assert_eq!("system".parse::<Trust>().unwrap(), Trust::System);
    assert_eq!(
        "pem:/etc/ca.pem".parse::<Trust>().unwrap(),
        Trust::Pem("/etc/ca.pem".into())
    );
    let pin = format!("pin:sha256:{}", "0A".repeat(32));
    let t: Trust = pin.parse().unwrap();
    assert_eq!(t, Trust::Pin([0x0a; 32]));
    assert_eq!(t.to_string(), pin.to_ascii_lowercase());
    let colons = vec!["0a"; 32].join(":");
    assert_eq!(format!("pin:sha256:{colons}").parse::<Trust>().unwrap(), t);
    for bad in ["", "sytem", "pem:", "pin:sha256:12", "pin:md5:00"] {
        assert!(bad.parse::<Trust>().is_err(), "{bad}");
    }
}

#[test]
fn implicit_prefix_unwraps_the_inner_endpoint() {
    let e: Endpoint = "tls+tcp://127.0.0.1:465".parse().unwrap();
    assert_eq!(
        implicit_inner(&e).unwrap().unwrap().to_string(),
        "tcp://127.0.0.1:465"
    );
    let plain: Endpoint = "tcp://127.0.0.1:25".parse().unwrap();
    assert!(implicit_inner(&plain).unwrap().is_none());
    let double: Endpoint = "tls+tls+mem://x".parse().unwrap();
    assert!(implicit_inner(&double).is_err());
    assert_eq!(server_name_for(&e, "fallback"), "127.0.0.1");
    let serial: Endpoint = "tls+serial:///dev/ttyS0?baud=9600".parse().unwrap();
    assert_eq!(server_name_for(&serial, "mx.example"), "mx.example");
}
