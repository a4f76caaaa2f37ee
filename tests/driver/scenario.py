#!/usr/bin/env python3
"""Driver-level scenario for the snowgate acceptance test.

Runs a fixed sequence of steps with the real, unmodified Snowflake Python
connector against HOST:PORT (either fakesnow directly or snowgate in front of
it) and writes every observable outcome to a JSON document. Two runs (direct
and through the gateway) must produce identical documents, apart from the
"meta" section, which records run-specific inputs; see compare.py.

Only values that are stable between runs are recorded: no query ids, session
ids or execution timestamps.

Example:
    python scenario.py --host 127.0.0.1 --port 18081 --token x --out direct.json \
        --table-suffix direct
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import re
import sys
import traceback
from typing import Any, Callable

import snowflake.connector
from snowflake.connector.constants import FIELD_ID_TO_NAME
from snowflake.connector.errors import ProgrammingError

SCHEMA_VERSION = 1
DEFAULT_DATABASE = "SNOWGATE_DRIVER"
DEFAULT_SCHEMA = "PUBLIC"
# A table that never exists, so the error message is identical across runs.
MISSING_TABLE = "SNOWGATE_DRIVER_NO_SUCH_TABLE"

COLUMNS_DDL = (
    "ID NUMBER(38,0), NAME VARCHAR, AMOUNT NUMBER(10,2), SCORE FLOAT, "
    "ACTIVE BOOLEAN, BORN DATE, SEEN TIMESTAMP_NTZ"
)
SELECT_COLS = "ID, NAME, AMOUNT, SCORE, ACTIVE, BORN, SEEN"

LITERAL_ROWS_SQL = (
    "(1, 'alice', 12.50, 1.5, TRUE, '2024-01-02', '2024-01-02 03:04:05'), "
    "(2, 'bob', -3.25, 0.1, FALSE, '1999-12-31', '1999-12-31 23:59:59.123456'), "
    "(3, 'ünïcødé ☃', 0, -2.75e10, NULL, '2000-02-29', '2000-02-29 00:00:00'), "
    "(4, NULL, NULL, NULL, TRUE, NULL, NULL)"
)

# NUMBER(10,2) values are bound as strings (TEXT bindings): the connector binds
# a Decimal as FIXED with a fractional value, which fakesnow's server rejects
# with an HTTP 500 (its converter does int(value)).
BOUND_SINGLE_ROW = (
    10,
    "bound single",
    "7.25",
    3.125,
    True,
    dt.date(2023, 6, 15),
    dt.datetime(2023, 6, 15, 12, 30, 45),
)

BOUND_MANY_ROWS = [
    (20, "many one", "1.10", 0.5, False, dt.date(2022, 1, 1), dt.datetime(2022, 1, 1, 0, 0, 1)),
    (21, "many two", "2.20", -0.25, True, dt.date(2022, 2, 2), dt.datetime(2022, 2, 2, 2, 2, 2)),
    (22, "many three", "3.30", 1e-3, False, dt.date(2022, 3, 3), dt.datetime(2022, 3, 3, 3, 3, 3)),
]


# --------------------------------------------------------------------------
# JSON normalisation
# --------------------------------------------------------------------------


def norm(value: Any) -> Any:
    """Convert a value returned by the driver (or pandas) into a JSON-safe value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        # pandas.Timestamp is a datetime subclass; it also handles nanoseconds
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): norm(v) for k, v in value.items()}
    # numpy / pandas scalars
    mod = type(value).__module__
    if mod.startswith("pandas") and str(value) == "NaT":
        return "NaT"
    if hasattr(value, "item") and mod.startswith("numpy"):
        return norm(value.item())
    return f"<{type(value).__name__}>{value!r}"


def type_name(value: Any) -> str:
    t = type(value)
    mod = t.__module__
    return t.__name__ if mod == "builtins" else f"{mod.split('.')[0]}.{t.__name__}"


