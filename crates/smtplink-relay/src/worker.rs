//! The delivery worker: takes due messages from the spool, groups their
//! recipients by next hop, sends each hop its messages over one session
//! (connection reuse), records every recipient's outcome, and queues a
//! bounce (RFC 3464) for permanent failures.
//!
//! A message leaves the spool only when no recipient is pending: each was
//! delivered (the next hop said 250), or failed with a bounce queued first.
//! Deliveries are written to the envelope record right after each
//! message's transaction (other outcomes at the end of the pass), so a
//! crash repeats at most the transaction in flight: a duplicate, never a
//! loss (RFC 5321 6.1).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtplink_driver::CancellationToken;
use smtplink_driver::{
    Backend, ClientAuth, ClientSettings, DriverError, ServerSettings, Shutdown, SmtpClient, Turned,
};
use smtplink_engine::{
    Envelope, ForwardPath, MailParams, Notify, RcptParams, RecipientOutcome, ReversePath,
};
use smtplink_engine::{SendError, TlsPolicy};
use smtplink_transport::{Endpoint, Link, Registry};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::backend::RelayContext;
use crate::bounce::{self, Action, BounceInput, FailedRecipient};
use crate::mx::{ResolverChoice, SharedResolver};
use crate::retry::RetryPolicy;
use crate::route::{RouteTarget, RouteTls};
use crate::spool::{
    self, EnvelopeRecord, NewEnvelope, NewRecipient, RecipientState, Spool, SpoolLock,
};

/// Settings of the delivery worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The SMTP client's settings (EHLO name, timers).
    pub client: ClientSettings,
    /// Backoff and give-up.
    pub retry: RetryPolicy,
    /// How long to wait for a next hop to accept a connection.
    pub connect_timeout: Duration,
    /// How often to look for due messages when nothing wakes the worker.
    pub poll_interval: Duration,
    /// The port of mail exchangers found by MX lookup (`mx` routes).
    pub mx_port: u16,
    /// The DNS resolver for MX lookups.
    pub resolver: ResolverChoice,
    /// Most sessions open to one next hop at once. 1 suits a slow link
    /// (a serial line carries one session anyway); more helps a fast one.
    pub sessions_per_hop: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            client: ClientSettings::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            sessions_per_hop: 1,
            mx_port: 25,
            resolver: ResolverChoice::System,
        }
    }
}

/// What one pass over the spool did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Recipients the next hop (or a Maildir) accepted.
    pub delivered: usize,
    /// Recipients deferred for a later try.
    pub deferred: usize,
    /// Recipients that failed for good.
    pub failed: usize,
    /// Bounces queued.
    pub bounces: usize,
}

/// One recipient's result in this pass.
#[derive(Debug, Clone)]
enum Outcome {
    /// Accepted. `report` says which success notice (RFC 3461 NOTIFY=SUCCESS)
    /// is ours to send: `Delivered` for a final delivery here, `Relayed`
    /// for a next hop that does not offer DSN; `None` when the next hop
    /// offers DSN and so reports itself.
    Delivered {
        reply: String,
        report: Option<Action>,
    },
    Deferred(String),
    Failed {
        reply: String,
        status: (u8, u16, u16),
    },
}

/// Recipient domains of an `mx` route served at once.
const MX_DOMAINS_AT_ONCE: usize = 8;

/// A message claimed for this pass (its lock held) and the recipients of
/// it that a hop is to deliver.
type Claim = Arc<Mutex<SpoolLock>>;

/// Recipients (by index) of claimed messages, as handed to one hop.
type HopItems = Vec<(Claim, Vec<usize>)>;

/// Each recipient's outcome, per claimed message.
type Outcomes = Vec<(Claim, Vec<(usize, Outcome)>)>;

/// What runs a server session on a link after TURN.
type TurnServer = (Arc<ServerSettings>, Arc<dyn Backend>);

