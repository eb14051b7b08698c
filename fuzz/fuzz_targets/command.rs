//! Command::parse on arbitrary bytes: never panics; whatever parses writes
//! back as one CRLF-terminated line that parses to the same command (so no
//! parsed command can smuggle a second one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplink_engine::{Command, ParseOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, line)) = data.split_first() else {
        return;
    };
    let opts = ParseOptions {
        esmtp: flags & 1 != 0,
        size: flags & 2 != 0,
        eightbitmime: flags & 4 != 0,
        smtputf8: flags & 8 != 0,
        utf8_transaction: flags & 16 != 0,
        dsn: flags & 32 != 0,
        auth: flags & 64 != 0,
    };
    let Ok(cmd) = Command::parse(line, &opts) else {
        // The error always has a reply to send; building it must not panic.
        let _ = Command::parse(line, &opts).map_err(|e| e.reply().to_bytes());
        return;
    };
    let wire = cmd.to_line();
    let body = wire.strip_suffix("\r\n").expect("ends in CRLF");
    assert!(!body.contains(['\r', '\n']), "{wire:?}");
    let again = Command::parse(body.as_bytes(), &opts).expect("written command parses");
    assert_eq!(again, cmd, "{wire:?}");
});
