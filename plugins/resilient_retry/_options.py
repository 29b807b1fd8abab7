from __future__ import annotations

from dataclasses import dataclass

from resilient import Duration, option

__all__ = ["RetryOptions"]


@dataclass(frozen=True, kw_only=True)
class RetryOptions:
    """``[tool.resilient.retry]``: when and how long to retry a failed provider call.

    Only outcomes the provider classification marks retryable are retried
    (connection errors, timeouts, 408, 409, 429, 5xx, 529; never 400, 401,
    403, 404, 413, 422). The wait before attempt *n+1* is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2**(n-1))]`` (full jitter) and is at
    least the provider's ``retry-after`` when it sends one.
    """

    enabled: bool = option(True, doc="Retry at all.")
    max_attempts: int = option(3, min=1, max=100, doc="Attempts in total, the first one included.")
    base_delay: Duration = option(0.5, min=0, doc="Backoff scale: the cap of the first wait, in seconds.")
    max_delay: Duration = option(30.0, min=0, doc="Cap of any single backoff wait, in seconds.")
    deadline: Duration | None = option(
        None, min=0, doc="Give up when the next wait would end past this many seconds after the first attempt."
    )
    respect_retry_after: bool = option(True, doc="Wait at least the provider's retry-after / retry-after-ms.")
    max_retry_after: Duration = option(
        60.0, min=0, doc="A retry-after longer than this is not waited for: the error is raised at once."
    )

    budget_ratio: float | None = option(
        0.2,
        min=0,
        doc="Retries may add at most this share of the calls per window, fleet-wide; none turns the budget off.",
    )
    budget_min: int = option(10, min=0, doc="Retries always allowed per window, so quiet traffic can still retry.")
    budget_window: Duration = option(
        60.0, min=1, doc="Window of the retry budget, in seconds (the section's value: not overridable per key)."
    )

    def __post_init__(self) -> None:
        if self.max_delay < self.base_delay:
            raise ValueError(f"max_delay ({self.max_delay:g}) must be >= base_delay ({self.base_delay:g})")
