"""The timing harness the scripts in ``benchmarks/`` share, so each keeps only what it measures.

Every benchmark times rows (a function wrapped one way or another) per call,
``fn(1, x=2)`` N times with the garbage collector off, in interleaved rounds
(every row once per round) after a calibration that doubles as warm-up, and
keeps the best round. This module holds that loop and what surrounds it: the
environment line, the command line (``--quick``, ``--json``, ``--no-pin``),
progress on stderr, a throwaway ``redis-server`` with both processes pinned to
one CPU, counting Redis round trips and server commands, markdown tables,
PASS/FAIL target lines and the JSON file.

The scripts are run as ``python benchmarks/bench_x.py``, which puts this
directory on ``sys.path``: they ``import _harness``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import redis
import redis.asyncio.connection
import redis.connection

from resilient import Pipeline
from resilient.testing import redis_server

EXPECTED = 3  # target(1, x=2)
INFO_QUERIES = 1  # INFO queries counted between two snapshots: the first snapshot's own

Kind = Literal["sync", "async"]
SyncFn = Callable[..., Any]
AsyncFn = Callable[..., Awaitable[Any]]
T = TypeVar("T")
Refusals = tuple[type[BaseException], ...]


# ---------------------------------------------------------------------------- the functions


def target(a: int, *, x: int) -> int:
    return a + x


async def atarget(a: int, *, x: int) -> int:
    return a + x


def check_policies(pipeline: Pipeline, expected: Sequence[str]) -> Pipeline:
    """``pipeline``, after checking that its policies are exactly ``expected`` (else the run stops)."""
    names = [p.name for p in pipeline.policies]
    if names != list(expected):
        raise SystemExit(f"bench setup: expected policies {list(expected)}, pipeline has {names}")
    return pipeline


# ---------------------------------------------------------------------------- rows


class Case(Protocol):
    """What the harness needs of a row: how to call it, its name, and where its timings go."""

    calls: int
    times_ns: list[float]

    @property
    def kind(self) -> Kind: ...

    @property
    def fn(self) -> Callable[..., Any]: ...

    @property
    def fixed_calls(self) -> int | None: ...

    @property
    def label(self) -> str: ...

    def describe(self) -> str: ...


R = TypeVar("R", bound=Case)


@dataclass
class Timings:
    """Base of a script's ``Row`` dataclass: the calls per round and ns/call of each round.

    The fields are keyword-only, so a subclass adds its own positional fields
    (``kind``, ``fn``, …) and a ``label`` property.
    """

    fixed_calls: int | None = field(default=None, kw_only=True)  # calls per round when not calibrated
    calls: int = field(default=0, kw_only=True)
    times_ns: list[float] = field(default_factory=list, kw_only=True)  # ns/call of each round

    @property
    def best(self) -> float:
        return min(self.times_ns)

    @property
    def label(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """How a setup error names the row."""
        return repr(self.label)

    def rounds_record(self) -> dict[str, Any]:
        """The JSON fields every row record ends with."""
        return {"calls_per_round": self.calls, "rounds_ns_per_call": [round(t, 2) for t in self.times_ns]}


# ---------------------------------------------------------------------------- timing


def run_coro(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run ``coro`` on ``loop``, or on a new event loop (``asyncio.run``) when there is none."""
    if loop is None:
        return asyncio.run(coro)
    return loop.run_until_complete(coro)


def time_sync(fn: SyncFn, n: int) -> int:
    """Nanoseconds for ``n`` calls of ``fn(1, x=2)``."""
    loop = repeat(None, n)
    start = time.perf_counter_ns()
    for _ in loop:
        fn(1, x=2)
    return time.perf_counter_ns() - start


async def time_async(fn: AsyncFn, n: int) -> int:
    """Nanoseconds for ``n`` awaits of ``fn(1, x=2)`` inside one coroutine."""
    loop = repeat(None, n)
    start = time.perf_counter_ns()
    for _ in loop:
        await fn(1, x=2)
    return time.perf_counter_ns() - start


def time_calls(row: Case, n: int, loop: asyncio.AbstractEventLoop | None = None) -> int:
    """Nanoseconds for ``n`` calls of ``row`` (awaited in one coroutine on ``loop`` if async)."""
    if row.kind == "sync":
        return time_sync(row.fn, n)
    return run_coro(time_async(row.fn, n), loop)


