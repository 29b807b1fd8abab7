"""Fixtures of the chaos suite: a redis-server each test may kill, a proxy in front of it, a simulator, the table.

``make chaos`` sets ``CHAOS_REPORT`` to a file; each scenario adds
its row there (scenario, load held, faults injected, requests answered,
lost, secrets leaked), and ``tests/chaos/report.py`` turns the rows into the
table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resilient.testing import RedisServer, redis_server
from resilient.testing._redis import redis_required
from resilient.testing.simulator import Simulator, SimulatorServer, run_simulator

from ._harness import TcpProxy

Record = Callable[..., None]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone: scenarios kill, pause and restart it."""
    try:
        with redis_server() as server:
            yield server
    except FileNotFoundError as exc:
        if redis_required():
            pytest.fail(f"RESILIENT_REQUIRE_REDIS is set but {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[TcpProxy]:
    """A loopback TCP proxy in front of ``own_redis``; the app is given ``proxy.url`` as its store."""
    proxy = TcpProxy(own_redis.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def provider() -> Iterator[SimulatorServer]:
    """The simulated provider: quick answers, a short retry-after so 429 storms end within a scenario."""
    with run_simulator(Simulator(latency="5ms", retry_after=0.2, seed=10)) as server:
        yield server


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """Add this scenario's row to the chaos table (a no-op unless ``CHAOS_REPORT`` names a file)."""

    def add(*, load: str, faults: str, answered: int, lost: int, leaked: int) -> None:
        path = os.environ.get("CHAOS_REPORT")
        if not path:
            return
        row = {
            "scenario": request.node.nodeid.split("::", 1)[1],
            "doc": (request.node.function.__doc__ or "").strip().splitlines()[0],
            "load": load,
            "faults": faults,
            "answered": answered,
            "lost": lost,
            "leaked": leaked,
        }
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    return add


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test`` runs the fast scenarios only; ``make chaos`` (``CHAOS=all``) runs every one.

    The long ones are deselected, not skipped, so pytest's summary counts them.
    """
    if os.environ.get("CHAOS") == "all" or config.getoption("-m"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each chaos scenario's outcome (passed, failed, xfailed...) into the table, next to its numbers."""
    path = os.environ.get("CHAOS_REPORT")
    if not path or "tests/chaos/" not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome: str = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
        row = {"outcome_of": report.nodeid.split("::", 1)[1], "outcome": outcome, "seconds": round(report.duration, 1)}
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
