"""Per admitted call, what the quota and retry plugins cost against the libraries they stand beside.

The quota plugin counts with ``limits``, so the question is what the plugin adds
on top of calling ``limits`` yourself; the retry plugin competes with tenacity
and stamina on the path that matters most, a call that succeeds. This script
times, per call, with one positional and one keyword argument:

* quota, memory store: a guarded sync function under a pipeline whose only
  policies are quota's (``disable = ["retry"]``), against
  ``limiter.hit(item, *ids)`` of ``limits`` around the bare call, on a
  ``limits.storage.MemoryStorage()``, for the same limit and strategy
  (fixed-window, moving-window, sliding-window-counter);
* quota, Redis store: the same on a throwaway ``redis-server`` started and
  stopped by this script, plus the plugin with ``provider_signals = false``;
  and, per admitted call, the Redis round trips (``send_packed_command`` calls
  counted in redis-py) and the commands the server ran (``INFO commandstats``,
  which also counts the commands run inside ``limits``' Lua scripts);
* retry, on a call that succeeds: the retry plugin (pipeline with only retry,
  ``disable = ["quota"]``; with its default retry budget and with
  ``budget_ratio = None``) against tenacity ``@retry(stop=stop_after_attempt(3))``
  and stamina ``@stamina.retry(on=Exception, attempts=3)``, sync and async.

Every call must be admitted. A moving window stores one entry per hit, and the
memory one inserts at the head of a list (cost grows with its length), so its
rows make a fixed number of calls per round, the same for the plugin and for
``limits``, and their limit is sized to exactly the calls made; the other
quota limits are ``1000000/minute``. Redis rows also make a fixed, smaller
number of calls per round. The quota plugin re-reads the shared pause key of
a quota key at most once per ``signal_poll`` (1 s by default): that read is
part of what is measured and counted, as it is in production.

On a VM a round trip to a redis-server on another vCPU costs a cross-CPU
wake-up (about 100 us here, against about 25 us on the same CPU), and which
of the two a call gets depends on where the scheduler last put each
process, so Redis rows flip between the two from round to round. By default
the script pins itself and its redis-server to one CPU (``--no-pin`` leaves
both free); the other rows are single-threaded and are unaffected.

Rows are timed in interleaved rounds (every row once per round) and the best
round is kept; ns/call includes the ``for`` loop, the same for every row. Async
rows await the call N times inside one coroutine.

Run: ``.venv/bin/python benchmarks/bench_quota_retry.py [--quick] [--json PATH]``.
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
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal, cast

import limits
import limits.storage
import limits.strategies
import redis
import redis.connection
import stamina
import tenacity

import resilient
import resilient_quota
import resilient_retry
from resilient import Pipeline, QuotaExceeded
from resilient.testing import redis_server

EXPECTED = 3  # target(1, x=2)
BIG_LIMIT = 1_000_000  # per minute: never reached by the fixed-window and sliding-window-counter rows
INFO_QUERIES = 1  # INFO queries counted between two snapshots: the first snapshot's own
SIGNAL_POLL = 1.0  # seconds: the quota plugin's default signal_poll, left as it is here

Kind = Literal["sync", "async"]
Strategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]
STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
SyncFn = Callable[..., Any]
AsyncFn = Callable[..., Awaitable[Any]]

BARE = "bare function"
PLUGIN = "resilient quota plugin"
PLUGIN_NO_SIGNALS = "resilient quota plugin, provider_signals=false"
LIMITS = "limits direct: limiter.hit()"
RETRY = "resilient retry plugin (default budget)"
RETRY_NO_BUDGET = "resilient retry plugin, budget_ratio=None"
TENACITY = "tenacity: retry(stop_after_attempt(3))"
STAMINA = "stamina: retry(on=Exception, attempts=3)"

MEMORY = "quota, memory"
REDIS = "quota, Redis"
RETRYING = "retry"
BASELINE = "baseline"


# ---------------------------------------------------------------------------- the functions


def target(a: int, *, x: int) -> int:
    return a + x


async def atarget(a: int, *, x: int) -> int:
    return a + x


class LimitRefused(Exception):
    """The ``limits``-direct wrapper was refused: the limit was sized too small."""


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """How much to run: rounds, time per round, and the fixed call counts."""

    rounds: int
    round_ns: float
    warmup: int  # calls before the first round, for rows with a fixed call count
    moving_calls: int  # calls per round, memory moving-window rows
    redis_calls: int  # calls per round, Redis rows
    count_calls: int  # calls in the Redis round-trip count

    def moving_limit(self, calls_per_round: int, extra: int = 0) -> int:
        """Hits a fixed-count row makes in the whole run: the check, the warm-up, every round, ``extra``."""
        return 1 + self.warmup + self.rounds * calls_per_round + extra


FULL = Plan(rounds=7, round_ns=2.5e8, warmup=100, moving_calls=1300, redis_calls=1200, count_calls=1000)
QUICK = Plan(rounds=2, round_ns=2e6, warmup=20, moving_calls=100, redis_calls=50, count_calls=50)


# ---------------------------------------------------------------------------- the rows


@dataclass
class Row:
    kind: Kind
    section: str
    case: str
    fn: Callable[..., Any] = field(repr=False)
    reference: str | None = None  # the case (same section and kind) this row's ratio is against
    fixed_calls: int | None = None  # calls per round when not calibrated (state grows with hits, or Redis)
    limit: str = ""  # the configured limit, for quota rows
    strategy: Strategy | None = None
    calls: int = 0
    times_ns: list[float] = field(default_factory=list)  # ns/call of each round

    @property
    def best(self) -> float:
        return min(self.times_ns)

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.section}: {self.case}" + (f" [{self.strategy}]" if self.strategy else "")


def _check_policies(pipeline: Pipeline, expected: Sequence[str]) -> Pipeline:
    names = [p.name for p in pipeline.policies]
    if names != list(expected):
        raise SystemExit(f"bench setup: expected policies {list(expected)}, pipeline has {names}")
    return pipeline


def quota_pipeline(
    strategy: Strategy, requests: str, store: str, key_prefix: str, provider_signals: bool = True
) -> Pipeline:
    """A pipeline whose only policies are quota's, counting ``requests`` with ``strategy`` in ``store``."""
    quota: dict[str, Any] = {"requests": requests, "strategy": strategy}
    if not provider_signals:
        quota["provider_signals"] = False
    config = {"store": store, "key_prefix": key_prefix, "quota": quota}
    # Registered explicitly: other installed plugins must not change the row.
    pipeline = Pipeline(plugins=[resilient_quota], discover=False, env={}, config=config)
    return _check_policies(pipeline, ["quota", "quota_signals"])