def rows_record(rows: list[Any]) -> dict[str, Any]:
    """Rows as normalised values, plus the Python type of every cell, so that a
    Decimal turning into a float (or a date into a str) is caught too."""
    return {
        "rows": [norm(list(r)) for r in rows],
        "py_types": [[type_name(v) for v in r] for r in rows],
    }


def description_record(cur: Any) -> list[dict[str, Any]] | None:
    if cur.description is None:
        return None
    out = []
    for col in cur.description:
        out.append(
            {
                "name": col.name,
                "type_code": col.type_code,
                "type_name": FIELD_ID_TO_NAME.get(col.type_code),
                "display_size": col.display_size,
                "internal_size": col.internal_size,
                "precision": col.precision,
                "scale": col.scale,
                "is_nullable": col.is_nullable,
            }
        )
    return out


def result_record(cur: Any, rows: list[Any] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "rowcount": cur.rowcount,
        "description": description_record(cur),
        "has_sfqid": bool(cur.sfqid),
    }
    if rows is not None:
        rec.update(rows_record(rows))
    return rec


def frame_record(df: Any) -> dict[str, Any]:
    split = df.to_dict(orient="split")
    return {
        "shape": list(df.shape),
        "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
        "columns": [str(c) for c in split["columns"]],
        "index": norm(list(split["index"])),
        "data": [norm(list(r)) for r in split["data"]],
        "py_types": [[type_name(v) for v in r] for r in split["data"]],
    }


def error_record(exc: BaseException) -> dict[str, Any]:
    return {
        "class": type(exc).__name__,
        "errno": getattr(exc, "errno", None),
        "sqlstate": getattr(exc, "sqlstate", None),
        "msg": getattr(exc, "msg", None),
    }


# --------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------


