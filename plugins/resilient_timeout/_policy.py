"""The deadline step and the timeout policy: thin drivers around loop timers and the injected clock.

Async calls and async streams are cancelled by a loop timer
(:func:`~._timer.cancel_after`). Sync calls cannot be interrupted safely
(no signals, no killed threads): the limit is passed to the called function
when ``pass_timeout`` is on, and otherwise only checked before and after.
"""

from __future__ import annotations

from asyncio import CancelledError
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    DeadlineExceeded,
    Handler,
    Order,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)

from ._errors import AttemptTimeout, Phase
from ._events import DeadlinePassed, TimedOut, TimeoutOverrun
from ._options import TimeoutOptions
from ._timer import Expiry, cancel_after

__all__ = ["DEADLINE_KEY", "DeadlinePolicy", "TimeoutPolicy", "accepts_timeout", "remaining"]

#: ``call.metadata`` key of the call's deadline: absolute seconds on the pipeline clock's ``monotonic()``.
DEADLINE_KEY = "deadline"


def accepts_timeout(target: Target) -> bool:
    """Whether the target's calls take ``timeout=`` (``Target.accepts_timeout``; a wrapped SDK method's do): the
    limit is then passed to every attempt, as with ``pass_timeout``, whatever that option says."""
    return target.accepts_timeout


def remaining(call: Call, now: float) -> float | None:
    """Seconds left before the call's deadline (may be negative), or ``None`` when it has none."""
    meta = call._metadata
    deadline = meta.get(DEADLINE_KEY) if meta is not None else None
    return None if deadline is None else float(deadline) - now


class _Base(Policy):
    def __init__(self, section: Section[TimeoutOptions], runtime: Runtime) -> None:
        self._section = section
        self._base = section.base
        self._varies = section.varies
        self._runtime = runtime
        self._clock = runtime.clock
        self._events = runtime.events

    def _options(self, call: Call) -> TimeoutOptions:
        if not self._varies:
            return self._base
        return self._section.for_call(call.provider, call.model, call.tenant)

    def _exceeded(self, call: Call, cause: BaseException | None = None) -> DeadlineExceeded:
        deadline = call.metadata.get(DEADLINE_KEY, 0.0)
        if self._events.enabled:
            self._events.emit(
                DeadlinePassed(
                    deadline=deadline,
                    attempt=call.attempt,
                    provider=call.provider,
                    operation=call.operation,
                    model=call.model,
                )
            )
        return DeadlineExceeded(
            "The call's deadline passed before it could succeed", provider=call.provider, model=call.model
        )


class DeadlinePolicy(_Base):
    """Sets the call's one deadline (``call.metadata["deadline"]``) outside retry, and enforces it.

    Everything inside reads the same value: the timeout policy caps each
    attempt by it, the retry plugin gives up rather than wait past it, the
    bulkhead waits for a slot at most until it. A deadline already set (a
    fallback step running the chain again) is kept.
    """

    name = "deadline"
    order = Order.ROUTING + 10

    def _start(self, call: Call) -> float | None:
        meta = call.metadata
        deadline: float | None = meta.get(DEADLINE_KEY)
        if deadline is None:
            options = self._options(call)
            if not options.enabled or options.deadline is None:
                return None
            deadline = meta[DEADLINE_KEY] = self._clock.monotonic() + options.deadline
        return deadline

    def _late(self, call: Call, deadline: float, exc: Exception) -> bool:
        """Whether ``exc`` is the deadline's doing: the deadline passed and the outcome was worth retrying."""
        if isinstance(exc, DeadlineExceeded) or self._clock.monotonic() < deadline:
            return False
        return self._runtime.classify(exc).retryable

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def with_deadline(call: Call) -> Any:
            deadline = self._start(call)
            if deadline is None:
                return nxt(call)
            if self._clock.monotonic() >= deadline:
                raise self._exceeded(call)
            try:
                return nxt(call)
            except Exception as exc:
                if self._late(call, deadline, exc):
                    raise self._exceeded(call, exc) from exc
                raise

        return with_deadline

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        async def with_deadline(call: Call) -> Any:
            deadline = self._start(call)
            if deadline is None:
                return await nxt(call)
            left = deadline - self._clock.monotonic()
            if left <= 0:
                raise self._exceeded(call)
            scope = cancel_after(left)
            try:
                async with scope:
                    return await nxt(call)
            except DeadlineExceeded:
                raise  # already the deadline's error (an attempt cut at it), told once
            except Exception as exc:
                if scope.expired() or self._late(call, deadline, exc):
                    raise self._exceeded(call, exc) from exc
                raise

        return with_deadline

    # Streams: the deadline is set here and enforced between chunks by the timeout policy.
    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def with_deadline(call: Call) -> Iterator[Any]:
            self._start(call)
            return nxt(call)

        return with_deadline

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        def with_deadline(call: Call) -> AsyncIterator[Any]:
            self._start(call)
            return nxt(call)

        return with_deadline


