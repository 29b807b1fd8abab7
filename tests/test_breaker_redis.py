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
from resilient_breaker._machine import IGNORED, TOKEN_FULL, Limits, Machine
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
        st.tuples(st.just("defer"), st.just(0)),  # a success held back when its permit allows it
    ),
    max_size=40,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
@example(  # a held-back success pushes the window's failure out when it is recorded
    history=[
        ("acquire", 0),
        ("record", 1),
        ("acquire", 0),
        ("record", 0),
        ("acquire", 0),
        ("defer", 0),
        ("acquire", 0),
    ],
    window_type="count",
    size=2,
    rate=1.0,
    slow=None,
    trials=1,
    minimum=2,
)
@example(  # a time window: successes in one second share its bucket, which later leaves whole
    history=[
        ("acquire", 0),
        ("record", 0),
        ("acquire", 0),
        ("record", 0),
        ("wait", 1.0),
        ("acquire", 0),
        ("record", 0),
        ("wait", 1.0),
        ("acquire", 0),
        ("record", 1),
    ],
    window_type="time",
    size=2,
    rate=1.0,
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
    deferred: tuple[int, int] | None = None  # as the policy holds them: the newest generation's

    def flush() -> tuple[int, int] | None:
        nonlocal deferred
        held, deferred = deferred, None
        if held is not None:
            machine.record_deferred(limits, *held)
        return held

    try:
        for step, value in history:
            if step == "wait":
                now += value
            elif step == "defer" and tokens and tokens[0] & 3 == TOKEN_FULL:
                token = tokens.pop(0)
                if deferred is None or deferred[0] >> 2 < token >> 2:
                    deferred = (token, 1)
                elif deferred[0] == token:
                    deferred = (token, deferred[1] + 1)
            elif step == "acquire":
                held = flush()
                expected = machine.acquire(limits, now)
                got = store.acquire(key, limits, now, held)
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
                held = flush()
                code = 0 if step == "defer" else int(value)
                assert store.record(key, limits, token, code, now, held) == machine.record(limits, token, code, now)
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


def test_a_success_in_a_full_window_rides_with_the_next_call(redis_url: str) -> None:
    """One round trip per succeeding call once the window is full; held-back successes still count."""
    clock = FakeClock(start_wall=1_800_000_200.0)
    pipeline = build(redis_url, clock, minimum_calls=4, window_size=4, failure_rate=0.75)
    policy = policy_of(pipeline)
    assert policy._shared is not None
    scripts = {"n": 0}

    def counted(method: Any) -> Any:
        def run(*args: Any) -> Any:
            scripts["n"] += 1
            return method(*args)

        return run

    for name in ("acquire", "record"):
        setattr(policy._shared, name, counted(getattr(policy._shared, name)))
    provider = ScriptedProvider([HTTPStatus(503)], default="ok", clock=clock)
    guarded = pipeline.guard(provider="anthropic", model="m")(provider)
    with pytest.raises(ProviderHTTPError):
        guarded()
    for _ in range(3):  # the window fills: a success here may trip it, so each is recorded at once
        assert guarded() == "ok"
    assert scripts["n"] == 8

    def status() -> dict[str, Any]:
        return policy.status("anthropic", "m")

    assert (status()["calls"], status()["failures"]) == (4, 1)
    assert guarded() == "ok"  # full: this success is held back...
    assert scripts["n"] == 9
    assert status()["failures"] == 1
    assert guarded() == "ok"  # ...and recorded by the next call's admission, pushing the failure out
    assert scripts["n"] == 10
    assert status()["failures"] == 0
    pipeline.close()  # what is still held is recorded on the way out
    assert scripts["n"] == 11


def test_held_back_successes_never_hide_an_open_breaker(redis_url: str) -> None:
    """A worker holding successes sees the breaker another worker opened at its very next call."""
    clock = FakeClock(start_wall=1_800_000_300.0)
    a, b = (build(redis_url, clock, minimum_calls=2, window_size=2) for _ in range(2))
    ok = a.guard(provider="anthropic", model="m")(lambda: "ok")
    assert [ok() for _ in range(5)] == ["ok"] * 5  # a holds successes of a full window
    failing = b.guard(provider="anthropic", model="m")(ScriptedProvider([HTTPStatus(500)], clock=clock))
    with pytest.raises(ProviderHTTPError):
        failing()  # one failure in a window of two: open
    with pytest.raises(CircuitOpen):
        ok()
    # a's held successes belonged to the closed breaker's generation: dropped, not counted now
    assert policy_of(a).status("anthropic", "m")["calls"] == 0
    a.close()
    b.close()


def test_streams_hold_back_their_successes_too(redis_url: str) -> None:
    clock = FakeClock(start_wall=1_800_000_400.0)
    pipeline = build(redis_url, clock, minimum_calls=2, window_size=2)
    policy = policy_of(pipeline)
    assert policy._shared is not None
    assert policy._ashared is not None
    scripts = {"n": 0}

    def counted(method: Any) -> Any:
        if asyncio.iscoroutinefunction(method):

            async def arun(*args: Any) -> Any:
                scripts["n"] += 1
                return await method(*args)

            return arun

        def run(*args: Any) -> Any:
            scripts["n"] += 1
            return method(*args)

        return run

    for store in (policy._shared, policy._ashared):
        for name in ("acquire", "record"):
            setattr(store, name, counted(getattr(store, name)))

    def chunks() -> Any:
        yield from "abc"

    async def achunks() -> Any:
        for chunk in "abc":
            yield chunk

    stream = pipeline.guard(provider="s", kind="stream")(chunks)
    assert ["".join(stream()) for _ in range(4)] == ["abc"] * 4
    assert scripts["n"] == 2 + 2 + 1 + 1  # the window fills (admission, outcome), then admissions alone

    async def consume() -> list[str]:
        astream = pipeline.guard(provider="s", kind="astream")(achunks)
        out = []
        for _ in range(2):
            out.append("".join([c async for c in astream()]))
        await pipeline.aclose()
        return out

    assert asyncio.run(consume()) == ["abc"] * 2
    assert scripts["n"] == 6 + 2 + 1  # two admissions; aclose records the successes still held
    assert policy.status("s")["calls"] == 2
    pipeline.close()


def test_scripts_are_loaded_again_when_the_server_forgot_them(redis_url: str) -> None:
    clock = FakeClock(start_wall=1_800_000_500.0)
    pipeline = build(redis_url, clock, minimum_calls=1, window_size=1)
    guarded = pipeline.guard(provider="flushed")(ScriptedProvider([HTTPStatus(500)], default="ok", clock=clock))
    client = redis.Redis.from_url(redis_url)
    client.script_flush()  # as after a restart or a failover: EVALSHA answers NOSCRIPT
    with pytest.raises(ProviderHTTPError):
        guarded()
    client.script_flush()
    with pytest.raises(CircuitOpen):  # the failure was recorded in Redis, and read back from it
        guarded()
    assert policy_of(pipeline).status("flushed")["state"] == "open"
    client.close()
    pipeline.close()
