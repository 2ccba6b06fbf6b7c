"""`dam api`: the ingest API alone."""

from __future__ import annotations

import contextlib
import os
import sys

from dam_cli._common import INSECURE_HELP, refuse_open_api, settings_or_exit


def cmd_api(args) -> int:
    settings = settings_or_exit()
    if refuse_open_api(settings, args.host, args.insecure_no_auth, "api"):
        return 2
    if args.workers < 1:
        print("dam: --workers must be at least 1", file=sys.stderr)
        return 2
    from dam_core.metrics import ENV, use_multiprocess_dir  # tempfile and random: not for `dam --help`

    # Several workers answer /metrics for all of them only through shared files: the variable is
    # set (to an empty folder) before anything here imports prometheus_client or starts a worker.
    shared = settings.dam_metrics and (args.workers > 1 or bool(os.environ.get(ENV)))
    with use_multiprocess_dir() if shared else contextlib.nullcontext():
        # In here: the API imports prometheus_client, which must see the variable; and FastAPI is
        # not for `dam --help`.
        from dam_ingest_api.main import create_app
        from dam_ingest_api.server import run

        try:
            # With --workers N each worker builds its own app; this one checks the settings and the
            # wiring first, so a bad configuration fails here with one message, not once per worker.
            app = create_app(settings)
        except Exception as err:
            print(f"dam: cannot start the API: {err}", file=sys.stderr)
            return 2
        run(app, settings, args.host, args.port, log_level=args.log_level, workers=args.workers)
    return 0


def register(sub) -> None:
    s = sub.add_parser("api", help="serve the ingest API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes sharing the port (default 1); each has its own limits and connections",
    )
    s.add_argument("--log-level", default="info")
    s.add_argument("--insecure-no-auth", action="store_true", help=INSECURE_HELP)
    s.set_defaults(func=cmd_api)
