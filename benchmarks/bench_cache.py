"""Per call, what the response cache costs on a hit and on a miss, against cachetools and aiocache doing the same.

The request is realistic: an Anthropic ``messages.create`` call with 8
messages, about 2.3 KB of JSON (model, max_tokens, temperature 0, system).
Every row keys it the way a cache for LLM calls must: a canonical form of the
whole request (provider, operation, sorted arguments) hashed with SHA-256.

* the bare function (the floor);
* memory hits: the resilient cache policy (a pipeline whose only policy is
  the cache, ``store = memory://``) against ``cachetools.TTLCache`` (1024
  entries, 300 s) keyed with orjson + SHA-256 (the same canonical bytes) and
  with ``json.dumps(sort_keys=True)`` + SHA-256;
* memory misses, stored each time: every call a different request (4096 of
  them, cycling, against 1024 entries, so every call misses and stores);
* async memory hits: the policy against ``aiocache.SimpleMemoryCache``
  (``get``/``set`` with ``ttl``) keyed with orjson + SHA-256;
* Redis, on a throwaway ``redis-server`` started and stopped by this script:
  hits served by the shared store (``local_ttl = 0``: no in-process layer),
  sync and async, against ``aiocache.RedisCache``, with the Redis round trips
  per call (counted in redis-py) and the commands the server ran
  (``INFO commandstats``); and the round trips of a miss (lookup with lease,
  then store);
* memory: bytes held per entry by 1000 stored Anthropic ``Message`` responses,
  the policy's in-process layer against ``cachetools.TTLCache`` (tracemalloc).

A hit returns the stored response; ``ns/call`` includes the ``for`` loop and a
lambda that makes the 2 KB call, the same for every row. Rows are timed in
interleaved rounds and the best round is kept. The script pins itself and its
redis-server to one CPU unless ``--no-pin``.

Run: ``.venv/bin/python benchmarks/bench_cache.py [--quick] [--json PATH] [--no-pin]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiocache  # type: ignore[import-untyped]
import cachetools
import orjson
import redis
from anthropic.types import Message

import resilient
import resilient_cache
from resilient import Pipeline

if TYPE_CHECKING:  # mypy sees the package; run as a script, this file's directory is on sys.path
    from benchmarks import _harness as h
else:
    import _harness as h

TARGET_HIT_NS = 3_000  # a memory hit, key included
TTL = 300
ENTRIES = 1024
DISTINCT = 4096  # requests cycled through by the miss rows: 4x the entries, so every call misses

BARE = "bare function"
RESILIENT = "resilient cache policy"
CT_ORJSON = "cachetools TTLCache, orjson + sha256 key"
CT_JSON = "cachetools TTLCache, json + sha256 key"
AIOCACHE = "aiocache SimpleMemoryCache, orjson + sha256 key"
AIOCACHE_REDIS = "aiocache RedisCache, orjson + sha256 key"


def request(i: int = 0) -> dict[str, Any]:
    """A realistic messages.create request, about 2.3 KB of JSON; ``i`` makes it distinct."""
    text = "Summarise the following paragraph in one sentence, keeping names and numbers. " * 3
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"{text[:240]} #{i}-{n}"} for n in range(8)]
    return {
        "model": "claude-sonnet-4",
        "max_tokens": 1024,
        "temperature": 0,
        "system": "You are a careful assistant.",
        "messages": messages,
    }


REQUEST = request()


def create(**kwargs: Any) -> int:
    return h.EXPECTED


async def acreate(**kwargs: Any) -> int:
    return h.EXPECTED


def orjson_key(kwargs: dict[str, Any]) -> str:
    raw = orjson.dumps(("anthropic", "messages.create", kwargs), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def json_key(kwargs: dict[str, Any]) -> str:
    raw = json.dumps(["anthropic", "messages.create", kwargs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def cachetools_cached(key: Callable[[dict[str, Any]], str], maxsize: int = ENTRIES) -> Callable[..., Any]:
    cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize, TTL)

    def cached(**kwargs: Any) -> Any:
        k = key(kwargs)
        value = cache.get(k)
        if value is None:
            value = cache[k] = create(**kwargs)
        return value

    return cached


def aiocache_cached(cache: Any) -> Callable[..., Any]:
    async def cached(**kwargs: Any) -> Any:
        k = orjson_key(kwargs)
        value = await cache.get(k)
        if value is None:
            value = await acreate(**kwargs)
            await cache.set(k, value, ttl=TTL)
        return value

    return cached


def cache_pipeline(store: str, prefix: str, **cache: Any) -> Pipeline:
    config = {"store": store, "key_prefix": prefix, "cache": {"enabled": True, "max_entries": ENTRIES, **cache}}
    pipeline = Pipeline(discover=False, plugins=[resilient_cache], env={}, config=config)
    return h.check_policies(pipeline, ["cache"])


def guarded(pipeline: Pipeline, fn: Callable[..., Any]) -> Callable[..., Any]:
    return pipeline.guard(provider="anthropic", operation="messages.create")(fn)


# ---------------------------------------------------------------------------- rows


@dataclass
class Row(h.Timings):
    kind: h.Kind
    section: str
    case: str
    fn: Callable[..., Any] = field(repr=False)
    count: bool = False

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.section}: {self.case}"


def hit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The harness calls ``fn(1, x=2)``: make it the 2 KB request instead."""
    return lambda a, *, x: fn(**REQUEST)


