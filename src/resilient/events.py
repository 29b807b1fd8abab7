"""Events: what policies tell observers (metrics, logs, audit).

Events are frozen objects, so fields can be added without breaking an
observer. Each event class has a constant ``name`` (``"retry.scheduled"``,
``"breaker.opened"``, ...). Fan-out is a plain loop over the observers
collected when the pipeline was built: synchronous, cheap, and isolated -- an
observer that raises is logged and skipped, never seen by the provider call.
Observers must not block; one that needs I/O queues the event and returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["Emitter", "Event", "Observer"]

_log = logging.getLogger("resilient.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event. Subclasses set ``name`` and add their fields.

    ``provider``, ``operation`` and ``model`` say which call it concerns;
    ``tenant`` is present for observers that are allowed to see it (metrics
    drop it unless an allow-list enables it).
    """

    name: ClassVar[str] = "event"
    provider: str | None = None
    operation: str | None = None
    model: str | None = None
    tenant: str | None = None


Observer = Callable[[Event], None]


class Emitter:
    """Delivers events to a fixed tuple of observers.

    ``enabled`` is false when nobody listens, so a policy can skip building
    an event at all: ``if emitter.enabled: emitter.emit(Opened(...))``.
    """

    __slots__ = ("_observers", "enabled")

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self._observers = tuple(observers)
        self.enabled = bool(self._observers)

    @property
    def observers(self) -> tuple[Observer, ...]:
        return self._observers

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                # An observer's bug must never fail the call that emitted.
                _log.exception("observer %r failed on event %s", observer, event.name)
