"""The API's Prometheus metrics (docs/metrics.md lists them) and the calls that record them.

Names follow prometheus-fastapi-instrumentator for HTTP (`http_requests_total{method,handler,status}`,
`http_request_duration_seconds{method,handler}`, the route template as handler) and `dam_` for
the rest. Gauges say how several processes (`dam api --workers N`) add up: in-flight counts sum
over live workers, the index version is the newest any worker serves. DAM_METRICS=0 turns every
recording call into a no-op (`configure`) and leaves /metrics out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from dam_core.images import ImageRejected

disable_created_metrics()  # no `*_created` series: a start time per series is noise to Prometheus here

# Why an upload was refused: a small fixed set (one label value each), per file once the body was
# read (empty ... broker_unavailable), per request before that (bad_request ... busy).
REJECT_REASONS = (
    "bad_request",  # not multipart, malformed body, no file part, client went away
    "unauthorized",  # missing or wrong X-API-Key
    "too_large",  # file or request over the size limit, or too many files (413)
    "slow_client",  # body stalled, missed the deadline or the minimum rate (408)
    "busy",  # too many uploads at once in this process (503 before reading)
    "empty",  # a zero-byte file
    "not_an_image",  # not a supported image type, whatever the Content-Type said (415)
    "corrupt",  # truncated or corrupt image (422)
    "bomb",  # decompression bomb: declares more pixels than Pillow allows (422)
    "over_limit",  # over DAM_MAX_IMAGE_PIXELS or DAM_MAX_FRAMES (422)
    "store_unavailable",  # the object store failed: nothing kept (503)
    "broker_unavailable",  # the queue failed or did not confirm: nothing queued (503)
    "other",  # any other refusal (a validation error, an internal error)
)
_REQUEST_REASONS = {400: "bad_request", 401: "unauthorized", 408: "slow_client", 413: "too_large", 503: "busy"}

# Uploads take from milliseconds (a small JPEG on a local store) to minutes (25 MiB on a slow link).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SERVICE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "handler", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "handler"],
    buckets=LATENCY_BUCKETS,
)
UPLOAD_BYTES = Counter("dam_upload_bytes", "Bytes of the files received in upload requests read to the end.")
UPLOADS_ACCEPTED = Counter("dam_uploads_accepted", "Uploaded files stored and queued (answered 202).")
UPLOADS_DUPLICATE = Counter(
    "dam_uploads_duplicate", "Uploaded files whose bytes were uploaded before (200: nothing new kept)."
)
UPLOADS_REJECTED = Counter("dam_uploads_rejected", "Uploads refused, by reason.", ["reason"])
UPLOADS_IN_FLIGHT = Gauge(
    "dam_uploads_in_flight", "POST /upload requests being handled now.", multiprocess_mode="livesum"
)
PUBLISH_SECONDS = Histogram(
    "dam_publish_duration_seconds",
    "Time to publish one upload's message until the broker confirmed (or failed).",
    buckets=SERVICE_BUCKETS,
)
STORE_PUT_SECONDS = Histogram(
    "dam_store_put_duration_seconds",
    "Time to write one original to the object store (or fail).",
    buckets=SERVICE_BUCKETS,
)
MARKER_BACKLOG = Gauge(
    "dam_marker_backlog",
    "Upload markers confirmed but not yet written (written after the answer).",
    multiprocess_mode="livesum",
)
INDEX_VERSION = Gauge(
    "dam_search_index_version",
    "Sequence number of the search index version served (0: none yet).",
    multiprocess_mode="livemax",
)
INDEX_BUILT = Gauge(
    "dam_search_index_built_timestamp_seconds",
    "Unix time at which the served index version was published.",
    multiprocess_mode="livemax",
)
INDEX_AGE_NAME = "dam_search_index_age_seconds"

for _reason in REJECT_REASONS:  # every reason is exported from the start, at 0: rate() needs the series
    UPLOADS_REJECTED.labels(_reason)

_enabled = True


def configure(enabled: bool) -> None:
    """DAM_METRICS: off makes every recording call below return at once."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


