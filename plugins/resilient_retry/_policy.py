"""The retry policy: one decision function, four thin drivers (sync, async, streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    Handler,
    Order,
    Outcome,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)

from ._backoff import next_delay
from ._budget import RetryBudget
from ._events import RetryGaveUp, RetryScheduled
from ._options import RetryOptions

__all__ = ["RetryPolicy"]


class RetryPolicy(Policy):
    """Retries retryable failures; raises the last error, unchanged, when it gives up.

    A stream is retried only while it has not produced its first chunk: once
    a chunk reached the caller, an error mid-stream propagates.
    """

    name = "retry"
    order = Order.RETRY

    def __init__(self, section: Section[RetryOptions], runtime: Runtime) -> None:
        self._section = section
        self._runtime = runtime
        self._clock = runtime.clock
        self._events = runtime.events
        base = section.base
        self._budget: RetryBudget | None = None
        if base.budget_ratio is not None or section.varies:
            core = runtime.settings.core
            self._budget = RetryBudget(core.store, core.key_prefix, base.budget_window, runtime.clock)

    def _options(self, call: Call) -> RetryOptions:
        section = self._section
        return section.for_call(call.provider, call.model, call.tenant) if section.varies else section.base

    def _decide(self, call: Call, options: RetryOptions, exc: BaseException, start: float) -> tuple[float | None, str]:
        """Classify ``exc``; the delay before the next attempt (None: re-raise) and why not."""
        outcome = self._runtime.classify(exc)
        call.outcome = outcome
        if not options.enabled:  # turned off for this provider, model or tenant
            return None, "disabled"
        now = self._clock.monotonic()
        delay, reason = next_delay(options, outcome, call.attempt, now - start, self._runtime.random)
        # The call's one deadline, set outside retry by the timeout plugin's deadline step.
        meta = call._metadata
        deadline = meta.get("deadline") if meta is not None else None
        if delay is not None and deadline is not None and now + delay >= deadline:
            return None, "deadline"
        return delay, reason

    def _outcome(self, call: Call, delay: float | None, reason: str) -> float | None:
        if self._events.enabled and call.outcome is not None:
            self._emit(call, call.outcome, delay, reason)
        return delay

    def _within_budget(self, call: Call, options: RetryOptions) -> bool:
        budget, ratio = self._budget, options.budget_ratio
        if budget is None or ratio is None:
            return True
        return budget.spend(call.provider, ratio, options.budget_min)

    async def _awithin_budget(self, call: Call, options: RetryOptions) -> bool:
        budget, ratio = self._budget, options.budget_ratio
        if budget is None or ratio is None:
            return True
        return await budget.aspend(call.provider, ratio, options.budget_min)

    def _decide_sync(self, call: Call, options: RetryOptions, exc: BaseException, start: float) -> float | None:
        delay, reason = self._decide(call, options, exc, start)
        if delay is not None and not self._within_budget(call, options):
            delay, reason = None, "budget"
        return self._outcome(call, delay, reason)

    async def _decide_async(self, call: Call, options: RetryOptions, exc: BaseException, start: float) -> float | None:
        delay, reason = self._decide(call, options, exc, start)
        if delay is not None and not await self._awithin_budget(call, options):
            delay, reason = None, "budget"
        return self._outcome(call, delay, reason)

    def _emit(self, call: Call, outcome: Outcome, delay: float | None, reason: str) -> None:
        common = {"provider": call.provider, "operation": call.operation, "model": call.model}
        if delay is None:
            if reason not in ("not_retryable", "disabled") or call.attempt > 1:
                self._events.emit(
                    RetryGaveUp(
                        attempts=call.attempt, reason=reason, outcome=outcome.kind, status=outcome.status, **common
                    )
                )
        else:
            self._events.emit(
                RetryScheduled(attempt=call.attempt, delay=delay, outcome=outcome.kind, status=outcome.status, **common)
            )

    def close(self) -> None:
        if self._budget is not None:
            self._budget.close()

    async def aclose(self) -> None:
        if self._budget is not None:
            self._budget.close()
            await self._budget.aclose()

    def _start_clock(self) -> Callable[[], float]:
        """What reads the start of a call: the clock when a deadline may apply, else a constant.

        Without any deadline configured the start time is never used, so
        the success path skips the clock read.
        """
        section = self._section
        if section.varies or section.base.deadline is not None:
            return self._clock.monotonic
        return _zero

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        monotonic = self._start_clock()
        timed = monotonic is not _zero
        # The budget's call count, incremented inline (RetryBudget.note_call): this runs on every call.
        calls = self._budget._calls if self._budget is not None else None

        def retrying(call: Call) -> Any:
            start = monotonic() if timed else 0.0
            if calls is not None:
                provider = call.target.provider
                calls[provider] = calls.get(provider, 0) + 1
            try:
                return nxt(call)
            except Exception as exc:
                error: Exception = exc
            options = self._options(call)
            while True:
                delay = self._decide_sync(call, options, error, start)
                if delay is None:
                    raise error
                self._clock.sleep(delay)
                call.attempt += 1
                try:
                    return nxt(call)
                except Exception as exc:
                    error = exc

        return retrying

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        monotonic = self._start_clock()
        timed = monotonic is not _zero
        calls = self._budget._calls if self._budget is not None else None

        async def retrying(call: Call) -> Any:
            start = monotonic() if timed else 0.0
            if calls is not None:
                provider = call.target.provider
                calls[provider] = calls.get(provider, 0) + 1
            try:
                return await nxt(call)
            except Exception as exc:
                error: Exception = exc
            options = self._options(call)
            while True:
                delay = await self._decide_async(call, options, error, start)
                if delay is None:
                    raise error
                await self._clock.asleep(delay)
                call.attempt += 1
                try:
                    return await nxt(call)
                except Exception as exc:
                    error = exc

        return retrying

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def retrying(call: Call) -> Iterator[Any]:
            start = self._clock.monotonic()
            if self._budget is not None:
                self._budget.note_call(call.provider)
            while True:
                it = nxt(call)
                try:
                    first = next(it)
                except StopIteration:
                    return iter(())
                except Exception as exc:
                    delay = self._decide_sync(call, self._options(call), exc, start)
                    if delay is None:
                        raise
                    self._clock.sleep(delay)
                    call.attempt += 1
                    continue
                return _resume(first, it)

        return retrying

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        async def first_chunk(call: Call) -> tuple[Any, AsyncIterator[Any]] | None:
            start = self._clock.monotonic()
            if self._budget is not None:
                self._budget.note_call(call.provider)
            while True:
                it = nxt(call)
                try:
                    first = await anext(it)
                except StopAsyncIteration:
                    return None
                except Exception as exc:
                    delay = await self._decide_async(call, self._options(call), exc, start)
                    if delay is None:
                        raise
                    await self._clock.asleep(delay)
                    call.attempt += 1
                    continue
                return first, it

        def retrying(call: Call) -> AsyncIterator[Any]:
            return _aresume(first_chunk(call))

        return retrying


def _zero() -> float:
    # The start of a call when no deadline can apply: never read.
    return 0.0


def _resume(first: Any, it: Iterator[Any]) -> Generator[Any, Any, Any]:
    """Yield ``first`` then the rest of ``it``; closing this closes ``it``."""
    try:
        yield first
    except GeneratorExit:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        raise
    return (yield from it)


async def _aresume(started: Awaitable[tuple[Any, AsyncIterator[Any]] | None]) -> AsyncIterator[Any]:
    pair = await started
    if pair is None:
        return
    first, it = pair
    try:
        yield first
        async for chunk in it:
            yield chunk
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
