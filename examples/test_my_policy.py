"""A user's own policy, tested with resilient's toolkit (run by ``make test``; ``pytest examples/``).

The policy: after the provider answers 429, this process stops calling it for
``cooldown`` seconds and refuses at once (``QuotaExceeded`` with
``retry_after``) instead of piling more requests onto a rate-limited
account. It is a plugin like any other: an options section, a policy and
the two hooks. The tests use the toolkit a user gets with resilient:

* ``FakeClock`` (the ``fake_clock`` fixture): the cooldown passes without sleeping;
* ``ScriptedProvider`` (the ``scripted_provider`` fixture): 429s, successes, latency;
* ``resilient_pipeline``: a pipeline on the fake clock, isolated from the environment;
* ``resilient.testing.strategies``: random outcome sequences for a property;
* ``check_retry``: the ready-made retry property, pointed at this app's retry settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import Call, Handler, Order, Pipeline, Policy, QuotaExceeded, Runtime, Target, hookimpl, option
from resilient.testing import FakeClock, HTTPStatus, ProviderHTTPError, ScriptedProvider, check_retry
from resilient.testing import strategies as rs

# ---------------------------------------------------------------------------- the policy


@dataclass(frozen=True, kw_only=True)
class CooldownOptions:
    """``[tool.resilient.cooldown]``: how long to leave a provider alone after it says 429."""

    cooldown: float = option(10.0, min=0, doc="Seconds without calls after a 429.")


class CooldownPolicy(Policy):
    name = "cooldown"
    order = Order.QUOTA - 10  # outside retry: a refused call is not retried into the cooldown

    def __init__(self, options: CooldownOptions, runtime: Runtime) -> None:
        self.cooldown = options.cooldown
        self.clock = runtime.clock
        self.until: dict[str, float] = {}

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def guarded(call: Call) -> Any:
            now = self.clock.monotonic()
            until = self.until.get(call.provider, 0.0)
            if now < until:
                raise QuotaExceeded("provider cooling down after a 429", retry_after=until - now)
            try:
                return nxt(call)
            except Exception as exc:
                if getattr(exc, "status_code", None) == 429:
                    self.until[call.provider] = self.clock.monotonic() + self.cooldown
                raise

        return guarded


class CooldownPlugin:
    name = "cooldown"

    @hookimpl
    def resilient_options(self) -> Mapping[str, type[Any]]:
        return {"cooldown": CooldownOptions}

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [CooldownPolicy(runtime.settings.options(CooldownOptions), runtime)]


# The app's configuration: its own section, and retry kept off the 429 path for these tests.
CONFIG = {"disable": ["quota", "breaker", "retry"], "cooldown": {"cooldown": 10}}


# ---------------------------------------------------------------------------- example tests


def test_a_429_starts_the_cooldown_and_it_ends(
    resilient_pipeline: Callable[..., Pipeline],
    scripted_provider: Callable[..., ScriptedProvider],
    fake_clock: FakeClock,
) -> None:
    pipeline = resilient_pipeline(plugins=[CooldownPlugin()], config=CONFIG)
    provider = scripted_provider([HTTPStatus(429)], default="ok")
    call = pipeline.guard(provider="anthropic")(provider)
    with pytest.raises(ProviderHTTPError):
        call()
    fake_clock.advance(4)
    with pytest.raises(QuotaExceeded) as refused:
        call()
    assert refused.value.retry_after == pytest.approx(6)
    assert provider.calls == 1  # the refusal never reached the provider
    fake_clock.advance(6)
    assert call() == "ok"


# ---------------------------------------------------------------------------- a property


# Any outcome the toolkit draws, with 429s made common: they are what this policy is about.
OUTCOMES = st.one_of(rs.outcomes(), st.just(HTTPStatus(429)), st.just(HTTPStatus(429, {"retry-after": "3"})))


@settings(max_examples=100, deadline=None)
@given(script=st.lists(OUTCOMES, max_size=30), gaps=st.lists(st.floats(0, 15), min_size=30, max_size=30))
def test_no_call_reaches_the_provider_during_a_cooldown(script: list[object], gaps: list[float]) -> None:
    clock = FakeClock()
    pipeline = Pipeline(plugins=[CooldownPlugin()], config=CONFIG, env={}, clock=clock)
    provider = ScriptedProvider(script, default="ok", clock=clock)
    call = pipeline.guard(provider="anthropic")(provider)
    reached: list[tuple[float, bool]] = []  # (when the call started, whether it answered 429)
    refusals: list[float | None] = []
    for gap in gaps[: len(script)]:
        clock.advance(gap)
        started, before = clock.monotonic(), provider.calls
        try:
            call()
        except QuotaExceeded as exc:
            refusals.append(exc.retry_after)
        except Exception as exc:
            reached.append((started, getattr(exc, "status_code", None) == 429))
        else:
            reached.append((started, False))
        assert provider.calls - before <= 1
    assert all(r is not None and 0 < r <= 10 + 1e-9 for r in refusals)
    # A 429 answered at `t` (after any latency) leaves the provider alone until `t + 10`.
    last_429_end: float | None = None
    for started, was_429 in reached:
        if last_429_end is not None:
            assert started >= last_429_end + 10 - 1e-9
        if was_429:
            last_429_end = started  # latency only moves the end later; start is a lower bound
    pipeline.close()


# ---------------------------------------------------------------------------- a ready-made check


def test_the_apps_retry_settings_hold_their_promises() -> None:
    check_retry({"retry": {"max_attempts": 4, "base_delay": 0.5, "max_delay": 8, "deadline": 20}}, max_examples=50)
