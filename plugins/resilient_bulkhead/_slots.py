"""A key's slots in this process: a deque of tokens and a queue of waiters.

Taking a slot is ``tokens.pop()`` and giving it back ``tokens.append()``:
both atomic in CPython, so the common case (a slot is free) takes no lock
and the number of calls holding a token can never exceed the limit, whatever
the threads and event loops. Only the slow path -- queueing, and handing a
freed slot to the first waiter -- runs under :attr:`Slots.lock`.

No wake-up is lost: a waiter queues *before* it tries for a token again, and
a releaser puts its token back *before* it looks for waiters, so either the
waiter finds the token or the releaser finds the waiter. A waiter that was
handed a slot but gave up passes it on. The sync and async drivers only
differ in how a waiter sleeps and is woken.
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
    """One key's pool of ``limit`` slots."""

    __slots__ = ("limit", "lock", "tokens", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.tokens: deque[bool] = deque([True] * limit)
        self.waiters: deque[Waiter] = deque()

    def take(self) -> bool:
        """Take a free slot if there is one (no lock)."""
        try:
            self.tokens.pop()
        except IndexError:
            return False
        return True

    def queue(self, waiter: Waiter, max_waiting: int) -> int:
        """Queue ``waiter`` (QUEUED), unless a slot came free meanwhile (ADMITTED) or the queue is full (REFUSED)."""
        with self.lock:
            if len(self.waiters) >= max_waiting:
                return ADMITTED if self.take() else REFUSED
            self.waiters.append(waiter)
        self._hand_over()
        return ADMITTED if waiter.granted else QUEUED

    def release(self) -> None:
        """Give a slot back; the first waiter, if any, gets it."""
        self.tokens.append(True)
        if self.waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        woken = []
        with self.lock:
            waiters = self.waiters
            while waiters and self.take():
                waiter = waiters.popleft()
                waiter.granted = True
                woken.append(waiter)
        for waiter in woken:
            waiter.wake()

    def leave(self, waiter: Waiter) -> bool:
        """A waiter gives up. True if it had been handed a slot meanwhile (it must use or release it)."""
        with self.lock:
            if waiter.granted:
                return True
            self.waiters.remove(waiter)
            return False

    @property
    def in_flight(self) -> int:
        """Slots taken (by calls running, or handed to waiters about to run)."""
        return self.limit - len(self.tokens)

    @property
    def waiting(self) -> int:
        return len(self.waiters)
