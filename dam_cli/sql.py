"""`dam sql`: SQL over the `assets` table with DuckDB."""

from __future__ import annotations

import sys

from dam_cli._common import dam_or_exit, existing_store, say_no_data
from dam_cli._format import format_result
from dam_core.layout import TABLE_PREFIX


def _has_table(dam) -> bool:
    store = existing_store(dam)
    return store is not None and next(iter(store.list(TABLE_PREFIX)), None) is not None


def cmd_sql(args) -> int:
    dam = dam_or_exit()
    try:
        con = dam.table.connect(as_of=args.as_of)
        rel = con.sql(args.query)
    except Exception as err:  # duckdb raises its own error family
        print(f"dam sql: {err}", file=sys.stderr)
        return 1
    if rel is not None:
        print(format_result(rel, args.format))
    if not _has_table(dam):
        say_no_data("sql", "assets table", dam.settings, "it appears when the first batch is processed")
    return 0


def register(sub) -> None:
    s = sub.add_parser("sql", help="query the assets table with DuckDB")
    s.add_argument("query")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument(
        "--as-of",
        metavar="VERSION|TIME",
        help="query an earlier version of the table: a version number (dam table history) or an ISO time",
    )
    s.set_defaults(func=cmd_sql)
