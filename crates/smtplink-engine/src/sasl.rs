//! SASL mechanisms for SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN (the
//! de-facto `Username:`/`Password:` exchange) and SCRAM-SHA-256 (RFC 5802,
//! RFC 7677) without channel binding.
//!
//! Sans-IO like the rest of the engine: nonces and salts come from the
//! caller, nothing here reads a clock or a random source. The server and
//! client state machines work on decoded SASL messages; base64 framing and
//! the SMTP replies (334, 235, 535...) are the sessions' business.
//!
//! # One stored format for all three mechanisms
//!
//! A user's secret is kept as a [`ScramCredential`] (salt, iteration count,
//! StoredKey, ServerKey: the PostgreSQL / RFC 5803 form). SCRAM uses it
//! directly; for PLAIN and LOGIN the server derives SaltedPassword from the
//! password the client sent, with the stored salt and iteration count, and
//! compares the resulting StoredKey in constant time. The plaintext password
//! is never stored.
//!
//! Passwords and usernames are used as their UTF-8 bytes; SASLprep
//! (RFC 4013) is not applied, which makes no difference for ASCII
//! passwords. Nothing in this module logs a payload or a secret, and the
//! `Debug` forms of the types that hold one print only lengths.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest line of an authentication exchange, in octets, CRLF included
/// (RFC 4954 section 4: a server must take client responses of 12,288
/// octets, the base64 form of 9,216 octets).
pub const MAX_SASL_LINE: usize = 12_288;

/// Fewest PBKDF2 iterations of a SCRAM-SHA-256 credential (RFC 7677
/// section 4: "at least 4096").
pub const MIN_ITERATIONS: u32 = 4096;

/// Most PBKDF2 iterations the client accepts from a server, and the server
/// from a stored credential: each one costs two HMACs, so a hostile server
/// (or a corrupt file) could otherwise make us spin for minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Longest user name accepted, in octets.
pub const MAX_USERNAME: usize = 255;

/// Longest nonce part (the client's, or the server's) in characters. Bounds
/// the server-first message so its 334 line stays under 512 octets
/// (RFC 5321 4.5.3.1.5).
pub const MAX_NONCE: usize = 100;

/// Longest salt in octets (same reason as [`MAX_NONCE`]).
pub const MAX_SALT: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// A SASL mechanism smtplink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256 (RFC 7677): the password never crosses the link, and
    /// the client checks that the server knows the credential too. Safe on
    /// an unencrypted link (no channel binding, so it does not stop a
    /// man-in-the-middle from riding on the session once it is set up).
    ScramSha256,
    /// PLAIN (RFC 4616): the password in clear; only over an encrypted or
    /// trusted link.
    Plain,
    /// LOGIN: PLAIN's older cousin, base64 user name and password in two
    /// steps; only over an encrypted or trusted link.
    Login,
}

impl Mechanism {
    /// Every mechanism, strongest first (the client's order of preference).
    pub const ALL: [Mechanism; 3] = [Mechanism::ScramSha256, Mechanism::Plain, Mechanism::Login];

    /// The registered name, as in EHLO and AUTH.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// The mechanism with this name (case-insensitive), if we speak it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the password crosses the link in clear (PLAIN, LOGIN), so
    /// the mechanism is only for encrypted or trusted links (RFC 4954
    /// section 4: 538 otherwise).
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stored SCRAM-SHA-256 credential (RFC 5802 section 3): what a server
/// keeps instead of a password. Serves PLAIN and LOGIN as well (see the
/// module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// StoredKey = H(ClientKey).
    pub stored_key: [u8; 32],
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// Derives the credential for `password` (RFC 5802 section 3).
    /// This runs PBKDF2 `iterations` times: it is slow on purpose.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        Self::from_salted(&salted, salt, iterations)
    }

    fn from_salted(salted: &[u8; 32], salt: &[u8], iterations: u32) -> Self {
        let client_key = hmac(salted, b"Client Key");
        Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one this credential was made from
    /// (constant-time comparison of StoredKey).
    pub fn verify_password(&self, password: &str) -> bool {
        let candidate = Self::from_password(password, &self.salt, self.iterations);
        bool::from(candidate.stored_key.ct_eq(&self.stored_key))
    }

    /// Whether the salt and iteration count are ones this engine works with.
    pub fn is_usable(&self) -> bool {
        !self.salt.is_empty()
            && self.salt.len() <= MAX_SALT
            && (1..=MAX_ITERATIONS).contains(&self.iterations)
    }
}

