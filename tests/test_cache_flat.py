"""The memory-only handlers (``CachePolicy._here``/``_ahere``: hit and miss written out flat) against the general path.

With no shared store a miss runs one flat function instead of ``_miss`` ->
``_fetch`` -> the lookup and store steps of ``_flow.py``. These tests drive
both through the same random histories (sync and async calls, values of every
kind, provider failures, stale answers, size limits, tags, invalidation,
every kind of observer) and compare everything a caller or an observer can
see, and what the local layer holds. They also check that the quick size
check (``fits``) never lets through what encoding would refuse, and the
single flight's lock-free handshake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
from collections.abc import Callable
from typing import Any
from unittest.mock import Mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import resilient_cache
import resilient_metrics
from resilient import Event, Pipeline, Runtime, capture_calls, hookimpl, request_context
from resilient.events import Count
from resilient.testing import FakeClock, ProviderHTTPError
from resilient_cache import CachePolicy
from resilient_cache._codec import Codec, Entry, Unstorable, fits
from resilient_cache._flight import DONE, RESULT, Flight, Flights, end

from ._exposition import exposed
from ._policies import Collect


class Counted(int):
    """An int subclass (the benchmark's reply is one): stored as data, kept as itself in memory."""


class Text(str):
    def __len__(self) -> int:  # a subclass cannot make the size check lie
        return 0


class Counting:
    """A plugin whose observer counts some events by binding (``bind_count``), and sees the rest."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.log: list[Any] = []

    @hookimpl
    def resilient_observers(self, runtime: Runtime) -> list[Any]:
        return [self]

    def __call__(self, event: Event) -> None:
        self.log.append(_fields(event))

    def bind_count(self, cls: type[Event], provider: str, operation: str, model: str | None) -> Count | None:
        if self.refuse:
            return None
        self.log.append(("bound", cls.name, provider, operation, model))
        return lambda: self.log.append(("counted", cls.name, provider, operation, model))


def _fields(event: Event) -> tuple[Any, ...]:
    return (event.name, *(getattr(event, f.name) for f in dataclasses.fields(event)))


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 2**64 + 5).map(Counted),
    st.text(max_size=40),
    st.text(st.characters(codec="ascii"), max_size=40),
    st.text(st.characters(codec="ascii"), max_size=40).map(Text),
    st.floats(allow_nan=False),
    st.lists(st.integers(0, 9), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.tuples(st.integers()),  # not data: not stored
    st.builds(object),
    st.builds(Mock, spec=st.sampled_from([str, int])),  # passes isinstance(): not data all the same
)
steps = st.one_of(
    st.tuples(
        st.just("call"),
        st.integers(0, 1),  # the request
        st.sampled_from([None, "t1"]),  # the tenant
        st.booleans(),  # async
        st.one_of(values, st.sampled_from([503, 400]).map(ProviderHTTPError)),
    ),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 4.0, 10.0, 25.0])),
    st.tuples(st.just("invalidate"), st.integers(0, 1), st.sampled_from([None, "t1"])),
    st.tuples(st.just("invalidate_tag"), st.sampled_from(["model=m", "model=other"])),
)
options = st.fixed_dictionaries(
    {
        "ttl": st.sampled_from([5, 20]),
        "max_stale": st.sampled_from([0, 30]),
        "max_entries": st.sampled_from([1, 2, 16]),
        "max_value_bytes": st.sampled_from([1, 120, 121, 136, 137, 200, 1_000_000]),
        "tags": st.sampled_from([[], ["model"]]),
        "single_flight": st.booleans(),
        # an override table: the plan is then looked up per call (no fixed plan)
        "models": st.sampled_from([{}, {"m": {"ttl": 7, "max_value_bytes": 137}}]),
    }
)


class Side:
    """One pipeline (flat misses or the general path), its clock and what it showed."""

    def __init__(self, flat: bool, cache: dict[str, Any], observer: str) -> None:
        self.clock = FakeClock()
        self.watch: Any = None
        plugins: list[Any] = [resilient_cache]
        if observer == "collect":
            self.watch = Collect()
        elif observer in ("counting", "refusing"):
            self.watch = Counting(refuse=observer == "refusing")
        elif observer == "metrics":  # the metrics observer joins a miss's count and its store's (join_counts)
            self.registry = CollectorRegistry()
            plugins.append(resilient_metrics)
        if self.watch is not None:
            plugins.append(self.watch)
        with resilient_metrics.use_registry(getattr(self, "registry", None) or CollectorRegistry()):
            self.pipeline = Pipeline(
                discover=False,
                plugins=plugins,
                env={},
                config={"cache": {"enabled": True, "cacheable": "always", **cache}},
                clock=self.clock,
            )
        self.policy = next(p for p in self.pipeline.policies if isinstance(p, CachePolicy))
        self.policy.flat_misses = flat
        if flat:  # the flat path must not fall back to the general one (no follower in a sequential history)
            self.policy._fetch = _never_sync  # type: ignore[method-assign,assignment]
            self.policy._afetch = _never  # type: ignore[method-assign,assignment]
        self.outcome: list[Any] = []
        self.made = 0

        def provider(q: int, answer: Any) -> Any:
            self.made += 1
            if isinstance(answer, BaseException):
                raise answer
            return answer

        async def aprovider(q: int, answer: Any) -> Any:
            return provider(q, answer)

        self.ask = self.pipeline.guard(provider="p", model="m")(provider)
        self.aask = self.pipeline.guard(provider="p", model="m")(aprovider)

    def seen(self) -> list[Any]:
        if isinstance(self.watch, Collect):
            return [_fields(e) for e in self.watch.events]
        if isinstance(self.watch, Counting):
            return self.watch.log
        if hasattr(self, "registry"):
            return sorted(exposed(self.registry).items())
        return []

    def held(self) -> Any:
        local = self.policy._local
        by_key = None if local._by_key is None else dict(local._by_key)
        return list(local.data.items()), by_key, {t: set(m) for t, m in local._tags.items()}

    async def play(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "wait":
            self.clock.advance(step[1])
            return
        if kind in ("invalidate", "invalidate_tag"):
            if kind == "invalidate":
                key = self.policy.key_for("p", "call", {"q": step[1], "answer": None}, model="m", tenant=step[2])
                assert key is not None
                self.outcome.append(self.policy.invalidate(key=key))
            else:
                self.outcome.append(self.policy.invalidate(tag=step[1]))
            return
        _, q, tenant, use_async, answer = step
        with request_context(tenant=tenant), capture_calls() as calls:
            try:
                # The answer is left out of the key: identical requests, different answers.
                got = await self.aask(q=q, answer=answer) if use_async else self.ask(q=q, answer=answer)
            except ProviderHTTPError as exc:
                got = ("raised", exc)
        self.outcome.append((got, type(got), dict(calls[0].metadata), self.made))


def _never_sync(*args: Any) -> Any:  # pragma: no cover - fails the test if reached
    raise AssertionError("the flat miss path fell back to the general one")


async def _never(*args: Any) -> Any:  # pragma: no cover - fails the test if reached
    raise AssertionError("the flat miss path fell back to the general one")


def replay(flat: Side, general: Side, history: list[tuple[Any, ...]], *, held: bool) -> None:
    """Play each step on both sides; after each, both answered and told the same (and hold the same, if ``held``)."""

    async def main() -> None:
        for step in history:
            await flat.play(step)
            await general.play(step)
            assert flat.outcome == general.outcome
            assert flat.seen() == general.seen()
            if held:
                assert flat.held() == general.held()

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(steps, max_size=25),
    cache=options,
    observer=st.sampled_from(["none", "collect", "counting", "refusing", "metrics"]),
)
def test_flat_misses_do_exactly_what_the_general_path_does(
    history: list[tuple[Any, ...]], cache: dict[str, Any], observer: str
) -> None:
    cache = {**cache, "ignore": ["answer"]}
    flat, general = Side(True, cache, observer), Side(False, cache, observer)
    replay(flat, general, history, held=True)


@pytest.mark.parametrize("use_async", [False, True])
def test_a_miss_counted_with_its_store_counts_alone_when_it_is_not_stored(use_async: bool) -> None:
    # With the metrics observer alone, a memory-only miss and its store are one update (join_counts), made
    # once the answer is kept; a miss that is not stored after all (an error, a value that is not data or too
    # large, a stale answer) must still count, exactly as the general path counts it.
    cache = {"ignore": ["answer"], "ttl": 5, "max_stale": 30, "max_value_bytes": 200}
    flat, general = Side(True, cache, "metrics"), Side(False, cache, "metrics")
    history: list[tuple[Any, ...]] = [
        ("call", 0, None, use_async, 1),  # stored: the store's count is bound, the next misses are joined
        ("call", 1, None, use_async, ProviderHTTPError(400)),
        ("call", 1, None, use_async, object()),
        ("call", 1, None, use_async, "x" * 500),
        ("wait", 10.0),
        ("call", 0, None, use_async, ProviderHTTPError(503)),  # the stale entry answers
        ("call", 1, None, use_async, 2),
    ]
    replay(flat, general, history, held=False)
    assert all(both is not None for _, _, both in flat.policy._misses.values())  # the joined update ran
    misses = sum(v for (name, labels), v in exposed(flat.registry).items() if ("result", "miss") in labels)
    assert misses == 6


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, asyncio.CancelledError])
def test_a_joined_miss_interrupted_is_counted(interrupt: type[BaseException]) -> None:
    cache = {"ignore": ["answer"]}
    flat, general = Side(True, cache, "metrics"), Side(False, cache, "metrics")
    use_async = interrupt is asyncio.CancelledError

    async def main() -> None:
        for side in (flat, general):
            await side.play(("call", 0, None, use_async, 1))
            with pytest.raises(interrupt):
                await side.play(("call", 1, None, use_async, interrupt()))

    asyncio.run(main())
    assert all(both is not None for _, _, both in flat.policy._misses.values())
    assert flat.seen() == general.seen()
    assert exposed(flat.registry)[("resilient_events_total", (("event", "cache.miss"),))] == 2


# ---------------------------------------------------------------- the quick size check

times = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [-2.2250738585072014e-308, -1.7976931348623157e308, -1.2345678901234567e-100]
)
plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**66), 2**66),
    st.integers(-(2**66), 2**66).map(Counted),
    st.text(st.characters(codec="ascii")),
    st.text(st.sampled_from('\x00\x1f"\\a')),  # the characters JSON escapes longest
    st.text(st.characters(codec="ascii"), max_size=50).map(Text),
    st.text(st.characters(exclude_categories=())),  # surrogates too: orjson refuses them
    st.floats(),
)


@settings(max_examples=500, deadline=None)
@given(
    value=plain,
    at=times,
    fresh=times,
    stale=times,
    limit=st.integers(1, 400) | st.just(1_000_000),
)
def test_fits_never_passes_what_encoding_refuses_or_finds_too_large(
    value: Any, at: float, fresh: float, stale: float, limit: int
) -> None:
    if fits(value, at, fresh, stale, limit):
        assert len(Codec().encode(Entry(value, False, at, fresh, stale))) <= limit


@pytest.mark.parametrize(
    ("value", "limit"),
    [(None, 120), ("a" * 10, 116 + 2 + 60), (2**63 - 1, 136), (True, 200), (Counted(7), 136)],
)
def test_fits_passes_plain_values_within_the_limit(value: Any, limit: int) -> None:
    assert fits(value, 1.5, 2.5, 3.5, limit)


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**64), "\ud800", "caf\xe9", Text("x" * 200), 1.5, [1], {"a": 1}, (1,)],
)
def test_fits_leaves_everything_else_to_encoding(value: Any) -> None:
    assert not fits(value, 1.5, 2.5, 3.5, 135)


@pytest.mark.parametrize("spec", [str, int, float])
def test_fits_is_not_fooled_by_a_mock(spec: type) -> None:
    mock = Mock(spec=spec)
    assert isinstance(mock, spec)
    assert not fits(mock, 1.5, 2.5, 3.5, 1_000_000)
    assert not fits(1, 1.5, Mock(spec=float), 3.5, 1_000_000)


def test_too_large_and_unstorable_plain_values_are_told_as_before() -> None:
    observer = Collect()
    clock = FakeClock()
    pipeline = Pipeline(
        discover=False,
        plugins=[resilient_cache, observer],
        env={},
        config={"cache": {"enabled": True, "cacheable": "always", "max_value_bytes": 130}},
        clock=clock,
    )
    answers = iter(["x" * 100, 2**64, "\ud800", 5])
    ask = pipeline.guard(provider="p")(lambda q: next(answers))
    for q in range(4):
        ask(q=q)
    reasons = [getattr(e, "reason", e.name) for e in observer.events if e.name != "cache.miss"]
    assert reasons == ["too_large", "unserializable", "unserializable", "cache.stored"]
    with pytest.raises(Unstorable):
        Codec().encode(Entry(2**64, False, 1.0, 2.0, 3.0))


# ---------------------------------------------------------------- single flight without a lock


class _Preempted(list[Any]):
    """A flight whose first read of its result by a follower lets ``meanwhile`` run right after it."""

    def __init__(self, owner: int, meanwhile: Callable[[], None]) -> None:
        self._meanwhile: Callable[[], None] | None = meanwhile
        super().__init__([owner, None, None])

    def __getitem__(self, index: Any) -> Any:
        found = super().__getitem__(index)
        if index == RESULT:
            meanwhile, self._meanwhile = self._meanwhile, None
            if meanwhile is not None:
                meanwhile()
        return found


def test_a_follower_that_read_no_result_just_before_the_leader_ended_gets_it_without_waiting() -> None:
    # The interleaving a lock-free handshake must survive: the follower reads "no result yet", the leader
    # then ends entirely (writes its result, finds no event to set), and only then does the follower make
    # its event. The follower must read the result again rather than wait for an event nobody will set.
    flights = Flights()
    key = "k"

    def leader_ends() -> None:
        end(flights.flights, key, flight, (True, "answer", "miss", None))

    flight = _Preempted(owner=-1, meanwhile=leader_ends)
    flights.flights[key] = flight
    shared = flights.wait(flight, timeout=30)  # it would block for 30 s if it waited
    assert shared is not None
    assert (shared.ok, shared.value, shared.state) == (True, "answer", "miss")
    assert key not in flights.flights


def test_a_follower_waiting_before_the_leader_ended_is_woken() -> None:
    flights = Flights()
    flight, leader = flights.begin("k")
    assert leader
    got: list[Any] = []
    follower = threading.Thread(target=lambda: got.append(flights.wait(flight, timeout=30)))
    follower.start()
    while flight[DONE] is None:  # pragma: no cover - until the follower has made its event
        pass
    end(flights.flights, "k", flight, (False, None, "miss", ValueError("no")))
    follower.join(30)
    assert not follower.is_alive()
    assert got[0].ok is False
    assert isinstance(got[0].error, ValueError)


def test_followers_racing_the_leaders_end_all_get_its_result() -> None:
    # Switch threads as often as the interpreter allows, so the late followers join the flight at any point
    # of the leader's end (the early ones surely join: the leader waits for them). Every follower that joined
    # must get the leader's result: one that missed it would wait for an event nobody sets and get None after
    # flight_wait. (A caller that looked in the local layer just before the leader stored, and began its
    # flight just after the leader ended, leads a new flight: that window is single flight's, on every store,
    # and not what this checks.)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        clock = FakeClock()
        pipeline = Pipeline(
            discover=False,
            plugins=[resilient_cache],
            env={},
            config={"cache": {"enabled": True, "cacheable": "always", "flight_wait": 10, "max_entries": 1}},
            clock=clock,
        )
        flights = next(p for p in pipeline.policies if isinstance(p, CachePolicy))._flights
        waited: list[Any] = []
        joined = threading.Semaphore(0)
        wait = flights.wait

        def recorded(flight: Flight, timeout: float) -> Any:
            joined.release()
            shared = wait(flight, timeout)
            waited.append(shared)
            return shared

        flights.wait = recorded  # type: ignore[method-assign]
        for q in range(60):
            results, made = _race(pipeline, q, joined)
            assert results == [f"answer {q}"] * 5
            assert made[0] == q
            while joined.acquire(blocking=False):  # late followers that joined: not waited for by _race
                pass
        assert len(waited) >= 2 * 60  # the early followers of every round joined a flight
        assert all(shared is not None and shared.value.startswith("answer") for shared in waited)
    finally:
        sys.setswitchinterval(old)


def _race(pipeline: Pipeline, q: int, joined: threading.Semaphore) -> tuple[list[str], list[int]]:
    """A leader, two followers that surely join its flight, and two that start as it ends."""
    made: list[int] = []
    inside, release = threading.Event(), threading.Event()

    def provider(q: int) -> str:
        made.append(q)
        inside.set()
        release.wait(10)
        return f"answer {q}"

    ask = pipeline.guard(provider="p")(provider)
    results: list[str] = []
    leader = threading.Thread(target=lambda: results.append(ask(q=q)))
    early = [threading.Thread(target=lambda: results.append(ask(q=q))) for _ in range(2)]
    late = [threading.Thread(target=lambda: results.append(ask(q=q))) for _ in range(2)]
    leader.start()
    assert inside.wait(10)
    for t in early:
        t.start()
    for _ in early:  # both are in the flight's wait before the leader may end
        assert joined.acquire(timeout=10)
    release.set()
    for t in late:
        t.start()
    for t in [leader, *early, *late]:
        t.join(30)
    return results, made


def test_tasks_of_two_event_loops_never_wait_for_each_other() -> None:
    # Flights are per loop: a task cannot await another loop's future. Two loops in two threads, the same
    # request at the same time: each leads its own flight, and a second task in each loop follows its own.
    clock = FakeClock()
    pipeline = Pipeline(
        discover=False,
        plugins=[resilient_cache],
        env={},
        config={"cache": {"enabled": True, "cacheable": "always", "flight_wait": 10}},
        clock=clock,
    )
    both_in = threading.Barrier(2, timeout=10)
    made: list[str] = []

    async def provider(q: int) -> str:
        made.append(threading.current_thread().name)
        await asyncio.to_thread(both_in.wait)  # both leaders are in flight at once
        return "answer"

    ask = pipeline.guard(provider="p")(provider)

    async def two() -> list[Any]:
        return list(await asyncio.gather(ask(q=1), ask(q=1)))

    results: dict[str, list[Any]] = {}
    threads = [
        threading.Thread(target=lambda: results.update({threading.current_thread().name: asyncio.run(two())}))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(t.name for t in threads)
    assert all(r == ["answer", "answer"] for r in results.values())
    assert sorted(made) == sorted(t.name for t in threads)  # one call per loop
