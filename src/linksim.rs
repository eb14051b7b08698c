//! `smtplink linksim`: the link simulator as a proxy between two real
//! endpoints, so a setup can be tried on a slow, noisy line before anyone
//! buys the radio.
//!
//! Bytes are moved raw: a `serial://` device is opened without smtplink's
//! line handshake (the programs at both ends speak it through the proxy),
//! and nothing is parsed. Side A waits for its party (a `tcp://` URL is
//! listened on); side B is where the bytes go (a `tcp://` URL is connected
//! to once A's party has arrived). When both directions have ended the
//! counters are printed and the proxy waits for the next party on A.

use std::process::ExitCode;
use std::time::Duration;

use smtplink_mem::sim::{self, SimConfig, SimHandle};
use smtplink_serial::SerialSettings;
use smtplink_transport::{Endpoint, LinkStream};
use tokio::net::{TcpListener, TcpStream};

use crate::EX_CONFIG;

/// The impairments given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Impairments {
    /// Line rate in baud, 10 bits per byte (8N1); 0 is unlimited.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// One-way latency in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency: u64,
    /// Probability that each data bit is flipped, e.g. 1e-5.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub ber: f64,
    /// Probability that each byte is lost.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub drop: f64,
    /// Error bursts: RATE:LENGTH, a burst of LENGTH garbled bytes starts at
    /// each byte with probability RATE (e.g. 1e-5:32).
    #[arg(long, value_name = "RATE:LEN")]
    pub burst: Option<String>,
    /// Seed for every fault; the same seed and bytes give the same faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Impairments {
    /// The simulator configuration, or what is wrong with the flags.
    pub(crate) fn sim_config(&self) -> Result<SimConfig, String> {
        for (name, rate) in [("--ber", self.ber), ("--drop", self.drop)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, not {rate}"));
            }
        }
        let mut config = SimConfig::default()
            .seed(self.seed)
            .baud(self.baud)
            .latency(Duration::from_millis(self.latency))
            .bit_error_rate(self.ber)
            .drop_rate(self.drop);
        if let Some(burst) = &self.burst {
            let (rate, length) = burst
                .split_once(':')
                .and_then(|(rate, length)| Some((rate.parse::<f64>().ok()?, length.parse().ok()?)))
                .filter(|(rate, _)| (0.0..=1.0).contains(rate))
                .ok_or_else(|| format!("--burst wants RATE:LENGTH, e.g. 1e-5:32, not {burst:?}"))?;
            config = config.bursts(rate, length);
        }
        Ok(config)
    }
}

/// One side of the proxy.
enum Side {
    /// Wait for a TCP connection here.
    Listen(TcpListener),
    /// Connect here for each party.
    Connect(String),
    /// Open this device raw for each party.
    Serial(Box<SerialSettings>),
}

impl Side {
    async fn new(url: &str, listens: bool) -> Result<Side, String> {
        let endpoint = Endpoint::parse(url).map_err(|e| e.to_string())?;
        match endpoint.scheme() {
            "tcp" => {
                let host = endpoint.host().unwrap_or("127.0.0.1");
                let port = endpoint
                    .port()
                    .ok_or_else(|| format!("{url}: a tcp:// URL needs a port"))?;
                let address = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                if listens {
                    let listener = TcpListener::bind(&address)
                        .await
                        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
                    Ok(Side::Listen(listener))
                } else {
                    Ok(Side::Connect(address))
                }
            }
            "serial" => {
                let settings =
                    SerialSettings::from_endpoint(&endpoint).map_err(|e| e.to_string())?;
                Ok(Side::Serial(Box::new(settings)))
            }
            other => Err(format!(
                "{url}: linksim moves raw bytes between tcp:// and serial:// endpoints, not {other}://"
            )),
        }
    }

    async fn open(&self) -> Result<Box<dyn LinkStream>, String> {
        match self {
            Side::Listen(listener) => {
                let (stream, peer) = listener
                    .accept()
                    .await
                    .map_err(|e| format!("accept: {e}"))?;
                tracing::info!(%peer, "linksim: party arrived on side A");
                Ok(Box::new(stream))
            }
            Side::Connect(address) => {
                let stream = TcpStream::connect(address)
                    .await
                    .map_err(|e| format!("cannot connect to {address}: {e}"))?;
                Ok(Box::new(stream))
            }
            Side::Serial(settings) => {
                let port = settings.open().map_err(|e| e.to_string())?;
                Ok(Box::new(port))
            }
        }
    }
}

/// Runs the proxy until Ctrl-C, or once with `once`.
pub(crate) async fn run(a: String, b: String, impairments: Impairments, once: bool) -> ExitCode {
    let config = match impairments.sim_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("smtplink linksim: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let (side_a, side_b) = match (Side::new(&a, true).await, Side::new(&b, false).await) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("smtplink linksim: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Side::Listen(listener) = &side_a {
        if let Ok(address) = listener.local_addr() {
            // Scripts wait for this line before they connect.
            eprintln!("smtplink linksim: listening on tcp://{address}");
        }
    }
    loop {
        let round = async {
            let x = side_a.open().await?;
            let y = side_b.open().await?;
            let (handle, proxy) = sim::proxy(x, y, config.clone());
            let result = proxy.await;
            Ok::<_, String>((handle, result))
        };
        tokio::select! {
            outcome = round => match outcome {
                Ok((handle, result)) => {
                    report(&handle, result.err());
                }
                Err(e) => {
                    eprintln!("smtplink linksim: {e}");
                    if once { return ExitCode::FAILURE; }
                    // A busy serial port or a refused connection: try again
                    // shortly rather than spin.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
        if once {
            return ExitCode::SUCCESS;
        }
    }
}

fn report(handle: &SimHandle, error: Option<std::io::Error>) {
    for (name, stats) in [("A->B", handle.a_to_b()), ("B->A", handle.b_to_a())] {
        eprintln!(
            "smtplink linksim: {name} offered {} delivered {} flipped-bits {} dropped {} bursts {}",
            stats.offered, stats.delivered, stats.flipped_bits, stats.dropped, stats.bursts
        );
    }
    if let Some(e) = error {
        eprintln!("smtplink linksim: the line ended with: {e}");
    }
}
