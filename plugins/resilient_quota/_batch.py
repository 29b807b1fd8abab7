"""Every limit of a call, and the key's shared pause, in one Redis round trip.

``limits`` hits one limit per call of its API, so a key with a request limit
per minute and per day and a token limit costs three round trips, and the
pause read a fourth. Its Redis storages run each hit as a Lua script of
their own (``lua_incr_expire``, ``lua_acquire_moving_window``,
``lua_acquire_sliding_window``), registered on a redis-py client: this module
queues those very scripts, with the keys and arguments the storage's own
methods give them (``RedisStorage.incr``, ``acquire_entry``,
``acquire_sliding_window_entry`` in limits 5), in one pipeline. The window
logic stays in ``limits``' scripts; what is written here is only the
queuing, checked against ``limits``' own reads in the tests. A storage of
another kind (memory, memcached, a Redis cluster, whose keys may live on
several nodes) has no batch, and the quota hits its limits one by one.

The pipeline is not a transaction: each script is atomic, as it is when
``limits`` runs it, and the admission logic (:mod:`._admission`) gives back
what a batch counted beyond what hitting the limits in order would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import limits
import limits.storage
from limits.errors import StorageError
from redis.exceptions import NoScriptError

from ._options import Strategy

__all__ = [
    "AsyncRedisBatch",
    "Batch",
    "BatchHit",
    "RedisBatch",
    "Release",
    "async_batch_for",
    "batch_for",
    "single_hits",
]


@dataclass(slots=True)
class BatchHit:
    """One limit to hit with ``cost``, as ``limits``' strategy of that name would."""

    strategy: Strategy
    item: limits.RateLimitItem
    ids: tuple[str, ...]
    cost: int


@dataclass(slots=True)
class Batch:
    """Read the pause at ``pause_key`` (``None``: not now) and make every hit, in one round trip.

    Performed, it is ``(paused seconds or None, [(allowed, stamp), ...])``: a
    hit's stamp is what :class:`Release` needs to take a moving-window hit back.
    """

    pause_key: str | None
    hits: tuple[BatchHit, ...]
    local: ClassVar[bool] = False  # a batch is for a Redis store, never the local fallback


@dataclass(slots=True)
class Release:
    """Take back a counted moving-window hit (``stamp``: the time its entries were added at)."""

    item: limits.RateLimitItem
    ids: tuple[str, ...]
    cost: int
    stamp: float
    local: ClassVar[bool] = False


# The storage classes whose scripts and key layout are known here (exact types: a subclass may lay keys out
# differently). RedisStorage is plain Redis and rediss://; sentinel storages talk to the master the same way.
_SYNC_TYPES = (limits.storage.RedisStorage, limits.storage.RedisSentinelStorage)


class _Queue:
    """What a batch queues, sync and async alike: (script, keys, args) per hit, and how to read its reply."""

    def __init__(self, storage: Any, scripts: Any) -> None:
        self.storage = storage  # for the window key layout (``_current_window_key``...)
        self.scripts = scripts  # the object holding the registered ``lua_*`` scripts and ``prefixed_key``
        self.prefixed = scripts.prefixed_key

    def command(self, hit: BatchHit, stamp: float) -> tuple[Any, list[str], list[Any]]:
        item = hit.item
        key = item.key_for(*hit.ids)
        amount, expiry = item.amount, item.get_expiry()
        s = self.scripts
        if hit.strategy == "fixed-window":
            return s.lua_incr_expire, [self.prefixed(key)], [expiry, hit.cost]
        if hit.strategy == "moving-window":
            return s.lua_acquire_moving_window, [self.prefixed(key)], [stamp, amount, expiry, hit.cost]
        storage = self.storage
        previous = self.prefixed(storage._previous_window_key(key))
        current = self.prefixed(storage._current_window_key(key))
        return s.lua_acquire_sliding_window, [previous, current], [amount, expiry, hit.cost]

    def queue(self, pipe: Any, batch: Batch, stamp: float) -> list[Any]:
        """Queue ``batch`` on ``pipe``; return the scripts in the order of their replies."""
        if batch.pause_key is not None:
            key = self.prefixed(batch.pause_key)
            pipe.get(key)
            pipe.ttl(key)
        scripts = []
        for hit in batch.hits:
            script, keys, args = self.command(hit, stamp)
            # EVALSHA straight on the pipeline: a script registered with the pipeline makes
            # redis-py ask SCRIPT EXISTS before every execute, a second round trip per batch.
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            scripts.append(script)
        return scripts

    def result(self, batch: Batch, replies: list[Any], stamp: float) -> tuple[float | None, list[tuple[bool, float]]]:
        paused: float | None = None
        if batch.pause_key is not None:
            value, ttl = replies[0], replies[1]
            replies = replies[2:]
            paused = float(max(ttl, 0)) if value is not None and int(value) > 0 else 0.0
        hits = []
        for hit, reply in zip(batch.hits, replies, strict=True):
            allowed = int(reply) <= hit.item.amount if hit.strategy == "fixed-window" else bool(reply)
            hits.append((allowed, stamp))
        return paused, hits

    def release(self, pipe: Any, op: Release) -> None:
        # limits' moving window is a list of entry timestamps per key (acquire_moving_window.lua pushes
        # ``amount`` copies of the stamp it is given): taking ours back removes that many of them. Lua
        # hands the number back to Redis as text, in 17 significant digits on Redis 7 and 14 before it:
        # only one of the two is ever stored by a server, so removing both removes ``cost`` entries at most.
        key = self.prefixed(op.item.key_for(*op.ids))
        texts = dict.fromkeys((f"{op.stamp:.17g}", f"{op.stamp:.14g}"))
        for text in texts:
            pipe.lrem(key, op.cost, text)


