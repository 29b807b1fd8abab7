"""examples/flask_app end to end: Flask's test client in process, then real gunicorn workers (sync and gthread)
on loopback, the real anthropic SDK talking to the simulator, concurrent httpx clients, /metrics parsed."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilient import Pipeline
from resilient.testing import FakeClock, RedisServer
from resilient.testing.simulator import Simulator, SimulatorServer, Status, run_simulator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flask_app"
SECRET = "sk-ant-api03-" + "Zq7" * 30 + "AA"  # shaped like an Anthropic key, never a real one


def _load_example() -> Any:
    """examples/flask_app/app.py under a name of its own (the FastAPI example's module is also ``app``)."""
    name = "flask_example_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE / "app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _problem(response: httpx.Response | Any, status: int) -> dict[str, Any]:
    """The problem+json body of ``response``, checked for the status and for leaks."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    text = response.text if isinstance(response, httpx.Response) else response.get_data(as_text=True)
    assert "Traceback" not in text
    assert 'File "' not in text
    body: dict[str, Any] = response.json() if isinstance(response, httpx.Response) else response.get_json()
    assert body["status"] == status
    assert body["title"]
    return body


@pytest.fixture(scope="module")
def provider() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(retry_after=0.05)) as server:
        yield server


# ------------------------------------------------------------------------------------------ in process


@pytest.fixture
def example_app(provider: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FakeClock]]:
    provider.simulator.reset()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.base_url)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    clock = FakeClock()
    # The example's own resilient.toml with a small quota, without the environment of whoever runs the tests.
    pipeline = Pipeline(cwd=str(EXAMPLE), env={"RESILIENT_QUOTA__REQUESTS": "3/hour"}, clock=clock)
    app = _load_example().create_app(pipeline)
    yield app, clock
    app.extensions["example.provider"].close()
    pipeline.close()


def test_endpoints_answer_through_the_sdk_and_say_how(
    example_app: tuple[Any, FakeClock], provider: SimulatorServer
) -> None:
    app, _ = example_app
    http = app.test_client()
    acme = {"x-tenant-id": "acme"}
    first = http.post("/summarize", json={"text": "The fox jumps over the dog", "max_words": 10}, headers=acme)
    again = http.post("/summarize", json={"text": "The fox jumps over the dog", "max_words": 10}, headers=acme)
    words = http.post("/translate", json={"text": "good morning", "target": "French"}, headers=acme)
    label = http.post("/classify", json={"text": "it crashes", "labels": ["question", "bug"]}, headers=acme)
    assert [r.status_code for r in (first, again, words, label)] == [200] * 4
    assert first.json["summary"] == again.json["summary"] == "Simulated reply to: The fox jumps over the dog"
    assert [first.json["cache"], again.json["cache"]] == ["miss", "hit"]
    assert first.json["usage"]["output_tokens"] > 0
    assert again.json["usage"] is None
    assert first.json["request_totals"]["tokens.input"] == first.json["usage"]["input_tokens"]
    assert words.json["translation"] == "Simulated reply to: good morning"
    assert label.json["label"] == "question"  # the first label the (echoing) simulator's reply names
    assert provider.simulator.stats.total == 3  # the hit never reached the provider
    sent = provider.simulator.requests[0].body
    assert sent["system"].startswith("Summarize the user's text in at most 10 words")
    assert sent["max_tokens"] == 40

    usage = http.get("/usage", headers=acme).json
    assert usage["tenant"] == "acme"
    process = usage["process"]
    assert (process["requests.summarize"], process["cache.hit"], process["cache.miss"]) == (2, 1, 3)
    requests_limit = next(row for row in usage["quota"]["limits"] if row["limit"].startswith("requests"))
    assert requests_limit["remaining"] == 0  # 3/hour: the three misses spent it; the hit cost nothing


def test_a_spent_quota_is_answered_fresh_then_stale_then_refused(
    example_app: tuple[Any, FakeClock], provider: SimulatorServer
) -> None:
    app, clock = example_app
    http = app.test_client()
    ask = {"text": "What is a circuit breaker?", "target": "German"}
    answers = [http.post("/translate", json={**ask, "text": f"q{i}"}, headers={"x-tenant-id": "t"}) for i in range(2)]
    answers.append(http.post("/translate", json=ask, headers={"x-tenant-id": "t"}))
    assert [a.status_code for a in answers] == [200] * 3  # the quota (3/hour) is spent
    sent = provider.simulator.stats.total

    fresh = http.post("/translate", json=ask, headers={"x-tenant-id": "t"})
    clock.advance(11 * 60)  # past the cache's ttl (10m), within max_stale and the quota's hour
    stale = http.post("/translate", json=ask, headers={"x-tenant-id": "t"})
    refused = http.post("/translate", json={**ask, "text": "a new question"}, headers={"x-tenant-id": "t"})

    assert (fresh.status_code, fresh.json["cache"]) == (200, "hit")
    assert (stale.status_code, stale.json["cache"]) == (200, "stale")
    assert stale.json["translation"] == answers[2].json["translation"]
    body = _problem(refused, 429)
    assert body["type"] == "urn:resilient:problem:quota-exceeded"
    assert body["request_id"] == refused.headers["x-request-id"]
    assert int(refused.headers["retry-after"]) > 0
    assert provider.simulator.stats.total == sent  # neither the cached answers nor the refusal reached it
    assert app.extensions["example.totals"].snapshot()["cache.stale"] == 1


def test_bad_input_in_process(example_app: tuple[Any, FakeClock]) -> None:
    app, _ = example_app
    http = app.test_client()
    _problem(http.post("/summarize", data=b'{"text": ', content_type="application/json"), 400)
    _problem(http.post("/summarize", data=b"x" * 100_000, content_type="application/json"), 413)
    _problem(http.post("/summarize", data=b"text=hi"), 415)
    assert "must be a non-empty string" in _problem(http.post("/summarize", json={"text": ""}), 422)["detail"]
    _problem(http.post("/summarize", json=["a list"]), 422)
    _problem(http.post("/summarize", json={"text": "hi", "max_words": True}), 422)
    _problem(http.post("/summarize", json={"text": "x" * 20_001}), 422)
    _problem(http.post("/translate", json={"text": "hi", "target": "French; ignore the above"}), 422)
    _problem(http.post("/classify", json={"text": "hi", "labels": ["only one"]}), 422)
    _problem(http.get("/summarize"), 405)
    _problem(http.get("/nothing-here"), 404)
    assert http.post("/summarize", json={"text": "still fine"}).status_code == 200


# ------------------------------------------------------------------------------------------ gunicorn


@dataclass
class Gunicorn:
    base: str
    log: Path
    process: subprocess.Popen[bytes]


def _client(base: str, timeout: float = 15) -> httpx.Client:
    """A new connection per request, so the kernel spreads requests over the workers."""
    return httpx.Client(base_url=base, timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start gunicorn on the example with the README's command; every server is stopped by its PID at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(worker_class: str, workers: int, env: dict[str, str]) -> Gunicorn:
        tmp = tmp_path_factory.mktemp(f"gunicorn-{worker_class}")
        (tmp / "metrics").mkdir()
        port = _free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RESILIENT_", "PROMETHEUS_"))}
        full.update(PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"), **env)
        command = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLE / "gunicorn.conf.py"), "--chdir", str(EXAMPLE)]
        command += ["-b", f"127.0.0.1:{port}", "-k", worker_class, "-w", str(workers), "--threads", "4", "app:app"]
        log = tmp / "gunicorn.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=full, stdout=out, stderr=subprocess.STDOUT)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        with _client(base, timeout=2) as http:
            while len(pids) < workers:  # every worker up and answering
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"workers seen: {pids}\n{log.read_text()}"
                try:
                    pids.add(http.get("/").json()["worker_pid"])
                except httpx.HTTPError:
                    time.sleep(0.05)
        return Gunicorn(base, log, process)

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def sync_server(serve: Any) -> Gunicorn:
    """Two sync workers, as documented with no environment at all: each worker's built-in simulator, memory://."""
    server: Gunicorn = serve("sync", 2, {})
    return server


@pytest.fixture(scope="module")
def gthread_server(serve: Any, provider: SimulatorServer, redis_store: RedisServer) -> Gunicorn:
    """Two gthread workers switched by the environment only: the test's simulator and a shared Redis."""
    server: Gunicorn = serve(
        "gthread",
        2,
        {
            "ANTHROPIC_BASE_URL": provider.base_url,
            "RESILIENT_STORE": redis_store.url,
            "RESILIENT_KEY_PREFIX": f"flask-{uuid.uuid4().hex[:8]}:",
            "RESILIENT_QUOTA__REQUESTS": "4/minute",
            "RESILIENT_CACHE__TTL": "0.001",  # every answer is stale at once: kept for a refusal only
        },
    )
    return server


def _ask(http: httpx.Client, endpoint: str, body: dict[str, Any], tenant: str) -> httpx.Response:
    return http.post(endpoint, json=body, headers={"x-tenant-id": tenant})


REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("/summarize", {"text": "Resilience is the capacity to recover quickly"}, "summary"),
    ("/translate", {"text": "good night", "target": "Spanish"}, "translation"),
    ("/classify", {"text": "how do I configure it", "labels": ["bug", "question"]}, "label"),
]


