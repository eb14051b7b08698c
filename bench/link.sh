#!/usr/bin/env bash
# Goodput of SMTP mail over the simulated line, as a fraction of the line
# rate (8N1: baud/10 bytes per second), for the cases issue 5 names:
# 1 MiB and 100 x 4 KiB at 9600 baud with BER 0, 1e-5, 1e-4, and at
# 115200 baud with 300 ms one-way latency. Each run is one process on
# tokio's paused clock, so line times are exact; a seed repeats to within
# about 1% (the SMTP driver's select! picks among ready branches at random).
#
#   bash bench/link.sh [SEED] [EXTRA bench-link FLAGS...]
#
# Prints one markdown table row per case.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
shift || true
cargo build --quiet --release --bin smtplink
bin=${CARGO_TARGET_DIR:-target}/release/smtplink
echo "| line | mail | frame size at the end | retransmitted (A) | frame errors caught | line time | goodput |"
echo "|---|---|---|---|---|---|---|"
run() {
    local line=$1 mail=$2
    shift 2
    local out
    out=$("$bin" bench-link --seed "$seed" "$@" "${extra[@]}")
    local size retx errors secs goodput
    size=$(sed -n 's/^frame size .* at \([0-9]*\) bytes.*/\1/p' <<<"$out")
    retx=$(sed -n 's/^frames .*A sent [0-9]* (\([0-9]*\) retransmitted).*/\1/p' <<<"$out")
    errors=$(sed -n 's/^frame errors *caught: \([0-9]*\) at A, \([0-9]*\) at B/\1 + \2/p' <<<"$out")
    secs=$(sed -n 's/^line time *\(.*\)/\1/p' <<<"$out")
    goodput=$(sed -n 's/^goodput //p' <<<"$out")
    grep -q ", 0 corrupted, 0 missing" <<<"$out" || { echo "LOST OR CORRUPTED MAIL: $line $mail" >&2; echo "$out" >&2; exit 1; }
    echo "| $line | $mail | $size | $retx | $errors | $secs | $goodput |"
}
extra=("$@")
for ber in 0 1e-5 1e-4; do
    run "9600, BER $ber" "1 x 1 MiB" --baud 9600 --ber "$ber" --messages 1 --size 1048576
    run "9600, BER $ber" "100 x 4 KiB" --baud 9600 --ber "$ber" --messages 100 --size 4096
done
run "115200, 300 ms" "1 x 1 MiB" --baud 115200 --latency 300 --messages 1 --size 1048576
run "115200, 300 ms" "100 x 4 KiB, 32 sessions" --baud 115200 --latency 300 --messages 100 --size 4096 --sessions 32
