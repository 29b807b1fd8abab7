"""A call's limits, and the key's shared pause, in one Redis round trip (quota ``_batch``), on a real redis-server.

The batch must decide as hitting the limits one by one does and leave the
store as it would: the property runs the same calls through a batching
pipeline and a one-by-one pipeline and compares every decision and every
window's remaining.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import Pipeline, QuotaExceeded
from resilient.testing import HTTPStatus, ProviderHTTPError, RedisServer, ScriptedProvider
from resilient_quota import QuotaPolicy

STRATEGIES = ("moving-window", "fixed-window", "sliding-window-counter")


def quota_of(pipeline: Pipeline) -> QuotaPolicy:
    return next(p for p in pipeline.policies if isinstance(p, QuotaPolicy))


def build(url: str, prefix: str, *, batches: bool = True, **quota: Any) -> Pipeline:
    pipeline = Pipeline(
        env={},
        config={"store": url, "key_prefix": prefix, "disable": ["retry", "breaker", "cache"], "quota": quota},
    )
    state = quota_of(pipeline).state
    assert state.batches  # a plain redis:// store batches
    state.batches = batches
    return pipeline


@contextlib.contextmanager
def round_trips() -> Iterator[list[int]]:
    """Count what redis-py sends (one send per command, or per pipeline), sync and asyncio."""
    import redis.asyncio.connection
    import redis.connection

    sent = [0]
    sync_send = redis.connection.Connection.send_packed_command
    async_send = redis.asyncio.connection.Connection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        sync_send(self, command, check_health)

    async def acounted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        await async_send(self, command, check_health)

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    redis.asyncio.connection.Connection.send_packed_command = acounted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        redis.connection.Connection.send_packed_command = sync_send  # type: ignore[method-assign]
        redis.asyncio.connection.Connection.send_packed_command = async_send  # type: ignore[method-assign]


def reply(**kw: Any) -> dict[str, Any]:
    return {"usage": {"input_tokens": 10, "output_tokens": 5}}


def remaining(pipeline: Pipeline, provider: str) -> list[tuple[str, int]]:
    status = quota_of(pipeline).status(provider)
    return [(row["limit"], row["remaining"]) for row in status["limits"]]


def test_three_limits_and_the_pause_read_take_one_round_trip(redis_store: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    limits = {"requests": "50/minute;1000/day", "total_tokens": "100000/minute", "report_remaining": 0}
    pipeline = build(redis_store.url, prefix, **limits)
    guarded = pipeline.guard(provider="anthropic")(reply)
    guarded(max_tokens=100)  # scripts loaded, connection made
    quota_of(pipeline).state._pauses.clear()  # the pause is due for a read again
    with round_trips() as sent:
        guarded(max_tokens=100)
    # Admission: one pipeline, the pause read and three hits. Then the token reservation moves to the real
    # usage (a refund): its window read, then the move, two round trips whatever the number of token limits.
    one_by_one = build(redis_store.url, prefix + "seq:", batches=False, **limits)
    seq = one_by_one.guard(provider="anthropic")(reply)
    seq(max_tokens=100)
    quota_of(one_by_one).state._pauses.clear()
    with round_trips() as sent_seq:
        seq(max_tokens=100)
    assert sent[0] == 1 + 2
    # One by one: the pause read, three hits, then the refund's expiry read, count read and move.
    assert sent_seq[0] == 1 + 3 + 3
    assert remaining(pipeline, "anthropic") == remaining(one_by_one, "anthropic")


def test_two_request_limits_sync_fast_path_batches(redis_store: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    guarded = build(redis_store.url, prefix, requests="50/minute;1000/day", report_remaining=0).guard(
        provider="anthropic"
    )(lambda: 1)
    guarded()
    with round_trips() as sent:
        for _ in range(5):
            guarded()
    assert sent[0] == 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_refused_call_gives_back_what_later_limits_counted(redis_store: RedisServer, strategy: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pipeline = build(redis_store.url, prefix, requests="2/minute;100/hour", strategy=strategy)
    guarded = pipeline.guard(provider="p")(lambda: 1)
    guarded(), guarded()
    for _ in range(3):
        with pytest.raises(QuotaExceeded, match="2 per 1 minute"):
            guarded()
    rows = dict(remaining(pipeline, "p"))
    # The hour limit comes after the refusing minute limit: refused calls never reach it, batched or not.
    assert rows["requests 100 per 1 hour"] == 98
    assert rows["requests 2 per 1 minute"] == 0


def test_a_pause_found_in_the_batch_refuses_and_counts_nothing(redis_store: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    limits = {"requests": "5/minute;100/hour", "strategy": "moving-window", "total_tokens": "10000/hour"}
    a, b = build(redis_store.url, prefix, **limits), build(redis_store.url, prefix, **limits)
    ga = a.guard(provider="openai")(ScriptedProvider([HTTPStatus(429, {"retry-after": "30"})], default="ok"))
    gb = b.guard(provider="openai")(reply)
    gb(max_tokens=10)
    before = remaining(b, "openai")
    with pytest.raises(ProviderHTTPError):
        ga()  # a's 429 pauses the key for the fleet
    quota_of(b).state._pauses.clear()  # b reads the pause with its next hits
    with round_trips() as sent, pytest.raises(QuotaExceeded, match="slow down") as info:
        gb(max_tokens=10)
    assert info.value.retry_after is not None
    assert 28 <= info.value.retry_after <= 30
    assert sent[0] >= 2  # the batch, then giving back what it counted
    # a's own refused call counted one request (the provider answered 429 after admission)
    after = dict(remaining(b, "openai"))
    assert after["requests 5 per 1 minute"] == dict(before)["requests 5 per 1 minute"] - 1
    assert after["total_tokens 10000 per 1 hour"] == dict(before)["total_tokens 10000 per 1 hour"]


@pytest.mark.parametrize("requests", ["1000/day", "50/minute;1000/day"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scripts_lost_by_the_server_are_loaded_again(redis_store: RedisServer, requests: str, strategy: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pipeline = build(redis_store.url, prefix, requests=requests, strategy=strategy)
    guarded = pipeline.guard(provider="p")(lambda: 1)
    guarded()
    client = redis.Redis.from_url(redis_store.url)
    client.script_flush()
    client.close()
    assert guarded() == 1
    assert dict(remaining(pipeline, "p"))["requests 1000 per 1 day"] == 998


def test_async_calls_batch_too(redis_store: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pipeline = build(redis_store.url, prefix, requests="3/minute;100/hour", total_tokens="100000/hour")

    async def call(**kw: Any) -> Any:
        return reply()

    guarded = pipeline.guard(provider="anthropic")(call)

    async def main() -> list[int]:
        sent_per_call = []
        for _ in range(3):
            with round_trips() as sent:
                await guarded(max_tokens=10)
            sent_per_call.append(sent[0])
        with pytest.raises(QuotaExceeded, match="3 per 1 minute"):
            await guarded(max_tokens=10)
        await pipeline.aclose()
        return sent_per_call

    sent_per_call = asyncio.run(main())
    # Admission in one round trip; settling the token reservation to the real usage in two (read, move).
    assert max(sent_per_call[1:]) <= 3
    rows = dict(remaining(pipeline, "anthropic"))
    assert rows["requests 100 per 1 hour"] == 97
    assert rows["total_tokens 100000 per 1 hour"] == 100000 - 3 * 15


calls = st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=12)
amounts = st.integers(min_value=1, max_value=6)
counter = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    strategy=st.sampled_from(STRATEGIES),
    per_minute=amounts,
    per_hour=amounts,
    tokens=st.integers(min_value=100, max_value=1500),
    token_strategy=st.sampled_from(["fixed-window", "sliding-window-counter"]),
    max_tokens=calls,
)
def test_batched_and_one_by_one_decide_and_count_alike(
    redis_store: RedisServer,
    strategy: str,
    per_minute: int,
    per_hour: int,
    tokens: int,
    token_strategy: str,
    max_tokens: list[int],
) -> None:
    """Same calls, same decisions, same remaining everywhere; limits' windows on the real clock (ms apart)."""
    limits = {
        "requests": f"{per_minute}/minute;{per_hour}/hour",
        "strategy": strategy,
        "total_tokens": f"{tokens}/hour",
        "token_strategy": token_strategy,
        "report_remaining": 0,
    }
    run = next(counter)
    pipelines = [
        build(redis_store.url, f"prop{run}-{mode}:", batches=mode == "batch", **limits) for mode in ("batch", "seq")
    ]
    decisions: list[list[str]] = [[], []]
    for i, pipeline in enumerate(pipelines):
        guarded = pipeline.guard(provider="p")(lambda **kw: {"usage": {"input_tokens": 1, "output_tokens": 2}})
        for n in max_tokens:
            try:
                guarded(max_tokens=n)
                decisions[i].append("ok")
            except QuotaExceeded as exc:
                decisions[i].append(exc.limit or "")
    assert decisions[0] == decisions[1]
    assert remaining(pipelines[0], "p") == remaining(pipelines[1], "p")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_async_single_limit_is_one_round_trip_and_refuses_at_the_limit(redis_store: RedisServer, strategy: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pipeline = build(redis_store.url, prefix, requests="3/minute", strategy=strategy, report_remaining=0)

    async def call() -> int:
        return 1

    guarded = pipeline.guard(provider="p")(call)

    async def main() -> list[int]:
        await guarded()  # the pause read (with the hit), connection made
        sent_per_call = []
        for _ in range(2):
            with round_trips() as sent:
                await guarded()
            sent_per_call.append(sent[0])
        with pytest.raises(QuotaExceeded, match="3 per 1 minute") as info:
            await guarded()
        assert info.value.retry_after is not None
        assert 0 < info.value.retry_after <= 60.1
        await pipeline.aclose()
        return sent_per_call

    assert asyncio.run(main()) == [1, 1]
    assert dict(remaining(pipeline, "p"))["requests 3 per 1 minute"] == 0


def test_async_store_calls_are_bounded_by_the_socket_timeout_when_redis_hangs() -> None:
    """The async client bounds its writes with asyncio.timeout (no task per command): a hung server still
    fails a call within the timeout, and the client works again once the server is back."""
    import time

    from resilient.storage import async_redis_client
    from resilient.testing import redis_server

    with redis_server() as server:

        async def main() -> float:
            client = async_redis_client(server.url, timeout=0.3)
            assert client.connection_pool.connection_class.__module__ == "resilient.storage"
            assert await client.incr("k") == 1
            server.pause()
            started = time.monotonic()
            try:
                with pytest.raises(redis.exceptions.TimeoutError):
                    await client.incr("k")
                took = time.monotonic() - started
            finally:
                server.resume()
            assert await client.incr("k") >= 2
            await client.aclose()
            return took

        took = asyncio.run(main())
    assert took < 1.5
