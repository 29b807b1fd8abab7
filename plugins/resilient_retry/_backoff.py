"""The retry decision, pure: no clock, no sleep, no I/O."""

from __future__ import annotations

from collections.abc import Callable

from resilient import Outcome

from ._options import RetryOptions

__all__ = ["backoff_cap", "next_delay"]


def backoff_cap(options: RetryOptions, attempt: int) -> float:
    """The largest backoff before attempt ``attempt + 1``: ``min(max_delay, base_delay * 2**(attempt-1))``."""
    exponent = min(attempt - 1, 64)  # 2**64 already exceeds any sane cap; avoid float overflow
    return min(options.max_delay, options.base_delay * (2.0**exponent))


def next_delay(
    options: RetryOptions,
    outcome: Outcome,
    attempt: int,
    elapsed: float,
    random: Callable[[], float],
) -> tuple[float | None, str]:
    """How long to wait before retrying after ``attempt`` failed with ``outcome``.

    Returns ``(delay, "")`` to retry, or ``(None, reason)`` to give up:
    ``not_retryable``, ``attempts``, ``retry_after_too_long`` or ``deadline``.
    ``elapsed`` is the time since the first attempt started.
    """
    if not outcome.retryable:
        return None, "not_retryable"
    if attempt >= options.max_attempts:
        return None, "attempts"
    delay = random() * backoff_cap(options, attempt)
    if options.respect_retry_after and outcome.retry_after is not None:
        if outcome.retry_after > options.max_retry_after:
            return None, "retry_after_too_long"
        delay = max(delay, outcome.retry_after)
    if options.deadline is not None and elapsed + delay > options.deadline:
        return None, "deadline"
    return delay, ""
