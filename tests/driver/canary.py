"""Drives the real Python driver through snowgate to the Rust Snowflake double, whose session
tokens expire after a couple of seconds: the driver must renew through the gateway. Used by the
credential-canary test, which scans everything this driver received.

    python canary.py --host 127.0.0.1 --port N --token <jwt> --sleep 2.5
"""
import argparse
import json
import sys
import time

import snowflake.connector
from snowflake.connector.errors import ProgrammingError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--sleep", type=float, default=2.5, help="seconds to wait so the session expires")
    args = parser.parse_args()

    conn = snowflake.connector.connect(
        account="agentacct", user="agent", host=args.host, port=args.port, protocol="http",
        authenticator="oauth", token=args.token, login_timeout=30, network_timeout=30,
    )
    outcome = {}
    cur = conn.cursor()
    outcome["small_rows"] = len(cur.execute("select * from small").fetchall())
    time.sleep(args.sleep)
    # The session token has expired: the gateway answers 390112 and the driver renews.
    outcome["after_renewal_rows"] = len(cur.execute("select * from medium").fetchall())
    try:
        cur.execute("select * from no_such_table")
        outcome["error"] = None
    except ProgrammingError as error:
        outcome["error"] = {"errno": error.errno, "msg": error.msg}
    outcome["one"] = cur.execute("select 1").fetchall()[0][0]
    conn.close()
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
