"""Per call, what a CLOSED circuit breaker costs on a call that succeeds, against pybreaker and purgatory.

A breaker sits in front of every provider call, and almost every call finds it
closed and succeeds: that path is what this script times, per call, with one
positional and one keyword argument:

* the bare function (the floor every other row is measured against);
* the resilient ``breaker`` policy: a pipeline whose only policy is the breaker
  (``disable = ["quota", "retry"]``, default ``[breaker]`` options: a count
  window of 20 calls, judged from 10), on the memory store;
* pybreaker: ``CircuitBreaker(fail_max=5, reset_timeout=30)`` as a decorator,
  sync only. Its async support (``call_async``, ``__pybreaker_call_async``) is a
  Tornado ``gen.coroutine``: there is none for plain asyncio, so no async row;
* purgatory: ``SyncCircuitBreakerFactory`` / ``AsyncCircuitBreakerFactory``
  (``default_threshold=5, default_ttl=30``) with their default in-memory unit of
  work, used as ``@factory("circuit")`` decorators;
* on a throwaway ``redis-server`` started and stopped by this script: the
  resilient breaker with ``store`` = that server, and purgatory with its Redis
  unit of work (``SyncRedisUnitOfWork`` / ``AsyncRedisUnitOfWork``), each probed
  first and skipped, with the reason, if it does not work; and, per call, the
  Redis round trips (``send_packed_command`` calls counted in redis-py, sync and
  asyncio) and the commands the server ran (``INFO commandstats``, which also
  counts the commands run inside Lua scripts).

The breakers do not judge alike (pybreaker and purgatory open after N
consecutive failures; resilient on a failure rate over a sliding window), but
on a succeeding call through a closed breaker they all do the same job: let it
through and record the success.

Then the locking question: two threads make 10 calls each, through one
breaker, to a function that sleeps 20 ms. A breaker that holds a lock across
the protected call serializes them (20 x 20 ms); one that does not lets them
overlap (10 x 20 ms). Timed for the bare function, pybreaker and the resilient
breaker (memory store).

On a VM a round trip to a redis-server on another vCPU costs a cross-CPU
wake-up, so by default the script pins itself and its redis-server to one CPU
(``--no-pin`` leaves both free). Rows are timed in interleaved rounds (every row
once per round) and the best round is kept; ns/call includes the ``for`` loop,
the same for every row. Async rows await the call N times inside one coroutine,
all on one event loop kept for the whole run (Redis asyncio clients belong to
the loop they were made on).

Run: ``.venv/bin/python benchmarks/bench_breaker.py [--quick] [--json PATH] [--no-pin]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal, TypeVar, cast

import purgatory
import pybreaker
import redis
import redis.asyncio.connection
import redis.connection

import resilient
from resilient import Pipeline
from resilient.testing import redis_server

EXPECTED = 3  # target(1, x=2)
FAIL_MAX = 5  # pybreaker fail_max, purgatory threshold
RESET_TIMEOUT = 30  # seconds: pybreaker reset_timeout, purgatory ttl
INFO_QUERIES = 1  # INFO queries counted between two snapshots: the first snapshot's own

THREADS = 2
THREAD_CALLS = 10  # per thread
THREAD_SLEEP = 0.02  # seconds, per call
PARALLEL_SLACK = 1.25  # the threads target: wall time within this factor of the parallel ideal

Kind = Literal["sync", "async"]
SyncFn = Callable[..., Any]
AsyncFn = Callable[..., Awaitable[Any]]
T = TypeVar("T")

BARE = "bare function"
RESILIENT = "resilient breaker policy"
PYBREAKER = "pybreaker: CircuitBreaker, decorated"
PURGATORY = "purgatory: CircuitBreakerFactory, decorated"

BASELINE = "baseline"
MEMORY = "memory"
REDIS = "Redis"


# ---------------------------------------------------------------------------- the functions


def target(a: int, *, x: int) -> int:
    return a + x


async def atarget(a: int, *, x: int) -> int:
    return a + x


def sleeper(a: int, *, x: int) -> int:
    time.sleep(THREAD_SLEEP)
    return a + x


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """How much to run: rounds, time per round, and the fixed call counts of Redis rows."""

    rounds: int
    round_ns: float
    warmup: int  # calls before the first round, for rows with a fixed call count
    redis_calls: int  # calls per round, Redis rows
    count_calls: int  # calls in the Redis round-trip count


FULL = Plan(rounds=7, round_ns=2.5e8, warmup=100, redis_calls=1000, count_calls=500)
QUICK = Plan(rounds=2, round_ns=2e6, warmup=20, redis_calls=50, count_calls=50)


# ---------------------------------------------------------------------------- the rows


@dataclass
class Row:
    kind: Kind
    section: str
    case: str
    fn: Callable[..., Any] = field(repr=False)
    fixed_calls: int | None = None  # calls per round when not calibrated (Redis)
    count: bool = False  # count this row's Redis round trips
    calls: int = 0
    times_ns: list[float] = field(default_factory=list)  # ns/call of each round

    @property
    def best(self) -> float:
        return min(self.times_ns)

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.section}: {self.case}"


@dataclass
class Setup:
    """The rows, the run's event loop, and what was skipped (with why)."""

    loop: asyncio.AbstractEventLoop
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    checks: list[tuple[str, Callable[[], str]]] = field(default_factory=list)  # (breaker, its state now)


