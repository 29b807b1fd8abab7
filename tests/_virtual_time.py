"""An asyncio event loop whose time is a FakeClock, jumping to the next timer instead of waiting.

``asyncio.sleep``, ``asyncio.timeout`` and every ``loop.call_at`` then run
on the fake clock: when no callback is ready, the loop advances the clock to
its next timer at once (as trio's autojump clock does). A test of timeouts
and queue waits runs in no real time, deterministically, with real
cancellation. Real I/O still wakes the loop; with no timer pending it
waits for I/O as usual.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from resilient.testing import FakeClock

__all__ = ["VirtualTimeLoop", "run"]

T = TypeVar("T")


class _AutojumpSelector(selectors.BaseSelector):
    def __init__(self, clock: FakeClock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer pending: only I/O (another thread) can wake the loop
            return self._real.select(None)
        self._clock.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop that reads ``clock.monotonic()`` and jumps it to the next timer."""

    def __init__(self, clock: FakeClock) -> None:
        self._fake_clock = clock
        super().__init__(_AutojumpSelector(clock))

    def time(self) -> float:
        return self._fake_clock.monotonic()


def run(clock: FakeClock, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop` over ``clock``."""
    loop = VirtualTimeLoop(clock)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