class Scenario:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.database = args.database or DEFAULT_DATABASE
        self.schema = args.schema or DEFAULT_SCHEMA
        self.table = f"SNOWGATE_DRIVER_T{('_' + args.table_suffix) if args.table_suffix else ''}".upper()
        self.steps: dict[str, Any] = {}
        self.current_step: str | None = None

    def connect(self, **extra: Any) -> Any:
        a = self.args
        return snowflake.connector.connect(
            account=a.account,
            user=a.user,
            host=a.host,
            port=a.port,
            protocol="http",
            authenticator="oauth",
            token=a.token,
            database=self.database,
            schema=self.schema,
            login_timeout=a.timeout,
            network_timeout=a.timeout,
            **extra,
        )

    def step(self, name: str, fn: Callable[[], Any]) -> None:
        self.current_step = name
        self.steps[name] = fn()
        self.current_step = None

    # -- steps -------------------------------------------------------------

    def run(self) -> None:
        self.current_step = "connect"
        conn = self.connect(paramstyle="qmark")
        try:
            cur = conn.cursor()
            self.step("connect", lambda: self.s_connect(conn))
            self.step("setup", lambda: self.s_setup(cur))
            self.step("literal_insert", lambda: self.s_literal_insert(cur))
            self.step("select_fetchall", lambda: self.s_select_fetchall(cur))
            self.step("select_pandas", lambda: self.s_select_pandas(cur))
            self.step("qmark_execute", lambda: self.s_qmark_execute(cur))
            self.step("qmark_executemany", lambda: self.s_qmark_executemany(cur))
            self.step("sql_error", lambda: self.s_sql_error(cur))
            self.step("after_error", lambda: self.s_after_error(cur))
            self.step("execute_async", lambda: self.s_execute_async(conn))
            cur.close()
        finally:
            conn.close()
        # The connector only sends the session delete (POST /session?delete=true)
        # when the login response carried a masterToken; fakesnow sends none, so
        # close() gives up quietly and is_closed() stays False against it.
        self.step("close", lambda: {"is_closed": conn.is_closed()})
        self.step("reconnect", self.s_reconnect)

    def s_connect(self, conn: Any) -> dict[str, Any]:
        return {
            "database": conn.database,
            "schema": conn.schema,
            "is_closed": conn.is_closed(),
        }

    def s_setup(self, cur: Any) -> dict[str, Any]:
        # Status messages of these statements depend on whether the objects
        # already exist (another run may share the server), so only the fact
        # that they succeed is recorded, plus the created table's description.
        #
        # The database and schema are only created when the login did not
        # already land in them: fakesnow creates both on login, and running
        # CREATE DATABASE concurrently from two sessions makes its duckdb raise
        # a write-write conflict (an HTTP 500 that the driver then retries).
        conn = cur.connection
        if (conn.database or "").upper() != self.database.upper():
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        if (conn.schema or "").upper() != self.schema.upper():
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.database}.{self.schema}")
        cur.execute(f"USE SCHEMA {self.database}.{self.schema}")
        cur.execute(f"DROP TABLE IF EXISTS {self.table}")
        cur.execute(f"CREATE TABLE {self.table} ({COLUMNS_DDL})")
        create_rowcount = cur.rowcount
        cur.execute("SELECT CURRENT_DATABASE(), CURRENT_SCHEMA()")
        current = cur.fetchall()
        return {"create_table_rowcount": create_rowcount, "current": rows_record(current)}

    def s_literal_insert(self, cur: Any) -> dict[str, Any]:
        cur.execute(f"INSERT INTO {self.table} ({SELECT_COLS}) VALUES {LITERAL_ROWS_SQL}")
        return result_record(cur, cur.fetchall())

    def s_select_fetchall(self, cur: Any) -> dict[str, Any]:
        cur.execute(f"SELECT {SELECT_COLS} FROM {self.table} ORDER BY ID")
        rec = result_record(cur, cur.fetchall())
        # an expression column and an aggregate, for type/precision metadata
        cur.execute(
            f"SELECT COUNT(*) AS N, SUM(AMOUNT) AS TOTAL, MAX(NAME) AS MAX_NAME, "
            f"ID * 2 AS DOUBLED FROM {self.table} GROUP BY ID ORDER BY ID"
        )
        rec["aggregate"] = result_record(cur, cur.fetchall())
        return rec

    def s_select_pandas(self, cur: Any) -> dict[str, Any]:
        cur.execute(f"SELECT {SELECT_COLS} FROM {self.table} ORDER BY ID")
        rec = result_record(cur)
        rec["frame"] = frame_record(cur.fetch_pandas_all())
        return rec

    def s_qmark_execute(self, cur: Any) -> dict[str, Any]:
        placeholders = ", ".join("?" for _ in BOUND_SINGLE_ROW)
        cur.execute(
            f"INSERT INTO {self.table} ({SELECT_COLS}) VALUES ({placeholders})",
            BOUND_SINGLE_ROW,
        )
        insert = result_record(cur, cur.fetchall())
        cur.execute(
            f"SELECT {SELECT_COLS} FROM {self.table} WHERE ID = ? OR NAME = ? ORDER BY ID",
            (10, "bob"),
        )
        select = result_record(cur, cur.fetchall())
        cur.execute(f"SELECT ID FROM {self.table} WHERE BORN >= ? AND ACTIVE = ? ORDER BY ID", (dt.date(2000, 1, 1), True))
        select_typed = result_record(cur, cur.fetchall())
        cur.execute(f"SELECT ID FROM {self.table} WHERE NAME = ? ORDER BY ID", ("nobody",))
        select_empty = result_record(cur, cur.fetchall())
        return {"insert": insert, "select": select, "select_typed": select_typed, "select_empty": select_empty}

    def s_qmark_executemany(self, cur: Any) -> dict[str, Any]:
        placeholders = ", ".join("?" for _ in BOUND_SINGLE_ROW)
        cur.executemany(
            f"INSERT INTO {self.table} ({SELECT_COLS}) VALUES ({placeholders})",
            BOUND_MANY_ROWS,
        )
        many = {"rowcount": cur.rowcount, "has_sfqid": bool(cur.sfqid)}
        cur.execute(f"SELECT {SELECT_COLS} FROM {self.table} WHERE ID >= ? ORDER BY ID", (20,))
        reselect = result_record(cur, cur.fetchall())
        cur.execute(f"SELECT COUNT(*) FROM {self.table}")
        total = cur.fetchall()
        return {"executemany": many, "reselect": reselect, "total": rows_record(total)}

    def s_sql_error(self, cur: Any) -> dict[str, Any]:
        try:
            cur.execute(f"SELECT * FROM {MISSING_TABLE}")
        except ProgrammingError as exc:
            return {"raised": True, "error": error_record(exc)}
        return {"raised": False}

    def s_after_error(self, cur: Any) -> dict[str, Any]:
        # the session must still be usable after a failed statement
        cur.execute("SELECT 1 AS ONE, 'still here' AS MSG")
        return result_record(cur, cur.fetchall())

    def s_execute_async(self, conn: Any) -> dict[str, Any]:
        cur = conn.cursor()
        try:
            cur.execute_async(f"SELECT ID, NAME, AMOUNT, BORN FROM {self.table} WHERE ID < 10 ORDER BY ID")
            qid = cur.sfqid
            submitted = bool(qid)
            cur2 = conn.cursor()
            try:
                cur2.get_results_from_sfqid(qid)
                rows = cur2.fetchall()
                rec = result_record(cur2, rows)
                rec["submitted"] = submitted
                rec["status"] = conn.get_query_status(qid).name
                rec["is_still_running"] = conn.is_still_running(conn.get_query_status(qid))
            finally:
                cur2.close()
            return rec
        finally:
            cur.close()

    def s_reconnect(self) -> dict[str, Any]:
        # second connection, default paramstyle (pyformat: client-side binding)
        conn = self.connect()
        try:
            cur = conn.cursor()
            rec: dict[str, Any] = self.s_connect(conn)
            cur.execute(f"SELECT {SELECT_COLS} FROM {self.table} ORDER BY ID")
            rec["select"] = result_record(cur, cur.fetchall())
            cur.execute(
                f"SELECT ID, NAME FROM {self.table} WHERE ID IN (%s, %s) ORDER BY ID",
                (1, 21),
            )
            rec["pyformat_select"] = result_record(cur, cur.fetchall())
            cur.execute(f"DROP TABLE IF EXISTS {self.table}")
            rec["dropped"] = True
            cur.close()
        finally:
            conn.close()
        rec["is_closed_after"] = conn.is_closed()
        return rec


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--token", required=True, help="OAuth token (any string for fakesnow directly)")
    p.add_argument("--out", required=True, help="where to write the results JSON")
    p.add_argument("--account", default="acct")
    p.add_argument("--user", default="agent")
    p.add_argument("--database", default=None, help=f"default {DEFAULT_DATABASE}")
    p.add_argument("--schema", default=None, help=f"default {DEFAULT_SCHEMA}")
    p.add_argument(
        "--table-suffix",
        default="",
        help="appended to the table name so runs sharing a server don't clash ([A-Za-z0-9_])",
    )
    p.add_argument("--timeout", type=int, default=30, help="login/network timeout, seconds")
    args = p.parse_args(argv)
    for name in ("database", "schema", "table_suffix"):
        v = getattr(args, name)
        if v and not re.fullmatch(r"[A-Za-z0-9_]+", v):
            p.error(f"--{name.replace('_', '-')} must match [A-Za-z0-9_]+, got {v!r}")
    return args


def write(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False, sort_keys=False, allow_nan=False)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = Scenario(args)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        # run-specific inputs; compare.py ignores this section
        "meta": {
            "host": args.host,
            "port": args.port,
            "table": scenario.table,
            "database": scenario.database,
            "schema": scenario.schema,
            "connector_version": snowflake.connector.__version__,
        },
        "steps": scenario.steps,
    }
    try:
        scenario.run()
    except Exception as exc:  # noqa: BLE001 - any unexpected failure fails the run
        traceback.print_exc(file=sys.stderr)
        doc["failed"] = {"step": scenario.current_step, "error": error_record(exc), "class": type(exc).__name__}
        try:
            write(args.out, doc)
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
        print(
            f"scenario.py: FAILED in step {scenario.current_step!r}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    write(args.out, doc)
    print(f"scenario.py: OK, {len(scenario.steps)} steps written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
