"""The first-party retry plugin, found through its entry point."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import Pipeline
from resilient.testing import FakeClock, HTTPStatus, Latency, ProviderHTTPError, ScriptedProvider
from resilient_quota import QuotaPaused
from resilient_retry import RetryGaveUp, RetryOptions, RetryScheduled
from resilient_retry._backoff import backoff_cap, next_delay

from ._policies import Collect

RETRYABLE = [408, 409, 429, 500, 502, 503, 504, 529]
NOT_RETRYABLE = [400, 401, 403, 404, 413, 422]

# Every other plugin found (quota, and whichever first-party plugins come next), disabled so
# these tests see the retry plugin alone: quota, for one, pauses a key after a 429.
OTHER_PLUGINS = tuple(
    sorted(ep.name for ep in importlib.metadata.entry_points(group="resilient") if ep.name != "retry")
)


def pipeline(
    clock: FakeClock,
    *,
    rand: float = 0.5,
    observer: Collect | None = None,
    disable: Sequence[str] = OTHER_PLUGINS,
    **retry: Any,
) -> Pipeline:
    return Pipeline(
        plugins=[observer] if observer else [],
        env={},
        config={"disable": list(disable), "retry": retry},
        clock=clock,
        random=lambda: rand,
    )


def test_retry_plugin_is_discovered_through_the_entry_point(clock: FakeClock) -> None:
    assert "quota" in OTHER_PLUGINS
    p = pipeline(clock)
    assert [x.name for x in p.policies] == ["retry"]
    assert p.plugin_of(p.policies[0]) == "retry"
    (info,) = [i for i in p.plugins if i.name == "retry"]
    assert (info.source, info.ok) == ("entry point resilient_retry", True)
    # Found with the others too, when nothing is disabled.
    p = pipeline(clock, disable=())
    assert [p.plugin_of(x) for x in p.policies if x.name == "retry"] == ["retry"]


@pytest.mark.parametrize("status", RETRYABLE)
def test_retryable_status_is_retried_until_success(clock: FakeClock, status: int) -> None:
    provider = ScriptedProvider([HTTPStatus(status), HTTPStatus(status), "fine"], clock=clock)
    assert pipeline(clock, max_attempts=3).guard(provider)() == "fine"
    assert provider.calls == 3
    assert len(clock.sleeps) == 2


@given(status=st.sampled_from(NOT_RETRYABLE), max_attempts=st.integers(1, 10))
def test_non_retryable_error_is_raised_after_exactly_one_attempt(status: int, max_attempts: int) -> None:
    clock = FakeClock()
    provider = ScriptedProvider([HTTPStatus(status)] * 20, clock=clock)
    with pytest.raises(ProviderHTTPError) as info:
        pipeline(clock, max_attempts=max_attempts).guard(provider)()
    assert info.value.status_code == status
    assert provider.calls == 1
    assert clock.sleeps == []


def test_gives_up_after_max_attempts_with_the_original_error(clock: FakeClock) -> None:
    observer = Collect()
    provider = ScriptedProvider([HTTPStatus(503)] * 10, clock=clock)
    with pytest.raises(ProviderHTTPError) as info:
        pipeline(clock, observer=observer, max_attempts=4).guard(provider)()
    assert info.value.status_code == 503
    assert provider.calls == 4
    names = [e.name for e in observer.events]
    assert names == ["retry.scheduled"] * 3 + ["retry.gave_up"]
    gave_up = observer.events[-1]
    assert isinstance(gave_up, RetryGaveUp)
    assert (gave_up.attempts, gave_up.reason, gave_up.status) == (4, "attempts", 503)


def test_retry_after_is_honoured_beyond_the_sdk_range(clock: FakeClock) -> None:
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "45"}), "ok"], clock=clock)
    assert pipeline(clock, rand=0.0, max_retry_after=120).guard(provider)() == "ok"
    assert clock.sleeps == [45.0]


def test_retry_after_ms_wins_over_retry_after(clock: FakeClock) -> None:
    provider = ScriptedProvider([HTTPStatus(529, {"retry-after-ms": "1500", "retry-after": "9"}), "ok"], clock=clock)
    assert pipeline(clock, rand=0.0).guard(provider)() == "ok"
    assert clock.sleeps == [1.5]


def test_too_long_retry_after_is_raised_at_once(clock: FakeClock) -> None:
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "3600"}), "ok"], clock=clock)
    with pytest.raises(ProviderHTTPError):
        pipeline(clock, max_retry_after=60).guard(provider)()
    assert provider.calls == 1


def test_x_should_retry_false_stops_a_retryable_status(clock: FakeClock) -> None:
    provider = ScriptedProvider([HTTPStatus(500, {"x-should-retry": "false"}), "ok"], clock=clock)
    with pytest.raises(ProviderHTTPError):
        pipeline(clock).guard(provider)()
    assert provider.calls == 1


def test_x_should_retry_true_retries_a_client_status(clock: FakeClock) -> None:
    provider = ScriptedProvider([HTTPStatus(400, {"x-should-retry": "true"}), "ok"], clock=clock)
    assert pipeline(clock).guard(provider)() == "ok"


def test_connection_and_timeout_errors_are_retried(clock: FakeClock) -> None:
    provider = ScriptedProvider([ConnectionResetError("reset"), TimeoutError(), "ok"], clock=clock)
    assert pipeline(clock).guard(provider)() == "ok"
    assert provider.calls == 3


def test_a_programming_error_is_not_retried(clock: FakeClock) -> None:
    provider = ScriptedProvider([TypeError("bug"), "ok"], clock=clock)
    with pytest.raises(TypeError):
        pipeline(clock).guard(provider)()
    assert provider.calls == 1


options = st.builds(
    lambda base, extra, attempts, deadline: RetryOptions(
        base_delay=base, max_delay=base + extra, max_attempts=attempts, deadline=deadline
    ),
    st.floats(0, 10),
    st.floats(0, 100),
    st.integers(1, 12),
    st.one_of(st.none(), st.floats(0, 200)),
)


# Fake clock: no real waiting, so a deadline only measures how loaded the machine is (300 ms seen on 2 shared cores).
@settings(deadline=None)
@given(
    opts=options,
    statuses=st.lists(st.sampled_from(RETRYABLE), min_size=1, max_size=15),
    retry_after=st.one_of(st.none(), st.floats(0, 30)),
    rand=st.floats(0, 0.999999),
    latency=st.floats(0, 5),
)
def test_delays_stay_within_bounds_and_never_pass_the_deadline(
    opts: RetryOptions, statuses: list[int], retry_after: float | None, rand: float, latency: float
) -> None:
    clock = FakeClock()
    headers = {"retry-after": repr(retry_after)} if retry_after is not None else {}
    script = [Latency(latency, HTTPStatus(s, headers)) for s in statuses]
    provider = ScriptedProvider(script, default=Latency(latency, "done"), clock=clock)
    config = {k: getattr(opts, k) for k in ("base_delay", "max_delay", "max_attempts")}
    if opts.deadline is not None:
        config["deadline"] = opts.deadline
    try:
        pipeline(clock, rand=rand, **config).guard(provider)()
    except ProviderHTTPError:
        pass
    # The clock saw: latency, wait, latency, wait, ..., latency.
    latencies, waits = clock.sleeps[0::2], clock.sleeps[1::2]
    assert len(latencies) == provider.calls <= opts.max_attempts
    assert len(waits) == provider.calls - 1
    for attempt, delay in enumerate(waits, start=1):
        assert delay >= 0
        upper = backoff_cap(opts, attempt)
        if retry_after is not None:
            assert delay >= retry_after
            upper = max(upper, retry_after)
        assert delay <= upper
    if opts.deadline is not None:
        # Every wait ends before the deadline, counting the attempts' own time.
        assert sum(waits) + latency * len(waits) <= opts.deadline + 1e-6


@given(attempt=st.integers(1, 200), rand=st.floats(0, 0.999999))
def test_backoff_never_overflows(attempt: int, rand: float) -> None:
    from resilient.providers import classify_status

    opts = RetryOptions(max_attempts=100, base_delay=1, max_delay=60)
    delay, reason = next_delay(opts, classify_status(503), attempt, 0.0, lambda: rand)
    if attempt >= 100:
        assert (delay, reason) == (None, "attempts")
    else:
        assert delay is not None
        assert 0 <= delay <= 60


def test_async_retry(clock: FakeClock) -> None:
    provider = ScriptedProvider([HTTPStatus(500), "ok"], clock=clock)

    async def call() -> Any:
        return await provider.acall()

    assert asyncio.run(pipeline(clock).guard(call)()) == "ok"
    assert provider.calls == 2
    assert len(clock.sleeps) == 1


def test_stream_is_retried_before_its_first_chunk_only(clock: FakeClock) -> None:
    attempts = {"n": 0}

    def stream() -> Iterator[int]:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ProviderHTTPError(503)  # fails before any chunk: retried
        yield 1
        yield 2
        raise ProviderHTTPError(503)  # fails mid-stream: never retried

    got: list[int] = []
    with pytest.raises(ProviderHTTPError):
        for chunk in pipeline(clock).guard(stream)():
            got.append(chunk)
    assert got == [1, 2]
    assert attempts["n"] == 2


def test_async_stream_is_retried_before_its_first_chunk_only(clock: FakeClock) -> None:
    attempts = {"n": 0}

    async def stream() -> AsyncIterator[int]:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ProviderHTTPError(529)
        yield 1
        raise ProviderHTTPError(529)

    async def run() -> list[int]:
        got: list[int] = []
        with pytest.raises(ProviderHTTPError):
            async for chunk in pipeline(clock).guard(stream)():
                got.append(chunk)
        return got

    assert asyncio.run(run()) == [1]
    assert attempts["n"] == 2


def test_per_provider_override(clock: FakeClock) -> None:
    config = {"max_attempts": 2, "providers": {"anthropic": {"max_attempts": 5}}}
    p = Pipeline(env={}, config={"disable": list(OTHER_PLUGINS), "retry": config}, clock=clock, random=lambda: 0.0)
    a = ScriptedProvider([HTTPStatus(500)] * 10, clock=clock)
    o = ScriptedProvider([HTTPStatus(500)] * 10, clock=clock)
    for provider, name in ((a, "anthropic"), (o, "openai")):
        with pytest.raises(ProviderHTTPError):
            p.guard(provider=name)(provider)()
    assert (a.calls, o.calls) == (5, 2)


def test_disabled_retry_leaves_the_chain(clock: FakeClock) -> None:
    p = pipeline(clock, enabled=False)
    assert p.policies == ()
    p = pipeline(clock, disable=(), enabled=False)
    assert "retry" not in [x.name for x in p.policies]
    assert [i.ok for i in p.plugins if i.name == "retry"] == [True]  # loaded, contributing nothing


def test_retry_scheduled_event_fields(clock: FakeClock) -> None:
    observer = Collect()
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "2"}), "ok"], clock=clock)
    pipeline(clock, observer=observer, rand=0.0).guard(provider="anthropic", model="m")(provider)()
    (event,) = observer.events
    assert isinstance(event, RetryScheduled)
    assert (event.provider, event.model, event.attempt, event.delay, event.outcome, event.status) == (
        "anthropic",
        "m",
        1,
        2.0,
        "rate_limited",
        429,
    )


def test_429_is_retried_within_the_call_with_quota_enabled(limits_on: FakeClock) -> None:
    """Default configuration: quota_signals sits inside retry, so it sees the 429 and pauses the
    key, while retry waits out the retry-after and tries again within the same call."""
    clock = limits_on
    observer = Collect()
    p = pipeline(clock, observer=observer, rand=0.0, disable=())
    names = [x.name for x in p.policies]
    assert names.index("quota") < names.index("retry") < names.index("quota_signals")
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "2"}), "ok"], clock=clock)
    assert p.guard(provider="anthropic", model="m")(provider)() == "ok"
    assert provider.calls == 2
    assert clock.sleeps == [2.0]
    assert [e.name for e in observer.events] == ["quota.paused", "retry.scheduled"]
    paused, scheduled = observer.events
    assert isinstance(paused, QuotaPaused)
    assert (paused.seconds, paused.source) == (2.0, "rate_limited")
    assert isinstance(scheduled, RetryScheduled)
    assert (scheduled.attempt, scheduled.delay, scheduled.status) == (1, 2.0, 429)


def test_retry_turned_off_for_one_provider_by_override(clock: FakeClock) -> None:
    p = pipeline(clock, providers={"anthropic": {"enabled": False}})
    off = ScriptedProvider([HTTPStatus(500), HTTPStatus(500), "ok"], clock=clock)
    on = ScriptedProvider([HTTPStatus(500), HTTPStatus(500), "ok"], clock=clock)
    with pytest.raises(ProviderHTTPError):
        p.guard(provider="anthropic")(off)()
    assert off.calls == 1
    assert p.guard(provider="openai")(on)() == "ok"
    assert on.calls == 3


def test_retry_turned_on_for_one_provider_only(clock: FakeClock) -> None:
    p = pipeline(clock, enabled=False, providers={"anthropic": {"enabled": True}})
    on = ScriptedProvider([HTTPStatus(500), "ok"], clock=clock)
    off = ScriptedProvider([HTTPStatus(500), "ok"], clock=clock)
    assert p.guard(provider="anthropic")(on)() == "ok"
    with pytest.raises(ProviderHTTPError):
        p.guard(provider="openai")(off)()
    assert (on.calls, off.calls) == (2, 1)


@settings(deadline=None)  # fake clock: see above
@given(
    ratio=st.floats(0, 1),
    minimum=st.integers(0, 5),
    outcomes=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_retry_budget_bounds_retries_to_a_share_of_calls(ratio: float, minimum: int, outcomes: list[bool]) -> None:
    """Over any run in one window, retries <= max(budget_min, budget_ratio * calls)."""
    clock = FakeClock()
    observer = Collect()
    p = pipeline(clock, observer=observer, max_attempts=3, budget_ratio=ratio, budget_min=minimum, budget_window=3600)
    calls = 0
    for fails in outcomes:
        provider = ScriptedProvider([HTTPStatus(503)] * 3 if fails else ["ok"], clock=clock)
        calls += 1
        try:
            p.guard(provider="anthropic")(provider)()
        except ProviderHTTPError:
            pass
    retries = sum(1 for e in observer.events if e.name == "retry.scheduled")
    assert retries <= max(minimum, ratio * calls)
    if minimum >= 2 * len(outcomes):  # a budget that cannot be spent never refuses
        assert not [e for e in observer.events if isinstance(e, RetryGaveUp) and e.reason == "budget"]


def test_retry_budget_refuses_at_once_when_spent(clock: FakeClock) -> None:
    observer = Collect()
    p = pipeline(clock, observer=observer, budget_ratio=0.0, budget_min=2, max_attempts=5)
    provider = ScriptedProvider([HTTPStatus(503)] * 10, clock=clock)
    with pytest.raises(ProviderHTTPError):
        p.guard(provider)()
    assert provider.calls == 3  # the first attempt and the 2 retries the budget allows
    assert observer.events[-1].name == "retry.gave_up"
    assert isinstance(observer.events[-1], RetryGaveUp)
    assert observer.events[-1].reason == "budget"


def test_retry_budget_off(clock: FakeClock) -> None:
    p = pipeline(clock, budget_ratio=None, max_attempts=30)
    provider = ScriptedProvider([HTTPStatus(503)] * 25, default="ok", clock=clock)
    assert p.guard(provider)() == "ok"
    assert provider.calls == 26


def test_retry_budget_is_shared_through_redis(redis_store: Any) -> None:
    import redis

    redis.Redis.from_url(redis_store.url).flushdb()
    config = {"store": redis_store.url, "disable": list(OTHER_PLUGINS), "retry": {"budget_ratio": 0.0, "budget_min": 3}}
    clock = FakeClock(start_wall=__import__("time").time())
    a = Pipeline(env={}, config=config, clock=clock, random=lambda: 0.0)
    b = Pipeline(env={}, config=config, clock=clock, random=lambda: 0.0)
    pa = ScriptedProvider([HTTPStatus(503)] * 3, default="ok", clock=clock)
    pb = ScriptedProvider([HTTPStatus(503)] * 3, default="ok", clock=clock)
    with pytest.raises(ProviderHTTPError):
        a.guard(provider="shared")(pa)()  # 1 attempt + 2 retries (max_attempts 3)
    with pytest.raises(ProviderHTTPError):
        b.guard(provider="shared")(pb)()  # 1 retry left in the fleet's budget
    assert (pa.calls, pb.calls) == (3, 2)
    a.close()
    b.close()


def test_async_retry_budget(clock: FakeClock) -> None:
    p = pipeline(clock, budget_ratio=0.0, budget_min=1, max_attempts=5)
    provider = ScriptedProvider([HTTPStatus(503)] * 10, clock=clock)

    async def call() -> Any:
        return await provider.acall()

    with pytest.raises(ProviderHTTPError):
        asyncio.run(p.guard(call)())
    assert provider.calls == 2


def test_budget_does_not_carry_calls_from_past_windows(clock: FakeClock) -> None:
    observer = Collect()
    p = pipeline(clock, observer=observer, max_attempts=3, budget_ratio=0.2, budget_min=0, budget_window=60)
    ok = p.guard(provider="b")(lambda: "ok")
    for _ in range(500):  # an hour of quiet success
        ok()
        clock.advance(7.2)
    failing = ScriptedProvider([HTTPStatus(503)] * 1000, clock=clock)
    guarded = p.guard(provider="b")(failing)
    clock.advance(60 - clock.time() % 60)  # a fresh window: the outage
    for _ in range(20):
        with pytest.raises(ProviderHTTPError):
            guarded()
    retries = sum(1 for e in observer.events if e.name == "retry.scheduled")
    assert retries <= 0.2 * 20  # the share of this window's 20 calls, not of the hour's 500


def test_budget_ratio_override_per_provider(clock: FakeClock) -> None:
    p = pipeline(clock, max_attempts=2, budget_ratio=0.0, budget_min=0, providers={"lenient": {"budget_ratio": 1.0}})
    strict = ScriptedProvider([HTTPStatus(503)] * 10, clock=clock)
    lenient = ScriptedProvider([HTTPStatus(503)] * 10, clock=clock)
    for provider, name in ((strict, "strict"), (lenient, "lenient")):
        for _ in range(3):
            with pytest.raises(ProviderHTTPError):
                p.guard(provider=name)(provider)()
    # strict: no retry at all. lenient: every retry but the first, which came before this
    # process had pushed any call of the window (the budget errs strict at a window's start).
    assert (strict.calls, lenient.calls) == (3, 5)
