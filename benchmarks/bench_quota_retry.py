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
quota limits are ``1000000000/minute`` (a memory fixed window admits
over a million calls a minute here). Redis rows also make a fixed, smaller
number of calls per round. The quota plugin re-reads the shared pause key of
a quota key at most once per ``signal_poll`` (1 s by default): that read is
part of what is measured and counted, as it is in production (on Redis it
goes in the round trip of the limits). A second Redis section configures two
limits on the key (per minute and per day): ``limits`` direct hits them one
after the other; the plugin checks them together, in one round trip.

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

import contextlib
import importlib.metadata
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import limits
import limits.storage
import limits.strategies
import redis
import stamina
import tenacity

import resilient
import resilient_quota
import resilient_retry
from resilient import Pipeline, QuotaExceeded

if TYPE_CHECKING:  # mypy sees the package; run as a script, this file's directory is on sys.path
    from benchmarks import _harness as h
else:
    import _harness as h

BIG_LIMIT = 1_000_000_000  # per minute: never reached by the fixed-window and sliding-window-counter rows

Strategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]
STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")

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
REDIS_TWO = "quota, Redis, 2 limits"  # a limit per minute and per day on the same key
RETRYING = "retry"
BASELINE = "baseline"


# ---------------------------------------------------------------------------- the functions


class LimitRefused(Exception):
    """The ``limits``-direct wrapper was refused: the limit was sized too small."""


REFUSED = (QuotaExceeded, LimitRefused)  # a refusal ends the run: every call must be admitted
RoundTrips = h.RoundTrips["Row"]


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
class Row(h.Timings):
    kind: h.Kind
    section: str
    case: str
    fn: Callable[..., Any] = field(repr=False)
    reference: str | None = None  # the case (same section and kind) this row's ratio is against
    limit: str = ""  # the configured limit, for quota rows
    strategy: Strategy | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.section}: {self.case}" + (f" [{self.strategy}]" if self.strategy else "")


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
    return h.check_policies(pipeline, ["quota", "quota_signals"] if provider_signals else ["quota"])


def retry_pipeline(retry: Mapping[str, Any] | None = None) -> Pipeline:
    """A pipeline whose only policy is retry; ``retry`` is its section (a Python ``None`` is allowed)."""
    config: dict[str, Any] = {}
    if retry is not None:
        config["retry"] = dict(retry)
    pipeline = Pipeline(plugins=[resilient_retry], discover=False, env={}, config=config)
    return h.check_policies(pipeline, ["retry"])


def limits_direct(fn: h.SyncFn, limiter: limits.strategies.RateLimiter, *items: limits.RateLimitItem) -> h.SyncFn:
    """``fn`` behind ``limiter.hit(item, *ids)`` for each item in turn, forwarding any arguments as a decorator must.

    The identifiers are the ones the quota plugin counts a call under, so the keys are as long.
    """
    ids = ("quota", "provider=default", "model=-", "tenant=-")

    def limited(*args: Any, **kwargs: Any) -> Any:
        for item in items:
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
        if section == REDIS_TWO:
            requests = f"{requests};{requests.replace('minute', 'day')}"
        tag = strategy.replace("-", "") + ("2" if section == REDIS_TWO else "")
        variants = [(PLUGIN, True)] + ([(PLUGIN_NO_SIGNALS, False)] if section == REDIS else [])
        for case, signals in variants:
            prefix = f"bench-{tag}-{'signals' if signals else 'nosignals'}:"
            pipeline = stack.enter_context(quota_pipeline(strategy, requests, store, prefix, signals))
            rows.append(
                Row("sync", section, case, pipeline.guard(h.target), LIMITS, requests, strategy, fixed_calls=fixed),
            )
        storage: limits.storage.Storage
        if redis_url is not None:
            pool = redis.ConnectionPool.from_url(redis_url)
            stack.callback(pool.disconnect)
            storage = limits.storage.RedisStorage(redis_url, connection_pool=pool, key_prefix=f"bench-{tag}-direct")
        else:
            storage = limits.storage.MemoryStorage()
        limiter = limits.strategies.STRATEGIES[strategy](storage)
        direct = limits_direct(h.target, limiter, *limits.parse_many(requests))
        rows.append(Row("sync", section, LIMITS, direct, None, requests, strategy, fixed_calls=fixed))
    return rows


def retry_rows(stack: contextlib.ExitStack) -> list[Row]:
    default = stack.enter_context(retry_pipeline())
    no_budget = stack.enter_context(retry_pipeline({"budget_ratio": None}))
    if next(iter(no_budget.policies))._budget is not None:  # type: ignore[attr-defined]
        raise SystemExit("bench setup: budget_ratio=None did not turn the retry budget off")
    t_retry = tenacity.retry(stop=tenacity.stop_after_attempt(3))  # AsyncRetrying for coroutine functions
    s_retry = stamina.retry(on=Exception, attempts=3)
    rows: list[Row] = []
    for kind, fn in (("sync", h.target), ("async", h.atarget)):
        k: h.Kind = "sync" if kind == "sync" else "async"
        rows += [
            Row(k, RETRYING, RETRY, default.guard(fn), TENACITY),
            Row(k, RETRYING, RETRY_NO_BUDGET, no_budget.guard(fn), TENACITY),
            Row(k, RETRYING, TENACITY, t_retry(fn)),
            Row(k, RETRYING, STAMINA, s_retry(fn), TENACITY),
        ]
    return rows


