//! The configuration file: TOML, every key optional, layered over the
//! embedded defaults (`default.toml`). Errors name the file, line and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use smtplink_engine::BareLineEndingPolicy;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A configuration file's contents. Every key is optional so a file can set
/// only what it changes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<Vec<String>>,
    pub hostname: Option<String>,
    pub maildir: Option<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    pub spool: Option<PathBuf>,
    #[serde(default)]
    pub relay: Relay,
    /// `[[route]]` tables, in order: first match wins.
    #[serde(default)]
    pub route: Vec<RouteEntry>,
    #[serde(default)]
    pub tls: Tls,
    /// `[auth]`: the users file and how AUTH failures are slowed down.
    #[serde(default)]
    pub auth: Auth,
    /// `[[listener]]` tables: listeners with their own settings, in
    /// addition to the plain `listen` list.
    #[serde(default)]
    pub listener: Vec<ListenerEntry>,
}

/// `[auth]`: SMTP AUTH (RFC 4954) for the server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub users: Option<PathBuf>,
    pub mechanisms: Option<Vec<String>>,
    pub failure_delay: Option<f64>,
    pub failure_delay_max: Option<f64>,
    pub max_failures: Option<usize>,
    pub failure_window: Option<u64>,
}

/// One `[[listener]]`: an endpoint and its own settings; unset keys take
/// the `[limits]` defaults and the automatic relay policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerEntry {
    pub url: String,
    pub relay_policy: Option<String>,
    pub require_auth: Option<bool>,
    pub auth_plaintext: Option<bool>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_peer: Option<usize>,
    pub max_commands_before_mail: Option<usize>,
    pub min_data_rate: Option<u64>,
    pub data_rate_window: Option<u64>,
}

/// A listener `serve` opens, with its resolved settings.
#[derive(Debug, Clone)]
pub struct ServeListener {
    pub url: String,
    pub settings: smtplink_driver::ListenerSettings,
}

/// The resolved `[auth]` section.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub users: Option<PathBuf>,
    pub mechanisms: Vec<smtplink_engine::Mechanism>,
    pub failure_delay: Duration,
    pub failure_delay_max: Duration,
    pub max_failures: usize,
    pub failure_window: Duration,
}

/// `[tls]`: the server's certificate chain and key, PEM files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    pub first_retry: Option<u64>,
    pub max_retry_interval: Option<u64>,
    pub give_up: Option<u64>,
    pub max_hops: Option<usize>,
    pub sessions_per_hop: Option<usize>,
    pub allow_turn: Option<bool>,
    pub connect_timeout: Option<u64>,
    pub mx_port: Option<u16>,
    pub resolver: Option<String>,
}

/// One `[[route]]`: `domain` (`example.net`, `*.example.net`, `*`) and
/// `target` (`local`, `mx`, or endpoint URLs), plus fallback endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub domain: String,
    pub target: String,
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Say TURN after sending over this route (trusted point-to-point).
    #[serde(default)]
    pub turn: bool,
    /// STARTTLS policy: none, opportunistic (default), required.
    pub tls: Option<TlsPolicyName>,
    /// Whom to trust: "system", "pem:PATH", "pin:sha256:HEX".
    pub tls_trust: Option<String>,
    /// The name the next hop's certificate must carry (default: the
    /// endpoint's host, else the route's domain).
    pub tls_name: Option<String>,
    /// AUTH (RFC 4954) user name at this route's next hops.
    pub auth_user: Option<String>,
    /// A file holding the AUTH password (one line), so that the secret is
    /// not in the config file.
    pub auth_password_file: Option<PathBuf>,
    /// The AUTH password inline (discouraged: the config file then holds
    /// a secret).
    pub auth_password: Option<String>,
    /// The link is private (a serial line between two known sites): PLAIN
    /// and LOGIN may go without TLS, and TLS is not required by default.
    #[serde(default)]
    pub auth_trusted_link: bool,
}

/// Reads a password file: its first line, without the line end. An empty
/// password is refused. Warns when the file is readable by others.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "password file is readable by group or others; chmod 600 it"
                );
            }
        }
    }
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err("the first line (the password) is empty".into());
    }
    Ok(password)
}