def retry_pipeline(retry: Mapping[str, Any] | None = None) -> Pipeline:
    """A pipeline whose only policy is retry; ``retry`` is its section (a Python ``None`` is allowed)."""
    config: dict[str, Any] = {}
    if retry is not None:
        config["retry"] = dict(retry)
    pipeline = Pipeline(plugins=[resilient_retry], discover=False, env={}, config=config)
    return _check_policies(pipeline, ["retry"])


def limits_direct(fn: SyncFn, limiter: limits.strategies.RateLimiter, item: limits.RateLimitItem) -> SyncFn:
    """``fn`` behind ``limiter.hit(item, *ids)``, forwarding any arguments as a decorator must.

    The identifiers are the ones the quota plugin counts a call under, so the keys are as long.
    """
    ids = ("quota", "provider=default", "model=-", "tenant=-")

    def limited(*args: Any, **kwargs: Any) -> Any:
        if not limiter.hit(item, *ids):
            raise LimitRefused(f"limits refused {item}")
        return fn(*args, **kwargs)

    return limited


def limit_for(strategy: Strategy, plan: Plan, calls_per_round: int, extra: int = 0) -> str:
    """The request limit of a row: sized to the calls made for a moving window, else ``BIG_LIMIT``."""
    if strategy == "moving-window":
        return f"{plan.moving_limit(calls_per_round, extra)}/minute"
    return f"{BIG_LIMIT}/minute"


