from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import limits

from resilient import Duration, option
from resilient.config import StoreURI

__all__ = ["STRATEGIES", "QuotaOptions", "Strategy", "parse_limits"]

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]
STRATEGIES: tuple[Strategy, ...] = ("moving-window", "fixed-window", "sliding-window-counter")
TOKEN_KINDS = ("input_tokens", "output_tokens", "total_tokens")


#: What a limit string may be, for errors.
LIMIT_FORMS = (
    "limits like '50/minute', several separated by ';' ('50/minute;1000/day'), each '<amount>/<unit>', "
    "'<amount>/<n> <unit>s' or '<amount> per <unit>', the unit one of second, minute, hour, day, month, year; "
    "or '' for no limit"
)


def parse_limits(text: str) -> list[limits.RateLimitItem]:
    """Parse ``"50/minute;1000/day"`` with the ``limits`` library; ``""`` is no limit.

    A string that is not one is a ``ValueError`` saying what is allowed.
    """
    if not text.strip():
        return []
    try:
        return list(limits.parse_many(text))
    except ValueError:
        raise ValueError(f"must be {LIMIT_FORMS}") from None


@dataclass(frozen=True, kw_only=True)
class QuotaOptions:
    """``[tool.resilient.quota]``: request and token limits per provider, model and tenant.

    Limits are the ``limits`` library's strings, several separated by ``;``:
    ``requests = "50/minute;1000/day"``, ``total_tokens = "2000000/minute"``.
    An empty string means no limit of that kind. Overrides per provider,
    model and tenant go in ``providers``/``models``/``tenants`` tables.
    """

    enabled: bool = option(True, doc="Enforce quotas at all.")
    requests: str = option("", doc="Request limits, e.g. '50/minute;1000/day'.", check=parse_limits)
    input_tokens: str = option("", doc="Input-token limits, e.g. '400000/minute'.", check=parse_limits)
    output_tokens: str = option("", doc="Output-token limits, e.g. '80000/minute'.", check=parse_limits)
    total_tokens: str = option("", doc="Total-token (input + output) limits.", check=parse_limits)
    strategy: Strategy = option("moving-window", doc="Window strategy for request limits.")
    token_strategy: Literal["fixed-window", "sliding-window-counter"] = option(
        "sliding-window-counter",
        doc="Window strategy for token limits; O(1) per hit whatever the amount (no moving window: see docs).",
    )
    max_moving_window: int = option(
        10_000,
        min=1,
        doc="A moving-window request limit above this amount is refused: it stores one entry per request.",
    )
    storage: StoreURI = option("", doc="Store URI for quota state; empty means the core 'store'.")
    key: tuple[Literal["provider", "model", "tenant"], ...] = option(
        ("provider", "model", "tenant"), doc="What a quota is counted per."
    )
    wait: bool = option(False, doc="Wait for the window to free (up to max_wait) instead of raising at once.")
    max_wait: Duration = option(30.0, min=0, doc="Longest wait in wait mode, in seconds.")
    input_estimate: Literal["heuristic", "count_tokens"] = option(
        "heuristic",
        doc=(
            "How a token limit estimates a call's input before it runs: 'heuristic' (characters / "
            "chars_per_token, no I/O) or 'count_tokens' (the provider's count-tokens call, one request more "
            "per admitted call, for clients wrapped by pipeline.wrap that have one; the heuristic otherwise)."
        ),
    )
    chars_per_token: float = option(4.0, min=0.5, doc="Input estimate: characters of the request per token.")
    report_remaining: Duration = option(
        10.0,
        min=0,
        doc="How often (seconds, per key and process) the remaining of each limit is read for metrics; 0: never.",
    )
    default_max_tokens: int = option(
        1024, min=0, doc="Output estimate for a call without max_tokens / max_completion_tokens."
    )
    provider_signals: bool = option(
        True, doc="Pause the key for everyone sharing the store when the provider says 429/529 or 0 remaining."
    )
    max_pause: Duration = option(300.0, min=0, doc="Longest pause taken from a provider signal.")
    pause_key: tuple[Literal["provider", "model", "tenant"], ...] = option(
        ("provider", "model", "tenant"),
        doc=(
            "What a provider's 429/529 or exhausted headers pause. ['provider', 'model'] pauses every tenant "
            "calling them, as one API key's limit asks; the default pauses the tenant whose call was refused "
            "(pauses are stored in whole seconds, so a fleet-wide pause on every short retry-after would stop "
            "all traffic)."
        ),
    )
    signal_poll: Duration = option(1.0, min=0, doc="How often a process re-reads the shared pause of a key.")
    on_store_error: Literal["local", "open", "closed"] = option(
        "local",
        doc="Store unreachable: 'local' counts in process memory, 'open' admits, 'closed' refuses.",
    )
    store_retry: Duration = option(5.0, min=0, doc="After a store error, how long to stay off the store.")

    def __post_init__(self) -> None:
        for name in ("requests", *TOKEN_KINDS):
            try:
                items = parse_limits(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name} = {getattr(self, name)!r}: {exc}") from None
            if name == "requests" and self.strategy == "moving-window":
                for item in items:
                    if item.amount > self.max_moving_window:
                        raise ValueError(
                            f"requests = {getattr(self, name)!r}: a moving window of {item.amount} stores "
                            f"{item.amount} entries per key; use strategy = 'sliding-window-counter' or "
                            f"'fixed-window', or raise max_moving_window"
                        )
