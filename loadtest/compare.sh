#!/usr/bin/env bash
# Runs the issue-6 scenarios against ringpush (io_uring and epoll), the peers
# a user would pick instead (Mosquitto, core NATS) and the machine's floor
# (ringpush-floor, io_uring and epoll), one system at a time, each on a
# fresh start per scenario, and writes results/<UTC date>/:
#   raw/<system>-<scenario>.json   one bench summary each (+ .log, progress)
#   summary.json, summary.md       metric x system, ratios to ringpush-uring
#   latency-vs-throughput.png, memory-per-connection.png
# Client and servers share this one machine (and its cores): read the ratios
# of one run, not absolute figures across machines.
#
# Usage: loadtest/compare.sh [--quick] [--devices N] [--seconds S]
#          [--systems "ringpush-uring ringpush-epoll ringpush-uring-interval mosquitto nats floor-uring floor-epoll"]
#          [--scenarios "idle-hold connect-storm point-to-point fan-out offline-backlog churn"]
#          [--out DIR]
# --quick: 2,000 devices, 5 s per measurement, three push rates (minutes,
# not the better part of an hour). Peers and python3-matplotlib are
# installed with apt-get when missing (root, or sudo). Every server listens
# on its own ports, PORT_BASE (default 27000) + 70 devices, + 71 TLS
# devices, + 80 API (the floor's control socket), + 464 admin, + 883
# Mosquitto, + 422 NATS, so the run does not collide with a daemon on the
# default ports.
set -euo pipefail

devices=19000
seconds=15
rates="5000 10000 20000 40000 80000"
systems="ringpush-uring ringpush-epoll ringpush-uring-interval mosquitto nats floor-uring floor-epoll"
scenarios="idle-hold connect-storm point-to-point fan-out offline-backlog churn"
results=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) devices=2000 seconds=5 rates="5000 10000 20000" ;;
    --devices) devices=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --rates) rates=$2; shift ;;
    --systems) systems=$2; shift ;;
    --scenarios) scenarios=$2; shift ;;
    --out) results=$2; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

here=$(cd "$(dirname "$0")" && pwd)
results=${results:-$here/../results/$(date -u +%Y-%m-%d)}
mkdir -p "$results/raw"
results=$(cd "$results" && pwd)

