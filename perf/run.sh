#!/usr/bin/env bash
# The whole comparison from scratch on a fresh Linux machine: installs nginx when it is missing
# (apt-get), builds snowgate and the harness in release, then runs `snowgate-perf run`, which
# writes the markdown table and the SVG plot into perf/results/. Extra arguments go to
# `snowgate-perf run` (`--quick` for a run under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light \
    || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx
fi
# The recording-off scenario runs a second build of the gateway that records nothing (the
# `bench-unrecorded` feature); the normal build is rebuilt last so target/release/snowgate is it.
cargo build --release -p snowgate --features bench-unrecorded
cp target/release/snowgate target/release/snowgate-unrecorded
cargo build --release -p snowgate -p snowgate-perf
exec ./target/release/snowgate-perf run "$@"
