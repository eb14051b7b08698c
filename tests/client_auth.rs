//! Client AUTH (RFC 4954) against a real server: aiosmtpd with STARTTLS
//! required and an authenticator (it offers PLAIN and LOGIN, inside TLS
//! only). `smtplink send` and the relay's routes with credentials; wrong
//! passwords; credentials never sent without TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// aiosmtpd requiring STARTTLS and AUTH; one user, `alice` with password
/// `open sesame`. Each message is saved as `msg-N.eml` (its recipients on
/// the first line) in argv[2]; each AUTH attempt is appended to argv[5]
/// as `MECHANISM user password`.
const AIOSMTPD_AUTH: &str = r#"
import sys, ssl, time, os, itertools
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
counter = itertools.count()
class Save:
    async def handle_DATA(self, server, session, envelope):
        n = next(counter)
        with open(os.path.join(sys.argv[2], 'msg-%d.tmp' % n), 'wb') as f:
            f.write((' '.join(envelope.rcpt_tos) + '\n').encode())
            f.write(envelope.original_content)
        os.rename(os.path.join(sys.argv[2], 'msg-%d.tmp' % n),
                  os.path.join(sys.argv[2], 'msg-%d.eml' % n))
        return '250 2.0.0 saved'
def authenticator(server, session, envelope, mechanism, auth_data):
    if not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    user = auth_data.login.decode()
    password = auth_data.password.decode()
    with open(sys.argv[5], 'a') as f:
        f.write('%s %s %s\n' % (mechanism, user, password))
    ok = user == 'alice' and password == 'open sesame'
    # handled=False: aiosmtpd answers a failure with 535 itself.
    return AuthResult(success=ok, handled=False)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
c = Controller(Save(), hostname='127.0.0.1', port=int(sys.argv[1]),
               tls_context=ctx, require_starttls=True,
               authenticator=authenticator, auth_required=True)
c.start()
print('ready', flush=True)
time.sleep(300)
"#;

/// A running aiosmtpd with [`AIOSMTPD_AUTH`].
struct AuthServer {
    port: u16,
    cert: Cert,
    dir: tempfile::TempDir,
    _child: Killed,
}

impl AuthServer {
    fn start() -> Option<AuthServer> {
        if require_tool("python3").is_none() || !require_python_module("aiosmtpd") {
            return None;
        }
        let cert = gen_cert();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("saved")).unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", AIOSMTPD_AUTH, &port.to_string()])
            .arg(dir.path().join("saved"))
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg(dir.path().join("auth.log"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(AuthServer {
            port,
            cert,
            dir,
            _child: child,
        })
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn trust(&self) -> String {
        format!("pem:{}", self.cert.cert.display())
    }

    /// The saved messages, in no particular order.
    fn saved(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path().join("saved")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "eml") {
                out.push(String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned());
            }
        }
        out
    }

    /// The AUTH attempts the authenticator saw.
    fn auth_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("auth.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn send_with_auth(server: &AuthServer, password_file: &Path, tag: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let msg = message_file(dir.path(), tag, &format!("authenticated {tag}"));
    // No --tls: credentials make TLS required by default.
    smtplink()
        .args(["send", "--server", &server.url()])
        .args(["--tls-trust", &server.trust()])
        .args(["--auth-user", "alice", "--auth-password-file"])
        .arg(password_file)
        .args(["--from", "a@example.org", "--to", "b@example.net"])
        .arg(&msg)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

#[test]
fn send_authenticates_inside_starttls() {
    let Some(server) = AuthServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let good = password_file(dir.path(), "good", "open sesame");
    let out = send_with_auth(&server, &good, "good");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let saved = server.saved();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].starts_with("b@example.net\n"), "{}", saved[0]);
    assert!(saved[0].ends_with("authenticated good\r\n"), "{}", saved[0]);
    // aiosmtpd offers PLAIN and LOGIN (no SCRAM): PLAIN is the stronger.
    assert_eq!(server.auth_log(), ["PLAIN alice open sesame"]);
    // Even at debug level, the log names the user, never the password.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("alice"), "{stderr}");
    assert!(!stderr.contains("open sesame"), "{stderr}");

