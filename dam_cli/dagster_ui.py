"""`dagster dev` for `dam dev`, with a webserver that answers only requests addressed to this machine.

dagster-webserver has no authentication and no allowed-hosts setting (1.13: its Starlette app takes
no middleware from the command line or `dagster.yaml`): it answers any `Host` header. A web page the
user opens can therefore reach a UI on 127.0.0.1 by DNS rebinding (its own name re-resolved to
127.0.0.1, the page is same-origin with the UI) and post GraphQL mutations: launch, terminate and
delete runs, wipe assets. Browsers still send the page's name as `Host`, so refusing every `Host`
that is not a loopback name closes that door.

`python -m dam_cli.dagster_ui dev ARGS` is `dagster dev ARGS` unchanged (same daemon, same shared
code server, same shutdown pipes), except that the webserver process it starts is
`python -m dam_cli.dagster_ui webserver ARGS`: dagster-webserver's own command line, whose app is
wrapped in `HostCheck` when `DAM_DAGSTER_ALLOWED_HOSTS` names hosts (`dam dev` sets it while the UI
listens on loopback). Both hooks are checked before anything starts: a Dagster that spawns its
webserver another way stops `dam dev` with a message instead of serving without the check.

The daemon it starts is `python -m dam_cli.dagster_ui daemon ARGS`: dagster-daemon's own command
line with `QuietTicks` on its sensor logger, so a sensor tick that did nothing prints nothing (the
daemon logs two lines per sensor per tick otherwise, every few seconds); the tick is still in the UI.
"""

from __future__ import annotations

import inspect
import logging
import os
import runpy
import sys
import warnings
from collections.abc import Iterable

ALLOWED_HOSTS_ENV = "DAM_DAGSTER_ALLOWED_HOSTS"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_WEBSERVER_MODULE = ["-m", "dagster_webserver"]
_DAEMON_MODULE = ["-m", "dagster._daemon"]
_SENSOR_LOGGER = "dagster.daemon.SensorDaemon"
_THIS_MODULE = "dam_cli.dagster_ui"  # not __name__: that is "__main__" under `python -m`


def host_of(value: str) -> str:
    """The host part of a `Host` header value, lowercase, without port, brackets or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:3000
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:  # name:port (several colons: a bare IPv6 address)
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class HostCheck:
    """ASGI middleware: HTTP requests and websockets whose `Host` is not allowed get 400 / close 1008."""

    def __init__(self, app, allowed: Iterable[str]):
        self.app = app
        self.allowed = frozenset(host_of(h) for h in allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_of(raw) not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
                    return
                body = (
                    f"Host {raw!r} is not served here: the Dagster UI answers only requests addressed to "
                    f"{', '.join(sorted(self.allowed))} (a guard against DNS rebinding).\n"
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def allowed_hosts(environ) -> list[str] | None:
    """The hosts named in DAM_DAGSTER_ALLOWED_HOSTS (comma-separated); None (no check) when unset or empty."""
    hosts = [h.strip() for h in (environ.get(ALLOWED_HOSTS_ENV) or "").split(",") if h.strip()]
    return hosts or None


def _webserver(argv: list[str]) -> None:
    # Dagster's modules are imported by the mode that hooks them: `dam dev` imports this module for
    # its constants, and the daemon process needs none of the webserver.
    import dagster_webserver.cli as webserver_cli

    hosts = allowed_hosts(os.environ)
    if hosts is not None:
        create = webserver_cli.create_app_from_workspace_process_context

        def create_checked(*args, **kwargs):
            return HostCheck(create(*args, **kwargs), hosts)

        webserver_cli.create_app_from_workspace_process_context = create_checked
    sys.argv = ["dagster-webserver", *argv]
    webserver_cli.main()


def _hooks_fit() -> str | None:
    """Why the two hooks would not take effect with the installed Dagster; None when they do."""
    import dagster._cli.dev as dagster_dev  # Dagster: see _webserver
    import dagster_webserver.cli as webserver_cli

    if not callable(getattr(dagster_dev, "open_ipc_subprocess", None)):
        return "dagster._cli.dev has no open_ipc_subprocess"
    if '"-m", "dagster_webserver"' not in inspect.getsource(dagster_dev):
        return "dagster dev no longer starts `python -m dagster_webserver`"
    if "create_app_from_workspace_process_context(" not in inspect.getsource(
        webserver_cli.host_dagster_ui_with_workspace_process_context
    ):
        return "dagster-webserver no longer builds its app with create_app_from_workspace_process_context"
    return None


class QuietTicks(logging.Filter):
    """Drops the sensor daemon's per-tick lines for ticks that returned nothing to say."""

    IDLE = ("Checking for new runs for sensor: ", "No run requests returned for ")
    EMPTY = "skipped: Sensor function returned an empty result"  # a SensorResult() with nothing in it

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(self.IDLE) or message.endswith(self.EMPTY))


def _daemon(argv: list[str]) -> None:
    logging.getLogger(_SENSOR_LOGGER).addFilter(QuietTicks())
    sys.argv = ["dagster-daemon", *argv]
    runpy.run_module("dagster._daemon", run_name="__main__", alter_sys=True)


def _dev(argv: list[str]) -> None:
    import dagster._cli as dagster_cli  # Dagster: see _webserver
    import dagster._cli.dev as dagster_dev

    why = _hooks_fit()
    if why is not None:
        print(
            f"dam dev: cannot guard the Dagster UI's Host header with this Dagster ({why}); "
            "refusing to start it unguarded",
            file=sys.stderr,
        )
        raise SystemExit(2)
    spawn = dagster_dev.open_ipc_subprocess

    def open_ipc_subprocess(parts, *args, **kwargs):
        parts = list(parts)
        if parts[1:3] == _WEBSERVER_MODULE:
            parts = [parts[0], "-m", _THIS_MODULE, "webserver", *parts[3:]]
        elif parts[1:3] == _DAEMON_MODULE:
            parts = [parts[0], "-m", _THIS_MODULE, "daemon", *parts[3:]]
        return spawn(parts, *args, **kwargs)

    dagster_dev.open_ipc_subprocess = open_ipc_subprocess
    sys.argv = ["dagster", "dev", *argv]
    # `dam dev` is the supported entry point here; Dagster's notice that `dagster dev` is superseded
    # by `dg dev` (a project scaffolding tool this project does not use) is not the user's business.
    warnings.filterwarnings("ignore", message=r".*superseded.*dg dev", category=Warning)
    dagster_cli.main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, rest = (argv[0], argv[1:]) if argv else ("", [])
    if mode == "dev":
        _dev(rest)
    elif mode == "webserver":
        _webserver(rest)
    elif mode == "daemon":
        _daemon(rest)
    else:
        print("usage: python -m dam_cli.dagster_ui dev|webserver|daemon [dagster options]", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
