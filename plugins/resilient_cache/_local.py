"""The in-process layer: a bounded LRU of entries, each kept until its local deadline.

Indexed by the canonical request bytes (exact; no digest needed on a hit),
with each entry's SHA-256 key alongside, for metadata and invalidation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ._codec import Entry

__all__ = ["LocalLayer"]


class LocalLayer:
    """At most ``max_entries`` entries; an entry is dropped at its own deadline (see :meth:`put`).

    Reads take no lock (one dict lookup, one ``move_to_end``); writes and
    evictions take a short one. Tags are remembered here too, so an
    invalidation by tag reaches this process's entries. The index from key
    to canonical request that invalidation needs is built by the first
    invalidation or tagged entry, and kept from then on: until then a store
    is one dict write (and an eviction one pop).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        #: canonical request -> (entry, local deadline, key, fresh here until): the hit path reads it directly.
        self.data: OrderedDict[bytes, tuple[Entry, float, str, float]] = OrderedDict()
        self._data = self.data
        self._by_key: dict[str, bytes] | None = None
        self._tags: dict[str, set[str]] = {}
        #: Held by every write; the cache's flat handlers take it to write a plain row themselves.
        self.lock = threading.Lock()

    def get(self, canonical: bytes, now: float) -> tuple[Entry, float, str, float] | None:
        """(entry, local deadline, key, fresh until), or None when absent or past its local deadline."""
        found = self._data.get(canonical)
        if found is None:
            return None
        if now >= found[1]:
            self._drop(canonical, found[2])
            return None
        try:
            self._data.move_to_end(canonical)
        except KeyError:  # evicted by another thread meanwhile; what we read is still valid
            pass
        return found

    def put(self, canonical: bytes, key: str, entry: Entry, until: float, tags: tuple[str, ...] = ()) -> None:
        """Keep ``entry`` until wall time ``until`` (at most its stale deadline)."""
        stale_until, fresh_until = entry.stale_until, entry.fresh_until
        deadline = until if until < stale_until else stale_until
        self.hold(canonical, (entry, deadline, key, deadline if deadline < fresh_until else fresh_until), tags)

    def hold(self, canonical: bytes, held: tuple[Entry, float, str, float], tags: tuple[str, ...] = ()) -> None:
        """Keep ``held``, a row as :meth:`put` makes it: (entry, local deadline, key, fresh here until)."""
        data, most = self._data, self.max_entries
        lock = self.lock
        lock.acquire()  # not ``with``: half the cost, and every miss stores
        try:
            if canonical in data:  # a new key goes to the end by itself
                data.move_to_end(canonical)
            data[canonical] = held
            by_key = self._by_key
            if by_key is None:
                if tags:
                    by_key = self._index()
                else:
                    while len(data) > most:
                        data.popitem(last=False)
                    return
            key = held[2]
            by_key[key] = canonical
            while len(data) > most:
                by_key.pop(data.popitem(last=False)[1][2], None)
            for tag in tags:
                members = self._tags.setdefault(tag, set())
                if len(members) >= 4 * most:  # only keys still held matter: forget the rest
                    members.intersection_update(by_key)
                members.add(key)
        finally:
            lock.release()

    def _index(self) -> dict[str, bytes]:
        """The key -> canonical index, built from what is held (under the lock)."""
        by_key = self._by_key
        if by_key is None:
            by_key = self._by_key = {held[2]: canonical for canonical, held in self._data.items()}
        return by_key

    def _drop(self, canonical: bytes, key: str) -> None:
        """:meth:`delete` of ``key`` when its canonical request is known: the index is not needed."""
        with self.lock:
            self._data.pop(canonical, None)
            if self._by_key is not None:
                self._by_key.pop(key, None)

    def delete(self, key: str) -> bool:
        with self.lock:
            canonical = self._index().pop(key, None)
            return canonical is not None and self._data.pop(canonical, None) is not None

    def delete_tag(self, tag: str) -> int:
        with self.lock:
            removed = 0
            by_key = self._index()
            for key in self._tags.pop(tag, set()):
                canonical = by_key.pop(key, None)
                removed += canonical is not None and self._data.pop(canonical, None) is not None
            return removed

    def clear(self) -> None:
        with self.lock:
            self._data.clear()
            self._by_key = None
            self._tags.clear()

    def __len__(self) -> int:
        return len(self._data)
