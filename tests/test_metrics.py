"""The metrics plugin: what it records, read back with prometheus_client's text parser."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import resilient_breaker
import resilient_metrics
import resilient_quota
import resilient_retry
from resilient import (
    Call,
    CircuitOpen,
    ConfigurationError,
    Event,
    Handler,
    Order,
    Pipeline,
    PluginError,
    Policy,
    QuotaExceeded,
    Runtime,
    Target,
    Usage,
    capture_calls,
    hookimpl,
    request_context,
)
from resilient.cli import main as cli_main
from resilient.prometheus import exposition, mark_process_dead
from resilient.providers import merge_usage, usage_from, usage_from_chunk
from resilient.testing import Chunks, FakeClock, HTTPStatus, Latency, ProviderHTTPError, ScriptedProvider
from resilient_metrics import MetricsOptions, PriceTable, registry_of, use_registry
from resilient_metrics._metrics import Bounded

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

SONNET = "claude-sonnet-4-5-20250929"
ANTHROPIC_RESPONSE = {
    "usage": {
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 400,
    }
}
# claude-sonnet-4-5: 3 in, 15 out, 0.30 cache read, 3.75 cache write (USD per million tokens)
ANTHROPIC_COST = (1000 * 3 + 200 * 15 + 3000 * 0.3 + 400 * 3.75) / 1e6


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def build(
    registry: CollectorRegistry,
    clock: FakeClock,
    *plugins: object,
    config: Mapping[str, Any] | None = None,
    **metrics: Any,
) -> Pipeline:
    with use_registry(registry):
        return Pipeline(
            discover=False,
            plugins=[resilient_metrics, *plugins],
            env={},
            config={"metrics": metrics, **(config or {})},
            clock=clock,
        )


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(registry).decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``; 0 when there are none."""
    return sum(v for n, lab, v in samples(registry) if n == name and labels.items() <= lab.items())


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [lab for n, lab, _ in samples(registry) if n == name]


# ---------------------------------------------------------------- calls


def test_a_call_records_outcome_latency_attempts_tokens_and_cost(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    provider = ScriptedProvider([Latency(2.5, then=ANTHROPIC_RESPONSE)], clock=clock)
    ask = pipeline.guard(provider="anthropic", operation="messages", model=SONNET)(provider)
    with request_context(tenant="acme") as ctx, capture_calls() as calls:
        assert ask() == ANTHROPIC_RESPONSE
    call = {"provider": "anthropic", "operation": "messages", "model": SONNET}
    assert value(registry, "resilient_calls_total", outcome="success", **call) == 1
    assert value(registry, "resilient_call_duration_seconds_sum", **call) == 2.5
    assert value(registry, "resilient_call_duration_seconds_bucket", le="2.5", **call) == 1
    assert value(registry, "resilient_call_duration_seconds_bucket", le="1.0", **call) == 0
    assert value(registry, "resilient_call_attempts_total", **call) == 1
    for kind, n in (("input", 1000), ("output", 200), ("cache_read", 3000), ("cache_write", 400)):
        assert value(registry, "resilient_tokens_total", kind=kind, **call) == n
    assert value(registry, "resilient_cost_usd_total", **call) == pytest.approx(ANTHROPIC_COST)
    assert value(registry, "resilient_cost_unknown_calls_total", **call) == 0
    # The call, the request's totals and the timings.
    (made,) = calls
    assert made.metadata["cost_usd"] == pytest.approx(ANTHROPIC_COST)
    assert made.usage == Usage(1000, 200, 3000, 400)
    assert (made.started, made.ended) == (0.0, 2.5)
    assert ctx.totals["cost.usd"] == pytest.approx(ANTHROPIC_COST)
    assert ctx.totals["tokens.input"] == 1000
    assert ctx.totals["tokens.cache_write"] == 400
    # No tenant label unless an allow-list enables one; the tenant id appears nowhere.
    assert "acme" not in generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (HTTPStatus(503), "server_error"),
        (HTTPStatus(529), "overloaded"),
        (HTTPStatus(429, {"retry-after": "3"}), "rate_limited"),
        (HTTPStatus(400), "client_error"),
        (TimeoutError(), "timeout"),
        (ValueError("bug"), "error"),
    ],
)
def test_failures_are_counted_by_classified_outcome(
    registry: CollectorRegistry, clock: FakeClock, failure: Any, outcome: str
) -> None:
    pipeline = build(registry, clock)
    ask = pipeline.guard(provider="openai", model="gpt-4o")(ScriptedProvider([Latency(1.0, then=failure)], clock=clock))
    with pytest.raises(type(failure) if isinstance(failure, Exception) else ProviderHTTPError):
        ask()
    assert value(registry, "resilient_calls_total", provider="openai", outcome=outcome) == 1
    assert value(registry, "resilient_calls_total", outcome="success") == 0
    assert value(registry, "resilient_call_duration_seconds_sum") == 1.0
    assert value(registry, "resilient_call_attempts_total") == 1


def test_a_refusal_counts_no_attempt(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)

    def refused() -> None:
        raise QuotaExceeded("spent", limit="requests 1/minute")

    with pytest.raises(QuotaExceeded):
        pipeline.guard(provider="p", model="m")(refused)()
    assert value(registry, "resilient_calls_total", outcome="refused") == 1
    assert value(registry, "resilient_call_attempts_total") == 0


