"""The quota policy: admission before the call, reconciliation after it.

Counting is done by ``limits`` strategies on ``limits`` storages. Per call:
the shared pause of the key (a provider said stop), one hit per request
limit, then one hit per token limit with the call's estimate as cost. After
the call the token reservation is moved to the real usage read from the
response. A second, inner policy (``quota_signals``) sees every attempt's
failure, so a 429 absorbed by a retry still pauses the key for the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import limits

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    Handler,
    Order,
    Outcome,
    Policy,
    QuotaExceeded,
    Runtime,
    Section,
    StreamHandler,
    Target,
)
from resilient.context import current as current_context
from resilient.providers import response_headers, usage_from
from resilient.storage import STORE_ERRORS

from ._events import QuotaPaused, QuotaRejected, QuotaStoreUnavailable
from ._options import QuotaOptions
from ._plan import Plan, actual_tokens, make_plan, needed_tokens
from ._signals import pause_from_headers
from ._store import AsyncLimiters, Limiters

__all__ = ["QuotaPolicy", "QuotaSignals"]

_log = logging.getLogger("resilient.quota")
_PLAN_CACHE_MAX = 10_000
_NOTHING_HELD: list[Any] = []  # shared and never mutated: no reservation to settle


@dataclass(slots=True)
class _Held:
    """One token reservation: what to move when the real usage is known."""

    kind: str
    item: limits.RateLimitItem
    ids: tuple[str, ...]
    cost: int
    local: bool
    at: float  # wall time of the reservation: a refund never crosses into a later window


@dataclass(frozen=True, slots=True)
class _Refusal:
    limit: str
    retry_after: float | None


class QuotaState:
    """What the quota policy and its signal watcher share: store, plans, pauses, store health."""

    def __init__(self, section: Section[QuotaOptions], runtime: Runtime) -> None:
        self.section = section
        self.runtime = runtime
        self.clock = runtime.clock
        self.events = runtime.events
        core = runtime.settings.core
        uri = section.base.storage or core.store
        self.limiters = Limiters(uri, core.key_prefix)
        self._async: AsyncLimiters | None = None
        self._prefix = core.key_prefix
        self._plans: dict[tuple[str, str | None, str | None], Plan] = {}
        # pause key -> (paused until, next read of the store), both on the monotonic clock
        self._pauses: dict[str, tuple[float, float]] = {}
        self._store_down_until = 0.0
        base = section.base
        # Which parts of a call the plan depends on: skip the lookups it does not need.
        self._by_model = section.varies or "model" in base.key
        self._by_tenant = section.varies or "tenant" in base.key

    @property
    def alimiters(self) -> AsyncLimiters:
        if self._async is None:
            self._async = AsyncLimiters(self.limiters, self._prefix)
        return self._async

    async def aclose(self) -> None:
        self.limiters.close()
        if self._async is not None:
            await self._async.aclose()

    def plan(self, call: Call) -> Plan | None:
        """The plan of a call, or ``None`` when the quota has nothing to do for it."""
        target = call.target
        model = (target.model or call.model) if self._by_model else None
        tenant: str | None = None
        if self._by_tenant:
            if target.tenant is not None:
                tenant = target.tenant(call)
            else:
                ctx = current_context()
                tenant = ctx.tenant if ctx is not None else None
        plan = self._plans.get((target.provider, model, tenant))
        if plan is None:
            plan = self.plan_for(target.provider, model, tenant)
        return plan if plan.active else None

    def plan_for(self, provider: str, model: str | None, tenant: str | None) -> Plan:
        key = (provider, model, tenant)
        plan = self._plans.get(key)
        if plan is None:
            options = self.section.for_call(provider, model, tenant)
            plan = make_plan(options, provider, model, tenant)
            if len(self._plans) >= _PLAN_CACHE_MAX:
                self._plans.clear()  # many tenants: start over rather than stop caching
            self._plans[key] = plan
        return plan

    # ------------------------------------------------------------ store health

    def store_down(self) -> bool:
        """True while the store is considered down (after an error, for store_retry seconds)."""
        return bool(self._store_down_until) and self._store_down_until > self.clock.monotonic()

    def store_failed(self, plan: Plan, error: BaseException) -> str:
        """Record a store failure; return the fallback in force (local, open, closed)."""
        fallback = plan.options.on_store_error
        self._store_down_until = self.clock.monotonic() + plan.options.store_retry
        _log.warning(
            "quota store unavailable (%s); %s for %.0fs",
            type(error).__name__,
            fallback,
            plan.options.store_retry,
        )
        if self.events.enabled:
            self.events.emit(QuotaStoreUnavailable(error=type(error).__name__, fallback=fallback))
        return fallback

    # ------------------------------------------------------------ pauses

    def cached_pause(self, plan: Plan, now: float) -> tuple[float, bool]:
        """(seconds paused in the local view, whether the store must be read) at monotonic ``now``."""
        until, next_read = self._pauses.get(plan.pause_key, (0.0, 0.0))
        if until > now:
            return until - now, False
        return 0.0, now >= next_read

    def remember_pause(self, plan: Plan, seconds: float, now: float) -> None:
        """Note a pause of ``seconds`` (only ever extending one) and when to read the store again."""
        until, _ = self._pauses.get(plan.pause_key, (0.0, 0.0))
        self._pauses[plan.pause_key] = (max(until, now + seconds), now + plan.options.signal_poll)
        if len(self._pauses) > _PLAN_CACHE_MAX:
            self._pauses.pop(next(iter(self._pauses)), None)

    def signal_pause(self, call: Call, outcome: Outcome, headers: Any) -> float | None:
        """The pause a failure or a response's headers ask for, bounded by max_pause."""
        plan = self.plan(call)
        if plan is None or not plan.options.provider_signals:
            return None
        seconds: float | None = None
        if outcome.kind in ("rate_limited", "overloaded"):
            seconds = outcome.retry_after
        if headers is not None:
            from_headers = pause_from_headers(headers, self.clock.time())
            if from_headers is not None:
                seconds = max(seconds or 0.0, from_headers)
        if seconds is None or seconds <= 0:
            return None
        seconds = min(seconds, plan.options.max_pause)
        self.remember_pause(plan, seconds, self.clock.monotonic())
        if self.events.enabled:
            self.events.emit(
                QuotaPaused(
                    provider=call.provider,
                    operation=call.operation,
                    model=call.model,
                    seconds=seconds,
                    source=outcome.kind,
                )
            )
        return seconds

    # ------------------------------------------------------------ refusals

    def refuse(self, call: Call, refusal: _Refusal) -> QuotaExceeded:
        if self.events.enabled:
            self.events.emit(
                QuotaRejected(
                    provider=call.provider,
                    operation=call.operation,
                    model=call.model,
                    limit=refusal.limit,
                    retry_after=refusal.retry_after,
                )
            )
        return QuotaExceeded(
            f"quota exceeded: {refusal.limit}",
            limit=refusal.limit,
            retry_after=refusal.retry_after,
            provider=call.provider,
            model=call.model,
        )


