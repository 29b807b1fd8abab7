"""A bounded soak: the FastAPI example with every policy on, 2 workers, memory or Redis, under steady load.

No 5xx other than the designed problem+json, the in-progress gauge back to 0
at the end, resident memory and open descriptors flat after warm-up, and no
Redis key left without a TTL. ``make test`` runs a few seconds of it;
``make chaos`` runs a minute with 64 clients on each store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilient.storage import redis_client
from resilient.testing import RedisServer
from resilient.testing.simulator import Simulator, SimulatorServer, run_simulator

from ._harness import API_KEY, Load, chat_request, leaked, problem_titles, run_fleet, summary
from .conftest import Record
from .test_store_faults import QUOTA_FOR_LOAD, _log_is_clean

#: Every first-party policy on (the example's file turns on quota, cache, retry, breaker, metrics;
#: the harness adds the audit log), with provider faults for them to handle.
ALL_POLICIES = {
    **QUOTA_FOR_LOAD,
    "RESILIENT_BULKHEAD__MAX_CONCURRENT": "48",
    "RESILIENT_BULKHEAD__MAX_WAITING": "64",
    "RESILIENT_BULKHEAD__MAX_WAIT": "5s",
    "RESILIENT_TIMEOUT__TIMEOUT": "10s",
    "RESILIENT_TIMEOUT__DEADLINE": "20s",
}
#: Growth allowed between the end of warm-up and the end of the soak, per worker.
RSS_GROWTH_KB = 20_000
FD_GROWTH = 16


@pytest.fixture
def soak_provider() -> Iterator[SimulatorServer]:
    """Answers in 5-10 ms; 3% of them a 429, 529 or 500 (retry-after 50 ms), from a fixed seed."""
    simulator = Simulator(latency="5ms", retry_after=0.05, fail_rate=0.03, seed=3)
    with run_simulator(simulator) as server:
        yield server


def _keys_without_ttl(url: str, prefix: str) -> list[bytes]:
    client = redis_client(url)
    try:
        return [key for key in client.scan_iter(match=f"{prefix}*", count=1000) if client.ttl(key) == -1]
    finally:
        client.close()


def soak(
    tmp_path: Path,
    provider: SimulatorServer,
    store: str,
    record: Record,
    *,
    seconds: float,
    clients: int,
    redis: RedisServer | None = None,
) -> None:
    env = dict(ALL_POLICIES)
    if redis is not None:
        env["RESILIENT_BULKHEAD__FLEET"] = "true"
    with run_fleet(tmp_path, provider.base_url, store, env=env) as fleet:
        load = Load(
            fleet.base,
            chat_request(tenants=400, stream_every=5),
            concurrency=clients,
            max_requests=10_000_000,
            max_seconds=seconds,
        ).start()
        load.wait_until(time.monotonic() + seconds / 2)  # warm-up: caches, connection pools, lazy imports
        warm_usage = fleet.rss_and_fds()
        answers = load.join()
        end_usage = fleet.rss_and_fds()
        in_progress = fleet.in_progress()
        metrics = fleet.metrics()
        prefix = f"chaos-{fleet.base.rsplit(':', 1)[1]}:"
        orphans = _keys_without_ttl(redis.url, prefix) if redis is not None else []
    log = _log_is_clean(fleet)
    record(
        load=f"{clients} clients, {seconds:g} s, {len(answers)} requests ({len(answers) / seconds:.0f}/s)",
        faults="3% 429/529/500 from the provider",
        answered=sum(1 for a in answers if a.designed),
        lost=sum(1 for a in answers if a.lost),
        leaked=leaked([a.body for a in answers] + [log, metrics], [API_KEY]),
    )
    assert all(a.designed for a in answers), summary(answers)
    # Refusals are designed answers; most requests must still be served, or the soak proved nothing.
    assert sum(1 for a in answers if a.status == 200) > 0.5 * len(answers), problem_titles(answers)
    assert "resilient_http_requests_in_progress" in metrics
    assert in_progress == 0
    assert orphans == []
    assert set(end_usage) == set(warm_usage) == fleet.pids, "a worker died during the soak"
    for pid, (rss, fds) in end_usage.items():
        rss0, fds0 = warm_usage[pid]
        assert fds - fds0 <= FD_GROWTH, f"worker {pid}: {fds0} -> {fds} open descriptors"
        if seconds >= 30:  # a few seconds say nothing about memory
            assert rss - rss0 <= RSS_GROWTH_KB, f"worker {pid}: {rss0} -> {rss} kB resident"
    assert leaked([a.body for a in answers] + [log, metrics], [API_KEY]) == 0


def test_a_short_soak_on_redis(
    tmp_path: Path, soak_provider: SimulatorServer, own_redis: RedisServer, record: Record
) -> None:
    """A few seconds of load with every policy on Redis: designed answers, gauge at 0, every key with a TTL."""
    soak(tmp_path, soak_provider, own_redis.url, record, seconds=5, clients=16, redis=own_redis)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_one_minute_soak(
    tmp_path: Path, soak_provider: SimulatorServer, own_redis: RedisServer, record: Record, store: str
) -> None:
    """A minute, 64 clients, every policy on: designed answers, gauge at 0, memory and descriptors flat."""
    if store == "memory":
        soak(tmp_path, soak_provider, "memory://", record, seconds=60, clients=64)
    else:
        soak(tmp_path, soak_provider, own_redis.url, record, seconds=60, clients=64, redis=own_redis)
