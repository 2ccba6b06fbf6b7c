"""Prometheus plumbing shared by the API and the workers: multiprocess mode and the registry to scrape.

One process keeps its metrics in memory (prometheus_client's default registry). Several processes
that serve one figure (`dam api --workers N`, Celery's prefork pool) write them to files in
PROMETHEUS_MULTIPROC_DIR instead, and a scrape sums the files. prometheus_client decides between
the two when it is first imported, so the variable must be set before that, in the parent, before
any worker starts (`use_multiprocess_dir`); each metric module only defines its metrics.
That is why this module imports prometheus_client inside its functions, never at its top: the
parent imports it to call `use_multiprocess_dir`, before the variable is set.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiprocess() -> bool:
    """True when this process writes its metrics to PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(ENV))


@contextlib.contextmanager
def use_multiprocess_dir() -> Iterator[str]:
    """Set PROMETHEUS_MULTIPROC_DIR for this process and its children, empty, for one server's life.

    A directory the user named is emptied of metric files (figures of an earlier server would
    otherwise be summed in); else a fresh temporary one is made and removed afterwards.
    """
    given = os.environ.get(ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for f in glob.glob(os.path.join(given, "*.db")):
            os.remove(f)
        yield given
        return
    path = tempfile.mkdtemp(prefix="dam-metrics-")
    os.environ[ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int | None = None) -> None:
    """Drop the live gauges of a process that exits (its counters stay: totals never go back)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp  # not at the top: see the module docstring

        mp.mark_process_dead(os.getpid() if pid is None else pid)  # type: ignore[no-untyped-call]  # unannotated upstream


def _prune_dead() -> None:
    # A process killed without its exit hook (SIGKILL, OOM) left its live gauges (uploads in
    # flight, backlog): they would be summed in forever.
    for f in glob.glob(os.path.join(os.environ[ENV], "gauge_live*.db")):
        m = _LIVE_FILE.search(os.path.basename(f))
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid)
        except PermissionError:
            pass  # alive, another user's


class _ProcessFiles:
    """prometheus_client's MultiProcessCollector, after dropping the live gauges of dead processes."""

    def __init__(self) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector  # not at the top: see the module docstring

        self._files = MultiProcessCollector(None)  # type: ignore[no-untyped-call]  # unannotated upstream

    def collect(self) -> Iterable[Metric]:
        _prune_dead()
        metrics: Iterable[Metric] = self._files.collect()  # type: ignore[no-untyped-call]  # unannotated upstream
        return metrics


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape reads: every process's files in multiprocess mode, else this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry  # not at the top: see the module docstring

    if not multiprocess():
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_ProcessFiles())
    return registry


__all__ = ["ENV", "mark_process_dead", "multiprocess", "scrape_registry", "use_multiprocess_dir"]