def build_rows(plan: Plan, stack: contextlib.ExitStack, redis_url: str | None) -> list[Row]:
    rows = [Row("sync", BASELINE, BARE, h.target), Row("async", BASELINE, BARE, h.atarget)]
    rows += quota_rows(MEMORY, "memory://", plan, stack, None)
    if redis_url is not None:
        rows += quota_rows(REDIS, redis_url, plan, stack, redis_url)
        rows += quota_rows(REDIS_TWO, redis_url, plan, stack, redis_url)
    rows += retry_rows(stack)
    return rows


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], kind: h.Kind, section: str, case: str, strategy: Strategy | None = None) -> Row:
    for row in rows:
        if row.kind == kind and row.section == section and row.case == case and row.strategy == strategy:
            return row
    raise KeyError(f"{kind}, {section}: {case} [{strategy}]")


def reference_of(rows: Sequence[Row], row: Row) -> Row | None:
    if row.reference is None:
        return None
    return find(rows, row.kind, row.section, row.reference, row.strategy)


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    cells: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for row in rows:
        bare = find(rows, row.kind, BASELINE, BARE)
        ref = reference_of(rows, row)
        overhead = row.best - bare.best
        ratio = row.best / ref.best if ref is not None else None
        limit = f"{row.strategy} {row.limit}" if row.strategy else ""
        cells.append(
            [
                row.kind,
                row.section,
                row.case,
                limit,
                f"{row.calls:,}",
                f"{row.best:,.1f}",
                f"{overhead:,.1f}",
                f"{ratio:.2f}x" if ratio is not None else "",
                ref.case if ref else "",
            ]
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
                **row.rounds_record(),
            }
        )
    columns = ["kind", "section", "case", "strategy / limit", "calls/round>", "ns/call>"]
    columns += ["overhead over bare (ns)>", "ratio>", "against"]
    return h.markdown_table(columns, cells), records


def round_trip_table(counts: Sequence[RoundTrips]) -> tuple[str, list[dict[str, Any]]]:
    columns = [
        "case",
        "strategy / limit",
        "calls>",
        "round trips/call (redis-py)>",
        "server commands/call (INFO commandstats)>",
        "commands per call",
    ]
    cells = [
        [
            c.row.case,
            f"{c.row.strategy} {c.row.limit}",
            f"{c.calls:,}",
            f"{c.per_call:.4f}",
            f"{c.server_per_call:.4f}",
            c.commands_per_call(),
        ]
        for c in counts
    ]
    records = [{"case": c.row.case, "strategy": c.row.strategy, "limit": c.row.limit, **c.record()} for c in counts]
    return h.markdown_table(columns, cells), records


def targets(rows: Sequence[Row], counts: Sequence[RoundTrips]) -> tuple[list[str], list[dict[str, Any]]]:
    out = h.Targets()
    lines, record = out.lines, out.record
    kinds: tuple[h.Kind, ...] = ("sync", "async")
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

    sections = [MEMORY] + ([REDIS, REDIS_TWO] if any(r.section == REDIS for r in rows) else [])
    for section in sections:
        store = {MEMORY: "memory", REDIS: "Redis", REDIS_TWO: "Redis, 2 limits"}[section]
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
            f"Redis round trips per admitted call <= 1 per configured limit ({c.row.strategy}, {c.row.case}, "
            f"{limits_configured} limit{'s' if limits_configured > 1 else ''})",
            per_limit <= 1.0,
            per_limit,
            f"{c.per_call:.4f} round trips/call over {c.calls:,} calls; {extra:+d} against one per limit "
            f"(the limits and the pause-key read, due once per signal_poll, go in one round trip)",
        )
        if limits_configured > 1:
            direct = next(
                d
                for d in counts
                if d.row.case == LIMITS and d.row.section == c.row.section and d.row.strategy == c.row.strategy
            )
            record(
                f"Redis: {limits_configured} limits checked together, fewer round trips than limits direct "
                f"({c.row.strategy}, {c.row.case})",
                c.per_call < direct.per_call,
                c.per_call / direct.per_call,
                f"{c.per_call:.4f} vs {direct.per_call:.4f} round trips/call",
            )
    return out.lines, out.records


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, pin=True)

    plan = QUICK if args.quick else FULL
    env = h.environment(
        {
            "limits": importlib.metadata.version("limits"),
            "redis_server": h.redis_server_version(),
            "redis_py": importlib.metadata.version("redis"),
            "tenacity": importlib.metadata.version("tenacity"),
            "stamina": importlib.metadata.version("stamina"),
            "resilient": resilient.__version__,
        }
    )
    print(h.environment_line(env))
    print(
        h.rounds_line(
            plan.rounds,
            plan.round_ns,
            args.quick,
            f"calibrated row per round; fixed calls per round: {plan.moving_calls:,} (memory moving window), "
            f"{plan.redis_calls:,} (Redis); {plan.count_calls:,} calls per Redis round-trip count",
        )
    )

    started = time.perf_counter()
    counts: list[RoundTrips] = []
    with contextlib.ExitStack() as stack:
        redis_url = h.start_redis(stack, env, pin=not args.no_pin)
        print()
        rows = build_rows(plan, stack, redis_url)
        h.run(rows, plan.rounds, plan.round_ns, warmup=plan.warmup, refused=REFUSED)
        if redis_url is not None:
            redis_rows = [row for row in rows if row.section in (REDIS, REDIS_TWO)]
            counts = h.count_all(redis_rows, stack, redis_url, plan.count_calls, refused=REFUSED, asyncio_too=False)
    h.progress(f"done in {time.perf_counter() - started:.1f} s")

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

    h.write_json(
        args.json,
        {
            "environment": env,
            "quick": args.quick,
            "rounds": plan.rounds,
            "rows": row_records,
            "redis_round_trips": rt_records,
            "targets": target_records,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
