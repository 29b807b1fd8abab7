from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["BreakerRejected", "BreakerStateChanged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStateChanged(Event):
    """The breaker ``key`` moved to ``state`` (open, half_open, closed, forced_open, forced_closed)."""

    name: ClassVar[str] = "breaker.state_changed"
    key: str
    state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerRejected(Event):
    """A call was refused because the breaker ``key`` is open; ``retry_after`` until trials."""

    name: ClassVar[str] = "breaker.rejected"
    key: str
    retry_after: float | None
