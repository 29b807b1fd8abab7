"""Provider faults through the simulator, against the FastAPI example with 2 workers sharing a real redis-server.

429 storms with retry-after, 529, 500, a slow first byte, connections dropped
mid-answer: provider requests stay within (1 + retry budget) x client
requests, the breaker opens and half-opens as configured, a stale answer is
served where configured, and a 429 with retry-after pauses the key for every
worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from resilient.testing import RedisServer
from resilient.testing.simulator import Drop, Simulator, SimulatorServer, Slow, Status, run_simulator

from ._harness import API_KEY, Fleet, Load, chat_request, leaked, problem_titles, run_fleet, summary
from .conftest import Record
from .test_store_faults import _log_is_clean

#: The retry plugin's defaults: retries add at most 20% of the calls per window, plus 10 always allowed.
BUDGET_RATIO = 0.2
BUDGET_MIN = 10


@pytest.fixture
def sim_server() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(latency="5ms", retry_after=0.05, seed=7)) as server:
        yield server


def _fleet(tmp_path: Path, sim: SimulatorServer, redis: RedisServer, **env: str) -> AbstractContextManager[Fleet]:
    return run_fleet(tmp_path, sim.base_url, redis.url, env=env)


def _chat(fleet: Fleet, message: str, tenant: str = "acme") -> tuple[int, str, dict[str, object]]:
    with fleet.client(timeout=30) as http:
        answer = http.post("/v1/chat", json={"message": message}, headers={"x-tenant-id": tenant})
    return answer.status_code, answer.headers.get("content-type", ""), answer.json()


@pytest.mark.slow
@pytest.mark.parametrize(
    "faults", [["429"], ["529"], ["500"], ["429", "529", "500"]], ids=["429", "529", "500", "mixed"]
)
def test_retries_stay_within_the_budget(
    tmp_path: Path, sim_server: SimulatorServer, own_redis: RedisServer, record: Record, faults: list[str]
) -> None:
    """A storm of provider errors: provider requests <= (1 + budget) x client requests; answers 200 or 503 problem."""
    simulator = sim_server.simulator
    simulator.configure(fail_rate=0.6, faults=faults)
    env = {"RESILIENT_CACHE__ENABLED": "false", "RESILIENT_BREAKER__ENABLED": "false"}
    with _fleet(tmp_path, sim_server, own_redis, **env) as fleet:
        answers = Load(fleet.base, chat_request(repeat_every=0), concurrency=16, max_requests=400, max_seconds=60).run()
        log = _log_is_clean(fleet)
    sent = simulator.stats.total
    record(
        load=f"16 clients, {len(answers)} requests",
        faults=f"60% {'/'.join(faults)}, {sent} provider requests",
        answered=sum(1 for a in answers if a.designed),
        lost=sum(1 for a in answers if a.lost),
        leaked=leaked([a.body for a in answers] + [log], [API_KEY]),
    )
    assert all(a.designed for a in answers), summary(answers)
    assert sent <= (1 + BUDGET_RATIO) * len(answers) + BUDGET_MIN, (sent, len(answers))
    titles = problem_titles(answers)
    assert set(titles) <= {"503 Provider unavailable", "429 Quota exceeded", "429 Rate limited"}, titles
    assert sum(1 for a in answers if a.status == 200) > len(answers) / 3


@pytest.mark.slow
def test_the_breaker_opens_and_half_opens_across_workers(
    tmp_path: Path, sim_server: SimulatorServer, own_redis: RedisServer, record: Record
) -> None:
    """An outage opens the shared breaker; nothing is sent while open; after wait_open one probe closes it."""
    simulator = sim_server.simulator
    env = {
        "RESILIENT_CACHE__ENABLED": "false",
        "RESILIENT_BREAKER__WAIT_OPEN": "3s",
        "RESILIENT_RETRY__MAX_ATTEMPTS": "1",
    }
    statuses: list[int] = []
    with _fleet(tmp_path, sim_server, own_redis, **env) as fleet:
        simulator.configure(fail_rate=1.0, faults=["500"])
        for i in range(30):
            status, _, body = _chat(fleet, f"outage {i}", tenant=f"t{i}")
            statuses.append(status)
            if body.get("title") == "Circuit open":
                break
        else:
            pytest.fail(f"the circuit never opened: {statuses}")
        opened = time.monotonic()
        sent = simulator.stats.total
        simulator.configure(fail_rate=0.0)
        while_open = [_chat(fleet, f"open {i}", tenant=f"u{i}") for i in range(10)]
        assert time.monotonic() - opened < 3.0, "the machine is too slow for this wait_open"
        assert simulator.stats.total == sent, "a worker called the provider while the circuit was open"
        # After wait_open: half-open lets a probe through; its success closes the circuit for every worker.
        deadline = opened + 3.0 + 10.0
        closed_after = None
        while time.monotonic() < deadline:
            status, _, _ = _chat(fleet, f"probe {time.monotonic()}")
            if status == 200:
                closed_after = time.monotonic() - opened
                break
            time.sleep(0.2)  # waiting for real workers' wait_open to pass
        later = [_chat(fleet, f"later {i}", tenant=f"v{i}")[0] for i in range(10)]
        log = _log_is_clean(fleet)
    record(
        load="1 client, sequential",
        faults="100% 500 until open, then healed",
        answered=len(statuses) + len(while_open) + len(later),
        lost=0,
        leaked=leaked([json.dumps(b) for _, _, b in while_open] + [log], [API_KEY]),
    )
    assert all(s == 503 and k.startswith("application/problem+json") for s, k, _ in while_open)
    assert all(b.get("title") == "Circuit open" for _, _, b in while_open)
    assert closed_after is not None
    assert closed_after >= 2.9
    assert later == [200] * 10


@pytest.mark.slow
def test_a_stale_answer_is_served_when_the_provider_fails(
    tmp_path: Path, sim_server: SimulatorServer, own_redis: RedisServer, record: Record
) -> None:
    """cache.max_stale: an expired answer is served, by either worker, while the provider fails."""
    simulator = sim_server.simulator
    env = {"RESILIENT_CACHE__TTL": "1s", "RESILIENT_BREAKER__ENABLED": "false", "RESILIENT_RETRY__MAX_ATTEMPTS": "2"}
    with _fleet(tmp_path, sim_server, own_redis, **env) as fleet:
        status, _, first = _chat(fleet, "what is stale?")
        assert (status, first["cache"]) == (200, "miss")
        time.sleep(1.2)  # past the 1 s ttl, on the workers' real clocks
        simulator.configure(fail_rate=1.0, faults=["529"])
        again = [_chat(fleet, "what is stale?") for _ in range(8)]
        other = _chat(fleet, "never asked before")
        log = _log_is_clean(fleet)
    record(
        load="1 client, sequential",
        faults="100% 529 after the ttl",
        answered=len(again) + 2,
        lost=0,
        leaked=leaked([json.dumps(b) for _, _, b in again] + [log], [API_KEY]),
    )
    assert [(s, b["cache"]) for s, _, b in again] == [(200, "stale")] * 8
    assert all(b["reply"] == first["reply"] for _, _, b in again)
    # A question never answered before has nothing stale: a designed refusal, 503 from the provider's
    # failure, or 429 once its 529s paused the quota key.
    assert other[0] in (429, 503)
    assert other[1].startswith("application/problem+json")


def _same_key(i: int) -> tuple[str, str, dict[str, str], Any]:
    return "POST", "/v1/chat", {"x-tenant-id": "acme"}, {"message": f"paused {i}", "max_tokens": 32}


@pytest.mark.slow
def test_a_429_with_retry_after_pauses_the_key_for_every_worker(
    tmp_path: Path, sim_server: SimulatorServer, own_redis: RedisServer, record: Record
) -> None:
    """One 429 retry-after: 4 s, seen by one worker: no worker sends for that quota key until it passes.

    The key is the quota's (provider, model, tenant), so the load asks as the tenant that got the 429.
    """
    simulator = sim_server.simulator
    env = {"RESILIENT_CACHE__ENABLED": "false", "RESILIENT_RETRY__MAX_ATTEMPTS": "1"}
    with _fleet(tmp_path, sim_server, own_redis, **env) as fleet:
        assert _chat(fleet, "warm up")[0] == 200
        simulator.script(Status(429, retry_after=4))
        status, kind, body = _chat(fleet, "storm")
        paused_at = time.monotonic()
        sent = simulator.stats.total
        # A worker re-reads the shared pause every signal_poll (1 s): after that, none sends.
        time.sleep(1.2)  # the other worker's poll interval, on real processes
        during = Load(fleet.base, _same_key, concurrency=4, max_requests=40, max_seconds=2).run()
        sent_during = simulator.stats.total - sent
        assert time.monotonic() - paused_at < 4.0, "the machine is too slow for this retry-after"
        time.sleep(max(0.0, paused_at + 4.2 - time.monotonic()))  # the pause ends on the workers' clocks
        after = [_chat(fleet, f"after {i}", tenant=f"a{i}")[0] for i in range(6)]
        log = _log_is_clean(fleet)
    record(
        load=f"4 clients, {len(during)} requests while paused",
        faults="one 429 retry-after 4 s",
        answered=sum(1 for a in during if a.designed) + len(after) + 2,
        lost=sum(1 for a in during if a.lost),
        leaked=leaked([a.body for a in during] + [log], [API_KEY]),
    )
    assert status in (429, 503), body
    assert kind.startswith("application/problem+json")
    assert sent_during == 0, f"{sent_during} provider requests while the key was paused"
    assert all(a.status in (429, 503) and a.designed for a in during), summary(during)
    assert after == [200] * 6


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        (Slow(1.5), False),
        (Slow(1.5), True),
        (Drop(after=1), False),
        (Drop(after=0), True),
        (Drop(after=2), True),
    ],
    ids=["slow-json", "slow-stream", "drop-json", "drop-before-first-event", "drop-mid-stream"],
)
def test_slow_and_dropped_answers(
    tmp_path: Path, sim_server: SimulatorServer, own_redis: RedisServer, record: Record, fault: object, stream: bool
) -> None:
    """Slow first bytes are waited for; a dropped answer is retried, or ends the client's stream cleanly."""
    simulator = sim_server.simulator
    simulator.configure(fail_rate=0.3, faults=[fault])
    env = {"RESILIENT_CACHE__ENABLED": "false", "RESILIENT_BREAKER__ENABLED": "false"}
    with _fleet(tmp_path, sim_server, own_redis, **env) as fleet:
        load = Load(
            fleet.base, chat_request(repeat_every=0, stream_every=1 if stream else 0), concurrency=8, max_requests=80
        )
        answers = load.run()
        log = _log_is_clean(fleet)
        in_progress = fleet.in_progress()
    record(
        load=f"8 clients, {len(answers)} {'streams' if stream else 'requests'}",
        faults=f"30% {type(fault).__name__.lower()}",
        answered=sum(1 for a in answers if a.designed),
        lost=sum(1 for a in answers if a.lost),
        leaked=leaked([a.body for a in answers] + [log], [API_KEY]),
    )
    assert in_progress == 0
    if isinstance(fault, Drop) and stream and fault.after > 0:
        # Bytes already went to the client: no retry is possible, and the stream must say it ended badly.
        cut = [a for a in answers if a.error == "stream cut"]
        assert all(a.designed or a in cut for a in answers), summary(answers)
        assert all("error" in a.body for a in cut), [a.body for a in cut[:3]]
    else:
        assert all(a.designed for a in answers), summary(answers)