def cycling(fn: Callable[..., Any]) -> Callable[..., Any]:
    requests = itertools.cycle([request(i) for i in range(DISTINCT)])
    return lambda a, *, x: fn(**next(requests))


@dataclass(frozen=True)
class Plan:
    rounds: int
    round_ns: float
    redis_calls: int
    count_calls: int


FULL = Plan(rounds=7, round_ns=2e8, redis_calls=2000, count_calls=500)
QUICK = Plan(rounds=2, round_ns=2e6, redis_calls=50, count_calls=50)


def memory_rows(stack: contextlib.ExitStack) -> list[Row]:
    pipeline = stack.enter_context(cache_pipeline("memory://", "bench-memory:"))
    misses = stack.enter_context(cache_pipeline("memory://", "bench-miss:"))
    aio = aiocache.SimpleMemoryCache()
    return [
        Row("sync", "baseline", BARE, hit(create)),
        Row("sync", "memory hit", RESILIENT, hit(guarded(pipeline, create))),
        Row("sync", "memory hit", CT_ORJSON, hit(cachetools_cached(orjson_key))),
        Row("sync", "memory hit", CT_JSON, hit(cachetools_cached(json_key))),
        Row("sync", "memory miss", RESILIENT, cycling(guarded(misses, create))),
        Row("sync", "memory miss", CT_ORJSON, cycling(cachetools_cached(orjson_key))),
        Row("async", "baseline", BARE, hit(acreate)),
        Row("async", "memory hit", RESILIENT, hit(guarded(pipeline, acreate))),
        Row("async", "memory hit", AIOCACHE, hit(aiocache_cached(aio))),
    ]


def redis_rows(stack: contextlib.ExitStack, url: str, plan: Plan, loop: asyncio.AbstractEventLoop) -> list[Row]:
    pipeline = stack.enter_context(cache_pipeline(url, "bench-redis:", local_ttl=0))
    stack.callback(lambda: h.run_coro(pipeline.aclose(), loop))
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    aio = aiocache.RedisCache(endpoint=host, port=int(port), namespace="bench-aio")
    stack.callback(lambda: h.run_coro(aio.close(), loop))
    n = plan.redis_calls
    return [
        Row(
            "sync", "Redis hit", RESILIENT + ", local_ttl=0", hit(guarded(pipeline, create)), fixed_calls=n, count=True
        ),
        Row(
            "async",
            "Redis hit",
            RESILIENT + ", local_ttl=0",
            hit(guarded(pipeline, acreate)),
            fixed_calls=n,
            count=True,
        ),
        Row("async", "Redis hit", AIOCACHE_REDIS, hit(aiocache_cached(aio)), fixed_calls=n, count=True),
    ]


