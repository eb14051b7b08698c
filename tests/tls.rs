//! TLS end to end: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) against
//! real peers over 127.0.0.1 (swaks, smtplib, curl, msmtp, aiosmtpd), over
//! a pty pair, and against fake peers that try the CVE-2011-0411 plaintext
//! injection from either side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use smtplink_transport::{Link, LinkInfo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn serve_tls(cert: &Cert, extra: &[&str]) -> Serve {
    let mut args = vec![
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Serve::start(&args)
}

/// Waits for one message in `mailbox` and checks its Received: says TLS.
fn assert_delivered_over_tls(server: &Serve, mailbox: &str) -> String {
    let maildir = server.maildir();
    wait_for("delivery", Duration::from_secs(10), || {
        !delivered(&maildir, mailbox).is_empty()
    });
    let files = delivered(&maildir, mailbox);
    assert_eq!(files.len(), 1);
    let stored = std::fs::read(&files[0]).unwrap();
    let (trace, _) = split_trace(&stored);
    let unfolded = trace.replace("\r\n\t", " ");
    assert!(unfolded.contains("with ESMTPS (using TLSv1."), "{trace}");
    assert!(unfolded.contains(" with cipher TLS"), "{trace}");
    trace
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn swaks_starttls() {
    let Some(swaks) = require_tool("swaks") else {
        return;
    };
    let cert = gen_cert();
    let server = serve_tls(&cert, &[]);
    let out = Command::new(swaks)
        .args(["--server", &format!("127.0.0.1:{}", server.port), "--tls"])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("TLS started with cipher"), "{text}");
    assert_delivered_over_tls(&server, "bob@example.net");
}

