"""The ready-made property checks: each passes on a sound setup and fails, with a counterexample, on a broken one."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import (
    Call,
    Handler,
    Order,
    Pipeline,
    Policy,
    QuotaExceeded,
    Runtime,
    Target,
    hookimpl,
)
from resilient.masking import MaskingFilter, get_masker
from resilient.testing import FakeClock, check_breaker, check_masking, check_quota, check_retry
from resilient.testing import strategies as rs
from resilient_breaker._options import BreakerOptions
from resilient_quota._options import QuotaOptions, parse_limits
from resilient_retry._options import RetryOptions

# ---------------------------------------------------------------- the configuration strategies build pipelines


@settings(max_examples=30, deadline=None)
@given(config=st.one_of(rs.quota_configs(), rs.breaker_configs(), rs.retry_configs()))
def test_configuration_strategies_are_accepted_by_pipeline(config: dict[str, Any]) -> None:
    Pipeline(config=config, env={}, clock=FakeClock()).close()


@given(text=rs.limit_strings())
def test_limit_strings_parse(text: str) -> None:
    assert 1 <= len(parse_limits(text)) <= 3


@given(script=rs.outcome_sequences(chunks=True))
def test_outcome_sequences_play(script: list[object]) -> None:
    from resilient.testing import ScriptedProvider

    provider = ScriptedProvider(script, clock=FakeClock())
    for _ in script:
        try:
            provider()
        except Exception:
            pass
    assert provider.calls == len(script)


@given(request=rs.cache_requests())
def test_cache_requests_are_sdk_shaped(request: dict[str, Any]) -> None:
    kwargs = request["kwargs"]
    assert kwargs["messages"]
    assert kwargs["model"]
    assert request["operation"] in ("messages.create", "chat.completions.create")


# ---------------------------------------------------------------- quota

SOUND_QUOTA = {"quota": {"requests": "3/minute;5/hour", "tenants": {"small": {"requests": "1/minute"}}}}


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_check_quota_passes_on_the_first_party_quota(strategy: str) -> None:
    config = {"quota": {**SOUND_QUOTA["quota"], "strategy": strategy, "output_tokens": "5000/minute"}}
    check_quota(config, max_examples=25)


class LeakyQuota(Policy):
    """A quota that admits one call too many per aligned window: what check_quota must catch."""

    name = "leaky-quota"
    order = Order.QUOTA

    def __init__(self, options: QuotaOptions, clock: Any) -> None:
        (self.item,) = parse_limits(options.requests)
        self.clock = clock
        self.counts: dict[int, int] = {}

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        period = self.item.get_expiry()

        def admit(call: Call) -> Any:
            window = int(self.clock.time() // period)
            self.counts[window] = self.counts.get(window, 0) + 1
            if self.counts[window] > self.item.amount + 1:
                raise QuotaExceeded("leaky", limit=f"requests {self.item}")
            return nxt(call)

        return admit


class LeakyQuotaPlugin:
    @hookimpl
    def resilient_options(self) -> Mapping[str, type[Any]]:
        return {"quota": QuotaOptions}

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [LeakyQuota(runtime.settings.options(QuotaOptions), runtime.clock)]


def test_check_quota_fails_on_a_quota_that_admits_too_much() -> None:
    config = {"disable": ["quota"], "quota": {"requests": "2/minute", "strategy": "sliding-window-counter"}}
    with pytest.raises(AssertionError, match=r"quota admitted 3 calls .* 2 per 1 minute"):
        check_quota(config, plugins=[LeakyQuotaPlugin()], max_examples=50)


# ---------------------------------------------------------------- breaker


def test_check_breaker_passes_on_the_first_party_breaker() -> None:
    check_breaker(
        {"breaker": {"window_size": 4, "minimum_calls": 2, "failure_rate": 0.5, "wait_open": 5, "half_open_calls": 2}},
        max_examples=25,
    )


class NeverOpens(Policy):
    name = "never-opens"
    order = Order.BREAKER


class NeverOpensPlugin:
    @hookimpl
    def resilient_options(self) -> Mapping[str, type[Any]]:
        return {"breaker": BreakerOptions}

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [NeverOpens()]


def test_check_breaker_fails_on_a_breaker_that_never_opens() -> None:
    config = {"disable": ["breaker"], "breaker": {"window_size": 2, "minimum_calls": 1}}
    with pytest.raises(AssertionError, match="reference model refuses"):
        check_breaker(config, plugins=[NeverOpensPlugin()], max_examples=50)


def test_check_breaker_refuses_time_windows() -> None:
    with pytest.raises(ValueError, match="count windows"):
        check_breaker({"breaker": {"window_type": "time"}})


# ---------------------------------------------------------------- retry


@pytest.mark.parametrize(
    "retry",
    [
        {"max_attempts": 4, "base_delay": 0.5, "max_delay": 8, "budget_ratio": None},
        {"max_attempts": 6, "base_delay": 1, "max_delay": 30, "deadline": 10, "max_retry_after": 60},
        {"max_attempts": 3, "respect_retry_after": False},
    ],
)
def test_check_retry_passes_on_the_first_party_retry(retry: dict[str, Any]) -> None:
    check_retry({"retry": retry}, max_examples=60)


class RetriesEverything(Policy):
    """Retries whatever failed, 400s included, with a fixed wait: what check_retry must catch."""

    name = "retries-everything"
    order = Order.RETRY

    def __init__(self, options: RetryOptions, clock: Any) -> None:
        self.options, self.clock = options, clock

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def retrying(call: Call) -> Any:
            for _ in range(self.options.max_attempts - 1):
                try:
                    return nxt(call)
                except Exception:
                    self.clock.sleep(self.options.base_delay)
            return nxt(call)

        return retrying


class RetriesEverythingPlugin:
    @hookimpl
    def resilient_options(self) -> Mapping[str, type[Any]]:
        return {"retry": RetryOptions}

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [RetriesEverything(runtime.settings.options(RetryOptions), runtime.clock)]


def test_check_retry_fails_on_a_retry_of_non_retryable_errors() -> None:
    with pytest.raises(AssertionError, match="exactly one attempt"):
        config = {"disable": ["retry"], "retry": {"max_attempts": 3, "respect_retry_after": False}}
        check_retry(config, plugins=[RetriesEverythingPlugin()])


def test_check_retry_fails_on_waits_past_the_deadline() -> None:
    config = {"disable": ["retry"], "retry": {"max_attempts": 5, "base_delay": 4, "max_delay": 4, "deadline": 5}}
    with pytest.raises(AssertionError, match=r"deadline|above its bound|retry-after"):
        check_retry(config, plugins=[RetriesEverythingPlugin()])


# ---------------------------------------------------------------- masking


@pytest.fixture
def app_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger = logging.getLogger("resilient-tests.app")
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    yield logger, out
    logger.removeHandler(handler)
    logger.propagate = True


def test_check_masking_passes_with_the_masking_filter(app_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = app_logger
    logger.handlers[0].addFilter(MaskingFilter(get_masker().mask))
    check_masking(logger, max_examples=150)
    assert out.getvalue() == ""  # captured, never written


def test_check_masking_fails_without_the_masking_filter(app_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, _ = app_logger
    with pytest.raises(AssertionError, match=r"secret .* reached handler"):
        check_masking(logger, max_examples=50)


def test_check_masking_fails_when_nothing_is_written(app_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, _ = app_logger
    logger.handlers[0].setLevel(logging.CRITICAL)
    with pytest.raises(AssertionError, match="wrote nothing"):
        check_masking(logger, max_examples=5)


# ---------------------------------------------------------------- fixtures


def test_memory_store_fixture_isolates_tests(memory_store: Any, fake_clock: FakeClock) -> None:
    assert memory_store.url == "memory://"
    config = memory_store.config(quota={"requests": "1/minute"}, disable=["retry", "breaker"])
    assert config["key_prefix"] == memory_store.key_prefix
    pipeline = Pipeline(config=config, env={}, clock=fake_clock)
    call = pipeline.guard(lambda: "ok")
    assert call() == "ok"
    with pytest.raises(QuotaExceeded):
        call()
    pipeline.close()
