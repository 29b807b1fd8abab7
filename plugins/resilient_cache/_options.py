from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resilient import Duration, option
from resilient.config import StoreURI

__all__ = ["CacheOptions", "DEFAULT_IGNORE"]

#: Request fields that never change the answer: transport settings and end-user ids.
DEFAULT_IGNORE = ("extra_headers", "extra_query", "timeout", "stream", "stream_options", "metadata.user_id", "user")


@dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """``[tool.resilient.cache]``: which provider responses are kept, where, and for how long.

    A call's key is the SHA-256 of its canonical request (provider, operation,
    model and its arguments minus ``ignore``) and, with ``scope = "tenant"``,
    its tenant. A fresh entry answers the call without a provider call; an
    entry past its ``ttl`` but within ``max_stale`` answers only when the
    provider call fails for the provider's reasons (or a quota or breaker
    refuses it), marked stale. ``providers``/``models``/``tenants`` override
    tables set these per provider, model and tenant; ``ttl_by_operation`` per
    operation.
    """

    enabled: bool = option(
        False, doc="Cache responses at all (off unless turned on: a cache changes what callers see)."
    )
    storage: StoreURI = option(
        "",
        doc="Store URI for entries shared by workers; empty means the core 'store'. "
        "memory:// keeps only the local layer.",
    )
    ttl: Duration = option(300.0, min=0.001, doc="Seconds an entry is fresh.")
    ttl_by_operation: dict[str, Duration] = option(
        default_factory=dict, doc="Seconds an entry is fresh, per operation (wins over 'ttl')."
    )
    max_stale: Duration = option(
        0.0,
        min=0,
        doc="Seconds past its ttl an entry is kept to answer when the provider call fails; 0: never serve stale.",
    )
    max_entries: int = option(
        1024, min=1, max=10_000_000, doc="Entries the in-process layer holds (least recently used go)."
    )
    local_ttl: Duration = option(
        10.0,
        min=0,
        doc="With a shared store, seconds an entry stays in the in-process layer before it is read from the store "
        "again (how long an invalidation in another worker may take to be seen here); 0: no in-process layer.",
    )
    scope: Literal["tenant", "global"] = option(
        "tenant", doc="'tenant': entries are per tenant; 'global': tenants share entries for identical requests."
    )
    cacheable: Literal["temperature_zero", "always", "never"] = option(
        "temperature_zero",
        doc="Which calls are cached: those with temperature = 0, every call, or none.",
    )
    operations: tuple[str, ...] = option(default_factory=tuple, doc="Operations cached; empty: every operation.")
    ignore: tuple[str, ...] = option(
        DEFAULT_IGNORE,
        doc="Request fields left out of the key ('metadata.user_id' names a field inside a field).",
    )
    key_function: str = option(
        "", doc="'module:function' taking the Call and returning the JSON-able part of the key (None: do not cache)."
    )
    tags: tuple[Literal["provider", "operation", "model", "tenant"], ...] = option(
        default_factory=tuple, doc="Tag every entry with these call fields, to invalidate them together."
    )
    tag_function: str = option("", doc="'module:function' taking the Call and returning more tags for its entry.")
    single_flight: bool = option(
        True, doc="Identical concurrent misses make one provider call; the others wait for it."
    )
    lease_ttl: Duration = option(
        30.0, min=0.01, doc="Seconds a worker's claim to make the call lasts in the shared store (if it dies)."
    )
    flight_wait: Duration = option(
        30.0, min=0, doc="Longest a waiting call waits for the one making the call before making its own."
    )
    poll_interval: Duration = option(
        0.05, min=0.001, doc="Seconds between checks of the shared store while another worker makes the call."
    )
    max_value_bytes: int = option(1_000_000, min=1, doc="Serialized entries larger than this are not stored.")
    allowed_types: tuple[str, ...] = option(
        default_factory=tuple,
        doc="Module prefixes (besides 'anthropic.' and 'openai.') whose pydantic models may be stored and rebuilt.",
    )
    store_retry: Duration = option(5.0, min=0, doc="After a store error, seconds the shared store is left alone.")
    store_timeout: Duration = option(0.5, min=0.01, doc="Seconds a shared store operation may take.")

    def __post_init__(self) -> None:
        for name in ("key_function", "tag_function"):
            value = getattr(self, name)
            if value and (value.count(":") != 1 or not all(value.split(":"))):
                raise ValueError(f"{name} = {value!r}: must be 'module:function'")
        if any(not part for path in self.ignore for part in path.split(".")):
            raise ValueError(f"ignore = {list(self.ignore)!r}: a field name cannot be empty")

    def ttl_for(self, operation: str) -> float:
        return self.ttl_by_operation.get(operation, self.ttl)