def test_retries_count_attempts_and_retry_events(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, resilient_retry, config={"retry": {"max_attempts": 3, "base_delay": 0}})
    provider = ScriptedProvider([HTTPStatus(503), HTTPStatus(529), ANTHROPIC_RESPONSE], clock=clock)
    assert pipeline.guard(provider="anthropic", model=SONNET)(provider)() == ANTHROPIC_RESPONSE
    assert value(registry, "resilient_calls_total", outcome="success") == 1
    assert value(registry, "resilient_calls_total") == 1
    assert value(registry, "resilient_call_attempts_total") == 3
    assert value(registry, "resilient_retries_total", outcome="server_error", model=SONNET) == 1
    assert value(registry, "resilient_retries_total", outcome="overloaded") == 1
    # Giving up: the last outcome is the one the retry policy classified.
    failing = pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default=HTTPStatus(500)))
    with pytest.raises(ProviderHTTPError):
        failing()
    assert value(registry, "resilient_calls_total", outcome="server_error") == 1
    assert value(registry, "resilient_call_attempts_total") == 6
    assert value(registry, "resilient_retries_exhausted_total", reason="attempts") == 1
    assert value(registry, "resilient_events_total", event="retry.scheduled") == 4


def test_async_calls_are_recorded_like_sync_ones(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    provider = ScriptedProvider([ANTHROPIC_RESPONSE, HTTPStatus(500)], clock=clock)
    ask = pipeline.guard(provider="anthropic", operation="messages", model=SONNET)(provider.acall)

    async def main() -> None:
        with request_context() as ctx:
            await ask()
            with pytest.raises(ProviderHTTPError):
                await ask()
        assert ctx.totals["cost.usd"] == pytest.approx(ANTHROPIC_COST)

    asyncio.run(main())
    assert value(registry, "resilient_calls_total", outcome="success", operation="messages") == 1
    assert value(registry, "resilient_calls_total", outcome="server_error") == 1
    assert value(registry, "resilient_tokens_total", kind="output") == 200


# ---------------------------------------------------------------- cost


def test_an_unknown_model_has_its_usage_counted_and_its_cost_unknown(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    pipeline = build(registry, clock)
    ask = pipeline.guard(provider="acme", model="acme-large-2")(ScriptedProvider(default=ANTHROPIC_RESPONSE))
    with request_context() as ctx, capture_calls() as calls:
        ask()
    assert value(registry, "resilient_tokens_total", model="acme-large-2", kind="input") == 1000
    assert value(registry, "resilient_cost_unknown_calls_total", model="acme-large-2") == 1
    # Never a zero cost: no cost series at all for the model.
    assert series(registry, "resilient_cost_usd_total") == []
    assert calls[0].metadata["cost_usd"] is None
    assert "cost.usd" not in ctx.totals
    assert ctx.totals["cost.unknown_calls"] == 1


def test_configured_prices_override_the_defaults_and_add_models(registry: CollectorRegistry, clock: FakeClock) -> None:
    prices = {
        "acme-large": {"input": 10, "output": 20},
        "claude-sonnet-4-5": {"input": 1, "output": 2, "cache_read": 0},
    }
    pipeline = build(registry, clock, prices=prices)
    provider = ScriptedProvider(default=ANTHROPIC_RESPONSE)
    pipeline.guard(provider="acme", model="acme-large-2")(provider)()  # the longest prefix at a '-'
    pipeline.guard(provider="anthropic", model=SONNET)(provider)()
    # cache_write defaults to the input price; cache_read was given
    assert value(registry, "resilient_cost_usd_total", model="acme-large-2") == pytest.approx(
        (1000 * 10 + 200 * 20 + 3000 * 10 + 400 * 10) / 1e6
    )
    assert value(registry, "resilient_cost_usd_total", model=SONNET) == pytest.approx((1000 + 400 + 400) / 1e6)


def test_without_default_prices_every_model_is_unknown(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, default_prices=False)
    pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default=ANTHROPIC_RESPONSE))()
    assert value(registry, "resilient_cost_unknown_calls_total") == 1


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-5-20250929", (3.0, 15.0)),
        ("claude-sonnet-4-5", (3.0, 15.0)),
        ("claude-sonnet-4-20250514", (3.0, 15.0)),
        ("claude-opus-4-1-20250805", (15.0, 75.0)),
        ("claude-opus-4-5-20251101", (5.0, 25.0)),
        ("claude-haiku-4-5", (1.0, 5.0)),
        ("claude-3-5-haiku-latest", (0.8, 4.0)),
        ("gpt-4o-2024-08-06", (2.5, 10.0)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.6)),
        ("gpt-4.1-mini", (0.4, 1.6)),
        ("gpt-5-turbo", None),
        ("claude", None),
        (None, None),
    ],
)
def test_model_names_match_by_date_suffix_and_prefix(model: str | None, expected: tuple[float, float] | None) -> None:
    price = PriceTable({}).lookup(model)
    assert (price.input, price.output) == expected if price is not None else expected is None


def test_anthropic_cache_prices_are_derived_from_the_input_price() -> None:
    price = PriceTable({}).lookup("claude-opus-4-1")
    assert price is not None
    assert (price.cache_read, price.cache_write) == (pytest.approx(1.5), pytest.approx(18.75))


class FakeCache(Policy):
    """Answers every other call itself, as the cache plugin does on a hit (``call.metadata["cache"]``)."""

    name = "fake_cache"
    order = Order.CACHE

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            self.calls += 1
            if self.calls % 2 == 0:
                call.metadata["cache"] = "hit"
                return ANTHROPIC_RESPONSE
            call.metadata["cache"] = "miss"
            return nxt(call)

        return handler


class FakeCachePlugin:
    def __init__(self) -> None:
        self.policy = FakeCache()

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [self.policy]


