//! A quinn-style `Pair`: a `ClientSession` and a `ServerSession` joined by
//! in-memory byte queues, with a scripted server application and a virtual
//! clock. No sockets, no threads, no real time: every run is replayable.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use smtplink_engine::{
    ClientConfig, ClientEvent, ClientSession, ClientTimeout, CredentialLookup, ForwardPath,
    MailParams, Reply, ReversePath, ScramCredential, ServerConfig, ServerEvent, ServerSession,
    ServerTimeout,
};

/// The server application's answer to a decision event.
#[derive(Debug, Clone)]
pub enum Decision {
    Accept,
    Reject(Reply),
    /// Leave the decision pending (a stalled application).
    Hold,
}

/// A message the server application stored (accepted at end of data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub from: ReversePath,
    pub params: MailParams,
    pub rcpts: Vec<ForwardPath>,
    pub body: Vec<u8>,
    pub size: u64,
}

/// One delivery of bytes to the server: whether the server was reading
/// message data when it arrived, and the bytes.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub in_data: bool,
    pub bytes: Bytes,
}

type Script = Box<dyn FnMut(&ServerEvent) -> Decision>;

pub struct Pair {
    pub client: ClientSession,
    pub server: ServerSession,
    script: Script,
    /// Most bytes handed over in one delivery (`usize::MAX`: whole writes).
    pub segment: usize,
    to_server: VecDeque<Bytes>,
    to_client: VecDeque<Bytes>,
    pub server_deliveries: Vec<Delivery>,
    pub client_events: Vec<ClientEvent>,
    /// Server events other than DataChunk.
    pub server_events: Vec<ServerEvent>,
    pub stored: Vec<Stored>,
    current: Option<Stored>,
    /// Virtual time since the start.
    pub now: Duration,
    /// The server application's users, for AUTH lookups (others get a decoy).
    pub users: Vec<(String, ScramCredential)>,
}

/// The SCRAM server nonce the pair's server application uses.
pub const SERVER_NONCE: &str = "pairServerNonce0123";

/// RFC 5321 4.5.3.2 client timeouts.
pub fn client_timeout(kind: ClientTimeout) -> Duration {
    let min = |m: u64| Duration::from_secs(60 * m);
    match kind {
        ClientTimeout::Greeting => min(5),         // 4.5.3.2.1
        ClientTimeout::Mail => min(5),             // 4.5.3.2.2
        ClientTimeout::Rcpt => min(5),             // 4.5.3.2.3
        ClientTimeout::DataInit => min(2),         // 4.5.3.2.4
        ClientTimeout::DataTermination => min(10), // 4.5.3.2.6
    }
}

/// RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for the next
/// command or the next piece of data.
pub fn server_timeout(_kind: ServerTimeout) -> Duration {
    Duration::from_secs(5 * 60)
}

impl Pair {
    pub fn new(
        client: ClientConfig,
        server: ServerConfig,
        script: impl FnMut(&ServerEvent) -> Decision + 'static,
    ) -> Self {
        Pair {
            client: ClientSession::new(client),
            server: ServerSession::new(server),
            script: Box::new(script),
            segment: usize::MAX,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            server_deliveries: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            stored: Vec::new(),
            current: None,
            now: Duration::ZERO,
            users: Vec::new(),
        }
    }

    /// A pair whose server accepts everything.
    pub fn accepting(client: ClientConfig, server: ServerConfig) -> Self {
        Self::new(client, server, |_| Decision::Accept)
    }

    fn on_server_event(&mut self, e: ServerEvent) {
        let decision = match &e {
            ServerEvent::MailFrom { .. }
            | ServerEvent::RcptTo { .. }
            | ServerEvent::DataEnd { .. } => Some((self.script)(&e)),
            _ => None,
        };
        let accepted = matches!(decision, Some(Decision::Accept));
        match &e {
            ServerEvent::MailFrom { from, params } if accepted => {
                self.current = Some(Stored {
                    from: from.clone(),
                    params: params.clone(),
                    rcpts: Vec::new(),
                    body: Vec::new(),
                    size: 0,
                });
            }
            ServerEvent::RcptTo { to, .. } if accepted => {
                self.current
                    .as_mut()
                    .expect("RCPT accepted inside a transaction")
                    .rcpts
                    .push(to.clone());
            }
            ServerEvent::DataChunk(b) => {
                self.current
                    .as_mut()
                    .expect("data inside a transaction")
                    .body
                    .extend_from_slice(b);
            }
            ServerEvent::DataEnd { size } => {
                let mut m = self.current.take().expect("DataEnd inside a transaction");
                m.size = *size;
                if accepted {
                    self.stored.push(m);
                }
            }
            ServerEvent::DataAborted { .. } | ServerEvent::TransactionReset => {
                self.current = None;
            }
            _ => {}
        }
        if let ServerEvent::AuthLookup { username, .. } = &e {
            let lookup = match self.users.iter().find(|(u, _)| u == username) {
                Some((_, c)) => CredentialLookup::Found(c.clone()),
                None => CredentialLookup::NoSuchUser {
                    decoy_salt: b"decoy salt".to_vec(),
                    iterations: 4096,
                },
            };
            self.server
                .answer_auth_lookup(lookup, SERVER_NONCE)
                .expect("answer lookup");
        }
        if !matches!(e, ServerEvent::DataChunk(_)) {
            self.server_events.push(e);
        }
        match decision {
            Some(Decision::Accept) => self.server.accept().expect("accept"),
            Some(Decision::Reject(r)) => self.server.reject(r).expect("reject"),
            Some(Decision::Hold) | None => {}
        }
    }