/// PBKDF2-HMAC-SHA-256, one block: RFC 5802's Hi().
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Whether `nonce` may be used as a SCRAM nonce part: printable ASCII
/// except `,` (RFC 5802 section 7), 1 to [`MAX_NONCE`] characters.
pub fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A nonce made from random bytes the caller drew (base64, so always valid
/// when 1 to 96 bytes are given; 18 or more are recommended).
pub fn nonce_from_bytes(random: &[u8]) -> String {
    BASE64.encode(random)
}

/// Decodes one base64 SASL response (RFC 4954 section 4: `=` alone is an
/// empty response). `None` when it is not valid base64.
pub fn decode_response(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(line).ok()
}

/// Encodes a SASL message for the wire; an empty one is `=` when it is an
/// initial response (RFC 4954 section 4) and empty otherwise.
pub fn encode(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// `saslname` (RFC 5802 section 5.1): `,` as `=2C`, `=` as `=3D`.
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn decode_saslname(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['=', ',']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return None;
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A user name is 1 to [`MAX_USERNAME`] octets of UTF-8 with no control
/// character, so it can go into events, logs and trace fields as it is.
pub fn is_valid_username(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_USERNAME && !name.chars().any(char::is_control)
}

/// The application's answer to an AUTH credential lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialLookup {
    /// The user's stored credential.
    Found(ScramCredential),
    /// No such user (or one that may not log in). SCRAM then goes on with
    /// this decoy salt and iteration count and fails at the end, so the
    /// exchange does not tell whether the user exists; give a salt that is
    /// the same every time for the same name (e.g. an HMAC of the name under
    /// a server secret), and the iteration count real users have.
    NoSuchUser {
        /// The decoy salt.
        decoy_salt: Vec<u8>,
        /// The decoy iteration count.
        iterations: u32,
    },
}

/// Why an authentication exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// Wrong user name, password or proof (535 5.7.8).
    BadCredentials,
    /// A response that is not base64, or not what the mechanism expects
    /// (501 5.5.2).
    Malformed,
    /// The client cancelled with `*` (501 5.0.0).
    Cancelled,
    /// A response line over [`MAX_SASL_LINE`] (500 5.5.6).
    LineTooLong,
    /// The application refused (its reply went out, e.g. 454 4.7.0).
    Refused,
}

/// What the server side of a mechanism wants next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerStep {
    /// Send this challenge (334) and wait for a response.
    Challenge(Vec<u8>),
    /// Ask the application for this user's credential.
    Lookup(String),
    /// Authenticated as this user (235).
    Success(String),
    /// Failed; `Some(user)` when the client named one.
    Fail(AuthFailure, Option<String>),
}

/// The server side of one exchange.
pub(crate) struct ServerExchange {
    mechanism: Mechanism,
    state: ServerState,
}

enum ServerState {
    /// PLAIN sent its empty challenge.
    PlainResponse,
    /// LOGIN sent "Username:".
    LoginUser,
    /// LOGIN sent "Password:".
    LoginPassword { username: String },
    /// PLAIN/LOGIN waiting for the credential to check `password` against.
    CheckPassword { username: String, password: String },
    /// SCRAM waiting for client-first (no initial response).
    ScramFirst,
    /// SCRAM waiting for the credential.
    ScramLookup(ScramClientFirst),
    /// SCRAM sent server-first, waiting for client-final.
    ScramFinal {
        first: ScramClientFirst,
        server_first: String,
        nonce: String,
        credential: ScramCredential,
        known_user: bool,
    },
    /// SCRAM sent server-final (v=), waiting for the empty response.
    ScramDone { username: String },
    /// Over.
    Done,
}

struct ScramClientFirst {
    gs2_header: String,
    bare: String,
    username: String,
    client_nonce: String,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the payloads: only where the exchange stands.
        let state = match self.state {
            ServerState::PlainResponse => "PlainResponse",
            ServerState::LoginUser => "LoginUser",
            ServerState::LoginPassword { .. } => "LoginPassword",
            ServerState::CheckPassword { .. } => "CheckPassword",
            ServerState::ScramFirst => "ScramFirst",
            ServerState::ScramLookup(_) => "ScramLookup",
            ServerState::ScramFinal { .. } => "ScramFinal",
            ServerState::ScramDone { .. } => "ScramDone",
            ServerState::Done => "Done",
        };
        f.debug_struct("ServerExchange")
            .field("mechanism", &self.mechanism)
            .field("state", &state)
            .finish()
    }
}

const LOGIN_USERNAME: &[u8] = b"Username:";
const LOGIN_PASSWORD: &[u8] = b"Password:";

