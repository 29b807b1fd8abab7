"""The fallback policy: the primary call, then each configured step in order, at most once each."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    ConfigurationError,
    Handler,
    Order,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)

from ._events import FallbackExhausted, FallbackUsed
from ._options import FallbackOptions
from ._steps import Fallback, Step, Triggers, parse_steps, parse_triggers, reason_for

__all__ = ["FALLBACK_STEP", "FallbackPolicy", "register"]

#: ``call.metadata`` key naming the step that produced the answer (``model:...``, ``call:...``); absent: the primary.
FALLBACK_STEP = "fallback_step"

_REGISTRY: dict[str, Fallback] = {}

Plan = tuple[tuple[Step, ...], Triggers]


def register(name: str, fn: Fallback) -> None:
    """Make ``fn`` usable as a step ``{call = "<name>"}``: ``fn(call, error)`` returns the answer.

    For async calls it may return an awaitable; for streams, an iterator (or
    async iterator) of chunks. Register before the pipeline is built.
    """
    _REGISTRY[name] = fn


class FallbackPolicy(Policy):
    """Tries the configured steps in order when the primary call fails with a trigger; the first success wins.

    A step is tried at most once per call. An error that is not a trigger --
    above all a 4xx caused by the caller's own request -- is raised at once,
    from the primary or from a step. When every step failed, the primary's
    error is raised (it is why the call fell back).
    """

    name = "fallback"
    order = Order.FALLBACK

    def __init__(
        self, section: Section[FallbackOptions], runtime: Runtime, *, fallbacks: Mapping[str, Fallback] | None = None
    ) -> None:
        self._section = section
        self._varies = section.varies
        self._runtime = runtime
        self._classify = runtime.classify
        self._events = runtime.events
        self._registry = {**_REGISTRY, **(fallbacks or {})}
        # id(options) -> (options, plan); the options object is kept so its id stays unique.
        self._plans: dict[int, tuple[FallbackOptions, Plan | None]] = {}
        self._base_plan = self._plan_of(section.base, "fallback")
        for kind, names in _overrides(section).items():
            for name in names:
                where = f"fallback.{kind}.{name}"
                args = {"provider": None, "model": None, "tenant": None, kind[:-1]: name}
                self._plan_of(section.for_call(args["provider"], args["model"], args["tenant"]), where)

    def _plan_of(self, options: FallbackOptions, key: str) -> Plan | None:
        found = self._plans.get(id(options))
        if found is not None and found[0] is options:
            return found[1]
        plan: Plan | None = None
        if options.enabled and options.steps:
            plan = (parse_steps(options.steps, self._registry, f"{key}.steps"), parse_triggers(options, key))
        if len(self._plans) < 10_000:
            self._plans[id(options)] = (options, plan)
        return plan

    def _plan(self, call: Call) -> Plan | None:
        if not self._varies:
            return self._base_plan
        return self._plan_of(self._section.for_call(call.provider, call.model, call.tenant), "fallback")

    def _stays_out(self) -> bool:
        return not self._varies and self._base_plan is None

    def _check(self, target: Target) -> None:
        if target.model is None:
            return
        plans = [plan for _, plan in self._plans.values() if plan is not None]
        if any(step.kind == "model" for steps, _ in plans for step in steps):
            raise ConfigurationError(
                "fallback.steps",
                f"model step for {target.name or target.operation}",
                f"needs the model passed as the call's `model` argument, not fixed by guard(model={target.model!r})",
            )

    # ------------------------------------------------------------ the steps, shared by every driver

    def _start(self, call: Call, primary: Exception) -> tuple[Plan, str] | None:
        plan = self._plan(call)
        if plan is None or not plan[0]:
            return None
        reason = reason_for(primary, plan[1], self._classify)
        return None if reason is None else (plan, reason)

    def _enter(self, call: Call, step: Step, kwargs: dict[str, Any]) -> None:
        """Set the call up for ``step``: metadata (routing leaves it alone), the model, a fresh attempt count."""
        call.metadata[FALLBACK_STEP] = step.name
        if step.kind == "model":
            call.kwargs = {**kwargs, "model": step.value}
            call.attempt = 1
            call.outcome = None

    def _moves_on(self, call: Call, error: Exception, triggers: Triggers) -> bool:
        if reason_for(error, triggers, self._classify) is None:
            call.metadata.pop(FALLBACK_STEP, None)
            return False
        return True

    def _used(self, call: Call, step: Step, index: int, reason: str, model: str | None) -> None:
        if self._events.enabled:
            self._events.emit(
                FallbackUsed(
                    step=step.name,
                    index=index,
                    reason=reason,
                    from_model=model if step.kind == "model" else None,
                    to_model=step.value if step.kind == "model" else None,
                    provider=call.provider,
                    operation=call.operation,
                    model=model,
                )
            )

    def _exhausted(self, call: Call, steps: tuple[Step, ...], reason: str, model: str | None) -> None:
        call.metadata.pop(FALLBACK_STEP, None)
        if self._events.enabled:
            self._events.emit(
                FallbackExhausted(
                    tried=tuple(s.name for s in steps),
                    reason=reason,
                    provider=call.provider,
                    operation=call.operation,
                    model=model,
                )
            )

    # ------------------------------------------------------------ sync and async

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        if self._stays_out():
            return nxt
        self._check(target)

        def with_fallback(call: Call) -> Any:
            try:
                return nxt(call)
            except Exception as exc:
                started = self._start(call, exc)
                if started is None:
                    raise
                return self._fall_back(call, exc, started, nxt)

        return with_fallback

    def _fall_back(self, call: Call, primary: Exception, started: tuple[Plan, str], nxt: Handler) -> Any:
        (steps, triggers), reason = started
        kwargs, model, error = call.kwargs, call.model, primary
        for index, step in enumerate(steps):
            self._enter(call, step, kwargs)
            try:
                result = step.fn(call, error) if step.fn is not None else nxt(call)
            except Exception as exc:
                if not self._moves_on(call, exc, triggers):
                    raise
                error = exc
                continue
            self._used(call, step, index, reason, model)
            return result
        self._exhausted(call, steps, reason, model)
        raise primary

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        if self._stays_out():
            return nxt
        self._check(target)

        async def with_fallback(call: Call) -> Any:
            try:
                return await nxt(call)
            except Exception as exc:
                started = self._start(call, exc)
                if started is None:
                    raise
                return await self._afall_back(call, exc, started, nxt)

        return with_fallback

    async def _afall_back(self, call: Call, primary: Exception, started: tuple[Plan, str], nxt: AsyncHandler) -> Any:
        (steps, triggers), reason = started
        kwargs, model, error = call.kwargs, call.model, primary
        for index, step in enumerate(steps):
            self._enter(call, step, kwargs)
            try:
                if step.fn is not None:
                    result = step.fn(call, error)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    result = await nxt(call)
            except Exception as exc:
                if not self._moves_on(call, exc, triggers):
                    raise
                error = exc
                continue
            self._used(call, step, index, reason, model)
            return result
        self._exhausted(call, steps, reason, model)
        raise primary

    # ------------------------------------------------------------ streams: fall back until the first chunk

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        if self._stays_out():
            return nxt
        self._check(target)

        def with_fallback(call: Call) -> Iterator[Any]:
            return self._stream(call, nxt)

        return with_fallback

    def _stream(self, call: Call, nxt: StreamHandler) -> Generator[Any, Any, Any]:
        opened = self._open(call, nxt)
        if opened is None:
            return None
        first, it = opened
        try:
            yield first
        except GeneratorExit:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            raise
        return (yield from it)

    def _open(self, call: Call, nxt: StreamHandler) -> tuple[Any, Iterator[Any]] | None:
        """The first chunk and the rest, from the primary or the first step that gets that far."""
        try:
            return _first(nxt(call))
        except Exception as exc:
            started = self._start(call, exc)
            if started is None:
                raise
            primary = exc
        (steps, triggers), reason = started
        kwargs, model, error = call.kwargs, call.model, primary
        for index, step in enumerate(steps):
            self._enter(call, step, kwargs)
            try:
                opened = _first(iter(step.fn(call, error)) if step.fn is not None else nxt(call))
            except Exception as exc:
                if not self._moves_on(call, exc, triggers):
                    raise
                error = exc
                continue
            self._used(call, step, index, reason, model)
            return opened
        self._exhausted(call, steps, reason, model)
        raise primary

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        if self._stays_out():
            return nxt
        self._check(target)

        def with_fallback(call: Call) -> AsyncIterator[Any]:
            return self._astream(call, nxt)

        return with_fallback

    async def _astream(self, call: Call, nxt: AsyncStreamHandler) -> AsyncIterator[Any]:
        opened = await self._aopen(call, nxt)
        if opened is None:
            return
        first, it = opened
        try:
            yield first
            async for chunk in it:
                yield chunk
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _aopen(self, call: Call, nxt: AsyncStreamHandler) -> tuple[Any, AsyncIterator[Any]] | None:
        try:
            return await _afirst(nxt(call))
        except Exception as exc:
            started = self._start(call, exc)
            if started is None:
                raise
            primary = exc
        (steps, triggers), reason = started
        kwargs, model, error = call.kwargs, call.model, primary
        for index, step in enumerate(steps):
            self._enter(call, step, kwargs)
            try:
                source = nxt(call) if step.fn is None else await _as_async_iterator(step.fn(call, error))
                opened = await _afirst(source)
            except Exception as exc:
                if not self._moves_on(call, exc, triggers):
                    raise
                error = exc
                continue
            self._used(call, step, index, reason, model)
            return opened
        self._exhausted(call, steps, reason, model)
        raise primary


def _first(it: Iterator[Any]) -> tuple[Any, Iterator[Any]] | None:
    try:
        first = next(it)
    except StopIteration:
        return None
    return first, it


async def _afirst(it: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]] | None:
    try:
        first = await anext(it)
    except StopAsyncIteration:
        return None
    return first, it


async def _as_async_iterator(answer: Any) -> AsyncIterator[Any]:
    """What a fallback function gave for an async stream: an async iterator, an iterable, or an awaitable of one."""
    if inspect.isawaitable(answer) and not hasattr(answer, "__aiter__"):
        answer = await answer
    if hasattr(answer, "__aiter__"):
        return aiter(answer)
    return _from_sync(iter(answer))


async def _from_sync(it: Iterator[Any]) -> AsyncIterator[Any]:
    for chunk in it:
        yield chunk


def _overrides(section: Section[FallbackOptions]) -> dict[str, list[str]]:
    """The names under ``providers``, ``models`` and ``tenants`` (to check every override at build)."""
    raw: dict[str, dict[str, Any]] = getattr(section, "_overrides", {})
    return {kind: list(raw.get(kind, {})) for kind in ("providers", "models", "tenants")}
