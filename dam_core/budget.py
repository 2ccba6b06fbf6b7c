"""A thread-safe weighted semaphore: bounds how much of a resource (pixels, bytes) is in use at once."""

from __future__ import annotations

import threading
import time
from collections import deque


class OverBudget(ValueError):
    """A request larger than the whole budget: it could never be granted, so it fails at once."""


class Budget:
    """Up to ``capacity`` units held at once across threads; waiters are served first come, first served.

    FIFO matters: without it a stream of small requests could starve a large one forever.
    """

    def __init__(self, capacity: int, name: str = "budget"):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.name = name
        self._in_use = 0
        self._peak = 0
        self._cond = threading.Condition()
        self._waiters: deque[object] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def peak(self) -> int:
        """The most units ever held at once (for tests and metrics)."""
        return self._peak

    def acquire(self, units: int, timeout: float | None = None) -> bool:
        """Take ``units``, waiting while others hold too much; False on timeout; OverBudget if it can never fit."""
        units = int(units)
        if units < 0:
            raise ValueError("units must not be negative")
        if units > self.capacity:
            raise OverBudget(f"{units:,} is more than the whole {self.name} of {self.capacity:,}")
        deadline = None if timeout is None else time.monotonic() + timeout
        me = object()
        with self._cond:
            self._waiters.append(me)
            try:
                while self._waiters[0] is not me or self._in_use + units > self.capacity:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                self._in_use += units
                self._peak = max(self._peak, self._in_use)
                return True
            finally:
                self._waiters.remove(me)
                # The next waiter may now be at the head, and may fit beside us.
                self._cond.notify_all()

    def release(self, units: int) -> None:
        with self._cond:
            if units > self._in_use:
                raise ValueError(f"releasing {units:,} but only {self._in_use:,} held")
            self._in_use -= int(units)
            self._cond.notify_all()
