"""Where breakers live: process memory, or a Redis hash per breaker shared by the fleet."""

from __future__ import annotations

import functools
import hashlib
import threading
from importlib.resources import files
from typing import Any

from resilient.storage import PerLoop, async_redis_client, redis_client

from ._machine import CLOSED, FORCED_CLOSED, FORCED_OPEN, STATE_NAMES, Limits, Machine

__all__ = ["AsyncRedisBreakers", "MemoryBreakers", "RedisBreakers"]

_DEFERRED = (files(__package__) / "lua" / "deferred.lua").read_text()  # shared by the two below
_ACQUIRE = _DEFERRED + (files(__package__) / "lua" / "acquire.lua").read_text()
_RECORD = _DEFERRED + (files(__package__) / "lua" / "record.lua").read_text()
_FORCE = (files(__package__) / "lua" / "force.lua").read_text()

Decision = tuple[int, float | None, str | None]
Deferred = tuple[int, int] | None  # successes a worker held back: (their TOKEN_FULL permit, how many)


def _ttl(limits: Limits) -> int:
    # Every key expires; long enough to outlive an open wait and a time window many times over.
    return int(max(86_400, 10 * limits.wait, 10 * limits.window_size))


@functools.lru_cache(maxsize=256)
def _acquire_limits(limits: Limits) -> bytes:
    # The numbers a script decides with change only with the options: packed once, one argument.
    return (
        f"{limits.wait!r} {limits.half_open_calls} {_ttl(limits)} {limits.trial_timeout!r} "
        f"{limits.window_type} {limits.window_size}"
    ).encode()


@functools.lru_cache(maxsize=256)
def _record_limits(limits: Limits) -> bytes:
    slow_rate = limits.slow_rate if limits.slow_rate is not None else -1.0
    return (
        f"{limits.failure_rate!r} {limits.window_type} {limits.window_size} {limits.minimum_calls} "
        f"{slow_rate!r} {limits.half_open_calls} {_ttl(limits)}"
    ).encode()


def _acquire_args(limits: Limits, now: float, deferred: Deferred) -> tuple[Any, ...]:
    permit, count = deferred or (0, 0)
    return repr(now), _acquire_limits(limits), permit, count


def _record_args(limits: Limits, token: int, code: int, now: float, deferred: Deferred) -> tuple[Any, ...]:
    permit, count = deferred or (0, 0)
    return repr(now), token, code, _record_limits(limits), permit, count


