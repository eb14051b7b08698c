//! Figures, not assertions: what a TLS handshake costs on a 9600-baud line
//! (the link simulator, under tokio's paused clock, so the time is the
//! line's, not the machine's). Run with
//! `cargo test -p smtplink-tls --test sim_9600 -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtplink_mem::sim::{pair, Direction, SimConfig};
use smtplink_tls::{write_self_signed, ClientTls, ServerTls, Trust};
use smtplink_transport::TlsAccept;

#[tokio::test(start_paused = true)]
#[ignore = "prints figures; run with --ignored --nocapture"]
async fn tls_handshake_at_9600_baud() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let pin = write_self_signed(&["localhost".into()], &cert, &key).unwrap();
    let server = ServerTls::load(&cert, &key).unwrap();
    let trust: Trust = pin.parse().unwrap();
    let client = ClientTls::new(&trust)
        .unwrap()
        .connector("localhost")
        .unwrap();
    let (a, b, handle) = pair(SimConfig::default().baud(9600));
    let start = tokio::time::Instant::now();
    let (c, s) = tokio::join!(client.connect(a), server.accept(b));
    let elapsed = start.elapsed();
    let (c, _s) = (c.unwrap(), s.unwrap());
    let up = handle.stats(Direction::AToB).delivered;
    let down = handle.stats(Direction::BToA).delivered;
    let tls = c.info().tls.clone().unwrap();
    println!(
        "TLS handshake at 9600 baud ({} {}, ECDSA P-256 self-signed): \
         client->server {up} bytes, server->client {down} bytes, {:.2} s of line time",
        tls.version,
        tls.cipher,
        elapsed.as_secs_f64()
    );
}
