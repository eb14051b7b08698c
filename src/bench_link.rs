//! `smtplink bench-link`: SMTP goodput over a simulated line, in one
//! process on tokio's paused clock, so a run takes seconds of CPU however
//! many hours of line time it measures, and the same seed gives the same
//! figures.
//!
//! Node A sends `--messages` messages of `--size` bytes to node B over
//! `--sessions` concurrent SMTP sessions. With `--x25` (the default) the
//! sessions are circuits of the X.25 adapter on one simulated line; with
//! `--raw` there is one session straight on the line, which shows what
//! noise does to bare SMTP. Node B checks every message against what was
//! sent; the last line printed is `goodput F`, the fraction of the line
//! rate (8N1: baud / 10 bytes per second) delivered as intact message
//! bytes.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use smtplink_driver::{
    serve_link, Backend, ClientSettings, ServerSettings, SessionHandler, SessionInfo, Shutdown,
    SmtpClient,
};
use smtplink_engine::{ClientConfig, Envelope, Reply, ServerConfig};
use smtplink_mem::sim::{self, SimConfig};
use smtplink_transport::Link;
use smtplink_x25::{Line, LineConfig, Role};

/// The flags of `bench-link`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Line rate in baud (8N1: baud / 10 bytes per second).
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Probability that each data bit is flipped.
    #[arg(long, default_value_t = 0.0)]
    pub ber: f64,
    /// One-way latency in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency: u64,
    /// Messages to send.
    #[arg(long, default_value_t = 10)]
    pub messages: usize,
    /// Bytes per message (headers and body, CRLF lines).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub size: usize,
    /// Concurrent SMTP sessions (circuits) for the messages.
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Seed for the line's faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Link-layer information field: a size in bytes, or `auto` to follow
    /// the error rate.
    #[arg(long, default_value = "auto")]
    pub frame: String,
    /// Link-layer window (frames outstanding) [default: 48, modulo 128].
    #[arg(long)]
    pub window: Option<u8>,
    /// SMTP over the X.25 adapter (the default).
    #[arg(long, conflicts_with = "raw")]
    pub x25: bool,
    /// One SMTP session straight on the line, no adapter.
    #[arg(long)]
    pub raw: bool,
}

/// What node B received, by message number.
#[derive(Default)]
struct Received {
    bodies: HashMap<usize, Vec<u8>>,
    last_at: Option<tokio::time::Instant>,
}

#[derive(Clone)]
struct Sink {
    received: Arc<Mutex<Received>>,
}

struct SinkSession {
    received: Arc<Mutex<Received>>,
    body: Vec<u8>,
}

#[async_trait]
impl Backend for Sink {
    async fn open(&self, _: &SessionInfo) -> Result<Box<dyn SessionHandler>, Reply> {
        Ok(Box::new(SinkSession {
            received: self.received.clone(),
            body: Vec::new(),
        }))
    }
}

#[async_trait]
impl SessionHandler for SinkSession {
    async fn data_start(&mut self, _: &SessionInfo) -> Result<(), Reply> {
        self.body.clear();
        Ok(())
    }

    async fn data_chunk(&mut self, chunk: Bytes) -> Result<(), Reply> {
        self.body.extend_from_slice(&chunk);
        Ok(())
    }

    async fn data_end(&mut self, _: &SessionInfo) -> Result<String, Reply> {
        let body = std::mem::take(&mut self.body);
        let number = message_number(&body);
        let mut received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(number) = number {
            received.bodies.insert(number, body);
        }
        received.last_at = Some(tokio::time::Instant::now());
        Ok("queued".into())
    }
}

