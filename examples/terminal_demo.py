"""A guarded call against a provider that fails now and then, in the terminal.

This is what `make demo` runs until the FastAPI example lands. It builds a
pipeline from the installed plugins (the first-party `quota`, `retry` and
`breaker` plugins come through the `resilient` entry-point group) plus one plugin
written right here, calls a scripted provider that answers 500, 529 or 429
about a third of the time on behalf of two tenants, and prints what the
policies did: retries recover failures, a 429 pauses the key, the circuit
breaker opens when too many calls fail and lets trials through after a
short wait, and each tenant's quota of 10 calls a minute refuses the rest.

Run it with `make demo`, or `python examples/terminal_demo.py`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Any

from resilient import (
    Call,
    CircuitOpen,
    Clock,
    Event,
    Handler,
    Pipeline,
    Policy,
    QuotaExceeded,
    Runtime,
    Target,
    hookimpl,
    request_context,
)
from resilient.testing import HTTPStatus, ProviderHTTPError, ScriptedProvider

CALLS = 24
FAIL_RATE = 0.35
PAUSE = 0.06  # seconds between the app's calls


class Stopwatch(Policy):
    """A custom policy: times each call and counts attempts. Outermost, like metrics."""

    name = "stopwatch"
    order = 100

    def __init__(self) -> None:
        self.durations: list[float] = []

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def timed(call: Call) -> Any:
            start = time.perf_counter()
            try:
                return nxt(call)
            finally:
                self.durations.append(time.perf_counter() - start)

        return timed


class DemoPlugin:
    """A plugin defined in place: one policy and one observer that prints events."""

    name = "demo"

    def __init__(self) -> None:
        self.stopwatch = Stopwatch()
        self.events: collections.Counter[str] = collections.Counter()

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [self.stopwatch]

    @hookimpl
    def resilient_observers(self, runtime: Runtime) -> Sequence[Any]:
        return [self.on_event]

    def on_event(self, event: Event) -> None:
        self.events[event.name] += 1
        keys = (
            "attempt",
            "attempts",
            "delay",
            "outcome",
            "status",
            "reason",
            "limit",
            "seconds",
            "source",
            "state",
            "retry_after",
        )
        fields = {k: getattr(event, k, None) for k in keys}
        shown = ", ".join(
            f"{k}={v:.3f}s" if k in ("delay", "seconds", "retry_after") else f"{k}={v}"
            for k, v in fields.items()
            if v is not None and v != ""
        )
        print(f"      event {event.name:<16} {shown}")


def main(clock: Clock | None = None) -> int:
    demo = DemoPlugin()
    pipeline = Pipeline(
        plugins=[demo],
        clock=clock,
        # Short waits so the demo is quick; in production these come from
        # [tool.resilient.retry] in pyproject.toml or RESILIENT_RETRY__* variables.
        config={
            "retry": {"max_attempts": 4, "base_delay": "20ms", "max_delay": "200ms"},
            # Each tenant may make 10 calls a minute; when the provider says 429,
            # calls wait out its retry-after (up to 1 s) instead of hammering it.
            "quota": {"requests": "10/minute", "wait": True, "max_wait": "1s"},
            # Open the circuit when 40 % of the last 8 calls failed; try again after 200 ms.
            "breaker": {"failure_rate": 0.4, "minimum_calls": 5, "window_size": 8, "wait_open": "200ms"},
        },
    )
    print("Policies in force, outermost first:")
    for i, policy in enumerate(pipeline.policies, 1):
        print(f"  {i}. {policy.name:<10} (plugin {pipeline.plugin_of(policy)})")
    print("  -> provider call\n")

    failures = (HTTPStatus(500), HTTPStatus(529), HTTPStatus(429, {"retry-after": "0.25"}))
    provider = ScriptedProvider.flaky(FAIL_RATE, seed=7, failures=failures, value="Hello from the scripted provider")

    @pipeline.guard(provider="scripted", operation="messages.create", model="demo-model")
    def ask(prompt: str) -> str:
        """The call being protected: here a scripted provider, in real life an SDK call."""
        return str(provider(prompt=prompt))

    results: collections.Counter[str] = collections.Counter()
    for i in range(1, CALLS + 1):
        before = provider.calls
        with request_context(tenant="tenant-a" if i % 2 else "tenant-b"):
            try:
                ask(f"question {i}")
            except CircuitOpen as exc:
                outcome = f"REFUSED by the open circuit (retry after {exc.retry_after or 0:.2f}s), provider not called"
                results["circuit"] += 1
            except QuotaExceeded as exc:
                outcome = f"REFUSED by quota: {exc.limit} (retry after {exc.retry_after:.0f}s), provider not called"
                results["refused"] += 1
            except ProviderHTTPError as exc:
                outcome = f"FAILED after {provider.calls - before} attempts (HTTP {exc.status_code})"
                results["failed"] += 1
            else:
                attempts = provider.calls - before
                outcome = "ok" if attempts == 1 else f"ok after {attempts} attempts"
                results["first try" if attempts == 1 else "recovered by retry"] += 1
        print(f"  call {i:>2}: {outcome}")
        pipeline.runtime.clock.sleep(PAUSE)  # the app's own pace between calls

    slowest = max(demo.stopwatch.durations)
    print("\nSummary")
    print(f"  calls made by the app:      {CALLS}")
    print(f"  provider requests:          {provider.calls}")
    print(f"  succeeded on the first try: {results['first try']}")
    print(f"  recovered by retry:         {results['recovered by retry']}")
    print(f"  failed after all attempts:  {results['failed']}")
    print(f"  refused by quota:           {results['refused']}")
    print(f"  refused by the breaker:     {results['circuit']}")
    print(f"  events: {dict(demo.events)}")
    print(f"  slowest call including backoff: {slowest * 1000:.0f} ms")
    print("\nTry: .venv/bin/resilient plugins   and   .venv/bin/resilient config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
