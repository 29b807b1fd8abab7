"""The headline: the full default policy stack per call, against the same work composed by hand from the peers.

Every row makes the same realistic call, an Anthropic ``messages.create``
with temperature 0 whose answer carries a ``usage`` (four token kinds), and
every call is a different request (4096 of them, cycling, against 1024 cache
entries), so every call checks the cache, misses, is admitted, succeeds and
is stored:

* the bare function (the floor) and a plain 6-step closure chain forwarding
  ``*args, **kwargs`` (what any decorator stack costs before it does anything);
* the peers composed by hand, outermost first: prometheus-client (children
  bound in advance: calls, attempts, latency histogram, four token counters,
  cost, cache lookups by result -- the hit ratio ours records), a ``cachetools.TTLCache`` keyed by SHA-256 of the canonical request
  (orjson, sorted keys), ``limits`` (fixed window, 1,000,000/minute, memory),
  tenacity (3 attempts, full-jitter exponential backoff, retrying only
  retryable errors) and a circuit breaker: pybreaker sync, purgatory async
  (pybreaker's async support is Tornado's);
* resilient: one pipeline with the metrics, cache, quota, retry and breaker
  plugins on ``memory://`` (every other plugin disabled): the same limit and
  cache size, the other options at their defaults.

The two stacks once more (sync), with the answer a real anthropic
``Message`` (a pydantic model, as the SDK returns) instead of ``Reply``, a
plain object: what a user of the SDK pays. Reading a model's fields and
storing it cost more than a plain object's; an ``info`` line gives that ratio.

Sync and async rows; async rows await the call N times in one coroutine. Rows
are timed in interleaved rounds and the best round is kept. The target is the
issue's: the resilient stack at one third of the peer stack's cost or less.

Run: ``.venv/bin/python benchmarks/bench_stack.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anthropic.types
import cachetools
import limits
import limits.aio.storage
import limits.aio.strategies
import orjson
import purgatory
import pybreaker
import tenacity
from prometheus_client import CollectorRegistry, Counter, Histogram

import resilient
import resilient_metrics
from resilient import Pipeline, QuotaExceeded, capture_calls
from resilient.providers import classify
from resilient_metrics import PriceTable

if TYPE_CHECKING:  # mypy sees the package; run as a script, this file's directory is on sys.path
    from benchmarks import _harness as h
else:
    import _harness as h

STACK = ["metrics", "cache", "quota", "retry", "breaker"]
LIMIT = "1000000/minute"
ENTRIES = 1024
DISTINCT = 4096
TTL = 300
MODEL = "claude-sonnet-4-5-20250929"
TARGET_RATIO = 1 / 3

BARE = "bare function"
CHAIN = "6-step closure chain"
PEERS = "peers by hand: prometheus-client + cachetools + limits + tenacity + {breaker}"
RESILIENT = "resilient: metrics, cache, quota, retry, breaker (memory)"
#: The same two stacks when the answer is a real anthropic ``Message`` (a pydantic model), as an SDK returns.
MESSAGE = "anthropic Message answer, "


# ---------------------------------------------------------------------------- the call


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


REPLY = Reply(h.EXPECTED)


def create(**kwargs: Any) -> int:
    return REPLY


MESSAGE_REPLY = anthropic.types.Message.model_validate(
    {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Ticket #1: the login fails after a password reset; open; owner Dana."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1200,
            "output_tokens": 300,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 800,
        },
    }
)


def create_message(**kwargs: Any) -> Any:
    return MESSAGE_REPLY


def answering(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`cycling` for a row whose answer is :data:`MESSAGE_REPLY`: reports the harness's 3 when it is."""
    call = cycling(fn)
    return lambda a, *, x: h.EXPECTED if call(a, x=x) is MESSAGE_REPLY else None


async def acreate(**kwargs: Any) -> int:
    return REPLY


