//! The whole adapter (framing, link layer, packet layer, line task) over
//! the seeded link simulator, under tokio's paused clock: whatever the
//! line does — bit errors, dropped bytes, error bursts long enough to be a
//! cut — every byte written on a circuit arrives once, in order, unaltered.
//! Each case names its seed, so a failure replays exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use smtplink_mem::sim::{self, SimConfig, SimHandle};
use smtplink_x25::{Circuit, Line, LineConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes that show where they came from: a corrupted, lost, repeated or
/// reordered byte shows as a mismatch at a known offset.
fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ tag)
        .collect()
}

fn lines(config: SimConfig) -> (Line, Line, SimHandle) {
    let rate = config.baud.map(|baud| baud / 10);
    let (a, b, handle) = sim::pair(config);
    let mut config_a = LineConfig::new(Role::Dte);
    let mut config_b = LineConfig::new(Role::Dce);
    config_a.lapb.line_rate = rate;
    config_b.lapb.line_rate = rate;
    (
        Line::spawn(a, config_a, "a"),
        Line::spawn(b, config_b, "b"),
        handle,
    )
}

/// Writes `data` and then reads everything the other end sends until it
/// clears; returns what was read.
async fn exchange(mut circuit: Circuit, data: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) = tokio::io::split(&mut circuit);
    let write = async {
        for chunk in data.chunks(3000) {
            writer.write_all(chunk).await.unwrap();
        }
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        // Each side knows how much the other sends.
        while got.len() < data.len() {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    let ((), got) = tokio::join!(write, read);
    circuit.shutdown().await.unwrap();
    got
}

/// Two circuits, one called from each end, each carrying `size` bytes in
/// both directions at once.
async fn four_streams(config: SimConfig, size: usize) -> (SimHandle, Line) {
    let (a, b, handle) = lines(config);
    let mut incoming_a = a.listen("smtp");
    let mut incoming_b = b.listen("smtp");
    let (from_a, from_b) = tokio::join!(a.call("smtp"), b.call("smtp"));
    let (to_b, to_a) = tokio::join!(incoming_b.accept(), incoming_a.accept());
    let streams = [
        (from_a.unwrap(), pattern(1, size), pattern(2, size)),
        (to_b.unwrap(), pattern(2, size), pattern(1, size)),
        (to_a.unwrap(), pattern(3, size), pattern(4, size)),
        (from_b.unwrap(), pattern(4, size), pattern(3, size)),
    ];
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(circuit, send, expect)| {
            tokio::spawn(async move {
                let got = exchange(circuit, send).await;
                assert!(got == expect, "a stream arrived altered");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (handle, a)
}

const SIZE: usize = 40_000;

#[tokio::test(start_paused = true)]
async fn clean_line() {
    let (handle, a) = four_streams(SimConfig::default().seed(1).baud(9600), SIZE).await;
    assert_eq!(handle.a_to_b().flipped_bits, 0);
    assert_eq!(a.stats().lapb.i_frames_retransmitted, 0);
}

#[tokio::test(start_paused = true)]
async fn bit_error_rate_1e_5() {
    let config = SimConfig::default().seed(2).baud(9600).bit_error_rate(1e-5);
    let (handle, _) = four_streams(config, SIZE).await;
    assert!(handle.a_to_b().flipped_bits + handle.b_to_a().flipped_bits > 0);
}

#[tokio::test(start_paused = true)]
async fn bit_error_rate_1e_4() {
    let config = SimConfig::default().seed(3).baud(9600).bit_error_rate(1e-4);
    let (handle, a) = four_streams(config, SIZE).await;
    let flipped = handle.a_to_b().flipped_bits + handle.b_to_a().flipped_bits;
    assert!(flipped > 20, "{flipped} bits flipped");
    let stats = a.stats();
    assert!(
        stats.decode.dropped() > 0,
        "A caught no bad frame: {stats:?}"
    );
    assert!(stats.lapb.i_frames_retransmitted > 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_bytes() {
    let config = SimConfig::default().seed(4).baud(19_200).drop_rate(2e-4);
    let (handle, _) = four_streams(config, SIZE).await;
    assert!(handle.a_to_b().dropped + handle.b_to_a().dropped > 5);
}

/// Error bursts of 4000 bytes (over 4 s of line time at 9600 baud, all of
/// it garbage): the line is as good as cut, then comes back; the link
/// layer retransmits across the gap.
#[tokio::test(start_paused = true)]
async fn cut_and_recovery_mid_transfer() {
    let config = SimConfig::default().seed(5).baud(9600).bursts(2e-5, 4000);
    let (handle, _) = four_streams(config, SIZE).await;
    let bursts = handle.a_to_b().bursts + handle.b_to_a().bursts;
    assert!(bursts >= 1, "no outage happened; pick another seed");
}

/// A line whose stream ends takes its circuits with it: reads fail (not a
/// clean end of file) and new calls are refused.
#[tokio::test(start_paused = true)]
async fn a_lost_line_fails_its_circuits() {
    let (a, b, handle) = lines(SimConfig::default().seed(6).baud(9600));
    let mut incoming = b.listen("smtp");
    let mut circuit = a.call("smtp").await.unwrap();
    let mut far = incoming.accept().await.unwrap();
    circuit.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    far.read_exact(&mut got).await.unwrap();
    handle.cut();
    let mut buf = [0u8; 16];
    let err = far.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let why = a.ended().await;
    assert!(!why.is_empty());
    assert!(a.call("smtp").await.is_err());
}

/// A call for a service nobody listens to is refused, and the line stays
/// up for the next call.
#[tokio::test(start_paused = true)]
async fn calls_to_an_unknown_service_are_refused() {
    let (a, b, _) = lines(SimConfig::default().seed(7).baud(9600));
    let _incoming = b.listen("smtp");
    let err = a.call("uucp").await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(a.call("smtp").await.is_ok());
}

/// RFC 1090: the caller clears after the last reply; the other end reads
/// everything and then sees end of file.
#[tokio::test(start_paused = true)]
async fn an_orderly_clear_is_end_of_file_after_the_data() {
    let (a, b, _) = lines(SimConfig::default().seed(8).baud(9600));
    let mut incoming = b.listen("smtp");
    let mut circuit = a.call("smtp").await.unwrap();
    let mut far = incoming.accept().await.unwrap();
    let data = pattern(9, 20_000);
    circuit.write_all(&data).await.unwrap();
    circuit.shutdown().await.unwrap();
    drop(circuit);
    let mut got = Vec::new();
    far.read_to_end(&mut got).await.unwrap();
    assert!(got == data);
}

/// `drain` returns once everything written has crossed the line and been
/// acknowledged: what a stopping `serve` waits for, so its last 250 is not
/// lost (which would make the other end send the message again).
#[tokio::test(start_paused = true)]
async fn drain_waits_until_the_peer_has_everything() {
    let (a, b, handle) = lines(SimConfig::default().seed(9).baud(9600));
    let mut incoming = b.listen("smtp");
    let mut circuit = a.call("smtp").await.unwrap();
    let mut far = incoming.accept().await.unwrap();
    let data = pattern(5, 5000);
    circuit.write_all(&data).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 5000];
        far.read_exact(&mut got).await.unwrap();
        (got, far)
    });
    assert!(a.drain(Duration::from_secs(60)).await, "did not drain");
    // 5000 bytes at 960 bytes/s: the drain cannot end before they crossed.
    assert!(handle.a_to_b().delivered >= 5000, "{:?}", handle.a_to_b());
    let (got, _far) = reader.await.unwrap();
    assert!(got == data);
}

/// Both ends told `role=dte`: the link cannot come up, and the line says
/// why (a counter, and a warning in the log) instead of only timing out.
#[tokio::test(start_paused = true)]
async fn the_same_role_at_both_ends_is_noticed() {
    let (a, b, _) = sim::pair(SimConfig::default().seed(10).baud(9600));
    let a = Line::spawn(a, LineConfig::new(Role::Dte), "a");
    let b = Line::spawn(b, LineConfig::new(Role::Dte), "b");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(a.stats().lapb.same_role_frames > 0, "{:?}", a.stats());
    assert!(b.stats().lapb.same_role_frames > 0, "{:?}", b.stats());
}
