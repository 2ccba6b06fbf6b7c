"""The `dam` command: serve the API, run the whole pipeline, upload files, query with SQL."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}


def _settings_or_exit():
    from dam_core.settings import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as err:
        print(f"dam: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- api


def _refuse_open_api(settings, host: str, insecure: bool, command: str) -> bool:
    """True (after saying why) when the API would listen beyond this machine with no key."""
    from dam_ingest_api.server import is_loopback

    if settings.dam_api_key is not None or insecure or is_loopback(host):
        return False
    print(
        f"dam {command}: refusing to serve the API on {host} without DAM_API_KEY: anyone who can reach "
        "this address could upload and read every image. Set DAM_API_KEY, listen on 127.0.0.1, "
        "or pass --insecure-no-auth if the network in front of it does the authentication.",
        file=sys.stderr,
    )
    return True


def cmd_api(args) -> int:
    settings = _settings_or_exit()
    if _refuse_open_api(settings, args.host, args.insecure_no_auth, "api"):
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


# ----------------------------------------------------------------------------- upload


def _collect(paths: list[str]) -> tuple[list[Path], list[str]]:
    files, missing = [], []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
        elif p.is_file():
            files.append(p)
        else:
            missing.append(raw)
    return files, missing


def cmd_upload(args) -> int:
    import httpx
    from tqdm import tqdm

    files, missing = _collect(args.paths)
    failures: list[tuple[str, str]] = [(m, "no such file or folder") for m in missing]
    if not files:
        print("dam upload: nothing to upload", file=sys.stderr)
        for name, why in failures:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    url = args.url.rstrip("/") + "/upload"
    results = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(headers=headers, timeout=httpx.Timeout(120, connect=5), limits=limits) as client:

        def send(path: Path):
            with open(path, "rb") as fh:
                r = client.post(url, files={"file": (path.name, fh, "application/octet-stream")})
            return path, r

        with ThreadPoolExecutor(args.concurrency) as pool, tqdm(
            total=len(files), unit="file", disable=args.quiet, file=sys.stderr
        ) as bar:
            futures = [pool.submit(send, f) for f in files]
            for fut in as_completed(futures):
                try:
                    path, r = fut.result()
                except httpx.HTTPError as err:
                    failures.append(("?", f"request failed: {err}"))
                    bar.update(1)
                    continue
                if r.status_code in (200, 202):
                    results.append({"path": str(path), **r.json()})
                else:
                    try:
                        detail = r.json().get("detail", r.text)
                    except ValueError:
                        detail = r.text
                    failures.append((str(path), f"{r.status_code} {detail}"))
                bar.update(1)
    if args.json:
        print(json.dumps({"uploaded": results, "failed": [{"path": p, "error": e} for p, e in failures]}, indent=1))
    else:
        print(f"uploaded {len(results)} of {len(files) + len(missing)} file(s)")
        for name, why in failures:
            print(f"  failed {name}: {why}")
    return 0 if not failures else 1


# ----------------------------------------------------------------------------- dev


def _dagster_home(settings) -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def _restore_signals():
    # Children start with default handlers, so SIGTERM stops them (dagster dev ignores it otherwise).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def cmd_dev(args) -> int:
    settings = _settings_or_exit()
    if _refuse_open_api(settings, args.host, args.insecure_no_auth, "dev"):
        return 2
    env = dict(os.environ)
    env["DAM_DATA_DIR"] = str(settings.data_dir)
    env["DAGSTER_HOME"] = str(_dagster_home(settings))
    bindir = Path(sys.executable).parent
    procs = {
        "api": subprocess.Popen(
            [str(bindir / "dam"), "api", "--host", args.host, "--port", str(args.port)]
            + (["--insecure-no-auth"] if args.insecure_no_auth else []),
            env=env, preexec_fn=_restore_signals, start_new_session=True,
        ),
        "dagster": subprocess.Popen(
            [str(bindir / "dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
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


# ----------------------------------------------------------------------------- sql


def cmd_sql(args) -> int:
    settings = _settings_or_exit()
    from dam_core.table import connect, format_result

    try:
        con = connect(settings)
        rel = con.sql(args.query)
    except Exception as err:  # duckdb raises its own error family
        print(f"dam sql: {err}", file=sys.stderr)
        return 1
    if rel is None:
        return 0
    print(format_result(rel, args.format))
    return 0


# ----------------------------------------------------------------------------- search


def cmd_search(args) -> int:
    settings = _settings_or_exit()
    from dam_core.store import make_store
    from dam_ingest_api.catalog import Catalog, SearchUnavailable

    text = args.text.strip()
    if not text:
        print("dam search: the query is empty", file=sys.stderr)
        return 2
    if not 1 <= args.k <= 1000:
        print("dam search: --k must be between 1 and 1000", file=sys.stderr)
        return 2
    catalog = Catalog(settings, make_store(settings))
    if catalog.snapshot is None:
        print("dam search: no search index yet (it is built after the first batch is processed)", file=sys.stderr)
        return 1
    try:
        items = catalog.search_text(text, args.k)
    except SearchUnavailable as err:
        print(f"dam search: {err}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(items, indent=1, ensure_ascii=False))
        return 0
    for rank, it in enumerate(items, 1):
        tags = ", ".join(it["tags"])
        print(f"{rank:>3}  {it['score']:.4f}  {it['id']}  {it['filename']}\n       {it['caption'] or ''}" + (f"  [{tags}]" if tags else ""))
    if not items:
        print("no results")
    return 0


# ----------------------------------------------------------------------------- models


def cmd_models_tiny(args) -> int:
    from dam_models.tiny import write_tiny_models

    blip, clip = write_tiny_models(Path(args.dir))
    print(f"export DAM_CAPTION_MODEL={blip}\nexport DAM_EMBEDDING_MODEL={clip}")
    return 0


_INSECURE_HELP = "serve on a non-loopback --host without DAM_API_KEY (otherwise refused)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dam", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("api", help="serve the ingest API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    s.add_argument("--insecure-no-auth", action="store_true", help=_INSECURE_HELP)
    s.set_defaults(func=cmd_api)

    s = sub.add_parser("dev", help="run the API and `dagster dev` together (Ctrl-C stops both)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--dagster-port", type=int, default=3000)
    s.add_argument("--insecure-no-auth", action="store_true", help=_INSECURE_HELP)
    s.set_defaults(func=cmd_dev)

    s = sub.add_parser("upload", help="upload image files and folders")
    s.add_argument("paths", nargs="+")
    s.add_argument("--url", default=os.environ.get("DAM_API_URL", "http://127.0.0.1:8000"))
    s.add_argument("--api-key", default=os.environ.get("DAM_API_KEY"))
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--json", action="store_true", help="print results as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_upload)

    s = sub.add_parser("sql", help="query the assets table with DuckDB")
    s.add_argument("query")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("search", help="find images by meaning, from the search index")
    s.add_argument("text")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("models", help="model utilities")
    msub = s.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("tiny", help="write tiny random BLIP and CLIP models to DIR/blip and DIR/clip")
    t.add_argument("dir")
    t.set_defaults(func=cmd_models_tiny)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
