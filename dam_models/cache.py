"""The process-wide model cache and the timing of its loads (torch-free: a run on served models imports it too)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_cache: dict[Hashable, Any] = {}
_key_locks: dict[Hashable, threading.Lock] = {}
_cache_lock = threading.Lock()


def cached(key: Hashable, factory: Callable[[], T]) -> T:
    """Return the value cached under ``key``, building it with ``factory`` exactly once per process.

    Thread-safe: concurrent callers with the same key wait for one load; different keys load in parallel.
    A factory that raises caches nothing, so a later call retries.
    """
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        _local.depth = getattr(_local, "depth", 0) + 1
        started = time.perf_counter()
        try:
            value = factory()
        finally:
            _local.depth -= 1
        if _local.depth == 0:  # a nested load (model inside its wrapper) is counted once, by the outer one
            for tracker in getattr(_local, "trackers", ()):
                tracker.seconds += time.perf_counter() - started
                tracker.loads += 1
        with _cache_lock:
            _cache[key] = value
            _key_locks.pop(key, None)
        return value


class LoadTime:
    """What `track_loads` saw: seconds spent building cache entries, and how many were built."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.loads = 0


_local = threading.local()


@contextmanager
def track_loads() -> Iterator[LoadTime]:
    """Time the cache loads this thread makes inside the block: 0.0 s and 0 loads when all were warm."""
    trackers = _local.__dict__.setdefault("trackers", [])
    tracker = LoadTime()
    trackers.append(tracker)
    try:
        yield tracker
    finally:
        trackers.remove(tracker)


def clear_cache() -> None:
    """Drop every cached model (tests; freeing memory). Objects already handed out keep working."""
    with _cache_lock:
        _cache.clear()