def miss_round_trips(stack: contextlib.ExitStack, url: str, n: int) -> h.RoundTrips[Row]:
    pipeline = stack.enter_context(cache_pipeline(url, "bench-redis-miss:", local_ttl=0))
    row = Row("sync", "Redis miss", RESILIENT, cycling(guarded(pipeline, create)))
    client = stack.enter_context(redis.Redis.from_url(url))
    h.commandstats(client)
    h.call_once(row)  # connects (the handshake is not a per-call cost)
    return h.count_round_trips(row, client, n)


# ---------------------------------------------------------------------------- memory per entry


def bytes_per_entry() -> dict[str, float]:
    """Bytes held per entry by 1000 stored Message responses (keys and bookkeeping included)."""
    responses = [
        Message.model_validate(
            {
                "id": f"msg_{i}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4",
                "content": [{"type": "text", "text": "A one-sentence summary of the paragraph. " * 4}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 600, "output_tokens": 40},
            }
        )
        for i in range(1000)
    ]
    requests = [request(i) for i in range(1000)]
    out: dict[str, float] = {}

    with Pipeline(
        discover=False,
        plugins=[resilient_cache],
        env={},
        config={"cache": {"enabled": True, "max_entries": 2000}},
    ) as pipeline:
        answers = iter(responses)
        ask = guarded(pipeline, lambda **kw: next(answers))
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for r in requests:
            ask(**r)
        out[RESILIENT] = (tracemalloc.get_traced_memory()[0] - before) / len(requests)
        tracemalloc.stop()

    answers = iter(responses)
    cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(2000, TTL)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for r in requests:
        cache[orjson_key(r)] = next(answers)
    out[CT_ORJSON] = (tracemalloc.get_traced_memory()[0] - before) / len(requests)
    tracemalloc.stop()
    return out


# ---------------------------------------------------------------------------- report


