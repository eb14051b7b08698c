//! smtplink's users file: who may authenticate with SMTP AUTH, with what
//! secret, and which sender addresses each user may use.
//!
//! One user a line; `#` starts a comment line, blank lines are ignored:
//!
//! ```text
//! # user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>[:<senders>]
//! alice@example.org:SCRAM-SHA-256$100000:c2FsdHNhbHRzYWx0c2FsdA==$...=:...=
//! relay-b:SCRAM-SHA-256$100000:...=$...=:...=:*@b.example.net,postmaster@example.org
//! ```
//!
//! The secret is PostgreSQL's (and RFC 5803's) SCRAM-SHA-256 form: salt,
//! StoredKey and ServerKey in base64. No password is stored, and the one
//! form serves SCRAM-SHA-256, PLAIN and LOGIN alike (see
//! [`smtplink_engine::sasl`]). The optional last field lists the addresses
//! the user may give in MAIL FROM: `local@domain`, `*@domain` (any address
//! at that domain, not its subdomains) or `*` (any address). Without it, a
//! user whose name is an address may send as that address only.
//!
//! Reading is [`UsersFile::load`] (errors name the line); changing a user is
//! [`UsersFile::set_user`] then [`UsersFile::save`], which writes a
//! temporary file with mode 0600, syncs it and renames it over the old one,
//! so a reader sees the old file or the new one, never half of one.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use smtplink_engine::sasl::{is_valid_username, MAX_ITERATIONS, MAX_SALT, MIN_ITERATIONS};
use smtplink_engine::{CredentialLookup, ScramCredential};

/// PBKDF2 iterations for new passwords. RFC 7677 asks for at least 4096
/// (PostgreSQL's and Dovecot's default), a figure from 2015. 100,000 makes
/// each guess against a stolen users file 25 times dearer, while one
/// check stays near a few tens of milliseconds on one core in a release
/// build, which a server doing a handful of AUTHs a minute (and a SCRAM
/// client, which pays the same) does not notice. Raise it with
/// `--iterations`; each entry keeps its own count, so old entries go on
/// working.
pub const DEFAULT_ITERATIONS: u32 = 100_000;

/// Salt length for new passwords, in octets (RFC 5802 leaves it open; 16
/// is what PostgreSQL uses).
pub const SALT_LEN: usize = 16;

const SCHEME: &str = "SCRAM-SHA-256";

/// What can go wrong with a users file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}{message}", location(path.as_deref(), *line))]
    Syntax {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A user name that cannot be stored: empty, over 255 octets, or with
    /// `:`, whitespace or control characters.
    #[error("bad user name {0:?}: 1 to 255 octets, no ':', spaces or control characters")]
    BadUserName(String),
    /// A sender pattern that is not `local@domain`, `*@domain` or `*`.
    #[error("bad sender pattern {0:?}: use local@domain, *@domain or *")]
    BadPattern(String),
    /// An iteration count outside what SCRAM-SHA-256 allows.
    #[error("iteration count {0} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    BadIterations(u32),
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// The system's random source failed.
    #[error("no random numbers: {0}")]
    Random(String),
}

/// `file:line: ` or `line N: `, as the config file's errors say it.
fn location(path: Option<&Path>, line: usize) -> String {
    match path {
        Some(p) => format!("{}:{line}: ", p.display()),
        None => format!("line {line}: "),
    }
}

/// Which senders a user may use in MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// `*`: any address, the null sender included.
    Any,
    /// `*@domain`: any address at this domain (lower-cased).
    Domain(String),
    /// `local@domain`: this address (compared ignoring ASCII case).
    Address(String),
}

impl SenderPattern {
    /// Parses `*`, `*@domain` or `local@domain`.
    pub fn parse(s: &str) -> Result<Self, UsersError> {
        let bad = || UsersError::BadPattern(s.to_string());
        if s == "*" {
            return Ok(SenderPattern::Any);
        }
        if s.is_empty()
            || s.contains([',', ':'])
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty() || domain.is_empty() || domain.contains('*') {
            return Err(bad());
        }
        if local == "*" {
            return Ok(SenderPattern::Domain(domain.to_ascii_lowercase()));
        }
        if local.contains('*') {
            return Err(bad());
        }
        Ok(SenderPattern::Address(s.to_string()))
    }

