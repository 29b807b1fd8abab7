"""Reading a provider's rate-limit signals into a pause, pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

__all__ = ["pause_from_headers"]

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float | None:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``."""
    parts = _GO_DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _rfc3339(text: str, now: float) -> float | None:
    """Anthropic's reset format: an RFC 3339 timestamp; seconds from ``now``."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp() - now


def pause_from_headers(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until the provider has capacity again, when a rate-limit header says it has none.

    Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining``
    and ``-reset`` (RFC 3339). OpenAI: ``x-ratelimit-remaining-{requests,tokens}`` and
    ``x-ratelimit-reset-{requests,tokens}`` (``6m0s``). Returns the longest
    reset among the exhausted limits, or ``None`` if none is exhausted.
    """
    # Almost every response has capacity left: no header at all is "0", which a pause needs. That is
    # checked first, on the raw bytes of httpx's (and httpx2's) Headers when they are there: their str
    # views decode every header on each read (9 us for an anthropic response's headers, against 2).
    raw = getattr(headers, "raw", None)
    if isinstance(raw, list):
        if not any(value.strip() == b"0" for _, value in raw):
            return None
    elif not any(str(value).strip() == "0" for value in headers.values()):
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    pauses: list[float] = []
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        remaining = lowered.get(f"anthropic-ratelimit-{kind}-remaining")
        reset = lowered.get(f"anthropic-ratelimit-{kind}-reset")
        if remaining is not None and reset is not None and remaining.strip() == "0":
            seconds = _rfc3339(reset, now)
            if seconds is not None:
                pauses.append(seconds)
    for kind in ("requests", "tokens"):
        remaining = lowered.get(f"x-ratelimit-remaining-{kind}")
        reset = lowered.get(f"x-ratelimit-reset-{kind}")
        if remaining is not None and reset is not None and remaining.strip() == "0":
            seconds = _duration(reset)
            if seconds is not None:
                pauses.append(seconds)
    positive = [p for p in pauses if p > 0]
    return max(positive) if positive else None
