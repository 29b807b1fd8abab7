"""Cancelling an awaited block after a delay, measured on the event loop's clock.

On Python 3.11+ this is :func:`asyncio.timeout`; on 3.10 a minimal
equivalent (a timer handle that cancels the current task). Both use
``loop.call_at``, so a test event loop whose time is a ``FakeClock``
drives them without sleeping (see ``tests/_virtual_time.py``).
"""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType
from typing import Protocol

__all__ = ["CancelScope", "Expiry", "cancel_after"]


class Expiry:
    """A loop timer that cancels the current task after ``delay`` seconds: the hot path's lighter scope.

    The same semantics as :func:`asyncio.timeout` without an async context
    manager (two coroutine frames and a state machine per call)::

        expiry = Expiry(limit)
        try:
            result = await work()
        except BaseException as exc:
            if expiry.stop() and isinstance(exc, asyncio.CancelledError):
                raise TimeoutError from exc  # this timer's cancellation, nobody else's
            raise
        expiry.stop()

    :meth:`stop` must be called exactly once; it returns True when the timer
    fired and no other cancellation of the task is pending (Python 3.11+
    counts them with ``Task.uncancel``).
    """

    __slots__ = ("_cancelling", "_handle", "_task", "fired")

    def __init__(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Expiry() must be used inside a task")
        self._task = task
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        else:  # pragma: no cover - 3.10
            self._cancelling = 0
        self.fired = False
        self._handle = loop.call_at(loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    def stop(self) -> bool:
        self._handle.cancel()
        if not self.fired:
            return False
        if sys.version_info >= (3, 11):
            return self._task.uncancel() <= self._cancelling
        return True  # pragma: no cover - 3.10 cannot tell an outer cancellation apart


class CancelScope(Protocol):
    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...

    def expired(self) -> bool: ...


if sys.version_info >= (3, 11):

    def cancel_after(delay: float) -> CancelScope:
        """A scope that raises :class:`TimeoutError` when its block runs longer than ``delay`` seconds."""
        return asyncio.timeout(delay)

else:  # pragma: no cover - exercised on 3.10 only

    class _CancelAfter:
        __slots__ = ("_delay", "_fired", "_handle")

        def __init__(self, delay: float) -> None:
            self._delay = delay
            self._fired = False
            self._handle: asyncio.TimerHandle | None = None

        def _fire(self, task: asyncio.Task[object]) -> None:
            self._fired = True
            task.cancel()

        async def __aenter__(self) -> object:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("cancel_after() must be used inside a task")
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + self._delay, self._fire, task)
            return self

        async def __aexit__(
            self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> bool | None:
            if self._handle is not None:
                self._handle.cancel()
            if self._fired and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
            return None

        def expired(self) -> bool:
            return self._fired

    def cancel_after(delay: float) -> CancelScope:
        return _CancelAfter(delay)
