from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that moves only when told to, or when something sleeps on it.

    ``sleep``/``asleep`` advance it instantly by the requested time (and
    record it in ``sleeps``), so a policy that backs off for 30 s runs in no
    time. ``advance`` moves it by hand. ``time()`` is ``start_wall`` plus
    the elapsed fake time. Safe to share between threads.
    """

    def __init__(self, start: float = 0.0, start_wall: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(start_wall) - float(start)
        self._lock = threading.Lock()
        #: Every sleep requested, in order, in seconds.
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards (advance({seconds!r}))")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        seconds = max(float(seconds), 0.0)
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        # Still yield to the event loop, as a real sleep would.
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
