"""examples/fastapi_app as a fleet: 2 uvicorn workers sharing a real redis-server, one simulator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from resilient.testing import RedisServer
from resilient.testing.simulator import Simulator, SimulatorServer, run_simulator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app"


def client(base: str, timeout: float = 10) -> httpx.Client:
    """A client opening a new connection per request, so the kernel spreads requests over the workers."""
    return httpx.Client(base_url=base, timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def provider() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(retry_after=0.05)) as server:
        yield server


@pytest.fixture
def fleet(redis_store: RedisServer, provider: SimulatorServer, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    (tmp_path / "metrics").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RESILIENT_"))}
    env.update(
        ANTHROPIC_BASE_URL=provider.base_url,
        RESILIENT_STORE=redis_store.url,
        RESILIENT_KEY_PREFIX=f"fleet-{uuid.uuid4().hex[:8]}:",
        RESILIENT_QUOTA__REQUESTS="10/minute",
        RESILIENT_CACHE__ENABLED="false",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLE), "app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        with client(base, timeout=2) as http:
            while len(pids) < 2:  # both workers up and answering
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"workers seen: {pids}"
                try:
                    pids.add(http.get("/").json()["worker_pid"])
                except httpx.HTTPError:
                    time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_a_quota_holds_across_workers(fleet: str) -> None:
    with client(fleet) as http:
        statuses = [
            http.post("/v1/chat", json={"message": f"q{i}"}, headers={"x-tenant-id": "shared"}).status_code
            for i in range(24)
        ]
    assert statuses.count(200) == 10  # 10/minute for the tenant, whichever worker answered
    assert statuses.count(429) == 14


def test_a_breaker_opened_by_one_worker_is_open_in_the_others(fleet: str, provider: SimulatorServer) -> None:
    provider.simulator.configure(fail_rate=1.0, faults=["500"])
    with client(fleet, timeout=30) as http:
        for i in range(12):
            answer = http.post("/v1/chat", json={"message": f"outage {i}"}, headers={"x-tenant-id": f"t{i}"})
            if answer.status_code == 503 and answer.json().get("title") == "Circuit open":
                break
        else:
            pytest.fail("the circuit never opened")
        provider.simulator.configure(fail_rate=0.0)
        sent = provider.simulator.stats.total
        later = [
            http.post("/v1/chat", json={"message": f"later {i}"}, headers={"x-tenant-id": f"u{i}"}) for i in range(16)
        ]
        # Both workers answer (the kernel spreads new connections, unevenly under load: ask until both did).
        pids: set[int] = set()
        for _ in range(200):
            pids.add(http.get("/").json()["worker_pid"])
            if len(pids) == 2:
                break
    assert len(pids) == 2
    assert [a.status_code for a in later] == [503] * 16
    assert provider.simulator.stats.total == sent  # no worker sent anything while the circuit was open
