"""Fixed-window request hits in memory, counted a block at a time, cannot be told from one ``incr`` per call.

``resilient_quota._store.Blocks`` asks ``limits``' memory storage for several
hits at once. These tests hold it to ``limits`` itself: the same decisions,
the same remaining and reset, hit for hit, whatever else reads the key.
"""

from __future__ import annotations

import threading
from operator import methodcaller

import limits
import limits.storage
import limits.strategies
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import Pipeline, QuotaExceeded
from resilient._clocked import on_clock, strategies_on
from resilient.testing import FakeClock
from resilient_quota import QuotaPolicy, _store
from resilient_quota._steps import drive
from resilient_quota._store import Adjust, Blocks, Hit, Limiters, WindowStats

PROPERTY = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=80, deadline=None)

IDS = ("p", "m", "t")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("hit"), st.integers(0, 1), st.integers(1, 40)),  # the hot path, n calls of one key
        st.tuples(st.just("op-hit"), st.integers(0, 1), st.integers(1, 3)),  # a Hit op (the general path), cost
        st.tuples(st.just("stats"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("test"), st.integers(0, 1), st.integers(1, 3)),
        st.tuples(st.just("adjust"), st.integers(0, 1), st.integers(-5, 5)),
        st.tuples(st.just("advance"), st.just(0), st.integers(1, 40)),
    ),
    max_size=40,
)


@PROPERTY
@given(amounts=st.tuples(st.integers(1, 400), st.integers(1, 40)), history=ops)
def test_blocks_decide_and_report_what_limits_does_hit_by_hit(
    limits_on: FakeClock, amounts: tuple[int, int], history: list[tuple[str, int, int]]
) -> None:
    clock = limits_on
    clock.advance(1000.0)
    ours = Limiters("memory://", "x:", limits_on)
    assert ours.blocks is not None
    hit = ours.hits["fixed-window"]
    reference = strategies_on(clock)["fixed-window"](on_clock(limits.storage.MemoryStorage, clock)())
    items = [limits.parse(f"{amount}/minute") for amount in amounts]
    for kind, which, n in history:
        item = items[which]
        ids = (*IDS, str(which))
        key = item.key_for(*ids)
        if kind == "hit":
            for _ in range(n):
                assert hit(key, item.amount, item.get_expiry(), 1) == reference.hit(item, *ids)
        elif kind == "op-hit":
            assert ours.run(Hit("fixed-window", item, ids, False, n)) == reference.hit(item, *ids, cost=n)
        elif kind == "stats":
            mine = ours.run(WindowStats("fixed-window", item, ids, False))
            theirs = reference.get_window_stats(item, *ids)
            assert (mine.remaining, mine.reset_time) == (theirs.remaining, theirs.reset_time)
        elif kind == "test":
            assert ours.run(_store.Test("fixed-window", item, ids, False, n)) == reference.test(item, *ids, cost=n)
        elif kind == "adjust":
            move = Adjust("fixed-window", item, ids, n, False, None)
            ours.run(move)
            drive(move.steps(reference.storage), methodcaller("on", reference.storage))
        else:
            clock.advance(float(n))
    for which, item in enumerate(items):  # what the storage holds, once the blocks are given back
        ids = (*IDS, str(which))
        assert ours.limiter("fixed-window", False).get_window_stats(item, *ids) == reference.get_window_stats(
            item, *ids
        )


def test_a_window_with_room_is_hit_a_block_at_a_time(limits_on: FakeClock) -> None:
    lim = Limiters("memory://", "x:", limits_on)
    assert lim.blocks is not None
    item = limits.parse("1000/minute")
    key = item.key_for(*IDS)
    hit = lim.hits["fixed-window"]
    assert hit(key, 1000, 60, 1)  # the window's first hit is a single one
    assert lim.storage.get(key) == 1
    assert hit(key, 1000, 60, 1)  # then a block: 64 counted, one used
    assert lim.storage.get(key) == 65
    for _ in range(63):
        assert hit(key, 1000, 60, 1)
    assert lim.storage.get(key) == 65  # the block's hits were taken without the storage
    stats = lim.run(WindowStats("fixed-window", item, IDS, False))
    assert stats.remaining == 1000 - 65  # nothing held back: every counted hit was used


