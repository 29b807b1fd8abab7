"""Events: what policies tell observers (metrics, logs, audit).

Events are frozen objects, so fields can be added without breaking an
observer. Each event class has a constant ``name`` (``"retry.scheduled"``,
``"breaker.opened"``, ...). Fan-out is a plain loop over the observers
collected when the pipeline was built: synchronous, cheap, and isolated -- an
observer that raises is logged and skipped, never seen by the provider call.
Observers must not block; one that needs I/O queues the event and returns.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["Count", "CountingObserver", "Emitter", "Event", "Observer"]

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Not super(): dataclass(slots=True) replaces this class, and the zero-argument form would
        # still name the class it replaced.
        super(Event, cls).__init_subclass__(**kwargs)
        _fast_init(cls)


def _fast_init(cls: type) -> None:
    """Give a frozen, slotted, keyword-only event class an ``__init__`` that costs a third of dataclass's.

    A frozen dataclass sets each field with ``object.__setattr__(self, name,
    value)``, a global lookup, an attribute lookup and a generic setattr per
    field: ~1.8 us for a six-field event, and the cache emits two per miss.
    The slot's own descriptor sets the same value without any lookup. This
    runs when ``@dataclass(slots=True)`` builds the final class (its
    generated ``__init__`` is then in the class); any class this does not
    fit (not frozen, not slotted, a positional or computed field, a
    ``__post_init__``) keeps dataclass's ``__init__``.
    """
    params = cls.__dict__.get("__dataclass_params__")
    fields = cls.__dict__.get("__dataclass_fields__")
    if params is None or fields is None or not params.frozen or "__slots__" not in cls.__dict__:
        return
    if hasattr(cls, "__post_init__") or "__init__" not in cls.__dict__:
        return
    names: list[tuple[int, str, str]] = []
    namespace: dict[str, Any] = {}
    for i, (name, f) in enumerate(fields.items()):
        kind = getattr(getattr(f, "_field_type", None), "name", None)
        if kind == "_FIELD_CLASSVAR":  # ``name``: not an argument
            continue
        if kind != "_FIELD" or not f.init or not f.kw_only:  # an InitVar, a positional or computed field
            return
        if f.default_factory is not dataclasses.MISSING:
            return
        slot = getattr(cls, name, None)
        if type(slot) is not types.MemberDescriptorType:
            return
        namespace[f"_set{i}"] = slot.__set__
        if f.default is dataclasses.MISSING:
            names.append((i, name, ""))
        else:
            namespace[f"_default{i}"] = f.default
            names.append((i, name, f"=_default{i}"))
    params_text = ", ".join(f"{name}{default}" for _, name, default in names)
    body = "".join(f"\n    _set{i}(self, {name})" for i, name, _ in names) or "\n    pass"
    # Only field names (identifiers) and the names made above go into the source.
    exec(f"def __init__(self, *, {params_text}):{body}", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__dict__["__init__"].__doc__
    cls.__init__ = init  # type: ignore[misc]


Observer = Callable[[Event], None]

#: What an observer's ``bind_count`` returns: the whole effect of one event, taking no argument.
Count = Callable[[], None]


class CountingObserver(Protocol):
    """An observer that can say, for some events, that it only counts them by name, provider, operation and model.

    ``bind_count(cls, provider, operation, model)`` returns a callable with
    exactly the effect of ``observer(event)`` for any event of class ``cls``
    with those four fields (whatever its other fields), or ``None`` when the
    observer needs to see the event itself. The callable must not raise. The
    metrics observer does this for the events it only counts (cache lookups
    by result, events by name), so a policy whose only listener is that
    observer can skip building the event (see :meth:`Emitter.counter`).
    """

    def __call__(self, event: Event, /) -> None: ...

    def bind_count(self, cls: type[Event], provider: str, operation: str, model: str | None, /) -> Count | None: ...


def _nothing() -> None:
    pass


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

    def counter(self, cls: type[Event], provider: str, operation: str, model: str | None) -> Count | None:
        """The effect of emitting any ``cls`` event with these fields, bound once; ``None`` if it must be emitted.

        Not ``None`` only when every observer is a :class:`CountingObserver`
        that binds it: then calling the result is, for every observer,
        exactly what emitting the event would have done, and a policy on a
        hot path may call it instead of building the event. Any other
        observer (a user's log, an audit) makes this ``None``, and the event
        is built and emitted as usual. Bind once per target and model, not
        per call.
        """
        bound: list[Count] = []
        for observer in self._observers:
            bind = getattr(observer, "bind_count", None)
            if bind is None:
                return None
            try:
                found = bind(cls, provider, operation, model)
            except Exception:
                _log.exception("observer %r failed to bind %s", observer, cls.name)
                return None
            if found is None:
                return None
            bound.append(found)
        if not bound:
            return _nothing
        if len(bound) == 1:
            return bound[0]
        counts = tuple(bound)

        def count_all() -> None:
            for count in counts:
                count()

        return count_all

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                # An observer's bug must never fail the call that emitted.
                _log.exception("observer %r failed on event %s", observer, event.name)
