"""The cache policy: a lean hit path, and thin sync and async drivers around the logic in :mod:`._flow`."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha256  # _key.digest, called inline on the miss paths (one call less per miss)
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    Handler,
    Order,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)
from resilient.events import Count, Event
from resilient.storage import STORE_ERRORS, is_memory

from ._codec import Codec, Entry, Unstorable, fits
from ._events import (
    CacheBypassed,
    CacheHit,
    CacheInvalidated,
    CacheMiss,
    CacheNotStored,
    CacheStaleServed,
    CacheStored,
    CacheStoreError,
)
from ._flight import NOTHING, AsyncFlight, AsyncFlights, Flight, Flights, Result, Shared
from ._flow import Lookup, Missed, Op, Put, Release, Sleep, Steps, adrive, drive, stale_reason
from ._key import KeyFunction, KeyMaker, digest, import_function, key_maker
from ._local import LocalLayer
from ._options import CacheOptions
from ._record import Recorder
from ._store import FOLLOWER, FRESH, LEADER, AsyncSharedStore, SharedStore, entry_bytes, split_entry

__all__ = ["CachePolicy", "TagFunction"]

_log = logging.getLogger("resilient.cache")
_PLANS_MAX = 10_000
_UNBOUND: Any = object()  # not bound yet (None is bound: emit the event)
_new_entry = tuple.__new__  # _new_entry(Entry, fields): an Entry without the Python frame of its __new__

#: A user's tag function: more tags for a call's entry.
TagFunction = Callable[[Call], Iterable[str]]


def _store_errors() -> tuple[type[Exception], ...]:
    try:
        import redis
    except ImportError:  # pragma: no cover - the memory store needs no redis
        return STORE_ERRORS
    return (*STORE_ERRORS, redis.RedisError)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a target needs under one options object, worked out once."""

    options: CacheOptions
    enabled: bool
    key: KeyMaker
    ttl: float
    temperature_zero: bool
    tags: Callable[[Call], tuple[str, ...]] | None


_NUMBERS = (int, float)  # exactly: not bool, not an array whose comparison would raise


def _is_temperature_zero(call: Call) -> bool:
    """temperature = 0, as an argument or, without one, in ``extra_body``: how a field an SDK method does
    not take is sent (anthropic 2.x's ``messages.create`` has no ``temperature`` parameter)."""
    kwargs = call.kwargs
    temperature = kwargs.get("temperature")
    if temperature is None:
        extra = kwargs.get("extra_body")
        if isinstance(extra, Mapping):
            temperature = extra.get("temperature")
    return temperature.__class__ in _NUMBERS and temperature == 0


