"""The metric families, made once per registry and namespace, and the bounded label values.

Every pipeline that records into the same registry shares one set of
metric objects (prometheus_client refuses to register a name twice), kept
in a ``WeakKeyDictionary`` keyed by the registry: tests that build many
pipelines, each with its own ``CollectorRegistry``, never collide, and the
default registry gets its set once per process.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from resilient import ConfigurationError

from ._options import MetricsOptions
from ._prices import base_model

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["OTHER", "Bounded", "Metrics", "metrics_for", "shared_cells"]

#: The label value of everything beyond an allow-list or a cap.
OTHER = "other"
#: The label value when there is nothing to report (no model, no route).
NONE = "none"

CALL = ("provider", "operation", "model")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "forced_closed": 4}


class Bounded:
    """Maps raw values to label values, with at most ``cap`` distinct ones (the rest are ``other``).

    With ``allowed``, only those values (or their names without a date
    suffix, for models) are reported by name. Thread races may let a value
    or two past the cap; never more than the threads racing.
    """

    __slots__ = ("_allowed", "_cap", "_seen", "_strip_dates")

    def __init__(self, cap: int, allowed: Iterable[str] = (), strip_dates: bool = False) -> None:
        self._cap = cap
        self._allowed = frozenset(allowed)
        self._seen: dict[str, str] = {}
        self._strip_dates = strip_dates

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return NONE
        try:
            return self._seen[value]
        except KeyError:
            pass
        if self._allowed:
            ok = value in self._allowed or (self._strip_dates and base_model(value) in self._allowed)
            label = value if ok else OTHER
            if len(self._seen) < 4 * len(self._allowed) + 1024:
                self._seen[value] = label
            return label
        if len(self._seen) >= self._cap:
            return OTHER
        self._seen[value] = value
        return value


#: Label sets a family remembers by their raw values; past it, ``labels()`` takes prometheus_client's path.
BOUND_CAP = 4096


class _Bound:
    """``labels()`` as one dict lookup for label values seen before.

    prometheus_client's ``labels()`` converts every value to ``str``, takes
    the family's lock and builds a tuple on every call (~1.5 us); observers
    call it per event. The child it returns is remembered by the raw values
    (bounded; ``remove``/``clear`` forget), so the next call with the same
    values is a dict lookup and gets the very same child.
    """

    _bound: dict[tuple[object, ...], Any]

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Any:
        bound = self.__dict__.get("_bound")
        if bound is None:
            bound = self._bound = {}
        if not labelkwargs:
            try:
                return bound[labelvalues]
            except (KeyError, TypeError):  # new values, or unhashable ones (prometheus_client str()s them)
                pass
        child = super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        if not labelkwargs and len(bound) < BOUND_CAP:
            try:
                bound[labelvalues] = child
            except TypeError:
                pass
        return child

    def remove(self, *labelvalues: object) -> None:
        self.__dict__.pop("_bound", None)
        super().remove(*labelvalues)  # type: ignore[misc]

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        self.__dict__.pop("_bound", None)
        super().remove_by_labels(labels)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_bound", None)
        super().clear()  # type: ignore[misc]


@functools.cache
def _families() -> tuple[Any, Any, Any]:
    """Counter, Gauge and Histogram with :class:`_Bound` labels (prometheus_client is imported here, lazily)."""
    from prometheus_client import Counter, Gauge, Histogram

    class BoundCounter(_Bound, Counter):
        def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
            # A bound child's plain increment goes straight to its value; the rest (a family
            # without its labels, a negative amount, an exemplar) takes prometheus_client's checks.
            if self._labelvalues and exemplar is None and amount >= 0:
                self._value.inc(amount)
            else:
                super().inc(amount, exemplar)

    class BoundGauge(_Bound, Gauge):
        pass

    class BoundHistogram(_Bound, Histogram):
        pass

    return BoundCounter, BoundGauge, BoundHistogram


def shared_cells(lock: threading.Lock, children: Iterable[Any]) -> list[Any] | None:
    """The value cells of ``children`` (counters, histograms), all guarded by ``lock`` from now on; or None.

    prometheus_client keeps an in-process value as a ``MutexValue`` (a float
    and its own lock) and takes that lock once per ``inc``/``observe``: nine
    times for one recorded call. Giving the cells of one label set a single
    lock lets the caller update all of them under one acquisition (``with
    lock: cell._value += n``) while any other ``inc`` takes the same lock, so
    no update is lost and a scrape reads exact values. The cells come in
    order: a counter's value; a histogram's buckets, then its sum. None (use
    the public API) in multiprocess mode (values in mmap files) or with a
    prometheus_client whose internals are not the ones known here.
    """
    from prometheus_client import values

    cells: list[Any] = []
    for child in children:
        if hasattr(child, "_upper_bounds"):
            buckets, total = getattr(child, "_buckets", None), getattr(child, "_sum", None)
            if not isinstance(buckets, list) or len(buckets) != len(child._upper_bounds):
                return None
            cells.extend((*buckets, total))
        else:
            cells.append(getattr(child, "_value", None))
    for cell in cells:
        if type(cell) is not values.MutexValue or type(getattr(cell, "_value", None)) is not float:
            return None
    for cell in cells:
        old = cell._lock
        if old is not lock:
            with old:  # an inc already holding the old lock finishes before the switch
                cell._lock = lock
    return cells


class Metrics:
    """Every metric the plugin records, in one registry under one namespace."""

    def __init__(self, registry: CollectorRegistry, options: MetricsOptions) -> None:
        Counter, Gauge, Histogram = _families()

        ns, reg = options.namespace, registry
        self.registry = registry
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self.schema = (options.tenant_labels, options.buckets, options.http_buckets)
        tenant = ("tenant",) if options.tenant_labels else ()
        self.tenant_label = bool(tenant)

        def counter(name: str, doc: str, labels: Iterable[str]) -> Any:
            return Counter(name, doc, tuple(labels), namespace=ns, registry=reg)

        self.calls = counter(
            "calls", "Provider calls by outcome (success, timeout, rate_limited, ...).", (*CALL, *tenant, "outcome")
        )
        self.duration = Histogram(
            "call_duration_seconds",
            "Provider call latency in seconds, all attempts and waits included.",
            CALL,
            namespace=ns,
            registry=reg,
            buckets=options.buckets,
        )
        self.first_chunk = Histogram(
            "stream_first_chunk_seconds",
            "Time from the start of a streamed call to its first chunk, in seconds.",
            CALL,
            namespace=ns,
            registry=reg,
            buckets=options.buckets,
        )
        self.attempts = counter("call_attempts", "Attempts made by provider calls (one per try).", CALL)
        self.tokens = counter(
            "tokens", "Tokens used, by kind (input, output, cache_read, cache_write).", (*CALL, *tenant, "kind")
        )
        self.cost = counter("cost_usd", "Cost of provider calls in US dollars, from the price table.", (*CALL, *tenant))
        self.cost_unknown = counter(
            "cost_unknown_calls", "Calls with usage but no price for their model (cost not counted).", CALL
        )
        self.retries = counter("retries", "Retries scheduled, by the outcome that caused them.", (*CALL, "outcome"))
        self.retries_exhausted = counter(
            "retries_exhausted",
            "Calls raised after retrying, by why retrying stopped.",
            (*CALL, "reason"),
        )
        self.cache = counter("cache_requests", "Cache lookups by result (hit, miss, stale).", (*CALL, "result"))
        self.quota_rejections = counter(
            "quota_rejections", "Calls refused by a quota, by the limit that was spent.", (*CALL, "limit")
        )
        self.quota_pauses = counter(
            "quota_pauses", "Pauses the provider asked for (429, 529, zero remaining).", ("provider", "model", "source")
        )
        self.quota_remaining = Gauge(
            "quota_remaining",
            "Requests or tokens left in a quota window, as last seen.",
            ("provider", "model", "limit"),
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.breaker_state = Gauge(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open, 3 forced open, 4 forced closed.",
            ("provider", "model"),
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.breaker_transitions = counter(
            "breaker_transitions",
            "Circuit breaker state changes, by state entered.",
            ("provider", "model", "state"),
        )
        self.breaker_rejections = counter(
            "breaker_rejections", "Calls refused because a circuit was open.", ("provider", "model")
        )
        self.store_errors = counter(
            "store_errors", "Shared store failures, by plugin and the fallback used.", ("plugin", "fallback")
        )
        self.events = counter("events", "Events emitted by the policies, by name.", ("event",))
        self.http_requests = counter(
            "http_requests",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by route template and method.",
            ("route", "method"),
            namespace=ns,
            registry=reg,
            buckets=options.http_buckets,
        )
        self.http_in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being served, by route template and method.",
            ("route", "method"),
            namespace=ns,
            registry=reg,
            multiprocess_mode="livesum",
        )

    def lock_for(self, labels: tuple[str, ...]) -> threading.Lock:
        """The one lock of every value cell a call's label set (provider, operation, model) records into."""
        with _lock:
            return self._locks.setdefault(labels, threading.Lock())


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[Any, dict[str, Metrics]] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry, options: MetricsOptions) -> Metrics:
    """The metrics of ``options.namespace`` in ``registry``, made on first use."""
    with _lock:
        per_registry = _by_registry.setdefault(registry, {})
        found = per_registry.get(options.namespace)
        if found is None:
            found = per_registry[options.namespace] = Metrics(registry, options)
        elif found.schema != (options.tenant_labels, options.buckets, options.http_buckets):
            raise ConfigurationError(
                "metrics.namespace",
                options.namespace,
                "its metrics are already registered in this registry with other tenant_labels or buckets; "
                "use another namespace or registry (resilient_metrics.use_registry) for this pipeline",
            )
        return found
