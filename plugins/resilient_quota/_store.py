"""The limits storage and limiters behind the quota policy, sync and async.

Everything that counts is the ``limits`` library: its storages (chosen by
URI) and its strategies. What is written here is the glue: picking sync or
async storages, the local fallback when the store fails, and moving a
token reservation to the real usage, which ``limits`` has no call for.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import limits
import limits.aio.strategies
import limits.storage
import limits.strategies

from resilient.storage import LoopBoundStorage, close_sync, is_memory, sync_storage

from ._options import Strategy

__all__ = ["AsyncLimiters", "Limiters", "current_window_key"]

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
        return str(keys(key, item.get_expiry(), time.time())[1])
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


class Limiters:
    """Sync limiters on the configured storage, and on a local memory fallback."""

    def __init__(self, uri: str, prefix: str) -> None:
        self.uri = uri
        self.storage = sync_storage(uri, f"{prefix}quota")
        self.local = limits.storage.MemoryStorage()
        self._by_strategy = {name: cls(self.storage) for name, cls in _SYNC.items()}
        self._local_by_strategy = {name: cls(self.local) for name, cls in _SYNC.items()}
        self._hits = {name: prepared_hit(self.storage, name) for name in _SYNC}  # type: ignore[arg-type]
        self._local_hits = {name: prepared_hit(self.local, name) for name in _SYNC}  # type: ignore[arg-type]

    def hit_fn(self, strategy: Strategy, local: bool) -> HitFn:
        return (self._local_hits if local else self._hits)[strategy]

    def limiter(self, strategy: Strategy, local: bool) -> limits.strategies.RateLimiter:
        return (self._local_by_strategy if local else self._by_strategy)[strategy]

    def adjust(
        self,
        strategy: Strategy,
        item: limits.RateLimitItem,
        ids: tuple[str, ...],
        delta: int,
        local: bool,
        reserved_at: float | None,
    ) -> None:
        """Move a token reservation by ``delta`` (positive: more used; negative: refund).

        A refund goes only to the window the reservation was made in
        (``reserved_at``, wall time): once that window has rolled over, the
        reservation left with it and a refund would credit the next one.
        """
        storage = self.local if local else self.storage
        key, expiry = window_key(storage, strategy, item, item.key_for(*ids))
        if key is None:
            return
        if delta < 0:
            if reserved_at is not None:
                start = window_start(storage, strategy, item, time.time(), storage.get_expiry(key))
                if reserved_at < start - _TTL_RESOLUTION:
                    return
            delta = -min(-delta, max(storage.get(key), 0))
            if delta == 0:
                return
        storage.incr(key, expiry, amount=delta)

    def pause_get(self, key: str, local: bool) -> float:
        """Seconds a shared pause key has left, 0 when not paused."""
        storage = self.local if local else self.storage
        if storage.get(key) <= 0:
            return 0.0
        return max(storage.get_expiry(key) - time.time(), 0.0)

    def pause_set(self, key: str, seconds: float, local: bool) -> None:
        """Pause ``key`` for ``seconds`` (whole seconds, rounded up): a counter that expires then."""
        storage = self.local if local else self.storage
        if storage.get(key) > 0:
            if storage.get_expiry(key) - time.time() >= seconds:
                return  # a pause only ever grows: a shorter signal leaves the longer one
            storage.clear(key)
        storage.incr(key, max(int(seconds + 0.999), 1))

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

    async def hit(
        self, strategy: Strategy, item: limits.RateLimitItem, ids: tuple[str, ...], cost: int, local: bool
    ) -> bool:
        if self.in_memory or local:
            return self.sync.limiter(strategy, local).hit(item, *ids, cost=cost)
        return bool(await self._limiter(strategy).hit(item, *ids, cost=cost))

    async def test(
        self, strategy: Strategy, item: limits.RateLimitItem, ids: tuple[str, ...], cost: int, local: bool
    ) -> bool:
        if self.in_memory or local:
            return self.sync.limiter(strategy, local).test(item, *ids, cost=cost)
        return bool(await self._limiter(strategy).test(item, *ids, cost=cost))

    async def reset_at(
        self, strategy: Strategy, item: limits.RateLimitItem, ids: tuple[str, ...], local: bool
    ) -> float:
        if self.in_memory or local:
            return float(self.sync.limiter(strategy, local).get_window_stats(item, *ids).reset_time)
        stats = await self._limiter(strategy).get_window_stats(item, *ids)
        return float(stats.reset_time)

    async def adjust(
        self,
        strategy: Strategy,
        item: limits.RateLimitItem,
        ids: tuple[str, ...],
        delta: int,
        local: bool,
        reserved_at: float | None,
    ) -> None:
        if self.in_memory or local:
            self.sync.adjust(strategy, item, ids, delta, local, reserved_at)
            return
        storage = self.storage
        key, expiry = window_key(storage, strategy, item, item.key_for(*ids))
        if key is None:
            return
        if delta < 0:
            if reserved_at is not None:
                expires = float(await storage.get_expiry(key))
                if reserved_at < window_start(storage, strategy, item, time.time(), expires) - _TTL_RESOLUTION:
                    return
            delta = -min(-delta, max(int(await storage.get(key)), 0))
            if delta == 0:
                return
        await storage.incr(key, expiry, amount=delta)

    async def aclose(self) -> None:
        """Close the async client's connections (they belong to the running event loop)."""
        await self._storage.aclose()

    async def pause_get(self, key: str, local: bool) -> float:
        """Seconds a shared pause key has left, 0 when not paused."""
        if self.in_memory or local:
            storage = self.sync.local if local else self.sync.storage
            return max(storage.get_expiry(key) - time.time(), 0.0) if storage.get(key) > 0 else 0.0
        if int(await self.storage.get(key)) <= 0:
            return 0.0
        return max(float(await self.storage.get_expiry(key)) - time.time(), 0.0)

    async def pause_set(self, key: str, seconds: float, local: bool) -> None:
        if self.in_memory or local:
            self.sync.pause_set(key, seconds, local)
            return
        storage = self.storage
        if int(await storage.get(key)) > 0:
            if float(await storage.get_expiry(key)) - time.time() >= seconds:
                return
            await storage.clear(key)
        await storage.incr(key, max(int(seconds + 0.999), 1))