def test_a_cache_hit_is_counted_but_spends_no_tokens(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, FakeCachePlugin())
    ask = pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default=ANTHROPIC_RESPONSE))
    with request_context() as ctx, capture_calls() as calls:
        ask(), ask()
    assert value(registry, "resilient_calls_total", outcome="success") == 2
    assert value(registry, "resilient_tokens_total", kind="input") == 1000  # the miss only
    assert value(registry, "resilient_cost_usd_total") == pytest.approx(ANTHROPIC_COST)
    assert ctx.totals["cost.usd"] == pytest.approx(ANTHROPIC_COST)
    assert [c.metadata["cost_usd"] for c in calls] == [pytest.approx(ANTHROPIC_COST), 0.0]


# ---------------------------------------------------------------- labels


def test_models_beyond_the_cap_are_other(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, max_models=2)
    ask = pipeline.guard(provider="openai")(ScriptedProvider(default="ok"))
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-nano", "gpt-4o"):
        ask(model=model)
    by_model = {lab["model"]: v for n, lab, v in samples(registry) if n == "resilient_calls_total"}
    assert by_model == {"gpt-4o": 2, "gpt-4o-mini": 1, "other": 2}


def test_an_allow_list_names_models_and_buckets_the_rest(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, allowed_models=["claude-sonnet-4-5"])
    ask = pipeline.guard(provider="anthropic")(ScriptedProvider(default=ANTHROPIC_RESPONSE))
    ask(model=SONNET)
    ask(model="claude-opus-4-1")
    assert {lab["model"] for lab in series(registry, "resilient_calls_total")} == {SONNET, "other"}
    # Cost still follows the real model, not the label.
    assert value(registry, "resilient_cost_usd_total", model="other") == pytest.approx(
        (1000 * 15 + 200 * 75 + 3000 * 1.5 + 400 * 18.75) / 1e6
    )


def test_tenant_labels_name_only_allowed_tenants(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, tenant_labels=True, allowed_tenants=["acme"])
    ask = pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default=ANTHROPIC_RESPONSE))
    for tenant in ("acme", "user-8812", "user-9921", None):
        with request_context(tenant=tenant):
            ask()
    calls = {lab["tenant"]: v for n, lab, v in samples(registry) if n == "resilient_calls_total"}
    assert calls == {"acme": 1, "other": 2, "none": 1}
    assert value(registry, "resilient_cost_usd_total", tenant="acme") == pytest.approx(ANTHROPIC_COST)
    text = generate_latest(registry).decode()
    assert "user-8812" not in text
    assert "user-9921" not in text
    # Latency has no tenant label (buckets times tenants would be too many series).
    assert all("tenant" not in lab for lab in series(registry, "resilient_call_duration_seconds_count"))


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpStarted(Event):
    name: ClassVar[str] = "http.request_started"
    route: str | None
    method: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpFinished(Event):
    name: ClassVar[str] = "http.request_finished"
    route: str | None
    method: str
    status: int
    duration: float


class Named:
    """An event as observers see it: a ``name`` and attributes (built here without importing its plugin)."""

    def __init__(self, name: str, **fields: Any) -> None:
        self.name = name
        for key in ("provider", "operation", "model", "tenant"):
            setattr(self, key, fields.pop(key, None))
        self.__dict__.update(fields)


def named(name: str, **fields: Any) -> Any:
    return Named(name, **fields)


def emit(pipeline: Pipeline, *events: Any) -> None:
    for event in events:
        pipeline.runtime.events.emit(event)


def test_events_from_other_plugins_become_metrics(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, max_models=1)
    on = {"provider": "anthropic", "operation": "messages", "model": SONNET}
    emit(
        pipeline,
        named("cache.hit", **on, key="k", layer="local", age=1.0),
        named("cache.hit", **on, key="k", layer="shared", age=1.0),
        named("cache.miss", **on, key="k", stale=True),
        named("cache.stale_served", **on, key="k", reason="server_error", staleness=3.0),
        named("cache.store_error", action="get", error="ConnectionError"),
        named("quota.rejected", **on, limit="requests 50/1minute", retry_after=2.0),
        named("quota.paused", **on, seconds=5.0, source="rate_limited"),
        named("quota.store_unavailable", error="ConnectionError", fallback="local"),
        named("quota.window", **on, limit="input_tokens 1000/1minute", remaining=250),
        named("breaker.state_changed", **on, key="anthropic:m", state="open"),
        named("breaker.rejected", **on, key="anthropic:m", retry_after=30.0),
        named("breaker.state_changed", provider="openai", model="gpt-4o", key="openai", state="half_open"),
        named("something.new", whatever=1),
    )
    assert value(registry, "resilient_cache_requests_total", result="hit", model=SONNET) == 2
    assert value(registry, "resilient_cache_requests_total", result="miss") == 1
    assert value(registry, "resilient_cache_requests_total", result="stale") == 1
    assert value(registry, "resilient_store_errors_total", plugin="cache") == 1
    assert value(registry, "resilient_store_errors_total", plugin="quota", fallback="local") == 1
    assert value(registry, "resilient_quota_rejections_total", limit="requests 50/1minute", model=SONNET) == 1
    assert value(registry, "resilient_quota_pauses_total", source="rate_limited") == 1
    assert value(registry, "resilient_quota_remaining", limit="input_tokens 1000/1minute") == 250
    assert value(registry, "resilient_breaker_state", provider="anthropic", model=SONNET) == 2
    # Past max_models=1 the second model is 'other', for events as for calls.
    assert value(registry, "resilient_breaker_state", provider="openai", model="other") == 1
    assert value(registry, "resilient_breaker_transitions_total", state="open") == 1
    assert value(registry, "resilient_breaker_rejections_total", provider="anthropic") == 1
    assert value(registry, "resilient_events_total", event="something.new") == 1
    assert value(registry, "resilient_events_total") == 13


