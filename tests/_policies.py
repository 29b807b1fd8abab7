"""Small policies used by the core tests (not first-party plugins)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    Event,
    Handler,
    Order,
    Policy,
    Runtime,
    StreamHandler,
    Target,
    hookimpl,
)


class Noop(Policy):
    """Steps into every chain and does nothing."""

    def __init__(self, name: str, order: int = 500) -> None:
        self.name = name
        self.order = order

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            return nxt(call)

        return handler

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        def handler(call: Call) -> Any:
            return nxt(call)

        return handler

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def handler(call: Call) -> Any:
            return nxt(call)

        return handler

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        def handler(call: Call) -> Any:
            return nxt(call)

        return handler


class Recorder(Policy):
    """Records the order in which policies are entered, into a shared list."""

    def __init__(self, name: str, log: list[str], order: int = 500) -> None:
        self.name = name
        self.order = order
        self.log = log

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            self.log.append(self.name)
            return nxt(call)

        return handler


class RetryAll(Policy):
    """Retries any Exception up to ``attempts`` times, advancing ``call.attempt``."""

    name = "retry_all"
    order = 400

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            while True:
                try:
                    return nxt(call)
                except Exception:
                    if call.attempt >= self.attempts:
                        raise
                    call.attempt += 1

        return handler

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        async def handler(call: Call) -> Any:
            while True:
                try:
                    return await nxt(call)
                except Exception:
                    if call.attempt >= self.attempts:
                        raise
                    call.attempt += 1

        return handler


class Contribute:
    """A plugin object contributing the given policies."""

    def __init__(self, *policies: Policy, name: str = "test-policies") -> None:
        self.name = name
        self._policies = policies

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return self._policies


class Collect:
    """A plugin object whose observer keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def resilient_observers(self, runtime: Runtime) -> list[Any]:
        return [self.events.append]


class Spy(Policy):
    """Records ``see(call)`` for every call that passes through it, into ``seen``."""

    name = "spy"

    def __init__(self, see: Callable[[Call], Any], order: int = Order.INNERMOST) -> None:
        self.see = see
        self.order = order
        self.seen: list[Any] = []

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            self.seen.append(self.see(call))
            return nxt(call)

        return handler
