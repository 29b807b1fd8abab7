"""The timeout plugin: attempts, streams and the one deadline, on a virtual-time event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_breaker
import resilient_retry
import resilient_timeout
from resilient import CircuitOpen, DeadlineExceeded, Pipeline, PluginError, capture_calls
from resilient.providers import classify
from resilient.testing import FakeClock
from resilient_timeout import AttemptTimeout, DeadlinePolicy, TimeoutPolicy

from ._policies import Collect
from ._virtual_time import run


def build(
    clock: FakeClock,
    observer: Collect | None = None,
    *,
    retry: dict[str, Any] | None = None,
    breaker: dict[str, Any] | None = None,
    **timeout: Any,
) -> Pipeline:
    plugins: list[object] = [resilient_timeout]
    config: dict[str, Any] = {"timeout": timeout}
    if retry is not None:
        plugins.append(resilient_retry)
        config["retry"] = {"budget_ratio": None, **retry}
    if breaker is not None:
        plugins.append(resilient_breaker)
        config["breaker"] = breaker
    if observer is not None:
        plugins.append(observer)
    return Pipeline(plugins=plugins, discover=False, env={}, config=config, clock=clock)


def named(observer: Collect, name: str) -> list[Any]:
    return [e for e in observer.events if e.name == name]


class SlowProvider:
    """An async provider taking the given seconds per call (on the loop's clock); records what it was given."""

    def __init__(self, latencies: list[float], clock: FakeClock) -> None:
        self.latencies = list(latencies)
        self.clock = clock
        self.calls = 0
        self.kwargs: list[dict[str, Any]] = []
        self.started: list[float] = []
        self.finished: list[float] = []
        self.ended: list[float] = []  # every attempt's end, finished or cancelled
        self.cancelled = 0

    async def __call__(self, **kwargs: Any) -> str:
        index = self.calls
        self.calls += 1
        self.kwargs.append(kwargs)
        self.started.append(self.clock.monotonic())
        try:
            await asyncio.sleep(self.latencies[index] if index < len(self.latencies) else 0.0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.ended.append(self.clock.monotonic())
        self.finished.append(self.clock.monotonic())
        return f"answer {index}"


# ---------------------------------------------------------------- the plugin's shape


def test_nothing_configured_contributes_no_policy(clock: FakeClock) -> None:
    assert build(clock).policies == ()


def test_a_deadline_adds_the_deadline_step_outside_retry(clock: FakeClock) -> None:
    pipeline = build(clock, retry={}, timeout=2, deadline=10)
    names = [p.name for p in pipeline.policies]
    assert names == ["deadline", "retry", "timeout"]
    assert isinstance(pipeline.policies[0], DeadlinePolicy)
    assert isinstance(pipeline.policies[2], TimeoutPolicy)


def test_two_deadlines_that_disagree_are_a_configuration_error(clock: FakeClock) -> None:
    with pytest.raises(PluginError, match=r"timeout.deadline = 5.0: disagrees with retry.deadline = 9"):
        build(clock, retry={"deadline": 9}, deadline=5)
    build(clock, retry={"deadline": 5}, deadline=5)  # the same value is one deadline


def test_timeouts_are_retryable_provider_faults() -> None:
    outcome = classify(AttemptTimeout("attempt", 2.0, provider="p", model="m"))
    assert (outcome.kind, outcome.retryable, outcome.provider_fault) == ("timeout", True, True)
    assert classify(AttemptTimeout("idle", 1.0)).kind == "timeout"
    refused = classify(DeadlineExceeded())
    assert (refused.kind, refused.retryable) == ("refused", False)
    assert DeadlineExceeded().to_problem()["status"] == 504


# ---------------------------------------------------------------- async attempts


def test_an_async_attempt_is_cancelled_at_its_timeout(clock: FakeClock) -> None:
    observer = Collect()
    provider = SlowProvider([5.0], clock)
    guarded = build(clock, observer, timeout=2).guard(provider="p", model="m")(provider)
    with pytest.raises(AttemptTimeout) as info:
        run(clock, guarded())
    assert clock.monotonic() == pytest.approx(2.0)
    assert provider.cancelled == 1
    assert provider.finished == []
    assert (info.value.phase, info.value.limit, info.value.provider, info.value.model) == ("attempt", 2.0, "p", "m")
    [event] = named(observer, "timeout.expired")
    assert (event.phase, event.limit, event.attempt, event.provider) == ("attempt", 2.0, 1, "p")


def test_a_fast_async_call_is_untouched(clock: FakeClock) -> None:
    provider = SlowProvider([1.0], clock)
    guarded = build(clock, timeout=2).guard(provider="p")(provider)
    assert run(clock, guarded()) == "answer 0"
    assert clock.monotonic() == pytest.approx(1.0)


def test_an_error_raised_by_the_provider_passes_through(clock: FakeClock) -> None:
    async def own_timeout() -> None:
        raise TimeoutError("the provider's own")

    guarded = build(clock, timeout=2).guard(provider="p")(own_timeout)
    with pytest.raises(TimeoutError, match="the provider's own") as info:
        run(clock, guarded())
    assert not isinstance(info.value, AttemptTimeout)


@pytest.mark.parametrize("at", [1.0, 2.0])
def test_an_outer_cancellation_stays_a_cancellation(clock: FakeClock, at: float) -> None:
    # Cancelled by its caller before (1.0) or at the same instant as (2.0) its own timeout fires.
    provider = SlowProvider([5.0], clock)
    guarded = build(clock, timeout=2).guard(provider="p")(provider)

    async def scenario() -> None:
        task = asyncio.ensure_future(guarded())
        await asyncio.sleep(at)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        run(clock, scenario())
    assert provider.cancelled == 1


def test_a_result_that_beats_the_timer_in_the_same_instant_is_a_timeout_or_the_result(clock: FakeClock) -> None:
    provider = SlowProvider([2.0], clock)
    guarded = build(clock, timeout=2).guard(provider="p")(provider)
    try:
        assert run(clock, guarded()) == "answer 0"
    except AttemptTimeout:
        pass
    assert clock.monotonic() == pytest.approx(2.0)


def test_retry_gives_each_attempt_its_own_timeout(clock: FakeClock) -> None:
    provider = SlowProvider([5.0, 5.0, 1.0], clock)
    guarded = build(clock, retry={"max_attempts": 3, "base_delay": 0.0, "max_delay": 0.0}, timeout=2).guard(
        provider="p"
    )(provider)
    assert run(clock, guarded()) == "answer 2"
    assert provider.calls == 3
    assert provider.cancelled == 2
    assert clock.monotonic() == pytest.approx(5.0)


def test_the_deadline_caps_attempts_and_retries(clock: FakeClock) -> None:
    observer = Collect()
    provider = SlowProvider([3.0] * 10, clock)
    pipeline = build(
        clock, observer, retry={"max_attempts": 10, "base_delay": 0.5, "max_delay": 0.5}, timeout=2, deadline=5
    )
    guarded = pipeline.guard(provider="p", model="m")(provider)
    with capture_calls() as calls, pytest.raises(DeadlineExceeded) as info:
        run(clock, guarded())
    assert clock.monotonic() <= 5.0 + 1e-9
    assert info.value.provider == "p"
    assert info.value.to_problem()["status"] == 504
    assert calls[0].metadata["deadline"] == pytest.approx(5.0)
    assert len(named(observer, "timeout.deadline_exceeded")) == 1


def test_retry_does_not_wait_past_the_deadline(clock: FakeClock) -> None:
    observer = Collect()
    provider = SlowProvider([3.0] * 10, clock)
    retry = {"max_attempts": 10, "base_delay": 4.0, "max_delay": 4.0}
    guarded = build(clock, observer, retry=retry, timeout=2, deadline=5).guard(provider="p")(provider)
    with pytest.raises((AttemptTimeout, DeadlineExceeded)):
        run(
            clock,
            guarded(),
        )
    # Attempt 1 timed out at 2 s; a backoff of up to 4 s may end past 5 s: retry gives up at once (or
    # the next attempt is cut at the deadline). Either way the call ends by its deadline.
    assert clock.monotonic() <= 5.0 + 1e-9


def test_retry_gives_up_rather_than_wait_past_the_shared_deadline(clock: FakeClock) -> None:
    observer = Collect()
    provider = SlowProvider([3.0] * 10, clock)
    config = {
        "timeout": {"timeout": 2, "deadline": 5},
        "retry": {"max_attempts": 10, "base_delay": 4.0, "max_delay": 4.0, "budget_ratio": None},
    }
    pipeline = Pipeline(
        plugins=[resilient_timeout, resilient_retry, observer],
        discover=False,
        env={},
        config=config,
        clock=clock,
        random=lambda: 1.0,  # every backoff is the full 4 s
    )
    guarded = pipeline.guard(provider="p")(provider)
    with pytest.raises(AttemptTimeout):  # retry raises the last error, unchanged
        run(clock, guarded())
    [gave_up] = named(observer, "retry.gave_up")
    assert (gave_up.reason, gave_up.attempts) == ("deadline", 1)
    assert clock.monotonic() == pytest.approx(2.0)  # 2 + 4 would end past 5: no wait at all
    assert provider.calls == 1


def test_a_deadline_alone_bounds_an_async_call(clock: FakeClock) -> None:
    provider = SlowProvider([60.0], clock)
    guarded = build(clock, deadline=3).guard(provider="p")(provider)
    with pytest.raises(DeadlineExceeded):
        run(clock, guarded())
    assert clock.monotonic() == pytest.approx(3.0)
    assert provider.cancelled == 1


def test_breaker_counts_timeouts_as_failures(clock: FakeClock) -> None:
    provider = SlowProvider([5.0] * 10, clock)
    breaker = {"minimum_calls": 2, "window_size": 2, "failure_rate": 0.5, "wait_open": 30}
    guarded = build(clock, breaker=breaker, timeout=1).guard(provider="p", model="m")(provider)
    for _ in range(2):
        with pytest.raises(AttemptTimeout):
            run(clock, guarded())
    with pytest.raises(CircuitOpen):
        run(clock, guarded())
    assert provider.calls == 2


@settings(max_examples=60, deadline=None)
@given(
    latencies=st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=8),
    timeout=st.floats(min_value=0.1, max_value=10.0),
    deadline=st.one_of(st.none(), st.floats(min_value=0.1, max_value=30.0)),
    attempts=st.integers(min_value=1, max_value=6),
    delay=st.floats(min_value=0.0, max_value=5.0),
)
def test_no_call_outlives_its_timeout_or_deadline(
    latencies: list[float], timeout: float, deadline: float | None, attempts: int, delay: float
) -> None:
    clock = FakeClock()
    provider = SlowProvider(latencies, clock)
    retry = {"max_attempts": attempts, "base_delay": delay, "max_delay": delay}
    guarded = build(clock, retry=retry, timeout=timeout, deadline=deadline).guard(provider="p")(provider)
    try:
        result: str | None = run(clock, guarded())
    except (AttemptTimeout, DeadlineExceeded):
        result = None
    elapsed = clock.monotonic()
    slack = 1e-6  # the virtual loop has no scheduling delay; float rounding only
    if deadline is not None:
        assert elapsed <= deadline + slack
    assert provider.calls <= attempts
    # No attempt outlived its limit: each one ended (or was cancelled) within `timeout` of its start.
    assert len(provider.ended) == provider.calls
    for start, end in zip(provider.started, provider.ended, strict=True):
        assert end - start <= timeout + slack
    if result is not None:
        index = int(result.split()[1])
        assert latencies[index] <= timeout + slack if index < len(latencies) else True
    else:
        assert provider.cancelled >= 1 or provider.calls == 0


# ---------------------------------------------------------------- sync


def test_sync_passes_the_limit_to_the_sdk(clock: FakeClock) -> None:
    seen: list[Any] = []

    def create(**kwargs: Any) -> str:
        seen.append(kwargs.get("timeout"))
        return "ok"

    guarded = build(clock, timeout=2, pass_timeout=True).guard(provider="anthropic")(create)
    assert guarded() == "ok"
    assert seen == [2.0]
    assert guarded(timeout=1) == "ok"
    assert seen[-1] == 1
    assert guarded(timeout=9) == "ok"
    assert seen[-1] == 2.0
    marker = object()  # an httpx.Timeout object is the caller's business
    assert guarded(timeout=marker) == "ok"
    assert seen[-1] is marker


def test_sync_pass_timeout_is_capped_by_the_deadline_and_an_sdk_timeout_at_it_is_the_deadline(
    clock: FakeClock,
) -> None:
    seen: list[float] = []

    class APITimeoutError(Exception):
        pass

    def create(**kwargs: Any) -> str:
        seen.append(kwargs["timeout"])
        clock.advance(kwargs["timeout"])
        raise APITimeoutError

    retry = {"max_attempts": 5, "base_delay": 0.0, "max_delay": 0.0}
    guarded = build(clock, retry=retry, timeout=2, deadline=5, pass_timeout=True).guard(provider="openai")(create)
    with pytest.raises(DeadlineExceeded) as info:
        guarded()
    assert seen == [2.0, 2.0, 1.0]
    assert isinstance(info.value.__cause__, APITimeoutError)
    assert clock.monotonic() == pytest.approx(5.0)


def test_sync_without_a_hook_or_a_listener_stays_out_of_the_chain(clock: FakeClock) -> None:
    with capture_calls() as calls:
        assert build(clock, timeout=2).guard(provider="p")(lambda: "ok")() == "ok"
    assert calls == []  # nothing to do for it: the guarded function is called bare


def test_sync_without_a_hook_keeps_a_late_result_and_says_so(clock: FakeClock) -> None:
    observer = Collect()

    def slow() -> str:
        clock.advance(3)
        return "late but paid for"

    guarded = build(clock, observer, timeout=2).guard(provider="p")(slow)
    assert guarded() == "late but paid for"
    [event] = named(observer, "timeout.overrun")
    assert (event.limit, event.elapsed) == (2.0, 3.0)


def test_sync_deadline_refuses_an_attempt_once_passed(clock: FakeClock) -> None:
    calls = 0

    class Flaky(Exception):
        status_code = 503

    def failing() -> str:
        nonlocal calls
        calls += 1
        clock.advance(2)
        raise Flaky

    retry = {"max_attempts": 10, "base_delay": 0.0, "max_delay": 0.0}
    guarded = build(clock, retry=retry, deadline=5).guard(provider="p")(failing)
    with pytest.raises(DeadlineExceeded):
        guarded()
    assert calls == 3  # 0-2, 2-4, 4-6: the third started before the deadline; no fourth


def test_a_client_error_is_never_turned_into_a_deadline(clock: FakeClock) -> None:
    class BadRequest(Exception):
        status_code = 400

    def bad() -> str:
        clock.advance(10)
        raise BadRequest

    guarded = build(clock, deadline=5).guard(provider="p")(bad)
    with pytest.raises(BadRequest):
        guarded()


# ---------------------------------------------------------------- streams


class Stalling:
    """An async stream: chunks after the given gaps; records whether it was closed."""

    def __init__(self, gaps: list[float]) -> None:
        self.gaps = gaps
        self.closed = False

    async def __call__(self, **kwargs: Any) -> AsyncIterator[str]:
        try:
            for i, gap in enumerate(self.gaps):
                await asyncio.sleep(gap)
                yield f"chunk {i}"
        finally:
            self.closed = True


async def consume(stream: AsyncIterator[str], got: list[str]) -> None:
    async for chunk in stream:
        got.append(chunk)


def test_a_stream_that_goes_quiet_is_closed_and_counted_as_a_timeout(clock: FakeClock) -> None:
    observer = Collect()
    provider = Stalling([0.5, 0.5, 60.0])
    guarded = build(clock, observer, first_chunk_timeout=2, idle_timeout=1).guard(provider="p")(provider)
    got: list[str] = []
    with pytest.raises(AttemptTimeout) as info:
        run(clock, consume(guarded(), got))
    assert got == ["chunk 0", "chunk 1"]
    assert provider.closed
    assert info.value.phase == "idle"
    assert clock.monotonic() == pytest.approx(2.0)
    assert [e.phase for e in named(observer, "timeout.expired")] == ["idle"]


def test_a_stalled_stream_ends_with_a_timeout_outcome_the_breaker_counts(clock: FakeClock) -> None:
    breaker = {"minimum_calls": 2, "window_size": 2, "failure_rate": 0.5, "wait_open": 30}
    pipeline = build(clock, breaker=breaker, idle_timeout=1)
    guarded = pipeline.guard(provider="p", model="m")(Stalling([0.1, 60.0]))
    for _ in range(2):
        with pytest.raises(AttemptTimeout):
            run(clock, consume(guarded(), []))
    with pytest.raises(CircuitOpen):
        run(clock, consume(guarded(), []))


def test_a_stream_must_start_within_the_first_chunk_limit(clock: FakeClock) -> None:
    provider = Stalling([5.0, 0.1])
    guarded = build(clock, first_chunk_timeout=2, idle_timeout=10).guard(provider="p")(provider)
    with pytest.raises(AttemptTimeout) as info:
        run(clock, consume(guarded(), []))
    assert info.value.phase == "first_chunk"
    assert provider.closed


def test_a_first_chunk_timeout_is_retried(clock: FakeClock) -> None:
    gaps = iter([[5.0], [0.5, 0.5]])

    async def stream() -> AsyncIterator[str]:
        for gap in next(gaps):
            await asyncio.sleep(gap)
            yield "x"

    retry = {"max_attempts": 2, "base_delay": 0.0, "max_delay": 0.0}
    guarded = build(clock, retry=retry, first_chunk_timeout=2).guard(provider="p")(stream)
    got: list[str] = []
    run(clock, consume(guarded(), got))
    assert got == ["x", "x"]
    assert clock.monotonic() == pytest.approx(3.0)


def test_the_consumers_own_time_between_chunks_is_not_idle_time(clock: FakeClock) -> None:
    guarded = build(clock, idle_timeout=1).guard(provider="p")(Stalling([0.5, 0.5, 0.5]))

    async def slow_consumer() -> list[str]:
        got = []
        async for chunk in guarded():
            got.append(chunk)
            await asyncio.sleep(5)  # the caller's work: not the provider's silence
        return got

    assert run(clock, slow_consumer()) == ["chunk 0", "chunk 1", "chunk 2"]


def test_a_deadline_ends_a_long_stream(clock: FakeClock) -> None:
    guarded = build(clock, deadline=2, idle_timeout=10).guard(provider="p")(Stalling([0.5] * 10))
    got: list[str] = []
    with pytest.raises(DeadlineExceeded):
        run(clock, consume(guarded(), got))
    assert len(got) == 3
    assert clock.monotonic() == pytest.approx(2.0)


def test_a_sync_stream_that_stalls_ends_when_the_late_chunk_arrives(clock: FakeClock) -> None:
    closed = []

    def stream() -> Iterator[str]:
        try:
            yield "a"
            clock.advance(5)
            yield "b"
            yield "c"
        finally:
            closed.append(True)

    guarded = build(clock, idle_timeout=1).guard(provider="p")(stream)
    got = []
    with pytest.raises(AttemptTimeout) as info:
        for chunk in guarded():
            got.append(chunk)
    assert got == ["a"]
    assert closed
    assert info.value.phase == "idle"


def test_sync_stream_passes_the_idle_limit_as_the_read_timeout(clock: FakeClock) -> None:
    seen = []

    def stream(**kwargs: Any) -> Iterator[str]:
        seen.append(kwargs.get("timeout"))
        yield "a"

    guarded = build(clock, idle_timeout=1.5, pass_timeout=True).guard(provider="p")(stream)
    assert list(guarded()) == ["a"]
    assert seen == [1.5]


def test_overrides_per_model(clock: FakeClock) -> None:
    provider = SlowProvider([3.0, 3.0], clock)
    pipeline = build(clock, timeout=5, models={"fast": {"timeout": 1}})
    guarded = pipeline.guard(provider="p")(provider)
    assert run(clock, guarded(model="slow")) == "answer 0"
    with pytest.raises(AttemptTimeout):
        run(clock, guarded(model="fast"))
