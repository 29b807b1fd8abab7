"""The retry budget: retries may add at most a share of the call volume, fleet-wide.

Per provider and per fixed window of ``budget_window`` seconds, a retry is
allowed while ``retries <= max(budget_min, budget_ratio * calls)``. Calls are
counted in process (an integer increment on the success path) and pushed to
the store only when a retry asks for budget, so the shared count costs
store round trips on the failure path only. Only calls known to belong to
the current window are pushed (those since this process's previous push in
the same window); the others are left out, so the shared total can only
undercount and the budget errs strict, never lenient.
"""

from __future__ import annotations

import logging
import threading

from resilient import Clock
from resilient.storage import STORE_ERRORS, LoopBoundStorage, close_sync, is_memory, sync_storage

__all__ = ["RetryBudget"]

#: After a store error, how long the budget leaves the store alone (and allows retries).
STORE_RETRY = 5.0

_log = logging.getLogger("resilient.retry")


def allowed(retries: int, calls: int, ratio: float, minimum: int) -> bool:
    """The budget rule, pure: ``retries`` (this one included) within the share of ``calls``."""
    return retries <= max(minimum, ratio * calls)


class RetryBudget:
    """Counts calls locally, per window, and spends retries against the shared store.

    The window length is the section's ``budget_window``; ``budget_ratio`` and
    ``budget_min`` may differ per provider, model or tenant and are given
    with each :meth:`spend`.
    """

    def __init__(self, uri: str, prefix: str, window: float, clock: Clock) -> None:
        self.window, self.clock = window, clock
        self._prefix = f"{prefix}retry-budget"
        # provider -> calls started, ever (the success path only increments this).
        # Unlocked on purpose: a lost increment under threads only undercounts calls (stricter).
        self._calls: dict[str, int] = {}
        # provider -> (window number, calls count when last pushed in that window)
        self._pushed: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.storage = sync_storage(uri, self._prefix, timeout=1.0)
        self._async = None if is_memory(uri) else LoopBoundStorage(uri, self._prefix, timeout=1.0)
        self._down_until = 0.0  # after a store error, retries are allowed without asking it

    def note_call(self, provider: str) -> None:
        """A call started (its first attempt). Local only: no I/O, no clock."""
        calls = self._calls
        calls[provider] = calls.get(provider, 0) + 1

    def _keys(self, provider: str) -> tuple[str, str, int, int]:
        window = int(self.clock.time() // self.window)
        base = f"{provider}/{window}"
        return f"{base}/calls", f"{base}/retries", int(self.window * 2), window

    def _take_pending(self, provider: str, window: int) -> int:
        """Calls made in ``window`` since the last push; marks them pushed.

        Calls are not stamped with their window (that would cost a clock read
        per call): the first push of a window knows only that the calls since
        the previous push straddle windows, and pushes none of them. The
        budget only ever sees fewer calls than were made: it errs strict.
        """
        with self._lock:
            total = self._calls.get(provider, 0)
            last_window, last_total = self._pushed.get(provider, (-1, total))
            self._pushed[provider] = (window, total)
            return total - last_total if last_window == window else 0

    def _store_failed(self, exc: BaseException) -> bool:
        self._down_until = self.clock.monotonic() + STORE_RETRY
        _log.warning("retry budget store unavailable (%s); retries allowed for %.0fs", type(exc).__name__, STORE_RETRY)
        return True

    def spend(self, provider: str, ratio: float, minimum: int) -> bool:
        """Ask for one retry; True if within budget. A store failure allows it (fails open)."""
        if self._down_until > self.clock.monotonic():
            return True
        calls_key, retries_key, expiry, window = self._keys(provider)
        pending = self._take_pending(provider, window)
        storage = self.storage
        try:
            calls = storage.incr(calls_key, expiry, amount=pending) if pending else storage.get(calls_key)
            retries = storage.incr(retries_key, expiry)
            if allowed(retries, calls, ratio, minimum):
                return True
            storage.incr(retries_key, expiry, amount=-1)  # refused: not spent
            return False
        except STORE_ERRORS as exc:  # a failing store never fails the call: the retry is allowed
            return self._store_failed(exc)

    async def aspend(self, provider: str, ratio: float, minimum: int) -> bool:
        """:meth:`spend` for async callers: the async storage for network stores."""
        if self._async is None:
            return self.spend(provider, ratio, minimum)
        if self._down_until > self.clock.monotonic():
            return True
        calls_key, retries_key, expiry, window = self._keys(provider)
        pending = self._take_pending(provider, window)
        try:
            storage = self._async.get()
            calls = await (storage.incr(calls_key, expiry, amount=pending) if pending else storage.get(calls_key))
            retries = await storage.incr(retries_key, expiry)
            if allowed(int(retries), int(calls), ratio, minimum):
                return True
            await storage.incr(retries_key, expiry, amount=-1)
            return False
        except STORE_ERRORS as exc:
            return self._store_failed(exc)

    def close(self) -> None:
        close_sync(self.storage)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
