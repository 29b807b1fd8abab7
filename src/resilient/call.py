"""One provider call as the policies see it.

A :class:`Target` is what a guarded function or wrapped SDK method *is*
(provider, operation, static model, kind); it is fixed when the pipeline
compiles the chain. A :class:`Call` is one invocation of it: the arguments,
the tenant, the attempt number, timings, usage and outcome. Policies read and
annotate the ``Call``; it is created once per invocation and shared by every
attempt.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from . import context as _context

__all__ = ["ABANDONED", "SUCCESS", "Call", "Kind", "Outcome", "Target", "Usage", "capture_calls"]

Kind = Literal["sync", "async", "stream", "astream"]


@dataclass(frozen=True, slots=True)
class Target:
    """What is being called, known when the chain is compiled.

    ``model`` is the static model when the guard names one; otherwise a call's
    model is read from its ``model`` keyword argument (see :attr:`Call.model`).
    ``tenant`` is an optional key function giving the tenant of a call; without
    it the tenant comes from the request context. ``count_tokens`` is the
    provider's own count of a call's input tokens (an ``int``, or an awaitable
    of one for async targets), set by :meth:`Pipeline.wrap` where the SDK has
    such a call; the quota plugin uses it when configured to.
    ``accepts_timeout`` says the callable takes ``timeout=`` (seconds), as the
    SDK methods :meth:`Pipeline.wrap` guards do: the timeout plugin then hands
    each attempt's limit to it, whatever its ``pass_timeout`` option says.
    ``reads_usage`` says the callable sets :attr:`Call.usage` itself from its
    response and from each stream event as it passes (the SDK methods
    :meth:`Pipeline.wrap` guards do): a policy need not read them again.
    """

    provider: str
    operation: str
    kind: Kind
    model: str | None = None
    name: str = ""
    tenant: Callable[[Call], str | None] | None = None
    count_tokens: Callable[[Call], Any] | None = None
    accepts_timeout: bool = False
    reads_usage: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call used, as read from the provider's response."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


def _fast_usage_init() -> None:
    """Give :class:`Usage` an ``__init__`` that sets its slots through their descriptors.

    A frozen dataclass sets each field with ``object.__setattr__`` (a global
    and an attribute lookup, then a generic setattr); the metrics policy
    builds a Usage on every successful call. Same signature, same values.
    """
    slots: Any = vars(Usage)
    set_input, set_output = slots["input_tokens"].__set__, slots["output_tokens"].__set__
    set_read, set_write = slots["cache_read_tokens"].__set__, slots["cache_write_tokens"].__set__

    def __init__(
        self: Usage,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        set_input(self, input_tokens)
        set_output(self, output_tokens)
        set_read(self, cache_read_tokens)
        set_write(self, cache_write_tokens)

    __init__.__qualname__ = "Usage.__init__"
    Usage.__init__ = __init__  # type: ignore[method-assign]


_fast_usage_init()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, classified once so every policy agrees.

    ``kind`` is one of ``success``, ``abandoned`` (a stream the consumer
    stopped reading), ``timeout``, ``connection``, ``rate_limited``,
    ``overloaded``, ``server_error``, ``client_error``, ``cancelled``,
    ``refused`` (a policy said no) or ``error`` (anything unrecognised).
    ``retryable`` says whether trying again may help; ``provider_fault``
    whether it counts against the provider (breaker failures): a 400 caused
    by the caller's input is neither.
    """

    kind: str
    ok: bool = False
    status: int | None = None
    retryable: bool = False
    provider_fault: bool = False
    retry_after: float | None = None
    error: BaseException | None = None


SUCCESS: Final = Outcome("success", ok=True)
ABANDONED: Final = Outcome("abandoned", ok=True)

ChunkWatcher = Callable[["Call", Any], None]
EndWatcher = Callable[["Call", Outcome], None]