def test_malformed_and_unknown_events_never_raise(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    (observer,) = pipeline.runtime.events.observers
    for event in (
        named("retry.scheduled"),  # no fields at all
        named("http.request_finished", status="200", duration="slow", method=None, route=7),
        named("breaker.state_changed", state=["open"]),
        named("quota.window", remaining="many"),
        object(),
        None,
    ):
        observer(event)  # called directly: the emitter would hide an exception
    assert value(registry, "resilient_events_total", event="retry.scheduled") == 1
    assert value(registry, "resilient_http_requests_total", route="unmatched", method="other", status="unknown") == 1


KNOWN_EVENTS = [
    "retry.scheduled",
    "retry.gave_up",
    "cache.hit",
    "cache.miss",
    "cache.stale_served",
    "cache.bypass",
    "cache.store_error",
    "quota.rejected",
    "quota.paused",
    "quota.store_unavailable",
    "breaker.state_changed",
    "breaker.rejected",
    "http.request_started",
    "http.request_finished",
]
anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.lists(st.integers(), max_size=2)
)
fields = st.dictionaries(
    st.sampled_from(
        [
            "provider",
            "operation",
            "model",
            "tenant",
            "outcome",
            "reason",
            "limit",
            "remaining",
            "state",
            "source",
            "fallback",
            "route",
            "method",
            "status",
            "duration",
            "request_id",
        ]
    ),
    anything,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KNOWN_EVENTS), st.text(max_size=12)), fields), max_size=20))
def test_any_event_with_any_fields_is_counted_once_and_never_raises(events: list[tuple[str, dict[str, Any]]]) -> None:
    registry = CollectorRegistry()
    pipeline = build(registry, FakeClock())
    (observer,) = pipeline.runtime.events.observers
    for name, given_fields in events:
        observer(named(name, **given_fields))  # directly: the emitter would hide an exception
    assert value(registry, "resilient_events_total") == len(events)
    assert generate_latest(registry).startswith(b"# HELP")  # and the exposition still renders


def test_http_events_count_requests_by_route_template(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    emit(
        pipeline,
        HttpStarted(route="/v1/items/{id}", method="get"),
        HttpStarted(route="/v1/items/{id}", method="GET"),
        HttpFinished(route="/v1/items/{id}", method="GET", status=200, duration=0.2),
    )
    labels = {"route": "/v1/items/{id}", "method": "GET"}
    assert value(registry, "resilient_http_requests_in_progress", **labels) == 1
    emit(pipeline, HttpFinished(route="/v1/items/{id}", method="GET", status=503, duration=3.0))
    assert value(registry, "resilient_http_requests_in_progress", **labels) == 0
    assert value(registry, "resilient_http_requests_total", status="200", **labels) == 1
    assert value(registry, "resilient_http_requests_total", status="503", **labels) == 1
    assert value(registry, "resilient_http_request_duration_seconds_sum", **labels) == pytest.approx(3.2)
    assert value(registry, "resilient_http_request_duration_seconds_bucket", le="0.25", **labels) == 1
    emit(
        pipeline,
        HttpStarted(route=None, method="BREW"),
        HttpFinished(route=None, method="BREW", status=418, duration=0.0),
    )
    assert value(registry, "resilient_http_requests_total", route="unmatched", method="other", status="418") == 1


def test_a_real_breaker_reports_its_state(registry: CollectorRegistry, clock: FakeClock) -> None:
    config = {"breaker": {"minimum_calls": 2, "window_size": 2, "wait_open": 30}}
    pipeline = build(registry, clock, resilient_breaker, config=config)
    ask = pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default=HTTPStatus(503)))
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            ask()
    with pytest.raises(CircuitOpen):
        ask()
    assert value(registry, "resilient_breaker_state", provider="anthropic", model=SONNET) == 2
    assert value(registry, "resilient_breaker_transitions_total", state="open") == 1
    assert value(registry, "resilient_breaker_rejections_total") == 1
    assert value(registry, "resilient_calls_total", outcome="refused") == 1
    assert value(registry, "resilient_calls_total", outcome="server_error") == 2


def test_a_real_quota_reports_rejections(registry: CollectorRegistry, clock: FakeClock, limits_on: FakeClock) -> None:
    pipeline = build(registry, clock, resilient_quota, config={"quota": {"requests": "1/minute"}})
    ask = pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default="ok"))
    ask()
    with pytest.raises(QuotaExceeded):
        ask()
    assert value(registry, "resilient_quota_rejections_total", provider="anthropic") == 1
    assert value(registry, "resilient_calls_total", outcome="refused") == 1


# ---------------------------------------------------------------- streams


def anthropic_events(obj: bool) -> list[Any]:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 1000,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 3000,
                    "cache_creation_input_tokens": 400,
                }
            },
        },
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 200}},
        {"type": "message_stop"},
    ]
    return [to_namespace(e) for e in events] if obj else list(events)


def to_namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: to_namespace(v) for k, v in value.items()})
    return value


OPENAI_CHUNKS = [
    {"choices": [{"delta": {"content": "Hi"}}], "usage": None},
    {"choices": [{"delta": {"content": "!"}}], "usage": None},
    {
        "choices": [],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "prompt_tokens_details": {"cached_tokens": 200}},
    },
]
GEMINI_CHUNKS = [
    {"text": "a", "usage_metadata": {"prompt_token_count": 50, "candidates_token_count": 3}},
    {"text": "b", "usage_metadata": {"prompt_token_count": 50, "candidates_token_count": 9}},
]


