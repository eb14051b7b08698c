//! Hostile peers, from a review that tried to break the adapter: each test
//! is one attack that used to work, and checks that it no longer does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smtplink_x25::{
    FrameConfig, FrameEncoder, LapbFrame, Line, LineConfig, Modulus, Role, Unnumbered,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Modulo 128 packets, as `LineConfig::new` uses.
const GFI: u8 = 0x20;

fn xot(packet: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0];
    v.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    v.extend_from_slice(packet);
    v
}

fn header(lcn: u16, kind: u8) -> Vec<u8> {
    vec![GFI | ((lcn >> 8) as u8 & 0x0F), lcn as u8, kind]
}

/// CALL REQUEST with packet size and window facilities and the RFC 1090
/// protocol id + "smtp" in the call user data.
fn call(lcn: u16) -> Vec<u8> {
    let mut p = header(lcn, 0x0B);
    p.extend_from_slice(&[0x00, 6, 0x42, 11, 11, 0x43, 32, 32, 0xC0, 0xF7, 0, 0]);
    p.extend_from_slice(b"smtp");
    p
}

fn clear(lcn: u16) -> Vec<u8> {
    let mut p = header(lcn, 0x13);
    p.extend_from_slice(&[0, 0]);
    p
}

fn data(lcn: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = header(lcn, 0);
    p.push(0);
    p.extend_from_slice(payload);
    p
}

async fn drain(peer: &mut DuplexStream, wait: Duration) {
    let mut buf = [0u8; 65536];
    let end = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, peer.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// A peer that calls and clears on one channel until the circuit id's
/// generation wraps must not get two live handles with one id: the call
/// that would alias a handle still held is refused, and the stale handle
/// never reads the new call's data.
#[tokio::test]
async fn channel_reuse_never_aliases_a_held_circuit() {
    let (mut peer, stream) = tokio::io::duplex(1 << 20);
    let line = Line::spawn_xot(stream, LineConfig::new(Role::Dce), "victim");
    let mut incoming = line.listen("smtp");
    drain(&mut peer, Duration::from_millis(100)).await;
    let mut burst = xot(&header(0, 0xFF)); // RESTART CONFIRMATION
    for _ in 0..16 {
        burst.extend(xot(&call(1)));
        burst.extend(xot(&clear(1)));
    }
    burst.extend(xot(&call(1)));
    peer.write_all(&burst).await.unwrap();
    drain(&mut peer, Duration::from_millis(200)).await;
    let mut circuits = Vec::new();
    while let Ok(Some(c)) =
        tokio::time::timeout(Duration::from_millis(100), incoming.accept()).await
    {
        circuits.push(c);
    }
    let mut ids: Vec<u16> = circuits.iter().map(|c| c.circuit_id().0).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "two handles share an id");
    peer.write_all(&xot(&data(1, b"FOR THE 17TH CALL ONLY\r\n")))
        .await
        .unwrap();
    drain(&mut peer, Duration::from_millis(100)).await;
    let mut first = circuits.remove(0);
    let mut buf = [0u8; 64];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), first.read(&mut buf)).await
    {
        assert!(
            !String::from_utf8_lossy(&buf[..n]).contains("17TH"),
            "a stale handle read another call's data"
        );
    }
}

/// A peer that floods packets that each earn an answer (DATA on a channel
/// that is not open: CLEAR) and never reads: the answers waiting for it
/// stay bounded.
#[tokio::test]
async fn answers_to_a_peer_that_never_reads_stay_bounded() {
    let (mut peer, stream) = tokio::io::duplex(4096);
    let line = Line::spawn_xot(stream, LineConfig::new(Role::Dce), "victim");
    let _incoming = line.listen("smtp");
    peer.write_all(&xot(&header(0, 0xFF))).await.unwrap();
    let one = xot(&data(7, b""));
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(5), peer.write_all(&chunk))
            .await
            .expect("the line stopped reading")
            .unwrap();
    }
    let stats = line.stats();
    assert!(stats.frames_received > 100_000, "{stats:?}");
    assert!(
        stats.control_queued <= 2048,
        "{} answers queued",
        stats.control_queued
    );
}

/// The same on a framed line: a storm of SABME frames from a peer that
/// never reads earns UAs that stay bounded.
#[tokio::test]
async fn a_sabme_storm_from_a_peer_that_never_reads_stays_bounded() {
    let (mut peer, stream) = tokio::io::duplex(4096);
    let line = Line::spawn(stream, LineConfig::new(Role::Dce), "victim");
    let _incoming = line.listen("smtp");
    let mut encoder = FrameEncoder::new(FrameConfig::default());
    let sabme = LapbFrame::Unnumbered {
        kind: Unnumbered::Sabme,
        pf: true,
        info: Bytes::new(),
    };
    let mut chunk = BytesMut::new();
    for _ in 0..4096 {
        // The hostile peer plays the DTE: its commands carry address B.
        encoder
            .encode_into(&sabme.encode(0x01, Modulus::Mod128), &mut chunk)
            .unwrap();
    }
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(5), peer.write_all(&chunk))
            .await
            .expect("the line stopped reading")
            .unwrap();
    }
    let stats = line.stats();
    assert!(stats.frames_received > 100_000, "{stats:?}");
    assert!(
        stats.control_queued <= 2048,
        "{} answers queued",
        stats.control_queued
    );
}

/// XOT (RFC 1613) knows only version 0: anything else ends the line.
#[tokio::test]
async fn an_xot_header_with_another_version_ends_the_line() {
    let (mut peer, stream) = tokio::io::duplex(4096);
    let line = Line::spawn_xot(stream, LineConfig::new(Role::Dce), "victim");
    let _incoming = line.listen("smtp");
    peer.write_all(&[0, 1, 0, 3, GFI, 0, 0xFB]).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), line.ended())
        .await
        .unwrap();
    assert!(why.contains("XOT"), "{why}");
}