    /// Whether `address` (without angle brackets; empty for `<>`) matches.
    pub fn matches(&self, address: &str) -> bool {
        match self {
            SenderPattern::Any => true,
            SenderPattern::Domain(d) => address
                .rsplit_once('@')
                .is_some_and(|(l, ad)| !l.is_empty() && ad.eq_ignore_ascii_case(d)),
            SenderPattern::Address(a) => address.eq_ignore_ascii_case(a),
        }
    }
}

impl fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderPattern::Any => f.write_str("*"),
            SenderPattern::Domain(d) => write!(f, "*@{d}"),
            SenderPattern::Address(a) => f.write_str(a),
        }
    }
}

/// One user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (what AUTH gives).
    pub name: String,
    /// The stored secret.
    pub credential: ScramCredential,
    /// The senders the user may use; empty means "the user name, if it is
    /// an address".
    pub senders: Vec<SenderPattern>,
}

impl User {
    /// Whether this user may give `address` in MAIL FROM (without angle
    /// brackets; empty for the null sender).
    pub fn may_send_as(&self, address: &str) -> bool {
        if self.senders.is_empty() {
            return self.name.contains('@') && address.eq_ignore_ascii_case(&self.name);
        }
        self.senders.iter().any(|p| p.matches(address))
    }

    /// The line for this user (no line end).
    pub fn to_line(&self) -> String {
        let c = &self.credential;
        let mut line = format!(
            "{}:{SCHEME}${}:{}${}:{}",
            self.name,
            c.iterations,
            BASE64.encode(&c.salt),
            BASE64.encode(c.stored_key),
            BASE64.encode(c.server_key)
        );
        if !self.senders.is_empty() {
            let list: Vec<String> = self.senders.iter().map(ToString::to_string).collect();
            line.push(':');
            line.push_str(&list.join(","));
        }
        line
    }
}

/// Checks a user name for the file: what AUTH allows, without `:` or
/// whitespace (the file's separators).
pub fn check_user_name(name: &str) -> Result<(), UsersError> {
    if is_valid_username(name) && !name.contains(':') && !name.chars().any(char::is_whitespace) {
        Ok(())
    } else {
        Err(UsersError::BadUserName(name.to_string()))
    }
}

/// Derives the stored credential for a password (PBKDF2-HMAC-SHA-256,
/// `iterations` rounds; slow on purpose).
pub fn hash_password(
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<ScramCredential, UsersError> {
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(UsersError::BadIterations(iterations));
    }
    Ok(ScramCredential::from_password(password, salt, iterations))
}

/// A fresh random salt of [`SALT_LEN`] octets from the system.
pub fn random_salt() -> Result<[u8; SALT_LEN], UsersError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::getrandom(&mut salt).map_err(|e| UsersError::Random(e.to_string()))?;
    Ok(salt)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A comment or blank line, kept as it was.
    Other(String),
    User(User),
}

/// A users file in memory (comments kept, order kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersFile {
    items: Vec<Item>,
}

