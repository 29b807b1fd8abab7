"""Time, injected.

Every time-based policy reads the clock it was given instead of calling
``time`` directly, so tests (and users' property tests) run on
:class:`resilient.testing.FakeClock` without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "SYSTEM_CLOCK"]


@runtime_checkable
class Clock(Protocol):
    """What a policy needs from time.

    ``monotonic()`` measures durations and deadlines; ``time()`` is wall-clock
    seconds since the epoch, for values shared across processes (a breaker's
    open-until in Redis, a ``retry-after`` date). ``sleep`` and ``asleep``
    wait; a fake clock advances itself instead.
    """

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time`, real sleeps."""

    __slots__ = ()

    # Bound at class level so a call costs one attribute lookup, not two.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
