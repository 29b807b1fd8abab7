"""examples/fastapi_app end to end: uvicorn on loopback, the real anthropic SDK, the simulator, httpx clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from resilient import Pipeline
from resilient.testing.simulator import Drop, Simulator, SimulatorServer, Stall, Status, run_simulator

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-ant-api03-" + "Zq7" * 30 + "AA"  # shaped like an Anthropic key, never a real one
EXAMPLE = ROOT / "examples" / "fastapi_app"


def _load_example() -> Any:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import app as example
    finally:
        sys.path.remove(str(EXAMPLE))
    return example


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def provider() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(retry_after=0.05)) as server:
        yield server


@pytest.fixture
def served(provider: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    provider.simulator.reset()
    provider.simulator.configure(fail_rate=0.0)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.base_url)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    example = _load_example()
    # The example's own resilient.toml, without the environment of whoever runs the tests.
    pipeline = Pipeline(cwd=str(EXAMPLE), env={}, config=None)
    with Served(example.create_app(pipeline)) as running:
        yield running


def ask(http: httpx.Client, message: str, tenant: str = "acme", **extra: Any) -> httpx.Response:
    return http.post("/v1/chat", json={"message": message, **extra}, headers={"x-tenant-id": tenant})


def test_answers_cache_per_tenant_and_say_how(served: Served, provider: SimulatorServer) -> None:
    with httpx.Client(base_url=served.base, timeout=10) as http:
        first = ask(http, "hello")
        again = ask(http, "hello")
        other = ask(http, "hello", tenant="globex")
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json()["reply"] == again.json()["reply"] == "Simulated reply to: hello"
    assert [r.json()["cache"] for r in (first, again, other)] == ["miss", "hit", "miss"]
    assert first.json()["usage"]["output_tokens"] > 0
    assert first.headers["x-request-id"]
    assert provider.simulator.stats.total == 2  # the hit never reached the provider


def test_sse_events_arrive_before_the_stream_ends(served: Served, provider: SimulatorServer) -> None:
    provider.simulator.script(Stall(after=5, seconds=2.0))  # the provider goes quiet mid-stream
    with (
        httpx.Client(base_url=served.base, timeout=10) as http,
        http.stream("POST", "/v1/chat/stream", json={"message": "a streamed answer please"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        started = time.monotonic()
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        waited = time.monotonic() - started
        rest = [line for line in lines if line.startswith("data:")]
    assert json.loads(first[5:])["type"] == "text"
    assert waited < 1.5  # the first event came while the provider was still stalled: nothing buffered
    done = json.loads(rest[-1][5:])
    assert done["type"] == "done"
    assert done["usage"]["output_tokens"] > 0


def test_quota_refusal_is_problem_json_with_retry_after(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=10) as http:
        answers = [ask(http, f"question {i}", tenant="greedy") for i in range(21)]
        other = ask(http, "question 0", tenant="patient")
    assert [a.status_code for a in answers[:20]] == [200] * 20  # resilient.toml: 20/minute per tenant
    refused = answers[20]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    body = refused.json()
    assert body["status"] == 429
    assert "Traceback" not in refused.text
    assert other.status_code == 200  # another tenant has its own quota


def test_metrics_parse_and_count_by_route_template(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=10) as http:
        ask(http, "count me")
        http.post("/v1/chat", content=b"{not json", headers={"content-type": "application/json"})
        exposition = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    calls = families["resilient_calls"].samples
    assert any(s.labels.get("outcome") == "success" and s.value >= 1 for s in calls)
    routes = {s.labels["route"] for s in families["resilient_http_requests"].samples if "route" in s.labels}
    assert "/v1/chat" in routes
    assert all(not r.startswith("/v1/chat/") or r == "/v1/chat/stream" for r in routes)


def test_bad_input_never_breaks_the_app(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=10) as http:
        malformed = http.post("/v1/chat", content=b'{"message": ', headers={"content-type": "application/json"})
        empty = http.post("/v1/chat", json={"message": ""})
        huge = http.post("/v1/chat", json={"message": "x" * 50_000})
        wrong = http.post("/v1/chat", json={"message": "hi", "max_tokens": "many"})
        after = ask(http, "still fine")
    assert [r.status_code for r in (malformed, empty, huge, wrong)] == [422] * 4
    assert all("Traceback" not in r.text for r in (malformed, empty, huge, wrong))
    assert after.status_code == 200


def test_concurrent_clients_all_get_answers(served: Served) -> None:
    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.post("/v1/chat", json={"message": f"q{i}"}, headers={"x-tenant-id": f"t{i % 4}"})
                    for i in range(24)
                )
            )
        return [a.status_code for a in answers]

    assert asyncio.run(main()) == [200] * 24


def test_a_client_leaving_mid_stream_leaves_nothing_in_progress(served: Served, provider: SimulatorServer) -> None:
    provider.simulator.configure(chunk_delay=0.05)
    try:
        with (
            httpx.Client(base_url=served.base, timeout=10) as http,
            http.stream("POST", "/v1/chat/stream", json={"message": "one two three four five six"}) as response,
        ):
            next(line for line in response.iter_lines() if line.startswith("data:"))
        # the client has gone; the server notices and closes the provider stream
        with httpx.Client(base_url=served.base, timeout=10) as http:
            deadline = time.monotonic() + 5
            while True:
                families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
                in_progress = sum(
                    s.value
                    for s in families["resilient_http_requests_in_progress"].samples
                    if s.labels.get("route") == "/v1/chat/stream"
                )
                if in_progress == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert in_progress == 0
    finally:
        provider.simulator.configure(chunk_delay=0.0)


def test_make_demo_tour_runs_against_the_built_in_simulator() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RESILIENT_"))}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "demo.py"), "--tour-only", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "built-in simulator" in out
    assert '"cache": "hit"' in out
    assert '"attempts": 3' in out  # the scripted overloads were retried
    assert " 503 " in out  # the circuit opened
    assert " 429 " in out  # the quota refused


def _in_progress(http: httpx.Client, route: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    samples = families["resilient_http_requests_in_progress"].samples
    return sum(s.value for s in samples if s.labels.get("route") == route)


@pytest.mark.parametrize(
    ("fault", "detail", "retry_after"),
    [
        (Status(529, message=f"Overloaded; your prompt was: my key is {SECRET}"), "The provider is overloaded.", "1"),
        (Drop(after=0), "The provider could not be reached.", None),
    ],
    ids=["overloaded", "connection-dropped"],
)
@pytest.mark.parametrize("endpoint", ["/v1/chat", "/v1/chat/stream"])
def test_a_provider_failure_outliving_the_retries_is_503_problem_json(
    served: Served,
    provider: SimulatorServer,
    caplog: pytest.LogCaptureFixture,
    endpoint: str,
    fault: Any,
    detail: str,
    retry_after: str | None,
) -> None:
    provider.simulator.script(fault, fault, fault)  # resilient.toml: 3 attempts; the SDK's own retries are off
    with caplog.at_level("WARNING"), httpx.Client(base_url=served.base, timeout=10) as http:
        failed = http.post(endpoint, json={"message": "never answered"}, headers={"x-request-id": "chat-1"})
        in_progress = _in_progress(http, endpoint)
        after = ask(http, "the provider is back")
    assert failed.status_code == 503
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.headers.get("retry-after") == retry_after  # the provider's (0.05 s), rounded up
    body = failed.json()
    assert body["type"] == "urn:resilient:problem:provider-unavailable"
    assert body["detail"] == detail
    assert body["request_id"] == failed.headers["x-request-id"] == "chat-1"
    for leak in (SECRET, "your prompt", "Traceback", "Error code"):
        assert leak not in failed.text
    assert provider.simulator.stats.total == 4  # three attempts, then the next question
    assert in_progress == 0
    assert after.status_code == 200
    warned = [r for r in caplog.records if r.name == "resilient.http"]
    assert len(warned) == 1
    assert f"answered 503 on POST {endpoint} (request id chat-1)" in warned[0].getMessage()
    assert SECRET not in caplog.text
