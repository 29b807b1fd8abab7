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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import limits
import limits.storage
from limits.errors import StorageError

from ._options import STRATEGIES, Strategy
from ._steps import Steps, adrive, drive

__all__ = [
    "AsyncRedisBatch",
    "Batch",
    "BatchHit",
    "RedisBatch",
    "Release",
    "Settle",
    "async_batch_for",
    "async_single_hits",
    "batch_for",
    "single_hits",
]


def _no_script() -> type[Exception]:
    """redis-py's NoScriptError, imported when a Redis store is used: redis is an optional dependency."""
    import redis.exceptions

    return redis.exceptions.NoScriptError


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
class Settle:
    """Move several token reservations (each an ``Adjust``) in two round trips: read their windows, move them."""

    moves: tuple[Any, ...]
    local: ClassVar[bool] = False


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


Commands = list[tuple[str, tuple[Any, ...]]]  # one pipeline: (redis-py method, arguments) per command
Call = tuple[Any, str, tuple[Any, ...]]  # (the script run, or None), method, arguments


class _Queue:
    """What batches send, sync and async alike, as steps yielding the pipelines to execute (see ._steps)."""

    def __init__(self, storage: Any, scripts: Any) -> None:
        self.storage = storage  # for the window key layout (``_current_window_key``...)
        self.scripts = scripts  # the object holding the registered ``lua_*`` scripts and ``prefixed_key``
        self.prefixed = scripts.prefixed_key

    def hit_call(self, hit: BatchHit, stamp: float) -> Call:
        item = hit.item
        return self.command(hit.strategy, item.key_for(*hit.ids), item.amount, item.get_expiry(), hit.cost, stamp)

    def command(self, strategy: str, key: str, amount: int, expiry: int, cost: int, stamp: float) -> Call:
        """The script ``limits``' storage runs for one hit of ``strategy``, with its keys and arguments."""
        s = self.scripts
        if strategy == "fixed-window":
            return _script(s.lua_incr_expire, [self.prefixed(key)], expiry, cost)
        if strategy == "moving-window":
            return _script(s.lua_acquire_moving_window, [self.prefixed(key)], stamp, amount, expiry, cost)
        storage = self.storage
        previous = self.prefixed(storage._previous_window_key(key))
        current = self.prefixed(storage._current_window_key(key))
        return _script(s.lua_acquire_sliding_window, [previous, current], amount, expiry, cost)

    def steps(self, op: Batch | Release | Settle) -> Steps[Commands, Any]:
        if isinstance(op, Batch):
            return self._batch(op)
        if isinstance(op, Release):
            return _run(self._release(op))
        return self._settle(op)

    def _batch(self, batch: Batch) -> Steps[Commands, tuple[float | None, list[tuple[bool, float]]]]:
        stamp = time.time()
        calls: list[Call] = []
        if batch.pause_key is not None:
            key = self.prefixed(batch.pause_key)
            calls += [(None, "get", (key,)), (None, "ttl", (key,))]
        calls += [self.hit_call(hit, stamp) for hit in batch.hits]
        replies = yield from _run(calls)
        paused: float | None = None
        if batch.pause_key is not None:
            value, ttl = replies[0], replies[1]
            replies = replies[2:]
            paused = float(max(ttl, 0)) if value is not None and int(value) > 0 else 0.0
        return paused, [
            (_allowed(h.strategy, r, h.item.amount), stamp) for h, r in zip(batch.hits, replies, strict=True)
        ]

    def _release(self, op: Release) -> list[Call]:
        # limits' moving window is a list of entry timestamps per key (acquire_moving_window.lua pushes
        # ``amount`` copies of the stamp it is given): taking ours back removes that many of them. Lua
        # hands the number back to Redis as text, in 17 significant digits on Redis 7 and 14 before it:
        # only one of the two is ever stored by a server, so removing both removes ``cost`` entries at most.
        key = self.prefixed(op.item.key_for(*op.ids))
        texts = dict.fromkeys((f"{op.stamp:.17g}", f"{op.stamp:.14g}"))
        return [(None, "lrem", (key, op.cost, text)) for text in texts]

    def _settle(self, op: Settle) -> Steps[Commands, None]:
        """``Adjust`` each move, as its own steps would, in two round trips for them all: read, then move."""
        from ._store import _TTL_RESOLUTION, window_key, window_start  # _store imports this module

        moves = []
        reads: list[Call] = []
        for move in op.moves:
            key, expiry = window_key(self.storage, move.strategy, move.item, move.item.key_for(*move.ids))
            if key is None:
                continue
            moves.append((move, key, expiry))
            if move.delta < 0:
                reads += [(None, "get", (self.prefixed(key),)), (None, "ttl", (self.prefixed(key),))]
        replies = iter((yield from _run(reads)) if reads else [])
        now = time.time()
        writes: list[Call] = []
        for move, key, expiry in moves:
            delta = move.delta
            if delta < 0:
                value, ttl = next(replies), next(replies)
                if move.reserved_at is not None:
                    start = window_start(self.storage, move.strategy, move.item, now, max(ttl, 0) + now)
                    if move.reserved_at < start - _TTL_RESOLUTION:
                        continue  # reserved in a window that has rolled over: nothing to refund there
                delta = -min(-delta, max(int(value or 0), 0))
                if delta == 0:
                    continue
            writes.append(_script(self.scripts.lua_incr_expire, [self.prefixed(key)], expiry, delta))
        if writes:
            yield from _run(writes)