impl ServerExchange {
    /// Starts an exchange, with the decoded initial response if one came.
    pub(crate) fn start(mechanism: Mechanism, initial: Option<Vec<u8>>) -> (Self, ServerStep) {
        let state = match mechanism {
            Mechanism::Plain => ServerState::PlainResponse,
            Mechanism::Login => ServerState::LoginUser,
            Mechanism::ScramSha256 => ServerState::ScramFirst,
        };
        let mut ex = Self { mechanism, state };
        let step = match initial {
            Some(data) => ex.respond(data),
            None => match mechanism {
                // RFC 4954 section 4 (RFC 2222 5.1): a mechanism that needs
                // an initial response and got none gets an empty challenge.
                Mechanism::Plain | Mechanism::ScramSha256 => ServerStep::Challenge(Vec::new()),
                Mechanism::Login => ServerStep::Challenge(LOGIN_USERNAME.to_vec()),
            },
        };
        (ex, step)
    }

    /// The mechanism in use.
    pub(crate) fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The user name the client gave so far, if any.
    pub(crate) fn username(&self) -> Option<&str> {
        match &self.state {
            ServerState::LoginPassword { username }
            | ServerState::CheckPassword { username, .. }
            | ServerState::ScramDone { username } => Some(username),
            ServerState::ScramLookup(first) | ServerState::ScramFinal { first, .. } => {
                Some(&first.username)
            }
            _ => None,
        }
    }

    fn fail(&mut self, why: AuthFailure) -> ServerStep {
        let user = self.username().map(str::to_string);
        self.state = ServerState::Done;
        ServerStep::Fail(why, user)
    }

    /// One decoded client response.
    pub(crate) fn respond(&mut self, data: Vec<u8>) -> ServerStep {
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::PlainResponse => self.plain(&data),
            ServerState::LoginUser => match text(&data).filter(|u| is_valid_username(u)) {
                Some(username) => {
                    self.state = ServerState::LoginPassword { username };
                    ServerStep::Challenge(LOGIN_PASSWORD.to_vec())
                }
                None => self.fail(AuthFailure::Malformed),
            },
            ServerState::LoginPassword { username } => match text(&data) {
                Some(password) => {
                    self.state = ServerState::CheckPassword {
                        username: username.clone(),
                        password,
                    };
                    ServerStep::Lookup(username)
                }
                None => {
                    self.state = ServerState::LoginPassword { username };
                    self.fail(AuthFailure::Malformed)
                }
            },
            ServerState::ScramFirst => match parse_client_first(&data) {
                Ok(first) => {
                    let user = first.username.clone();
                    self.state = ServerState::ScramLookup(first);
                    ServerStep::Lookup(user)
                }
                Err(why) => self.fail(why),
            },
            ServerState::ScramFinal {
                first,
                server_first,
                nonce,
                credential,
                known_user,
            } => {
                let username = first.username.clone();
                let verdict =
                    verify_client_final(&data, &first, &server_first, &nonce, &credential);
                self.state = ServerState::ScramLookup(first);
                match verdict {
                    Ok(signature) if known_user => {
                        self.state = ServerState::ScramDone { username };
                        let mut v = b"v=".to_vec();
                        v.extend_from_slice(BASE64.encode(signature).as_bytes());
                        ServerStep::Challenge(v)
                    }
                    Ok(_) => self.fail(AuthFailure::BadCredentials),
                    Err(why) => self.fail(why),
                }
            }
            ServerState::ScramDone { username } => {
                if data.is_empty() {
                    ServerStep::Success(username)
                } else {
                    self.state = ServerState::ScramDone { username };
                    self.fail(AuthFailure::Malformed)
                }
            }
            // No response is expected in these states; the session never
            // calls respond() then, but stay safe.
            state @ (ServerState::CheckPassword { .. }
            | ServerState::ScramLookup(_)
            | ServerState::Done) => {
                self.state = state;
                self.fail(AuthFailure::Malformed)
            }
        }
    }

    fn plain(&mut self, data: &[u8]) -> ServerStep {
        // RFC 4616 section 2: [authzid] NUL authcid NUL passwd.
        let mut parts = data.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.fail(AuthFailure::Malformed);
        };
        let (Some(authzid), Some(username), Some(password)) =
            (text(authzid), text(authcid), text(password))
        else {
            return self.fail(AuthFailure::Malformed);
        };
        if !is_valid_username(&username) || password.is_empty() {
            return self.fail(AuthFailure::Malformed);
        }
        if !authzid.is_empty() && authzid != username {
            // Acting for someone else is not supported.
            self.state = ServerState::LoginPassword { username };
            return self.fail(AuthFailure::BadCredentials);
        }
        self.state = ServerState::CheckPassword {
            username: username.clone(),
            password,
        };
        ServerStep::Lookup(username)
    }

    /// The application's answer to [`ServerStep::Lookup`]. `server_nonce` is
    /// used by SCRAM only and must pass [`is_valid_nonce`] (the session
    /// checks it first).
    pub(crate) fn answer_lookup(
        &mut self,
        lookup: CredentialLookup,
        server_nonce: &str,
    ) -> ServerStep {
        let (credential, known_user) = match lookup {
            CredentialLookup::Found(c) => (c, true),
            CredentialLookup::NoSuchUser {
                decoy_salt,
                iterations,
            } => (
                ScramCredential {
                    salt: decoy_salt,
                    iterations,
                    stored_key: [0; 32],
                    server_key: [0; 32],
                },
                false,
            ),
        };
        if !credential.is_usable() {
            return self.fail(AuthFailure::BadCredentials);
        }
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::CheckPassword { username, password } => {
                // Derive even for an unknown user: the time taken says
                // nothing about whether the user exists.
                let ok = credential.verify_password(&password);
                drop(password);
                if ok && known_user {
                    ServerStep::Success(username)
                } else {
                    self.state = ServerState::ScramDone { username };
                    self.fail(AuthFailure::BadCredentials)
                }
            }
            ServerState::ScramLookup(first) => {
                let nonce = format!("{}{}", first.client_nonce, server_nonce);
                let server_first = format!(
                    "r={nonce},s={},i={}",
                    BASE64.encode(&credential.salt),
                    credential.iterations
                );
                let challenge = server_first.as_bytes().to_vec();
                self.state = ServerState::ScramFinal {
                    first,
                    server_first,
                    nonce,
                    credential,
                    known_user,
                };
                ServerStep::Challenge(challenge)
            }
            other => {
                self.state = other;
                self.fail(AuthFailure::Malformed)
            }
        }
    }
}

