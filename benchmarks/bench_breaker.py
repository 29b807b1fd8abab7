"""Per call, what a CLOSED circuit breaker costs on a call that succeeds, against pybreaker and purgatory.

A breaker sits in front of every provider call, and almost every call finds it
closed and succeeds: that path is what this script times, per call, with one
positional and one keyword argument:

* the bare function (the floor every other row is measured against);
* the resilient ``breaker`` policy: a pipeline whose only policy is the breaker
  (``disable = ["metrics", "quota", "retry"]``, default ``[breaker]`` options: a count
  window of 20 calls, judged from 10), on the memory store; and the same with a
  60-second time window, where every success is recorded (under the breaker's
  lock, with a clock read), as a count window does only while it fills or
  holds a failure: the fast path skips that bookkeeping for a window of
  successes;
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

import asyncio
import contextlib
import gc
import importlib.metadata
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import purgatory
import pybreaker
import redis
import redis.asyncio

import resilient
from resilient import Pipeline

if TYPE_CHECKING:  # mypy sees the package; run as a script, this file's directory is on sys.path
    from benchmarks import _harness as h
else:
    import _harness as h

FAIL_MAX = 5  # pybreaker fail_max, purgatory threshold
RESET_TIMEOUT = 30  # seconds: pybreaker reset_timeout, purgatory ttl

THREADS = 2
THREAD_CALLS = 10  # per thread
THREAD_SLEEP = 0.02  # seconds, per call
PARALLEL_SLACK = 1.25  # the threads target: wall time within this factor of the parallel ideal


RoundTrips = h.RoundTrips["Row"]

BARE = "bare function"
RESILIENT = "resilient breaker policy"
RESILIENT_TIME = "resilient breaker, 60 s time window"
PYBREAKER = "pybreaker: CircuitBreaker, decorated"
PURGATORY = "purgatory: CircuitBreakerFactory, decorated"

BASELINE = "baseline"
MEMORY = "memory"
REDIS = "Redis"


# ---------------------------------------------------------------------------- the functions


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
class Row(h.Timings):
    kind: h.Kind
    section: str
    case: str
    fn: Callable[..., Any] = field(repr=False)
    count: bool = False  # count this row's Redis round trips

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


def breaker_pipeline(store: str, key_prefix: str, **breaker: Any) -> Pipeline:
    """A pipeline whose only policy is the breaker (default options unless given), keeping its state in ``store``."""
    config = {"store": store, "key_prefix": key_prefix, "disable": ["metrics", "quota", "retry"], "breaker": breaker}
    return h.check_policies(Pipeline(env={}, config=config), ["breaker"])


def breaker_state(pipeline: Pipeline) -> Callable[[], str]:
    policy = next(iter(pipeline.policies))

    def state() -> str:
        return str(policy.status("default")["state"])  # type: ignore[attr-defined]

    return state


def probe(row: Row, loop: asyncio.AbstractEventLoop) -> str | None:
    """None if ``row`` returns the bare function's answer twice; else why not (warnings of a broken call muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            results = [h.call_once(row, loop), h.call_once(row, loop)]
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            gc.collect()  # coroutines never awaited by a broken call warn here, muted
    if results != [h.EXPECTED, h.EXPECTED]:
        return f"returned {results!r}, expected {h.EXPECTED}"
    return None


def memory_rows(setup: Setup, stack: contextlib.ExitStack) -> None:
    pipeline = stack.enter_context(breaker_pipeline("memory://", "bench-memory:"))
    setup.checks.append(("resilient, memory", breaker_state(pipeline)))
    # A time window records every success (under the lock, with the clock): the path a count
    # window takes only while it holds a failure or fills.
    timed = stack.enter_context(breaker_pipeline("memory://", "bench-time:", window_type="time", window_size=60))
    pb = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=RESET_TIMEOUT)
    setup.checks.append(("pybreaker", lambda: str(pb.current_state)))
    sync_factory = purgatory.SyncCircuitBreakerFactory(default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT)
    async_factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT)
    setup.rows += [
        Row("sync", MEMORY, RESILIENT, pipeline.guard(h.target)),
        Row("sync", MEMORY, RESILIENT_TIME, timed.guard(h.target)),
        Row("sync", MEMORY, PYBREAKER, pb(h.target)),
        Row("sync", MEMORY, PURGATORY, sync_factory("bench-sync")(h.target)),
        Row("async", MEMORY, RESILIENT, pipeline.guard(h.atarget)),
        Row("async", MEMORY, RESILIENT_TIME, timed.guard(h.atarget)),
        Row("async", MEMORY, PURGATORY, async_factory("bench-async")(h.atarget)),
    ]
    setup.skipped.append(
        f"async, {MEMORY}: pybreaker: its async support (call_async, __pybreaker_call_async) is a Tornado "
        f"gen.coroutine, none for plain asyncio (Tornado {'installed' if pybreaker.HAS_TORNADO_SUPPORT else 'not installed'})"
    )