#[test]
fn swaks_tls_on_connect() {
    let Some(swaks) = require_tool("swaks") else {
        return;
    };
    let cert = gen_cert();
    let port = free_port();
    let listen = format!("tls+tcp://127.0.0.1:{port}");
    let server = serve_tls(
        &cert,
        &["--listen", "tcp://127.0.0.1:0", "--listen", &listen],
    );
    wait_for_port(port);
    let out = Command::new(swaks)
        .args(["--server", &format!("127.0.0.1:{port}"), "--tls-on-connect"])
        .args(["--from", "alice@example.org", "--to", "carol@example.net"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Already encrypted: STARTTLS is not offered again.
    assert!(!text.contains("250-STARTTLS"), "{text}");
    assert_delivered_over_tls(&server, "carol@example.net");
}

const SMTPLIB_STARTTLS: &str = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test') as s:
    s.ehlo()
    assert s.has_extn('starttls'), s.esmtp_features
    s.starttls(context=ctx)
    s.ehlo()
    assert not s.has_extn('starttls'), 'STARTTLS offered again inside TLS'
    s.sendmail('alice@example.org', ['dave@example.net'], b'Subject: smtplib\r\n\r\nhi\r\n')
print('ok')
"#;

#[test]
fn smtplib_starttls() {
    if require_tool("python3").is_none() {
        return;
    }
    let cert = gen_cert();
    let server = serve_tls(&cert, &[]);
    let out = Command::new("python3")
        .args(["-c", SMTPLIB_STARTTLS, &server.port.to_string()])
        .arg(&cert.cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_delivered_over_tls(&server, "dave@example.net");
}

#[test]
fn curl_ssl_reqd() {
    let Some(curl) = require_tool("curl") else {
        return;
    };
    let cert = gen_cert();
    let server = serve_tls(&cert, &[]);
    let msg = message_file(server.dir.path(), "curl", "over TLS");
    let out = Command::new(curl)
        .args(["-sS", "--ssl-reqd", "--cacert"])
        .arg(&cert.cert)
        .args(["--url", &format!("smtp://127.0.0.1:{}", server.port)])
        .args(["--mail-from", "alice@example.org"])
        .args(["--mail-rcpt", "erin@example.net", "--upload-file"])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_delivered_over_tls(&server, "erin@example.net");
}

#[test]
fn msmtp_starttls() {
    let Some(msmtp) = require_tool("msmtp") else {
        return;
    };
    let cert = gen_cert();
    let server = serve_tls(&cert, &[]);
    let msg = std::fs::read(message_file(server.dir.path(), "msmtp", "over TLS")).unwrap();
    let mut child = Command::new(msmtp)
        .args(["--host=127.0.0.1", &format!("--port={}", server.port)])
        .args(["--auth=off", "--tls=on", "--tls-starttls=on"])
        .arg(format!("--tls-trust-file={}", cert.cert.display()))
        .args(["--from=alice@example.org", "frank@example.net"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&msg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_delivered_over_tls(&server, "frank@example.net");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// aiosmtpd that requires STARTTLS, with our certificate.
const AIOSMTPD_TLS: &str = r#"
import sys, ssl, time
from aiosmtpd.controller import Controller
class Save:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], 'wb') as f:
            f.write(envelope.original_content)
        return '250 2.0.0 saved'
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
c = Controller(Save(), hostname='127.0.0.1', port=int(sys.argv[1]),
               tls_context=ctx, require_starttls=True)
c.start()
print('ready', flush=True)
time.sleep(120)
"#;

#[test]
fn send_starttls_to_aiosmtpd() {
    if require_tool("python3").is_none() || !require_python_module("aiosmtpd") {
        return;
    }
    let cert = gen_cert();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.eml");
    let port = free_port();
    let child = Command::new("python3")
        .args(["-c", AIOSMTPD_TLS, &port.to_string()])
        .arg(&saved)
        .arg(&cert.cert)
        .arg(&cert.key)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Killed(child);
    wait_for_port(port);
    let msg = message_file(dir.path(), "aiosmtpd", "over TLS");
    let trust = format!("pem:{}", cert.cert.display());
    let out = smtplink()
        .args(["send", "--server", &format!("tcp://127.0.0.1:{port}")])
        .args(["--tls", "required", "--tls-trust", &trust])
        .args(["--from", "a@example.org", "--to", "b@example.net"])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = std::fs::read(&saved).unwrap();
    assert!(got.ends_with(b"over TLS\r\n"), "{got:?}");
}

/// STARTTLS over a serial line (x25+serial): two pty ends joined by socat, `serve` on
/// one, `send` (with a pinned certificate) on the other.
#[test]
fn starttls_over_a_pty_pair() {
    let Some(socat) = require_tool("socat") else {
        return;
    };
    let cert = gen_cert();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let child = Command::new(socat)
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .spawn()
        .unwrap();
    let _socat = Killed(child);
    wait_for("socat ptys", Duration::from_secs(10), || {
        a.exists() && b.exists()
    });
    // x25+serial: the plain serial session layer does not carry TLS.
    let listen = format!("x25+serial://{}?baud=115200&role=dce", b.display());
    let server = serve_tls(&cert, &["--listen", &listen]);
    let msg = message_file(dir.path(), "serial", "over TLS");
    let out = smtplink()
        .args([
            "send",
            "--server",
            &format!("x25+serial://{}?baud=115200&role=dte", a.display()),
        ])
        .args(["--tls", "required", "--tls-trust", &cert.pin])
        .args(["--from", "a@example.org", "--to", "grace@example.net"])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_delivered_over_tls(&server, "grace@example.net");
}

async fn read_line(r: &mut (impl AsyncBufReadExt + Unpin)) -> String {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    line
}

/// CVE-2011-0411, server side: `STARTTLS\r\nRSET\r\n` in one write. The
/// RSET came in plaintext and must not be answered inside TLS: the first
/// reply inside TLS answers the client's first encrypted command.
#[tokio::test]
async fn plaintext_after_starttls_is_not_run_inside_tls() {
    let cert = gen_cert();
    let server = serve_tls(&cert, &[]);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    // Read one byte at a time so nothing after the 220 is consumed.
    let mut plain = BufReader::with_capacity(1, tcp);
    assert!(read_line(&mut plain).await.starts_with("220 "));
    plain.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
    loop {
        let line = read_line(&mut plain).await;
        if line.starts_with("250 ") {
            break;
        }
        assert!(line.starts_with("250-"), "{line}");
    }
    plain
        .get_mut()
        .write_all(b"STARTTLS\r\nRSET\r\n")
        .await
        .unwrap();
    assert!(read_line(&mut plain).await.starts_with("220 2.0.0"));
    let tcp = plain.into_inner();
    let client = smtplink_tls::ClientTls::new(&cert.pin.parse().unwrap())
        .unwrap()
        .connector("localhost")
        .unwrap();
    let link = client
        .connect(Link::new(tcp, LinkInfo::new("tcp", "server")))
        .await
        .unwrap();
    let mut tls = BufReader::new(link);
    tls.get_mut().write_all(b"EHLO d\r\n").await.unwrap();
    tls.get_mut().flush().await.unwrap();
    let first = read_line(&mut tls).await;
    assert!(first.starts_with("250-mx.test greets d"), "{first:?}");
}

/// CVE-2011-0411, client side: a fake server answers STARTTLS with
/// `220 go\r\n250 injected\r\n` in one write. Our client must not read the
/// injected line as if it came inside TLS: what it learns about the server
/// comes from the EHLO reply inside TLS only.
#[tokio::test]
async fn injected_reply_after_220_is_not_read_inside_tls() {
    let cert = gen_cert();
    let server_tls = smtplink_tls::ServerTls::load(&cert.cert, &cert.key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut plain = BufReader::with_capacity(1, tcp);
        plain
            .get_mut()
            .write_all(b"220 fake ESMTP\r\n")
            .await
            .unwrap();
        assert!(read_line(&mut plain).await.starts_with("EHLO "));
        plain
            .get_mut()
            .write_all(b"250-fake\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        assert_eq!(read_line(&mut plain).await, "STARTTLS\r\n");
        plain
            .get_mut()
            .write_all(b"220 go\r\n250 injected\r\n")
            .await
            .unwrap();
        let tcp = plain.into_inner();
        use smtplink_transport::TlsAccept;
        let link = server_tls
            .accept(Link::new(tcp, LinkInfo::new("tcp", "client")))
            .await
            .unwrap();
        let mut tls = BufReader::new(link);
        let ehlo = read_line(&mut tls).await;
        tls.get_mut()
            .write_all(b"250-fake\r\n250 SIZE 1234\r\n")
            .await
            .unwrap();
        tls.get_mut().flush().await.unwrap();
        let quit = read_line(&mut tls).await;
        tls.get_mut().write_all(b"221 bye\r\n").await.unwrap();
        tls.get_mut().flush().await.unwrap();
        (ehlo, quit)
    });
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = smtplink_tls::ClientTls::new(&cert.pin.parse().unwrap())
        .unwrap()
        .connector("localhost")
        .unwrap();
    let settings = smtplink_driver::ClientSettings {
        engine: smtplink_engine::ClientConfig {
            tls: smtplink_engine::TlsPolicy::Required,
            ..Default::default()
        },
        tls: Some(connector),
        ..Default::default()
    };
    let client = smtplink_driver::SmtpClient::handshake(
        Link::new(tcp, LinkInfo::new("tcp", "fake").with_tls_upgrade(true)),
        settings,
    )
    .await
    .unwrap();
    assert!(client.tls().is_some());
    assert_eq!(client.capabilities().size, Some(1234));
    assert!(!client
        .capabilities()
        .raw
        .iter()
        .any(|l| l.contains("injected")));
    client.quit().await.unwrap();
    let (ehlo, quit) = fake.await.unwrap();
    assert!(ehlo.starts_with("EHLO "), "{ehlo:?}");
    assert_eq!(quit, "QUIT\r\n");
}

/// Required TLS against a server without STARTTLS: a temporary failure
/// (exit 75), and nothing but EHLO and QUIT crosses the wire in plaintext.
#[tokio::test]
async fn required_tls_without_starttls_fails_temporarily_and_sends_nothing() {
    let (port, fake) = fake_server(|line| {
        if line.starts_with("EHLO") {
            Some(b"250-plain\r\n250 PIPELINING\r\n")
        } else if line.starts_with("QUIT") {
            Some(b"221 bye\r\n")
        } else {
            None
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let msg = message_file(dir.path(), "secret", "over TLS");
    let out = tokio::task::spawn_blocking(move || {
        smtplink()
            .args(["send", "--server", &format!("tcp://127.0.0.1:{port}")])
            .args(["--tls", "required"])
            .args(["--from", "a@example.org", "--to", "b@example.net"])
            .arg(&msg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS required"), "{stderr}");
    let seen = fake.await.unwrap();
    let lines: Vec<&str> = seen.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(lines, ["EHLO", "QUIT"], "{seen}");
}

#[test]
fn pinned_certificate_mismatch_fails_temporarily() {
    let cert = gen_cert();
    let other = gen_cert();
    let server = serve_tls(&cert, &[]);
    let msg = message_file(server.dir.path(), "pin", "over TLS");
    let out = smtplink()
        .args(["send", "--server", &server.url()])
        .args(["--tls", "required", "--tls-trust", &other.pin])
        .args(["--from", "a@example.org", "--to", "heidi@example.net"])
        .arg(&msg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pin mismatch"), "{stderr}");
    assert!(delivered(&server.maildir(), "heidi@example.net").is_empty());
    // The right pin works, and so does implicit TLS to a tls+ listener.
    let out = smtplink()
        .args(["send", "--server", &server.url()])
        .args(["--tls", "required", "--tls-trust", &cert.pin])
        .args(["--from", "a@example.org", "--to", "heidi@example.net"])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_delivered_over_tls(&server, "heidi@example.net");
}

#[test]
fn gen_cert_pair_is_usable_and_key_is_private() {
    let cert = gen_cert();
    let text = std::fs::read_to_string(&cert.cert).unwrap();
    assert!(text.starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cert.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key mode {mode:o}");
    }
}

/// SIGHUP reloads the certificate: new sessions get the new one, and the
/// server keeps running.
#[test]
fn sighup_reloads_the_certificate() {
    let cert = gen_cert();
    let mut server = serve_tls(&cert, &[]);
    let msg = message_file(server.dir.path(), "reload", "over TLS");
    let send = |pin: &str| {
        smtplink()
            .args(["send", "--server", &server.url()])
            .args(["--tls", "required", "--tls-trust", pin])
            .args(["--from", "a@example.org", "--to", "ivan@example.net"])
            .arg(&msg)
            .output()
            .unwrap()
    };
    assert!(send(&cert.pin).status.success());
    // A new pair in the same files, then SIGHUP.
    let out = smtplink()
        .args(["gen-cert", "localhost", "--cert"])
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key)
        .output()
        .unwrap();
    let new_pin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server.log.recv_timeout(left).expect("no reload logged");
        if line.contains("TLS certificate reloaded") {
            break;
        }
    }
    assert_eq!(send(&cert.pin).status.code(), Some(75));
    assert!(send(&new_pin).status.success());
    assert!(server.child.try_wait().unwrap().is_none());
}

/// Idle connections to an implicit-TLS port (never starting a handshake)
/// are limited per peer address before the handshake: beyond the limit the
/// server closes them at once, and a real TLS client is still served.
#[test]
fn idle_connections_to_an_implicit_tls_port_are_limited() {
    let Some(swaks) = require_tool("swaks") else {
        return;
    };
    let cert = gen_cert();
    let port = free_port();
    let listen = format!("tls+tcp://127.0.0.1:{port}");
    let server = serve_tls(
        &cert,
        &["--listen", "tcp://127.0.0.1:0", "--listen", &listen],
    );
    wait_for_port(port);
    // Idle connections from 127.0.0.1.
    let idle: Vec<std::net::TcpStream> = (0..12)
        .map(|_| {
            let socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            socket
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed = idle
        .iter()
        .filter(|s| matches!(std::io::Read::read(&mut &**s, &mut [0u8; 1]), Ok(0)))
        .count();
    // The wait_for_port probe may still hold a slot: at most 4 stay open.
    assert!(
        closed >= 12 - 4,
        "only {closed} of 12 idle connections were closed"
    );
    // Another address is not held up by them.
    let out = Command::new(swaks)
        .args(["--server", &format!("127.0.0.1:{port}"), "--tls-on-connect"])
        .args(["--local-interface", "127.0.0.2"])
        .args(["--from", "alice@example.org", "--to", "erin@example.net"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    drop(idle);
    assert_delivered_over_tls(&server, "erin@example.net");
}