class TimeoutPolicy(_Base):
    """Bounds each attempt (``timeout``) and each stream's chunks (``first_chunk_timeout``, ``idle_timeout``).

    The limit of an attempt is the smaller of ``timeout`` and what is left of
    the call's deadline; when the deadline is the tighter one, running out
    raises :class:`~resilient.DeadlineExceeded` (not retried) instead of
    :class:`AttemptTimeout` (retried).
    """

    name = "timeout"
    order = Order.TIMEOUT

    def __init__(self, section: Section[TimeoutOptions], runtime: Runtime, *, deadlines: bool) -> None:
        super().__init__(section, runtime)
        #: Whether a deadline step is in the pipeline (else there is no deadline to read).
        self._deadlines = deadlines

    def _expired(self, call: Call, phase: Phase, limit: float) -> AttemptTimeout:
        if self._events.enabled:
            self._events.emit(
                TimedOut(
                    phase=phase,
                    limit=limit,
                    attempt=call.attempt,
                    provider=call.provider,
                    operation=call.operation,
                    model=call.model,
                )
            )
        return AttemptTimeout(phase, limit, provider=call.provider, model=call.model)

    def _limit(self, call: Call, limit: float | None) -> tuple[float | None, bool]:
        """``limit`` capped by the deadline; True when the deadline is the binding one. Raises past it."""
        if not self._deadlines:
            return limit, False
        left = remaining(call, self._clock.monotonic())
        if left is None:
            return limit, False
        if left <= 0:
            raise self._exceeded(call)
        if limit is None or left < limit:
            return left, True
        return limit, False

    @staticmethod
    def _pass(call: Call, options: TimeoutOptions, limit: float) -> None:
        """Give the called function the limit as ``timeout=``, unless it was given a smaller number."""
        kwargs, key = call.kwargs, options.timeout_kwarg
        given = kwargs.get(key)
        if given is None or (isinstance(given, (int, float)) and not isinstance(given, bool) and given > limit):
            kwargs[key] = limit

    def _fixed(self, passes: bool) -> float | None:
        """The one attempt limit every call gets, when nothing varies per call (the fast path)."""
        base = self._base
        if self._varies or self._deadlines or passes or base.pass_timeout or not base.enabled:
            return None
        return base.timeout

    # ------------------------------------------------------------ sync

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        base = self._base
        if not self._varies and not self._deadlines and (base.timeout is None or not base.enabled):
            return nxt
        passes = accepts_timeout(target)
        if not self._varies and not self._deadlines and not (base.pass_timeout or passes) and not self._events.enabled:
            return nxt  # a sync call without a hook cannot be bounded, and nobody listens for overruns
        clock = self._clock

        def timed(call: Call) -> Any:
            options = self._options(call)
            if not options.enabled:
                return nxt(call)
            limit, by_deadline = self._limit(call, options.timeout)
            if limit is None:
                return nxt(call)
            if passes or options.pass_timeout:
                self._pass(call, options, limit)
                try:
                    return nxt(call)
                except Exception as exc:
                    late = by_deadline and clock.monotonic() >= (call.metadata.get(DEADLINE_KEY) or 0.0)
                    if late and self._runtime.classify(exc).kind == "timeout":
                        raise self._exceeded(call, exc) from exc
                    raise
            # Nothing can stop a sync call without a hook: note that it ran over, keep its result.
            start = clock.monotonic()
            result = nxt(call)
            elapsed = clock.monotonic() - start
            if elapsed > limit and self._events.enabled:
                self._events.emit(
                    TimeoutOverrun(
                        limit=limit,
                        elapsed=elapsed,
                        attempt=call.attempt,
                        provider=call.provider,
                        operation=call.operation,
                        model=call.model,
                    )
                )
            return result

        return timed

    # ------------------------------------------------------------ async

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        base = self._base
        if not self._varies and not self._deadlines and (base.timeout is None or not base.enabled):
            return nxt
        passes = accepts_timeout(target)
        fixed = self._fixed(passes)
        if fixed is not None:

            async def timed_fixed(call: Call) -> Any:
                expiry = Expiry(fixed)
                try:
                    result = await nxt(call)
                except BaseException as exc:
                    if expiry.stop() and isinstance(exc, CancelledError):
                        raise self._expired(call, "attempt", fixed) from exc
                    raise
                expiry.stop()
                return result

            return timed_fixed

        async def timed(call: Call) -> Any:
            options = self._options(call)
            if not options.enabled:
                return await nxt(call)
            limit, by_deadline = self._limit(call, options.timeout)
            if limit is None:
                return await nxt(call)
            if passes or options.pass_timeout:
                self._pass(call, options, limit)
            expiry = Expiry(limit)
            try:
                result = await nxt(call)
            except BaseException as exc:
                if not (expiry.stop() and isinstance(exc, CancelledError)):
                    raise
                if by_deadline:
                    raise self._exceeded(call, exc) from exc
                raise self._expired(call, "attempt", limit) from exc
            expiry.stop()
            return result

        return timed

    # ------------------------------------------------------------ streams

    def _stream_limits(
        self, call: Call, passes: bool = False
    ) -> tuple[TimeoutOptions, float | None, float | None] | None:
        options = self._options(call)
        if not options.enabled:
            return None
        first, idle = options.first_chunk_timeout, options.idle_timeout
        if first is None and idle is None and remaining(call, 0.0) is None:
            return None
        if (passes or options.pass_timeout) and idle is not None:
            self._pass(call, options, idle)  # an HTTP client's read timeout is an idle limit
        return options, first, idle

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        base = self._base
        if (
            not self._varies
            and not self._deadlines
            and (not base.enabled or (base.first_chunk_timeout is None and base.idle_timeout is None))
        ):
            return nxt

        passes = accepts_timeout(target)

        def timed(call: Call) -> Iterator[Any]:
            limits = self._stream_limits(call, passes)
            if limits is None:
                return nxt(call)
            return self._stream(call, nxt(call), limits[1], limits[2])

        return timed

    def _stream(
        self, call: Call, it: Iterator[Any], first: float | None, idle: float | None
    ) -> Generator[Any, Any, Any]:
        # A sync stream cannot be interrupted while it blocks: a chunk that comes too late ends it.
        clock = self._clock
        limit: float | None = first
        phase: Phase = "first_chunk"
        try:
            start = clock.monotonic()
            while True:
                try:
                    chunk = next(it)
                except StopIteration as stop:
                    return stop.value
                now = clock.monotonic()
                capped, by_deadline = self._limit(call, limit)
                if capped is not None and now - start > capped:
                    if by_deadline:
                        raise self._exceeded(call)
                    raise self._expired(call, phase, capped)
                yield chunk
                start = clock.monotonic()
                limit, phase = idle, "idle"
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        base = self._base
        if (
            not self._varies
            and not self._deadlines
            and (not base.enabled or (base.first_chunk_timeout is None and base.idle_timeout is None))
        ):
            return nxt

        passes = accepts_timeout(target)

        def timed(call: Call) -> AsyncIterator[Any]:
            limits = self._stream_limits(call, passes)
            if limits is None:
                return nxt(call)
            return self._astream(call, nxt(call), limits[1], limits[2])

        return timed

    async def _astream(
        self, call: Call, it: AsyncIterator[Any], first: float | None, idle: float | None
    ) -> AsyncIterator[Any]:
        limit: float | None = first
        phase: Phase = "first_chunk"
        try:
            while True:
                capped, by_deadline = self._limit(call, limit)
                if capped is None:
                    try:
                        chunk = await anext(it)
                    except StopAsyncIteration:
                        return
                else:
                    # Only the wait for the provider is timed, not the consumer's work between chunks.
                    scope = cancel_after(capped)
                    try:
                        async with scope:
                            chunk = await anext(it)
                    except StopAsyncIteration:
                        return
                    except TimeoutError as exc:
                        if not scope.expired():
                            raise
                        if by_deadline:
                            raise self._exceeded(call, exc) from exc
                        raise self._expired(call, phase, capped) from exc
                yield chunk
                limit, phase = idle, "idle"
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
