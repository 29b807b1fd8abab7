from __future__ import annotations

from resilient import ConcurrencyLimitExceeded

__all__ = ["ConcurrencyLimitUnavailable"]


class ConcurrencyLimitUnavailable(ConcurrencyLimitExceeded):
    """:class:`~resilient.ConcurrencyLimitExceeded` answered as 503 (``status = 503`` in the bulkhead section)."""

    status = 503