    // The password from the environment instead of a file.
    let msg = message_file(dir.path(), "env", "authenticated env");
    let out = smtplink()
        .args(["send", "--server", &server.url()])
        .args(["--tls-trust", &server.trust(), "--auth-user", "alice"])
        .args(["--from", "a@example.org", "--to", "c@example.net"])
        .arg(&msg)
        .env("SMTPLINK_PASSWORD", "open sesame")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(server.saved().len(), 2);
}

/// RFC 4954 6: 535 means these credentials are refused; sending again
/// with the same ones cannot help, so `send` exits 1 (not 75), and
/// nothing is delivered.
#[test]
fn send_with_a_wrong_password_fails_permanently() {
    let Some(server) = AuthServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bad = password_file(dir.path(), "bad", "guess");
    let out = send_with_auth(&server, &bad, "bad");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("535"), "{stderr}");
    assert!(!stderr.contains("guess"), "{stderr}");
    assert!(server.saved().is_empty());
    assert_eq!(server.auth_log(), ["PLAIN alice guess"]);
}

/// Credentials and no `--tls`: TLS is required, so a server without
/// STARTTLS (that offers AUTH PLAIN in the clear) gets EHLO and QUIT and
/// no credentials; exit 75.
#[tokio::test]
async fn credentials_never_go_to_a_server_without_starttls() {
    let (port, fake) = fake_server(|line| {
        if line.starts_with("EHLO") {
            Some(b"250-plain\r\n250 AUTH PLAIN LOGIN\r\n")
        } else if line.starts_with("QUIT") {
            Some(b"221 bye\r\n")
        } else {
            None
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let msg = message_file(dir.path(), "secret", "authenticated secret");
    let out = tokio::task::spawn_blocking(move || {
        smtplink()
            .args(["send", "--server", &format!("tcp://127.0.0.1:{port}")])
            .args(["--auth-user", "alice"])
            .args(["--from", "a@example.org", "--to", "b@example.net"])
            .arg(&msg)
            .env("SMTPLINK_PASSWORD", "open sesame")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS required"), "{stderr}");
    let seen = fake.await.unwrap();
    let verbs: Vec<&str> = seen.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(verbs, ["EHLO", "QUIT"], "{seen}");
    assert!(!seen.contains("AUTH"), "{seen}");
}

/// With `--tls none` and credentials, PLAIN/LOGIN are not used in the
/// clear (no SCRAM offered): a temporary failure, nothing sent. With
/// `--auth-trusted-link` the same server gets AUTH PLAIN.
#[tokio::test]
async fn plaintext_mechanisms_only_on_a_trusted_link() {
    /// Enough of a server to take a message after AUTH PLAIN.
    fn answer(line: &str) -> Option<&'static [u8]> {
        let reply: &[u8] = if line.starts_with("EHLO") {
            b"250-plain\r\n250 AUTH PLAIN LOGIN\r\n"
        } else if line.starts_with("AUTH PLAIN") {
            b"235 2.7.0 ok\r\n"
        } else if line.starts_with("DATA") {
            b"354 go\r\n"
        } else if line == ".\r\n" || line.starts_with("MAIL") || line.starts_with("RCPT") {
            b"250 ok\r\n"
        } else if line.starts_with("QUIT") {
            b"221 bye\r\n"
        } else {
            return None;
        };
        Some(reply)
    }
    let dir = tempfile::tempdir().unwrap();
    for trusted in [false, true] {
        let (port, fake) = fake_server(answer).await;
        let msg = message_file(dir.path(), "trusted", "authenticated trusted");
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = smtplink();
            cmd.args(["send", "--server", &format!("tcp://127.0.0.1:{port}")])
                .args(["--auth-user", "alice"])
                .args(["--from", "a@example.org", "--to", "b@example.net"]);
            if trusted {
                cmd.arg("--auth-trusted-link");
            } else {
                cmd.args(["--tls", "none"]);
            }
            cmd.arg(&msg)
                .env("SMTPLINK_PASSWORD", "open sesame")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let seen = fake.await.unwrap();
        if trusted {
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            assert!(seen.contains("AUTH PLAIN "), "{seen}");
            assert!(seen.contains("MAIL FROM:<a@example.org>"), "{seen}");
        } else {
            assert_eq!(out.status.code(), Some(75), "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("no usable AUTH mechanism"), "{stderr}");
            assert!(!seen.contains("AUTH"), "{seen}");
            assert!(!seen.contains("MAIL"), "{seen}");
        }
    }
}

/// A relay route with credentials: node A (`smtplink serve`) forwards
/// `example.net` to aiosmtpd with the right password (read from a file)
/// and `example.com` with a wrong one. The first arrives; the second is
/// deferred with the 535 in the queue (not bounced) and stays spooled.
#[test]
fn relay_route_with_credentials() {
    let Some(server) = AuthServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let good = password_file(dir.path(), "good", "open sesame");
    let bad = password_file(dir.path(), "bad", "wrong");
    // Routes to the same target share one hop and its settings, so the
    // second names the server differently.
    let url_by_name = format!("tcp://localhost:{}", server.port);
    let config = format!(
        r#"
[[route]]
domain = "example.net"
target = "{url}"
tls_trust = "{trust}"
auth_user = "alice"
auth_password_file = "{good}"

[[route]]
domain = "example.com"
target = "{url_by_name}"
tls_trust = "{trust}"
auth_user = "alice"
auth_password_file = "{bad}"

[[route]]
domain = "example.org"
target = "local"
"#,
        url = server.url(),
        trust = server.trust(),
        good = good.display(),
        bad = bad.display(),
    );
    let node = Serve::start_with_config("a.test", Some(&config), &[]);
    let msg = message_file(dir.path(), "relayed", "authenticated relayed");
    for to in ["bob@example.net", "carol@example.com"] {
        let out = smtplink()
            .args(["send", "--server", &node.url(), "--tls", "none"])
            .args(["--from", "a@example.org", "--to", to])
            .arg(&msg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    wait_for("relay to aiosmtpd", Duration::from_secs(20), || {
        !server.saved().is_empty()
    });
    wait_for("the failed login", Duration::from_secs(20), || {
        server.auth_log().iter().any(|l| l.ends_with(" wrong"))
    });
    let saved = server.saved();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].starts_with("bob@example.net\n"), "{}", saved[0]);
    assert!(saved[0].contains("authenticated relayed"), "{}", saved[0]);
    // The deferred message stays queued with the server's reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = smtplink()
            .args(["queue", "--spool"])
            .arg(node.spool())
            .arg("list")
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout).into_owned();
        if list.contains("535") {
            assert!(list.contains("carol@example.com"), "{list}");
            assert!(!list.contains("wrong"), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "no 535 in the queue: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(delivered(&node.maildir(), "a@example.org").is_empty());
    assert_eq!(server.saved().len(), 1);
}

/// Config errors name the file, the route and the key.
#[test]
fn route_auth_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "auth_password_file = \"/nonexistent/pw\"\nauth_user = \"alice\"",
            "route.auth_password_file",
        ),
        ("auth_user = \"alice\"", "route.auth_user"),
        ("auth_password = \"x\"", "route.auth_password"),
        (
            "auth_user = \"alice\"\nauth_password = \"x\"\nauth_password_file = \"/etc/hostname\"",
            "route.auth_password",
        ),
    ];
    for (i, (keys, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[route]]\ndomain = \"example.net\"\ntarget = \"tcp://127.0.0.1:1\"\n{keys}\n"
            ),
        )
        .unwrap();
        let out = smtplink()
            .args(["serve", "--listen", "tcp://127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{keys}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("`{key}`")), "{keys}: {stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }
}