@pytest.mark.parametrize("as_objects", [False, True])
def test_anthropic_stream_usage_comes_from_message_start_and_delta(
    registry: CollectorRegistry, clock: FakeClock, as_objects: bool
) -> None:
    pipeline = build(registry, clock)
    provider = ScriptedProvider([Latency(4.0, then=Chunks(anthropic_events(as_objects)))], clock=clock)
    stream = pipeline.guard(provider="anthropic", operation="stream", model=SONNET)(provider.stream)
    with request_context() as ctx, capture_calls() as calls:
        assert len(list(stream())) == 5
    assert calls[0].usage == Usage(1000, 200, 3000, 400)
    assert value(registry, "resilient_calls_total", outcome="success", operation="stream") == 1
    assert value(registry, "resilient_tokens_total", kind="output") == 200
    assert value(registry, "resilient_cost_usd_total") == pytest.approx(ANTHROPIC_COST)
    assert value(registry, "resilient_call_duration_seconds_sum") == 4.0
    assert ctx.totals["cost.usd"] == pytest.approx(ANTHROPIC_COST)


def test_time_to_first_chunk_is_observed_for_streams(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    events = anthropic_events(True)

    def slow_stream() -> Iterator[Any]:
        clock.advance(1.5)  # time to first token
        yield from events[:2]
        clock.advance(6.0)  # the rest of the generation
        yield from events[2:]

    stream = pipeline.guard(provider="anthropic", operation="stream", model=SONNET)(slow_stream)
    with capture_calls() as calls:
        assert len(list(stream())) == 5
    assert calls[0].metadata["first_chunk_s"] == 1.5
    assert value(registry, "resilient_stream_first_chunk_seconds_sum", operation="stream") == 1.5
    assert value(registry, "resilient_stream_first_chunk_seconds_count") == 1
    assert value(registry, "resilient_call_duration_seconds_sum") == 7.5
    # Non-stream targets have no first-chunk series at all.
    pipeline.guard(provider="anthropic", operation="plain", model=SONNET)(ScriptedProvider())()
    assert {lab["operation"] for lab in series(registry, "resilient_stream_first_chunk_seconds_count")} == {"stream"}


def test_a_failure_to_record_never_reaches_the_call(
    registry: CollectorRegistry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = build(registry, clock, tenant_labels=True, allowed_tenants=["acme"])

    def broken_tenant(call: Any) -> str:
        raise RuntimeError("tenant lookup bug")

    ok = pipeline.guard(provider="p", model="m", tenant=broken_tenant)(ScriptedProvider(default="answer"))
    failing = pipeline.guard(provider="p", model="m", tenant=broken_tenant)(ScriptedProvider(default=HTTPStatus(503)))
    assert ok() == "answer"
    with pytest.raises(ProviderHTTPError):  # the provider's error, not the recording's
        failing()
    assert caplog.text.count("metrics failed to record a call") == 2


def test_openai_and_gemini_stream_usage(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    provider = ScriptedProvider([Chunks(OPENAI_CHUNKS), Chunks(GEMINI_CHUNKS)])
    stream = pipeline.guard(provider="p")(provider.stream)
    list(stream(model="gpt-4o"))
    list(stream(model="gemini-2.5-flash"))
    assert value(registry, "resilient_tokens_total", model="gpt-4o", kind="input") == 1000
    assert value(registry, "resilient_tokens_total", model="gpt-4o", kind="cache_read") == 200
    assert value(registry, "resilient_tokens_total", model="gpt-4o", kind="output") == 80
    assert value(registry, "resilient_cost_usd_total", model="gpt-4o") == pytest.approx(
        (1000 * 2.5 + 200 * 1.25 + 80 * 10) / 1e6
    )
    assert value(registry, "resilient_tokens_total", model="gemini-2.5-flash", kind="output") == 9
    assert value(registry, "resilient_tokens_total", model="gemini-2.5-flash", kind="input") == 50
    assert value(registry, "resilient_cost_unknown_calls_total", model="gemini-2.5-flash") == 1


def test_abandoned_and_failed_streams(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    events = anthropic_events(False)
    provider = ScriptedProvider([Chunks(events), Chunks(events[:2], error=ProviderHTTPError(529)), HTTPStatus(500)])
    stream = pipeline.guard(provider="anthropic", model=SONNET)(provider.stream)
    it = stream()
    next(it), next(it)
    it.close()
    with pytest.raises(ProviderHTTPError):
        list(stream())
    with pytest.raises(ProviderHTTPError):
        list(stream())
    assert value(registry, "resilient_calls_total", outcome="abandoned") == 1
    assert value(registry, "resilient_calls_total", outcome="overloaded") == 1
    assert value(registry, "resilient_calls_total", outcome="server_error") == 1
    # Usage seen before the end is accounted: the input of both started messages.
    assert value(registry, "resilient_tokens_total", kind="input") == 2000


def test_async_streams(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock)
    provider = ScriptedProvider([Chunks(anthropic_events(True)), Chunks([], error=TimeoutError())])
    stream = pipeline.guard(provider="anthropic", model=SONNET)(provider.astream)

    async def main() -> None:
        assert len([c async for c in stream()]) == 5
        with pytest.raises(TimeoutError):
            [c async for c in stream()]

    asyncio.run(main())
    assert value(registry, "resilient_calls_total", outcome="success") == 1
    assert value(registry, "resilient_calls_total", outcome="timeout") == 1
    assert value(registry, "resilient_cost_usd_total") == pytest.approx(ANTHROPIC_COST)


# ---------------------------------------------------------------- usage extraction


def test_usage_from_chunk_reads_each_provider_shape() -> None:
    start, text, _, delta, stop = anthropic_events(True)
    assert usage_from_chunk(start) == Usage(1000, 1, 3000, 400)
    assert usage_from_chunk(text) is None
    assert usage_from_chunk(stop) is None
    assert usage_from_chunk(delta) == Usage(output_tokens=200)
    assert usage_from_chunk(to_namespace(OPENAI_CHUNKS[0])) is None
    assert usage_from_chunk(OPENAI_CHUNKS[2]) == Usage(1000, 80, 200, 0)
    assert usage_from_chunk(GEMINI_CHUNKS[1]) == Usage(50, 9)
    completed = {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 90, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 40}}},
    }
    assert usage_from_chunk(to_namespace(completed)) == Usage(50, 7, 40)
    assert usage_from_chunk("text") is None
    assert usage_from_chunk(b"bytes") is None
    assert usage_from(completed["response"]) == Usage(50, 7, 40)


def test_usage_from_the_sdks_own_response_and_event_objects(registry: CollectorRegistry, clock: FakeClock) -> None:
    anthropic_types = pytest.importorskip("anthropic.types")
    openai_chat = pytest.importorskip("openai.types.chat")
    usage = ANTHROPIC_RESPONSE["usage"]
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": SONNET,
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    events = [
        anthropic_types.RawMessageStartEvent.model_validate(
            {"type": "message_start", "message": {**message, "content": [], "usage": {**usage, "output_tokens": 1}}}
        ),
        anthropic_types.RawContentBlockDeltaEvent.model_validate(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}
        ),
        anthropic_types.RawMessageDeltaEvent.model_validate(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 200}}
        ),
        anthropic_types.RawMessageStopEvent.model_validate({"type": "message_stop"}),
    ]
    completion = {"id": "c", "created": 0, "model": "gpt-4o", "object": "chat.completion"}
    openai_usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 80,
        "total_tokens": 1280,
        "prompt_tokens_details": {"cached_tokens": 200},
    }
    chunk = {**completion, "object": "chat.completion.chunk"}
    chunks = [
        openai_chat.ChatCompletionChunk.model_validate(
            {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        ),
        openai_chat.ChatCompletionChunk.model_validate({**chunk, "choices": [], "usage": openai_usage}),
    ]
    reply = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    pipeline = build(registry, clock)
    provider = ScriptedProvider(
        [
            anthropic_types.Message.model_validate(message),
            Chunks(events),
            openai_chat.ChatCompletion.model_validate({**completion, "choices": [reply], "usage": openai_usage}),
            Chunks(chunks),
        ]
    )
    with capture_calls() as calls:
        pipeline.guard(provider="anthropic", operation="create", model=SONNET)(provider)()
        list(pipeline.guard(provider="anthropic", operation="stream", model=SONNET)(provider.stream)())
        pipeline.guard(provider="openai", operation="create", model="gpt-4o")(provider)()
        list(pipeline.guard(provider="openai", operation="stream", model="gpt-4o")(provider.stream)())
    assert [c.usage for c in calls] == [Usage(1000, 200, 3000, 400)] * 2 + [Usage(1000, 80, 200, 0)] * 2
    assert value(registry, "resilient_tokens_total", provider="anthropic", kind="cache_write") == 800
    assert value(registry, "resilient_tokens_total", provider="openai", kind="cache_read") == 400
    assert value(registry, "resilient_cost_usd_total", provider="anthropic") == pytest.approx(2 * ANTHROPIC_COST)


usages = st.builds(Usage, *(st.integers(0, 10**6) for _ in range(4)))


@given(st.lists(usages, min_size=1, max_size=8))
def test_merging_stream_usage_is_the_maximum_whatever_the_order_or_repeats(chunks: list[Usage]) -> None:
    merged: Usage | None = None
    for u in chunks + chunks[::-1]:  # every chunk seen twice, as by two watchers
        merged = merge_usage(merged, u)
    assert merged == Usage(*(max(getattr(u, f) for u in chunks) for f in Usage.__slots__))


# ---------------------------------------------------------------- the invariant


outcomes = st.one_of(
    st.builds(lambda u: ("ok", u), usages),
    st.sampled_from([("fail", HTTPStatus(503)), ("fail", HTTPStatus(429)), ("fail", ValueError())]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(outcomes, st.floats(0, 100), st.sampled_from([SONNET, "gpt-4o", "mystery"])), max_size=12))
def test_every_call_is_counted_once_with_its_tokens_cost_and_time(
    script: list[tuple[tuple[str, Any], float, str]],
) -> None:
    registry, clock = CollectorRegistry(), FakeClock()
    pipeline = build(registry, clock)
    plays = [
        Latency(
            d,
            then={
                "usage": {
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cache_read_input_tokens": u.cache_read_tokens,
                    "cache_creation_input_tokens": u.cache_write_tokens,
                }
            }
            if kind == "ok"
            else u,
        )
        for (kind, u), d, _ in script
    ]
    ask = pipeline.guard(provider="p")(ScriptedProvider(plays, clock=clock))
    table = PriceTable({})
    expected_cost = 0.0
    with request_context() as ctx:
        for (kind, u), _, model in script:
            if kind == "ok":
                ask(model=model)
                price = table.lookup(model)
                expected_cost += price.cost(u) if price is not None else 0.0
            else:
                with pytest.raises((ProviderHTTPError, ValueError)):
                    ask(model=model)
    ok = [u for (kind, u), _, _ in script if kind == "ok"]
    assert value(registry, "resilient_calls_total") == len(script)
    assert value(registry, "resilient_calls_total", outcome="success") == len(ok)
    assert value(registry, "resilient_call_duration_seconds_count") == len(script)
    assert value(registry, "resilient_call_duration_seconds_sum") == pytest.approx(sum(d for _, d, _ in script))
    assert value(registry, "resilient_tokens_total", kind="input") == sum(u.input_tokens for u in ok)
    assert value(registry, "resilient_tokens_total", kind="cache_write") == sum(u.cache_write_tokens for u in ok)
    assert value(registry, "resilient_cost_usd_total") == pytest.approx(expected_cost)
    assert ctx.totals.get("cost.usd", 0.0) == pytest.approx(expected_cost)
    unknown = sum(1 for (kind, _), _, model in script if kind == "ok" and model == "mystery")
    assert value(registry, "resilient_cost_unknown_calls_total") == unknown


def test_bounded_labels_never_exceed_the_cap() -> None:
    bounded = Bounded(3)
    labels = {bounded(f"m{i}") for i in range(100)}
    assert labels == {"m0", "m1", "m2", "other"}
    assert bounded(None) == "none"
    assert bounded("m1") == "m1"


# ---------------------------------------------------------------- registries and configuration


def test_pipelines_sharing_a_registry_share_its_metrics(registry: CollectorRegistry, clock: FakeClock) -> None:
    first, second = build(registry, clock), build(registry, clock)
    first.guard(provider="a", model="m")(ScriptedProvider())()
    second.guard(provider="a", model="m")(ScriptedProvider())()
    assert value(registry, "resilient_calls_total", provider="a") == 2


def test_the_default_registry_is_used_once_per_process(clock: FakeClock) -> None:
    from prometheus_client import REGISTRY

    for _ in range(2):  # a second pipeline must not register the names again
        pipeline = Pipeline(discover=False, plugins=[resilient_metrics], env={}, config={}, clock=clock)
        pipeline.guard(provider="default-registry-test", model="m")(ScriptedProvider())()
    assert value(REGISTRY, "resilient_calls_total", provider="default-registry-test") >= 2


def test_another_namespace_is_another_set_of_metrics(registry: CollectorRegistry, clock: FakeClock) -> None:
    build(registry, clock, namespace="llm").guard(provider="a", model="m")(ScriptedProvider())()
    assert value(registry, "llm_calls_total") == 1
    # Raised by the plugin's hook, so the build names the plugin too.
    with pytest.raises(PluginError, match=r"ConfigurationError: metrics\.namespace = 'llm': .* already registered"):
        build(registry, clock, namespace="llm", tenant_labels=True, allowed_tenants=["t"])


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"namespace": "9lives"}, "metrics.namespace = '9lives' must be a Prometheus name"),
        ({"prices": {"m": {"input": 1, "ouput": 2}}}, "metrics.prices.m.ouput = 2.0: unknown token kind"),
        ({"prices": {"m": {"input": 1}}}, r"metrics.prices.m = .* needs 'output'"),
        ({"prices": {"m": {"input": -1, "output": 1}}}, "metrics.prices.m.input = -1.0 must be"),
        ({"tenant_labels": True}, "tenant_labels = true needs metrics.allowed_tenants"),
        ({"buckets": [1, 0.5]}, r"metrics.buckets = \[1.0, 0.5\] must be finite positive seconds in increasing order"),
        ({"max_models": 0}, "metrics.max_models = 0"),
    ],
)
def test_configuration_errors_name_the_key_and_value(
    registry: CollectorRegistry, clock: FakeClock, metrics: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build(registry, clock, **metrics)


def test_registry_of_names_the_registry_a_pipeline_records_into(registry: CollectorRegistry, clock: FakeClock) -> None:
    assert registry_of(build(registry, clock)) is registry
    assert registry_of(build(registry, clock, enabled=False)) is None


def test_the_cli_shows_which_price_applies_to_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("RESILIENT_")]:
        monkeypatch.delenv(var)
    (tmp_path / "resilient.toml").write_text('[metrics.prices]\n"acme-large" = { input = 2, output = 4 }\n')
    assert cli_main(["metrics", "prices", SONNET, "acme-large-v2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^claude-sonnet-4-5-20250929\s+claude-sonnet-4-5\s+3\s+15\s+0\.3\s+3\.75$", out, re.M)
    assert re.search(r"^acme-large-v2\s+acme-large\s+2\s+4\s+2\s+2$", out, re.M)
    assert cli_main(["metrics", "prices", "gemini-2.5-pro"]) == 1
    assert "gemini-2.5-pro               (none)               cost unknown" in capsys.readouterr().out
    assert cli_main(["metrics", "prices"]) == 0
    listed = re.findall(r"^(\S+)\s+\1\s", capsys.readouterr().out, re.M)
    assert {"claude-opus-4-1", "gpt-4o-mini", "acme-large"} <= set(listed)


def test_disabled_means_no_policy_and_no_observer(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, enabled=False)
    assert pipeline.policies == ()
    assert not pipeline.runtime.events.enabled


def test_without_prometheus_client_tokens_and_cost_are_still_accounted(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    pipeline = Pipeline(discover=False, plugins=[resilient_metrics], env={}, config={}, clock=clock)
    ask = pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider(default=ANTHROPIC_RESPONSE))
    with request_context() as ctx:
        ask()
    assert ctx.totals["cost.usd"] == pytest.approx(ANTHROPIC_COST)


# ---------------------------------------------------------------- exposition


def exercise_everything(registry: CollectorRegistry, clock: FakeClock) -> None:
    pipeline = build(registry, clock, resilient_retry, config={"retry": {"max_attempts": 2, "base_delay": 0}})
    provider = ScriptedProvider([HTTPStatus(503), ANTHROPIC_RESPONSE, HTTPStatus(400)], default=ANTHROPIC_RESPONSE)
    ask = pipeline.guard(provider="anthropic", model=SONNET)(provider)
    ask()
    with pytest.raises(ProviderHTTPError):
        ask()
    pipeline.guard(provider="acme", model="unknown-1")(provider)()
    list(pipeline.guard(provider="anthropic", model=SONNET)(ScriptedProvider().stream)())
    on = {"provider": "anthropic", "operation": "messages", "model": SONNET}
    emit(
        pipeline,
        named("cache.hit", **on),
        named("cache.store_error", action="get", error="E"),
        named("quota.rejected", **on, limit="requests 5/1second"),
        named("quota.paused", **on, seconds=1.0, source="rate_limited"),
        named("quota.window", **on, limit="requests 5/1second", remaining=4),
        named("breaker.state_changed", **on, key="k", state="half_open"),
        named("breaker.rejected", **on, key="k"),
        named("retry.gave_up", **on, attempts=2, reason="not_retryable", outcome="client_error"),
        HttpStarted(route="/v1/chat", method="POST"),
        HttpFinished(route="/v1/chat", method="POST", status=200, duration=1.5),
    )


def test_every_metric_has_a_sample_after_exercising_everything(registry: CollectorRegistry, clock: FakeClock) -> None:
    exercise_everything(registry, clock)
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    empty = [f.name for f in families if not f.samples]
    assert empty == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_finds_no_problem_in_the_exposition(registry: CollectorRegistry, clock: FakeClock) -> None:
    exercise_everything(registry, clock)
    for accept in (None, "application/openmetrics-text; version=1.0.0"):
        body, content_type = exposition(registry, accept)
        if accept is not None:
            assert content_type.startswith("application/openmetrics-text")
            continue  # promtool checks the Prometheus text format
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
        assert result.stdout + result.stderr == b""


def test_exposition_defaults_to_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    body, content_type = exposition()
    assert content_type.startswith("text/plain")
    assert b"python_info" in body
    mark_process_dead(os.getpid())  # outside multiprocess mode: nothing to do


WORKER = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass
    from typing import ClassVar

    import resilient_metrics
    from resilient import Event, Pipeline
    from resilient.testing import ScriptedProvider


    @dataclass(frozen=True, kw_only=True)
    class HttpStarted(Event):
        name: ClassVar[str] = "http.request_started"
        route: str
        method: str


    pipeline = Pipeline(discover=False, plugins=[resilient_metrics], env={}, config={})
    response = {"usage": {"input_tokens": 100, "output_tokens": 10}}
    ask = pipeline.guard(provider="anthropic", model="claude-haiku-4-5")(ScriptedProvider(default=response))
    for _ in range(int(sys.argv[1])):
        ask()
    pipeline.runtime.events.emit(HttpStarted(route="/v1/chat", method="GET"))  # never finished: in progress
    """
)


def test_multiprocess_mode_merges_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers = [subprocess.Popen([sys.executable, str(script), str(n)], env=env, cwd=tmp_path) for n in (3, 5)]
    pids = [w.pid for w in workers]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    body, _ = exposition()
    registry = parse(body)
    assert registry[("resilient_calls_total", "success")] == 8
    assert registry[("resilient_tokens_total", "input")] == 800
    assert registry[("resilient_cost_usd_total", "")] == pytest.approx(8 * (100 * 1 + 10 * 5) / 1e6)
    # Both workers are gone but have not been marked dead: their in-progress requests still count.
    assert registry[("resilient_http_requests_in_progress", "")] == 2
    for pid in pids:
        mark_process_dead(pid)
    assert parse(exposition()[0]).get(("resilient_http_requests_in_progress", ""), 0) == 0


def parse(body: bytes) -> dict[tuple[str, str], float]:
    """Samples summed by (name, the outcome or kind label if any)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, s.labels.get("outcome") or s.labels.get("kind") or "")
            out[key] = out.get(key, 0) + s.value
    return out


