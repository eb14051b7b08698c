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
