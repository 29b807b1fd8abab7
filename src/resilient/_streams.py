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
from typing import Any

from .call import ABANDONED, SUCCESS, Call, Outcome

__all__ = ["drive_astream", "drive_stream"]

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