def _check_policies(pipeline: Pipeline, expected: Sequence[str]) -> Pipeline:
    names = [p.name for p in pipeline.policies]
    if names != list(expected):
        raise SystemExit(f"bench setup: expected policies {list(expected)}, pipeline has {names}")
    return pipeline


def breaker_pipeline(store: str, key_prefix: str) -> Pipeline:
    """A pipeline whose only policy is the breaker (default options), keeping its state in ``store``."""
    config = {"store": store, "key_prefix": key_prefix, "disable": ["quota", "retry"], "breaker": {}}
    return _check_policies(Pipeline(env={}, config=config), ["breaker"])


def breaker_state(pipeline: Pipeline) -> Callable[[], str]:
    policy = next(iter(pipeline.policies))

    def state() -> str:
        return str(policy.status("default")["state"])  # type: ignore[attr-defined]

    return state


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(coro)


def call_once(row: Row, loop: asyncio.AbstractEventLoop) -> Any:
    if row.kind == "sync":
        return row.fn(1, x=2)

    async def once() -> Any:
        return await row.fn(1, x=2)

    return run_on(loop, once())


def probe(row: Row, loop: asyncio.AbstractEventLoop) -> str | None:
    """None if ``row`` returns the bare function's answer twice; else why not (warnings of a broken call muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            results = [call_once(row, loop), call_once(row, loop)]
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            gc.collect()  # coroutines never awaited by a broken call warn here, muted
    if results != [EXPECTED, EXPECTED]:
        return f"returned {results!r}, expected {EXPECTED}"
    return None


def memory_rows(setup: Setup, stack: contextlib.ExitStack) -> None:
    pipeline = stack.enter_context(breaker_pipeline("memory://", "bench-memory:"))
    setup.checks.append(("resilient, memory", breaker_state(pipeline)))
    pb = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=RESET_TIMEOUT)
    setup.checks.append(("pybreaker", lambda: str(pb.current_state)))
    sync_factory = purgatory.SyncCircuitBreakerFactory(default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT)
    async_factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT)
    setup.rows += [
        Row("sync", MEMORY, RESILIENT, pipeline.guard(target)),
        Row("sync", MEMORY, PYBREAKER, pb(target)),
        Row("sync", MEMORY, PURGATORY, sync_factory("bench-sync")(target)),
        Row("async", MEMORY, RESILIENT, pipeline.guard(atarget)),
        Row("async", MEMORY, PURGATORY, async_factory("bench-async")(atarget)),
    ]
    setup.skipped.append(
        f"async, {MEMORY}: pybreaker: its async support (call_async, __pybreaker_call_async) is a Tornado "
        f"gen.coroutine, none for plain asyncio (Tornado {'installed' if pybreaker.HAS_TORNADO_SUPPORT else 'not installed'})"
    )


def redis_rows(setup: Setup, stack: contextlib.ExitStack, url: str, plan: Plan) -> None:
    loop = setup.loop
    pipeline = stack.enter_context(breaker_pipeline(url, "bench-redis:"))
    stack.callback(lambda: run_on(loop, pipeline.aclose()))  # the asyncio client of this loop
    setup.checks.append(("resilient, Redis", breaker_state(pipeline)))
    n = plan.redis_calls
    candidates = [
        Row("sync", REDIS, RESILIENT, pipeline.guard(target), n),
        Row("async", REDIS, RESILIENT, pipeline.guard(atarget), n),
    ]

    sync_uow = purgatory.SyncRedisUnitOfWork(url)
    stack.callback(_close_quietly, sync_uow)
    sync_factory = purgatory.SyncCircuitBreakerFactory(
        default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT, uow=sync_uow
    )
    sync_breaker = sync_factory("bench-sync")(target)
    candidates.append(Row("sync", REDIS, PURGATORY + ", Redis unit of work", sync_breaker, n))

    async_uow = purgatory.AsyncRedisUnitOfWork(url)
    async_factory = purgatory.AsyncCircuitBreakerFactory(
        default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT, uow=async_uow
    )
    run_on(loop, async_factory.initialize())
    stack.callback(lambda: run_on(loop, _aclose(async_uow)))
    candidates.append(Row("async", REDIS, PURGATORY + ", Redis unit of work", async_factory("bench-async")(atarget), n))

    for row in candidates:
        why = probe(row, loop)
        if why is None:
            row.count = True
            setup.rows.append(row)
        else:
            if row.fn is sync_breaker and isinstance(getattr(sync_uow.contexts, "redis", None), redis.asyncio.Redis):
                why += "; its sync Redis repository holds a redis.asyncio client, whose commands return coroutines"
            setup.skipped.append(f"{row.label}: does not work ({why})")


def _close_quietly(uow: Any) -> None:
    """Close a purgatory sync Redis unit of work's client, whatever client it turned out to be."""
    client = uow.contexts.redis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = client.close()
        if asyncio.iscoroutine(result):
            result.close()  # purgatory 3's sync Redis repository holds an asyncio client


