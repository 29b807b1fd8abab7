from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["BulkheadRejected"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadRejected(Event):
    """A call was refused a slot: ``reason`` is ``full`` (no queue room) or ``timeout`` (waited ``max_wait``)."""

    name: ClassVar[str] = "bulkhead.rejected"
    key: str
    limit: int
    in_flight: int
    waiting: int
    reason: str
