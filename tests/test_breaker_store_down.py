"""The breaker's Redis store fails and comes back: one call at a time probes it, the others decide locally."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilient import CircuitOpen, Pipeline
from resilient.testing import FakeClock, HTTPStatus, ProviderHTTPError, RedisServer, ScriptedProvider, redis_server
from resilient_breaker import BreakerPolicy

RETRY = 5.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is killed, restarted and paused."""
    with redis_server() as srv:
        yield srv


def build(url: str, clock: FakeClock, **breaker: Any) -> Pipeline:
    config = {"store": url, "disable": ["quota", "retry"], "breaker": {"store_retry": RETRY, **breaker}}
    return Pipeline(env={}, config=config, clock=clock)


def policy_of(pipeline: Pipeline) -> BreakerPolicy:
    return next(p for p in pipeline.policies if isinstance(p, BreakerPolicy))


class Spy:
    """Counts the store operations that reach the breaker's Redis scripts; ``entered`` is set by the first."""

    def __init__(self, store: Any) -> None:
        self.calls = 0
        self.entered = threading.Event()
        for name in ("acquire", "record"):
            setattr(store, name, self._counted(getattr(store, name)))

    def _counted(self, method: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(method):

            async def acounted(*args: Any) -> Any:
                self.calls += 1
                self.entered.set()
                return await method(*args)

            return acounted

        def counted(*args: Any) -> Any:
            self.calls += 1
            self.entered.set()
            return method(*args)

        return counted


def test_a_failed_store_is_probed_by_one_call_while_the_others_break_locally(server: RedisServer) -> None:
    clock = FakeClock(start_wall=1_800_000_000.0)
    pipeline = build(server.url, clock, minimum_calls=2, window_size=2)
    policy = policy_of(pipeline)
    assert policy._shared is not None
    spy = Spy(policy._shared)
    ok = pipeline.guard(provider="p")(lambda: "ok")
    assert ok() == "ok"
    assert spy.calls == 2  # admission and outcome, on the store

    server.kill()
    assert ok() == "ok"  # the store refuses the admission: decided locally, the call goes through
    down = spy.calls
    failing = pipeline.guard(provider="p")(ScriptedProvider([HTTPStatus(503)], clock=clock))
    with pytest.raises(ProviderHTTPError):
        failing()
    with pytest.raises(CircuitOpen):  # one failure in two calls: the local breaker opened, the store unasked
        ok()
    assert spy.calls == down

    server.restart()
    server.pause()  # back, but hung: a probe waits for its answer (up to the socket timeout)
    clock.advance(RETRY)
    spy.entered.clear()
    probe = threading.Thread(target=ok)  # the store (new, empty) says closed: the probe goes through
    probe.start()
    assert spy.entered.wait(10), "the first call after store_retry should probe the store"
    for _ in range(20):  # while the probe is out, every other call decides locally, at once
        with pytest.raises(CircuitOpen):
            ok()
    assert spy.calls == down + 1
    server.resume()
    probe.join(10)
    assert not probe.is_alive()
    # The probe was answered (its outcome went to the store too): every call is back on the store.
    assert ok() == "ok"
    assert spy.calls == down + 2 + 2
    pipeline.close()


def test_a_probe_that_fails_keeps_the_others_off_the_store_for_another_store_retry(server: RedisServer) -> None:
    clock = FakeClock(start_wall=1_800_000_100.0)
    pipeline = build(server.url, clock)
    policy = policy_of(pipeline)
    assert policy._shared is not None
    spy = Spy(policy._shared)
    ok = pipeline.guard(provider="p")(lambda: "ok")
    server.kill()
    assert ok() == "ok"
    assert spy.calls == 1
    for _ in range(3):
        assert [ok() for _ in range(10)] == ["ok"] * 10
        assert spy.calls == 1  # local while store_retry runs
        clock.advance(RETRY)
        assert ok() == "ok"  # the probe: refused at once (killed), and local again
        assert spy.calls == 2
        spy.calls = 1
    server.restart()
    clock.advance(RETRY)
    assert ok() == "ok"  # the probe, answered
    assert [ok() for _ in range(3)] == ["ok"] * 3
    assert spy.calls == 1 + 2 * 4
    pipeline.close()


def test_allow_lets_every_call_through_while_the_store_is_away(server: RedisServer) -> None:
    clock = FakeClock(start_wall=1_800_000_200.0)
    pipeline = build(server.url, clock, minimum_calls=1, window_size=1, on_store_error="allow")
    server.kill()
    failing = pipeline.guard(provider="p")(ScriptedProvider([HTTPStatus(503)] * 5, clock=clock))
    for _ in range(5):  # nothing counted: no local breaker opens
        with pytest.raises(ProviderHTTPError):
            failing()
    policy = policy_of(pipeline)
    assert policy._local.status(policy.key_for(policy._base, "p", None, None))["calls"] == 0
    pipeline.close()


def test_async_probe_one_at_a_time(server: RedisServer) -> None:
    clock = FakeClock(start_wall=1_800_000_300.0)
    pipeline = build(server.url, clock)
    policy = policy_of(pipeline)

    async def answer() -> str:
        return "ok"

    ok = pipeline.guard(provider="p")(answer)

    async def run() -> None:
        assert await ok() == "ok"  # makes this loop's client
        assert policy._ashared is not None
        spy = Spy(policy._ashared)
        server.kill()
        assert await ok() == "ok"
        assert spy.calls == 1
        server.restart()
        server.pause()
        clock.advance(RETRY)
        spy.entered.clear()
        probe = asyncio.ensure_future(ok())
        while not spy.entered.is_set():
            await asyncio.sleep(0)
        assert await asyncio.gather(*(ok() for _ in range(20))) == ["ok"] * 20
        assert spy.calls == 2  # the probe alone reached the store
        server.resume()
        assert await probe == "ok"
        assert await ok() == "ok"
        assert spy.calls == 2 + 1 + 2  # the probe's outcome, then a call on the store
        await pipeline.aclose()

    asyncio.run(run())