async def _aclose(uow: Any) -> None:
    await uow.contexts.redis.aclose()


def build(plan: Plan, stack: contextlib.ExitStack, loop: asyncio.AbstractEventLoop, url: str | None) -> Setup:
    setup = Setup(loop)
    setup.rows += [Row("sync", BASELINE, BARE, target), Row("async", BASELINE, BARE, atarget)]
    memory_rows(setup, stack)
    if url is not None:
        redis_rows(setup, stack, url, plan)
    return setup


# ---------------------------------------------------------------------------- timing


def time_sync(fn: SyncFn, n: int) -> int:
    """Nanoseconds for ``n`` calls of ``fn(1, x=2)``."""
    loop = repeat(None, n)
    start = time.perf_counter_ns()
    for _ in loop:
        fn(1, x=2)
    return time.perf_counter_ns() - start


async def _time_async(fn: AsyncFn, n: int) -> int:
    loop = repeat(None, n)
    start = time.perf_counter_ns()
    for _ in loop:
        await fn(1, x=2)
    return time.perf_counter_ns() - start


def measure(row: Row, n: int, loop: asyncio.AbstractEventLoop) -> int:
    """Time ``n`` calls with the garbage collector off (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        return time_sync(row.fn, n) if row.kind == "sync" else run_on(loop, _time_async(row.fn, n))
    finally:
        gc.enable()


def calibrate(row: Row, plan: Plan, loop: asyncio.AbstractEventLoop) -> int:
    """Calls per round: the fixed count after a fixed warm-up, or about ``plan.round_ns`` of calls."""
    if row.fixed_calls is not None:
        measure(row, plan.warmup, loop)
        return row.fixed_calls
    n = 100
    while True:
        elapsed = measure(row, n, loop)
        if elapsed >= plan.round_ns / 5 or n >= 50_000_000:
            return max(100, int(n * plan.round_ns / max(elapsed, 1)))
        n *= 4


def check(row: Row, loop: asyncio.AbstractEventLoop) -> None:
    """Every case must return what the bare function returns."""
    result = call_once(row, loop)
    if result != EXPECTED:
        raise SystemExit(f"bench setup: {row.label!r} returned {result!r}, expected {EXPECTED}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(rows: list[Row], plan: Plan, loop: asyncio.AbstractEventLoop) -> None:
    width = max(len(r.label) for r in rows) + 2
    for row in rows:
        check(row, loop)
        row.calls = calibrate(row, plan, loop)
        progress(f"calibrated  {row.label:<{width}} {row.calls:>10,} calls/round")
    for r in range(1, plan.rounds + 1):
        for row in rows:
            per_call = measure(row, row.calls, loop) / row.calls
            row.times_ns.append(per_call)
            progress(f"round {r}/{plan.rounds} {row.label:<{width}} {per_call:10.1f} ns/call")


# ---------------------------------------------------------------------------- Redis round trips


@contextlib.contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Count every command (or pipeline) redis-py sends, sync or asyncio, i.e. every round trip."""
    sync_cls = redis.connection.AbstractConnection
    async_cls = redis.asyncio.connection.AbstractConnection
    original = cast("Callable[..., None]", sync_cls.send_packed_command)
    aoriginal = cast("Callable[..., Coroutine[Any, Any, None]]", async_cls.send_packed_command)
    count = [0]

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)

    async def acounted(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        await aoriginal(self, command, check_health)

    sync_cls.send_packed_command = counted  # type: ignore[method-assign]
    async_cls.send_packed_command = acounted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        sync_cls.send_packed_command = original  # type: ignore[method-assign]
        async_cls.send_packed_command = aoriginal  # type: ignore[method-assign]


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    info = cast("dict[str, Any]", client.info("commandstats"))
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


@dataclass
class RoundTrips:
    row: Row
    calls: int
    round_trips: int
    commands: dict[str, int]  # server-side calls per command over the calls (INFO's own removed)

    @property
    def per_call(self) -> float:
        return self.round_trips / self.calls

    @property
    def server_per_call(self) -> float:
        return sum(self.commands.values()) / self.calls


def count_round_trips(row: Row, client: redis.Redis, n: int, loop: asyncio.AbstractEventLoop) -> RoundTrips:
    """Round trips and server commands for ``n`` calls of a (warm) Redis row."""
    before = commandstats(client)
    with counting_round_trips() as sent:
        if row.kind == "sync":
            time_sync(row.fn, n)
        else:
            run_on(loop, _time_async(row.fn, n))
    after = commandstats(client)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - INFO_QUERIES
    return RoundTrips(row, n, sent[0], {name: calls for name, calls in sorted(delta.items()) if calls})


# ---------------------------------------------------------------------------- threads


@dataclass
class Threaded:
    case: str
    wall_s: float


def threaded_wall_time(fn: SyncFn) -> float:
    """Seconds for ``THREADS`` threads to make ``THREAD_CALLS`` calls each of ``fn(1, x=2)``, started together."""
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(THREAD_CALLS):
                if fn(1, x=2) != EXPECTED:
                    raise AssertionError("wrong result")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"bench: a thread failed: {errors[0]!r}")
    return wall


