from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = ["RoutingDecided"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingDecided(Event):
    """A call's model was chosen: ``rule`` is ``function``, ``rule:<index>`` or ``default`` (kept as asked).

    ``from_model`` is the model the caller asked for, ``to_model`` (also
    ``model``) the one used; ``input_tokens`` the estimate when a rule needed it.
    """

    name: ClassVar[str] = "routing.decided"
    from_model: str | None
    to_model: str | None
    rule: str
    input_tokens: int | None = None