def call_once(row: Case, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """What one call of ``row`` returns."""
    if row.kind == "sync":
        return row.fn(1, x=2)

    async def once() -> Any:
        return await row.fn(1, x=2)

    return run_coro(once(), loop)


@contextlib.contextmanager
def admitted(row: Case, refused: Refusals) -> Iterator[None]:
    """Turn a refusal (one of ``refused``) into the end of the run: every call must be admitted."""
    try:
        yield
    except refused as exc:
        raise SystemExit(f"bench: {row.label} was refused ({exc}); every call must be admitted") from exc


def measure(row: Case, n: int, loop: asyncio.AbstractEventLoop | None = None, refused: Refusals = ()) -> int:
    """Time ``n`` calls with the garbage collector off (as timeit does); a refusal ends the run."""
    gc.collect()
    gc.disable()
    try:
        with admitted(row, refused):
            return time_calls(row, n, loop)
    finally:
        gc.enable()


def calibrate(row: Case, round_ns: float, warmup: int, measure_n: Callable[[int], int]) -> int:
    """Calls per round: the fixed count after ``warmup`` calls, or about ``round_ns`` of calls (doubles as warm-up)."""
    if row.fixed_calls is not None:
        measure_n(warmup)
        return row.fixed_calls
    n = 100
    while True:
        elapsed = measure_n(n)
        if elapsed >= round_ns / 5 or n >= 50_000_000:
            return max(100, int(n * round_ns / max(elapsed, 1)))
        n *= 4


def check(row: Case, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Every case must return what the bare function returns."""
    result = call_once(row, loop)
    if result != EXPECTED:
        raise SystemExit(f"bench setup: {row.describe()} returned {result!r}, expected {EXPECTED}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    rows: Sequence[R],
    rounds: int,
    round_ns: float,
    *,
    warmup: int = 0,
    loop: asyncio.AbstractEventLoop | None = None,
    refused: Refusals = (),
    width: int | None = None,
    ns_width: int = 10,
) -> None:
    """Check and calibrate every row, then time ``rounds`` interleaved rounds, printing progress on stderr."""
    if width is None:
        width = max(len(r.label) for r in rows) + 2
    for row in rows:
        check(row, loop)
        row.calls = calibrate(row, round_ns, warmup, partial(measure, row, loop=loop, refused=refused))
        progress(f"calibrated  {row.label:<{width}} {row.calls:>10,} calls/round")
    for r in range(1, rounds + 1):
        for row in rows:
            per_call = measure(row, row.calls, loop, refused) / row.calls
            row.times_ns.append(per_call)
            progress(f"round {r}/{rounds} {row.label:<{width}} {per_call:{ns_width}.1f} ns/call")


# ---------------------------------------------------------------------------- Redis


def start_redis(stack: contextlib.ExitStack, env: dict[str, Any], pin: bool) -> str | None:
    """Start a throwaway redis-server (stopped with ``stack``) and return its URL, or None with a note.

    With ``pin``, this process and the server are pinned to one CPU (``env["pinned_cpu"]``).
    """
    url: str | None = None
    try:
        server = stack.enter_context(redis_server())
        url = server.url
        progress(f"redis-server started (pid {server.pid}) at {url}")
        if pin:
            env["pinned_cpu"] = pin_to_one_cpu(server.pid, stack)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"note: no Redis rows ({exc})")
    pinned = env.get("pinned_cpu")
    if pinned is not None:
        print(f"this process and redis-server pinned to CPU {pinned}")
    elif url is not None:
        print("not pinned: Redis rows may flip between same-CPU and cross-CPU round trips")
    return url


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


@contextlib.contextmanager
def counting_round_trips(asyncio_too: bool = True) -> Iterator[list[int]]:
    """Count every command (or pipeline) redis-py sends, sync (and asyncio), i.e. every round trip."""
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
    if asyncio_too:
        async_cls.send_packed_command = acounted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        sync_cls.send_packed_command = original  # type: ignore[method-assign]
        if asyncio_too:
            async_cls.send_packed_command = aoriginal  # type: ignore[method-assign]


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    info = cast("dict[str, Any]", client.info("commandstats"))
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


@dataclass
class RoundTrips(Generic[R]):
    row: R
    calls: int
    round_trips: int
    commands: dict[str, int]  # server-side calls per command over the calls (INFO's own removed)

    @property
    def per_call(self) -> float:
        return self.round_trips / self.calls

    @property
    def server_per_call(self) -> float:
        return sum(self.commands.values()) / self.calls

    def commands_per_call(self) -> str:
        return ", ".join(f"{name} {calls / self.calls:.3g}" for name, calls in self.commands.items())

    def record(self) -> dict[str, Any]:
        """The JSON fields every round-trip record ends with."""
        return {
            "calls": self.calls,
            "round_trips": self.round_trips,
            "round_trips_per_call": round(self.per_call, 5),
            "server_commands": self.commands,
            "server_commands_per_call": round(self.server_per_call, 5),
        }


def count_round_trips(
    row: R,
    client: redis.Redis,
    n: int,
    loop: asyncio.AbstractEventLoop | None = None,
    refused: Refusals = (),
    asyncio_too: bool = True,
) -> RoundTrips[R]:
    """Round trips and server commands for ``n`` (admitted) calls of a (warm) Redis row."""
    before = commandstats(client)
    with admitted(row, refused), counting_round_trips(asyncio_too) as sent:
        time_calls(row, n, loop)
    after = commandstats(client)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - INFO_QUERIES
    return RoundTrips(row, n, sent[0], {name: calls for name, calls in sorted(delta.items()) if calls})


def count_all(
    rows: Iterable[R],
    stack: contextlib.ExitStack,
    url: str,
    n: int,
    loop: asyncio.AbstractEventLoop | None = None,
    refused: Refusals = (),
    asyncio_too: bool = True,
) -> list[RoundTrips[R]]:
    """:func:`count_round_trips` for each of ``rows``, through one client connected beforehand."""
    client = stack.enter_context(redis.Redis.from_url(url))
    commandstats(client)  # connect first: the connection's own commands stay out of every count
    counts: list[RoundTrips[R]] = []
    for row in rows:
        counts.append(count_round_trips(row, client, n, loop, refused, asyncio_too))
        progress(f"counted     {row.label}: {counts[-1].per_call:.4f} round trips/call")
    return counts


# ---------------------------------------------------------------------------- report


def markdown_table(columns: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    """A markdown table; a column name ending in ``>`` is right-aligned (the ``>`` is not shown)."""
    names = [c.removesuffix(">") for c in columns]
    rules = [
        ("-" * (len(n) + 1) + ":") if c.endswith(">") else (":" + "-" * (len(n) + 1))
        for c, n in zip(columns, names, strict=True)
    ]
    out = ["| " + " | ".join(names) + " |", "|" + "|".join(rules) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


@dataclass
class Targets:
    """Target lines (``PASS``/``FAIL``/``info``) for the terminal, and their records for JSON."""

    lines: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, passed: bool, ratio: float, detail: str) -> None:
        self.lines.append(f"{verdict(passed)}  {name}  ({detail})")
        self.records.append({"target": name, "passed": passed, "ratio": round(ratio, 4)})


# ---------------------------------------------------------------------------- environment and command line


def redis_server_version() -> str | None:
    path = shutil.which("redis-server")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else out.strip() or "unknown"


_NOT_VERSIONS = ("python", "cpu_count", "cpus_usable", "platform", "pinned_cpu")


def environment(versions: Mapping[str, str | None]) -> dict[str, Any]:
    """Python, ``versions`` (in order; ``redis_py`` is shown as ``redis-py``), CPUs and platform."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        **versions,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
    }


def environment_line(env: Mapping[str, Any]) -> str:
    versions = [f"{k.replace('_', '-')} {v or 'not installed'}" for k, v in env.items() if k not in _NOT_VERSIONS]
    return " | ".join(
        [
            f"Python {env['python']}",
            *versions,
            f"CPUs {env['cpu_count']} (usable {env['cpus_usable']})",
            str(env["platform"]),
        ]
    )


def rounds_line(rounds: int, round_ns: float, quick: bool, what: str) -> str:
    """``N rounds, best round kept; ~X ms per <what>`` and the ``--quick`` warning."""
    return f"{rounds} rounds, best round kept; ~{round_ns / 1e6:g} ms per {what}" + (
        " (--quick: smoke run, not meaningful numbers)" if quick else ""
    )


def parse_args(doc: str | None, argv: Sequence[str] | None, pin: bool = False) -> argparse.Namespace:
    """``--quick`` and ``--json PATH``, and with ``pin`` ``--no-pin``; the description is ``doc``'s first line."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few calls and rounds (numbers are noisy)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    if pin:
        parser.add_argument(
            "--no-pin",
            action="store_true",
            help="do not pin this process and redis-server to one CPU (Redis rows get noisy)",
        )
    return parser.parse_args(argv)


def write_json(path: str | None, result: Mapping[str, Any]) -> None:
    """Write ``result`` to ``path`` (nothing without one)."""
    if not path:
        return
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=2)
        out.write("\n")