def run_threads(stack: contextlib.ExitStack) -> list[Threaded]:
    pipeline = stack.enter_context(breaker_pipeline("memory://", "bench-threads:"))
    pb = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=RESET_TIMEOUT)
    cases = [(BARE, sleeper), (PYBREAKER, pb(sleeper)), (RESILIENT + ", memory", pipeline.guard(sleeper))]
    results: list[Threaded] = []
    for case, fn in cases:
        results.append(Threaded(case, threaded_wall_time(fn)))
        progress(f"threads     {case}: {results[-1].wall_s * 1e3:.1f} ms")
    return results


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], kind: Kind, section: str, case: str) -> Row | None:
    for row in rows:
        if row.kind == kind and row.section == section and row.case.startswith(case):
            return row
    return None


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| kind | store | case | calls/round | ns/call | overhead over bare (ns) | ratio vs purgatory | ratio vs pybreaker |",
        "|:-----|:------|:-----|------------:|--------:|------------------------:|-------------------:|-------------------:|",
    ]
    records: list[dict[str, Any]] = []
    for row in rows:
        bare = find(rows, row.kind, BASELINE, BARE)
        assert bare is not None
        overhead = row.best - bare.best
        ratios: dict[str, float | None] = {}
        for name, case in (("purgatory", PURGATORY), ("pybreaker", PYBREAKER)):
            ref = find(rows, row.kind, row.section, case) if row.section != BASELINE else None
            ratios[name] = row.best / ref.best if ref is not None else None
        cells = [f"{r:.2f}x" if r is not None else "" for r in ratios.values()]
        lines.append(
            f"| {row.kind} | {row.section} | {row.case} | {row.calls:,} | {row.best:,.1f} | {overhead:,.1f} | "
            f"{cells[0]} | {cells[1]} |"
        )
        records.append(
            {
                "kind": row.kind,
                "store": row.section,
                "case": row.case,
                "ns_per_call": round(row.best, 2),
                "overhead_ns": round(overhead, 2),
                "ratio_vs_purgatory": round(ratios["purgatory"], 4) if ratios["purgatory"] is not None else None,
                "ratio_vs_pybreaker": round(ratios["pybreaker"], 4) if ratios["pybreaker"] is not None else None,
                "calls_per_round": row.calls,
                "rounds_ns_per_call": [round(t, 2) for t in row.times_ns],
            }
        )
    return "\n".join(lines), records


