#!/usr/bin/env bash
# Measures the TLS bars of issue 5 on this machine for both I/O backends,
# TLS beside plain TCP in the same run, and prints a Markdown table and the
# exact commands. Client and server share the machine (and its 2 cores).
# A throwaway CA and server certificate (ECDSA P-256, for localhost and
# 127.0.0.1) are made with openssl in the scratch directory; the server runs
# its default durability on a fresh data directory per measurement, and
# every push is signed. Its own ports (PORT_BASE, default 17000: devices
# +70, TLS devices +71, API +80, admin +464), so it can run beside a daemon
# on the default ones.
# Usage: loadtest/run-tls-bars.sh [SECONDS]   (default 20; storms and
# throughput run that long after their warmup)
secs=${1:-20}
source "$(dirname "$0")/bench-env.sh"
trap 'if [ -n "${KEEP_RESULTS:-}" ]; then echo "results kept in $out" >&2; else rm -rf "$out"; fi' EXIT

# The CA (the bench client's only trust anchor) and the server's leaf.
tls="$out/tls"
make_tls_certs "$tls"

base=${PORT_BASE:-17000}
# Both device listeners on.
server_top() {
  printf 'io = "%s"\\n[listen]\\ndevice = "127.0.0.1:%s"\\ndevice_tls = "127.0.0.1:%s"\\napi = "127.0.0.1:%s"\\nadmin = "127.0.0.1:%s"\\n[tls]\\ncert_file = "%s"\\nkey_file = "%s"' \
    "$1" $((base + 70)) $((base + 71)) $((base + 80)) $((base + 464)) "$tls/server.pem" "$tls/server.key"
}

tcp_opts="--device-addr 127.0.0.1:$((base + 70)) --api-addr 127.0.0.1:$((base + 80))"
tls_opts="--tls --device-addr 127.0.0.1:$((base + 71)) --api-addr 127.0.0.1:$((base + 80)) --tls-ca $tls/ca.pem --tls-server-name localhost"
commands="$out/commands"
: >"$commands"
# measure BACKEND NAME BENCH-ARGS...: a fresh server, one bench run into
# $out/BACKEND-NAME.json (its progress lines in BACKEND-NAME.log), the
# server stopped. An argument SERVER_PID becomes the server's pid.
measure() {
  local b=$1 name=$2; shift 2
  run_server "$b" "$(server_top "$b")"
  local args=() shown=()
  for a in "$@"; do
    if [ "$a" = SERVER_PID ]; then args+=("$server"); shown+=('$PID'); else args+=("$a"); shown+=("${a//$tls/\$TLS}"); fi
  done
  [ "$b" = uring ] && printf '%-22s ringpush-bench %s\n' "$name" "${shown[*]}" >>"$commands"
  echo "== $b $name" >&2
  $bench "${args[@]}" --json >"$out/$b-$name.json" 2>"$out/$b-$name.log" || true
  stop_server
}

storm=(--reconnect-storm --devices 2000 --threads 2 --max-pending-connects 128 --duration "$secs" --warmup 2 --server-pid SERVER_PID)
push=(--devices 10000 --threads 2 --push-kind multiple --targets-per-request 100 --push-rate 100000 --push-connections 4 --duration "$secs" --warmup 3)
for b in uring epoll; do
  measure $b idle-tcp $tcp_opts --devices 19000 --threads 2 --hold --duration 5 --server-pid SERVER_PID
  measure $b idle-tls $tls_opts --devices 19000 --threads 2 --max-pending-connects 256 --hold --duration 5 --server-pid SERVER_PID
  measure $b storm-tcp $tcp_opts "${storm[@]}"
  measure $b storm-tls13-full $tls_opts "${storm[@]}"
  measure $b storm-tls13-resumed $tls_opts --tls-resume "${storm[@]}"
  measure $b storm-tls12-full $tls_opts --tls12 "${storm[@]}"
  measure $b storm-tls12-resumed $tls_opts --tls12 --tls-resume "${storm[@]}"
  measure $b push-tcp $tcp_opts "${push[@]}"
  measure $b push-tls $tls_opts "${push[@]}"
done

python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
def load(b, s):
    return json.load(open(f"{d}/{b}-{s}.json"))
def rss(b, s):
    return load(b, s)["server_rss_per_connection_bytes"]
def rate(b, s):
    return load(b, s)["storm"]["welcomes_per_sec"]
def resumed_share(b, s):
    st = load(b, s)["storm"]
    return 100 * st["resumed_handshakes"] / max(1, st["full_handshakes"] + st["resumed_handshakes"])
def server_us(b, s):
    st = load(b, s)["storm"]
    return 1e6 * st["server_cpu_seconds"] / max(1, st["welcomes"])
def client_us(b, s):
    st = load(b, s)["storm"]
    return 1e6 * st["client_cpu_seconds"] / max(1, st["welcomes"])
