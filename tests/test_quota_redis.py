"""The quota plugin on a real redis-server: shared by processes, pauses shared by the fleet."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from typing import Any

import pytest
import redis

from resilient import Pipeline, QuotaExceeded
from resilient.testing import HTTPStatus, ProviderHTTPError, RedisServer, ScriptedProvider


@pytest.fixture
def redis_url(redis_store: RedisServer) -> str:
    client = redis.Redis.from_url(redis_store.url)
    client.flushdb()
    client.close()
    return redis_store.url


def build(url: str, **quota: Any) -> Pipeline:
    return Pipeline(env={}, config={"store": url, "disable": ["retry", "breaker"], "quota": quota})


def test_request_limit_holds_on_redis(redis_url: str) -> None:
    for strategy in ("moving-window", "fixed-window", "sliding-window-counter"):
        guarded = build(redis_url, requests="5/minute", strategy=strategy).guard(provider=f"p-{strategy}")(lambda: 1)
        results = []
        for _ in range(8):
            try:
                results.append(guarded())
            except QuotaExceeded as exc:
                assert exc.retry_after is not None
                results.append(0)
        assert results == [1] * 5 + [0] * 3, strategy


def test_two_pipelines_share_the_count_and_the_pause(redis_url: str) -> None:
    a, b = build(redis_url, requests="3/minute"), build(redis_url, requests="3/minute")
    ga, gb = a.guard(provider="anthropic")(lambda: "a"), b.guard(provider="anthropic")(lambda: "b")
    ga(), gb(), ga()
    with pytest.raises(QuotaExceeded):
        gb()
    # A 429 seen by one worker pauses the key for the other.
    provider = ScriptedProvider([HTTPStatus(429, {"retry-after": "30"})], default="ok")
    with pytest.raises(ProviderHTTPError):
        a.guard(provider="openai")(provider)()
    with pytest.raises(QuotaExceeded, match="slow down") as info:
        b.guard(provider="openai")(provider)()
    assert info.value.retry_after is not None
    assert 28 <= info.value.retry_after <= 30
    assert provider.calls == 1


def test_keys_carry_the_prefix_and_a_ttl(redis_url: str) -> None:
    pipeline = Pipeline(
        env={},
        config={
            "store": redis_url,
            "key_prefix": "myapp:",
            "disable": ["retry", "breaker"],
            "quota": {"requests": "5/minute", "total_tokens": "1000/minute"},
        },
    )
    pipeline.guard(provider="anthropic")(lambda **kw: {"usage": {"input_tokens": 3, "output_tokens": 4}})(max_tokens=9)
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("*")
    assert keys
    for key in keys:
        assert key.startswith(b"myapp:quota:"), key
        assert client.ttl(key) > 0, key
    client.close()


def test_token_reconciliation_on_redis(redis_url: str) -> None:
    for strategy in ("fixed-window", "sliding-window-counter"):
        pipeline = build(redis_url, total_tokens="1000/minute", token_strategy=strategy)
        provider = f"tok-{strategy}"
        guarded = pipeline.guard(provider=provider)(lambda **kw: {"usage": {"input_tokens": 10, "output_tokens": 90}})
        for _ in range(5):
            guarded(max_tokens=500)  # reserves 500 (+ input estimate), records 100
        policy = next(p for p in pipeline.policies if p.name == "quota")
        rows = policy.status(provider)["limits"]  # type: ignore[attr-defined]
        assert rows[0]["remaining"] == 500, strategy


def test_async_on_redis(redis_url: str) -> None:
    pipeline = build(redis_url, requests="2/minute", output_tokens="100/minute")

    async def create(**kwargs: Any) -> Any:
        return {"usage": {"input_tokens": 1, "output_tokens": 10}}

    guarded = pipeline.guard(provider="async")(create)

    async def run() -> list[str]:
        out = []
        for _ in range(3):
            try:
                await guarded(max_tokens=50)
                out.append("ok")
            except QuotaExceeded as exc:
                out.append(exc.limit or "")
        await pipeline.aclose()  # the async client's connections belong to this loop
        return out

    assert asyncio.run(run()) == ["ok", "ok", "requests 2 per 1 minute"]
    policy = next(p for p in pipeline.policies if p.name == "quota")
    rows = {r["limit"]: r for r in policy.status("async")["limits"]}  # type: ignore[attr-defined]
    # 2 admitted calls recorded 10 output tokens each after reconciliation (50 reserved each).
    assert rows["output_tokens 100 per 1 minute"]["remaining"] == 80


WORKER = textwrap.dedent(
    """
    import sys
    from resilient import Pipeline, QuotaExceeded
    url, provider, n, requests, strategy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    config = {"store": url, "disable": ["retry", "breaker"], "quota": {"requests": requests, "strategy": strategy}}
    pipeline = Pipeline(env={}, config=config)
    call = pipeline.guard(provider=provider)(lambda: 1)
    admitted = 0
    for _ in range(n):
        try:
            admitted += call()
        except QuotaExceeded:
            pass
    print(admitted)
    """
)


@pytest.mark.parametrize(
    ("requests", "strategy"),
    [
        ("60/minute", "moving-window"),
        # Two limits go in one round trip; refused calls give back the hour's hit, under contention too.
        ("60/minute;1000/hour", "moving-window"),
        ("60/minute;1000/hour", "fixed-window"),
        ("60/minute;1000/hour", "sliding-window-counter"),
    ],
)
def test_four_processes_never_admit_more_than_the_limit(redis_url: str, requests: str, strategy: str) -> None:
    provider = f"fleet-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, provider, "40", requests, strategy],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    admitted = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        admitted.append(int(out.strip()))
    # 160 attempts against 60/minute, all within a minute: exactly the limit gets through.
    assert sum(admitted) == 60
    pipeline = build(redis_url, requests=requests, strategy=strategy)
    policy = next(p for p in pipeline.policies if p.name == "quota")
    rows = {r["limit"]: r["remaining"] for r in policy.status(provider)["limits"]}  # type: ignore[attr-defined]
    assert rows["requests 60 per 1 minute"] == 0
    if "hour" in requests:
        assert rows["requests 1000 per 1 hour"] == 1000 - 60


def test_async_calls_survive_a_new_event_loop(redis_url: str) -> None:
    """An app that runs asyncio.run() twice must not reuse the first loop's dead connections."""
    pipeline = build(redis_url, requests="3/minute")

    async def create() -> int:
        return 1

    guarded = pipeline.guard(provider="loops")(create)

    async def once() -> int:
        try:
            return await guarded()
        finally:
            await pipeline.aclose()

    assert asyncio.run(once()) == 1
    assert asyncio.run(once()) == 1
    assert asyncio.run(once()) == 1
    with pytest.raises(QuotaExceeded):
        asyncio.run(once())