def round_trip_table(counts: Sequence[RoundTrips]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| kind | case | calls | round trips/call (redis-py) | server commands/call (INFO commandstats) | commands per call |",
        "|:-----|:-----|------:|----------------------------:|-----------------------------------------:|:------------------|",
    ]
    records: list[dict[str, Any]] = []
    for c in counts:
        per = ", ".join(f"{name} {calls / c.calls:.3g}" for name, calls in c.commands.items())
        lines.append(
            f"| {c.row.kind} | {c.row.case} | {c.calls:,} | {c.per_call:.4f} | {c.server_per_call:.4f} | {per} |"
        )
        records.append(
            {
                "kind": c.row.kind,
                "case": c.row.case,
                "calls": c.calls,
                "round_trips": c.round_trips,
                "round_trips_per_call": round(c.per_call, 5),
                "server_commands": c.commands,
                "server_commands_per_call": round(c.server_per_call, 5),
            }
        )
    return "\n".join(lines), records


def thread_table(results: Sequence[Threaded]) -> tuple[str, list[dict[str, Any]]]:
    parallel = THREAD_CALLS * THREAD_SLEEP
    serial = THREADS * THREAD_CALLS * THREAD_SLEEP
    lines = [
        "| case | wall time (ms) | vs parallel ideal | vs serialized ideal |",
        "|:-----|---------------:|------------------:|--------------------:|",
    ]
    records: list[dict[str, Any]] = []
    for r in results:
        lines.append(f"| {r.case} | {r.wall_s * 1e3:,.1f} | {r.wall_s / parallel:.2f}x | {r.wall_s / serial:.2f}x |")
        records.append(
            {"case": r.case, "wall_s": round(r.wall_s, 5), "vs_parallel_ideal": round(r.wall_s / parallel, 4)}
        )
    return "\n".join(lines), records


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def targets(
    rows: Sequence[Row], counts: Sequence[RoundTrips], threads: Sequence[Threaded]
) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    records: list[dict[str, Any]] = []

    def record(name: str, passed: bool, ratio: float, detail: str) -> None:
        lines.append(f"{verdict(passed)}  {name}  ({detail})")
        records.append({"target": name, "passed": passed, "ratio": round(ratio, 4)})

    kinds: tuple[Kind, ...] = ("sync", "async")
    for kind in kinds:
        bare = find(rows, kind, BASELINE, BARE)
        ours = find(rows, kind, MEMORY, RESILIENT)
        theirs = find(rows, kind, MEMORY, PURGATORY)
        if bare is None or ours is None or theirs is None:
            continue
        ratio = ours.best / theirs.best
        over = (ours.best - bare.best) / max(theirs.best - bare.best, 1e-9)
        record(
            f"{kind}: resilient closed-breaker call cheaper than purgatory's (memory)",
            ours.best < theirs.best,
            ratio,
            f"{ours.best:,.1f} vs {theirs.best:,.1f} ns/call, {ratio:.2f}x per call, "
            f"{over:.2f}x in overhead over the bare function",
        )
        pyb = find(rows, kind, MEMORY, PYBREAKER)
        if pyb is not None:
            lines.append(
                f"info  {kind}, memory: resilient {ours.best:,.1f} vs pybreaker {pyb.best:,.1f} ns/call, "
                f"{ours.best / pyb.best:.2f}x"
            )
        ours_r, theirs_r = find(rows, kind, REDIS, RESILIENT), find(rows, kind, REDIS, PURGATORY)
        if ours_r is not None and theirs_r is not None:
            lines.append(
                f"info  {kind}, Redis: resilient {ours_r.best / 1e3:,.1f} vs purgatory {theirs_r.best / 1e3:,.1f} "
                f"us/call, {ours_r.best / theirs_r.best:.2f}x"
            )

    for c in counts:
        lines.append(
            f"info  {c.row.kind}, Redis, {c.row.case}: {c.per_call:.4f} round trips/call, "
            f"{c.server_per_call:.2f} server commands/call over {c.calls:,} calls"
        )

    by_case = {t.case: t for t in threads}
    parallel = THREAD_CALLS * THREAD_SLEEP
    serial = THREADS * THREAD_CALLS * THREAD_SLEEP
    pyb_t = by_case.get(PYBREAKER)
    if pyb_t is not None:
        held = pyb_t.wall_s >= 0.9 * serial
        lines.append(
            f"info  pybreaker, {THREADS} threads x {THREAD_CALLS} calls of {THREAD_SLEEP * 1e3:g} ms: "
            f"{pyb_t.wall_s * 1e3:,.1f} ms, {pyb_t.wall_s / serial:.2f}x the serialized ideal ({serial * 1e3:g} ms): "
            + ("its lock is held across the protected call" if held else "not serialized")
        )
    ours_t = by_case.get(RESILIENT + ", memory")
    if ours_t is not None:
        ratio = ours_t.wall_s / parallel
        record(
            "no lock held across the provider call (resilient breaker, threads)",
            ratio <= PARALLEL_SLACK,
            ratio,
            f"{ours_t.wall_s * 1e3:,.1f} ms for {THREADS} threads x {THREAD_CALLS} calls of {THREAD_SLEEP * 1e3:g} ms, "
            f"{ratio:.2f}x the parallel ideal ({parallel * 1e3:g} ms; serialized would be {serial * 1e3:g} ms); "
            f"target <= {PARALLEL_SLACK:g}x",
        )
    return lines, records


