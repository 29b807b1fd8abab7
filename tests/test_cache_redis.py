"""The cache on a real redis-server: shared entries, leases across workers, tags, every key expiring, store down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilient_cache
from resilient import Pipeline, capture_calls, request_context
from resilient.testing import FakeClock, HTTPStatus, RedisServer, ScriptedProvider
from resilient_cache import CachePolicy

from ._policies import Collect
from .test_cache import MESSAGES, anthropic_events, histories, message, play


@pytest.fixture
def redis_url(redis_store: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_store.url)
    client.flushdb()
    yield redis_store.url
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def worker(url: str, clock: FakeClock, observer: Collect | None = None, **cache: Any) -> Pipeline:
    """One worker's pipeline: its own in-process layer, the shared store at ``url``."""
    config = {"enabled": True, "cacheable": "always", **cache}
    return Pipeline(
        discover=False,
        plugins=[resilient_cache, *([observer] if observer else [])],
        env={},
        config={"store": url, "cache": config},
        clock=clock,
    )


def policy_of(pipeline: Pipeline) -> CachePolicy:
    return next(p for p in pipeline.policies if isinstance(p, CachePolicy))


def test_workers_share_entries_through_the_store(redis_url: str, clock: FakeClock, client: redis.Redis) -> None:
    observer = Collect()
    a, b = worker(redis_url, clock), worker(redis_url, clock, observer)
    provider = ScriptedProvider(default=message())
    ask_a = a.guard(provider="anthropic", operation="messages.create")(provider)
    ask_b = b.guard(provider="anthropic", operation="messages.create")(provider)
    first = ask_a(model="claude-x", messages=MESSAGES)
    with capture_calls() as calls:
        second = ask_b(model="claude-x", messages=MESSAGES)
        third = ask_b(model="claude-x", messages=MESSAGES)
    assert provider.calls == 1
    assert first == second == third
    assert type(second) is type(first)  # rebuilt as the SDK's own type
    hits = [e.layer for e in observer.events if e.name == "cache.hit"]  # type: ignore[attr-defined]
    assert hits == ["shared", "local"]
    key = calls[0].metadata["cache_key"]
    names = {k.decode() for k in client.keys("*")}
    assert names == {f"resilient:cache:{{{key}}}"}  # the lease was released; no prompt text in any name
    assert "France" not in next(iter(names))
    assert 0 < client.pttl(next(iter(names))) <= 300_000


def test_every_key_expires(redis_url: str, clock: FakeClock, client: redis.Redis) -> None:
    pipeline = worker(redis_url, clock, tags=["model", "tenant"], max_stale=60)
    ask = pipeline.guard(provider="p")(ScriptedProvider(default="ok"))
    with request_context(tenant="t1"):
        ask(model="m", q=1)
        ask(model="m", q=2)
    keys = client.keys("*")
    assert len(keys) == 4  # two entries, two tag sets
    for name in keys:
        assert client.pttl(name) > 0, name
    assert client.pttl(b"resilient:cache:tag:tenant%3Dt1") <= 360_000


def test_invalidate_by_key_and_by_tag_reaches_the_store(redis_url: str, clock: FakeClock, client: redis.Redis) -> None:
    a, b = worker(redis_url, clock, tags=["model"]), worker(redis_url, clock, tags=["model"], local_ttl=0)
    provider = ScriptedProvider(default="ok")
    ask_a, ask_b = a.guard(provider="p")(provider), b.guard(provider="p")(provider)
    with capture_calls() as calls:
        ask_a(model="m", q=1)
        ask_a(model="m", q=2)
        ask_a(model="n", q=3)
    assert policy_of(a).invalidate(key=calls[0].metadata["cache_key"]) == 1
    ask_b(model="m", q=1)
    assert provider.calls == 4
    assert policy_of(b).invalidate(tag="model=m") == 2
    assert not client.exists("resilient:cache:tag:model%3Dm")
    ask_b(model="m", q=2), ask_b(model="n", q=3)
    assert provider.calls == 5  # model n untouched


