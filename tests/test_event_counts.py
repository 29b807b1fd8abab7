"""Events a policy may count instead of emitting (``Emitter.counter``), and the metrics observer's bound counts.

The shortcut is only allowed where nobody can see the difference: the
metrics exposition must be exactly what emitting the events would have
produced, and any observer that is not a counting one gets every event,
every field.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import resilient_cache
import resilient_metrics
from resilient import Emitter, Event, Pipeline
from resilient.events import Count
from resilient.testing import FakeClock
from resilient_cache._events import CacheMiss, CacheStored
from resilient_metrics import use_registry
from resilient_metrics._observer import MetricsObserver

from ._exposition import exposed
from ._policies import Collect


@dataclass(frozen=True, slots=True, kw_only=True)
class Pinged(Event):
    name: ClassVar[str] = "test.pinged"
    detail: str = ""


class Counting:
    """A counting observer: binds a count per (class, provider, operation, model), or refuses with None."""

    def __init__(self, refuse: bool = False, fail: bool = False) -> None:
        self.counted: list[tuple[str, str, str, str | None]] = []
        self.seen: list[Event] = []
        self.refuse, self.fail = refuse, fail

    def __call__(self, event: Event) -> None:
        self.seen.append(event)

    def bind_count(self, cls: type[Event], provider: str, operation: str, model: str | None) -> Count | None:
        if self.fail:
            raise RuntimeError("bind failed")
        if self.refuse:
            return None
        return lambda: self.counted.append((cls.name, provider, operation, model))


def test_no_observer_counts_nothing_and_one_counting_observer_is_called_directly() -> None:
    nothing = Emitter().counter(Pinged, "p", "o", None)
    assert nothing is not None
    nothing()
    one = Counting()
    count = Emitter([one]).counter(Pinged, "p", "o", "m")
    assert count is not None
    count()
    count()
    assert one.counted == [("test.pinged", "p", "o", "m")] * 2
    assert one.seen == []


def test_every_counting_observer_is_counted() -> None:
    first, second = Counting(), Counting()
    count = Emitter([first, second]).counter(Pinged, "p", "o", "m")
    assert count is not None
    count()
    assert first.counted == second.counted == [("test.pinged", "p", "o", "m")]


def test_any_observer_that_wants_the_event_gets_it(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []
    assert Emitter([Counting(), seen.append]).counter(Pinged, "p", "o", "m") is None
    assert Emitter([Counting(refuse=True)]).counter(Pinged, "p", "o", "m") is None
    with caplog.at_level(logging.ERROR, logger="resilient.events"):
        assert Emitter([Counting(fail=True)]).counter(Pinged, "p", "o", "m") is None
    assert "failed to bind test.pinged" in caplog.text


def _observer(registry: CollectorRegistry) -> MetricsObserver:
    with use_registry(registry):
        pipeline = Pipeline(discover=False, plugins=[resilient_metrics], env={})
    (observer,) = pipeline.runtime.events.observers
    assert isinstance(observer, MetricsObserver)
    return observer


def test_the_metrics_observer_binds_only_the_events_it_merely_counts() -> None:
    observer = _observer(CollectorRegistry())
    assert observer.bind_count(CacheMiss, "p", "o", "m") is not None
    assert observer.bind_count(CacheMiss, "p", "o", "m") is observer.bind_count(CacheMiss, "p", "o", "m")
    assert observer.bind_count(Pinged, "p", "o", None) is not None  # unknown events are counted by name

    def named(name: str) -> type[Event]:
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Named(Event):
            pass

        Named.name = name
        return Named

    # Their other fields matter: retries by outcome, quota limits, breaker states, store errors, HTTP.
    for name in (
        "retry.scheduled",
        "retry.gave_up",
        "quota.rejected",
        "quota.admitted",
        "breaker.state_changed",
        "breaker.rejected",
        "cache.store_error",
        "bulkhead.store_unavailable",
        "http.request_finished",
    ):
        assert observer.bind_count(named(name), "p", "o", "m") is None, name


# One call: which request (a few, so some repeat and hit), temperature 0 or not (bypass), the model, whether
# the answer can be stored, how long the fake clock moves on after it (entries expire after 10 s).
calls = st.tuples(
    st.integers(0, 3),
    st.booleans(),
    st.sampled_from(["claude-sonnet-4-5", "gpt-4o", None]),
    st.booleans(),
    st.sampled_from([0.0, 1.0, 11.0]),
)


def play(script: list[tuple[int, bool, str | None, bool, float]], observe: bool, kind: str) -> tuple[Any, ...]:
    registry, clock, collect = CollectorRegistry(), FakeClock(), Collect()
    config = {"cache": {"enabled": True, "ttl": 10, "max_stale": 0}}
    with use_registry(registry):
        pipeline = Pipeline(
            discover=False,
            plugins=[resilient_metrics, resilient_cache, *([collect] if observe else [])],
            env={},
            config=config,
            clock=clock,
        )

    def answer(**kwargs: Any) -> Any:
        return {"n": kwargs["q"]} if kwargs["storable"] else {1, 2}

    async def aanswer(**kwargs: Any) -> Any:
        return answer(**kwargs)

    ask: Callable[..., Any] = pipeline.guard(provider="anthropic", operation="messages.create")(
        answer if kind == "sync" else aanswer
    )
    for q, zero, model, storable, later in script:
        kwargs: dict[str, Any] = {"q": q, "temperature": 0 if zero else 0.5, "storable": storable}
        if model is not None:
            kwargs["model"] = model
        if kind == "sync":
            ask(**kwargs)
        else:
            asyncio.run(ask(**kwargs))
        clock.advance(later)
    return exposed(registry), [e.name for e in collect.events]


@settings(max_examples=40, deadline=None)
@given(st.lists(calls, max_size=12), st.sampled_from(["sync", "async"]))
def test_counted_events_expose_exactly_what_emitted_ones_do(
    script: list[tuple[int, bool, str | None, bool, float]], kind: str
) -> None:
    counted, nothing_seen = play(script, observe=False, kind=kind)
    emitted, seen = play(script, observe=True, kind=kind)
    assert counted == emitted
    assert nothing_seen == []
    # The observer that wants events got one per lookup and per store attempt.
    assert sum(name in ("cache.hit", "cache.miss", "cache.bypass") for name in seen) == len(script)


def test_an_observer_next_to_the_metrics_gets_every_field() -> None:
    registry, clock, collect = CollectorRegistry(), FakeClock(), Collect()
    with use_registry(registry):
        pipeline = Pipeline(
            discover=False,
            plugins=[resilient_metrics, resilient_cache, collect],
            env={},
            config={"cache": {"enabled": True, "cacheable": "always", "ttl": 10}},
            clock=clock,
        )
    ask = pipeline.guard(provider="anthropic", operation="messages.create")(lambda **kw: {"a": 1})
    ask(model="m1", q=1)
    miss, stored = collect.events
    assert isinstance(miss, CacheMiss)
    assert isinstance(stored, CacheStored)
    assert (miss.provider, miss.operation, miss.model, miss.stale) == ("anthropic", "messages.create", "m1", False)
    assert stored.key == miss.key
    assert len(miss.key) == 64
    assert (stored.ttl, stored.stream) == (10.0, False)
    assert stored.size > len(b'{"j":{"a":1}}')  # the encoded entry: the value and its times


def test_bound_counts_and_emitted_events_from_threads_lose_no_update() -> None:
    registry = CollectorRegistry()
    observer = _observer(registry)
    count = observer.bind_count(CacheMiss, "anthropic", "messages.create", "m")
    assert count is not None
    event = CacheMiss(provider="anthropic", operation="messages.create", model="m", key="k", stale=False)

    def work() -> None:
        for _ in range(2000):
            count()
            observer(event)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = exposed(registry)
    labels = (("model", "m"), ("operation", "messages.create"), ("provider", "anthropic"), ("result", "miss"))
    assert samples["resilient_cache_requests_total", labels] == 16_000
    assert samples["resilient_events_total", (("event", "cache.miss"),)] == 16_000
