"""Which files the API holds already: each file hashed here (SHA-256), the digests sent to
POST /assets/check in batches. `dam upload` then sends only the others.

Held: processed, error or queued (sending one is answered as a duplicate). A deleted asset is not
held: uploading it again after the delete makes it anew. An API older than the route (404, 405)
is sent every file; one that cannot answer this time (an error) is sent that batch.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHECK_BATCH = 1000  # digests per POST /assets/check: the API's limit (dam_ingest_api.routes.check.MAX_DIGESTS)
HELD = ("processed", "error", "queued")


class RouteMissing(Exception):
    """The API predates POST /assets/check."""


def hash_file(path: Path) -> str:
    """The file's SHA-256, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def ask_states(client, base_url: str, digests: list[str]) -> dict[str, str] | None:
    """Each digest's state from POST /assets/check; None (after saying why) when the API could not tell.

    Raises RouteMissing for an API older than the route (404, 405).
    """
    import httpx

    try:
        r = client.post(f"{base_url}/assets/check", json={"sha256": digests})
    except httpx.HTTPError as err:
        why = str(err)
    else:
        if r.status_code in (404, 405):
            raise RouteMissing
        if r.status_code == 200:
            try:
                return {item["sha256"]: item["state"] for item in r.json()["items"]}
            except (ValueError, KeyError, TypeError):
                pass
        why = f"{r.status_code} {answer_detail(r)}"
    print(f"dam upload: could not ask the API which files it holds ({why}); sending them", file=sys.stderr)
    return None


Files = list[Path]
ToSend = list[tuple[Path, str | None]]  # with its SHA-256 when it was hashed
Failures = list[tuple[str, str]]


def split_held(
    client, base_url: str, files: Files, threads: int, bar
) -> tuple[ToSend, list[dict[str, object]], Failures]:
    """(files to send with their digests, the ones the API holds already, the unreadable ones): hashed
    here, checked in batches.

    An API without the check route gets every file sent (it answers the held ones as duplicates);
    the files after the first batch are then not hashed (their digest is None).
    """
    to_send: ToSend = []
    held: list[dict[str, object]] = []
    unreadable: Failures = []

    def digest(path: Path) -> str | OSError:
        try:
            return hash_file(path)
        except OSError as err:
            return err

    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(files), CHECK_BATCH):
            batch = files[start : start + CHECK_BATCH]
            hashed: list[tuple[Path, str]] = []
            for path, sha in zip(batch, pool.map(digest, batch), strict=True):
                bar.update(1)
                if isinstance(sha, OSError):
                    unreadable.append((str(path), f"cannot read: {sha.strerror or sha}"))
                else:
                    hashed.append((path, sha))
            try:
                states = (ask_states(client, base_url, [sha for _, sha in hashed]) if hashed else None) or {}
            except RouteMissing:
                bar.update(len(files) - start - len(batch))
                rest: ToSend = [(path, None) for path in files[start + len(batch) :]]
                return to_send + hashed + rest, held, unreadable
            for path, sha in hashed:
                state = states.get(sha)
                if state in HELD:
                    held.append({"path": str(path), "id": sha[:32], "sha256": sha, "status": state, "duplicate": True})
                else:
                    to_send.append((path, sha))
    return to_send, held, unreadable


def answer_detail(r) -> str:
    """The `detail` of an error answer, else its text."""
    try:
        return str(r.json().get("detail", r.text))
    except (ValueError, AttributeError):
        return r.text
