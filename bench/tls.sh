#!/usr/bin/env bash
# Loopback throughput with and without STARTTLS. Postfix's smtp-source has
# no TLS, so this drives `smtplink send` (one process, one connection, one
# message each) in a loop against one `smtplink serve` with a gen-cert
# pair: first with --tls none, then with --tls required (a full TLS 1.3
# handshake per message, pinned certificate), then against a tls+tcp
# (implicit TLS) listener. Process start-up dominates both figures, so the
# difference is the per-connection cost of TLS. A benchmark, not a test.
#
#   bash bench/tls.sh [MESSAGES] [PARALLEL]     defaults: 500 4
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-500}
parallel=${2:-4}

cargo build --release --quiet
bin=./target/release/smtplink
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }

pin=$("$bin" gen-cert localhost 127.0.0.1 --cert "$work/cert.pem" --key "$work/key.pem")
port=$(free_port)
tport=$(free_port)
RUST_LOG=warn "$bin" serve --listen "tcp://127.0.0.1:$port" --listen "tls+tcp://127.0.0.1:$tport" \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
  --maildir "$work/maildir" --hostname bench.test &
pids+=($!)
wait_port "$port"
wait_port "$tport"
head -c 5120 /dev/zero | tr '\0' 'x' | fold -w 76 > "$work/body"
printf 'Subject: bench\n\n' | cat - "$work/body" > "$work/msg.eml"

run() { # label server tls-args...
  local label=$1 server=$2; shift 2
  local start end
  start=$(date +%s.%N)
  seq "$messages" | xargs -P "$parallel" -I{} "$bin" send --server "$server" "$@" \
    --from a@example.org --to b@example.net "$work/msg.eml" >/dev/null
  end=$(date +%s.%N)
  python3 -c "import sys; n=$messages; t=$end-$start; print(f'$label: {n} messages in {t:.2f} s = {n/t:.0f} msg/s')"
}
run "plaintext          " "tcp://127.0.0.1:$port" --tls none
run "STARTTLS (TLS 1.3) " "tcp://127.0.0.1:$port" --tls required --tls-trust "$pin"
run "implicit TLS (465) " "tls+tcp://127.0.0.1:$tport" --tls-trust "$pin"
