//! `smtplink`: serve SMTP into Maildirs, or send a message, over any link.

mod bench_link;
mod config;
mod linksim;
mod passwd;
mod queue;
mod users;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use smtplink_driver::{ClientSettings, Server, ServerSettings, SmtpClient};
use smtplink_engine::{ClientConfig, Envelope, RecipientOutcome, ServerConfig};
use smtplink_maildir::MaildirStore;
use smtplink_transport::{Endpoint, Registry, TransportError};
use tracing::{info, warn};

use smtplink_relay::spool::Spool;
use smtplink_relay::{RelayBackend, RelayContext, RoutingTable, Worker, WorkerSettings};

use crate::config::{ServeConfig, DEFAULT_CONFIG};

/// sysexits.h: temporary failure, try again later.
pub(crate) const EX_TEMPFAIL: u8 = 75;
/// sysexits.h: configuration error.
pub(crate) const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "smtplink",
    version,
    about = "SMTP over any reliable byte stream"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run an SMTP server that stores mail in Maildirs.
    ///
    /// With no flags and no --config: listens on tcp://127.0.0.1:2525 and
    /// stores into ./maildir. Logs go to stderr (RUST_LOG=debug for more).
    /// Ctrl-C stops accepting and lets sessions finish their message; a
    /// second Ctrl-C quits at once. Exit status 78 is a configuration error.
    Serve {
        /// Endpoint to listen on (repeatable) [default: tcp://127.0.0.1:2525]
        #[arg(long, value_name = "URL")]
        listen: Vec<String>,
        /// Root of the Maildirs, one per recipient [default: ./maildir]
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
        /// Our host name in the greeting and Received: headers [default: the
        /// machine's host name]
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
        /// TOML config file; flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Route mail for DOMAIN (example.net, *.example.net or *) to
        /// TARGET: local, mx, or endpoint URLs separated by commas.
        /// Repeatable, first match wins; comes before routes from --config.
        #[arg(long, value_name = "DOMAIN=TARGET")]
        route: Vec<String>,
        /// The relay's queue directory [default: ./spool]
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// Accept TURN from peers and send them the mail routed to `hold`.
        /// Only on trusted point-to-point links (see `default-config`).
        #[arg(long)]
        allow_turn: bool,
        /// Certificate chain (PEM) for STARTTLS and tls+ listeners; needs
        /// --tls-key. Overrides `[tls] cert`. SIGHUP reloads it.
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM). Overrides `[tls] key`.
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Users file for AUTH (`smtplink passwd` writes it); overrides
        /// `[auth] users`. SIGHUP reloads it.
        #[arg(long, value_name = "FILE")]
        users: Option<PathBuf>,
        /// Relay policy of the --listen listeners: local-only,
        /// authenticated or trusted [default: trusted on loopback and
        /// mem://, local-only elsewhere]
        #[arg(long, value_name = "POLICY")]
        relay_policy: Option<String>,
        /// The --listen listeners refuse MAIL before AUTH (530 5.7.0).
        #[arg(long)]
        require_auth: bool,
    },
    /// Look at and act on the relay's queue (works while `serve` runs).
    Queue {
        /// The queue directory [default: ./spool, or `spool` of --config]
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// Config file (for `flush`: its routes and relay settings).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Routes for `flush`, as for `serve`.
        #[arg(long, value_name = "DOMAIN=TARGET")]
        route: Vec<String>,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Send one message (from FILE or stdin) and report per recipient.
    ///
    /// Exit status: 0 when every recipient accepted the message, 75
    /// (EX_TEMPFAIL) when some failed only temporarily (or the server could
    /// not be reached), 1 when some were refused or the message cannot be
    /// sent as it is.
    Send {
        /// Server endpoint, e.g. tcp://127.0.0.1:2525.
        #[arg(long, value_name = "URL")]
        server: String,
        /// Envelope sender; an empty string is the null sender <>.
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// Envelope recipient (repeatable).
        #[arg(long, value_name = "ADDR", required = true)]
        to: Vec<String>,
        /// Name to give in EHLO.
        #[arg(long, value_name = "NAME")]
        helo: Option<String>,
        /// Message file (RFC 5322); stdin when absent. LF line endings are
        /// turned into CRLF; a bare CR is refused.
        file: Option<PathBuf>,
        /// STARTTLS: none, opportunistic (when offered) or required (a
        /// server without it gets nothing; exit 75). A tls+ server URL
        /// uses implicit TLS instead. [default: opportunistic; required
        /// with --auth-user, unless --auth-trusted-link]
        #[arg(long, value_name = "POLICY")]
        tls: Option<String>,
        /// Whom to trust: system, pem:FILE, pin:sha256:HEX or any
        /// [default: any for opportunistic, system otherwise]
        #[arg(long, value_name = "TRUST")]
        tls_trust: Option<String>,
        /// The name the server's certificate must carry [default: the
        /// server URL's host, else localhost]
        #[arg(long, value_name = "NAME")]
        tls_name: Option<String>,
        /// Authenticate (AUTH, RFC 4954) as USER: SCRAM-SHA-256 when
        /// offered, else PLAIN or LOGIN inside TLS. The password comes from
        /// --auth-password-file, else the SMTPLINK_PASSWORD environment
        /// variable. A refused login (535) exits 1, a temporary one 75.
        #[arg(long, value_name = "USER")]
        auth_user: Option<String>,
        /// A file whose first line is the AUTH password.
        #[arg(long, value_name = "FILE", requires = "auth_user")]
        auth_password_file: Option<PathBuf>,
        /// The link is private (e.g. a serial line to a known site): allow
        /// PLAIN/LOGIN without TLS and do not require TLS by default.
        #[arg(long, requires = "auth_user")]
        auth_trusted_link: bool,
    },
    /// Write a self-signed certificate and key (PEM) for NAME (and more
    /// names), for tests and small sites; prints its pin:sha256: trust.
    GenCert {
        /// DNS names or IP addresses the certificate is for; the first is
        /// its subject.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Where to write the certificate.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Where to write the private key (mode 0600).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Print the built-in configuration (a starting point for --config).
    DefaultConfig,
    /// Measure SMTP goodput over a simulated line (one process, virtual
    /// clock): prints a table whose last line is `goodput F`, the fraction
    /// of the line rate delivered as intact message bytes.
    ///
    /// Example: smtplink bench-link --baud 9600 --ber 1e-5 --messages 100
    /// --size 4096. Exit status 1 when a message was lost or corrupted.
    BenchLink(bench_link::BenchArgs),
    /// Put a simulated slow, noisy line between two endpoints (a proxy).
    ///
    /// Side A waits for a party (tcp:// is listened on), side B is where the
    /// bytes go (tcp:// is connected to); serial:// devices are opened raw on
    /// either side. Example: smtplink linksim --a tcp://127.0.0.1:2526
    /// --b tcp://127.0.0.1:2525 --baud 9600 --ber 1e-5 --seed 7
    Linksim {
        /// Side A: tcp://HOST:PORT to listen on, or serial:///dev/X.
        #[arg(long, value_name = "URL")]
        a: String,
        /// Side B: tcp://HOST:PORT to connect to, or serial:///dev/X.
        #[arg(long, value_name = "URL")]
        b: String,
        #[command(flatten)]
        impairments: linksim::Impairments,
        /// Serve one party, print the counters and exit.
        #[arg(long)]
        once: bool,
    },
    /// Add or replace a user in an AUTH users file.
    ///
    /// Reads the password from stdin (one line); only its SCRAM-SHA-256
    /// derivation is stored, in a file of mode 0600 rewritten atomically.
    /// Without --allow, a replaced user keeps the senders it had.
    Passwd {
        /// The users file (created if missing).
        #[arg(long, value_name = "FILE")]
        users: PathBuf,
        /// The user name that AUTH will give.
        user: String,
        /// A sender the user may give in MAIL FROM: local@domain, *@domain
        /// or * (repeatable). Without any, a user whose name is an address
        /// may send as that address only.
        #[arg(long, value_name = "ADDR")]
        allow: Vec<String>,
        /// PBKDF2 iterations (at least 4096, RFC 7677).
        #[arg(long, value_name = "N", default_value_t = smtplink_auth::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Every queued message: id, age, size, sender, recipients with their
    /// state, last reply and next attempt.
    List,
    /// One message's envelope record in full.
    Show {
        /// Message id (from `list`).
        id: String,
    },
    /// Remove a message from the queue without delivering it.
    Delete {
        /// Message id (from `list`).
        id: String,
    },
    /// Try every queued message now (or only those for one hop).
    Flush {
        /// Only recipients routed to this target, e.g. tcp://gw:25.
        #[arg(long)]
        hop: Option<String>,
    },
}

pub(crate) fn registry() -> Registry {
    registry_with_x25().0
}

/// The registry, and its X.25 adapter (whose lines' figures `serve`
/// publishes for `queue list`).
pub(crate) fn registry_with_x25() -> (Registry, Arc<smtplink_x25::X25Transport>) {
    let tcp = Arc::new(smtplink_tcp::TcpTransport::new());
    let mem = Arc::new(smtplink_mem::MemTransport::new());
    // The X.25 adapter opens its lines raw: no serial line handshake (its
    // own link layer does that job), one line shared by every circuit.
    let x25 = Arc::new(smtplink_x25::X25Transport::new(
        Registry::new()
            .with(
                "serial",
                Arc::new(smtplink_serial::RawSerialTransport::new()),
            )
            .with("mem", mem.clone()),
    ));
    let registry = Registry::new()
        // `smtp://` is what curl users type first; it is plain TCP.
        .with("smtp", tcp.clone())
        .with("tcp", tcp)
        .with("mem", mem)
        .with("x25+serial", x25.clone())
        .with("x25+tcp", x25.clone())
        .with("x25+mem", x25.clone())
        .with("serial", Arc::new(smtplink_serial::SerialTransport::new()))
        .with("stdio", Arc::new(smtplink_stdio::StdioTransport::new()))
        .with("exec", Arc::new(smtplink_stdio::ExecTransport::new()));
    (registry, x25)
}

/// The file in the spool where `serve` keeps its X.25 lines' figures for
/// `smtplink queue list` (another process).
pub(crate) const X25_FIGURES_FILE: &str = "x25-lines.txt";

/// Every 10 s, writes one line per open X.25 line with its figures into
/// `spool/x25-lines.txt` (tmp + rename, so a reader never sees half).
async fn publish_x25_figures(x25: Arc<smtplink_x25::X25Transport>, spool: PathBuf) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let lines = x25.lines();
        if lines.is_empty() {
            continue;
        }
        let mut text = format!(
            "written {} (figures since each line started)\n",
            smtplink_maildir::rfc5322_date(std::time::SystemTime::now())
        );
        for line in lines {
            let state = if line.is_ended() { "ended" } else { "up" };
            text.push_str(&format!("{}  [{state}]  {}\n", line.label(), line.stats()));
        }
        let tmp = spool.join(format!(".{X25_FIGURES_FILE}.tmp"));
        let target = spool.join(X25_FIGURES_FILE);
        let written = tokio::fs::write(&tmp, text).await;
        if let Err(e) = written.and(tokio::fs::rename(&tmp, &target).await) {
            tracing::debug!(error = %e, "cannot publish the x25 line figures");
        }
    }
}

