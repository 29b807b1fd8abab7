"""The one shape of the stores the pytest fixtures give (``memory_store``, ``redis_store``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MemoryStore", "StoreFixture"]


class StoreFixture:
    """A store for a test: what ``memory_store`` and ``redis_store`` both are.

    A test parametrised over stores reads only these: ``url`` (the store URI,
    ``config``'s ``store``), ``key_prefix`` (``config``'s ``key_prefix``),
    :meth:`config` and :meth:`flush`.
    """

    url: str
    key_prefix: str

    def config(self, **sections: Any) -> dict[str, Any]:
        """A ``config=`` for :class:`~resilient.Pipeline` on this store: ``store``, ``key_prefix``, then ``sections``.

        ``sections`` may give ``key_prefix`` (or any core option) too: it wins.
        """
        return {"store": self.url, "key_prefix": self.key_prefix, **sections}

    def flush(self) -> None:
        """Forget every key in the store, so that the test starts from an empty one."""
        raise NotImplementedError


@dataclass(frozen=True)
class MemoryStore(StoreFixture):
    """The in-process store (``memory://``) under a key prefix of the test's own."""

    url: str
    key_prefix: str

    def flush(self) -> None:
        """Nothing to forget: every pipeline on ``memory://`` starts with a store of its own."""
