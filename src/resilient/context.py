"""The request context: who is being served while a provider call runs.

Adapters (ASGI, WSGI, Flask) open a context per request; a provider call made
while serving it reads the tenant, route and request id from here, and
policies add to its running totals (tokens, cost). Outside any request the
context is empty and :func:`current` returns ``None``.

It lives in a :class:`contextvars.ContextVar`, so it follows asyncio tasks and
is copied into threads started with :func:`contextvars.copy_context`.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestContext", "current", "request_context"]


@dataclass(slots=True)
class RequestContext:
    """What a policy may know about the request being served.

    ``attributes`` is free-form and for plugins (namespace your keys);
    ``totals`` accumulates numbers over every provider call of the request,
    e.g. ``tokens.input`` or ``cost.usd``, via :meth:`add`.
    """

    request_id: str
    tenant: str | None = None
    route: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, amount: float) -> None:
        """Add ``amount`` to the running total ``name`` for this request."""
        self.totals[name] = self.totals.get(name, 0) + amount


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "resilient_request_context", default=None
)

#: The context of the request being served, or ``None`` outside a request.
current = _current.get


@contextmanager
def request_context(
    *,
    request_id: str | None = None,
    tenant: str | None = None,
    route: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[RequestContext]:
    """Open a request context for the duration of a ``with`` block.

    ``request_id`` defaults to a random UUID4 hex. Contexts nest: the inner
    one is current inside the block and the outer one is restored after it.
    """
    ctx = RequestContext(
        request_id=request_id or uuid.uuid4().hex,
        tenant=tenant,
        route=route,
        attributes=dict(attributes or {}),
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