# ----------------------------------------------------------------------------- uploads


def image_reason(err: ImageRejected) -> str:
    """The reason label for bytes that are not an acceptable image."""
    if getattr(err, "reason", None) in REJECT_REASONS:
        return err.reason  # type: ignore[attr-defined]
    message = err.message.lower()
    if err.status == 400:
        return "empty"
    if err.status == 413:
        return "too_large"
    if err.status == 415:
        return "not_an_image"
    if "decompression bomb" in message:
        return "bomb"
    if "over the limit" in message:
        return "over_limit"
    return "corrupt"


def request_reason(status: int) -> str:
    """The reason label of an upload refused before its files were read, from the status answered."""
    if status >= 500 and status != 503:
        return "other"
    return _REQUEST_REASONS.get(status, "other")


def file_accepted(size: int | None) -> None:
    if _enabled:
        UPLOADS_ACCEPTED.inc()
        UPLOAD_BYTES.inc(size or 0)


def file_duplicate(size: int | None) -> None:
    if _enabled:
        UPLOADS_DUPLICATE.inc()
        UPLOAD_BYTES.inc(size or 0)


def file_rejected(reason: str, size: int | None) -> None:
    if _enabled:
        UPLOADS_REJECTED.labels(reason if reason in REJECT_REASONS else "other").inc()
        UPLOAD_BYTES.inc(size or 0)


FILES_COUNTED = "dam.upload_files_counted"  # scope key: this request's files were counted one by one


def files_counted(scope: MutableMapping[str, Any]) -> None:
    """The upload route counted each file of this request: the request itself is not counted again."""
    scope[FILES_COUNTED] = True


def request_rejected(reason: str) -> None:
    if _enabled:
        UPLOADS_REJECTED.labels(reason if reason in REJECT_REASONS else "other").inc()


@contextmanager
def _timed(histogram: Histogram) -> Iterator[None]:
    if not _enabled:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)


def publish_timer():
    """Times one confirmed publish (failures included)."""
    return _timed(PUBLISH_SECONDS)


def store_put_timer():
    """Times one write of an original (failures included)."""
    return _timed(STORE_PUT_SECONDS)


# ----------------------------------------------------------------------------- background state


def marker_queued() -> None:
    if _enabled:
        MARKER_BACKLOG.inc()


def marker_done() -> None:
    if _enabled:
        MARKER_BACKLOG.dec()


def index_swapped(snapshot) -> None:
    """The API now serves this index snapshot (dam_core.index.snapshot.Snapshot)."""
    if not _enabled:
        return
    INDEX_VERSION.set(snapshot.seq)
    built = getattr(snapshot, "built_at", None)
    if built:
        try:
            INDEX_BUILT.set(datetime.fromisoformat(built).timestamp())
        except (TypeError, ValueError):  # a manifest from another writer: the age is unknown, the swap stands
            pass


class WithIndexAge:
    """A collector passing `source`'s families through, plus the index age computed at scrape time.

    The age is not stored: each worker would otherwise have to rewrite it every second. It is now
    minus the newest published time any live process serves; absent before the first index.
    """

    def __init__(self, source):
        self.source = source

    def collect(self):
        built = None
        for family in self.source.collect():
            if family.name == INDEX_BUILT._name:
                built = max((s.value for s in family.samples), default=None)
            yield family
        age = GaugeMetricFamily(INDEX_AGE_NAME, "Seconds since the served search index version was published.")
        if built:
            age.add_metric([], max(0.0, time.time() - built))
        yield age


__all__ = [
    "FILES_COUNTED",
    "REJECT_REASONS",
    "WithIndexAge",
    "configure",
    "enabled",
    "file_accepted",
    "file_duplicate",
    "file_rejected",
    "files_counted",
    "image_reason",
    "index_swapped",
    "marker_done",
    "marker_queued",
    "publish_timer",
    "request_reason",
    "request_rejected",
    "store_put_timer",
]
