"""The web adapters and provider failures: 503 problems, masking installed, /metrics' registry, header values.

Provider errors here are stand-ins shaped like the SDKs' (``status_code``,
``response.headers``): the classification is duck typed, and the end-to-end
tests with the real anthropic SDK are in test_fastapi_example.py and
test_flask_example.py.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilient_metrics
from resilient import Pipeline
from resilient._http import _TENANT_RE, HttpCore, tenant_from_client, tenant_from_header, unavailable
from resilient.asgi import ResilientMiddleware
from resilient.masking import MaskingFilter
from resilient.providers import classify
from resilient.wsgi import ResilientWSGIMiddleware

from ._webapps import Events, pipeline

SECRET = "sk-ant-api03-" + "Qx9" * 30 + "AA"  # shaped like an Anthropic key, never a real one


class APIStatusError(Exception):
    """Shaped like anthropic's: ``status_code`` and a response with headers; the message carries a secret."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"Error code: {status} - prompt 'my key is {SECRET}'")
        self.status_code = status
        self.response = SimpleNamespace(status_code=status, headers=headers or {})


class APIConnectionError(Exception):
    """Named like anthropic's connection error."""


# ------------------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("error", "detail", "retry_after"),
    [
        (APIStatusError(529, {"retry-after": "7"}), "The provider is overloaded.", 7.0),
        (APIStatusError(500), "The provider failed to answer.", None),
        (APIStatusError(503, {"retry-after-ms": "1500"}), "The provider failed to answer.", 1.5),
        (APIStatusError(429, {"retry-after": "30"}), "The provider is rate limiting this service.", 30.0),
        (APIStatusError(408), "The provider did not answer in time.", None),
        (APIStatusError(409), "The provider could not answer right now.", None),
        (APIStatusError(400, {"x-should-retry": "true"}), "The provider could not answer right now.", None),
        (TimeoutError("read timed out"), "The provider did not answer in time.", None),
        (APIConnectionError("connection reset"), "The provider could not be reached.", None),
    ],
)
def test_provider_failures_are_unavailable_with_our_detail(
    error: Exception, detail: str, retry_after: float | None
) -> None:
    problem = unavailable(error, classify)
    assert problem is not None
    assert problem.status == 503
    assert problem.detail == detail
    assert problem.retry_after == retry_after
    assert SECRET not in str(problem.to_problem())


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_the_caller_s_own_mistakes_are_not_unavailable(status: int) -> None:
    assert unavailable(APIStatusError(status), classify) is None
    assert unavailable(RuntimeError("a bug"), classify) is None


def test_a_broken_classifier_leaves_the_error_unhandled() -> None:
    def broken(error: BaseException) -> Any:
        raise ValueError("classifier bug")

    assert unavailable(APIStatusError(529), broken) is None


# ------------------------------------------------------------------------------------- ASGI


def _starlette(error: BaseException, stream: bool = False) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def fail(request: Any) -> Any:
        raise error

    async def ok(request: Any) -> Any:
        return JSONResponse({"ok": True})

    async def sse(request: Any) -> Any:
        async def events() -> Any:
            yield b"data: one\n\n"
            raise error

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/chat", fail, methods=["POST"]), Route("/ok", ok), Route("/sse", sse)])


def _asgi_request(app: Any, method: str, url: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, headers={"x-request-id": "req-1"})

    return asyncio.run(run())


def _check_problem(response: httpx.Response, retry_after: str | None) -> dict[str, Any]:
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get("retry-after") == retry_after
    assert SECRET not in response.text
    assert "Error code" not in response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == "urn:resilient:problem:provider-unavailable"
    assert body["title"] == "Provider unavailable"
    assert body["status"] == 503
    assert body["request_id"] == "req-1"
    return body


@pytest.mark.parametrize("inside", [True, False])
def test_asgi_answers_503_for_a_provider_failure(inside: bool, caplog: pytest.LogCaptureFixture) -> None:
    events = Events()
    app = _starlette(APIStatusError(529, {"retry-after": "4"}))
    if inside:
        app.add_middleware(ResilientMiddleware, pipeline=pipeline(events), mask_logs=False)
    else:  # wrapped from outside: Starlette's ServerErrorMiddleware sees the error first
        app = ResilientMiddleware(app, pipeline=pipeline(events), mask_logs=False)
    with caplog.at_level(logging.WARNING, logger="resilient.http"):
        response = _asgi_request(app, "POST", "/chat")
    body = _check_problem(response, "4")
    assert body["detail"] == "The provider is overloaded."
    assert body["retry_after"] == 4
    finished = events.named("http.request_finished")
    assert [e.status for e in finished] == [503]
    assert events.in_progress == 0
    warned = [r for r in caplog.records if r.name == "resilient.http"]
    assert warned
    assert warned[0].levelno == logging.WARNING
    assert "APIStatusError status 529" in warned[0].getMessage()
    assert SECRET not in caplog.text


