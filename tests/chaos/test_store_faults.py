"""Store faults: the FastAPI example, 2 uvicorn workers, its redis-server behind a proxy the test owns, under load.

The store is killed, paused longer than the socket timeout, restarted empty,
made slow, made to drop or swallow connections, or has its connections cut.
Whatever happens to it, every request gets a designed answer within its
deadline, the store is not hammered while down, ``/ready`` tells, and the
fleet is back on the store within a bounded time after it returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from resilient.storage import SOCKET_TIMEOUT
from resilient.testing import RedisServer
from resilient.testing.simulator import SimulatorServer

from ._harness import API_KEY, Answer, Fleet, Load, TcpProxy, chat_request, leaked, problem_titles, run_fleet, summary
from .conftest import Record

#: How long a policy stays off a store that failed (the plugins' ``store_retry`` default).
STORE_RETRY = 5.0
#: The most a request may wait because of the store: one store operation timing out per store-backed
#: policy it crosses (cache read, quota, breaker, cache write), on a machine shared with other work.
STORE_DEADLINE = 4 * SOCKET_TIMEOUT + 4.0
#: After the store is back: one ``store_retry`` for every policy to try it again, then one request to notice.
RECOVERY = STORE_RETRY + 10.0
#: Connection attempts per second to a store that is down, for the whole fleet of 2 workers. Before
#: the storage pause, 92 (one per request). Now each worker's ``limits`` storages (rate limits, quota,
#: retry budget) send one probe per ``STORE_PAUSE`` (1 s); the breaker, which keeps its own redis-py
#: clients, sends one probe at a time after ``store_retry`` (5 s), and the cache lets every request in flight
#: try once per ``store_retry``; a failed command is retried once on a new connection. Measured 6 to 12 a
#: second under this load: bounded, not a storm.
MAX_ATTEMPTS_PER_SECOND = 16.0
#: Per-tenant quotas the load (16 clients over 200 tenants) stays within.
QUOTA_FOR_LOAD = {"RESILIENT_QUOTA__REQUESTS": "1000/minute", "RESILIENT_QUOTA__TOTAL_TOKENS": "1000000/minute"}


@dataclass(frozen=True)
class Fault:
    name: str
    begin: Callable[[RedisServer, TcpProxy], None]
    end: Callable[[RedisServer, TcpProxy], None]
    down: bool  # the store stops answering (as opposed to answering slowly)


def _kill_then_restart(redis: RedisServer, proxy: TcpProxy) -> None:
    redis.restart()


def _blackhole(redis: RedisServer, proxy: TcpProxy) -> None:
    proxy.set("blackhole")
    proxy.cut()  # pooled connections too: every later byte goes nowhere


FAULTS = {
    "sigkill": Fault("SIGKILL, restarted empty", lambda r, p: r.kill(), _kill_then_restart, down=True),
    "sigstop": Fault("SIGSTOP > socket timeout, SIGCONT", lambda r, p: r.pause(), lambda r, p: r.resume(), down=True),
    "drop": Fault("proxy resets every connection", lambda r, p: p.set("drop"), lambda r, p: p.set("pass"), down=True),
    "blackhole": Fault("proxy swallows every byte", _blackhole, lambda r, p: p.set(), down=True),
    "slow": Fault("proxy delays every chunk 300 ms", lambda r, p: p.set(delay=0.3), lambda r, p: p.set(), down=False),
    "cut": Fault("proxy cuts every open connection", lambda r, p: p.cut(), lambda r, p: None, down=False),
}


def _store_states(ready: dict[str, object]) -> dict[str, object]:
    policies = ready.get("policies", {})
    assert isinstance(policies, dict)
    return {name: health.get("store") for name, health in policies.items() if isinstance(health, dict)}


def _ready_shows_store_down(fleet: Fleet) -> bool:
    status, body = fleet.ready()
    states = _store_states(body)
    policies = body.get("policies", {})
    assert isinstance(policies, dict)
    degraded = any(isinstance(h, dict) and (h.get("degraded") or h.get("ok") is False) for h in policies.values())
    return status == 503 or degraded or any(s not in ("ok", "redis", None) for s in states.values())


def _wait_ready_ok(fleet: Fleet, within: float) -> float:
    """Seconds until /ready answers ok with every store up, from both workers (asked several times)."""
    start = time.monotonic()
    deadline = start + within
    oks = 0
    while oks < 6:  # a new connection each time: both workers are asked
        assert time.monotonic() < deadline, f"not ready {within}s after the store returned: {fleet.ready()}"
        oks = oks + 1 if not _ready_shows_store_down(fleet) else 0
        if oks == 0:
            time.sleep(0.2)  # polling real processes
    return time.monotonic() - start


def _log_is_clean(fleet: Fleet) -> str:
    log = fleet.log.read_text(errors="replace")
    assert "Exception in ASGI application" not in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    return log


def run_outage(
    tmp_path: Path,
    provider: SimulatorServer,
    own_redis: RedisServer,
    proxy: TcpProxy,
    record: Record,
    fault: Fault,
    hold: float,
    concurrency: int = 16,
    env: dict[str, str] | None = None,
) -> Outage:
    # Quotas roomy enough for the load: a refusal here would hide what the store does.
    env = {**QUOTA_FOR_LOAD, **(env or {})}
    with run_fleet(tmp_path, provider.base_url, proxy.url, env=env) as fleet:
        load = Load(fleet.base, chat_request(), concurrency=concurrency, max_requests=100_000, max_seconds=120)
        load.start()
        try:
            load.wait_answers(100)
            began = time.monotonic()
            fault.begin(own_redis, proxy)
            load.wait_until(began + min(1.0, hold / 2))
            attempts_from = time.monotonic()
            shown_down = _ready_shows_store_down(fleet) if fault.down else True
            load.wait_until(began + hold)
            attempts = proxy.attempts_since(attempts_from)
            attempts_window = time.monotonic() - attempts_from
            fault.end(own_redis, proxy)
            ended = time.monotonic()
            recovered = _wait_ready_ok(fleet, RECOVERY)
            load.wait_until(time.monotonic() + 1.0)
        finally:
            load.stop()
        answers = load.join()
        answered_during = sum(1 for a in answers if began <= a.started < ended)
        after = [a for a in answers if a.started >= ended + recovered]
        titles = problem_titles(answers)
    log = _log_is_clean(fleet)
    audit = fleet.audit.read_text().splitlines() if fleet.audit.exists() else []
    record(
        load=f"{concurrency} clients, {len(answers)} requests",
        faults=f"{fault.name}, {hold:g} s",
        answered=sum(1 for a in answers if a.designed),
        lost=sum(1 for a in answers if a.lost),
        leaked=leaked([a.body for a in answers] + [log, *audit], [API_KEY]),
    )
    assert all(a.designed for a in answers), summary(answers)
    assert answered_during > 0, "nothing was answered while the store was down"
    slowest = max(a.seconds for a in answers)
    assert slowest < STORE_DEADLINE, f"a request waited {slowest:.1f}s; {summary(answers)}"
    if fault.down:
        rate = attempts / attempts_window
        assert rate <= MAX_ATTEMPTS_PER_SECOND, f"{attempts} connection attempts in {attempts_window:.1f}s"
        assert shown_down, "/ready did not show the store down"
    assert recovered < RECOVERY
    late = [(round(a.started - ended, 1), round(a.seconds, 1), a.status) for a in answers if a.started >= ended]
    assert after, f"no request after the recovery ({recovered:.1f}s): {late[-30:]}"
    assert all(a.status == 200 for a in after[-20:]), (titles, after[-1].body[:400])
    assert leaked([a.body for a in answers] + [log, *audit], [API_KEY]) == 0
    # every chat answer is one provider call, and each call is one audit line: nothing lost on the way
    assert len(audit) == len(answers), (len(audit), len(answers))
    assert all(json.loads(line)["provider"] == "anthropic" for line in audit[:50])
    return Outage(answers, began, ended)


@dataclass(frozen=True)
class Outage:
    answers: list[Answer]
    began: float
    ended: float

    def during(self) -> list[Answer]:
        return [a for a in self.answers if self.began + 1.0 <= a.started and a.started + a.seconds <= self.ended]


def test_sigkill_then_restart_empty(
    tmp_path: Path, provider: SimulatorServer, own_redis: RedisServer, proxy: TcpProxy, record: Record
) -> None:
    """SIGKILL the store under load, restart it empty: designed answers throughout, bounded reconnects, recovery."""
    run_outage(tmp_path, provider, own_redis, proxy, record, FAULTS["sigkill"], hold=4.0)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigstop", "drop", "blackhole", "slow", "cut"])
def test_store_fault(
    tmp_path: Path, provider: SimulatorServer, own_redis: RedisServer, proxy: TcpProxy, record: Record, fault: str
) -> None:
    """A store fault under load: designed answers within the deadline, bounded reconnects, /ready, recovery."""
    hold = 3 * SOCKET_TIMEOUT + 1 if FAULTS[fault].down else 4.0
    run_outage(tmp_path, provider, own_redis, proxy, record, FAULTS[fault], hold=hold)


@pytest.mark.slow
@pytest.mark.parametrize("on_store_error", ["closed", "open"])
def test_quota_store_down_as_configured(
    tmp_path: Path,
    provider: SimulatorServer,
    own_redis: RedisServer,
    proxy: TcpProxy,
    record: Record,
    on_store_error: str,
) -> None:
    """Quota with on_store_error closed/open while the store is killed: refusals (closed) or admissions, as set."""
    env = {"RESILIENT_QUOTA__ON_STORE_ERROR": on_store_error, "RESILIENT_CACHE__ENABLED": "false"}
    outage = run_outage(tmp_path, provider, own_redis, proxy, record, FAULTS["sigkill"], hold=4.0, env=env)
    during = outage.during()
    refused = [a for a in during if a.status == 429 and "quota store unavailable" in a.body]
    assert during
    if on_store_error == "closed":  # fails closed: nothing reaches the provider on an unknown quota
        assert len(refused) == len(during), problem_titles(during)
    else:
        assert not refused
        assert all(a.status == 200 for a in during), problem_titles(during)
