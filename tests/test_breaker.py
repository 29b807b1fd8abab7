"""The first-party circuit breaker: a state machine checked against a reference model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from resilient import CircuitOpen, Pipeline
from resilient.testing import FakeClock, HTTPStatus, ProviderHTTPError, ScriptedProvider
from resilient_breaker import BreakerPolicy

from ._policies import Collect

OTHERS = ["quota", "retry"]


def build(clock: FakeClock, observer: Collect | None = None, store: str = "memory://", **breaker: Any) -> Pipeline:
    return Pipeline(
        plugins=[observer] if observer else [],
        env={},
        config={"store": store, "disable": OTHERS, "breaker": breaker},
        clock=clock,
    )


def policy_of(pipeline: Pipeline) -> BreakerPolicy:
    return next(p for p in pipeline.policies if isinstance(p, BreakerPolicy))


def fail_n(guarded: Any, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ProviderHTTPError):
            guarded()


# ---------------------------------------------------------------- the life cycle


def test_opens_at_the_failure_rate_then_half_opens_and_closes(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer, minimum_calls=4, window_size=4, failure_rate=0.5, wait_open=30, half_open_calls=2)
    provider = ScriptedProvider(["ok", "ok", HTTPStatus(503), HTTPStatus(500)], default="ok", clock=clock)
    guarded = pipeline.guard(provider="anthropic", model="m")(provider)
    guarded(), guarded()
    fail_n(guarded, 2)  # 2 failures of 4 calls: 50 %, open
    with pytest.raises(CircuitOpen) as info:
        guarded()
    assert info.value.retry_after == pytest.approx(30)
    assert provider.calls == 4  # refused calls never reach the provider
    problem = info.value.to_problem()
    assert (problem["status"], problem["provider"], problem["model"]) == (503, "anthropic", "m")
    clock.advance(30)
    assert guarded() == "ok"  # trial 1
    assert guarded() == "ok"  # trial 2: closed
    assert guarded() == "ok"
    states = [e.state for e in observer.events if e.name == "breaker.state_changed"]  # type: ignore[attr-defined]
    assert states == ["open", "half_open", "closed"]
    assert [e.name for e in observer.events].count("breaker.rejected") == 1


def test_failed_trial_opens_again(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=2, window_size=2, wait_open=10, half_open_calls=1)
    provider = ScriptedProvider([HTTPStatus(500)] * 3, default="ok", clock=clock)
    guarded = pipeline.guard(provider)
    fail_n(guarded, 2)
    clock.advance(10)
    fail_n(guarded, 1)  # the trial fails
    with pytest.raises(CircuitOpen) as info:
        guarded()
    assert info.value.retry_after == pytest.approx(10)


def test_half_open_admits_only_its_trials(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=1, window_size=1, wait_open=5, half_open_calls=2)
    policy = policy_of(pipeline)
    fail_n(pipeline.guard(ScriptedProvider([HTTPStatus(500)], clock=clock)), 1)
    clock.advance(5)
    key = policy.key_for(pipeline.settings.options(type(policy._section.base)), "default", None, None)
    limits = policy._limits_of(policy._section.base)
    got = [policy._local.acquire(key, limits, clock.time())[0] & 3 for _ in range(4)]
    assert got == [2, 2, 0, 0]  # two trial permits, then refusals until they come back


def test_a_400_is_not_the_providers_fault_and_a_429_says_nothing(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=3, window_size=3)
    bad_request = ScriptedProvider([HTTPStatus(400)] * 10, clock=clock)
    fail_n(pipeline.guard(provider="a")(bad_request), 10)
    limited = ScriptedProvider([HTTPStatus(429)] * 10, clock=clock)
    fail_n(pipeline.guard(provider="b")(limited), 10)
    policy = policy_of(pipeline)
    assert policy.status("a")["state"] == "closed"
    assert policy.status("a")["failures"] == 0
    assert policy.status("b")["calls"] == 0  # 429s are not counted at all


def test_timeouts_and_connection_errors_count(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=2, window_size=2)
    provider = ScriptedProvider([TimeoutError(), ConnectionResetError()], clock=clock)
    guarded = pipeline.guard(provider)
    with pytest.raises(TimeoutError):
        guarded()
    with pytest.raises(ConnectionResetError):
        guarded()
    with pytest.raises(CircuitOpen):
        guarded()


def test_slow_calls_count_when_configured(clock: FakeClock) -> None:
    from resilient.testing import Latency

    pipeline = build(clock, minimum_calls=2, window_size=2, slow_call_duration=1.0, slow_call_rate=1.0)
    provider = ScriptedProvider([Latency(2.0, "slow"), Latency(3.0, "slow")], default="ok", clock=clock)
    guarded = pipeline.guard(provider)
    assert guarded() == "slow"
    assert guarded() == "slow"
    with pytest.raises(CircuitOpen):
        guarded()


def test_one_breaker_per_provider_and_model(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=1, window_size=1)
    fail_n(pipeline.guard(provider="p", model="a")(ScriptedProvider([HTTPStatus(500)], clock=clock)), 1)
    assert pipeline.guard(provider="p", model="b")(lambda: "ok")() == "ok"
    with pytest.raises(CircuitOpen):
        pipeline.guard(provider="p", model="a")(lambda: "ok")()


def test_one_target_keeps_one_breaker_per_model_argument(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=1, window_size=1)
    provider = ScriptedProvider([HTTPStatus(500)], default="ok", clock=clock)
    ask = pipeline.guard(provider="p")(provider)
    with pytest.raises(ProviderHTTPError):
        ask(model="a")
    assert ask(model="b") == "ok"
    assert ask() == "ok"  # no model: a breaker of its own
    assert ask(model=7) == "ok"  # not a model name: the same as none
    with pytest.raises(CircuitOpen):
        ask(model="a")
    key_of = policy_of(pipeline).status
    assert [key_of("p", m)["state"] for m in ("a", "b", None)] == ["open", "closed", "closed"]


def test_time_window_forgets_old_failures(clock: FakeClock) -> None:
    pipeline = build(clock, window_type="time", window_size=10, minimum_calls=3)
    provider = ScriptedProvider([HTTPStatus(500)] * 2, default="ok", clock=clock)
    guarded = pipeline.guard(provider)
    fail_n(guarded, 2)
    clock.advance(11)  # the two failures leave the window
    guarded()
    provider2 = ScriptedProvider([HTTPStatus(500)], default="ok", clock=clock)
    fail_n(pipeline.guard(provider2), 1)
    assert policy_of(pipeline).status("default")["state"] == "closed"


def test_manual_control(clock: FakeClock) -> None:
    pipeline = build(clock)
    policy = policy_of(pipeline)
    guarded = pipeline.guard(provider="anthropic")(lambda: "ok")
    policy.force_open("anthropic")
    with pytest.raises(CircuitOpen) as info:
        guarded()
    assert info.value.retry_after is None
    policy.force_close("anthropic")
    failing = pipeline.guard(provider="anthropic")(ScriptedProvider([HTTPStatus(500)] * 50, clock=clock))
    fail_n(failing, 50)  # forced closed: nothing counted, nothing opens
    assert policy.status("anthropic")["state"] == "forced_closed"
    policy.reset("anthropic")
    assert policy.status("anthropic")["state"] == "closed"


def test_async_and_streams(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=2, window_size=2)
    provider = ScriptedProvider([HTTPStatus(503), HTTPStatus(503)], default="ok", clock=clock)

    async def call() -> Any:
        return await provider.acall()

    guarded = pipeline.guard(provider="x")(call)
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            asyncio.run(guarded())
    with pytest.raises(CircuitOpen):
        asyncio.run(guarded())

    def stream() -> Iterator[int]:
        yield 1
        raise ProviderHTTPError(500)  # ends without its last chunk: a failure

    sp = build(clock, minimum_calls=2, window_size=2)
    g = sp.guard(provider="s")(stream)
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            list(g())
    with pytest.raises(CircuitOpen):
        next(g())


def test_abandoned_stream_says_nothing(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=1, window_size=1)

    def stream() -> Iterator[int]:
        yield from range(10)

    for _ in range(3):
        s = pipeline.guard(provider="s")(stream)()
        next(s)
        s.close()
    assert policy_of(pipeline).status("s")["calls"] == 0


def test_minimum_calls_cannot_exceed_a_count_window() -> None:
    from resilient import ConfigurationError

    with pytest.raises(ConfigurationError, match="minimum_calls"):
        build(FakeClock(), minimum_calls=30, window_size=20)


def test_cli_breaker_commands(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from resilient.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["breaker", "status", "--provider", "anthropic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "closed"
    assert main(["breaker", "open", "--provider", "anthropic"]) == 0
    assert "forced_open" in capsys.readouterr().out


# ---------------------------------------------------------------- a reference model, driven at random


class Reference:
    """The breaker as the docs describe it, written plainly (count window)."""

    def __init__(self, size: int, minimum: int, rate: float, wait: float, trials: int) -> None:
        self.size, self.minimum, self.rate, self.wait, self.trials = size, minimum, rate, wait, trials
        self.state = "closed"
        self.window: list[bool] = []  # True = failure
        self.opened_at = 0.0
        self.trial_results: list[bool] = []

    def admit(self, now: float) -> bool:
        if self.state == "open":
            if now < self.opened_at + self.wait:
                return False
            self.state, self.trial_results = "half_open", []
        return True

    def record(self, failed: bool, now: float) -> None:
        if self.state == "closed":
            self.window = [*self.window, failed][-self.size :]
            n, f = len(self.window), sum(self.window)
            if n >= self.minimum and f >= self.rate * n:
                self.state, self.opened_at, self.window = "open", now, []
        elif self.state == "half_open":
            self.trial_results.append(failed)
            if len(self.trial_results) >= self.trials:
                n, f = len(self.trial_results), sum(self.trial_results)
                if f >= self.rate * n:
                    self.state, self.opened_at = "open", now
                else:
                    self.state, self.window = "closed", []


class BreakerMachine(RuleBasedStateMachine):
    """Random calls (sequential), outcomes and clock steps: every admission and state matches the model."""

    @initialize(
        size=st.integers(1, 8),
        extra=st.integers(0, 4),
        rate=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        wait=st.sampled_from([1.0, 5.0, 30.0]),
        trials=st.integers(1, 4),
    )
    def setup(self, size: int, extra: int, rate: float, wait: float, trials: int) -> None:
        minimum = max(1, size - extra)
        self.clock = FakeClock()
        self.pipeline = build(
            self.clock,
            window_size=size,
            minimum_calls=minimum,
            failure_rate=rate,
            wait_open=wait,
            half_open_calls=trials,
        )
        self.model = Reference(size, minimum, rate, wait, trials)
        self.outcome: list[bool] = [False]

        def provider() -> str:
            if self.outcome[0]:
                raise ProviderHTTPError(503)
            return "ok"

        self.guarded = self.pipeline.guard(provider="p")(provider)

    @rule(failed=st.booleans())
    def call(self, failed: bool) -> None:
        now = self.clock.time()
        expected = self.model.admit(now)
        self.outcome[0] = failed
        try:
            self.guarded()
            admitted, raised = True, False
        except CircuitOpen:
            admitted, raised = False, False
        except ProviderHTTPError:
            admitted, raised = True, True
        assert admitted == expected
        if admitted:
            assert raised == failed
            self.model.record(failed, now)

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 31.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: hasattr(self, "model"))
    @invariant()
    def same_state(self) -> None:
        state = policy_of(self.pipeline).status("p")["state"]
        assert state == self.model.state


BreakerMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
test_breaker_matches_the_reference_model = BreakerMachine.TestCase


def test_slow_trials_never_let_more_than_half_open_calls_through() -> None:
    from resilient_breaker._machine import HALF_OPEN, Limits, Machine

    limits = Limits(0.5, "count", 1, 1, None, 1.0, 1, trial_timeout=300.0)
    machine = Machine()
    machine.record(limits, machine.acquire(limits, 0.0)[0], 1, 0.0)  # one failure: open
    first = machine.acquire(limits, 1.0)[0]  # half-open: the one trial
    assert first & 3 == 2
    for t in (2.0, 10.0, 100.0, 299.0):  # the trial is slow, as LLM calls are
        assert machine.acquire(limits, t)[0] == 0
    assert machine.state == HALF_OPEN
    late = machine.acquire(limits, 301.0)[0]  # presumed lost: a new round
    assert late & 3 == 2
    # The first trial finally answers: it belongs to the old round and is not counted.
    assert machine.record(limits, first, 0, 302.0) is None
    assert machine.state == HALF_OPEN
    assert machine.record(limits, late, 0, 303.0) == "closed"


def test_overrides_that_change_the_window_get_their_own_breaker(clock: FakeClock) -> None:
    from resilient import request_context

    pipeline = build(clock, key=["provider"], tenants={"small": {"window_size": 2, "minimum_calls": 2}})
    failing = pipeline.guard(provider="p")(ScriptedProvider([HTTPStatus(503)] * 10, clock=clock))
    with request_context(tenant="big"):
        fail_n(failing, 3)  # 3 of the default minimum 10: stays closed
    with request_context(tenant="small"):
        fail_n(failing, 2)  # its own window of 2: open
        with pytest.raises(CircuitOpen):
            failing()
    with request_context(tenant="big"):
        fail_n(failing, 1)  # still closed for the others


def test_health_lists_the_breakers_used_and_stays_ok_when_one_is_open(clock: FakeClock) -> None:
    pipeline = build(clock, minimum_calls=2, window_size=2)
    failing = ScriptedProvider([HTTPStatus(500), HTTPStatus(500)], default="ok", clock=clock)
    assert pipeline.guard(provider="anthropic", model="n")(lambda: "ok")() == "ok"
    fail_n(pipeline.guard(provider="anthropic", model="m")(failing), 2)
    report = pipeline.health()
    assert report["ok"] is True  # an open breaker is the app protecting itself, not a dead worker
    breakers = report["policies"]["breaker"]["breakers"]
    assert sorted(breakers.values()) == ["closed", "open"]
    assert report["policies"]["breaker"]["store"] == "memory"


@settings(max_examples=150, deadline=None)
@given(
    window_type=st.sampled_from(["count", "time"]),
    size=st.integers(1, 5),
    trials=st.integers(1, 3),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("call"), st.sampled_from([0, 1, 2, 3, -1])),
            st.tuples(st.just("successes"), st.integers(1, 6)),
            st.tuples(st.just("wait"), st.sampled_from([0.5, 3.0, 40.0])),
            st.tuples(st.just("force"), st.sampled_from([0, 3, 4])),
        ),
        max_size=60,
    ),
)
def test_a_clean_window_is_exactly_one_a_success_cannot_change(
    window_type: str, size: int, trials: int, steps: list[tuple[str, float]]
) -> None:
    """The hot path skips recording a success when ``Machine.clean``: that must be right at every step."""
    import copy

    from resilient_breaker._machine import CLOSED, OK, Limits, Machine

    limits = Limits(0.5, window_type, size, 1, 0.5, 30.0, trials, trial_timeout=60.0)
    machine, now = Machine(), 1_000.0
    for step, value in steps:
        if step == "wait":
            now += value
        elif step == "force":
            machine.force(int(value), now)
        elif step == "successes":
            for _ in range(int(value)):
                permit = machine.acquire(limits, now)[0]
                if permit:
                    machine.record(limits, permit, OK, now)
        else:
            permit = machine.acquire(limits, now)[0]
            if permit:
                machine.record(limits, permit, int(value), now)
        full_of_successes = len(machine.ring) == size and not any(machine.ring)
        assert machine.clean == (machine.state == CLOSED and window_type == "count" and full_of_successes)
        if machine.clean:
            before = copy.deepcopy(machine)
            assert machine.record(limits, machine.acquire(limits, now)[0], OK, now) is None
            # Nothing a later decision reads has moved (the ring's position is moot in an all-OK ring).
            for name in ("state", "generation", "n", "f", "s", "ring", "permits", "trials", "clean"):
                assert getattr(machine, name) == getattr(before, name)


def test_threads_through_the_lock_free_fast_path_leave_a_consistent_window() -> None:
    """Successes skipped without the lock, outcomes recorded under it: the window's counts still add up."""
    import random
    import sys
    import threading

    from resilient_breaker._machine import CLOSED, FAILURE, SLOW

    pipeline = build(FakeClock(), window_size=8, minimum_calls=8, failure_rate=1.0, wait_open=0)
    rng = random.Random(7)
    script = [rng.random() < 0.2 for _ in range(8000)]  # True: the provider fails this call

    def provider(failed: bool) -> str:
        if failed:
            raise ProviderHTTPError(503)
        return "ok"

    guarded = pipeline.guard(provider="p")(provider)

    def worker(part: list[bool]) -> None:
        for failed in part:
            try:
                guarded(failed)
            except (ProviderHTTPError, CircuitOpen):
                pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [threading.Thread(target=worker, args=(script[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    policy = policy_of(pipeline)
    machine = policy._local.machine(policy.key_for(policy._base, "p", None, None))
    ring = machine.ring
    assert (machine.n, machine.f, machine.s) == (
        len(ring),
        sum(code & FAILURE for code in ring),
        sum((code & SLOW) >> 1 for code in ring),
    )
    assert machine.clean == (machine.state == CLOSED and len(ring) == 8 and not any(ring))