fn text(data: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(data).ok()?;
    (!s.chars().any(char::is_control)).then(|| s.to_string())
}

/// Parses client-first-message (RFC 5802 section 7).
fn parse_client_first(data: &[u8]) -> Result<ScramClientFirst, AuthFailure> {
    let msg = std::str::from_utf8(data).map_err(|_| AuthFailure::Malformed)?;
    if msg.chars().any(char::is_control) {
        return Err(AuthFailure::Malformed);
    }
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = msg.split_once(',').ok_or(AuthFailure::Malformed)?;
    match flag {
        // "y": the client could bind but thinks we cannot; we do not
        // offer SCRAM-SHA-256-PLUS, so that is right.
        "n" | "y" => {}
        // Channel binding asked for on a mechanism without it (RFC 5802
        // section 6: the server MUST fail the authentication).
        f if f.starts_with("p=") => return Err(AuthFailure::BadCredentials),
        _ => return Err(AuthFailure::Malformed),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(AuthFailure::Malformed)?;
    let gs2_header = msg[..flag.len() + 1 + authzid.len() + 1].to_string();
    let authzid = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .and_then(decode_saslname)
                .ok_or(AuthFailure::Malformed)?,
        ),
    };
    let mut fields = bare.split(',');
    let user = fields.next().ok_or(AuthFailure::Malformed)?;
    // "m=" (reserved-mext) must make the server fail.
    let username = user
        .strip_prefix("n=")
        .and_then(decode_saslname)
        .filter(|u| is_valid_username(u))
        .ok_or(AuthFailure::Malformed)?;
    let client_nonce = fields
        .next()
        .and_then(|r| r.strip_prefix("r="))
        .filter(|n| is_valid_nonce(n))
        .ok_or(AuthFailure::Malformed)?
        .to_string();
    // Optional extensions: attr=value, ignored.
    if fields
        .any(|f| f.len() < 2 || !f.as_bytes()[0].is_ascii_alphabetic() || f.as_bytes()[1] != b'=')
    {
        return Err(AuthFailure::Malformed);
    }
    if authzid.is_some_and(|a| a != username) {
        return Err(AuthFailure::BadCredentials);
    }
    Ok(ScramClientFirst {
        gs2_header,
        bare: bare.to_string(),
        username,
        client_nonce,
    })
}

/// Checks client-final-message; returns the ServerSignature to send.
fn verify_client_final(
    data: &[u8],
    first: &ScramClientFirst,
    server_first: &str,
    nonce: &str,
    credential: &ScramCredential,
) -> Result<[u8; 32], AuthFailure> {
    let msg = std::str::from_utf8(data).map_err(|_| AuthFailure::Malformed)?;
    let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(AuthFailure::Malformed)?;
    let mut fields = without_proof.split(',');
    let cbind = fields
        .next()
        .and_then(|c| c.strip_prefix("c="))
        .ok_or(AuthFailure::Malformed)?;
    let r = fields
        .next()
        .and_then(|r| r.strip_prefix("r="))
        .ok_or(AuthFailure::Malformed)?;
    let proof = BASE64.decode(proof).map_err(|_| AuthFailure::Malformed)?;
    let cbind = BASE64.decode(cbind).map_err(|_| AuthFailure::Malformed)?;
    if proof.len() != 32 {
        return Err(AuthFailure::Malformed);
    }
    // The channel binding must repeat the gs2 header, and the nonce must be
    // the one we made: either differing is a failed authentication.
    if cbind != first.gs2_header.as_bytes() || r != nonce {
        return Err(AuthFailure::BadCredentials);
    }
    let auth_message = format!("{},{server_first},{without_proof}", first.bare);
    let client_signature = hmac(&credential.stored_key, auth_message.as_bytes());
    let mut client_key = [0u8; 32];
    for (k, (p, s)) in client_key
        .iter_mut()
        .zip(proof.iter().zip(client_signature.iter()))
    {
        *k = p ^ s;
    }
    if !bool::from(sha256(&client_key).ct_eq(&credential.stored_key)) {
        return Err(AuthFailure::BadCredentials);
    }
    Ok(hmac(&credential.server_key, auth_message.as_bytes()))
}