/// The delivery worker.
pub struct Worker {
    turn_server: Option<TurnServer>,
    ctx: Arc<RelayContext>,
    spool: Arc<Spool>,
    registry: Registry,
    settings: WorkerSettings,
    mx: Arc<SharedResolver>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Worker {
    /// A worker over the relay's context; `registry` builds links to next hops.
    pub fn new(
        ctx: Arc<RelayContext>,
        spool: Arc<Spool>,
        registry: Registry,
        settings: WorkerSettings,
    ) -> Self {
        let mx = Arc::new(SharedResolver::new(settings.resolver));
        Self {
            turn_server: None,
            ctx,
            spool,
            registry,
            settings,
            mx,
        }
    }

    /// Lets the worker say TURN on routes marked for it, and receive the
    /// other side's mail with this server setup.
    pub fn with_turn_server(
        mut self,
        settings: Arc<ServerSettings>,
        backend: Arc<dyn Backend>,
    ) -> Self {
        self.turn_server = Some((settings, backend));
        self
    }

    /// The other side of TURN: sends every message held for the peer
    /// (routes with target `hold`) over `link`, which a peer just turned
    /// around, then QUIT.
    pub async fn deliver_held(&self, link: Link) -> RunStats {
        let now = unix_now();
        let spool = self.spool.clone();
        let ctx = self.ctx.clone();
        let claimed = tokio::task::spawn_blocking(move || claim_held(&spool, &ctx))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let items: HopItems = claimed
            .iter()
            .map(|(c, idx)| (c.clone(), idx.clone()))
            .collect();
        let claims: Vec<Claim> = claimed.into_iter().map(|(c, _)| c).collect();
        let hop = self.clone_parts();
        let results = match SmtpClient::handshake(link, self.settings.client.clone()).await {
            Ok(client) => {
                let (out, client) = hop.send_all(client, items).await;
                if let Some(client) = client {
                    let _ = client.quit().await;
                }
                out
            }
            Err(e) => defer_all(items, &format!("after TURN: {e}")),
        };
        let ctx = self.ctx.clone();
        let spool = self.spool.clone();
        let retry = self.settings.retry;
        tokio::task::spawn_blocking(move || finish(&ctx, &spool, retry, claims, results, now))
            .await
            .unwrap_or_default()
    }

    /// Runs passes until `stop` is cancelled: when woken by a newly queued
    /// message, and every `poll_interval` otherwise.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let stats = self.run_once(None).await;
            if stats != RunStats::default() {
                info!(?stats, "delivery pass");
            }
            tokio::select! {
                _ = self.ctx.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One pass: every due message not locked by someone else. With
    /// `only_hop`, only recipients routed to that hop (its target text,
    /// e.g. `tcp://b:25` or `local`) are tried.
    pub async fn run_once(&self, only_hop: Option<&str>) -> RunStats {
        let now = unix_now();
        let spool = self.spool.clone();
        let claimed = match tokio::task::spawn_blocking(move || claim_due(&spool, now)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the spool");
                return RunStats::default();
            }
            Err(_) => return RunStats::default(),
        };
        // Group each claimed message's due recipients by next hop.
        let mut hops: BTreeMap<String, (RouteTarget, HopItems)> = BTreeMap::new();
        let mut unroutable: HopItems = Vec::new();
        for claim in &claimed {
            let Ok(guard) = claim.lock() else { continue };
            let record = guard.record().clone();
            drop(guard);
            let mut per_hop: BTreeMap<String, (RouteTarget, Vec<usize>)> = BTreeMap::new();
            let mut no_route = Vec::new();
            for (i, r) in record.recipients.iter().enumerate() {
                if r.state != RecipientState::Pending || r.next_attempt > now {
                    continue;
                }
                let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                match self.ctx.routes.lookup(&domain.to_ascii_lowercase()) {
                    Some(target) => {
                        let key = target.to_string();
                        if only_hop.is_some_and(|h| h != key) {
                            continue;
                        }
                        per_hop
                            .entry(key)
                            .or_insert_with(|| (target.clone(), Vec::new()))
                            .1
                            .push(i);
                    }
                    None => no_route.push(i),
                }
            }
            for (key, (target, idx)) in per_hop {
                hops.entry(key)
                    .or_insert_with(|| (target, Vec::new()))
                    .1
                    .push((claim.clone(), idx));
            }
            if !no_route.is_empty() {
                unroutable.push((claim.clone(), no_route));
            }
        }
        let mut results: Outcomes = Vec::new();
        for (claim, idx) in unroutable {
            let outcomes = idx
                .into_iter()
                .map(|i| {
                    // Deferred, not failed: a routing table that changed (or
                    // a `queue flush` given fewer routes than the server)
                    // must not bounce mail the right table would deliver.
                    // The give-up age still ends it.
                    (
                        i,
                        Outcome::Deferred(
                            "no route for this domain in the current routing table".into(),
                        ),
                    )
                })
                .collect();
            results.push((claim, outcomes));
        }
        let mut tasks = JoinSet::new();
        for (hop, (target, items)) in hops {
            // Up to `sessions_per_hop` sessions, each sending its share of
            // the messages one after another over one connection.
            let sessions = self.settings.sessions_per_hop.clamp(1, items.len().max(1));
            let mut shares: Vec<HopItems> = (0..sessions).map(|_| Vec::new()).collect();
            for (n, item) in items.into_iter().enumerate() {
                shares[n % sessions].push(item);
            }
            for share in shares {
                let worker = self.clone_parts();
                let target = target.clone();
                let span = info_span!("hop", hop = %hop);
                tasks
                    .spawn(async move { worker.deliver_hop(target, share).await }.instrument(span));
            }
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                results.extend(r);
            }
        }
        let ctx = self.ctx.clone();
        let spool = self.spool.clone();
        let retry = self.settings.retry;
        tokio::task::spawn_blocking(move || finish(&ctx, &spool, retry, claimed, results, now))
            .await
            .unwrap_or_default()
    }

