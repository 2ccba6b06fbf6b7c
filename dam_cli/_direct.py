"""`dam upload` over the direct path: the bytes go to the S3/R2 store through URLs the API signs.

The routes are Uppy Companion's (docs/http-api.md, "Direct-to-store uploads"). A file up to
MULTIPART_ABOVE is one presigned PUT that declares its SHA-256 and size (the store refuses other
bytes), then `POST /s3/complete`. A larger one is a multipart upload: parts of `part_size` (S3's
smallest but the last) PUT a few at a time, then completed with their ETags. Its upload is saved
(_resume.py) as soon as it starts, so a run cut short asks the store which parts it holds and
sends only the others. Every completion answers as `POST /upload` does.

The bucket's address is the one the API uses, which this machine may not reach (a compose network's
`http://minio:9000`): a bucket never reached in this run that refuses the connection raises
BucketUnreachable, and the caller sends through `POST /upload` instead.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from dam_cli._held import hash_file
from dam_cli._resume import UploadState, UploadStates

MiB = 1024 * 1024
MULTIPART_ABOVE = 8 * MiB
MIN_PART_BYTES = 5 * MiB  # S3's and R2's smallest part, the last one excepted
S3_MAX_PARTS = 10_000
PART_THREADS = 4  # parts of one file in flight at once
PUT_ATTEMPTS = 3
SNIFF_BYTES = 64 * 1024  # read to name the file's type: a supported format's header fits
_READ = 256 * 1024
_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>(?:.*?<Message>([^<]*)</Message>)?", re.S)


class StoreRefused(Exception):
    """The store did not take a PUT, after retries."""


class Stopped(Exception):
    """The run is being interrupted: no more parts are begun."""


class BucketUnreachable(Exception):
    """No connection to the bucket's address from here, and none was ever made in this run."""


class _Answered(Exception):
    """An API call answered otherwise than hoped: that answer is the file's result."""

    def __init__(self, response):
        super().__init__(response.status_code)
        self.response = response


def offers_direct(client, base_url: str) -> bool:
    """Whether the API signs direct uploads: it calls a malformed key a 400 there; the local-folder
    store (or an API older than the routes) answers 404. Nothing is created by asking."""
    import httpx

    try:
        return client.get(f"{base_url}/s3/multipart/probe", params={"key": "probe"}).status_code == 400
    except httpx.HTTPError:
        return False  # POST /upload will say what is wrong, file by file


