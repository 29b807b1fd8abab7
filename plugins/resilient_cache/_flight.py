"""Single flight within a process: identical misses made at the same time wait for one call.

Threads wait on an event; tasks await a future of their own event loop. A
waiter that is the leader's own thread or task (two streams interleaved by
one consumer) never waits: it would wait for itself. Waits are bounded.

A flight carries its leader's result itself, and the leader takes no lock
and allocates no event or future: those are made by the first follower, so
a miss nobody waits for (nearly every miss) pays only for the flight
object and one dict step at each end.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, NamedTuple

__all__ = [
    "DONE",
    "NOTHING",
    "OWNER",
    "RESULT",
    "AsyncFlight",
    "AsyncFlights",
    "Flight",
    "Flights",
    "Result",
    "Shared",
    "aend",
    "end",
]

_ident = threading.get_ident


class Shared(NamedTuple):
    """What a leader hands its followers: a value (or a stream's chunks) and how it was got
    ('miss' or 'stale'), or an error; ``value`` is None with ``ok`` false when there is nothing to share."""

    ok: bool
    value: Any = None
    state: str = "miss"
    error: BaseException | None = None


#: What a flight holds once its leader is done: the fields of a :class:`Shared`, as a plain tuple (the
#: leader builds one on every miss, five times cheaper than a named tuple; only followers make it a Shared).
Result = tuple[bool, Any, str, BaseException | None]
NOTHING: Result = (False, None, "miss", None)


#: One sync miss in progress: ``[owner, result, done]``, its leader's thread, then its result (a
#: :data:`Result`), and the event its first follower makes. A list, not a class: the leader of every miss
#: makes one, and a list display costs a fifth of a class's ``__init__`` frame. Read and written by index
#: (:data:`OWNER`, :data:`RESULT`, :data:`DONE`), each one bytecode, as the handshake in :class:`Flights` needs.
Flight = list[Any]
#: One async miss in progress: ``[task, result, future]``, the same for a task (see :class:`AsyncFlights`).
AsyncFlight = list[Any]
OWNER, RESULT, DONE = 0, 1, 2


class Flights:
    """Flights of sync calls, by key.

    Lock-free for the leader, under the GIL. ``begin``: ``setdefault`` on a
    str key is one atomic step, so exactly one caller's flight is installed,
    and only its leader removes it. ``end`` and ``wait`` are a Dekker
    handshake: the leader writes ``flight[RESULT]``, then reads
    ``flight[DONE]``; a follower writes ``flight[DONE]``, then reads
    ``flight[RESULT]`` again. Each of those reads and writes is one
    bytecode (a list's item), and the GIL runs bytecodes in one order, so at
    least one side sees the other's write: either the leader sees the event
    and sets it, or the follower sees the result and does not wait. The lock
    is only among followers, so that they share one event.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.flights: dict[str, Flight] = {}

    def begin(self, key: str) -> tuple[Flight, bool]:
        """The key's flight and whether the caller leads it (a new flight) or follows."""
        mine: Flight = [_ident(), None, None]
        flight = self.flights.setdefault(key, mine)
        return flight, flight is mine

    def end(self, key: str, flight: Flight, result: Result) -> None:
        """The leader's last step: hand ``result`` to the followers (see :func:`end` for why in this order)."""
        end(self.flights, key, flight, result)

    def wait(self, flight: Flight, timeout: float) -> Shared | None:
        """The leader's result, or None (it is our own thread, or it took longer than ``timeout``)."""
        if flight[OWNER] == _ident():
            return None
        result = flight[RESULT]
        if result is not None:
            return Shared(*result)
        with self._lock:  # followers among themselves: one event per flight
            done = flight[DONE]
            if done is None:
                done = flight[DONE] = threading.Event()
        # Dekker, the follower's half: ``done`` is written, now read the result again.
        result = flight[RESULT]
        if result is None:
            if not done.wait(timeout):
                return None
            result = flight[RESULT]
        return Shared(*result) if result is not None else None


def end(flights: dict[str, Flight], key: str, flight: Flight, result: Result) -> None:
    """End a sync flight: the result first, then the event (the leader's half of the handshake in :class:`Flights`).

    The flight leaves the dict after its result is written, so a caller that
    no longer finds it finds the value in the local layer (stored before
    this) or is a new flight.
    """
    flight[RESULT] = result
    if flights.get(key) is flight:  # only its leader removes a flight: nobody can replace it meanwhile
        del flights[key]
    done = flight[DONE]
    if done is not None:
        done.set()


class AsyncFlights:
    """Flights of async calls, by key and event loop.

    Keyed by ``(key, loop)``: a flight is only ever touched from its loop's
    thread (loops in several threads may share the policy), so nothing here
    needs a lock, and within a loop nothing runs between two awaits. Tasks of
    different loops never wait for each other (a future belongs to one loop).
    """

    def __init__(self) -> None:
        self.flights: dict[tuple[str, asyncio.AbstractEventLoop], AsyncFlight] = {}

    def begin(self, key: str) -> tuple[AsyncFlight, bool]:
        at = (key, asyncio.get_running_loop())
        flight = self.flights.get(at)
        if flight is not None:
            return flight, False
        flight = self.flights[at] = [asyncio.current_task(), None, None]
        return flight, True

    def end(self, key: str, flight: AsyncFlight, result: Result) -> None:
        aend(self.flights, (key, asyncio.get_running_loop()), flight, result)

    @staticmethod
    async def wait(flight: AsyncFlight, timeout: float) -> Shared | None:
        task = flight[OWNER]
        if task is not None and task is asyncio.current_task():
            return None
        result = flight[RESULT]
        if result is not None:
            return Shared(*result)
        future = flight[DONE]
        if future is None:
            future = flight[DONE] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return None
        result = flight[RESULT]
        return Shared(*result) if result is not None else None


def aend(
    flights: dict[tuple[str, asyncio.AbstractEventLoop], AsyncFlight],
    at: tuple[str, asyncio.AbstractEventLoop],
    flight: AsyncFlight,
    result: Result,
) -> None:
    """End an async flight (in its loop): the result, out of the dict, then wake the followers, if any."""
    flight[RESULT] = result
    if flights.get(at) is flight:
        del flights[at]
    future = flight[DONE]
    if future is not None and not future.done():
        future.set_result(None)