    fn clone_parts(&self) -> HopWorker {
        HopWorker {
            turn_server: self.turn_server.clone(),
            ctx: self.ctx.clone(),
            registry: self.registry.clone(),
            settings: self.settings.clone(),
            mx: self.mx.clone(),
        }
    }
}

/// What a per-hop task needs.
#[derive(Clone)]
struct HopWorker {
    turn_server: Option<TurnServer>,
    ctx: Arc<RelayContext>,
    registry: Registry,
    settings: WorkerSettings,
    mx: Arc<SharedResolver>,
}

impl HopWorker {
    async fn deliver_hop(&self, target: RouteTarget, items: HopItems) -> Outcomes {
        match target {
            RouteTarget::Local => {
                let mut out = Vec::new();
                for (claim, idx) in items {
                    let ctx = self.ctx.clone();
                    let c = claim.clone();
                    let outcomes =
                        tokio::task::spawn_blocking(move || deliver_local(&ctx, &c, &idx))
                            .await
                            .unwrap_or_default();
                    out.push((claim, outcomes));
                }
                out
            }
            RouteTarget::Mx => self.deliver_mx(items).await,
            RouteTarget::Via(urls) => {
                let target = RouteTarget::Via(urls.clone());
                let turn = self.ctx.routes.turns_around(&target);
                let tls = self.ctx.routes.tls_for(&target);
                let auth = self.ctx.routes.auth_for(&target);
                self.deliver_smtp(&urls, items, turn, &tls, auth.as_ref(), None)
                    .await
            }
            // Held mail leaves only when the peer calls and says TURN.
            RouteTarget::Hold => Vec::new(),
        }
    }

