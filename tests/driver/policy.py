"""Runs one policy scenario with the real Python driver through snowgate and prints a JSON
summary on stdout: a blocked DROP, a write that waits for review (approved, denied or
timed out by the test driving the admin API meanwhile), that write run asynchronously, or
that write given up on by the driver (`execute(timeout=…)`, whose cancel withdraws it), or
that write with the session changed by another cursor while it waits (which voids it)."""

import argparse
import json
import sys
import threading
import time

import snowflake.connector
from snowflake.connector.errors import ProgrammingError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--mode", choices=["drop", "review", "async-review", "give-up", "change-session"], required=True)
    parser.add_argument("--suffix", required=True)
    args = parser.parse_args()

    conn = snowflake.connector.connect(
        account="agentacct", user="agent", host=args.host, port=args.port, protocol="http",
        authenticator="oauth", token=args.token, network_timeout=120,
    )
    cur = conn.cursor()
    database = f"POLICY_{args.suffix}"
    cur.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.S")
    cur.execute(f"USE SCHEMA {database}.S")
    cur.execute("CREATE TABLE IF NOT EXISTS REVIEWED (ID INT, NAME VARCHAR)")
    out: dict = {}
    statement = f"DROP DATABASE {database}" if args.mode == "drop" else "INSERT INTO REVIEWED VALUES (1, 'approved-row')"
    started = time.monotonic()
    try:
        if args.mode == "async-review":
            cur.execute_async(statement)
            out["query_id"] = cur.sfqid
        elif args.mode == "change-session":
            # While the write waits for review, another cursor of the same connection changes
            # the session (the gateway allows USE; it voids what the session parked). The test
            # writes a line on stdin once it sees the write parked.
            def change():
                sys.stdin.readline()
                conn.cursor().execute(f"USE SCHEMA {database}.S")

            changer = threading.Thread(target=change)
            changer.start()
            try:
                cur.execute(statement)
                out["rowcount"] = cur.rowcount
            finally:
                changer.join()
        elif args.mode == "give-up":
            # The driver cancels the statement after 3 s (POST /queries/v1/abort-request,
            # naming its requestId) and raises.
            cur.execute(statement, timeout=3)
            out["rowcount"] = cur.rowcount
        else:
            cur.execute(statement)
            out["rowcount"] = cur.rowcount
    except ProgrammingError as e:
        out["error"] = {"errno": e.errno, "msg": e.msg}
    out["waited_secs"] = round(time.monotonic() - started, 3)
    out["rows"] = [list(r) for r in cur.execute("SELECT ID, NAME FROM REVIEWED ORDER BY ID").fetchall()]
    out["databases"] = [r[1] for r in cur.execute("SHOW DATABASES").fetchall()]
    conn.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
