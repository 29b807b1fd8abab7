"""Per succeeding call, what the timeout and bulkhead plugins cost against the asyncio primitives used directly.

The timeout plugin bounds an async attempt with ``asyncio.timeout``; the
bulkhead admits a call through a per-key pool of slots. The peers are those
primitives written by hand around the same call, in the same run:

* timeout: a guarded ``async def`` under a pipeline whose only policy is the
  timeout plugin's (``timeout = 30``), against ``async with asyncio.timeout(30)``
  around the bare call;
* bulkhead, async: the bulkhead plugin alone (``max_concurrent = 100``,
  per provider and model) against ``async with asyncio.Semaphore(100)``;
* bulkhead, sync: the same plugin on a sync function against
  ``with threading.BoundedSemaphore(100)`` (the bulkhead serves threads too);
* both plugins together against both primitives nested.

The plugin rows include everything a guarded call costs (the ``Call`` object
and the pipeline's wrapper), so the ratio is the whole price of using the
plugin instead of the primitive. The ``bare`` rows (the function, unguarded)
show the floor. Rows are timed in interleaved rounds on one event loop and the
best round is kept; async rows await the call N times inside one coroutine.

Run: ``.venv/bin/python benchmarks/bench_timeout_bulkhead.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _harness as h
import resilient
import resilient_bulkhead
import resilient_timeout
from resilient import ConcurrencyLimitExceeded, Pipeline

TARGET_RATIO = 1.2
LIMIT = 100


@dataclass
class Row(h.Timings):
    name: str = ""
    kind: h.Kind = "async"
    fn: Callable[..., Any] = h.atarget

    @property
    def label(self) -> str:
        return self.name


def pipeline(**config: Any) -> Pipeline:
    plugins = [resilient_timeout, resilient_bulkhead]
    expected = [name for name, section in (("bulkhead", "bulkhead"), ("timeout", "timeout")) if section in config]
    built = Pipeline(plugins=plugins, discover=False, env={}, config=config)
    return h.check_policies(built, expected)


def build_rows() -> list[Row]:
    if sys.version_info < (3, 11):  # pragma: no cover
        raise SystemExit("bench: asyncio.timeout needs Python 3.11+")

    async def with_timeout(a: int, *, x: int) -> int:
        async with asyncio.timeout(30):
            return await h.atarget(a, x=x)

    semaphore = asyncio.Semaphore(LIMIT)

    async def with_semaphore(a: int, *, x: int) -> int:
        async with semaphore:
            return await h.atarget(a, x=x)

    both_semaphore = asyncio.Semaphore(LIMIT)

    async def with_both(a: int, *, x: int) -> int:
        async with both_semaphore, asyncio.timeout(30):
            return await h.atarget(a, x=x)

    lock = threading.BoundedSemaphore(LIMIT)

    def with_thread_semaphore(a: int, *, x: int) -> int:
        with lock:
            return h.target(a, x=x)

    timeout = pipeline(timeout={"timeout": 30})
    bulkhead = pipeline(bulkhead={"max_concurrent": LIMIT})
    both = pipeline(timeout={"timeout": 30}, bulkhead={"max_concurrent": LIMIT})
    guard = {"provider": "anthropic", "model": "claude-haiku-4-5"}
    return [
        Row(name="bare async", fn=h.atarget),
        Row(name="asyncio.timeout", fn=with_timeout),
        Row(name="timeout plugin", fn=timeout.guard(**guard)(h.atarget)),
        Row(name="asyncio.Semaphore", fn=with_semaphore),
        Row(name="bulkhead plugin (async)", fn=bulkhead.guard(**guard)(h.atarget)),
        Row(name="Semaphore + timeout", fn=with_both),
        Row(name="bulkhead + timeout plugins", fn=both.guard(**guard)(h.atarget)),
        Row(name="bare sync", kind="sync", fn=h.target),
        Row(name="threading.BoundedSemaphore", kind="sync", fn=with_thread_semaphore),
        Row(name="bulkhead plugin (sync)", kind="sync", fn=bulkhead.guard(**guard)(h.target)),
    ]


PAIRS = (
    ("timeout plugin", "asyncio.timeout"),
    ("bulkhead plugin (async)", "asyncio.Semaphore"),
    ("bulkhead + timeout plugins", "Semaphore + timeout"),
    ("bulkhead plugin (sync)", "threading.BoundedSemaphore"),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv)
    rounds, round_ns = (3, 20e6) if args.quick else (9, 200e6)
    env = h.environment({"resilient": resilient.__version__})
    print(h.environment_line(env))
    print(h.rounds_line(rounds, round_ns, args.quick, "row per round"))
    print()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    started = time.perf_counter()
    try:
        rows = build_rows()
        h.run(rows, rounds, round_ns, loop=loop, refused=(ConcurrencyLimitExceeded,))
    finally:
        loop.close()
    h.progress(f"done in {time.perf_counter() - started:.1f} s")
    by_name = {row.name: row for row in rows}
    print(
        h.markdown_table(
            ["row", "ns/call>"],
            [[row.name, f"{row.best:.0f}"] for row in rows],
        )
    )
    print()
    targets = h.Targets()
    for plugin, peer in PAIRS:
        ours, theirs = by_name[plugin].best, by_name[peer].best
        ratio = ours / theirs
        targets.record(
            f"{plugin} within {TARGET_RATIO}x of {peer}",
            ratio <= TARGET_RATIO,
            ratio,
            f"{ratio:.2f}x, {ours:.0f} vs {theirs:.0f} ns/call, +{ours - theirs:.0f} ns",
        )
    for line in targets.lines:
        print(line)
    h.write_json(
        args.json,
        {
            "environment": env,
            "quick": args.quick,
            "rounds": rounds,
            "rows": [{"row": row.name, "ns_per_call": round(row.best, 2), **row.rounds_record()} for row in rows],
            "targets": targets.records,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
