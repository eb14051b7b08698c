//! Our SMTP client sends a message to our SMTP server over an in-memory
//! pipe: no network, no files. The smallest whole use of the stack.
//!
//!     cargo run --example pipe_roundtrip

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_driver::{
    serve_link, Backend, ClientSettings, ServerSettings, SessionHandler, SessionInfo, Shutdown,
    SmtpClient,
};
use smtplink_engine::{Envelope, Reply};

/// Prints every message it receives.
struct PrintBackend;

struct PrintSession {
    body: Vec<u8>,
}

#[async_trait]
impl Backend for PrintBackend {
    async fn open(&self, info: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        println!("server: session {} from {}", info.id, info.link.peer);
        Ok(Box::new(PrintSession { body: Vec::new() }))
    }
}

#[async_trait]
impl SessionHandler for PrintSession {
    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        self.body.extend_from_slice(&chunk);
        Ok(())
    }

    async fn data_end(&mut self, _info: &SessionInfo) -> Result<String, Reply> {
        println!(
            "server: received {} bytes:\n{}",
            self.body.len(),
            String::from_utf8_lossy(&self.body)
        );
        self.body.clear();
        Ok("printed".into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client_link, server_link) = smtplink_mem::pipe(64 * 1024);
    let server = tokio::spawn(serve_link(
        server_link,
        Arc::new(ServerSettings::default()),
        Arc::new(PrintBackend),
        Shutdown::new(),
    ));

    let mut client = SmtpClient::handshake(client_link, ClientSettings::default()).await?;
    let envelope = Envelope::parse("alice@example.org", &["bob@example.net"])?;
    let report = client
        .send(
            envelope,
            b"Subject: hello\r\n\r\n.a line that starts with a dot\r\n",
        )
        .await?;
    for (rcpt, outcome) in &report.recipients {
        println!("client: <{rcpt}>: {}", outcome.reply());
    }
    client.quit().await?;
    server.await??;
    Ok(())
}