def redis_rows(setup: Setup, stack: contextlib.ExitStack, url: str, plan: Plan) -> None:
    loop = setup.loop
    pipeline = stack.enter_context(breaker_pipeline(url, "bench-redis:"))
    stack.callback(lambda: h.run_coro(pipeline.aclose(), loop))  # the asyncio client of this loop
    setup.checks.append(("resilient, Redis", breaker_state(pipeline)))
    n = plan.redis_calls
    candidates = [
        Row("sync", REDIS, RESILIENT, pipeline.guard(h.target), fixed_calls=n),
        Row("async", REDIS, RESILIENT, pipeline.guard(h.atarget), fixed_calls=n),
    ]

    sync_uow = purgatory.SyncRedisUnitOfWork(url)
    stack.callback(_close_quietly, sync_uow)
    sync_factory = purgatory.SyncCircuitBreakerFactory(
        default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT, uow=sync_uow
    )
    sync_breaker = sync_factory("bench-sync")(h.target)
    candidates.append(Row("sync", REDIS, PURGATORY + ", Redis unit of work", sync_breaker, fixed_calls=n))

    async_uow = purgatory.AsyncRedisUnitOfWork(url)
    async_factory = purgatory.AsyncCircuitBreakerFactory(
        default_threshold=FAIL_MAX, default_ttl=RESET_TIMEOUT, uow=async_uow
    )
    h.run_coro(async_factory.initialize(), loop)
    stack.callback(lambda: h.run_coro(_aclose(async_uow), loop))
    candidates.append(
        Row("async", REDIS, PURGATORY + ", Redis unit of work", async_factory("bench-async")(h.atarget), fixed_calls=n)
    )

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
    setup.rows += [Row("sync", BASELINE, BARE, h.target), Row("async", BASELINE, BARE, h.atarget)]
    memory_rows(setup, stack)
    if url is not None:
        redis_rows(setup, stack, url, plan)
    return setup


# ---------------------------------------------------------------------------- threads


@dataclass
class Threaded:
    case: str
    wall_s: float


def threaded_wall_time(fn: h.SyncFn) -> float:
    """Seconds for ``THREADS`` threads to make ``THREAD_CALLS`` calls each of ``fn(1, x=2)``, started together."""
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(THREAD_CALLS):
                if fn(1, x=2) != h.EXPECTED:
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
        h.progress(f"threads     {case}: {results[-1].wall_s * 1e3:.1f} ms")
    return results


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], kind: h.Kind, section: str, case: str) -> Row | None:
    for row in rows:
        if row.kind == kind and row.section == section and row.case.startswith(case):
            return row
    return None


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    cells: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for row in rows:
        bare = find(rows, row.kind, BASELINE, BARE)
        assert bare is not None
        overhead = row.best - bare.best
        ratios: dict[str, float | None] = {}
        for name, case in (("purgatory", PURGATORY), ("pybreaker", PYBREAKER)):
            ref = find(rows, row.kind, row.section, case) if row.section != BASELINE else None
            ratios[name] = row.best / ref.best if ref is not None else None
        ratio_cells = [f"{r:.2f}x" if r is not None else "" for r in ratios.values()]
        cells.append(
            [row.kind, row.section, row.case, f"{row.calls:,}", f"{row.best:,.1f}", f"{overhead:,.1f}", *ratio_cells]
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
                **row.rounds_record(),
            }
        )
    columns = ["kind", "store", "case", "calls/round>", "ns/call>", "overhead over bare (ns)>"]
    columns += ["ratio vs purgatory>", "ratio vs pybreaker>"]
    return h.markdown_table(columns, cells), records


