"""The in-process layer: a bounded LRU of entries, each kept until its local deadline."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from ._codec import Entry

__all__ = ["LocalLayer"]


class LocalLayer:
    """At most ``max_entries`` entries; an entry is dropped at its own deadline (see :meth:`put`).

    Reads take no lock (one dict lookup, one ``move_to_end``); writes and
    evictions take a short one. Tags are remembered here too, so an
    invalidation by tag reaches this process's entries.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        self._tags: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Entry | None:
        found = self._data.get(key)
        if found is None:
            return None
        if now >= found[1]:
            self.delete(key)
            return None
        try:
            self._data.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile; what we read is still valid
            pass
        return found[0]

    def put(self, key: str, entry: Entry, until: float, tags: Iterable[str] = ()) -> None:
        """Keep ``entry`` until wall time ``until`` (at most its stale deadline)."""
        with self._lock:
            self._data[key] = (entry, min(until, entry.stale_until))
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
            for tag in tags:
                members = self._tags.setdefault(tag, set())
                if len(members) >= 4 * self.max_entries:  # only keys still held matter: forget the rest
                    members.intersection_update(self._data)
                members.add(key)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def delete_tag(self, tag: str) -> int:
        with self._lock:
            keys = self._tags.pop(tag, set())
            return sum(self._data.pop(k, None) is not None for k in keys)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._tags.clear()

    def __len__(self) -> int:
        return len(self._data)