def quota_rows(
    section: str,
    store: str,
    plan: Plan,
    stack: contextlib.ExitStack,
    redis_url: str | None,
) -> list[Row]:
    """Plugin and ``limits``-direct rows for every strategy, on one store."""
    rows: list[Row] = []
    on_redis = redis_url is not None
    for strategy in STRATEGIES:
        if on_redis:
            fixed: int | None = plan.redis_calls
            extra = plan.count_calls
        else:
            fixed = plan.moving_calls if strategy == "moving-window" else None
            extra = 0
        requests = limit_for(strategy, plan, fixed or 0, extra)
        tag = strategy.replace("-", "")
        variants = [(PLUGIN, True)] + ([(PLUGIN_NO_SIGNALS, False)] if on_redis else [])
        for case, signals in variants:
            prefix = f"bench-{tag}-{'signals' if signals else 'nosignals'}:"
            pipeline = stack.enter_context(quota_pipeline(strategy, requests, store, prefix, signals))
            rows.append(
                Row("sync", section, case, pipeline.guard(target), LIMITS, fixed, requests, strategy),
            )
        storage: limits.storage.Storage
        if redis_url is not None:
            pool = redis.ConnectionPool.from_url(redis_url)
            stack.callback(pool.disconnect)
            storage = limits.storage.RedisStorage(redis_url, connection_pool=pool, key_prefix=f"bench-{tag}-direct")
        else:
            storage = limits.storage.MemoryStorage()
        limiter = limits.strategies.STRATEGIES[strategy](storage)
        direct = limits_direct(target, limiter, limits.parse(requests))
        rows.append(Row("sync", section, LIMITS, direct, None, fixed, requests, strategy))
    return rows


def retry_rows(stack: contextlib.ExitStack) -> list[Row]:
    default = stack.enter_context(retry_pipeline())
    no_budget = stack.enter_context(retry_pipeline({"budget_ratio": None}))
    if next(iter(no_budget.policies))._budget is not None:  # type: ignore[attr-defined]
        raise SystemExit("bench setup: budget_ratio=None did not turn the retry budget off")
    t_retry = tenacity.retry(stop=tenacity.stop_after_attempt(3))  # AsyncRetrying for coroutine functions
    s_retry = stamina.retry(on=Exception, attempts=3)
    rows: list[Row] = []
    for kind, fn in (("sync", target), ("async", atarget)):
        k: Kind = "sync" if kind == "sync" else "async"
        rows += [
            Row(k, RETRYING, RETRY, default.guard(fn), TENACITY),
            Row(k, RETRYING, RETRY_NO_BUDGET, no_budget.guard(fn), TENACITY),
            Row(k, RETRYING, TENACITY, t_retry(fn)),
            Row(k, RETRYING, STAMINA, s_retry(fn), TENACITY),
        ]
    return rows


def build_rows(plan: Plan, stack: contextlib.ExitStack, redis_url: str | None) -> list[Row]:
    rows = [Row("sync", BASELINE, BARE, target), Row("async", BASELINE, BARE, atarget)]
    rows += quota_rows(MEMORY, "memory://", plan, stack, None)
    if redis_url is not None:
        rows += quota_rows(REDIS, redis_url, plan, stack, redis_url)
    rows += retry_rows(stack)
    return rows


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


def time_async(fn: AsyncFn, n: int) -> int:
    """Nanoseconds for ``n`` awaits of ``fn(1, x=2)`` inside one coroutine."""
    return asyncio.run(_time_async(fn, n))


def measure(row: Row, n: int) -> int:
    """Time ``n`` calls with the garbage collector off (as timeit does); a refusal ends the run."""
    gc.collect()
    gc.disable()
    try:
        return time_sync(row.fn, n) if row.kind == "sync" else time_async(row.fn, n)
    except (QuotaExceeded, LimitRefused) as exc:
        raise SystemExit(f"bench: {row.label} was refused ({exc}); every call must be admitted") from exc
    finally:
        gc.enable()