    /// `mx` routes: each recipient domain is its own hop, found by MX
    /// lookup (see [`crate::mx`]); a few domains are served at once.
    async fn deliver_mx(&self, items: HopItems) -> Outcomes {
        let mut by_domain: BTreeMap<String, HopItems> = BTreeMap::new();
        for (claim, idx) in items {
            let mut per_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            {
                let Ok(lock) = claim.lock() else { continue };
                let record = lock.record();
                for i in idx {
                    let Some(r) = record.recipients.get(i) else {
                        continue;
                    };
                    let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                    per_domain
                        .entry(domain.to_ascii_lowercase())
                        .or_default()
                        .push(i);
                }
            }
            for (domain, idx) in per_domain {
                by_domain
                    .entry(domain)
                    .or_default()
                    .push((claim.clone(), idx));
            }
        }
        let limit = Arc::new(tokio::sync::Semaphore::new(MX_DOMAINS_AT_ONCE));
        let mut tasks = JoinSet::new();
        for (domain, items) in by_domain {
            let hop = self.clone();
            let limit = limit.clone();
            let span = info_span!("mx", domain = %domain);
            tasks.spawn(
                async move {
                    let _permit = limit.acquire_owned().await;
                    hop.deliver_domain(&domain, items).await
                }
                .instrument(span),
            );
        }
        let mut out = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                out.extend(r);
            }
        }
        out
    }

    /// Resolves one domain's mail exchangers and delivers to them.
    async fn deliver_domain(&self, domain: &str, items: HopItems) -> Outcomes {
        let resolver = match self.mx.get() {
            Ok(r) => r,
            Err(e) => return defer_all(items, &format!("MX lookup for {domain}: {e}")),
        };
        match resolver.next_hops(domain, self.settings.mx_port).await {
            Ok(urls) => {
                info!(?urls, "mail exchangers");
                let tls = self.ctx.routes.tls_for(&RouteTarget::Mx);
                let auth = self.ctx.routes.auth_for(&RouteTarget::Mx);
                self.deliver_smtp(&urls, items, false, &tls, auth.as_ref(), Some(domain))
                    .await
            }
            Err(e) if e.is_permanent() => {
                warn!(error = %e, "no mail exchanger");
                fail_all(items, &e.to_string(), e.status())
            }
            Err(e) => {
                warn!(error = %e, "MX lookup failed; will retry");
                defer_all(items, &e.to_string())
            }
        }
    }

    /// The client settings for one endpoint of a route: its STARTTLS
    /// policy and, unless TLS is off, a connector for the name to check;
    /// its AUTH credentials, if any.
    fn client_settings(
        &self,
        endpoint: &Endpoint,
        tls: &RouteTls,
        auth: Option<&ClientAuth>,
        domain: Option<&str>,
    ) -> Result<ClientSettings, String> {
        let mut settings = self.settings.client.clone();
        settings.engine.tls = tls.policy;
        settings.auth = auth.cloned();
        let implicit = endpoint.scheme().starts_with(smtplink_tls::IMPLICIT_PREFIX);
        if tls.policy == TlsPolicy::None && !implicit {
            settings.tls = None;
            return Ok(settings);
        }
        let trust = match (&tls.trust, tls.policy) {
            (Some(t), _) => t.parse().map_err(|e| format!("{e}"))?,
            // Opportunistic: encrypt without authenticating (RFC 7435).
            (None, TlsPolicy::Opportunistic) if !implicit => smtplink_tls::Trust::Any,
            (None, _) => smtplink_tls::Trust::System,
        };
        let fallback = domain.unwrap_or("localhost");
        let name = match &tls.name {
            Some(n) => n.clone(),
            None => smtplink_tls::server_name_for(endpoint, fallback),
        };
        let client = smtplink_tls::ClientTls::new(&trust).map_err(|e| e.to_string())?;
        settings.tls = Some(client.connector(&name).map_err(|e| e.to_string())?);
        Ok(settings)
    }

    async fn connect(
        &self,
        urls: &[String],
        tls: &RouteTls,
        auth: Option<&ClientAuth>,
        domain: Option<&str>,
    ) -> Result<SmtpClient, String> {
        let mut last = String::from("no endpoint");
        for url in urls {
            let endpoint = match Endpoint::parse(url) {
                Ok(e) => e,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let settings = match self.client_settings(&endpoint, tls, auth, domain) {
                Ok(s) => s,
                Err(e) => {
                    last = format!("{url}: TLS settings: {e}");
                    warn!(endpoint = %url, error = %last, "next hop unusable");
                    continue;
                }
            };
            let attempt = async {
                let link =
                    smtplink_tls::connect(&self.registry, &endpoint, settings.tls.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                SmtpClient::handshake(link, settings)
                    .await
                    .map_err(|e| format!("{url}: {e}"))
            };
            match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = format!(
                        "{url}: no answer within {:?}",
                        self.settings.connect_timeout
                    )
                }
            }
            warn!(endpoint = %url, error = %last, "next hop unavailable");
        }
        Err(last)
    }

    async fn deliver_smtp(
        &self,
        urls: &[String],
        items: HopItems,
        turn: bool,
        tls: &RouteTls,
        auth: Option<&ClientAuth>,
        domain: Option<&str>,
    ) -> Outcomes {
        // Any failure here defers, a 535 to AUTH included: it condemns
        // this route's credentials, not the messages (RFC 4954 6 is about
        // the AUTH command), so mail waits for the operator to fix them and
        // bounces only after `give_up`, as Postfix's
        // smtp_sasl_auth_soft_bounce does by default.
        let client = match self.connect(urls, tls, auth, domain).await {
            Ok(c) => c,
            Err(e) => return defer_all(items, &e),
        };
        let (out, client) = self.send_all(client, items).await;
        match client {
            Some(client) if turn => self.turn_around(client).await,
            Some(client) => {
                let _ = client.quit().await;
            }
            None => {}
        }
        out
    }

    /// After sending, TURN (RFC 821 4.1.1) on a trusted point-to-point
    /// route: the next hop sends us what it holds for us, over this link.
    async fn turn_around(&self, client: SmtpClient) {
        let Some((settings, backend)) = self.turn_server.clone() else {
            let _ = client.quit().await;
            return;
        };
        match client.turn().await {
            Ok(Turned::Link(link)) => {
                info!("TURN accepted; receiving the other side's mail");
                let _ = smtplink_driver::serve_link(link, settings, backend, Shutdown::new()).await;
            }
            Ok(Turned::Refused(client, reply)) => {
                warn!(%reply, "TURN refused");
                let _ = (*client).quit().await;
            }
            Err(e) => warn!(error = %e, "TURN failed"),
        }
    }

    /// Sends every item over one session. Returns the outcomes, and the
    /// client unless the session broke.
    async fn send_all(
        &self,
        mut client: SmtpClient,
        items: HopItems,
    ) -> (Outcomes, Option<SmtpClient>) {
        let mut out = Vec::new();
        let mut broken: Option<String> = None;
        let mut rest = items.into_iter();
        for (claim, idx) in rest.by_ref() {
            let c = claim.clone();
            let idx2 = idx.clone();
            let prepared = tokio::task::spawn_blocking(move || prepare(&c, &idx2)).await;
            let (envelope, body) = match prepared {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    out.push((
                        claim,
                        idx.iter()
                            .map(|&i| (i, Outcome::Deferred(e.clone())))
                            .collect(),
                    ));
                    continue;
                }
                Err(_) => continue,
            };
            let hop_dsn = client.capabilities().dsn;
            match client.send(envelope, &body).await {
                Ok(report) => {
                    let outcomes: Vec<(usize, Outcome)> = idx
                        .iter()
                        .zip(report.recipients.iter())
                        .map(|(&i, (_, o))| {
                            let text = o.reply().to_string();
                            let outcome = match o {
                                RecipientOutcome::Accepted(_) => Outcome::Delivered {
                                    reply: text,
                                    report: (!hop_dsn).then_some(Action::Relayed),
                                },
                                RecipientOutcome::Transient(_) => Outcome::Deferred(text),
                                RecipientOutcome::Permanent(r) => Outcome::Failed {
                                    reply: text,
                                    status: r
                                        .enhanced()
                                        .map_or((5, 0, 0), |e| (e.class, e.subject, e.detail)),
                                },
                            };
                            (i, outcome)
                        })
                        .collect();
                    // Record deliveries now, not at the end of the pass: a
                    // crash later in the pass must not send them again.
                    let c = claim.clone();
                    let outcomes = tokio::task::spawn_blocking(move || {
                        record_deliveries(&c, &outcomes);
                        outcomes
                    })
                    .await
                    .unwrap_or_default();
                    out.push((claim, outcomes));
                }
                Err(DriverError::Send(SendError::Message(e))) => {
                    // Nothing was sent: this message cannot go this way.
                    // (A session that is no longer ready, e.g. after the
                    // server's 421, is a broken session: deferred below.)
                    let reply = format!("not sent: {e}");
                    out.push((
                        claim,
                        idx.iter()
                            .map(|&i| {
                                (
                                    i,
                                    Outcome::Failed {
                                        reply: reply.clone(),
                                        status: (5, 6, 0),
                                    },
                                )
                            })
                            .collect(),
                    ));
                }
                Err(e) => {
                    let reason = e.to_string();
                    out.push((
                        claim,
                        idx.iter()
                            .map(|&i| (i, Outcome::Deferred(reason.clone())))
                            .collect(),
                    ));
                    broken = Some(reason);
                    break;
                }
            }
        }
        match broken {
            Some(reason) => {
                out.extend(defer_all(rest.collect(), &reason));
                (out, None)
            }
            None => (out, Some(client)),
        }
    }
}

