"""`dam upload`: send files and folders to the API, concurrently, with a progress bar."""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path


def collect(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files named, plus the image files found under folders named; and the names that do not exist."""
    from dam_core.images import file_suffixes  # Pillow: not for `dam --help`

    suffixes = file_suffixes()
    files, missing = [], []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes and not f.name.startswith(".")
            )
        elif p.is_file():
            files.append(p)
        else:
            missing.append(raw)
    return files, missing


def cmd_upload(args) -> int:
    # httpx and tqdm (0.1 s): only for this command, not for `dam --help`.
    import httpx
    from tqdm import tqdm

    files, missing = collect(args.paths)
    failures: list[tuple[str, str]] = [(m, "no such file or folder") for m in missing]
    if not files:
        print("dam upload: nothing to upload", file=sys.stderr)
        for name, why in failures:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    url = args.url.rstrip("/") + "/upload"
    uploaded: list[dict[str, object]] = []  # the API's answers, with the file's path
    present: list[dict[str, object]] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(headers=headers, timeout=httpx.Timeout(120, connect=5), limits=limits) as client:

        def send(path: Path):
            with open(path, "rb") as fh:
                r = client.post(url, files={"file": (path.name, fh, "application/octet-stream")})
            return path, r

        with (
            ThreadPoolExecutor(args.concurrency) as pool,
            tqdm(total=len(files), unit="file", disable=args.quiet, file=sys.stderr) as bar,
        ):
            futures = [pool.submit(send, f) for f in files]
            for fut in as_completed(futures):
                try:
                    path, r = fut.result()
                except httpx.HTTPError as err:
                    failures.append(("?", f"request failed: {err}"))
                    bar.update(1)
                    continue
                if r.status_code in (200, 202):
                    body = r.json()
                    # The same bytes were uploaded before: nothing was stored or queued this time.
                    (present if body.get("duplicate") is True else uploaded).append({"path": str(path), **body})
                else:
                    try:
                        detail = r.json().get("detail", r.text)
                    except ValueError:
                        detail = r.text
                    failures.append((str(path), f"{r.status_code} {detail}"))
                bar.update(1)
    if args.json:
        print(
            json.dumps(
                {
                    "uploaded": uploaded,
                    "already_present": present,
                    "failed": [{"path": p, "error": e} for p, e in failures],
                },
                indent=1,
            )
        )
    else:
        print(
            f"uploaded {len(uploaded)} of {len(files) + len(missing)} file(s), already present {len(present)}"
            + (f", failed {len(failures)}" if failures else "")
        )
        for name, why in failures:
            print(f"  failed {name}: {why}")
    return 0 if not failures else 1


def register(sub) -> None:
    s = sub.add_parser("upload", help="upload image files and folders")
    s.add_argument("paths", nargs="+")
    s.add_argument("--url", default=os.environ.get("DAM_API_URL", "http://127.0.0.1:8000"))
    s.add_argument("--api-key", default=os.environ.get("DAM_API_KEY"))
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--json", action="store_true", help="print results as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_upload)