/// The message with number `i`: `size` bytes of CRLF text lines that say
/// who they are.
pub(crate) fn bench_message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: a@node-a.test\r\nTo: b@node-b.test\r\nSubject: bench {i}\r\nMessage-ID: <bench-{i}@node-a.test>\r\n\r\n"
    )
    .into_bytes();
    let mut line = 0usize;
    while m.len() + 2 < size {
        line += 1;
        let text = format!("message {i} line {line}: the quick brown fox jumps over the lazy dog");
        let room = size - m.len() - 2;
        m.extend_from_slice(&text.as_bytes()[..text.len().min(room)]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn message_number(body: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(body.get(..200.min(body.len()))?).ok()?;
    let rest = text.split("Subject: bench ").nth(1)?;
    rest.split("\r\n").next()?.parse().ok()
}

/// Runs the benchmark and prints the table.
pub(crate) fn run(args: BenchArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&args.ber) || args.baud == 0 || args.sessions == 0 {
        eprintln!("smtplink bench-link: need --baud > 0, --sessions > 0 and 0 <= --ber <= 1");
        return ExitCode::from(crate::EX_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtplink bench-link: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("smtplink bench-link: {e}");
            ExitCode::from(crate::EX_CONFIG)
        }
    }
}

async fn bench(args: BenchArgs) -> Result<bool, String> {
    let sim_config = SimConfig::default()
        .seed(args.seed)
        .baud(args.baud)
        .latency(Duration::from_millis(args.latency))
        .bit_error_rate(args.ber);
    let (a, b, handle) = sim::pair(sim_config);
    let received = Arc::new(Mutex::new(Received::default()));
    let sink: Arc<dyn Backend> = Arc::new(Sink {
        received: received.clone(),
    });
    let server_settings = Arc::new(ServerSettings {
        engine: ServerConfig {
            hostname: "node-b.test".into(),
            ..ServerConfig::default()
        },
        // Slow lines: the SMTP timers must not fire before the line can
        // carry a block.
        command_timeout: Duration::from_secs(3600),
        data_timeout: Duration::from_secs(3600),
        ..ServerSettings::default()
    });
    let client_settings = ClientSettings {
        engine: ClientConfig {
            hello_name: "node-a.test".into(),
            ..ClientConfig::default()
        },
        ..ClientSettings::default()
    };
    let messages: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..args.messages)
            .map(|i| bench_message(i, args.size))
            .collect(),
    );
    let total_bytes: usize = messages.iter().map(Vec::len).sum();
    let start = tokio::time::Instant::now();
    let mut lines = None;
    let mut client_errors = Vec::new();
    if args.raw {
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve_link(b, server_settings, sink, shutdown));
        if let Err(e) = send_batch(a, client_settings, messages.clone(), 0, 1).await {
            client_errors.push(e);
        }
        let _ = server.await;
    } else {
        let mut config_a = LineConfig::new(Role::Dte);
        let mut config_b = LineConfig::new(Role::Dce);
        for config in [&mut config_a, &mut config_b] {
            config.lapb.line_rate = Some(args.baud / 10);
            if args.frame != "auto" {
                let size: usize = args
                    .frame
                    .parse()
                    .map_err(|_| format!("--frame must be auto or a size, not {:?}", args.frame))?;
                config.lapb.adaptive = false;
                config.lapb.max_info = size;
                config.lapb.min_info = size;
            }
            if let Some(window) = args.window {
                config.lapb.window = window;
            }
        }
        let line_a = Line::spawn(a, config_a, "node-a");
        let line_b = Line::spawn(b, config_b, "node-b");
        let mut incoming = line_b.listen("smtp");
        let server = tokio::spawn(async move {
            let mut sessions = Vec::new();
            while let Some(circuit) = incoming.accept().await {
                let link = circuit.into_link(1);
                sessions.push(tokio::spawn(serve_link(
                    link,
                    server_settings.clone(),
                    sink.clone(),
                    Shutdown::new(),
                )));
            }
        });
        let mut senders = Vec::new();
        for session in 0..args.sessions.min(args.messages.max(1)) {
            let line = line_a.clone();
            let settings = client_settings.clone();
            let messages = messages.clone();
            let sessions = args.sessions;
            senders.push(tokio::spawn(async move {
                let circuit = line.call("smtp").await.map_err(|e| e.to_string())?;
                send_batch(circuit.into_link(1), settings, messages, session, sessions).await
            }));
        }
        for sender in senders {
            match sender.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => client_errors.push(e),
                Err(e) => client_errors.push(e.to_string()),
            }
        }
        lines = Some((line_a, line_b));
        server.abort();
    }
    let received = received.lock().unwrap_or_else(PoisonError::into_inner);
    let end = received.last_at.unwrap_or(start);
    let seconds = end.duration_since(start).as_secs_f64();
    let intact = messages
        .iter()
        .enumerate()
        .filter(|(i, m)| received.bodies.get(i) == Some(m))
        .count();
    let corrupted = received.bodies.len() - intact.min(received.bodies.len());
    let intact_bytes: usize = messages
        .iter()
        .enumerate()
        .filter(|(i, m)| received.bodies.get(i) == Some(m))
        .map(|(_, m)| m.len())
        .sum();
    let line_rate = f64::from(args.baud) / 10.0;
    let goodput = if seconds > 0.0 {
        intact_bytes as f64 / (seconds * line_rate)
    } else {
        0.0
    };
    println!(
        "mode           {}",
        if args.raw {
            "raw SMTP on the line"
        } else {
            "SMTP over the X.25 adapter"
        }
    );
    println!(
        "line           {} baud, ber {:e}, latency {} ms, seed {}",
        args.baud, args.ber, args.latency, args.seed
    );
    println!(
        "messages       {} sent, {intact} intact, {corrupted} corrupted, {} missing",
        messages.len(),
        messages.len() - received.bodies.len().min(messages.len())
    );
    println!("bytes          {total_bytes} sent, {intact_bytes} delivered intact");
    println!("line time      {seconds:.1} s");
    let a_to_b = handle.a_to_b();
    let b_to_a = handle.b_to_a();
    println!(
        "line bytes     A->B {} (bits flipped {}), B->A {} (bits flipped {})",
        a_to_b.offered, a_to_b.flipped_bits, b_to_a.offered, b_to_a.flipped_bits
    );
    if let Some((line_a, line_b)) = &lines {
        let (sa, sb) = (line_a.stats(), line_b.stats());
        println!(
            "frames         A sent {} ({} retransmitted), B sent {} ({} retransmitted)",
            sa.frames_sent,
            sa.lapb.i_frames_retransmitted,
            sb.frames_sent,
            sb.lapb.i_frames_retransmitted
        );
        println!(
            "I-frames       A sent {} ({} information bytes), B sent {} ({} information bytes)",
            sa.lapb.i_frames_sent,
            sa.lapb.info_bytes_sent,
            sb.lapb.i_frames_sent,
            sb.lapb.info_bytes_sent
        );
        println!(
            "frame errors   caught: {} at A, {} at B",
            sa.decode.dropped(),
            sb.decode.dropped()
        );
        println!(
            "frame size     A ends at {} bytes of information per frame",
            sa.lapb.info_size
        );
    }
    for e in &client_errors {
        println!("client error   {e}");
    }
    println!("goodput {goodput:.3}");
    Ok(corrupted == 0 && intact == messages.len())
}

/// Sends messages `first`, `first + step`, … over one session.
async fn send_batch(
    link: Link,
    settings: ClientSettings,
    messages: Arc<Vec<Vec<u8>>>,
    first: usize,
    step: usize,
) -> Result<(), String> {
    let mut client = SmtpClient::handshake(link, settings)
        .await
        .map_err(|e| e.to_string())?;
    for body in messages.iter().skip(first).step_by(step.max(1)) {
        let envelope =
            Envelope::parse("a@node-a.test", &["b@node-b.test"]).map_err(|e| e.to_string())?;
        let report = client
            .send(envelope, body)
            .await
            .map_err(|e| e.to_string())?;
        if !report.all_accepted() {
            return Err(format!("refused: {:?}", report.recipients));
        }
    }
    client.quit().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_size_asked_and_say_their_number() {
        for size in [200, 4096, 10_000] {
            let m = bench_message(7, size);
            assert_eq!(m.len(), size);
            assert!(m.ends_with(b"\r\n"));
            assert_eq!(message_number(&m), Some(7));
        }
    }
}
