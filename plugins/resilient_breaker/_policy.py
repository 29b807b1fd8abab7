"""The breaker policy: thin sync and async drivers around the pure machine and a store."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    CircuitOpen,
    Handler,
    Order,
    Outcome,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)
from resilient.storage import STORE_ERRORS, is_memory, key_part

from ._events import BreakerRejected, BreakerStateChanged
from ._machine import (
    CLOSED,
    FORCED_CLOSED,
    FORCED_OPEN,
    IGNORED,
    OK,
    TOKEN_CLOSED,
    TOKEN_FULL,
    Limits,
    Machine,
    outcome_code,
)
from ._options import BreakerOptions
from ._store import AsyncRedisBreakers, Decision, Deferred, MemoryBreakers, RedisBreakers

__all__ = ["BreakerPolicy"]

_log = logging.getLogger("resilient.breaker")

#: A breaker's key, limits and machine (the machine on the memory store only).
Entry = tuple[str, Limits, Machine | None]

_DEFER_MAX = 256  # successes held back per breaker before one is recorded on its own
_LOCAL, _STORE, _PROBE = 0, 1, 2  # where a store operation goes (BreakerPolicy._route)
#: on_store_error = "allow": a permit nothing will count.
_ALLOWED: Decision = (TOKEN_CLOSED, None, None)


class BreakerPolicy(Policy):
    """Refuses calls to a provider/model whose recent calls failed too often; lets trials through after a wait."""

    name = "breaker"
    order = Order.BREAKER

    def __init__(self, section: Section[BreakerOptions], runtime: Runtime) -> None:
        self._section = section
        self._runtime = runtime
        self._clock = runtime.clock
        self._events = runtime.events
        core = runtime.settings.core
        uri = section.base.storage or core.store
        self._prefix = f"{core.key_prefix}breaker:"
        self._local = MemoryBreakers()
        self._shared: RedisBreakers | None = None if is_memory(uri) else RedisBreakers(uri)
        self._ashared: AsyncRedisBreakers | None = None if is_memory(uri) else AsyncRedisBreakers(uri)
        # (id of options, provider, model, tenant) -> (options, key, limits, machine when the store is memory).
        # The options object is kept and compared: an id is only unique while its object lives.
        self._entries: dict[
            tuple[int, str, str | None, str | None], tuple[BreakerOptions, str, Limits, Machine | None]
        ] = {}
        # The store failed: stay off it until ``_down_until`` (monotonic), then let one call
        # probe it (``_probing``) while the others keep deciding locally, as storage.py's pause
        # does for the quota stores: a store that is still down then sees one call at a time,
        # not every call in flight (each held up to the socket timeout by a hung server).
        self._down_until = 0.0
        self._probing = False
        self._probe_lock = threading.Lock()
        # Successes held back per breaker key (shared store): (their TOKEN_FULL permit, how many,
        # the limits), sent with this worker's next script on that breaker. See _defer.
        self._deferred: dict[str, tuple[int, int, Limits]] = {}
        self._deferred_lock = threading.Lock()
        base = section.base
        self._base, self._varies = base, section.varies
        self._by_model = section.varies or "model" in base.key
        self._by_tenant = section.varies or "tenant" in base.key

    # ------------------------------------------------------------ pieces

    def _options(self, call: Call) -> BreakerOptions:
        if not self._varies:
            return self._base
        return self._section.for_call(call.provider, call.model, call.tenant)

    def _key(self, call: Call, options: BreakerOptions) -> str:
        """The breaker key of a call (cached with the rest of its entry)."""
        return self._entry(call, options)[0]

    def _entry(self, call: Call, options: BreakerOptions) -> Entry:
        """Everything the hot path needs for a call's breaker, in one cached lookup."""
        target = call.target
        model = None
        if self._by_model:
            model = target.model
            if model is None:  # Call.model, inlined: this runs on every call
                value = call.kwargs.get("model")
                model = value if isinstance(value, str) else None
        return self._entry_at(options, target.provider, model, call.tenant if self._by_tenant else None)

    def _entry_at(self, options: BreakerOptions, provider: str, model: str | None, tenant: str | None) -> Entry:
        cache_key = (id(options), provider, model, tenant)
        entry = self._entries.get(cache_key)
        if entry is None or entry[0] is not options:
            if len(self._entries) >= 10_000:
                self._entries.clear()
            key = self.key_for(options, provider, model, tenant)
            machine = self._local.machine(key) if self._shared is None else None
            entry = self._entries[cache_key] = (options, key, self._limits_of(options), machine)
        return entry[1], entry[2], entry[3]

    def _finder(self, target: Target) -> Callable[[Call, BreakerOptions], tuple[str, Limits, Machine | None]]:
        """What finds a call's entry for ``target``: by its model alone when nothing else varies per call.

        Without overrides and without the tenant in the key, a target's calls
        differ only by model: one small dict keyed by it replaces the general
        lookup (a key tuple with the options' id, and a tuple sliced per call).
        """
        if self._varies or self._by_tenant:
            return self._entry
        entry, by_model, static = self._entry, self._by_model, target.model
        found_by: dict[str | None, tuple[str, Limits, Machine | None]] = {}

        def find(call: Call, options: BreakerOptions) -> tuple[str, Limits, Machine | None]:
            model = None
            if by_model:
                model = static
                if model is None:
                    value = call.kwargs.get("model")
                    model = value if isinstance(value, str) else None
            found = found_by.get(model)
            if found is None:
                found = entry(call, options)
                if len(found_by) < 1024:
                    found_by[model] = found
            return found

        return find

    def key_for(self, options: BreakerOptions, provider: str, model: str | None, tenant: str | None) -> str:
        parts = {"provider": provider, "model": model, "tenant": tenant}
        inner = "/".join(f"{name}={key_part(parts[name])}" for name in options.key)
        if self._varies:
            # Overrides may give calls that share a key different windows or thresholds:
            # those are different breakers, or one ring would be judged by two sizes.
            digest = hashlib.sha256(repr(self._limits_of(options)).encode()).hexdigest()[:8]
            inner += f"/limits={digest}"
        # The braces are a Redis Cluster hash tag: a breaker's hash lives in one slot.
        return f"{self._prefix}{{{inner}}}"

    def _limits_of(self, options: BreakerOptions) -> Limits:
        # Options are immutable and their cross-field rules already checked: Limits is a plain copy.
        return Limits(
            failure_rate=options.failure_rate,
            window_type=options.window_type,
            window_size=options.window_size,
            minimum_calls=options.minimum_calls,
            slow_rate=options.slow_call_rate if options.slow_call_duration is not None else None,
            wait=options.wait_open,
            half_open_calls=options.half_open_calls,
        )

    def _code(self, outcome: Outcome | None, options: BreakerOptions, elapsed: float | None) -> int:
        """The outcome as the machine counts it: failure, success, or not counted."""
        slow = elapsed is not None and options.slow_call_duration is not None and elapsed > options.slow_call_duration
        if outcome is None or outcome.ok:
            return outcome_code(False, slow)
        if outcome.provider_fault:
            return outcome_code(True, slow)
        if outcome.kind == "client_error":
            return outcome_code(False, slow)  # the provider answered: it is up
        return IGNORED  # 429, a policy's refusal, cancellation, our own bugs: say nothing of health

    def _store_failed(self, exc: BaseException, options: BreakerOptions) -> None:
        self._down_until = self._clock.monotonic() + options.store_retry
        self._probing = False
        _log.warning(
            "breaker store unavailable (%s); %s for %.0fs",
            type(exc).__name__,
            options.on_store_error,
            options.store_retry,
        )

    def _route(self) -> int:
        """Where a store operation goes: ``_LOCAL``, ``_STORE``, or ``_PROBE`` (the one call trying a failed store)."""
        if self._shared is None:
            return _LOCAL
        down = self._down_until
        if not down:
            return _STORE
        if self._clock.monotonic() < down:
            return _LOCAL
        with self._probe_lock:
            if self._probing:
                return _LOCAL
            self._probing = True
        return _PROBE

    def _answered(self, route: int) -> None:
        """The store answered a probe: back to it for every call."""
        if route == _PROBE:
            self._down_until = 0.0
            self._probing = False

    def _no_word(self, route: int) -> None:
        """A probe ended without a word from the store (cancelled, interrupted): the next call probes."""
        if route == _PROBE:
            self._probing = False

    def _defer(self, key: str, limits: Limits, token: int) -> bool:
        """Hold back the success of a ``TOKEN_FULL`` permit, to be recorded with the next script on ``key``.

        In a full count window a success cannot trip the breaker, so nothing
        another worker must see waits on it: only failures (and successes
        while the window fills, which can trip it) take a round trip of their
        own, and every threshold crossing is still written at once. Successes
        of an older generation than those held are dropped, as the scripts
        would drop them. False (record it now) while the store is away or too
        many are held already.
        """
        if self._down_until:
            return False
        generation = token >> 2
        with self._deferred_lock:
            held = self._deferred.get(key)
            if held is None or held[0] >> 2 < generation:
                self._deferred[key] = (token, 1, limits)
            elif held[0] >> 2 == generation:
                if held[1] >= _DEFER_MAX:
                    return False
                self._deferred[key] = (token, held[1] + 1, limits)
        return True

    def _held_back(self, key: str, limits: Limits, token: int, code: int) -> bool:
        """A success the shared store may take with the next script (see :meth:`_defer`), now held back."""
        return code == OK and token & 3 == TOKEN_FULL and self._shared is not None and self._defer(key, limits, token)

    def _take_deferred(self, key: str) -> Deferred:
        if not self._deferred:  # (read without the lock: one held a moment ago goes with the next call)
            return None
        with self._deferred_lock:
            held = self._deferred.pop(key, None)
        return None if held is None else (held[0], held[1])

    def _transition(self, call: Call, key: str, transition: str | None) -> None:
        if transition is not None and self._events.enabled:
            self._events.emit(
                BreakerStateChanged(
                    provider=call.provider, operation=call.operation, model=call.model, key=key, state=transition
                )
            )

    def _refuse(self, call: Call, key: str, retry_after: float | None) -> CircuitOpen:
        if self._events.enabled:
            self._events.emit(
                BreakerRejected(
                    provider=call.provider, operation=call.operation, model=call.model, key=key, retry_after=retry_after
                )
            )
        return CircuitOpen(
            f"circuit open for {call.provider}" + (f" {call.model}" if call.model else ""),
            retry_after=retry_after,
            provider=call.provider,
            model=call.model,
        )

    # ------------------------------------------------------------ memory, one breaker per model: the fast path

    def _fast(self, target: Target) -> tuple[bool, dict[str | None, Entry], Callable[[str | None], Entry]] | None:
        """How the fast path finds a call's breaker, or None where it does not apply.

        It applies on the memory store, without overrides, without the tenant
        in the key and without slow-call timing: then a target's calls differ
        only by model, and their breakers sit in a small dict keyed by it
        (``None`` for no model, a static model, or a key without the model).
        Returns whether the model is read per call, that dict, and what fills it.
        """
        base = self._base
        if self._shared is not None or self._varies or self._by_tenant or base.slow_call_duration is not None:
            return None
        provider, static = target.provider, target.model if self._by_model else None
        found_by: dict[str | None, Entry] = {}

        def bind(model: str | None) -> Entry:
            entry = self._entry_at(base, provider, static if static is not None else model, None)
            if len(found_by) < 1024:
                found_by[model] = entry
            return entry

        return self._by_model and static is None, found_by, bind

    def _fast_steps(
        self,
    ) -> tuple[
        Callable[[Call, Entry], int],
        Callable[[Call, Entry, int, int], None],
        Callable[[Call, Entry, int, Exception], None],
    ]:
        """The fast path's slower steps (memory store), with what they use bound once.

        ``admit``: a permit from a machine that is not closed, or CircuitOpen.
        ``settle``: record an outcome the fast path could not skip, under the
        lock for the bookkeeping only. ``failed``: classify an error and settle it.
        """
        lock, clock_time, transition_of, refuse = self._local.lock, self._clock.time, self._transition, self._refuse
        code_of, classify, base = self._code, self._runtime.classify, self._base

        def admit(call: Call, entry: Entry) -> int:
            key, limits, machine = entry
            with lock:
                token, retry_after, transition = machine.acquire(limits, clock_time())  # type: ignore[union-attr]
            if transition is not None:
                transition_of(call, key, transition)
            if not token:
                raise refuse(call, key, retry_after)
            return token

        def settle(call: Call, entry: Entry, token: int, code: int) -> None:
            key, limits, machine = entry
            assert machine is not None
            with lock:
                # (a time window's success needs the time; a count window's does not)
                if code == OK and machine.record_ok(
                    limits, token, None if limits.window_type == "count" else clock_time()
                ):
                    return
                transition = machine.record(limits, token, code, clock_time())
            if transition is not None:
                transition_of(call, key, transition)

        def failed(call: Call, entry: Entry, token: int, exc: Exception) -> None:
            settle(call, entry, token, code_of(classify(exc), base, None))

        return admit, settle, failed

    def _wrap_fast(self, nxt: Handler, target: Target) -> Handler | None:
        fast = self._fast(target)
        if fast is None:
            return None
        per_call, found_by, bind = fast
        admit, settle, failed = self._fast_steps()

        def guarded(call: Call) -> Any:
            model = call.kwargs.get("model") if per_call else None
            if model is not None and model.__class__ is not str:
                model = model if isinstance(model, str) else None  # as Call.model reads it
            entry = found_by.get(model) or bind(model)
            machine: Machine = entry[2]  # type: ignore[assignment]  # always one on memory
            # closed: the permit without a lock (acquire would change nothing); else the machine decides
            token = (TOKEN_CLOSED | (machine.generation << 2)) if machine.state == CLOSED else admit(call, entry)
            try:
                result = nxt(call)
            except Exception as exc:
                failed(call, entry, token, exc)
                raise
            except BaseException:
                settle(call, entry, token, IGNORED)
                raise
            if not machine.clean:  # a clean window: recording this success would change nothing
                settle(call, entry, token, OK)
            return result

        return guarded

    def _wrap_fast_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler | None:
        fast = self._fast(target)
        if fast is None:
            return None
        per_call, found_by, bind = fast
        admit, settle, failed = self._fast_steps()

        async def guarded(call: Call) -> Any:
            model = call.kwargs.get("model") if per_call else None
            if model is not None and model.__class__ is not str:
                model = model if isinstance(model, str) else None  # as Call.model reads it
            entry = found_by.get(model) or bind(model)
            machine: Machine = entry[2]  # type: ignore[assignment]  # always one on memory
            # closed: the permit without a lock (acquire would change nothing); else the machine decides
            token = (TOKEN_CLOSED | (machine.generation << 2)) if machine.state == CLOSED else admit(call, entry)
            try:
                result = await nxt(call)
            except Exception as exc:
                failed(call, entry, token, exc)
                raise
            except BaseException:
                settle(call, entry, token, IGNORED)
                raise
            if not machine.clean:  # a clean window: recording this success would change nothing
                settle(call, entry, token, OK)
            return result

        return guarded

    # ------------------------------------------------------------ sync

    def _acquire(self, key: str, limits: Limits, options: BreakerOptions) -> Decision:
        now = self._clock.time()
        route = self._route()
        if route:
            assert self._shared is not None
            try:
                decision = self._shared.acquire(key, limits, now, self._take_deferred(key))
            except (*STORE_ERRORS, _redis_error()) as exc:
                self._store_failed(exc, options)
            except BaseException:
                self._no_word(route)
                raise
            else:
                self._answered(route)
                return decision
        if self._shared is not None and options.on_store_error == "allow":
            return _ALLOWED
        return self._local.acquire(key, limits, now)

    def _record(self, key: str, limits: Limits, token: int, code: int, options: BreakerOptions) -> str | None:
        now = self._clock.time()
        route = self._route()
        if route:
            assert self._shared is not None
            try:
                transition = self._shared.record(key, limits, token, code, now, self._take_deferred(key))
            except (*STORE_ERRORS, _redis_error()) as exc:
                self._store_failed(exc, options)
                return None
            except BaseException:
                self._no_word(route)
                raise
            self._answered(route)
            return transition
        if self._shared is not None and options.on_store_error == "allow":
            return None  # while the store is away nothing is counted: every call is let through
        return self._local.record(key, limits, token, code, now)

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        fast = self._wrap_fast(nxt, target)
        if fast is not None:
            return fast
        monotonic = self._clock.monotonic
        classify = self._runtime.classify

        local = self._local
        lock = local.lock
        clock_time = self._clock.time
        base = None if self._varies else self._base  # no overrides: the options, without a call per call
        find = self._finder(target)

        def guarded(call: Call) -> Any:
            options = base if base is not None else self._options(call)
            if not options.enabled:
                return nxt(call)
            key, limits, machine = find(call, options)
            if machine is not None and machine.state == CLOSED:
                token = TOKEN_CLOSED | (machine.generation << 2)  # the common case, without a lock
            else:
                token, retry_after, transition = self._acquire(key, limits, options)
                self._transition(call, key, transition)
                if not token:
                    raise self._refuse(call, key, retry_after)
            start = monotonic() if options.slow_call_duration is not None else None
            try:
                result = nxt(call)
            except Exception as exc:
                elapsed = monotonic() - start if start is not None else None
                code = self._code(classify(exc), options, elapsed)
                self._transition(call, key, self._record(key, limits, token, code, options))
                raise
            except BaseException:
                self._record(key, limits, token, IGNORED, options)
                raise
            code = self._code(None, options, monotonic() - start) if start is not None else OK
            if machine is not None:
                with lock:  # held for the bookkeeping only, never across the provider call
                    if code == OK and machine.record_ok(limits, token):
                        return result
                    transition = machine.record(limits, token, code, clock_time())
            elif self._held_back(key, limits, token, code):
                return result  # recorded with this worker's next script on the breaker
            else:
                transition = self._record(key, limits, token, code, options)
            if transition is not None:
                self._transition(call, key, transition)
            return result

        return guarded

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        monotonic = self._clock.monotonic

        def guarded(call: Call) -> Iterator[Any]:
            options = self._options(call)
            if not options.enabled:
                return nxt(call)
            key, limits, _ = self._entry(call, options)
            token, retry_after, transition = self._acquire(key, limits, options)
            self._transition(call, key, transition)
            if not token:
                raise self._refuse(call, key, retry_after)
            start = monotonic()

            def ended(c: Call, outcome: Outcome) -> None:
                code = IGNORED if outcome.kind == "abandoned" else self._code(outcome, options, monotonic() - start)
                if not self._held_back(key, limits, token, code):
                    self._transition(c, key, self._record(key, limits, token, code, options))

            try:
                stream = nxt(call)
            except Exception as exc:
                code = self._code(self._runtime.classify(exc), options, monotonic() - start)
                self._transition(call, key, self._record(key, limits, token, code, options))
                raise
            call.on_end(ended)
            return stream

        return guarded

    # ------------------------------------------------------------ async

    async def _aacquire(self, key: str, limits: Limits, options: BreakerOptions) -> Decision:
        now = self._clock.time()
        route = self._route()
        if route:
            assert self._ashared is not None
            try:
                decision = await self._ashared.acquire(key, limits, now, self._take_deferred(key))
            except (*STORE_ERRORS, _redis_error()) as exc:
                self._store_failed(exc, options)
            except BaseException:
                self._no_word(route)
                raise
            else:
                self._answered(route)
                return decision
        if self._shared is not None and options.on_store_error == "allow":
            return _ALLOWED
        return self._local.acquire(key, limits, now)

    async def _arecord(self, key: str, limits: Limits, token: int, code: int, options: BreakerOptions) -> str | None:
        now = self._clock.time()
        route = self._route()
        if route:
            assert self._ashared is not None
            try:
                transition = await self._ashared.record(key, limits, token, code, now, self._take_deferred(key))
            except (*STORE_ERRORS, _redis_error()) as exc:
                self._store_failed(exc, options)
                return None
            except BaseException:
                self._no_word(route)
                raise
            self._answered(route)
            return transition
        if self._shared is not None and options.on_store_error == "allow":
            return None  # while the store is away nothing is counted: every call is let through
        return self._local.record(key, limits, token, code, now)

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        fast = self._wrap_fast_async(nxt, target)
        if fast is not None:
            return fast
        monotonic = self._clock.monotonic
        classify = self._runtime.classify

        local = self._local
        lock = local.lock
        clock_time = self._clock.time
        base = None if self._varies else self._base  # no overrides: the options, without a call per call
        find = self._finder(target)

        async def guarded(call: Call) -> Any:
            options = base if base is not None else self._options(call)
            if not options.enabled:
                return await nxt(call)
            key, limits, machine = find(call, options)
            if machine is not None and machine.state == CLOSED:
                token = TOKEN_CLOSED | (machine.generation << 2)  # memory, closed: no lock, no coroutine
            else:
                token, retry_after, transition = await self._aacquire(key, limits, options)
                self._transition(call, key, transition)
                if not token:
                    raise self._refuse(call, key, retry_after)
            start = monotonic() if options.slow_call_duration is not None else None
            try:
                result = await nxt(call)
            except Exception as exc:
                elapsed = monotonic() - start if start is not None else None
                code = self._code(classify(exc), options, elapsed)
                self._transition(call, key, await self._arecord(key, limits, token, code, options))
                raise
            except BaseException:
                await self._arecord(key, limits, token, IGNORED, options)
                raise
            code = self._code(None, options, monotonic() - start) if start is not None else OK
            if machine is not None:  # memory: the bookkeeping needs no await
                with lock:
                    if code == OK and machine.record_ok(limits, token):
                        return result
                    transition = machine.record(limits, token, code, clock_time())
            elif self._held_back(key, limits, token, code):
                return result  # recorded with this worker's next script on the breaker
            else:
                transition = await self._arecord(key, limits, token, code, options)
            if transition is not None:
                self._transition(call, key, transition)
            return result

        return guarded

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        monotonic = self._clock.monotonic
        classify = self._runtime.classify

        async def guarded(call: Call) -> AsyncIterator[Any]:
            options = self._options(call)
            if not options.enabled:
                async for chunk in nxt(call):
                    yield chunk
                return
            key, limits, _ = self._entry(call, options)
            token, retry_after, transition = await self._aacquire(key, limits, options)
            self._transition(call, key, transition)
            if not token:
                raise self._refuse(call, key, retry_after)
            start = monotonic()
            code = IGNORED
            try:
                async for chunk in nxt(call):
                    yield chunk
                code = self._code(None, options, monotonic() - start)
            except GeneratorExit:
                code = IGNORED  # abandoned by the consumer: says nothing of the provider
                raise
            except Exception as exc:
                code = self._code(classify(exc), options, monotonic() - start)
                raise
            finally:
                if not self._held_back(key, limits, token, code):
                    self._transition(call, key, await self._arecord(key, limits, token, code, options))

        return guarded

    # ------------------------------------------------------------ manual control and introspection

    def _store_for_control(self) -> MemoryBreakers | RedisBreakers:
        return self._shared if self._shared is not None else self._local

    def control(self, action: str, provider: str, model: str | None = None, tenant: str | None = None) -> str:
        """``open`` (force open), ``close`` (force closed), ``reset`` (closed, window cleared)."""
        state = {"open": FORCED_OPEN, "close": FORCED_CLOSED, "reset": CLOSED}[action]
        options = self._section.for_call(provider, model, tenant)
        key = self.key_for(options, provider, model, tenant)
        return self._store_for_control().force(key, state, self._clock.time())

    def force_open(self, provider: str, model: str | None = None, tenant: str | None = None) -> str:
        return self.control("open", provider, model, tenant)

    def force_close(self, provider: str, model: str | None = None, tenant: str | None = None) -> str:
        return self.control("close", provider, model, tenant)

    def reset(self, provider: str, model: str | None = None, tenant: str | None = None) -> str:
        return self.control("reset", provider, model, tenant)

    def status(self, provider: str, model: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        """State, window counts and when it opened, for ``/ready``, the CLI and metrics."""
        options = self._section.for_call(provider, model, tenant)
        key = self.key_for(options, provider, model, tenant)
        try:
            status = self._store_for_control().status(key)
        except (*STORE_ERRORS, _redis_error()) as exc:
            return {"key": key, "state": "unknown", "store": f"unavailable ({type(exc).__name__})"}
        return {"key": key, **status}

    def health(self) -> dict[str, Any]:
        """For ``/ready``: the store, and the state of the breakers this process has used (50 at most).

        Always ``ok``: an open breaker is the app protecting itself, and with
        the store down the breakers run on local state; pulling every worker
        out of the load balancer for either would turn a degraded provider
        into an outage.
        """
        store = "memory"
        if self._shared is not None:
            try:
                self._shared.client.ping()
                store = "ok"
            except (*STORE_ERRORS, _redis_error()) as exc:
                store = f"unavailable ({type(exc).__name__}); breakers on local state"
        keys = sorted({entry[1] for entry in list(self._entries.values())})[:50]
        breakers: dict[str, str] = {}
        for key in keys:
            try:
                breakers[key] = self._store_for_control().status(key)["state"]
            except (*STORE_ERRORS, _redis_error()):
                breakers[key] = "unknown"
        return {"ok": True, "store": store, "breakers": breakers}

    def close(self) -> None:
        if self._shared is not None:
            self._flush_deferred(self._shared)
            self._shared.close()

    def _take_all_deferred(self) -> dict[str, tuple[int, int, Limits]]:
        with self._deferred_lock:
            held, self._deferred = self._deferred, {}
        return held

    def _flush_deferred(self, store: RedisBreakers) -> None:
        """Record the successes still held back (best effort: the store may be gone)."""
        now = self._clock.time()
        for key, (token, count, limits) in self._take_all_deferred().items():
            try:
                store.record(key, limits, token, IGNORED, now, (token, count))
            except (*STORE_ERRORS, _redis_error()):
                return

    async def aclose(self) -> None:
        if self._ashared is not None:
            # In an event loop, what is still held goes through this loop's client, not the sync one.
            now = self._clock.time()
            for key, (token, count, limits) in self._take_all_deferred().items():
                try:
                    await self._ashared.record(key, limits, token, IGNORED, now, (token, count))
                except (*STORE_ERRORS, _redis_error()):
                    break
        self.close()
        if self._ashared is not None:
            await self._ashared.aclose()


def _redis_error() -> type[Exception]:
    try:
        import redis
    except ImportError:  # pragma: no cover - the memory store needs no redis
        return OSError
    return redis.RedisError