# ---------------------------------------------------------------------------- environment


def redis_server_version() -> str | None:
    path = shutil.which("redis-server")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else out.strip() or "unknown"


def pin_to_one_cpu(server_pid: int, stack: contextlib.ExitStack) -> int | None:
    """Pin this process and the redis-server it started to one CPU; this process is unpinned on exit."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    mine = os.sched_getaffinity(0)
    cpu = min(mine)
    os.sched_setaffinity(0, {cpu})
    stack.callback(os.sched_setaffinity, 0, mine)
    os.sched_setaffinity(server_pid, {cpu})
    return cpu


def environment() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pybreaker": importlib.metadata.version("pybreaker"),
        "purgatory": importlib.metadata.version("purgatory"),
        "redis_server": redis_server_version(),
        "redis_py": importlib.metadata.version("redis"),
        "resilient": resilient.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few calls and rounds (numbers are noisy)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin this process and redis-server to one CPU (Redis rows get noisy)",
    )
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    env = environment()
    print(
        f"Python {env['python']} | pybreaker {env['pybreaker']} | purgatory {env['purgatory']} | "
        f"redis-server {env['redis_server'] or 'not installed'} | redis-py {env['redis_py']} | "
        f"resilient {env['resilient']} | CPUs {env['cpu_count']} (usable {env['cpus_usable']}) | {env['platform']}"
    )
    print(
        f"{plan.rounds} rounds, best round kept; ~{plan.round_ns / 1e6:g} ms per calibrated row per round; "
        f"{plan.redis_calls:,} calls per Redis row per round; {plan.count_calls:,} calls per Redis round-trip count; "
        f"breakers: resilient default [breaker] options, pybreaker fail_max={FAIL_MAX} reset_timeout={RESET_TIMEOUT}, "
        f"purgatory threshold={FAIL_MAX} ttl={RESET_TIMEOUT}"
        + (" (--quick: smoke run, not meaningful numbers)" if args.quick else "")
    )

    started = time.perf_counter()
    counts: list[RoundTrips] = []
    loop = asyncio.new_event_loop()
    try:
        with contextlib.ExitStack() as stack:
            threads = run_threads(stack)
            url: str | None = None
            try:
                server = stack.enter_context(redis_server())
                url = server.url
                progress(f"redis-server started (pid {server.pid}) at {url}")
                if not args.no_pin:
                    env["pinned_cpu"] = pin_to_one_cpu(server.pid, stack)
            except (FileNotFoundError, RuntimeError) as exc:
                print(f"note: no Redis rows ({exc})")
            pinned = env.get("pinned_cpu")
            if pinned is not None:
                print(f"this process and redis-server pinned to CPU {pinned}")
            elif url is not None:
                print("not pinned: Redis rows may flip between same-CPU and cross-CPU round trips")
            setup = build(plan, stack, loop, url)
            for note in setup.skipped:
                print(f"skipped: {note}")
            print()
            run(setup.rows, plan, loop)
            for name, state in setup.checks:
                now = state()
                if now != "closed":
                    raise SystemExit(f"bench: the {name} breaker is {now!r} after the run; every call must succeed")
            if url is not None:
                client = stack.enter_context(redis.Redis.from_url(url))
                commandstats(client)  # connect first: the connection's own commands stay out of every count
                for row in setup.rows:
                    if row.count:
                        counts.append(count_round_trips(row, client, plan.count_calls, loop))
                        progress(f"counted     {row.label}: {counts[-1].per_call:.4f} round trips/call")
    finally:
        loop.close()
    progress(f"done in {time.perf_counter() - started:.1f} s")

    text, row_records = table(setup.rows)
    print(text)
    print()
    rt_records: list[dict[str, Any]] = []
    if counts:
        rt_text, rt_records = round_trip_table(counts)
        print(
            "Redis, per call: round trips counted in redis-py (send_packed_command, sync and asyncio); "
            "server commands from INFO commandstats, which also counts the commands run inside Lua scripts "
            "(the INFO query's own call removed)"
        )
        print(rt_text)
        print()
    th_text, th_records = thread_table(threads)
    print(
        f"{THREADS} threads x {THREAD_CALLS} calls, one breaker, around a function that sleeps "
        f"{THREAD_SLEEP * 1e3:g} ms: parallel ideal {THREAD_CALLS * THREAD_SLEEP * 1e3:g} ms, "
        f"serialized {THREADS * THREAD_CALLS * THREAD_SLEEP * 1e3:g} ms"
    )
    print(th_text)
    print()
    target_lines, target_records = targets(setup.rows, counts, threads)
    for line in target_lines:
        print(line)

    if args.json:
        result = {
            "environment": env,
            "quick": args.quick,
            "rounds": plan.rounds,
            "rows": row_records,
            "skipped": setup.skipped,
            "redis_round_trips": rt_records,
            "threads": th_records,
            "targets": target_records,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