def calibrate(row: Row, plan: Plan) -> int:
    """Calls per round: the fixed count after a fixed warm-up, or about ``plan.round_ns`` of calls."""
    if row.fixed_calls is not None:
        measure(row, plan.warmup)
        return row.fixed_calls
    n = 100
    while True:
        elapsed = measure(row, n)
        if elapsed >= plan.round_ns / 5 or n >= 50_000_000:
            return max(100, int(n * plan.round_ns / max(elapsed, 1)))
        n *= 4


def check(row: Row) -> None:
    """Every case must return what the bare function returns."""
    if row.kind == "sync":
        result = row.fn(1, x=2)
    else:

        async def once() -> Any:
            return await row.fn(1, x=2)

        result = asyncio.run(once())
    if result != EXPECTED:
        raise SystemExit(f"bench setup: {row.label!r} returned {result!r}, expected {EXPECTED}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(rows: list[Row], plan: Plan) -> None:
    width = max(len(r.label) for r in rows) + 2
    for row in rows:
        check(row)
        row.calls = calibrate(row, plan)
        progress(f"calibrated  {row.label:<{width}} {row.calls:>10,} calls/round")
    for r in range(1, plan.rounds + 1):
        for row in rows:
            per_call = measure(row, row.calls) / row.calls
            row.times_ns.append(per_call)
            progress(f"round {r}/{plan.rounds} {row.label:<{width}} {per_call:10.1f} ns/call")


# ---------------------------------------------------------------------------- Redis round trips


@contextlib.contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Count every command (or pipeline) redis-py sends, i.e. every round trip, while in the block."""
    cls = redis.connection.AbstractConnection
    original = cast("Callable[..., None]", cls.send_packed_command)
    count = [0]

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)

    cls.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        cls.send_packed_command = original  # type: ignore[method-assign]


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


def count_round_trips(row: Row, client: redis.Redis, n: int) -> RoundTrips:
    """Round trips and server commands for ``n`` admitted calls of a (warm) Redis row."""
    before = commandstats(client)
    try:
        with counting_round_trips() as sent:
            for _ in range(n):
                row.fn(1, x=2)
    except (QuotaExceeded, LimitRefused) as exc:
        raise SystemExit(f"bench: {row.label} was refused ({exc}); every call must be admitted") from exc
    after = commandstats(client)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - INFO_QUERIES
    return RoundTrips(row, n, sent[0], {name: calls for name, calls in sorted(delta.items()) if calls})


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], kind: Kind, section: str, case: str, strategy: Strategy | None = None) -> Row:
    for row in rows:
        if row.kind == kind and row.section == section and row.case == case and row.strategy == strategy:
            return row
    raise KeyError(f"{kind}, {section}: {case} [{strategy}]")


def reference_of(rows: Sequence[Row], row: Row) -> Row | None:
    if row.reference is None:
        return None
    return find(rows, row.kind, row.section, row.reference, row.strategy)


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| kind | section | case | strategy / limit | calls/round | ns/call | overhead over bare (ns) | ratio | against |",
        "|:-----|:--------|:-----|:-----------------|------------:|--------:|------------------------:|------:|:--------|",
    ]
    records: list[dict[str, Any]] = []
    for row in rows:
        bare = find(rows, row.kind, BASELINE, BARE)
        ref = reference_of(rows, row)
        overhead = row.best - bare.best
        ratio = row.best / ref.best if ref is not None else None
        limit = f"{row.strategy} {row.limit}" if row.strategy else ""
        lines.append(
            f"| {row.kind} | {row.section} | {row.case} | {limit} | {row.calls:,} | {row.best:,.1f} | "
            f"{overhead:,.1f} | {f'{ratio:.2f}x' if ratio is not None else ''} | {ref.case if ref else ''} |"
        )
        records.append(
            {
                "kind": row.kind,
                "section": row.section,
                "case": row.case,
                "strategy": row.strategy,
                "limit": row.limit or None,
                "ns_per_call": round(row.best, 2),
                "overhead_ns": round(overhead, 2),
                "ratio": round(ratio, 4) if ratio is not None else None,
                "against": ref.case if ref else None,
                "calls_per_round": row.calls,
                "rounds_ns_per_call": [round(t, 2) for t in row.times_ns],
            }
        )
    return "\n".join(lines), records


def round_trip_table(counts: Sequence[RoundTrips]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| case | strategy / limit | calls | round trips/call (redis-py) | server commands/call (INFO commandstats) | commands per call |",
        "|:-----|:-----------------|------:|----------------------------:|-----------------------------------------:|:------------------|",
    ]
    records: list[dict[str, Any]] = []
    for c in counts:
        per = ", ".join(f"{name} {calls / c.calls:.3g}" for name, calls in c.commands.items())
        lines.append(
            f"| {c.row.case} | {c.row.strategy} {c.row.limit} | {c.calls:,} | {c.per_call:.4f} | "
            f"{c.server_per_call:.4f} | {per} |"
        )
        records.append(
            {
                "case": c.row.case,
                "strategy": c.row.strategy,
                "limit": c.row.limit,
                "calls": c.calls,
                "round_trips": c.round_trips,
                "round_trips_per_call": round(c.per_call, 5),
                "server_commands": c.commands,
                "server_commands_per_call": round(c.server_per_call, 5),
            }
        )
    return "\n".join(lines), records


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def targets(rows: Sequence[Row], counts: Sequence[RoundTrips]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    records: list[dict[str, Any]] = []

    def record(name: str, passed: bool, ratio: float, detail: str) -> None:
        lines.append(f"{verdict(passed)}  {name}  ({detail})")
        records.append({"target": name, "passed": passed, "ratio": round(ratio, 4)})

    kinds: tuple[Kind, ...] = ("sync", "async")
    for kind in kinds:
        bare = find(rows, kind, BASELINE, BARE)
        tena = find(rows, kind, RETRYING, TENACITY)
        for case in (RETRY, RETRY_NO_BUDGET):
            row = find(rows, kind, RETRYING, case)
            ratio = row.best / tena.best
            over = (row.best - bare.best) / max(tena.best - bare.best, 1e-9)
            name = "retry plugin success path <= 1/10 of tenacity" + ("" if case == RETRY else ", budget_ratio=None")
            record(
                f"{kind}: {name}",
                ratio <= 0.1,
                ratio,
                f"{row.best:,.1f} vs {tena.best:,.1f} ns/call, {ratio:.3f}x per call, {over:.3f}x in overhead over the bare function",
            )
        stam = find(rows, kind, RETRYING, STAMINA)
        lines.append(
            f"info  {kind}: stamina {stam.best:,.1f} ns/call, {stam.best / tena.best:.2f}x tenacity; "
            f"retry plugin {find(rows, kind, RETRYING, RETRY).best / stam.best:.3f}x stamina"
        )

    sections = [MEMORY] + ([REDIS] if any(r.section == REDIS for r in rows) else [])
    for section in sections:
        store = "memory" if section == MEMORY else "Redis"
        for strategy in STRATEGIES:
            direct = find(rows, "sync", section, LIMITS, strategy)
            cases = [PLUGIN] + ([PLUGIN_NO_SIGNALS] if section == REDIS else [])
            for case in cases:
                row = find(rows, "sync", section, case, strategy)
                ratio = row.best / direct.best
                suffix = "" if case == PLUGIN else ", provider_signals=false"
                record(
                    f"quota plugin no slower than limits direct ({store}, {strategy}{suffix})",
                    row.best <= direct.best,
                    ratio,
                    f"{row.best:,.1f} vs {direct.best:,.1f} ns/call, {ratio:.3f}x, "
                    f"{row.best - direct.best:+,.1f} ns/call",
                )

    for c in counts:
        if c.row.case == LIMITS:
            continue
        limits_configured = len(limits.parse_many(c.row.limit))
        per_limit = c.per_call / limits_configured
        extra = c.round_trips - c.calls * limits_configured
        record(
            f"Redis round trips per admitted call <= 1 per configured limit ({c.row.strategy}, {c.row.case})",
            per_limit <= 1.0,
            per_limit,
            f"{c.per_call:.4f} round trips/call over {c.calls:,} calls, {limits_configured} limit; "
            f"{extra:+d} beyond one per limit (the pause-key poll: at most one GET per signal_poll=1s per key)",
        )
        steady = c.row.best / 1e9 / SIGNAL_POLL
        lines.append(
            f"info  {c.row.strategy}, {c.row.case}: in a steady stream at {1e9 / c.row.best:,.0f} calls/s, the pause "
            f"poll adds {steady:.5f} round trips per call ({1 + steady:.5f} per call in all)"
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
        "limits": importlib.metadata.version("limits"),
        "redis_server": redis_server_version(),
        "redis_py": importlib.metadata.version("redis"),
        "tenacity": importlib.metadata.version("tenacity"),
        "stamina": importlib.metadata.version("stamina"),
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
        f"Python {env['python']} | limits {env['limits']} | redis-server {env['redis_server'] or 'not installed'} | "
        f"redis-py {env['redis_py']} | tenacity {env['tenacity']} | stamina {env['stamina']} | "
        f"resilient {env['resilient']} | CPUs {env['cpu_count']} (usable {env['cpus_usable']}) | {env['platform']}"
    )
    print(
        f"{plan.rounds} rounds, best round kept; ~{plan.round_ns / 1e6:g} ms per calibrated row per round; "
        f"fixed calls per round: {plan.moving_calls:,} (memory moving window), {plan.redis_calls:,} (Redis); "
        f"{plan.count_calls:,} calls per Redis round-trip count"
        + (" (--quick: smoke run, not meaningful numbers)" if args.quick else "")
    )

    started = time.perf_counter()
    counts: list[RoundTrips] = []
    with contextlib.ExitStack() as stack:
        redis_url: str | None = None
        try:
            server = stack.enter_context(redis_server())
            redis_url = server.url
            progress(f"redis-server started (pid {server.pid}) at {redis_url}")
            if not args.no_pin:
                env["pinned_cpu"] = pin_to_one_cpu(server.pid, stack)
        except (FileNotFoundError, RuntimeError) as exc:
            print(f"note: no Redis rows ({exc})")
        pinned = env.get("pinned_cpu")
        if pinned is not None:
            print(f"this process and redis-server pinned to CPU {pinned}")
        elif redis_url is not None:
            print("not pinned: Redis rows may flip between same-CPU and cross-CPU round trips")
        print()
        rows = build_rows(plan, stack, redis_url)
        run(rows, plan)
        if redis_url is not None:
            client = stack.enter_context(redis.Redis.from_url(redis_url))
            commandstats(client)  # connect first: the connection's own commands stay out of every count
            for row in rows:
                if row.section == REDIS:
                    counts.append(count_round_trips(row, client, plan.count_calls))
                    progress(f"counted     {row.label}: {counts[-1].per_call:.4f} round trips/call")
    progress(f"done in {time.perf_counter() - started:.1f} s")

    text, row_records = table(rows)
    print(text)
    print()
    rt_records: list[dict[str, Any]] = []
    if counts:
        rt_text, rt_records = round_trip_table(counts)
        print(
            "Redis, per admitted call: round trips counted in redis-py (send_packed_command); "
            "server commands from INFO commandstats, which also counts the commands run inside Lua scripts "
            "(the INFO query's own call removed)"
        )
        print(rt_text)
        print()
    target_lines, target_records = targets(rows, counts)
    for line in target_lines:
        print(line)

    if args.json:
        result = {
            "environment": env,
            "quick": args.quick,
            "rounds": plan.rounds,
            "rows": row_records,
            "redis_round_trips": rt_records,
            "targets": target_records,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