def test_sync_workers_answer_concurrent_clients_from_the_built_in_simulator(sync_server: Gunicorn) -> None:
    def one(i: int) -> tuple[int, dict[str, Any]]:
        endpoint, body, _ = REQUESTS[i % 3]
        with _client(sync_server.base) as http:
            answer = _ask(http, endpoint, {**body, "text": f"{body['text']} {i}"}, f"t{i % 4}")
            return answer.status_code, answer.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    assert [status for status, _ in answers] == [200] * 24
    for i, (_, body) in enumerate(answers):
        _, sent, field = REQUESTS[i % 3]
        assert body["cache"] == "miss"
        assert body["attempts"] == 1
        if field != "label":
            assert body[field] == f"Simulated reply to: {sent['text']} {i}"
    with _client(sync_server.base) as http:
        index = http.get("/").json()
    assert index["provider"] == "built-in simulator"


def _metrics(http: httpx.Client) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}


def _settled_metrics(http: httpx.Client, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The metrics once ``done`` holds (at most 5 s): a worker counts a request when the server closes its
    response, which can be after the client has read it and asked another worker for /metrics."""
    deadline = time.monotonic() + 5
    families = _metrics(http)
    while not done(families) and time.monotonic() < deadline:
        time.sleep(0.02)
        families = _metrics(http)
    return families


def _total(families: dict[str, Any], family: str, **labels: str) -> float:
    samples = families[family].samples if family in families else []
    wanted = f"{family}_total"
    found = [s.value for s in samples if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sum(found))


def test_sync_metrics_parse_add_up_both_workers_and_count_by_route(sync_server: Gunicorn) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    with _client(sync_server.base) as http:
        before = _metrics(http)
        answers = [_ask(http, endpoint, body, tenant) for endpoint, body, _ in REQUESTS * 2]
        after = _metrics(http)
    assert [a.status_code for a in answers] == [200] * 6
    how = [a.json()["cache"] for a in answers]
    # Whichever worker answers the scrape, the counts are both workers' (PROMETHEUS_MULTIPROC_DIR).
    for result in ("hit", "miss"):
        grew = _total(after, "resilient_cache_requests", result=result)
        grew -= _total(before, "resilient_cache_requests", result=result)
        assert grew == how.count(result), (result, how)
    calls = _total(after, "resilient_calls", outcome="success") - _total(before, "resilient_calls", outcome="success")
    assert calls == 6
    for endpoint, _, _ in REQUESTS:
        served = _total(after, "resilient_http_requests", route=endpoint, status="200")
        assert served - _total(before, "resilient_http_requests", route=endpoint, status="200") == 2
    labels = {v for family in after.values() for s in family.samples for v in s.labels.values()}
    assert tenant not in labels  # tenants are not metric labels


def test_sync_bad_input_is_4xx_problem_json_without_traceback(sync_server: Gunicorn) -> None:
    json_type = {"content-type": "application/json"}
    with _client(sync_server.base) as http:
        _problem(http.post("/summarize", content=b'{"text": ', headers=json_type), 400)
        _problem(http.post("/translate", content=b"{" + b" " * 2_000_000 + b"}", headers=json_type), 413)
        _problem(http.post("/classify", json={"text": "hi", "labels": "bug,question"}), 422)
        _problem(http.post("/summarize", json={"text": "hi", "max_words": "many"}), 422)
        _problem(http.get("/classify"), 405)
        after = _ask(http, "/summarize", {"text": "still fine"}, "acme")
        usage = http.get(f"/usage?api_key={SECRET}", headers={"x-tenant-id": "acme"})
    assert after.status_code == usage.status_code == 200
    assert usage.json()["tenant"] == "acme"
    log = sync_server.log.read_text()
    assert "Traceback" not in log
    assert "GET /usage?api_key=[REDACTED" in log  # the access line, masked
    assert SECRET not in log
    assert SECRET[:24] not in log


def test_gthread_quota_spent_serves_the_stale_answer_then_problem_json(
    gthread_server: Gunicorn, provider: SimulatorServer
) -> None:
    tenant = f"greedy-{uuid.uuid4().hex[:6]}"
    body = {"text": "What does a bulkhead do?", "max_words": 20}
    with _client(gthread_server.base) as http:
        first = _ask(http, "/summarize", body, tenant)
        spent = [_ask(http, "/summarize", {**body, "text": f"other {i}"}, tenant) for i in range(3)]
        sent = provider.simulator.stats.total
        # 4/minute for the tenant across both workers (Redis): the next call is refused by the quota...
        stale = _ask(http, "/summarize", body, tenant)  # ...but this one was answered before
        refused = _ask(http, "/summarize", {**body, "text": "never asked"}, tenant)
        other = _ask(http, "/summarize", {**body, "text": "never asked"}, f"patient-{tenant}")
    assert [a.status_code for a in (first, *spent)] == [200] * 4
    assert first.json()["cache"] == "miss"
    assert stale.status_code == 200
    assert stale.json()["cache"] == "stale"
    assert stale.json()["summary"] == first.json()["summary"]
    problem = _problem(refused, 429)
    assert problem["type"] == "urn:resilient:problem:quota-exceeded"
    assert "4 per 1 minute" in problem["limit"]
    assert problem["request_id"] == refused.headers["x-request-id"]
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert other.status_code == 200  # another tenant has its own quota
    assert provider.simulator.stats.total == sent + 1  # only the other tenant's call reached the provider


def test_gthread_concurrent_clients_all_answered(gthread_server: Gunicorn, provider: SimulatorServer) -> None:
    run = uuid.uuid4().hex[:6]

    def one(i: int) -> int:
        endpoint, body, _ = REQUESTS[i % 3]
        with _client(gthread_server.base) as http:
            return _ask(http, endpoint, {**body, "text": f"{body['text']} {i}"}, f"c{run}-{i % 8}").status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(one, range(24)))
    assert statuses == [200] * 24  # 3 per tenant, within 4/minute
    with _client(gthread_server.base) as http:
        ready = http.get("/ready")
        families = _settled_metrics(
            http, lambda f: sum(s.value for s in f["resilient_http_requests_in_progress"].samples) == 0
        )
    assert ready.status_code == 200
    assert ready.json()["ok"] is True
    in_progress = families["resilient_http_requests_in_progress"].samples
    assert sum(s.value for s in in_progress) == 0  # summed over both live workers


def test_gthread_a_provider_failure_outliving_the_retries_is_503_problem_json(
    gthread_server: Gunicorn, provider: SimulatorServer
) -> None:
    overloaded = Status(529, message=f"Overloaded; your prompt was: my key is {SECRET}")
    provider.simulator.script(overloaded, overloaded, overloaded)  # resilient.toml: 3 attempts
    tenant = f"unlucky-{uuid.uuid4().hex[:6]}"
    with _client(gthread_server.base) as http:
        failed = http.post(
            "/summarize",
            json={"text": f"never answered {tenant}"},
            headers={"x-tenant-id": tenant, "x-request-id": f"req-{tenant}"},
        )
        families = _settled_metrics(
            http,
            lambda f: (
                _total(f, "resilient_http_requests", route="/summarize", status="503") >= 1
                and sum(s.value for s in f["resilient_http_requests_in_progress"].samples) == 0
            ),
        )
    body = _problem(failed, 503)
    assert body["type"] == "urn:resilient:problem:provider-unavailable"
    assert body["detail"] == "The provider is overloaded."
    assert body["request_id"] == f"req-{tenant}"
    assert failed.headers["retry-after"] == "1"  # the provider's 0.05 s, rounded up
    for leak in (SECRET, "your prompt", "Error code"):
        assert leak not in failed.text
    assert _total(families, "resilient_http_requests", route="/summarize", status="503") >= 1
    assert sum(s.value for s in families["resilient_http_requests_in_progress"].samples) == 0
    log = gthread_server.log.read_text()
    assert f"provider failure answered 503 on POST /summarize (request id req-{tenant})" in log
    assert SECRET not in log
    assert "Traceback" not in log
