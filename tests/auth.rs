//! AUTH (RFC 4954) and relay policy end to end: `smtplink serve --users`
//! against real clients (swaks, Python's smtplib, curl, msmtp) and a raw
//! dialogue script for the refusals: relaying without permission (550
//! 5.7.1), PLAIN in plaintext (538), wrong password (535 after a delay),
//! repeated failures (454), a sender the user may not use (553), MAIL
//! before AUTH on a submission listener (530), too many commands before
//! MAIL (421) and a slow drip during DATA (421, nothing stored).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PASSWORD: &str = "correct horse";

/// A self-signed pair for 127.0.0.1 and a users file with alice, who may
/// send as alice@example.org only.
struct Setup {
    tls: Cert,
    users: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let mut child = smtplink()
        .args(["passwd", "--users"])
        .arg(&users)
        .args(["alice", "--allow", "alice@example.org"])
        // The RFC 7677 minimum keeps the test quick; the default is 100,000.
        .args(["--iterations", "4096"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(child.wait().unwrap().success());
    Setup {
        tls: gen_cert(),
        users,
        _dir: dir,
    }
}

impl Setup {
    /// `serve` on 127.0.0.1 with the certificate and the users.
    fn serve(&self, config: Option<&str>, extra: &[&str]) -> Serve {
        let mut args = vec![
            "--tls-cert",
            self.tls.cert.to_str().unwrap(),
            "--tls-key",
            self.tls.key.to_str().unwrap(),
            "--users",
            self.users.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Serve::start_with_config("mx.test", config, &args)
    }
}

/// Waits for one message in `mailbox`; returns its trace fields.
fn delivered_trace(server: &Serve, mailbox: &str) -> String {
    let maildir = server.maildir();
    wait_for("delivery", Duration::from_secs(10), || {
        !delivered(&maildir, mailbox).is_empty()
    });
    let files = delivered(&maildir, mailbox);
    let stored = std::fs::read(&files[0]).unwrap();
    split_trace(&stored).0.replace("\r\n\t", " ")
}

fn alice_message(dir: &Path) -> PathBuf {
    let path = dir.join("msg.eml");
    std::fs::write(
        &path,
        "From: alice@example.org\r\nSubject: auth test\r\n\r\nhello\r\n",
    )
    .unwrap();
    path
}

#[test]
fn swaks_starttls_auth_plain_and_login() {
    let Some(swaks) = require_tool("swaks") else {
        return;
    };
    let s = setup();
    let server = s.serve(None, &["--relay-policy", "local-only"]);
    for (mech, to) in [("PLAIN", "bob@example.net"), ("LOGIN", "carol@example.net")] {
        let out = Command::new(&swaks)
            .args(["--server", &format!("127.0.0.1:{}", server.port), "--tls"])
            .args([
                "--auth",
                mech,
                "--auth-user",
                "alice",
                "--auth-password",
                PASSWORD,
            ])
            .args(["--from", "alice@example.org", "--to", to])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("235 2.7.0"), "{text}");
        let trace = delivered_trace(&server, to);
        assert!(trace.contains("with ESMTPSA"), "{trace}");
    }
}

#[test]
fn swaks_tls_on_connect_auth_plain() {
    let Some(swaks) = require_tool("swaks") else {
        return;
    };
    let s = setup();
    let port = free_port();
    let listen = format!("tls+tcp://127.0.0.1:{port}");
    let server = s.serve(
        None,
        &["--listen", "tcp://127.0.0.1:0", "--listen", &listen],
    );
    wait_for("the tls+ listener", Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let out = Command::new(swaks)
        .args(["--server", &format!("127.0.0.1:{port}"), "--tls-on-connect"])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            PASSWORD,
        ])
        .args(["--from", "alice@example.org", "--to", "dave@example.net"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(delivered_trace(&server, "dave@example.net").contains("with ESMTPSA"));
}

const SMTPLIB_LOGIN: &str = r#"
import smtplib, ssl, sys
port, cafile, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test') as s:
    s.ehlo()
    assert 'PLAIN' not in s.esmtp_features.get('auth', ''), 'PLAIN offered in plaintext'
    s.starttls(context=ctx)
    s.ehlo()
    assert 'PLAIN' in s.esmtp_features['auth'], s.esmtp_features
    s.login('alice', password)
    s.sendmail('alice@example.org', ['erin@example.net'], b'Subject: smtplib\r\n\r\nhi\r\n')
print('ok')
"#;

#[test]
fn smtplib_starttls_login() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    let server = s.serve(None, &["--relay-policy", "local-only"]);
    let out = Command::new("python3")
        .args(["-c", SMTPLIB_LOGIN, &server.port.to_string()])
        .arg(&s.tls.cert)
        .arg(PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(delivered_trace(&server, "erin@example.net").contains("with ESMTPSA"));
}

#[test]
fn curl_ssl_reqd_user() {
    let Some(curl) = require_tool("curl") else {
        return;
    };
    let s = setup();
    let server = s.serve(None, &["--relay-policy", "local-only"]);
    let msg = alice_message(server.dir.path());
    let out = Command::new(curl)
        .args(["-sS", "--ssl-reqd", "--cacert"])
        .arg(&s.tls.cert)
        .args(["--url", &format!("smtp://127.0.0.1:{}", server.port)])
        .args(["--user", &format!("alice:{PASSWORD}")])
        .args(["--mail-from", "alice@example.org"])
        .args(["--mail-rcpt", "frank@example.net", "--upload-file"])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(delivered_trace(&server, "frank@example.net").contains("with ESMTPSA"));
}

#[test]
fn msmtp_tls_auth() {
    let Some(msmtp) = require_tool("msmtp") else {
        return;
    };
    let s = setup();
    let server = s.serve(None, &["--relay-policy", "local-only"]);
    let msg = std::fs::read(alice_message(server.dir.path())).unwrap();
    let mut child = Command::new(msmtp)
        .args(["--host=127.0.0.1", &format!("--port={}", server.port)])
        .args(["--tls=on", "--tls-starttls=on", "--auth=on", "--user=alice"])
        .arg(format!("--tls-trust-file={}", s.tls.cert.display()))
        // msmtp reads the password from a command's output.
        .arg(format!("--passwordeval=echo '{PASSWORD}'"))
        .args(["--from=alice@example.org", "grace@example.net"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&msg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(delivered_trace(&server, "grace@example.net").contains("with ESMTPSA"));
}

/// A raw SMTP dialogue: each argument is a command line, or `STARTTLS`
/// (with the handshake), `PLAIN user pass`, `SCRAM user pass` (a
/// SCRAM-SHA-256 client, RFC 5802/7677, in a few lines of Python), `DATA` (sends a short body
/// and prints the reply to its end), `DRIP` (after DATA's 354, sends a
/// byte every 0.2 s until the server answers or hangs up). Prints one
/// line per command: the verb, the seconds the reply took, the reply's
/// last line (or EOF).
const DIALOGUE: &str = r#"
import base64, socket, ssl, sys, time
port, cafile = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(('127.0.0.1', port), timeout=30)
f = s.makefile('rb')
def reply():
    last = 'EOF'
    while True:
        l = f.readline()
        if not l:
            return last if last != 'EOF' else 'EOF'
        last = l.decode().rstrip()
        if len(l) < 4 or l[3:4] != b'-':
            return last
def say(verb, line):
    t = time.time()
    try:
        s.sendall(line.encode() + b'\r\n')
        r = reply()
    except OSError:
        r = 'EOF'
    print(f'{verb} {time.time() - t:.2f} {r}', flush=True)
    return r
print('greeting 0 ' + reply(), flush=True)
for c in sys.argv[3:]:
    if c == 'STARTTLS':
        say('STARTTLS', 'STARTTLS')
        ctx = ssl.create_default_context(cafile=cafile)
        s = ctx.wrap_socket(s, server_hostname='localhost')
        f = s.makefile('rb')
    elif c.startswith('PLAIN '):
        _, user, password = c.split(' ', 2)
        token = base64.b64encode(b'\0' + user.encode() + b'\0' + password.encode()).decode()
        say('AUTH', 'AUTH PLAIN ' + token)
    elif c.startswith('SCRAM '):
        import hashlib, hmac, os
        _, user, password = c.split(' ', 2)
        bare = 'n=' + user + ',r=' + base64.b64encode(os.urandom(18)).decode()
        r = say('AUTH', 'AUTH SCRAM-SHA-256 ' + base64.b64encode(('n,,' + bare).encode()).decode())
        if not r.startswith('334 '):
            continue
        first = base64.b64decode(r[4:]).decode()
        attrs = dict(kv.split('=', 1) for kv in first.split(','))
        salted = hashlib.pbkdf2_hmac('sha256', password.encode(), base64.b64decode(attrs['s']), int(attrs['i']))
        client_key = hmac.new(salted, b'Client Key', 'sha256').digest()
        without_proof = 'c=biws,r=' + attrs['r']
        message = ','.join([bare, first, without_proof]).encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), message, 'sha256').digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        r = say('SCRAM', base64.b64encode((without_proof + ',p=' + proof).encode()).decode())
        if r.startswith('334 '):
            say('SCRAM-END', '')
    elif c == 'DATA':
        if say('DATA', 'DATA').startswith('354'):
            say('END', 'Subject: t\r\n\r\nhello\r\n.')
    elif c == 'DRIP':
        if not say('DATA', 'DATA').startswith('354'):
            continue
        s.settimeout(0.2)
        t = time.time()
        got = 'EOF'
        while time.time() - t < 30:
            try:
                s.sendall(b'x')
            except OSError:
                break
            try:
                data = s.recv(4096)
                got = data.decode().strip() if data else 'EOF'
                break
            except socket.timeout:
                pass
            except OSError:
                break
        print(f'DRIP {time.time() - t:.2f} {got}', flush=True)
        break
    else:
        say(c.split()[0], c)
"#;

/// Runs [`DIALOGUE`]; returns (verb, seconds, reply) per line.
fn dialogue(server: &Serve, cert: &Path, commands: &[&str]) -> Vec<(String, f64, String)> {
    let out = Command::new("python3")
        .args(["-c", DIALOGUE, &server.port.to_string()])
        .arg(cert)
        .args(commands)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let verb = parts.next().unwrap().to_string();
            let secs = parts.next().unwrap().parse().unwrap();
            (verb, secs, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

fn replies(lines: &[(String, f64, String)]) -> Vec<String> {
    lines.iter().map(|(_, _, r)| r.clone()).collect()
}

fn code_of(line: &(String, f64, String)) -> &str {
    line.2.get(..9).unwrap_or(&line.2)
}

#[test]
fn relay_needs_authentication() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    // example.net goes to a next hop that is not there: relayed mail waits
    // in the spool.
    let server = s.serve(
        None,
        &[
            "--relay-policy",
            "authenticated",
            "--route",
            "example.org=local",
            "--route",
            "example.net=tcp://127.0.0.1:9",
        ],
    );
    let auth = format!("PLAIN alice {PASSWORD}");
    // Unauthenticated: local recipients yes, relaying no.
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            "MAIL FROM:<x@example.com>",
            "RCPT TO:<bob@example.net>",
            "RCPT TO:<alice@example.org>",
            "QUIT",
        ],
    );
    assert!(lines[3].2.starts_with("550 5.7.1"), "{lines:?}");
    assert!(lines[4].2.starts_with("250"), "{lines:?}");
    // PLAIN over plaintext on a listener that is not trusted: 538.
    let lines = dialogue(&server, &s.tls.cert, &["EHLO client.test", &auth, "QUIT"]);
    assert!(lines[2].2.starts_with("538 5.7.11"), "{lines:?}");
    // Authenticated inside TLS: relayed, into the spool.
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            "STARTTLS",
            "EHLO client.test",
            &auth,
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.net>",
            "DATA",
            "QUIT",
        ],
    );
    let r = replies(&lines);
    assert!(r[4].starts_with("235 2.7.0"), "{r:?}");
    assert!(r[6].starts_with("250"), "{r:?}");
    assert!(r[8].starts_with("250"), "{r:?}");
    assert!(
        !spool_is_empty(&server.spool()),
        "nothing queued for the remote route"
    );
}