fn fail_all(items: HopItems, reply: &str, status: (u8, u16, u16)) -> Outcomes {
    items
        .into_iter()
        .map(|(claim, idx)| {
            let outcomes = idx
                .into_iter()
                .map(|i| {
                    (
                        i,
                        Outcome::Failed {
                            reply: reply.to_string(),
                            status,
                        },
                    )
                })
                .collect();
            (claim, outcomes)
        })
        .collect()
}

fn defer_all(items: HopItems, reason: &str) -> Outcomes {
    items
        .into_iter()
        .map(|(claim, idx)| {
            let outcomes = idx
                .into_iter()
                .map(|i| (i, Outcome::Deferred(reason.to_string())))
                .collect();
            (claim, outcomes)
        })
        .collect()
}

/// Locks every message with a pending recipient routed to `hold`, due or
/// not (the peer is here now), with those recipients' indexes.
fn claim_held(
    spool: &Spool,
    ctx: &RelayContext,
) -> Result<Vec<(Claim, Vec<usize>)>, spool::SpoolError> {
    let mut out = Vec::new();
    for record in spool.list()? {
        let held: Vec<usize> = record
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                r.state == RecipientState::Pending
                    && ctx.routes.lookup(&domain.to_ascii_lowercase()) == Some(&RouteTarget::Hold)
            })
            .map(|(i, _)| i)
            .collect();
        if held.is_empty() {
            continue;
        }
        if let Some(lock) = spool.try_lock(&record.id)? {
            out.push((Arc::new(Mutex::new(lock)), held));
        }
    }
    Ok(out)
}

