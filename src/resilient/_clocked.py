"""``limits``' memory storages and strategies counting on the pipeline's clock.

``limits`` reads ``time.time()`` itself, in its memory storages and in the
sliding-window counter's window stats, and takes no clock. A pipeline built on
another clock (a :class:`~resilient.testing.FakeClock` in a test, or a user's)
must count its rate-limit windows on that clock, or a window the test moves
past never ends, and a refusal's retry-after is measured between two different
times (years apart on a fake clock starting in 2023).

Why this is hand-written: no library does it, and writing a second memory
storage would mean keeping it in step with ``limits``' own. The classes here
are ``limits``' classes: subclasses whose methods are ``limits``' very
functions, rebuilt over a copy of their module's globals in which ``time`` is
the clock. Other classes of that module the methods name (the memory storage's
``Entry``) are rebuilt the same way. Built once per clock, when a pipeline
opens its store. A network store keeps its server's time: a Redis key's TTL
runs on the server's clock, whatever the client's.
"""

from __future__ import annotations

import inspect
import sys
import time
import types
from collections.abc import Callable
from typing import Any, TypeVar

import limits.aio.strategies
import limits.strategies

from .clock import Clock

__all__ = ["is_real_time", "on_clock", "strategies_on", "wall_of"]

T = TypeVar("T", bound=type)


def is_real_time(clock: Clock | None) -> bool:
    """Whether ``clock``'s wall time is ``time.time`` itself (the system clock's), as ``limits`` reads it."""
    return clock is None or getattr(clock, "time", None) is time.time


class _TimeOn:
    """What the rebuilt functions see as ``time``: the ``time`` module, its ``time()`` the clock's.

    Callable too, for a ``limits`` that would import ``time`` from ``time``.
    """

    def __init__(self, clock: Clock) -> None:
        self.time = clock.time

    def __call__(self) -> float:
        return self.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _rebuilt(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    new = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__, new.__doc__, new.__module__ = fn.__qualname__, fn.__doc__, fn.__module__
    return new


def _subclass(cls: type, namespace: dict[str, Any], clock: Clock) -> type:
    """``cls`` with the functions its module defines (in it and its bases from that module) rebuilt."""
    body: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "resilient_clock": clock}
    for klass in reversed(cls.__mro__):
        if klass.__module__ != cls.__module__:
            continue
        for name, value in vars(klass).items():
            # limits wraps some storage methods (errors into StorageError), some twice; its __init_subclass__
            # wraps the rebuilt ones again, so the function under the wrappers is what is rebuilt.
            inner = inspect.unwrap(value) if isinstance(value, types.FunctionType) else value
            if isinstance(inner, types.FunctionType) and inner.__module__ == cls.__module__:
                body[name] = _rebuilt(inner, namespace)
    return type(cls.__name__, (cls,), body)


def _family(module: types.ModuleType, clock: Clock) -> dict[type, type]:
    """Every class ``module`` defines, rebuilt on ``clock`` over one namespace (so they see each other)."""
    namespace = dict(vars(module))
    namespace["time"] = _TimeOn(clock)
    rebuilt: dict[type, type] = {}
    for name, value in vars(module).items():
        if isinstance(value, type) and value.__module__ == module.__name__:
            if value not in rebuilt:
                rebuilt[value] = _subclass(value, namespace, clock)
            namespace[name] = rebuilt[value]
    return rebuilt


def on_clock(cls: T, clock: Clock) -> T:
    """A subclass of ``cls`` (a ``limits`` class) whose methods read ``clock.time()`` where ``limits`` reads
    ``time.time()``; ``cls`` itself when the clock is the system clock."""
    if is_real_time(clock):
        return cls
    return _family(sys.modules[cls.__module__], clock)[cls]  # type: ignore[return-value]


def strategies_on(clock: Clock, *, aio: bool = False) -> dict[str, Any]:
    """``limits``' strategy classes by name (sync, or ``limits.aio``'s), counting on ``clock``."""
    module = limits.aio.strategies if aio else limits.strategies
    if is_real_time(clock):
        return dict(module.STRATEGIES)
    family = _family(module, clock)
    return {name: family[cls] for name, cls in module.STRATEGIES.items()}


def wall_of(obj: Any) -> Callable[[], float]:
    """The wall time a ``limits`` storage or strategy counts on: its clock's, else ``time.time``."""
    clock = getattr(type(obj), "resilient_clock", None)
    return time.time if clock is None else clock.time
