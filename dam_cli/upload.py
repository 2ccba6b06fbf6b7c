"""`dam upload`: send files and folders to the API, concurrently, with a progress bar.

Only the files the API does not hold already are sent (see _held.py): straight to the S3/R2 store
when the API signs direct uploads (_direct.py: large files in parts, resumed after a kill), else
through POST /upload.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from dam_cli._direct import PART_THREADS, BucketUnreachable, DirectSender, StoreRefused, offers_direct
from dam_cli._held import ToSend, answer_detail, split_held
from dam_cli._resume import UploadStates, default_state_dir


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
    states = UploadStates(Path(args.state_dir) if args.state_dir else default_state_dir())
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(headers=headers, timeout=httpx.Timeout(120, connect=5), limits=limits) as client:
        with tqdm(total=len(files), unit="file", desc="checking", disable=args.quiet, file=sys.stderr) as bar:
            to_send, present, unreadable = split_held(client, base_url, files, args.concurrency, bar)
        failures += unreadable
        for item in present:  # sent by a run that stopped before it could say so: nothing to resume
            states.remove(str(item["sha256"]))
        direct = bool(to_send) and not args.no_direct and offers_direct(client, base_url)
        try:
            uploaded, duplicates, failed = send_all(client, base_url, to_send, direct, states, args)
        except KeyboardInterrupt:
            print("dam upload: interrupted; run the same command again to send the rest", file=sys.stderr)
            return 130
    present += duplicates
    failures += failed
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


Answers = list[dict[str, object]]


def send_all(
    client, base_url: str, to_send: ToSend, direct: bool, states: UploadStates, args
) -> tuple[Answers, Answers, list[tuple[str, str]]]:
    """(uploaded, already present, failed): each file through the direct path or POST /upload, a few at
    a time, with a bar in bytes."""
    import httpx
    from tqdm import tqdm

    uploaded: Answers = []  # the API's answers, with the file's path
    present: Answers = []
    failures: list[tuple[str, str]] = []
    total = sum(size_or_zero(path) for path, _ in to_send)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="uploading" + (" (direct)" if direct else ""),
        disable=args.quiet or not to_send,
        file=sys.stderr,
    )
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    store_limits = httpx.Limits(max_connections=args.concurrency * PART_THREADS)
    with (
        bar,
        httpx.Client(timeout=httpx.Timeout(300, connect=5), limits=store_limits) as store,  # no API key for the bucket
        ThreadPoolExecutor(args.concurrency) as pool,
    ):
        sender = DirectSender(client, store, base_url, states, advance) if direct else None
        unreachable: list[str] = []  # the bucket's address, once it refused the connection

        def post(path: Path) -> httpx.Response:
            with open(path, "rb") as fh:
                r = client.post(base_url + "/upload", files={"file": (path.name, fh, "application/octet-stream")})
            advance(size_or_zero(path))
            return r

        def send(path: Path, sha: str | None) -> tuple[Path, httpx.Response | Exception]:
            try:
                if sender is None or unreachable:
                    return path, post(path)
                try:
                    return path, sender.send(path, sha)
                except BucketUnreachable as err:
                    with lock:
                        if not unreachable:
                            unreachable.append(str(err))
                            print(
                                f"dam upload: the bucket at {err} cannot be reached from here; "
                                "sending through POST /upload",
                                file=sys.stderr,
                            )
                    return path, post(path)
            except (httpx.HTTPError, OSError, StoreRefused) as err:
                return path, err

        futures = [pool.submit(send, path, sha) for path, sha in to_send]
        try:
            for fut in as_completed(futures):
                path, r = fut.result()
                if isinstance(r, StoreRefused):
                    failures.append((str(path), str(r)))
                elif isinstance(r, Exception):
                    failures.append((str(path), f"request failed: {r}"))
                elif r.status_code in (200, 202):
                    body = r.json()
                    # The same bytes were uploaded before: nothing was stored or queued this time.
                    (present if body.get("duplicate") is True else uploaded).append({"path": str(path), **body})
                else:
                    failures.append((str(path), f"{r.status_code} {answer_detail(r)}"))
        except KeyboardInterrupt:
            # Files not begun are dropped, parts not begun too; the PUTs in flight end (the pool waits).
            for fut in futures:
                fut.cancel()
            if sender is not None:
                sender.stop()
            raise
    return uploaded, present, failures


def size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # sending it says why


def register(sub) -> None:
    s = sub.add_parser(
        "upload",
        help="upload image files and folders; files the API holds already (same bytes) are counted, not sent",
        description=(
            "Upload image files and folders. Each file is hashed (SHA-256) and the API asked which it holds "
            "already: those (processed, failed or queued) are counted as already present and not sent. A file "
            "whose asset was deleted is sent again and becomes a new asset. When the API's store is S3/R2, the "
            "bytes go straight to the bucket through URLs the API signs; files over 8 MiB in parts, so that "
            "running the same command again after an interruption sends only the parts not stored yet."
        ),
    )
    s.add_argument("paths", nargs="+")
    s.add_argument("--url", default=os.environ.get("DAM_API_URL", "http://127.0.0.1:8000"))
    s.add_argument("--api-key", default=os.environ.get("DAM_API_KEY"))
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--json", action="store_true", help="print results as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--no-direct",
        action="store_true",
        help="send every file through POST /upload, also when the API signs direct uploads to its S3/R2 store",
    )
    s.add_argument(
        "--state-dir",
        help="where multipart uploads in progress are kept, so that a run cut short resumes "
        "(default: $XDG_STATE_HOME/dam/uploads, else ~/.local/state/dam/uploads)",
    )
    s.set_defaults(func=cmd_upload)
