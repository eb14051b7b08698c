//! The server side of the relay: a driver [`Backend`] that routes each
//! recipient at RCPT time and, at the end of data, stores the message
//! durably before the 250: into the Maildirs for local recipients, into the
//! spool for the others.
//!
//! Order of the two stores: spool first, then Maildirs. If the Maildir
//! step fails, the spooled copy is removed again and the client gets 451,
//! so a retry cannot duplicate the relayed part. Any storage failure is a
//! 451 and leaves nothing half-written behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_driver::{Backend, SessionHandler, SessionInfo};
use smtplink_engine::{
    EnhancedCode, ForwardPath, MailParams, Notify, RcptParams, Reply, ReplyCode, ReversePath,
};
use smtplink_maildir::{MaildirStore, MessageWriter, TraceInfo};
use smtplink_transport::Link;
use tokio::sync::Notify as Wake;
use tracing::{error, info};

use crate::route::{RouteTarget, RoutingTable};
use crate::spool::{self, NewEnvelope, NewRecipient, Spool, SpoolWriter};
use crate::worker::Worker;

/// Default most `Received:` fields before a message counts as looping
/// (RFC 5321 6.3 leaves the figure to the implementation; 50 is generous
/// for any real path).
pub const DEFAULT_MAX_HOPS: usize = 50;

/// What every relay session shares.
pub struct RelayContext {
    /// Our host name (Received: fields, postmaster).
    pub hostname: String,
    /// Where each domain goes.
    pub routes: RoutingTable,
    /// Local delivery.
    pub store: MaildirStore,
    /// The queue for remote recipients (needed only when a route relays).
    pub spool: Option<Arc<Spool>>,
    /// Most `Received:` fields accepted.
    pub max_hops: usize,
    /// Woken when a message is queued, so the delivery worker starts at once.
    pub wake: Arc<Wake>,
    /// Accept TURN (RFC 821) from peers: only for trusted point-to-point
    /// links, since whoever says TURN receives the mail held for the peer
    /// without proving who it is (why RFC 5321 dropped it).
    pub allow_turn: bool,
}

/// The relay's [`Backend`].
pub struct RelayBackend {
    ctx: Arc<RelayContext>,
    worker: Option<Arc<Worker>>,
}

impl RelayBackend {
    /// A backend over a shared context.
    pub fn new(ctx: Arc<RelayContext>) -> Self {
        Self { ctx, worker: None }
    }

    /// Lets accepted TURNs send the mail held for the peer with `worker`.
    pub fn with_worker(mut self, worker: Arc<Worker>) -> Self {
        self.worker = Some(worker);
        self
    }
}

#[async_trait]
impl Backend for RelayBackend {
    async fn open(&self, _info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        Ok(Box::new(RelaySession {
            worker: self.worker.clone(),
            ctx: self.ctx.clone(),
            reverse_path: String::new(),
            params: MailParams::default(),
            recipients: Vec::new(),
            local: None,
            remote: None,
            hops: HopCounter::default(),
        }))
    }
}

struct Recipient {
    /// Where it goes: the Maildir name for local ones, the address otherwise.
    address: String,
    local: bool,
    next_hop: String,
    params: RcptParams,
}

struct RelaySession {
    worker: Option<Arc<Worker>>,
    ctx: Arc<RelayContext>,
    reverse_path: String,
    params: MailParams,
    recipients: Vec<Recipient>,
    local: Option<MessageWriter>,
    remote: Option<SpoolWriter>,
    hops: HopCounter,
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(1);

fn local_error(what: &str, e: &dyn std::fmt::Display) -> Reply {
    error!(error = %e, "{what} failed");
    Reply::new(
        ReplyCode::LOCAL_ERROR,
        EnhancedCode::new(4, 3, 0),
        "Local error in processing; message not stored, try again later",
    )
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Reply> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(local_error(what, &e)),
        Err(join) => Err(local_error(what, &join)),
    }
}