def round_trip_table(counts: Sequence[RoundTrips]) -> tuple[str, list[dict[str, Any]]]:
    columns = [
        "kind",
        "case",
        "calls>",
        "round trips/call (redis-py)>",
        "server commands/call (INFO commandstats)>",
        "commands per call",
    ]
    cells = [
        [
            c.row.kind,
            c.row.case,
            f"{c.calls:,}",
            f"{c.per_call:.4f}",
            f"{c.server_per_call:.4f}",
            c.commands_per_call(),
        ]
        for c in counts
    ]
    records = [{"kind": c.row.kind, "case": c.row.case, **c.record()} for c in counts]
    return h.markdown_table(columns, cells), records


def thread_table(results: Sequence[Threaded]) -> tuple[str, list[dict[str, Any]]]:
    parallel = THREAD_CALLS * THREAD_SLEEP
    serial = THREADS * THREAD_CALLS * THREAD_SLEEP
    cells = [
        [r.case, f"{r.wall_s * 1e3:,.1f}", f"{r.wall_s / parallel:.2f}x", f"{r.wall_s / serial:.2f}x"] for r in results
    ]
    records = [
        {"case": r.case, "wall_s": round(r.wall_s, 5), "vs_parallel_ideal": round(r.wall_s / parallel, 4)}
        for r in results
    ]
    columns = ["case", "wall time (ms)>", "vs parallel ideal>", "vs serialized ideal>"]
    return h.markdown_table(columns, cells), records


def targets(
    rows: Sequence[Row], counts: Sequence[RoundTrips], threads: Sequence[Threaded]
) -> tuple[list[str], list[dict[str, Any]]]:
    out = h.Targets()
    lines, record = out.lines, out.record
    kinds: tuple[h.Kind, ...] = ("sync", "async")
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
    return out.lines, out.records


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, pin=True)

    plan = QUICK if args.quick else FULL
    env = h.environment(
        {
            "pybreaker": importlib.metadata.version("pybreaker"),
            "purgatory": importlib.metadata.version("purgatory"),
            "redis_server": h.redis_server_version(),
            "redis_py": importlib.metadata.version("redis"),
            "resilient": resilient.__version__,
        }
    )
    print(h.environment_line(env))
    print(
        h.rounds_line(
            plan.rounds,
            plan.round_ns,
            args.quick,
            f"calibrated row per round; {plan.redis_calls:,} calls per Redis row per round; "
            f"{plan.count_calls:,} calls per Redis round-trip count; breakers: resilient default [breaker] options, "
            f"pybreaker fail_max={FAIL_MAX} reset_timeout={RESET_TIMEOUT}, purgatory threshold={FAIL_MAX} "
            f"ttl={RESET_TIMEOUT}",
        )
    )

    started = time.perf_counter()
    counts: list[RoundTrips] = []
    loop = asyncio.new_event_loop()
    try:
        with contextlib.ExitStack() as stack:
            threads = run_threads(stack)
            url = h.start_redis(stack, env, pin=not args.no_pin)
            setup = build(plan, stack, loop, url)
            for note in setup.skipped:
                print(f"skipped: {note}")
            print()
            h.run(setup.rows, plan.rounds, plan.round_ns, warmup=plan.warmup, loop=loop)
            for name, state in setup.checks:
                now = state()
                if now != "closed":
                    raise SystemExit(f"bench: the {name} breaker is {now!r} after the run; every call must succeed")
            if url is not None:
                counted = [row for row in setup.rows if row.count]
                counts = h.count_all(counted, stack, url, plan.count_calls, loop)
    finally:
        loop.close()
    h.progress(f"done in {time.perf_counter() - started:.1f} s")

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

    h.write_json(
        args.json,
        {
            "environment": env,
            "quick": args.quick,
            "rounds": plan.rounds,
            "rows": row_records,
            "skipped": setup.skipped,
            "redis_round_trips": rt_records,
            "threads": th_records,
            "targets": target_records,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
