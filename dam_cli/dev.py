"""`dam dev`: the API and `dagster dev` together, with DAGSTER_HOME under the data folder."""

from __future__ import annotations

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


def cmd_dev(args) -> int:
    settings = settings_or_exit()
    if refuse_open_api(settings, args.host, args.insecure_no_auth, "dev"):
        return 2
    env = dict(os.environ)
    # The children get the resolved folder, so a relative or default DAM_DATA_DIR means the same to all.
    env["DAM_DATA_DIR"] = str(settings.data_dir)
    env["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    procs = {
        "api": subprocess.Popen(
            [bin_path("dam"), "api", "--host", args.host, "--port", str(args.port)]
            + (["--insecure-no-auth"] if args.insecure_no_auth else []),
            env=env, preexec_fn=_restore_signals, start_new_session=True,
        ),
        "dagster": subprocess.Popen(
            [bin_path("dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
             "-h", args.host, "-p", str(args.dagster_port)],
            env=env, cwd=str(REPO_ROOT), preexec_fn=_restore_signals, start_new_session=True,
        ),
    }
    print(
        f"dam dev: API on http://{args.host}:{args.port}  Dagster UI on http://{args.host}:{args.dagster_port}\n"
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
            for name, p in procs.items():
                if p.poll() is not None:
                    print(f"dam dev: {name} exited with {p.returncode}; stopping", file=sys.stderr)
                    rc = p.returncode or 1
                    stopping = True
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return rc


def register(sub) -> None:
    s = sub.add_parser("dev", help="run the API and `dagster dev` together (Ctrl-C stops both)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--dagster-port", type=int, default=3000)
    s.add_argument("--insecure-no-auth", action="store_true", help=INSECURE_HELP)
    s.set_defaults(func=cmd_dev)
