"""The audit policy: outermost, it writes one line when a call ends."""

from __future__ import annotations

import atexit
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from resilient import (
    SUCCESS,
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    Handler,
    Order,
    Outcome,
    Policy,
    Runtime,
    StreamHandler,
    Target,
)

from ._options import AuditOptions
from ._record import audit_record, encode, response_text
from ._writer import AppendWriter

__all__ = ["AuditPolicy"]

_log = logging.getLogger("resilient.audit")


class AuditPolicy(Policy):
    """Appends one masked JSON line per provider call to ``path``.

    Placed just outside metrics (``Order.METRICS - 10``) so it sees every call,
    cache hits and refusals included, after metrics has priced it
    (``call.metadata["cost_usd"]``). A stream's line is written when it ends,
    by an end watcher registered after the inner policies' own. Writing is
    done by :class:`AppendWriter`'s thread; a line that cannot be built or
    queued is counted, never raised.
    """

    name = "audit"
    order = Order.METRICS - 10

    def __init__(self, options: AuditOptions, runtime: Runtime, mask: Callable[[str], str]) -> None:
        self.options = options
        self._runtime = runtime
        self._clock = runtime.clock
        self._mask = mask
        self._writer = AppendWriter(options.path, queue_size=options.queue_size, mode=options.file_mode)
        self.failed = 0
        atexit.register(self._writer.close)

    # ------------------------------------------------------------------ the line

    def _outcome(self, call: Call, error: BaseException) -> Outcome:
        if call.outcome is not None and call.outcome.error is error:
            return call.outcome
        return self._runtime.classify(error)

    def record(self, call: Call, outcome: Outcome, started: float, result: Any = None) -> None:
        """Queue the line for ``call``. Never raises."""
        try:
            opts = self.options
            duration = (
                call.ended - call.started
                if call.started is not None and call.ended is not None
                else self._clock.monotonic() - started
            )
            response = response_text(result) if opts.include_responses and result is not None else None
            fields = audit_record(
                call,
                outcome,
                wall_time=self._clock.time(),
                duration=duration,
                include_prompts=opts.include_prompts,
                response=response,
                max_text_chars=opts.max_text_chars,
            )
            self._writer.submit(encode(fields, self._mask))
        except Exception as exc:
            self.failed += 1
            _log.warning("audit line for %s:%s not written: %s", call.provider, call.operation, type(exc).__name__)

    # ------------------------------------------------------------------ wrapping

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        monotonic = self._clock.monotonic
        record = self.record

        def audited(call: Call) -> Any:
            started = monotonic()
            try:
                result = nxt(call)
            except BaseException as exc:
                record(call, self._outcome(call, exc), started)
                raise
            record(call, call.outcome if call.outcome is not None and call.outcome.ok else SUCCESS, started, result)
            return result

        return audited

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        monotonic = self._clock.monotonic
        record = self.record

        async def audited(call: Call) -> Any:
            started = monotonic()
            try:
                result = await nxt(call)
            except BaseException as exc:
                record(call, self._outcome(call, exc), started)
                raise
            record(call, call.outcome if call.outcome is not None and call.outcome.ok else SUCCESS, started, result)
            return result

        return audited

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        monotonic = self._clock.monotonic
        record = self.record

        def audited(call: Call) -> Iterator[Any]:
            started = monotonic()
            try:
                it = nxt(call)
            except BaseException as exc:
                record(call, self._outcome(call, exc), started)
                raise
            # Registered after the inner policies' watchers (they registered inside nxt), so metrics
            # has priced the stream when this one runs.
            call.on_end(lambda c, outcome: record(c, outcome, started))
            return it

        return audited

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        monotonic = self._clock.monotonic
        record = self.record

        def audited(call: Call) -> AsyncIterator[Any]:
            started = monotonic()
            try:
                it = nxt(call)
            except BaseException as exc:
                record(call, self._outcome(call, exc), started)
                raise
            call.on_end(lambda c, outcome: record(c, outcome, started))
            return it

        return audited

    # ------------------------------------------------------------------ lifecycle

    @property
    def dropped(self) -> int:
        """Lines lost: queue full, write errors, or lines that could not be built."""
        return self._writer.dropped + self.failed

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line is in the file."""
        return self._writer.flush(timeout)

    def health(self) -> Mapping[str, Any] | None:
        return {
            "ok": self._writer.errors == 0,
            "path": self.options.path,
            "written": self._writer.written,
            "queued": self._writer.queued,
            "dropped": self.dropped,
        }

    def close(self) -> None:
        self._writer.close()
        atexit.unregister(self._writer.close)
