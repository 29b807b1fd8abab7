"""Model routing: a function or rules pick the model before the call; every decision is an event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_fallback
import resilient_routing
from resilient import Call, Pipeline, PluginError, capture_calls, request_context
from resilient.testing import FakeClock, ProviderHTTPError
from resilient_routing import RoutingPolicy, register

from ._policies import Collect
from ._virtual_time import run


def build(observer: Collect | None = None, *, fallback: dict[str, Any] | None = None, **routing: Any) -> Pipeline:
    plugins: list[object] = [resilient_routing]
    config: dict[str, Any] = {"routing": routing}
    if fallback is not None:
        plugins.append(resilient_fallback)
        config["fallback"] = fallback
    if observer is not None:
        plugins.append(observer)
    return Pipeline(plugins=plugins, discover=False, env={}, config=config)


def decided(observer: Collect) -> list[Any]:
    return [e for e in observer.events if e.name == "routing.decided"]


class Provider:
    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.models: list[str] = []
        self.failing = failing

    def __call__(self, *, model: str, messages: list[dict[str, str]] | None = None) -> str:
        self.models.append(model)
        if model in self.failing:
            raise ProviderHTTPError(503)
        return model


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


LIGHT = {"max_input_tokens": 100, "model": "claude-haiku-4-5"}


def test_nothing_configured_no_policy() -> None:
    assert build().policies == ()
    assert [type(p) for p in build(rules=[LIGHT]).policies] == [RoutingPolicy]


def test_light_requests_go_to_the_cheaper_model() -> None:
    observer = Collect()
    provider = Provider()
    guarded = build(observer, rules=[LIGHT]).guard(provider="anthropic")(provider)
    with capture_calls() as calls:
        assert guarded(model="claude-sonnet-4-5", messages=ask("hi")) == "claude-haiku-4-5"
        assert guarded(model="claude-sonnet-4-5", messages=ask("x" * 800)) == "claude-sonnet-4-5"
    assert calls[0].metadata["route"] == {"from": "claude-sonnet-4-5", "to": "claude-haiku-4-5", "rule": "rule:0"}
    assert calls[1].metadata["route"] == {"from": "claude-sonnet-4-5", "to": "claude-sonnet-4-5", "rule": "default"}
    first, second = decided(observer)
    assert (first.from_model, first.to_model, first.rule, first.input_tokens, first.model) == (
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "rule:0",
        2,  # "user" and "hi": 6 characters, 4 per token
        "claude-haiku-4-5",
    )
    assert (second.to_model, second.rule, second.input_tokens) == ("claude-sonnet-4-5", "default", 201)


def test_rules_on_operation_tenant_and_the_asked_model() -> None:
    rules = [
        {"operation": "summarize", "model": "small"},
        {"tenant": "free", "model": "tiny"},
        {"from_model": "big", "min_input_tokens": 10, "model": "medium"},
    ]
    provider = Provider()
    pipeline = build(rules=rules)
    summarize = pipeline.guard(provider="p", operation="summarize")(provider)
    chat = pipeline.guard(provider="p", operation="chat")(provider)
    assert summarize(model="big") == "small"
    with request_context(tenant="free"):
        assert chat(model="big") == "tiny"
    assert chat(model="big", messages=ask("x" * 100)) == "medium"
    assert chat(model="big", messages=ask("x")) == "big"
    assert chat(model="other", messages=ask("x" * 100)) == "other"


def test_a_routing_function_comes_first_and_none_leaves_it_to_the_rules() -> None:
    def by_user(call: Call) -> str | None:
        return "vip-model" if call.kwargs.get("messages") == ask("vip") else None

    register("by_user", by_user)
    observer = Collect()
    guarded = build(observer, function="by_user", rules=[LIGHT]).guard(provider="p")(Provider())
    assert guarded(model="big", messages=ask("vip")) == "vip-model"
    assert guarded(model="big", messages=ask("hello")) == "claude-haiku-4-5"
    assert [e.rule for e in decided(observer)] == ["function", "rule:0"]


def route_everything_to_small(call: Call) -> str:
    return "small"


def test_a_function_named_module_function() -> None:
    guarded = build(function="tests.test_routing:route_everything_to_small").guard(provider="p")(Provider())
    assert guarded(model="big") == "small"


def test_a_failing_router_keeps_the_model(caplog: pytest.LogCaptureFixture) -> None:
    def broken(call: Call) -> str:
        raise RuntimeError("bug")

    register("broken", broken)
    guarded = build(function="broken").guard(provider="p")(Provider())
    with caplog.at_level(logging.ERROR, logger="resilient.routing"):
        assert guarded(model="big") == "big"
    assert "routing function" in caplog.text


def test_a_guard_with_a_fixed_model_is_not_routed() -> None:
    guarded = build(rules=[{"model": "small"}]).guard(provider="p", model="big")(Provider())
    with capture_calls() as calls:
        assert guarded(model="big") == "big"
    assert calls == []  # routing stayed out of the chain: no policy, no Call


def test_a_fallback_model_is_not_routed_again() -> None:
    provider = Provider(failing=frozenset({"small"}))
    observer = Collect()
    pipeline = build(observer, rules=[{"model": "small"}], fallback={"steps": [{"model": "big"}]})
    guarded = pipeline.guard(provider="p")(provider)
    with capture_calls() as calls:
        assert guarded(model="big") == "big"
    assert provider.models == ["small", "big"]
    assert calls[0].metadata["fallback_step"] == "model:big"
    assert len(decided(observer)) == 1


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ({"rules": [{"max_tokens": 5, "model": "m"}]}, r"routing.rules\[0\].*unknown condition max_tokens"),
        ({"rules": [{"operation": "x"}]}, "needs model"),
        ({"rules": [{"max_input_tokens": -1, "model": "m"}]}, r"max_input_tokens = -1.*integer >= 0"),
        ({"function": "nobody"}, r"routing.function = 'nobody'.*no router registered"),
        ({"function": "no_such_module_xyz:f"}, "cannot be imported"),
        ({"models": {"x": {"rules": [{"colour": "red", "model": "m"}]}}}, r"routing.models.x.rules\[0\]"),
    ],
)
def test_configuration_errors_name_the_key(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        build(**routing)


def test_async_and_streams_are_routed(clock: FakeClock) -> None:
    async def acall(*, model: str) -> str:
        await asyncio.sleep(0)
        return model

    def stream(*, model: str) -> Iterator[str]:
        yield model

    async def astream(*, model: str) -> AsyncIterator[str]:
        yield model

    pipeline = build(rules=[{"model": "small"}])
    assert run(clock, pipeline.guard(provider="p")(acall)(model="big")) == "small"
    assert list(pipeline.guard(provider="p")(stream)(model="big")) == ["small"]

    async def consume() -> list[str]:
        return [c async for c in pipeline.guard(provider="p")(astream)(model="big")]

    assert run(clock, consume()) == ["small"]


RULE = st.fixed_dictionaries(
    {"model": st.sampled_from(["a", "b", "c"])},
    optional={
        "max_input_tokens": st.integers(0, 60),
        "min_input_tokens": st.integers(0, 60),
        "operation": st.sampled_from(["chat", "summarize"]),
        "from_model": st.sampled_from(["big", "huge"]),
    },
)


@settings(max_examples=100, deadline=None)
@given(
    rules=st.lists(RULE, max_size=5),
    requests=st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(["chat", "summarize"]), st.sampled_from(["big", "huge"])),
        min_size=1,
        max_size=10,
    ),
)
def test_the_first_matching_rule_decides_and_every_call_is_counted(
    rules: list[dict[str, Any]], requests: list[tuple[int, str, str]]
) -> None:
    observer = Collect()
    provider = Provider()
    pipeline = build(observer, rules=rules) if rules else None
    if pipeline is None:
        return
    guarded = {op: pipeline.guard(provider="p", operation=op)(provider) for op in ("chat", "summarize")}
    expected_models = []
    for chars, operation, model in requests:
        tokens = -(-chars // 4)
        expected = model
        for rule in rules:
            if (
                tokens <= rule.get("max_input_tokens", tokens)
                and tokens >= rule.get("min_input_tokens", tokens)
                and rule.get("operation", operation) == operation
                and rule.get("from_model", model) == model
            ):
                expected = rule["model"]
                break
        expected_models.append(expected)
        guarded[operation](model=model, messages=[{"content": "x" * chars}] if chars else None)
    assert provider.models == expected_models
    events = decided(observer)
    assert [e.to_model for e in events] == expected_models  # one decision per call: shares add up