/// Locks every due message that nobody else holds.
fn claim_due(spool: &Spool, now: u64) -> Result<Vec<Claim>, spool::SpoolError> {
    let mut out = Vec::new();
    for id in spool.due(now)? {
        if let Some(lock) = spool.try_lock(&id)? {
            // Re-check under the lock: another process may have finished it.
            if lock.record().is_due(now) {
                out.push(Arc::new(Mutex::new(lock)));
            }
        }
    }
    Ok(out)
}

fn read_message(lock: &SpoolLock) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    lock.open_message()
        .map_err(|e| e.to_string())?
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the spooled message: {e}"))?;
    Ok(body)
}

/// The envelope (with DSN parameters) and body for some recipients.
fn prepare(claim: &Claim, idx: &[usize]) -> Result<(Envelope, Vec<u8>), String> {
    let lock = claim.lock().map_err(|_| "lock poisoned".to_string())?;
    let record = lock.record();
    let from = if record.sender.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::parse(&format!("<{}>", record.sender), true).map_err(|e| e.to_string())?
    };
    let mut to = Vec::new();
    let mut rcpt_params = Vec::new();
    for &i in idx {
        let r = &record.recipients[i];
        to.push(ForwardPath::parse(&format!("<{}>", r.address), true).map_err(|e| e.to_string())?);
        rcpt_params.push(RcptParams {
            notify: r.notify.as_ref().map(|list| {
                list.iter()
                    .filter_map(|n| match n {
                        spool::Notify::Success => Some(Notify::Success),
                        spool::Notify::Failure => Some(Notify::Failure),
                        spool::Notify::Delay => Some(Notify::Delay),
                        spool::Notify::Never => None,
                    })
                    .collect()
            }),
            orcpt: r
                .orcpt
                .as_ref()
                .and_then(|o| o.split_once(';'))
                .map(|(t, a)| (t.to_string(), a.to_string())),
        });
    }
    let envelope = Envelope {
        from,
        to,
        dsn: MailParams {
            ret: record.ret.map(|r| match r {
                spool::Ret::Full => smtplink_engine::Ret::Full,
                spool::Ret::Hdrs => smtplink_engine::Ret::Hdrs,
            }),
            envid: record.envid.clone(),
            ..MailParams::default()
        },
        rcpt_params,
    };
    Ok((envelope, read_message(&lock)?))
}

/// Delivers some recipients of a spooled message into local Maildirs.
fn deliver_local(ctx: &RelayContext, claim: &Claim, idx: &[usize]) -> Vec<(usize, Outcome)> {
    let result = (|| -> Result<(), String> {
        let lock = claim.lock().map_err(|_| "lock poisoned".to_string())?;
        let record = lock.record();
        let names: Vec<String> = idx
            .iter()
            .map(|&i| {
                let to = ForwardPath::parse(&format!("<{}>", record.recipients[i].address), true);
                match to {
                    Ok(to) => crate::backend::local_mailbox(&to, &ctx.hostname),
                    Err(_) => record.recipients[i].address.clone(),
                }
            })
            .collect();
        let body = read_message(&lock)?;
        // The final delivery adds Return-Path (RFC 5321 4.4); the Received:
        // fields are in the spooled message already.
        let header = format!(
            "Return-Path: <{}>\r\n",
            record.sender.replace(['\r', '\n'], "")
        );
        let first = names.first().ok_or("no recipients")?;
        let mut w = ctx
            .store
            .begin_with_header(first, header.as_bytes(), SystemTime::now())
            .map_err(|e| e.to_string())?;
        w.write_all(&body).map_err(|e| e.to_string())?;
        w.commit(&names).map_err(|e| e.to_string())?;
        Ok(())
    })();
    let outcome = match result {
        Ok(()) => Outcome::Delivered {
            reply: "stored in the local Maildir".into(),
            report: Some(Action::Delivered),
        },
        Err(e) => Outcome::Deferred(format!("local delivery failed: {e}")),
    };
    idx.iter().map(|&i| (i, outcome.clone())).collect()
}

