"""Masking throughput in MB/s on a large synthetic log: the one-pass masker against the detectors one by one.

The log is what a service calling LLM providers writes: structured access
lines (request id, tenant, model, tokens, durations), httpx request lines,
retry warnings, JSON event lines, prompt excerpts and traceback frames; one
line in a hundred carries a secret or personal data (an Anthropic or OpenAI
key, a bearer header, a JWT, a URL password, a Gemini ``?key=``, an e-mail,
a card number, a phone number). A second, clean log has no secrets.

Rows, each over the same text and each checked to produce the same output:

* ``one pass``: :meth:`resilient.masking.Masker.mask` — anchors looked for
  in the lower-cased text, then one compiled alternation of the detectors
  whose anchors are present, one ``re.sub``;
* ``one by one``: the same detectors, each its own compiled pattern and its
  own ``re.sub`` over the text, in turn (what a loop over patterns does; each
  pattern keeps its own literal-prefix scan);
* both applied to the whole text at once and line by line (as the logging
  filter sees a log: one short string per record);
* ``str.lower`` and one ``re.search`` of a pattern that never matches, as
  the floor of "one scan".

Run: ``.venv/bin/python benchmarks/bench_masking.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import gc
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _harness
from resilient.masking import Masker, default_detectors

# ---------------------------------------------------------------------------- the log

_MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o-mini", "gpt-4.1", "gemini-2.5-flash")
_TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
_WORDS = [
    "summarise",
    "the",
    "quarterly",
    "report",
    "for",
    "the",
    "board",
    "and",
    "list",
    "three",
    "risks",
    "with",
    "owners",
    "dates",
    "and",
    "a",
    "short",
    "plan",
    "translate",
    "this",
    "paragraph",
    "into",
    "French",
    "keep",
    "the",
    "tone",
    "formal",
    "answer",
    "in",
    "bullet",
    "points",
    "explain",
    "the",
    "error",
]


def _secret(rng: random.Random) -> str:
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

    def s(n: int) -> str:
        return "".join(rng.choice(alnum) for _ in range(n))

    choices = (
        f"anthropic.AuthenticationError: invalid x-api-key sk-ant-api03-{s(93)}AA",
        f"openai key sk-proj-{s(120)} rejected",
        f"headers={{'authorization': 'Bearer {s(40)}', 'content-type': 'application/json'}}",
        f"token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{s(30)}.{s(43)}",
        f"connecting to redis://:{s(16)}@cache.internal:6379/0",
        f"POST https://generativelanguage.googleapis.com/v1beta/models/gemini:generateContent?key=AIza{s(35)}",
        f"user {s(8).lower()}@example.com asked for a refund",
        "payment card 4111 1111 1111 1111 declined",
        "callback number +44 20 7946 0958",
    )
    return rng.choice(choices)


def synthetic_log(size: int, *, secret_every: int = 100, seed: int = 7) -> str:
    """About ``size`` characters of log; one line in ``secret_every`` carries a secret (0: none)."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    n = 0
    while total < size:
        n += 1
        ts = f"2026-11-23T14:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z"
        kind = rng.randrange(6)
        if kind == 0:
            line = (
                f"{ts} INFO resilient.audit request_id={rng.getrandbits(128):032x} tenant={rng.choice(_TENANTS)} "
                f"provider=anthropic model={rng.choice(_MODELS)} outcome=success attempts={rng.randint(1, 3)} "
                f"input_tokens={rng.randint(10, 9000)} output_tokens={rng.randint(1, 2000)} "
                f"duration_ms={rng.uniform(50, 9000):.1f}"
            )
        elif kind == 1:
            line = f'{ts} INFO httpx HTTP Request: POST https://api.anthropic.com/v1/messages "HTTP/1.1 200 OK"'
        elif kind == 2:
            line = (
                f"{ts} WARNING resilient.retry retrying anthropic:messages.create after 429 "
                f"(attempt {rng.randint(1, 3)} of 4), sleeping {rng.uniform(0.1, 8):.2f}s"
            )
        elif kind == 3:
            line = (
                f'{{"ts": "{ts}", "level": "info", "event": "chat.completion", "user_id": {rng.randint(1, 99999)}, '
                f'"prompt_chars": {rng.randint(10, 9000)}, "latency_ms": {rng.randint(40, 9000)}, '
                f'"cache": "{rng.choice(("hit", "miss"))}"}}'
            )
        elif kind == 4:
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30)))
            line = f'{ts} DEBUG app.chat prompt="{words}"'
        else:
            line = (
                f'  File "/srv/app/.venv/lib/python3.11/site-packages/anthropic/_base_client.py", '
                f"line {rng.randint(100, 2000)}, in _request"
            )
        if secret_every and rng.randrange(secret_every) == 0:
            line += " " + _secret(rng)
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- timing


