from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient

from resilient import ConfigurationError
from resilient.flask import Resilient
from resilient.testing import FakeClock

from ._webapps import Events, Gate, flask_app, gunicorn_server, pipeline


class BufferingClient(FlaskClient):
    """Reads and closes every body, as a server does."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> Any:
        return super().open(*args, buffered=buffered, **kwargs)


def serve(
    events: Events | None = None, gate: Gate | None = None, clock: FakeClock | None = None, **options: Any
) -> Any:
    app = flask_app(gate)
    Resilient(app, pipeline=pipeline(events or Events(), clock=clock), **options)
    app.test_client_class = BufferingClient
    return app.test_client()


def test_context_request_id_and_route_template() -> None:
    events = Events()
    client = serve(events, tenant="header:x-tenant-id")
    response = client.get("/items/42", headers={"x-request-id": "f-1", "x-tenant-id": "acme"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "f-1"
    assert response.json == {"id": 42, "request_id": "f-1", "tenant": "acme", "route": "/items/<int:item_id>"}
    client.get("/no/such/sk-123")
    client.delete("/items/1")
    finished = events.named("http.request_finished")
    assert [(e.route, e.method, e.status) for e in finished] == [
        ("/items/<int:item_id>", "GET", 200),
        ("<unmatched>", "GET", 404),
        ("/items/<int:item_id>", "DELETE", 405),
    ]
    assert events.in_progress == 0


def test_init_app_with_a_factory() -> None:
    events = Events()
    extension = Resilient(pipeline=pipeline(events), request_id_header="x-correlation-id")
    app = flask_app()
    extension.init_app(app)
    app.test_client_class = BufferingClient
    assert app.extensions["resilient"] is extension
    assert app.test_client().get("/items/1", headers={"x-correlation-id": "c"}).headers["x-correlation-id"] == "c"
    with pytest.raises(ConfigurationError, match="pipeline = None"):
        Resilient(flask_app())


def test_resilient_errors_become_problem_json_through_flask() -> None:
    client = serve()
    response = client.get("/quota", headers={"x-request-id": "r"})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "13"
    assert response.headers["x-request-id"] == "r"
    assert response.json == {
        "type": "urn:resilient:problem:quota-exceeded",
        "title": "Quota exceeded",
        "status": 429,
        "detail": "Token quota spent.",
        "provider": "anthropic",
        "retry_after": 12.2,
        "limit": "1000 tokens/minute",
        "request_id": "r",
    }
    circuit = client.get("/circuit")
    assert circuit.status_code == 503
    assert circuit.headers["retry-after"] == "5"


def test_unhandled_errors_stay_flask_s_unless_asked() -> None:
    response = serve().get("/boom")
    assert response.status_code == 500
    assert "sk-live" not in response.text
    problem = serve(problem_for_unhandled=True).get("/boom")
    assert problem.status_code == 500
    assert problem.headers["content-type"] == "application/problem+json"
    assert "sk-live" not in problem.text


def test_rate_limits_by_rule(limits_on: FakeClock) -> None:
    events = Events()
    client = serve(events, clock=limits_on, rate_limits={"/items/<int:item_id>": "2/minute"})
    assert [client.get(f"/items/{i}").status_code for i in range(3)] == [200, 200, 429]
    assert client.get("/circuit").status_code == 503  # other routes are not limited
    limits_on.advance(60)
    assert client.get("/items/5").status_code == 200
    assert events.in_progress == 0


def test_malformed_json_and_huge_bodies() -> None:
    events = Events()
    client = serve(events, max_body_size=64)
    assert client.post("/echo", data=b"{nope", content_type="application/json").status_code == 400
    assert client.post("/echo", json={"a": 1}).json == {"got": {"a": 1}}
    huge = client.post("/echo", json={"a": "x" * 100})
    assert huge.status_code == 413
    assert huge.headers["content-type"] == "application/problem+json"
    assert events.in_progress == 0


def test_endpoints() -> None:
    client = serve()
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").json["ok"] is True


# --------------------------------------------------------------------------- real gunicorn


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_under_gunicorn(worker: str) -> None:
    with gunicorn_server(worker) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.get("/items/1", headers={"x-request-id": "g-1", "x-tenant-id": "t1"})
        assert response.json() == {"id": 1, "request_id": "g-1", "tenant": "t1", "route": "/items/<int:item_id>"}
        statuses = [client.get(f"/items/{i}", headers={"x-tenant-id": "t1"}).status_code for i in range(3)]
        assert statuses == [200, 200, 429]
        refused = client.get("/items/9", headers={"x-tenant-id": "t1"})
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) > 0
        assert client.get("/items/9", headers={"x-tenant-id": "t2"}).status_code == 200
        assert client.get("/quota").status_code == 429
        assert client.get("/boom").status_code == 500

        # A client that leaves mid-stream: the worker notices on its next write and closes the body.
        with httpx.Client(base_url=url, timeout=10) as leaving, leaving.stream("GET", "/stream") as stream:
            assert next(stream.iter_raw()) == b"data: first\n\n"
        seen = client.get("/_events", params={"after_stream": 1}).json()
        assert seen["in_progress"] == 1  # /_events itself
        assert ["/stream", 200] in seen["finished"]


def test_sse_under_gunicorn_gthread_arrives_before_the_stream_ends() -> None:
    with gunicorn_server("gthread") as url, httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", "/stream", headers={"x-request-id": "sse-1"}) as stream:
            chunks = stream.iter_raw()
            assert next(chunks) == b"data: first\n\n"  # while the view waits to be released
            assert client.post("/_release").json() == {"released": True}
            rest = b"".join(chunks)
        assert rest.endswith(b"data: sse-1\n\n")  # the context is current in the streaming view
        assert re.fullmatch(rb"(: keep-alive\n\n)*data: sse-1\n\n", rest)


def test_misspelt_option_names_the_extension_not_the_middleware() -> None:
    with pytest.raises(TypeError) as info:
        Resilient(flask_app(), pipeline=pipeline(Events()), rate_limts={"*": "1/minute"})
    message = str(info.value)
    assert message.startswith("Resilient() got an unexpected keyword argument 'rate_limts'")
    assert "did you mean 'rate_limits'?" in message
    assert "ResilientWSGIMiddleware" not in message
    assert "rate_limit_strategy" in message  # the allowed options are listed
    extension = Resilient(pipeline=pipeline(Events()))
    with pytest.raises(TypeError, match=r"^Resilient\.init_app\(\) got an unexpected keyword argument 'tenat'"):
        extension.init_app(flask_app(), tenat="header:x-tenant-id")
