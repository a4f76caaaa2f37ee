"""Runs queries with the real Python driver (through snowgate, or directly) and prints, as JSON
on stdout, every row each returned via fetchall() and via fetch_pandas_all(), each value with
its Python type, so a test can compare masked and clear runs value by value."""

import argparse
import json
import sys

import snowflake.connector


def cell(value):
    if value is None:
        return None
    kind = type(value).__name__
    if hasattr(value, "isoformat"):
        return [kind, value.isoformat()]
    return [kind, str(value)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--setup", default="", help="statements to run first, separated by ';;'")
    parser.add_argument("--query", action="append", required=True)
    parser.add_argument("--pandas", action="store_true")
    parser.add_argument("--query-tag", default=None, help="QUERY_TAG sent with every statement")
    args = parser.parse_args()

    if args.token:
        conn = snowflake.connector.connect(
            account="agentacct", user="agent", host=args.host, port=args.port, protocol="http",
            authenticator="oauth", token=args.token, network_timeout=120,
        )
    else:
        conn = snowflake.connector.connect(
            account="agentacct", user="agent", password="x", host=args.host, port=args.port, protocol="http",
            network_timeout=120,
        )
    cur = conn.cursor()
    params = {"QUERY_TAG": args.query_tag} if args.query_tag else None
    for statement in filter(None, (s.strip() for s in args.setup.split(";;"))):
        cur.execute(statement, _statement_params=params)
    out = []
    for query in args.query:
        rows = [[cell(v) for v in row] for row in cur.execute(query, _statement_params=params).fetchall()]
        result = {"query": query, "rows": rows}
        if args.pandas:
            frame = cur.execute(query).fetch_pandas_all()
            result["pandas"] = [[cell(v) if v == v else None for v in row] for row in frame.itertuples(index=False)]
            result["pandas_columns"] = list(frame.columns)
        out.append(result)
    conn.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