/// Parses an endpoint URL; a bare `host:port` gets a hint.
fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    Endpoint::parse(url).map_err(|e| {
        if !url.contains("://") && url.contains(':') {
            format!("{e} (did you mean tcp://{url}?)")
        } else {
            e.to_string()
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark's table is its output; session logs would drown it.
    let default_level = match cli.command {
        Commands::BenchLink(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (e.g. `serve 2>&1 | head`) must not panic the
        // logger, or a signal handler that logs would never stop the server.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtplink: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Commands::Serve {
            listen,
            maildir,
            hostname,
            config,
            route,
            spool,
            allow_turn,
            tls_cert,
            tls_key,
            users,
            relay_policy,
            require_auth,
        } => runtime.block_on(serve(
            ServeArgs {
                users,
                relay_policy,
                require_auth,
                listen,
                maildir,
                hostname,
                routes: route,
                spool,
                allow_turn,
                tls_cert,
                tls_key,
            },
            config,
        )),
        Commands::Queue {
            spool,
            config,
            route,
            action,
        } => runtime.block_on(queue::run(spool, config, route, action)),
        Commands::Send {
            server,
            from,
            to,
            helo,
            file,
            tls,
            tls_trust,
            tls_name,
            auth_user,
            auth_password_file,
            auth_trusted_link,
        } => {
            let auth = match send_auth(auth_user, auth_password_file, auth_trusted_link) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("smtplink: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Credentials go only inside TLS unless the link is trusted.
            let default_policy = match &auth {
                Some(a) if !a.trusted_link => "required",
                _ => "opportunistic",
            };
            runtime.block_on(send(
                server,
                from,
                to,
                helo,
                file,
                SendTls {
                    policy: tls.unwrap_or_else(|| default_policy.into()),
                    trust: tls_trust,
                    name: tls_name,
                },
                auth,
            ))
        }
        Commands::GenCert { names, cert, key } => {
            match smtplink_tls::write_self_signed(&names, &cert, &key) {
                Ok(pin) => {
                    println!("{pin}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smtplink: gen-cert: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Commands::BenchLink(args) => bench_link::run(args),
        Commands::Linksim {
            a,
            b,
            impairments,
            once,
        } => runtime.block_on(linksim::run(a, b, impairments, once)),
        Commands::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Commands::Passwd {
            users,
            user,
            allow,
            iterations,
        } => passwd::run(&users, &user, &allow, iterations),
    }
}

/// The embedded defaults, overlaid with `--config`, overlaid with the
/// command line's routes and spool.
pub(crate) fn load_config(
    config_path: Option<&std::path::Path>,
    routes: &[String],
    spool: Option<PathBuf>,
) -> Result<ServeConfig, String> {
    let file = config_path
        .map(config::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    let origin = config_path.map_or_else(
        || "built-in config".to_string(),
        |p| p.display().to_string(),
    );
    let mut cfg = ServeConfig::resolve(&origin, file).map_err(|e| e.to_string())?;
    let mut cli_routes = Vec::new();
    for r in routes {
        cli_routes.push(smtplink_relay::Route::parse(r).map_err(|e| format!("--route {r}: {e}"))?);
    }
    // Command-line routes come first: they are the more specific intent.
    cli_routes.append(&mut cfg.routes);
    cfg.routes = cli_routes;
    if let Some(s) = spool {
        cfg.spool = s;
    }
    Ok(cfg)
}

/// `serve`'s command-line settings (they override the config file).
struct ServeArgs {
    listen: Vec<String>,
    maildir: Option<PathBuf>,
    hostname: Option<String>,
    routes: Vec<String>,
    spool: Option<PathBuf>,
    allow_turn: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    users: Option<PathBuf>,
    relay_policy: Option<String>,
    require_auth: bool,
}

async fn serve(args: ServeArgs, config_path: Option<PathBuf>) -> ExitCode {
    let ServeArgs {
        listen,
        maildir,
        hostname,
        routes,
        spool,
        allow_turn,
        tls_cert,
        tls_key,
        users,
        relay_policy,
        require_auth,
    } = args;
    // Before anything can say "listening": a Ctrl-C from then on drains.
    let mut signals = StopSignals::register();
    let mut cfg = match load_config(config_path.as_deref(), &routes, spool) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtplink: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let cli_listeners = !listen.is_empty();
    if cli_listeners {
        // --listen replaces every listener of the file.
        if !cfg.listeners.is_empty() {
            warn!(
                dropped = cfg.listeners.len(),
                "--listen replaces the [[listener]] tables of the config file"
            );
        }
        cfg.listen = listen;
        cfg.listeners.clear();
    } else if relay_policy.is_some() || require_auth {
        eprintln!("smtplink: --relay-policy and --require-auth apply to --listen listeners; give --listen");
        return ExitCode::from(EX_CONFIG);
    }
    if users.is_some() {
        cfg.auth.users = users;
    }
    let relay_policy = match relay_policy.as_deref().map(config::parse_relay_policy) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("smtplink: --relay-policy: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // The plain `listen` list becomes listeners with the [limits] defaults.
    let plain: Vec<config::ServeListener> = cfg
        .listen
        .iter()
        .map(|url| {
            let mut settings = cfg.listener_defaults();
            settings.relay_policy = relay_policy;
            settings.require_auth = require_auth;
            config::ServeListener {
                url: url.clone(),
                settings,
            }
        })
        .collect();
    cfg.listeners.splice(0..0, plain);
    if let Some(m) = maildir {
        cfg.maildir = m;
    }
    if let Some(h) = hostname {
        cfg.hostname = h;
    }
    cfg.allow_turn |= allow_turn;
    if tls_cert.is_some() {
        cfg.tls_cert = tls_cert;
    }
    if tls_key.is_some() {
        cfg.tls_key = tls_key;
    }
    if let Err(e) = cfg.check().and_then(|()| cfg.check_auth()) {
        eprintln!("smtplink: {e}");
        return ExitCode::from(EX_CONFIG);
    }
    let server_tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => match smtplink_tls::ServerTls::load(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("smtplink: tls: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
        _ => None,
    };
    // Fail now, not at the first message, when the Maildir root is unusable.
    if let Err(e) = std::fs::create_dir_all(&cfg.maildir) {
        eprintln!("smtplink: maildir {}: {e}", cfg.maildir.display());
        return ExitCode::from(EX_CONFIG);
    }
    let user_store = match &cfg.auth.users {
        None => None,
        Some(path) => match users::UsersStore::load(path) {
            Ok(store) => {
                info!(users = %store.path().display(), "AUTH users loaded");
                Some(Arc::new(store))
            }
            Err(e) => {
                eprintln!("smtplink: users: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    let (registry, x25) = registry_with_x25();
    let mut listeners = Vec::new();
    for listener in &cfg.listeners {
        let url = &listener.url;
        let endpoint = match parse_endpoint(url) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("smtplink: listen: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        };
        match smtplink_tls::listen(&registry, &endpoint, server_tls.clone()).await {
            Ok(l) => {
                let policy = listener.settings.relay_policy.unwrap_or_else(|| {
                    smtplink_driver::RelayPolicy::default_for(&l.local_endpoint())
                });
                info!(
                    endpoint = %l.local_endpoint(),
                    maildir = %cfg.maildir.display(),
                    starttls = server_tls.is_some(),
                    relay_policy = %policy,
                    require_auth = listener.settings.require_auth,
                    "listening"
                );
                let mut settings = listener.settings.clone();
                settings.relay_policy = Some(policy);
                listeners.push((l, settings));
            }
            Err(e) => {
                eprintln!("smtplink: {e}");
                let config_error = matches!(
                    e,
                    TransportError::UnknownScheme { .. } | TransportError::InvalidEndpoint { .. }
                );
                return ExitCode::from(if config_error { EX_CONFIG } else { 1 });
            }
        }
    }
    let (ctx, spool) = match relay_context(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtplink: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let settings = ServerSettings {
        engine: ServerConfig {
            hostname: cfg.hostname.clone(),
            max_command_line: cfg.command_line,
            max_text_line: cfg.text_line,
            max_message_size: cfg.message_size,
            max_recipients: cfg.recipients,
            max_errors: cfg.errors,
            bare_line_endings: cfg.bare_line_endings,
            // DSN is offered only when we can send notifications: when relaying.
            dsn: spool.is_some(),
            ..ServerConfig::default()
        },
        command_timeout: cfg.command_timeout,
        data_timeout: cfg.data_timeout,
        // Each listener has its own limits; these cap nothing more.
        max_sessions: cfg.listeners.iter().map(|l| l.settings.max_sessions).sum(),
        max_sessions_per_peer: cfg
            .listeners
            .iter()
            .map(|l| l.settings.max_sessions_per_peer)
            .sum(),
        auth: user_store.clone().map(|store| {
            let mut auth = smtplink_driver::AuthSettings::new(store);
            auth.mechanisms = cfg.auth.mechanisms.clone();
            auth.failure_delay = cfg.auth.failure_delay;
            auth.failure_delay_max = cfg.auth.failure_delay_max;
            auth.max_failures = cfg.auth.max_failures;
            auth.failure_window = cfg.auth.failure_window;
            auth
        }),
        tls: server_tls
            .clone()
            .map(|t| t as Arc<dyn smtplink_transport::TlsAccept>),
        ..ServerSettings::default()
    };
    spawn_reload_on_hangup(server_tls, user_store);
    // Sessions after TURN run over a link we called out on, to a peer
    // our routes name: they relay like a trusted listener.
    let turn_settings = Arc::new(ServerSettings {
        listener: smtplink_driver::ListenerSettings {
            relay_policy: Some(smtplink_driver::RelayPolicy::Trusted),
            ..cfg.listener_defaults()
        },
        ..settings.clone()
    });
    let settings = Arc::new(settings);
    // The worker receives the other side's mail after TURN with the same
    // server setup; the server's backend sends held mail after TURN with
    // the worker.
    let worker = spool.map(|spool| {
        Arc::new(
            Worker::new(ctx.clone(), spool, registry.clone(), worker_settings(&cfg))
                .with_turn_server(turn_settings, Arc::new(RelayBackend::new(ctx.clone()))),
        )
    });
    let mut backend = RelayBackend::new(ctx.clone());
    if let Some(worker) = &worker {
        backend = backend.with_worker(worker.clone());
    }
    let server = Server::with_shared_settings(settings, Arc::new(backend));
    if let Some(worker) = worker {
        info!(spool = %cfg.spool.display(), "relay queue active");
        tokio::spawn(worker.run(server.shutdown().graceful));
        tokio::spawn(publish_x25_figures(x25.clone(), cfg.spool.clone()));
    }
    let shutdown = server.shutdown();
    let grace = cfg.shutdown_grace;
    let forced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forced_flag = forced.clone();
    tokio::spawn(async move {
        signals.next().await;
        shutdown.graceful.cancel();
        info!(
            ?grace,
            "stopping: no new sessions; finishing the ones in flight (Ctrl-C again to quit now)"
        );
        tokio::select! {
            _ = tokio::time::sleep(grace) => {
                warn!(?grace, "sessions still running after the grace period; closing them");
            }
            _ = signals.next() => warn!("second stop signal; closing every session now"),
        }
        // Sessions say 421 and drop unfinished messages (their senders
        // keep them and retry); nothing half-written stays behind.
        forced_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        shutdown.force.cancel();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        warn!("sessions did not close in 5 s; exiting");
        std::process::exit(i32::from(EX_TEMPFAIL));
    });
    server.run_listeners(listeners).await;
    // The last replies of the sessions (a 250 for a message we stored) may
    // still be on their way over a slow X.25 line: let them arrive, or the
    // other end sends the message again.
    if !x25.lines().is_empty() && !x25.drain(std::time::Duration::from_secs(10)).await {
        warn!("x25 lines still had data to send after 10 s; exiting anyway");
    }
    // The figures for `queue list` describe a running server only.
    let _ = std::fs::remove_file(cfg.spool.join(X25_FIGURES_FILE));
    info!("stopped");
    if forced.load(std::sync::atomic::Ordering::SeqCst) {
        ExitCode::from(EX_TEMPFAIL)
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGHUP reloads the certificate and key: new handshakes use the new
/// pair, sessions in flight keep theirs. A broken file keeps the old pair.
/// The users file is reloaded too (a broken one keeps the old users).
fn spawn_reload_on_hangup(
    tls: Option<Arc<smtplink_tls::ServerTls>>,
    users: Option<Arc<users::UsersStore>>,
) {
    // SIGHUP is watched even with nothing to reload: its default action
    // would kill the server, which no administrator means by it.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            warn!("cannot watch SIGHUP; the certificate will not be reloaded");
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if tls.is_none() && users.is_none() {
                    info!("SIGHUP: nothing to reload (no certificate, no users file; routes are read at start)");
                }
                if let Some(tls) = &tls {
                    if let Err(e) = tls.reload() {
                        warn!(error = %e, "TLS reload failed; keeping the old certificate");
                    }
                }
                if let Some(users) = &users {
                    match users.reload() {
                        Ok(count) => info!(users = count, "users file reloaded"),
                        Err(e) => {
                            warn!(error = %e, "users file reload failed; keeping the old users")
                        }
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (tls, users);
}

/// SIGINT (Ctrl-C) and SIGTERM, registered when this is made: a signal
/// that arrives before anyone waits is still seen, not fatal.
struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.interrupt) => {}
                _ = recv(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The relay's shared context, and the spool when some route relays (a
/// node that only delivers locally needs none, and creates no ./spool).
pub(crate) fn relay_context(
    cfg: &ServeConfig,
) -> Result<(Arc<RelayContext>, Option<Arc<Spool>>), String> {
    let routes = RoutingTable::new(cfg.routes.clone());
    let spool = if routes.relays() {
        let spool =
            Spool::open(&cfg.spool).map_err(|e| format!("spool {}: {e}", cfg.spool.display()))?;
        Some(Arc::new(spool))
    } else {
        None
    };
    let ctx = Arc::new(RelayContext {
        hostname: cfg.hostname.clone(),
        routes,
        store: MaildirStore::new(cfg.maildir.clone(), cfg.hostname.clone()),
        spool: spool.clone(),
        max_hops: cfg.max_hops,
        wake: Arc::new(tokio::sync::Notify::new()),
        allow_turn: cfg.allow_turn,
    });
    Ok((ctx, spool))
}

pub(crate) fn worker_settings(cfg: &ServeConfig) -> WorkerSettings {
    WorkerSettings {
        client: ClientSettings {
            engine: ClientConfig {
                hello_name: cfg.hostname.clone(),
                ..ClientConfig::default()
            },
            ..ClientSettings::default()
        },
        retry: cfg.retry,
        connect_timeout: cfg.connect_timeout,
        sessions_per_hop: cfg.sessions_per_hop,
        mx_port: cfg.mx_port,
        resolver: cfg.resolver,
        ..WorkerSettings::default()
    }
}

/// Turns lone LF into CRLF, the way `sendmail` accepts local submissions.
fn lf_to_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut previous = 0u8;
    for &b in input {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

/// `send`'s TLS flags.
struct SendTls {
    policy: String,
    trust: Option<String>,
    name: Option<String>,
}

impl SendTls {
    /// The policy, and a connector unless TLS is off.
    fn resolve(
        &self,
        endpoint: &Endpoint,
    ) -> Result<
        (
            smtplink_engine::TlsPolicy,
            Option<Arc<dyn smtplink_transport::TlsConnect>>,
        ),
        String,
    > {
        use smtplink_engine::TlsPolicy;
        let policy = match self.policy.as_str() {
            "none" => TlsPolicy::None,
            "opportunistic" => TlsPolicy::Opportunistic,
            "required" => TlsPolicy::Required,
            other => {
                return Err(format!(
                    "--tls {other}: expected none, opportunistic or required"
                ))
            }
        };
        let implicit = smtplink_tls::implicit_inner(endpoint)
            .map_err(|e| e.to_string())?
            .is_some();
        if policy == TlsPolicy::None && !implicit {
            return Ok((policy, None));
        }
        let trust = match &self.trust {
            Some(t) => t.parse().map_err(|e| format!("--tls-trust: {e}"))?,
            None if policy == TlsPolicy::Opportunistic && !implicit => smtplink_tls::Trust::Any,
            None => smtplink_tls::Trust::System,
        };
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| smtplink_tls::server_name_for(endpoint, "localhost"));
        let client = smtplink_tls::ClientTls::new(&trust).map_err(|e| e.to_string())?;
        let connector = client.connector(&name).map_err(|e| e.to_string())?;
        Ok((policy, Some(connector)))
    }
}

/// Environment variable `send` takes the AUTH password from when no
/// `--auth-password-file` is given.
const PASSWORD_ENV: &str = "SMTPLINK_PASSWORD";

/// `send`'s credentials from its flags (the password from a file or
/// [`PASSWORD_ENV`], never from the command line, where `ps` shows it).
fn send_auth(
    user: Option<String>,
    password_file: Option<PathBuf>,
    trusted_link: bool,
) -> Result<Option<smtplink_driver::ClientAuth>, String> {
    let Some(user) = user else {
        return Ok(None);
    };
    if user.is_empty() {
        return Err("--auth-user: must not be empty".into());
    }
    let password = match password_file {
        Some(path) => config::read_password_file(&path)
            .map_err(|e| format!("--auth-password-file {}: {e}", path.display()))?,
        None => match std::env::var(PASSWORD_ENV) {
            Ok(p) if !p.is_empty() => p,
            _ => {
                return Err(format!(
                "--auth-user needs --auth-password-file FILE or {PASSWORD_ENV} in the environment"
            ))
            }
        },
    };
    Ok(Some(smtplink_driver::ClientAuth {
        credentials: smtplink_engine::Credentials::new(user, password),
        trusted_link,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn send(
    server: String,
    from: String,
    to: Vec<String>,
    helo: Option<String>,
    file: Option<PathBuf>,
    tls: SendTls,
    auth: Option<smtplink_driver::ClientAuth>,
) -> ExitCode {
    let raw = match &file {
        Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map(|_| buf)
                .map_err(|e| format!("stdin: {e}"))
        }
    };
    let body = match raw {
        Ok(b) => lf_to_crlf(&b),
        Err(e) => {
            eprintln!("smtplink: cannot read the message: {e}");
            return ExitCode::FAILURE;
        }
    };
    let envelope = match Envelope::parse(&from, &to) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "smtplink: {e}\n  (--from and --to take bare addresses such as you@example.net)"
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = smtplink_engine::client::check_message(&body) {
        eprintln!("smtplink: refusing to send: {e}");
        return ExitCode::FAILURE;
    }
    let endpoint = match parse_endpoint(&server) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("smtplink: --server {server}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hello_name =
        helo.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let (policy, connector) = match tls.resolve(&endpoint) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("smtplink: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = ClientSettings {
        engine: ClientConfig {
            hello_name,
            tls: policy,
            ..ClientConfig::default()
        },
        tls: connector.clone(),
        auth,
        ..ClientSettings::default()
    };
    let fail = |e: &dyn std::fmt::Display, transient: bool| {
        eprintln!("smtplink: {e}");
        if transient {
            ExitCode::from(EX_TEMPFAIL)
        } else {
            ExitCode::FAILURE
        }
    };
    let link = match smtplink_tls::connect(&registry(), &endpoint, connector.as_deref()).await {
        Ok(l) => l,
        Err(e) => return fail(&e, e.is_transient()),
    };
    let mut client = match SmtpClient::handshake(link, settings).await {
        Ok(c) => c,
        Err(e) => return fail(&e, e.is_transient()),
    };
    let report = match client.send(envelope, &body).await {
        Ok(r) => r,
        Err(e) => return fail(&e, e.is_transient()),
    };
    if let Err(e) = client.quit().await {
        warn!(error = %e, "QUIT failed (the message was already handled)");
    }
    for (to, outcome) in &report.recipients {
        let kind = match outcome {
            RecipientOutcome::Accepted(_) => "accepted",
            RecipientOutcome::Transient(_) => "deferred",
            RecipientOutcome::Permanent(_) => "rejected",
        };
        println!("<{to}>: {kind}: {}", outcome.reply());
    }
    let accepted = report
        .recipients
        .iter()
        .filter(|(_, o)| matches!(o, RecipientOutcome::Accepted(_)))
        .count();
    if report.all_accepted() {
        return ExitCode::SUCCESS;
    }
    if accepted > 0 {
        eprintln!(
            "smtplink: {accepted} recipient(s) accepted the message; resend only to the others, \
             or they get it twice"
        );
    }
    if report
        .recipients
        .iter()
        .any(|(_, o)| matches!(o, RecipientOutcome::Permanent(_)))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::from(EX_TEMPFAIL)
    }
}

#[cfg(test)]
mod tests {
    use super::lf_to_crlf;

    #[test]
    fn lone_lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(lf_to_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(lf_to_crlf(b"a\rb"), b"a\rb");
    }
}
