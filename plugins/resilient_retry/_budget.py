"""The retry budget: retries may add at most a share of the call volume, fleet-wide.

Per provider and per fixed window of ``budget_window`` seconds, a retry is
allowed while ``retries <= max(budget_min, budget_ratio * calls)``. Calls are
counted in process (one integer increment on the success path) and pushed
to the store only when a retry asks for budget, together with the retry
itself, so the shared count costs store round trips on the failure path
only. Counts not yet pushed by a process that has not failed lately are
missing from the shared total, which only makes the budget stricter.
"""

from __future__ import annotations

import logging
import threading

from resilient import Clock
from resilient.storage import LoopBoundStorage, close_sync, is_memory, sync_storage

__all__ = ["RetryBudget"]

#: After a store error, how long the budget leaves the store alone (and allows retries).
STORE_RETRY = 5.0

_log = logging.getLogger("resilient.retry")


def allowed(retries: int, calls: int, ratio: float, minimum: int) -> bool:
    """The budget rule, pure: ``retries`` (this one included) within the share of ``calls``."""
    return retries <= max(minimum, ratio * calls)


class RetryBudget:
    """Counts calls locally and spends retries against the shared store."""

    def __init__(self, uri: str, prefix: str, ratio: float, window: float, minimum: int, clock: Clock) -> None:
        self.ratio, self.window, self.minimum, self.clock = ratio, window, minimum, clock
        self._prefix = f"{prefix}retry-budget"
        self._uri = uri
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self.storage = sync_storage(uri, self._prefix, timeout=1.0)
        self._async = None if is_memory(uri) else LoopBoundStorage(uri, self._prefix, timeout=1.0)
        self._down_until = 0.0  # after a store error, retries are allowed without asking it

    def note_call(self, provider: str) -> None:
        """A call started (its first attempt). Local only: no I/O."""
        pending = self._pending
        pending[provider] = pending.get(provider, 0) + 1

    def _keys(self, provider: str) -> tuple[str, str, int]:
        window = int(self.clock.time() // self.window)
        base = f"{provider}/{window}"
        return f"{base}/calls", f"{base}/retries", int(self.window * 2)

    def _take_pending(self, provider: str) -> int:
        with self._lock:
            return self._pending.pop(provider, 0)

    def _store_failed(self, exc: BaseException) -> bool:
        self._down_until = self.clock.monotonic() + STORE_RETRY
        _log.warning("retry budget store unavailable (%s); retries allowed for %.0fs", type(exc).__name__, STORE_RETRY)
        return True

    def spend(self, provider: str) -> bool:
        """Ask for one retry; True if within budget. A store failure allows it (fails open)."""
        if self._down_until > self.clock.monotonic():
            return True
        calls_key, retries_key, expiry = self._keys(provider)
        pending = self._take_pending(provider)
        try:
            calls = self.storage.incr(calls_key, expiry, amount=pending) if pending else self.storage.get(calls_key)
            retries = self.storage.incr(retries_key, expiry)
            if allowed(retries, calls, self.ratio, self.minimum):
                return True
            self.storage.incr(retries_key, expiry, amount=-1)  # refused: not spent
            return False
        except Exception as exc:  # a failing store never fails the call: the retry is allowed
            return self._store_failed(exc)

    async def aspend(self, provider: str) -> bool:
        """:meth:`spend` for async callers: the async storage for network stores."""
        if self._async is None:
            return self.spend(provider)
        if self._down_until > self.clock.monotonic():
            return True
        calls_key, retries_key, expiry = self._keys(provider)
        pending = self._take_pending(provider)
        try:
            storage = self._async.get()
            calls = await (storage.incr(calls_key, expiry, amount=pending) if pending else storage.get(calls_key))
            retries = await storage.incr(retries_key, expiry)
            if allowed(int(retries), int(calls), self.ratio, self.minimum):
                return True
            await storage.incr(retries_key, expiry, amount=-1)
            return False
        except Exception as exc:  # a failing store never fails the call: the retry is allowed
            return self._store_failed(exc)

    def close(self) -> None:
        close_sync(self.storage)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