/// The Maildir name for a local recipient. "postmaster" is
/// case-insensitive (RFC 5321 4.5.1), quoted or not, so every spelling
/// lands in one `postmaster@<domain>`; `<Postmaster>` with no domain
/// (4.1.1.3) is ours.
pub fn local_mailbox(to: &ForwardPath, hostname: &str) -> String {
    match to {
        ForwardPath::Postmaster => format!("postmaster@{}", hostname.to_ascii_lowercase()),
        ForwardPath::Mailbox(m) => {
            let local = m.local_part().trim_matches('"');
            if local.eq_ignore_ascii_case("postmaster") {
                format!("postmaster@{}", m.domain().to_lowercase())
            } else {
                m.to_string()
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counts `Received:` fields in the header section as the body streams by.
#[derive(Default)]
struct HopCounter {
    past_headers: bool,
    line_start: Vec<u8>,
    at_line_start_done: bool,
    count: usize,
}

impl HopCounter {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.past_headers {
                return;
            }
            if b == b'\n' {
                let line = std::mem::take(&mut self.line_start);
                if line == b"\r" || line.is_empty() {
                    self.past_headers = true;
                }
                self.at_line_start_done = false;
                continue;
            }
            if !self.at_line_start_done {
                self.line_start.push(b);
                if self.line_start.len() == 9 {
                    if self.line_start.eq_ignore_ascii_case(b"received:") {
                        self.count += 1;
                    }
                    self.at_line_start_done = true;
                }
            }
        }
    }
}

impl RelaySession {
    /// The Maildir names of the recipients delivered here.
    fn local_names(&self) -> Vec<String> {
        self.recipients
            .iter()
            .filter(|r| r.local)
            .map(|r| r.address.clone())
            .collect()
    }

    fn clear(&mut self) {
        self.recipients.clear();
        self.local = None;
        self.remote = None;
        self.hops = HopCounter::default();
    }
}

fn notify_to_record(n: &Option<Vec<Notify>>) -> Option<Vec<spool::Notify>> {
    n.as_ref().map(|list| {
        if list.is_empty() {
            return vec![spool::Notify::Never];
        }
        list.iter()
            .map(|n| match n {
                Notify::Success => spool::Notify::Success,
                Notify::Failure => spool::Notify::Failure,
                Notify::Delay => spool::Notify::Delay,
            })
            .collect()
    })
}

#[async_trait]
impl SessionHandler for RelaySession {
    async fn mail(
        &mut self,
        _info: &SessionInfo,
        from: &ReversePath,
        params: &MailParams,
    ) -> Result<(), Reply> {
        self.clear();
        self.reverse_path = from.to_string();
        self.params = params.clone();
        Ok(())
    }

    async fn rcpt(
        &mut self,
        info: &SessionInfo,
        to: &ForwardPath,
        params: &RcptParams,
    ) -> Result<(), Reply> {
        let target = match to {
            ForwardPath::Postmaster => Some(&RouteTarget::Local),
            ForwardPath::Mailbox(m) => self.ctx.routes.lookup(&m.domain().to_lowercase()),
        };
        let (local, next_hop) = match target {
            None => {
                // Not ours and no route: we are not an open relay.
                return Err(Reply::new(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    EnhancedCode::new(5, 7, 1),
                    format!("<{to}>: Relaying denied"),
                ));
            }
            Some(RouteTarget::Local) => (true, "local".to_string()),
            // Routed elsewhere: only for sessions the listener's relay
            // policy lets relay (RFC 5321 7.1).
            Some(_) if !info.may_relay() => {
                info!(recipient = %to, policy = %info.relay_policy, authenticated = info.auth_user.is_some(), "relaying refused");
                return Err(Reply::new(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    EnhancedCode::new(5, 7, 1),
                    format!("<{to}>: Relaying denied"),
                ));
            }
            Some(other) if self.ctx.spool.is_some() => (false, other.to_string()),
            Some(_) => {
                return Err(Reply::new(
                    ReplyCode::LOCAL_ERROR,
                    EnhancedCode::new(4, 3, 5),
                    "Relaying is configured without a spool",
                ))
            }
        };
        let address = if local {
            local_mailbox(to, &self.ctx.hostname)
        } else {
            to.to_string()
        };
        self.recipients.push(Recipient {
            address,
            local,
            next_hop,
            params: params.clone(),
        });
        Ok(())
    }

    async fn data_start(&mut self, info: &SessionInfo) -> Result<(), Reply> {
        let now = SystemTime::now();
        let id = format!(
            "{}.{}",
            info.id,
            MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // RFC 3848 / RFC 6531 protocol names for the `with` clause.
        let tls = info.link.tls.as_ref();
        // RFC 3848: ESMTPA / ESMTPSA when the client authenticated.
        let authenticated = info.auth_user.is_some();
        let protocol = smtplink_maildir::protocol_name(
            info.esmtp,
            tls.is_some(),
            authenticated,
            self.params.smtputf8,
        );
        let trace = TraceInfo {
            reverse_path: self.reverse_path.clone(),
            helo: info.helo.clone(),
            // RFC 5321 4.4 TCP-info is an address literal, optionally
            // after a name: the IP alone when there is one, never ip:port.
            peer: info
                .link
                .peer_ip
                .map_or_else(|| info.link.peer.clone(), |ip| ip.to_string()),
            peer_ip: info.link.peer_ip,
            protocol,
            id,
            // The `for` clause only names a single recipient (Bcc privacy).
            recipients: self.recipients.iter().map(|r| r.address.clone()).collect(),
            tls: tls.map(|t| (t.version.clone(), t.cipher.clone())),
        };
        if let Some(first) = self.local_names().first().cloned() {
            let header = trace.render(self.ctx.store.hostname(), now);
            let ctx = self.ctx.clone();
            self.local = Some(
                blocking("starting local delivery", move || {
                    ctx.store.begin_with_header(&first, &header, now)
                })
                .await?,
            );
        }
        if self.recipients.iter().any(|r| !r.local) {
            let Some(spool) = self.ctx.spool.clone() else {
                return Err(local_error("spooling", &"no spool"));
            };
            // A relaying hop adds Received: only; Return-Path is for the
            // final delivery (RFC 5321 4.4).
            let received = trace.render_received(self.ctx.store.hostname(), now);
            self.remote = Some(
                blocking("starting the spool file", move || {
                    let mut w = spool.begin()?;
                    w.write_all(&received)?;
                    Ok::<_, spool::SpoolError>(w)
                })
                .await?,
            );
        }
        Ok(())
    }

    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        self.hops.feed(&chunk);
        let local = self.local.take();
        let remote = self.remote.take();
        let (local, remote) = blocking("writing the message", move || {
            let mut local = local;
            let mut remote = remote;
            if let Some(w) = &mut local {
                w.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            if let Some(w) = &mut remote {
                w.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((local, remote))
        })
        .await?;
        self.local = local;
        self.remote = remote;
        Ok(())
    }

    async fn data_end(&mut self, info: &SessionInfo) -> Result<String, Reply> {
        if self.hops.count > self.ctx.max_hops {
            self.abort().await;
            // RFC 5321 6.3 / RFC 3463 X.4.6: routing loop detected.
            return Err(Reply::new(
                ReplyCode::TRANSACTION_FAILED,
                EnhancedCode::new(5, 4, 6),
                format!(
                    "Too many Received: fields ({}), mail loop?",
                    self.hops.count
                ),
            ));
        }
        let now = unix_now();
        let mut queued = None;
        if let (Some(writer), Some(spool)) = (self.remote.take(), self.ctx.spool.clone()) {
            let envelope = NewEnvelope {
                sender: self.reverse_path.clone(),
                arrived: now,
                peer: info.link.peer.clone(),
                helo: info.helo.clone(),
                envid: self.params.envid.clone(),
                ret: self.params.ret.map(|r| match r {
                    smtplink_engine::Ret::Full => spool::Ret::Full,
                    smtplink_engine::Ret::Hdrs => spool::Ret::Hdrs,
                }),
                is_bounce: self.reverse_path.is_empty(),
                recipients: self
                    .recipients
                    .iter()
                    .filter(|r| !r.local)
                    .map(|r| NewRecipient {
                        address: r.address.clone(),
                        orcpt: r.params.orcpt.as_ref().map(|(t, a)| format!("{t};{a}")),
                        notify: notify_to_record(&r.params.notify),
                        next_hop: Some(r.next_hop.clone()),
                    })
                    .collect(),
            };
            let id = blocking("queueing the message", move || writer.commit(envelope)).await?;
            queued = Some((spool, id));
        }
        if let Some(writer) = self.local.take() {
            let locals = self.local_names();
            let stored = blocking("storing the message", move || writer.commit(&locals)).await;
            if let Err(reply) = stored {
                if let Some((spool, id)) = queued {
                    // Not acknowledged: take the relayed copy back too.
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(Some(lock)) = spool.try_lock(&id) {
                            let _ = lock.remove();
                        }
                    })
                    .await;
                }
                return Err(reply);
            }
        }
        let count = self.recipients.len();
        self.recipients.clear();
        self.hops = HopCounter::default();
        Ok(match queued {
            Some((_, id)) => {
                info!(session = %info.id, queue_id = %id.as_str(), recipients = count, "queued");
                self.ctx.wake.notify_one();
                format!("Queued as {}", id.as_str())
            }
            None => {
                info!(session = %info.id, recipients = count, "stored");
                "Message stored".to_string()
            }
        })
    }

    async fn abort(&mut self) {
        let local = self.local.take();
        let remote = self.remote.take();
        if local.is_some() || remote.is_some() {
            // Removing tmp files is blocking I/O too.
            let _ = tokio::task::spawn_blocking(move || drop((local, remote))).await;
        }
    }

    async fn reset(&mut self) {
        self.abort().await;
        self.clear();
        self.reverse_path.clear();
    }

    async fn turn_allowed(&mut self, _info: &SessionInfo) -> bool {
        self.ctx.allow_turn && self.worker.is_some()
    }

    async fn turned(&mut self, info: &SessionInfo, link: Link) {
        if let Some(worker) = &self.worker {
            let stats = worker.deliver_held(link).await;
            info!(session = %info.id, ?stats, "held mail sent after TURN");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_spelling_of_postmaster_is_one_mailbox() {
        let parse = |s: &str| ForwardPath::parse(s, false).unwrap();
        for p in [
            "<Postmaster>",
            "<POSTMASTER@MX.test>",
            "<\"postmaster\"@mx.test>",
            "<postmaster@mx.test>",
        ] {
            assert_eq!(
                local_mailbox(&parse(p), "MX.test"),
                "postmaster@mx.test",
                "{p}"
            );
        }
        assert_eq!(
            local_mailbox(&parse("<Bob@MX.test>"), "mx.test"),
            "Bob@MX.test"
        );
    }

    #[test]
    fn hop_counter_counts_received_fields_in_the_header_only() {
        let mut h = HopCounter::default();
        h.feed(b"Received: a\r\n\tfolded\r\nRECEIVED: b\r\nSubj");
        h.feed(b"ect: x\r\nreceived:c\r\n\r\nReceived: in the body\r\n");
        assert_eq!(h.count, 3);
    }
}