def acked(b, s):
    return load(b, s)["acked_per_sec"]
def cpu(b, s):
    return load(b, s)["client_cpu_percent_of_one_core"]
rows = [
    ("idle session, 19,000 held: server RSS per connection, TCP (bytes)", lambda b: rss(b, "idle-tcp"), "{:.0f}", ""),
    ("idle session, 19,000 held: server RSS per connection, TLS (bytes)", lambda b: rss(b, "idle-tls"), "{:.0f}", "≤ 4,096"),
    ("TLS minus TCP per idle connection (bytes)", lambda b: rss(b, "idle-tls") - rss(b, "idle-tcp"), "{:.0f}", ""),
    ("storm, plain TCP: connect + Hello/Welcome per second", lambda b: rate(b, "storm-tcp"), "{:,.0f}", ""),
    ("storm, TLS 1.3 full handshake + Hello/Welcome per second", lambda b: rate(b, "storm-tls13-full"), "{:,.0f}", "≥ 3,000"),
    ("storm, TLS 1.3 resumed + Hello/Welcome per second", lambda b: rate(b, "storm-tls13-resumed"), "{:,.0f}", ""),
    ("TLS 1.3 resumed / full", lambda b: rate(b, "storm-tls13-resumed") / rate(b, "storm-tls13-full"), "{:.2f}", "≥ 1.5"),
    ("share of resumed handshakes in the resumed storm (%)", lambda b: resumed_share(b, "storm-tls13-resumed"), "{:.1f}", ""),
    ("server CPU per connect: TCP / 1.3 full / 1.3 resumed (µs)",
     lambda b: (server_us(b, "storm-tcp"), server_us(b, "storm-tls13-full"), server_us(b, "storm-tls13-resumed")), "{:.0f} / {:.0f} / {:.0f}", ""),
    ("client CPU per connect: TCP / 1.3 full / 1.3 resumed (µs)",
     lambda b: (client_us(b, "storm-tcp"), client_us(b, "storm-tls13-full"), client_us(b, "storm-tls13-resumed")), "{:.0f} / {:.0f} / {:.0f}", ""),
    ("storm, TLS 1.2 full / resumed per second", lambda b: (rate(b, "storm-tls12-full"), rate(b, "storm-tls12-resumed")), "{:,.0f} / {:,.0f}", ""),
    ("TLS 1.2 resumed / full", lambda b: rate(b, "storm-tls12-resumed") / rate(b, "storm-tls12-full"), "{:.2f}", ""),
    ("point-to-point delivered + acked, 100,000/s offered, TCP (msg/s)", lambda b: acked(b, "push-tcp"), "{:,.0f}", ""),
    ("point-to-point delivered + acked, 100,000/s offered, TLS (msg/s)", lambda b: acked(b, "push-tls"), "{:,.0f}", ""),
    ("TLS / TCP throughput", lambda b: acked(b, "push-tls") / acked(b, "push-tcp"), "{:.2f}", "≥ 0.60"),
    ("bench client CPU, push TCP / TLS (% of one core)", lambda b: (cpu(b, "push-tcp"), cpu(b, "push-tls")), "{:.0f} / {:.0f}", ""),
]
print("| metric | uring | epoll | bar |")
print("| --- | ---: | ---: | --- |")
for name, f, fmt, bar in rows:
    cells = []
    for b in ("uring", "epoll"):
        try:
            v = f(b)
            cells.append(fmt.format(*v) if isinstance(v, tuple) else fmt.format(v))
        except Exception as ex:
            cells.append(f"n/a ({type(ex).__name__})")
    print(f"| {name} | {cells[0]} | {cells[1]} | {bar} |")
errors = []
for b in ("uring", "epoll"):
    for name in ("idle-tcp", "idle-tls", "storm-tcp", "storm-tls13-full", "storm-tls13-resumed",
                 "storm-tls12-full", "storm-tls12-resumed", "push-tcp", "push-tls"):
        try:
            j = load(b, name)
            bad = {k: v for k, v in j["closed_by_server"].items()}
            if j["connect_errors"] or bad or j["http_errors"]:
                errors.append(f"{b} {name}: connect errors {j['connect_errors']}, closed {bad}, http {j['http_errors']}")
        except Exception as ex:
            errors.append(f"{b} {name}: no result ({ex!r})")
if errors:
    print("\nErrors (see the logs):")
    for e in errors:
        print(f"- {e}")
PY
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (client and server share them)."
echo "Server config (and io = \"epoll\"), with [durability] data_dir and the demo app's apiSecret added:"
printf '%b\n' "$(server_top uring | sed "s|$tls|\$TLS|g")"
echo "\$TLS: a throwaway CA (ca.pem) and server cert (server.pem, server.key), ECDSA P-256, made by openssl above."
echo "Commands (each against a fresh server, \$PID its pid):"
cat "$commands"