class CachePolicy(Policy):
    """Answers identical requests from a cache: in-process layer, then the shared store, then the provider.

    ``key`` and ``tags`` are functions of the :class:`~resilient.Call` that
    replace (``key``) the request part of the key, or add (``tags``) tags to
    its entry; they win over the ``key_function``/``tag_function`` settings.
    """

    name = "cache"
    order = Order.CACHE
    #: With no shared store, calls run :meth:`_here`/:meth:`_ahere` (False: the general path, for the tests).
    flat_misses = True

    def __init__(
        self,
        section: Section[CacheOptions],
        runtime: Runtime,
        *,
        key: KeyFunction | None = None,
        tags: TagFunction | None = None,
        name: str = "cache",
    ) -> None:
        self.name = name
        self._section = section
        self._runtime = runtime
        self._clock = runtime.clock
        self._events = runtime.events
        self._classify = runtime.classify
        base = section.base
        core = runtime.settings.core
        self._key_function = key or (import_function(base.key_function, "key_function") if base.key_function else None)
        self._tag_function = tags or (import_function(base.tag_function, "tag_function") if base.tag_function else None)
        self._codec = Codec(base.allowed_types)
        self._local = LocalLayer(base.max_entries)
        self.uri = base.storage or core.store
        self.prefix = f"{core.key_prefix}cache:"
        shared = not is_memory(self.uri)
        self._shared = SharedStore(self.uri, self.prefix, base.store_timeout) if shared else None
        self._ashared = AsyncSharedStore(self.uri, self.prefix, base.store_timeout) if shared else None
        self._errors = _store_errors()
        self._down_until = 0.0
        self._flights = Flights()
        self._aflights = AsyncFlights()
        self._plans: dict[tuple[int, str, bool], Plan] = {}
        self._bound: dict[tuple[type[Event], str, str, str | None], Count | None] = {}
        self._misses: dict[tuple[str, str, str | None], tuple[Count | None, Any, Count | None]] = {}

    # ------------------------------------------------------------ plans

    def _plan(self, options: CacheOptions, operation: str, stream: bool) -> Plan:
        cache_key = (id(options), operation, stream)
        plan = self._plans.get(cache_key)
        if plan is None or plan.options is not options:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            enabled = (
                options.enabled
                and options.cacheable != "never"
                and (not options.operations or operation in options.operations)
            )
            plan = self._plans[cache_key] = Plan(
                options=options,
                enabled=enabled,
                key=key_maker(options, stream, self._key_function),
                ttl=options.ttl_for(operation),
                temperature_zero=options.cacheable == "temperature_zero",
                tags=self._tagger(options),
            )
        return plan

    def _tagger(self, options: CacheOptions) -> Callable[[Call], tuple[str, ...]] | None:
        fields, user = options.tags, self._tag_function
        if not fields and user is None:
            return None

        def tags(call: Call) -> tuple[str, ...]:
            found = []
            for name in fields:
                value = getattr(call, name)
                if value is not None:
                    found.append(f"{name}={value}")
            if user is not None:
                try:
                    found.extend(str(t) for t in user(call))
                except Exception:
                    _log.exception("cache tag function failed; entry stored without its tags")
            return tuple(found)

        return tags

    def _fixed(self, target: Target, stream: bool) -> Plan | None:
        """The plan of a target when there are no overrides (then the per-call path skips the lookup)."""
        if self._section.varies:
            return None
        return self._plan(self._section.base, target.operation, stream)

    def _plan_for(self, call: Call, stream: bool) -> Plan:
        options = self._section.for_call(call.provider, call.model, call.tenant)
        return self._plan(options, call.operation, stream)

    def _admit(self, call: Call, plan: Plan) -> bytes | None:
        """The call's canonical request, or None when the cache stays out of it (recorded as 'bypass')."""
        if plan.temperature_zero and not _is_temperature_zero(call):
            self._bypass(call, "not_cacheable")
            return None
        canonical = plan.key(call)
        if canonical is None:
            self._bypass(call, "unkeyable")
        return canonical

    # ------------------------------------------------------------ telling

    def _bypass(self, call: Call, reason: str) -> None:
        call.metadata["cache"] = "bypass"
        if self._events.enabled:
            self._events.emit(
                CacheBypassed(
                    provider=call.target.provider,
                    operation=call.target.operation,
                    model=call.model,
                    tenant=call.tenant,
                    reason=reason,
                )
            )

    def _hit(self, call: Call, key: str, entry: Entry | None, layer: str, now: float) -> None:
        metadata = call.metadata
        metadata["cache"] = "hit"
        metadata["cache_key"] = key
        if self._events.enabled:
            count = self._count(CacheHit, call.target, call.model)
            if count is not None:
                count()
                return
            age = now - entry.stored_at if entry is not None else 0.0
            self._events.emit(
                CacheHit(
                    provider=call.target.provider,
                    operation=call.target.operation,
                    model=call.model,
                    tenant=call.tenant,
                    key=key,
                    layer=layer,
                    age=age,
                )
            )

    def _local_hit(self, call: Call, found: tuple[Entry, float, str, float], now: float) -> None:
        """Tell a hit in the local layer (``found`` as :class:`LocalLayer` holds it) when events are on.

        Through the bound count when the observers only count hits (see
        :meth:`_count`): no event is built.
        """
        target = call.target
        model = target.model  # Call.model written out
        if model is None:
            named = call.kwargs.get("model")
            model = named if isinstance(named, str) else None
        count = self._bound.get((CacheHit, target.provider, target.operation, model), _UNBOUND)
        if count is _UNBOUND:
            count = self._count(CacheHit, target, model)
        if count is not None:
            count()
            return
        self._events.emit(
            CacheHit(
                provider=target.provider,
                operation=target.operation,
                model=model,
                tenant=call.tenant,
                key=found[2],
                layer="local",
                age=now - found[0].stored_at,
            )
        )

    def _stale(self, call: Call, key: str, entry: Entry, reason: str) -> Any:
        metadata = call.metadata
        metadata["cache"] = "stale"
        metadata["cache_key"] = key
        if self._events.enabled:
            staleness = max(0.0, self._clock.time() - entry.fresh_until)
            self._events.emit(CacheStaleServed(**_about(call), key=key, reason=reason, staleness=staleness))
        return entry.value

    def _not_stored(self, call: Call, key: str, reason: str) -> None:
        if self._events.enabled:
            self._events.emit(CacheNotStored(**_about(call), key=key, reason=reason))

    def _store_failed(self, call: Call | None, action: str, exc: BaseException) -> None:
        options = self._section.base
        self._down_until = self._clock.monotonic() + options.store_retry
        _log.warning(
            "cache store unavailable during %s (%s); local layer only for %.0fs",
            action,
            type(exc).__name__,
            options.store_retry,
        )
        if self._events.enabled:
            about = _about(call) if call is not None else {}
            self._events.emit(CacheStoreError(**about, action=action, error=type(exc).__name__))

    def _shared_usable(self) -> bool:
        return self._shared is not None and not (self._down_until and self._down_until > self._clock.monotonic())

    # ------------------------------------------------------------ the logic, as steps

    def _find(self, call: Call, plan: Plan, ck: bytes, key: str, local: Entry | None) -> Steps[Op, Missed]:
        """After a local miss: the shared store (taking the lease, or waiting for its holder), then 'miss'."""
        options, clock = plan.options, self._clock
        now = clock.time()
        stale = local if local is not None and local.usable(now) else None
        token = ""
        if self._shared_usable():
            lease = options.single_flight
            token = secrets.token_hex(8) if lease else ""
            lease_ms = max(1, int(options.lease_ttl * 1000))
            deadline: float | None = None
            while True:
                try:
                    found = yield Lookup(key, now, token, lease_ms, lease)
                except self._errors as exc:
                    self._store_failed(call, "get", exc)
                    token = ""
                    break
                entry = self._decode(found.raw) if found.raw is not None else None
                if found.code == FRESH and entry is not None and entry.fresh(now):
                    self._keep_local(ck, key, entry, plan, call, now)
                    self._hit(call, key, entry, "shared", now)
                    return Missed(entry=entry)
                if entry is not None and entry.usable(now) and (stale is None or entry.stored_at > stale.stored_at):
                    stale = entry
                if found.code != FOLLOWER:
                    if found.code != LEADER:
                        token = ""
                    break
                # Another worker holds the lease: look again until it stores, gives up, or we tire of waiting.
                mono = clock.monotonic()
                if deadline is None:
                    deadline = mono + options.flight_wait
                if mono >= deadline:
                    token = ""
                    break
                yield Sleep(options.poll_interval)
                now = clock.time()
        return self._missed(call, key, stale, token)

    def _count(self, cls: type[Event], target: Target, model: str | None) -> Count | None:
        """What a ``cls`` event tells the observers, bound per (provider, operation, model) when they only count.

        ``None``: some observer wants the event itself, so it is built and
        emitted. Bound when the first such event happens (binding makes the
        metric series, which must not appear before its first count).
        """
        key = (cls, target.provider, target.operation, model)
        try:
            return self._bound[key]
        except KeyError:
            pass
        found = self._events.counter(cls, target.provider, target.operation, model)
        if len(self._bound) >= _PLANS_MAX:
            self._bound.clear()
        self._bound[key] = found
        return found

    def _miss_counts(self, target: Target, model: str | None) -> tuple[Count | None, Any, Count | None]:
        """What a memory-only miss tells, bound per (provider, operation, model): the miss's count (see
        :meth:`_count`), the store's (``_UNBOUND`` until the first store binds it), and the two as one update
        when the one observer can join them (``join_counts``; else None).

        Joined, a miss that is stored makes one update after the provider's
        answer is kept; a miss that is not stored (an error, a stale answer, a
        value too large) counts the miss alone when it ends.
        """
        count = self._count(CacheMiss, target, model)
        stored = self._bound.get((CacheStored, target.provider, target.operation, model), _UNBOUND)
        both: Count | None = None
        observers = self._events.observers
        if count is not None and stored is not None and stored is not _UNBOUND and len(observers) == 1:
            join = getattr(observers[0], "join_counts", None)
            if join is not None:
                try:
                    both = join(count, stored)
                except Exception:
                    _log.exception("observer %r failed to join counts", observers[0])
        if len(self._misses) >= _PLANS_MAX:
            self._misses.clear()
        found = self._misses[target.provider, target.operation, model] = (count, stored, both)
        return found

    def _missed(self, call: Call, key: str, stale: Entry | None, token: str) -> Missed:
        metadata = call.metadata
        metadata["cache"] = "miss"
        metadata["cache_key"] = key
        if self._events.enabled:
            count = self._count(CacheMiss, call.target, call.model)
            if count is not None:
                count()
                return Missed(stale=stale, token=token)
            self._events.emit(
                CacheMiss(
                    provider=call.target.provider,
                    operation=call.target.operation,
                    model=call.model,
                    tenant=call.tenant,
                    key=key,
                    stale=stale is not None,
                )
            )
        return Missed(stale=stale, token=token)

    def _fill(
        self, call: Call, plan: Plan, ck: bytes, key: str, value: Any, stream: bool, token: str
    ) -> Steps[Op, None]:
        """Store a response (both layers), or say why not; release the lease either way."""
        kept = self._keep(call, plan, ck, key, value, stream)
        if kept is None:
            yield from self._release(call, key, token)
            return
        entry, raw, tags = kept
        if self._shared_usable():
            px = max(1, int((entry.stale_until - entry.stored_at) * 1000))
            try:
                yield Put(key, entry_bytes(entry.fresh_until, raw), px, token, tags)
            except self._errors as exc:
                self._store_failed(call, "put", exc)
        self._stored(call, key, raw, plan, stream)

    def _keep(
        self, call: Call, plan: Plan, ck: bytes, key: str, value: Any, stream: bool
    ) -> tuple[Entry, bytes, tuple[str, ...]] | None:
        """The entry of a response, encoded and kept in the local layer; None (told) when it may not be stored."""
        options = plan.options
        now = self._clock.time()
        entry = Entry(value, stream, now, now + plan.ttl, now + plan.ttl + options.max_stale)
        try:
            raw = self._codec.encode(entry)
        except Unstorable:
            self._not_stored(call, key, "unserializable")
            return None
        if len(raw) > options.max_value_bytes:
            self._not_stored(call, key, "too_large")
            return None
        tags = plan.tags(call) if plan.tags is not None else ()
        self._keep_local(ck, key, entry, plan, call, now, tags)
        return entry, raw, tags

    def _stored(self, call: Call, key: str, raw: bytes, plan: Plan, stream: bool) -> None:
        if self._events.enabled:
            count = self._count(CacheStored, call.target, call.model)
            if count is not None:
                count()
                return
            self._events.emit(
                CacheStored(
                    provider=call.target.provider,
                    operation=call.target.operation,
                    model=call.model,
                    tenant=call.tenant,
                    key=key,
                    size=len(raw),
                    ttl=plan.ttl,
                    stream=stream,
                )
            )

    def _release(self, call: Call, key: str, token: str) -> Steps[Op, None]:
        if token and self._shared_usable():
            try:
                yield Release(key, token)
            except self._errors as exc:
                self._store_failed(call, "lease", exc)

    def _keep_local(
        self, ck: bytes, key: str, entry: Entry, plan: Plan, call: Call, now: float, tags: tuple[str, ...] | None = None
    ) -> None:
        if self._shared is None:
            until = entry.stale_until
        else:
            if plan.options.local_ttl <= 0:
                return
            until = now + plan.options.local_ttl
        if tags is None:
            tags = plan.tags(call) if plan.tags is not None else ()
        self._local.put(ck, key, entry, until, tags)

    def _decode(self, raw: bytes) -> Entry | None:
        try:
            return self._codec.decode(split_entry(raw))
        except (ValueError, IndexError) as exc:
            _log.warning("cache entry unreadable (%s); treated as a miss", exc)
            return None

    # ------------------------------------------------------------ drivers: performing steps

    def _perform(self, op: Op) -> Any:
        shared = self._shared
        assert shared is not None
        if type(op) is Lookup:
            return shared.lookup(op.key, op.now, op.token, op.lease_ms, op.lease)
        if type(op) is Put:
            return shared.put(op.key, op.raw, op.px, op.token, op.tags)
        if type(op) is Release:
            return shared.release(op.key, op.token)
        assert type(op) is Sleep
        return self._clock.sleep(op.seconds)

    async def _aperform(self, op: Op) -> Any:
        shared = self._ashared
        assert shared is not None
        if type(op) is Lookup:
            return await shared.lookup(op.key, op.now, op.token, op.lease_ms, op.lease)
        if type(op) is Put:
            return await shared.put(op.key, op.raw, op.px, op.token, op.tags)
        if type(op) is Release:
            return await shared.release(op.key, op.token)
        assert type(op) is Sleep
        return await self._clock.asleep(op.seconds)

    # ------------------------------------------------------------ sync

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        fixed = self._fixed(target, False)
        if fixed is not None and not fixed.enabled:
            return nxt
        if self._shared is None and self.flat_misses:
            return self._here(nxt, fixed)
        local, time = self._local, self._clock.time
        held, move = local.data.get, local.data.move_to_end
        events = self._events

        def cached(call: Call) -> Any:
            plan = fixed if fixed is not None else self._plan_for(call, False)
            if not plan.enabled:
                return nxt(call)
            if plan.temperature_zero:
                temperature = call.kwargs.get("temperature")
                if (temperature.__class__ not in _NUMBERS or temperature != 0) and not _is_temperature_zero(call):
                    self._bypass(call, "not_cacheable")
                    return nxt(call)
            ck = plan.key(call)
            if ck is None:
                self._bypass(call, "unkeyable")
                return nxt(call)
            now = time()
            found = held(ck)
            if found is not None and now < found[3]:  # the hit path: one dict lookup, no lock, no digest
                try:
                    move(ck)
                except KeyError:  # evicted meanwhile by another thread; what was read is still valid
                    pass
                metadata = call._metadata  # Call.metadata written out: every hit runs this
                if metadata is None:
                    call._metadata = {"cache": "hit", "cache_key": found[2]}
                else:
                    metadata["cache"] = "hit"
                    metadata["cache_key"] = found[2]
                if events.enabled:
                    self._local_hit(call, found, now)
                return found[0].value
            if found is None:
                return self._miss(call, nxt, plan, ck, sha256(ck).hexdigest(), None)
            kept = local.get(ck, now)  # held but no longer fresh here: past its local deadline, or stale
            if kept is not None:
                return self._miss(call, nxt, plan, ck, kept[2], kept[0])
            return self._miss(call, nxt, plan, ck, sha256(ck).hexdigest(), None)

        return cached

    def _here(self, nxt: Handler, fixed: Plan | None) -> Handler:
        """:meth:`wrap`'s handler when there is no shared store: the hit path, then :meth:`_miss` as one flat
        piece of code, what it does step for step.

        A miss on ``memory://`` (every call of a workload that rarely repeats)
        ran ``_miss``, ``Flights.begin``/``end``, ``_fetch``, the lookup and
        store steps and their telling, each a frame; here they are written
        out in the handler itself, with what they read bound once. The single
        flight's leader takes no lock and allocates nothing but its flight
        (see :class:`Flights`); a follower goes the general way. The async twin
        is :meth:`_ahere`: keep the two in step. tests/test_cache_flat.py drives
        these and the general path through random histories and compares them.
        """
        layer, time = self._local, self._clock.time
        data = layer.data
        held, move, evict = data.get, data.move_to_end, data.popitem
        lock, most = layer.lock, layer.max_entries
        flights = self._flights.flights
        lead, held_flight = flights.setdefault, flights.get
        ident = threading.get_ident
        events, misses = self._events, self._misses
        hold, encode, local_get = layer.hold, self._codec.encode, layer.get
        classify = self._classify

        def cached(call: Call) -> Any:
            plan = fixed if fixed is not None else self._plan_for(call, False)
            if not plan.enabled:
                return nxt(call)
            if plan.temperature_zero:
                temperature = call.kwargs.get("temperature")
                if (temperature.__class__ not in _NUMBERS or temperature != 0) and not _is_temperature_zero(call):
                    self._bypass(call, "not_cacheable")
                    return nxt(call)
            ck = plan.key(call)
            if ck is None:
                self._bypass(call, "unkeyable")
                return nxt(call)
            now = time()
            found = held(ck)
            if found is None:
                key, local = sha256(ck).hexdigest(), None
            elif now < found[3]:  # the hit path: one dict lookup, no lock, no digest
                try:
                    move(ck)
                except KeyError:  # evicted meanwhile by another thread; what was read is still valid
                    pass
                metadata = call._metadata  # Call.metadata written out: every hit runs this
                if metadata is None:
                    call._metadata = {"cache": "hit", "cache_key": found[2]}
                else:
                    metadata["cache"] = "hit"
                    metadata["cache_key"] = found[2]
                if events.enabled:
                    self._local_hit(call, found, now)
                return found[0].value
            else:
                kept = local_get(ck, now)  # held but no longer fresh here: past its local deadline, or stale
                key, local = (kept[2], kept[0]) if kept is not None else (sha256(ck).hexdigest(), None)
            # The miss: _miss, written out.
            options = plan.options
            flight: Flight | None = None
            if options.single_flight:
                mine: Flight = [ident(), None, None]  # Flights.begin: [owner, result, done]
                flight = lead(key, mine)
                if flight is not mine:
                    return self._miss_behind(call, nxt, plan, ck, key, local, flight)
            result: Result = NOTHING
            pending: Count | None = None  # the miss's count while it waits to be made with the store's
            try:
                # _find and _missed, with no store to look in
                if local is not None and not time() < local.stale_until:
                    local = None
                meta = call._metadata
                if meta is None:
                    call._metadata = {"cache": "miss", "cache_key": key}
                else:
                    meta["cache"] = "miss"
                    meta["cache_key"] = key
                enabled = events.enabled
                stored: Any = _UNBOUND
                if enabled:
                    target = call.target
                    model = target.model  # Call.model written out: every miss runs this
                    if model is None:
                        named = call.kwargs.get("model")
                        model = named if isinstance(named, str) else None
                    counts = misses.get((target.provider, target.operation, model))
                    if counts is None:
                        counts = self._miss_counts(target, model)
                    count, stored, both = counts
                    if both is not None:  # counted with the store in one update, or alone at the end
                        pending = count
                    elif count is not None:
                        count()
                    else:
                        events.emit(
                            CacheMiss(
                                provider=target.provider,
                                operation=target.operation,
                                model=model,
                                tenant=call.tenant,
                                key=key,
                                stale=local is not None,
                            )
                        )
                try:
                    value = nxt(call)
                except Exception as exc:
                    if local is None:
                        raise
                    reason = stale_reason(exc, classify)
                    if reason is None or not local.usable(time()):
                        raise
                    value = self._stale(call, key, local, reason)
                else:
                    # _fill: _keep and _stored, with no store to put in
                    now = time()
                    ttl = plan.ttl
                    fresh_until = now + ttl
                    stale_until = fresh_until + options.max_stale
                    entry = _new_entry(Entry, (value, False, now, fresh_until, stale_until))
                    size = 0
                    # The size is needed for an event, else only whether it is within the limit.
                    if (
                        (stored is _UNBOUND and enabled)
                        or stored is None
                        or not fits(value, now, fresh_until, stale_until, options.max_value_bytes)
                    ):
                        try:
                            size = len(encode(entry))
                        except Unstorable:
                            size = -1
                            self._not_stored(call, key, "unserializable")
                        else:
                            if size > options.max_value_bytes:
                                size = -1
                                self._not_stored(call, key, "too_large")
                    if size >= 0:
                        # LocalLayer.put's row with no store: kept until stale, fresh until fresh (max_stale >= 0)
                        row = (entry, stale_until, key, fresh_until)
                        lock.acquire()
                        if layer._by_key is None and not plan.tags:
                            # LocalLayer.hold's common case written out (no index, no tags; read under its
                            # lock, which builds the index): a frame and a third of the store's cost.
                            try:
                                if found is not None and ck in data:  # else new here, or raced in: it stays
                                    move(ck)
                                data[ck] = row
                                while len(data) > most:
                                    evict(False)
                            finally:
                                lock.release()
                        else:
                            lock.release()
                            hold(ck, row, plan.tags(call) if plan.tags else ())
                        if pending is not None and both is not None:
                            pending = None
                            both()
                        elif enabled:
                            if stored is _UNBOUND:
                                stored = self._count(CacheStored, target, model)
                                self._miss_counts(target, model)  # the next miss may join the two
                            if stored is not None:
                                stored()
                            else:
                                events.emit(
                                    CacheStored(
                                        provider=target.provider,
                                        operation=target.operation,
                                        model=model,
                                        tenant=call.tenant,
                                        key=key,
                                        size=size,
                                        ttl=ttl,
                                        stream=False,
                                    )
                                )
                meta = call._metadata
                result = (True, value, meta.get("cache", "miss") if meta is not None else "miss", None)
                return value
            except Exception as exc:
                result = (False, None, "miss", exc)
                raise
            finally:
                if pending is not None:  # a miss that was not stored after all: its count alone
                    pending()
                if flight is not None:  # Flights.end, the leader's half of its handshake
                    flight[1] = result  # RESULT
                    if held_flight(key) is flight:
                        del flights[key]
                    done = flight[2]  # DONE
                    if done is not None:
                        done.set()

        return cached

    def _miss_behind(
        self, call: Call, nxt: Handler, plan: Plan, ck: bytes, key: str, local: Entry | None, flight: Flight
    ) -> Any:
        """A miss that found an identical one in flight: its result, or (none in time) a call of its own."""
        shared = self._flights.wait(flight, plan.options.flight_wait)
        if shared is not None and (shared.ok or shared.error is not None):
            return self._follow(call, key, shared)
        return self._fetch(call, nxt, plan, ck, key, local)

    def _miss(self, call: Call, nxt: Handler, plan: Plan, ck: bytes, key: str, local: Entry | None) -> Any:
        options = plan.options
        if not options.single_flight:
            return self._fetch(call, nxt, plan, ck, key, local)
        flight, leader = self._flights.begin(key)
        if not leader:
            return self._miss_behind(call, nxt, plan, ck, key, local, flight)
        result: Result = NOTHING
        try:
            value = self._fetch(call, nxt, plan, ck, key, local)
            result = (True, value, call.metadata.get("cache", "miss"), None)
            return value
        except Exception as exc:
            result = (False, None, "miss", exc)
            raise
        finally:
            self._flights.end(key, flight, result)

    def _follow(self, call: Call, key: str, shared: Shared) -> Any:
        """A waiting call takes the result of the identical call it waited for: its value, or its error."""
        if shared.error is not None:
            raise shared.error
        if shared.state == "stale":
            call.metadata["cache"] = "stale"
            call.metadata["cache_key"] = key
        else:
            self._hit(call, key, None, "flight", self._clock.time())
        return shared.value

    def _fetch(self, call: Call, nxt: Handler, plan: Plan, ck: bytes, key: str, local: Entry | None) -> Any:
        found = drive(self._find(call, plan, ck, key, local), self._perform)
        if found.entry is not None:
            return found.entry.value
        try:
            value = nxt(call)
        except Exception as exc:
            drive(self._release(call, key, found.token), self._perform)
            stale = found.stale
            reason = stale_reason(exc, self._classify) if stale is not None else None
            if stale is None or reason is None or not stale.usable(self._clock.time()):
                raise
            return self._stale(call, key, stale, reason)
        drive(self._fill(call, plan, ck, key, value, False, found.token), self._perform)
        return value

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        fixed = self._fixed(target, True)
        if fixed is not None and not fixed.enabled:
            return nxt
        local_get, time = self._local.get, self._clock.time

        def cached(call: Call) -> Iterator[Any]:
            plan = fixed if fixed is not None else self._plan_for(call, True)
            if not plan.enabled:
                return nxt(call)
            ck = self._admit(call, plan)
            if ck is None:
                return nxt(call)
            now = time()
            held = local_get(ck, now)
            entry = held[0] if held is not None else None
            key = held[2] if held is not None else sha256(ck).hexdigest()
            if entry is not None and now < entry.fresh_until:
                self._hit(call, key, entry, "local", now)
                return iter(entry.value)
            options = plan.options
            if options.single_flight:
                flight, leader = self._flights.begin(key)
                if not leader:
                    shared = self._flights.wait(flight, options.flight_wait)
                    if shared is not None and shared.ok:
                        return iter(self._follow(call, key, shared))
                    return self._record(call, nxt, plan, ck, key, entry, None)
                return self._record(call, nxt, plan, ck, key, entry, flight)
            return self._record(call, nxt, plan, ck, key, entry, None)

        return cached

    def _record(
        self, call: Call, nxt: StreamHandler, plan: Plan, ck: bytes, key: str, local: Entry | None, flight: Any
    ) -> Iterator[Any]:
        """The provider's stream, recorded as it passes and stored if it ends whole (sync)."""
        result = Shared(False)
        try:
            found = drive(self._find(call, plan, ck, key, local), self._perform)
            if found.entry is not None:
                result = Shared(True, found.entry.value, "miss")
                yield from found.entry.value
                return
            recorder, token = Recorder(), found.token
            it: Iterator[Any] | None = None
            try:
                it = nxt(call)
                for chunk in it:
                    recorder.add(chunk)
                    yield chunk
            except GeneratorExit:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
                self._not_stored(call, key, "incomplete_stream")
                drive(self._release(call, key, token), self._perform)
                raise
            except Exception as exc:
                drive(self._release(call, key, token), self._perform)
                stale = found.stale
                reason = stale_reason(exc, self._classify) if stale is not None and not recorder.chunks else None
                if stale is None or reason is None or not stale.usable(self._clock.time()):
                    self._not_stored(call, key, "incomplete_stream")
                    raise
                chunks = self._stale(call, key, stale, reason)
                result = Shared(True, chunks, "stale")
                yield from chunks
                return
            if recorder.complete():
                drive(self._fill(call, plan, ck, key, recorder.chunks, True, token), self._perform)
                result = Shared(True, recorder.chunks, "miss")
            else:
                self._not_stored(call, key, "incomplete_stream")
                drive(self._release(call, key, token), self._perform)
        finally:
            if flight is not None:
                self._flights.end(key, flight, result)

    # ------------------------------------------------------------ async

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        fixed = self._fixed(target, False)
        if fixed is not None and not fixed.enabled:
            return nxt
        if self._shared is None and self.flat_misses:
            return self._ahere(nxt, fixed)
        local, time = self._local, self._clock.time
        held, move = local.data.get, local.data.move_to_end
        events = self._events

        async def cached(call: Call) -> Any:
            plan = fixed if fixed is not None else self._plan_for(call, False)
            if not plan.enabled:
                return await nxt(call)
            if plan.temperature_zero:
                temperature = call.kwargs.get("temperature")
                if (temperature.__class__ not in _NUMBERS or temperature != 0) and not _is_temperature_zero(call):
                    self._bypass(call, "not_cacheable")
                    return await nxt(call)
            ck = plan.key(call)
            if ck is None:
                self._bypass(call, "unkeyable")
                return await nxt(call)
            now = time()
            found = held(ck)
            if found is not None and now < found[3]:  # the hit path: one dict lookup, no lock, no digest
                try:
                    move(ck)
                except KeyError:  # evicted meanwhile by another thread; what was read is still valid
                    pass
                metadata = call._metadata  # Call.metadata written out: every hit runs this
                if metadata is None:
                    call._metadata = {"cache": "hit", "cache_key": found[2]}
                else:
                    metadata["cache"] = "hit"
                    metadata["cache_key"] = found[2]
                if events.enabled:
                    self._local_hit(call, found, now)
                return found[0].value
            if found is None:
                return await self._amiss(call, nxt, plan, ck, sha256(ck).hexdigest(), None)
            kept = local.get(ck, now)  # held but no longer fresh here: past its local deadline, or stale
            if kept is not None:
                return await self._amiss(call, nxt, plan, ck, kept[2], kept[0])
            return await self._amiss(call, nxt, plan, ck, sha256(ck).hexdigest(), None)

        return cached

    def _ahere(self, nxt: AsyncHandler, fixed: Plan | None) -> AsyncHandler:
        """:meth:`_here` for async calls: the same code but for ``await nxt(call)`` and the flight, which is
        the loop's (see :class:`AsyncFlights`). One coroutine: a second one per miss cost as much as the
        rest of the single flight."""
        layer, time = self._local, self._clock.time
        data = layer.data
        held, move, evict = data.get, data.move_to_end, data.popitem
        lock, most = layer.lock, layer.max_entries
        flights = self._aflights.flights
        held_flight = flights.get
        running_loop, current_task = asyncio.get_running_loop, asyncio.current_task
        events, misses = self._events, self._misses
        hold, encode, local_get = layer.hold, self._codec.encode, layer.get
        classify = self._classify

        async def cached(call: Call) -> Any:
            plan = fixed if fixed is not None else self._plan_for(call, False)
            if not plan.enabled:
                return await nxt(call)
            if plan.temperature_zero:
                temperature = call.kwargs.get("temperature")
                if (temperature.__class__ not in _NUMBERS or temperature != 0) and not _is_temperature_zero(call):
                    self._bypass(call, "not_cacheable")
                    return await nxt(call)
            ck = plan.key(call)
            if ck is None:
                self._bypass(call, "unkeyable")
                return await nxt(call)
            now = time()
            found = held(ck)
            if found is None:
                key, local = sha256(ck).hexdigest(), None
            elif now < found[3]:  # the hit path: one dict lookup, no lock, no digest
                try:
                    move(ck)
                except KeyError:  # evicted meanwhile by another thread; what was read is still valid
                    pass
                metadata = call._metadata  # Call.metadata written out: every hit runs this
                if metadata is None:
                    call._metadata = {"cache": "hit", "cache_key": found[2]}
                else:
                    metadata["cache"] = "hit"
                    metadata["cache_key"] = found[2]
                if events.enabled:
                    self._local_hit(call, found, now)
                return found[0].value
            else:
                kept = local_get(ck, now)  # held but no longer fresh here: past its local deadline, or stale
                key, local = (kept[2], kept[0]) if kept is not None else (sha256(ck).hexdigest(), None)
            # The miss: _amiss, written out.
            options = plan.options
            flight: AsyncFlight | None = None
            if options.single_flight:
                loop = running_loop()
                at = (key, loop)
                flight = held_flight(at)
                if flight is not None:
                    return await self._amiss_behind(call, nxt, plan, ck, key, local, flight)
                flight = flights[at] = [current_task(loop), None, None]  # AsyncFlights.begin: [task, result, future]
            result: Result = NOTHING
            pending: Count | None = None  # the miss's count while it waits to be made with the store's
            try:
                # _find and _missed, with no store to look in
                if local is not None and not time() < local.stale_until:
                    local = None
                meta = call._metadata
                if meta is None:
                    call._metadata = {"cache": "miss", "cache_key": key}
                else:
                    meta["cache"] = "miss"
                    meta["cache_key"] = key
                enabled = events.enabled
                stored: Any = _UNBOUND
                if enabled:
                    target = call.target
                    model = target.model  # Call.model written out: every miss runs this
                    if model is None:
                        named = call.kwargs.get("model")
                        model = named if isinstance(named, str) else None
                    counts = misses.get((target.provider, target.operation, model))
                    if counts is None:
                        counts = self._miss_counts(target, model)
                    count, stored, both = counts
                    if both is not None:  # counted with the store in one update, or alone at the end
                        pending = count
                    elif count is not None:
                        count()
                    else:
                        events.emit(
                            CacheMiss(
                                provider=target.provider,
                                operation=target.operation,
                                model=model,
                                tenant=call.tenant,
                                key=key,
                                stale=local is not None,
                            )
                        )
                try:
                    value = await nxt(call)
                except Exception as exc:
                    if local is None:
                        raise
                    reason = stale_reason(exc, classify)
                    if reason is None or not local.usable(time()):
                        raise
                    value = self._stale(call, key, local, reason)
                else:
                    # _fill: _keep and _stored, with no store to put in
                    now = time()
                    ttl = plan.ttl
                    fresh_until = now + ttl
                    stale_until = fresh_until + options.max_stale
                    entry = _new_entry(Entry, (value, False, now, fresh_until, stale_until))
                    size = 0
                    # The size is needed for an event, else only whether it is within the limit.
                    if (
                        (stored is _UNBOUND and enabled)
                        or stored is None
                        or not fits(value, now, fresh_until, stale_until, options.max_value_bytes)
                    ):
                        try:
                            size = len(encode(entry))
                        except Unstorable:
                            size = -1
                            self._not_stored(call, key, "unserializable")
                        else:
                            if size > options.max_value_bytes:
                                size = -1
                                self._not_stored(call, key, "too_large")
                    if size >= 0:
                        # LocalLayer.put's row with no store: kept until stale, fresh until fresh (max_stale >= 0)
                        row = (entry, stale_until, key, fresh_until)
                        lock.acquire()
                        if layer._by_key is None and not plan.tags:
                            # LocalLayer.hold's common case written out (no index, no tags; read under its
                            # lock, which builds the index): a frame and a third of the store's cost.
                            try:
                                if found is not None and ck in data:  # else new here, or raced in: it stays
                                    move(ck)
                                data[ck] = row
                                while len(data) > most:
                                    evict(False)
                            finally:
                                lock.release()
                        else:
                            lock.release()
                            hold(ck, row, plan.tags(call) if plan.tags else ())
                        if pending is not None and both is not None:
                            pending = None
                            both()
                        elif enabled:
                            if stored is _UNBOUND:
                                stored = self._count(CacheStored, target, model)
                                self._miss_counts(target, model)  # the next miss may join the two
                            if stored is not None:
                                stored()
                            else:
                                events.emit(
                                    CacheStored(
                                        provider=target.provider,
                                        operation=target.operation,
                                        model=model,
                                        tenant=call.tenant,
                                        key=key,
                                        size=size,
                                        ttl=ttl,
                                        stream=False,
                                    )
                                )
                meta = call._metadata
                result = (True, value, meta.get("cache", "miss") if meta is not None else "miss", None)
                return value
            except Exception as exc:
                result = (False, None, "miss", exc)
                raise
            finally:
                if pending is not None:  # a miss that was not stored after all: its count alone
                    pending()
                if flight is not None:  # AsyncFlights.end: in this loop, so nothing runs in between
                    flight[1] = result  # RESULT
                    if held_flight(at) is flight:
                        del flights[at]
                    future = flight[2]  # DONE
                    if future is not None and not future.done():
                        future.set_result(None)

        return cached

    async def _amiss_behind(
        self, call: Call, nxt: AsyncHandler, plan: Plan, ck: bytes, key: str, local: Entry | None, flight: AsyncFlight
    ) -> Any:
        """A miss that found an identical one in flight in its loop: its result, or a call of its own."""
        shared = await AsyncFlights.wait(flight, plan.options.flight_wait)
        if shared is not None and (shared.ok or shared.error is not None):
            return self._follow(call, key, shared)
        return await self._afetch(call, nxt, plan, ck, key, local)

    async def _amiss(self, call: Call, nxt: AsyncHandler, plan: Plan, ck: bytes, key: str, local: Entry | None) -> Any:
        options = plan.options
        if not options.single_flight:
            return await self._afetch(call, nxt, plan, ck, key, local)
        flight, leader = self._aflights.begin(key)
        if not leader:
            return await self._amiss_behind(call, nxt, plan, ck, key, local, flight)
        result: Result = NOTHING
        try:
            value = await self._afetch(call, nxt, plan, ck, key, local)
            result = (True, value, call.metadata.get("cache", "miss"), None)
            return value
        except Exception as exc:
            result = (False, None, "miss", exc)
            raise
        finally:
            self._aflights.end(key, flight, result)

    async def _afetch(self, call: Call, nxt: AsyncHandler, plan: Plan, ck: bytes, key: str, local: Entry | None) -> Any:
        found = await adrive(self._find(call, plan, ck, key, local), self._aperform)
        if found.entry is not None:
            return found.entry.value
        try:
            value = await nxt(call)
        except Exception as exc:
            await adrive(self._release(call, key, found.token), self._aperform)
            stale = found.stale
            reason = stale_reason(exc, self._classify) if stale is not None else None
            if stale is None or reason is None or not stale.usable(self._clock.time()):
                raise
            return self._stale(call, key, stale, reason)
        await adrive(self._fill(call, plan, ck, key, value, False, found.token), self._aperform)
        return value

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        fixed = self._fixed(target, True)
        if fixed is not None and not fixed.enabled:
            return nxt
        local_get, time = self._local.get, self._clock.time

        async def cached(call: Call) -> AsyncIterator[Any]:
            plan = fixed if fixed is not None else self._plan_for(call, True)
            ck = self._admit(call, plan) if plan.enabled else None
            if ck is None:
                it = nxt(call)
                try:
                    async for chunk in it:
                        yield chunk
                finally:
                    await _aclose(it)
                return
            now = time()
            held = local_get(ck, now)
            entry = held[0] if held is not None else None
            key = held[2] if held is not None else sha256(ck).hexdigest()
            if entry is not None and now < entry.fresh_until:
                self._hit(call, key, entry, "local", now)
                for chunk in entry.value:
                    yield chunk
                return
            options, flight = plan.options, None
            if options.single_flight:
                flight, leader = self._aflights.begin(key)
                if not leader:
                    shared = await AsyncFlights.wait(flight, options.flight_wait)
                    flight = None
                    if shared is not None and shared.ok:
                        for chunk in self._follow(call, key, shared):
                            yield chunk
                        return
            result = Shared(False)
            try:
                found = await adrive(self._find(call, plan, ck, key, entry), self._aperform)
                if found.entry is not None:
                    result = Shared(True, found.entry.value, "miss")
                    for chunk in found.entry.value:
                        yield chunk
                    return
                recorder, token = Recorder(), found.token
                it = nxt(call)
                try:
                    async for chunk in it:
                        recorder.add(chunk)
                        yield chunk
                except GeneratorExit:
                    await _aclose(it)
                    self._not_stored(call, key, "incomplete_stream")
                    await adrive(self._release(call, key, token), self._aperform)
                    raise
                except Exception as exc:
                    await _aclose(it)
                    await adrive(self._release(call, key, token), self._aperform)
                    stale = found.stale
                    reason = stale_reason(exc, self._classify) if stale is not None and not recorder.chunks else None
                    if stale is None or reason is None or not stale.usable(self._clock.time()):
                        self._not_stored(call, key, "incomplete_stream")
                        raise
                    chunks = self._stale(call, key, stale, reason)
                    result = Shared(True, chunks, "stale")
                    for chunk in chunks:
                        yield chunk
                    return
                if recorder.complete():
                    await adrive(self._fill(call, plan, ck, key, recorder.chunks, True, token), self._aperform)
                    result = Shared(True, recorder.chunks, "miss")
                else:
                    self._not_stored(call, key, "incomplete_stream")
                    await adrive(self._release(call, key, token), self._aperform)
            finally:
                if flight is not None:
                    self._aflights.end(key, flight, result)

        return cached

    # ------------------------------------------------------------ management

    def key_for(
        self,
        provider: str,
        operation: str,
        kwargs: Mapping[str, Any],
        *,
        args: tuple[Any, ...] = (),
        model: str | None = None,
        tenant: str | None = None,
        stream: bool = False,
    ) -> str | None:
        """The key a call with these arguments has (e.g. to invalidate it); None if it would not be cached."""
        target = Target(provider, operation, "stream" if stream else "sync", model=model, tenant=lambda _: tenant)
        call = Call(target, args, dict(kwargs))
        canonical = self._plan_for(call, stream).key(call)
        return digest(canonical) if canonical is not None else None

    def invalidate(self, *, key: str | None = None, tag: str | None = None) -> int:
        """Remove the entry ``key`` or every entry tagged ``tag``, here and in the shared store.

        Other workers' in-process layers keep theirs for at most ``local_ttl``.
        Returns how many entries were removed (from the shared store when there is one).
        """
        if (key is None) == (tag is None):
            raise ValueError("invalidate() takes key= or tag=, one of them")
        removed = self._local.delete(key) if key is not None else self._local.delete_tag(tag or "")
        if self._shared is not None:
            try:
                removed = self._shared.delete(key) if key is not None else self._shared.delete_tag(tag or "")
            except self._errors as exc:
                self._store_failed(None, "invalidate", exc)
                raise
        self._invalidated(key, tag, int(removed))
        return int(removed)

    async def ainvalidate(self, *, key: str | None = None, tag: str | None = None) -> int:
        """:meth:`invalidate` for async code."""
        if (key is None) == (tag is None):
            raise ValueError("ainvalidate() takes key= or tag=, one of them")
        removed = self._local.delete(key) if key is not None else self._local.delete_tag(tag or "")
        if self._ashared is not None:
            try:
                if key is not None:
                    removed = await self._ashared.delete(key)
                else:
                    removed = await self._ashared.delete_tag(tag or "")
            except self._errors as exc:
                self._store_failed(None, "invalidate", exc)
                raise
        self._invalidated(key, tag, int(removed))
        return int(removed)

    def _invalidated(self, key: str | None, tag: str | None, removed: int) -> None:
        if self._events.enabled:
            self._events.emit(CacheInvalidated(key=key, tag=tag, removed=removed))

    def clear_local(self) -> None:
        """Empty this process's layer (the shared store is left as it is)."""
        self._local.clear()

    def health(self) -> dict[str, Any]:
        """Always ``ok``: a cache whose store is down still answers (from memory, or by calling the provider).
        ``degraded`` says the shared store does not answer."""
        info: dict[str, Any] = {"ok": True, "store": "memory", "local_entries": len(self._local)}
        if self._shared is not None:
            info["store"] = "redis"
            try:
                info["degraded"] = not self._shared.ping()
            except self._errors as exc:
                info.update(degraded=True, error=type(exc).__name__)
        return info

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()

    async def aclose(self) -> None:
        self.close()
        if self._ashared is not None:
            await self._ashared.aclose()


def _about(call: Call) -> dict[str, Any]:
    # The hot paths (hit, miss, stored, bypass) pass these keywords directly: unpacking a dict costs more.
    return {"provider": call.provider, "operation": call.operation, "model": call.model, "tenant": call.tenant}


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
