"""Hostile input against both example apps, and tenant isolation as a property.

The FastAPI example is served by a real uvicorn on loopback and fed
schemathesis cases (positive and negative, from its OpenAPI schema) and
hand-made bad requests over raw sockets; the Flask example is fed
Hypothesis-generated requests through its WSGI stack. Every answer is a 4xx
or a designed problem+json, and none carries a traceback or a secret.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import Pipeline
from resilient.testing import FakeClock
from resilient.testing.simulator import Simulator, SimulatorServer, run_simulator

from ._harness import API_KEY, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: More examples under make chaos than under make test.
EXAMPLES_PER_TEST = 300 if os.environ.get("CHAOS") == "all" else 20
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=\-]{1,128}")
#: A secret a user sends in a prompt: it may come back to that user, never into a log line.
USER_SECRET = "sk-ant-api03-" + "U53r" * 20 + "AA"
LEAKS = ("Traceback", 'File "', API_KEY, USER_SECRET)


def _load(name: str, path: Path) -> Any:
    """An example's app.py under a module name of its own (both examples are ``app``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _check(status: int, content_type: str, text: str, headers: Any = None) -> None:
    """The answer is a success, a 4xx, or a designed 503 problem+json; no traceback, no secret; a clean request id."""
    assert status < 500 or (status == 503 and content_type.startswith("application/problem+json")), (status, text)
    assert not any(leak in text for leak in LEAKS), text[:500]
    if headers is not None and headers.get("x-request-id") is not None:
        assert REQUEST_ID.fullmatch(headers["x-request-id"]), headers["x-request-id"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def hostile_provider() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(retry_after=0.05)) as server:
        yield server


@pytest.fixture
def logs() -> Iterator[_Records]:
    """Every log line the apps write meanwhile, formatted (masking runs as a filter on the handlers it installs)."""
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _no_forged_log_lines(lines: list[str]) -> None:
    for line in lines:
        assert API_KEY not in line
        assert "\n" not in line.rstrip("\n") or "Traceback" in line, line[:300]  # no header forged a second line


# ------------------------------------------------------------------------------------------ FastAPI


