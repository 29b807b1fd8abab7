"""Logic written once, as a generator of steps, and the two drivers that run it.

A step is a small object naming one store operation (or a wait). The
logic yields it and is sent back its result, or thrown its error, so one and
the same code decides for sync and async calls. The drivers differ only in
that the async one awaits what performing a step returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["Steps", "adrive", "drive"]

S = TypeVar("S")
T = TypeVar("T")

#: Logic that yields steps of type ``S``, is sent their results and returns a ``T``.
Steps = Generator[S, Any, T]


def drive(steps: Steps[S, T], perform: Callable[[S], Any]) -> T:
    """Run ``steps`` to its end, performing each step as it comes."""
    send, throw = steps.send, steps.throw
    try:
        step = send(None)
        while True:
            try:
                result = perform(step)
            except BaseException as exc:  # the logic decides what a failed step means
                step = throw(exc)
            else:
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(steps: Steps[S, T], perform: Callable[[S], Awaitable[Any]]) -> T:
    """:func:`drive`, awaiting each step."""
    send, throw = steps.send, steps.throw
    try:
        step = send(None)
        while True:
            try:
                result = await perform(step)
            except BaseException as exc:
                step = throw(exc)
            else:
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
