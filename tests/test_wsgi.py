from __future__ import annotations

import io
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from resilient import ConfigurationError
from resilient.testing import FakeClock
from resilient.wsgi import ResilientWSGIMiddleware

from ._webapps import Events, Gate, pipeline, wsgi_app


class BufferingClient(Client):
    """Reads and closes every body, as a server does, unless ``buffered=False`` is asked for."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> Any:
        return super().open(*args, buffered=buffered, **kwargs)


def serve(app: Any, events: Events | None = None, clock: FakeClock | None = None, **options: Any) -> Client:
    middleware = ResilientWSGIMiddleware(app, pipeline=pipeline(events or Events(), clock=clock), **options)
    return BufferingClient(middleware)


def test_request_id_and_tenant_in_the_context() -> None:
    client = serve(wsgi_app(), tenant="header:x-tenant-id", route=lambda environ: environ["PATH_INFO"])
    response = client.get("/ok", headers={"x-request-id": "w-1", "x-tenant-id": "acme"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "w-1"
    assert response.json == {"request_id": "w-1", "tenant": "acme", "route": "/ok"}
    generated = client.get("/ok", headers={"x-request-id": "bad id\t"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_resilient_errors_become_problem_json() -> None:
    events = Events()
    client = serve(wsgi_app(), events)
    response = client.get("/quota", headers={"x-request-id": "q"})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "13"
    assert response.headers["x-request-id"] == "q"
    assert response.json["type"] == "urn:resilient:problem:quota-exceeded"
    assert response.json["request_id"] == "q"
    assert events.in_progress == 0


def test_an_error_before_the_first_chunk_replaces_the_response() -> None:
    """A ResilientError raised by the body iterator before any byte went out (PEP 3333 exc_info)."""
    from werkzeug.test import EnvironBuilder

    events = Events()
    app = ResilientWSGIMiddleware(wsgi_app(), pipeline=pipeline(events))
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        # A server that has not sent the headers yet takes the new status (as gunicorn does).
        seen.append((status, headers))
        return lambda data: None

    body = app(EnvironBuilder(path="/late-quota").get_environ(), start_response)
    try:
        data = b"".join(body)
    finally:
        body.close()  # type: ignore[attr-defined]
    assert [status for status, _ in seen] == ["200 OK", "503 Service Unavailable"]
    assert ("content-type", "application/problem+json") in seen[1][1]
    assert b"circuit-open" in data
    assert [e.status for e in events.named("http.request_finished")] == [503]


def test_other_errors_propagate_or_become_a_bodyless_500() -> None:
    events = Events()
    with pytest.raises(RuntimeError):
        serve(wsgi_app(), events).get("/boom")
    assert events.named("http.request_finished")[0].status == 500
    assert events.in_progress == 0
    response = serve(wsgi_app(), problem_for_unhandled=True).get("/boom")
    assert response.status_code == 500
    assert "sk-live" not in response.text
    assert response.json["type"] == "urn:resilient:problem:internal-error"


def test_rate_limits_by_route_and_client(limits_on: FakeClock) -> None:
    events = Events()

    def route(environ: dict[str, Any]) -> str | None:
        return "/ok" if environ["PATH_INFO"] == "/ok" else None

    client = serve(wsgi_app(), events, clock=limits_on, route=route, rate_limits={"/ok": "2/minute"})
    statuses = [client.get("/ok", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert client.get("/ok", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    assert client.get("/echo", data=b"x").status_code == 200  # "<unmatched>" has no limit here
    refused = client.get("/ok", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"
    limits_on.advance(61)
    assert client.get("/ok", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    assert events.in_progress == 0


def test_huge_bodies_are_refused_and_nothing_leaks() -> None:
    events = Events()
    client = serve(wsgi_app(), events, max_body_size=100)
    assert client.post("/echo", data=b"x" * 50).text == "50"
    assert client.post("/echo", data=b"x" * 500).status_code == 413
    bad = client.post("/echo", data=b"x", environ_overrides={"CONTENT_LENGTH": "many"})
    assert bad.status_code == 400
    # No Content-Length (chunked): counted as the app reads it.
    stream = {"CONTENT_LENGTH": "", "wsgi.input": io.BytesIO(b"y" * 500), "wsgi.input_terminated": True}
    chunked = client.post("/echo", environ_overrides=stream)
    assert chunked.status_code == 413
    assert events.in_progress == 0


def test_streaming_body_passes_through_with_the_context() -> None:
    gate = Gate()
    events = Events()
    client = serve(wsgi_app(gate), events)
    response = client.get("/stream", buffered=False, headers={"x-request-id": "st"})
    chunks = response.iter_encoded()
    assert next(chunks) == b"data: first\n\n"
    assert events.in_progress == 1  # still streaming
    gate.release.set()
    rest = b"".join(chunks)
    assert b'"request_id": "st"' in rest  # the context is current while the server iterates
    response.close()
    assert gate.closed.is_set()
    assert events.in_progress == 0


def test_a_client_that_leaves_mid_stream_leaves_nothing_in_progress() -> None:
    gate = Gate()
    events = Events()
    client = serve(wsgi_app(gate), events)
    response = client.get("/stream", buffered=False)
    assert next(response.iter_encoded()) == b"data: first\n\n"
    response.close()  # what a server does when the client is gone: close the body
    assert gate.closed.is_set()
    assert events.in_progress == 0
    assert [e.status for e in events.named("http.request_finished")] == [200]


def test_endpoints() -> None:
    events = Events()
    client = serve(wsgi_app(), events, health_path="/healthz", metrics_path=None)
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/ready").json["ok"] is True
    assert client.get("/metrics").status_code == 404  # turned off: the app answers
    assert len(events.named("http.request_started")) == 1


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"ready_path = 'ready'"):
        serve(wsgi_app(), ready_path="ready")


@given(st.lists(st.sampled_from(["/ok", "/quota", "/boom", "/echo", "/nope", "/stream-leave"]), max_size=12))
@settings(max_examples=40, deadline=None)
def test_every_started_request_finishes_exactly_once(paths: list[str]) -> None:
    events = Events()
    gate = Gate()
    gate.release.set()
    client = serve(wsgi_app(gate), events)
    for path in paths:
        if path == "/boom":
            with pytest.raises(RuntimeError):
                client.get(path)
        elif path == "/stream-leave":
            response = client.get("/stream", buffered=False)
            next(response.iter_encoded())
            response.close()
        else:
            client.get(path)
    assert events.in_progress == 0
    assert len(events.named("http.request_finished")) == len(paths)


def test_get_responses_are_cached_for_their_ttl() -> None:
    served: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        served.append(1)
        start_response(
            "200 OK",
            [("content-type", "text/plain"), ("cache-control", "private")]
            if "c" in environ["QUERY_STRING"]
            else [("content-type", "text/plain")],
        )
        return [str(len(served)).encode()]

    clock = FakeClock()
    events = Events()
    client = serve(app, events, clock=clock, cache_get=10)
    texts = [client.get("/").text, client.get("/").text, client.get("/?c=1").text, client.get("/?c=1").text]
    assert texts == ["1", "1", "2", "3"]
    assert client.get("/").headers["x-resilient-cache"] == "hit"
    clock.advance(10)
    assert client.get("/").text == "4"
    assert events.in_progress == 0


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_every_strategy_counts_per_client_key(limits_on: FakeClock, strategy: str) -> None:
    client = serve(
        wsgi_app(),
        clock=limits_on,
        route=lambda environ: "/ok",
        rate_limits={"/ok": "2/minute"},
        rate_limit_strategy=strategy,
        rate_limit_client="header:x-org",
    )
    org_a = [client.get("/ok", headers={"x-org": "a"}).status_code for _ in range(3)]
    org_b = [client.get("/ok", headers={"x-org": "b"}).status_code for _ in range(2)]
    assert org_a == [200, 200, 429]
    assert org_b == [200, 200]


class _Req:
    method, path, client = "GET", "/p", "10.0.0.1"

    def __init__(self, **headers: str) -> None:
        self._headers = headers

    def header(self, name: str) -> str | None:
        return self._headers.get(name.replace("-", "_"))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/a", "/b", "/c"]),
            st.sampled_from([200, 201, 404, 500]),
            st.sampled_from(["", "no-store", "private", "max-age=60"]),
            st.floats(min_value=0, max_value=20),
        ),
        max_size=30,
    )
)
def test_the_response_cache_never_serves_what_it_must_not(steps: list[tuple[str, int, str, float]]) -> None:
    from resilient._http import ResponseCache

    clock = FakeClock()
    cache = ResponseCache(ttl=10, max_entries=2, max_body=100, monotonic=clock.monotonic)
    stored: dict[tuple[str, ...], tuple[float, int]] = {}
    for n, (path, status, control, wait) in enumerate(steps):
        clock.advance(wait)
        request = _Req()
        request.path = path
        key = cache.key(request, "", None)
        assert key is not None
        hit = cache.get(key)
        if hit is not None:
            kept_at, kept_n = stored[key]
            assert clock.monotonic() - kept_at < 10  # never past its time to live
            assert hit == kept_n
            continue
        headers = [("cache-control", control)] if control else []
        if cache.storable(status, headers):
            assert status == 200
            assert control in ("", "max-age=60")
            cache.put(key, n)
            stored[key] = (clock.monotonic(), n)
    assert len(cache._entries) <= 2
    assert cache.key(_Req(authorization="Bearer k"), "", None) is None  # a credential and no tenant
    assert cache.key(_Req(cookie="s=1"), "", "t1") is not None  # the tenant is in the key
    assert cache.key(_Req(cache_control="no-cache"), "", "t1") is None