class _Script:
    """A Lua script run by its SHA1 (EVALSHA), loaded again when the server does not know it (a restart).

    redis-py's own ``Script`` objects do the same with more work per call
    (an import, tuple copies, a pipeline check): this runs on every call.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, key: str, args: tuple[Any, ...]) -> Any:
        try:
            return client.evalsha(self.sha, 1, key, *args)
        except _no_script():
            client.script_load(self.source)
            return client.evalsha(self.sha, 1, key, *args)

    async def call_async(self, client: Any, key: str, args: tuple[Any, ...]) -> Any:
        try:
            return await client.evalsha(self.sha, 1, key, *args)
        except _no_script():
            await client.script_load(self.source)
            return await client.evalsha(self.sha, 1, key, *args)


def _no_script() -> type[Exception]:
    import redis.exceptions

    return redis.exceptions.NoScriptError


_ACQUIRE_SCRIPT, _RECORD_SCRIPT, _FORCE_SCRIPT = _Script(_ACQUIRE), _Script(_RECORD), _Script(_FORCE)


def _decision(raw: Any) -> Decision:
    if raw.__class__ is int:  # a closed breaker answers its permit alone
        return raw, None, None
    token, retry, transition = raw
    text = retry.decode() if isinstance(retry, bytes) else str(retry)
    name = transition.decode() if isinstance(transition, bytes) else str(transition)
    return int(token), (float(text) if text else None), (name or None)


def _text(raw: Any) -> str | None:
    value = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    return value or None


def _status(fields: dict[Any, Any]) -> dict[str, Any]:
    def num(name: str) -> float:
        raw = fields.get(name.encode(), fields.get(name))
        return float(raw) if raw is not None else 0.0

    state = int(num("st"))
    return {
        "state": STATE_NAMES[state],
        "calls": int(num("n")),
        "failures": int(num("f")),
        "slow": int(num("s")),
        "opened_at": num("oa") or None,
    }


class MemoryBreakers:
    """Breakers in this process: one :class:`Machine` per key, decided under one short lock."""

    def __init__(self) -> None:
        self._machines: dict[str, Machine] = {}
        self._lock = threading.Lock()

    @property
    def lock(self) -> threading.Lock:
        """The lock every change to a machine is made under."""
        return self._lock

    def machine(self, key: str) -> Machine:
        """The machine of ``key`` (made on first use). Change it only under :attr:`lock`."""
        return self._machines.get(key) or self._machine(key)

    def _machine(self, key: str) -> Machine:
        machine = self._machines.get(key)
        if machine is None:
            machine = self._machines.setdefault(key, Machine())
        return machine

    def is_closed(self, key: str) -> bool:
        """Closed (or not yet seen): a call may go, and nothing changes by letting it."""
        machine = self._machines.get(key)
        return machine is None or machine.state == CLOSED

    def acquire(self, key: str, limits: Limits, now: float) -> Decision:
        machine = self._machine(key)
        if machine.state == CLOSED:  # nothing to change, no lock needed
            return 1, None, None
        with self._lock:
            return machine.acquire(limits, now)

    def record(self, key: str, limits: Limits, token: int, code: int, now: float) -> str | None:
        machine = self._machines.get(key) or self._machine(key)
        with self._lock:
            return machine.record(limits, token, code, now)

    def force(self, key: str, state: int, now: float) -> str:
        with self._lock:
            return self._machine(key).force(state, now)

    def status(self, key: str) -> dict[str, Any]:
        m = self._machine(key)
        return {
            "state": STATE_NAMES[m.state],
            "calls": m.n,
            "failures": m.f,
            "slow": m.s,
            "opened_at": m.opened_at or None,
        }

    def keys(self) -> list[str]:
        return list(self._machines)


class RedisBreakers:
    """Breakers in Redis: one hash per breaker, every decision one Lua script (atomic)."""

    def __init__(self, uri: str) -> None:
        self.client = redis_client(uri)

    def acquire(self, key: str, limits: Limits, now: float, deferred: Deferred = None) -> Decision:
        return _decision(_ACQUIRE_SCRIPT(self.client, key, _acquire_args(limits, now, deferred)))

    def record(
        self, key: str, limits: Limits, token: int, code: int, now: float, deferred: Deferred = None
    ) -> str | None:
        return _text(_RECORD_SCRIPT(self.client, key, _record_args(limits, token, code, now, deferred)))

    def force(self, key: str, state: int, now: float) -> str:
        ttl = 86_400 * 30 if state in (FORCED_OPEN, FORCED_CLOSED) else 86_400
        _FORCE_SCRIPT(self.client, key, (state, repr(now) if state == FORCED_OPEN else "0", ttl))
        return STATE_NAMES[state]

    def status(self, key: str) -> dict[str, Any]:
        return _status(self.client.hgetall(key))

    def close(self) -> None:
        self.client.close()


class AsyncRedisBreakers:
    """:class:`RedisBreakers` for async calls: an asyncio client per event loop."""

    def __init__(self, uri: str) -> None:
        self._per_loop = PerLoop(lambda: async_redis_client(uri))

    async def acquire(self, key: str, limits: Limits, now: float, deferred: Deferred = None) -> Decision:
        raw = await _ACQUIRE_SCRIPT.call_async(self._per_loop.get(), key, _acquire_args(limits, now, deferred))
        return _decision(raw)

    async def record(
        self, key: str, limits: Limits, token: int, code: int, now: float, deferred: Deferred = None
    ) -> str | None:
        args = _record_args(limits, token, code, now, deferred)
        return _text(await _RECORD_SCRIPT.call_async(self._per_loop.get(), key, args))

    async def aclose(self) -> None:
        found = self._per_loop.pop()
        if found is not None:
            await found.aclose()
