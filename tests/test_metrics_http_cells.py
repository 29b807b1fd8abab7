"""``MetricsObserver.bind_http``: a request's values updated under one lock, or through the public API.

In process, a request's HTTP values (the started and finished events, the
in-progress gauge, the request count by status, the duration histogram) are
updated under the observer's one lock (``shared_cells``); in multiprocess
mode (values in mmap files) through prometheus_client's public methods. The
exposition must be the same either way.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

import resilient_metrics._observer as observer_module
from resilient_metrics import MetricsOptions
from resilient_metrics._metrics import Bounded, Metrics, shared_cells
from resilient_metrics._observer import MetricsObserver

from ._exposition import Samples, exposed

HTTP_BUCKETS = MetricsOptions().http_buckets


def observer(registry: CollectorRegistry) -> MetricsObserver:
    return MetricsObserver(Metrics(registry, MetricsOptions()), Bounded(50))


def http_only(samples: Samples) -> Samples:
    return {key: v for key, v in samples.items() if "http" in key[0] or any("http." in lv for _, lv in key[1])}


# A request: its route, method, status (odd ones count as "unknown"), duration (< 0: unknown) and whether it ends.
requests = st.tuples(
    st.sampled_from(["/items/{id}", "/health", "/v1/chat", ""]),
    st.sampled_from(["GET", "post", "DELETE", "BREW"]),
    st.one_of(st.sampled_from([200, 204, 404, 500, 503]), st.integers(-5, 700)),
    st.one_of(
        st.sampled_from([*(b for b in HTTP_BUCKETS if b != float("inf")), 0.0, -1.0]),  # on a bound exactly
        st.floats(-10, 100, allow_nan=False),
    ),
    st.booleans(),
)


def play(observer: MetricsObserver, script: list[tuple[str, str, int, float, bool]]) -> None:
    """Start every request in order, finishing each one that ends right after the next one starts."""
    pending: list[tuple[Any, int, float]] = []
    for route, method, status, duration, ends in script:
        bound = observer.bind_http(route, method)
        assert bound is not None
        start, finish = bound
        start()
        for finish_earlier, s, d in pending:
            finish_earlier(s, d)
        pending = [(finish, status, duration)] if ends else []


@settings(max_examples=80, deadline=None)
@given(st.lists(requests, max_size=25))
def test_one_lock_per_request_exposes_exactly_what_the_public_api_would(
    script: list[tuple[str, str, int, float, bool]],
) -> None:
    fast_registry = CollectorRegistry()
    fast = observer(fast_registry)
    play(fast, script)

    slow_registry = CollectorRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(observer_module, "shared_cells", lambda lock, children: None)  # the public-API path
        slow = observer(slow_registry)
        play(slow, script)

    if script:  # the fast path was taken: the cells it wrote are guarded by the observer's lock
        route, method = fast._http_labels(script[0][0], script[0][1])
        assert fast.metrics.http_in_progress.labels(route, method)._value._lock is fast._count_lock
        assert slow.metrics.http_in_progress.labels(route, method)._value._lock is not slow._count_lock
    assert exposed(fast_registry) == exposed(slow_registry)


def test_the_in_progress_gauge_goes_up_on_start_and_down_on_finish() -> None:
    for public in (False, True):
        registry = CollectorRegistry()
        with pytest.MonkeyPatch.context() as patch:
            if public:
                patch.setattr(observer_module, "shared_cells", lambda lock, children: None)
            bound = observer(registry).bind_http("/items/{id}", "GET")
        assert bound is not None
        start, finish = bound

        def in_progress(registry: CollectorRegistry = registry) -> float | None:
            return registry.get_sample_value(
                "resilient_http_requests_in_progress", {"route": "/items/{id}", "method": "GET"}
            )

        start()
        assert in_progress() == 1
        start()
        assert in_progress() == 2
        finish(200, 0.5)
        assert in_progress() == 1
        finish(99, -1.0)  # an odd status and an unknown duration still end the request
        assert in_progress() == 0
        labels = {"route": "/items/{id}", "method": "GET"}
        assert registry.get_sample_value("resilient_http_requests_total", {**labels, "status": "200"}) == 1
        assert registry.get_sample_value("resilient_http_requests_total", {**labels, "status": "unknown"}) == 1
        assert registry.get_sample_value("resilient_http_request_duration_seconds_count", labels) == 1
        assert registry.get_sample_value("resilient_http_request_duration_seconds_sum", labels) == 0.5


@settings(max_examples=20, deadline=None)  # a directory per example: Hypothesis cannot reset a function fixture
@given(script=st.lists(requests, min_size=1, max_size=30))
def test_multiprocess_mode_records_requests_through_the_public_api(
    script: list[tuple[str, str, int, float, bool]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("prom")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        patch.setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]
        mapped = observer(CollectorRegistry())
        play(mapped, script)
        child = mapped.metrics.http_in_progress.labels(*mapped._http_labels(script[0][0], script[0][1]))
        assert shared_cells(mapped._count_lock, [child]) is None  # mmap values: the fallback is taken
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(directory))  # type: ignore[no-untyped-call]

    in_process = CollectorRegistry()
    play(observer(in_process), script)
    expected = http_only(exposed(in_process))
    got = http_only(exposed(merged))
    assert expected  # something was recorded
    assert got == expected