/// A user name and password for the client side.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (authentication identity).
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// A user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// Why the client side of an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslClientError {
    /// The server's challenge is not what the mechanism expects.
    #[error("malformed challenge from the server")]
    MalformedChallenge,
    /// The server's SCRAM nonce does not extend ours.
    #[error("the server's SCRAM nonce does not start with ours")]
    NonceMismatch,
    /// The server's SCRAM salt or iteration count is unusable.
    #[error("the server's SCRAM parameters are unusable (salt, or iterations outside {MIN_ITERATIONS}..={MAX_ITERATIONS})")]
    BadParameters,
    /// The server's SCRAM signature is wrong or missing: it does not know
    /// the credential (or someone is in the middle).
    #[error("the server failed to prove it knows the credential (SCRAM ServerSignature)")]
    ServerSignature,
    /// The server reported a SCRAM error (`e=`).
    #[error("the server reported SCRAM error {0:?}")]
    ServerError(String),
}

/// The client side of one exchange.
pub(crate) struct ClientExchange {
    mechanism: Mechanism,
    state: ClientState,
}

enum ClientState {
    Login {
        username: String,
        password: String,
        sent_user: bool,
    },
    ScramFirst {
        password: String,
        bare: String,
        nonce: String,
    },
    ScramFinal {
        server_signature: [u8; 32],
    },
    /// The server's signature checked out (or PLAIN/LOGIN sent everything).
    Verified,
    Failed,
}

impl fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientExchange")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl ClientExchange {
    /// Starts an exchange; returns it and the initial response to send with
    /// AUTH (LOGIN sends none). `nonce` is SCRAM's client nonce.
    pub(crate) fn start(
        mechanism: Mechanism,
        credentials: &Credentials,
        nonce: &str,
    ) -> (Self, Option<Vec<u8>>) {
        let Credentials { username, password } = credentials.clone();
        match mechanism {
            Mechanism::Plain => {
                let mut msg = vec![0];
                msg.extend_from_slice(username.as_bytes());
                msg.push(0);
                msg.extend_from_slice(password.as_bytes());
                (
                    Self {
                        mechanism,
                        state: ClientState::Verified,
                    },
                    Some(msg),
                )
            }
            Mechanism::Login => (
                Self {
                    mechanism,
                    state: ClientState::Login {
                        username,
                        password,
                        sent_user: false,
                    },
                },
                None,
            ),
            Mechanism::ScramSha256 => {
                let bare = format!("n={},r={nonce}", encode_saslname(&username));
                let first = format!("n,,{bare}").into_bytes();
                (
                    Self {
                        mechanism,
                        state: ClientState::ScramFirst {
                            password,
                            bare,
                            nonce: nonce.to_string(),
                        },
                    },
                    Some(first),
                )
            }
        }
    }

    /// The mechanism in use.
    pub(crate) fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Answers one decoded 334 challenge.
    pub(crate) fn challenge(&mut self, data: &[u8]) -> Result<Vec<u8>, SaslClientError> {
        let state = std::mem::replace(&mut self.state, ClientState::Failed);
        match state {
            ClientState::Login {
                username,
                password,
                sent_user,
            } => {
                // Servers word the prompts differently; go by order (the
                // first challenge asks for the name, the second for the
                // password), as most clients do.
                if !sent_user {
                    let out = username.as_bytes().to_vec();
                    self.state = ClientState::Login {
                        username,
                        password,
                        sent_user: true,
                    };
                    Ok(out)
                } else {
                    self.state = ClientState::Verified;
                    Ok(password.into_bytes())
                }
            }
            ClientState::ScramFirst {
                password,
                bare,
                nonce,
            } => {
                let (reply, server_signature) = scram_client_final(&password, &bare, &nonce, data)?;
                self.state = ClientState::ScramFinal { server_signature };
                Ok(reply)
            }
            ClientState::ScramFinal { server_signature } => {
                let msg =
                    std::str::from_utf8(data).map_err(|_| SaslClientError::MalformedChallenge)?;
                let first = msg.split(',').next().unwrap_or("");
                if let Some(e) = first.strip_prefix("e=") {
                    return Err(SaslClientError::ServerError(
                        e.chars().filter(|c| !c.is_control()).take(64).collect(),
                    ));
                }
                let v = first
                    .strip_prefix("v=")
                    .and_then(|v| BASE64.decode(v).ok())
                    .ok_or(SaslClientError::ServerSignature)?;
                if !bool::from(v.as_slice().ct_eq(&server_signature[..])) {
                    return Err(SaslClientError::ServerSignature);
                }
                self.state = ClientState::Verified;
                Ok(Vec::new())
            }
            // PLAIN sent everything up front; a challenge now is not SASL.
            ClientState::Verified | ClientState::Failed => Err(SaslClientError::MalformedChallenge),
        }
    }

    /// The server said 235: whether we agree the exchange is complete (for
    /// SCRAM, the server proved it knows the credential).
    pub(crate) fn finish(&self) -> Result<(), SaslClientError> {
        match self.state {
            ClientState::Verified => Ok(()),
            ClientState::ScramFirst { .. } | ClientState::ScramFinal { .. } => {
                Err(SaslClientError::ServerSignature)
            }
            _ => Err(SaslClientError::MalformedChallenge),
        }
    }
}