def find(rows: Sequence[Row], kind: str, section: str, case: str) -> Row | None:
    return next((r for r in rows if r.kind == kind and r.section == section and r.case.startswith(case)), None)


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    cells, records = [], []
    for row in rows:
        bare = find(rows, row.kind, "baseline", BARE)
        assert bare is not None
        peer_case = {"sync": CT_ORJSON, "async": AIOCACHE}[row.kind]
        if row.section == "Redis hit":
            peer_case = AIOCACHE_REDIS
        peer = find(rows, row.kind, row.section, peer_case)
        ratio = row.best / peer.best if peer is not None and row.section != "baseline" else None
        overhead = row.best - bare.best
        cells.append(
            [
                row.kind,
                row.section,
                row.case,
                f"{row.calls:,}",
                f"{row.best / 1e3:,.2f}",
                f"{overhead / 1e3:,.2f}",
                f"{ratio:.2f}x" if ratio is not None else "",
            ]
        )
        records.append(
            {
                "kind": row.kind,
                "section": row.section,
                "case": row.case,
                "ns_per_call": round(row.best, 1),
                "overhead_ns": round(overhead, 1),
                "ratio_vs_peer": round(ratio, 4) if ratio is not None else None,
                **row.rounds_record(),
            }
        )
    columns = ["kind", "what", "case", "calls/round>", "us/call>", "over bare (us)>", "vs peer>"]
    return h.markdown_table(columns, cells), records


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, pin=True)
    plan = QUICK if args.quick else FULL
    env = h.environment(
        {
            "orjson": importlib.metadata.version("orjson"),
            "cachetools": importlib.metadata.version("cachetools"),
            "aiocache": importlib.metadata.version("aiocache"),
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
            f"request {len(orjson.dumps(REQUEST)):,} bytes of JSON; TTL {TTL} s; {ENTRIES} entries",
        )
    )
    started = time.perf_counter()
    loop = asyncio.new_event_loop()
    counts: list[h.RoundTrips[Row]] = []
    try:
        with contextlib.ExitStack() as stack:
            memory = bytes_per_entry()
            url = h.start_redis(stack, env, pin=not args.no_pin)
            rows = memory_rows(stack)
            if url is not None:
                rows += redis_rows(stack, url, plan, loop)
            print()
            h.run(rows, plan.rounds, plan.round_ns, loop=loop)
            if url is not None:
                counts = h.count_all([r for r in rows if r.count], stack, url, plan.count_calls, loop)
                counts.append(miss_round_trips(stack, url, plan.count_calls))
    finally:
        loop.close()
    h.progress(f"done in {time.perf_counter() - started:.1f} s")

    text, records = table(rows)
    print(text)
    print()
    if counts:
        print("Redis, per call: round trips counted in redis-py; server commands from INFO commandstats")
        print(
            h.markdown_table(
                ["kind", "what", "case", "round trips/call>", "server commands/call>", "commands per call"],
                [
                    [
                        c.row.kind,
                        c.row.section,
                        c.row.case,
                        f"{c.per_call:.3f}",
                        f"{c.server_per_call:.3f}",
                        c.commands_per_call(),
                    ]
                    for c in counts
                ],
            )
        )
        print()
    print("Memory held per stored Message response (1000 entries, key and bookkeeping included, tracemalloc)")
    print(h.markdown_table(["case", "bytes/entry>"], [[k, f"{v:,.0f}"] for k, v in memory.items()]))
    print()

    out = h.Targets()
    for kind, peer_case in (("sync", CT_ORJSON), ("async", AIOCACHE)):
        ours, peer = find(rows, kind, "memory hit", RESILIENT), find(rows, kind, "memory hit", peer_case)
        bare = find(rows, kind, "baseline", BARE)
        if ours is None or peer is None or bare is None:
            continue
        # What the cache adds: the row minus the bare row (same loop, same 2 KB call of the same lambda).
        cost = ours.best - bare.best
        out.record(
            f"{kind}: memory hit, key included, costs under {TARGET_HIT_NS / 1e3:g} us over the bare call",
            cost < TARGET_HIT_NS,
            cost / TARGET_HIT_NS,
            f"{cost / 1e3:.2f} us over bare, {ours.best / 1e3:.2f} us/call in all; "
            f"{peer_case}: {peer.best / 1e3:.2f} us, {ours.best / peer.best:.2f}x",
        )
    json_row, ours = find(rows, "sync", "memory hit", CT_JSON), find(rows, "sync", "memory hit", RESILIENT)
    if json_row is not None and ours is not None:
        out.lines.append(f"info  sync memory hit: {ours.best / json_row.best:.2f}x cachetools with a json key")
    ours_miss, peer_miss = find(rows, "sync", "memory miss", RESILIENT), find(rows, "sync", "memory miss", CT_ORJSON)
    if ours_miss is not None and peer_miss is not None:
        out.lines.append(
            f"info  sync memory miss (stored): {ours_miss.best / 1e3:.2f} vs {peer_miss.best / 1e3:.2f} us, "
            f"{ours_miss.best / peer_miss.best:.2f}x cachetools"
        )
    for c in counts:
        limit = 1.0 if c.row.section == "Redis hit" else 2.0
        if c.row.case.startswith(RESILIENT):
            out.record(
                f"{c.row.kind}, {c.row.section}: at most {limit:g} Redis round trip(s) per call",
                c.per_call <= limit + 1e-9,
                c.per_call / limit,
                f"{c.per_call:.3f} round trips, {c.server_per_call:.2f} server commands per call",
            )
    for line in out.lines:
        print(line)
    h.write_json(
        args.json,
        {
            "environment": env,
            "quick": args.quick,
            "rows": records,
            "redis_round_trips": [{"kind": c.row.kind, "case": c.row.case, **c.record()} for c in counts],
            "bytes_per_entry": memory,
            "targets": out.records,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