@pytest.mark.parametrize("inside", [True, False])
def test_asgi_keeps_the_caller_s_own_mistakes_unhandled(inside: bool) -> None:
    events = Events()
    app = _starlette(APIStatusError(401))
    if inside:
        app.add_middleware(ResilientMiddleware, pipeline=pipeline(events), mask_logs=False)
    else:
        app = ResilientMiddleware(app, pipeline=pipeline(events), mask_logs=False)
    with pytest.raises(APIStatusError):
        _asgi_request(app, "POST", "/chat")
    assert [e.status for e in events.named("http.request_finished")] == [500]


def test_asgi_provider_errors_off_leaves_them_unhandled() -> None:
    app = ResilientMiddleware(
        _starlette(APIStatusError(529)), pipeline=pipeline(Events()), provider_errors=False, mask_logs=False
    )
    with pytest.raises(APIStatusError):
        _asgi_request(app, "POST", "/chat")


def test_asgi_a_failure_after_the_stream_started_still_drops_the_connection() -> None:
    events = Events()
    app = ResilientMiddleware(_starlette(APIStatusError(529)), pipeline=pipeline(events), mask_logs=False)
    with pytest.raises(APIStatusError):
        _asgi_request(app, "GET", "/sse")
    assert [e.status for e in events.named("http.request_finished")] == [200]


def test_asgi_outside_keeps_the_app_s_own_500_handler() -> None:
    from starlette.responses import PlainTextResponse

    app = _starlette(RuntimeError("a bug"))

    async def mine(request: Any, exc: Exception) -> Any:
        return PlainTextResponse("ours", status_code=500)

    app.add_exception_handler(500, mine)
    wrapped = ResilientMiddleware(app, pipeline=pipeline(Events()), mask_logs=False)

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/chat")

    response = asyncio.run(run())
    assert (response.status_code, response.text) == (500, "ours")


# ------------------------------------------------------------------------------------- WSGI and Flask


def _wsgi(error: BaseException) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/stream":

            def chunks() -> Iterator[bytes]:
                raise error
                yield b""  # pragma: no cover

            start_response("200 OK", [("content-type", "text/event-stream")])
            return chunks()
        raise error

    return app


def _wsgi_get(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "wsgi.input": io.BytesIO(b""),
        "HTTP_X_REQUEST_ID": "req-1",
    }
    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], data


@pytest.mark.parametrize("path", ["/chat", "/stream"])
def test_wsgi_answers_503_before_and_inside_the_body(path: str) -> None:
    events = Events()
    app = ResilientWSGIMiddleware(
        _wsgi(APIStatusError(503, {"retry-after": "2"})), pipeline=pipeline(events), mask_logs=False
    )
    status, headers, data = _wsgi_get(app, path)
    assert status == "503 Service Unavailable"
    assert headers["content-type"] == "application/problem+json"
    assert headers["Retry-After"] == "2"
    assert SECRET.encode() not in data
    assert b'problem:provider-unavailable"' in data
    assert [e.status for e in events.named("http.request_finished")] == [503]


def test_wsgi_keeps_the_caller_s_own_mistakes_unhandled() -> None:
    app = ResilientWSGIMiddleware(_wsgi(APIStatusError(400)), pipeline=pipeline(Events()), mask_logs=False)
    with pytest.raises(APIStatusError):
        _wsgi_get(app, "/chat")


def _flask(error: BaseException) -> Any:
    from flask import Flask

    from resilient.flask import Resilient

    app = Flask("provider_errors")

    @app.post("/chat")
    def chat() -> Any:
        raise error

    @app.get("/ok")
    def ok() -> Any:
        return {"ok": True}

    Resilient(app, pipeline=pipeline(Events()), mask_logs=False)
    return app


def test_flask_answers_503_and_leaves_http_errors_and_bugs_to_flask() -> None:
    client = _flask(APIConnectionError(f"could not reach {SECRET}")).test_client()
    response = client.post("/chat", headers={"x-request-id": "req-1"})
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in response.headers
    assert response.json["detail"] == "The provider could not be reached."
    assert response.json["request_id"] == "req-1"
    assert SECRET not in response.text
    assert client.get("/nothing").status_code == 404  # HTTP errors pass through the Exception handler
    assert client.get("/chat").status_code == 405
    assert client.get("/ok").json == {"ok": True}
    bug = _flask(APIStatusError(403)).test_client().post("/chat")
    assert bug.status_code == 500
    assert SECRET not in bug.text


# ------------------------------------------------------------------------------------- masking


