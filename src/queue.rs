//! `smtplink queue`: list, show, delete and flush the relay's spool. Every
//! action takes the message's lock first, so it is safe while `serve` runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use smtplink_relay::spool::{MessageId, RecipientState, Spool};
use smtplink_relay::Worker;

use crate::{
    load_config, registry, relay_context, worker_settings, QueueAction, EX_CONFIG, EX_TEMPFAIL,
};

/// `println!` that gives up quietly when stdout is gone (`queue list | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// "3h12m" style, for ages and waits.
fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub(crate) async fn run(
    spool_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    routes: Vec<String>,
    action: QueueAction,
) -> ExitCode {
    let mut cfg = match load_config(config.as_deref(), &routes, spool_dir.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtplink: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Some(dir) = spool_dir {
        cfg.spool = dir;
    }
    if !cfg.spool.join("env").is_dir() {
        eprintln!(
            "smtplink: {}: no queue here (nothing was ever relayed?)",
            cfg.spool.display()
        );
        return ExitCode::FAILURE;
    }
    let spool = match Spool::open(&cfg.spool) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("smtplink: spool {}: {e}", cfg.spool.display());
            return ExitCode::FAILURE;
        }
    };
    let now = unix_now();
    match action {
        QueueAction::List => {
            let records = match spool.list() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("smtplink: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if records.is_empty() {
                out!("queue is empty");
            }
            // Figures of the X.25 lines of a `serve` using this spool.
            if let Ok(figures) = std::fs::read_to_string(cfg.spool.join(crate::X25_FIGURES_FILE)) {
                out!("x25 lines of the running serve (refreshed every 10 s):");
                for line in figures.lines() {
                    out!("    {line}");
                }
            }
            for r in &records {
                let sender = if r.sender.is_empty() { "<>" } else { &r.sender };
                out!(
                    "{}  age {}  {} bytes  from {}",
                    r.id.as_str(),
                    human(now.saturating_sub(r.arrived)),
                    r.size,
                    sender
                );
                for rc in &r.recipients {
                    let state = match rc.state {
                        RecipientState::Pending if rc.next_attempt <= now => {
                            "pending, due now".to_string()
                        }
                        RecipientState::Pending => {
                            format!("pending, next try in {}", human(rc.next_attempt - now))
                        }
                        other => format!("{other:?}").to_lowercase(),
                    };
                    out!(
                        "    {}  [{}]  attempts {}  via {}  last: {}",
                        rc.address,
                        state,
                        rc.attempts,
                        rc.next_hop.as_deref().unwrap_or("?"),
                        rc.last_reply.as_deref().unwrap_or("-")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        QueueAction::Show { id } => {
            let result = MessageId::parse(&id).and_then(|id| spool.load(&id));
            match result.map(|r| serde_json_pretty(&r)) {
                Ok(text) => {
                    out!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smtplink: {id}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        QueueAction::Delete { id } => {
            let result = MessageId::parse(&id).and_then(|mid| spool.try_lock(&mid));
            match result {
                Ok(Some(lock)) => match lock.remove() {
                    Ok(()) => {
                        out!("deleted {id}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("smtplink: {id}: {e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(None) => {
                    eprintln!("smtplink: {id} is being delivered right now; try again in a moment");
                    ExitCode::from(EX_TEMPFAIL)
                }
                Err(e) => {
                    eprintln!("smtplink: {id}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        QueueAction::Flush { hop } => {
            // Flush delivers in this process, with these routes: without the
            // server's routes everything would count as local mail.
            if cfg.routes.is_empty() {
                eprintln!(
                    "smtplink: queue flush needs the routes the server uses (--route or --config); \
                     without them every message would be delivered locally"
                );
                return ExitCode::from(EX_CONFIG);
            }
            // Make everything due, then run one delivery pass here. A
            // running `serve` skips messages this process holds, and
            // vice versa.
            if let Ok(records) = spool.list() {
                for r in records {
                    if let Ok(Some(mut lock)) = spool.try_lock(&r.id) {
                        let _ = lock.reschedule_now();
                    }
                }
            }
            let (ctx, _) = match relay_context(&cfg) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("smtplink: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            let worker = Worker::new(ctx, spool.clone(), registry(), worker_settings(&cfg));
            let stats = worker.run_once(hop.as_deref()).await;
            out!(
                "delivered {}, deferred {}, failed {}, bounces queued {}",
                stats.delivered,
                stats.deferred,
                stats.failed,
                stats.bounces
            );
            if stats.failed > 0 {
                ExitCode::FAILURE
            } else if stats.deferred > 0 {
                ExitCode::from(EX_TEMPFAIL)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn serde_json_pretty(r: &smtplink_relay::spool::EnvelopeRecord) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("(cannot print: {e})"))
}
