"""The testing toolkit users build on: FakeClock, ScriptedProvider, fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import Pipeline, QuotaExceeded
from resilient.masking import mask
from resilient.testing import (
    Chunks,
    FakeClock,
    HTTPStatus,
    Latency,
    ProviderHTTPError,
    RedisServer,
    ScriptedProvider,
    redis_server,
)
from resilient.testing.pytest_plugin import StoreFixture
from resilient.testing.strategies import Secret, text_with_secret


@given(steps=st.lists(st.floats(0, 1e6), max_size=20))
def test_fake_clock_moves_only_when_told(steps: list[float]) -> None:
    clock = FakeClock(start=5.0, start_wall=100.0)
    for step in steps:
        clock.sleep(step)
    assert clock.monotonic() == pytest.approx(5.0 + sum(steps))
    assert clock.time() - clock.monotonic() == pytest.approx(95.0)
    assert clock.sleeps == steps


def test_fake_clock_async_sleep_and_no_going_back() -> None:
    clock = FakeClock()
    asyncio.run(clock.asleep(3))
    assert clock.monotonic() == 3
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_scripted_provider_plays_its_script_then_the_default() -> None:
    clock = FakeClock()

    class Boom(Exception):
        pass

    provider = ScriptedProvider(
        ["a", Boom, HTTPStatus(429, {"retry-after": "2"}), Latency(1.5, "slow"), Boom("x")],
        default="z",
        clock=clock,
    )
    assert provider(model="m") == "a"
    with pytest.raises(Boom):
        provider()
    with pytest.raises(ProviderHTTPError) as info:
        provider()
    assert info.value.status_code == 429
    assert info.value.response.headers == {"retry-after": "2"}
    assert provider() == "slow"
    assert clock.monotonic() == 1.5
    with pytest.raises(Boom, match="x"):
        provider()
    assert provider() == "z"
    assert provider.calls == 6
    assert provider.requests[0] == {"model": "m"}


def test_scripted_streams_and_cut_streams() -> None:
    provider = ScriptedProvider([Chunks(["a", "b"]), Chunks(["c"], error=ConnectionResetError())])
    assert list(provider.stream()) == ["a", "b"]
    got: list[str] = []
    with pytest.raises(ConnectionResetError):
        for chunk in provider.stream():
            got.append(chunk)
    assert got == ["c"]

    async def collect() -> list[Any]:
        return [c async for c in ScriptedProvider([Chunks([1, 2, 3])]).astream()]

    assert asyncio.run(collect()) == [1, 2, 3]


@given(rate=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_flaky_provider_is_repeatable(rate: float, seed: int) -> None:
    def run() -> list[str]:
        provider = ScriptedProvider.flaky(rate, seed=seed)
        out = []
        for _ in range(20):
            try:
                out.append(provider())
            except ProviderHTTPError as exc:
                out.append(str(exc.status_code))
        return out

    first = run()
    assert first == run()
    if rate == 0:
        assert set(first) == {"ok"}
    if rate == 1:
        assert "ok" not in first


def test_pytest_fixtures_are_registered(
    fake_clock: FakeClock,
    scripted_provider: Callable[..., ScriptedProvider],
    resilient_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = resilient_pipeline(config={"retry": {"max_attempts": 2}})
    assert pipeline.runtime.clock is fake_clock
    provider = scripted_provider([HTTPStatus(503), "ok"])
    assert pipeline.guard(provider)() == "ok"
    assert fake_clock.sleeps  # the backoff ran on the fake clock
    assert provider.clock is fake_clock


def test_redis_store_fixture_is_a_real_private_server(redis_store: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_store.url, socket_timeout=5)
    try:
        assert client.ping()
        info = client.info("server")
        assert info["tcp_port"] == redis_store.port
        assert info["process_id"] == redis_store.pid
        client.set("resilient:test", "1", ex=10)
        assert client.get("resilient:test") == b"1"
    finally:
        client.delete("resilient:test")
        client.close()


def test_redis_server_is_stopped_after_the_block() -> None:
    import shutil
    import socket

    from resilient.testing._redis import redis_required

    if shutil.which("redis-server") is None:
        if redis_required():
            pytest.fail("RESILIENT_REQUIRE_REDIS is set but redis-server is not installed")
        pytest.skip("redis-server is not installed")
    with redis_server() as server:
        port = server.port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        pass


# ---------------------------------------------------------------- strategies


@settings(max_examples=100, deadline=None)
@given(text_with_secret())
def test_text_with_secret_has_the_value_once_where_it_was_put(pair: tuple[str, Secret]) -> None:
    text, secret = pair
    at = text.find(secret.value)
    assert at != -1
    assert text.find(secret.value, at + 1) == -1  # overlapping repeats count too
    planted = text.find(secret.snippet)
    assert planted <= at < planted + len(secret.snippet)  # and it is the secret's own


@settings(max_examples=100, deadline=None)
@given(text_with_secret(st.just(Secret("password", "password=00000000", "00000000")), st.just("00000000 00000000")))
def test_text_with_secret_leaves_out_filler_that_repeats_the_value(pair: tuple[str, Secret]) -> None:
    text, secret = pair
    assert text.count(secret.value) == 1  # the filler is dropped, not the example


@settings(max_examples=100, deadline=None)
@given(text_with_secret())
def test_the_obvious_masking_property_holds_without_assume(pair: tuple[str, Secret]) -> None:
    text, secret = pair
    assert secret.value not in mask(text)


# ---------------------------------------------------------------- stores of one shape


@pytest.fixture(params=["memory_store", "redis_store"])
def store(request: pytest.FixtureRequest) -> StoreFixture:
    found: StoreFixture = request.getfixturevalue(request.param)
    found.flush()
    return found


def test_memory_and_redis_stores_have_one_shape(store: StoreFixture, fake_clock: FakeClock) -> None:
    assert isinstance(store, StoreFixture)
    assert store.url.split("://")[0] in ("memory", "redis")
    assert store.key_prefix
    config = store.config(quota={"requests": "1/minute"}, disable=["retry", "breaker"])
    assert config == {
        "store": store.url,
        "key_prefix": store.key_prefix,
        "quota": {"requests": "1/minute"},
        "disable": ["retry", "breaker"],
    }
    assert store.config(key_prefix="mine:")["key_prefix"] == "mine:"
    first = Pipeline(config=config, env={}, clock=fake_clock)
    call = first.guard(lambda: "ok", provider="p", operation="o")
    assert call() == "ok"
    with pytest.raises(QuotaExceeded):
        call()
    first.close()
    store.flush()  # the next pipeline starts on an empty store: its window is new
    second = Pipeline(config=config, env={}, clock=fake_clock)
    assert second.guard(lambda: "ok", provider="p", operation="o")() == "ok"
    second.close()
