"""``make chaos``: run every chaos scenario with progress, print the table, write it into docs/reliability.md.

The table has one row per scenario: what load it held, what faults it
injected, how many requests were answered as designed, how many were lost
(must be 0) and how many answers, log lines or metrics carried a secret
(must be 0), with the scenario's outcome. It goes between the markers of
docs/reliability.md with the machine and the versions it ran on. The exit
status is pytest's.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
START = "<!-- chaos:results:start (written by make chaos, tests/chaos/report.py; edit outside the markers) -->"
END = "<!-- chaos:results:end -->"
PACKAGES = (
    "resilient",
    "redis",
    "limits",
    "uvicorn",
    "starlette",
    "fastapi",
    "flask",
    "anthropic",
    "httpx",
    "hypothesis",
)


def machine() -> list[str]:
    redis_version = "not installed"
    if shutil.which("redis-server"):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
        redis_version = next((part[2:] for part in out.split() if part.startswith("v=")), out.strip())
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return [
        f"- machine: {platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), shared with other work",
        f"- Python {platform.python_version()}, redis-server {redis_version}",
        f"- {', '.join(versions)}",
    ]


def table(rows: list[dict[str, Any]]) -> list[str]:
    numbers = {r["scenario"]: r for r in rows if "scenario" in r}
    outcomes = {r["outcome_of"]: r for r in rows if "outcome_of" in r}
    lines = [
        "| scenario | load held | faults injected | answered | lost | secrets leaked | outcome (s) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name, outcome in outcomes.items():
        row = numbers.get(name)
        if row is None:
            continue
        lines.append(
            f"| `{name}` | {row['load']} | {row['faults']} | {row['answered']} | {row['lost']} | {row['leaked']} "
            f"| {outcome['outcome']} ({outcome['seconds']:g}) |"
        )
    counted = [o for n, o in outcomes.items() if n not in numbers]
    if counted:
        by_outcome: dict[str, int] = {}
        for o in counted:
            by_outcome[o["outcome"]] = by_outcome.get(o["outcome"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(by_outcome.items()))
        lines.append(
            f"| the other checks (harness, hostile input, isolation, secured Redis, control endpoints) | | | | | "
            f"| {summary} ({sum(o['seconds'] for o in counted):.0f}) |"
        )
    return lines


def write_doc(block: list[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{DOC}: the markers {START!r} and {END!r} are missing")
    DOC.write_text(head + START + "\n" + "\n".join(block) + "\n" + END + tail, encoding="utf-8")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        report = Path(tmp) / "rows.jsonl"
        report.touch()
        env = {**os.environ, "CHAOS": "all", "CHAOS_REPORT": str(report), "RESILIENT_REQUIRE_REDIS": "1"}
        started = time.monotonic()
        command = [sys.executable, "-m", "pytest", "tests/chaos", "-v", "-p", "no:cacheprovider", "-n0"]
        if subprocess.run([sys.executable, "-c", "import xdist"], capture_output=True, check=False).returncode:
            command.remove("-n0")
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        elapsed = time.monotonic() - started
        rows = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = table(rows)
    lost = sum(int(r.get("lost", 0)) for r in rows)
    leaked = sum(int(r.get("leaked", 0)) for r in rows)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [
        "",
        f"Run {when}, {elapsed / 60:.1f} minutes in all; pytest exit status {status}. "
        f"Requests lost: {lost}; secrets leaked: {leaked}.",
        "",
        *machine(),
        "",
        *lines,
        "",
    ]
    print("\n".join(block))
    write_doc(block)
    print(f"written into {DOC.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
