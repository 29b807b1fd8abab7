from __future__ import annotations

from dataclasses import dataclass

from resilient import option

__all__ = ["TRIGGERS", "FallbackOptions"]

#: What may send a call down the fallback chain: policies' refusals and the provider's failures.
TRIGGERS = (
    "circuit_open",
    "quota_exceeded",
    "concurrency_limit",
    "provider_unavailable",
    "deadline_exceeded",
    "timeout",
    "connection",
    "rate_limited",
    "overloaded",
    "server_error",
)


@dataclass(frozen=True, kw_only=True)
class FallbackOptions:
    """``[tool.resilient.fallback]``: what to try, in order, when the primary call fails.

    A step is ``{model = "claude-haiku-4-5"}`` (the same call with its
    ``model`` argument rewritten, through every policy inside the fallback)
    or ``{call = "name"}`` (a function registered with
    :func:`resilient_fallback.register`, or ``"module:function"``, given the
    call and the error: another provider, a canned answer).
    """

    enabled: bool = option(True, doc="Fall back at all.")
    steps: tuple[dict[str, str], ...] = option(
        default_factory=tuple, doc="Steps tried in order: {model = '...'} or {call = 'name' or 'module:function'}."
    )
    on: tuple[str, ...] = option(TRIGGERS, doc=f"Outcomes that move to the next step; any of: {', '.join(TRIGGERS)}.")
    on_status: tuple[int, ...] = option(
        default_factory=tuple, doc="More HTTP statuses that move on (408, 409, 429, 5xx; never another 4xx)."
    )
    on_exceptions: tuple[str, ...] = option(
        default_factory=tuple, doc="Exception classes ('module:Class') that move on, besides the outcomes."
    )
