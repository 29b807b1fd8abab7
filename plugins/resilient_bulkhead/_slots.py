"""A key's slots in this process: the in-flight count and the queue of waiters, under one lock.

The decisions (admit, queue or refuse; hand a freed slot to the first
waiter) are made here; the sync and async drivers only differ in how a
waiter sleeps and is woken. A freed slot goes straight to the first waiter
(the count does not drop and rise again), so a newcomer cannot overtake the
queue, and a waiter that was handed a slot but gave up passes it on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

__all__ = ["ADMITTED", "QUEUED", "REFUSED", "Slots", "Waiter"]

ADMITTED, QUEUED, REFUSED = 0, 1, 2


class Waiter:
    """One queued call; ``wake`` is called (outside the lock) when it is handed a slot."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.granted = False
        self.wake = wake


class Slots:
    """One key's pool. Every change is made under :attr:`lock`."""

    __slots__ = ("in_flight", "lock", "waiters")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.waiters: deque[Waiter] = deque()

    def admit(self, limit: int, max_waiting: int, waiter: Waiter | None) -> int:
        """Take a slot (ADMITTED), queue ``waiter`` (QUEUED) or say no (REFUSED)."""
        with self.lock:
            if self.in_flight < limit and not self.waiters:
                self.in_flight += 1
                return ADMITTED
            if waiter is None or len(self.waiters) >= max_waiting:
                return REFUSED
            self.waiters.append(waiter)
            return QUEUED

    def release(self) -> None:
        """Give a slot back: to the first waiter if any, else to the pool."""
        with self.lock:
            if self.waiters:
                waiter = self.waiters.popleft()
                waiter.granted = True
            else:
                self.in_flight -= 1
                return
        waiter.wake()

    def leave(self, waiter: Waiter) -> bool:
        """A waiter gives up. True if it had been handed a slot meanwhile (it must use or release it)."""
        with self.lock:
            if waiter.granted:
                return True
            self.waiters.remove(waiter)
            return False

    @property
    def waiting(self) -> int:
        return len(self.waiters)
