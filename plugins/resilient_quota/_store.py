"""The limits storage and limiters behind the quota policy, sync and async.

Everything that counts is the ``limits`` library: its storages (chosen by
URI) and its strategies. What is written here is the glue: picking sync or
async storages, the local fallback when the store fails, and moving a
token reservation to the real usage, which ``limits`` has no call for.

The store operations the quota logic needs are small frozen objects
(:class:`Hit`, :class:`Test`, :class:`WindowStats`, :class:`Adjust`,
:class:`PauseGet`, :class:`PauseSet`). Each is written once: as the
``limits`` call it is, which sync and async ``limits`` objects spell alike,
or as steps on a storage run by a sync or an async driver (:mod:`._steps`).
:meth:`Limiters.run` and :meth:`AsyncLimiters.run` perform them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from operator import methodcaller
from typing import Any

import limits
import limits.aio.strategies
import limits.storage
import limits.strategies

from resilient._clocked import on_clock, strategies_on, wall_of
from resilient.clock import Clock
from resilient.storage import LoopBoundStorage, close_sync, is_memory, sync_storage

from ._batch import (
    AsyncRedisBatch,
    Batch,
    RedisBatch,
    Release,
    Settle,
    async_batch_for,
    async_single_hits,
    batch_for,
    single_hits,
)
from ._options import Strategy
from ._steps import Steps, adrive, drive

__all__ = [
    "Adjust",
    "AsyncLimiters",
    "Blocks",
    "Hit",
    "Limiters",
    "LimitOp",
    "PauseGet",
    "PauseSet",
    "StorageCall",
    "StoreOp",
    "Test",
    "WindowStats",
    "current_window_key",
]

_log = logging.getLogger("resilient.quota")

_SYNC: dict[str, type[limits.strategies.RateLimiter]] = {
    "moving-window": limits.strategies.MovingWindowRateLimiter,
    "fixed-window": limits.strategies.FixedWindowRateLimiter,
    "sliding-window-counter": limits.strategies.SlidingWindowCounterRateLimiter,
}
_ASYNC: dict[str, Any] = {
    "moving-window": limits.aio.strategies.MovingWindowRateLimiter,
    "fixed-window": limits.aio.strategies.FixedWindowRateLimiter,
    "sliding-window-counter": limits.aio.strategies.SlidingWindowCounterRateLimiter,
}


def current_window_key(storage: Any, item: limits.RateLimitItem, key: str) -> str | None:
    """The storage key holding the current window of a sliding-window counter.

    ``limits`` keeps it per storage: timestamped keys in memory, a
    ``{key}`` that shifts to ``{key}/-1`` in Redis. ``None`` when the storage
    is of a kind not known here (then reservations are not reconciled).
    """
    keys = getattr(storage, "sliding_window_keys", None)
    if keys is not None:
        return str(keys(key, item.get_expiry(), wall_of(storage)())[1])
    current = getattr(storage, "_current_window_key", None)
    if current is not None:
        return str(current(key))
    return None


# Redis reports a key's TTL in whole seconds, so a window's start is known to within one.
_TTL_RESOLUTION = 1.0


def window_key(storage: Any, strategy: Strategy, item: limits.RateLimitItem, key: str) -> tuple[str | None, int]:
    """The key holding the current window of ``item`` and the expiry to give it when created."""
    if strategy == "sliding-window-counter":
        return current_window_key(storage, item, key), 2 * item.get_expiry()
    return key, item.get_expiry()


def window_start(storage: Any, strategy: Strategy, item: limits.RateLimitItem, now: float, expires: float) -> float:
    """When the current window began, from its key's expiry (``limits`` lays windows out per storage)."""
    period = item.get_expiry()
    if strategy == "fixed-window":
        return expires - period  # the window opened with its first hit and lasts one period
    if hasattr(storage, "sliding_window_keys"):
        return (now // period) * period  # timestamped windows, aligned on the period
    return expires - 2 * period  # a shifting current key lives two periods from its window's start


HitFn = Callable[[str, int, int, int], bool]


def prepared_hit(storage: Any, strategy: Strategy) -> HitFn:
    """``hit(key, amount, expiry, cost)``: the storage call a ``limits`` strategy's ``hit()`` makes.

    The strategies format the key from the item and identifiers on every hit
    (about 0.5 µs in memory); a plan formats it once per key, and this makes
    the very same storage call with it. The window logic stays in ``limits``.
    (A fixed window in ``limits``' memory storage is hit through :class:`Blocks`.)
    """
    if strategy == "fixed-window":
        incr = storage.incr

        def fixed(key: str, amount: int, expiry: int, cost: int) -> bool:
            return bool(incr(key, expiry, amount=cost) <= amount)

        return fixed
    if strategy == "moving-window":
        acquire = storage.acquire_entry

        def moving(key: str, amount: int, expiry: int, cost: int) -> bool:
            return bool(acquire(key, amount, expiry, amount=cost))

        return moving
    sliding = storage.acquire_sliding_window_entry

    def counter(key: str, amount: int, expiry: int, cost: int) -> bool:
        return bool(sliding(key, amount, expiry, cost))

    return counter


# ------------------------------------------------------------ blocks of hits


_BLOCK_MAX = 64  # hits a block holds at most
_BLOCK_SHARE = 8  # a block takes at most this fraction of what its window has left


class _Block:
    """Hits counted in a window ahead of their calls: one ``pop()`` each (atomic, so no lock)."""

    __slots__ = ("count", "left", "until")

    def __init__(self, left: list[None], until: float, count: int) -> None:
        self.left = left  # one item per hit counted and not yet used
        self.until = until  # the window's end, in limits' wall time
        self.count = count  # the window's count after the block was taken


class Blocks:
    """Request hits on a fixed window in ``limits``' memory storage, counted a block at a time.

    Why this is written here: ``MemoryStorage.incr`` costs about 1.2 µs per
    hit (it checks its expiry timer thread, takes the key's lock and rereads
    the window every time), the largest per-call cost of an admitted call in
    memory. So the storage is asked for up to 64 hits at once, never more
    than an eighth of what the window has left, and calls take them one by
    one; the first hit of a window, and every hit near the limit, is a single
    exact ``incr``. The storage stays the only record, and nothing can be
    told apart from one ``incr`` per call:

    * a call is refused only when its block is used up and the storage has
      no room, so nothing is refused that hits one by one would admit;
    * hits beyond the room are given back at once, except the one a refused
      hit counts (as ``limits`` counts it);
    * any other operation on the key (window stats, a test, a token move,
      the status) first gives back what the block holds (:meth:`give_back`),
      so ``limits`` reads the exact count;
    * hits unused when the window ends end with it: they were never calls.

    ``limits`` keeps time with ``time.time()``, and so does this, or with the
    clock the storage counts on (:func:`resilient._clocked.wall_of`).
    """

    def __init__(self, storage: limits.storage.MemoryStorage) -> None:
        self._storage = storage
        self.wall = wall_of(storage)
        incr = type(storage).incr
        # The storage's own method, under the error wrapper limits puts around every storage call
        # (it turns a backend's errors into StorageError; a dict raises none): one frame less.
        self._incr: Callable[[Any, str, int, int], int] = getattr(incr, "__wrapped__", incr)
        self.held: dict[str, _Block] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, amount: int, expiry: int, cost: int) -> bool:
        """:data:`HitFn`: count ``cost`` hits if the window has room; whether it had."""
        block = self.held.get(key)
        if block is not None and cost == 1 and self.wall() < block.until:
            try:
                block.left.pop()
            except IndexError:
                pass
            else:
                return True
        return self.take(key, amount, expiry, cost)

    def take(self, key: str, amount: int, expiry: int, cost: int) -> bool:
        """:meth:`hit` once the key's block is used up (or absent): under the lock, from the storage."""
        storage, incr, held = self._storage, self._incr, self.held
        with self._lock:
            if cost != 1:  # not a call's hit: exact, on the exact count
                self._give_back(key)
                return bool(incr(storage, key, expiry, cost) <= amount)
            block = held.get(key)
            size = 1
            if block is not None and self.wall() < block.until:
                try:
                    block.left.pop()  # another thread took a block meanwhile
                except IndexError:
                    size = max(1, min(_BLOCK_MAX, (amount - block.count) // _BLOCK_SHARE))
                else:
                    return True
            count = incr(storage, key, expiry, size)
            before = count - size
            if before >= amount:  # no room: one refused hit counts, as in limits
                if size > 1:
                    storage.decr(key, size - 1)
                held.pop(key, None)
                return False
            taken = min(size, amount - before)
            if taken < size:
                storage.decr(key, size - taken)
            count = before + taken
            if taken > 1 or (amount - count) // _BLOCK_SHARE > 1:
                # Worth a block (the next one, if this hit was a single one): remember the count.
                held[key] = _Block([None] * (taken - 1), float(storage.get_expiry(key)), count)
            else:
                held.pop(key, None)
            return True

    def give_back(self, key: str) -> None:
        """Return the hits held for ``key`` to the storage: it counts exactly what was used."""
        if key in self.held:
            with self._lock:
                self._give_back(key)

    def give_back_all(self) -> None:
        if self.held:
            with self._lock:
                for key in list(self.held):
                    self._give_back(key)

    def _give_back(self, key: str) -> None:
        block = self.held.pop(key, None)
        if block is None:
            return
        unused = 0
        left = block.left
        while True:  # one pop at a time: a call racing for one either has it or finds none
            try:
                left.pop()
            except IndexError:
                break
            unused += 1
        if unused and self.wall() < block.until:
            self._storage.decr(key, unused)


# ------------------------------------------------------------ store operations
#
# What the quota logic asks of its store, as data: the logic yields these and
# a driver performs them, on the sync Limiters or on the AsyncLimiters. They
# are never changed once made, but not frozen: a frozen dataclass costs about
# 0.4 µs more to make, and one is made for every store operation.


@dataclass(slots=True)
class LimitOp:
    """One call of a ``limits`` strategy: sync and async strategies share its name and arguments."""

    strategy: Strategy
    item: limits.RateLimitItem
    ids: tuple[str, ...]
    local: bool  # on the local fallback storage
    cost: int = 1  # for hits and tests

    def on(self, limiter: Any) -> Any:
        """Make the call on ``limiter``: its result, or on an async limiter an awaitable of it."""
        raise NotImplementedError


class Hit(LimitOp):
    """Count ``cost`` if the limit allows it; whether it was counted."""

    __slots__ = ()

    def on(self, limiter: Any) -> Any:
        return limiter.hit(self.item, *self.ids, cost=self.cost)


class Test(LimitOp):
    """Whether the limit would allow ``cost`` now; counts nothing."""

    __slots__ = ()

    def on(self, limiter: Any) -> Any:
        return limiter.test(self.item, *self.ids, cost=self.cost)


class WindowStats(LimitOp):
    """The limit's ``limits.WindowStats``: remaining, and when the window resets (wall time)."""

    __slots__ = ()

    def on(self, limiter: Any) -> Any:
        return limiter.get_window_stats(self.item, *self.ids)


@dataclass(slots=True)
class StorageCall:
    """One call of a ``limits`` storage method: sync and async storages share its name and arguments."""

    method: str
    args: tuple[Any, ...]

    def on(self, storage: Any) -> Any:
        return getattr(storage, self.method)(*self.args)


def _call(method: str, *args: Any) -> StorageCall:
    return StorageCall(method, args)


@dataclass(slots=True)
class Adjust:
    """Move a token reservation by ``delta`` (positive: more used; negative: refund).

    A refund goes only to the window the reservation was made in
    (``reserved_at``, wall time): once that window has rolled over, the
    reservation left with it and a refund would credit the next one.
    """

    strategy: Strategy
    item: limits.RateLimitItem
    ids: tuple[str, ...]
    delta: int
    local: bool
    reserved_at: float | None

    def steps(self, storage: Any) -> Steps[StorageCall, None]:
        """The storage calls, on ``storage`` (``limits`` lays its windows out per storage)."""
        strategy, item, delta = self.strategy, self.item, self.delta
        key, expiry = window_key(storage, strategy, item, item.key_for(*self.ids))
        if key is None:
            return
        if delta < 0:
            if self.reserved_at is not None:
                expires = float((yield _call("get_expiry", key)))
                now = wall_of(storage)()
                if self.reserved_at < window_start(storage, strategy, item, now, expires) - _TTL_RESOLUTION:
                    return
            delta = -min(-delta, max(int((yield _call("get", key))), 0))
            if delta == 0:
                return
        yield _call("incr", key, expiry, delta)


@dataclass(slots=True)
class PauseGet:
    """Seconds a shared pause key has left, 0 when not paused."""

    key: str
    local: bool

    def steps(self, storage: Any) -> Steps[StorageCall, float]:
        if int((yield _call("get", self.key))) <= 0:
            return 0.0
        return max(float((yield _call("get_expiry", self.key))) - wall_of(storage)(), 0.0)


@dataclass(slots=True)
class PauseSet:
    """Pause ``key`` for ``seconds`` (whole seconds, rounded up): a counter that expires then."""

    key: str
    seconds: float
    local: bool

    def steps(self, storage: Any) -> Steps[StorageCall, None]:
        key = self.key
        if int((yield _call("get", key))) > 0:
            if float((yield _call("get_expiry", key))) - wall_of(storage)() >= self.seconds:
                return  # a pause only ever grows: a shorter signal leaves the longer one
            yield _call("clear", key)
        yield _call("incr", key, max(int(self.seconds + 0.999), 1))


_UNKNOWN: Any = object()  # not looked up yet

StoreOp = Hit | Test | WindowStats | Adjust | PauseGet | PauseSet | Batch | Release | Settle


# ------------------------------------------------------------ the limiters


class Limiters:
    """Sync limiters on the configured storage, and on a local memory fallback."""

    def __init__(self, uri: str, prefix: str, clock: Clock | None = None) -> None:
        self.uri = uri
        # In memory, windows run on the pipeline's clock (a FakeClock in a test); a network store's run on
        # its server's time, and so does the local fallback standing in for it.
        on = clock if clock is not None and is_memory(uri) else None
        self.storage = sync_storage(uri, f"{prefix}quota", clock=on)
        self.local = limits.storage.MemoryStorage() if on is None else on_clock(limits.storage.MemoryStorage, on)()
        #: The wall time the storage's windows are counted on: what reset times are measured against.
        self.wall = wall_of(self.storage)
        strategies = _SYNC if on is None else strategies_on(on)
        self._by_strategy = {name: strategies[name](self.storage) for name in _SYNC}
        self._local_by_strategy = {name: strategies[name](self.local) for name in _SYNC}
        self.hits = {name: prepared_hit(self.storage, name) for name in _SYNC}  # type: ignore[arg-type]
        #: Fixed-window request hits in memory, a block at a time (see Blocks): every other operation on a
        #: key of the storage gives its block back first.
        self.blocks: Blocks | None = None
        if isinstance(self.storage, limits.storage.MemoryStorage):
            self.blocks = Blocks(self.storage)
            self.hits["fixed-window"] = self.blocks.hit
        #: Several limits (and the pause) in one round trip, when the store is a Redis that can (see ._batch).
        self.batch: RedisBatch | None = batch_for(self.storage)
        if self.batch is not None:
            self.hits.update(single_hits(self.storage))

    def limiter(self, strategy: Strategy, local: bool) -> limits.strategies.RateLimiter:
        if not local and self.blocks is not None:
            self.blocks.give_back_all()  # the limiter reads the storage: make its counts exact
        return (self._local_by_strategy if local else self._by_strategy)[strategy]

    def run(self, op: StoreOp) -> Any:
        """Perform ``op`` on the configured storage, or on the local fallback."""
        blocks = self.blocks
        if isinstance(op, LimitOp):
            if blocks is not None and not op.local:
                item = op.item
                key = item.key_for(*op.ids)
                if op.strategy == "fixed-window" and isinstance(op, Hit):
                    return blocks.hit(key, item.amount, item.get_expiry(), op.cost)
                blocks.give_back(key)
            return op.on((self._local_by_strategy if op.local else self._by_strategy)[op.strategy])
        if blocks is not None and isinstance(op, Adjust) and not op.local:
            blocks.give_back(op.item.key_for(*op.ids))
        if isinstance(op, Batch | Release | Settle):
            assert self.batch is not None  # yielded only when batches are there
            return self.batch.run(op)
        storage = self.local if op.local else self.storage
        return drive(op.steps(storage), methodcaller("on", storage))

    def close(self) -> None:
        close_sync(self.storage)


class AsyncLimiters:
    """Async limiters: ``limits.aio`` for network stores; the sync ones for memory.

    In-memory counting does no I/O, so async calls use the very same sync
    memory storage as sync calls and the two share one count.
    """

    def __init__(self, sync: Limiters, prefix: str) -> None:
        self.sync = sync
        self.in_memory = is_memory(sync.uri)
        self._storage = LoopBoundStorage(sync.uri, f"{prefix}quota")
        # Limiters per async storage (one storage per event loop), forgotten with it.
        self._limiters: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._batches: weakref.WeakKeyDictionary[Any, AsyncRedisBatch | None] = weakref.WeakKeyDictionary()
        self._hits: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    @property
    def storage(self) -> Any:
        """The async storage of the running event loop."""
        return self._storage.get()

    def _limiter(self, strategy: Strategy) -> Any:
        storage = self._storage.get()
        limiters = self._limiters.get(storage)
        if limiters is None:
            limiters = self._limiters[storage] = {name: cls(storage) for name, cls in _ASYNC.items()}
        return limiters[strategy]

    def hits(self) -> dict[str, Callable[[str, int, int, int], Awaitable[bool]]] | None:
        """One limit's hit, per strategy, on the running loop's Redis storage (``None``: a store with no batch)."""
        storage = self._storage.get()
        hits = self._hits.get(storage, _UNKNOWN)
        if hits is _UNKNOWN:
            hits = self._hits[storage] = async_single_hits(storage)
        return hits  # type: ignore[no-any-return]

    async def run(self, op: StoreOp) -> Any:
        """:meth:`Limiters.run` on the running event loop's storage (in memory, on the sync one)."""
        if self.in_memory or op.local:
            return self.sync.run(op)
        if isinstance(op, LimitOp):
            return await op.on(self._limiter(op.strategy))
        storage = self.storage
        if isinstance(op, Batch | Release | Settle):
            if storage not in self._batches:
                self._batches[storage] = async_batch_for(storage)
            batch = self._batches[storage]
            if batch is None:  # an async storage of a kind with no batch: the logic asked the sync side's
                raise TypeError(f"no batched quota operations on {type(storage).__name__}")
            return await batch.run(op)
        return await adrive(op.steps(storage), methodcaller("on", storage))

    async def aclose(self) -> None:
        """Close the async client's connections (they belong to the running event loop)."""
        await self._storage.aclose()
