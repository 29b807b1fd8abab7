"""The first-party quota plugin: limits, tokens, provider signals, store failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import limits
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import ConfigurationError, Pipeline, QuotaExceeded, Runtime, Usage, hookimpl
from resilient.providers import estimate_input_tokens, estimate_output_tokens
from resilient.testing import FakeClock, HTTPStatus, ProviderHTTPError, ScriptedProvider
from resilient_quota import QuotaPolicy
from resilient_quota._signals import pause_from_headers
from resilient_quota._store import current_window_key

from ._policies import Collect

# Fixtures that patch limits' clock are function-scoped; Hypothesis re-runs within one test.
PROPERTY = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None)


def build(clock: FakeClock, observer: Collect | None = None, store: str = "memory://", **quota: Any) -> Pipeline:
    return Pipeline(
        plugins=[observer] if observer else [],
        env={},
        config={"store": store, "disable": ["retry", "breaker"], "quota": quota},
        clock=clock,
    )


def quota_policy(pipeline: Pipeline) -> QuotaPolicy:
    return next(p for p in pipeline.policies if isinstance(p, QuotaPolicy))


class Reply:
    """A response shaped like an anthropic Message: only ``usage`` matters here."""

    def __init__(self, input_tokens: int, output_tokens: int) -> None:
        self.usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}


# ---------------------------------------------------------------- windows never admit more than their limit


@PROPERTY
@given(
    limit=st.integers(1, 8),
    steps=st.lists(st.floats(0, 40), min_size=1, max_size=40),
    strategy=st.sampled_from(["moving-window", "fixed-window", "sliding-window-counter"]),
)
def test_no_window_admits_more_than_its_limit(
    limits_on: FakeClock, limit: int, steps: list[float], strategy: str
) -> None:
    clock = limits_on
    clock.advance(1000.0)  # a fresh stretch of time for each example: keys from other examples are gone
    pipeline = build(clock, requests=f"{limit}/minute", strategy=strategy, provider_signals=False)
    admitted: list[float] = []
    call = pipeline.guard(provider=f"p{clock.time()}")(lambda: "ok")
    for step in steps:
        clock.advance(step)
        try:
            call()
        except QuotaExceeded as exc:
            assert exc.limit == f"requests {limit} per 1 minute"
            assert exc.retry_after is not None
            assert 0 < exc.retry_after <= 60.01
        else:
            admitted.append(clock.time())
    if strategy == "moving-window":
        for t in admitted:  # any 60 s interval starting at an admission
            assert sum(1 for u in admitted if t <= u < t + 60) <= limit
    elif strategy == "sliding-window-counter":
        for t in admitted:  # limits aligns these windows on multiples of the period
            start = (t // 60) * 60
            assert sum(1 for u in admitted if start <= u < start + 60) <= limit
    else:
        window_start: float | None = None
        count = 0
        for t in admitted:  # a fixed window opens at its first hit and lasts the period
            if window_start is None or t >= window_start + 60:
                window_start, count = t, 0
            count += 1
            assert count <= limit


def test_requests_are_counted_per_tenant_and_overridden_per_tenant(limits_on: FakeClock) -> None:
    from resilient import request_context

    pipeline = build(limits_on, requests="3/minute", tenants={"acme": {"requests": "1/minute"}})
    call = pipeline.guard(provider="anthropic")(lambda: "ok")
    with request_context(tenant="acme"):
        call()
        with pytest.raises(QuotaExceeded):
            call()
    with request_context(tenant="globex"):
        for _ in range(3):
            call()
        with pytest.raises(QuotaExceeded) as info:
            call()
    problem = info.value.to_problem()
    assert problem["status"] == 429
    assert problem["limit"] == "requests 3 per 1 minute"
    assert "globex" not in json.dumps(problem)


def test_several_limits_in_one_string(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="2/second;3/minute")
    call = pipeline.guard(lambda: "ok")
    call()
    call()
    with pytest.raises(QuotaExceeded, match="2 per 1 second"):
        call()
    limits_on.advance(1.5)
    call()
    limits_on.advance(1.5)
    with pytest.raises(QuotaExceeded, match="3 per 1 minute"):
        call()


def test_wait_mode_sleeps_on_the_clock_then_admits(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="1/second", wait=True, max_wait=5)
    call = pipeline.guard(lambda: "ok")
    call()
    assert call() == "ok"
    assert limits_on.sleeps
    assert 0 < sum(limits_on.sleeps) <= 1.05
    assert len(limits_on.sleeps) == 1  # one wait, no spinning


def test_wait_mode_gives_up_past_max_wait(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="1/minute", wait=True, max_wait=5)
    call = pipeline.guard(lambda: "ok")
    call()
    with pytest.raises(QuotaExceeded):
        call()
    assert limits_on.sleeps == []


def test_big_moving_window_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        build(FakeClock(), requests="100000/minute")
    message = str(info.value)
    assert "quota" in message
    assert "sliding-window-counter" in message


def test_bad_limit_string_names_the_key() -> None:
    with pytest.raises(ConfigurationError, match="total_tokens"):
        build(FakeClock(), total_tokens="lots per minute")


# ---------------------------------------------------------------- tokens


@PROPERTY
@given(
    calls=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 500), st.integers(0, 500), st.text(max_size=200)),
        min_size=1,
        max_size=12,
    ),
    strategy=st.sampled_from(["fixed-window", "sliding-window-counter"]),
)
def test_token_reconciliation_records_the_real_usage(
    limits_on: FakeClock, calls: list[tuple[int, int, int, str]], strategy: str
) -> None:
    clock = limits_on
    clock.advance(10_000.0 - (clock.time() % 3600) + 3600)  # the start of a fresh hour
    pipeline = build(clock, total_tokens="1000000/hour", token_strategy=strategy, provider_signals=False)
    provider = f"p{clock.time()}"

    def create(prompt: str, *, max_tokens: int, reply: Reply) -> Reply:
        return reply

    guarded = pipeline.guard(provider=provider)(create)
    used = 0
    for max_tokens, tokens_in, tokens_out, prompt in calls:
        guarded(prompt, max_tokens=max_tokens, reply=Reply(tokens_in, tokens_out))
        used += tokens_in + tokens_out
    policy = quota_policy(pipeline)
    plan = policy.state.plan_for(provider, None, None)
    (_kind, item, ids) = plan.tokens[0]
    storage = policy.state.limiters.storage
    key = item.key_for(*ids)
    if strategy == "sliding-window-counter":
        window = current_window_key(storage, item, key)
        assert window is not None
        key = window
    assert storage.get(key) == used


def test_token_reservation_refused_when_the_estimate_does_not_fit(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, output_tokens="1000/minute")

    def create(*, max_tokens: int) -> Reply:
        return Reply(10, max_tokens // 2)

    guarded = pipeline.guard(create)
    guarded(max_tokens=600)  # reserves 600, uses 300: 300 recorded
    guarded(max_tokens=600)  # fits after the refund: 600 recorded
    with pytest.raises(QuotaExceeded, match="output_tokens 1000 per 1 minute"):
        guarded(max_tokens=600)
    with pytest.raises(QuotaExceeded, match="the call alone needs 5000"):
        guarded(max_tokens=5000)


def test_failed_call_refunds_its_reservation(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, output_tokens="1000/minute", provider_signals=False)
    provider = ScriptedProvider([HTTPStatus(500), HTTPStatus(500), Reply(1, 900)], clock=limits_on)
    guarded = pipeline.guard(provider)
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            guarded(max_tokens=900)
    assert isinstance(guarded(max_tokens=900), Reply)


def test_input_estimate_counts_the_prompt() -> None:
    kwargs = {"messages": [{"role": "user", "content": "x" * 400}], "system": "y" * 40}
    assert estimate_input_tokens((), kwargs, 4.0) == 111  # 400 + 40 + len("user"), over 4
    assert estimate_input_tokens(("z" * 8,), {}, 4.0) == 2
    assert estimate_input_tokens((), {"model": "m" * 100}, 4.0) == 0
    assert estimate_output_tokens({"max_tokens": 77}, 1024) == 77
    assert estimate_output_tokens({"max_completion_tokens": 5}, 1024) == 5
    assert estimate_output_tokens({}, 1024) == 1024


# ---------------------------------------------------------------- provider signals


def test_429_with_retry_after_pauses_the_key(limits_on: FakeClock) -> None:
    observer = Collect()
    pipeline = build(limits_on, observer)
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "7"})], default="ok", clock=limits_on)
    guarded = pipeline.guard(provider="anthropic", model="m")(provider)
    with pytest.raises(ProviderHTTPError):
        guarded()
    with pytest.raises(QuotaExceeded, match="provider asked to slow down") as info:
        guarded()
    assert info.value.retry_after == pytest.approx(7, abs=0.01)
    assert provider.calls == 1  # the paused call never reached the provider
    limits_on.advance(7.5)
    assert guarded() == "ok"
    assert [e.name for e in observer.events] == ["quota.paused", "quota.rejected"]


def test_pause_is_per_key(limits_on: FakeClock) -> None:
    pipeline = build(limits_on)
    provider = ScriptedProvider([HTTPStatus(529, {"retry-after": "30"})], default="ok", clock=limits_on)
    with pytest.raises(ProviderHTTPError):
        pipeline.guard(provider="anthropic", model="a")(provider)()
    assert pipeline.guard(provider="anthropic", model="b")(provider)() == "ok"


def test_pause_is_bounded_by_max_pause(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, max_pause=10)
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "3600"})], default="ok", clock=limits_on)
    guarded = pipeline.guard(provider)
    with pytest.raises(ProviderHTTPError):
        guarded()
    with pytest.raises(QuotaExceeded) as info:
        guarded()
    assert info.value.retry_after is not None
    assert info.value.retry_after <= 10


def test_a_500_does_not_pause(limits_on: FakeClock) -> None:
    pipeline = build(limits_on)
    provider = ScriptedProvider([HTTPStatus(500)], default="ok", clock=limits_on)
    guarded = pipeline.guard(provider)
    with pytest.raises(ProviderHTTPError):
        guarded()
    assert guarded() == "ok"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z",
            },
            20.0,
        ),
        (
            {"anthropic-ratelimit-tokens-remaining": "5", "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:40Z"},
            None,
        ),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "soon"}, None),
        ({}, None),
    ],
)
def test_pause_from_rate_limit_headers(headers: dict[str, str], expected: float | None) -> None:
    # A dict, and the SDKs' own Headers (case-insensitive, read from their raw bytes first), with other headers.
    others = {"Content-Type": "application/json", "Request-Id": "req_1", "X-Count": " 0 "}
    for shown in (headers, httpx.Headers({**others, **headers}), httpx2.Headers({**others, **headers})):
        got = pause_from_headers(shown, now=1_700_000_000.0)
        assert got == (pytest.approx(expected) if expected is not None else None)
    upper = httpx2.Headers({k.title(): f" {v} " for k, v in headers.items()})
    got = pause_from_headers(upper, now=1_700_000_000.0)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_exhausted_rate_limit_headers_on_an_error_pause_the_key(limits_on: FakeClock) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12s"}
    provider = ScriptedProvider([HTTPStatus(429, headers)], default="ok", clock=limits_on)
    guarded = build(limits_on).guard(provider)
    with pytest.raises(ProviderHTTPError):
        guarded()
    with pytest.raises(QuotaExceeded) as info:
        guarded()
    assert info.value.retry_after == pytest.approx(12, abs=0.01)


def test_a_429_inside_retries_pauses_the_key_but_the_retry_still_happens(limits_on: FakeClock) -> None:
    pipeline = Pipeline(env={}, config={"retry": {"max_attempts": 3}}, clock=limits_on, random=lambda: 0.0)
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "2"}), "ok"], clock=limits_on)
    guarded = pipeline.guard(provider="anthropic")(provider)
    assert guarded() == "ok"  # the retry waited out the 429 itself
    assert provider.calls == 2


# ---------------------------------------------------------------- async and streams


def test_async_calls_share_the_count_with_sync_calls_in_memory(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="2/minute")

    def sync_call() -> str:
        return "s"

    async def async_call() -> str:
        return "a"

    s = pipeline.guard(provider="x", operation="op")(sync_call)
    a = pipeline.guard(provider="x", operation="op")(async_call)
    s()
    assert asyncio.run(a()) == "a"
    with pytest.raises(QuotaExceeded):
        asyncio.run(a())
    with pytest.raises(QuotaExceeded):
        s()


def test_async_429_pauses_and_refunds(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, output_tokens="100/minute")
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "1"})], default=Reply(1, 90), clock=limits_on)

    async def create(**kwargs: Any) -> Any:
        return await provider.acall(**kwargs)

    guarded = pipeline.guard(create)
    with pytest.raises(ProviderHTTPError):
        asyncio.run(guarded(max_tokens=90))
    with pytest.raises(QuotaExceeded, match="slow down"):
        asyncio.run(guarded(max_tokens=90))
    limits_on.advance(1.5)
    assert isinstance(asyncio.run(guarded(max_tokens=90)), Reply)  # the 429's reservation was refunded


def test_stream_is_admitted_at_start_and_settled_from_its_usage(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, output_tokens="100/minute", provider_signals=False)

    class UsageReader:
        """Stands in for the SDK wrapper that reads usage from stream events."""

    def stream(*, max_tokens: int) -> Iterator[str]:
        yield "a"
        yield "b"

    guarded = pipeline.guard(stream)
    assert list(guarded(max_tokens=60)) == ["a", "b"]  # no usage known: the 60 reserved stay
    with pytest.raises(QuotaExceeded):
        next(guarded(max_tokens=60))
    assert UsageReader  # documented gap: stream usage comes from the SDK wrapper


# ---------------------------------------------------------------- store failures


def dead_store() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there any more


def test_store_down_falls_back_to_local_counting(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer, store=dead_store(), requests="2/minute", on_store_error="local")
    call = pipeline.guard(lambda: "ok")
    assert call() == "ok"
    assert call() == "ok"
    with pytest.raises(QuotaExceeded):
        call()
    names = [e.name for e in observer.events]
    assert names.count("quota.store_unavailable") == 1  # the store is left alone while down


def test_store_down_fail_open_and_closed(clock: FakeClock) -> None:
    open_ = build(clock, store=dead_store(), requests="1/minute", on_store_error="open").guard(lambda: "ok")
    assert [open_() for _ in range(3)] == ["ok"] * 3
    closed = build(clock, store=dead_store(), requests="1/minute", on_store_error="closed").guard(lambda: "ok")
    with pytest.raises(QuotaExceeded, match="store unavailable"):
        closed()


# ---------------------------------------------------------------- introspection and CLI


def test_status_reports_remaining_and_reset(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="5/minute", total_tokens="1000/minute")
    guarded = pipeline.guard(provider="anthropic", model="m")(lambda **kw: Reply(10, 20))
    guarded(max_tokens=50)
    status = quota_policy(pipeline).status("anthropic", "m")
    assert status["key"] == "provider=anthropic/model=m/tenant=-"
    rows = {r["limit"]: r for r in status["limits"]}
    assert rows["requests 5 per 1 minute"]["remaining"] == 4
    assert rows["total_tokens 1000 per 1 minute"]["remaining"] == 970
    assert status["paused_for"] == 0


def test_cli_quota_status(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from resilient.cli import main

    monkeypatch.chdir(tmp_path)
    for var in [v for v in __import__("os").environ if v.startswith("RESILIENT_") and v != "RESILIENT_REQUIRE_REDIS"]:
        monkeypatch.delenv(var)
    (tmp_path / "resilient.toml").write_text('[quota]\nrequests = "5/minute"\n')
    assert main(["quota", "status", "--provider", "anthropic", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["limits"][0]["limit"] == "requests 5 per 1 minute"
    assert data["limits"][0]["remaining"] == 5
    assert 0 <= data["limits"][0]["reset_in"] <= 60


def test_quota_uses_limits_items() -> None:
    # The limit strings are the limits library's own grammar.
    assert [str(i) for i in limits.parse_many("50/minute;1000/day")] == ["50 per 1 minute", "1000 per 1 day"]


def test_usage_is_read_into_the_call(limits_on: FakeClock) -> None:
    seen: list[Usage | None] = []

    class Spy:
        @hookimpl
        def resilient_observers(self, runtime: Runtime) -> list[Any]:
            return []

    pipeline = build(limits_on, total_tokens="1000/minute")

    def create(**kw: Any) -> Reply:
        return Reply(3, 4)

    from resilient import Call, Handler, Policy, Target

    class Outer(Policy):
        name = "outer"
        order = 10

        def wrap(self, nxt: Handler, target: Target) -> Handler:
            def h(call: Call) -> Any:
                try:
                    return nxt(call)
                finally:
                    seen.append(call.usage)

            return h

    class P:
        @hookimpl
        def resilient_policies(self, runtime: Runtime) -> list[Policy]:
            return [Outer()]

    pipeline = Pipeline(
        plugins=[P(), Spy()],
        env={},
        config={"disable": ["retry", "breaker"], "quota": {"total_tokens": "1000/minute"}},
        clock=limits_on,
    )
    pipeline.guard(create)(max_tokens=10)
    assert seen == [Usage(input_tokens=3, output_tokens=4)]


@PROPERTY
@given(
    limit=st.integers(50, 400),
    calls=st.lists(st.tuples(st.floats(0, 30), st.integers(0, 120)), min_size=1, max_size=30),
    strategy=st.sampled_from(["fixed-window", "sliding-window-counter"]),
)
def test_no_token_window_admits_more_than_its_limit(
    limits_on: FakeClock, limit: int, calls: list[tuple[float, int]], strategy: str
) -> None:
    """Calls that use what they reserve: the tokens admitted per window never exceed the limit."""
    clock = limits_on
    clock.advance(100_000.0 - (clock.time() % 60) + 60)  # the start of a fresh aligned minute
    pipeline = build(clock, output_tokens=f"{limit}/minute", token_strategy=strategy, provider_signals=False)
    guarded = pipeline.guard(provider=f"p{clock.time()}")(lambda *, max_tokens: Reply(0, max_tokens))
    admitted: list[tuple[float, int]] = []
    for step, cost in calls:
        clock.advance(step)
        try:
            guarded(max_tokens=cost)
        except QuotaExceeded:
            continue
        if cost:  # a call reserving nothing makes no hit and opens no window
            admitted.append((clock.time(), cost))
    if strategy == "sliding-window-counter":
        for t, _ in admitted:  # windows aligned on multiples of the period
            start = (t // 60) * 60
            assert sum(c for u, c in admitted if start <= u < start + 60) <= limit
    else:
        window_start: float | None = None
        used = 0
        for t, c in admitted:
            if window_start is None or t >= window_start + 60:
                window_start, used = t, 0
            used += c
            assert used <= limit


# ---------------------------------------------------------------- regressions from review


def test_stream_failing_before_its_first_chunk_is_refunded_once(limits_on: FakeClock) -> None:
    pipeline = Pipeline(
        env={},
        config={"retry": {"max_attempts": 1}, "quota": {"output_tokens": "1000/minute", "provider_signals": False}},
        clock=limits_on,
    )
    held = pipeline.guard(provider="s")(lambda *, max_tokens: Reply(0, max_tokens))
    held(max_tokens=300)  # another call's 300, recorded

    def stream(*, max_tokens: int) -> Iterator[str]:
        raise ProviderHTTPError(400)
        yield "never"

    with pytest.raises(ProviderHTTPError):
        next(pipeline.guard(provider="s")(stream)(max_tokens=500))
    policy = quota_policy(pipeline)
    rows = {r["limit"]: r for r in policy.status("s")["limits"]}
    assert rows["output_tokens 1000 per 1 minute"]["remaining"] == 700


def test_refused_fixed_window_token_hit_is_given_back(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, output_tokens="1000/minute", token_strategy="fixed-window")
    guarded = pipeline.guard(lambda *, max_tokens: Reply(0, max_tokens))
    guarded(max_tokens=200)
    with pytest.raises(QuotaExceeded):
        guarded(max_tokens=900)
    assert isinstance(guarded(max_tokens=800), Reply)  # the refused 900 did not stay counted


def test_refund_after_the_window_rolled_does_not_credit_the_next_window(limits_on: FakeClock) -> None:
    clock = limits_on
    pipeline = build(clock, output_tokens="1000/minute", token_strategy="fixed-window")
    fast = pipeline.guard(provider="r")(lambda *, max_tokens: Reply(0, max_tokens))

    def slow(*, max_tokens: int) -> Reply:
        clock.advance(65)  # the call outlives its window; meanwhile the next window fills
        fast(max_tokens=400)
        clock.advance(5)
        return Reply(0, 10)

    pipeline.guard(provider="r")(slow)(max_tokens=900)  # reserved 900 in window 1, settles in window 2
    rows = {r["limit"]: r for r in quota_policy(pipeline).status("r")["limits"]}
    # Window 2 holds the 400 used in it; the slow call's usage stayed in window 1's
    # reservation, and the 890 refund of that reservation is not taken from window 2.
    assert rows["output_tokens 1000 per 1 minute"]["remaining"] == 600


def test_wait_mode_does_not_spend_a_request_per_pass(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="3/minute", output_tokens="100/minute", wait=True, max_wait=120)
    guarded = pipeline.guard(lambda *, max_tokens: Reply(0, max_tokens))
    guarded(max_tokens=100)  # tokens spent; requests: 1 of 3
    guarded(max_tokens=100)  # waits for the token window, then goes: requests 2 of 3
    assert len(limits_on.sleeps) <= 2  # waited for the window, no spinning
    guarded(max_tokens=1)  # the third request is still there


def test_a_shorter_pause_never_replaces_a_longer_one(limits_on: FakeClock) -> None:
    pipeline = build(limits_on)
    provider = ScriptedProvider(
        [HTTPStatus(429, {"retry-after": "60"}), HTTPStatus(429, {"retry-after": "1"})], default="ok", clock=limits_on
    )
    guarded = pipeline.guard(provider="p")(provider)
    with pytest.raises(ProviderHTTPError):
        guarded()
    limits_on.advance(60.5)  # past the local view's pause, not the retry
    with pytest.raises(ProviderHTTPError):
        guarded()
    with pytest.raises(QuotaExceeded) as info:
        guarded()
    assert info.value.retry_after is not None
    assert info.value.retry_after == pytest.approx(1, abs=0.05)


@pytest.mark.parametrize(("a", "b"), [("a/b", "a%2Fb"), ("-", None), ("", None)])
def test_tenants_never_share_a_count(limits_on: FakeClock, a: str, b: str | None) -> None:
    from resilient import request_context

    pipeline = build(limits_on, requests="1/minute")
    call = pipeline.guard(provider="k")(lambda: "ok")
    with request_context(tenant=a):
        call()
    with request_context(tenant=b):
        assert call() == "ok"


def test_health_reports_remaining_per_key_used(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, requests="5/minute")
    guarded = pipeline.guard(provider="anthropic", model="m")(lambda: "ok")
    guarded()
    guarded()
    report = pipeline.health()
    assert report["ok"] is True
    (quota,) = report["policies"]["quota"]["quotas"]
    assert quota["limits"][0]["remaining"] == 3
    assert report["policies"]["quota"]["store"] == "memory"


def test_health_is_not_ok_when_a_fail_closed_store_is_down(limits_on: FakeClock) -> None:
    down = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    assert build(limits_on, store=down, requests="5/minute", on_store_error="closed").health()["ok"] is False
    assert build(limits_on, store=down, requests="5/minute").health()["ok"] is True  # falls back to local counts


# ---------------------------------------------------------------- remaining, as observers see it


def _remaining(events: list[Any]) -> list[tuple[str, int, float]]:
    from resilient_quota import QuotaRemaining

    return [(e.limit, e.remaining, e.reset_in) for e in events if isinstance(e, QuotaRemaining)]


def test_remaining_is_reported_once_per_interval_per_key(limits_on: FakeClock) -> None:
    observer = Collect()
    pipeline = build(limits_on, observer, requests="5/minute;100/day", strategy="fixed-window", report_remaining=10)
    call = pipeline.guard(provider="anthropic")(lambda: "ok")
    call()
    assert _remaining(observer.events) == [
        ("requests 5 per 1 minute", 4, 60.0),
        ("requests 100 per 1 day", 99, 86400.0),
    ]
    observer.events.clear()
    limits_on.advance(5)
    call()  # within the interval: nothing read, nothing reported
    assert _remaining(observer.events) == []
    limits_on.advance(5)
    call()
    assert [(limit, left) for limit, left, _ in _remaining(observer.events)] == [
        ("requests 5 per 1 minute", 2),
        ("requests 100 per 1 day", 97),
    ]


def test_a_refusal_reports_what_is_left_when_due(limits_on: FakeClock) -> None:
    observer = Collect()
    pipeline = build(limits_on, observer, requests="1/minute", strategy="fixed-window", report_remaining=1)
    call = pipeline.guard(provider="anthropic")(lambda: "ok")
    call()
    limits_on.advance(2)
    with pytest.raises(QuotaExceeded):
        call()
    assert [left for _, left, _ in _remaining(observer.events)] == [0, 0]


def test_remaining_reports_token_limits_and_can_be_turned_off(limits_on: FakeClock) -> None:
    observer = Collect()
    pipeline = build(limits_on, observer, total_tokens="1000/minute", token_strategy="fixed-window")
    pipeline.guard(provider="anthropic")(lambda **kw: Reply(10, 20))(max_tokens=50)
    ((limit, left, _),) = _remaining(observer.events)
    assert limit == "total_tokens 1000 per 1 minute"
    assert left == 1000 - 50  # read at admission: the reservation (max_tokens, no input) is what is counted
    off = Collect()
    quiet = build(limits_on, off, requests="5/minute", report_remaining=0)
    quiet.guard(provider="anthropic")(lambda: "ok")()
    assert _remaining(off.events) == []


def test_async_calls_report_remaining_too(limits_on: FakeClock) -> None:
    observer = Collect()
    pipeline = build(limits_on, observer, requests="3/minute", strategy="fixed-window")

    @pipeline.guard(provider="anthropic")
    async def ask() -> str:
        return "ok"

    asyncio.run(ask())
    assert [(limit, left) for limit, left, _ in _remaining(observer.events)] == [("requests 3 per 1 minute", 2)]


def test_remaining_fills_the_metrics_gauge(limits_on: FakeClock) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import resilient_metrics
    import resilient_quota

    registry = CollectorRegistry()
    with resilient_metrics.use_registry(registry):
        pipeline = Pipeline(
            discover=False,
            plugins=[resilient_metrics, resilient_quota],
            env={},
            config={"quota": {"requests": "7/minute", "strategy": "fixed-window"}},
            clock=limits_on,
        )
    pipeline.guard(provider="anthropic", model="claude-x")(lambda: "ok")()
    text = generate_latest(registry).decode()
    gauge = [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "resilient_quota_remaining"
    ]
    assert gauge == [({"provider": "anthropic", "model": "claude-x", "limit": "requests 7 per 1 minute"}, 6.0)]


# ---------------------------------------------------------------- the provider's own input count


def _counted(count: Any) -> Any:
    """A guarded function whose target has a count_tokens, as pipeline.wrap gives SDK methods that have one."""
    from resilient import Call, Target

    def with_counter(pipeline: Pipeline) -> Any:
        target = Target("anthropic", "messages.create", "sync", count_tokens=count)
        handler = pipeline.compile(target, lambda call: Reply(call.kwargs["real"], 1))
        return lambda **kwargs: handler(Call(target, (), kwargs))

    return with_counter


def test_count_tokens_replaces_the_heuristic_when_configured(limits_on: FakeClock) -> None:
    seen: list[Any] = []

    def count(call: Any) -> int:
        seen.append(call.kwargs["messages"])
        return 900

    messages = [{"role": "user", "content": "hi"}]  # the heuristic says 2 tokens
    counted = build(limits_on, input_tokens="1000/minute", token_strategy="fixed-window", input_estimate="count_tokens")
    ask = _counted(count)(counted)
    ask(messages=messages, max_tokens=5, real=900)
    assert seen == [messages]  # counted once, with the request
    with pytest.raises(QuotaExceeded, match="input_tokens 1000 per 1 minute"):
        ask(messages=messages, max_tokens=5, real=900)  # 900 + 900 > 1000, where 900 + 2 would fit
    heuristic = build(limits_on, input_tokens="1000/minute", token_strategy="fixed-window")
    seen.clear()
    _counted(count)(heuristic)(messages=messages, max_tokens=5, real=2)
    assert seen == []  # not configured: no count call


def test_a_failing_count_falls_back_to_the_heuristic(limits_on: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def count(call: Any) -> int:
        raise ConnectionError("count endpoint down")

    pipeline = build(limits_on, input_tokens="1000/minute", input_estimate="count_tokens")
    ask = _counted(count)(pipeline)
    with caplog.at_level("WARNING", logger="resilient.quota"):
        assert ask(messages=[{"role": "user", "content": "hi"}], max_tokens=5, real=3).usage["input_tokens"] == 3
        ask(messages=[{"role": "user", "content": "hi"}], max_tokens=5, real=3)
    assert [r.getMessage() for r in caplog.records] == [
        "quota: counting input tokens failed (ConnectionError); estimating instead"
    ]  # once a minute, not once a call


def test_a_count_that_is_not_a_token_count_falls_back(limits_on: FakeClock) -> None:
    pipeline = build(limits_on, input_tokens="10/minute", input_estimate="count_tokens")
    ask = _counted(lambda call: "many")(pipeline)
    assert ask(messages=[{"role": "user", "content": "hi"}], max_tokens=1, real=2).usage["input_tokens"] == 2


def test_input_estimate_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="input_estimate"):
        build(FakeClock(), input_estimate="exact")


def test_pause_key_decides_which_tenants_a_provider_signal_stops(limits_on: FakeClock) -> None:
    from resilient import request_context

    for pause_key, other_tenant_paused in ((["provider", "model"], True), (["provider", "model", "tenant"], False)):
        limits_on.advance(1000)
        provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "30"})], default="ok", clock=limits_on)
        pipeline = build(limits_on, requests="100/minute", pause_key=pause_key)
        ask = pipeline.guard(provider="anthropic", model="m")(provider)
        with request_context(tenant="a"), pytest.raises(ProviderHTTPError):
            ask()
        with request_context(tenant="b"):
            if other_tenant_paused:  # one API key at the provider: every tenant waits
                with pytest.raises(QuotaExceeded, match="provider asked to slow down"):
                    ask()
            else:
                assert ask() == "ok"
        with request_context(tenant="a"), pytest.raises(QuotaExceeded, match="provider asked to slow down"):
            ask()  # the refused tenant is paused either way


def test_no_signal_watcher_when_no_key_can_have_provider_signals() -> None:
    def names(quota: dict[str, object]) -> list[str]:
        return [p.name for p in Pipeline(env={}, config={"quota": quota}).policies]

    assert "quota_signals" not in names({"requests": "5/minute", "provider_signals": False})
    # An override may turn them on for one provider: then the watcher is there for it.
    on_for_one = {
        "requests": "5/minute",
        "provider_signals": False,
        "providers": {"openai": {"provider_signals": True}},
    }
    assert "quota_signals" in names(on_for_one)
    assert "quota_signals" in names({"requests": "5/minute"})