# Debian's python3 is the one apt-get gives matplotlib to (a pyenv or venv
# python3 earlier on PATH may not have it).
py=python3
if ! python3 -c 'import matplotlib' 2>/dev/null && [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; fi
base=${PORT_BASE:-27000}
device_port=$((base + 70)) tls_port=$((base + 71)) api_port=$((base + 80)) admin_port=$((base + 464))
mqtt_port=$((base + 883)) nats_port=$((base + 422))

install_missing() {
  local missing=()
  command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
  command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  $py -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "== installing ${missing[*]}" >&2
    $sudo apt-get update -q && $sudo apt-get install -y -q "${missing[@]}"
  fi
}
install_missing

source "$here/bench-env.sh"
trap 'stop_system; rm -rf "$out"' EXIT
# TLS storms need a bench and daemon that speak TLS (issue 5).
tls_config=""
if $bench --help | grep -q -- --tls-resume; then
  make_tls_certs "$out/tls"
  tls_config="device_tls = \"127.0.0.1:$tls_port\"\n[tls]\ncert_file = \"$out/tls/server.pem\"\nkey_file = \"$out/tls/server.key\"\n"
fi

p2p_devices=$((devices < 10000 ? devices : 10000))
storm_devices=$((devices < 2000 ? devices : 2000))
system=""
server=""

# Whether anything listens on the port (ss, not a test connect: a connect
# would count as a client of the server being checked).
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
wait_port() {
  for _ in $(seq 1000); do
    port_free "$1" || return 0
    sleep 0.01
  done
  echo "$system did not listen on port $1: see $out/$system.log" >&2
  exit 1
}

# start_system NAME: a fresh server of that kind (empty state); sets
# $server (pid) and $target_args (how the bench reaches it).
start_system() {
  system=$1
  for port in $device_port $tls_port $api_port $admin_port $mqtt_port $nats_port; do
    for _ in $(seq 100); do port_free $port && break; sleep 0.1; done
    port_free $port || { echo "port $port is taken: stop what listens there, or set PORT_BASE" >&2; exit 1; }
  done
  case $system in
    ringpush-uring | ringpush-epoll | ringpush-uring-interval)
      # -interval: fsync at most every 100 ms instead of before each answer,
      # the like-for-like with Mosquitto's periodic persistence (NATS keeps
      # nothing); the plain names run ringpush's default, fsync always.
      local backend=${system#ringpush-} durability=""
      if [[ $backend == *-interval ]]; then backend=${backend%-interval} durability='fsync = "interval"'; fi
      run_server "$system" "io = \"$backend\"\n[listen]\ndevice = \"127.0.0.1:$device_port\"\napi = \"127.0.0.1:$api_port\"\nadmin = \"127.0.0.1:$admin_port\"\n$tls_config[delivery]\nmax_pending_per_device = 100000" "$durability"
      target_args=(--target ringpush --device-addr "127.0.0.1:$device_port" --api-addr "127.0.0.1:$api_port")
      ;;
    mosquitto)
      # Its persistence file in the scratch directory, so every start is
      # empty; the broker drops to the mosquitto user when started as root.
      mkdir -p "$out/mosquitto" && chmod 777 "$out/mosquitto"
      sed -e "s|^persistence_location .*|persistence_location $out/mosquitto/|" \
        -e "s|^listener .*|listener $mqtt_port 127.0.0.1|" "$here/peers/mosquitto.conf" >"$out/mosquitto.conf"
      (ulimit -n 20000; exec mosquitto -c "$out/mosquitto.conf") 2>>"$out/mosquitto.log" &
      server=$!
      wait_port $mqtt_port
      target_args=(--target mosquitto --peer-addr "127.0.0.1:$mqtt_port")
      ;;
    nats)
      sed "s|^port: .*|port: $nats_port|" "$here/peers/nats.conf" >"$out/nats.conf"
      (ulimit -n 20000; exec nats-server -c "$out/nats.conf") 2>>"$out/nats.log" &
      server=$!
      wait_port $nats_port
      target_args=(--target nats --peer-addr "127.0.0.1:$nats_port")
      ;;
    floor-uring | floor-epoll)
      (ulimit -n 20000; exec "$bin/ringpush-floor" --backend "${system#floor-}" \
        --listen "127.0.0.1:$device_port" --control "127.0.0.1:$api_port") 2>>"$out/$system.log" &
      server=$!
      wait_port $device_port
      wait_port $api_port
      target_args=(--target floor --device-addr "127.0.0.1:$device_port" --api-addr "127.0.0.1:$api_port")
      ;;
    *) echo "unknown system $system" >&2; exit 2 ;;
  esac
}

stop_system() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    # A server that drains its devices may outlive an interrupted wait.
    for _ in $(seq 300); do
      [ -d "/proc/$server" ] || break
      sleep 0.1
    done
    server=""
  fi
}

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$server/status"; }
fd_count() { ls "/proc/$server/fd" | wc -l; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }

# bench NAME ARGS...: one bench run against the current system into
# raw/<system>-NAME.json; its exit code is kept beside it (2: the run had
# errors, which the summary shows).
bench_run() {
  local name=$1; shift
  local file="$results/raw/$system-$name"
  echo "== $system $name" >&2
  printf 'ringpush-bench %s\n' "${target_args[*]} $*" >"$file.cmd"
  set +e
  $bench "${target_args[@]}" "$@" --json >"$file.json" 2>"$file.log"
  echo $? >"$file.exit"
  set -e
}

# extra NAME JSON: figures the script measures itself, beside the bench's.
extra() { printf '%s\n' "$2" >"$results/raw/$system-$1.extra.json"; }

idle_hold() {
  start_system "$1"
  local base
  base=$(fd_count)
  # The hold outlasts the sample below: idle CPU is sampled only once every
  # connection is up (the server holds a descriptor per device), over
  # $seconds of heartbeats, while the bench still holds them.
  bench_run idle-hold --devices "$devices" --threads 4 --hold --duration $((seconds + 5)) --server-pid "$server" &
  local pid=$!
  for _ in $(seq 1200); do
    [ "$(fd_count)" -ge $((base + devices)) ] && break
    sleep 0.1
  done
  local t0 c0 t1 c1 held
  t0=$(date +%s.%N); c0=$(cpu_ticks)
  sleep "$seconds"
  t1=$(date +%s.%N); c1=$(cpu_ticks); held=$(($(fd_count) - base))
  wait $pid || true
  extra idle-hold "$($py -c "import os; print('{\"server_idle_cpu_percent\": %.2f, \"server_fds_held\": %d}' % (100 * ($c1 - $c0) / os.sysconf('SC_CLK_TCK') / ($t1 - $t0), $held))")"
  stop_system
}