@pytest.fixture(scope="module")
def fastapi_served(hostile_provider: SimulatorServer) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", hostile_provider.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        example = _load("chaos_fastapi_example", EXAMPLES / "fastapi_app" / "app.py")
        pipeline = Pipeline(cwd=str(EXAMPLES / "fastapi_app"), env={"RESILIENT_QUOTA__REQUESTS": "1000/minute"})
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(example.create_app(pipeline), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)  # waiting for a real server to start
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def _raw(port: int, request: bytes) -> tuple[int, str]:
    """Send raw bytes, read the answer until the server closes or 2 s of silence; (status, whole text)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused before reading everything: its answer is still there
        sock.settimeout(2)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break  # the whole answer; the server may keep the connection open
        except (TimeoutError, ConnectionResetError):
            pass
    text = data.decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", text)
    return (int(match.group(1)) if match else 0), text


def _post(
    path: str, body: bytes, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "host: 127.0.0.1",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\nconnection: close\r\n\r\n").encode("latin-1") + body


BAD_REQUESTS = {
    "malformed json": _post("/v1/chat", b'{"message": "hi",'),
    "json not an object": _post("/v1/chat", b'["message"]'),
    "wrong types": _post("/v1/chat", b'{"message": 42, "max_tokens": "many"}'),
    "utf-16 body": _post("/v1/chat", '{"message": "hi"}'.encode("utf-16")),
    "invalid utf-8": _post("/v1/chat", b'{"message": "\xff\xfe\xc3\x28"}'),
    "latin-1 charset": _post(
        "/v1/chat", '{"message": "caf\xe9"}'.encode("latin-1"), content_type="application/json; charset=latin-1"
    ),
    "nested 10000 deep": _post("/v1/chat", b'{"message": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
    "huge body (8 MB)": _post("/v1/chat", b'{"message": "' + b"a" * 8_000_000 + b'"}'),
    "body shorter than its length": _post("/v1/chat", b'{"message": "hi"}')[:-5],
    "oversized header (64 kB)": _post("/v1/chat", b'{"message": "hi"}', {"x-junk": "j" * 65_536}),
    "tenant with control characters": _post("/v1/chat", b'{"message": "hi"}', {"x-tenant-id": "acme\x1b[31m\tx"}),
    "tenant 10 kB long": _post("/v1/chat", b'{"message": "hi"}', {"x-tenant-id": "t" * 10_000}),
    "tenant in latin-1": _post("/v1/chat", b'{"message": "hi"}', {"x-tenant-id": "caf\xe9"}),
    "request id forging a log line": _post("/v1/chat", b'{"message": "hi"}', {"x-request-id": "abc\x0bINFO forged"}),
    "request id 10 kB long": _post("/v1/chat", b'{"message": "hi"}', {"x-request-id": "r" * 10_000}),
    "request id with a secret": _post("/v1/chat", b'{"message": "hi"}', {"x-request-id": API_KEY}),
    "a user's secret in the message": _post("/v1/chat", json.dumps({"message": f"my key is {USER_SECRET}"}).encode()),
    "header without a colon": b"GET /health HTTP/1.1\r\nhost: x\r\nbroken header\r\n\r\n",
    "bad request line": b"GARBAGE\r\n\r\n",
    "unknown method": b"BREW /v1/chat HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    "path traversal": b"GET /../../etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    "chunked lies": (
        b"POST /v1/chat HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
        b"zz\r\n"
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_fastapi_bad_requests_get_a_4xx_or_a_designed_problem(fastapi_served: str, logs: _Records, name: str) -> None:
    """Hand-made bad requests over raw sockets: 4xx or problem+json, no traceback, no secret, no forged log line."""
    port = int(fastapi_served.rsplit(":", 1)[1])
    status, text = _raw(port, BAD_REQUESTS[name])
    head, _, body = text.partition("\r\n\r\n")
    content_type = next(
        (line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("content-type:")), ""
    )
    request_id = next(
        (line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("x-request-id:")), None
    )
    if status == 0:  # closed without an answer: only for bytes that are not HTTP at all
        assert name in ("bad request line", "header without a colon", "chunked lies", "body shorter than its length")
    elif name == "a user's secret in the message":
        assert status == 200  # the (echoing) simulator's reply carries the user's own text back to the user
        assert API_KEY not in body
    else:
        _check(status, content_type, body, {"x-request-id": request_id} if request_id else None)
    _no_forged_log_lines(logs.lines)
    assert not any(USER_SECRET in line for line in logs.lines)


def test_fastapi_schemathesis_cases(fastapi_served: str, logs: _Records) -> None:
    """schemathesis, positive and negative cases from the example's own OpenAPI schema: never a 5xx or a leak."""
    import schemathesis
    from schemathesis.core.result import Ok
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_dict(httpx.get(f"{fastapi_served}/openapi.json", timeout=10).json())
    strategies = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the example's own schema is valid
        operation = result.ok()
        for mode in ("positive", "negative"):
            strategies.append(operation.as_strategy(generation_mode=GenerationMode(mode)))
    assert len(strategies) >= 4

    with httpx.Client(base_url=fastapi_served, timeout=30) as http:

        @settings(
            max_examples=EXAMPLES_PER_TEST * 2,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.one_of(strategies))
        def send(case: Any) -> None:
            kwargs = case.as_transport_kwargs(base_url=fastapi_served)
            headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "content-length"}
            try:
                answer = http.request(
                    kwargs["method"],
                    kwargs["url"],
                    headers=headers,
                    params=kwargs.get("params"),
                    json=kwargs.get("json"),
                    content=kwargs.get("data") if isinstance(kwargs.get("data"), (bytes, str)) else None,
                )
            except (httpx.LocalProtocolError, UnicodeEncodeError):
                return  # a case no HTTP client can send (a header with a newline)
            _check(answer.status_code, answer.headers.get("content-type", ""), answer.text, answer.headers)

        send()
    _no_forged_log_lines(logs.lines)


# ------------------------------------------------------------------------------------------ Flask


@pytest.fixture
def flask_app(hostile_provider: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", hostile_provider.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    example = _load("chaos_flask_example", EXAMPLES / "flask_app" / "app.py")
    pipeline = Pipeline(
        cwd=str(EXAMPLES / "flask_app"), env={"RESILIENT_QUOTA__REQUESTS": "1000/minute"}, clock=FakeClock()
    )
    app = example.create_app(pipeline)
    yield app
    app.extensions["example.provider"].close()
    pipeline.close()


_header_text = st.text(st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n\x00"), max_size=300)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_bodies = st.one_of(
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"text": st.text(max_size=200)},
        optional={"max_words": _json_values, "target": _json_values, "labels": _json_values, "model": _json_values},
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.sampled_from([b"{", b'{"text": "x"' * 3, "é".encode("utf-16"), b"\xff\xfe", b"a" * 70_000]),
)


