#!/usr/bin/env bash
# Measures the issue-2 bars on this machine for both I/O backends, side by
# side, and prints a Markdown table (uring, epoll, ratio). Client and server
# share the machine. The server runs the default durability (fsync always)
# on a fresh data directory per run. Usage: loadtest/run-bars.sh [SECONDS]   (default 30)
secs=${1:-30}
source "$(dirname "$0")/bench-env.sh"

for b in uring epoll; do
  run_server $b "io = \"$b\""
  $bench --devices 19000 --hold --duration 5 --server-pid "$server" --json >"$out/$b-idle.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\""
  $bench --devices 19000 --threads 2 --json >"$out/$b-connect.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\""
  $bench --devices 10000 --threads 2 --push-rate 50000 --push-connections 8 --duration "$secs" --warmup 3 \
    --json >"$out/$b-50k.json" 2>/dev/null || true
  stop_server; run_server $b "io = \"$b\""
  $bench --devices 10000 --threads 2 --push-rate 25000 --push-connections 8 --duration "$secs" --warmup 3 \
    --json >"$out/$b-25k.json" 2>/dev/null || true
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
    ("idle RSS per connection, 19,000 held (bytes)", "idle", "server_rss_per_connection_bytes", "{:.0f}"),
    ("connect + Hello/Welcome (connections/s)", "connect", "connect_rate", "{:.0f}"),
    ("delivered+acked at 50k/s offered (msg/s)", "50k", "acked_per_sec", "{:.0f}"),
    ("p99 API-to-device at 50k/s offered (µs)", "50k", "latency.p99_us", "{}"),
    ("delivered+acked at 25k/s offered (msg/s)", "25k", "acked_per_sec", "{:.0f}"),
    ("p50 API-to-device at 25k/s (µs)", "25k", "latency.p50_us", "{}"),
    ("p99 API-to-device at 25k/s (µs)", "25k", "latency.p99_us", "{}"),
    ("p99.9 API-to-device at 25k/s (µs)", "25k", "latency.p999_us", "{}"),
    ("client CPU at 50k/s (% of one core)", "50k", "client_cpu_percent_of_one_core", "{:.0f}"),
]
print("| metric | uring | epoll | uring/epoll |")
print("| --- | ---: | ---: | ---: |")
for name, s, path, fmt in rows:
    try:
        u, e = get("uring", s, path), get("epoll", s, path)
        print(f"| {name} | {fmt.format(u)} | {fmt.format(e)} | {u / e:.2f} |")
    except Exception as ex:
        print(f"| {name} | n/a | n/a | ({ex}) |")
PY
