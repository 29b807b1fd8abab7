"""Observers that bind the HTTP events (``bind_http``) see exactly what the events would have told them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from resilient import Event, Pipeline, hookimpl
from resilient._http import HttpCounts
from resilient.asgi import ResilientMiddleware
from resilient.testing import FakeClock
from resilient.wsgi import ResilientWSGIMiddleware

from ._webapps import Events, starlette_app, wsgi_app


class Recorder:
    """An observer keeping what it learns of HTTP requests; ``binds`` offers ``bind_http``."""

    def __init__(self, binds: bool = True, fail: str = "") -> None:
        self.log: list[tuple[Any, ...]] = []
        self.bound: list[tuple[str, str]] = []
        self.events = 0
        self.fail = fail
        if not binds:
            self.bind_http = None  # type: ignore[assignment]

    @hookimpl
    def resilient_observers(self, runtime: Any) -> list[Any]:
        return [self]

    def __call__(self, event: Event) -> None:
        self.events += 1
        if event.name == "http.request_started":
            self.log.append(("started", event.route, event.method))  # type: ignore[attr-defined]
        elif event.name == "http.request_finished":
            e: Any = event
            self.log.append(("finished", e.route, e.method, e.status, e.duration))

    def bind_http(self, route: str, method: str) -> HttpCounts | None:
        if self.fail == "bind":
            raise RuntimeError("cannot bind")
        self.bound.append((route, method))

        def start() -> None:
            if self.fail == "call":
                raise RuntimeError("broken counter")
            self.log.append(("started", route, method))

        def finish(status: int, duration: float) -> None:
            if self.fail == "call":
                raise RuntimeError("broken counter")
            self.log.append(("finished", route, method, status, duration))

        return start, finish


BEHAVIOURS = [
    ("GET", "/items/1"),
    ("GET", "/items/2"),
    ("GET", "/quota"),
    ("GET", "/circuit"),
    ("GET", "/boom"),
    ("GET", "/nope"),
    ("POST", "/items/1"),
    ("POST", "/echo"),
    ("GET", "/health"),
    ("PATCH", "/echo"),
]


def pipeline_of(*plugins: Any) -> Pipeline:
    # A fake clock: durations are 0 on both paths, so the logs compare whole.
    return Pipeline(plugins=list(plugins), discover=False, env={}, clock=FakeClock())


def run_asgi(recorder: Recorder, calls: list[tuple[str, str]], limited: bool, *others: Any) -> None:
    options: dict[str, Any] = {"max_body_size": 10, "tenant": "header:x-tenant-id"}
    if limited:
        options["rate_limits"] = {"*": "2/hour"}
    app = ResilientMiddleware(starlette_app(), pipeline=pipeline_of(recorder, *others), **options)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path in calls:
                await client.request(method, path, content=b"x" * 20 if path == "/echo" else None)

    asyncio.run(run())


def run_wsgi(recorder: Recorder, calls: list[tuple[str, str]], limited: bool, *others: Any) -> None:
    options: dict[str, Any] = {"max_body_size": 10, "tenant": "header:x-tenant-id"}
    if limited:
        options["rate_limits"] = {"*": "2/hour"}
    routes = {"/items/1": "/items/{id}", "/items/2": "/items/{id}", "/ok": "/ok"}
    app = ResilientWSGIMiddleware(
        wsgi_app(),
        pipeline=pipeline_of(recorder, *others),
        route=lambda environ: routes.get(environ["PATH_INFO"]),
        **options,
    )
    client = Client(app)
    for method, path in calls:
        try:
            client.open(path, method=method, data=b"x" * 20 if path == "/echo" else None, buffered=True)
        except RuntimeError:  # /boom: the app's error reaches the server
            pass


RUNNERS: list[Callable[..., None]] = [run_asgi, run_wsgi]


@pytest.mark.parametrize("run", RUNNERS, ids=["asgi", "wsgi"])
@given(calls=st.lists(st.sampled_from(BEHAVIOURS), max_size=12), limited=st.booleans())
@settings(max_examples=25, deadline=None)
def test_bound_counts_record_what_the_events_record(
    run: Callable[..., None], calls: list[tuple[str, str]], limited: bool
) -> None:
    bound, emitted = Recorder(binds=True), Recorder(binds=False)
    run(bound, calls, limited)
    run(emitted, calls, limited)
    assert bound.log == emitted.log
    assert bound.events == 0  # no event was built for an observer that binds them
    assert len(set(bound.bound)) == len(bound.bound)  # bound once per route and method


@pytest.mark.parametrize("run", RUNNERS, ids=["asgi", "wsgi"])
def test_an_observer_that_needs_the_events_gets_them_all(run: Callable[..., None]) -> None:
    binder, events = Recorder(binds=True), Events()
    run(binder, [("GET", "/items/1"), ("GET", "/quota")], False, events)
    assert binder.bound == []  # one observer cannot bind: everyone gets events
    assert binder.events == 4
    assert [e.name for e in events.events] == ["http.request_started", "http.request_finished"] * 2


@pytest.mark.parametrize("run", RUNNERS, ids=["asgi", "wsgi"])
def test_an_observer_failing_to_bind_gets_the_events(run: Callable[..., None], caplog: Any) -> None:
    recorder = Recorder(fail="bind")
    with caplog.at_level(logging.ERROR, logger="resilient.http"):
        run(recorder, [("GET", "/items/1")], False)
    assert [entry[0] for entry in recorder.log] == ["started", "finished"]
    assert "failed to bind" in caplog.text


@pytest.mark.parametrize("run", RUNNERS, ids=["asgi", "wsgi"])
def test_bound_counts_that_raise_never_fail_the_request(run: Callable[..., None], caplog: Any) -> None:
    recorder = Recorder(fail="call")
    with caplog.at_level(logging.ERROR):
        run(recorder, [("GET", "/items/1"), ("GET", "/items/2")], False)
    assert "recording http.request_started failed" in caplog.text
    assert "recording http.request_finished failed" in caplog.text


class SecondRecorder(Recorder):
    """A second plugin (plugins are registered by class name)."""


def test_two_binding_observers_both_count() -> None:
    first, second = Recorder(), SecondRecorder()
    run_asgi(first, [("GET", "/items/1"), ("GET", "/quota")], False, second)
    assert first.log == second.log
    assert [entry[:4] for entry in first.log] == [
        ("started", "/items/{item_id}", "GET"),
        ("finished", "/items/{item_id}", "GET", 200),
        ("started", "/quota", "GET"),
        ("finished", "/quota", "GET", 429),
    ]


def _http_samples(with_listener: bool, calls: list[tuple[str, str]]) -> dict[tuple[str, tuple[Any, ...]], float]:
    import prometheus_client

    import resilient_metrics

    registry = prometheus_client.CollectorRegistry()
    plugins: list[Any] = [resilient_metrics]
    if with_listener:
        plugins.append(Events())  # an observer that needs the events: the metrics observer gets them too
    with resilient_metrics.use_registry(registry):
        p = Pipeline(plugins=plugins, discover=False, env={}, clock=FakeClock())
    app = ResilientMiddleware(starlette_app(), pipeline=p, rate_limits={"*": "3/hour"})

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path in calls:
                await client.request(method, path)

    asyncio.run(run())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@given(calls=st.lists(st.sampled_from(BEHAVIOURS[:7]), max_size=8))
@settings(max_examples=15, deadline=None)
def test_the_metrics_plugin_records_the_same_whether_it_binds_or_gets_events(calls: list[tuple[str, str]]) -> None:
    assert _http_samples(False, calls) == _http_samples(True, calls)