def test_a_follower_waits_for_the_lease_holder_then_takes_its_value(
    redis_url: str, client: redis.Redis, clock: FakeClock
) -> None:
    leader, follower = worker(redis_url, clock), worker(redis_url, clock, poll_interval=0.5)
    provider = ScriptedProvider(default="answer")
    ask_leader = leader.guard(provider="p")(provider)
    ask_follower = follower.guard(provider="p")(provider)
    key = policy_of(leader).key_for("p", "ScriptedProvider", {"q": 1})
    lease = f"resilient:cache:{{{key}}}:lease"
    client.set(lease, "another-worker", px=30_000)  # another worker is making the call

    polls = [0]
    real_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        polls[0] += 1
        if polls[0] == 3:  # the other worker finishes: its value lands, its lease goes
            client.delete(lease)
            with capture_calls():
                ask_leader(q=1)
        real_sleep(seconds)

    clock.sleep = sleep  # type: ignore[method-assign]
    with capture_calls() as calls:
        assert ask_follower(q=1) == "answer"
    assert provider.calls == 1  # the follower never called
    assert calls[0].metadata["cache"] == "hit"
    assert clock.sleeps == [0.5, 0.5, 0.5]


def test_a_dead_lease_holder_lets_a_follower_make_the_call(
    redis_url: str, client: redis.Redis, clock: FakeClock
) -> None:
    pipeline = worker(redis_url, clock, lease_ttl=5, poll_interval=1)
    provider = ScriptedProvider(default="answer")
    ask = pipeline.guard(provider="p")(provider)
    key = policy_of(pipeline).key_for("p", "ScriptedProvider", {"q": 1})
    lease = f"resilient:cache:{{{key}}}:lease"
    client.set(lease, "dead-worker", px=5_000)
    assert 0 < client.pttl(lease) <= 5_000  # it would expire on its own
    real_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        client.delete(lease)  # what its expiry does, without waiting for it
        real_sleep(seconds)

    clock.sleep = sleep  # type: ignore[method-assign]
    assert ask(q=1) == "answer"
    assert provider.calls == 1
    assert clock.sleeps == [1]
    assert not client.exists(lease)  # our own lease, released when the value was stored


def test_a_follower_stops_waiting_after_flight_wait(redis_url: str, client: redis.Redis, clock: FakeClock) -> None:
    pipeline = worker(redis_url, clock, flight_wait=2, poll_interval=0.5)
    provider = ScriptedProvider(default="answer")
    ask = pipeline.guard(provider="p")(provider)
    key = policy_of(pipeline).key_for("p", "ScriptedProvider", {"q": 1})
    client.set(f"resilient:cache:{{{key}}}:lease", "slow-worker", px=60_000)
    assert ask(q=1) == "answer"
    assert sum(clock.sleeps) == pytest.approx(2)
    assert provider.calls == 1


def test_leader_failure_releases_the_lease(redis_url: str, client: redis.Redis, clock: FakeClock) -> None:
    pipeline = worker(redis_url, clock)
    ask = pipeline.guard(provider="p")(ScriptedProvider([HTTPStatus(500)]))
    with pytest.raises(Exception, match="500"):
        ask(q=1)
    assert client.keys("*") == []


def test_async_workers_fifty_calls_one_provider_call(redis_url: str, clock: FakeClock) -> None:
    made = [0]

    async def provider(**kw: Any) -> str:
        made[0] += 1
        for _ in range(3):
            await asyncio.sleep(0)
        return "answer"

    async def main() -> list[Any]:
        workers = [worker(redis_url, clock, poll_interval=0.01) for _ in range(5)]
        asks = [w.guard(provider="p")(provider) for w in workers]
        try:
            return await asyncio.gather(*(asks[i % 5](q=1) for i in range(50)))
        finally:
            for w in workers:
                await w.aclose()

    assert asyncio.run(main()) == ["answer"] * 50
    assert made[0] == 1