# storm NAME ARGS...: a reconnect storm on a fresh server; with storm_tls
# set, against ringpush's TLS listener.
storm() {
  local name=$1; shift
  start_system "$system"
  if [ -n "${storm_tls:-}" ]; then
    target_args=(--target ringpush --device-addr "127.0.0.1:$tls_port" --api-addr "127.0.0.1:$api_port")
  fi
  bench_run "$name" --reconnect-storm --devices "$storm_devices" --threads 2 --max-pending-connects 128 \
    --duration "$seconds" --warmup 2 --server-pid "$server" "$@"
  stop_system
}

connect_storm() {
  system=$1
  storm connect-storm
  if [[ $system == ringpush-uring || $system == ringpush-epoll ]] && [ -n "$tls_config" ]; then
    local tls=(--tls --tls-ca "$out/tls/ca.pem" --tls-server-name localhost)
    storm_tls=1 storm connect-storm-tls-full "${tls[@]}"
    storm_tls=1 storm connect-storm-tls-resumed "${tls[@]}" --tls-resume
  fi
}

point_to_point() {
  for rate in $rates; do
    start_system "$1"
    bench_run "p2p-$rate" --devices "$p2p_devices" --threads 2 --push-rate "$rate" --push-connections 8 \
      --duration "$seconds" --warmup 2 --server-pid "$server"
    stop_system
  done
}

fan_out() {
  start_system "$1"
  bench_run fan-out --devices "$devices" --threads 4 --broadcasts 5 --broadcast-interval-ms 1000 \
    --payload-bytes 200 --server-pid "$server"
  stop_system
}

offline_backlog() {
  start_system "$1"
  bench_run offline-backlog --devices "$devices" --threads 4 --offline-broadcasts 10 --catch-up \
    --payload-bytes 200 --server-pid "$server"
  stop_system
}

# Churn: a first storm registers the devices and warms every cache; the
# baseline is taken after it, then a second storm runs for $seconds x 2 and
# the server must come back to the baseline's descriptors and (within
# allocator slack) memory.
churn() {
  start_system "$1"
  bench_run churn-warm --reconnect-storm --devices "$storm_devices" --threads 2 --max-pending-connects 128 \
    --duration "$seconds" --warmup 1
  sleep 1
  local rss0 fd0 rss1 fd1
  rss0=$(rss_kib); fd0=$(fd_count)
  bench_run churn --reconnect-storm --devices "$storm_devices" --threads 2 --max-pending-connects 128 \
    --duration $((seconds * 2)) --warmup 1 --server-pid "$server"
  for _ in $(seq 100); do
    [ "$(fd_count)" -le "$fd0" ] && break
    sleep 0.1
  done
  rss1=$(rss_kib); fd1=$(fd_count)
  extra churn "{\"rss_before_kib\": $rss0, \"rss_after_kib\": $rss1, \"fds_before\": $fd0, \"fds_after\": $fd1}"
  stop_system
}

{
  echo "{"
  echo "  \"date_utc\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"machine\": \"$(uname -srm), $(nproc) CPUs: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)\","
  echo "  \"note\": \"client and servers on this one machine, sharing its CPUs\","
  echo "  \"load_average_at_start\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
  echo "  \"devices\": $devices, \"seconds\": $seconds, \"rates\": \"$rates\","
  echo "  \"versions\": {\"ringpush\": \"$(git -C "$here/.." describe --always --dirty 2>/dev/null || echo unknown)\", \"mosquitto\": \"$(mosquitto -h 2>/dev/null | awk 'NR==1 { print $3 }')\", \"nats-server\": \"$(nats-server --version 2>/dev/null | awk '{ print $NF }')\"}"
  echo "}"
} >"$results/environment.json"

for s in $systems; do
  for scenario in $scenarios; do
    case $scenario in
      idle-hold) idle_hold "$s" ;;
      connect-storm) connect_storm "$s" ;;
      point-to-point) point_to_point "$s" ;;
      fan-out) fan_out "$s" ;;
      offline-backlog) offline_backlog "$s" ;;
      churn) churn "$s" ;;
      *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
  done
done
$py -c "import json; d = json.load(open('$results/environment.json')); d['load_average_at_end'] = open('/proc/loadavg').read().split()[:3]; json.dump(d, open('$results/environment.json', 'w'), indent=2)"

$py "$here/summarize.py" "$results"
echo "== written: $results/summary.md" >&2
