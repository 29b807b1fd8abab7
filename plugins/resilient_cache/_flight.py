"""Single flight within a process: identical misses made at the same time wait for one call.

Threads wait on an event; tasks await a future of their own event loop. A
waiter that is the leader's own thread or task (two streams interleaved by
one consumer) never waits: it would wait for itself. Waits are bounded.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["AsyncFlights", "Flight", "Flights", "Shared"]

_ident = threading.get_ident


@dataclass(slots=True)
class Shared:
    """What a leader hands its followers: a value (or a stream's chunks) and how it was got
    ('miss' or 'stale'), or an error; ``value`` is None with ``ok`` false when there is nothing to share."""

    ok: bool
    value: Any = None
    state: str = "miss"
    error: BaseException | None = None


@dataclass(slots=True)
class Flight:
    owner: int  # thread id
    shared: Shared | None = None
    done: threading.Event | None = None  # made by the first follower: a flight nobody waits for costs no Event


class Flights:
    """Flights of sync calls, by key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    def begin(self, key: str) -> tuple[Flight, bool]:
        """The key's flight and whether the caller leads it (a new flight) or follows."""
        # No lock: setdefault on a str key is one atomic step, so exactly one caller's flight is
        # installed, and only its leader removes it (end). Every miss runs this.
        mine = Flight(_ident())
        flight = self._flights.setdefault(key, mine)
        return flight, flight is mine

    def end(self, key: str, flight: Flight, shared: Shared) -> None:
        # The lock pairs with wait(): a follower either sees ``shared`` or leaves an event that is set
        # here. acquire/release rather than ``with``: half the cost, on every miss.
        lock = self._lock
        lock.acquire()
        try:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.shared = shared
            done = flight.done
        finally:
            lock.release()
        if done is not None:
            done.set()

    def wait(self, flight: Flight, timeout: float) -> Shared | None:
        """The leader's result, or None (it is our own thread, or it took longer than ``timeout``)."""
        if flight.owner == threading.get_ident():
            return None
        with self._lock:
            if flight.shared is not None:
                return flight.shared
            if flight.done is None:
                flight.done = threading.Event()
            done = flight.done
        if not done.wait(timeout):
            return None
        return flight.shared


@dataclass(slots=True)
class AsyncFlight:
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[Any] | None
    future: asyncio.Future[Shared]


class AsyncFlights:
    """Flights of async calls, by key, each within its event loop."""

    def __init__(self) -> None:
        self._flights: dict[str, AsyncFlight] = {}
        self._lock = threading.Lock()  # loops in several threads may share the policy

    def begin(self, key: str) -> tuple[AsyncFlight, bool]:
        loop = asyncio.get_running_loop()
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None and flight.loop is loop and not flight.future.done():
                return flight, False
            flight = self._flights[key] = AsyncFlight(loop, asyncio.current_task(), loop.create_future())
            return flight, True

    def end(self, key: str, flight: AsyncFlight, shared: Shared) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if not flight.future.done():
            flight.future.set_result(shared)

    @staticmethod
    async def wait(flight: AsyncFlight, timeout: float) -> Shared | None:
        if flight.task is not None and flight.task is asyncio.current_task():
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(flight.future), timeout)
        except asyncio.TimeoutError:
            return None
