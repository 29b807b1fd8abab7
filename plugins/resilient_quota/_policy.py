"""The quota policy: admission before the call, reconciliation after it.

Counting is done by ``limits`` strategies on ``limits`` storages. What a
call is admitted against and how its reservation settles is decided once,
in :mod:`._admission`, as generators of store operations; this module holds
the state they share and the thin drivers that run them: sync calls on the
sync limiters, async calls on the async ones. A second, inner policy
(``quota_signals``) sees every attempt's failure, so a 429 absorbed by a
retry still pauses the key for the fleet.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

from resilient import (
    SUCCESS,
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
from resilient.storage import STORE_ERRORS, is_memory

from ._admission import (
    Count,
    Held,
    Op,
    Ops,
    Refusal,
    Sleep,
    admission,
    label,
    remaining,
    request_refusal,
    settlement,
    share_pause,
)
from ._events import QuotaPaused, QuotaRejected, QuotaRemaining, QuotaStoreUnavailable
from ._options import QuotaOptions
from ._plan import Plan, actual_tokens, make_plan
from ._signals import pause_from_headers
from ._steps import adrive, drive
from ._store import AsyncLimiters, HitFn, Limiters, PauseGet

__all__ = ["QuotaPolicy", "QuotaSignals"]

_log = logging.getLogger("resilient.quota")
_PLAN_CACHE_MAX = 10_000
_NOTHING_HELD: list[Held] = []  # shared and never mutated: no reservation to settle


class _Admitted:
    """The type of :data:`ADMITTED`."""

    __slots__ = ()


#: What :meth:`QuotaState.entrance` returns for a call it admitted (holding nothing).
ADMITTED = _Admitted()
_NO_PAUSE = (0.0, 0.0)  # (paused until, next read of the store) of a key never paused nor read
_COUNT_FAILED_LOG_EVERY = 60.0  # seconds: a count-tokens outage logs once a minute, not once a call

T = TypeVar("T")


class QuotaState:
    """What the quota policy and its signal watcher share: store, plans, pauses, store health."""

    def __init__(self, section: Section[QuotaOptions], runtime: Runtime) -> None:
        self.section = section
        self.runtime = runtime
        self.clock = runtime.clock
        self.events = runtime.events
        core = runtime.settings.core
        uri = section.base.storage or core.store
        self.limiters = Limiters(uri, core.key_prefix, self.clock)
        #: Wall time as the store counts it (the clock's in memory, else time.time): reset times, reservations.
        self.wall = self.limiters.wall
        self.in_memory = is_memory(uri)
        #: Whether the store takes a call's limits (and pause read) in one round trip (see ._batch).
        self.batches = self.limiters.batch is not None
        self._async: AsyncLimiters | None = None
        self._prefix = core.key_prefix
        self._plans: dict[tuple[str, str | None, str | None], Plan] = {}
        #: Per target, plan()'s entrance (not admitting): a wrapped SDK call asks for its plan after every
        #: response (its rate-limit headers), and building the entrance was most of that.
        self._planners: dict[Target, Callable[[Call], Plan | _Admitted | None]] = {}
        # pause key -> (paused until, next read of the store), both on the monotonic clock
        self._pauses: dict[str, tuple[float, float]] = {}
        self._store_down_until = 0.0
        # pause key -> when this process next reads the remaining of the key's limits (monotonic)
        self._reports: dict[str, float] = {}
        self._count_failed_logged = float("-inf")
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

    # ------------------------------------------------------------ drivers

    def run(self, ops: Ops[T]) -> T:
        """Run quota logic for a sync call: on the sync limiters, sleeping on the clock."""
        return drive(ops, self._perform)

    def _perform(self, op: Op) -> Any:
        if isinstance(op, Sleep):
            return self.clock.sleep(op.seconds)
        if isinstance(op, Count):
            counter = op.call.target.count_tokens
            assert counter is not None  # Count is yielded only for targets that have one
            return _count(op.call, counter(op.call))
        return self.limiters.run(op)

    async def arun(self, ops: Ops[T]) -> T:
        """Run quota logic for an async call: on the async limiters, sleeping on the clock."""
        return await adrive(ops, self._aperform)

    def _aperform(self, op: Op) -> Awaitable[Any]:
        if isinstance(op, Sleep):
            return self.clock.asleep(op.seconds)
        if isinstance(op, Count):
            return _acount(op.call)
        return self.alimiters.run(op)

    # ------------------------------------------------------------ plans

    def plan(self, call: Call) -> Plan | None:
        """The plan of a call, or ``None`` when the quota has nothing to do for it (off the per-call path)."""
        target = call.target
        planner = self._planners.get(target)
        if planner is None:
            planner = self.entrance(target, admitting=False)
            if len(self._planners) < _PLAN_CACHE_MAX:
                self._planners[target] = planner
        return cast("Plan | None", planner(call))

    def entrance(self, target: Target, admitting: bool = True) -> Callable[[Call], Plan | _Admitted | None]:
        """What every call of ``target`` runs first: its plan, and when ``admitting``, its admission if simple.

        The plan is found with the same lookups in the same order as :meth:`plan`
        (the target's static model, else the call's ``model`` argument; its
        tenant function, else the request context's), what the target fixes
        looked up once. Then the common case is admitted in the same frame:
        request limits only, no wait mode, no pause in force or due to be read,
        the store up. That is :func:`admission` specialised and decides nothing
        of its own: after a hit, a refusal (no wait mode: refused) or a store
        error ends as it does there; anything else goes to ``admission`` before
        any hit. Run through ``admission``, an admitted call cost about 2.5 µs
        more in memory (generators, operation objects, limits formatting the
        key on every hit; the plan formatted it once). Its hits are sync: async
        calls admit here only in memory.

        Returns ``None`` (the quota has nothing to do), :data:`ADMITTED`
        (admitted; a simple plan holds no tokens, so there is nothing to
        settle), or the plan, for ``admission`` to admit.
        """
        plans, plan_for = self._plans, self.plan_for
        provider, static_model, tenant_of = target.provider, target.model, target.tenant
        by_model, by_tenant = self._by_model, self._by_tenant
        monotonic, pauses, reports, events = self.clock.monotonic, self._pauses, self._reports, self.events
        hits, batches, run = self.limiters.hits, self.batches, self.run
        blocks, wall = self.limiters.blocks, self.limiters.wall

        def enter(call: Call) -> Plan | _Admitted | None:
            model = None
            if by_model:
                model = static_model
                if model is None:
                    value = call.kwargs.get("model")
                    model = value if isinstance(value, str) else None
            tenant = None
            if by_tenant:
                if tenant_of is not None:
                    tenant = tenant_of(call)
                else:
                    ctx = current_context()
                    tenant = ctx.tenant if ctx is not None else None
            plan = plans.get((provider, model, tenant))
            if plan is None:
                plan = plan_for(provider, model, tenant)
            if not plan.active:
                return None
            if not admitting or not plan.simple:
                return plan
            now = monotonic()  # one clock reading for the pause, the store's health and the report
            if self._store_down_until > now:
                return plan
            options = plan.options
            if batches and len(plan.request_keys) > 1:
                return plan  # the limits in one round trip
            if options.provider_signals:
                until, next_read = pauses.get(plan.pause_key, _NO_PAUSE)
                if until > now or now >= next_read:  # paused, or the shared pause is due for a read
                    return plan
            held = None
            hit: HitFn = hits[options.strategy]
            if blocks is not None and options.strategy == "fixed-window":
                held, hit = blocks.held, blocks.take
            try:
                for item, key, expiry in plan.request_keys:
                    if held is not None:  # Blocks.hit written out (a used-up block: take a new one)
                        block = held.get(key)
                        if block is not None and wall() < block.until:
                            try:
                                block.left.pop()
                            except IndexError:
                                pass
                            else:
                                continue
                    if not hit(key, item.amount, expiry, 1):
                        refusal = run(request_refusal(self, options, item, plan.ids, False))
                        if self.report_due(plan):
                            run(remaining(self, call, plan, False))
                        raise self.refuse(call, refusal)
            except STORE_ERRORS as exc:
                self.store_failed(plan, exc)
                run(admission(self, call, plan, failed=True))  # a simple plan holds nothing: []
                return ADMITTED
            if plan.reports and reports.get(plan.ids[0], 0.0) <= now and events.enabled and self.report_due(plan):
                run(remaining(self, call, plan, False))
            return ADMITTED

        return enter

    def plans_seen(self) -> list[tuple[str, str | None, str | None]]:
        """(provider, model, tenant) of the keys this process has planned calls for."""
        return list(self._plans)

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

    # ------------------------------------------------------------ counts and reports

    def count_failed(self, error: BaseException) -> None:
        """The provider's count-tokens call failed: the heuristic stands in; say so, once a minute."""
        now = self.clock.monotonic()
        if now - self._count_failed_logged >= _COUNT_FAILED_LOG_EVERY:
            self._count_failed_logged = now
            _log.warning("quota: counting input tokens failed (%s); estimating instead", type(error).__name__)

    def report_due(self, plan: Plan) -> bool:
        """Whether to read the remaining of the key's limits now (and, if so, when next)."""
        every = plan.options.report_remaining
        if not plan.reports or not self.events.enabled:
            return False
        now = self.clock.monotonic()
        if self._reports.get(plan.ids[0], 0.0) > now:
            return False
        if len(self._reports) >= _PLAN_CACHE_MAX:
            self._reports.clear()
        self._reports[plan.ids[0]] = now + every
        return True

    def report(self, call: Call, limit: str, left: int, reset_in: float) -> None:
        self.events.emit(
            QuotaRemaining(
                provider=call.provider,
                operation=call.operation,
                model=call.model,
                limit=limit,
                remaining=left,
                reset_in=reset_in,
            )
        )

    # ------------------------------------------------------------ pauses

    def cached_pause(self, plan: Plan, now: float) -> tuple[float, bool]:
        """(seconds paused in the local view, whether the store must be read) at monotonic ``now``."""
        until, next_read = self._pauses.get(plan.pause_key, _NO_PAUSE)
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

    def refuse(self, call: Call, refusal: Refusal) -> QuotaExceeded:
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


def _count(call: Call, counted: Any) -> int:
    if inspect.isawaitable(counted):
        close = getattr(counted, "close", None)
        if close is not None:
            close()  # an async counter reached from a sync call: not awaited, so never started
        raise TypeError(f"count_tokens of {call.target.name or call.operation} is async, the call is sync")
    if isinstance(counted, bool) or not isinstance(counted, int) or counted < 0:
        raise TypeError(f"count_tokens returned {type(counted).__name__}, not a token count")
    return counted


async def _acount(call: Call) -> int:
    counter = call.target.count_tokens
    assert counter is not None  # Count is yielded only for targets that have one
    counted = counter(call)
    return _count(call, await counted if inspect.isawaitable(counted) else counted)


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

    # ------------------------------------------------------------ sync

    def _admit(self, call: Call, plan: Plan) -> list[Held]:
        """Admit a call :meth:`QuotaState.entrance` did not (see there for the common case)."""
        return self.state.run(admission(self.state, call, plan))

    def _settle(self, plan: Plan, held: list[Held], actual: dict[str, int] | None) -> None:
        if held:
            self.state.run(settlement(self.state, plan, held, actual))

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        enter = self.state.entrance(target)

        def admitted(call: Call) -> Any:
            plan = enter(call)
            if plan is None or plan is ADMITTED:  # nothing held: nothing to settle
                return nxt(call)
            assert isinstance(plan, Plan)
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
        enter = self.state.entrance(target)

        def admitted(call: Call) -> Iterator[Any]:
            plan = enter(call)
            if plan is None or plan is ADMITTED:
                return nxt(call)
            assert isinstance(plan, Plan)
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

    # ------------------------------------------------------------ async

    # In memory an async call has nothing to await but wait mode's sleep: without one it is
    # admitted and settled as a sync call is, on the very storage AsyncLimiters would use.

    async def _aadmit(self, call: Call, plan: Plan) -> list[Held]:
        state = self.state
        if state.in_memory and not plan.options.wait and not (plan.counts_input and call.target.count_tokens):
            return self._admit(call, plan)
        if plan.simple and state.batches and len(plan.request_keys) == 1:
            # Async fast path on Redis, as _admit's: one request limit, no pause in force or due to be read.
            now = state.clock.monotonic()
            until, next_read = state._pauses.get(plan.pause_key, _NO_PAUSE)
            hits = state.alimiters.hits()
            if (
                hits is not None
                and state._store_down_until <= now
                and (not plan.options.provider_signals or until <= now < next_read)
            ):
                return await self._ahit(call, plan, hits, now)
        return await state.arun(admission(state, call, plan))

    async def _ahit(self, call: Call, plan: Plan, hits: Any, now: float) -> list[Held]:
        state, options = self.state, plan.options
        item, key, expiry = plan.request_keys[0]
        try:
            admitted = await hits[options.strategy](key, item.amount, expiry, 1)
        except STORE_ERRORS as exc:
            state.store_failed(plan, exc)
            return await state.arun(admission(state, call, plan, failed=True))
        if not admitted:
            refusal = await state.arun(request_refusal(state, options, item, plan.ids, False))
            if state.report_due(plan):
                await state.arun(remaining(state, call, plan, False))
            raise state.refuse(call, refusal)
        if (
            plan.reports
            and state._reports.get(plan.ids[0], 0.0) <= now
            and state.events.enabled
            and state.report_due(plan)
        ):
            await state.arun(remaining(state, call, plan, False))
        return _NOTHING_HELD

    async def _asettle(self, plan: Plan, held: list[Held], actual: dict[str, int] | None) -> None:
        if not held:
            return
        if self.state.in_memory:
            self._settle(plan, held, actual)
        else:
            await self.state.arun(settlement(self.state, plan, held, actual))

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        # In memory the common case has nothing to await: admitted as a sync call is, and the handler hands
        # back the next one's awaitable, with no coroutine of its own (a refusal raises as the caller calls it,
        # inside its `await`). Anything else is awaited in `held_for`.
        enter = self.state.entrance(target, admitting=self.state.in_memory)

        def admitted(call: Call) -> Awaitable[Any]:
            plan = enter(call)
            if plan is None or plan is ADMITTED:
                return nxt(call)
            assert isinstance(plan, Plan)
            return held_for(call, plan)

        async def held_for(call: Call, plan: Plan) -> Any:
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
        enter = self.state.entrance(target, admitting=self.state.in_memory)

        async def start(call: Call) -> tuple[Plan | None, list[Held]]:
            plan = enter(call)
            if plan is None or plan is ADMITTED:
                return None, []
            assert isinstance(plan, Plan)
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
        now = self.state.wall()
        for kind, strategy, items in [("requests", options.strategy, [(i, plan.ids) for i in plan.requests])] + [
            (k, options.token_strategy, [(i, ids)]) for k, i, ids in plan.tokens
        ]:
            for item, ids in items:
                stats = lim.limiter(strategy, local).get_window_stats(item, *ids)
                rows.append(
                    {
                        "limit": label(kind, item),
                        "remaining": stats.remaining,
                        "reset_in": round(max(stats.reset_time - now, 0.0), 3),
                    }
                )
        return {
            "key": plan.label,
            "store": "local fallback" if local else "ok",
            "paused_for": round(lim.run(PauseGet(plan.pause_key, local)), 3),
            "limits": rows,
        }

    def health(self) -> dict[str, Any]:
        """For ``/ready``: the store, and remaining and reset of the keys this process has used (20 at most).

        Not ``ok`` only when the store is unreachable and ``on_store_error`` is
        ``closed``: then every call is refused, and the worker cannot serve.
        """
        state = self.state
        lim = state.limiters
        reachable = True
        if not is_memory(lim.uri):
            try:
                reachable = bool(lim.storage.check())
            except STORE_ERRORS:
                reachable = False
        keys = list(state.plans_seen())[:20]
        quotas = [self.status(provider, model, tenant) for provider, model, tenant in keys] if reachable else []
        fails_closed = state.section.base.on_store_error == "closed"
        return {
            "ok": reachable or not fails_closed,
            "store": ("memory" if is_memory(lim.uri) else "ok") if reachable else "unavailable",
            "quotas": quotas,
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

    def _share(self, call: Call, exc: BaseException) -> Ops[None]:
        """The pause a failure asks for, shared with the fleet through the store."""
        state = self.state
        seconds = state.signal_pause(call, state.runtime.classify(exc), response_headers(exc))
        return share_pause(state, call, seconds)

    def _share_headers(self, call: Call, headers: Any) -> Ops[None]:
        """The pause a successful response's rate-limit headers ask for (remaining 0 until reset).

        The headers are there when an SDK wrapper (``pipeline.wrap``) read
        them from the response; a guarded function's plain result has none.
        """
        return share_pause(self.state, call, self.state.signal_pause(call, SUCCESS, headers))

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def watched(call: Call) -> Any:
            try:
                result = nxt(call)
            except Exception as exc:
                self.state.run(self._share(call, exc))
                raise
            metadata = call._metadata  # Call.peek written out: every attempt's success reads it
            if metadata is not None:
                headers = metadata.get("response_headers")
                if headers is not None:
                    self.state.run(self._share_headers(call, headers))
            return result

        return watched

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        async def watched(call: Call) -> Any:
            try:
                result = await nxt(call)
            except Exception as exc:
                await self.state.arun(self._share(call, exc))
                raise
            metadata = call._metadata  # Call.peek written out: every attempt's success reads it
            if metadata is not None:
                headers = metadata.get("response_headers")
                if headers is not None:
                    await self.state.arun(self._share_headers(call, headers))
            return result

        return watched

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def watched(call: Call) -> Iterator[Any]:
            # A generator fails when iterated, not when called: watch the iteration.
            stream = nxt(call)
            try:
                first = True
                for chunk in stream:
                    if first:  # the response headers are known once the stream started
                        first = False
                        headers = call.peek("response_headers")
                        if headers is not None:
                            self.state.run(self._share_headers(call, headers))
                    yield chunk
            except Exception as exc:
                self.state.run(self._share(call, exc))
                raise
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()

        return watched

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        async def watched(call: Call) -> AsyncIterator[Any]:
            stream = nxt(call)
            try:
                first = True
                async for chunk in stream:
                    if first:
                        first = False
                        headers = call.peek("response_headers")
                        if headers is not None:
                            await self.state.arun(self._share_headers(call, headers))
                    yield chunk
            except Exception as exc:
                await self.state.arun(self._share(call, exc))
                raise
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

        return watched
