#!/usr/bin/env bash
# Runs every fuzz target in turn, each from its committed corpus in fuzz/corpus/<target>.
#
#   fuzz/run.sh [SECONDS] [TARGET...]       fuzz each target for SECONDS (default 30) with the
#                                           nightly toolchain and AddressSanitizer, adding new
#                                           inputs to the corpora (minimize them afterwards with
#                                           `cargo +nightly fuzz cmin TARGET` before committing)
#   fuzz/run.sh --ci [SECONDS] [TARGET...]  what .ci/run does: the same on the default (stable)
#                                           toolchain, a dev build without a sanitizer (the
#                                           crate's only unsafe code is the masker's SSE2
#                                           intrinsics), default 10 s each; the
#                                           committed corpora are read, never written
#
# Exits non-zero on the first crash, leak, timeout or failed assertion; the input that did it
# is in fuzz/artifacts/<target>/ (and printed in base64 in --ci mode, for the CI log).
set -euo pipefail
cd "$(dirname "$0")"

ci=false
if [ "${1:-}" = "--ci" ]; then
  ci=true
  shift
fi
seconds_each="${1:-}"
[ $# -gt 0 ] && shift
if $ci; then
  seconds_each="${seconds_each:-10}"
else
  seconds_each="${seconds_each:-30}"
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

if $ci; then
  # Every flag cargo-fuzz passes without a sanitizer is stable (-Cpasses=sancov-module,
  # -Cllvm-args=..., --cfg fuzzing): no nightly needed. AddressSanitizer would need
  # -Zsanitizer (RUSTC_BOOTSTRAP=1 on stable, whose std ships the runtime); the crate's only
  # unsafe code is the masker's SSE2 intrinsics, whose loads read inside fixed-size arrays
  # (bounds asserted). A dev build (debug assertions on) takes less than half the CPU time
  # of the release one, and a few seconds per target mostly replay the corpus.
  toolchain=()
  fuzz_flags=(--sanitizer none --dev --target-dir "${FUZZ_CI_TARGET_DIR:-target/ci}")
else
  toolchain=(+nightly)
  fuzz_flags=()
fi

# An explicit list of targets, else every one cargo-fuzz knows.
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

started=$SECONDS
echo "== building ${#targets[@]} fuzz targets"
cargo "${toolchain[@]}" fuzz build "${fuzz_flags[@]}"
echo "== built in $((SECONDS - started)) s"

scratch=""
if $ci; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
fi

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  if $ci; then
    # New inputs go to the first directory: a scratch one, so the checkout stays clean.
    corpora=("$scratch/$target" "corpus/$target")
    mkdir -p "$scratch/$target"
  else
    corpora=("corpus/$target")
  fi
  # Inputs that once found a bug are replayed as corpus too: each is a regression test.
  if [ -d "artifacts-found/$target" ]; then
    corpora+=("artifacts-found/$target")
  fi
  echo "== $target (${seconds_each} s, $(find "corpus/$target" -type f | wc -l) corpus files)"
  status=0
  cargo "${toolchain[@]}" fuzz run "${fuzz_flags[@]}" "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds_each" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "!! $target failed (exit $status); reproduce with: cargo +nightly fuzz run $target <artifact>" >&2
    for artifact in "artifacts/$target"/*; do
      [ -f "$artifact" ] || continue
      echo "!! $artifact (base64): $(head -c 4096 "$artifact" | base64 -w0)" >&2
    done
    exit "$status"
  fi
done
echo "== all ${#targets[@]} targets passed in $((SECONDS - started)) s"
