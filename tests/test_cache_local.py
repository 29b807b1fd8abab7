"""The in-process layer against a plain model: LRU bound, deadlines, invalidation by key and by tag.

The layer builds its key index only when an invalidation or a tagged entry
first needs it; whatever the order of stores, reads, expiries, evictions and
invalidations, it must hold and remove exactly what the model does.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_cache._codec import Entry
from resilient_cache._local import LocalLayer

REQUESTS = [f"request {i}".encode() for i in range(6)]
TAGS = ["a", "b"]


def key_of(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


class Model:
    """What the layer must do, written the obvious way."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.rows: dict[bytes, tuple[Any, ...]] = {}  # insertion order is recency
        self.tags: dict[str, set[str]] = {}

    def put(self, canonical: bytes, entry: Entry, until: float, tags: tuple[str, ...]) -> None:
        deadline = min(until, entry.stale_until)
        self.rows.pop(canonical, None)
        self.rows[canonical] = (entry, deadline, key_of(canonical), min(deadline, entry.fresh_until))
        while len(self.rows) > self.most:
            del self.rows[next(iter(self.rows))]
        for tag in tags:
            self.tags.setdefault(tag, set()).add(key_of(canonical))

    def get(self, canonical: bytes, now: float) -> Any:
        row = self.rows.get(canonical)
        if row is None:
            return None
        if now >= row[1]:
            del self.rows[canonical]
            return None
        del self.rows[canonical]
        self.rows[canonical] = row
        return row

    def delete(self, key: str) -> bool:
        for canonical, row in self.rows.items():
            if row[2] == key:
                del self.rows[canonical]
                return True
        return False

    def delete_tag(self, tag: str) -> int:
        return sum(self.delete(key) for key in self.tags.pop(tag, set()))

    def clear(self) -> None:
        self.rows.clear()
        self.tags.clear()


ops = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(REQUESTS),
        st.sampled_from([1.0, 5.0, 50.0]),  # fresh for
        st.sampled_from([0.0, 10.0]),  # stale for
        st.sampled_from([3.0, 100.0]),  # kept here for
        st.sampled_from([(), ("a",), ("a", "b")]),
    ),
    st.tuples(st.just("get"), st.sampled_from(REQUESTS)),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 4.0, 20.0])),
    st.tuples(st.just("delete"), st.sampled_from(REQUESTS)),
    st.tuples(st.just("delete_tag"), st.sampled_from(TAGS)),
    st.tuples(st.just("clear")),
)


@settings(max_examples=300, deadline=None)
@given(history=st.lists(ops, max_size=40), most=st.integers(1, 4))
def test_the_layer_holds_and_removes_what_the_model_does(history: list[tuple[Any, ...]], most: int) -> None:
    layer, model, now = LocalLayer(most), Model(most), 100.0
    for op in history:
        kind = op[0]
        if kind == "put":
            _, canonical, fresh, stale, here, tags = op
            entry = Entry(canonical, False, now, now + fresh, now + fresh + stale)
            layer.put(canonical, key_of(canonical), entry, now + here, tags)
            model.put(canonical, entry, now + here, tags)
        elif kind == "get":
            assert layer.get(op[1], now) == model.get(op[1], now)
        elif kind == "wait":
            now += op[1]
        elif kind == "delete":
            assert layer.delete(key_of(op[1])) == model.delete(key_of(op[1]))
        elif kind == "delete_tag":
            assert layer.delete_tag(op[1]) == model.delete_tag(op[1])
        else:
            layer.clear()
            model.clear()
        assert list(layer.data.items()) == list(model.rows.items())
        assert len(layer) == len(model.rows)
