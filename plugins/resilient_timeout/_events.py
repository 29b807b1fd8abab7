from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["DeadlinePassed", "TimedOut", "TimeoutOverrun"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut(Event):
    """An attempt or a stream ran out of time (``phase``: attempt, first_chunk, idle) and was cancelled."""

    name: ClassVar[str] = "timeout.expired"
    phase: str
    limit: float
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlinePassed(Event):
    """The call's overall deadline passed; ``DeadlineExceeded`` is raised."""

    name: ClassVar[str] = "timeout.deadline_exceeded"
    deadline: float
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutOverrun(Event):
    """A sync call that could not be interrupted returned after its limit (the result is kept)."""

    name: ClassVar[str] = "timeout.overrun"
    limit: float
    elapsed: float
    attempt: int
