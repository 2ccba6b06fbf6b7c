"""`dam table`: the assets table's commit log, compaction and vacuum."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dam_cli._common import dam_or_exit, say_no_data


def cmd_history(args) -> int:
    dam = dam_or_exit()
    log = dam.table.history(args.limit)
    if not log:
        say_no_data("table history", "assets table", dam.settings, "it appears when the first batch is processed")
        return 0
    if args.json:
        print(json.dumps(log, default=str, indent=1))
        return 0
    print(f"{'version':>7}  {'time (UTC)':<19}  {'operation':<14}  details")
    for entry in log:
        when = datetime.fromtimestamp(entry.get("timestamp", 0) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        params = entry.get("operationParameters") or {}
        metrics = entry.get("operationMetrics") or {}
        detail = params.get("predicate") or ""
        for name in (
            "num_added_rows",
            "num_deleted_rows",
            "num_copied_rows",
            "numFilesAdded",
            "numFilesRemoved",
            "numDeletedFiles",
        ):
            if name in metrics:
                detail += f" {name}={metrics[name]}"
        print(f"{entry.get('version', ''):>7}  {when:<19}  {entry.get('operation', ''):<14}  {detail.strip()}")
    return 0


def cmd_compact(args) -> int:
    dam = dam_or_exit()
    done = dam.table.compact(args.retention_hours)  # None: DAM_TABLE_RETENTION_HOURS
    if done is None:
        say_no_data("table compact", "assets table", dam.settings, "it appears when the first batch is processed")
        return 0
    print(
        f"files {done.files_before} -> {done.files_after} (compaction added {done.files_added}, removed "
        f"{done.files_removed}); vacuumed {done.vacuumed} file(s) older than {done.retention_hours:g} h; "
        f"version {done.version_before} -> {done.version_after}"
    )
    return 0


def register(sub) -> None:
    t = sub.add_parser("table", help="the assets table: history, compaction")
    tsub = t.add_subparsers(dest="table_command", required=True)
    h = tsub.add_parser("history", help="the commit log, newest first (versions for dam sql --as-of)")
    h.add_argument("--limit", type=int, default=20)
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_history)
    c = tsub.add_parser("compact", help="merge small files, then vacuum files older than the retention")
    c.add_argument(
        "--retention-hours",
        type=float,
        default=None,
        help="default DAM_TABLE_RETENTION_HOURS; 0 erases deleted rows from the history now",
    )
    c.set_defaults(func=cmd_compact)
