"""Events from the other plugins and the HTTP adapters, turned into metrics.

Events are matched by ``event.name`` and read by attribute, so this module
imports no other plugin and no adapter: a plugin that is not installed
simply sends nothing, and an event this module does not know is counted in
``resilient_events_total`` and otherwise ignored.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from resilient import Event
from resilient.events import Count

from ._metrics import BREAKER_STATES, HTTP_METHODS, NONE, OTHER, Bounded, Metrics, shared_cells

__all__ = ["MetricsObserver"]


#: ``(start, finish)`` of one route and method (the adapters' ``HttpRecorder.bind_http``; not imported:
#: this module imports no adapter).
HttpCounts = tuple[Callable[[], None], Callable[[int, float], None]]


class _RouteMethod(NamedTuple):
    """The fields of an HTTP event :meth:`MetricsObserver._request` reads, for binding without an event."""

    route: str
    method: str


_log = logging.getLogger("resilient.metrics")

#: Cache event names, by the ``result`` label they count as.
CACHE_RESULTS = {
    "cache.hit": "hit",
    "cache.miss": "miss",
    "cache.stale_served": "stale",
    "cache.stale": "stale",
    "cache.bypass": "bypass",
}


#: Most bound children kept per cache; routes (500), methods and statuses are bounded far below it.
_CHILDREN_CAP = 4096


def _adder(child: Any) -> Callable[[float], None]:
    """``child.inc`` without its per-call checks (observable, amount >= 0) where the value allows it.

    Those checks cost two Python calls per update and cannot fail for a child
    we made with labels and update by +1/-1; six updates happen per HTTP
    request. A value without a plain ``inc`` (another prometheus_client, a
    gauge in "mostrecent" multiprocess mode) keeps the public method.
    """
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    if callable(inc) and not getattr(child, "_is_most_recent", False):
        return inc  # type: ignore[no-any-return]
    public: Callable[[float], None] = child.inc
    return public


def _observer_of(child: Any) -> Callable[[float], None]:
    """``child.observe`` for a histogram child, as one bisect and two value updates where the child allows it.

    prometheus_client keeps one (non-cumulative) value per bucket and adds
    them up when scraped; ``observe`` finds the first bound >= the amount by
    a linear scan, after two checks that cannot fail here. Falls back to the
    public method when the child is not laid out that way.
    """
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and len(bounds) == len(buckets) > 0
        and bounds[-1] == math.inf
        and all(callable(getattr(b, "inc", None)) for b in buckets)
        and callable(getattr(total, "inc", None))
    ):
        adds = [b.inc for b in buckets]
        add_total = total.inc  # type: ignore[union-attr]
        last = len(adds) - 1

        def observe(amount: float) -> None:
            add_total(amount)
            adds[min(bisect.bisect_left(bounds, amount), last)](1)

        return observe
    public: Callable[[float], None] = child.observe
    return public


def _on_cells(lock: threading.Lock, cells: list[Any]) -> Count:
    """One increment of each value cell under ``lock`` (which guards them all, see :func:`shared_cells`)."""
    if len(cells) == 1:
        (only,) = cells

        def count_one() -> None:
            lock.acquire()
            try:
                only._value += 1.0
            finally:
                lock.release()

        return count_one
    if len(cells) == 2:  # an event and its cache result
        first, second = cells

        def count_two() -> None:
            lock.acquire()
            try:
                first._value += 1.0
                second._value += 1.0
            finally:
                lock.release()

        return count_two
    if len(cells) == 3:  # a cache miss (its event and result) and its store
        first, second, third = cells

        def count_three() -> None:
            lock.acquire()
            try:
                first._value += 1.0
                second._value += 1.0
                third._value += 1.0
            finally:
                lock.release()

        return count_three
    every = tuple(cells)

    def count_all() -> None:
        lock.acquire()
        try:
            for cell in every:
                cell._value += 1.0
        finally:
            lock.release()

    return count_all


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else NONE


class MetricsObserver:
    """Called with every event the pipeline's policies emit; records what it knows, never raises."""

    def __init__(self, metrics: Metrics, models: Bounded) -> None:
        self.metrics = metrics
        self.models = models
        self._names = Bounded(256)
        self._routes = Bounded(500)
        self._limits = Bounded(200)
        self._in_progress: dict[str, tuple[str, str]] = {}
        # Bound children by raw value: prometheus_client's labels() costs a lock, a tuple and a dict
        # lookup per call, six times per HTTP request. Bounded: cleared when full (children stay in
        # their families, so nothing is lost but the shortcut).
        self._event_children: dict[str, Callable[[float], None]] = {}
        self._request_children: dict[
            tuple[Any, Any], tuple[tuple[str, str], Callable[[float], None], Callable[[float], None]]
        ] = {}
        self._status_children: dict[tuple[tuple[str, str], Any], Callable[[float], None]] = {}
        self._counts: dict[tuple[str, str, str, str | None], Count] = {}
        self._cells_of: dict[Count, list[Any]] = {}  # the counts _counter made on cells, and their cells
        self._http_bound: dict[tuple[str, str], HttpCounts] = {}
        self._count_lock = threading.Lock()
        self._handlers: dict[str, Callable[[Event], None]] = {
            "retry.scheduled": self._retry_scheduled,
            "retry.gave_up": self._retry_gave_up,
            "quota.rejected": self._quota_rejected,
            "quota.paused": self._quota_paused,
            "breaker.state_changed": self._breaker_state,
            "breaker.rejected": self._breaker_rejected,
            "http.request_started": self._http_started,
            "http.request_finished": self._http_finished,
        }
        for name, result in CACHE_RESULTS.items():
            self._handlers[name] = self._cache(result)

    def __call__(self, event: Event) -> None:
        try:
            name = getattr(event, "name", None)
            if not isinstance(name, str):
                return
            count = self._event_children.get(name)
            if count is None:
                if len(self._event_children) >= _CHILDREN_CAP:
                    self._event_children.clear()
                count = self._event_children[name] = _adder(self.metrics.events.labels(self._names(name)))
            count(1)
            handler = self._handlers.get(name)
            if handler is not None:
                handler(event)
            elif name.endswith((".store_unavailable", ".store_error")):
                self._store_error(event)
            if name[:6] == "quota." and getattr(event, "remaining", None) is not None:
                self._quota_remaining(event)
        except Exception:  # a malformed event from someone else's plugin must not become an error log storm
            _log.debug("metrics could not record event %r", event, exc_info=True)

    def bind_count(self, cls: type[Event], provider: str, operation: str, model: str | None) -> Count | None:
        """What ``self(event)`` does for any ``cls`` event about (provider, operation, model), bound once.

        The cache emits two events per miss and this observer only counts
        them (by name, and cache lookups by result): bound here, a miss
        costs two increments instead of an event object and a dispatch.
        ``None`` for events whose other fields matter (retries by outcome,
        quota limits and remaining, breaker states, HTTP requests).
        """
        name = getattr(cls, "name", None)
        if not isinstance(name, str):
            return None
        key = (name, provider, operation, model)
        found = self._counts.get(key)
        if found is not None:
            return found
        result = CACHE_RESULTS.get(name)
        if result is None and (
            name in self._handlers or name[:6] == "quota." or name.endswith((".store_unavailable", ".store_error"))
        ):
            return None
        children = [self.metrics.events.labels(self._names(name))]
        if result is not None:
            labels = (_text(provider), _text(operation), self.models(model))
            children.append(self.metrics.cache.labels(*labels, result))
        count = self._counter(children)

        if len(self._counts) >= _CHILDREN_CAP:
            self._counts.clear()
        self._counts[key] = count
        return count

    def _counter(self, children: list[Any]) -> Count:
        """One increment of each child, as one call taking one lock where the values allow it.

        Every value cell a bound count touches is guarded by the observer's
        one lock (:func:`shared_cells`); any other writer takes that same lock
        through ``inc``, so nothing is lost. Otherwise, the public increments.
        """
        cells = shared_cells(self._count_lock, children)
        if cells is None:
            adders = [_adder(child) for child in children]

            def count_each() -> None:
                for add in adders:
                    add(1)

            return count_each
        count = _on_cells(self._count_lock, cells)
        if len(self._cells_of) >= _CHILDREN_CAP:
            self._cells_of.clear()
        self._cells_of[count] = cells
        return count

    def join_counts(self, first: Count, second: Count) -> Count | None:
        """``first()`` then ``second()`` as one call taking the lock once, for two counts :meth:`bind_count` made.

        The cache counts a miss and, when the provider's answer is stored, the
        store: joined, a stored miss costs one update. ``None`` when either
        count is not one of this observer's on shared cells (then call both).
        """
        one, two = self._cells_of.get(first), self._cells_of.get(second)
        if one is None or two is None:
            return None
        return _on_cells(self._count_lock, one + two)

    def _call(self, event: Event) -> tuple[str, str, str]:
        return _text(event.provider), _text(event.operation), self.models(event.model)

    # ------------------------------------------------------------ policies

    def _retry_scheduled(self, event: Event) -> None:
        self.metrics.retries.labels(*self._call(event), _text(getattr(event, "outcome", None))).inc()

    def _retry_gave_up(self, event: Event) -> None:
        self.metrics.retries_exhausted.labels(*self._call(event), _text(getattr(event, "reason", None))).inc()

    def _cache(self, result: str) -> Callable[[Event], None]:
        def record(event: Event) -> None:
            self.metrics.cache.labels(*self._call(event), result).inc()

        return record

    def _quota_rejected(self, event: Event) -> None:
        limit = self._limits(_text(getattr(event, "limit", None)))
        self.metrics.quota_rejections.labels(*self._call(event), limit).inc()

    def _quota_paused(self, event: Event) -> None:
        source = _text(getattr(event, "source", None))
        self.metrics.quota_pauses.labels(_text(event.provider), self.models(event.model), source).inc()

    def _quota_remaining(self, event: Event) -> None:
        remaining = getattr(event, "remaining", None)
        if isinstance(remaining, (int, float)) and not isinstance(remaining, bool):
            limit = self._limits(_text(getattr(event, "limit", None)))
            self.metrics.quota_remaining.labels(_text(event.provider), self.models(event.model), limit).set(remaining)

    def _store_error(self, event: Event) -> None:
        plugin = event.name.split(".", 1)[0]
        self.metrics.store_errors.labels(self._names(plugin), _text(getattr(event, "fallback", None))).inc()

    def _breaker_state(self, event: Event) -> None:
        state = getattr(event, "state", None)
        provider, model = _text(event.provider), self.models(event.model)
        if state in BREAKER_STATES:
            self.metrics.breaker_state.labels(provider, model).set(BREAKER_STATES[state])
        self.metrics.breaker_transitions.labels(provider, model, state if state in BREAKER_STATES else OTHER).inc()

    def _breaker_rejected(self, event: Event) -> None:
        self.metrics.breaker_rejections.labels(_text(event.provider), self.models(event.model)).inc()

    # ------------------------------------------------------------ HTTP adapters

    def _http_labels(self, route: Any, method: Any) -> tuple[str, str]:
        method = method.upper() if isinstance(method, str) else ""
        # Only a route template is a label; an adapter that could not match one says so with None.
        route_label = self._routes(route) if isinstance(route, str) and route else "unmatched"
        return route_label, method if method in HTTP_METHODS else OTHER

    def _request(self, event: Event) -> tuple[tuple[str, str], Callable[[float], None], Callable[[float], None]]:
        """The labels, in-progress gauge adder and duration histogram child of a request's route and method."""
        route, method = getattr(event, "route", None), getattr(event, "method", None)
        try:
            return self._request_children[route, method]
        except (KeyError, TypeError):  # TypeError: an unhashable value from someone else's event
            pass
        labels = self._http_labels(route, method)
        metrics = self.metrics
        found = (
            labels,
            _adder(metrics.http_in_progress.labels(*labels)),
            _observer_of(metrics.http_duration.labels(*labels)),
        )
        if isinstance(route, str) and isinstance(method, str):
            if len(self._request_children) >= _CHILDREN_CAP:
                self._request_children.clear()
            self._request_children[route, method] = found
        return found

    def bind_http(self, route: str, method: str) -> HttpCounts | None:
        """What ``self`` does with the HTTP events of ``route`` and ``method``, bound once.

        ``(start, finish)`` as :class:`resilient._http.HttpRecorder` asks: the
        events' count by name, the in-progress gauge up and down, the request
        count by status and the duration, on children found once per route and
        method, so a request costs no event objects and no dispatch. A request
        begun with ``start`` finishes on the same labels (the events need the
        request id to know that). In process, every value a request updates
        is guarded by the observer's one lock (:func:`shared_cells`), so a
        start and a finish take it once each; in multiprocess mode, the
        public API.
        """
        key = (route, method)
        found = self._http_bound.get(key)
        if found is not None:
            return found
        labels, in_progress, duration_child = self._request(_RouteMethod(route, method))  # type: ignore[arg-type]
        metrics = self.metrics
        lock = self._count_lock
        events = metrics.events
        children = [
            events.labels(self._names("http.request_started")),
            events.labels(self._names("http.request_finished")),
            metrics.http_in_progress.labels(*labels),
            metrics.http_duration.labels(*labels),
        ]
        # One lock for every value a request updates (see shared_cells): seven updates, one acquisition.
        cells = shared_cells(lock, children)
        if cells is None:  # multiprocess mode, or values laid out otherwise: the public API
            start, finish = self._bind_http_public(labels, in_progress, duration_child)
        else:
            started_cell, finished_cell, in_progress_cell, *duration_cells = cells
            buckets, total = duration_cells[:-1], duration_cells[-1]
            bounds = children[3]._upper_bounds
            last = len(buckets) - 1
            by_status: dict[int, Any] = {}
            http_requests = metrics.http_requests
            bisect_left = bisect.bisect_left

            def start() -> None:
                with lock:
                    started_cell._value += 1.0
                    in_progress_cell._value += 1.0

            def finish(status: int, duration: float) -> None:
                try:
                    requests = by_status.get(status)
                    if requests is None:
                        label = str(status) if 100 <= status <= 599 else "unknown"
                        found = shared_cells(lock, [http_requests.labels(*labels, label)])
                        if found is None:  # cannot be: its family keeps values as the ones above
                            raise TypeError("the requests counter's value is not a plain cell")
                        if len(by_status) >= 64:  # an app answering ever new codes: stay bounded
                            by_status.clear()
                        requests = by_status.setdefault(status, found[0])
                    timed = duration >= 0
                except Exception:  # as the public path: the request still ends, only its status goes unrecorded
                    _log.debug("metrics could not record a request end", exc_info=True)
                    with lock:
                        finished_cell._value += 1.0
                        in_progress_cell._value -= 1.0
                    return
                with lock:
                    finished_cell._value += 1.0
                    in_progress_cell._value -= 1.0
                    requests._value += 1.0
                    if timed:
                        total._value += duration
                        buckets[min(bisect_left(bounds, duration), last)]._value += 1.0

        if len(self._http_bound) >= _CHILDREN_CAP:
            self._http_bound.clear()
        found = self._http_bound[key] = (start, finish)
        return found

    def _bind_http_public(
        self, labels: tuple[str, str], in_progress: Callable[[float], None], duration_child: Callable[[float], None]
    ) -> HttpCounts:
        """:meth:`bind_http` through prometheus_client's public API (each update takes its value's lock)."""
        started, finished = self._event_count("http.request_started"), self._event_count("http.request_finished")
        by_status: dict[int, Callable[[float], None]] = {}
        http_requests = self.metrics.http_requests

        def start() -> None:
            try:
                started(1)
                in_progress(1)
            except Exception:  # as __call__: a metric never fails a request
                _log.debug("metrics could not record a request start", exc_info=True)

        def finish(status: int, duration: float) -> None:
            try:
                finished(1)
                in_progress(-1)
                requests = by_status.get(status)
                if requests is None:
                    label = str(status) if 100 <= status <= 599 else "unknown"
                    if len(by_status) >= 64:  # an app answering ever new codes: stay bounded
                        by_status.clear()
                    requests = by_status.setdefault(status, _adder(http_requests.labels(*labels, label)))
                requests(1)
                if duration >= 0:
                    duration_child(duration)
            except Exception:
                _log.debug("metrics could not record a request end", exc_info=True)

        return start, finish

    def _event_count(self, name: str) -> Callable[[float], None]:
        count = self._event_children.get(name)
        if count is None:
            if len(self._event_children) >= _CHILDREN_CAP:
                self._event_children.clear()
            count = self._event_children[name] = _adder(self.metrics.events.labels(self._names(name)))
        return count

    def _http_started(self, event: Event) -> None:
        labels, in_progress, _ = self._request(event)
        in_progress(1)
        request_id = getattr(event, "request_id", None)
        if isinstance(request_id, str) and len(self._in_progress) < 100_000:
            self._in_progress[request_id] = labels

    def _http_finished(self, event: Event) -> None:
        labels, in_progress, duration_child = self._request(event)
        request_id = getattr(event, "request_id", None)
        started = self._in_progress.pop(request_id, None) if isinstance(request_id, str) else None
        # Decrement what the start incremented, even if the route was resolved in between.
        if started is None or started == labels:
            in_progress(-1)
        else:
            self.metrics.http_in_progress.labels(*started).dec()
        status = getattr(event, "status", None)
        key = (labels, status)
        try:
            requests = self._status_children[key]
        except (KeyError, TypeError):
            status_label = str(status) if isinstance(status, int) and 100 <= status <= 599 else "unknown"
            requests = _adder(self.metrics.http_requests.labels(*labels, status_label))
            if isinstance(status, int):
                if len(self._status_children) >= _CHILDREN_CAP:
                    self._status_children.clear()
                self._status_children[key] = requests
        requests(1)
        duration = getattr(event, "duration", None)
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0:
            duration_child(duration)
