//! `smtplink passwd`: add or replace a user in an AUTH users file.
//!
//! The password comes from standard input (one line) and never touches the
//! disk: only its SCRAM-SHA-256 derivation (salt, StoredKey, ServerKey) is
//! written, atomically, to a file of mode 0600.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use smtplink_auth::{hash_password, random_salt, SenderPattern, User, UsersError, UsersFile};

/// Runs the subcommand; errors go to stderr with exit status 1.
pub(crate) fn run(users: &Path, user: &str, allow: &[String], iterations: u32) -> ExitCode {
    match set_password(users, user, allow, iterations) {
        Ok(replaced) => {
            eprintln!(
                "smtplink: {} user {user} in {}",
                if replaced { "replaced" } else { "added" },
                users.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtplink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn set_password(
    path: &Path,
    user: &str,
    allow: &[String],
    iterations: u32,
) -> Result<bool, String> {
    smtplink_auth::check_user_name(user).map_err(|e| e.to_string())?;
    let senders = allow
        .iter()
        .map(|a| SenderPattern::parse(a))
        .collect::<Result<Vec<_>, UsersError>>()
        .map_err(|e| e.to_string())?;
    // Read the file first: a broken file is reported before a password is
    // asked for, and is never overwritten.
    let mut file = UsersFile::load_or_new(path).map_err(|e| e.to_string())?;
    let password = read_password()?;
    let salt = random_salt().map_err(|e| e.to_string())?;
    let credential = hash_password(&password, &salt, iterations).map_err(|e| e.to_string())?;
    drop(password);
    let existing = file.user(user);
    let replaced = existing.is_some();
    // Without --allow, a replaced user keeps the senders it had.
    let senders = match (senders.is_empty(), existing) {
        (true, Some(old)) => old.senders.clone(),
        _ => senders,
    };
    if senders.is_empty() && !user.contains('@') {
        // Without senders only an address-shaped name may send (as itself).
        eprintln!(
            "smtplink: note: {user} may log in but send as no address; give --allow ADDR (or *@domain)"
        );
    }
    file.set_user(User {
        name: user.to_string(),
        credential,
        senders,
    })
    .map_err(|e| e.to_string())?;
    file.save(path).map_err(|e| e.to_string())?;
    Ok(replaced)
}

/// One line from stdin, without its line end.
fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // Asked on stderr so stdout stays clean; the terminal still echoes.
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("no password on stdin (one line expected)".into());
    }
    Ok(password.to_string())
}
