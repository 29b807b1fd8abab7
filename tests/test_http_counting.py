"""The adapters' fast paths agree with the slow ones they replace.

``MemoryWindows`` (memory:// fixed windows) against ``limits``' own memory
storage and strategy on the same fake clock; the metrics observer's cached
label children against what the families hold, and bounded.
"""

from __future__ import annotations

import limits
import limits.storage.memory
import limits.strategies
import prometheus_client
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_metrics
from resilient import Pipeline
from resilient._clocked import on_clock, strategies_on
from resilient._http import HttpRequestFinished, HttpRequestStarted, MemoryWindows
from resilient.testing import FakeClock

ITEMS = [limits.parse("3/second"), limits.parse("5/minute"), limits.parse("2/10 seconds")]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=20, allow_nan=False),  # seconds to advance first
            st.sampled_from(range(len(ITEMS))),
            st.sampled_from(["a", "b"]),
        ),
        max_size=40,
    )
)
def test_memory_windows_count_like_limits_memory_storage(steps: list[tuple[float, int, str]]) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    # limits' own memory storage and fixed window, on the test's clock
    storage = on_clock(limits.storage.MemoryStorage, clock)()
    try:
        reference = strategies_on(clock)["fixed-window"](storage)
        ours = MemoryWindows(clock.time)
        counters = [ours.counter(item, "/r", i) for i, item in enumerate(ITEMS)]
        for advance, index, client in steps:
            clock.advance(advance)
            item = ITEMS[index]
            allowed = reference.hit(item, "http", "/r", client, str(index))
            stats = reference.get_window_stats(item, "http", "/r", client, str(index))
            refused = counters[index](client)
            assert (refused is None) == allowed
            if refused is not None:
                assert refused[0] is item
                assert max(0, refused[1]) == stats.remaining
                assert refused[2] == stats.reset_time
    finally:
        storage.timer.cancel()


def test_memory_windows_stay_bounded() -> None:
    clock = FakeClock()
    windows = MemoryWindows(clock.time, max_keys=10)
    hit = windows.counter(limits.parse("1/minute"), "/r", 0)
    for i in range(100):
        assert hit(f"client-{i}") is None
        assert len(windows._windows) <= 10
    clock.advance(61)
    hit("late")
    assert len(windows._windows) == 1  # the expired ones went first


def _observer() -> tuple[resilient_metrics.MetricsObserver, prometheus_client.CollectorRegistry]:
    registry = prometheus_client.CollectorRegistry()
    with resilient_metrics.use_registry(registry):
        pipeline = Pipeline(plugins=[resilient_metrics], discover=False, env={})
    observer = next(o for o in pipeline.runtime.events.observers if isinstance(o, resilient_metrics.MetricsObserver))
    return observer, registry


def _value(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/a", "/b/{id}", "<unmatched>", ""]),
            st.sampled_from(["GET", "post", "BREW"]),
            st.sampled_from([200, 404, 503, 999]),
        ),
        max_size=30,
    )
)
def test_cached_children_record_what_the_families_hold(requests: list[tuple[str, str, int]]) -> None:
    observer, registry = _observer()
    expected: dict[tuple[str, str, str], int] = {}
    for i, (route, method, status) in enumerate(requests):
        rid = f"r{i}"
        observer(HttpRequestStarted(route=route, method=method, request_id=rid))
        observer(HttpRequestFinished(route=route, method=method, status=status, duration=0.01, request_id=rid))
        label_route = route or "unmatched"
        label_method = method.upper() if method.upper() in ("GET", "POST") else "other"
        label_status = str(status) if status <= 599 else "unknown"
        key = (label_route, label_method, label_status)
        expected[key] = expected.get(key, 0) + 1
    for (route, method, status), count in expected.items():
        got = _value(registry, "resilient_http_requests_total", route=route, method=method, status=status)
        assert got == count
    for route, method in {(r, m) for r, m, _ in expected}:
        assert _value(registry, "resilient_http_requests_in_progress", route=route, method=method) == 0


def test_a_request_whose_route_changed_decrements_what_it_incremented() -> None:
    observer, registry = _observer()
    observer(HttpRequestStarted(route="<unmatched>", method="GET", request_id="x"))
    observer(HttpRequestFinished(route="/late", method="GET", status=200, duration=0.0, request_id="x"))
    assert _value(registry, "resilient_http_requests_in_progress", route="<unmatched>", method="GET") == 0
    assert _value(registry, "resilient_http_requests_in_progress", route="/late", method="GET") == 0


def test_the_children_caches_are_bounded() -> None:
    observer, registry = _observer()
    for i in range(5000):
        observer(HttpRequestStarted(route=f"/r{i}", method="GET", request_id=str(i)))
        observer(HttpRequestFinished(route=f"/r{i}", method="GET", status=200, duration=0.0, request_id=str(i)))
        assert len(observer._request_children) <= 4096
        assert len(observer._status_children) <= 4096
    # Routes past the label cap (500) are counted as "other", cached or not.
    assert _value(registry, "resilient_http_requests_total", route="other", method="GET", status="200") == 4500


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=40))
def test_durations_fall_in_the_buckets_prometheus_would_pick(durations: list[float]) -> None:
    observer, registry = _observer()
    reference = prometheus_client.CollectorRegistry()
    buckets = observer.metrics.http_duration._upper_bounds
    same = prometheus_client.Histogram("same", "reference", buckets=buckets, registry=reference)
    for i, duration in enumerate(durations):
        observer(HttpRequestStarted(route="/a", method="GET", request_id=str(i)))
        observer(HttpRequestFinished(route="/a", method="GET", status=200, duration=duration, request_id=str(i)))
        same.observe(duration)
    ours = {
        s.labels["le"]: s.value
        for s in registry.collect()
        for s in s.samples
        if s.name == "resilient_http_request_duration_seconds_bucket"
    }
    theirs = {s.labels["le"]: s.value for m in reference.collect() for s in m.samples if s.name == "same_bucket"}
    assert ours == theirs
    total = registry.get_sample_value("resilient_http_request_duration_seconds_sum", {"route": "/a", "method": "GET"})
    assert total == reference.get_sample_value("same_sum")
