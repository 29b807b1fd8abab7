from __future__ import annotations

from typing import Literal

__all__ = ["AttemptTimeout", "Phase"]

#: What ran out: an attempt, a stream's wait for its first chunk, or a stream's silence between chunks.
Phase = Literal["attempt", "first_chunk", "idle"]


class AttemptTimeout(TimeoutError):
    """An attempt (or a stream's wait for a chunk) took longer than its limit.

    A :class:`TimeoutError`, not a :class:`~resilient.ResilientError`: the
    provider classification reads it as a ``timeout`` outcome, retryable and
    the provider's fault, so retry tries again and the breaker counts it.
    The message names the phase and the limit only, never the request.
    """

    def __init__(self, phase: Phase, limit: float, *, provider: str | None = None, model: str | None = None) -> None:
        self.phase: Phase = phase
        self.limit = limit
        self.provider = provider
        self.model = model
        what = {"attempt": "attempt", "first_chunk": "first stream chunk", "idle": "next stream chunk"}[phase]
        super().__init__(f"{what} took longer than {limit:g}s ({provider or '?'}/{model or '?'})")