#[test]
fn wrong_password_is_slowed_then_refused() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    let config = "[auth]\nfailure_delay = 1.0\nfailure_delay_max = 1.0\nmax_failures = 2\n";
    let server = s.serve(Some(config), &[]);
    // A loopback listener is trusted, but PLAIN still wants TLS.
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            "STARTTLS",
            "EHLO client.test",
            "PLAIN alice wrong",
            "PLAIN nobody wrong",
            "PLAIN alice wrong",
            &format!("PLAIN alice {PASSWORD}"),
            "QUIT",
        ],
    );
    // 535 only after the configured delay, for a known and an unknown user.
    for line in &lines[4..6] {
        assert_eq!(code_of(line), "535 5.7.8", "{lines:?}");
        assert!(
            line.1 >= 1.0,
            "535 after {} s, before the 1 s floor",
            line.1
        );
    }
    // Two failures from this address: further AUTH gets 454, even with
    // the right password.
    assert_eq!(code_of(&lines[6]), "454 4.7.0", "{lines:?}");
    assert_eq!(code_of(&lines[7]), "454 4.7.0", "{lines:?}");
}

#[test]
fn sender_must_be_allowed_and_submission_requires_auth() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    let server = s.serve(None, &["--relay-policy", "authenticated", "--require-auth"]);
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            "MAIL FROM:<alice@example.org>",
            "STARTTLS",
            "EHLO client.test",
            &format!("PLAIN alice {PASSWORD}"),
            "MAIL FROM:<boss@example.org>",
            "MAIL FROM:<alice@example.org>",
            "QUIT",
        ],
    );
    let r = replies(&lines);
    assert!(
        r[2].starts_with("530 5.7.0 Authentication required"),
        "{r:?}"
    );
    assert!(r[5].starts_with("235"), "{r:?}");
    assert!(r[6].starts_with("553 5.7.1"), "{r:?}");
    assert!(r[7].starts_with("250"), "{r:?}");
}

