"""Per call, what the metrics plugin costs on a succeeding call, against prometheus-client used by hand.

The metrics policy sits outermost on every provider call. On a call that
succeeds it reads the clock twice, counts the call and its attempt, observes
the latency, reads the usage off the response and counts four kinds of
tokens and the cost. This script times that, per call, with one positional
and one keyword argument, around a function whose answer carries an
anthropic-shaped ``usage`` (all four token kinds non-zero):

* the bare function (the floor);
* prometheus-client by hand, the best peer doing the same recording: a
  wrapper with every label child bound in advance that reads the monotonic
  clock twice, increments the calls and attempts counters, observes the
  latency histogram, increments the four token counters from
  ``response.usage`` and the cost counter (the price looked up in advance);
* prometheus-client by hand calling ``.labels(...)`` on every call, as
  application code usually does (for reference);
* the resilient ``metrics`` policy, alone in a pipeline (``disable`` every
  other plugin), each pipeline on its own ``CollectorRegistry``: with a static
  model (children bound once at guard time) and with the model read from each
  call (a dict lookup per call);

Sync and async rows; async rows await the call N times inside one coroutine.
Rows are timed in interleaved rounds (every row once per round) and the best
round is kept; ns/call includes the ``for`` loop, the same for every row.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram

import resilient
import resilient_metrics
from resilient import Pipeline
from resilient_metrics import PriceTable

if TYPE_CHECKING:  # mypy sees the package; run as a script, this file's directory is on sys.path
    from benchmarks import _harness as h
else:
    import _harness as h

MODEL = "claude-sonnet-4-5-20250929"
OTHERS = ["audit", "breaker", "bulkhead", "cache", "fallback", "quota", "retry", "routing", "timeout"]


class _Usage:
    __slots__ = ("cache_creation_input_tokens", "cache_read_input_tokens", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens = 1200
        self.output_tokens = 300
        self.cache_read_input_tokens = 5000
        self.cache_creation_input_tokens = 800


class Reply(int):
    """The answer: equal to what the bare target returns (3), with an anthropic-shaped ``usage``."""

    usage = _Usage()


REPLY = Reply(3)


def target(a: int, *, x: int) -> int:
    return REPLY if a + x == 3 else a + x


async def atarget(a: int, *, x: int) -> int:
    return REPLY if a + x == 3 else a + x


# ---------------------------------------------------------------------------- prometheus-client by hand


class HandMetrics:
    """The same families the plugin records into, declared by hand on their own registry."""

    def __init__(self) -> None:
        reg = CollectorRegistry()
        labels = ("provider", "operation", "model")
        self.calls = Counter("calls", "calls", (*labels, "outcome"), namespace="hand", registry=reg)
        self.duration = Histogram("call_duration_seconds", "latency", labels, namespace="hand", registry=reg)
        self.attempts = Counter("call_attempts", "attempts", labels, namespace="hand", registry=reg)
        self.tokens = Counter("tokens", "tokens", (*labels, "kind"), namespace="hand", registry=reg)
        self.cost = Counter("cost_usd", "cost", labels, namespace="hand", registry=reg)
        price = PriceTable({}).lookup(MODEL)
        assert price is not None
        self.price = price


def hand_bound(fn: h.SyncFn) -> h.SyncFn:
    m = HandMetrics()
    labels = ("anthropic", "messages", MODEL)
    ok, duration, attempts = m.calls.labels(*labels, "success"), m.duration.labels(*labels), m.attempts.labels(*labels)
    t_in, t_out = m.tokens.labels(*labels, "input"), m.tokens.labels(*labels, "output")
    t_read, t_write = m.tokens.labels(*labels, "cache_read"), m.tokens.labels(*labels, "cache_write")
    cost, price = m.cost.labels(*labels), m.price
    monotonic = time.monotonic

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = monotonic()
        result = fn(*args, **kwargs)
        elapsed = monotonic() - start
        ok.inc()
        duration.observe(elapsed)
        attempts.inc()
        u = result.usage
        t_in.inc(u.input_tokens)
        t_out.inc(u.output_tokens)
        t_read.inc(u.cache_read_input_tokens)
        t_write.inc(u.cache_creation_input_tokens)
        cost.inc(
            (
                u.input_tokens * price.input
                + u.output_tokens * price.output
                + u.cache_read_input_tokens * price.cache_read
                + u.cache_creation_input_tokens * price.cache_write
            )
            / 1e6
        )
        return result

    return wrapper


def ahand_bound(fn: h.AsyncFn) -> h.AsyncFn:
    m = HandMetrics()
    labels = ("anthropic", "messages", MODEL)
    ok, duration, attempts = m.calls.labels(*labels, "success"), m.duration.labels(*labels), m.attempts.labels(*labels)
    t_in, t_out = m.tokens.labels(*labels, "input"), m.tokens.labels(*labels, "output")
    t_read, t_write = m.tokens.labels(*labels, "cache_read"), m.tokens.labels(*labels, "cache_write")
    cost, price = m.cost.labels(*labels), m.price
    monotonic = time.monotonic

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = monotonic()
        result = await fn(*args, **kwargs)
        elapsed = monotonic() - start
        ok.inc()
        duration.observe(elapsed)
        attempts.inc()
        u = result.usage
        t_in.inc(u.input_tokens)
        t_out.inc(u.output_tokens)
        t_read.inc(u.cache_read_input_tokens)
        t_write.inc(u.cache_creation_input_tokens)
        cost.inc(
            (
                u.input_tokens * price.input
                + u.output_tokens * price.output
                + u.cache_read_input_tokens * price.cache_read
                + u.cache_creation_input_tokens * price.cache_write
            )
            / 1e6
        )
        return result

    return wrapper


def record_with_labels(m: HandMetrics, result: Any, elapsed: float) -> None:
    labels = ("anthropic", "messages", MODEL)
    m.calls.labels(*labels, "success").inc()
    m.duration.labels(*labels).observe(elapsed)
    m.attempts.labels(*labels).inc()
    u = result.usage
    m.tokens.labels(*labels, "input").inc(u.input_tokens)
    m.tokens.labels(*labels, "output").inc(u.output_tokens)
    m.tokens.labels(*labels, "cache_read").inc(u.cache_read_input_tokens)
    m.tokens.labels(*labels, "cache_write").inc(u.cache_creation_input_tokens)
    price = m.price
    m.cost.labels(*labels).inc(
        (
            u.input_tokens * price.input
            + u.output_tokens * price.output
            + u.cache_read_input_tokens * price.cache_read
            + u.cache_creation_input_tokens * price.cache_write
        )
        / 1e6
    )


def hand_labels(fn: h.SyncFn) -> h.SyncFn:
    m = HandMetrics()
    monotonic = time.monotonic

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = monotonic()
        result = fn(*args, **kwargs)
        record_with_labels(m, result, monotonic() - start)
        return result

    return wrapper


def ahand_labels(fn: h.AsyncFn) -> h.AsyncFn:
    m = HandMetrics()
    monotonic = time.monotonic

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = monotonic()
        result = await fn(*args, **kwargs)
        record_with_labels(m, result, monotonic() - start)
        return result

    return wrapper


# ---------------------------------------------------------------------------- resilient


def metrics_pipeline() -> Pipeline:
    with resilient_metrics.use_registry(CollectorRegistry()):
        return h.check_policies(Pipeline(env={}, config={"disable": OTHERS}), ["metrics"])


# ---------------------------------------------------------------------------- rows

BARE = "bare function"
HAND = "prometheus-client by hand, children bound"
HAND_LABELS = "prometheus-client by hand, .labels() per call"
STATIC = "resilient metrics, static model"
DYNAMIC = "resilient metrics, model per call"


@dataclass
class Row(h.Timings):
    kind: h.Kind
    case: str
    fn: Callable[..., Any]

    @property
    def label(self) -> str:
        return f"{self.kind:<5} {self.case}"


def build_rows() -> list[Row]:
    rows: list[Row] = []
    cases: list[tuple[h.Kind, Callable[..., Any], Callable[[Any], Any], Callable[[Any], Any]]] = [
        ("sync", target, hand_bound, hand_labels),
        ("async", atarget, ahand_bound, ahand_labels),
    ]
    for k, fn, hand, labels in cases:
        rows += [
            Row(k, BARE, fn),
            Row(k, HAND, hand(fn)),
            Row(k, HAND_LABELS, labels(fn)),
            Row(k, STATIC, metrics_pipeline().guard(provider="anthropic", operation="messages", model=MODEL)(fn)),
            Row(k, DYNAMIC, metrics_pipeline().guard(provider="anthropic", operation="messages")(fn)),
        ]
    return rows


def find(rows: Sequence[Row], kind: str, case: str) -> Row:
    return next(r for r in rows if r.kind == kind and r.case == case)


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    cells, records = [], []
    for row in rows:
        bare = find(rows, row.kind, BARE).best
        hand = find(rows, row.kind, HAND).best
        over = row.best - bare
        hand_over = hand - bare
        cells.append(
            [
                row.kind,
                row.case,
                f"{row.best:,.1f}",
                f"{over:,.1f}",
                f"{row.best / hand:.2f}x",
                f"{over / hand_over:.2f}x" if row.case != BARE else "",
            ]
        )
        records.append(
            {
                "kind": row.kind,
                "case": row.case,
                "ns_per_call": round(row.best, 2),
                "overhead_ns": round(over, 2),
                "vs_hand_bound": round(row.best / hand, 4),
                **row.rounds_record(),
            }
        )
    columns = ["kind", "case", "ns/call>", "overhead ns>", "x hand (per call)>", "x hand (overhead)>"]
    return h.markdown_table(columns, cells), records


# The policy does more than the hand-written wrapper: it reads usage by duck typing into a Usage
# (about 2.5 us of the difference: any provider's shape, objects or dicts), makes the Call, keeps the
# outcome and notes call.metadata["cost_usd"]. Measured 1.6x to 1.9x on a shared 2-vCPU VM; the target
# leaves room for that noise.
TARGET_OVERHEAD = 2.5


def targets(rows: Sequence[Row]) -> tuple[list[str], list[dict[str, Any]]]:
    out = h.Targets()
    for kind in ("sync", "async"):
        bare = find(rows, kind, BARE).best
        hand = find(rows, kind, HAND).best - bare
        for case in (STATIC, DYNAMIC):
            ours = find(rows, kind, case).best - bare
            ratio = ours / hand
            out.record(
                f"{kind}: {case} overhead <= {TARGET_OVERHEAD:g}x prometheus-client by hand",
                ratio <= TARGET_OVERHEAD,
                ratio,
                f"{ours:,.1f} vs {hand:,.1f} ns/call of overhead, {ratio:.2f}x",
            )
        labels = find(rows, kind, HAND_LABELS).best - bare
        static = find(rows, kind, STATIC).best - bare
        out.lines.append(
            f"info  {kind}: the policy's overhead is {static / labels:.2f}x that of hand-written code "
            f"calling .labels() per call ({static:,.1f} vs {labels:,.1f} ns)"
        )
    return out.lines, out.records


@dataclass(frozen=True)
class Plan:
    rounds: int
    round_ns: float


FULL = Plan(rounds=7, round_ns=2e8)
QUICK = Plan(rounds=2, round_ns=2e6)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    plan = QUICK if args.quick else FULL
    env = h.environment(
        {
            "prometheus_client": importlib.metadata.version("prometheus_client"),
            "resilient": resilient.__version__,
        }
    )
    print(h.environment_line(env))
    print(h.rounds_line(plan.rounds, plan.round_ns, args.quick, "row per round"))
    h.EXPECTED = 3
    rows = build_rows()
    started = time.perf_counter()
    loop = asyncio.new_event_loop()
    try:
        h.run(rows, plan.rounds, plan.round_ns, loop=loop)
    finally:
        loop.close()
    h.progress(f"done in {time.perf_counter() - started:.1f} s")
    text, records = table(rows)
    print()
    print(text)
    print()
    lines, target_records = targets(rows)
    print("\n".join(lines))
    h.write_json(
        args.json,
        {
            "environment": env,
            "plan": {"rounds": plan.rounds, "round_ns": plan.round_ns, "quick": args.quick},
            "rows": records,
            "targets": target_records,
            "prometheus_client_multiprocess": prometheus_client.values.ValueClass.__name__,
        },
    )
    return 0 if all(r["passed"] for r in target_records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
