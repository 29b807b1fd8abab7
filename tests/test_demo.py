"""`make demo-terminal` runs examples/terminal_demo.py: its story must add up."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from resilient.testing import FakeClock

DEMO = Path(__file__).resolve().parents[1] / "examples" / "terminal_demo.py"


def test_terminal_demo_shows_retries_recovering_failures(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("terminal_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["terminal_demo"] = module
    try:
        spec.loader.exec_module(module)
        clock = FakeClock()
        assert module.main(clock=clock) == 0
    finally:
        del sys.modules["terminal_demo"]
    out = capsys.readouterr().out
    numbers = {k: int(v) for k, v in re.findall(r"^\s+([a-z ,]+?):\s+(\d+)$", out, re.M)}
    assert numbers["calls made by the app"] == 24
    ok = numbers["succeeded on the first try"]
    recovered = numbers["recovered by retry"]
    failed = numbers["failed after all attempts"]
    refused = numbers["refused by quota"]
    circuit = numbers["refused by the breaker"]
    assert ok + recovered + failed + refused + circuit == 24
    assert circuit > 0, "the demo must show the breaker open"
    assert "breaker.state_changed state=open" in out
    assert "breaker.state_changed state=closed" in out  # and closing again after its trials
    assert recovered > 0, "the demo must show retries at work"
    # Two tenants alternate, 12 calls each, against 10 requests a minute per tenant.
    assert refused == 4
    assert "quota.rejected" in out
    # Every call that reached the provider asked it once, and the retried ones more than once.
    assert numbers["provider requests"] >= ok + 2 * recovered + failed
    assert "retry.scheduled" in out
    assert clock.sleeps, "backoff waits went through the injected clock"
    # The demo's policies in their order (other first-party plugins, such as metrics, may sit among them).
    shown = re.findall(r"^\s+\d+\. (\w+)", out, re.M)
    assert [n for n in shown if n in ("stopwatch", "quota", "retry")] == ["stopwatch", "quota", "retry"]
