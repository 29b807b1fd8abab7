from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["QuotaPaused", "QuotaRejected", "QuotaStoreUnavailable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaRejected(Event):
    """A call was refused: ``limit`` (e.g. ``requests 50/1minute``) is spent for ``retry_after`` seconds."""

    name: ClassVar[str] = "quota.rejected"
    limit: str
    retry_after: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaPaused(Event):
    """The provider said stop: the key is paused ``seconds`` for every process sharing the store."""

    name: ClassVar[str] = "quota.paused"
    seconds: float
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaStoreUnavailable(Event):
    """The quota store failed; ``fallback`` says what was done instead (local, open, closed)."""

    name: ClassVar[str] = "quota.store_unavailable"
    error: str
    fallback: str
