"""`dam dev`: the API and `dagster dev` together, with DAGSTER_HOME under the data folder.

The Dagster UI has no authentication: it listens on 127.0.0.1 whatever `--host` (the API's address)
says, answers only loopback `Host` headers there, and listens elsewhere only when told so twice
(`--dagster-host` and `--dagster-behind-auth-proxy` or `--dagster-read-only`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dam_cli._common import (
    INSECURE_HELP,
    REPO_ROOT,
    bin_path,
    refuse_open_api,
    settings_or_exit,
)

# Beside the copy: the SHA-256 of what `dam dev` last wrote, so a later edit by hand is recognisable.
WRITTEN_MARK = ".dagster.yaml.written-by-dam"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _written_by_dam(current: bytes, template: bytes, mark: Path) -> bool:
    if mark.exists():
        return mark.read_text().strip() == _sha256(current)
    # A copy from before the mark existed: ours if it still opens with the project's header line.
    return current.split(b"\n", 1)[0] == template.split(b"\n", 1)[0]


def prepare_dagster_home(settings, template: Path = REPO_ROOT / "dagster.yaml") -> Path:
    """DAGSTER_HOME (default: DATA_DIR/dagster) holding the project's dagster.yaml.

    A copy this command wrote earlier is replaced when the project's file changed (a new run
    launcher, say); a copy edited by hand is kept, with a one-line warning.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    target, mark = home / "dagster.yaml", home / WRITTEN_MARK
    wanted = template.read_bytes()
    if target.exists():
        current = target.read_bytes()
        if current == wanted:
            mark.write_text(_sha256(wanted) + "\n")
            return home
        if not _written_by_dam(current, wanted, mark):
            print(f"dam dev: keeping {target} (edited by hand); it differs from {template}", file=sys.stderr)
            return home
        print(f"dam dev: updated {target} from {template}", file=sys.stderr)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(template, tmp)
    os.replace(tmp, target)
    mark.write_text(_sha256(wanted) + "\n")
    return home


def _restore_signals():
    # Children start with default handlers, so SIGTERM stops them (dagster dev ignores it otherwise).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


DAGSTER_EXPOSED_HELP = (
    "let --dagster-host be an address other than loopback: you have put a reverse proxy that "
    "authenticates (and checks the Host header) in front of the Dagster UI, which has no authentication"
)
DAGSTER_READ_ONLY_HELP = "serve the Dagster UI read-only (no launching, terminating or deleting runs, no wiping)"


def refuse_open_dagster(host: str, behind_proxy: bool, read_only: bool) -> bool:
    """True (after saying why) when the Dagster UI would listen beyond this machine, writable, unguarded."""
    # Here and below: the server module brings uvicorn, which `dam --help` should not load.
    from dam_ingest_api.server import is_loopback

    if is_loopback(host) or behind_proxy or read_only:
        return False
    print(
        f"dam dev: refusing to serve the Dagster UI on {host}: it has no authentication, and anyone who "
        "reaches it can launch, terminate and delete runs and wipe assets. Keep it on 127.0.0.1 (the "
        "default, whatever --host says; reach it through an SSH tunnel or a reverse proxy on this "
        "machine), add --dagster-read-only, or add --dagster-behind-auth-proxy if an authenticating "
        'reverse proxy stands in front of it (README, "Security").',
        file=sys.stderr,
    )
    return True


def dagster_env(env: dict, dagster_host: str, read_only: bool) -> dict:
    """The environment of `dagster dev`: read-only or not; the Host check on loopback (dagster_ui.py)."""
    # dagster_ui's own imports (inspect, runpy) and uvicorn (see refuse_open_dagster): not for `dam --help`.
    from dam_cli.dagster_ui import ALLOWED_HOSTS_ENV, LOOPBACK_HOSTS
    from dam_ingest_api.server import is_loopback

    env = dict(env)
    if read_only:
        env["DAGSTER_WEBSERVER_READ_ONLY"] = "true"  # dagster-webserver reads DAGSTER_WEBSERVER_<OPTION>
    else:
        env.pop("DAGSTER_WEBSERVER_READ_ONLY", None)
    if is_loopback(dagster_host):
        env[ALLOWED_HOSTS_ENV] = ",".join(dict.fromkeys([*LOOPBACK_HOSTS, dagster_host.strip("[]")]))
    else:
        env.pop(ALLOWED_HOSTS_ENV, None)  # exposed on purpose: the proxy in front checks Host
    return env


def _where(host: str) -> str:
    from dam_ingest_api.server import is_loopback  # uvicorn: see refuse_open_dagster

    if is_loopback(host):
        return "this machine only"
    return "every interface" if host in ("0.0.0.0", "::", "[::]") else "beyond this machine"


def with_model_server(env: dict, settings) -> dict:
    """The runs' environment: the warm models' socket, unless the user switched the server off or named one."""
    if settings.dam_model_server:
        return env
    return {**env, "DAM_MODEL_SERVER": str(settings.model_server_socket)}


