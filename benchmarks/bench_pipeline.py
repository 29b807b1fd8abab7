"""Per-call overhead of a resilient pipeline, against the alternatives it replaces.

resilient links its policies into a chain of plain closures once, when a
function is guarded, so a call pays no hook dispatch. This script checks that
claim by timing, per call, with one positional and one keyword argument:

* the bare function (the floor every other row is measured against);
* a hand-written chain of 6 closure steps forwarding ``*args, **kwargs`` (the cheapest
  composition that works for any function, as a decorator must);
* the same 6 steps written for the one signature (cheaper still, but not generic);
* the same 6 steps as pluggy new-style hookwrappers (``wrapper=True``, ``return (yield)``),
  i.e. what dispatching through pluggy on every call would cost (sync only: pluggy hooks are sync);
* an empty pipeline, and a pipeline of 6 no-op policies;
* for reference, the first-party ``retry`` plugin against tenacity, on a call that succeeds.

Each row is run for sync functions and for async ones; async rows await the
call N times inside one coroutine, so event-loop start-up is not counted per
call. Rows are timed in interleaved rounds (every row once per round) so slow
drift of the machine affects them alike; the best (minimum) round is kept.
ns/call includes the ``for`` loop, which is the same for every row; the
overhead column subtracts the bare function of the same kind.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

import pluggy
import tenacity

import resilient
import resilient_retry
from resilient import AsyncHandler, Handler, Pipeline, Policy, Runtime, Target

STEPS = 6
EXPECTED = 3  # target(1, x=2)

Group = Literal["sync", "async"]
SyncFn = Callable[..., Any]
AsyncFn = Callable[..., Awaitable[Any]]

BARE = "bare function"
CHAIN = f"{STEPS}-step closure chain"
FIXED = f"{STEPS}-step closure chain, fixed signature"
PLUGGY = f"pluggy: {STEPS} hookwrappers"
EMPTY = "resilient: empty pipeline"
POLICIES = f"resilient: {STEPS} no-op policies"
RETRY = "resilient: retry plugin (default)"
TENACITY = "tenacity: retry(stop_after_attempt(3))"


# ---------------------------------------------------------------------------- the functions


def target(a: int, *, x: int) -> int:
    return a + x


async def atarget(a: int, *, x: int) -> int:
    return a + x


# ---------------------------------------------------------------------------- closure chains


def closure_chain(fn: SyncFn, steps: int = STEPS) -> SyncFn:
    """``steps`` nested pass-through closures around ``fn``."""

    def link(nxt: SyncFn) -> SyncFn:
        def step(*a: Any, **kw: Any) -> Any:
            return nxt(*a, **kw)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


def async_closure_chain(fn: AsyncFn, steps: int = STEPS) -> AsyncFn:
    """``steps`` nested pass-through coroutine functions around ``fn``."""

    def link(nxt: AsyncFn) -> AsyncFn:
        async def step(*a: Any, **kw: Any) -> Any:
            return await nxt(*a, **kw)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


def fixed_closure_chain(fn: SyncFn, steps: int = STEPS) -> SyncFn:
    """``steps`` pass-through closures that know ``fn``'s exact signature (no ``*a, **kw``).

    The cheapest chain of all, but only for one signature: a generic
    decorator cannot be written this way. Reported so the comparison is honest.
    """

    def link(nxt: SyncFn) -> SyncFn:
        def step(a: int, *, x: int) -> Any:
            return nxt(a, x=x)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


def async_fixed_closure_chain(fn: AsyncFn, steps: int = STEPS) -> AsyncFn:
    """Async :func:`fixed_closure_chain`."""

    def link(nxt: AsyncFn) -> AsyncFn:
        async def step(a: int, *, x: int) -> Any:
            return await nxt(a, x=x)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


# ---------------------------------------------------------------------------- pluggy

_bench_spec = pluggy.HookspecMarker("bench")
_bench_impl = pluggy.HookimplMarker("bench")


class _BenchSpec:
    @_bench_spec(firstresult=True)
    def bench_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Make the call; the one non-wrapper implementation answers."""


class _PluggyWrapper:
    """A pass-through new-style hookwrapper: sees the arguments, returns the inner result."""

    @_bench_impl(wrapper=True)
    def bench_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return (yield)


class _PluggyCall:
    def __init__(self, fn: SyncFn) -> None:
        self.fn = fn

    @_bench_impl
    def bench_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)


def pluggy_chain(fn: SyncFn, steps: int = STEPS) -> SyncFn:
    """``fn`` called through a hook with ``steps`` hookwrappers, dispatched on every call."""
    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(_BenchSpec)
    pm.register(_PluggyCall(fn), name="call")
    for i in range(steps):
        pm.register(_PluggyWrapper(), name=f"wrapper{i}")
    hook = pm.hook.bench_call

    def via_pluggy(*args: Any, **kwargs: Any) -> Any:
        return hook(args=args, kwargs=kwargs)

    return via_pluggy


