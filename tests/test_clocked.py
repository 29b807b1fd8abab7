"""``limits``' memory storages and strategies rebuilt on a clock (resilient._clocked) are ``limits`` itself.

The reference is ``limits``' own classes with the ``time`` of their modules
patched to read the same fake clock (what the test suite did before the
rebuild existed): any sequence of hits, tests and clock moves must give the
same answers and the same window stats, for every strategy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from unittest import mock

import limits
import limits.aio.storage.memory
import limits.aio.strategies
import limits.storage
import limits.storage.memory
import limits.strategies
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import SYSTEM_CLOCK
from resilient._clocked import is_real_time, on_clock, strategies_on, wall_of
from resilient.testing import FakeClock

ITEMS = [limits.parse("3/second"), limits.parse("5/minute"), limits.parse("2/10 seconds")]


class _Time:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=40, allow_nan=False),  # seconds to advance first
        st.sampled_from(["hit", "test", "stats"]),
        st.sampled_from(range(len(ITEMS))),
        st.integers(1, 3),  # cost of a hit
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(strategy=st.sampled_from(sorted(limits.strategies.STRATEGIES)), history=steps)
def test_a_rebuilt_limiter_answers_as_limits_does_on_the_same_clock(strategy: str, history: list[Any]) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    ours = strategies_on(clock)[strategy](on_clock(limits.storage.MemoryStorage, clock)())
    shim = _Time(clock)
    with mock.patch.object(limits.storage.memory, "time", shim), mock.patch.object(limits.strategies, "time", shim):
        reference = limits.strategies.STRATEGIES[strategy](limits.storage.MemoryStorage())
        for advance, op, index, cost in history:
            clock.advance(advance)
            item = ITEMS[index]
            if op == "hit":
                assert ours.hit(item, "k", cost=cost) == reference.hit(item, "k", cost=cost)
            elif op == "test":
                assert ours.test(item, "k", cost=cost) == reference.test(item, "k", cost=cost)
            else:
                assert ours.get_window_stats(item, "k") == reference.get_window_stats(item, "k")


def test_windows_end_when_the_clock_moves_past_them() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    item = limits.parse("2/minute")
    for name, cls in strategies_on(clock).items():
        limiter = cls(on_clock(limits.storage.MemoryStorage, clock)())
        assert [limiter.hit(item, name) for _ in range(3)] == [True, True, False], name
        assert 0 < limiter.get_window_stats(item, name).reset_time - clock.time() <= 60, name
        clock.advance(121)  # past a sliding window's previous period too
        assert limiter.hit(item, name), name


def test_the_async_memory_storage_runs_on_the_clock_too() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    item = limits.parse("1/minute")

    async def run() -> None:
        storage = on_clock(limits.aio.storage.memory.MemoryStorage, clock)()
        for name, cls in strategies_on(clock, aio=True).items():
            limiter = cls(storage)
            assert await limiter.hit(item, name), name
            assert not await limiter.hit(item, name), name
            clock.advance(121)
            assert await limiter.hit(item, name), name

    asyncio.run(run())


def test_limits_itself_is_left_as_it_was() -> None:
    clock = FakeClock()
    rebuilt = on_clock(limits.storage.MemoryStorage, clock)
    assert rebuilt is not limits.storage.MemoryStorage
    assert issubclass(rebuilt, limits.storage.MemoryStorage)
    # A rebuilt class takes no storage scheme: memory:// still gives limits' own storage, on real time.
    plain = limits.storage.storage_from_string("memory://")
    assert type(plain) is limits.storage.MemoryStorage
    assert wall_of(plain) is time.time
    assert wall_of(rebuilt()) == clock.time
    assert limits.storage.memory.time is time
    assert limits.strategies.time is time


def test_the_system_clock_keeps_limits_classes() -> None:
    assert is_real_time(SYSTEM_CLOCK)
    assert not is_real_time(FakeClock())
    assert on_clock(limits.storage.MemoryStorage, SYSTEM_CLOCK) is limits.storage.MemoryStorage
    assert strategies_on(SYSTEM_CLOCK) == limits.strategies.STRATEGIES
