"""The metrics policy skips building ``call.usage`` and ``cost_usd`` only for a call nobody else holds.

When nothing but the pipeline's wrapper and the policy's own frames refer
to the call (``sys.getrefcount``), its usage and cost can never be read,
and an anthropic-shaped answer is counted without them. Everyone who can
read them must still see them: a policy outside metrics, ``capture_calls``,
a caller of ``Pipeline.compile`` with its own ``Call``, an inner policy
that kept the call. And the exposition must be what the public API gives.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import resilient_metrics
import resilient_metrics._policy as policy_module
from resilient import AsyncHandler, Call, Handler, Order, Pipeline, Policy, Target, Usage, capture_calls
from resilient.context import request_context
from resilient.testing import FakeClock

from ._exposition import exposed
from ._policies import Contribute

SONNET = "claude-sonnet-4-5-20250929"


def reply(n: int) -> Any:
    return types.SimpleNamespace(
        usage=types.SimpleNamespace(
            input_tokens=n, output_tokens=n // 3, cache_read_input_tokens=2 * n, cache_creation_input_tokens=n % 7
        )
    )


def expected_usage(n: int) -> Usage:
    return Usage(n, n // 3, 2 * n, n % 7)


class Keeps(Policy):
    """Keeps every call it sees, from where it sits (outside metrics, or inside)."""

    name = "keeps"

    def __init__(self, order: int) -> None:
        self.order = order
        self.calls: list[Call] = []
        self.usage_after: list[Usage | None] = []

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            self.calls.append(call)
            result = nxt(call)
            self.usage_after.append(call.usage)  # outside metrics: already set
            return result

        return handler

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        async def handler(call: Call) -> Any:
            self.calls.append(call)
            result = await nxt(call)
            self.usage_after.append(call.usage)
            return result

        return handler


def build(registry: CollectorRegistry, *extra: object) -> Pipeline:
    with resilient_metrics.use_registry(registry):
        return Pipeline(discover=False, plugins=[resilient_metrics, *extra], env={}, config={}, clock=FakeClock())


def test_this_interpreter_has_a_count_to_compare_with() -> None:
    if sys.implementation.name == "cpython" and (3, 10) <= sys.version_info[:2] < (3, 14):
        assert policy_module._UNSEEN["sync"] >= 2
        assert policy_module._UNSEEN["async"] >= 2


@pytest.mark.parametrize("order", [Order.METRICS - 10, Order.METRICS + 10], ids=["outside", "inside"])
def test_a_policy_holding_the_call_sees_its_usage_and_cost(order: int) -> None:
    keeps = Keeps(order)
    pipeline = build(CollectorRegistry(), Contribute(keeps))
    ask = pipeline.guard(provider="anthropic", operation="messages.create", model=SONNET)(lambda: reply(10))
    ask()
    ask()
    assert [call.usage for call in keeps.calls] == [expected_usage(10)] * 2
    assert all(call.metadata["cost_usd"] is not None for call in keeps.calls)
    if order < Order.METRICS:
        assert keeps.usage_after == [expected_usage(10)] * 2


def test_an_async_policy_holding_the_call_sees_its_usage() -> None:
    keeps = Keeps(Order.METRICS - 10)
    pipeline = build(CollectorRegistry(), Contribute(keeps))

    async def create(**kwargs: Any) -> Any:
        return reply(7)

    ask = pipeline.guard(provider="anthropic", operation="messages.create")(create)
    asyncio.run(ask(model=SONNET))
    assert keeps.usage_after == [expected_usage(7)]
    assert keeps.calls[0].metadata["cost_usd"] is not None


def test_capture_calls_and_a_compiled_handlers_own_call_see_usage_and_cost() -> None:
    pipeline = build(CollectorRegistry())
    ask = pipeline.guard(provider="anthropic", operation="messages.create", model=SONNET)(lambda: reply(5))
    with capture_calls() as calls:
        ask()
    assert calls[0].usage == expected_usage(5)
    assert calls[0].metadata["cost_usd"] is not None

    target = Target("anthropic", "messages.create", "sync", model=SONNET)
    handler = pipeline.compile(target, lambda call: reply(4))
    call = Call(target, (), {})
    handler(call)
    assert call.usage == expected_usage(4)
    assert call.metadata["cost_usd"] is not None

    atarget = Target("anthropic", "messages.create", "async", model=SONNET)

    async def terminal(call: Call) -> Any:
        return reply(3)

    ahandler = pipeline.compile(atarget, terminal)
    acall = Call(atarget, (), {})
    asyncio.run(ahandler(acall))
    assert acall.usage == expected_usage(3)


def test_the_request_totals_are_kept_for_an_unheld_call() -> None:
    pipeline = build(CollectorRegistry())
    ask = pipeline.guard(provider="anthropic", operation="messages.create", model=SONNET)(lambda: reply(9))
    with request_context(request_id="r1") as ctx:
        ask()
    assert ctx.totals["tokens.input"] == 9
    assert ctx.totals["tokens.cache_read"] == 18
    assert ctx.totals["cost.usd"] > 0


# Token fields as an anthropic SDK object may carry them, including what usage_from reads as 0.
fields = st.one_of(st.integers(0, 50_000), st.integers(-2, 2), st.none(), st.sampled_from([True, 1.5, "3"]))
answers = st.tuples(fields, fields, fields, fields)


def sdk(values: tuple[Any, Any, Any, Any]) -> Any:
    names = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return types.SimpleNamespace(usage=types.SimpleNamespace(**dict(zip(names, values, strict=True))))


def play(registry: CollectorRegistry, script: list[tuple[tuple[Any, Any, Any, Any], str, bool]], kind: str) -> None:
    pipeline = build(registry)
    replies = iter([sdk(values) for values, _, _ in script])

    def create(**kwargs: Any) -> Any:
        return next(replies)

    async def acreate(**kwargs: Any) -> Any:
        return next(replies)

    ask: Callable[..., Any] = pipeline.guard(provider="anthropic", operation="messages.create")(
        create if kind == "sync" else acreate
    )
    for _, model, captured in script:
        if captured:
            with capture_calls():
                result = ask(model=model)
        else:
            result = ask(model=model)
        if kind == "async":
            asyncio.run(result)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(answers, st.sampled_from([SONNET, "gpt-4o", "mystery-model"]), st.booleans()), max_size=12),
    st.sampled_from(["sync", "async"]),
)
def test_unheld_calls_expose_exactly_what_the_public_api_would(
    script: list[tuple[tuple[Any, Any, Any, Any], str, bool]], kind: str
) -> None:
    fast = CollectorRegistry()
    play(fast, script, kind)
    slow = CollectorRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(policy_module, "shared_cells", lambda lock, children: None)  # the public-API path
        play(slow, script, kind)
    assert exposed(fast) == exposed(slow)


def test_the_unheld_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    read = policy_module.usage_of

    def counted(result: Any) -> Usage | None:
        built.append(result)
        return read(result)

    monkeypatch.setattr(policy_module, "usage_of", counted)
    registry = CollectorRegistry()
    pipeline = build(registry)
    ask = pipeline.guard(provider="anthropic", operation="messages.create", model=SONNET)(lambda: reply(2))
    ask()  # the first answer of a type may be read by usage_of (which learns the type)
    first = len(built)
    ask()
    ask()
    if policy_module._UNSEEN:
        assert len(built) == first <= 1
    samples = exposed(registry)
    labels = (("kind", "input"), ("model", SONNET), ("operation", "messages.create"), ("provider", "anthropic"))
    assert samples[("resilient_tokens_total", labels)] == 6
