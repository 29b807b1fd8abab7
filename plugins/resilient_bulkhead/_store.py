"""Fleet-wide slots: one Redis sorted set of leases per key, scored by expiry.

A slot is taken by one Lua script (drop expired leases, count, add) and
given back with ``ZREM``. A holder that dies never gives its slot back; its
lease expires ``lease_ttl`` seconds after it was taken and the next
acquisition drops it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from resilient.storage import PerLoop, async_redis_client, redis_client

__all__ = ["AsyncRedisLeases", "RedisLeases", "store_errors"]

_ACQUIRE = (files(__package__) / "lua" / "acquire.lua").read_text()


def store_errors() -> tuple[type[Exception], ...]:
    """What a failing Redis raises (redis-py's errors are not OSErrors)."""
    import redis.exceptions

    from resilient.storage import STORE_ERRORS

    return (*STORE_ERRORS, redis.exceptions.RedisError)


def _args(now: float, ttl: float, limit: int, token: str) -> list[Any]:
    return [repr(now), repr(ttl), limit, token]


class RedisLeases:
    """Sync access to the leases."""

    def __init__(self, uri: str) -> None:
        self.client = redis_client(uri)
        self._acquire = self.client.register_script(_ACQUIRE)

    def acquire(self, key: str, now: float, ttl: float, limit: int, token: str) -> bool:
        return int(self._acquire(keys=[key], args=_args(now, ttl, limit, token))) == 1

    def release(self, key: str, token: str) -> None:
        self.client.zrem(key, token)

    def count(self, key: str, now: float) -> int:
        return int(self.client.zcount(key, f"({now!r}", "+inf"))

    def close(self) -> None:
        self.client.close()


class AsyncRedisLeases:
    """Async access to the leases: an asyncio client per event loop."""

    def __init__(self, uri: str) -> None:
        def make() -> tuple[Any, Any]:
            client = async_redis_client(uri)
            return client, client.register_script(_ACQUIRE)

        self._per_loop = PerLoop(make)

    async def acquire(self, key: str, now: float, ttl: float, limit: int, token: str) -> bool:
        _, acquire = self._per_loop.get()
        return int(await acquire(keys=[key], args=_args(now, ttl, limit, token))) == 1

    async def release(self, key: str, token: str) -> None:
        client, _ = self._per_loop.get()
        await client.zrem(key, token)

    async def aclose(self) -> None:
        found = self._per_loop.pop()
        if found is not None:
            await found[0].aclose()
