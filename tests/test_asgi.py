from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import ConfigurationError
from resilient._http import request_id_of, tenant_from_api_key_hash
from resilient.asgi import ResilientMiddleware
from resilient.testing import FakeClock

from ._webapps import Events, Gate, pipeline, starlette_app, uvicorn_server


@pytest.fixture
def limits_async(limits_on: FakeClock) -> FakeClock:
    """``limits_on`` for the asyncio memory storage and strategies too: nothing is patched for them either."""
    return limits_on


def serve(
    app: Any, events: Events | None = None, clock: FakeClock | None = None, inside: bool = False, **options: Any
) -> Any:
    """The app wrapped from outside, or with ``inside`` added with ``app.add_middleware`` (the usual way)."""
    events = events or Events()
    if inside:
        app.add_middleware(ResilientMiddleware, pipeline=pipeline(events, clock=clock), **options)
        return app
    return ResilientMiddleware(app, pipeline=pipeline(events, clock=clock), **options)


def request(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(run())


# --------------------------------------------------------------------------- context and request id


def test_request_id_is_echoed_and_in_the_context() -> None:
    app = serve(starlette_app(), tenant="header:x-tenant-id")
    response = request(app, "GET", "/items/7", headers={"x-request-id": "abc-123", "x-tenant-id": "acme"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json() == {"id": "7", "request_id": "abc-123", "tenant": "acme", "route": "/items/{item_id}"}


def test_a_missing_or_unsafe_request_id_is_replaced() -> None:
    app = serve(starlette_app())
    generated = request(app, "GET", "/items/1").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = request(app, "GET", "/items/1", headers={"x-request-id": "a b<script>"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe)


@given(st.text(max_size=200))
@settings(max_examples=200)
def test_an_echoed_request_id_is_always_header_safe(value: str) -> None:
    rid = request_id_of(value)
    assert rid == value or re.fullmatch(r"[0-9a-f]{32}", rid)
    assert re.fullmatch(r"[A-Za-z0-9._:@+=\-]{1,128}", rid)


@given(st.text(min_size=8, max_size=80).filter(lambda s: s.strip() == s and " " not in s))
def test_the_api_key_hash_never_contains_the_key(key: str) -> None:
    class Req:
        method, path, client = "GET", "/", None

        def header(self, name: str) -> str | None:
            return f"Bearer {key}" if name == "authorization" else None

    tenant = tenant_from_api_key_hash()(Req())
    assert tenant is not None
    assert key not in tenant
    assert re.fullmatch(r"key-[0-9a-f]{16}", tenant)


def test_tenant_from_api_key_hash_and_client() -> None:
    app = serve(starlette_app(), tenant="api_key_hash:authorization")
    body = request(app, "GET", "/items/1", headers={"authorization": "Bearer sk-secret"}).json()
    assert body["tenant"].startswith("key-")
    assert "sk-secret" not in body["tenant"]
    app = serve(starlette_app(), tenant="client")
    assert request(app, "GET", "/items/1").json()["tenant"] == "10.0.0.7"


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("tenant", "cookie:x", r"tenant = 'cookie:x'"),
        ("rate_limits", {"/x": "lots"}, r"rate_limits\['/x'\] = 'lots': must be a limit string"),
        ("rate_limits", {"x": "1/second"}, r"must be a route template"),
        ("rate_limit_strategy", "leaky", r"rate_limit_strategy = 'leaky'"),
        ("metrics_path", "metrics", r"metrics_path = 'metrics'"),
        ("request_id_header", "x request", r"request_id_header = 'x request'"),
        ("max_body_size", -1, r"max_body_size = -1"),
        ("cache_get", 0, r"cache_get = 0: must be a time to live"),
    ],
)
def test_bad_options_name_the_key_and_value(option: str, value: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        serve(starlette_app(), **{option: value})


# --------------------------------------------------------------------------- problems


@pytest.mark.parametrize("inside", [False, True])
def test_quota_exceeded_becomes_problem_json_with_retry_after(inside: bool) -> None:
    app = serve(starlette_app(), inside=inside)
    response = request(app, "GET", "/quota", headers={"x-request-id": "r1"})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "13"
    assert response.headers["x-request-id"] == "r1"
    assert response.json() == {
        "type": "urn:resilient:problem:quota-exceeded",
        "title": "Quota exceeded",
        "status": 429,
        "detail": "Token quota spent.",
        "provider": "anthropic",
        "retry_after": 12.2,
        "limit": "1000 tokens/minute",
        "request_id": "r1",
    }


@pytest.mark.parametrize("inside", [False, True])
def test_an_open_circuit_is_503(inside: bool) -> None:
    response = request(serve(starlette_app(), inside=inside), "GET", "/circuit")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["type"] == "urn:resilient:problem:circuit-open"


@pytest.mark.parametrize("inside", [False, True])
def test_other_errors_propagate_or_become_a_bodyless_500(inside: bool) -> None:
    events = Events()
    with pytest.raises(RuntimeError):
        request(serve(starlette_app(), events, inside=inside), "GET", "/boom")
    assert events.named("http.request_finished")[0].status == 500
    assert events.in_progress == 0
    app = serve(starlette_app(), problem_for_unhandled=True, inside=inside)
    if inside:
        response = request(app, "GET", "/boom")
    else:  # Starlette answers with our problem, then re-raises for the server to log
        with pytest.raises(RuntimeError):
            request(app, "GET", "/boom")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.get("/boom")

        response = asyncio.run(run())
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "sk-live" not in response.text
    assert "Traceback" not in response.text


# --------------------------------------------------------------------------- rate limits


def test_rate_limit_per_route_and_client(limits_async: FakeClock) -> None:
    app = serve(
        starlette_app(),
        clock=limits_async,
        tenant="header:x-tenant-id",
        rate_limits={"/items/{item_id}": "2/minute", "*": "100/minute"},
    )

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            out = []
            for i in range(3):  # different paths, one route template
                out.append(await client.get(f"/items/{i}", headers={"x-tenant-id": "a"}))
            out.append(await client.get("/items/9", headers={"x-tenant-id": "b"}))  # another client
            out.append(await client.get("/api/users/x", headers={"x-tenant-id": "a"}))  # another route
            limits_async.advance(60)
            out.append(await client.get("/items/1", headers={"x-tenant-id": "a"}))
            return out

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200, 429, 200, 200, 200]
    refused = responses[2]
    assert refused.headers["content-type"] == "application/problem+json"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-limit"] == "2"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.json()["limit"] == "2 per 1 minute"


def test_rate_limited_requests_are_counted_in_metrics(limits_async: FakeClock) -> None:
    events = Events()
    app = serve(starlette_app(), events, clock=limits_async, rate_limits={"*": "1/minute"})
    assert request(app, "GET", "/items/1").status_code == 200
    assert request(app, "GET", "/items/1").status_code == 429
    finished = events.named("http.request_finished")
    assert [(e.route, e.status) for e in finished] == [("/items/{item_id}", 200), ("/items/{item_id}", 429)]
    assert events.in_progress == 0


# --------------------------------------------------------------------------- events and routes


def test_events_carry_the_route_template_never_the_path() -> None:
    events = Events()
    clock = FakeClock()
    app = serve(starlette_app(), events, clock=clock)
    request(app, "GET", "/items/secret-id-42")
    request(app, "GET", "/api/users/bob")
    request(app, "GET", "/no/such/path/sk-123")
    request(app, "POST", "/items/1")  # a known path, a method it does not allow
    finished = events.named("http.request_finished")
    assert [(e.route, e.method, e.status) for e in finished] == [
        ("/items/{item_id}", "GET", 200),
        ("/api/users/{uid}", "GET", 200),
        ("<unmatched>", "GET", 404),
        ("/items/{item_id}", "POST", 405),
    ]
    assert all(e.duration == 0.0 for e in finished)  # measured on the pipeline's (fake) clock
    assert events.in_progress == 0


def test_fastapi_route_templates() -> None:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, str]:
        return {"name": name}

    events = Events()
    api.add_middleware(ResilientMiddleware, pipeline=pipeline(events), rate_limits={"*": "100/minute"})
    assert request(api, "GET", "/v1/models/m1").json() == {"name": "m1"}
    assert events.named("http.request_finished")[0].route == "/v1/models/{name}"


# --------------------------------------------------------------------------- bad input


def test_huge_and_malformed_bodies() -> None:
    events = Events()
    app = serve(starlette_app(), events, max_body_size=1000)
    big = request(app, "POST", "/echo", content=b"x" * 5000)
    assert big.status_code == 413
    assert big.headers["content-type"] == "application/problem+json"

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"y" * 500

    assert request(app, "POST", "/echo", content=chunks()).status_code == 413
    assert request(app, "POST", "/echo", content=b"{not json").status_code == 400
    assert request(app, "POST", "/echo", json={"a": 1}).json() == {"got": {"a": 1}}
    bad_length = request(app, "POST", "/echo", content=b"{}", headers={"content-length": "abc"})
    assert bad_length.status_code == 400
    assert events.in_progress == 0


def test_invalid_header_bytes_do_not_crash() -> None:
    app = serve(starlette_app(), tenant="header:x-tenant-id")
    response = request(
        app, "GET", "/items/1", headers={"x-tenant-id": b"caf\xc3\xa9 \x7f", "x-request-id": b"\xff\r\xfe"}
    )
    assert response.status_code == 200
    assert response.json()["tenant"] is None
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


# --------------------------------------------------------------------------- endpoints and lifespan


def test_health_ready_and_metrics_endpoints() -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("probe_total", "a probe", registry=registry).inc()
    events = Events()
    app = serve(starlette_app(), events, metrics_registry=registry, ready_path="/readyz")
    assert request(app, "GET", "/health").json() == {"status": "ok"}
    ready = request(app, "GET", "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ok"] is True
    metrics = request(app, "GET", "/metrics")
    assert metrics.status_code == 200
    assert "probe_total 1.0" in metrics.text
    assert request(app, "GET", "/ready").status_code == 404  # moved to /readyz
    assert events.named("http.request_started")[-1].route == "<unmatched>"  # only the 404 was counted
    assert len(events.named("http.request_started")) == 1


def test_ready_is_503_when_a_policy_is_not_ok() -> None:
    class Sick:
        def __init__(self, inner: Any) -> None:
            self.runtime = inner.runtime

        async def ahealth(self) -> dict[str, Any]:
            return {"ok": False, "policies": {"breaker": {"ok": False, "open": ["openai"]}}}

    app = ResilientMiddleware(starlette_app(), pipeline=Sick(pipeline(Events())))
    response = request(app, "GET", "/ready")
    assert response.status_code == 503
    assert response.json()["policies"]["breaker"]["open"] == ["openai"]


def test_lifespan_shutdown_closes_the_pipeline() -> None:
    closed: list[str] = []
    p = pipeline(Events())

    async def aclose() -> None:
        closed.append("closed")

    p.aclose = aclose  # type: ignore[method-assign]
    app = ResilientMiddleware(starlette_app(), pipeline=p)
    with uvicorn_server(app) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert closed == []
    assert closed == ["closed"]


# --------------------------------------------------------------------------- a real server: streaming


def test_sse_chunks_arrive_while_the_stream_is_open() -> None:
    gate = Gate()
    events = Events()
    app = serve(starlette_app(gate), events)
    with (
        uvicorn_server(app) as url,
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{url}/sse", headers={"x-request-id": "s1"}) as response,
    ):
        assert response.headers["x-request-id"] == "s1"
        chunks = response.iter_raw()
        assert next(chunks) == b"data: first\n\n"
        assert not gate.release.is_set()  # the server is still holding the stream open
        gate.release.set()
        assert b"".join(chunks) == b"data: second\n\n"
    assert events.in_progress == 0


def test_a_client_that_leaves_mid_stream_leaves_nothing_in_progress() -> None:
    gate = Gate()
    events = Events()
    app = serve(starlette_app(gate), events)
    with uvicorn_server(app) as url:
        with httpx.Client(timeout=10) as client, client.stream("GET", f"{url}/sse") as response:
            assert next(response.iter_raw()) == b"data: first\n\n"
        # The response is closed: the connection is gone while the app waits on the gate.
        assert events.finished.wait(10)
        gate.release.set()
        assert gate.closed.wait(10)  # the app's generator was closed
    assert events.in_progress == 0
    assert [e.status for e in events.named("http.request_finished")] == [200]


# --------------------------------------------------------------------------- GET cache


def test_get_responses_are_cached_for_their_ttl() -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    served: list[str] = []

    async def count(request: Any) -> JSONResponse:
        served.append(request.url.path)
        headers = {"cache-control": "no-store"} if request.query_params.get("nostore") else {}
        return JSONResponse({"n": len(served)}, headers=headers)

    clock = FakeClock()
    events = Events()
    app = serve(Starlette(routes=[Route("/n", count)]), events, clock=clock, cache_get=30, tenant="header:x-tenant")

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            out = [await client.get("/n"), await client.get("/n")]
            out.append(await client.get("/n", headers={"x-tenant": "other"}))  # another tenant, another entry
            out.append(await client.get("/n", headers={"authorization": "Bearer k"}))  # no tenant, a credential
            out.append(await client.get("/n", headers={"cache-control": "no-cache"}))
            out += [await client.get("/n?nostore=1"), await client.get("/n?nostore=1")]
            clock.advance(30)
            out.append(await client.get("/n"))
            return out

    responses = asyncio.run(run())
    assert [r.json()["n"] for r in responses] == [1, 1, 2, 3, 4, 5, 6, 7]
    assert responses[1].headers["x-resilient-cache"] == "hit"
    assert "x-resilient-cache" not in responses[0].headers
    assert responses[1].headers["x-request-id"] != responses[0].headers["x-request-id"]
    assert events.in_progress == 0
    assert len(events.named("http.request_finished")) == 8


def test_streams_are_never_cached_nor_delayed() -> None:
    gate = Gate()
    gate.release.set()
    app = serve(starlette_app(gate), cache_get=60)
    first = request(app, "GET", "/sse")
    second = request(app, "GET", "/sse")
    assert first.text == second.text == "data: first\n\ndata: second\n\n"
    assert "x-resilient-cache" not in second.headers


# --------------------------------------------------------------------------- with the metrics plugin


def test_http_metrics_by_route_template_through_the_metrics_plugin() -> None:
    import prometheus_client

    import resilient_metrics
    from resilient import Pipeline

    registry = prometheus_client.CollectorRegistry()
    with resilient_metrics.use_registry(registry):
        p = Pipeline(plugins=[resilient_metrics], discover=False, env={})
    gate = Gate()
    app = ResilientMiddleware(starlette_app(gate), pipeline=p, metrics_registry=registry)
    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/items/secret-42").status_code == 200
        assert client.get("/quota").status_code == 429
        with client.stream("GET", "/sse") as stream:  # the client leaves mid-stream
            assert next(stream.iter_raw()) == b"data: first\n\n"
        gate.release.set()
        assert gate.closed.wait(10)
        text = client.get("/metrics").text
    sample = registry.get_sample_value
    assert sample("resilient_http_requests_total", {"route": "/items/{item_id}", "method": "GET", "status": "200"}) == 1
    assert sample("resilient_http_requests_total", {"route": "/quota", "method": "GET", "status": "429"}) == 1
    assert sample("resilient_http_requests_in_progress", {"route": "/sse", "method": "GET"}) == 0
    assert "secret-42" not in text
    assert 'route="/items/{item_id}"' in text


# --------------------------------------------------------------------------- invariants


def test_an_error_after_the_response_started_drops_the_connection() -> None:
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from resilient.errors import QuotaExceeded

    async def stream(request: Any) -> StreamingResponse:
        async def chunks() -> Any:
            yield b"data: one\n\n"
            raise QuotaExceeded(retry_after=1)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    events = Events()
    app = serve(Starlette(routes=[Route("/s", stream)]), events, inside=True)
    with (
        uvicorn_server(app) as url,
        httpx.Client(timeout=10) as client,
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", f"{url}/s") as response,
    ):
        assert response.status_code == 200  # the status was out before the error
        b"".join(response.iter_raw())
    assert [e.status for e in events.named("http.request_finished")] == [200]
    assert events.in_progress == 0


BEHAVIOURS = [
    ("GET", "/items/1"),
    ("GET", "/quota"),
    ("GET", "/circuit"),
    ("GET", "/boom"),
    ("GET", "/nope"),
    ("POST", "/items/1"),
    ("POST", "/echo"),
    ("GET", "/health"),
]


@given(st.lists(st.sampled_from(BEHAVIOURS), max_size=10), st.booleans())
@settings(max_examples=30, deadline=None)
def test_every_started_request_finishes_exactly_once(calls: list[tuple[str, str]], limited: bool) -> None:
    events = Events()
    options: dict[str, Any] = {"max_body_size": 10}
    if limited:
        options["rate_limits"] = {"*": "2/hour"}
    app = serve(starlette_app(), events, **options)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path in calls:
                await client.request(method, path, content=b"x" * 20 if path == "/echo" else None)

    asyncio.run(run())
    started = events.named("http.request_started")
    finished = events.named("http.request_finished")
    assert events.in_progress == 0
    assert len(finished) == len([c for c in calls if c[1] != "/health"])
    assert [(e.request_id, e.route) for e in started] == [(e.request_id, e.route) for e in finished]
