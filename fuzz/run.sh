#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) each with the nightly toolchain, keeping the
# corpora in fuzz/corpus/<target>. Exits non-zero on the first crash.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  echo "== $target (${SECONDS_EACH}s)"
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048
done
