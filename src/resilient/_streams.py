"""Driving a stream through the chain, sync and async.

The chain's stream handler runs when the consumer asks for the first chunk
(a guarded generator behaves like a generator). If no policy registered a
chunk or end watcher, the chunks pass straight through with ``yield from``;
otherwise one loop feeds the watchers, whatever the number of policies. No
chunk is kept. When the consumer stops early (``close()``, ``break``,
garbage collection), the provider's iterator is closed and the watchers see
:data:`~resilient.call.ABANDONED`.

Guarded generators are for iterating: with watchers active, values passed
with ``send()`` and exceptions passed with ``throw()`` are not forwarded to
the provider's generator (without watchers, ``yield from`` forwards them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any, TypeVar

from .call import ABANDONED, SUCCESS, Call, Outcome

__all__ = ["AsyncStarted", "Started", "drive_astream", "drive_stream"]

_log = logging.getLogger("resilient")

Classify = Callable[[BaseException], Outcome]


def _notify_end(call: Call, outcome: Outcome) -> None:
    call.outcome = outcome
    for watcher in call._on_end or ():
        try:
            watcher(call, outcome)
        except Exception:
            _log.exception("stream end watcher %r failed", watcher)


def _notify_chunk(call: Call, chunk: Any) -> None:
    for watcher in call._on_chunk or ():
        try:
            watcher(call, chunk)
        except Exception:
            _log.exception("stream chunk watcher %r failed", watcher)


def drive_stream(call: Call, handler: Callable[[Call], Iterator[Any]], classify: Classify) -> Generator[Any, Any, Any]:
    try:
        it = handler(call)
    except BaseException as exc:
        # Failed before the first chunk (refused, or the provider failed to start):
        # watchers registered so far hear of it, as they do for async streams.
        if call._on_end is not None:
            _notify_end(call, classify(exc))
        raise
    if call._on_chunk is None and call._on_end is None:
        return (yield from it)
    watch_chunks = call._on_chunk is not None
    try:
        while True:
            try:
                chunk = next(it)
            except StopIteration as stop:  # keep the generator's return value, as yield from does
                result = stop.value
                break
            if watch_chunks:
                _notify_chunk(call, chunk)
            yield chunk
    except GeneratorExit:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        _notify_end(call, ABANDONED)
        raise
    except BaseException as exc:
        _notify_end(call, classify(exc))
        raise
    _notify_end(call, SUCCESS)
    return result


async def drive_astream(
    call: Call, handler: Callable[[Call], AsyncIterator[Any]], classify: Classify
) -> AsyncGenerator[Any, None]:
    try:
        it = handler(call)
    except BaseException as exc:
        if call._on_end is not None:
            _notify_end(call, classify(exc))
        raise
    watch_chunks = call._on_chunk is not None
    watch_end = call._on_end is not None
    try:
        async for chunk in it:
            if watch_chunks:
                _notify_chunk(call, chunk)
            yield chunk
    except GeneratorExit:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        if watch_end:
            _notify_end(call, ABANDONED)
        raise
    except BaseException as exc:
        if watch_end:
            _notify_end(call, classify(exc))
        raise
    if watch_end:
        _notify_end(call, SUCCESS)


S = TypeVar("S", bound="Started")
A = TypeVar("A", bound="AsyncStarted")


class Started:
    """A stream whose first item was read when it was made: what a call that returns a stream gives.

    Made by :meth:`start`: the call, its policies and the provider's start
    ran then, as they do for the unguarded call, so a refusal or a failed
    start raises there; iterating yields the first item, then the rest.
    Closing it early closes the iterator under it (the policies see the
    stream abandoned). A guarded function returning a stream
    (``kind="stream"`` on a plain function) returns one; the SDK wrapper's
    :class:`~resilient.providers.WrappedStream` is one.
    """

    __slots__ = ("_first", "_pending", "_rest")

    def __init__(self, rest: Iterator[Any], first: Any, pending: bool) -> None:
        self._rest = rest
        self._first = first
        self._pending = pending

    @classmethod
    def start(cls: type[S], rest: Iterator[Any], *args: Any) -> S:
        """Read the first item of ``rest``; ``args`` go to the subclass's constructor after the three."""
        try:
            first = next(rest)
        except StopIteration:
            return cls(rest, None, False, *args)
        return cls(rest, first, True, *args)

    def __iter__(self: S) -> S:
        return self

    def __next__(self) -> Any:
        if self._pending:
            self._pending = False
            first, self._first = self._first, None
            return first
        return next(self._rest)

    def close(self) -> None:
        self._pending = False
        close = getattr(self._rest, "close", None)
        if close is not None:
            close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStarted:
    """:class:`Started` for an async stream: ``await AsyncStarted.start(rest)`` reads its first item."""

    __slots__ = ("_first", "_pending", "_rest")

    def __init__(self, rest: AsyncIterator[Any], first: Any, pending: bool) -> None:
        self._rest = rest
        self._first = first
        self._pending = pending

    @classmethod
    async def start(cls: type[A], rest: AsyncIterator[Any], *args: Any) -> A:
        try:
            first = await rest.__anext__()
        except StopAsyncIteration:
            return cls(rest, None, False, *args)
        return cls(rest, first, True, *args)

    def __aiter__(self: A) -> A:
        return self

    async def __anext__(self) -> Any:
        if self._pending:
            self._pending = False
            first, self._first = self._first, None
            return first
        return await self._rest.__anext__()

    async def aclose(self) -> None:
        self._pending = False
        aclose = getattr(self._rest, "aclose", None)
        if aclose is not None:
            await aclose()

    close = aclose  # the SDKs' async streams are closed with ``await stream.close()``

    async def __aenter__(self: A) -> A:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
