#!/usr/bin/env bash
# Measures the issue-3 durability bars on this machine and prints a Markdown
# table with durability.fsync = always, interval and never side by side.
# Devices register and go offline, so every push is stored, not delivered.
# Client and server share the machine: the maximum uses 32 push connections
# (enough requests in flight for group commit), the latency run (half the 100k/s bar) 8 (fewer
# client threads competing with the server for the cores). Usage:
#   loadtest/run-durable.sh [SECONDS]   (default 10 per measurement)
secs=${1:-10}
source "$(dirname "$0")/bench-env.sh"
common=(--devices 1000 --offline --payload-bytes 200 --json)

# A mode's server: two shards, room for a million pending, fsync MODE.
run_mode() { run_server "$1" 'shards = 2\n[delivery]\nmax_pending_per_device = 100000' "fsync = \"$1\""; }

for m in always interval never; do
  run_mode $m
  $bench "${common[@]}" --push-rate 150000 --push-connections 32 --duration "$secs" --warmup 2 >"$out/$m-max.json" 2>/dev/null || true
  stop_server; run_mode $m
  $bench "${common[@]}" --push-rate 50000 --push-connections 8 --duration "$secs" --warmup 2 >"$out/$m-50k.json" 2>/dev/null || true
  stop_server
done
# A million pending 200-byte messages, then kill -9 and restart.
run_mode always
$bench "${common[@]}" --push-rate 50000 --push-connections 16 --duration 20 --warmup 0 --server-pid "$server" \
  >"$out/always-1m.json" 2>/dev/null || true
sleep 1
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
kill -9 "$server"; wait "$server" 2>/dev/null || true
du -sk "$out/data" | cut -f1 >"$out/always-disk.txt"
start_server always
echo "$ready_seconds" >"$out/always-restart.txt"
awk '/VmRSS/ {print $2}' "/proc/$server/status" >"$out/always-restart-rss.txt"
stop_server

python3 - "$out" "$rss_kib" <<'PY'
import json, sys
d, rss_kib = sys.argv[1], int(sys.argv[2])
def get(m, s, path):
    v = json.load(open(f"{d}/{m}-{s}.json"))
    for p in path.split("."):
        v = v[p]
    return v
rows = [
    ("accepted to offline devices, 150k/s offered (msg/s)", "max", "accepted_per_sec", "{:.0f}"),
    ("accepted at 50k/s offered (msg/s)", "50k", "accepted_per_sec", "{:.0f}"),
    ("API latency p50 at 50k/s (µs)", "50k", "api_latency.p50_us", "{}"),
    ("API latency p99 at 50k/s (µs)", "50k", "api_latency.p99_us", "{}"),
    ("API latency p99.9 at 50k/s (µs)", "50k", "api_latency.p999_us", "{}"),
]
print("| metric | always | interval | never |")
print("| --- | ---: | ---: | ---: |")
for name, s, path, fmt in rows:
    cells = []
    for m in ("always", "interval", "never"):
        try:
            cells.append(fmt.format(get(m, s, path)))
        except Exception:
            cells.append("n/a")
    print(f"| {name} | " + " | ".join(cells) + " |")
sent = get("always", "1m", "messages_sent")
before = get("always", "1m", "server_rss_before_kib") or 0
growth_mib = (rss_kib - before) / 1024
restart = float(open(f"{d}/always-restart.txt").read())
disk_mib = int(open(f"{d}/always-disk.txt").read()) / 1024
restart_rss_mib = int(open(f"{d}/always-restart-rss.txt").read()) / 1024
print()
print(f"{sent} pending 200-byte messages (fsync always): server RSS growth {growth_mib:.0f} MiB "
      f"({growth_mib * 1048576 / max(sent, 1):.0f} B/message), log {disk_mib:.0f} MiB on disk, "
      f"kill -9 then restart to ready in {restart:.2f} s (RSS then {restart_rss_mib:.0f} MiB)")
PY
