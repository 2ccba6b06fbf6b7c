"""`dam delete ID...`: delete assets everywhere, as `DELETE /assets/{id}` does (dam_core.deletion)."""

from __future__ import annotations

import json
import sys

from dam_cli._common import dam_or_exit, existing_store, say_no_data

_PARTS = ("original", "thumbnail", "vector", "marker")


def _describe(report) -> str:
    if not report.found:
        return f"{report.id}  not found"
    parts = [p for p in _PARTS if getattr(report, p)]
    if report.table_rows:
        parts.append(f"{report.table_rows} table row{'s' if report.table_rows != 1 else ''}")
    if report.index:
        parts.append("index")
    return f"{report.id}  deleted: {', '.join(parts) or 'nothing left to remove (deleted before)'}"


def cmd_delete(args) -> int:
    # Imported here, as below: pydantic and the table's libraries (0.1 s, 0.3 s) would slow `dam --help`.
    from dam_core.messages import is_asset_id

    bad = [i for i in args.ids if not is_asset_id(i)]
    if bad:
        print(
            f"dam delete: not an asset id (32 lowercase hex characters): {bad[0]!r}; nothing deleted", file=sys.stderr
        )
        return 2
    dam = dam_or_exit()
    if existing_store(dam) is None:
        say_no_data("delete", "assets", dam.settings, "nothing was deleted")
        return 1
    from dam_core.deletion import DeletionFailed, delete_assets
    from dam_core.store import StoreError

    try:
        reports = delete_assets(dam, args.ids)
    except DeletionFailed as err:
        print(
            f"dam delete: {err}; the assets are hidden already, run the same command again to finish", file=sys.stderr
        )
        return 1
    except StoreError as err:
        print(f"dam delete: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        for report in reports:
            print(_describe(report))
    missing = sum(not r.found for r in reports)
    if missing and not args.json:
        print(f"dam delete: {missing} id(s) not found", file=sys.stderr)
    return 1 if missing else 0


def register(sub) -> None:
    s = sub.add_parser(
        "delete", help="delete assets everywhere: original, thumbnail, vector, upload marker, table rows, index entry"
    )
    s.add_argument("ids", nargs="+", metavar="ID", help="asset ids (as `dam sql` and the API show them)")
    s.add_argument("--json", action="store_true", help="one JSON object per id: what was removed")
    s.set_defaults(func=cmd_delete)
