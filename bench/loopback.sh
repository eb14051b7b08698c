#!/usr/bin/env bash
# Loopback throughput: Postfix's smtp-source drives `smtplink serve` and
# Postfix's smtp-sink in the same run, and prints messages per second for
# each and their ratio; then drives a relaying `smtplink serve` (spool +
# forward to smtp-sink). smtp-sink stores nothing; smtplink fsyncs every
# message into a Maildir before its 250, so the ratio says how close
# durable storage gets to a bare sink. This is a benchmark, not a test.
#
#   bash bench/loopback.sh [MESSAGES] [SESSIONS] [SIZE_BYTES]
#   defaults: 20000 10 5120
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
sessions=${2:-10}
size=${3:-5120}

find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
sink=$(find_tool smtp-sink)
source=$(find_tool smtp-source)
if [ -z "$sink" ] || [ -z "$source" ]; then
  echo "needs Postfix's smtp-sink and smtp-source: bash .ci/install-peers.sh" >&2
  exit 1
fi

cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }

sink_port=$(free_port)
"$sink" -u nobody "127.0.0.1:$sink_port" 1024 &
pids+=($!)
link_port=$(free_port)
RUST_LOG=warn ./target/release/smtplink serve --listen "tcp://127.0.0.1:$link_port" \
  --maildir "$work/maildir" --hostname bench.test &
pids+=($!)
# A relay: spools every message (fsync'd before the 250) and forwards it
# to smtp-sink.
relay_port=$(free_port)
RUST_LOG=warn ./target/release/smtplink serve --listen "tcp://127.0.0.1:$relay_port" \
  --maildir "$work/relay-maildir" --spool "$work/spool" --hostname relay.test \
  --route "*=tcp://127.0.0.1:$sink_port" &
pids+=($!)
wait_port "$sink_port"
wait_port "$link_port"
wait_port "$relay_port"

# Runs smtp-source and prints messages per second.
rate() {
  local port=$1; shift
  local start end
  start=$(date +%s.%N)
  "$source" -s "$sessions" -m "$messages" -l "$size" -f a@example.org -t b@example.net "$@" "127.0.0.1:$port"
  end=$(date +%s.%N)
  python3 -c "print(f'{$messages / ($end - $start):.0f}')"
}

echo "smtp-source: $messages messages of $size bytes, $sessions sessions"
printf '%-28s %12s %12s %8s\n' "mode" "smtp-sink" "smtplink" "ratio"
for mode in "new connection per message" "connection reuse (-d)"; do
  args=()
  [ "$mode" = "connection reuse (-d)" ] && args=(-d)
  s=$(rate "$sink_port" "${args[@]}")
  rm -rf "$work/maildir"
  l=$(rate "$link_port" "${args[@]}")
  stored=$(find "$work/maildir" -path '*/new/*' -type f | wc -l)
  ratio=$(python3 -c "print(f'{$l / $s:.3f}')")
  printf '%-28s %10s/s %10s/s %8s   (stored: %s)\n' "$mode" "$s" "$l" "$ratio" "$stored"
done

# Accepted into the relay's spool (each fsync'd before its 250) while the
# worker forwards to smtp-sink; then how long the queue takes to drain.
start=$(date +%s.%N)
r=$(rate "$relay_port" -d)
for _ in $(seq 600); do
  [ -z "$(ls -A "$work/spool/env" 2>/dev/null)" ] && break
  sleep 0.1
done
end=$(date +%s.%N)
left=$(ls "$work/spool/env" 2>/dev/null | wc -l)
printf 'relay, spooled (-d)         accepted %s/s; all relayed to smtp-sink at %s/s (left in spool: %s)\n' \
  "$r" "$(python3 -c "print(f'{$messages / ($end - $start):.0f}')")" "$left"