/// Marks recipients the next hop accepted as delivered, right after the
/// transaction. Those owed a success notice are left to [`finish`], which
/// queues the notice before recording the state, so it cannot be lost.
fn record_deliveries(claim: &Claim, outcomes: &[(usize, Outcome)]) {
    let now = unix_now();
    let Ok(mut lock) = claim.lock() else { return };
    let done: Vec<(usize, String)> = outcomes
        .iter()
        .filter_map(|(i, o)| match o {
            Outcome::Delivered { reply, report } => {
                let owed = report.is_some()
                    && lock
                        .record()
                        .recipients
                        .get(*i)
                        .is_some_and(|r| wants_success_dsn(&r.notify));
                (!owed).then(|| (*i, reply.clone()))
            }
            _ => None,
        })
        .collect();
    if done.is_empty() {
        return;
    }
    let updated = lock.update(|rec| {
        for (i, reply) in &done {
            if let Some(r) = rec.recipients.get_mut(*i) {
                r.state = RecipientState::Delivered;
                r.attempts += 1;
                r.last_attempt = Some(now);
                r.last_reply = Some(reply.clone());
            }
        }
    });
    if let Err(e) = updated {
        // `finish` records it again.
        warn!(error = %e, "cannot record deliveries yet");
    }
}

/// One recipient the sender gets a notice about.
struct Notice {
    idx: usize,
    reply: String,
    status: (u8, u16, u16),
    action: Action,
}

/// Whether the sender asked for success notices (RFC 3461 4.1).
fn wants_success_dsn(notify: &Option<Vec<spool::Notify>>) -> bool {
    notify
        .as_ref()
        .is_some_and(|n| n.contains(&spool::Notify::Success))
}

/// Whether the sender asked for (or did not refuse) failure notices.
fn wants_failure_dsn(notify: &Option<Vec<spool::Notify>>) -> bool {
    notify
        .as_ref()
        .is_none_or(|n| n.contains(&spool::Notify::Failure))
}

