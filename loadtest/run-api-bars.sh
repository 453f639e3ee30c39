#!/usr/bin/env bash
# Measures the issue-4 bars (broadcast, multiple push, broadcast catch-up,
# broadcast memory against offline devices) on this machine for both I/O
# backends, side by side, and prints a Markdown table. Client and server
# share the machine; the server runs the default durability (fsync always)
# on a fresh data directory per run, and every push is signed.
# Usage: loadtest/run-api-bars.sh [SECONDS]   (default 20)
secs=${1:-20}
source "$(dirname "$0")/bench-env.sh"

for b in uring epoll; do
  run_server $b "io = \"$b\"\n[delivery]\nmax_pending_per_device = 100000"
  $bench --devices 19000 --threads 8 --broadcasts 10 --broadcast-interval-ms 500 --payload-bytes 200 \
    --json >"$out/$b-broadcast.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\"\n[delivery]\nmax_pending_per_device = 100000"
  $bench --devices 10000 --threads 2 --push-kind multiple --targets-per-request 100 --push-rate 50000 \
    --push-connections 4 --duration "$secs" --warmup 3 --json >"$out/$b-multiple.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\"\n[delivery]\nmax_pending_per_device = 100000"
  $bench --devices 10000 --threads 2 --push-kind multiple --targets-per-request 100 --push-rate 100000 \
    --push-connections 4 --duration "$secs" --warmup 3 --json >"$out/$b-multiple-max.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\"\n[delivery]\nmax_pending_per_device = 100000"
  $bench --devices 19000 --threads 4 --offline-broadcasts 10 --catch-up --server-pid "$server" \
    --json >"$out/$b-catchup.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\"\n[delivery]\nmax_pending_per_device = 100000"
  $bench --devices 100 --offline-broadcasts 2000 --payload-bytes 200 --server-pid "$server" \
    --json >"$out/$b-mem100.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\"\n[delivery]\nmax_pending_per_device = 100000"
  $bench --devices 19000 --threads 4 --offline-broadcasts 2000 --payload-bytes 200 --server-pid "$server" \
    --json >"$out/$b-mem19k.json" 2>/dev/null || true
  stop_server
done

python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
def get(b, s, path):
    v = json.load(open(f"{d}/{b}-{s}.json"))
    for p in path.split("."):
        v = v[p]
    return v
rows = [
    ("broadcast to 19,000 online: last device (ms, bar ≤ 150)", "broadcast", "latency.max_us", lambda v: f"{v / 1000:.0f}"),
    ("broadcast to 19,000 online: p50 (ms)", "broadcast", "latency.p50_us", lambda v: f"{v / 1000:.0f}"),
    ("multiple push at 50k/s offered: delivered+acked (msg/s, bar ≥ 50,000)", "multiple", "acked_per_sec", lambda v: f"{v:.0f}"),
    ("multiple push at 50k/s: p99 API-to-device (ms)", "multiple", "latency.p99_us", lambda v: f"{v / 1000:.1f}"),
    ("multiple push at 100k/s offered: delivered+acked (msg/s)", "multiple-max", "acked_per_sec", lambda v: f"{v:.0f}"),
    ("catch-up, 19,000 reconnect owed 10 each (s, bar ≤ 3)", "catchup", "offline_broadcasts.catch_up_seconds", lambda v: f"{v:.2f}"),
    ("server RSS per stored broadcast, 100 offline devices (bytes)", "mem100", "offline_broadcasts.server_rss_per_broadcast_bytes", lambda v: f"{v:.0f}"),
    ("server RSS per stored broadcast, 19,000 offline devices (bytes)", "mem19k", "offline_broadcasts.server_rss_per_broadcast_bytes", lambda v: f"{v:.0f}"),
]
print("| metric | uring | epoll | uring/epoll |")
print("| --- | ---: | ---: | ---: |")
for name, s, path, fmt in rows:
    try:
        u, e = get("uring", s, path), get("epoll", s, path)
        ratio = f"{u / e:.2f}" if e else "n/a"
        print(f"| {name} | {fmt(u)} | {fmt(e)} | {ratio} |")
    except Exception as ex:
        print(f"| {name} | n/a | n/a | ({ex!r}) |")
PY