impl UsersFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Self, UsersError> {
        Self::parse_from(text, None)
    }

    fn parse_from(text: &str, path: Option<&Path>) -> Result<Self, UsersError> {
        let mut file = UsersFile::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| UsersError::Syntax {
                path: path.map(Path::to_path_buf),
                line: i + 1,
                message,
            };
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                file.items.push(Item::Other(line.to_string()));
                continue;
            }
            let user = parse_line(line).map_err(err)?;
            if file.user(&user.name).is_some() {
                return Err(err(format!("user {:?} appears twice", user.name)));
            }
            file.items.push(Item::User(user));
        }
        Ok(file)
    }

    /// Reads and parses a users file.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_from(&text, Some(path))
    }

    /// Reads a users file, or starts an empty one if there is none.
    pub fn load_or_new(path: &Path) -> Result<Self, UsersError> {
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            _ => Self::load(path),
        }
    }

    /// The users, in file order.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.items.iter().filter_map(|i| match i {
            Item::User(u) => Some(u),
            Item::Other(_) => None,
        })
    }

    /// The user with this name (exact match).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users().find(|u| u.name == name)
    }

    /// Adds a user, or replaces the one with the same name in place.
    pub fn set_user(&mut self, user: User) -> Result<(), UsersError> {
        check_user_name(&user.name)?;
        for item in &mut self.items {
            if let Item::User(u) = item {
                if u.name == user.name {
                    *u = user;
                    return Ok(());
                }
            }
        }
        self.items.push(Item::User(user));
        Ok(())
    }

    /// The answer to the engine's `AuthLookup` for `name`: the credential,
    /// or "no such user" with a decoy salt that is the same for the same
    /// name under the same `decoy_key` (a secret the server holds, e.g.
    /// drawn once at start-up), so a SCRAM exchange does not reveal whether
    /// the user exists.
    pub fn credential_lookup(&self, name: &str, decoy_key: &[u8]) -> CredentialLookup {
        match self.user(name) {
            Some(u) => CredentialLookup::Found(u.credential.clone()),
            None => CredentialLookup::NoSuchUser {
                decoy_salt: decoy_salt(name, decoy_key),
                iterations: self
                    .users()
                    .next()
                    .map_or(DEFAULT_ITERATIONS, |u| u.credential.iterations),
            },
        }
    }

    /// Whether user `name` may give `address` in MAIL FROM; false for an
    /// unknown user.
    pub fn may_send_as(&self, name: &str, address: &str) -> bool {
        self.user(name).is_some_and(|u| u.may_send_as(address))
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Other(line) => out.push_str(line),
                Item::User(u) => out.push_str(&u.to_line()),
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file beside it (mode 0600),
    /// synced, renamed over `path`, then the directory synced.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "users".into());
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options.open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            if let Ok(d) = fs::File::open(&dir) {
                d.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}

/// HMAC-SHA-256 of the user name under `key`, cut to [`SALT_LEN`].
fn decoy_salt(name: &str, key: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return vec![0; SALT_LEN];
    };
    mac.update(b"smtplink decoy salt\0");
    mac.update(name.as_bytes());
    mac.finalize().into_bytes()[..SALT_LEN].to_vec()
}

