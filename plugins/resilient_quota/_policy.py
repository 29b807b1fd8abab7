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
from limits.errors import StorageError

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
from resilient.providers import response_headers, usage_from

from ._events import QuotaPaused, QuotaRejected, QuotaStoreUnavailable
from ._options import QuotaOptions
from ._plan import Plan, actual_tokens, make_plan, needed_tokens
from ._signals import pause_from_headers
from ._store import AsyncLimiters, Limiters

__all__ = ["QuotaPolicy", "QuotaSignals"]

_log = logging.getLogger("resilient.quota")
_PLAN_CACHE_MAX = 10_000


@dataclass(slots=True)
class _Held:
    """One token reservation: what to move when the real usage is known."""

    kind: str
    item: limits.RateLimitItem
    ids: tuple[str, ...]
    cost: int
    local: bool


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
        # pause key -> (paused until, wall clock; last read of the store, monotonic)
        self._pauses: dict[str, tuple[float, float]] = {}
        self._store_down_until = 0.0

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
        plan = self.plan_for(call.provider, call.model, call.tenant)
        if not plan.options.enabled or plan.empty:
            return None
        return plan

    def plan_for(self, provider: str, model: str | None, tenant: str | None) -> Plan:
        key = (provider, model, tenant)
        plan = self._plans.get(key)
        if plan is None:
            options = self.section.for_call(provider, model, tenant)
            plan = make_plan(options, provider, model, tenant)
            if len(self._plans) < _PLAN_CACHE_MAX:
                self._plans[key] = plan
        return plan

    # ------------------------------------------------------------ store health

    def store_down(self) -> bool:
        """True while the store is considered down (after an error, for store_retry seconds)."""
        return self._store_down_until > self.clock.monotonic()

    def store_failed(self, plan: Plan, error: BaseException) -> str:
        """Record a store failure; return the fallback in force (local, open, closed)."""
        fallback = plan.options.on_store_error
        self._store_down_until = self.clock.monotonic() + plan.options.store_retry
        _log.warning(
            "quota store unavailable (%s); %s for %.0fs",
            type(error).__name__,
            fallback,
            plan.options.store_retry,
            exc_info=not isinstance(error, StorageError),  # not the store's own error: keep the traceback
        )
        if self.events.enabled:
            self.events.emit(QuotaStoreUnavailable(error=type(error).__name__, fallback=fallback))
        return fallback

    # ------------------------------------------------------------ pauses

    def cached_pause(self, plan: Plan) -> tuple[float, bool]:
        """(seconds paused by the local view, whether the store should be re-read)."""
        until, read_at = self._pauses.get(plan.pause_key, (0.0, -1e18))
        remaining = until - self.clock.time()
        stale = self.clock.monotonic() - read_at >= plan.options.signal_poll
        return max(remaining, 0.0), stale and remaining <= 0

    def remember_pause(self, plan: Plan, seconds: float) -> None:
        self._pauses[plan.pause_key] = (self.clock.time() + seconds, self.clock.monotonic())
        if len(self._pauses) > _PLAN_CACHE_MAX:
            self._pauses.pop(next(iter(self._pauses)))

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
        self.remember_pause(plan, seconds)
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

    def _try(self, call: Call, plan: Plan, local: bool) -> tuple[_Refusal | None, list[_Held]]:
        state, options, lim = self.state, plan.options, self.state.limiters
        paused, stale = state.cached_pause(plan)
        if stale:
            paused = lim.pause_get(plan.pause_key, local)
            state.remember_pause(plan, paused)
        if paused > 0:
            return _Refusal("provider asked to slow down", paused), []
        requests = lim.limiter(options.strategy, local)
        for item in plan.requests:
            if not requests.hit(item, *plan.ids):
                reset = requests.get_window_stats(item, *plan.ids).reset_time
                return _Refusal(_label("requests", item), _retry_after(reset, state.clock.time())), []
        held: list[_Held] = []
        if plan.tokens:
            needed = needed_tokens(plan, call)
            tokens = lim.limiter(options.token_strategy, local)
            for kind, item, ids in plan.tokens:
                cost = needed[kind]
                refusal: _Refusal | None = None
                if cost > item.amount:
                    refusal = _Refusal(f"{_label(kind, item)} (the call alone needs {cost})", None)
                elif cost and not tokens.hit(item, *ids, cost=cost):
                    reset = tokens.get_window_stats(item, *ids).reset_time
                    refusal = _Refusal(_label(kind, item), _retry_after(reset, state.clock.time()))
                if refusal is not None:
                    self._release(plan, held)
                    return refusal, []
                held.append(_Held(kind, item, ids, cost, local))
        return None, held

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
            except Exception as exc:  # StorageError, or a client broken some other way
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

    def _release(self, plan: Plan, held: list[_Held]) -> None:
        self._settle(plan, held, None)

    def _settle(self, plan: Plan, held: list[_Held], actual: dict[str, int] | None) -> None:
        """Move each reservation to the real usage (``None``: refund it all)."""
        lim = self.state.limiters
        for h in held:
            delta = (actual[h.kind] if actual is not None else 0) - h.cost
            if delta:
                try:
                    lim.adjust(plan.options.token_strategy, h.item, h.ids, delta, h.local)
                except Exception as exc:  # a failing store never fails the call
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
            if held:

                def settle(c: Call, outcome: Outcome) -> None:
                    # Usage known (read from the stream's events): reconcile to it.
                    # Unknown: a failed stream is refunded, a finished one keeps its estimate.
                    actual = actual_tokens(c.usage) if c.usage is not None else None
                    if actual is not None or not outcome.ok:
                        self._settle(plan, held, actual)

                call.on_end(settle)
            try:
                return nxt(call)
            except BaseException:
                self._settle(plan, held, None)
                raise

        return admitted

    # ------------------------------------------------------------ async driver

    async def _atry(self, call: Call, plan: Plan, local: bool) -> tuple[_Refusal | None, list[_Held]]:
        state, options, lim = self.state, plan.options, self.state.alimiters
        paused, stale = state.cached_pause(plan)
        if stale:
            paused = await lim.pause_get(plan.pause_key, local)
            state.remember_pause(plan, paused)
        if paused > 0:
            return _Refusal("provider asked to slow down", paused), []
        for item in plan.requests:
            if not await lim.hit(options.strategy, item, plan.ids, 1, local):
                reset = await lim.reset_at(options.strategy, item, plan.ids, local)
                return _Refusal(_label("requests", item), _retry_after(reset, state.clock.time())), []
        held: list[_Held] = []
        if plan.tokens:
            needed = needed_tokens(plan, call)
            for kind, item, ids in plan.tokens:
                cost = needed[kind]
                refusal: _Refusal | None = None
                if cost > item.amount:
                    refusal = _Refusal(f"{_label(kind, item)} (the call alone needs {cost})", None)
                elif cost and not await lim.hit(options.token_strategy, item, ids, cost, local):
                    reset = await lim.reset_at(options.token_strategy, item, ids, local)
                    refusal = _Refusal(_label(kind, item), _retry_after(reset, state.clock.time()))
                if refusal is not None:
                    await self._asettle(plan, held, None)
                    return refusal, []
                held.append(_Held(kind, item, ids, cost, local))
        return None, held

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
            except Exception as exc:  # StorageError, or a client broken some other way
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
                    await lim.adjust(plan.options.token_strategy, h.item, h.ids, delta, h.local)
                except Exception as exc:  # a failing store never fails the call
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
            settled = False
            try:
                async for chunk in nxt(call):
                    yield chunk
            except BaseException:
                if plan is not None and held:
                    settled = True
                    actual = actual_tokens(call.usage) if call.usage is not None else None
                    await self._asettle(plan, held, actual)
                raise
            if plan is not None and held and not settled:
                actual = actual_tokens(call.usage) if call.usage is not None else None
                if actual is not None:
                    await self._asettle(plan, held, actual)

        return admitted

    # ------------------------------------------------------------ introspection

    def status(self, provider: str, model: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        """Remaining and reset of every limit of a key, and its pause; for /ready, the CLI and metrics."""
        options = self.state.section.for_call(provider, model, tenant)
        plan = make_plan(options, provider, model, tenant)
        lim = self.state.limiters
        local = self.state.store_down()
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
        except Exception as exc:  # a failing store never fails the call
            self.state.store_failed(plan, exc)

    async def _ashare(self, call: Call, seconds: float) -> None:
        plan = self.state.plan(call)
        if plan is None:
            return
        try:
            await self.state.alimiters.pause_set(plan.pause_key, seconds, self.state.store_down())
        except Exception as exc:  # a failing store never fails the call
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