# ---------------------------------------------------------------------------- resilient


class NoOpPolicy(Policy):
    """Stays in the chain and does nothing: the cost of one policy step."""

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def h(call: resilient.Call) -> Any:
            return nxt(call)

        return h

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        # Returns nxt's awaitable as is: no coroutine per step.
        def h(call: resilient.Call) -> Awaitable[Any]:
            return nxt(call)

        return h


def noop_policy(name: str) -> Policy:
    """A NoOpPolicy with its own ``name`` (a class variable: names must be distinct)."""
    cls = type(f"NoOp_{name}", (NoOpPolicy,), {"name": name})
    policy: Policy = cls()
    return policy


class NoOpPlugin:
    """A plugin object contributing ``count`` no-op policies."""

    name = "bench-noop"

    def __init__(self, count: int) -> None:
        self.policies = tuple(noop_policy(f"noop{i}") for i in range(count))

    @resilient.hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return self.policies


def empty_pipeline() -> Pipeline:
    return Pipeline(discover=False, env={}, config={})


def noop_pipeline(steps: int = STEPS) -> Pipeline:
    return Pipeline(plugins=[NoOpPlugin(steps)], discover=False, env={}, config={})


def retry_pipeline() -> Pipeline:
    # The retry plugin with its default configuration, registered explicitly
    # (not by entry-point discovery) so other installed plugins cannot join in.
    return Pipeline(plugins=[resilient_retry], discover=False, env={}, config={})


def _check_policies(pipeline: Pipeline, expected: Sequence[str]) -> Pipeline:
    names = [p.name for p in pipeline.policies]
    if names != list(expected):
        raise SystemExit(f"bench setup: expected policies {list(expected)}, pipeline has {names}")
    return pipeline


# ---------------------------------------------------------------------------- timing