def best_seconds(fn: Callable[[], Any], rounds: int) -> float:
    """The best of ``rounds`` runs of ``fn``, with the garbage collector off."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return best


def main(argv: Sequence[str] | None = None) -> int:
    args = _harness.parse_args(__doc__, argv)
    size = 500_000 if args.quick else 4_000_000
    rounds = 2 if args.quick else 5
    env = _harness.environment({})
    print(_harness.environment_line(env))
    print(f"{rounds} rounds, best kept; log of {size / 1e6:g} MB" + (" (--quick: smoke run)" if args.quick else ""))

    masker = Masker(default_detectors())
    one_by_one = masker.one_by_one()
    never = re.compile(r"\x00never\x01")
    results: dict[str, Any] = {"environment": env, "rows": []}
    targets = _harness.Targets()
    table: list[list[str]] = []
    for corpus, every in (("mixed (1% of lines with a secret)", 100), ("clean", 0)):
        text = synthetic_log(size, secret_every=every)
        lines = text.splitlines(keepends=True)
        mb = len(text.encode()) / 1e6
        expected = masker.mask(text)
        if one_by_one(text) != expected or "".join(masker.mask(x) for x in lines) != expected:
            raise SystemExit("bench setup: one pass and one by one disagree")
        if every == 0 and expected != text:
            raise SystemExit("bench setup: the clean log was changed (a false positive)")
        rows: list[tuple[str, Callable[[], Any]]] = [
            ("floor: str.lower", text.lower),
            ("floor: one re.search", lambda t=text: never.search(t)),  # type: ignore[misc]
            ("one pass, whole text", lambda t=text: masker.mask(t)),  # type: ignore[misc]
            ("one by one, whole text", lambda t=text: one_by_one(t)),  # type: ignore[misc]
            ("one pass, line by line", lambda ls=lines: [masker.mask(x) for x in ls]),  # type: ignore[misc]
            ("one by one, line by line", lambda ls=lines: [one_by_one(x) for x in ls]),  # type: ignore[misc]
        ]
        speeds: dict[str, float] = {}
        for name, fn in rows:
            _harness.progress(f"{corpus}: {name}")
            seconds = best_seconds(fn, rounds)
            speeds[name] = mb / seconds
            results["rows"].append({"corpus": corpus, "row": name, "mb_per_s": round(mb / seconds, 2)})
        for name, _ in rows:
            ratio = speeds[name] / speeds["one by one, whole text"]
            table.append([corpus, name, f"{speeds[name]:,.1f}", f"{ratio:.2f}x"])
        for scope in ("whole text", "line by line"):
            ratio = speeds[f"one pass, {scope}"] / speeds[f"one by one, {scope}"]
            targets.record(
                f"{corpus}, {scope}: one pass faster than one by one",
                ratio > 1.0,
                ratio,
                f"{ratio:.2f}x: {speeds[f'one pass, {scope}']:.1f} vs {speeds[f'one by one, {scope}']:.1f} MB/s",
            )
    print()
    print(_harness.markdown_table(["log", "row", "MB/s>", "vs one by one, whole text>"], table))
    print()
    print("\n".join(targets.lines))
    results["targets"] = targets.records
    _harness.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
