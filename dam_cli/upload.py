"""`dam upload`: send files and folders to the API, concurrently, with a progress bar.

Only the files the API does not hold already are sent (see _held.py).
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from dam_cli._held import answer_detail, split_held


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
    base_url = args.url.rstrip("/")
    url = base_url + "/upload"
    uploaded: list[dict[str, object]] = []  # the API's answers, with the file's path
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(headers=headers, timeout=httpx.Timeout(120, connect=5), limits=limits) as client:
        with tqdm(total=len(files), unit="file", desc="checking", disable=args.quiet, file=sys.stderr) as bar:
            to_send, present, unreadable = split_held(client, base_url, files, args.concurrency, bar)
        failures += unreadable

        def send(path: Path) -> tuple[Path, httpx.Response | Exception]:
            try:
                with open(path, "rb") as fh:
                    return path, client.post(url, files={"file": (path.name, fh, "application/octet-stream")})
            except (httpx.HTTPError, OSError) as err:
                return path, err

        with (
            ThreadPoolExecutor(args.concurrency) as pool,
            tqdm(
                total=len(to_send), unit="file", desc="uploading", disable=args.quiet or not to_send, file=sys.stderr
            ) as bar,
        ):
            futures = [pool.submit(send, f) for f in to_send]
            for fut in as_completed(futures):
                path, r = fut.result()
                if isinstance(r, Exception):
                    failures.append((str(path), f"request failed: {r}"))
                elif r.status_code in (200, 202):
                    body = r.json()
                    # The same bytes were uploaded before: nothing was stored or queued this time.
                    (present if body.get("duplicate") is True else uploaded).append({"path": str(path), **body})
                else:
                    failures.append((str(path), f"{r.status_code} {answer_detail(r)}"))
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
    s = sub.add_parser(
        "upload",
        help="upload image files and folders; files the API holds already (same bytes) are counted, not sent",
        description=(
            "Upload image files and folders. Each file is hashed (SHA-256) and the API asked which it holds "
            "already: those (processed, failed or queued) are counted as already present and not sent. A file "
            "whose asset was deleted is sent again and becomes a new asset."
        ),
    )
    s.add_argument("paths", nargs="+")
    s.add_argument("--url", default=os.environ.get("DAM_API_URL", "http://127.0.0.1:8000"))
    s.add_argument("--api-key", default=os.environ.get("DAM_API_KEY"))
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--json", action="store_true", help="print results as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_upload)
