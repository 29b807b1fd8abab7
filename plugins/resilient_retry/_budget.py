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
from typing import Any

import limits.storage
from limits.errors import StorageError

from resilient import Clock

__all__ = ["RetryBudget"]

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
        options: dict[str, Any] = {}
        if "redis" in uri.split("://", 1)[0]:
            options = {"socket_timeout": 1, "socket_connect_timeout": 1, "key_prefix": self._prefix}
        storage = limits.storage.storage_from_string(uri, wrap_exceptions=True, **options)
        if not isinstance(storage, limits.storage.Storage):
            raise ValueError(f"retry budget store {uri!r} is an async-only storage")
        self.storage = storage
        self._async: Any = None

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

    def spend(self, provider: str) -> bool:
        """Ask for one retry; True if within budget. A store failure allows it (fails open)."""
        calls_key, retries_key, expiry = self._keys(provider)
        pending = self._take_pending(provider)
        try:
            calls = self.storage.incr(calls_key, expiry, amount=pending) if pending else self.storage.get(calls_key)
            retries = self.storage.incr(retries_key, expiry)
            if allowed(retries, calls, self.ratio, self.minimum):
                return True
            self.storage.incr(retries_key, expiry, amount=-1)  # refused: not spent
            return False
        except StorageError as exc:
            _log.warning("retry budget store unavailable (%s); retry allowed", type(exc).__name__)
            return True

    async def aspend(self, provider: str) -> bool:
        """:meth:`spend` for async callers: the async storage for network stores."""
        if self._uri.split("://", 1)[0] == "memory":
            return self.spend(provider)
        if self._async is None:
            options: dict[str, Any] = {"socket_timeout": 1, "socket_connect_timeout": 1, "key_prefix": self._prefix}
            if "redis" in self._uri.split("://", 1)[0]:
                options["implementation"] = "redispy"
            self._async = limits.storage.storage_from_string("async+" + self._uri, wrap_exceptions=True, **options)
        calls_key, retries_key, expiry = self._keys(provider)
        pending = self._take_pending(provider)
        try:
            calls = await (
                self._async.incr(calls_key, expiry, amount=pending) if pending else self._async.get(calls_key)
            )
            retries = await self._async.incr(retries_key, expiry)
            if allowed(int(retries), int(calls), self.ratio, self.minimum):
                return True
            await self._async.incr(retries_key, expiry, amount=-1)
            return False
        except StorageError as exc:
            _log.warning("retry budget store unavailable (%s); retry allowed", type(exc).__name__)
            return True

    def close(self) -> None:
        connection = getattr(self.storage, "get_connection", None)
        if connection is not None:
            try:
                connection().close()
            except Exception:  # pragma: no cover - closing a dead connection
                _log.debug("closing the retry budget store failed", exc_info=True)

    async def aclose(self) -> None:
        bridge = getattr(self._async, "bridge", None)
        client = getattr(bridge, "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()
