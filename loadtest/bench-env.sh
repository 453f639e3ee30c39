# Sourced by the run-*.sh scripts: builds the workspace, sets $bench and a
# scratch directory $out (removed on exit), gives the demo app a random
# apiSecret in RINGPUSH_BENCH_APP_SECRET so every push is signed and
# verified (the production path), and defines the server helpers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --workspace -q
bench=./target/release/ringpush-bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
RINGPUSH_BENCH_APP_SECRET=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
export RINGPUSH_BENCH_APP_SECRET

# write_config NAME TOP DURABILITY: $out/NAME.toml with the TOML lines TOP
# (top-level keys, then any sections), a [durability] section on $out/data
# with the lines DURABILITY, and the signed demo app.
write_config() {
  printf '%b\n[durability]\ndata_dir = "%s/data"\n%b\n[[apps]]\nappId = "demo"\nworkspaceId = "default"\napiSecret = "%s"\n' \
    "$2" "$out" "$3" "$RINGPUSH_BENCH_APP_SECRET" >"$out/$1.toml"
}

# start_server NAME: starts ringpush on $out/NAME.toml (data kept) and
# waits until it is ready; $server is its pid, $ready_seconds how long it
# took.
start_server() {
  local start
  start=$(date +%s.%N)
  ./target/release/ringpush --config "$out/$1.toml" >"$out/$1.ready" 2>>"$out/$1.log" &
  server=$!
  for _ in $(seq 6000); do
    if grep -q 'ringpush ready' "$out/$1.ready" 2>/dev/null; then
      ready_seconds=$(python3 -c "print($(date +%s.%N) - $start)")
      return
    fi
    sleep 0.005
  done
  echo "server did not start: see $out/$1.log" >&2
  exit 1
}

# run_server NAME TOP DURABILITY: a fresh data directory and config, started.
run_server() {
  rm -rf "$out/data"
  write_config "$1" "${2:-}" "${3:-}"
  start_server "$1"
}

stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }
