"""`dam api`: the ingest API alone."""

from __future__ import annotations

import sys

from dam_cli._common import INSECURE_HELP, refuse_open_api, settings_or_exit


def cmd_api(args) -> int:
    settings = settings_or_exit()
    if refuse_open_api(settings, args.host, args.insecure_no_auth, "api"):
        return 2
    from dam_ingest_api.main import create_app
    from dam_ingest_api.server import run

    try:
        app = create_app(settings)
    except Exception as err:
        print(f"dam: cannot start the API: {err}", file=sys.stderr)
        return 2
    run(app, settings, args.host, args.port, log_level=args.log_level)
    return 0


def register(sub) -> None:
    s = sub.add_parser("api", help="serve the ingest API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    s.add_argument("--insecure-no-auth", action="store_true", help=INSECURE_HELP)
    s.set_defaults(func=cmd_api)