def test_stale_entry_from_the_store_answers_a_failure(redis_url: str, clock: FakeClock) -> None:
    a = worker(redis_url, clock, ttl=10, max_stale=60)
    b = worker(redis_url, clock, ttl=10, max_stale=60)
    ask_a = a.guard(provider="p")(ScriptedProvider(default="fresh"))
    ask_b = b.guard(provider="p")(ScriptedProvider([HTTPStatus(503)]))
    ask_a(q=1)
    clock.advance(30)
    with capture_calls() as calls:
        assert ask_b(q=1) == "fresh"
    assert calls[0].metadata["cache"] == "stale"


def test_anthropic_stream_replayed_by_another_worker(redis_url: str, clock: FakeClock) -> None:
    events = anthropic_events()
    made = [0]

    def stream(**kw: Any) -> Iterator[Any]:
        made[0] += 1
        yield from events

    a, b = worker(redis_url, clock), worker(redis_url, clock)
    first = list(a.guard(provider="anthropic")(stream)(q=1))
    replay = list(b.guard(provider="anthropic")(stream)(q=1))
    assert first == events
    assert replay == events
    assert [type(c) for c in replay] == [type(e) for e in events]
    assert made[0] == 1

    async def astream(**kw: Any) -> Any:
        made[0] += 1
        for e in events:
            yield e

    async def read() -> list[Any]:
        c = worker(redis_url, clock)
        try:
            return [x async for x in c.guard(provider="anthropic", operation="stream")(astream)(q=1)]
        finally:
            await c.aclose()

    assert asyncio.run(read()) == events
    assert made[0] == 1


def test_store_down_fails_open_and_backs_off(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = worker("redis://127.0.0.1:1", clock, observer, store_retry=30)
    provider = ScriptedProvider(default="ok")
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1) == "ok"
    assert ask(q=1) == "ok"  # from the local layer while the store is left alone
    assert provider.calls == 1
    errors = [e for e in observer.events if e.name == "cache.store_error"]
    assert len(errors) == 1
    assert errors[0].action == "get"  # type: ignore[attr-defined]
    assert policy_of(pipeline).health()["degraded"] is True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=50), tenant=st.sampled_from([None, "t1", "t2"]))
def test_a_hit_from_the_store_equals_the_original(redis_url: str, text: str, tenant: str | None) -> None:
    clock = FakeClock()
    original = message(text or "x")
    a, b = worker(redis_url, clock, local_ttl=0), worker(redis_url, clock, local_ttl=0)
    provider = ScriptedProvider(default=original)
    with request_context(tenant=tenant):
        a.guard(provider="anthropic")(provider)(q=text)
        hit = b.guard(provider="anthropic")(provider)(q=text)
    with request_context(tenant="other"):
        other = b.guard(provider="anthropic")(ScriptedProvider(default=message("other")))(q=text)
    assert hit == original
    assert other.content[0].text == "other"  # type: ignore[union-attr]  # never another tenant's entry
    a.close()
    b.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories(), max_stale=st.sampled_from([0.0, 20.0]), local_ttl=st.sampled_from([0.0, 5.0]))
def test_never_older_than_ttl_nor_another_tenants_through_the_store(
    redis_url: str, client: redis.Redis, history: list[tuple[str, Any]], max_stale: float, local_ttl: float
) -> None:
    client.flushdb()
    play(history, max_stale, store=redis_url, local_ttl=local_ttl)


def test_async_store_down_fails_open(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = worker("redis://127.0.0.1:1", clock, observer, store_retry=30)
    provider = ScriptedProvider(default="ok")
    ask = pipeline.guard(provider="p")(provider.acall)
    chunks = pipeline.guard(provider="p", operation="s")(provider.astream)

    async def main() -> list[Any]:
        try:
            return [await ask(q=1), await ask(q=1), [c async for c in chunks(q=1)]]
        finally:
            await pipeline.aclose()

    assert asyncio.run(main()) == ["ok", "ok", ["ok"]]
    assert provider.calls == 2  # the second value came from the local layer
    assert [e.action for e in observer.events if e.name == "cache.store_error"] == ["get"]  # type: ignore[attr-defined]
