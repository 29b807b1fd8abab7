"""Ready-made property checks a user points at their own configuration.

Each check builds pipelines from ``config`` (on a :class:`FakeClock`, state in
memory, every other entry-point plugin disabled), drives them with
Hypothesis, and raises :class:`AssertionError` naming a counterexample when
the property fails. ``plugins`` are registered too: a plugin that declares
the section under test (and disables the first-party one) is checked instead.

* :func:`check_quota` -- no window admits more than its limit;
* :func:`check_breaker` -- admissions and states follow the documented breaker;
* :func:`check_retry` -- waits within bounds, never past the deadline, a
  non-retryable error raised after exactly one attempt;
* :func:`check_masking` -- no secret logged through a logger reaches its handlers' output.

Requires ``hypothesis`` (a test dependency).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ..context import request_context
from ..errors import CircuitOpen, QuotaExceeded
from ..pipeline import Pipeline
from ._clock import FakeClock
from ._scripted import HTTPStatus, ProviderHTTPError, ScriptedProvider
from .strategies import Secret, secrets

__all__ = ["check_breaker", "check_masking", "check_quota", "check_retry"]

_counter = itertools.count()


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        # One counterexample, raised as the AssertionError the check promises
        # (several distinct ones would come as an ExceptionGroup).
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


def _isolated(config: Mapping[str, Any], section: str) -> dict[str, Any]:
    """``config`` on memory, under a fresh key prefix, with every other entry-point plugin disabled."""
    others = {ep.name for ep in importlib.metadata.entry_points(group="resilient")} - {section}
    cfg = dict(config)
    cfg["store"] = "memory://"
    cfg["key_prefix"] = f"check{next(_counter)}:"
    cfg["disable"] = sorted(set(cfg.get("disable", ())) | others)
    body = cfg.get(section)
    if isinstance(body, Mapping):
        cfg[section] = {k: v for k, v in body.items() if k != "storage"}
    return cfg


def _pipeline(config: Mapping[str, Any], section: str, plugins: Sequence[object], clock: FakeClock, **kw: Any) -> Any:
    pipeline = Pipeline(plugins=plugins, config=_isolated(config, section), env={}, clock=clock, **kw)
    found = pipeline.settings.sections.get(section)
    if found is None:
        pipeline.close()
        raise AssertionError(f"no plugin declares the [{section}] section: nothing to check")
    return pipeline, found


def _overrides(config: Mapping[str, Any], section: str, kind: str) -> list[str]:
    body = config.get(section)
    table = body.get(kind, {}) if isinstance(body, Mapping) else {}
    return sorted(table) if isinstance(table, Mapping) else []


# ---------------------------------------------------------------------------- quota


@dataclass(frozen=True)
class _Step:
    advance: float
    who: int
    burst: int
    max_tokens: int
    used: float


@dataclass(frozen=True)
class _Hit:
    t: float
    admitted: bool
    refused_by: str | None
    options: Any
    group: tuple[str | None, ...]
    tokens: int


def _reached(hit: _Hit, index: int, labels: Sequence[str]) -> bool:
    """Whether the call hit request limit ``index`` (limits checks them in order; wait mode only tests)."""
    if hit.admitted:
        return True
    if hit.options.wait or hit.refused_by is None or hit.refused_by == "provider asked to slow down":
        return False
    if hit.refused_by in labels:
        return labels.index(hit.refused_by) >= index
    return not hit.refused_by.startswith("quota store")  # refused by a token limit: every request limit was hit


def _fail(what: str, detail: str, steps: Sequence[Any]) -> None:
    shown = ", ".join(repr(s) for s in steps[:30]) + (" ..." if len(steps) > 30 else "")
    raise AssertionError(f"{what}\n  {detail}\n  call sequence: {shown}")


def _check_windows(hits: Sequence[_Hit], steps: Sequence[_Step]) -> None:
    from resilient_quota._options import parse_limits

    groups: dict[tuple[Any, ...], list[tuple[_Hit, int, list[str]]]] = {}
    for hit in hits:
        items = parse_limits(hit.options.requests)
        labels = [f"requests {item}" for item in items]
        for i, item in enumerate(items):
            groups.setdefault((hit.group, hit.options.strategy, str(item), item), []).append((hit, i, labels))
        for kind in ("output_tokens", "total_tokens"):
            for item in parse_limits(getattr(hit.options, kind)):
                groups.setdefault((hit.group, f"tokens:{hit.options.token_strategy}", kind, item), [])
                groups[(hit.group, f"tokens:{hit.options.token_strategy}", kind, item)].append((hit, -1, []))
    for (group, strategy, name, item), members in groups.items():
        period = float(item.get_expiry())
        amount = int(item.amount)
        who = "/".join(str(g) for g in group)
        if strategy.startswith("tokens:"):
            admitted = [(h.t, h.tokens) for h, _, _ in members if h.admitted]
            for t, _ in admitted:
                if strategy == "tokens:sliding-window-counter":
                    start = (t // period) * period
                    used = sum(n for u, n in admitted if start <= u < start + period)
                    bound = amount
                else:  # a fixed window opens at its first hit: any span of one period overlaps at most two
                    start, used, bound = t, sum(n for u, n in admitted if t <= u < t + period), 2 * amount
                if used > bound:
                    _fail(
                        f"quota admitted {used} {name} for key {who} within one window of {item} ({strategy})",
                        f"window starting at t={start - 1_700_000_000:.3f}s (fake clock)",
                        steps,
                    )
            continue
        times = [h.t for h, _, _ in members if h.admitted]
        if strategy == "moving-window":
            for t in times:
                inside = [u for u in times if t <= u < t + period]
                if len(inside) > amount:
                    _fail(
                        f"quota admitted {len(inside)} calls for key {who} within {period:g}s "
                        f"(limit {item}, moving window)",
                        f"admissions at {[round(u - 1_700_000_000, 3) for u in inside]} s (fake clock)",
                        steps,
                    )
        elif strategy == "sliding-window-counter":
            for t in times:
                start = (t // period) * period
                inside = [u for u in times if start <= u < start + period]
                if len(inside) > amount:
                    _fail(
                        f"quota admitted {len(inside)} calls for key {who} in one aligned window of {item} "
                        "(sliding-window-counter)",
                        f"admissions at {[round(u - 1_700_000_000, 3) for u in inside]} s (fake clock)",
                        steps,
                    )
        else:
            window: float | None = None
            count = 0
            for hit, index, labels in members:
                if not _reached(hit, index, labels):
                    continue
                if window is None or hit.t >= window + period:
                    window, count = hit.t, 0
                if hit.admitted:
                    count += 1
                if count > amount:
                    _fail(
                        f"quota admitted {count} calls for key {who} in one fixed window of {item}",
                        f"window opened at t={window - 1_700_000_000:.3f}s (fake clock)",
                        steps,
                    )


class _Reply:
    """A response shaped like an Anthropic ``Message``: only ``usage`` matters to the quota."""

    def __init__(self, output_tokens: int) -> None:
        self.usage = {"input_tokens": 0, "output_tokens": output_tokens}


def check_quota(
    config: Mapping[str, Any],
    *,
    plugins: Sequence[object] = (),
    max_examples: int = 100,
    provider: str = "check",
) -> None:
    """Check that no window of ``config``'s quota admits more than its limit.

    Hypothesis draws call sequences: bursts of calls at one instant, clock
    steps of up to a little more than the longest period, the provider,
    model and tenant of each burst (those named in the section's override
    tables, and none), and each call's ``max_tokens`` and real usage (never
    more than reserved). Request limits are checked exactly per strategy
    (moving window: any period from an admission; sliding-window counter:
    each aligned period; fixed window: each window from its first hit);
    output and total token limits by the tokens admitted per window.
    """
    from resilient_quota._options import parse_limits

    quota = config.get("quota") if isinstance(config.get("quota"), Mapping) else {}
    assert isinstance(quota, Mapping)
    providers = [provider, *_overrides(config, "quota", "providers")]
    models: list[str | None] = [None, *_overrides(config, "quota", "models")]
    tenants: list[str | None] = [None, *_overrides(config, "quota", "tenants")]
    who = list(itertools.product(providers, models, tenants))
    texts = [str(quota.get("requests", ""))]
    for kind in ("providers", "models", "tenants"):
        table = quota.get(kind, {})
        texts += [str(v.get("requests", "")) for v in table.values()] if isinstance(table, Mapping) else []
    items = [item for text in texts for item in parse_limits(text)]
    longest = max((float(i.get_expiry()) for i in items), default=60.0)
    largest = max((int(i.amount) for i in items), default=5)
    burst = min(largest + 2, 60)

    step = st.builds(
        _Step,
        advance=st.one_of(st.just(0.0), st.floats(0, longest * 1.2, allow_nan=False)),
        who=st.integers(0, len(who) - 1),
        burst=st.integers(1, burst),
        max_tokens=st.integers(1, 4096),
        used=st.floats(0, 1),
    )

    @_settings(max_examples)
    @given(steps=st.lists(step, min_size=1, max_size=12))
    def windows_hold(steps: list[_Step]) -> None:
        clock = FakeClock()
        pipeline, section = _pipeline(config, "quota", plugins, clock)
        try:
            guarded: dict[tuple[str, str | None], Callable[..., Any]] = {}
            hits: list[_Hit] = []
            for s in steps:
                clock.advance(s.advance)
                p, m, t = who[s.who]
                fn = guarded.get((p, m))
                if fn is None:
                    fn = guarded[(p, m)] = pipeline.guard(provider=p, model=m)(
                        lambda max_tokens, messages, used: _Reply(used)
                    )
                options = section.for_call(p, m, t)
                parts = {"provider": p, "model": m, "tenant": t}
                group = tuple(parts[k] for k in getattr(options, "key", ("provider", "model", "tenant")))
                used = int(s.max_tokens * s.used)
                for _ in range(s.burst):
                    with request_context(tenant=t):
                        try:
                            fn(max_tokens=s.max_tokens, messages=[{"role": "user", "content": "hi"}], used=used)
                        except QuotaExceeded as exc:
                            hits.append(_Hit(clock.time(), False, exc.limit, options, group, 0))
                        else:
                            hits.append(_Hit(clock.time(), True, None, options, group, used))
            _check_windows(hits, steps)
        finally:
            pipeline.close()

    windows_hold()


# ---------------------------------------------------------------------------- breaker


class _Reference:
    """The breaker as its docs describe it, written plainly (count window, sequential calls)."""

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


# What the provider answers, and whether the breaker counts it as a failure (a 400 is the caller's fault).
_BREAKER_OUTCOMES: dict[str, tuple[object, bool]] = {
    "ok": ("ok", False),
    "503": (HTTPStatus(503), True),
    "529": (HTTPStatus(529), True),
    "timeout": (TimeoutError("timed out"), True),
    "400": (HTTPStatus(400), False),
}


def check_breaker(
    config: Mapping[str, Any],
    *,
    plugins: Sequence[object] = (),
    max_examples: int = 50,
    steps: int = 50,
    provider: str = "check",
    model: str | None = None,
) -> None:
    """Check the breaker of ``config`` against a reference model, as a Hypothesis state machine.

    Random sequential calls (successes, 5xx, 529, timeouts, 400s) and clock
    steps around ``wait_open``: every admission (``CircuitOpen`` or not) and,
    when the policy reports it (``status()``), every state matches the model
    of the documented breaker for the options of ``provider``/``model``.
    Count windows only (``window_type = "count"``).
    """
    probe_clock = FakeClock()
    pipeline, section = _pipeline(config, "breaker", plugins, probe_clock)
    pipeline.close()
    opts = section.for_call(provider, model, None)
    if getattr(opts, "window_type", "count") != "count":
        raise ValueError("check_breaker models count windows (window_type = 'count')")
    wait = float(opts.wait_open)
    waits = sorted({0.1, wait * 0.5, wait, wait * 1.1 + 0.01})

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.pipeline, _ = _pipeline(config, "breaker", plugins, self.clock)
            self.model = _Reference(opts.window_size, opts.minimum_calls, opts.failure_rate, wait, opts.half_open_calls)
            self.next: list[object] = ["ok"]
            self.history: list[str] = []

            def call() -> object:
                return ScriptedProvider(self.next, clock=self.clock)()

            self.guarded = self.pipeline.guard(provider=provider, model=model)(call)

        def teardown(self) -> None:
            self.pipeline.close()

        @rule(outcome=st.sampled_from(sorted(_BREAKER_OUTCOMES)))
        def call(self, outcome: str) -> None:
            now = self.clock.time()
            expected = self.model.admit(now)
            answer, failed = _BREAKER_OUTCOMES[outcome]
            self.next = [answer]
            try:
                self.guarded()
                admitted = True
            except CircuitOpen:
                admitted = False
            except (ProviderHTTPError, TimeoutError):
                admitted = True
            self.history.append(f"call->{outcome}:{'admitted' if admitted else 'refused'}")
            if admitted != expected:
                raise AssertionError(
                    f"breaker {'admitted' if admitted else 'refused'} a call the reference model "
                    f"{'admits' if expected else 'refuses'} (model state {self.model.state!r}, "
                    f"options {opts!r})\n  history: {self.history}"
                )
            if admitted:
                self.model.record(failed, now)

        @rule(seconds=st.sampled_from(waits))
        def wait(self, seconds: float) -> None:
            self.history.append(f"wait {seconds:g}s")
            self.clock.advance(seconds)

        @invariant()
        def same_state(self) -> None:
            policy = next((p for p in self.pipeline.policies if p.name == "breaker"), None)
            status = getattr(policy, "status", None)
            if status is None:
                return
            state = status(provider, model)["state"]
            if state != self.model.state:
                raise AssertionError(
                    f"breaker state {state!r}, reference model {self.model.state!r}\n  history: {self.history}"
                )

    run_state_machine_as_test(Machine, settings=settings(_settings(max_examples), stateful_step_count=steps))


# ---------------------------------------------------------------------------- retry

_RETRY_OUTCOMES = st.sampled_from(
    [
        HTTPStatus(500),
        HTTPStatus(503),
        HTTPStatus(529),
        HTTPStatus(429),
        HTTPStatus(429, {"retry-after": "2"}),
        HTTPStatus(503, {"retry-after-ms": "1500"}),
        HTTPStatus(429, {"retry-after": "90"}),
        TimeoutError("timed out"),
        ConnectionResetError("reset"),
    ]
)
_NOT_RETRYABLE = st.sampled_from([HTTPStatus(400), HTTPStatus(401), HTTPStatus(404), HTTPStatus(422)])


def _retry_after(outcome: object) -> float | None:
    if not isinstance(outcome, HTTPStatus):
        return None
    if "retry-after-ms" in outcome.headers:
        return float(outcome.headers["retry-after-ms"]) / 1000
    if "retry-after" in outcome.headers:
        return float(outcome.headers["retry-after"])
    return None


def check_retry(
    config: Mapping[str, Any],
    *,
    plugins: Sequence[object] = (),
    max_examples: int = 100,
    provider: str = "check",
    model: str | None = None,
) -> None:
    """Check the retry of ``config``: bounded waits, the deadline, attempts, and no retry of what must not be.

    Hypothesis draws scripts of retryable failures (5xx, 529, 429 with and
    without ``retry-after``, timeouts, connection resets), possibly a final
    non-retryable error or a success, and the jitter. Each wait before
    attempt *n+1* is at most ``min(max_delay, base_delay * 2**(n-1))`` or the
    provider's ``retry-after`` (and at least that, when respected); the
    waits never add up past ``deadline``; there are at most
    ``max_attempts`` attempts; a non-retryable error on the first attempt
    is raised after exactly one; the error raised is the last one.
    """

    @_settings(max_examples)
    @given(
        failures=st.lists(_RETRY_OUTCOMES, max_size=10),
        last=st.one_of(st.just("ok"), _NOT_RETRYABLE, _RETRY_OUTCOMES),
        jitter=st.floats(0, 0.999999),
        first_fatal=_NOT_RETRYABLE,
        fatal_first=st.booleans(),
    )
    def retries_hold(
        failures: list[object], last: object, jitter: float, first_fatal: HTTPStatus, fatal_first: bool
    ) -> None:
        clock = FakeClock()
        script = [first_fatal] if fatal_first else [*failures, last]
        pipeline, section = _pipeline(config, "retry", plugins, clock, random=lambda: jitter)
        try:
            opts = section.for_call(provider, model, None)
            scripted = ScriptedProvider(script, default="ok", clock=clock)
            guarded = pipeline.guard(provider=provider, model=model)(scripted)
            raised: BaseException | None = None
            try:
                guarded()
            except Exception as exc:
                raised = exc
            attempts, sleeps = scripted.calls, clock.sleeps
            story = f"script {script!r}, jitter {jitter!r}, options {opts!r}: {attempts} attempts, waits {sleeps!r}"
            if fatal_first:
                fatal = f"a non-retryable {first_fatal.code} must be raised after exactly one attempt; {story}"
                assert attempts == 1, fatal
                assert getattr(raised, "status_code", None) == first_fatal.code, fatal
                return
            if not getattr(opts, "enabled", True):
                return
            assert attempts <= opts.max_attempts, f"more attempts than max_attempts; {story}"
            assert len(sleeps) == attempts - 1, f"a wait without an attempt after it; {story}"
            for n, slept in enumerate(sleeps, start=1):
                cap = min(opts.max_delay, opts.base_delay * 2.0 ** (n - 1))
                after = _retry_after(script[n - 1]) if opts.respect_retry_after else None
                bound = max(cap, after) if after is not None else cap
                assert slept <= bound + 1e-9, f"wait {n} ({slept:g}s) above its bound ({bound:g}s); {story}"
                if after is not None:
                    assert slept >= after - 1e-9, f"wait {n} ({slept:g}s) shorter than retry-after {after:g}s; {story}"
                    assert after <= opts.max_retry_after, f"waited for a retry-after above max_retry_after; {story}"
            if opts.deadline is not None:
                assert sum(sleeps) <= opts.deadline + 1e-9, f"waited past the deadline ({opts.deadline:g}s); {story}"
            played = script[attempts - 1] if attempts <= len(script) else "ok"
            if raised is None:
                assert played == "ok", f"returned although attempt {attempts} failed; {story}"
            else:
                assert played != "ok", f"raised {raised!r} although attempt {attempts} succeeded; {story}"
                code = getattr(raised, "status_code", None)
                if isinstance(played, HTTPStatus):
                    assert code == played.code, f"raised {raised!r}, not the last error {played!r}; {story}"
        finally:
            pipeline.close()

    retries_hold()


# ---------------------------------------------------------------------------- masking


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        # pytest's own capture handlers belong to the test run, not to the application's output.
        found += [h for h in current.handlers if not type(h).__module__.startswith("_pytest.")]
        if not current.propagate:
            break
        current = current.parent
    if not found and logging.lastResort is not None:
        found.append(logging.lastResort)
    return found


_FIXED_TEXT = (
    "calling the provider with context request: request sent request_body header provider rejected call failed"
)


def check_masking(
    logger: logging.Logger,
    *,
    max_examples: int = 200,
    level: int = logging.ERROR,
    secret: st.SearchStrategy[Secret] | None = None,
) -> None:
    """Check that secrets logged through ``logger`` never appear in what its handlers write.

    Secrets of every first-party detector (or those of ``secret``) are
    logged in the message, as a ``%s`` argument, in ``extra=`` and in an
    exception's text. Every handler the record reaches (``logger``'s and its
    ancestors', as propagation goes) formats it with its own formatter; the
    output is captured instead of written (nothing reaches files or streams
    during the check) and must not contain the secret's value. pytest's own
    log-capture handlers are left out: they are the test run's, not the app's.
    """
    handlers = _handlers(logger)

    @_settings(max_examples)
    @given(found=secret if secret is not None else secrets(), how=st.sampled_from(["msg", "arg", "extra", "exc"]))
    def nothing_leaks(found: Secret, how: str) -> None:
        # A value that also appears outside its secret (a URL's user equal to its password) proves nothing.
        assume(found.snippet.count(found.value) == 1 and found.value not in _FIXED_TEXT + logger.name)
        written: list[tuple[str, str]] = []
        originals = [(h, h.emit) for h in handlers]
        for handler in handlers:

            def capture(record: logging.LogRecord, handler: logging.Handler = handler) -> None:
                written.append((repr(handler), handler.format(record)))

            handler.emit = capture  # type: ignore[method-assign]
        try:
            if how == "msg":
                logger.log(level, "calling the provider with %s", "context " + found.snippet)
                logger.log(level, "request: " + found.snippet)
            elif how == "arg":
                logger.log(level, "request: %s", found.snippet)
            elif how == "extra":
                logger.log(level, "request sent", extra={"request_body": {"header": found.snippet}})
            else:
                try:
                    raise RuntimeError(f"provider rejected {found.snippet}")
                except RuntimeError:
                    logger.log(level, "call failed", exc_info=True)
        finally:
            for handler, emit in originals:
                handler.emit = emit  # type: ignore[method-assign]
        if not written:
            raise AssertionError(
                f"logger {logger.name!r} wrote nothing at level {logging.getLevelName(level)}: nothing to check"
            )
        for name, text in written:
            if found.value in text:
                raise AssertionError(
                    f"a {found.detector} secret ({found.value!r}, logged as {how}) reached handler {name}:\n  {text!r}"
                )

    nothing_leaks()
