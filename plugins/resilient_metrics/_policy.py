"""The metrics policy: outermost, it times every call and records its outcome, attempts, tokens and cost."""

from __future__ import annotations

import sys
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    Handler,
    Order,
    Outcome,
    Policy,
    Runtime,
    StreamHandler,
    Target,
    Usage,
)
from resilient.context import current as current_context
from resilient.providers import field_of, merge_usage, usage_from, usage_from_chunk

from ._metrics import Bounded, Metrics, shared_cells
from ._options import MetricsOptions
from ._prices import Price, PriceTable

__all__ = ["MetricsPolicy"]


class _Null:
    """Stands for a metric child when prometheus-client is not installed: accounting still works."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NULL = _Null()
_NO_LOCK = threading.Lock()

#: ``call.metadata["cache"]`` values of a call answered from the cache: its tokens were not spent again.
_SERVED = frozenset({"hit", "stale"})

_TOTALS = ("tokens.input", "tokens.output", "tokens.cache_read", "tokens.cache_write")

# Whether a type is read by attribute by ``usage_from`` (not a Mapping; and, for a result, not a str,
# whose usage is never read), remembered: responses and their usage come in a handful of types.
# True: with getattr; _MODEL (also true): a class whose missing attributes go to a Python __getattr__
# (a pydantic model: every SDK response), read with field_of, ~40x cheaper for a missing field.
_by_attribute: dict[type, bool | int] = {}
_MODEL = 2


def _read_by_attribute(cls: type) -> bool | int:
    found = _by_attribute.get(cls)
    if found is None:
        found = not issubclass(cls, (Mapping, str)) and (_MODEL if hasattr(cls, "__getattr__") else True)
        if len(_by_attribute) < 1024:
            _by_attribute[cls] = found
    return found


# Usage(...) runs a Python __init__ through type.__call__ (~4 k instructions on CPython 3.11); setting
# the four slots through their descriptors on a bare instance makes the same object for 0.6 k less.
_new = object.__new__
_slots: Any = vars(Usage)
_set_input, _set_output = _slots["input_tokens"].__set__, _slots["output_tokens"].__set__
_set_read, _set_write = _slots["cache_read_tokens"].__set__, _slots["cache_write_tokens"].__set__


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def usage_of(result: Any) -> Usage | None:
    """``usage_from(result)`` (``None`` for a str), read with plain attribute access for SDK-shaped objects.

    An anthropic ``Message`` or openai ``ChatCompletion`` (or any object whose
    ``usage`` has their fields) is read here field by field without
    ``getattr`` defaults, each of which costs a builtin call; anything else,
    or an attribute missing on the way, goes to ``usage_from``. The rules are
    ``usage_from``'s own (a property test holds the two equal).
    """
    try:
        if _by_attribute.get(type(result)) or _read_by_attribute(type(result)):
            usage = result.usage
            kind = _by_attribute.get(type(usage)) or _read_by_attribute(type(usage)) if usage is not None else False
            if kind:
                if kind is True:
                    prompt = getattr(usage, "prompt_tokens", None)
                    completion = getattr(usage, "completion_tokens", None)
                else:  # a model whose missing fields raise in Python: field_of reads without the exception
                    prompt = field_of(usage, "prompt_tokens")
                    completion = field_of(usage, "completion_tokens")
                if prompt is not None or completion is not None:  # openai chat completions
                    details = usage.prompt_tokens_details
                    if details is None:
                        cached = 0
                    elif _by_attribute.get(type(details)) or _read_by_attribute(type(details)):
                        cached = _int(field_of(details, "cached_tokens"))
                    else:
                        cached = _int(details.get("cached_tokens"))
                    prompt = prompt if type(prompt) is int and prompt > 0 else 0
                    found = _new(Usage)
                    _set_input(found, prompt - cached if prompt > cached else 0)
                    _set_output(found, completion if type(completion) is int and completion > 0 else 0)
                    _set_read(found, cached)
                    _set_write(found, 0)
                    return found
                cache_read = usage.cache_read_input_tokens
                cache_write = usage.cache_creation_input_tokens
                if cache_read is not None or cache_write is not None:  # anthropic
                    input_tokens = usage.input_tokens
                    output_tokens = usage.output_tokens
                    found = _new(Usage)
                    _set_input(found, input_tokens if type(input_tokens) is int and input_tokens > 0 else 0)
                    _set_output(found, output_tokens if type(output_tokens) is int and output_tokens > 0 else 0)
                    _set_read(found, cache_read if type(cache_read) is int and cache_read > 0 else 0)
                    _set_write(found, cache_write if type(cache_write) is int and cache_write > 0 else 0)
                    return found
    except AttributeError:  # a field this shape lacks: usage_from reads it with its defaults
        pass
    return None if isinstance(result, str) else usage_from(result)


def _note(call: Call, usage: Usage, cost: float | None) -> None:
    """Note a call's cost on it, and its tokens and cost in the request's totals."""
    call.metadata["cost_usd"] = cost
    ctx = current_context()
    if ctx is not None:
        for name, n in zip(
            _TOTALS,
            (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens),
            strict=True,
        ):
            ctx.add(name, n)
        if cost is None:
            ctx.add("cost.unknown_calls", 1)
        else:
            ctx.add("cost.usd", cost)


# ``sys.getrefcount(call)`` inside ``succeeded`` when nothing but the pipeline's wrapper (``return
# handler(Call(...))``), ``metered`` and ``succeeded`` holds the call, per kind: measured once on
# frames of the same shape, so it is this interpreter's count. Anyone else holding the call (a
# policy outside this one, ``capture_calls``, a caller of ``Pipeline.compile`` with its own Call, an
# inner policy that kept it) adds a reference, and the call's usage is then built as always. Only
# where a frame's arguments are references it owns: CPython 3.10-3.13 with the GIL (3.14 may
# borrow them, and free-threaded counts are not exact); elsewhere 0, and every call builds it.
_refcount: Callable[[object], int] = getattr(sys, "getrefcount", lambda obj: 0)


class _Probe:
    __slots__ = ()


def _probe_succeeded(call: object, result: object, start: float, end: float) -> int:
    return _refcount(call)


def _probe_metered(call: object) -> int:
    result = None
    return _probe_succeeded(call, result, 0.0, 0.0)


def _probe_wrapper() -> int:
    return _probe_metered(_Probe())


async def _aprobe_nxt(call: object) -> object:
    return None


async def _aprobe_metered(call: object) -> int:
    result = await _aprobe_nxt(call)
    return _probe_succeeded(call, result, 0.0, 0.0)


async def _aprobe_wrapper() -> int:
    return await _aprobe_metered(_Probe())


def _unseen_counts() -> dict[str, int]:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    if sys.implementation.name != "cpython" or not (3, 10) <= sys.version_info[:2] < (3, 14) or not gil:
        return {}
    coro = _aprobe_wrapper()
    try:
        coro.send(None)
    except StopIteration as stop:
        counts = {"sync": _probe_wrapper(), "async": stop.value}
    else:  # the probe never suspends; if it did, keep building the usage
        coro.close()
        return {}
    # A count that low would mean the frames do not own their arguments: trust none of it.
    return counts if min(counts.values()) >= 2 else {}


_UNSEEN = _unseen_counts()


class _Children:
    """The metric children of one (provider, operation, model, tenant) label set, bound once."""

    __slots__ = (
        "_by_outcome",
        "_calls",
        "_labels",
        "attempts",
        "bounds",
        "cache_read",
        "cache_write",
        "cells",
        "cost",
        "cost_unknown",
        "duration",
        "first_chunk",
        "input",
        "lock",
        "ok",
        "output",
        "price",
    )

    def __init__(
        self,
        metrics: Metrics | None,
        labels: tuple[str, ...],
        tenant: tuple[str, ...],
        price: Price | None,
        stream: bool,
    ) -> None:
        self.price = price
        self._labels = (*labels, *tenant)
        self._by_outcome: dict[str, Any] = {}
        self.ok: Any
        self.duration: Any
        self.attempts: Any
        self.cost: Any
        self.cost_unknown: Any
        self.input: Any
        self.output: Any
        self.cache_read: Any
        self.cache_write: Any
        self.first_chunk: Any
        self.cells: list[Any] | None = None
        self.bounds: tuple[float, ...] = ()
        self.lock = _NO_LOCK
        if metrics is None:
            self._calls = None
            self.ok = self.duration = self.attempts = self.cost = self.cost_unknown = self.first_chunk = _NULL
            self.input = self.output = self.cache_read = self.cache_write = _NULL
            return
        self._calls = metrics.calls
        self.ok = self.outcome("success")
        self.duration = metrics.duration.labels(*labels)
        self.attempts = metrics.attempts.labels(*labels)
        self.first_chunk = metrics.first_chunk.labels(*labels) if stream else _NULL
        # No cost series for a model without a price: a 0 there would read as free.
        self.cost = _NULL if price is None else metrics.cost.labels(*labels, *tenant)
        self.cost_unknown = metrics.cost_unknown.labels(*labels)
        tokens = metrics.tokens
        self.input = tokens.labels(*labels, *tenant, "input")
        self.output = tokens.labels(*labels, *tenant, "output")
        self.cache_read = tokens.labels(*labels, *tenant, "cache_read")
        self.cache_write = tokens.labels(*labels, *tenant, "cache_write")
        # A successful call updates nine values: under one lock for all of them (the lock of these
        # base labels, shared with every other label set of theirs) it takes one acquisition, not nine.
        self.lock = metrics.lock_for(labels)
        counted = self.cost_unknown if price is None else self.cost
        kinds = (self.input, self.output, self.cache_read, self.cache_write)
        self.cells = shared_cells(self.lock, (self.ok, self.attempts, *kinds, counted, self.duration))
        self.bounds = tuple(getattr(self.duration, "_upper_bounds", ()))

    def tally(self, cells: list[Any], elapsed: float, attempts: int, usage: Usage | None, cost: float | None) -> None:
        """A successful call's count, attempts, duration and (with ``usage``) tokens and cost, under one lock.

        The updates ``ok.inc()``, ``attempts.inc()``, ``duration.observe()`` and
        :meth:`MetricsPolicy.account`'s counters make, on the cells of
        :func:`shared_cells` (in its order: ok, attempts, the four token
        kinds, cost or cost_unknown, the duration's buckets, its sum).
        """
        # The bucket prometheus_client's observe() counts: the first upper bound >= elapsed (the last is +Inf).
        bucket = cells[7 + bisect_left(self.bounds, elapsed)]
        lock = self.lock
        lock.acquire()
        try:
            cells[0]._value += 1.0
            cells[1]._value += attempts
            bucket._value += 1.0
            cells[-1]._value += elapsed
            if usage is not None:
                cells[2]._value += usage.input_tokens
                cells[3]._value += usage.output_tokens
                cells[4]._value += usage.cache_read_tokens
                cells[5]._value += usage.cache_write_tokens
                cells[6]._value += 1.0 if cost is None else cost
        finally:
            lock.release()

    def outcome(self, kind: str) -> Any:
        child = self._by_outcome.get(kind)
        if child is None:
            child = _NULL if self._calls is None else self._calls.labels(*self._labels, kind)
            if len(self._by_outcome) < 64:  # outcome kinds come from classifiers: a handful
                self._by_outcome[kind] = child
        return child


class MetricsPolicy(Policy):
    """Times each call with the pipeline's clock and records it; reads usage and prices it.

    Sets ``call.started``/``call.ended``, ``call.usage`` (from the response or
    the stream's chunks when no inner policy did), ``call.metadata["cost_usd"]``
    (``None`` when the model has no price) and adds ``tokens.*`` and
    ``cost.usd`` to the request context's totals. A call the cache answered
    (``call.metadata["cache"]`` is ``hit`` or ``stale``) spent no tokens: it
    is counted, its tokens and cost are not, and its ``cost_usd`` is 0.
    """

    name = "metrics"
    order = Order.METRICS

    def __init__(self, options: MetricsOptions, runtime: Runtime, metrics: Metrics | None) -> None:
        self._options = options
        #: The registry the metrics are recorded into (``None`` without prometheus-client).
        self.registry = metrics.registry if metrics is not None else None
        self._runtime = runtime
        self._metrics = metrics
        self._clock = runtime.clock
        self.prices = PriceTable(options.prices, defaults=options.default_prices)
        self.models = Bounded(options.max_models, options.allowed_models, strip_dates=True)
        self._tenants = (
            Bounded(len(options.allowed_tenants), options.allowed_tenants) if options.tenant_labels else None
        )

    # ------------------------------------------------------------ labels and accounting

    def _children(self, target: Target, model: str | None, tenant_label: tuple[str, ...]) -> _Children:
        labels = (target.provider, target.operation, self.models(model))
        stream = target.kind in ("stream", "astream")
        return _Children(self._metrics, labels, tenant_label, self.prices.lookup(model), stream)

    def _binder(self, target: Target) -> tuple[Callable[[Call], _Children], _Children | None]:
        """What finds a call's children, and the one bound set when the labels are static (else a cache per model)."""
        if target.model is not None and self._tenants is None:
            static = self._children(target, target.model, ())
            return (lambda call: static), static
        cache: dict[Any, _Children] = {}
        tenants = self._tenants

        def children_of(call: Call) -> _Children:
            model = call.model
            tenant_label = () if tenants is None else (tenants(call.tenant),)
            key = (model, tenant_label)
            found = cache.get(key)
            if found is None:
                found = self._children(target, model, tenant_label)
                if len(cache) < 4096:  # past it (many models, all 'other'), children are bound per call
                    cache[key] = found
            return found

        return children_of, None

    @staticmethod
    def account(children: _Children, call: Call, usage: Usage) -> float | None:
        """Count ``usage``'s tokens and cost; note the cost on the call and the request's totals."""
        if usage.input_tokens:
            children.input.inc(usage.input_tokens)
        if usage.output_tokens:
            children.output.inc(usage.output_tokens)
        if usage.cache_read_tokens:
            children.cache_read.inc(usage.cache_read_tokens)
        if usage.cache_write_tokens:
            children.cache_write.inc(usage.cache_write_tokens)
        price = children.price
        cost: float | None
        if price is None:
            children.cost_unknown.inc()
            cost = None
        else:
            cost = price.cost(usage)
            children.cost.inc(cost)
        _note(call, usage, cost)
        return cost

    def _outcome_of(self, call: Call, exc: BaseException) -> Outcome:
        outcome = call.outcome
        if outcome is None or outcome.error is not exc:
            outcome = self._runtime.classify(exc)
        return outcome

    def _recorders(
        self, target: Target
    ) -> tuple[Callable[[Call, Any, float, float], None], Callable[[Call, BaseException, float, float], None]]:
        """What records a call that returned and one that raised: shared by the sync and async drivers.

        Recording never raises into the call: a bug here (or in a tenant key
        function) is logged, and the call's own result or error goes on.
        """
        children_of, static = self._binder(target)
        account, ended, outcome_of, log = self.account, self._ended, self._outcome_of, self._runtime.log
        # The children of a call found without a call to children_of: bound once when the labels are
        # static, else by the call's model argument when no tenant label applies (what children_of does).
        by_model: dict[str | None, _Children] | None = {} if static is None and self._tenants is None else None
        unseen = _UNSEEN.get(target.kind, 0)

        def succeeded(call: Call, result: Any, start: float, end: float) -> None:
            call.ended = end
            try:
                children: _Children | None = static
                if children is None:
                    if by_model is not None:
                        model = call.kwargs.get("model")  # Call.model, the target having no static model
                        if model.__class__ is str:
                            children = by_model.get(model)
                            if children is None:
                                children = children_of(call)
                                if len(by_model) < 4096:
                                    by_model[model] = children
                        else:
                            children = children_of(call)
                    else:
                        children = children_of(call)
                outcome = call.outcome
                metadata = call._metadata
                cells = children.cells
                if cells is not None and (outcome is None or not outcome.ok):
                    # The common case, counted under one lock: the same updates as below.
                    if metadata is not None and metadata.get("cache") in _SERVED:
                        children.tally(cells, end - start, call.attempt, None, None)
                        metadata["cost_usd"] = 0.0
                        return
                    usage = call.usage
                    seen = True
                    if usage is None:
                        if unseen and current_context() is None and _refcount(call) == unseen:
                            # Nobody but the pipeline's wrapper and these frames holds the call: its
                            # usage and cost_usd can never be read, so an anthropic-shaped answer is
                            # counted without building them (usage_of's anthropic branch, no Usage).
                            try:
                                if _by_attribute.get(type(result)):
                                    found = result.usage
                                    kind = _by_attribute.get(type(found))
                                    if kind and (
                                        getattr(found, "prompt_tokens", None) is None
                                        and getattr(found, "completion_tokens", None) is None
                                        if kind is True
                                        else field_of(found, "prompt_tokens") is None
                                        and field_of(found, "completion_tokens") is None
                                    ):
                                        cache_read = found.cache_read_input_tokens
                                        cache_write = found.cache_creation_input_tokens
                                        if cache_read is not None or cache_write is not None:
                                            input_tokens = found.input_tokens
                                            output_tokens = found.output_tokens
                                            if type(input_tokens) is not int or input_tokens < 0:
                                                input_tokens = 0
                                            if type(output_tokens) is not int or output_tokens < 0:
                                                output_tokens = 0
                                            if type(cache_read) is not int or cache_read < 0:
                                                cache_read = 0
                                            if type(cache_write) is not int or cache_write < 0:
                                                cache_write = 0
                                            seen = False
                            except AttributeError:
                                pass
                        if seen:
                            usage = call.usage = usage_of(result)
                            if usage is None:
                                children.tally(cells, end - start, call.attempt, None, None)
                                return
                    if usage is not None:
                        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
                        cache_read, cache_write = usage.cache_read_tokens, usage.cache_write_tokens
                    # _Children.tally, Price.cost and _note written out: this runs on every successful call.
                    price = children.price
                    cost = (
                        None
                        if price is None
                        else (
                            input_tokens * price.input
                            + output_tokens * price.output
                            + cache_read * price.cache_read
                            + cache_write * price.cache_write
                        )
                        / 1_000_000
                    )
                    elapsed = end - start
                    bucket = cells[7 + bisect_left(children.bounds, elapsed)]
                    lock = children.lock
                    lock.acquire()  # half the instructions of `with lock:`
                    try:
                        cells[0]._value += 1.0
                        cells[1]._value += call.attempt
                        bucket._value += 1.0
                        cells[-1]._value += elapsed
                        cells[2]._value += input_tokens
                        cells[3]._value += output_tokens
                        cells[4]._value += cache_read
                        cells[5]._value += cache_write
                        cells[6]._value += 1.0 if cost is None else cost
                    finally:
                        lock.release()
                    if usage is not None:  # else unseen: nothing reads the call's cost
                        if metadata is None:
                            call._metadata = {"cost_usd": cost}
                        else:
                            metadata["cost_usd"] = cost
                        if current_context() is not None:
                            _note(call, usage, cost)
                    return
                (children.ok if outcome is None or not outcome.ok else children.outcome(outcome.kind)).inc()
                children.duration.observe(end - start)
                children.attempts.inc(call.attempt)
                if metadata is not None and metadata.get("cache") in _SERVED:
                    metadata["cost_usd"] = 0.0  # answered from the cache: no tokens spent
                    return
                usage = call.usage
                if usage is None:
                    usage = call.usage = usage_of(result)
                if usage is not None:
                    account(children, call, usage)
            except Exception:
                log.exception("metrics failed to record a call of %s", target.name or target.operation)

        def failed(call: Call, exc: BaseException, start: float, end: float) -> None:
            call.ended = end
            try:
                ended(children_of(call), call, outcome_of(call, exc), end - start)
            except Exception:
                log.exception("metrics failed to record a call of %s", target.name or target.operation)

        return succeeded, failed

    def _ended(self, children: _Children, call: Call, outcome: Outcome, elapsed: float) -> None:
        """Record a finished call (a failure, or a stream's end)."""
        (children.ok if outcome.kind == "success" else children.outcome(outcome.kind)).inc()
        children.duration.observe(elapsed)
        # A refused call's last attempt never reached the provider.
        children.attempts.inc(call.attempt - 1 if outcome.kind == "refused" else call.attempt)
        metadata = call._metadata
        if metadata is not None and metadata.get("cache") in _SERVED:
            metadata["cost_usd"] = 0.0  # a stream replayed from the cache spent no tokens
            return
        usage = call.usage
        if usage is not None:
            self.account(children, call, usage)

    # ------------------------------------------------------------ drivers

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        monotonic = self._clock.monotonic
        succeeded, failed = self._recorders(target)

        def metered(call: Call) -> Any:
            start = call.started = monotonic()
            try:
                result = nxt(call)
            except BaseException as exc:
                failed(call, exc, start, monotonic())
                raise
            succeeded(call, result, start, monotonic())
            return result

        return metered

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        monotonic = self._clock.monotonic
        succeeded, failed = self._recorders(target)

        async def metered(call: Call) -> Any:
            start = call.started = monotonic()
            try:
                result = await nxt(call)
            except BaseException as exc:
                failed(call, exc, start, monotonic())
                raise
            succeeded(call, result, start, monotonic())
            return result

        return metered

    def _stream_watchers(
        self, target: Target
    ) -> tuple[Callable[[Call, Any], None], Callable[[Call, Outcome], None], Callable[[], float]]:
        monotonic = self._clock.monotonic
        children_of = self._binder(target)[0]
        ended = self._ended

        reads_usage = target.reads_usage  # a wrapped SDK stream: its events' usage is read as they pass

        def on_chunk(call: Call, chunk: Any) -> None:
            metadata = call.metadata
            if "first_chunk_s" not in metadata:
                started = call.started if call.started is not None else monotonic()
                metadata["first_chunk_s"] = elapsed = monotonic() - started
                children_of(call).first_chunk.observe(elapsed)
            if reads_usage:
                return
            usage = usage_from_chunk(chunk)
            if usage is not None:
                call.usage = merge_usage(call.usage, usage)

        def on_end(call: Call, outcome: Outcome) -> None:
            end = call.ended = monotonic()
            ended(children_of(call), call, outcome, end - (call.started if call.started is not None else end))

        return on_chunk, on_end, monotonic

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        on_chunk, on_end, monotonic = self._stream_watchers(target)

        def metered(call: Call) -> Any:
            call.started = monotonic()
            call.on_chunk(on_chunk)
            call.on_end(on_end)
            return nxt(call)

        return metered

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        on_chunk, on_end, monotonic = self._stream_watchers(target)

        def metered(call: Call) -> Any:
            call.started = monotonic()
            call.on_chunk(on_chunk)
            call.on_end(on_end)
            return nxt(call)

        return metered
