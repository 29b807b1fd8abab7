"""The fallback chain: steps tried in order, each at most once, the first success returned, 4xx never hidden."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_breaker
import resilient_fallback
import resilient_timeout
from resilient import (
    Call,
    CircuitOpen,
    DeadlineExceeded,
    Pipeline,
    PluginError,
    QuotaExceeded,
    capture_calls,
)
from resilient.testing import FakeClock, ProviderHTTPError
from resilient_fallback import FallbackPolicy, register

from ._policies import Collect
from ._virtual_time import run


def build(
    clock: FakeClock,
    observer: Collect | None = None,
    *,
    breaker: dict[str, Any] | None = None,
    timeout: dict[str, Any] | None = None,
    **fallback: Any,
) -> Pipeline:
    plugins: list[object] = [resilient_fallback]
    config: dict[str, Any] = {"fallback": fallback}
    if breaker is not None:
        plugins.append(resilient_breaker)
        config["breaker"] = breaker
    if timeout is not None:
        plugins.append(resilient_timeout)
        config["timeout"] = timeout
    if observer is not None:
        plugins.append(observer)
    return Pipeline(plugins=plugins, discover=False, env={}, config=config, clock=clock)


def named(observer: Collect, name: str) -> list[Any]:
    return [e for e in observer.events if e.name == name]


class Models:
    """A provider whose answer depends on the ``model`` argument: a value, or an exception to raise."""

    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes
        self.models: list[str] = []

    def _play(self, model: str) -> Any:
        self.models.append(model)
        outcome = self.outcomes.get(model, f"from {model}")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def __call__(self, *, model: str, prompt: str = "") -> Any:
        return self._play(model)

    async def acall(self, *, model: str, prompt: str = "") -> Any:
        await asyncio.sleep(0)
        return self._play(model)

    def stream(self, *, model: str) -> Iterator[str]:
        yield from self._play(model).split()

    async def astream(self, *, model: str) -> AsyncIterator[str]:
        for chunk in self._play(model).split():
            await asyncio.sleep(0)
            yield chunk


def canned(call: Call, error: BaseException) -> str:
    return f"canned after {type(error).__name__}"


register("canned", canned)


# ---------------------------------------------------------------- configuration


def test_no_steps_no_policy(clock: FakeClock) -> None:
    assert build(clock).policies == ()
    policies = build(clock, steps=[{"model": "small"}]).policies
    assert [type(p) for p in policies] == [FallbackPolicy]


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        ({"steps": ["stale_cache"]}, "must be"),
        ({"steps": [{"stale_cache": "yes"}]}, "max_stale"),
        ({"steps": [{"call": "nobody"}]}, r"fallback.steps\[0\].*no fallback registered as 'nobody'.*canned"),
        ({"steps": [{"call": "no_such_module_xyz:fn"}]}, "cannot be imported"),
        ({"steps": [{"model": "m", "call": "canned"}]}, "must be"),
        ({"steps": [{"model": "m"}], "on": ["timeout", "sunspots"]}, "fallback.on = .*each must be one of"),
        ({"steps": [{"model": "m"}], "on_status": [503, 400]}, "never hides the caller's own 4xx"),
        ({"steps": [{"model": "m"}], "on_exceptions": ["builtins:len"]}, "must name an exception class"),
        ({"steps": [{"model": "m"}], "models": {"x": {"steps": [{"call": "nobody"}]}}}, r"fallback.models.x.steps"),
    ],
)
def test_configuration_errors_name_the_key(clock: FakeClock, fallback: dict[str, Any], message: str) -> None:
    with pytest.raises((PluginError, ValueError), match=message):
        build(clock, **fallback)


def test_a_model_step_needs_the_model_as_an_argument(clock: FakeClock) -> None:
    pipeline = build(clock, steps=[{"model": "small"}])
    with pytest.raises(PluginError, match="needs the model passed as the call's `model` argument"):
        pipeline.guard(provider="p", model="big")(Models({}))


# ---------------------------------------------------------------- sync


def test_another_model_answers_when_the_primary_is_unavailable(clock: FakeClock) -> None:
    observer = Collect()
    provider = Models({"big": ProviderHTTPError(529)})
    guarded = build(clock, observer, steps=[{"model": "small"}]).guard(provider="anthropic")(provider)
    with capture_calls() as calls:
        assert guarded(model="big", prompt="hi") == "from small"
    assert provider.models == ["big", "small"]
    assert calls[0].metadata["fallback_step"] == "model:small"
    assert calls[0].kwargs == {"model": "small", "prompt": "hi"}
    [event] = named(observer, "fallback.used")
    assert (event.step, event.index, event.reason, event.from_model, event.to_model) == (
        "model:small",
        0,
        "overloaded",
        "big",
        "small",
    )


def test_the_primarys_success_has_no_fallback_step(clock: FakeClock) -> None:
    guarded = build(clock, steps=[{"model": "small"}]).guard(provider="p")(Models({}))
    with capture_calls() as calls:
        assert guarded(model="big") == "from big"
    assert "fallback_step" not in calls[0].metadata


def test_a_callable_step_gets_the_call_and_the_error(clock: FakeClock) -> None:
    provider = Models({"big": ProviderHTTPError(503), "small": ConnectionError("down")})
    guarded = build(clock, steps=[{"model": "small"}, {"call": "canned"}]).guard(provider="p")(provider)
    with capture_calls() as calls:
        assert guarded(model="big") == "canned after ConnectionError"
    assert calls[0].metadata["fallback_step"] == "call:canned"


def test_a_callable_given_as_module_function(clock: FakeClock) -> None:
    provider = Models({"big": ProviderHTTPError(503)})
    guarded = build(clock, steps=[{"call": "tests.test_fallback:canned"}]).guard(provider="p")(provider)
    assert guarded(model="big") == "canned after ProviderHTTPError"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_the_callers_own_4xx_is_never_hidden(clock: FakeClock, status: int) -> None:
    observer = Collect()
    provider = Models({"big": ProviderHTTPError(status)})
    guarded = build(clock, observer, steps=[{"model": "small"}, {"call": "canned"}]).guard(provider="p")(provider)
    with pytest.raises(ProviderHTTPError) as info:
        guarded(model="big")
    assert info.value.status_code == status
    assert provider.models == ["big"]
    assert observer.events == []


def test_a_steps_own_4xx_is_raised_not_skipped(clock: FakeClock) -> None:
    provider = Models({"big": ProviderHTTPError(503), "small": ProviderHTTPError(400)})
    guarded = build(clock, steps=[{"model": "small"}, {"call": "canned"}]).guard(provider="p")(provider)
    with capture_calls() as calls, pytest.raises(ProviderHTTPError) as info:
        guarded(model="big")
    assert info.value.status_code == 400
    assert "fallback_step" not in calls[0].metadata


def test_when_every_step_fails_the_primarys_error_is_raised(clock: FakeClock) -> None:
    observer = Collect()
    primary = ProviderHTTPError(503)
    provider = Models({"big": primary, "small": ProviderHTTPError(500), "tiny": TimeoutError()})
    guarded = build(clock, observer, steps=[{"model": "small"}, {"model": "tiny"}]).guard(provider="p")(provider)
    with capture_calls() as calls, pytest.raises(ProviderHTTPError) as info:
        guarded(model="big")
    assert info.value is primary
    assert provider.models == ["big", "small", "tiny"]
    assert "fallback_step" not in calls[0].metadata
    [event] = named(observer, "fallback.exhausted")
    assert (event.tried, event.reason) == (("model:small", "model:tiny"), "server_error")


def test_triggers_are_configurable(clock: FakeClock) -> None:
    provider = Models({"big": ProviderHTTPError(503)})
    only_timeouts = build(clock, steps=[{"call": "canned"}], on=["timeout"]).guard(provider="p")(provider)
    with pytest.raises(ProviderHTTPError):
        only_timeouts(model="big")
    by_status = build(clock, steps=[{"call": "canned"}], on=[], on_status=[503]).guard(provider="p")(provider)
    assert by_status(model="big") == "canned after ProviderHTTPError"

    class Custom(Exception):
        pass

    provider = Models({"big": Custom()})
    by_class = build(clock, steps=[{"call": "canned"}], on_exceptions=["builtins:LookupError"]).guard(provider="p")(
        Models({"big": KeyError("k")})
    )
    assert by_class(model="big") == "canned after KeyError"
    with pytest.raises(Custom):
        build(clock, steps=[{"call": "canned"}]).guard(provider="p")(provider)(model="big")


def test_an_open_circuit_falls_back_to_another_model(clock: FakeClock) -> None:
    provider = Models({"big": ProviderHTTPError(500)})
    breaker = {"minimum_calls": 2, "window_size": 2, "failure_rate": 0.5, "wait_open": 30}
    observer = Collect()
    guarded = build(clock, observer, breaker=breaker, steps=[{"model": "small"}]).guard(provider="p")(provider)
    for _ in range(3):
        assert guarded(model="big") == "from small"
    # The third call was refused by big's open breaker before reaching the provider.
    assert provider.models == ["big", "small", "big", "small", "small"]
    assert [e.reason for e in named(observer, "fallback.used")] == ["server_error", "server_error", "circuit_open"]


def test_quota_exceeded_is_a_trigger(clock: FakeClock) -> None:
    def refused(*, model: str) -> str:
        raise QuotaExceeded(limit="tokens", retry_after=30)

    guarded = build(clock, steps=[{"call": "canned"}]).guard(provider="p")(refused)
    assert guarded(model="m") == "canned after QuotaExceeded"


def test_the_deadline_is_shared_by_the_steps(clock: FakeClock) -> None:
    # The first attempt spends the whole deadline; the model step starts past it and is refused
    # (DeadlineExceeded, a trigger), and the canned answer is the one left.
    provider = Models({})

    async def slow(*, model: str) -> str:
        await asyncio.sleep(10 if model == "big" else 0.1)
        return await provider.acall(model=model)

    pipeline = build(clock, timeout={"deadline": 5}, steps=[{"model": "small"}, {"call": "canned"}])
    guarded = pipeline.guard(provider="p")(slow)
    assert run(clock, guarded(model="big")) == "canned after DeadlineExceeded"
    assert provider.models == []
    assert clock.monotonic() == pytest.approx(5.0)


# ---------------------------------------------------------------- async and streams


def test_async_model_step_and_async_callable(clock: FakeClock) -> None:
    async def acanned(call: Call, error: BaseException) -> str:
        await asyncio.sleep(0)
        return "async canned"

    provider = Models({"big": ProviderHTTPError(503), "small": ConnectionError()})
    register("acanned", acanned)
    pipeline = build(clock, steps=[{"model": "small"}, {"call": "acanned"}])
    guarded = pipeline.guard(provider="p")(provider.acall)

    async def scenario() -> tuple[Any, list[Call]]:
        with capture_calls() as calls:
            return await guarded(model="big"), calls

    answer, calls = run(clock, scenario())
    assert answer == "async canned"
    assert provider.models == ["big", "small"]
    assert calls[0].metadata["fallback_step"] == "call:acanned"


def test_a_stream_falls_back_before_its_first_chunk(clock: FakeClock) -> None:
    provider = Models({"big": ProviderHTTPError(503), "small": "a b c"})
    guarded = build(clock, steps=[{"model": "small"}]).guard(provider="p")(provider.stream)
    assert list(guarded(model="big")) == ["a", "b", "c"]


def test_an_async_stream_falls_back_to_a_canned_stream(clock: FakeClock) -> None:
    register("canned_stream", lambda call, error: iter(["sorry", "later"]))
    provider = Models({"big": ProviderHTTPError(503)})
    guarded = build(clock, steps=[{"call": "canned_stream"}]).guard(provider="p")(provider.astream)

    async def consume() -> list[str]:
        return [chunk async for chunk in guarded(model="big")]

    assert run(clock, consume()) == ["sorry", "later"]


def test_a_stream_failing_after_its_first_chunk_is_not_replayed(clock: FakeClock) -> None:
    def stream(*, model: str) -> Iterator[str]:
        yield "partial"
        raise ProviderHTTPError(503)

    guarded = build(clock, steps=[{"call": "canned"}]).guard(provider="p")(stream)
    got = []
    with pytest.raises(ProviderHTTPError):
        for chunk in guarded(model="m"):
            got.append(chunk)
    assert got == ["partial"]


# ---------------------------------------------------------------- the chain, as a property

TRIGGER = "trigger"  # a provider failure (503): moves on
CLIENT = "client"  # the caller's 400: raised at once
OK = "ok"


@settings(max_examples=150, deadline=None)
@given(
    primary=st.sampled_from([TRIGGER, CLIENT, OK]),
    steps=st.lists(st.sampled_from([TRIGGER, CLIENT, OK]), min_size=1, max_size=6),
    use_async=st.booleans(),
)
def test_the_chain_is_tried_in_order_each_step_at_most_once(primary: str, steps: list[str], use_async: bool) -> None:
    clock = FakeClock()
    outcomes = {"m0": primary, **{f"m{i + 1}": s for i, s in enumerate(steps)}}
    tried: list[str] = []

    def play(model: str) -> str:
        tried.append(model)
        outcome = outcomes[model]
        if outcome == TRIGGER:
            raise ProviderHTTPError(503)
        if outcome == CLIENT:
            raise ProviderHTTPError(400)
        return f"answer {model}"

    def sync_fn(*, model: str) -> str:
        return play(model)

    async def async_fn(*, model: str) -> str:
        await asyncio.sleep(0)
        return play(model)

    pipeline = build(clock, steps=[{"model": f"m{i + 1}"} for i in range(len(steps))])
    guarded = pipeline.guard(provider="p")(async_fn if use_async else sync_fn)
    with capture_calls() as calls:
        try:
            result: Any = run(clock, guarded(model="m0")) if use_async else guarded(model="m0")
        except ProviderHTTPError as exc:
            result = exc

    sequence = ["m0", *(f"m{i + 1}" for i in range(len(steps)))]
    # Expected: walk the chain until a success or a client error; triggers move on.
    expected_tried: list[str] = []
    expected: Any = None
    for model in sequence:
        expected_tried.append(model)
        if outcomes[model] == OK:
            expected = f"answer {model}"
            break
        if outcomes[model] == CLIENT:
            expected = 400
            break
    else:
        expected = "primary"
    assert tried == expected_tried  # in order, each at most once
    assert len(set(tried)) == len(tried)
    if isinstance(expected, str) and expected.startswith("answer"):
        assert result == expected
        step = calls[0].metadata.get("fallback_step")
        assert step == (None if expected == "answer m0" else f"model:{tried[-1]}")
    elif expected == 400:
        assert isinstance(result, ProviderHTTPError)
        assert result.status_code == 400
    else:
        assert isinstance(result, ProviderHTTPError)
        assert result.status_code == 503
        assert "fallback_step" not in calls[0].metadata


def test_circuit_open_from_the_errors_module_is_recognised(clock: FakeClock) -> None:
    def refused(*, model: str) -> str:
        raise CircuitOpen(retry_after=5)

    guarded = build(clock, steps=[{"call": "canned"}], on=["circuit_open"]).guard(provider="p")(refused)
    assert guarded(model="m") == "canned after CircuitOpen"
    deadline = build(clock, steps=[{"call": "canned"}], on=["circuit_open"]).guard(provider="p")(
        lambda *, model: (_ for _ in ()).throw(DeadlineExceeded())
    )
    with pytest.raises(DeadlineExceeded):
        deadline(model="m")
