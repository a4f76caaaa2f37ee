#!/usr/bin/env bash
# Runs every test in the repository: installs the real Python Snowflake driver and the fakesnow
# emulator into .venv (once, from tests/driver/requirements.txt) and the real Node driver into
# tests/driver/node/node_modules (once, from its package-lock.json), then the whole workspace in
# release mode. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import fakesnow, snowflake.connector' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/driver/requirements.txt
fi
export SNOWGATE_TEST_PYTHON="$PWD/.venv/bin/python"

# The real Node driver (snowflake-sdk, from tests/driver/node/package-lock.json; Node.js 20 or
# later), for the JSON-results driver test.
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  echo "tests/run.sh: Node.js 20 or later is needed for the Node driver test" >&2
  exit 1
fi
if [ ! -f tests/driver/node/node_modules/.package-lock.json ] \
  || ! cmp -s tests/driver/node/package-lock.json tests/driver/node/node_modules/.snowgate-lock; then
  npm ci --prefix tests/driver/node --no-audit --no-fund --ignore-scripts --loglevel=error
  cp tests/driver/node/package-lock.json tests/driver/node/node_modules/.snowgate-lock
fi

# The connection-heavy tests hold a few thousand sockets in one process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The perf smoke test also runs the recording-off scenario, which needs the gateway's
# benchmark-only build (`bench-unrecorded`) beside the normal one.
cargo build --release -p snowgate --features bench-unrecorded
cp target/release/snowgate target/release/snowgate-unrecorded

cargo test --release --workspace "$@"
