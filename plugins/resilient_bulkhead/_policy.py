"""The bulkhead policy: per-key slots in process (threads and asyncio alike), optionally leased fleet-wide."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from resilient import (
    SYSTEM_CLOCK,
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    Handler,
    Order,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)
from resilient.storage import is_memory, key_part

from ._errors import ConcurrencyLimitUnavailable
from ._events import BulkheadRejected
from ._options import BulkheadOptions
from ._slots import ADMITTED, REFUSED, Slots, Waiter
from ._store import AsyncRedisLeases, RedisLeases, store_errors

if sys.version_info >= (3, 11):
    from asyncio import timeout as _cancel_after
else:  # pragma: no cover - 3.10
    from resilient_timeout._timer import cancel_after as _cancel_after

__all__ = ["BulkheadPolicy", "KeyFunction", "register_key"]

_log = logging.getLogger("resilient.bulkhead")

#: A key function: the part of the pool key it returns replaces ``key`` (None counts as one key).
KeyFunction = Callable[[Call], "str | None"]
_KEY_FUNCTIONS: dict[str, KeyFunction] = {}

#: How often a sync waiter re-reads the pipeline clock (a fake one does not wake it), real seconds.
_SYNC_POLL = 0.05
#: After a store error, how long fleet mode uses the in-process limit instead, seconds.
STORE_RETRY = 5.0

Key = tuple[str | None, ...]


def register_key(name: str, fn: KeyFunction) -> None:
    """Make ``fn`` usable as ``key_function = "<name>"`` in ``[tool.resilient.bulkhead]``."""
    _KEY_FUNCTIONS[name] = fn


def _load_key_function(spec: str) -> KeyFunction:
    """A registered key function, or ``"module:function"``; a configuration error names what is known."""
    found = _KEY_FUNCTIONS.get(spec)
    if found is not None:
        return found
    module_name, sep, attr = spec.partition(":")
    if not sep:
        known = ", ".join(sorted(_KEY_FUNCTIONS)) or "(none)"
        allowed = f"no such key function; register it with resilient_bulkhead.register_key(); known: {known}"
        raise ConfigurationError("bulkhead.key_function", spec, allowed)
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError("bulkhead.key_function", spec, f"cannot be imported ({type(exc).__name__})") from None
    if not callable(fn):
        raise ConfigurationError("bulkhead.key_function", spec, "does not name a callable")
    return fn  # type: ignore[no-any-return]


def _key_of(parts: tuple[str, ...], fn: KeyFunction | None) -> Callable[[Call], Key]:
    if fn is not None:
        return lambda call: (fn(call),)
    if parts == ("provider", "model"):
        return lambda call: (call.target.provider, call.model)
    if parts == ("provider",):
        return lambda call: (call.target.provider,)
    getters = tuple(_GETTERS[p] for p in parts)
    return lambda call: tuple(get(call) for get in getters)


_GETTERS: dict[str, Callable[[Call], str | None]] = {
    "provider": lambda c: c.provider,
    "model": lambda c: c.model,
    "operation": lambda c: c.operation,
    "tenant": lambda c: c.tenant,
}


def _name(key: Key) -> str:
    return "/".join(key_part(p) for p in key)


def _wake_future(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], pool: Slots) -> Callable[[], None]:
    def wake() -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if not fut.done():
                fut.set_result(None)
            return
        try:
            loop.call_soon_threadsafe(_set_result, fut)
        except RuntimeError:  # its loop is closed: nobody will use the slot; pass it on
            pool.release()

    return wake


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class BulkheadPolicy(Policy):
    """At most ``max_concurrent`` calls in flight per key; a bounded queue; refusals carry ``retry_after``.

    One pool per key serves threads and every event loop of the process
    alike (one lock, no per-loop semaphore). In fleet mode a call also holds
    a lease in the store; a store that fails is left alone for
    ``STORE_RETRY`` seconds and the in-process limit applies meanwhile.
    """

    name = "bulkhead"
    order = Order.CONCURRENCY

    def __init__(self, section: Section[BulkheadOptions], runtime: Runtime, *, key: KeyFunction | None = None) -> None:
        self._section = section
        self._base = base = section.base
        self._varies = section.varies
        self._runtime = runtime
        self._clock = runtime.clock
        self._events = runtime.events
        fn = key
        if fn is None and base.key_function:
            fn = _load_key_function(base.key_function)
        self._key_function = fn
        self._key = _key_of(base.key, fn)
        self._pools: dict[Key, Slots] = {}
        self._pools_lock = threading.Lock()
        core = runtime.settings.core
        uri = base.storage or core.store
        self._prefix = f"{core.key_prefix}bulkhead:"
        self._leases: RedisLeases | None = None
        self._aleases: AsyncRedisLeases | None = None
        if base.fleet:
            if is_memory(uri):
                raise ConfigurationError(
                    "bulkhead.fleet", True, f"needs a Redis store (storage or the core store), not {uri!r}"
                )
            self._leases, self._aleases = RedisLeases(uri), AsyncRedisLeases(uri)
        self._store_errors = store_errors() if base.fleet else ()
        self._down_until = 0.0

    # ------------------------------------------------------------ pieces

    def _options(self, call: Call) -> BulkheadOptions:
        if not self._varies:
            return self._base
        return self._section.for_call(call.provider, call.model, call.tenant)

    def _pool(self, key: Key, limit: int) -> Slots:
        """The pool of ``key``, made with ``limit`` slots on first use (a pool keeps its limit)."""
        pool = self._pools.get(key)
        if pool is None:
            with self._pools_lock:
                pool = self._pools.get(key) or self._pools.setdefault(key, Slots(limit))
        return pool

    def _wait_limit(self, call: Call, options: BulkheadOptions) -> float:
        """How long a call may queue: ``max_wait``, capped by what is left of the call's deadline."""
        wait = options.max_wait
        meta = call._metadata
        deadline = meta.get("deadline") if meta is not None else None
        if deadline is not None:
            wait = min(wait, float(deadline) - self._clock.monotonic())
        return wait

    def _refuse(self, call: Call, key: Key, options: BulkheadOptions, reason: str) -> ConcurrencyLimitExceeded:
        limit = options.max_concurrent or 0
        pool = self._pool(key, limit)
        if self._events.enabled:
            self._events.emit(
                BulkheadRejected(
                    key=_name(key),
                    limit=limit,
                    in_flight=pool.in_flight,
                    waiting=pool.waiting,
                    reason=reason,
                    provider=call.provider,
                    operation=call.operation,
                    model=call.model,
                )
            )
        cls = ConcurrencyLimitUnavailable if options.status == 503 else ConcurrencyLimitExceeded
        return cls(
            f"More than {limit} calls in flight" + (" and the wait for a slot ran out" if reason == "timeout" else ""),
            retry_after=options.retry_after,
            provider=call.provider,
            model=call.model,
        )

    # ------------------------------------------------------------ in process

    def _acquire(self, call: Call, key: Key, pool: Slots, options: BulkheadOptions) -> None:
        """Wait for a slot in this process (the fast path already failed), or raise."""
        wait = self._wait_limit(call, options)
        if wait <= 0 or options.max_waiting == 0:
            raise self._refuse(call, key, options, "full")
        event = threading.Event()
        waiter = Waiter(event.set)
        verdict = pool.queue(waiter, options.max_waiting)
        if verdict == ADMITTED:
            return
        if verdict == REFUSED:
            raise self._refuse(call, key, options, "full")
        clock = self._clock
        real = clock is SYSTEM_CLOCK  # another clock (a FakeClock) does not wake the event: re-read it
        until = clock.monotonic() + wait
        while not event.is_set():
            left = until - clock.monotonic()
            if left <= 0:
                break
            event.wait(left if real else min(left, _SYNC_POLL))
        if event.is_set() or pool.leave(waiter):
            return
        raise self._refuse(call, key, options, "timeout")

    async def _aacquire(self, call: Call, key: Key, pool: Slots, options: BulkheadOptions) -> None:
        wait = self._wait_limit(call, options)
        if wait <= 0 or options.max_waiting == 0:
            raise self._refuse(call, key, options, "full")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiter = Waiter(_wake_future(loop, fut, pool))
        verdict = pool.queue(waiter, options.max_waiting)
        if verdict == ADMITTED:
            return
        if verdict == REFUSED:
            raise self._refuse(call, key, options, "full")
        scope = _cancel_after(wait)
        try:
            async with scope:
                await fut
        except (Exception, asyncio.CancelledError):
            if pool.leave(waiter):  # handed a slot as it gave up
                if scope.expired():
                    return  # it arrived in time after all: use it
                pool.release()
                raise
            if scope.expired():
                raise self._refuse(call, key, options, "timeout") from None
            raise

    # ------------------------------------------------------------ fleet

    def _store_failed(self, exc: BaseException) -> None:
        self._down_until = self._clock.monotonic() + STORE_RETRY
        _log.warning("bulkhead store unavailable (%s); in-process limits for %.0fs", type(exc).__name__, STORE_RETRY)

    def _lease(self, call: Call, key: Key, options: BulkheadOptions, limit: int) -> str | None:
        """Take a fleet-wide lease (waiting by polling); its token, or None when the store is down."""
        leases = self._leases
        assert leases is not None
        clock = self._clock
        if self._down_until > clock.monotonic():
            return None
        token, name = os.urandom(8).hex(), self._prefix + _name(key)
        until = clock.monotonic() + self._wait_limit(call, options)
        try:
            while not leases.acquire(name, clock.time(), options.lease_ttl, limit, token):
                if clock.monotonic() + options.poll_interval > until:
                    raise self._refuse(call, key, options, "timeout" if options.max_wait > 0 else "full")
                clock.sleep(options.poll_interval)
        except self._store_errors as exc:
            self._store_failed(exc)
            return None
        return token

    async def _alease(self, call: Call, key: Key, options: BulkheadOptions, limit: int) -> str | None:
        leases = self._aleases
        assert leases is not None
        clock = self._clock
        if self._down_until > clock.monotonic():
            return None
        token, name = os.urandom(8).hex(), self._prefix + _name(key)
        until = clock.monotonic() + self._wait_limit(call, options)
        try:
            while not await leases.acquire(name, clock.time(), options.lease_ttl, limit, token):
                if clock.monotonic() + options.poll_interval > until:
                    raise self._refuse(call, key, options, "timeout" if options.max_wait > 0 else "full")
                await clock.asleep(options.poll_interval)
        except self._store_errors as exc:
            self._store_failed(exc)
            return None
        return token

    def _unlease(self, key: Key, token: str) -> None:
        assert self._leases is not None
        try:
            self._leases.release(self._prefix + _name(key), token)
        except self._store_errors as exc:  # the lease expires by itself
            self._store_failed(exc)

    async def _aunlease(self, key: Key, token: str) -> None:
        assert self._aleases is not None
        try:
            await self._aleases.release(self._prefix + _name(key), token)
        except self._store_errors as exc:
            self._store_failed(exc)

    # ------------------------------------------------------------ drivers

    def _static_key(self, target: Target) -> Key | None:
        """The key of every call of ``target`` when it depends on nothing per call, else None."""
        if self._key_function is not None:
            return None
        parts = self._base.key
        if "tenant" in parts or ("model" in parts and target.model is None):
            return None
        values = {"provider": target.provider, "model": target.model, "operation": target.operation}
        return tuple(values[p] for p in parts)

    def _stays_out(self) -> bool:
        base = self._base
        return not self._varies and (not base.enabled or base.max_concurrent is None)

    def _limit(self, call: Call) -> tuple[BulkheadOptions, int] | None:
        options = self._options(call)
        limit = options.max_concurrent
        if not options.enabled or limit is None:
            return None
        return options, limit

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        if self._stays_out():
            return nxt
        key_of = self._key

        def limited(call: Call) -> Any:
            found = self._limit(call)
            if found is None:
                return nxt(call)
            options, limit = found
            key = key_of(call)
            pool = self._pool(key, limit)
            token = self._lease(call, key, options, limit) if self._leases is not None else None
            try:
                if not pool.take():
                    self._acquire(call, key, pool, options)
            except BaseException:
                if token is not None:
                    self._unlease(key, token)
                raise
            try:
                return nxt(call)
            finally:
                pool.release()
                if token is not None:
                    self._unlease(key, token)

        return limited

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        if self._stays_out():
            return nxt
        key_of = self._key
        static = self._static_key(target)
        if static is not None and not self._varies and self._leases is None:
            # The hot path: the key is known from the target alone, so its pool is found once, here;
            # a call takes a token without a lock and puts it back.
            base = self._base
            pool = self._pool(static, base.max_concurrent or 0)
            take, release = pool.take, pool.release

            async def limited_static(call: Call) -> Any:
                if not take():
                    await self._aacquire(call, static, pool, base)
                try:
                    return await nxt(call)
                finally:
                    release()

            return limited_static

        async def limited(call: Call) -> Any:
            found = self._limit(call)
            if found is None:
                return await nxt(call)
            options, limit = found
            key = key_of(call)
            pool = self._pool(key, limit)
            token = await self._alease(call, key, options, limit) if self._aleases is not None else None
            try:
                if not pool.take():
                    await self._aacquire(call, key, pool, options)
            except BaseException:
                if token is not None:
                    await self._aunlease(key, token)
                raise
            try:
                return await nxt(call)
            finally:
                pool.release()
                if token is not None:
                    await self._aunlease(key, token)

        return limited

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        if self._stays_out():
            return nxt
        key_of = self._key

        def limited(call: Call) -> Iterator[Any]:
            found = self._limit(call)
            if found is None:
                return nxt(call)
            return self._stream(call, key_of(call), found[0], found[1], nxt)

        return limited

    def _stream(self, call: Call, key: Key, options: BulkheadOptions, limit: int, nxt: StreamHandler) -> Iterator[Any]:
        # A generator, so the slot is taken when the stream starts and held until it ends or is closed.
        pool = self._pool(key, limit)
        token = self._lease(call, key, options, limit) if self._leases is not None else None
        try:
            if not pool.take():
                self._acquire(call, key, pool, options)
        except BaseException:
            if token is not None:
                self._unlease(key, token)
            raise
        try:
            return (yield from nxt(call))
        finally:
            pool.release()
            if token is not None:
                self._unlease(key, token)

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        if self._stays_out():
            return nxt
        key_of = self._key

        def limited(call: Call) -> AsyncIterator[Any]:
            found = self._limit(call)
            if found is None:
                return nxt(call)
            return self._astream(call, key_of(call), found[0], found[1], nxt)

        return limited

    async def _astream(
        self, call: Call, key: Key, options: BulkheadOptions, limit: int, nxt: AsyncStreamHandler
    ) -> AsyncIterator[Any]:
        pool = self._pool(key, limit)
        token = await self._alease(call, key, options, limit) if self._aleases is not None else None
        try:
            if not pool.take():
                await self._aacquire(call, key, pool, options)
        except BaseException:
            if token is not None:
                await self._aunlease(key, token)
            raise
        it = nxt(call)
        try:
            async for chunk in it:
                yield chunk
        finally:
            pool.release()
            try:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if token is not None:
                    await self._aunlease(key, token)

    # ------------------------------------------------------------ introspection

    def in_flight(self) -> dict[str, int]:
        """Calls in flight in this process per key (a gauge callback for metrics); idle keys left out."""
        return {_name(key): pool.in_flight for key, pool in list(self._pools.items()) if pool.in_flight}

    def waiting(self) -> dict[str, int]:
        """Calls queued for a slot in this process per key; idle keys left out."""
        return {_name(key): pool.waiting for key, pool in list(self._pools.items()) if pool.waiting}

    def health(self) -> Mapping[str, Any] | None:
        """For ``/ready``: in-flight and queued counts per key; in fleet mode, the fleet's count too."""
        report: dict[str, Any] = {"ok": True, "in_flight": self.in_flight(), "waiting": self.waiting()}
        if self._leases is not None:
            now = self._clock.time()
            try:
                report["fleet_in_flight"] = {
                    _name(key): self._leases.count(self._prefix + _name(key), now) for key in list(self._pools)
                }
            except self._store_errors as exc:
                report["ok"] = False
                report["store"] = f"unavailable ({type(exc).__name__})"
        return report

    def close(self) -> None:
        if self._leases is not None:
            self._leases.close()

    async def aclose(self) -> None:
        self.close()
        if self._aleases is not None:
            await self._aleases.aclose()
