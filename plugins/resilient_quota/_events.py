from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["QuotaPaused", "QuotaRejected", "QuotaRemaining", "QuotaStoreUnavailable"]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaRemaining(Event):
    """What is left of ``limit`` for the key (as read from the store), and in how many seconds it resets.

    Emitted after an admitted call at most once per ``report_remaining``
    seconds per key and process, and with ``remaining=0`` when a call is refused.
    """

    name: ClassVar[str] = "quota.remaining"
    limit: str
    remaining: int
    reset_in: float
