#!/usr/bin/env bash
# Builds snowgate and runs it on 127.0.0.1:8443 in front of a local fakesnow emulator on
# 127.0.0.1:8081, with a generated dev identity provider, JWKS, upstream key and sealing key in
# .dev/. Prints a Python driver snippet with a fresh agent token. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
GATEWAY_PORT="${SNOWGATE_DEV_PORT:-8443}"
FAKESNOW_PORT="${SNOWGATE_DEV_FAKESNOW_PORT:-8081}"

if ! .venv/bin/python -c 'import fakesnow, snowflake.connector' 2>/dev/null; then
  echo "Installing fakesnow and the Python driver into .venv ..."
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/driver/requirements.txt
fi
cargo build --release -p snowgate -p snowgate-tools
./target/release/snowgate-tools dev init --dir .dev --listen "127.0.0.1:$GATEWAY_PORT" \
  --upstream-url "http://127.0.0.1:$FAKESNOW_PORT" --force > /dev/null

.venv/bin/python -m fakesnow -s -p "$FAKESNOW_PORT" > .dev/fakesnow.log 2>&1 &
FAKESNOW_PID=$!
trap 'kill "$FAKESNOW_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$FAKESNOW_PORT") 2>/dev/null && break
  sleep 0.1
done

TOKEN=$(./target/release/snowgate-tools dev token --dir .dev --sub agent-dev --groups analysts)
cat <<SNIPPET

fakesnow is on 127.0.0.1:$FAKESNOW_PORT; snowgate starts on 127.0.0.1:$GATEWAY_PORT.
Connect an unmodified driver through it (token valid 1 hour; new one: ./target/release/snowgate-tools dev token):

  .venv/bin/python - <<'PY'
  import snowflake.connector
  conn = snowflake.connector.connect(account="devacct", user="agent", host="127.0.0.1",
      port=$GATEWAY_PORT, protocol="http", authenticator="oauth",
      token="$TOKEN")
  print(conn.cursor().execute("select 'hello from snowgate'").fetchall())
  PY

Recordings go to .dev/recordings/. Ctrl-C to stop.
SNIPPET
./target/release/snowgate --config .dev/snowgate.toml