impl RouteEntry {
    /// The route's AUTH settings, or `None` when it has no `auth_user`.
    fn auth(&self, origin: &str) -> Result<Option<smtplink_driver::ClientAuth>, ConfigError> {
        let err = |key: &str, e: &str| {
            ConfigError(format!(
                "{origin}: [[route]] {}: key `route.{key}`: {e}",
                self.domain
            ))
        };
        let Some(user) = &self.auth_user else {
            for (set, key) in [
                (self.auth_password_file.is_some(), "auth_password_file"),
                (self.auth_password.is_some(), "auth_password"),
                (self.auth_trusted_link, "auth_trusted_link"),
            ] {
                if set {
                    return Err(err(key, "needs `auth_user` in the same [[route]]"));
                }
            }
            return Ok(None);
        };
        if user.is_empty() {
            return Err(err("auth_user", "must not be empty"));
        }
        let password = match (&self.auth_password_file, &self.auth_password) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "auth_password",
                    "set either `auth_password_file` or `auth_password`, not both",
                ))
            }
            (Some(file), None) => read_password_file(file)
                .map_err(|e| err("auth_password_file", &format!("{}: {e}", file.display())))?,
            (None, Some(p)) if !p.is_empty() => p.clone(),
            (None, Some(_)) => return Err(err("auth_password", "must not be empty")),
            (None, None) => {
                return Err(err(
                    "auth_user",
                    "needs `auth_password_file` (or `auth_password`)",
                ))
            }
        };
        Ok(Some(smtplink_driver::ClientAuth {
            credentials: smtplink_engine::Credentials::new(user.clone(), password),
            trusted_link: self.auth_trusted_link,
        }))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicyName {
    None,
    Opportunistic,
    Required,
}

impl From<TlsPolicyName> for smtplink_engine::TlsPolicy {
    fn from(p: TlsPolicyName) -> Self {
        match p {
            TlsPolicyName::None => smtplink_engine::TlsPolicy::None,
            TlsPolicyName::Opportunistic => smtplink_engine::TlsPolicy::Opportunistic,
            TlsPolicyName::Required => smtplink_engine::TlsPolicy::Required,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub message_size: Option<u64>,
    pub recipients: Option<usize>,
    pub errors: Option<usize>,
    pub sessions: Option<usize>,
    pub sessions_per_peer: Option<usize>,
    pub command_line: Option<usize>,
    pub text_line: Option<usize>,
    pub bare_line_endings: Option<BareLineEndings>,
    pub commands_before_mail: Option<usize>,
    pub min_data_rate: Option<u64>,
    pub data_rate_window: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    Normalize,
    Reject,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub command: Option<u64>,
    pub data: Option<u64>,
    pub shutdown_grace: Option<u64>,
}

/// The resolved settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: Vec<String>,
    pub hostname: String,
    pub maildir: PathBuf,
    pub message_size: u64,
    pub recipients: usize,
    pub errors: usize,
    pub sessions: usize,
    pub sessions_per_peer: usize,
    pub command_line: usize,
    pub text_line: usize,
    pub bare_line_endings: BareLineEndingPolicy,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub shutdown_grace: Duration,
    pub spool: PathBuf,
    pub routes: Vec<smtplink_relay::Route>,
    pub retry: smtplink_relay::RetryPolicy,
    pub max_hops: usize,
    pub sessions_per_hop: usize,
    pub allow_turn: bool,
    pub connect_timeout: Duration,
    pub mx_port: u16,
    pub resolver: smtplink_relay::mx::ResolverChoice,
    /// `[tls] cert` and `key`: both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `[[listener]]` tables, resolved (the `listen` list is separate).
    pub listeners: Vec<ServeListener>,
    /// `[limits]` defaults for every listener.
    pub commands_before_mail: usize,
    pub min_data_rate: u64,
    pub data_rate_window: Duration,
    /// `[auth]`.
    pub auth: AuthConfig,
}

/// A configuration error, already phrased for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses TOML text, naming `origin`, the line and the key on error.
pub fn parse(origin: &str, text: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // serde speaks Rust; say what a config author writes instead.
        let message = e
            .message()
            .trim()
            .replace('\n', "; ")
            .replace("expected usize", "expected a whole number")
            .replace("expected u64", "expected a whole number")
            .replace("expected a sequence", "expected a list like [\"...\"]");
        let Some(span) = e.span() else {
            return ConfigError(format!("{origin}: {message}"));
        };
        let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
        let lines: Vec<&str> = text.lines().collect();
        let line = lines.get(line_no - 1).copied().unwrap_or("");
        let key = line.split('=').next().unwrap_or("").trim();
        if key.is_empty() || key.starts_with('[') || !line.contains('=') {
            return ConfigError(format!("{origin}:{line_no}: {message}"));
        }
        // Name the key with its table, as a user would write it elsewhere.
        let section = lines[..line_no - 1]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
        let key = match section {
            Some(section) => format!("{section}.{key}"),
            None => key.to_string(),
        };
        ConfigError(format!("{origin}:{line_no}: key `{key}`: {message}"))
    })
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    parse(&path.display().to_string(), &text)
}

