"""A third-party resilient plugin: calls slower than a threshold are logged, told and marked.

Installed, it is found through its entry point (``resilient plugins`` lists
it) and configured from ``[tool.resilient.slow_calls]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from resilient import AsyncHandler, Call, Duration, Event, Handler, Order, Policy, Runtime, Target, hookimpl, option

__all__ = ["SlowCall", "SlowCallOptions", "SlowCalls"]


@dataclass(frozen=True, kw_only=True)
class SlowCallOptions:
    """``[tool.resilient.slow_calls]``, overridable per provider, model and tenant."""

    enabled: bool = option(True, doc="Watch calls at all.")
    threshold: Duration = option(2.0, min=0, doc="A call that takes longer than this (all attempts) is slow.")
    log_level: Literal["debug", "info", "warning", "error"] = option("warning", doc="Level of the log line.")


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowCall(Event):
    """A call took longer than its threshold."""

    name: ClassVar[str] = "slow_calls.slow"
    seconds: float
    threshold: float


class SlowCalls(Policy):
    """Times each call and reports the slow ones: a log line, an event, ``call.metadata["slow"]``."""

    name = "slow_calls"
    order = Order.METRICS + 10  # just inside metrics: cache hits and every retry count in the time

    def __init__(self, runtime: Runtime) -> None:
        self.section = runtime.settings.section(SlowCallOptions)
        self.clock = runtime.clock
        self.events = runtime.events
        self.log = runtime.log.getChild("slow_calls")

    def _off(self) -> bool:
        # Decided when the chain is built: disabled everywhere means not in the chain at all.
        return not self.section.varies and not self.section.base.enabled

    def _finished(self, call: Call, took: float) -> None:
        options = self.section.for_call(call.provider, call.model, call.tenant)
        if not options.enabled or took <= options.threshold:
            return
        call.metadata["slow"] = round(took, 6)
        level = logging.getLevelName(options.log_level.upper())
        self.log.log(level, "slow call %s:%s took %.3fs", call.provider, call.operation, took)
        if self.events.enabled:
            self.events.emit(
                SlowCall(
                    provider=call.provider,
                    operation=call.operation,
                    model=call.model,
                    seconds=took,
                    threshold=options.threshold,
                )
            )

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        if self._off():
            return nxt
        monotonic, finished = self.clock.monotonic, self._finished

        def handler(call: Call) -> Any:
            start = monotonic()
            try:
                return nxt(call)
            finally:
                finished(call, monotonic() - start)

        return handler

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        if self._off():
            return nxt
        monotonic, finished = self.clock.monotonic, self._finished

        async def handler(call: Call) -> Any:
            start = monotonic()
            try:
                return await nxt(call)
            finally:
                finished(call, monotonic() - start)

        return handler


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"slow_calls": SlowCallOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    return [SlowCalls(runtime)]
