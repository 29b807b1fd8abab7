"""The bulkhead: at most N calls in flight per key, for threads and asyncio, and fleet-wide on Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_bulkhead
import resilient_timeout
from resilient import Call, ConcurrencyLimitExceeded, DeadlineExceeded, Pipeline, PluginError
from resilient.testing import FakeClock, RedisServer
from resilient_bulkhead import BulkheadPolicy, register_key
from resilient_timeout import AttemptTimeout

from ._policies import Collect
from ._virtual_time import run


def build(
    clock: FakeClock,
    observer: Collect | None = None,
    *,
    timeout: dict[str, Any] | None = None,
    store: str = "memory://",
    **bulkhead: Any,
) -> Pipeline:
    plugins: list[object] = [resilient_bulkhead]
    config: dict[str, Any] = {"store": store, "bulkhead": bulkhead}
    if timeout is not None:
        plugins.append(resilient_timeout)
        config["timeout"] = timeout
    if observer is not None:
        plugins.append(observer)
    return Pipeline(plugins=plugins, discover=False, env={}, config=config, clock=clock)


def policy_of(pipeline: Pipeline) -> BulkheadPolicy:
    return next(p for p in pipeline.policies if isinstance(p, BulkheadPolicy))


def named(observer: Collect, name: str) -> list[Any]:
    return [e for e in observer.events if e.name == name]


class Provider:
    """An async provider: each call takes ``latency`` seconds; tracks how many run at once."""

    def __init__(self, latency: float = 1.0) -> None:
        self.latency = latency
        self.running = 0
        self.peak = 0
        self.order: list[int] = []

    async def __call__(self, n: int = 0, *, latency: float | None = None, fail: bool = False, **kw: Any) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(n)
        try:
            await asyncio.sleep(self.latency if latency is None else latency)
            if fail:
                raise ConnectionError("boom")
            return n
        finally:
            self.running -= 1


async def gather(*coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros, return_exceptions=True))


# ---------------------------------------------------------------- shape


def test_no_limit_no_policy(clock: FakeClock) -> None:
    assert build(clock).policies == ()
    assert build(clock, max_concurrent=None, models={"m": {"max_concurrent": 2}}).policies != ()


def test_bad_key_part_names_the_key(clock: FakeClock) -> None:
    with pytest.raises(Exception, match=r"bulkhead.key = \['provider', 'colour'\].*each item one of 'provider'"):
        build(clock, max_concurrent=1, key=["provider", "colour"])


def test_fleet_needs_a_redis_store(clock: FakeClock) -> None:
    with pytest.raises(PluginError, match=r"bulkhead.fleet = True"):
        build(clock, max_concurrent=1, fleet=True)


# ---------------------------------------------------------------- async


def test_over_the_limit_calls_are_refused_with_retry_after(clock: FakeClock) -> None:
    observer = Collect()
    provider = Provider()
    guarded = build(clock, observer, max_concurrent=2, retry_after=3).guard(provider="p", model="m")(provider)
    results = run(clock, gather(*(guarded(i) for i in range(5))))
    assert results[:2] == [0, 1]
    refused = results[2:]
    assert all(isinstance(r, ConcurrencyLimitExceeded) for r in refused)
    assert provider.peak == 2
    problem = refused[0].to_problem()
    assert (problem["status"], problem["retry_after"], problem["provider"], problem["model"]) == (429, 3, "p", "m")
    assert refused[0].headers() == {"Retry-After": "3"}
    events = named(observer, "bulkhead.rejected")
    assert [(e.key, e.limit, e.in_flight, e.reason) for e in events] == [("p/m", 2, 2, "full")] * 3


def test_status_503_when_configured(clock: FakeClock) -> None:
    guarded = build(clock, max_concurrent=1, status=503).guard(provider="p")(Provider())
    results = run(clock, gather(guarded(0), guarded(1)))
    assert isinstance(results[1], ConcurrencyLimitExceeded)
    assert results[1].to_problem()["status"] == 503


def test_a_bounded_queue_waits_in_order(clock: FakeClock) -> None:
    provider = Provider(latency=1.0)
    guarded = build(clock, max_concurrent=2, max_waiting=3, max_wait=10).guard(provider="p")(provider)
    results = run(clock, gather(*(guarded(i) for i in range(6))))
    assert results[:5] == [0, 1, 2, 3, 4]
    assert isinstance(results[5], ConcurrencyLimitExceeded)  # the queue holds 3
    assert provider.order == [0, 1, 2, 3, 4]
    assert provider.peak == 2
    assert clock.monotonic() == pytest.approx(3.0)


def test_the_wait_for_a_slot_is_bounded(clock: FakeClock) -> None:
    observer = Collect()
    guarded = build(clock, observer, max_concurrent=1, max_waiting=5, max_wait=0.5).guard(provider="p")(Provider())

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(guarded(0))
        await asyncio.sleep(0)
        second = await gather(guarded(1))
        assert clock.monotonic() == pytest.approx(0.5)
        return [await first, *second]

    results = run(clock, scenario())
    assert results[0] == 0
    assert isinstance(results[1], ConcurrencyLimitExceeded)
    assert [e.reason for e in named(observer, "bulkhead.rejected")] == ["timeout"]


def test_the_call_deadline_caps_the_wait(clock: FakeClock) -> None:
    pipeline = build(clock, timeout={"deadline": 1.0}, max_concurrent=1, max_waiting=5, max_wait=30)
    guarded = pipeline.guard(provider="p")(Provider(latency=10.0))
    results = run(clock, gather(guarded(0), guarded(1)))
    assert isinstance(results[0], DeadlineExceeded)
    assert isinstance(results[1], (ConcurrencyLimitExceeded, DeadlineExceeded))
    assert clock.monotonic() == pytest.approx(1.0)
    assert policy_of(pipeline).in_flight() == {}


def test_pools_are_per_key(clock: FakeClock) -> None:
    provider = Provider()
    guarded = build(clock, max_concurrent=1).guard(provider="p")(provider)
    results = run(clock, gather(guarded(0, model="a"), guarded(1, model="b"), guarded(2, model="a")))
    assert results[:2] == [0, 1]
    assert isinstance(results[2], ConcurrencyLimitExceeded)
    shared = build(clock, max_concurrent=1, key=["provider"]).guard(provider="p")(provider)
    results = run(clock, gather(shared(0, model="a"), shared(1, model="b")))
    assert isinstance(results[1], ConcurrencyLimitExceeded)


def test_a_registered_key_function(clock: FakeClock) -> None:
    register_key("by_n", lambda call: str(call.args[0] % 2))
    guarded = build(clock, max_concurrent=1, key_function="by_n").guard(provider="p")(Provider())
    results = run(clock, gather(guarded(0), guarded(1), guarded(2)))
    assert results[:2] == [0, 1]
    assert isinstance(results[2], ConcurrencyLimitExceeded)
    with pytest.raises(PluginError, match=r"bulkhead.key_function = 'nope'.*by_n"):
        build(clock, max_concurrent=1, key_function="nope")
    with pytest.raises(PluginError, match=r"bulkhead.key_function = 'no_such_module_xyz:f'.*cannot be imported"):
        build(clock, max_concurrent=1, key_function="no_such_module_xyz:f")


def by_parity(call: Call) -> str:
    return str(call.args[0] % 2)


def test_a_key_function_named_module_function(clock: FakeClock) -> None:
    guarded = build(clock, max_concurrent=1, key_function="tests.test_bulkhead:by_parity").guard(provider="p")(
        Provider()
    )
    results = run(clock, gather(guarded(0), guarded(1), guarded(2)))
    assert results[:2] == [0, 1]
    assert isinstance(results[2], ConcurrencyLimitExceeded)


def test_limits_per_model_override(clock: FakeClock) -> None:
    guarded = build(clock, max_concurrent=1, models={"big": {"max_concurrent": 3}}).guard(provider="p")(Provider())
    results = run(clock, gather(*(guarded(i, model="big") for i in range(4))))
    assert results[:3] == [0, 1, 2]
    assert isinstance(results[3], ConcurrencyLimitExceeded)


def test_health_and_in_flight_gauge(clock: FakeClock) -> None:
    pipeline = build(clock, max_concurrent=2, max_waiting=2, max_wait=5)
    policy = policy_of(pipeline)
    guarded = pipeline.guard(provider="p", model="m")(Provider(latency=1.0))
    seen: list[Any] = []

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(guarded(i)) for i in range(3)]
        await asyncio.sleep(0.5)
        seen.append(policy.health())
        await asyncio.gather(*tasks)
        seen.append(policy.health())

    run(clock, scenario())
    assert seen[0] == {"ok": True, "in_flight": {"p/m": 2}, "waiting": {"p/m": 1}}
    assert seen[1] == {"ok": True, "in_flight": {}, "waiting": {}}


GRID = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0])


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=4),
    max_waiting=st.integers(min_value=0, max_value=4),
    max_wait=st.sampled_from([0.0, 0.5, 2.0, 100.0]),
    calls=st.lists(
        st.tuples(
            # On a grid, so releases, cancellations and wait limits often fall on the same instant.
            GRID,  # start delay
            GRID,  # latency
            st.booleans(),  # fails
            st.one_of(st.none(), GRID),  # cancelled after
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_in_flight_never_exceeds_the_limit_and_returns_to_zero(
    limit: int, max_waiting: int, max_wait: float, calls: list[tuple[float, float, bool, float | None]]
) -> None:
    clock = FakeClock()
    provider = Provider()
    pipeline = build(clock, max_concurrent=limit, max_waiting=max_waiting, max_wait=max_wait)
    policy = policy_of(pipeline)
    guarded = pipeline.guard(provider="p")(provider)
    peaks: list[int] = []

    async def one(i: int, start: float, latency: float, fails: bool) -> Any:
        await asyncio.sleep(start)
        return await guarded(i, latency=latency, fail=fails)

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        tasks = []
        for i, (start, latency, fails, cancel) in enumerate(calls):
            task = asyncio.ensure_future(one(i, start, latency, fails))
            if cancel is not None:
                loop.call_later(cancel, task.cancel)
            tasks.append(task)

        async def watch() -> None:
            while not all(t.done() for t in tasks):
                peaks.append(sum(policy.in_flight().values()))
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *tasks, return_exceptions=True)
        return [t.cancelled() or t.exception() or t.result() for t in tasks]

    results = run(clock, scenario())
    assert provider.peak <= limit
    assert max(peaks, default=0) <= limit
    assert policy.in_flight() == {}
    assert policy.waiting() == {}
    for result in results:
        assert result is True or isinstance(result, (int, ConnectionError, ConcurrencyLimitExceeded))


# ---------------------------------------------------------------- streams


def test_a_stream_holds_its_slot_until_it_ends(clock: FakeClock) -> None:
    pipeline = build(clock, max_concurrent=1)
    policy = policy_of(pipeline)

    async def chunks() -> AsyncIterator[int]:
        for i in range(3):
            await asyncio.sleep(1)
            yield i

    guarded = pipeline.guard(provider="p")(chunks)

    async def scenario() -> None:
        stream = guarded()
        assert await anext(stream) == 0
        assert policy.in_flight() == {"p/-": 1}
        with pytest.raises(ConcurrencyLimitExceeded):
            await anext(guarded())
        await stream.aclose()  # abandoned early: the slot comes back
        assert policy.in_flight() == {}
        assert [c async for c in guarded()] == [0, 1, 2]

    run(clock, scenario())
    assert policy.in_flight() == {}


def test_a_stalled_stream_times_out_and_releases_its_slot(clock: FakeClock) -> None:
    pipeline = build(clock, timeout={"idle_timeout": 1.0}, max_concurrent=1)
    policy = policy_of(pipeline)

    async def stalls() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(3600)
        yield 2

    guarded = pipeline.guard(provider="p")(stalls)

    async def scenario() -> list[int]:
        got = []
        with pytest.raises(AttemptTimeout):
            async for chunk in guarded():
                got.append(chunk)
        return got

    assert run(clock, scenario()) == [1]
    assert policy.in_flight() == {}
    assert clock.monotonic() == pytest.approx(1.0)


def test_sync_stream_slot(clock: FakeClock) -> None:
    pipeline = build(clock, max_concurrent=1)
    policy = policy_of(pipeline)

    def chunks() -> Iterator[int]:
        yield from range(3)

    guarded = pipeline.guard(provider="p")(chunks)
    stream = guarded()
    assert next(stream) == 0
    assert policy.in_flight() == {"p/-": 1}
    with pytest.raises(ConcurrencyLimitExceeded):
        list(guarded())
    stream.close()
    assert policy.in_flight() == {}
    assert list(guarded()) == [0, 1, 2]


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("system_clock", [False, True])
def test_threads_share_the_limit_and_a_waiter_gets_the_freed_slot(clock: FakeClock, system_clock: bool) -> None:
    release = threading.Event()
    entered = threading.Event()

    def call(n: int) -> int:
        if n == 0:
            entered.set()
            release.wait(10)
        return n

    pipeline = build(clock, max_concurrent=1, max_waiting=1, max_wait=60)
    if system_clock:  # the waiter blocks on its event with no polling; the release wakes it
        pipeline = Pipeline(
            plugins=[resilient_bulkhead],
            discover=False,
            env={},
            config={"bulkhead": {"max_concurrent": 1, "max_waiting": 1, "max_wait": 60}},
        )
    policy = policy_of(pipeline)
    guarded = pipeline.guard(provider="p")(call)
    results: dict[int, Any] = {}

    def worker(n: int) -> None:
        try:
            results[n] = guarded(n)
        except Exception as exc:
            results[n] = exc

    first = threading.Thread(target=worker, args=(0,))
    first.start()
    entered.wait(10)
    second = threading.Thread(target=worker, args=(1,))
    second.start()
    while not policy.waiting():  # the second is queued
        threading.Event().wait(0.001)
    with pytest.raises(ConcurrencyLimitExceeded):  # the queue (1) is full
        guarded(2)
    release.set()
    first.join(10)
    second.join(10)
    assert results == {0: 0, 1: 1}
    assert policy.in_flight() == {}


def test_a_sync_waiter_gives_up_at_max_wait_on_the_pipeline_clock(clock: FakeClock) -> None:
    release = threading.Event()
    entered = threading.Event()

    def call(n: int) -> int:
        if n == 0:
            entered.set()
            release.wait(10)
        return n

    pipeline = build(clock, max_concurrent=1, max_waiting=1, max_wait=5)
    policy = policy_of(pipeline)
    guarded = pipeline.guard(provider="p")(call)
    first = threading.Thread(target=guarded, args=(0,))
    first.start()
    entered.wait(10)
    outcome: list[Any] = []

    def waiter() -> None:
        try:
            outcome.append(guarded(1))
        except ConcurrencyLimitExceeded as exc:
            outcome.append(exc)

    second = threading.Thread(target=waiter)
    second.start()
    while not policy.waiting():
        threading.Event().wait(0.001)
    clock.advance(5)  # fake time passes: the waiter notices within one poll
    second.join(10)
    release.set()
    first.join(10)
    assert isinstance(outcome[0], ConcurrencyLimitExceeded)
    assert policy.in_flight() == {}
    assert policy.waiting() == {}


def test_exceptions_release_the_slot(clock: FakeClock) -> None:
    def boom() -> None:
        raise ValueError("no")

    pipeline = build(clock, max_concurrent=1)
    guarded = pipeline.guard(provider="p")(boom)
    for _ in range(3):
        with pytest.raises(ValueError, match="no"):
            guarded()
    assert policy_of(pipeline).in_flight() == {}


# ---------------------------------------------------------------- fleet-wide on Redis


@pytest.fixture
def redis_url(redis_store: RedisServer) -> str:
    client = redis.Redis.from_url(redis_store.url)
    client.flushdb()
    client.close()
    return redis_store.url


def test_fleet_processes_share_one_limit(redis_url: str, clock: FakeClock) -> None:
    one = build(clock, store=redis_url, max_concurrent=1, fleet=True)
    two = build(clock, store=redis_url, max_concurrent=1, fleet=True)
    inside: list[Any] = []

    def nested() -> str:
        # While process one holds the only slot, process two is refused.
        try:
            two.guard(provider="p", model="m")(lambda: "two")()
        except ConcurrencyLimitExceeded as exc:
            inside.append(exc)
        return "one"

    assert one.guard(provider="p", model="m")(nested)() == "one"
    assert isinstance(inside[0], ConcurrencyLimitExceeded)
    assert two.guard(provider="p", model="m")(lambda: "two")() == "two"  # released
    health = policy_of(one).health()
    assert health is not None
    assert health["ok"] is True
    assert health["fleet_in_flight"] == {"p/m": 0}
    one.close()
    two.close()


def test_a_dead_holders_lease_expires(redis_url: str, clock: FakeClock) -> None:
    pipeline = build(clock, store=redis_url, max_concurrent=1, fleet=True, lease_ttl=30)
    client = redis.Redis.from_url(redis_url)
    # A holder that died: its lease is in the set, never released.
    client.zadd("resilient:bulkhead:p/m", {"dead-holder": clock.time() + 30})
    guarded = pipeline.guard(provider="p", model="m")(lambda: "ok")
    with pytest.raises(ConcurrencyLimitExceeded):
        guarded()
    clock.advance(30)
    assert guarded() == "ok"
    assert client.zcard("resilient:bulkhead:p/m") == 0
    client.close()
    pipeline.close()


def test_fleet_waits_by_polling_until_max_wait(redis_url: str, clock: FakeClock) -> None:
    pipeline = build(
        clock, store=redis_url, max_concurrent=1, fleet=True, max_waiting=1, max_wait=1, poll_interval=0.25
    )
    client = redis.Redis.from_url(redis_url)
    client.zadd("resilient:bulkhead:p/m", {"other": clock.time() + 300})
    guarded = pipeline.guard(provider="p", model="m")(lambda: "ok")
    with pytest.raises(ConcurrencyLimitExceeded):
        guarded()
    assert clock.sleeps == [0.25] * 4
    client.close()
    pipeline.close()


def test_fleet_async(redis_url: str, clock: FakeClock) -> None:
    pipeline = build(clock, store=redis_url, max_concurrent=2, fleet=True)
    gate = asyncio.Event()

    async def call(n: int) -> int:
        await gate.wait()  # held until the third call has been answered
        return n

    guarded = pipeline.guard(provider="p", model="m")(call)

    async def scenario() -> list[Any]:
        try:
            tasks = [asyncio.ensure_future(guarded(i)) for i in range(3)]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            gate.set()
            return await gather(*tasks)
        finally:
            await pipeline.aclose()

    results = asyncio.run(scenario())  # a real loop: the Redis client does real I/O (no sleeping)
    assert sorted(r for r in results if isinstance(r, int)) in ([0, 1], [0, 2], [1, 2])
    assert sum(isinstance(r, ConcurrencyLimitExceeded) for r in results) == 1
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("resilient:bulkhead:p/m") == 0
    client.close()


def test_a_down_store_falls_back_to_the_local_limit(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = build(clock, store="redis://127.0.0.1:1/0", max_concurrent=1, fleet=True)
    inside: list[Any] = []

    def nested() -> str:
        try:
            guarded()
        except ConcurrencyLimitExceeded as exc:
            inside.append(exc)
        return "ok"

    guarded = pipeline.guard(provider="p")(nested)
    assert guarded() == "ok"
    assert "bulkhead store unavailable" in caplog.text
    assert isinstance(inside[0], ConcurrencyLimitExceeded)  # the in-process limit held meanwhile
    health = policy_of(pipeline).health()
    assert health is not None
    assert health["ok"] is False
    pipeline.close()


def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on(clock: FakeClock) -> None:
    pipeline = build(clock, max_concurrent=1, max_waiting=2, max_wait=60)
    policy = policy_of(pipeline)
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def call(name: str) -> str:
        if name == "a":
            await asyncio.sleep(1)
            tasks["b"].cancel()  # b is cancelled in the same step as a's slot is handed to it
        return name

    guarded = pipeline.guard(provider="p")(call)

    async def scenario() -> list[Any]:
        tasks["a"] = asyncio.ensure_future(guarded("a"))
        await asyncio.sleep(0)
        tasks["b"] = asyncio.ensure_future(guarded("b"))
        tasks["c"] = asyncio.ensure_future(guarded("c"))
        return await gather(*tasks.values())

    a, b, c = run(clock, scenario())
    assert (a, c) == ("a", "c")  # c got the slot b could not use
    assert isinstance(b, asyncio.CancelledError)
    assert policy.in_flight() == {}


# ---------------------------------------------------------------- against the simulator


def simulator_stream(sim: Any) -> Any:
    """An async stream of the simulator's SSE body chunks, its ASGI app driven in process (on the test's loop)."""
    import json

    async def stream(*, model: str) -> AsyncIterator[bytes]:
        body = json.dumps(
            {"model": model, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
        ).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/messages",
            "raw_path": b"/v1/messages",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"x-api-key", b"sk-test")],
            "server": ("sim", 80),
            "client": ("test", 1234),
        }
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gone = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        app = asyncio.ensure_future(sim.app(scope, receive, send))
        try:
            start = await messages.get()
            assert start["status"] == 200
            while True:
                message = await messages.get()
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return
        finally:
            gone.set()  # the client goes away: a stalled simulator stops waiting
            await app

    return stream


def test_a_stream_that_stalls_mid_way_against_the_simulator_times_out_and_releases_its_slot(clock: FakeClock) -> None:
    from resilient.testing.simulator import Simulator, Stall

    sim = Simulator()  # its latency and stalls sleep on the running loop: virtual time here
    sim.script(Stall(after=2, seconds=30))
    pipeline = build(clock, timeout={"first_chunk_timeout": 5, "idle_timeout": 1}, max_concurrent=1)
    policy = policy_of(pipeline)
    guarded = pipeline.guard(provider="anthropic")(simulator_stream(sim))

    async def consume() -> list[bytes]:
        return [chunk async for chunk in guarded(model="claude-haiku-4-5")]

    got: list[bytes] = []

    async def stalled() -> None:
        async for chunk in guarded(model="claude-haiku-4-5"):
            got.append(chunk)

    with pytest.raises(AttemptTimeout) as info:
        run(clock, stalled())
    assert info.value.phase == "idle"
    assert len(got) == 2  # the chunks before the stall reached the caller
    assert clock.monotonic() == pytest.approx(1.0)
    assert policy.in_flight() == {}
    chunks = run(clock, consume())  # the slot is free again: the next stream runs to its end
    assert b"message_stop" in chunks[-1]
    assert policy.in_flight() == {}
