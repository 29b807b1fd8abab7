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

import importlib.metadata
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy
import tenacity

import resilient
import resilient_retry
from resilient import AsyncHandler, Handler, Pipeline, Policy, Runtime, Target

if TYPE_CHECKING:  # mypy sees the package; run as a script, this file's directory is on sys.path
    from benchmarks import _harness as h
else:
    import _harness as h

STEPS = 6

BARE = "bare function"
CHAIN = f"{STEPS}-step closure chain"
FIXED = f"{STEPS}-step closure chain, fixed signature"
PLUGGY = f"pluggy: {STEPS} hookwrappers"
EMPTY = "resilient: empty pipeline"
POLICIES = f"resilient: {STEPS} no-op policies"
RETRY = "resilient: retry plugin (default)"
TENACITY = "tenacity: retry(stop_after_attempt(3))"


# ---------------------------------------------------------------------------- closure chains


def closure_chain(fn: h.SyncFn, steps: int = STEPS) -> h.SyncFn:
    """``steps`` nested pass-through closures around ``fn``."""

    def link(nxt: h.SyncFn) -> h.SyncFn:
        def step(*a: Any, **kw: Any) -> Any:
            return nxt(*a, **kw)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


def async_closure_chain(fn: h.AsyncFn, steps: int = STEPS) -> h.AsyncFn:
    """``steps`` nested pass-through coroutine functions around ``fn``."""

    def link(nxt: h.AsyncFn) -> h.AsyncFn:
        async def step(*a: Any, **kw: Any) -> Any:
            return await nxt(*a, **kw)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


def fixed_closure_chain(fn: h.SyncFn, steps: int = STEPS) -> h.SyncFn:
    """``steps`` pass-through closures that know ``fn``'s exact signature (no ``*a, **kw``).

    The cheapest chain of all, but only for one signature: a generic
    decorator cannot be written this way. Reported so the comparison is honest.
    """

    def link(nxt: h.SyncFn) -> h.SyncFn:
        def step(a: int, *, x: int) -> Any:
            return nxt(a, x=x)

        return step

    chained = fn
    for _ in range(steps):
        chained = link(chained)
    return chained


def async_fixed_closure_chain(fn: h.AsyncFn, steps: int = STEPS) -> h.AsyncFn:
    """Async :func:`fixed_closure_chain`."""

    def link(nxt: h.AsyncFn) -> h.AsyncFn:
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
    def __init__(self, fn: h.SyncFn) -> None:
        self.fn = fn

    @_bench_impl
    def bench_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)


def pluggy_chain(fn: h.SyncFn, steps: int = STEPS) -> h.SyncFn:
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


# ---------------------------------------------------------------------------- timing


@dataclass
class Row(h.Timings):
    kind: h.Kind
    case: str
    fn: Callable[..., Any] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.kind}: {self.case}"

    def describe(self) -> str:
        return f"{self.kind} {self.case!r}"


def build_rows() -> list[Row]:
    empty = h.check_policies(empty_pipeline(), [])
    noop = h.check_policies(noop_pipeline(), [f"noop{i}" for i in range(STEPS)])
    retry = h.check_policies(retry_pipeline(), ["retry"])

    t_retry = tenacity.retry(stop=tenacity.stop_after_attempt(3))  # AsyncRetrying for coroutine functions

    return [
        Row("sync", BARE, h.target),
        Row("sync", CHAIN, closure_chain(h.target)),
        Row("sync", FIXED, fixed_closure_chain(h.target)),
        Row("sync", PLUGGY, pluggy_chain(h.target)),
        Row("sync", EMPTY, empty.guard(h.target)),
        Row("sync", POLICIES, noop.guard(h.target)),
        Row("sync", RETRY, retry.guard(h.target)),
        Row("sync", TENACITY, t_retry(h.target)),
        Row("async", BARE, h.atarget),
        Row("async", CHAIN, async_closure_chain(h.atarget)),
        Row("async", FIXED, async_fixed_closure_chain(h.atarget)),
        Row("async", EMPTY, empty.guard(h.atarget)),
        Row("async", POLICIES, noop.guard(h.atarget)),
        Row("async", RETRY, retry.guard(h.atarget)),
        Row("async", TENACITY, t_retry(h.atarget)),
    ]


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], kind: h.Kind, case: str) -> Row:
    for row in rows:
        if row.kind == kind and row.case == case:
            return row
    raise KeyError(f"{kind}: {case}")


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    cells: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for row in rows:
        bare = find(rows, row.kind, BARE)
        chain = find(rows, row.kind, CHAIN)
        overhead = row.best - bare.best
        ratio = row.best / chain.best
        cells.append([row.label, f"{row.best:,.1f}", f"{overhead:,.1f}", f"{ratio:.2f}x"])
        records.append(
            {
                "group": row.kind,
                "case": row.case,
                "ns_per_call": round(row.best, 2),
                "overhead_ns": round(overhead, 2),
                "ratio_vs_chain": round(ratio, 4),
                **row.rounds_record(),
            }
        )
    columns = ["case", "ns/call>", "overhead over bare (ns)>", f"ratio vs {STEPS}-step closure chain>"]
    return h.markdown_table(columns, cells), records


def targets(rows: Sequence[Row]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    records: list[dict[str, Any]] = []
    kinds: tuple[h.Kind, ...] = ("sync", "async")
    for kind in kinds:
        chain, empty, policies = (find(rows, kind, c) for c in (CHAIN, EMPTY, POLICIES))
        checks = [
            (
                f"{STEPS} no-op policies not slower than the {STEPS}-step closure chain",
                policies,
                policies.best <= chain.best,
            ),
            (f"empty pipeline cheaper than the {STEPS}-step closure chain", empty, empty.best < chain.best),
        ]
        fixed = find(rows, kind, FIXED)
        lines.append(
            f"info  {kind}: {STEPS} no-op policies vs the fixed-signature closure chain: "
            f"{policies.best / fixed.best:.2f}x (a generic chain must forward any arguments; that one cannot)"
        )
        for name, row, passed in checks:
            lines.append(
                f"{h.verdict(passed)}  {kind}: {name}  ({row.best:,.1f} vs {chain.best:,.1f} ns/call, {row.best / chain.best:.2f}x)"
            )
            records.append({"group": kind, "target": name, "passed": passed, "ratio": round(row.best / chain.best, 4)})
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


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)

    rounds, round_ns = (2, 2e6) if args.quick else (7, 2.5e8)
    env = h.environment(
        {
            "pluggy": pluggy.__version__,
            "tenacity": importlib.metadata.version("tenacity"),
            "resilient": resilient.__version__,
        }
    )
    print(h.environment_line(env))
    print(h.rounds_line(rounds, round_ns, args.quick, "row per round"))
    print()

    rows = build_rows()
    started = time.perf_counter()
    h.run(rows, rounds, round_ns, width=max(len(r.case) for r in rows) + 6, ns_width=8)
    h.progress(f"done in {time.perf_counter() - started:.1f} s")

    text, row_records = table(rows)
    target_lines, target_records = targets(rows)
    ratio_line, ratio_record = pluggy_ratio(rows)
    print(text)
    print()
    for line in target_lines:
        print(line)
    print(ratio_line)

    h.write_json(
        args.json,
        {
            "environment": env,
            "quick": args.quick,
            "rounds": rounds,
            "rows": row_records,
            "targets": target_records,
            "pluggy_over_policies": ratio_record,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