@pytest.fixture
def stream_handler() -> Iterator[tuple[logging.Handler, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        yield handler, out
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def _logging_starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Any) -> Any:
        logging.getLogger("app.chat").info("calling the provider with key %s", SECRET)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/chat", chat)])


def test_every_adapter_masks_the_logs_by_default(stream_handler: tuple[logging.Handler, io.StringIO]) -> None:
    handler, out = stream_handler
    app = ResilientMiddleware(_logging_starlette(), pipeline=pipeline(Events()))
    assert sum(isinstance(f, MaskingFilter) for f in handler.filters) == 1
    assert _asgi_request(app, "GET", "/chat").status_code == 200
    # Idempotent: another adapter (or a second install) keeps the one filter.
    ResilientWSGIMiddleware(_wsgi(RuntimeError()), pipeline=pipeline(Events()))
    assert sum(isinstance(f, MaskingFilter) for f in handler.filters) == 1
    text = out.getvalue()
    assert "calling the provider with key [REDACTED" in text
    assert SECRET not in text
    assert SECRET[:20] not in text


def test_mask_logs_false_and_masking_disabled_install_nothing(
    stream_handler: tuple[logging.Handler, io.StringIO],
) -> None:
    handler, _ = stream_handler
    ResilientMiddleware(_logging_starlette(), pipeline=pipeline(Events()), mask_logs=False)
    from resilient.masking import _plugin as masking_plugin

    off = Pipeline(plugins=[Events(), masking_plugin], discover=False, env={}, config={"masking": {"enabled": False}})
    ResilientWSGIMiddleware(_wsgi(RuntimeError()), pipeline=off)
    assert not any(isinstance(f, MaskingFilter) for f in handler.filters)


def test_flask_masks_the_logs_of_a_request(stream_handler: tuple[logging.Handler, io.StringIO]) -> None:
    from flask import Flask

    from resilient.flask import Resilient

    _, out = stream_handler
    app = Flask("masked")

    @app.get("/chat")
    def chat() -> Any:
        logging.getLogger("app.chat").warning("user sent %s", SECRET)
        return {"ok": True}

    Resilient(app, pipeline=pipeline(Events()))
    assert app.test_client().get("/chat").status_code == 200
    assert "user sent [REDACTED" in out.getvalue()
    assert SECRET not in out.getvalue()


# ------------------------------------------------------------------------------------- /metrics


def _metrics_pipeline() -> tuple[Pipeline, Any]:
    registry = prometheus_client.CollectorRegistry()
    with resilient_metrics.use_registry(registry):
        return Pipeline(plugins=[resilient_metrics], discover=False, env={}), registry


def test_metrics_default_to_the_metrics_plugin_s_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    piped, registry = _metrics_pipeline()
    assert resilient_metrics.registry_of(piped) is registry
    app = ResilientMiddleware(_logging_starlette(), pipeline=piped, mask_logs=False)
    _asgi_request(app, "GET", "/chat")
    text = _asgi_request(app, "GET", "/metrics").text
    assert "resilient_http_requests_total{" in text
    wsgi = ResilientWSGIMiddleware(_wsgi(RuntimeError()), pipeline=piped, mask_logs=False)
    status, _, data = _wsgi_get(wsgi, "/metrics")
    assert status.startswith("200")
    assert b"resilient_http_requests_total" in data
    # An explicit registry still wins.
    other = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("only_here", "a counter", registry=other).inc()
    mine = ResilientWSGIMiddleware(_wsgi(RuntimeError()), pipeline=piped, metrics_registry=other, mask_logs=False)
    assert b"only_here_total 1.0" in _wsgi_get(mine, "/metrics")[2]


def test_metrics_in_multiprocess_mode_merge_the_workers_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    piped, _ = _metrics_pipeline()
    wsgi = ResilientWSGIMiddleware(_wsgi(RuntimeError()), pipeline=piped, mask_logs=False)
    status, headers, _ = _wsgi_get(wsgi, "/metrics")
    assert status.startswith("200")  # the (empty) merge of the directory, not the pipeline's registry
    assert headers["content-type"].startswith("text/plain")


# ------------------------------------------------------------------------------------- header values


@given(st.text(max_size=300))
def test_a_tenant_from_a_header_is_bounded_printable_ascii_or_none(value: str) -> None:
    request = SimpleNamespace(header=lambda name: value)
    tenant = tenant_from_header("x-tenant-id")(request)  # type: ignore[arg-type]
    if tenant is not None:
        assert 1 <= len(tenant) <= 128
        assert _TENANT_RE.fullmatch(tenant)
        assert not any(c in tenant for c in "\r\n\t \x00\x7f")


@functools.cache
def _shared_pipeline() -> Pipeline:
    return pipeline(Events())


def _safe(value: str | None) -> None:
    if value is not None:
        assert 1 <= len(value) <= 128
        assert value.isprintable()  # no newline, no control character: cannot forge a log line


@given(st.one_of(st.none(), st.text(max_size=300), st.integers(), st.binary(max_size=10)))
def test_a_key_function_s_answer_is_checked_before_use(value: Any) -> None:
    core = HttpCore(_shared_pipeline(), tenant=lambda request: value, rate_limits={"*": "5/minute"}, mask_logs=False)
    request = SimpleNamespace(header=lambda name: None, client=None, method="GET", path="/")
    tenant = core.tenant_of(request)  # type: ignore[arg-type]
    _safe(tenant)
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
        assert tenant == value
    else:
        assert tenant is None
    _safe(core._client(request))  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_a_client_address_is_checked_like_a_header(value: str) -> None:
    request = SimpleNamespace(client=value)
    tenant = tenant_from_client()(request)  # type: ignore[arg-type]
    if tenant is not None:
        assert _TENANT_RE.fullmatch(tenant)