/// Builds client-final-message from server-first (RFC 5802 section 3);
/// returns it and the ServerSignature to expect.
fn scram_client_final(
    password: &str,
    bare: &str,
    client_nonce: &str,
    server_first: &[u8],
) -> Result<(Vec<u8>, [u8; 32]), SaslClientError> {
    let msg = std::str::from_utf8(server_first).map_err(|_| SaslClientError::MalformedChallenge)?;
    let mut fields = msg.split(',');
    let (Some(r), Some(s), Some(i)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(SaslClientError::MalformedChallenge);
    };
    let nonce = r
        .strip_prefix("r=")
        .ok_or(SaslClientError::MalformedChallenge)?;
    if !nonce.starts_with(client_nonce)
        || nonce.len() == client_nonce.len()
        || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(SaslClientError::NonceMismatch);
    }
    let salt = s
        .strip_prefix("s=")
        .and_then(|s| BASE64.decode(s).ok())
        .filter(|s| !s.is_empty())
        .ok_or(SaslClientError::MalformedChallenge)?;
    let iterations: u32 = i
        .strip_prefix("i=")
        .and_then(|i| i.parse().ok())
        .ok_or(SaslClientError::MalformedChallenge)?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(SaslClientError::BadParameters);
    }
    let salted = salted_password(password.as_bytes(), &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = sha256(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    // c=biws is base64("n,,"): no channel binding, no authzid.
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{msg},{without_proof}");
    let client_signature = hmac(&stored_key, auth_message.as_bytes());
    let mut proof = [0u8; 32];
    for (p, (k, s)) in proof
        .iter_mut()
        .zip(client_key.iter().zip(client_signature.iter()))
    {
        *p = k ^ s;
    }
    let server_signature = hmac(&server_key, auth_message.as_bytes());
    let reply = format!("{without_proof},p={}", BASE64.encode(proof));
    Ok((reply.into_bytes(), server_signature))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // RFC 7677 section 3.
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> ScramCredential {
        ScramCredential::from_password("pencil", &BASE64.decode(SALT).unwrap(), 4096)
    }

    #[test]
    fn rfc7677_client_side_byte_for_byte() {
        let (mut c, first) = ClientExchange::start(
            Mechanism::ScramSha256,
            &Credentials::new("user", "pencil"),
            CLIENT_NONCE,
        );
        assert_eq!(first.unwrap(), CLIENT_FIRST.as_bytes());
        let fin = c.challenge(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
        assert!(c.finish().is_err(), "235 before the server signature");
        assert_eq!(c.challenge(SERVER_FINAL.as_bytes()).unwrap(), b"");
        c.finish().unwrap();
    }

    #[test]
    fn rfc7677_server_side_byte_for_byte() {
        let (mut s, step) = ServerExchange::start(
            Mechanism::ScramSha256,
            Some(CLIENT_FIRST.as_bytes().to_vec()),
        );
        assert_eq!(step, ServerStep::Lookup("user".into()));
        let step = s.answer_lookup(CredentialLookup::Found(rfc_credential()), SERVER_NONCE);
        assert_eq!(
            step,
            ServerStep::Challenge(SERVER_FIRST.as_bytes().to_vec())
        );
        let step = s.respond(CLIENT_FINAL.as_bytes().to_vec());
        assert_eq!(
            step,
            ServerStep::Challenge(SERVER_FINAL.as_bytes().to_vec())
        );
        assert_eq!(s.respond(Vec::new()), ServerStep::Success("user".into()));
    }

    #[test]
    fn wrong_server_signature_fails_the_client() {
        let (mut c, _) = ClientExchange::start(
            Mechanism::ScramSha256,
            &Credentials::new("user", "pencil"),
            CLIENT_NONCE,
        );
        c.challenge(SERVER_FIRST.as_bytes()).unwrap();
        let bad = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            c.challenge(bad.as_bytes()),
            Err(SaslClientError::ServerSignature)
        );
        assert!(c.finish().is_err());
    }

    #[test]
    fn client_refuses_foreign_nonce_and_weak_parameters() {
        for (server_first, err) in [
            (
                "r=XXXX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                SaslClientError::NonceMismatch,
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                SaslClientError::NonceMismatch,
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",
                SaslClientError::BadParameters,
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4000000000",
                SaslClientError::BadParameters,
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
                SaslClientError::MalformedChallenge,
            ),
        ] {
            let (mut c, _) = ClientExchange::start(
                Mechanism::ScramSha256,
                &Credentials::new("user", "pencil"),
                CLIENT_NONCE,
            );
            assert_eq!(
                c.challenge(server_first.as_bytes()),
                Err(err),
                "{server_first}"
            );
        }
    }

    #[test]
    fn wrong_proof_and_unknown_user_fail_at_the_end() {
        // Wrong password: the proof does not verify.
        let (mut c, first) = ClientExchange::start(
            Mechanism::ScramSha256,
            &Credentials::new("user", "pencil2"),
            CLIENT_NONCE,
        );
        let (mut s, _) = ServerExchange::start(Mechanism::ScramSha256, first);
        let ch = s.answer_lookup(CredentialLookup::Found(rfc_credential()), SERVER_NONCE);
        let ServerStep::Challenge(ch) = ch else {
            panic!()
        };
        let fin = c.challenge(&ch).unwrap();
        assert_eq!(
            s.respond(fin),
            ServerStep::Fail(AuthFailure::BadCredentials, Some("user".into()))
        );
        // Unknown user: server-first looks like a real one, and fails last.
        let (mut c, first) = ClientExchange::start(
            Mechanism::ScramSha256,
            &Credentials::new("ghost", "pencil"),
            CLIENT_NONCE,
        );
        let (mut s, step) = ServerExchange::start(Mechanism::ScramSha256, first);
        assert_eq!(step, ServerStep::Lookup("ghost".into()));
        let ch = s.answer_lookup(
            CredentialLookup::NoSuchUser {
                decoy_salt: vec![7; 16],
                iterations: 4096,
            },
            SERVER_NONCE,
        );
        let ServerStep::Challenge(ch) = ch else {
            panic!()
        };
        assert!(String::from_utf8(ch.clone()).unwrap().ends_with(",i=4096"));
        let fin = c.challenge(&ch).unwrap();
        assert_eq!(
            s.respond(fin),
            ServerStep::Fail(AuthFailure::BadCredentials, Some("ghost".into()))
        );
    }

    #[test]
    fn scram_client_first_grammar() {
        let ok = |m: &str| parse_client_first(m.as_bytes()).map(|f| (f.gs2_header, f.username));
        assert_eq!(ok("y,,n=u,r=abc").unwrap(), ("y,,".into(), "u".into()));
        assert_eq!(
            ok("n,a=u,n=u,r=abc").unwrap(),
            ("n,a=u,".into(), "u".into())
        );
        assert_eq!(ok("n,,n=a=2Cb=3Dc,r=abc").unwrap().1, "a,b=c");
        assert_eq!(ok("n,,n=u,r=abc,x=ext").unwrap().1, "u");
        for (bad, why) in [
            ("p=tls-unique,,n=u,r=abc", AuthFailure::BadCredentials),
            ("n,a=other,n=u,r=abc", AuthFailure::BadCredentials),
            ("n,,m=ext,n=u,r=abc", AuthFailure::Malformed),
            ("n,,n=u", AuthFailure::Malformed),
            ("n,,n=,r=abc", AuthFailure::Malformed),
            ("n,,n=a=2Xb,r=abc", AuthFailure::Malformed),
            ("n,,n=u,r=a,b", AuthFailure::Malformed),
            ("x,,n=u,r=abc", AuthFailure::Malformed),
            ("n,,n=u\r\nX: y,r=abc", AuthFailure::Malformed),
            ("", AuthFailure::Malformed),
        ] {
            assert_eq!(ok(bad).map(|_| ()), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn plain_rfc4616() {
        let cred = ScramCredential::from_password("tanstaaftanstaaf", b"salt", 4096);
        // RFC 4616 section 4's examples.
        for (msg, user, ok) in [
            (&b"\0tim\0tanstaaftanstaaf"[..], "tim", true),
            (&b"Ursel\0Kurt\0xipj3plmq"[..], "Kurt", false),
            (&b"tim\0tim\0tanstaaftanstaaf"[..], "tim", true),
            (&b"\0tim\0wrong"[..], "tim", false),
        ] {
            let (mut s, step) = ServerExchange::start(Mechanism::Plain, Some(msg.to_vec()));
            if step == ServerStep::Fail(AuthFailure::BadCredentials, Some(user.into())) {
                assert!(!ok);
                continue;
            }
            assert_eq!(step, ServerStep::Lookup(user.into()));
            let step = s.answer_lookup(CredentialLookup::Found(cred.clone()), "");
            assert_eq!(step == ServerStep::Success(user.into()), ok, "{msg:?}");
        }
        for bad in [
            &b"tim\0tanstaaf"[..],
            b"\0\0pw",
            b"\0tim\0",
            b"a\0b\0c\0d",
            b"\0t\x01\0pw",
            b"\0\xff\0pw",
        ] {
            let (_, step) = ServerExchange::start(Mechanism::Plain, Some(bad.to_vec()));
            assert!(
                matches!(step, ServerStep::Fail(AuthFailure::Malformed, _)),
                "{bad:?}"
            );
        }
        // The client's encoding: empty authzid.
        let (_, ir) = ClientExchange::start(
            Mechanism::Plain,
            &Credentials::new("tim", "tanstaaftanstaaf"),
            "",
        );
        assert_eq!(encode(&ir.unwrap()), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    }

    #[test]
    fn login_exchange() {
        let (mut s, step) = ServerExchange::start(Mechanism::Login, None);
        assert_eq!(step, ServerStep::Challenge(b"Username:".to_vec()));
        assert_eq!(encode(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(encode(b"Password:"), "UGFzc3dvcmQ6");
        assert_eq!(
            s.respond(b"user".to_vec()),
            ServerStep::Challenge(b"Password:".to_vec())
        );
        assert_eq!(
            s.respond(b"pencil".to_vec()),
            ServerStep::Lookup("user".into())
        );
        assert_eq!(
            s.answer_lookup(CredentialLookup::Found(rfc_credential()), ""),
            ServerStep::Success("user".into())
        );
        let (mut c, ir) =
            ClientExchange::start(Mechanism::Login, &Credentials::new("user", "pencil"), "");
        assert!(ir.is_none());
        assert_eq!(c.challenge(b"Username:").unwrap(), b"user");
        assert_eq!(c.challenge(b"Password:").unwrap(), b"pencil");
        c.finish().unwrap();
    }

    #[test]
    fn credentials_verify_passwords() {
        let c = rfc_credential();
        assert!(c.verify_password("pencil"));
        assert!(!c.verify_password("pencil "));
        assert!(!format!("{c:?}").contains("stored"));
        assert!(!format!("{:?}", Credentials::new("u", "sekrit")).contains("sekrit"));
    }

    /// The longest server-first (both nonces and the salt at their limits)
    /// still fits a 512-octet 334 line (RFC 5321 4.5.3.1.5).
    #[test]
    fn longest_server_first_fits_one_reply_line() {
        let cnonce = "c".repeat(MAX_NONCE);
        let first = format!("n,,n={},r={cnonce}", "u".repeat(MAX_USERNAME));
        let (mut s, _) = ServerExchange::start(Mechanism::ScramSha256, Some(first.into_bytes()));
        let credential = ScramCredential::from_password("p", &[1; MAX_SALT], 1);
        let credential = ScramCredential {
            iterations: MAX_ITERATIONS,
            ..credential
        };
        let ServerStep::Challenge(ch) =
            s.answer_lookup(CredentialLookup::Found(credential), &"s".repeat(MAX_NONCE))
        else {
            panic!()
        };
        assert!("334 ".len() + encode(&ch).len() + 2 <= 512);
        let (_, step) = ServerExchange::start(
            Mechanism::ScramSha256,
            Some(format!("n,,n=u,r={}x", cnonce).into_bytes()),
        );
        assert!(matches!(step, ServerStep::Fail(AuthFailure::Malformed, _)));
    }

    #[test]
    fn responses_and_names() {
        assert_eq!(decode_response(b"="), Some(Vec::new()));
        assert_eq!(decode_response(b"dXNlcg=="), Some(b"user".to_vec()));
        assert_eq!(decode_response(b"dXNlcg"), None);
        assert_eq!(decode_response(b"*"), None);
        assert_eq!(
            Mechanism::from_name("scram-sha-256"),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
        assert!(is_valid_nonce(SERVER_NONCE));
        assert!(!is_valid_nonce("a,b"));
        assert!(!is_valid_nonce(""));
        assert!(is_valid_nonce(&nonce_from_bytes(&[0xff; 18])));
        assert_eq!(decode_saslname("a=2Cb=3D"), Some("a,b=".into()));
        assert_eq!(encode_saslname("a,b="), "a=2Cb=3D");
    }
}