#[test]
fn commands_before_mail_are_limited() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    let server = s.serve(Some("[limits]\ncommands_before_mail = 4\n"), &[]);
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &["EHLO client.test", "NOOP", "RSET", "VRFY x", "NOOP", "NOOP"],
    );
    let r = replies(&lines);
    // r[0] is the greeting; EHLO, NOOP, RSET and VRFY are the four allowed.
    assert!(r[4].starts_with("252"), "{r:?}");
    assert!(r[5].starts_with("421 4.7.0"), "{r:?}");
    assert_eq!(r[6], "EOF", "{r:?}");
}

#[test]
fn slow_drip_is_dropped_and_nothing_stored() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    let config = "[limits]\nmin_data_rate = 100\ndata_rate_window = 1\n";
    let server = s.serve(Some(config), &[]);
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<slow@example.net>",
            "DRIP",
        ],
    );
    let last = lines.last().unwrap();
    assert_eq!(last.0, "DRIP", "{lines:?}");
    assert!(last.2.starts_with("421 4.4.2"), "{lines:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        all_files(&server.maildir()).is_empty(),
        "{:?}",
        all_files(&server.maildir())
    );
}

#[test]
fn scram_sha_256_in_plaintext() {
    if require_tool("python3").is_none() {
        return;
    }
    let s = setup();
    let server = s.serve(
        Some("[auth]\nfailure_delay = 0.1\n"),
        &["--relay-policy", "local-only"],
    );
    // SCRAM sends no password, so it is offered without TLS; PLAIN is not.
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            &format!("SCRAM alice {PASSWORD}"),
            "MAIL FROM:<alice@example.org>",
            "QUIT",
        ],
    );
    let r = replies(&lines);
    assert!(r.iter().any(|l| l.starts_with("235 2.7.0")), "{r:?}");
    assert!(r.iter().any(|l| l.starts_with("250 2.1.0")), "{r:?}");
    let lines = dialogue(
        &server,
        &s.tls.cert,
        &[
            "EHLO client.test",
            "SCRAM alice wrong",
            "SCRAM mallory wrong",
            "QUIT",
        ],
    );
    let failures = replies(&lines)
        .iter()
        .filter(|l| l.starts_with("535 5.7.8"))
        .count();
    assert_eq!(failures, 2, "{lines:?}");
}

/// Our own client and server end to end: `smtplink send` with credentials
/// and no TLS logs in to `serve --users` with SCRAM-SHA-256 (the one
/// mechanism that sends no password, so allowed in plaintext), the server
/// proves it knows the credential too, and the trace says ESMTPA.
#[test]
fn smtplink_client_to_smtplink_server_with_scram() {
    let s = setup();
    let server = s.serve(None, &["--relay-policy", "authenticated"]);
    let work = tempfile::tempdir().unwrap();
    let password = work.path().join("pw");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let out = smtplink()
        .args([
            "send",
            "--server",
            &server.url(),
            "--from",
            "alice@example.org",
        ])
        .args([
            "--to",
            "bob@mx.test",
            "--auth-user",
            "alice",
            "--tls",
            "none",
        ])
        .arg("--auth-password-file")
        .arg(&password)
        .arg(alice_message(work.path()))
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password was logged");
    let trace = delivered_trace(&server, "bob@mx.test");
    assert!(trace.contains("with ESMTPA"), "{trace}");
}
