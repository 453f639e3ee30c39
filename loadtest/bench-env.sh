# Sourced by the run-*.sh scripts and compare.sh: builds the workspace
# (unless RINGPUSH_BIN names a directory of binaries already built), sets
# $bin and $bench and a scratch directory $out (removed on exit), gives the
# demo app a random apiSecret in RINGPUSH_BENCH_APP_SECRET so every push is
# signed and verified (the production path), and defines the server and
# certificate helpers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${RINGPUSH_BIN:-}" ]; then
  cargo build --release --workspace -q
fi
bin=${RINGPUSH_BIN:-./target/release}
bench=$bin/ringpush-bench
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
  "$bin/ringpush" --config "$out/$1.toml" >"$out/$1.ready" 2>>"$out/$1.log" &
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

# make_tls_certs DIR: a throwaway CA (DIR/ca.pem, the bench client's only
# trust anchor) and a server certificate for localhost and 127.0.0.1
# signed by it (DIR/server.pem, DIR/server.key), ECDSA P-256, valid 2 days.
make_tls_certs() {
  local dir=$1
  if ! command -v openssl >/dev/null 2>&1; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q && $sudo apt-get install -y -q openssl
  fi
  mkdir -p "$dir"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=ringpush bench CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    >"$dir/leaf.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/leaf.ext" -out "$dir/server.pem" 2>/dev/null
}