# ---------------------------------------------------------------- docs and dashboard


def metric_names(registry: CollectorRegistry) -> set[str]:
    return {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_the_docs_list_every_metric_and_label(registry: CollectorRegistry, clock: FakeClock) -> None:
    exercise_everything(registry, clock)
    doc = (ROOT / "docs/plugins/metrics.md").read_text()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):  # prometheus-client's creation time of each counter/histogram
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in doc, name
        labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}`"))
        for label in labels:
            assert f"`{label}`" in row, (name, label)


def test_the_docs_list_every_option_with_its_default() -> None:
    doc = (ROOT / "docs/plugins/metrics.md").read_text()
    defaults = dataclasses.asdict(MetricsOptions())
    for name, default in defaults.items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        shown = tomllib.loads("v = " + row.split("|")[2].strip().strip("`"))["v"]
        assert shown == (list(default) if isinstance(default, tuple) else default), name


def test_the_grafana_dashboard_queries_only_metrics_that_exist(registry: CollectorRegistry, clock: FakeClock) -> None:
    exercise_everything(registry, clock)
    names = {s for s, _, _ in samples(registry)}
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for t in iter_targets(dashboard)]
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(re.findall(r"\bresilient_[a-z_]+", expr))
        assert used, expr
        assert used <= names, (expr, used - names)


def iter_targets(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        if "expr" in node:
            yield node
        for child in node.values():
            yield from iter_targets(child)
    elif isinstance(node, list):
        for child in node:
            yield from iter_targets(child)
