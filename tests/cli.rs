//! The `smtplink` command's own contract: config errors, the built-in
//! config, and what `send` refuses before it connects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn config_errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(
        &path,
        "hostname = \"mx.example\"\n[limits]\nrecipients = \"many\"\n",
    )
    .unwrap();
    let out = smtplink()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // sysexits.h EX_CONFIG.
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3: key `limits.recipients`: invalid type: string \"many\", expected a whole number",
            path.display()
        )),
        "{stderr}"
    );

    std::fs::write(&path, "listen = [\"tcp://127.0.0.1:0\"]\nmaildri = \"x\"\n").unwrap();
    let out = smtplink()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(":2: key `maildri`:"), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
}

/// `default-config` prints a file that `serve --config` accepts as it is.
#[test]
fn default_config_round_trips() {
    let out = smtplink().arg("default-config").output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.toml");
    let text = String::from_utf8(out.stdout)
        .unwrap()
        .replace("tcp://127.0.0.1:2525", "tcp://127.0.0.1:0");
    std::fs::write(&path, text).unwrap();
    let mut cmd = smtplink();
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path());
    let mut server = Serve::spawn(cmd, dir);
    assert_ne!(server.port, 0);
    assert!(server.interrupt().success());
}

#[test]
fn send_refuses_what_smtp_cannot_carry_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    // Nothing listens on this port: a refusal must come before any connect.
    let server = format!("tcp://127.0.0.1:{}", free_port());
    std::fs::write(&file, b"Subject: x\r\n\r\nbare\rCR\r\n").unwrap();
    let out = smtplink()
        .args([
            "send",
            "--server",
            &server,
            "--from",
            "a@example.org",
            "--to",
            "b@example.net",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bare CR or LF"));

    std::fs::write(&file, b"Subject: x\r\n\r\nok\r\n").unwrap();
    for bad in [
        "b@example.net>\r\nRCPT TO:<c@example.net",
        "b@example.net\nDATA",
        "not an address",
    ] {
        let out = smtplink()
            .args([
                "send",
                "--server",
                &server,
                "--from",
                "a@example.org",
                "--to",
                bad,
            ])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {stderr}");
        assert!(
            !stderr.contains("Connection refused"),
            "{bad:?} reached the network: {stderr}"
        );
    }
}

/// `passwd` reads the password from stdin, stores only its SCRAM-SHA-256
/// derivation (mode 0600), replaces an entry in place and keeps the rest.
#[test]
fn passwd_writes_users_without_the_password() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let passwd = |user: &str, password: &str, extra: &[&str]| {
        let mut child = smtplink()
            .args(["passwd", "--users"])
            .arg(&users)
            .arg(user)
            .args(["--iterations", "4096"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = passwd(
        "alice@example.org",
        "correct horse\n",
        &[
            "--allow",
            "*@example.org",
            "--allow",
            "postmaster@example.net",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = passwd("bob", "battery staple\r\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains("correct horse") && !text.contains("battery"));
    assert!(
        text.starts_with("alice@example.org:SCRAM-SHA-256$4096:"),
        "{text}"
    );
    assert!(text.contains(":*@example.org,postmaster@example.net\nbob:SCRAM-SHA-256$4096:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&users).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let file = smtplink_auth::UsersFile::load(&users).unwrap();
    let alice = file.user("alice@example.org").unwrap();
    assert!(alice.credential.verify_password("correct horse"));
    assert!(file
        .user("bob")
        .unwrap()
        .credential
        .verify_password("battery staple"));
    assert!(file.may_send_as("alice@example.org", "x@example.org"));

    // Replacing: new password, senders kept, order kept.
    let out = passwd("alice@example.org", "new one\n", &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replaced user alice@example.org"));
    let file = smtplink_auth::UsersFile::load(&users).unwrap();
    let alice = file.user("alice@example.org").unwrap();
    assert!(alice.credential.verify_password("new one"));
    assert!(!alice.credential.verify_password("correct horse"));
    assert!(file.may_send_as("alice@example.org", "x@example.org"));
    let names: Vec<&str> = file.users().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice@example.org", "bob"]);

    // Refusals: no password, a bad name, a bad sender, a broken file.
    let before = std::fs::read_to_string(&users).unwrap();
    for (user, input, extra, needle) in [
        ("carol", "", &[][..], "no password"),
        ("ca:rol", "pw\n", &[][..], "bad user name"),
        (
            "carol",
            "pw\n",
            &["--allow", "nodomain"][..],
            "bad sender pattern",
        ),
    ] {
        let out = passwd(user, input, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&users).unwrap(), before);
    std::fs::write(&users, "junk\n").unwrap();
    let out = passwd("carol", "pw\n", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(":1: expected user:"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&users).unwrap(), "junk\n");
}

/// SIGHUP to a server with nothing to reload (no certificate, no users
/// file) is a logged no-op: the server keeps running.
#[test]
fn sighup_without_anything_to_reload_keeps_serving() {
    let mut server = Serve::start(&[]);
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    wait_for(
        "the SIGHUP log line",
        std::time::Duration::from_secs(10),
        || {
            server
                .log
                .try_iter()
                .any(|l| l.contains("nothing to reload"))
        },
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "serve died on SIGHUP"
    );
    assert!(server.interrupt().success());
}