def _missing_scripts(scripts: list[Any], replies: list[Any], offset: int) -> list[int]:
    return [i for i, reply in enumerate(replies[offset:]) if isinstance(reply, NoScriptError)]


def _check(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise StorageError(reply)


class RedisBatch:
    """Batches on a sync ``limits`` Redis storage."""

    def __init__(self, storage: Any) -> None:
        self._queue = _Queue(storage, storage)
        self._client = storage.get_connection()
        self._errors = storage.base_exceptions

    def run(self, op: Batch | Release) -> Any:
        try:
            return self._run(op)
        except self._errors as exc:  # as limits' own calls report them (wrap_exceptions)
            raise StorageError(exc) from exc

    def _run(self, op: Batch | Release) -> Any:
        pipe = self._client.pipeline(transaction=False)
        if isinstance(op, Release):
            self._queue.release(pipe, op)
            pipe.execute()
            return None
        stamp = time.time()
        scripts = self._queue.queue(pipe, op, stamp)
        replies = pipe.execute(raise_on_error=False)
        offset = 2 if op.pause_key is not None else 0
        missing = _missing_scripts(scripts, replies, offset)
        if missing:  # the server lost its scripts (restarted, SCRIPT FLUSH): load them, run those hits again
            again = self._client.pipeline(transaction=False)
            for i in missing:
                self._client.script_load(scripts[i].script)
                script, keys, args = self._queue.command(op.hits[i], stamp)
                again.evalsha(script.sha, len(keys), *keys, *args)
            for i, reply in zip(missing, again.execute(raise_on_error=False), strict=True):
                replies[offset + i] = reply
        _check(replies)
        return self._queue.result(op, replies, stamp)


class AsyncRedisBatch:
    """Batches on a ``limits.aio`` Redis storage (its redis-py bridge)."""

    def __init__(self, storage: Any) -> None:
        bridge = storage.bridge
        self._queue = _Queue(storage, bridge)
        self._client = bridge.get_connection()
        self._errors = storage.base_exceptions

    async def run(self, op: Batch | Release) -> Any:
        try:
            return await self._run(op)
        except self._errors as exc:
            raise StorageError(exc) from exc

    async def _run(self, op: Batch | Release) -> Any:
        pipe = self._client.pipeline(transaction=False)
        if isinstance(op, Release):
            self._queue.release(pipe, op)
            await pipe.execute()
            return None
        stamp = time.time()
        scripts = self._queue.queue(pipe, op, stamp)
        replies = await pipe.execute(raise_on_error=False)
        offset = 2 if op.pause_key is not None else 0
        missing = _missing_scripts(scripts, replies, offset)
        if missing:
            again = self._client.pipeline(transaction=False)
            for i in missing:
                await self._client.script_load(scripts[i].script)
                script, keys, args = self._queue.command(op.hits[i], stamp)
                again.evalsha(script.sha, len(keys), *keys, *args)
            for i, reply in zip(missing, await again.execute(raise_on_error=False), strict=True):
                replies[offset + i] = reply
        _check(replies)
        return self._queue.result(op, replies, stamp)


def single_hits(storage: Any) -> dict[str, Callable[[str, int, int, int], bool]]:
    """``hit(key, amount, expiry, cost)`` per strategy: one limit's script, one EVALSHA.

    The very command ``limits``' storage sends for a hit, without the layers
    around it (its error wrapper, the script object's argument tuples and
    per-call import): a few microseconds of client time on a call that is
    one round trip. A script the server lost is run through the script
    object once, which loads it again.
    """
    evalsha, prefixed, errors = storage.get_connection().evalsha, storage.prefixed_key, storage.base_exceptions
    incr, moving, sliding = (
        storage.lua_incr_expire,
        storage.lua_acquire_moving_window,
        storage.lua_acquire_sliding_window,
    )

    def run(script: Any, keys: list[str], *args: Any) -> Any:
        try:
            try:
                return evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return script(keys, args)
        except errors as exc:  # as limits' own calls report them (wrap_exceptions)
            raise StorageError(exc) from exc

    def fixed(key: str, amount: int, expiry: int, cost: int) -> bool:
        return int(run(incr, [prefixed(key)], expiry, cost)) <= amount

    def moving_window(key: str, amount: int, expiry: int, cost: int) -> bool:
        return bool(run(moving, [prefixed(key)], time.time(), amount, expiry, cost))

    def counter(key: str, amount: int, expiry: int, cost: int) -> bool:
        keys = [prefixed(storage._previous_window_key(key)), prefixed(storage._current_window_key(key))]
        return bool(run(sliding, keys, amount, expiry, cost))

    return {"fixed-window": fixed, "moving-window": moving_window, "sliding-window-counter": counter}


def batch_for(storage: Any) -> RedisBatch | None:
    """The batch of a sync storage, or ``None`` when its kind is hit limit by limit."""
    if type(storage) not in _SYNC_TYPES:
        return None
    return RedisBatch(storage)


def async_batch_for(storage: Any) -> AsyncRedisBatch | None:
    """The batch of a ``limits.aio`` storage, or ``None`` (only its redis-py bridge is known here)."""
    import limits.aio.storage

    bridge = getattr(storage, "bridge", None)
    if type(storage) not in (limits.aio.storage.RedisStorage, limits.aio.storage.RedisSentinelStorage):
        return None
    if type(bridge).__name__ != "RedispyBridge":
        return None
    return AsyncRedisBatch(storage)