fn parse_line(line: &str) -> Result<User, String> {
    let (name, rest) = line
        .split_once(':')
        .ok_or("expected user:SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey[:senders]")?;
    check_user_name(name).map_err(|e| e.to_string())?;
    let fields: Vec<&str> = rest.split(':').collect();
    let (scheme_iter, salt_stored, server, senders) = match fields.as_slice() {
        [a, b, c] => (*a, *b, *c, None),
        [a, b, c, d] => (*a, *b, *c, Some(*d)),
        _ => {
            return Err(
                "expected user:SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey[:senders]".into(),
            )
        }
    };
    let (scheme, iterations) = scheme_iter
        .split_once('$')
        .ok_or("expected SCRAM-SHA-256$iterations")?;
    if scheme != SCHEME {
        return Err(format!("unknown scheme {scheme:?} (only {SCHEME})"));
    }
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| format!("iteration count {iterations:?} is not a number"))?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(UsersError::BadIterations(iterations).to_string());
    }
    let (salt, stored) = salt_stored
        .split_once('$')
        .ok_or("expected salt$StoredKey")?;
    let salt = BASE64
        .decode(salt)
        .map_err(|_| "salt is not base64".to_string())?;
    if salt.is_empty() || salt.len() > MAX_SALT {
        return Err(format!("salt must be 1 to {MAX_SALT} octets"));
    }
    let key = |what: &str, b64: &str| -> Result<[u8; 32], String> {
        BASE64
            .decode(b64)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(format!("{what} is not 32 octets of base64"))
    };
    let credential = ScramCredential {
        salt,
        iterations,
        stored_key: key("StoredKey", stored)?,
        server_key: key("ServerKey", server)?,
    };
    let senders = match senders {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|p| SenderPattern::parse(p.trim()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
    };
    Ok(User {
        name: name.to_string(),
        credential,
        senders,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn user(name: &str, password: &str, senders: &[&str]) -> User {
        User {
            name: name.into(),
            credential: hash_password(password, b"0123456789abcdef", 4096).unwrap(),
            senders: senders
                .iter()
                .map(|s| SenderPattern::parse(s).unwrap())
                .collect(),
        }
    }

    /// RFC 7677's credential for "pencil", in PostgreSQL's notation.
    #[test]
    fn rfc7677_credential_line() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let u = User {
            name: "user".into(),
            credential: hash_password("pencil", &salt, 4096).unwrap(),
            senders: vec![],
        };
        let line = u.to_line();
        assert!(
            line.starts_with("user:SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{line}"
        );
        let back = UsersFile::parse(&line).unwrap();
        assert_eq!(back.user("user"), Some(&u));
        assert!(back
            .user("user")
            .unwrap()
            .credential
            .verify_password("pencil"));
    }

    #[test]
    fn round_trip_keeps_comments_and_order() {
        let mut f = UsersFile::parse("# users\n\n").unwrap();
        f.set_user(user("alice@example.org", "a", &[])).unwrap();
        f.set_user(user(
            "relay-b",
            "b",
            &["*@b.example.net", "postmaster@example.org"],
        ))
        .unwrap();
        let text = f.to_text();
        assert!(text.starts_with("# users\n\nalice@example.org:SCRAM-SHA-256$4096:"));
        assert!(text.contains(":*@b.example.net,postmaster@example.org\n"));
        let back = UsersFile::parse(&text).unwrap();
        assert_eq!(back, f);
        // Replace in place.
        let mut f2 = back.clone();
        f2.set_user(user("alice@example.org", "new", &["*"]))
            .unwrap();
        let names: Vec<&str> = f2.users().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice@example.org", "relay-b"]);
        assert!(f2
            .user("alice@example.org")
            .unwrap()
            .credential
            .verify_password("new"));
        assert!(!f2
            .user("alice@example.org")
            .unwrap()
            .credential
            .verify_password("a"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let good = user("a", "pw", &[]).to_line();
        let cases = [
            ("nocolon", 2, "expected user:"),
            ("b:MD5$4096:x$y:z", 2, "unknown scheme"),
            (
                "b:SCRAM-SHA-256$10:c2FsdA==$AAAA:AAAA",
                2,
                "iteration count 10",
            ),
            ("b:SCRAM-SHA-256$many:c2FsdA==$AAAA:AAAA", 2, "not a number"),
            ("b:SCRAM-SHA-256$4096:!!$AAAA:AAAA", 2, "salt is not base64"),
            (
                "b:SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
                2,
                "StoredKey is not 32 octets",
            ),
            (
                "b c:SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
                2,
                "bad user name",
            ),
        ];
        for (bad, line, needle) in cases {
            let text = format!("{good}\n{bad}\n");
            let e = UsersFile::parse(&text).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, UsersError::Syntax { line: l, .. } if l == line),
                "{bad}: {msg}"
            );
            assert!(msg.contains(needle), "{bad}: {msg}");
            assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
        }
        let text = format!("# c\n{good}\n{good}\n");
        let msg = UsersFile::parse(&text).unwrap_err().to_string();
        assert_eq!(msg, "line 3: user \"a\" appears twice");
        let stored = BASE64.encode([1u8; 32]);
        let bad_sender = format!("a:SCRAM-SHA-256$4096:c2FsdA==${stored}:{stored}:a@b,evil");
        let msg = UsersFile::parse(&bad_sender).unwrap_err().to_string();
        assert!(msg.contains("bad sender pattern \"evil\""), "{msg}");
    }

    #[test]
    fn wrong_password_fails() {
        let u = user("a", "correct horse", &[]);
        assert!(u.credential.verify_password("correct horse"));
        assert!(!u.credential.verify_password("correct horse "));
        assert!(!u.credential.verify_password(""));
        assert!(matches!(
            hash_password("", b"s", 4096),
            Err(UsersError::EmptyPassword)
        ));
        assert!(matches!(
            hash_password("x", b"s", 1000),
            Err(UsersError::BadIterations(1000))
        ));
    }

    #[test]
    fn may_send_as_patterns() {
        let mut f = UsersFile::new();
        f.set_user(user("alice@example.org", "a", &[])).unwrap();
        f.set_user(user(
            "relay",
            "b",
            &["*@B.example.net", "Postmaster@example.org"],
        ))
        .unwrap();
        f.set_user(user("admin", "c", &["*"])).unwrap();
        f.set_user(user("nobody", "d", &[])).unwrap();
        assert!(f.may_send_as("alice@example.org", "alice@example.org"));
        assert!(f.may_send_as("alice@example.org", "ALICE@Example.org"));
        assert!(!f.may_send_as("alice@example.org", "bob@example.org"));
        assert!(!f.may_send_as("alice@example.org", ""));
        assert!(f.may_send_as("relay", "anyone@b.example.net"));
        assert!(f.may_send_as("relay", "anyone@B.EXAMPLE.NET"));
        assert!(!f.may_send_as("relay", "x@sub.b.example.net"));
        assert!(!f.may_send_as("relay", "@b.example.net"));
        assert!(!f.may_send_as("relay", "x@evil-b.example.net"));
        assert!(f.may_send_as("relay", "postmaster@example.org"));
        assert!(!f.may_send_as("relay", "other@example.org"));
        assert!(f.may_send_as("admin", "x@y.z"));
        assert!(f.may_send_as("admin", ""));
        assert!(!f.may_send_as("nobody", "nobody@example.org"));
        assert!(!f.may_send_as("stranger", "x@y.z"));
        for bad in [
            "", "a@", "@b", "a*@b", "*@*.b", "a b@c", "a,b@c", "a:b@c", "nodomain",
        ] {
            assert!(SenderPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookups_and_decoys() {
        let mut f = UsersFile::new();
        f.set_user(user("alice", "a", &[])).unwrap();
        assert!(matches!(
            f.credential_lookup("alice", b"k"),
            CredentialLookup::Found(_)
        ));
        let CredentialLookup::NoSuchUser {
            decoy_salt: s1,
            iterations,
        } = f.credential_lookup("bob", b"k")
        else {
            panic!()
        };
        // Same name, same key: same decoy; it looks like a real salt.
        let CredentialLookup::NoSuchUser { decoy_salt: s2, .. } = f.credential_lookup("bob", b"k")
        else {
            panic!()
        };
        let CredentialLookup::NoSuchUser { decoy_salt: s3, .. } =
            f.credential_lookup("bob", b"other")
        else {
            panic!()
        };
        assert_eq!(s1, s2);
        assert_ne!(s1, s3);
        assert_eq!(s1.len(), SALT_LEN);
        assert_eq!(iterations, 4096);
        assert!(f.set_user(user("a:b", "x", &[])).is_err());
    }

    #[test]
    fn save_is_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        assert_eq!(UsersFile::load_or_new(&path).unwrap(), UsersFile::new());
        let mut f = UsersFile::new();
        f.set_user(user("alice", "a", &["*@example.org"])).unwrap();
        f.save(&path).unwrap();
        f.set_user(user("bob", "b", &[])).unwrap();
        f.save(&path).unwrap();
        assert_eq!(UsersFile::load(&path).unwrap(), f);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("users")]);
        // Errors carry the path.
        std::fs::write(&path, "junk\n").unwrap();
        let msg = UsersFile::load(&path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{}:1: expected user:SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey[:senders]",
                path.display()
            )
        );
        assert!(random_salt().unwrap() != random_salt().unwrap());
    }
}
