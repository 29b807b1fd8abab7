from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["FallbackExhausted", "FallbackUsed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """Step ``index`` (``step``, e.g. ``model:claude-haiku-4-5`` or ``call:canned``) answered instead of the primary.

    ``reason`` is why the primary failed (a trigger name or ``status:<code>``);
    ``from_model`` / ``to_model`` are set for model steps; ``model`` is the primary's.
    """

    name: ClassVar[str] = "fallback.used"
    step: str
    index: int
    reason: str
    from_model: str | None = None
    to_model: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackExhausted(Event):
    """Every step failed; the primary's error is raised. ``tried`` names the steps in order."""

    name: ClassVar[str] = "fallback.exhausted"
    tried: tuple[str, ...]
    reason: str