class ModelServer:
    """`dam models serve` for the runs of this `dam dev`, started again when it dies (runs load their own meanwhile).

    A server that keeps failing (an offline hub, a missing model folder) is retried after 10 s, then
    20, 40 ... up to 5 minutes: loading models costs CPU the rest of `dam dev` needs.
    """

    FIRST_RETRY, LAST_RETRY = 10.0, 300.0

    def __init__(self, env: dict, settings):
        self.env, self.settings = env, settings
        self.proc: subprocess.Popen | None = None
        self.retry_after = self.FIRST_RETRY
        self.failed_at = 0.0
        self.start()

    def start(self) -> None:
        args = [bin_path("dam"), "models", "serve"]
        if self.settings.dam_model_server:
            args += ["--socket", self.settings.dam_model_server]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(args, env=self.env, preexec_fn=_restore_signals, start_new_session=True)

    def supervise(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if not self.failed_at:
            if now - self.started_at > self.LAST_RETRY:
                self.retry_after = self.FIRST_RETRY  # it had been serving: a fresh failure
            print(
                f"dam dev: the model server exited with {self.proc.returncode}; runs load their own models "
                f"until it is back (next try in {self.retry_after:.0f} s)",
                file=sys.stderr,
            )
            self.failed_at = now
        if now - self.failed_at >= self.retry_after:
            self.failed_at = 0.0
            self.retry_after = min(self.retry_after * 2, self.LAST_RETRY)
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # a half-written conversion is never loaded (build_once)
                self.proc.wait()


def cmd_dev(args) -> int:
    settings = settings_or_exit()
    if refuse_open_api(settings, args.host, args.insecure_no_auth, "dev"):
        return 2
    if refuse_open_dagster(args.dagster_host, args.dagster_behind_auth_proxy, args.dagster_read_only):
        return 2
    env = dict(os.environ)
    # The children get the resolved folder, so a relative or default DAM_DATA_DIR means the same to all.
    env["DAM_DATA_DIR"] = str(settings.data_dir)
    env["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    procs = {
        "api": subprocess.Popen(
            [bin_path("dam"), "api", "--host", args.host, "--port", str(args.port)]
            + (["--insecure-no-auth"] if args.insecure_no_auth else []),
            env=env,
            preexec_fn=_restore_signals,
            start_new_session=True,
        ),
        # `dagster dev` whose webserver refuses foreign Host headers on loopback (dam_cli/dagster_ui.py).
        "dagster": subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dam_cli.dagster_ui",
                "dev",
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
                "-h",
                args.dagster_host,
                "-p",
                str(args.dagster_port),
            ],
            env=dagster_env(with_model_server(env, settings), args.dagster_host, args.dagster_read_only),
            cwd=env["DAGSTER_HOME"],  # the repo root holds a dagster.yaml too, which Dagster would warn about
            preexec_fn=_restore_signals,
            start_new_session=True,
        ),
    }
    # The models load (and convert, DAM_RUNTIME) once, beside the start-up, in a process that keeps
    # them warm for every run (dam_models/serving.py); a run that finds no server loads its own, and
    # a conversion under way makes it wait on the same file lock instead of converting twice.
    models = ModelServer(env, settings) if settings.dam_model_server != "off" else None
    ui_mode = "read-only, " if args.dagster_read_only else ""
    print(
        f"dam dev: API on http://{args.host}:{args.port} ({_where(args.host)})\n"
        f"         Dagster UI on http://{args.dagster_host}:{args.dagster_port} ({ui_mode}{_where(args.dagster_host)}; "
        'no authentication: see README, "Security")\n'
        f"         data in {settings.data_dir}  (Ctrl-C stops both)",
        file=sys.stderr,
    )
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    rc = 0
    try:
        while not stopping:
            if models is not None:
                models.supervise()
            for name, p in procs.items():
                if p.poll() is not None:
                    print(f"dam dev: {name} exited with {p.returncode}; stopping", file=sys.stderr)
                    rc = p.returncode or 1
                    stopping = True
            time.sleep(0.5)
    finally:
        if models is not None:
            models.stop()
        for name, p in procs.items():
            if p.poll() is not None:
                continue
            if name == "dagster":
                # Stopped the way Ctrl-C stops it, by itself: it shuts the webserver and the daemon down
                # before their code server (a signal to its whole group at once let a sensor tick find
                # the code server gone and print a traceback on the way out).
                os.kill(p.pid, signal.SIGINT)
            else:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # anything of its group still there once it has exited
    return rc


def register(sub) -> None:
    s = sub.add_parser("dev", help="run the API and `dagster dev` together (Ctrl-C stops both)")
    s.add_argument("--host", default="127.0.0.1", help="the API's address (the Dagster UI's is --dagster-host)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--dagster-host",
        default="127.0.0.1",
        help="the Dagster UI's address (default 127.0.0.1 whatever --host says); another than loopback "
        "needs --dagster-behind-auth-proxy or --dagster-read-only",
    )
    s.add_argument("--dagster-port", type=int, default=3000)
    s.add_argument("--dagster-behind-auth-proxy", action="store_true", help=DAGSTER_EXPOSED_HELP)
    s.add_argument("--dagster-read-only", action="store_true", help=DAGSTER_READ_ONLY_HELP)
    s.add_argument("--insecure-no-auth", action="store_true", help=INSECURE_HELP)
    s.set_defaults(func=cmd_dev)
