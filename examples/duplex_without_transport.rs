//! The drivers need no [`Transport`](smtplink_transport::Transport): any
//! tokio `AsyncRead + AsyncWrite` stream that is `Send + Unpin` becomes a
//! [`Link`] with `Link::new(stream, info)`, and then the server driver
//! ([`serve_link`]) and the client driver ([`SmtpClient`]) run over it.
//!
//! Here the stream is an in-process [`tokio::io::duplex`] pair; it could as
//! well be a child process's stdin/stdout joined with `tokio::io::join`, a
//! TLS stream, or a socket some other library has already opened. A
//! Transport is only needed to reach a peer by endpoint URL (routes,
//! `--listen`, `--server`).
//!
//! The server's backend collects what it receives; the client sends two
//! messages (one with 8-bit content, one with lines starting with dots) and
//! prints the reply for each recipient.
//!
//! ```text
//! cargo run --example duplex_without_transport
//! ```

use std::error::Error;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use smtplink_driver::{
    serve_link, Backend, ClientSettings, ServerSettings, SessionHandler, SessionInfo, Shutdown,
    SmtpClient,
};
use smtplink_engine::{
    ClientConfig, Envelope, ForwardPath, MailParams, MessageError, RcptParams, Reply, ReversePath,
    ServerConfig,
};
use smtplink_transport::{async_trait, Link, LinkInfo};

/// One message as the server's backend received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The reverse path from MAIL FROM (empty for the null sender).
    pub from: String,
    /// The forward paths from RCPT TO, in order.
    pub to: Vec<String>,
    /// The message, un-dot-stuffed, exactly as the client's body.
    pub body: Vec<u8>,
}

/// What [`run`] saw.
#[derive(Debug)]
pub struct Report {
    /// The link as the server described it.
    pub server_link: LinkInfo,
    /// The bodies the client sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// The server's reply for each recipient: (message index, recipient,
    /// code, text).
    pub replies: Vec<(usize, String, u16, String)>,
    /// What the server's backend collected, in order.
    pub received: Vec<Received>,
}

/// A backend that keeps every message in memory.
#[derive(Clone, Default)]
struct Collect {
    messages: Arc<Mutex<Vec<Received>>>,
}

/// One session's message in progress.
struct CollectSession {
    messages: Arc<Mutex<Vec<Received>>>,
    current: Received,
}

#[async_trait]
impl Backend for Collect {
    async fn open(&self, _info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        Ok(Box::new(CollectSession {
            messages: self.messages.clone(),
            current: Received {
                from: String::new(),
                to: Vec::new(),
                body: Vec::new(),
            },
        }))
    }
}

#[async_trait]
impl SessionHandler for CollectSession {
    async fn mail(
        &mut self,
        _info: &SessionInfo,
        from: &ReversePath,
        _params: &MailParams,
    ) -> Result<(), Reply> {
        self.current.from = from.to_string();
        Ok(())
    }

    async fn rcpt(
        &mut self,
        _info: &SessionInfo,
        to: &ForwardPath,
        _params: &RcptParams,
    ) -> Result<(), Reply> {
        self.current.to.push(to.to_string());
        Ok(())
    }

    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        self.current.body.extend_from_slice(&chunk);
        Ok(())
    }

    async fn data_end(&mut self, _info: &SessionInfo) -> Result<String, Reply> {
        let message = std::mem::replace(
            &mut self.current,
            Received {
                from: String::new(),
                to: Vec::new(),
                body: Vec::new(),
            },
        );
        let mut messages = self.messages.lock().unwrap_or_else(PoisonError::into_inner);
        messages.push(message);
        Ok(format!("kept as message {}", messages.len()))
    }

    async fn abort(&mut self) {
        self.current.body.clear();
    }

    async fn reset(&mut self) {
        self.current.from.clear();
        self.current.to.clear();
        self.current.body.clear();
    }
}

/// Two messages: 8-bit text (sent with BODY=8BITMIME), and lines that start
/// with dots (dot-stuffed on the wire, restored by the server).
fn messages() -> Result<Vec<(Envelope, Vec<u8>)>, MessageError> {
    let eight_bit = "From: J\u{fc}rgen <juergen@example.org>\r\n\
Subject: 8-bit\r\n\
\r\n\
Gr\u{fc}\u{df}e, \u{e7}a va? \u{2014} na\u{ef}ve caf\u{e9} \u{1f4e8}\r\n";
    let dots = "From: dots@example.org\r\n\
Subject: dots\r\n\
\r\n\
.one dot\r\n\
..two dots\r\n\
.\r\n\
...\r\n\
the lone dot above does not end the message\r\n";
    Ok(vec![
        (
            Envelope::parse(
                "juergen@example.org",
                &["anna@example.net", "ben@example.net"],
            )?,
            eight_bit.as_bytes().to_vec(),
        ),
        (
            Envelope::parse("dots@example.org", &["carl@example.net"])?,
            dots.as_bytes().to_vec(),
        ),
    ])
}

/// Runs a server session and a client over one `tokio::io::duplex` pair.
pub async fn run() -> Result<Report, Box<dyn Error>> {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);

    // The whole "transport": a label for logs and Received: headers.
    let server_link = Link::new(server_end, LinkInfo::new("duplex", "in-process"));
    let client_link = Link::new(client_end, LinkInfo::new("duplex", "in-process"));
    let server_info = server_link.info().clone();

    let backend = Collect::default();
    let server = tokio::spawn(serve_link(
        server_link,
        Arc::new(ServerSettings {
            engine: ServerConfig {
                hostname: "server.test".into(),
                ..ServerConfig::default()
            },
            ..ServerSettings::default()
        }),
        Arc::new(backend.clone()),
        Shutdown::new(),
    ));

    let settings = ClientSettings {
        engine: ClientConfig {
            hello_name: "client.test".into(),
            ..ClientConfig::default()
        },
        ..ClientSettings::default()
    };
    let mut client = SmtpClient::handshake(client_link, settings).await?;
    let mut sent = Vec::new();
    let mut replies = Vec::new();
    for (index, (envelope, body)) in messages()?.into_iter().enumerate() {
        let report = client.send(envelope, &body).await?;
        for (rcpt, outcome) in &report.recipients {
            let reply = outcome.reply();
            replies.push((index, rcpt.to_string(), reply.code().get(), reply.text()));
        }
        sent.push(body);
    }
    client.quit().await?;
    let summary = server.await??;
    if summary.messages != sent.len() as u64 {
        return Err(format!(
            "the server accepted {} messages, {} were sent",
            summary.messages,
            sent.len()
        )
        .into());
    }

    let received = backend
        .messages
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(Report {
        server_link: server_info,
        sent,
        replies,
        received,
    })
}

#[allow(dead_code)] // unused when tests/examples.rs includes this file
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let report = run().await?;
    println!(
        "server saw a {} link from {}",
        report.server_link.kind, report.server_link.peer
    );
    for (index, rcpt, code, text) in &report.replies {
        println!("message {}: <{rcpt}>: {code} {text}", index + 1);
    }
    for (index, message) in report.received.iter().enumerate() {
        println!(
            "server kept message {} from <{}> for {:?}, {} bytes, identical to what was sent: {}",
            index + 1,
            message.from,
            message.to,
            message.body.len(),
            report.sent.get(index) == Some(&message.body)
        );
    }
    Ok(())
}
