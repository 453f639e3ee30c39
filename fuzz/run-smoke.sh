#!/usr/bin/env bash
# Runs every fuzz target for a short while (default 60 s each; FUZZ_SECONDS
# overrides). Exits non-zero on any crash. For long runs:
#   FUZZ_SECONDS=3600 fuzz/run-smoke.sh
# The machine has the stable toolchain only: RUSTC_BOOTSTRAP=1 lets cargo-fuzz
# pass its -Z flags to stable rustc.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
for target in frame_decoder session api_push journal_replay template_text api_multiple api_recall api_tags api_requests device_auth tls_session; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target"
  # Fuzz into a scratch copy so the committed seed corpus stays small.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  cargo fuzz run "$target" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 4
  rm -rf "$work"
done
