"""A query's segments are searched by its own thread and helpers draining one queue (snapshot.run_shared)."""

from __future__ import annotations

import threading
import time

import pytest

from dam_core.index import snapshot
from dam_core.index.snapshot import run_shared


def test_every_result_comes_back_in_the_tasks_order_whatever_thread_ran_it():
    ran_on: dict[int, str] = {}

    def task(i: int):
        def run() -> int:
            time.sleep(0.002 * (i % 3))
            ran_on[i] = threading.current_thread().name
            return i * i

        return run

    for helpers in (0, 1, 3):
        assert run_shared([task(i) for i in range(12)], helpers) == [i * i for i in range(12)]
        backwards = list(range(11, -1, -1))
        assert run_shared([task(i) for i in range(12)], helpers, backwards) == [i * i for i in range(12)]
    assert run_shared([], 2) == [] and run_shared([task(5)], 2) == [25]
    assert any(name.startswith("dam-search") for name in ran_on.values())  # helpers did take tasks


def test_a_failing_task_fails_the_query_after_the_others_are_done():
    done = []

    def ok(i: int):
        return lambda: done.append(i) or i

    def boom() -> int:
        raise ValueError("segment unreadable")

    with pytest.raises(ValueError, match="segment unreadable"):
        run_shared([ok(0), boom, ok(2), ok(3)], 1)
    assert sorted(done) == [0, 2, 3]


def test_a_busy_pool_does_not_hold_the_query(monkeypatch):
    """The helpers' pool busy with other work: the query's own thread drains every task and answers."""
    monkeypatch.setattr(snapshot, "_search_helpers", lambda: 1)
    release = threading.Event()
    blockers = [snapshot._search_pool().submit(release.wait, 10) for _ in range(4)]
    try:
        t = time.monotonic()
        assert run_shared([(lambda i=i: i) for i in range(6)], 1) == list(range(6))
        assert time.monotonic() - t < 5
    finally:
        release.set()
        for b in blockers:
            b.result()


def test_a_pool_shut_down_at_exit_leaves_the_query_to_its_own_thread(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    gone = ThreadPoolExecutor(1)
    gone.shutdown()
    monkeypatch.setattr(snapshot, "_search_pool", lambda: gone)
    assert run_shared([(lambda i=i: i + 1) for i in range(5)], 3) == [1, 2, 3, 4, 5]


def test_tasks_are_taken_in_the_order_given():
    taken: list[int] = []
    tasks = [(lambda i=i: taken.append(i) or i) for i in range(5)]
    assert run_shared(tasks, 0, [3, 0, 4, 1, 2]) == [0, 1, 2, 3, 4]
    assert taken == [3, 0, 4, 1, 2]