/// Applies every outcome: records states, queues bounces, removes finished
/// messages, and drops the locks.
fn finish(
    ctx: &RelayContext,
    spool: &Spool,
    retry: RetryPolicy,
    claimed: Vec<Claim>,
    results: Outcomes,
    now: u64,
) -> RunStats {
    let mut stats = RunStats::default();
    // Only the outcome lists keep claims alive from here on, so a finished
    // message's lock can be taken back for removal; the rest unlock here.
    drop(claimed);
    // Outcomes per message.
    let mut per_message: Outcomes = Vec::new();
    for (claim, outcomes) in results {
        match per_message.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &claim)) {
            Some((_, list)) => list.extend(outcomes),
            None => per_message.push((claim, outcomes)),
        }
    }
    for (claim, outcomes) in per_message {
        let Ok(mut lock) = claim.lock() else { continue };
        let record = lock.record().clone();
        // Decide each recipient's new state; what the sender is owed a
        // notice about (failures, and successes it asked for) goes into one
        // DSN.
        let mut notices: Vec<Notice> = Vec::new();
        let mut changes: Vec<(usize, RecipientState, Option<u64>, String)> = Vec::new();
        for (i, outcome) in outcomes {
            let Some(r) = record.recipients.get(i) else {
                continue;
            };
            if r.state != RecipientState::Pending {
                // Recorded already, right after its transaction.
                if matches!(outcome, Outcome::Delivered { .. }) {
                    stats.delivered += 1;
                }
                continue;
            }
            let attempts = r.attempts + 1;
            match outcome {
                Outcome::Delivered { reply, report } => {
                    stats.delivered += 1;
                    if let (Some(action), true) = (report, wants_success_dsn(&r.notify)) {
                        notices.push(Notice {
                            idx: i,
                            reply: reply.clone(),
                            status: (2, 0, 0),
                            action,
                        });
                    }
                    changes.push((i, RecipientState::Delivered, None, reply));
                }
                Outcome::Deferred(reply) => match retry.next_attempt(attempts, record.arrived, now)
                {
                    Some(next) => {
                        stats.deferred += 1;
                        changes.push((i, RecipientState::Pending, Some(next), reply));
                    }
                    None => {
                        let reply = format!("gave up after {attempts} attempts: {reply}");
                        stats.failed += 1;
                        notices.push(Notice {
                            idx: i,
                            reply: reply.clone(),
                            status: (4, 4, 7),
                            action: Action::Failed,
                        });
                        changes.push((i, RecipientState::Failed, None, reply));
                    }
                },
                Outcome::Failed { reply, status } => {
                    stats.failed += 1;
                    notices.push(Notice {
                        idx: i,
                        reply: reply.clone(),
                        status,
                        action: Action::Failed,
                    });
                    changes.push((i, RecipientState::Failed, None, reply));
                }
            }
        }
        // Never a notice about a notice (RFC 3461 6.1 / RFC 5321 6.1).
        let owed: Vec<&Notice> = notices
            .iter()
            .filter(|n| {
                !record.is_bounce
                    && !bounce::is_bounce_sender(&record.sender)
                    && (n.action != Action::Failed
                        || wants_failure_dsn(&record.recipients[n.idx].notify))
            })
            .collect();
        let mut bounced = false;
        if !owed.is_empty() {
            // Queue the bounce before recording the failure: a crash in
            // between sends it twice, never not at all.
            match queue_bounce(ctx, spool, &lock, &record, &owed, now) {
                Ok(()) => {
                    stats.bounces += 1;
                    bounced = true;
                }
                Err(e) => {
                    warn!(error = %e, id = %record.id.as_str(), "cannot queue a bounce; will retry");
                    continue;
                }
            }
        }
        let owed_idx: Vec<usize> = owed
            .iter()
            .filter(|n| n.action == Action::Failed)
            .map(|n| n.idx)
            .collect();
        let updated = lock.update(|rec| {
            for (i, state, next, reply) in &changes {
                if let Some(r) = rec.recipients.get_mut(*i) {
                    r.attempts += 1;
                    r.last_attempt = Some(now);
                    r.last_reply = Some(reply.clone());
                    r.state = if *state == RecipientState::Failed && bounced && owed_idx.contains(i)
                    {
                        RecipientState::Bounced
                    } else {
                        *state
                    };
                    if let Some(next) = next {
                        r.next_attempt = *next;
                    }
                }
            }
        });
        if let Err(e) = updated {
            warn!(error = %e, "cannot record delivery outcomes");
            continue;
        }
        if !lock.record().has_pending() {
            drop(lock);
            if let Ok(m) = Arc::try_unwrap(claim) {
                if let Ok(lock) = m.into_inner() {
                    let id = lock.id().as_str().to_string();
                    match lock.remove() {
                        Ok(()) => info!(id, "message done; removed from the spool"),
                        Err(e) => warn!(error = %e, id, "cannot remove a finished message"),
                    }
                }
            }
        }
    }
    stats
}

/// Renders and spools a delivery status notification (a bounce, or a
/// success report) for `owed` recipients of `record`.
fn queue_bounce(
    ctx: &RelayContext,
    spool: &Spool,
    lock: &SpoolLock,
    record: &EnvelopeRecord,
    owed: &[&Notice],
    now: u64,
) -> Result<(), String> {
    let original = read_message(lock)?;
    let recipients: Vec<FailedRecipient> = owed
        .iter()
        .map(|n| {
            let r = &record.recipients[n.idx];
            FailedRecipient {
                final_recipient: &r.address,
                original_recipient: r.orcpt.as_deref(),
                action: n.action,
                status: n.status,
                remote_mta: r.next_hop.as_deref(),
                diagnostic: Some(n.reply.as_str()),
                last_attempt: Some(to_time(now)),
                will_retry_until: None,
            }
        })
        .collect();
    let message = bounce::render_bounce(&BounceInput {
        reporting_mta: &ctx.hostname,
        original_sender: &record.sender,
        envid: record.envid.as_deref(),
        arrival: to_time(record.arrived),
        now: to_time(now),
        recipients: &recipients,
        original: &original,
        ret: match record.ret {
            Some(spool::Ret::Full) => bounce::Ret::Full,
            _ => bounce::Ret::Headers,
        },
        message_id_domain: &ctx.hostname,
    });
    let mut w = spool.begin().map_err(|e| e.to_string())?;
    w.write_all(&message).map_err(|e| e.to_string())?;
    let id = w
        .commit(NewEnvelope {
            sender: String::new(),
            arrived: now,
            peer: "bounce".into(),
            helo: ctx.hostname.clone(),
            envid: None,
            ret: None,
            is_bounce: true,
            recipients: vec![NewRecipient::new(record.sender.clone())],
        })
        .map_err(|e| e.to_string())?;
    info!(bounce = %id.as_str(), original = %record.id.as_str(), to = %record.sender, "bounce queued");
    Ok(())
}
