"""The policy contract: what a plugin contributes to the call chain.

A :class:`Policy` is built once per pipeline by its plugin (through the
``resilient_policies`` hook) and asked, once per guarded target and kind, to
wrap the next handler of the chain. The pipeline links the wrapped handlers
into one chain per target and reuses it for every call: no lookup and no
pluggy dispatch per call.

A handler takes the :class:`~resilient.call.Call` and returns what the
provider call returns (a value, an awaitable, an iterator or an async
iterator, by kind). A policy that has nothing to do for a target returns
``nxt`` itself and costs nothing; a policy that does not override a ``wrap_*``
method does not act on that kind of call.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .call import Call, Outcome, Target
from .clock import SYSTEM_CLOCK, Clock
from .events import Emitter
from .providers import classify as _default_classify

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "AsyncHandler",
    "AsyncStreamHandler",
    "Classifier",
    "Handler",
    "Order",
    "Policy",
    "Runtime",
    "StreamHandler",
]

Handler = Callable[[Call], Any]
AsyncHandler = Callable[[Call], Awaitable[Any]]
StreamHandler = Callable[[Call], Iterator[Any]]
AsyncStreamHandler = Callable[[Call], AsyncIterator[Any]]

#: A classifier answers an :class:`Outcome` for errors it recognises, else ``None``.
Classifier = Callable[[BaseException], "Outcome | None"]


class Order:
    """Default positions in the chain, outermost first (lower runs first).

    The documented onion is metrics -> cache -> quota -> retry -> breaker ->
    provider call: a cache hit costs no quota, a retry re-checks the breaker
    on every attempt, and metrics see every outcome. The gaps leave room for
    policies such as fallback (outside the cache), routing, bulkheads and
    timeouts. Users reorder with ``order = [...]`` in the configuration.
    """

    OUTERMOST = 0
    METRICS = 100
    FALLBACK = 150
    CACHE = 200
    ROUTING = 250
    QUOTA = 300
    CONCURRENCY = 350
    RETRY = 400
    BREAKER = 500
    TIMEOUT = 600
    INNERMOST = 1000


class Policy:
    """Base class for policies. Override the ``wrap_*`` methods you support.

    ``name`` identifies the policy in configuration (``order``, ``disable``)
    and in ``resilient plugins``; ``order`` is its default position (see
    :class:`Order`).
    """

    # Plain attributes, not ClassVars: a class may set them for all its
    # instances, or one instance may set its own (two breakers with two names).
    name: str = ""
    order: int = Order.INNERMOST

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        """Wrap a sync handler. Return ``nxt`` to stay out of the chain."""
        return nxt

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        """Wrap an async handler (returns an awaitable)."""
        return nxt

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        """Wrap a stream: the handler runs when the stream starts and returns its iterator.

        To see chunks or the end without wrapping the iterator, register
        :meth:`Call.on_chunk` / :meth:`Call.on_end` watchers.
        """
        return nxt

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        """Wrap an async stream; the handler returns an async iterator."""
        return nxt

    def close(self) -> None:
        """Release resources (store connections). Called by :meth:`Pipeline.close`."""

    async def aclose(self) -> None:
        """Async :meth:`close`, for async stores. Defaults to :meth:`close`."""
        self.close()

    def health(self) -> Mapping[str, Any] | None:
        """What ``/ready`` should show about this policy, or ``None`` for nothing.

        A JSON-able mapping with an ``"ok"`` bool (``False`` makes the
        pipeline not ready: e.g. its store is unreachable) and whatever else
        helps an operator (breaker states, quota remaining, in-flight counts).
        Called off the hot path; may do store I/O; should not take long.
        """
        return None

    async def ahealth(self) -> Mapping[str, Any] | None:
        """Async :meth:`health`, for async stores. Defaults to :meth:`health` (run in a thread)."""
        if type(self).health is Policy.health:
            return None
        return await asyncio.to_thread(self.health)

    def kinds(self) -> tuple[str, ...]:
        """The kinds of call this policy acts on (the ``wrap_*`` it overrides)."""
        cls = type(self)
        pairs = (("sync", "wrap"), ("async", "wrap_async"), ("stream", "wrap_stream"), ("astream", "wrap_astream"))
        return tuple(kind for kind, meth in pairs if getattr(cls, meth) is not getattr(Policy, meth))


@dataclass(frozen=True)
class Runtime:
    """What a plugin is given to build its policies.

    ``settings`` is the validated configuration; ``clock`` the clock every
    time-based policy must use; ``events`` the emitter to tell observers;
    :meth:`classify` the pipeline's error classification.
    """

    settings: Settings
    clock: Clock = SYSTEM_CLOCK
    events: Emitter = field(default_factory=Emitter)
    classifiers: Sequence[Classifier] = ()
    random: Callable[[], float] = random.random
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("resilient"))

    def classify(self, error: BaseException) -> Outcome:
        """Classify a provider call's exception: plugin classifiers first, then the default."""
        for classifier in self.classifiers:
            try:
                outcome = classifier(error)
            except Exception:
                self.log.exception("classifier %r failed", classifier)
                continue
            if outcome is not None:
                return outcome
        return _default_classify(error)