    /// One round: both sides' outputs are collected, then at most one
    /// segment is delivered each way. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        while let Some(e) = self.server.poll_event() {
            moved = true;
            self.on_server_event(e);
        }
        while let Some(b) = self.server.poll_transmit() {
            moved = true;
            self.to_client.push_back(b);
        }
        while let Some(e) = self.client.poll_event() {
            moved = true;
            self.client_events.push(e);
        }
        while let Some(b) = self.client.poll_transmit() {
            moved = true;
            self.to_server.push_back(b);
        }
        if let Some(b) = take_segment(&mut self.to_server, self.segment) {
            moved = true;
            self.server_deliveries.push(Delivery {
                in_data: self.server.is_receiving_data(),
                bytes: b.clone(),
            });
            self.server.handle_input(&b);
        }
        if let Some(b) = take_segment(&mut self.to_client, self.segment) {
            moved = true;
            self.client.handle_input(&b);
        }
        moved
    }

    /// Runs until nothing moves.
    pub fn drive(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    /// Runs until `until` holds (or nothing moves); returns whether it held.
    pub fn drive_until(&mut self, mut until: impl FnMut(&Pair) -> bool) -> bool {
        for _ in 0..1_000_000 {
            if until(self) {
                return true;
            }
            if !self.step() {
                return until(self);
            }
        }
        panic!("the pair never went quiet");
    }

    /// Lets `d` of virtual time pass with the link quiet; fires the timers
    /// (RFC 5321 4.5.3.2) that expire, then drives on.
    pub fn idle_for(&mut self, d: Duration) {
        self.drive();
        self.now += d;
        if let Some(kind) = self.client.timeout_kind() {
            if d >= client_timeout(kind) {
                self.client.handle_timeout();
            }
        }
        // The server's input timer runs only while it waits for the client,
        // not while its own application is deciding.
        if !self.server.is_closed()
            && !self.server.wants_decision()
            && d >= server_timeout(self.server.timeout_kind())
        {
            self.server.handle_timeout();
        }
        self.drive();
    }

    /// Drives until the client reports Ready; returns its capabilities.
    pub fn ready(&mut self) -> smtplink_engine::Capabilities {
        self.drive();
        self.client_events
            .iter()
            .find_map(|e| match e {
                ClientEvent::Ready(c) => Some(c.clone()),
                _ => None,
            })
            .expect("the client became ready")
    }

    /// The transaction reports the client produced, in order.
    pub fn reports(&self) -> Vec<smtplink_engine::TransactionReport> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Sent(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Most command lines the server received in one delivery while not
    /// reading message data.
    pub fn max_commands_per_delivery(&self) -> usize {
        self.server_deliveries
            .iter()
            .filter(|d| !d.in_data)
            .map(|d| d.bytes.windows(2).filter(|w| w == b"\r\n").count())
            .max()
            .unwrap_or(0)
    }

    /// Ends the session with QUIT and checks both sides closed.
    pub fn quit(&mut self) {
        self.client.quit();
        self.drive();
        assert!(self.client.is_closed(), "client closed after QUIT");
        assert!(self.server.is_closed(), "server closed after QUIT");
        assert!(self.client.error().is_none(), "{:?}", self.client.error());
    }
}

fn take_segment(queue: &mut VecDeque<Bytes>, segment: usize) -> Option<Bytes> {
    let mut front = queue.pop_front()?;
    if front.len() > segment {
        let rest = front.split_off(segment);
        queue.push_front(rest);
    }
    Some(front)
}