def _allowed(strategy: str, reply: Any, amount: int) -> bool:
    """A hit script's reply read as ``limits`` reads it: a fixed window's count, the others' yes or no."""
    return int(reply) <= amount if strategy == "fixed-window" else bool(reply)


def _script(script: Any, keys: list[str], *args: Any) -> Call:
    # EVALSHA straight on the pipeline: a script registered with the pipeline makes redis-py
    # ask SCRIPT EXISTS before every execute, a second round trip per batch.
    return script, "evalsha", (script.sha, len(keys), *keys, *args)


def _run(calls: list[Call]) -> Steps[Commands, list[Any]]:
    """Send ``calls`` in one pipeline; scripts the server lost (restarted, SCRIPT FLUSH) are loaded, their calls
    made again. An error reply is the store failing, as ``limits`` reports it."""
    replies: list[Any] = yield [(name, args) for _, name, args in calls]
    no_script = _no_script()
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, no_script)]
    if missing:
        again: Commands = []
        for i in missing:
            script, name, args = calls[i]
            again += [("script_load", (script.script,)), (name, args)]
        more = yield again
        for n, i in enumerate(missing):
            replies[i] = more[2 * n + 1]
    for reply in replies:
        if isinstance(reply, Exception):
            raise StorageError(reply)
    return replies


class RedisBatch:
    """Batches on a sync ``limits`` Redis storage."""

    def __init__(self, storage: Any) -> None:
        self._queue = _Queue(storage, storage)
        self._client = storage.get_connection()
        self._errors = storage.base_exceptions

    def run(self, op: Batch | Release | Settle) -> Any:
        try:
            return drive(self._queue.steps(op), self._execute)
        except self._errors as exc:  # as limits' own calls report them (wrap_exceptions)
            raise StorageError(exc) from exc

    def _execute(self, commands: Commands) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for name, args in commands:
            getattr(pipe, name)(*args)
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]


class AsyncRedisBatch:
    """Batches on a ``limits.aio`` Redis storage (its redis-py bridge)."""

    def __init__(self, storage: Any) -> None:
        self._queue = _Queue(storage, storage.bridge)
        self._client = storage.bridge.get_connection()
        self._errors = storage.base_exceptions

    async def run(self, op: Batch | Release | Settle) -> Any:
        try:
            return await adrive(self._queue.steps(op), self._execute)
        except self._errors as exc:
            raise StorageError(exc) from exc

    async def _execute(self, commands: Commands) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for name, args in commands:
            getattr(pipe, name)(*args)
        return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]


def single_hits(storage: Any) -> dict[str, Callable[[str, int, int, int], bool]]:
    """``hit(key, amount, expiry, cost)`` per strategy: one limit's script, one EVALSHA.

    The very command ``limits``' storage sends for a hit, without the layers
    around it (its error wrapper, the script object's argument tuples and
    per-call import): a few microseconds of client time on a call that is
    one round trip. A script the server lost is loaded again.
    """
    queue, client, errors = _Queue(storage, storage), storage.get_connection(), storage.base_exceptions
    no_script = _no_script()

    def hit_of(strategy: str) -> Callable[[str, int, int, int], bool]:
        def hit(key: str, amount: int, expiry: int, cost: int) -> bool:
            script, _, args = queue.command(strategy, key, amount, expiry, cost, time.time())
            try:
                try:
                    reply = client.evalsha(*args)
                except no_script:
                    client.script_load(script.script)
                    reply = client.evalsha(*args)
            except errors as exc:  # as limits' own calls report them (wrap_exceptions)
                raise StorageError(exc) from exc
            return _allowed(strategy, reply, amount)

        return hit

    return {strategy: hit_of(strategy) for strategy in STRATEGIES}


def async_single_hits(storage: Any) -> dict[str, Callable[[str, int, int, int], Awaitable[bool]]] | None:
    """:func:`single_hits` on a ``limits.aio`` Redis storage (its redis-py bridge); ``None`` on another."""
    if not _redispy_bridged(storage):
        return None
    queue, client, errors = _Queue(storage, storage.bridge), storage.bridge.get_connection(), storage.base_exceptions
    no_script = _no_script()

    def hit_of(strategy: str) -> Callable[[str, int, int, int], Awaitable[bool]]:
        async def hit(key: str, amount: int, expiry: int, cost: int) -> bool:
            script, _, args = queue.command(strategy, key, amount, expiry, cost, time.time())
            try:
                try:
                    reply = await client.evalsha(*args)
                except no_script:
                    await client.script_load(script.script)
                    reply = await client.evalsha(*args)
            except errors as exc:
                raise StorageError(exc) from exc
            return _allowed(strategy, reply, amount)

        return hit

    return {strategy: hit_of(strategy) for strategy in STRATEGIES}


def batch_for(storage: Any) -> RedisBatch | None:
    """The batch of a sync storage, or ``None`` when its kind is hit limit by limit."""
    if type(storage) not in _SYNC_TYPES:
        return None
    return RedisBatch(storage)


def async_batch_for(storage: Any) -> AsyncRedisBatch | None:
    """The batch of a ``limits.aio`` storage, or ``None`` (only its redis-py bridge is known here)."""
    return AsyncRedisBatch(storage) if _redispy_bridged(storage) else None


def _redispy_bridged(storage: Any) -> bool:
    import limits.aio.storage

    if type(storage) not in (limits.aio.storage.RedisStorage, limits.aio.storage.RedisSentinelStorage):
        return False
    return type(getattr(storage, "bridge", None)).__name__ == "RedispyBridge"
