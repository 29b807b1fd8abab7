"""The breaker on a real redis-server: the Lua scripts decide exactly as the pure machine does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resilient import CircuitOpen, Pipeline
from resilient.testing import FakeClock, HTTPStatus, ProviderHTTPError, RedisServer, ScriptedProvider
from resilient_breaker import BreakerPolicy
from resilient_breaker._machine import IGNORED, Limits, Machine
from resilient_breaker._store import RedisBreakers

OTHERS = ["quota", "retry"]


@pytest.fixture
def redis_url(redis_store: RedisServer) -> str:
    client = redis.Redis.from_url(redis_store.url)
    client.flushdb()
    client.close()
    return redis_store.url


def build(url: str, clock: FakeClock, **breaker: Any) -> Pipeline:
    return Pipeline(env={}, config={"store": url, "disable": OTHERS, "breaker": breaker}, clock=clock)


def policy_of(pipeline: Pipeline) -> BreakerPolicy:
    return next(p for p in pipeline.policies if isinstance(p, BreakerPolicy))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0)),
        st.tuples(st.just("record"), st.sampled_from([0, 1, 2, 3, IGNORED])),
        st.tuples(st.just("wait"), st.sampled_from([0.3, 1.0, 2.5, 7.0, 40.0])),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(  # the reopen boundary: opened_at must not be rounded on its way through Lua
    history=[
        ("acquire", 0),
        ("wait", 0.3),
        ("wait", 0.3),
        ("wait", 0.3),
        ("record", 1),
        ("wait", 2.5),
        ("wait", 2.5),
        ("acquire", 0),
    ],
    window_type="count",
    size=1,
    rate=0.3,
    slow=None,
    trials=1,
    minimum=1,
)
@given(
    history=steps,
    window_type=st.sampled_from(["count", "time"]),
    size=st.integers(1, 6),
    rate=st.sampled_from([0.3, 0.5, 1.0]),
    slow=st.sampled_from([None, 0.5]),
    trials=st.integers(1, 3),
    minimum=st.integers(1, 4),
)
def test_lua_scripts_decide_like_the_machine(
    redis_url: str,
    history: list[tuple[str, float]],
    window_type: str,
    size: int,
    rate: float,
    slow: float | None,
    trials: int,
    minimum: int,
) -> None:
    minimum = min(minimum, size) if window_type == "count" else minimum
    limits = Limits(rate, window_type, size, minimum, slow, 5.0, trials, trial_timeout=10.0)
    store = RedisBreakers(redis_url)
    key = f"contract:{{{abs(hash((tuple(history), window_type, size, rate, slow, trials, minimum)))}}}"
    store.client.delete(key)
    machine = Machine()
    now = 1_700_000_000.0
    tokens: list[int] = []
    try:
        for step, value in history:
            if step == "wait":
                now += value
            elif step == "acquire":
                expected = machine.acquire(limits, now)
                got = store.acquire(key, limits, now)
                assert got[0] == expected[0]
                assert got[2] == expected[2]
                if expected[1] is None:
                    assert got[1] is None
                else:
                    assert got[1] == pytest.approx(expected[1])
                if expected[0]:
                    tokens.append(expected[0])
            elif tokens:
                token = tokens.pop(0)
                assert store.record(key, limits, token, int(value), now) == machine.record(
                    limits, token, int(value), now
                )
            status = store.status(key)
            assert (status["state"], status["calls"], status["failures"], status["slow"]) == (
                {0: "closed", 1: "open", 2: "half_open"}[machine.state],
                machine.n,
                machine.f,
                machine.s,
            )
    finally:
        store.client.delete(key)
        store.close()


def test_two_workers_share_one_breaker(redis_url: str) -> None:
    clock = FakeClock(start_wall=1_800_000_000.0)
    a, b = (
        build(redis_url, clock, minimum_calls=2, window_size=2),
        build(redis_url, clock, minimum_calls=2, window_size=2),
    )
    failing = ScriptedProvider([HTTPStatus(500)] * 2, clock=clock)
    ga = a.guard(provider="anthropic", model="m")(failing)
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            ga()
    # The other worker's very next call is refused.
    with pytest.raises(CircuitOpen):
        b.guard(provider="anthropic", model="m")(lambda: "ok")()
    policy_of(b).reset("anthropic", "m")
    assert a.guard(provider="anthropic", model="m")(lambda: "ok")() == "ok"
    client = redis.Redis.from_url(redis_url)
    for key in client.keys("*"):
        assert key.startswith(b"resilient:breaker:{")
        assert client.ttl(key) > 0
    client.close()
    a.close()
    b.close()


def test_async_on_redis(redis_url: str) -> None:
    clock = FakeClock(start_wall=1_800_000_100.0)
    pipeline = build(redis_url, clock, minimum_calls=1, window_size=1)
    provider = ScriptedProvider([HTTPStatus(503)], default="ok", clock=clock)

    async def call() -> Any:
        return await provider.acall()

    guarded = pipeline.guard(provider="async")(call)

    async def run() -> list[str]:
        out = []
        for _ in range(2):
            try:
                await guarded()
                out.append("ok")
            except ProviderHTTPError:
                out.append("failed")
            except CircuitOpen:
                out.append("open")
        await pipeline.aclose()
        return out

    assert asyncio.run(run()) == ["failed", "open"]
    assert asyncio.run(run())[0] == "open"  # a new event loop, the same shared state


def test_store_down_keeps_breaking_locally() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    clock = FakeClock()
    pipeline = build(dead, clock, minimum_calls=1, window_size=1)
    failing = ScriptedProvider([HTTPStatus(500)], default="ok", clock=clock)
    with pytest.raises(ProviderHTTPError):
        pipeline.guard(failing)()
    with pytest.raises(CircuitOpen):
        pipeline.guard(failing)()
    allow = build(dead, clock, minimum_calls=1, window_size=1, on_store_error="allow")
    assert allow.guard(lambda: "ok")() == "ok"