impl ServeConfig {
    /// The embedded defaults overlaid with `file` (read from `origin`, which
    /// errors name).
    pub fn resolve(origin: &str, file: Option<ConfigFile>) -> Result<Self, ConfigError> {
        let defaults = parse("(built-in default config)", DEFAULT_CONFIG)?;
        let file = file.unwrap_or_default();
        let missing = |key: &str| ConfigError(format!("built-in config lacks `{key}`"));
        macro_rules! pick {
            ($($field:ident).+) => {
                file.$($field).+.clone().or(defaults.$($field).+.clone())
                    .ok_or_else(|| missing(stringify!($($field).+)))?
            };
        }
        // A file with [[listener]] tables and no `listen` list listens on
        // those only, not on the built-in loopback port too.
        let listen: Vec<String> = match (&file.listen, file.listener.is_empty()) {
            (None, false) => Vec::new(),
            _ => pick!(listen),
        };
        if listen.is_empty() && file.listener.is_empty() {
            return Err(ConfigError(
                "`listen` must name at least one endpoint".into(),
            ));
        }
        let mut hostname: String = pick!(hostname);
        if hostname.is_empty() {
            hostname = gethostname::gethostname().to_string_lossy().into_owned();
            // A machine name that is no domain (e.g. with '_') must not stop
            // the default config from starting.
            if smtplink_engine::Domain::parse(&hostname, false).is_err() {
                hostname = "localhost".into();
            }
        }
        let config = Self {
            listen,
            hostname,
            maildir: pick!(maildir),
            message_size: pick!(limits.message_size),
            recipients: pick!(limits.recipients),
            errors: pick!(limits.errors),
            sessions: pick!(limits.sessions),
            sessions_per_peer: pick!(limits.sessions_per_peer),
            command_line: pick!(limits.command_line),
            text_line: pick!(limits.text_line),
            bare_line_endings: match pick!(limits.bare_line_endings) {
                BareLineEndings::Normalize => BareLineEndingPolicy::Normalize,
                BareLineEndings::Reject => BareLineEndingPolicy::Reject,
            },
            command_timeout: Duration::from_secs(pick!(timeouts.command)),
            data_timeout: Duration::from_secs(pick!(timeouts.data)),
            shutdown_grace: Duration::from_secs(pick!(timeouts.shutdown_grace)),
            spool: pick!(spool),
            routes: file
                .route
                .iter()
                .map(|r| {
                    let mut target = r.target.clone();
                    for f in &r.fallback {
                        target.push(',');
                        target.push_str(f);
                    }
                    if r.turn {
                        target.push_str(",turn");
                    }
                    let mut route = smtplink_relay::Route::parse(&format!("{}={target}", r.domain))
                        .map_err(|e| {
                            ConfigError(format!("{origin}: [[route]] {}: {e}", r.domain))
                        })?;
                    route.auth = r.auth(origin)?;
                    match (r.tls, &route.auth) {
                        (Some(policy), _) => route.tls.policy = policy.into(),
                        // Credentials travel only inside TLS unless the
                        // link itself is trusted.
                        (None, Some(auth)) if !auth.trusted_link => {
                            route.tls.policy = smtplink_engine::TlsPolicy::Required
                        }
                        (None, _) => {}
                    }
                    if let Some(trust) = &r.tls_trust {
                        trust.parse::<smtplink_tls::Trust>().map_err(|e| {
                            ConfigError(format!(
                                "{origin}: [[route]] {}: key `route.tls_trust`: {e}",
                                r.domain
                            ))
                        })?;
                        route.tls.trust = Some(trust.clone());
                    }
                    route.tls.name = r.tls_name.clone();
                    Ok(route)
                })
                .collect::<Result<_, _>>()?,
            retry: smtplink_relay::RetryPolicy {
                first_retry: Duration::from_secs(pick!(relay.first_retry)),
                max_interval: Duration::from_secs(pick!(relay.max_retry_interval)),
                give_up: Duration::from_secs(pick!(relay.give_up)),
            },
            max_hops: pick!(relay.max_hops),
            sessions_per_hop: pick!(relay.sessions_per_hop),
            allow_turn: pick!(relay.allow_turn),
            connect_timeout: Duration::from_secs(pick!(relay.connect_timeout)),
            mx_port: pick!(relay.mx_port),
            resolver: pick!(relay.resolver)
                .parse()
                .map_err(|e| ConfigError(format!("{origin}: `relay.resolver`: {e}")))?,
            tls_cert: file.tls.cert.clone(),
            tls_key: file.tls.key.clone(),
            listeners: Vec::new(),
            commands_before_mail: pick!(limits.commands_before_mail),
            min_data_rate: pick!(limits.min_data_rate),
            data_rate_window: Duration::from_secs(pick!(limits.data_rate_window)),
            auth: AuthConfig {
                users: file.auth.users.clone(),
                mechanisms: pick!(auth.mechanisms)
                    .iter()
                    .map(|m| {
                        smtplink_engine::Mechanism::from_name(m).ok_or_else(|| {
                            ConfigError(format!(
                                "{origin}: `auth.mechanisms`: unknown mechanism {m:?} \
                                 (SCRAM-SHA-256, PLAIN, LOGIN)"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                failure_delay: secs_f64(origin, "auth.failure_delay", pick!(auth.failure_delay))?,
                failure_delay_max: secs_f64(
                    origin,
                    "auth.failure_delay_max",
                    pick!(auth.failure_delay_max),
                )?,
                max_failures: pick!(auth.max_failures),
                failure_window: Duration::from_secs(pick!(auth.failure_window)),
            },
        };
        let mut config = config;
        for entry in &file.listener {
            let mut settings = config.listener_defaults();
            if let Some(p) = &entry.relay_policy {
                settings.relay_policy = Some(parse_relay_policy(p).map_err(|e| {
                    ConfigError(format!("{origin}: [[listener]] {}: {e}", entry.url))
                })?);
            }
            macro_rules! set {
                ($key:ident => $field:ident) => {
                    if let Some(v) = entry.$key {
                        settings.$field = v;
                    }
                };
            }
            set!(require_auth => require_auth);
            set!(auth_plaintext => auth_plaintext);
            set!(max_sessions => max_sessions);
            set!(max_sessions_per_peer => max_sessions_per_peer);
            set!(max_commands_before_mail => max_commands_before_mail);
            set!(min_data_rate => min_data_rate);
            if let Some(w) = entry.data_rate_window {
                settings.data_rate_window = Duration::from_secs(w);
            }
            config.listeners.push(ServeListener {
                url: entry.url.clone(),
                settings,
            });
        }
        if config.mx_port == 0 {
            return Err(ConfigError(format!(
                "{origin}: `relay.mx_port` must not be 0"
            )));
        }
        config
            .check()
            .map_err(|e| ConfigError(format!("{origin}: {}", e.0)))?;
        Ok(config)
    }

    /// The settings of a listener from the `listen` list (or `--listen`):
    /// the `[limits]` values, relay policy chosen from its endpoint.
    pub fn listener_defaults(&self) -> smtplink_driver::ListenerSettings {
        smtplink_driver::ListenerSettings {
            relay_policy: None,
            require_auth: false,
            auth_plaintext: false,
            max_sessions: self.sessions,
            max_sessions_per_peer: self.sessions_per_peer,
            max_commands_before_mail: self.commands_before_mail,
            min_data_rate: self.min_data_rate,
            data_rate_window: self.data_rate_window,
        }
    }

    /// A listener that wants AUTH needs users: call once the command line
    /// had its say (`--users`).
    pub fn check_auth(&self) -> Result<(), ConfigError> {
        for l in &self.listeners {
            let wants_users = l.settings.require_auth
                || l.settings.relay_policy == Some(smtplink_driver::RelayPolicy::Authenticated);
            if wants_users && self.auth.users.is_none() {
                return Err(ConfigError(format!(
                    "listener {}: require_auth and relay policy \"authenticated\" \
                     need a users file (`auth.users` or --users)",
                    l.url
                )));
            }
        }
        Ok(())
    }

    /// Checks values against the RFC minimums and common sense; call again
    /// after command-line flags changed anything.
    pub fn check(&self) -> Result<(), ConfigError> {
        for l in &self.listeners {
            if l.settings.max_sessions == 0 || l.settings.max_sessions_per_peer == 0 {
                return Err(ConfigError(format!(
                    "[[listener]] {}: `max_sessions` and `max_sessions_per_peer` must be at least one",
                    l.url
                )));
            }
        }
        // The RFC minimums: a server that accepts less breaks conforming clients.
        let rules: [(&str, u64, u64, &str); 10] = [
            ("limits.sessions", self.sessions as u64, 1, "at least one"),
            (
                "relay.sessions_per_hop",
                self.sessions_per_hop as u64,
                1,
                "at least one",
            ),
            (
                "limits.sessions_per_peer",
                self.sessions_per_peer as u64,
                1,
                "at least one",
            ),
            (
                "limits.command_line",
                self.command_line as u64,
                512,
                "RFC 5321 4.5.3.1.4",
            ),
            (
                "limits.text_line",
                self.text_line as u64,
                1000,
                "RFC 5321 4.5.3.1.6",
            ),
            (
                "limits.recipients",
                self.recipients as u64,
                1,
                "at least one",
            ),
            ("limits.errors", self.errors as u64, 1, "at least one"),
            // SIZE 0 would advertise "no limit" (RFC 1870) and refuse everything.
            (
                "limits.message_size",
                self.message_size,
                1,
                "SIZE 0 means no limit",
            ),
            (
                "timeouts.command",
                self.command_timeout.as_secs(),
                1,
                "seconds; RFC 5321 4.5.3.2.7 suggests 300",
            ),
            (
                "timeouts.data",
                self.data_timeout.as_secs(),
                1,
                "seconds; RFC 5321 4.5.3.2.7 suggests 300",
            ),
        ];
        for (key, value, min, why) in rules {
            if value < min {
                return Err(ConfigError(format!(
                    "`{key}` = {value} is below the minimum {min} ({why})"
                )));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError(
                    "`tls.cert` is set but `tls.key` is not (--tls-key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "`tls.key` is set but `tls.cert` is not (--tls-cert)".into(),
                ))
            }
            _ => {}
        }
        if smtplink_engine::Domain::parse(&self.hostname, false).is_err() {
            return Err(ConfigError(format!(
                "`hostname` = {:?} is not a valid domain name; set one with --hostname",
                self.hostname
            )));
        }
        Ok(())
    }
}

/// Parses a relay policy name for a config key or flag.
pub fn parse_relay_policy(name: &str) -> Result<smtplink_driver::RelayPolicy, String> {
    smtplink_driver::RelayPolicy::from_name(name).ok_or_else(|| {
        format!("unknown relay_policy {name:?} (local-only, authenticated, trusted)")
    })
}

fn secs_f64(origin: &str, key: &str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        ConfigError(format!(
            "{origin}: `{key}` = {value} is not a number of seconds"
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn embedded_default_parses_and_resolves() {
        let c = ServeConfig::resolve("t", None).unwrap();
        assert_eq!(c.listen, ["tcp://127.0.0.1:2525"]);
        assert_eq!(c.maildir, PathBuf::from("./maildir"));
        assert_eq!(c.message_size, 25 * 1024 * 1024);
        assert!(!c.hostname.is_empty());
    }

    #[test]
    fn file_overrides_defaults() {
        let f = parse(
            "t.toml",
            "hostname = \"mx.example\"\n[limits]\nrecipients = 5\n",
        )
        .unwrap();
        let c = ServeConfig::resolve("t.toml", Some(f)).unwrap();
        assert_eq!(c.hostname, "mx.example");
        assert_eq!(c.recipients, 5);
        assert_eq!(c.errors, 10);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse(
            "site.toml",
            "hostname = \"x\"\n[limits]\nrecipients = \"many\"\n",
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("site.toml:3: key `limits.recipients`:"),
            "{e}"
        );
        let e = parse("site.toml", "\n\nlisten_on = []\n").unwrap_err();
        assert!(e.0.starts_with("site.toml:3: key `listen_on`:"), "{e}");
        assert!(e.0.contains("unknown field"), "{e}");
        let e = parse("site.toml", "[limits]\nbare_line_endings = \"sometimes\"\n").unwrap_err();
        assert!(
            e.0.starts_with("site.toml:2: key `limits.bare_line_endings`:"),
            "{e}"
        );
    }

    #[test]
    fn listeners_and_auth() {
        use smtplink_driver::RelayPolicy;
        let c = ServeConfig::resolve("t", None).unwrap();
        assert!(c.listeners.is_empty());
        assert_eq!(c.commands_before_mail, 50);
        assert_eq!(c.min_data_rate, 100);
        assert_eq!(c.auth.mechanisms.len(), 3);
        assert_eq!(c.auth.failure_delay, Duration::from_secs(1));
        let f = parse(
            "t.toml",
            "[auth]\nusers = \"u\"\n[[listener]]\nurl = \"tcp://0.0.0.0:587\"\n\
             relay_policy = \"authenticated\"\nrequire_auth = true\nmin_data_rate = 5\n",
        )
        .unwrap();
        let c = ServeConfig::resolve("t.toml", Some(f)).unwrap();
        // [[listener]] without `listen`: no built-in loopback listener.
        assert!(c.listen.is_empty());
        let l = &c.listeners[0].settings;
        assert_eq!(l.relay_policy, Some(RelayPolicy::Authenticated));
        assert!(l.require_auth);
        assert_eq!((l.min_data_rate, l.max_commands_before_mail), (5, 50));
        for bad in [
            "[[listener]]\nurl = \"tcp://0.0.0.0:25\"\nrelay_policy = \"open\"\n",
            "[auth]\nmechanisms = [\"CRAM-MD5\"]\n",
        ] {
            let f = parse("t.toml", bad).unwrap();
            assert!(ServeConfig::resolve("t.toml", Some(f)).is_err(), "{bad}");
        }
    }

    #[test]
    fn mx_port_and_resolver() {
        use smtplink_relay::mx::ResolverChoice;
        let c = ServeConfig::resolve("t", None).unwrap();
        assert_eq!((c.mx_port, c.resolver), (25, ResolverChoice::System));
        let f = parse(
            "t.toml",
            "[relay]\nmx_port = 2525\nresolver = \"127.0.0.1:5353\"\n",
        )
        .unwrap();
        let c = ServeConfig::resolve("t.toml", Some(f)).unwrap();
        assert_eq!(c.mx_port, 2525);
        assert_eq!(
            c.resolver,
            ResolverChoice::Nameserver("127.0.0.1:5353".parse().unwrap())
        );
        for bad in [
            "[relay]\nresolver = \"dns.example\"\n",
            "[relay]\nmx_port = 0\n",
        ] {
            let f = parse("t.toml", bad).unwrap();
            let e = ServeConfig::resolve("t.toml", Some(f)).unwrap_err();
            assert!(e.0.starts_with("t.toml: `relay."), "{e}");
        }
    }

    #[test]
    fn limits_below_rfc_minimum_are_refused() {
        let f = parse("t.toml", "[limits]\ncommand_line = 100\n").unwrap();
        let e = ServeConfig::resolve("t.toml", Some(f)).unwrap_err();
        assert!(
            e.0.starts_with("t.toml: `limits.command_line` = 100"),
            "{e}"
        );
        for bad in [
            "[timeouts]\ncommand = 0\n",
            "[limits]\nmessage_size = 0\n",
            "hostname = \"bad host\"\n",
        ] {
            let f = parse("t.toml", bad).unwrap();
            assert!(ServeConfig::resolve("t.toml", Some(f)).is_err(), "{bad}");
        }
    }
}
