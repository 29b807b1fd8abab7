from __future__ import annotations

import pytest

from resilient.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class _LimitsTime:
    """Stands in for the ``time`` module inside ``limits``: wall time from a FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def __getattr__(self, name: str) -> object:
        import time

        return getattr(time, name)


@pytest.fixture
def limits_on(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Run the ``limits`` library's in-memory storage and strategies on the test's fake clock.

    ``limits`` reads ``time.time()`` itself; the quota plugin is given the
    clock, ``limits`` is patched to read the same one.
    """
    import limits.storage.memory
    import limits.strategies

    shim = _LimitsTime(clock)
    monkeypatch.setattr(limits.storage.memory, "time", shim)
    monkeypatch.setattr(limits.strategies, "time", shim)
    import resilient_quota._store

    monkeypatch.setattr(resilient_quota._store, "time", shim)
    return clock