def request(i: int) -> dict[str, Any]:
    """A short chat request, distinct per ``i``."""
    return {
        "model": MODEL,
        "max_tokens": 512,
        "temperature": 0,
        "messages": [
            {"role": "user", "content": f"Summarise ticket #{i} in one sentence."},
            {"role": "assistant", "content": "Sure: which ticket fields matter?"},
            {"role": "user", "content": "Title, status and owner."},
        ],
    }


def cycling(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The harness calls ``fn(1, x=2)``: make every call a different request instead."""
    requests = itertools.cycle([request(i) for i in range(DISTINCT)])
    return lambda a, *, x: fn(**next(requests))


def chain(fn: Callable[..., Any], steps: int = 6) -> Callable[..., Any]:
    def link(nxt: Callable[..., Any]) -> Callable[..., Any]:
        def step(*a: Any, **kw: Any) -> Any:
            return nxt(*a, **kw)

        return step

    for _ in range(steps):
        fn = link(fn)
    return fn


def achain(fn: Callable[..., Any], steps: int = 6) -> Callable[..., Any]:
    def link(nxt: Callable[..., Any]) -> Callable[..., Any]:
        async def step(*a: Any, **kw: Any) -> Any:
            return await nxt(*a, **kw)

        return step

    for _ in range(steps):
        fn = link(fn)
    return fn


# ---------------------------------------------------------------------------- the peers, by hand


class Metrics:
    """The families the metrics plugin records into, by hand, children bound in advance."""

    def __init__(self) -> None:
        reg = CollectorRegistry()
        labels = ("provider", "operation", "model")
        calls = Counter("calls", "calls", (*labels, "outcome"), namespace="hand", registry=reg)
        duration = Histogram("call_duration_seconds", "latency", labels, namespace="hand", registry=reg)
        attempts = Counter("call_attempts", "attempts", labels, namespace="hand", registry=reg)
        tokens = Counter("tokens", "tokens", (*labels, "kind"), namespace="hand", registry=reg)
        cost = Counter("cost_usd", "cost", labels, namespace="hand", registry=reg)
        lookups = Counter("cache_requests", "cache lookups", (*labels, "result"), namespace="hand", registry=reg)
        bound = ("anthropic", "messages.create", MODEL)
        # The cache's hit ratio is a metric ours records (cache_requests_total by result): so does the hand stack.
        self.hit, self.miss = lookups.labels(*bound, "hit"), lookups.labels(*bound, "miss")
        self.ok, self.duration, self.attempts = (
            calls.labels(*bound, "success"),
            duration.labels(*bound),
            attempts.labels(*bound),
        )
        self.t_in, self.t_out = tokens.labels(*bound, "input"), tokens.labels(*bound, "output")
        self.t_read, self.t_write = tokens.labels(*bound, "cache_read"), tokens.labels(*bound, "cache_write")
        self.cost = cost.labels(*bound)
        price = PriceTable({}).lookup(MODEL)
        assert price is not None
        self.price = price

    def record(self, result: Any, elapsed: float) -> None:
        self.ok.inc()
        self.duration.observe(elapsed)
        self.attempts.inc()
        u, price = result.usage, self.price
        self.t_in.inc(u.input_tokens)
        self.t_out.inc(u.output_tokens)
        self.t_read.inc(u.cache_read_input_tokens)
        self.t_write.inc(u.cache_creation_input_tokens)
        self.cost.inc(
            (
                u.input_tokens * price.input
                + u.output_tokens * price.output
                + u.cache_read_input_tokens * price.cache_read
                + u.cache_creation_input_tokens * price.cache_write
            )
            / 1e6
        )


def cache_key(kwargs: dict[str, Any]) -> str:
    raw = orjson.dumps(("anthropic", "messages.create", kwargs), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def _retryable(exc: BaseException) -> bool:
    return classify(exc).retryable


def _tenacity_options() -> dict[str, Any]:
    return {
        "stop": tenacity.stop_after_attempt(3),
        "wait": tenacity.wait_random_exponential(multiplier=0.5, max=30),
        "retry": tenacity.retry_if_exception(_retryable),
        "reraise": True,
    }


def peers_sync(target: Callable[..., Any] = create) -> Callable[..., Any]:
    metrics = Metrics()
    cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(ENTRIES, TTL)
    limiter = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.parse(LIMIT)
    retrying = tenacity.Retrying(**_tenacity_options())
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    guarded = breaker(target)
    monotonic = time.monotonic

    def call(**kwargs: Any) -> Any:
        start = monotonic()
        key = cache_key(kwargs)
        value = cache.get(key)
        if value is None:
            metrics.miss.inc()
            if not limiter.hit(item, "anthropic", MODEL):
                raise QuotaExceeded("limits refused", limit=str(item))
            value = retrying(guarded, **kwargs)
            cache[key] = value
        else:
            metrics.hit.inc()
        metrics.record(value, monotonic() - start)
        return value

    return call


def peers_async() -> Callable[..., Any]:
    metrics = Metrics()
    cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(ENTRIES, TTL)
    limiter = limits.aio.strategies.FixedWindowRateLimiter(limits.aio.storage.MemoryStorage())
    item = limits.parse(LIMIT)
    retrying = tenacity.AsyncRetrying(**_tenacity_options())
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    guarded = factory("bench-stack")(acreate)
    monotonic = time.monotonic

    async def call(**kwargs: Any) -> Any:
        start = monotonic()
        key = cache_key(kwargs)
        value = cache.get(key)
        if value is None:
            metrics.miss.inc()
            if not await limiter.hit(item, "anthropic", MODEL):
                raise QuotaExceeded("limits refused", limit=str(item))
            value = await retrying(guarded, **kwargs)
            cache[key] = value
        else:
            metrics.hit.inc()
        metrics.record(value, monotonic() - start)
        return value

    return call


# ---------------------------------------------------------------------------- resilient


def stack_pipeline(prefix: str) -> Pipeline:
    others = sorted({ep.name for ep in importlib.metadata.entry_points(group="resilient")} - set(STACK))
    config = {
        "store": "memory://",
        "key_prefix": prefix,
        "disable": others,
        "cache": {"enabled": True, "max_entries": ENTRIES, "ttl": TTL},
        "quota": {"requests": LIMIT, "strategy": "fixed-window"},
    }
    with resilient_metrics.use_registry(CollectorRegistry()):
        pipeline = Pipeline(env={}, config=config)
    # The quota's provider-signal step (429/529 pauses) sits inside retry, as in every default pipeline.
    return h.check_policies(pipeline, ["metrics", "cache", "quota", "retry", "quota_signals", "breaker"])


def check_miss(fn: Callable[..., Any], kind: h.Kind) -> None:
    """The resilient row must check the cache and miss on every call (not serve hits)."""
    with capture_calls() as calls:
        h.call_once(Row(kind, "probe", fn))
    got = [c.metadata.get("cache") for c in calls]
    if got != ["miss"]:
        raise SystemExit(f"bench setup: the resilient stack's {kind} call was {got}, expected a cache miss")


# ---------------------------------------------------------------------------- rows and report


@dataclass
class Row(h.Timings):
    kind: h.Kind
    case: str
    fn: Callable[..., Any] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.kind}: {self.case}"


def build_rows() -> list[Row]:
    sync_stack = cycling(stack_pipeline("bench-sync:").guard(provider="anthropic", operation="messages.create")(create))
    async_stack = cycling(
        stack_pipeline("bench-async:").guard(provider="anthropic", operation="messages.create")(acreate)
    )
    message_stack = stack_pipeline("bench-message:").guard(provider="anthropic", operation="messages.create")
    message_stack_fn = answering(message_stack(create_message))
    check_miss(sync_stack, "sync")
    check_miss(async_stack, "async")
    check_miss(message_stack_fn, "sync")
    return [
        Row("sync", BARE, cycling(create)),
        Row("sync", CHAIN, cycling(chain(create))),
        Row("sync", PEERS.format(breaker="pybreaker"), cycling(peers_sync())),
        Row("sync", RESILIENT, sync_stack),
        Row("sync", MESSAGE + PEERS.format(breaker="pybreaker"), answering(peers_sync(create_message))),
        Row("sync", MESSAGE + RESILIENT, message_stack_fn),
        Row("async", BARE, cycling(acreate)),
        Row("async", CHAIN, cycling(achain(acreate))),
        Row("async", PEERS.format(breaker="purgatory"), cycling(peers_async())),
        Row("async", RESILIENT, async_stack),
    ]


def find(rows: Sequence[Row], kind: str, prefix: str) -> Row:
    return next(r for r in rows if r.kind == kind and r.case.startswith(prefix))


def report(rows: Sequence[Row]) -> tuple[str, list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    cells, records = [], []
    for row in rows:
        bare, chained = find(rows, row.kind, BARE), find(rows, row.kind, CHAIN)
        peers = find(rows, row.kind, MESSAGE + "peers" if row.case.startswith(MESSAGE) else "peers")
        cells.append(
            [
                row.label,
                f"{row.best / 1000:,.2f}",
                f"{(row.best - bare.best) / 1000:,.2f}",
                f"{row.best / chained.best:.1f}x",
                f"{row.best / peers.best:.2f}x",
            ]
        )
        records.append(
            {
                "group": row.kind,
                "case": row.case,
                "ns_per_call": round(row.best, 2),
                "ratio_vs_chain": round(row.best / chained.best, 4),
                "ratio_vs_peers": round(row.best / peers.best, 4),
                **row.rounds_record(),
            }
        )
    columns = ["case", "us/call>", "overhead over bare (us)>", "vs 6-step chain>", "vs peer stack>"]
    targets = h.Targets()
    for kind in ("sync", "async"):
        ours, peers = find(rows, kind, "resilient"), find(rows, kind, "peers")
        ratio = ours.best / peers.best
        targets.record(
            f"{kind}: full stack at most 1/3 of the peer stack",
            ratio <= TARGET_RATIO,
            ratio,
            f"{ours.best / 1000:.2f} vs {peers.best / 1000:.2f} us/call, {ratio:.2f}x, 1/{1 / ratio:.1f}",
        )
    ours, peers = find(rows, "sync", MESSAGE + "resilient"), find(rows, "sync", MESSAGE + "peers")
    ratio = ours.best / peers.best
    targets.lines.append(
        f"info  sync, {MESSAGE}full stack vs the peer stack: "
        f"{ours.best / 1000:.2f} vs {peers.best / 1000:.2f} us/call, {ratio:.2f}x"
    )
    return h.markdown_table(columns, cells), targets.lines, records, targets.records


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    rounds, round_ns = (2, 2e6) if args.quick else (7, 2e8)
    env = h.environment(
        {
            "resilient": resilient.__version__,
            **{
                name: importlib.metadata.version(name)
                for name in ("tenacity", "pybreaker", "purgatory", "limits", "cachetools", "prometheus-client")
            },
        }
    )
    print(h.environment_line(env))
    print(h.rounds_line(rounds, round_ns, args.quick, "row per round"))
    print()
    rows = build_rows()
    started = time.perf_counter()
    h.run(rows, rounds, round_ns, refused=(QuotaExceeded,))
    h.progress(f"done in {time.perf_counter() - started:.1f} s")
    text, lines, records, target_records = report(rows)
    print(text)
    print()
    for line in lines:
        print(line)
    h.write_json(
        args.json,
        {"environment": env, "quick": args.quick, "rounds": rounds, "rows": records, "targets": target_records},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
