from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resilient import Duration, option
from resilient.config import StoreURI

__all__ = ["KEY_PARTS", "BulkheadOptions", "KeyPart"]

#: What a bulkhead key may be made of.
KeyPart = Literal["provider", "model", "operation", "tenant"]
KEY_PARTS: tuple[KeyPart, ...] = ("provider", "model", "operation", "tenant")


@dataclass(frozen=True, kw_only=True)
class BulkheadOptions:
    """``[tool.resilient.bulkhead]``: at most ``max_concurrent`` calls in flight per key.

    Over the limit a call waits for a slot (when ``max_waiting`` and
    ``max_wait`` allow), else it is refused with
    :class:`~resilient.ConcurrencyLimitExceeded`.
    """

    enabled: bool = option(True, doc="Limit concurrency at all.")
    max_concurrent: int | None = option(
        None, min=1, doc="Calls in flight at once per key; none for no limit (the policy then stays out)."
    )
    key: tuple[KeyPart, ...] = option(
        ("provider", "model"), doc="What a slot pool is per: any of provider, model, operation, tenant."
    )
    key_function: str = option(
        "", doc="A key function (call) -> str: a name from resilient_bulkhead.register_key() or 'module:function'."
    )
    max_waiting: int = option(0, min=0, doc="Calls that may queue for a slot per key; more are refused at once.")
    max_wait: Duration = option(
        0.0, min=0, doc="Longest wait for a slot, seconds (capped by the call's deadline); 0 refuses at once."
    )
    retry_after: Duration = option(1.0, min=0, doc="The retry_after (seconds) a refusal carries.")
    status: Literal[429, 503] = option(429, doc="HTTP status of the refusal's problem+json: 429 or 503.")
    fleet: bool = option(
        False, doc="Share the limit across processes through the store (a lease per slot); else per process."
    )
    storage: StoreURI = option("", doc="Store URI for fleet mode; empty means the core 'store'.")
    lease_ttl: Duration = option(
        300.0, min=1, doc="Fleet mode: a slot's lease expires this long after it was taken if not released."
    )
    poll_interval: Duration = option(
        0.05, min=0.001, doc="Fleet mode: how often a waiting call asks the store for a slot, seconds."
    )
