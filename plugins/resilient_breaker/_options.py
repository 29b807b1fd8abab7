from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resilient import Duration, option
from resilient.config import StoreURI

__all__ = ["BreakerOptions"]


@dataclass(frozen=True, kw_only=True)
class BreakerOptions:
    """``[tool.resilient.breaker]``: when a provider (or model) is taken out of rotation.

    Closed: calls go through and their outcomes fill a sliding window. Once
    the window holds ``minimum_calls`` and the share of failures reaches
    ``failure_rate`` (or the share of slow calls reaches ``slow_call_rate``),
    the breaker opens: calls fail at once with ``CircuitOpen`` for
    ``wait_open`` seconds. Then it is half-open: ``half_open_calls`` trial
    calls go through; if their failure share stays under ``failure_rate``
    it closes, else it opens again. What counts as a failure is the provider
    classification's call: 5xx, 529, timeouts and connection errors do; a
    4xx caused by the request does not (it counts as a success: the provider
    answered); 429 and errors not from the provider are not counted at all.
    """

    enabled: bool = option(True, doc="Break circuits at all.")
    key: tuple[Literal["provider", "model", "tenant"], ...] = option(
        ("provider", "model"), doc="What a breaker is kept per."
    )
    failure_rate: float = option(0.5, min=0.01, max=1.0, doc="Share of failures in the window that opens it.")
    window_type: Literal["count", "time"] = option("count", doc="A window of the last N calls, or of N seconds.")
    window_size: int = option(20, min=1, max=10_000, doc="Calls (count window) or seconds (time window).")
    minimum_calls: int = option(10, min=1, doc="Calls the window must hold before the rates are judged.")
    slow_call_duration: Duration | None = option(
        None, min=0, doc="A call slower than this counts as slow; none: durations are not judged."
    )
    slow_call_rate: float = option(1.0, min=0.01, max=1.0, doc="Share of slow calls in the window that opens it.")
    wait_open: Duration = option(30.0, min=0, doc="Seconds open before trial calls are let through.")
    half_open_calls: int = option(3, min=1, max=1000, doc="Trial calls in half-open before deciding.")
    trial_timeout: Duration = option(
        300.0,
        min=1,
        doc="Seconds a trial call may take; a trial not back by then is presumed lost and a new round starts.",
    )
    storage: StoreURI = option("", doc="Store URI for breaker state; empty means the core 'store'.")
    on_store_error: Literal["local", "allow"] = option(
        "local", doc="Store unreachable: 'local' keeps state in this process, 'allow' lets calls through."
    )
    store_retry: Duration = option(5.0, min=0, doc="After a store error, how long to stay off the store.")

    def __post_init__(self) -> None:
        if self.window_type == "count" and self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) cannot exceed window_size ({self.window_size}) "
                "for a count window: the breaker could never open"
            )
