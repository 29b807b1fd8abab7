from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["RetryGaveUp", "RetryScheduled"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed with ``outcome``; the next starts after ``delay`` seconds."""

    name: ClassVar[str] = "retry.scheduled"
    attempt: int
    delay: float
    outcome: str
    status: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(Event):
    """The error of attempt ``attempts`` is raised; ``reason`` says why no retry."""

    name: ClassVar[str] = "retry.gave_up"
    attempts: int
    reason: str
    outcome: str
    status: int | None = None