class Call:
    """One invocation of a :class:`Target`, shared by all its attempts.

    ``args`` and ``kwargs`` are what the function will be called with; a
    policy may rewrite ``kwargs`` (e.g. a model router). ``attempt`` counts
    from 1 and is advanced by a retrying policy. ``started`` and ``ended`` are
    monotonic seconds set by whichever policy times calls. ``metadata`` is a
    dict for results a policy wants to surface (``cache: "hit"``, ...).
    """

    __slots__ = (
        "_metadata",
        "_on_chunk",
        "_on_end",
        "args",
        "attempt",
        "ended",
        "kwargs",
        "outcome",
        "started",
        "target",
        "usage",
    )

    def __init__(self, target: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.attempt = 1
        self.started: float | None = None
        self.ended: float | None = None
        self.usage: Usage | None = None
        self.outcome: Outcome | None = None
        self._metadata: dict[str, Any] | None = None
        self._on_chunk: list[ChunkWatcher] | None = None
        self._on_end: list[EndWatcher] | None = None
        if _capturing:  # a module global read: the common case (no capture open) costs ~10 ns
            sink = _sink.get()
            if sink is not None:
                sink.append(self)

    @property
    def provider(self) -> str:
        return self.target.provider

    @property
    def operation(self) -> str:
        return self.target.operation

    @property
    def model(self) -> str | None:
        """The static model of the target, else the call's ``model`` argument."""
        model = self.target.model
        if model is None:
            value = self.kwargs.get("model")
            model = value if isinstance(value, str) else None
        return model

    @property
    def context(self) -> _context.RequestContext | None:
        """The request context the call runs in, if any."""
        return _context.current()

    @property
    def tenant(self) -> str | None:
        """The tenant: from the target's key function, else the request context."""
        key = self.target.tenant
        if key is not None:
            return key(self)
        ctx = _context.current()
        return ctx.tenant if ctx is not None else None

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    def peek(self, key: str, default: Any = None) -> Any:
        """``metadata[key]``, or ``default``, without creating the metadata dict (for hot paths)."""
        metadata = self._metadata
        return default if metadata is None else metadata.get(key, default)

    def add_usage(self, usage: Usage) -> None:
        """Add usage read from a response (streams report it in pieces)."""
        self.usage = usage if self.usage is None else self.usage + usage

    def on_chunk(self, watcher: ChunkWatcher) -> None:
        """Have ``watcher(call, chunk)`` see each chunk of this stream.

        Register it while handling the call (before the chunks flow). Chunks
        are not buffered; the watcher sees each one as it passes.
        """
        if self._on_chunk is None:
            self._on_chunk = []
        self._on_chunk.append(watcher)

    def on_end(self, watcher: EndWatcher) -> None:
        """Have ``watcher(call, outcome)`` called once when this stream ends.

        ``outcome`` is :data:`SUCCESS` when the stream was exhausted,
        :data:`ABANDONED` when the consumer closed it early, or the classified
        failure when it raised.
        """
        if self._on_end is None:
            self._on_end = []
        self._on_end.append(watcher)

    def __repr__(self) -> str:
        t = self.target
        return f"<Call {t.provider}:{t.operation} model={self.model!r} attempt={self.attempt}>"


# capture_calls(): the calls made in a block, so a caller can read a result's
# metadata (cache hit or stale, fallback step, route, cost). The counter lets
# Call.__init__ skip the ContextVar lookup while no block is open anywhere.
_capturing = 0
_capturing_lock = threading.Lock()
_sink: contextvars.ContextVar[list[Call] | None] = contextvars.ContextVar("resilient_capture", default=None)


@contextmanager
def capture_calls() -> Iterator[list[Call]]:
    """Collect every :class:`Call` started inside the block, in order.

    ``with capture_calls() as calls: answer = ask(...)`` then
    ``calls[-1].metadata`` says how the answer was produced (``cache``,
    ``fallback_step``, ``route``, ``cost_usd``) and ``calls[-1].usage`` what it
    used. Blocks nest (the inner one collects its own calls); the list follows
    the context into asyncio tasks created inside the block.
    """
    global _capturing
    calls: list[Call] = []
    token = _sink.set(calls)
    with _capturing_lock:
        _capturing += 1
    try:
        yield calls
    finally:
        with _capturing_lock:
            _capturing -= 1
        _sink.reset(token)
