"""The metrics plugin's hot path: a call's values updated under one lock, label children remembered.

Whatever shortcut the policy takes, the exposition must be exactly what
prometheus_client's public API (``inc``, ``observe``, ``labels``) would have
produced: these tests compare the two, call for call.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import resilient_metrics
import resilient_metrics._metrics as metrics_module
import resilient_metrics._policy as policy_module
from resilient import Pipeline, capture_calls
from resilient.testing import FakeClock, HTTPStatus, Latency, ProviderHTTPError, ScriptedProvider
from resilient_metrics import MetricsOptions, use_registry
from resilient_metrics._metrics import Metrics, shared_cells

from ._exposition import exposed

SONNET = "claude-sonnet-4-5-20250929"


def build(registry: CollectorRegistry, clock: FakeClock, **metrics: Any) -> Pipeline:
    with use_registry(registry):
        return Pipeline(discover=False, plugins=[resilient_metrics], env={}, config={"metrics": metrics}, clock=clock)


def usage(n: int) -> Mapping[str, Any]:
    return {
        "usage": {
            "input_tokens": n,
            "output_tokens": n // 3,
            "cache_read_input_tokens": 2 * n,
            "cache_creation_input_tokens": n % 7,
        }
    }


def sdk_reply(n: int) -> Any:
    """An anthropic-SDK-shaped answer (objects, not dicts): the policy reads it by attribute."""
    return types.SimpleNamespace(
        usage=types.SimpleNamespace(
            input_tokens=n, output_tokens=n // 3, cache_read_input_tokens=2 * n, cache_creation_input_tokens=n % 7
        )
    )


# A call: ok with some tokens (a dict or an SDK object), ok with no usage, or a failure; its latency; its model.
plays = st.tuples(
    st.one_of(
        st.integers(0, 10_000).map(lambda n: ("ok", usage(n))),
        st.integers(0, 10_000).map(lambda n: ("ok", sdk_reply(n))),
        st.just(("ok", "plain text")),
        st.sampled_from([("fail", HTTPStatus(503)), ("fail", ValueError("no"))]),
    ),
    st.floats(0, 30, allow_nan=False),
    st.sampled_from([SONNET, "gpt-4o", "mystery-model"]),
)


def run(pipeline: Pipeline, clock: FakeClock, script: list[tuple[tuple[str, Any], float, str]]) -> list[Any]:
    provider = ScriptedProvider([Latency(d, then=answer) for (_, answer), d, _ in script], clock=clock)
    ask = pipeline.guard(provider="anthropic", operation="messages.create")(provider)
    with capture_calls() as calls:
        for (kind, _), _, model in script:
            if kind == "ok":
                ask(model=model)
            else:
                with pytest.raises((ProviderHTTPError, ValueError)):
                    ask(model=model)
    return [(c.metadata.get("cost_usd"), c.usage) for c in calls]


@settings(max_examples=60, deadline=None)
@given(st.lists(plays, max_size=15), st.booleans())
def test_one_lock_per_call_exposes_exactly_what_the_public_api_would(
    script: list[tuple[tuple[str, Any], float, str]], tenants: bool
) -> None:
    options: dict[str, Any] = {"tenant_labels": True, "allowed_tenants": ["a"]} if tenants else {}
    fast_registry, fast_clock = CollectorRegistry(), FakeClock()
    fast_costs = run(build(fast_registry, fast_clock, **options), fast_clock, script)

    slow_registry, slow_clock = CollectorRegistry(), FakeClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(policy_module, "shared_cells", lambda lock, children: None)  # the public-API path
        slow_costs = run(build(slow_registry, slow_clock, **options), slow_clock, script)

    assert exposed(fast_registry) == exposed(slow_registry)
    assert fast_costs == slow_costs


def test_the_fast_path_is_taken_in_process_and_skipped_without_plain_values(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    pipeline = build(registry, clock)
    ask = pipeline.guard(provider="anthropic", operation="op", model=SONNET)(ScriptedProvider([usage(10)], clock=clock))
    ask()
    metrics = metrics_module.metrics_for(registry, MetricsOptions())
    lock = metrics.lock_for(("anthropic", "op", SONNET))
    assert metrics.calls.labels("anthropic", "op", SONNET, "success")._value._lock is lock
    assert metrics.duration.labels("anthropic", "op", SONNET)._sum._lock is lock
    # Any other value class (multiprocess mode keeps values in mmap files) keeps the public API.
    other = Metrics(CollectorRegistry(), MetricsOptions())
    child = other.calls.labels("p", "o", "m", "success")

    class Mapped:
        _value = 0.0

    child._value = Mapped()
    assert shared_cells(threading.Lock(), [child]) is None


def test_every_cell_of_a_label_set_shares_the_lock_other_writers_take() -> None:
    metrics = Metrics(CollectorRegistry(), MetricsOptions())
    lock = metrics.lock_for(("p", "o", "m"))
    assert metrics.lock_for(("p", "o", "m")) is lock
    assert metrics.lock_for(("p", "o", "other")) is not lock
    counter = metrics.tokens.labels("p", "o", "m", "input")
    histogram = metrics.duration.labels("p", "o", "m")
    cells = shared_cells(lock, [counter, histogram])
    assert cells is not None
    assert len(cells) == 1 + len(histogram._upper_bounds) + 1  # the counter, each bucket, the sum
    assert all(cell._lock is lock for cell in cells)
    # The public API, used by anyone else, now takes the same lock: an update through either is never lost.
    counter.inc(5)
    with lock:
        cells[0]._value += 2
    assert counter._value.get() == 7


def test_threads_recording_through_one_label_set_lose_no_update() -> None:
    registry = CollectorRegistry()
    pipeline = build(registry, FakeClock())
    threads, per_thread = 8, 300

    def reply(**kwargs: Any) -> Any:
        return usage(3)

    ask = pipeline.guard(provider="anthropic", model=SONNET)(reply)

    def work() -> None:
        for _ in range(per_thread):
            ask()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    samples = exposed(registry)
    labels = (("model", SONNET), ("operation", "reply"), ("provider", "anthropic"))
    total = threads * per_thread
    assert samples[("resilient_calls_total", (*labels[:2], ("outcome", "success"), labels[2]))] == total
    assert samples[("resilient_call_attempts_total", labels)] == total
    assert samples[("resilient_call_duration_seconds_count", labels)] == total
    assert samples[("resilient_tokens_total", (("kind", "input"), *labels))] == 3 * total


# ---------------------------------------------------------------- labels() remembered


def test_labels_returns_the_same_child_and_forgets_it_when_removed() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, MetricsOptions())
    child = metrics.events.labels("cache.miss")
    assert metrics.events.labels("cache.miss") is child
    assert metrics.events.labels(event="cache.miss") is child  # keywords take prometheus_client's path
    child.inc()
    metrics.events.remove("cache.miss")
    again = metrics.events.labels("cache.miss")
    assert again is not child
    again.inc(2)
    assert exposed(registry)[("resilient_events_total", (("event", "cache.miss"),))] == 2
    metrics.events.clear()
    assert metrics.events.labels("cache.miss") is not again
    assert not [k for k in exposed(registry) if k[0] == "resilient_events_total" and k[1][0][1] != "cache.miss"]


def test_labels_of_unhashable_or_non_string_values_still_work() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, MetricsOptions())
    metrics.events.labels(["a list"]).inc()  # prometheus_client str()s it; nothing to remember it by
    metrics.events.labels(7).inc()
    metrics.events.labels("7").inc()  # the same series as 7
    samples = exposed(registry)
    assert samples[("resilient_events_total", (("event", "['a list']"),))] == 1
    assert samples[("resilient_events_total", (("event", "7"),))] == 2


def test_the_remembered_label_sets_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "BOUND_CAP", 3)
    metrics = Metrics(CollectorRegistry(), MetricsOptions())
    for i in range(10):
        metrics.events.labels(f"e{i}").inc()
    assert len(metrics.events._bound) == 3
    assert metrics.events.labels("e9")._value.get() == 1  # past the cap: prometheus_client's own lookup


def test_a_bound_counter_keeps_prometheus_clients_checks() -> None:
    metrics = Metrics(CollectorRegistry(), MetricsOptions())
    child = metrics.events.labels("x")
    with pytest.raises(ValueError, match="non-negative"):
        child.inc(-1)
    with pytest.raises(ValueError, match="missing label values"):
        metrics.events.inc()  # a family with labels is not observable itself
    child.inc(1, exemplar={"trace_id": "abc"})
    assert child._value.get() == 1
    assert child._value.get_exemplar() is not None
