#!/usr/bin/env bash
# Runs every test in the repository: installs the real Python Snowflake driver and the fakesnow
# emulator into .venv (once, from tests/driver/requirements.txt), then the whole workspace in
# release mode. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import fakesnow, snowflake.connector' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/driver/requirements.txt
fi
export SNOWGATE_TEST_PYTHON="$PWD/.venv/bin/python"

# The connection-heavy tests hold a few thousand sockets in one process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The perf smoke test also runs the recording-off scenario, which needs the gateway's
# benchmark-only build (`bench-unrecorded`) beside the normal one.
cargo build --release -p snowgate --features bench-unrecorded
cp target/release/snowgate target/release/snowgate-unrecorded

cargo test --release --workspace "$@"