def part_size(size: int) -> int:
    """5 MiB, or more for a file that would need over 10,000 parts (whole MiB)."""
    return max(MIN_PART_BYTES, -(-size // S3_MAX_PARTS // MiB) * MiB)


def part_ranges(size: int, part_bytes: int) -> dict[int, tuple[int, int]]:
    """Part number -> (offset, length)."""
    return {n: (off, min(part_bytes, size - off)) for n, off in enumerate(range(0, size, part_bytes), 1)}


def read_range(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        while length > 0 and (chunk := fh.read(min(_READ, length))):
            length -= len(chunk)
            yield chunk


def store_error(r) -> str:
    """`403 AccessDenied: Request has expired` from S3's XML error, else the status and some text."""
    m = _S3_ERROR.search(r.text)
    detail = f"{m.group(1)}: {m.group(2)}" if m and m.group(2) else (m.group(1) if m else r.text[:200])
    return f"{r.status_code} {detail}".strip()


class _Moved:
    """The bytes of one file shown on the bar so far; a file ends shown in full, however it ended."""

    def __init__(self, advance: Callable[[int], None]):
        self.advance = advance
        self.n = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.n += n
        self.advance(n)

    def rest(self, size: int) -> None:
        self.add(max(0, size - self.n))


class DirectSender:
    """Sends files over the direct path: `api` carries the API key, `store` (no key) PUTs to the bucket."""

    def __init__(self, api, store, base_url: str, states: UploadStates, advance: Callable[[int], None]):
        self.api = api
        self.store = store
        self.base_url = base_url
        self.states = states
        self.advance = advance
        self.reached = False  # a PUT to the bucket succeeded in this run: a failure later is the network's
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Begin no more parts (Ctrl-C): what is stored stays, and the next run resumes from it."""
        self.stopping.set()

    def send(self, path: Path, sha256: str | None):
        """The API's answer to the completion, or to the call that refused the file.

        Raises StoreRefused, httpx.HTTPError and OSError (a multipart upload so cut short is
        resumed by the next run), and BucketUnreachable (nothing shown on the bar: send it another way).
        """
        size = path.stat().st_size
        sha = sha256 or hash_file(path)  # an API without POST /assets/check: not hashed yet
        moved = _Moved(self.advance)
        try:
            answer = self._send(path, sha, size, moved)
        except BucketUnreachable:
            moved.add(-moved.n)
            raise
        except BaseException:
            moved.rest(size)
            raise
        moved.rest(size)
        return answer

    def _send(self, path: Path, sha: str, size: int, moved: _Moved):
        try:
            if size > MULTIPART_ABOVE:
                return self._multipart(path, sha, size, moved)
            return self._single(path, sha, size, moved)
        except _Answered as answered:
            return answered.response

    # -- the API's side

    def _call(self, method: str, route: str, **kwargs):
        r = self.api.request(method, self.base_url + route, **kwargs)
        if r.status_code != 200:
            raise _Answered(r)
        return r.json()

    @staticmethod
    def _route(state: UploadState, *rest: str) -> str:
        return "/".join(["/s3/multipart", quote(state.upload_id, safe=""), *rest])

    # -- one PUT

    def _single(self, path: Path, sha: str, size: int, moved: _Moved):
        from dam_core.images import sniff_type  # Pillow: only when a file goes this way

        query = {"filename": path.name, "metadata[sha256]": sha, "metadata[size]": str(size)}
        if media_type := sniff_type(b"".join(read_range(path, 0, min(size, SNIFF_BYTES)))):
            query["type"] = media_type  # with digest and size: the URL is for the original's own key
        params = self._call("GET", "/s3/params", params=query)
        headers = params.get("headers") or {}
        # If-None-Match: the object is there already (these bytes, the store checked): complete anyway.
        self._put(params["url"], headers, path, 0, size, "the file", exists_ok="If-None-Match" in headers)
        moved.add(size)
        return self.api.post(self.base_url + "/s3/complete", params={"key": params["key"]})

    # -- multipart

    def _multipart(self, path: Path, sha: str, size: int, moved: _Moved):
        state, stored = self._resume(sha, size)
        if state is None:
            state, stored = self._start(path, sha, size), {}
        ranges = part_ranges(size, state.part_size)
        # A stored part of another length (none, unless the part size changed) is sent again.
        etags = {n: etag for n, (length, etag) in stored.items() if n in ranges and ranges[n][1] == length}
        moved.add(sum(ranges[n][1] for n in etags))
        missing = [n for n in ranges if n not in etags]

        def send_part(n: int) -> str:
            if self.stopping.is_set():
                raise Stopped
            etag = self._part(state, path, n, *ranges[n])
            moved.add(ranges[n][1])
            return etag

        try:
            with ThreadPoolExecutor(max(1, min(PART_THREADS, len(missing)))) as pool:
                etags.update(zip(missing, pool.map(send_part, missing), strict=True))
        except _Answered as answered:
            if answered.response.status_code == 404:  # the upload is gone (swept, aborted): the next run starts over
                self.states.remove(sha)
            raise
        except BucketUnreachable:
            self._abort(state)  # the file goes through POST /upload: nothing to resume
            raise
        return self._complete(state, etags)

    def _resume(self, sha: str, size: int) -> tuple[UploadState | None, dict[int, tuple[int, str]]]:
        """The saved upload of these bytes and its stored parts (number -> (size, ETag)); (None, {}) to start anew."""
        state = self.states.load(sha, self.base_url, size)
        if state is None:
            return None, {}
        r = self.api.get(self.base_url + self._route(state), params={"key": state.key})
        if r.status_code == 404:  # completed, aborted or swept since: start over
            self.states.remove(sha)
            return None, {}
        if r.status_code != 200:
            raise _Answered(r)
        return state, {int(p["PartNumber"]): (int(p["Size"]), str(p["ETag"])) for p in r.json()}

    def _start(self, path: Path, sha: str, size: int) -> UploadState:
        body = {"filename": path.name, "type": "application/octet-stream", "metadata": {"sha256": sha, "size": size}}
        started = self._call("POST", "/s3/multipart", json=body)
        state = UploadState(
            api=self.base_url,
            sha256=sha,
            size=size,
            part_size=part_size(size),
            key=started["key"],
            upload_id=started["uploadId"],
        )
        self.states.save(state)
        return state

    def _part(self, state: UploadState, path: Path, number: int, offset: int, length: int) -> str:
        """PUT one part; its ETag."""
        signed = self._call("GET", self._route(state, str(number)), params={"key": state.key})
        answer = self._put(signed["url"], {}, path, offset, length, f"part {number}")
        etag = answer.headers.get("etag")
        if not etag:
            raise StoreRefused(f"the store answered part {number} without an ETag")
        return str(etag)

    def _complete(self, state: UploadState, etags: dict[int, str]):
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        r = self.api.post(
            self.base_url + self._route(state, "complete"), params={"key": state.key}, json={"parts": parts}
        )
        if r.status_code in (200, 202, 404):  # done, or nothing left to resume
            self.states.remove(state.sha256)
        elif 400 <= r.status_code < 500 and r.status_code != 409:
            # Refused for good (the API removed a bad image already; 400: parts it cannot assemble):
            # drop the upload so that nothing waits for the sweep, and start over next time.
            self._abort(state)
        return r  # 409 and 5xx: the upload and the state stay, the next run completes it

    def _abort(self, state: UploadState) -> None:
        """Drop the upload (what fails here is left to the sweep) and its state."""
        import httpx

        try:
            self.api.delete(self.base_url + self._route(state), params={"key": state.key})
        except httpx.HTTPError:
            pass
        self.states.remove(state.sha256)

    # -- the store's side

    def _put(
        self,
        url: str,
        headers: dict[str, str],
        path: Path,
        offset: int,
        length: int,
        what: str,
        exists_ok: bool = False,
    ):
        """PUT `length` bytes of the file from `offset`, streamed, retrying a dropped connection or a 5xx.

        `exists_ok`: a 412 (a create-only PUT found the object there) is an answer, not a refusal.
        """
        import httpx

        for attempt in range(1, PUT_ATTEMPTS + 1):
            try:
                r = self.store.put(
                    url,
                    content=read_range(path, offset, length),
                    headers={**headers, "Content-Length": str(length)},
                )
            except httpx.TransportError as err:
                if attempt == PUT_ATTEMPTS:
                    if isinstance(err, httpx.ConnectError) and not self.reached:
                        raise BucketUnreachable(
                            f"{err.request.url.scheme}://{err.request.url.netloc.decode()}"
                        ) from err
                    raise
            else:
                if r.status_code == 200 or (exists_ok and r.status_code == 412):
                    self.reached = True
                    return r
                if r.status_code < 500 or attempt == PUT_ATTEMPTS:
                    raise StoreRefused(f"the store refused {what}: {store_error(r)}")
            time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")