def test_hits_near_the_limit_are_single_and_nothing_past_it_is_admitted(limits_on: FakeClock) -> None:
    lim = Limiters("memory://", "x:", limits_on)
    item = limits.parse("100/minute")
    key = item.key_for(*IDS)
    hit = lim.hits["fixed-window"]
    admitted = sum(hit(key, 100, 60, 1) for _ in range(150))
    assert admitted == 100
    assert lim.storage.get(key) == 150  # a refused hit counts, as in limits
    stats = lim.run(WindowStats("fixed-window", item, IDS, False))
    assert stats.remaining == 0


def test_a_block_larger_than_the_room_left_keeps_only_the_room(limits_on: FakeClock) -> None:
    lim = Limiters("memory://", "x:", limits_on)
    item = limits.parse("1000/minute")
    key = item.key_for(*IDS)
    hit = lim.hits["fixed-window"]
    for _ in range(65):
        assert hit(key, 1000, 60, 1)  # 1, then a block of 64, used up
    lim.storage.incr(key, 60, 930)  # counted behind the blocks' back (as a racing hit could): 995
    assert hit(key, 1000, 60, 1)  # a block of 64 asked for, 5 of them kept
    assert lim.storage.get(key) == 1000
    assert sum(hit(key, 1000, 60, 1) for _ in range(10)) == 4
    assert lim.storage.get(key) == 1006  # the 6 refused hits count, one each


def test_unused_hits_end_with_their_window(limits_on: FakeClock) -> None:
    clock = limits_on
    lim = Limiters("memory://", "x:", limits_on)
    item = limits.parse("1000/minute")
    key = item.key_for(*IDS)
    hit = lim.hits["fixed-window"]
    for _ in range(3):
        assert hit(key, 1000, 60, 1)  # 1, then a block of 64 (62 unused)
    clock.advance(60.0)
    assert hit(key, 1000, 60, 1)  # a new window: its first hit, single
    assert lim.storage.get(key) == 1
    stats = lim.run(WindowStats("fixed-window", item, IDS, False))
    assert stats.remaining == 999


def test_threads_share_the_blocks_and_admit_exactly_the_limit() -> None:
    lim = Limiters("memory://", "x:")
    item = limits.parse("1000/minute")
    key = item.key_for(*IDS)
    hit = lim.hits["fixed-window"]
    admitted = [0] * 4
    start = threading.Barrier(4)

    def work(i: int) -> None:
        start.wait()
        admitted[i] = sum(hit(key, 1000, 60, 1) for _ in range(600))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 1000
    assert lim.run(WindowStats("fixed-window", item, IDS, False)).remaining == 0
    assert lim.storage.get(key) == 2400  # every hit counted once: 1000 admitted, 1400 refused


def test_blocks_are_only_for_the_memory_storage() -> None:
    assert isinstance(Limiters("memory://", "x:").blocks, Blocks)
    assert Limiters("redis://127.0.0.1:1/0", "x:").blocks is None  # no connection is made here


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_quota_plugin_counts_and_reports_exactly(limits_on: FakeClock, asynchronous: bool) -> None:
    import asyncio

    pipeline = Pipeline(
        env={},
        config={
            "disable": ["retry", "breaker", "cache"],
            "quota": {"requests": "200/minute", "strategy": "fixed-window"},
        },
        clock=limits_on,
    )
    policy = next(p for p in pipeline.policies if isinstance(p, QuotaPolicy))

    def ok() -> str:
        return "ok"

    async def aok() -> str:
        return "ok"

    guard = pipeline.guard(provider="anthropic", model="m")
    call, acall = guard(ok), guard(aok)

    def one() -> str:
        return asyncio.run(acall()) if asynchronous else call()

    for _ in range(70):
        assert one() == "ok"
    status = policy.status("anthropic", "m")
    assert status["limits"][0]["remaining"] == 130
    for _ in range(130):
        assert one() == "ok"
    with pytest.raises(QuotaExceeded):
        one()