@dataclass
class Row:
    group: Group
    case: str
    fn: Callable[..., Any] = field(repr=False)
    calls: int = 0
    times_ns: list[float] = field(default_factory=list)  # ns/call of each round

    @property
    def best(self) -> float:
        return min(self.times_ns)


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
    """Time ``n`` calls with the garbage collector off (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        return time_sync(row.fn, n) if row.group == "sync" else time_async(row.fn, n)
    finally:
        gc.enable()


def calibrate(row: Row, target_ns: float) -> int:
    """Calls per round so that one round takes about ``target_ns``; doubles as warm-up."""
    n = 100
    while True:
        elapsed = measure(row, n)
        if elapsed >= target_ns / 5 or n >= 50_000_000:
            return max(100, int(n * target_ns / max(elapsed, 1)))
        n *= 4


def check(row: Row) -> None:
    """Every case must return what the bare function returns."""
    if row.group == "sync":
        result = row.fn(1, x=2)
    else:

        async def once() -> Any:
            return await row.fn(1, x=2)

        result = asyncio.run(once())
    if result != EXPECTED:
        raise SystemExit(f"bench setup: {row.group} {row.case!r} returned {result!r}, expected {EXPECTED}")


def build_rows() -> list[Row]:
    empty = _check_policies(empty_pipeline(), [])
    noop = _check_policies(noop_pipeline(), [f"noop{i}" for i in range(STEPS)])
    retry = _check_policies(retry_pipeline(), ["retry"])

    t_retry = tenacity.retry(stop=tenacity.stop_after_attempt(3))  # AsyncRetrying for coroutine functions

    return [
        Row("sync", BARE, target),
        Row("sync", CHAIN, closure_chain(target)),
        Row("sync", FIXED, fixed_closure_chain(target)),
        Row("sync", PLUGGY, pluggy_chain(target)),
        Row("sync", EMPTY, empty.guard(target)),
        Row("sync", POLICIES, noop.guard(target)),
        Row("sync", RETRY, retry.guard(target)),
        Row("sync", TENACITY, t_retry(target)),
        Row("async", BARE, atarget),
        Row("async", CHAIN, async_closure_chain(atarget)),
        Row("async", FIXED, async_fixed_closure_chain(atarget)),
        Row("async", EMPTY, empty.guard(atarget)),
        Row("async", POLICIES, noop.guard(atarget)),
        Row("async", RETRY, retry.guard(atarget)),
        Row("async", TENACITY, t_retry(atarget)),
    ]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(rows: list[Row], rounds: int, round_ns: float) -> None:
    width = max(len(r.case) for r in rows) + 6
    for row in rows:
        check(row)
        row.calls = calibrate(row, round_ns)
        progress(f"calibrated  {f'{row.group}: {row.case}':<{width}} {row.calls:>10,} calls/round")
    for r in range(1, rounds + 1):
        for row in rows:
            per_call = measure(row, row.calls) / row.calls
            row.times_ns.append(per_call)
            progress(f"round {r}/{rounds} {f'{row.group}: {row.case}':<{width}} {per_call:8.1f} ns/call")


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], group: Group, case: str) -> Row:
    for row in rows:
        if row.group == group and row.case == case:
            return row
    raise KeyError(f"{group}: {case}")


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| case | ns/call | overhead over bare (ns) | ratio vs 6-step closure chain |",
        "|:-----|--------:|------------------------:|------------------------------:|",
    ]
    records: list[dict[str, Any]] = []
    for row in rows:
        bare = find(rows, row.group, BARE)
        chain = find(rows, row.group, CHAIN)
        overhead = row.best - bare.best
        ratio = row.best / chain.best
        lines.append(f"| {row.group}: {row.case} | {row.best:,.1f} | {overhead:,.1f} | {ratio:.2f}x |")
        records.append(
            {
                "group": row.group,
                "case": row.case,
                "ns_per_call": round(row.best, 2),
                "overhead_ns": round(overhead, 2),
                "ratio_vs_chain": round(ratio, 4),
                "calls_per_round": row.calls,
                "rounds_ns_per_call": [round(t, 2) for t in row.times_ns],
            }
        )
    return "\n".join(lines), records


def targets(rows: Sequence[Row]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    records: list[dict[str, Any]] = []
    groups: tuple[Group, ...] = ("sync", "async")
    for group in groups:
        chain, empty, policies = (find(rows, group, c) for c in (CHAIN, EMPTY, POLICIES))
        checks = [
            (
                f"{STEPS} no-op policies not slower than the {STEPS}-step closure chain",
                policies,
                policies.best <= chain.best,
            ),
            (f"empty pipeline cheaper than the {STEPS}-step closure chain", empty, empty.best < chain.best),
        ]
        fixed = find(rows, group, FIXED)
        lines.append(
            f"info  {group}: {STEPS} no-op policies vs the fixed-signature closure chain: "
            f"{policies.best / fixed.best:.2f}x (a generic chain must forward any arguments; that one cannot)"
        )
        for name, row, passed in checks:
            verdict = "PASS" if passed else "FAIL"
            lines.append(
                f"{verdict}  {group}: {name}  ({row.best:,.1f} vs {chain.best:,.1f} ns/call, {row.best / chain.best:.2f}x)"
            )
            records.append({"group": group, "target": name, "passed": passed, "ratio": round(row.best / chain.best, 4)})
    return lines, records


def pluggy_ratio(rows: Sequence[Row]) -> tuple[str, dict[str, float]]:
    bare, wrappers, policies = (find(rows, "sync", c) for c in (BARE, PLUGGY, POLICIES))
    total = wrappers.best / policies.best
    overhead = (wrappers.best - bare.best) / max(policies.best - bare.best, 1e-9)
    line = (
        f"pluggy {STEPS} hookwrappers / resilient {STEPS} no-op policies (sync): "
        f"{total:.2f}x per call, {overhead:.2f}x in overhead over the bare function"
    )
    return line, {"per_call": round(total, 4), "overhead": round(overhead, 4)}


def environment() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pluggy": pluggy.__version__,
        "tenacity": importlib.metadata.version("tenacity"),
        "resilient": resilient.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few calls and rounds (numbers are noisy)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)

    rounds, round_ns = (2, 2e6) if args.quick else (7, 2.5e8)
    env = environment()
    print(
        f"Python {env['python']} | pluggy {env['pluggy']} | tenacity {env['tenacity']} | "
        f"resilient {env['resilient']} | CPUs {env['cpu_count']} (usable {env['cpus_usable']}) | {env['platform']}"
    )
    print(
        f"{rounds} rounds, best round kept; ~{round_ns / 1e6:g} ms per row per round"
        + (" (--quick: smoke run, not meaningful numbers)" if args.quick else "")
    )
    print()

    rows = build_rows()
    started = time.perf_counter()
    run(rows, rounds, round_ns)
    progress(f"done in {time.perf_counter() - started:.1f} s")

    text, row_records = table(rows)
    target_lines, target_records = targets(rows)
    ratio_line, ratio_record = pluggy_ratio(rows)
    print(text)
    print()
    for line in target_lines:
        print(line)
    print(ratio_line)

    if args.json:
        result = {
            "environment": env,
            "quick": args.quick,
            "rounds": rounds,
            "rows": row_records,
            "targets": target_records,
            "pluggy_over_policies": ratio_record,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