# Waking exactly at a window's reset can still find the old entry counted
# (the boundary is inclusive, and floats at epoch scale round): come back a
# little after it, and never spin on a zero wait.
_RESET_MARGIN = 0.01


def _retry_after(reset: float, now: float) -> float:
    return max(reset - now, 0.0) + _RESET_MARGIN


def _label(kind: str, item: limits.RateLimitItem) -> str:
    return f"{kind} {item}"


def _usage(call: Call, result: Any) -> dict[str, int] | None:
    usage = call.usage
    if usage is None:
        usage = usage_from(result)
        if usage is not None:
            call.usage = usage
    return actual_tokens(usage) if usage is not None else None


class QuotaPolicy(Policy):
    """Admits a call against its request and token limits; reconciles tokens after it."""

    name = "quota"
    order = Order.QUOTA

    def __init__(self, state: QuotaState) -> None:
        self.state = state

    # ------------------------------------------------------------ sync driver

    def _paused(self, plan: Plan, local: bool) -> _Refusal | None:
        state = self.state
        now = state.clock.monotonic()
        paused, stale = state.cached_pause(plan, now)
        if stale:
            paused = state.limiters.pause_get(plan.pause_key, local)
            state.remember_pause(plan, paused, now)
        return _Refusal("provider asked to slow down", paused) if paused > 0 else None

    def _try(self, call: Call, plan: Plan, local: bool) -> tuple[_Refusal | None, list[_Held]]:
        state, options, lim = self.state, plan.options, self.state.limiters
        if options.provider_signals:
            refusal = self._paused(plan, local)
            if refusal is not None:
                return refusal, []
        requests = lim.limiter(options.strategy, local)
        if not plan.tokens and not options.wait:  # the common case: request limits only
            hit = lim.hit_fn(options.strategy, local)
            for item, key, expiry in plan.request_keys:
                if not hit(key, item.amount, expiry, 1):
                    return self._request_refusal(requests, item, plan.ids), []
            return None, _NOTHING_HELD
        needed = needed_tokens(plan, call)
        tokens = lim.limiter(options.token_strategy, local)
        if options.wait:
            # Look before taking: a call that will wait must not spend a hit on every pass.
            for item in plan.requests:
                if not requests.test(item, *plan.ids):
                    return self._request_refusal(requests, item, plan.ids), []
            for kind, item, ids in plan.tokens:
                if needed[kind] and not tokens.test(item, *ids, cost=needed[kind]):
                    return self._token_refusal(tokens, options, item, ids, kind), []
        for item in plan.requests:
            if not requests.hit(item, *plan.ids):
                return self._request_refusal(requests, item, plan.ids), []
        held: list[_Held] = []
        try:
            for kind, item, ids in plan.tokens:
                cost = needed[kind]
                if cost > item.amount:
                    self._settle(plan, held, None)
                    return _Refusal(f"{_label(kind, item)} (the call alone needs {cost})", None), []
                if cost and not tokens.hit(item, *ids, cost=cost):
                    if options.token_strategy == "fixed-window":
                        # limits' fixed window keeps a refused hit counted: give it back.
                        lim.adjust("fixed-window", item, ids, -cost, local, None)
                    self._settle(plan, held, None)
                    return self._token_refusal(tokens, options, item, ids, kind), []
                # Held even at cost 0: the real usage is recorded when the call settles.
                held.append(_Held(kind, item, ids, cost, local, state.clock.time()))
        except BaseException:
            self._settle(plan, held, None)  # interrupted half-way: release what was taken
            raise
        return None, held

    def _request_refusal(self, limiter: Any, item: limits.RateLimitItem, ids: tuple[str, ...]) -> _Refusal:
        reset = limiter.get_window_stats(item, *ids).reset_time
        return _Refusal(_label("requests", item), _retry_after(reset, self.state.clock.time()))

    def _token_refusal(
        self, limiter: Any, options: QuotaOptions, item: limits.RateLimitItem, ids: tuple[str, ...], kind: str
    ) -> _Refusal:
        now = self.state.clock.time()
        if options.token_strategy == "fixed-window":
            wait = limiter.get_window_stats(item, *ids).reset_time - now
        else:
            # A sliding window frees tokens gradually; the current window's end is when
            # the previous one stops weighing on it (limits' reset_time is for one unit).
            period = item.get_expiry()
            wait = period - (now % period)
        return _Refusal(_label(kind, item), _retry_after(now + wait, now))

    def _admit(self, call: Call, plan: Plan) -> list[_Held]:
        state, options = self.state, plan.options
        waited_until: float | None = None
        failed = False  # once the store failed in this call, never ask it again here
        while True:
            local = failed or state.store_down()
            if local and options.on_store_error != "local":
                # The store is down and the fallback is not to count locally.
                if options.on_store_error == "open":
                    return []
                raise state.refuse(call, _Refusal("quota store unavailable", options.store_retry))
            try:
                refusal, held = self._try(call, plan, local)
            except STORE_ERRORS as exc:
                state.store_failed(plan, exc)
                failed = True
                continue  # decided at the top of the loop, now that the store is known down
            if refusal is None:
                return held
            if options.wait and refusal.retry_after is not None:
                now = state.clock.monotonic()
                waited_until = waited_until if waited_until is not None else now + options.max_wait
                if now + refusal.retry_after <= waited_until:
                    state.clock.sleep(refusal.retry_after)
                    continue
            raise state.refuse(call, refusal)

    def _settle(self, plan: Plan, held: list[_Held], actual: dict[str, int] | None) -> None:
        """Move each reservation to the real usage (``None``: refund it all)."""
        lim = self.state.limiters
        for h in held:
            delta = (actual[h.kind] if actual is not None else 0) - h.cost
            if delta:
                try:
                    lim.adjust(plan.options.token_strategy, h.item, h.ids, delta, h.local, h.at)
                except STORE_ERRORS as exc:  # a failing store never fails the call
                    self.state.store_failed(plan, exc)

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def admitted(call: Call) -> Any:
            plan = self.state.plan(call)
            if plan is None:
                return nxt(call)
            held = self._admit(call, plan)
            try:
                result = nxt(call)
            except BaseException:
                self._settle(plan, held, None)
                raise
            if held:
                actual = _usage(call, result)
                if actual is not None:
                    self._settle(plan, held, actual)
            return result

        return admitted

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def admitted(call: Call) -> Iterator[Any]:
            plan = self.state.plan(call)
            if plan is None:
                return nxt(call)
            held = self._admit(call, plan)
            try:
                stream = nxt(call)
            except BaseException:
                self._settle(plan, held, None)  # it never started: refund, once
                raise
            if held:

                def settle(c: Call, outcome: Outcome) -> None:
                    # Usage known (read from the stream's events): reconcile to it.
                    # Unknown: a failed stream is refunded; a finished or abandoned one keeps its estimate.
                    actual = actual_tokens(c.usage) if c.usage is not None else None
                    if actual is not None or not outcome.ok:
                        self._settle(plan, held, actual)

                call.on_end(settle)
            return stream

        return admitted

    # ------------------------------------------------------------ async driver

    async def _apaused(self, plan: Plan, local: bool) -> _Refusal | None:
        state = self.state
        now = state.clock.monotonic()
        paused, stale = state.cached_pause(plan, now)
        if stale:
            paused = await state.alimiters.pause_get(plan.pause_key, local)
            state.remember_pause(plan, paused, now)
        return _Refusal("provider asked to slow down", paused) if paused > 0 else None

    async def _atry(self, call: Call, plan: Plan, local: bool) -> tuple[_Refusal | None, list[_Held]]:
        """:meth:`_try` on the async storage; the same steps in the same order."""
        state, options, lim = self.state, plan.options, self.state.alimiters
        if options.provider_signals:
            refusal = await self._apaused(plan, local)
            if refusal is not None:
                return refusal, []
        needed = needed_tokens(plan, call)
        if options.wait:
            for item in plan.requests:
                if not await lim.test(options.strategy, item, plan.ids, 1, local):
                    return await self._arequest_refusal(options, item, plan.ids, local), []
            for kind, item, ids in plan.tokens:
                if needed[kind] and not await lim.test(options.token_strategy, item, ids, needed[kind], local):
                    return await self._atoken_refusal(options, item, ids, kind, local), []
        for item in plan.requests:
            if not await lim.hit(options.strategy, item, plan.ids, 1, local):
                return await self._arequest_refusal(options, item, plan.ids, local), []
        held: list[_Held] = []
        try:
            for kind, item, ids in plan.tokens:
                cost = needed[kind]
                if cost > item.amount:
                    await self._asettle(plan, held, None)
                    return _Refusal(f"{_label(kind, item)} (the call alone needs {cost})", None), []
                if cost and not await lim.hit(options.token_strategy, item, ids, cost, local):
                    if options.token_strategy == "fixed-window":
                        await lim.adjust("fixed-window", item, ids, -cost, local, None)
                    await self._asettle(plan, held, None)
                    return await self._atoken_refusal(options, item, ids, kind, local), []
                # Held even at cost 0: the real usage is recorded when the call settles.
                held.append(_Held(kind, item, ids, cost, local, state.clock.time()))
        except BaseException:
            await self._asettle(plan, held, None)
            raise
        return None, held

    async def _arequest_refusal(
        self, options: QuotaOptions, item: limits.RateLimitItem, ids: tuple[str, ...], local: bool
    ) -> _Refusal:
        reset = await self.state.alimiters.reset_at(options.strategy, item, ids, local)
        return _Refusal(_label("requests", item), _retry_after(reset, self.state.clock.time()))

    async def _atoken_refusal(
        self, options: QuotaOptions, item: limits.RateLimitItem, ids: tuple[str, ...], kind: str, local: bool
    ) -> _Refusal:
        now = self.state.clock.time()
        if options.token_strategy == "fixed-window":
            wait = await self.state.alimiters.reset_at(options.token_strategy, item, ids, local) - now
        else:
            period = item.get_expiry()
            wait = period - (now % period)
        return _Refusal(_label(kind, item), _retry_after(now + wait, now))

    async def _aadmit(self, call: Call, plan: Plan) -> list[_Held]:
        state, options = self.state, plan.options
        waited_until: float | None = None
        failed = False  # once the store failed in this call, never ask it again here
        while True:
            local = failed or state.store_down()
            if local and options.on_store_error != "local":
                # The store is down and the fallback is not to count locally.
                if options.on_store_error == "open":
                    return []
                raise state.refuse(call, _Refusal("quota store unavailable", options.store_retry))
            try:
                refusal, held = await self._atry(call, plan, local)
            except STORE_ERRORS as exc:
                state.store_failed(plan, exc)
                failed = True
                continue  # decided at the top of the loop, now that the store is known down
            if refusal is None:
                return held
            if options.wait and refusal.retry_after is not None:
                now = state.clock.monotonic()
                waited_until = waited_until if waited_until is not None else now + options.max_wait
                if now + refusal.retry_after <= waited_until:
                    await state.clock.asleep(refusal.retry_after)
                    continue
            raise state.refuse(call, refusal)

    async def _asettle(self, plan: Plan, held: list[_Held], actual: dict[str, int] | None) -> None:
        lim = self.state.alimiters
        for h in held:
            delta = (actual[h.kind] if actual is not None else 0) - h.cost
            if delta:
                try:
                    await lim.adjust(plan.options.token_strategy, h.item, h.ids, delta, h.local, h.at)
                except STORE_ERRORS as exc:  # a failing store never fails the call
                    self.state.store_failed(plan, exc)

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        async def admitted(call: Call) -> Any:
            plan = self.state.plan(call)
            if plan is None:
                return await nxt(call)
            held = await self._aadmit(call, plan)
            try:
                result = await nxt(call)
            except BaseException:
                await self._asettle(plan, held, None)
                raise
            if held:
                actual = _usage(call, result)
                if actual is not None:
                    await self._asettle(plan, held, actual)
            return result

        return admitted

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        async def start(call: Call) -> tuple[Plan | None, list[_Held]]:
            plan = self.state.plan(call)
            if plan is None:
                return None, []
            return plan, await self._aadmit(call, plan)

        async def admitted(call: Call) -> AsyncIterator[Any]:
            plan, held = await start(call)
            ended_ok = True
            try:
                async for chunk in nxt(call):
                    yield chunk
            except GeneratorExit:
                pass  # abandoned by the consumer: like a finished stream, it keeps its estimate
            except BaseException:
                ended_ok = False
                raise
            finally:
                if plan is not None and held:
                    # Same rule as sync streams: usage known reconciles; unknown refunds a failure only.
                    actual = actual_tokens(call.usage) if call.usage is not None else None
                    if actual is not None or not ended_ok:
                        await self._asettle(plan, held, actual)

        return admitted

    # ------------------------------------------------------------ introspection

    def status(self, provider: str, model: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        """Remaining and reset of every limit of a key, and its pause; for /ready, the CLI and metrics."""
        options = self.state.section.for_call(provider, model, tenant)
        plan = make_plan(options, provider, model, tenant)
        lim = self.state.limiters
        local = self.state.store_down()
        try:
            return self._status(plan, options, lim, local)
        except STORE_ERRORS as exc:
            return {"key": plan.label, "store": f"unavailable ({type(exc).__name__})", "paused_for": None, "limits": []}

    def _status(self, plan: Plan, options: QuotaOptions, lim: Limiters, local: bool) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        now = self.state.clock.time()
        for kind, strategy, items in [("requests", options.strategy, [(i, plan.ids) for i in plan.requests])] + [
            (k, options.token_strategy, [(i, ids)]) for k, i, ids in plan.tokens
        ]:
            for item, ids in items:
                stats = lim.limiter(strategy, local).get_window_stats(item, *ids)
                rows.append(
                    {
                        "limit": _label(kind, item),
                        "remaining": stats.remaining,
                        "reset_in": round(max(stats.reset_time - now, 0.0), 3),
                    }
                )
        return {
            "key": plan.label,
            "store": "local fallback" if local else "ok",
            "paused_for": round(lim.pause_get(plan.pause_key, local), 3),
            "limits": rows,
        }

    def close(self) -> None:
        self.state.limiters.close()

    async def aclose(self) -> None:
        await self.state.aclose()


class QuotaSignals(Policy):
    """Inside the retry loop: turns each attempt's 429/529 or exhausted rate-limit headers into a shared pause."""

    name = "quota_signals"
    order = Order.RETRY + 50

    def __init__(self, state: QuotaState) -> None:
        self.state = state

    def _pause(self, call: Call, exc: BaseException) -> float | None:
        outcome = self.state.runtime.classify(exc)
        return self.state.signal_pause(call, outcome, response_headers(exc))

    def _share(self, call: Call, seconds: float) -> None:
        plan = self.state.plan(call)
        if plan is None:
            return
        try:
            self.state.limiters.pause_set(plan.pause_key, seconds, self.state.store_down())
        except STORE_ERRORS as exc:  # a failing store never fails the call
            self.state.store_failed(plan, exc)

    async def _ashare(self, call: Call, seconds: float) -> None:
        plan = self.state.plan(call)
        if plan is None:
            return
        try:
            await self.state.alimiters.pause_set(plan.pause_key, seconds, self.state.store_down())
        except STORE_ERRORS as exc:  # a failing store never fails the call
            self.state.store_failed(plan, exc)

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def watched(call: Call) -> Any:
            try:
                return nxt(call)
            except Exception as exc:
                seconds = self._pause(call, exc)
                if seconds is not None:
                    self._share(call, seconds)
                raise

        return watched

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        async def watched(call: Call) -> Any:
            try:
                return await nxt(call)
            except Exception as exc:
                seconds = self._pause(call, exc)
                if seconds is not None:
                    await self._ashare(call, seconds)
                raise

        return watched

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def watched(call: Call) -> Iterator[Any]:
            # A generator fails when iterated, not when called: watch the iteration.
            try:
                yield from nxt(call)
            except Exception as exc:
                seconds = self._pause(call, exc)
                if seconds is not None:
                    self._share(call, seconds)
                raise

        return watched

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        async def watched(call: Call) -> AsyncIterator[Any]:
            try:
                async for chunk in nxt(call):
                    yield chunk
            except Exception as exc:
                seconds = self._pause(call, exc)
                if seconds is not None:
                    await self._ashare(call, seconds)
                raise

        return watched
