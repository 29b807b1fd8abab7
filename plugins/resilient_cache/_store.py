"""The shared layer in Redis: one string per entry (with a TTL), a lease per key being filled, a set per tag.

Every key expires. Reading an entry and, on a miss, taking the lease to fill
it is one script (one round trip); storing an entry, dropping the lease and
tagging it is one pipeline of plain commands (one round trip: a pipeline
holding a script would first ask SCRIPT EXISTS). No KEYS or SCAN anywhere: a
tag's set names its entries. Tags need Redis 7 (``PEXPIRE ... NX`` / ``GT``).

The lease is dropped unconditionally once the value is stored: if ours had
expired and another worker holds a new one, nobody needs it any more, since
every lookup finds the value first. A leader that fails (no value) releases
only its own lease (compare and delete).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from resilient.storage import PerLoop, async_redis_client, key_part, redis_client

__all__ = ["AsyncSharedStore", "Found", "Names", "SharedStore", "entry_bytes", "split_entry"]

_LOOKUP = (files(__package__) / "lua" / "lookup.lua").read_text()
_RELEASE = (files(__package__) / "lua" / "release.lua").read_text()

FRESH, LEADER, FOLLOWER, NO_LEASE = 1, 2, 3, 0
_SPOP_BATCH = 500


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found: ``code`` (FRESH, LEADER, FOLLOWER, NO_LEASE) and the stored bytes, if any."""

    code: int
    raw: bytes | None


def entry_bytes(fresh_until: float, data: bytes) -> bytes:
    """An entry as stored: its fresh-until first, so the lookup script can judge it without parsing JSON."""
    return repr(fresh_until).encode() + b"|" + data


def split_entry(raw: bytes) -> bytes:
    """The data part of stored bytes."""
    return raw.split(b"|", 1)[1]


class Names:
    """Key names: the entry and its lease share a hash tag, so they live in one Redis Cluster slot."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def entry(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}"

    def lease(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:lease"

    def tag(self, tag: str) -> str:
        return f"{self.prefix}tag:{key_part(tag)}"


def _found(raw: Any) -> Found:
    if isinstance(raw, bytes):  # fresh: the script returned the entry itself
        return Found(FRESH, raw)
    code = int(raw[0])
    return Found(code, bytes(raw[1]) if len(raw) > 1 and raw[1] is not None else None)


def _lookup_args(now: float, token: str, lease_ms: int, lease: bool) -> list[Any]:
    return [repr(now), token, lease_ms, "1" if lease else "0"]


def _queue_put(pipe: Any, names: Names, key: str, raw: bytes, px: int, token: str, tags: Sequence[str]) -> None:
    entry = names.entry(key)
    pipe.set(entry, raw, px=px)
    if token:
        pipe.delete(names.lease(key))
    for tag in tags:
        name = names.tag(tag)
        pipe.sadd(name, entry)
        pipe.pexpire(name, px, nx=True)  # a new set: expires with this entry
        pipe.pexpire(name, px, gt=True)  # an older set: lives as long as its newest entry


class SharedStore:
    """The shared layer for sync calls."""

    def __init__(self, uri: str, prefix: str, timeout: float) -> None:
        self.names = Names(prefix)
        self.client = redis_client(uri, timeout)
        self._lookup = self.client.register_script(_LOOKUP)
        self._release = self.client.register_script(_RELEASE)

    def lookup(self, key: str, now: float, token: str, lease_ms: int, lease: bool) -> Found:
        n = self.names
        return _found(self._lookup(keys=[n.entry(key), n.lease(key)], args=_lookup_args(now, token, lease_ms, lease)))

    def put(self, key: str, raw: bytes, px: int, token: str, tags: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        _queue_put(pipe, self.names, key, raw, px, token, tags)
        pipe.execute()

    def release(self, key: str, token: str) -> None:
        self._release(keys=[self.names.lease(key)], args=[token])

    def delete(self, key: str) -> int:
        return int(self.client.delete(self.names.entry(key)))

    def delete_tag(self, tag: str) -> int:
        name, removed = self.names.tag(tag), 0
        while True:
            members = self.client.spop(name, _SPOP_BATCH)
            if not members:
                return removed
            removed += int(self.client.delete(*members))

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()


class AsyncSharedStore:
    """The shared layer for async calls: an asyncio client per event loop."""

    def __init__(self, uri: str, prefix: str, timeout: float) -> None:
        self.names = Names(prefix)

        def make() -> tuple[Any, Any, Any]:
            client = async_redis_client(uri, timeout)
            return client, client.register_script(_LOOKUP), client.register_script(_RELEASE)

        self._per_loop = PerLoop(make)

    async def lookup(self, key: str, now: float, token: str, lease_ms: int, lease: bool) -> Found:
        n = self.names
        lookup = self._per_loop.get()[1]
        return _found(await lookup(keys=[n.entry(key), n.lease(key)], args=_lookup_args(now, token, lease_ms, lease)))

    async def put(self, key: str, raw: bytes, px: int, token: str, tags: Sequence[str]) -> None:
        pipe = self._per_loop.get()[0].pipeline(transaction=False)
        _queue_put(pipe, self.names, key, raw, px, token, tags)
        await pipe.execute()

    async def release(self, key: str, token: str) -> None:
        await self._per_loop.get()[2](keys=[self.names.lease(key)], args=[token])

    async def delete(self, key: str) -> int:
        return int(await self._per_loop.get()[0].delete(self.names.entry(key)))

    async def delete_tag(self, tag: str) -> int:
        client, name, removed = self._per_loop.get()[0], self.names.tag(tag), 0
        while True:
            members = await client.spop(name, _SPOP_BATCH)
            if not members:
                return removed
            removed += int(await client.delete(*members))

    async def aclose(self) -> None:
        found = self._per_loop.pop()
        if found is not None:
            await found[0].aclose()
