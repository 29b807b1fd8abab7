"""What the cache tells observers. ``key`` is the entry's SHA-256 (never request text): fine in logs, too
many values for a metric label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilient import Event

__all__ = [
    "CacheBypassed",
    "CacheHit",
    "CacheInvalidated",
    "CacheMiss",
    "CacheNotStored",
    "CacheStaleServed",
    "CacheStoreError",
    "CacheStored",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheHit(Event):
    """A fresh entry answered. ``layer``: 'local' (this process), 'shared' (the store) or 'flight' (the result
    of an identical call made at the same time); ``age``: seconds since it was stored."""

    name: ClassVar[str] = "cache.hit"
    key: str
    layer: str
    age: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheMiss(Event):
    """No fresh entry: the provider is called. ``stale``: an expired entry is held in case the call fails."""

    name: ClassVar[str] = "cache.miss"
    key: str
    stale: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStaleServed(Event):
    """The provider call failed (``reason``: the outcome kind, or 'quota_exceeded' / 'circuit_open' /
    'provider_unavailable') and an expired entry answered; ``staleness``: seconds past its ttl."""

    name: ClassVar[str] = "cache.stale_served"
    key: str
    reason: str
    staleness: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStored(Event):
    """A response was stored: ``size`` bytes serialized, fresh for ``ttl`` seconds; ``stream``: a recorded stream."""

    name: ClassVar[str] = "cache.stored"
    key: str
    size: int
    ttl: float
    stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheNotStored(Event):
    """A response was not stored (the call still succeeded). ``reason``: 'unserializable', 'too_large',
    'incomplete_stream' (cut, failed or abandoned)."""

    name: ClassVar[str] = "cache.not_stored"
    key: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheBypassed(Event):
    """The cache stayed out of a call. ``reason``: 'not_cacheable' (the ``cacheable`` rule), 'unkeyable' (an
    argument is not JSON-able, or the key function said None or failed)."""

    name: ClassVar[str] = "cache.bypass"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStoreError(Event):
    """The shared store failed during ``action`` ('get', 'put', 'lease', 'invalidate'); the cache works from
    the local layer for ``store_retry`` seconds. ``error`` is the exception's type name."""

    name: ClassVar[str] = "cache.store_error"
    action: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheInvalidated(Event):
    """Entries were removed by key or by tag; ``removed`` counts those found in the shared store (or locally)."""

    name: ClassVar[str] = "cache.invalidated"
    key: str | None
    tag: str | None
    removed: int
