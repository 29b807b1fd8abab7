"""Run every ``benchmarks/bench_*.py`` in one go and collect their tables into one markdown report.

Each script runs in its own process, one after the other (so they do not
compete for the CPU), with its progress lines shown as they come, prefixed by
the script's name, and a time limit. Its markdown tables and its result lines
(``PASS``/``FAIL``/``info``/``note``) are collected into
``benchmarks/results.md``, under the machine and the versions of the run, and
the same text replaces what sits between the markers in
``docs/performance.md`` (the rest of that page is left alone).

Run: ``.venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout S] [--no-docs]``
(``make bench``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.md"
DOC = ROOT / "docs" / "performance.md"
START = "<!-- bench:results:start (written by benchmarks/run_all.py; edit outside the markers) -->"
END = "<!-- bench:results:end -->"
# The headline first; then the rest in name order.
FIRST = ("bench_stack.py", "bench_pipeline.py")
VERSIONS = (
    "resilient",
    "limits",
    "redis",
    "orjson",
    "tenacity",
    "stamina",
    "pybreaker",
    "purgatory",
    "cachetools",
    "aiocache",
    "prometheus-client",
    "slowapi",
    "prometheus-fastapi-instrumentator",
    "starlette",
    "uvicorn",
)
RESULT_LINE = re.compile(r"^(PASS|FAIL|info|note)\b")


@dataclass
class Outcome:
    script: str
    seconds: float = 0.0
    code: int | None = None
    timed_out: bool = False
    stdout: list[str] = field(default_factory=list)

    def tables(self) -> list[str]:
        """Every markdown table of the script's output, with the plain line just above it as its caption."""
        found: list[str] = []
        lines = self.stdout
        i = 0
        while i < len(lines):
            if lines[i].startswith("|"):
                j = i
                while j < len(lines) and lines[j].startswith("|"):
                    j += 1
                caption = lines[i - 1].strip() if i > 0 and lines[i - 1].strip() else ""
                body = "\n".join(lines[i:j])
                found.append(f"{caption}\n\n{body}" if caption and not caption.startswith("|") else body)
                i = j
            else:
                i += 1
        return found

    def results(self) -> list[str]:
        return [line for line in self.stdout if RESULT_LINE.match(line)]

    def environment(self) -> str:
        return next((line for line in self.stdout if line.startswith("Python ")), "")


def scripts(only: Sequence[str]) -> list[Path]:
    found = sorted(
        HERE.glob("bench_*.py"),
        key=lambda p: (p.name not in FIRST, FIRST.index(p.name) if p.name in FIRST else 0, p.name),
    )
    if only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in only}
        wanted = {n if n.endswith(".py") else f"{n}.py" for n in wanted}
        found = [p for p in found if p.name in wanted]
    return found


def _pump(stream: IO[str], sink: list[str] | None, prefix: str) -> None:
    for line in stream:
        line = line.rstrip("\n")
        if sink is not None:
            sink.append(line)
        else:
            print(f"{prefix}{line}", file=sys.stderr, flush=True)


def run_one(path: Path, quick: bool, timeout: float, index: int, total: int) -> Outcome:
    outcome = Outcome(path.name)
    prefix = f"[{index}/{total} {path.stem}] "
    print(f"{prefix}starting", file=sys.stderr, flush=True)
    cmd = [sys.executable, str(path), *(["--quick"] if quick else [])]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, outcome.stdout, prefix), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, None, prefix), daemon=True),
    ]
    for t in pumps:
        t.start()
    try:
        outcome.code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        outcome.timed_out = True
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for t in pumps:
        t.join(timeout=5)
    outcome.seconds = time.perf_counter() - started
    state = "timed out" if outcome.timed_out else f"exit {outcome.code}"
    print(f"{prefix}done in {outcome.seconds:.0f} s ({state})", file=sys.stderr, flush=True)
    return outcome


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"v=(\S+)", redis)
    versions = ", ".join(f"{name} {_version(name)}" for name in VERSIONS)
    return (
        f"- Machine: {cpu or platform.processor() or 'unknown CPU'}, {platform.platform()}\n"
        f"- Python: {platform.python_implementation()} {platform.python_version()}; "
        f"redis-server {found.group(1) if found else 'not installed'}\n"
        f"- Versions: {versions}"
    )


def report(outcomes: Sequence[Outcome], quick: bool, seconds: float) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"Full run of `make bench` ({when}, {seconds / 60:.1f} min"
        + (", `--quick`: smoke run, numbers not meaningful" if quick else "")
        + "). Every row of a table was timed in the same run as the rows it is compared with.",
        "",
        machine(),
        "",
    ]
    for o in outcomes:
        title = o.script.removesuffix(".py")
        out += [f"### {title}", ""]
        if o.timed_out:
            out += [f"*{o.script} timed out; what it printed before:*", ""]
        elif o.code != 0:
            out += [f"*{o.script} exited {o.code} (a missed target, or an error: see the lines below)*", ""]
        env = o.environment()
        if env:
            out += [f"<sub>{env}</sub>", ""]
        for table in o.tables():
            out += [table, ""]
        results = o.results()
        if results:
            out += ["```", *results, "```", ""]
        if (o.timed_out or o.code != 0) and not o.tables():
            out += ["```", *o.stdout[-15:], "```", ""]
    return "\n".join(out).rstrip() + "\n"


def update_doc(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    block = f"{START}\n\n{text}\n{END}"
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        after = rest.split(END, 1)[1]
        doc = before + block + after
    else:
        doc = doc.rstrip() + "\n\n## Latest full run\n\n" + block + "\n"
    DOC.write_text(doc, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every script (numbers are not meaningful)")
    parser.add_argument(
        "--only", nargs="*", default=[], metavar="NAME", help="run only these (stack, bench_cache, ...)"
    )
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each script may take (default 240)")
    parser.add_argument("--no-docs", action="store_true", help="write benchmarks/results.md only")
    args = parser.parse_args(argv)

    paths = scripts(args.only)
    if not paths:
        print("no benchmark matched", file=sys.stderr)
        return 2
    started = time.perf_counter()
    outcomes = [run_one(p, args.quick, args.timeout, i, len(paths)) for i, p in enumerate(paths, start=1)]
    seconds = time.perf_counter() - started
    text = report(outcomes, args.quick, seconds)
    RESULTS.write_text("# Benchmark results\n\n" + text, encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    if not args.no_docs and not args.quick and not args.only:
        update_doc(text)
        print(f"updated {DOC.relative_to(ROOT)} between its markers", file=sys.stderr)
    missed = [o.script for o in outcomes if o.code not in (0, None) and o.tables()]
    if missed:
        print(f"exited non-zero (missed targets?): {', '.join(missed)}", file=sys.stderr)
    failed = [o.script for o in outcomes if o.timed_out or (o.code != 0 and not o.tables())]
    if failed:
        print(f"failed or timed out: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