@settings(max_examples=EXAMPLES_PER_TEST * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(["/summarize", "/translate", "/classify", "/usage", "/", "/ready", "/metrics", "/nope"])
    | st.text(max_size=40).map(lambda s: "/" + s),
    body=_bodies,
    content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-16", ""]),
    tenant=_header_text,
    request_id=_header_text,
)
def test_flask_generated_requests(
    flask_app: Any, logs: _Records, method: str, path: str, body: bytes, content_type: str, tenant: str, request_id: str
) -> None:
    """Hypothesis requests through the Flask example: 4xx or designed problem, no traceback, no secret."""
    headers = {"x-tenant-id": tenant, "x-request-id": request_id}
    if content_type:
        headers["content-type"] = content_type
    try:
        answer = flask_app.test_client().open(path, method=method, data=body, headers=headers)
    except (ValueError, UnicodeEncodeError):
        return  # werkzeug's client refuses to build it (a path it cannot encode): no server could receive it
    _check(answer.status_code, answer.content_type or "", answer.get_data(as_text=True), answer.headers)
    _no_forged_log_lines(logs.lines)


# ------------------------------------------------------------------------------------------ tenant isolation


#: Names that collide if a store key, a cache scope or a quota key is built carelessly from them.
_tenants = st.sampled_from(["acme", "globex", "ACME", "/a/b", "/a%2Fb", ":a:b", ":a", "-", "%2D", "acme:", "acme%3A"])


@pytest.fixture(scope="module")
def isolation_app(hostile_provider: SimulatorServer) -> Iterator[Any]:
    """The Flask example with 3 requests an hour per tenant, on a fake clock, for every example of the property."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", hostile_provider.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        example = _load("chaos_flask_example", EXAMPLES / "flask_app" / "app.py")
        pipeline = Pipeline(
            cwd=str(EXAMPLES / "flask_app"), env={"RESILIENT_QUOTA__REQUESTS": "3/hour"}, clock=FakeClock()
        )
        app = example.create_app(pipeline)
        try:
            yield app
        finally:
            app.extensions["example.provider"].close()
            pipeline.close()


_runs = iter(range(1_000_000))


@settings(max_examples=EXAMPLES_PER_TEST, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(_tenants, st.sampled_from(["q1", "q2", "q3"])), min_size=1, max_size=16))
def test_no_tenant_reads_another_tenants_cache_or_spends_its_quota(
    isolation_app: Any, asks: list[tuple[str, str]]
) -> None:
    """Any sequence of asks by tenants whose names look alike: a hit only on the tenant's own earlier question,
    a quota refusal only once that tenant spent its own 3 requests."""
    run = next(_runs)  # each example starts from tenants nobody used: same names after a fresh prefix
    http = isolation_app.test_client()
    seen: set[tuple[str, str]] = set()
    spent: dict[str, int] = {}
    for name, question in asks:
        tenant = f"r{run}{name}"
        answer = http.post("/summarize", json={"text": question}, headers={"x-tenant-id": tenant})
        if (tenant, question) in seen:
            assert answer.status_code == 200, (tenant, question, answer.get_data(as_text=True))
            assert answer.json["cache"] == "hit"
        elif spent.get(tenant, 0) >= 3:
            assert answer.status_code == 429, (tenant, question)
        else:
            assert answer.status_code == 200, (tenant, question, answer.get_data(as_text=True))
            assert answer.json["cache"] == "miss", (tenant, question)
            spent[tenant] = spent.get(tenant, 0) + 1
            seen.add((tenant, question))


# ------------------------------------------------------------------------------------------ control endpoints

CONTROL_PATHS = [
    "/breaker",
    "/breaker/open",
    "/breaker/anthropic/claude-haiku-4-5/open",
    "/cache/purge",
    "/cache/invalidate",
    "/quota/reset",
    "/admin",
    "/_resilient",
    "/_resilient/breaker/open",
    "/resilient/control",
    "/ready/reset",
    "/metrics/reset",
]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_no_control_endpoint_is_mounted(fastapi_served: str, flask_app: Any, method: str) -> None:
    """Breaker force-open, cache purge and quota reset are Python calls; no adapter serves them over HTTP."""
    flask = flask_app.test_client()
    with httpx.Client(base_url=fastapi_served, timeout=10) as http:
        for path in CONTROL_PATHS:
            assert http.request(method, path).status_code in (404, 405), (method, path)
            assert flask.open(path, method=method).status_code in (404, 405), (method, path)
        # the adapters' own endpoints only read
        for path in ("/health", "/ready", "/metrics"):
            if method != "GET":
                assert http.request(method, path).status_code in (404, 405), (method, path)
                assert flask.open(path, method=method).status_code in (404, 405), (method, path)
    schema = httpx.get(f"{fastapi_served}/openapi.json", timeout=10).json()
    assert set(schema["paths"]) == {"/", "/v1/chat", "/v1/chat/stream"}
