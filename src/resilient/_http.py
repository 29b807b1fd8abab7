"""What the web adapters share: options, request ids, tenant keys, route limits, problems, events.

Pure code, no server I/O: :mod:`resilient.asgi`, :mod:`resilient.wsgi` and
:mod:`resilient.flask` validate their options through :class:`HttpCore`
once, and each adds only the way its protocol reads a request and writes a
response. Rate limits are checked here with a sync or an async ``limits``
strategy; both drivers run the same decision (:meth:`HttpCore.denied`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import math
import os
import re
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypedDict, TypeVar

import limits
import orjson

from ._clocked import strategies_on
from .call import Outcome
from .context import RequestContext
from .errors import ConfigurationError, ProviderUnavailable, QuotaExceeded, ResilientError
from .events import Emitter, Event
from .prometheus import multiprocess_dir
from .storage import STORE_ERRORS, LoopBoundStorage, PerLoop, close_sync, is_memory, key_part, sync_storage

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "UNMATCHED",
    "AdapterOptions",
    "HttpCore",
    "HttpCounts",
    "HttpRecorder",
    "HttpRequestFinished",
    "HttpRequestStarted",
    "RequestInfo",
    "ResponseCache",
    "TenantKey",
    "tenant_from_api_key_hash",
    "tenant_from_client",
    "tenant_from_header",
    "unavailable",
]

_log = logging.getLogger("resilient.http")

#: The route label of a request no route matched: a raw path never becomes a label or a key.
UNMATCHED = "<unmatched>"
PROBLEM_CONTENT_TYPE = "application/problem+json"
JSON_CONTENT_TYPE = "application/json"

# A request id we echo must be safe in a header and in a log line; anything else is replaced.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@+=\-]{1,128}")
# Tenants from headers become store keys and may reach logs: bounded, printable ASCII.
_TENANT_MAX = 128
_TENANT_RE = re.compile(r"[\x21-\x7e]{1,128}")

Strategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequestStarted(Event):
    """A request entered the middleware (not the health, ready and metrics endpoints).

    ``route`` is the route template (``/v1/items/{id}``) or ``"<unmatched>"``;
    the matching :class:`HttpRequestFinished` carries the same route, method
    and ``request_id`` (to pair them; never a metric label).
    """

    name: ClassVar[str] = "http.request_started"
    route: str
    method: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequestFinished(Event):
    """A request left the middleware: emitted exactly once per started request.

    ``status`` is the status sent (499 when the client left before any
    response, 500 when the app failed before starting one); ``duration`` is
    in seconds on the pipeline's clock.
    """

    name: ClassVar[str] = "http.request_finished"
    route: str
    method: str
    status: int
    duration: float
    request_id: str | None = None


#: What :meth:`HttpRecorder.bind_http` returns: ``start()`` and ``finish(status, duration)``.
HttpCounts = tuple[Callable[[], None], Callable[[int, float], None]]


class HttpRecorder(Protocol):
    """An observer that can bind, per route and method, the whole effect of the two HTTP events.

    ``bind_http(route, method)`` returns ``(start, finish)``: ``start()`` has
    exactly the effect of ``observer(HttpRequestStarted(route=route,
    method=method, tenant=t, request_id=r))`` for any tenant and request id,
    and ``finish(status, duration)`` that of the matching
    ``HttpRequestFinished`` for a request begun with that ``start``; or
    ``None`` when the observer needs the events themselves. Neither callable
    may raise. When every observer of the pipeline binds a route and method,
    the adapters call the pair instead of building and emitting two events
    per request (see :meth:`HttpCore.http_counts`); any other observer (a
    user's log, an audit) gets the events as before.
    """

    def __call__(self, event: Event, /) -> None: ...

    def bind_http(self, route: str, method: str, /) -> HttpCounts | None: ...


# --------------------------------------------------------------------------- request view and tenant keys


class RequestInfo(Protocol):
    """What a tenant key function may read of a request, the same under ASGI and WSGI."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def client(self) -> str | None:
        """The peer address (host only), or ``None`` when the server does not say."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or ``None``."""


#: A tenant key function: the tenant of a request, or ``None`` for no tenant.
TenantKey = Callable[[RequestInfo], "str | None"]


def clean_tenant(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    return value if _TENANT_RE.fullmatch(value) else None


_warned_keys: set[str] = set()


def checked_key(value: object, fn: object) -> str | None:
    """A key function's answer, if it is safe as a store key, a log field and a context value.

    At most 128 printable characters (no newline or other control character
    that could forge a log line); anything else counts as no tenant, with one
    warning per function naming it, never the value.
    """
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= _TENANT_MAX and value.isprintable():
        return value
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if name not in _warned_keys and len(_warned_keys) < 100:
        _warned_keys.add(name)
        _log.warning(
            "key function %s returned a value that is not a string of 1 to %d printable characters; "
            "such requests get no tenant",
            name,
            _TENANT_MAX,
        )
    return None


def tenant_from_header(name: str) -> TenantKey:
    """The tenant is the value of header ``name`` (printable ASCII, at most 128 characters, else none)."""
    header = name.lower()

    def tenant(request: RequestInfo) -> str | None:
        return clean_tenant(request.header(header))

    tenant.__qualname__ = f"tenant_from_header({header!r})"
    return tenant


def tenant_from_api_key_hash(name: str = "authorization") -> TenantKey:
    """The tenant is a SHA-256 digest (16 hex digits) of the API key in header ``name``.

    A ``Bearer`` prefix is dropped first. The key itself is never kept, so it
    cannot reach a store key, a metric label or a log.
    """
    header = name.lower()

    def tenant(request: RequestInfo) -> str | None:
        value = request.header(header)
        if not value:
            return None
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() == "bearer":
            value = rest
        value = value.strip()
        if not value:
            return None
        return "key-" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    tenant.__qualname__ = f"tenant_from_api_key_hash({header!r})"
    return tenant


def tenant_from_client() -> TenantKey:
    """The tenant is the client's address (behind a proxy, configure the server to set it).

    The address is checked like a header's value: a proxy-headers middleware
    may have copied it from ``X-Forwarded-For``, which the client writes.
    """

    def tenant(request: RequestInfo) -> str | None:
        return clean_tenant(request.client)

    tenant.__qualname__ = "tenant_from_client()"
    return tenant


def tenant_key(spec: str | TenantKey | None, key: str = "tenant") -> TenantKey | None:
    """A tenant key function from ``"header:<name>"``, ``"api_key_hash:<name>"``, ``"client"`` or a callable."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        if kind == "client" and not arg:
            return tenant_from_client()
        if kind == "header" and arg:
            return tenant_from_header(arg)
        if kind == "api_key_hash":
            return tenant_from_api_key_hash(arg or "authorization")
    raise ConfigurationError(
        key, spec, "must be 'header:<name>', 'api_key_hash:<name>', 'client', a function of the request, or None"
    )


# Request ids (see new_request_id): a random prefix per process (16 hex digits), a block number (14)
# and the id's place in its block (2), handed out by a ``map`` of string concatenations over a block.
_ID_PLACES = tuple(f"{i:02x}" for i in range(256))
_id_prefix = ""
_id_blocks: Iterator[int] = iter(())
_ids: Iterator[str] = iter(())


def _reseed_request_ids() -> None:
    global _id_prefix, _id_blocks, _ids
    _id_prefix = os.urandom(8).hex()
    # Counting from above 2**52, hex() always gives 14 digits (2**56 is 2**55 blocks away),
    # and ``hex()[2:]`` costs half of a zero-padded format.
    _id_blocks = itertools.count((1 << 52) + int.from_bytes(os.urandom(4), "big"))
    _ids = iter(())  # a forked child must not go on with its parent's block


_reseed_request_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_request_ids)


def _next_block() -> Iterator[str]:
    global _ids
    # Threads racing here each take their own block (next() on a count is atomic); a block is never shared.
    block = _ids = map((_id_prefix + hex(next(_id_blocks))[2:]).__add__, _ID_PLACES)
    return block


def new_request_id() -> str:
    """32 hex digits: a random prefix per process and a counter.

    Unique like a UUID4 across processes (the prefix is drawn again in a forked
    child) at a fraction of the cost: ``uuid4`` reads ``os.urandom`` for every
    request. A request id correlates logs; it is not a secret. Ids come 256
    to a block, each one string concatenation done by ``map`` in C (the
    int-to-hex conversion is paid once per block).
    """
    try:
        return next(_ids)
    except StopIteration:
        return next(_next_block())


def request_id_of(value: str | None) -> str:
    """The incoming request id when it is safe to echo, else a new one."""
    if value and _REQUEST_ID_RE.fullmatch(value):
        return value
    return new_request_id()


#: :data:`_REQUEST_ID_RE` for the raw bytes of an ASGI header (the same ASCII characters).
_REQUEST_ID_BYTES_RE = re.compile(rb"[A-Za-z0-9._:@+=\-]{1,128}")
safe_request_id = _REQUEST_ID_BYTES_RE.fullmatch


class TenantCache:
    """:func:`clean_tenant` of a raw header value (ASGI bytes, WSGI text), remembered: tenants repeat, requests do not.

    At most ``size`` values; cleared when full, so a client sending a new
    value per request costs a clear per ``size`` requests, never memory.
    """

    __slots__ = ("_found", "_size", "known")

    def __init__(self, size: int = 4096) -> None:
        self._found: dict[bytes | str, str | None] = {}
        self._size = size
        #: ``known(raw, default)``: the remembered answer for ``raw``, else ``default`` (the dict's own
        #: ``get``, for an adapter to try before calling the cache; the dict is cleared, never replaced).
        self.known = self._found.get

    def __call__(self, raw: bytes | str) -> str | None:
        try:
            return self._found[raw]
        except KeyError:
            pass
        tenant = clean_tenant(raw.decode("latin-1") if isinstance(raw, bytes) else raw)
        if len(self._found) >= self._size:
            self._found.clear()
        self._found[raw] = tenant
        return tenant


_T = TypeVar("_T")


def positional(cls: type[_T], names: tuple[str, ...]) -> Callable[..., _T]:
    """A function of ``names`` (positional) that returns ``cls(**dict(zip(names, args)))``, without ``__init__``.

    The adapters build two events and a request context per request. A call
    to a dataclass's keyword ``__init__`` costs a frame and the keyword
    matching; this function makes the instance with ``object.__new__`` and
    sets every field: the given ones from the arguments, the others from
    their default (``{}`` / ``[]`` for a ``dict`` / ``list`` factory), through
    the slot's descriptor when the class is frozen (its ``__setattr__``
    raises). About a third cheaper for an event, half for a context. A class
    this does not fit (not a slotted dataclass, a ``__post_init__``, another
    factory, a required field not in ``names``) gets the plain keyword call.
    """
    fields = getattr(cls, "__dataclass_fields__", None)
    params = getattr(cls, "__dataclass_params__", None)

    def by_keyword(*args: Any) -> _T:
        return cls(**dict(zip(names, args, strict=True)))

    if fields is None or params is None or hasattr(cls, "__post_init__") or "__slots__" not in cls.__dict__:
        return by_keyword
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["    self = _new(_cls)"]
    seen = set()
    for i, (name, f) in enumerate(fields.items()):
        if getattr(getattr(f, "_field_type", None), "name", None) == "_FIELD_CLASSVAR":
            continue
        if not f.init or type(getattr(cls, name, None)) is not types.MemberDescriptorType:
            return by_keyword
        if name in names:
            value = name
            seen.add(name)
        elif f.default is not dataclasses.MISSING:
            value = namespace[f"_default{i}"] = f.default
            value = f"_default{i}"
        elif f.default_factory is dict or f.default_factory is list:
            value = "{}" if f.default_factory is dict else "[]"
        else:
            return by_keyword
        if params.frozen:
            namespace[f"_set{i}"] = getattr(cls, name).__set__
            lines.append(f"    _set{i}(self, {value})")
        else:
            lines.append(f"    self.{name} = {value}")
    if seen != set(names):
        return by_keyword
    # Only field names (identifiers) and names made here go into the source.
    exec(f"def build({', '.join(names)}):\n" + "\n".join(lines) + "\n    return self", namespace)
    build: Callable[..., _T] = namespace["build"]
    build.__qualname__ = build.__name__ = f"new_{cls.__name__}"
    return build


#: ``HttpRequestStarted(route=, method=, tenant=, request_id=)``, positional and cheaper (see :func:`positional`).
new_started = positional(HttpRequestStarted, ("route", "method", "tenant", "request_id"))
#: ``HttpRequestFinished(route=, method=, status=, duration=, tenant=, request_id=)``, positional.
new_finished = positional(HttpRequestFinished, ("route", "method", "status", "duration", "tenant", "request_id"))
#: ``RequestContext(request_id=, tenant=, route=)``, positional.
new_context = positional(RequestContext, ("request_id", "tenant", "route"))


# --------------------------------------------------------------------------- problems


def problem_body(error: ResilientError, request_id: str | None) -> bytes:
    body = error.to_problem()
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)


def problem_headers(error: ResilientError) -> list[tuple[str, str]]:
    return [("content-type", PROBLEM_CONTENT_TYPE), *error.headers().items()]


class BodyTooLarge(ResilientError):
    """The request body is larger than ``max_body_size``."""

    status = 413
    title = "Request body too large"
    slug = "body-too-large"


class BadRequest(ResilientError):
    """The request is malformed in a way the adapter sees (a bad ``Content-Length``)."""

    status = 400
    title = "Bad request"
    slug = "bad-request"


class InternalError(ResilientError):
    """The app failed; rendered only with ``problem_for_unhandled=True``, with no detail from the exception."""

    status = 500
    title = "Internal server error"
    slug = "internal-error"


def body_too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body exceeds {limit} bytes.")


def internal_error() -> InternalError:
    # No detail from the exception: it could carry a prompt, a key or a store URL.
    return InternalError("The server failed to handle the request.")


# What the client is told when a provider failure outlived the retries, by outcome kind. Our own
# sentences: the exception's text can carry the prompt, the API key or the provider's request body.
_UNAVAILABLE_DETAILS = {
    "timeout": "The provider did not answer in time.",
    "connection": "The provider could not be reached.",
    "overloaded": "The provider is overloaded.",
    "rate_limited": "The provider is rate limiting this service.",
    "server_error": "The provider failed to answer.",
}
_UNAVAILABLE_OTHER = "The provider could not answer right now."


def unavailable(error: BaseException, classify: Callable[[BaseException], Outcome]) -> ProviderUnavailable | None:
    """The 503 an unhandled provider failure becomes, or ``None`` when it is not the provider's doing.

    A timeout, a connection error, a 5xx or 529, a 429 from the provider, or
    anything the provider said to retry (``x-should-retry``, 408, 409) means
    the provider is unavailable: trying later can succeed, and nothing in the
    client's request is wrong. A 400/401/403/404/422 from the provider is a
    bug in this service (a bad request, a wrong key) and stays an unhandled
    error (500). The detail is ours and ``retry_after`` is the provider's.
    """
    try:
        outcome = classify(error)
    except Exception:  # a broken plugin classifier must not turn an error page into a crash
        _log.exception("classifying %s failed", type(error).__name__)
        return None
    detail = _UNAVAILABLE_DETAILS.get(outcome.kind)
    if detail is None:
        if not outcome.retryable or outcome.kind in ("refused", "cancelled"):
            return None
        detail = _UNAVAILABLE_OTHER
    return ProviderUnavailable(detail, retry_after=outcome.retry_after)


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


# --------------------------------------------------------------------------- rate limits


class RouteLimits:
    """Rate limits by route template and client, parsed once.

    ``table`` maps a route template (``"/v1/chat"``) to a limit string in the
    ``limits`` notation (``"60/minute;1000/hour"``); ``"*"`` is the default for
    every other route (counted per route). Each request is counted against
    each limit of its route under the key ``http / route / client``.
    """

    def __init__(self, table: Mapping[str, str] | None, key: str = "rate_limits") -> None:
        self.by_route: dict[str, tuple[limits.RateLimitItem, ...]] = {}
        self.default: tuple[limits.RateLimitItem, ...] = ()
        if table is None:
            return
        if not isinstance(table, Mapping):
            raise ConfigurationError(key, table, "must be a mapping of route template (or '*') to a limit string")
        for route, text in table.items():
            if not isinstance(route, str) or not (route == "*" or route.startswith("/")):
                raise ConfigurationError(
                    f"{key}[{route!r}]", route, "must be a route template starting with '/' or '*'"
                )
            try:
                items = tuple(limits.parse_many(text)) if isinstance(text, str) else ()
            except ValueError:
                items = ()
            if not items:
                raise ConfigurationError(
                    f"{key}[{route!r}]", text, "must be a limit string such as '60/minute' or '10/second;500/hour'"
                )
            if route == "*":
                self.default = items
            else:
                self.by_route[route] = items

    def __bool__(self) -> bool:
        return bool(self.by_route or self.default)

    def for_route(self, route: str) -> tuple[limits.RateLimitItem, ...]:
        return self.by_route.get(route, self.default)


#: A spent limit: the limit, the hits left (``<= 0``) and its window's reset time (epoch seconds).
Refused = tuple[limits.RateLimitItem, int, float]
#: Counts one request of a client (``None``: no client known) against a route's limits; ``None`` when it is allowed.
Hits = Callable[["str | None"], "Refused | None"]


class MemoryWindows:
    """Fixed windows counted in this process, for ``memory://`` and ``fixed-window``.

    The semantics of ``limits``' memory storage (a window opens at its first
    hit and lasts the limit's period; hits past the limit still count) on the
    pipeline's clock, without its cost: ``limits`` starts a timer thread
    every 10 ms of traffic to expire keys, and builds a key string per hit.
    A window's hits are counted by an ``itertools.count`` (``next()`` is
    atomic), so only opening a window takes the lock. At most ``max_keys``
    windows are kept; when full, expired ones go first, then the oldest.
    """

    def __init__(self, time: Callable[[], float], max_keys: int = 100_000) -> None:
        self._time = time
        self._max_keys = max_keys
        self._windows: dict[tuple[Any, ...], tuple[float, Iterator[int]]] = {}  # key -> (expiry, hits)
        self._lock = threading.Lock()

    def counter(self, item: limits.RateLimitItem, route: str, index: int) -> Hits:
        """The hits of ``item``, the ``index``-th limit of ``route``, per client: made once per route.

        ``hit(client)`` counts one hit in the window of ``(route, client,
        index)``: ``None`` when it is within the limit, else ``(item,
        remaining, reset time)``, remaining below zero once hits go past the
        limit (they still count). One frame per hit, what the route's
        limit needs bound in it.
        """
        amount = item.amount
        time = self._time
        windows = self._windows
        open_window = self._open

        def hit(client: str | None) -> Refused | None:
            key = (route, client, index)
            now = time()
            window = windows.get(key)
            if window is None or window[0] <= now:
                window = open_window(item, key, now)
            count = next(window[1])
            return None if count <= amount else (item, amount - count, window[0])

        return hit

    def _open(self, item: limits.RateLimitItem, key: tuple[Any, ...], now: float) -> tuple[float, Iterator[int]]:
        windows = self._windows
        with self._lock:
            window = windows.get(key)  # another thread may have opened it meanwhile
            if window is None or window[0] <= now:
                if window is None and len(windows) >= self._max_keys:
                    self._make_room(now)
                window = windows[key] = (now + item.get_expiry(), itertools.count(1))
            return window

    def _make_room(self, now: float) -> None:
        windows = self._windows
        for key in [k for k, w in windows.items() if w[0] <= now]:
            del windows[key]
        if len(windows) >= self._max_keys:
            # Every window is live (a flood of distinct clients): forget the oldest tenth.
            for key in list(itertools.islice(windows, max(1, self._max_keys // 10))):
                del windows[key]


# --------------------------------------------------------------------------- GET response cache

#: What an adapter keeps per response: its own form of status, headers and body.
CachedResponse = Any

# Headers a cached copy must not replay: they belong to one exchange.
_UNCACHED_HEADERS = frozenset({"set-cookie", "date", "connection", "transfer-encoding", "keep-alive"})


class ResponseCache:
    """Whole GET responses kept for ``ttl`` seconds in this process, at most ``max_entries`` of them.

    The key is the method, path, query, tenant and ``Accept``. A response is
    kept only if it is a 200 with a body of at most ``max_body`` bytes, no
    ``Set-Cookie``, no ``Cache-Control: no-store`` / ``private``, and is not an
    event stream. A request with ``Authorization`` or a ``Cookie`` and no tenant
    is never served from or stored in the cache (it could be another user's),
    nor one that sends ``Cache-Control: no-cache`` or ``no-store``.
    """

    def __init__(self, ttl: float, max_entries: int, max_body: int, monotonic: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_body = max_body
        self._monotonic = monotonic
        self._entries: dict[tuple[str, ...], tuple[float, CachedResponse]] = {}

    def key(self, request: RequestInfo, query: str, tenant: str | None) -> tuple[str, ...] | None:
        """The cache key of a GET request, or ``None`` when it must bypass the cache."""
        if tenant is None and (request.header("authorization") or request.header("cookie")):
            return None
        control = request.header("cache-control")
        if control and ("no-cache" in control or "no-store" in control):
            return None
        return (request.path, query, tenant or "", request.header("accept") or "")

    def get(self, key: tuple[str, ...]) -> CachedResponse | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, response = found
        if self._monotonic() >= expires:
            self._entries.pop(key, None)
            return None
        return response

    def storable(self, status: int, headers: list[tuple[str, str]]) -> bool:
        if status != 200:
            return False
        for name, value in headers:
            lower = name.lower()
            if lower == "set-cookie":
                return False
            if lower == "cache-control" and ("no-store" in value or "private" in value):
                return False
            if lower == "content-type" and value.startswith("text/event-stream"):
                return False
        return True

    @staticmethod
    def replayable(name: str) -> bool:
        """Whether a response header is kept in the cached copy."""
        return name.lower() not in _UNCACHED_HEADERS

    def put(self, key: tuple[str, ...], response: CachedResponse) -> None:
        if len(self._entries) >= self.max_entries and key not in self._entries:
            # Drop the oldest entry (dicts keep insertion order).
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[key] = (self._monotonic() + self.ttl, response)


# --------------------------------------------------------------------------- the shared core


class AdapterOptions(TypedDict, total=False):
    """The options every adapter takes besides ``pipeline`` (for ``**options`` in typed code)."""

    request_id_header: str | None
    tenant: str | TenantKey | None
    rate_limits: Mapping[str, str] | None
    rate_limit_strategy: Strategy
    rate_limit_store: str | None
    rate_limit_client: str | TenantKey | None
    metrics_path: str | None
    health_path: str | None
    ready_path: str | None
    metrics_registry: Any
    max_body_size: int | None
    problem_for_unhandled: bool
    cache_get: float | None
    cache_max_entries: int
    cache_max_body: int
    provider_errors: bool
    mask_logs: bool


#: Most (route, method) pairs whose bound HTTP counts an adapter keeps.
_BOUND_ROUTES = 4096

#: Routes are few and clients repeat: quoting each once is worth a small bounded cache.
_key_part = functools.lru_cache(maxsize=4096)(key_part)


def _path_option(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigurationError(key, value, "must be a path starting with '/', or None to disable it")
    return value


def _header_name(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise ConfigurationError(key, value, "must be an HTTP header name (letters, digits, '-'), or None")
    return value.lower()


class HttpCore:
    """The validated options and the pure logic of a web adapter, built once.

    See :class:`resilient.asgi.ResilientMiddleware` for what each option does;
    the WSGI middleware and the Flask extension take the same ones.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        request_id_header: str | None = "x-request-id",
        tenant: str | TenantKey | None = None,
        rate_limits: Mapping[str, str] | None = None,
        rate_limit_strategy: Strategy = "fixed-window",
        rate_limit_store: str | None = None,
        rate_limit_client: str | TenantKey | None = None,
        metrics_path: str | None = "/metrics",
        health_path: str | None = "/health",
        ready_path: str | None = "/ready",
        metrics_registry: Any = None,
        max_body_size: int | None = None,
        problem_for_unhandled: bool = False,
        cache_get: float | None = None,
        cache_max_entries: int = 1024,
        cache_max_body: int = 1_048_576,
        provider_errors: bool = True,
        mask_logs: bool = True,
    ) -> None:
        runtime = getattr(pipeline, "runtime", None)
        if runtime is None:
            raise ConfigurationError("pipeline", pipeline, "must be a resilient.Pipeline")
        self.pipeline = pipeline
        self.emitter: Emitter = runtime.events
        self.clock = runtime.clock
        self.request_id_header = _header_name("request_id_header", request_id_header)
        self.tenant = tenant_key(tenant)
        #: The header a ``"header:<name>"`` tenant comes from, so an adapter can read it with the request id.
        self.tenant_header: str | None = None
        if isinstance(tenant, str) and tenant.startswith("header:"):
            self.tenant_header = tenant.partition(":")[2].lower()
        self.limits = RouteLimits(rate_limits)
        client = tenant_key(rate_limit_client, "rate_limit_client") if rate_limit_client is not None else None
        # Clients are told apart by the tenant when there is one, else by address.
        self.limit_client: TenantKey = client or self.tenant or tenant_from_client()
        #: Whether the rate limit client is the tenant (a request with a tenant needs nothing else).
        self.limits_by_tenant = self.limit_client is self.tenant
        if rate_limit_strategy not in limits.strategies.STRATEGIES:
            raise ConfigurationError(
                "rate_limit_strategy", rate_limit_strategy, f"must be one of {sorted(limits.strategies.STRATEGIES)}"
            )
        self.strategy: Strategy = rate_limit_strategy
        core = runtime.settings.core
        self.store_uri: str = rate_limit_store or core.store
        self.key_prefix: str = core.key_prefix
        self._memory = is_memory(self.store_uri)
        # memory:// with fixed windows (the default) is counted here rather than by limits' storage.
        self._windows = MemoryWindows(self.clock.time) if self._memory and self.strategy == "fixed-window" else None
        #: The wall time the limits count on: in memory the pipeline's clock (a FakeClock in a test), a network
        #: store's own time otherwise. Reset times are measured against it.
        self._rate_clock = self.clock if self._memory else None
        self._wall: Callable[[], float] = self.clock.time if self._memory else time.time
        self.metrics_path = _path_option("metrics_path", metrics_path)
        self.health_path = _path_option("health_path", health_path)
        self.ready_path = _path_option("ready_path", ready_path)
        self.metrics_registry = metrics_registry
        # Without an explicit registry, /metrics shows what the pipeline's metrics policy records into.
        self._policy_registry = _registry_of(pipeline) if metrics_registry is None else None
        for key, flag in (("provider_errors", provider_errors), ("mask_logs", mask_logs)):
            if not isinstance(flag, bool):
                raise ConfigurationError(key, flag, "must be True or False")
        self.provider_errors = provider_errors
        self._classify: Callable[[BaseException], Outcome] = runtime.classify
        if mask_logs:
            install_masking(pipeline)
        if max_body_size is not None and (
            isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 0
        ):
            raise ConfigurationError("max_body_size", max_body_size, "must be a number of bytes >= 0, or None")
        self.max_body_size = max_body_size
        self.problem_for_unhandled = bool(problem_for_unhandled)
        self.cache: ResponseCache | None = None
        if cache_get is not None and cache_get is not False:
            if isinstance(cache_get, bool) or not isinstance(cache_get, (int, float)) or not cache_get > 0:
                raise ConfigurationError("cache_get", cache_get, "must be a time to live in seconds > 0, or None")
            for key, value in (("cache_max_entries", cache_max_entries), ("cache_max_body", cache_max_body)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigurationError(key, value, "must be an integer >= 1")
            self.cache = ResponseCache(float(cache_get), cache_max_entries, cache_max_body, self.clock.monotonic)
        self._sync_limiter: Any = None
        self._lock = threading.Lock()
        self._async_storage = LoopBoundStorage(self.store_uri, self.key_prefix, clock=self._rate_clock)
        self._async_limiters = PerLoop(self._new_async_limiter)
        #: :meth:`http_counts` remembered by (route, method), for an adapter to look up before calling it.
        self.bound_http: dict[tuple[str, str], HttpCounts | None] = {}
        self._route_hits: dict[str, Hits | None] = {}

    # ------------------------------------------------------------------ events

    def http_counts(self, route: str, method: str) -> HttpCounts | None:
        """The bound effect of the HTTP events of ``route`` and ``method``, or ``None``: emit the events.

        Not ``None`` only when every observer is an :class:`HttpRecorder` that
        binds them. Remembered per route and method (routes are templates;
        methods come from clients, so the memory is cleared when full).
        """
        key = (route, method)
        try:
            return self.bound_http[key]
        except KeyError:
            pass
        found = self._bind_http(route, method)
        if len(self.bound_http) >= _BOUND_ROUTES:
            self.bound_http.clear()
        self.bound_http[key] = found
        return found

    def _bind_http(self, route: str, method: str) -> HttpCounts | None:
        bound: list[HttpCounts] = []
        for observer in self.emitter.observers:
            bind = getattr(observer, "bind_http", None)
            if bind is None:
                return None
            try:
                found = bind(route, method)
            except Exception:
                _log.exception("observer %r failed to bind the HTTP events", observer)
                return None
            if found is None:
                return None
            bound.append(found)
        if not bound:
            return None
        if len(bound) == 1:
            return bound[0]
        starts = tuple(start for start, _ in bound)
        finishes = tuple(finish for _, finish in bound)

        def start_all() -> None:
            for start in starts:
                start()

        def finish_all(status: int, duration: float) -> None:
            for finish in finishes:
                finish(status, duration)

        return start_all, finish_all

    # ------------------------------------------------------------------ rate limits

    @property
    def in_process(self) -> bool:
        """Whether the rate limits are counted in this process (``memory://``): no I/O to await."""
        return self._memory

    def sync_limiter(self) -> Any:
        """The sync ``limits`` strategy on the store (made on first use)."""
        limiter = self._sync_limiter
        if limiter is None:
            # Threads of a gthread worker race here on the first requests: one storage, or counts split.
            with self._lock:
                limiter = self._sync_limiter
                if limiter is None:
                    storage = sync_storage(self.store_uri, self.key_prefix, clock=self._rate_clock)
                    strategy: Any = (
                        limits.strategies.STRATEGIES[self.strategy]
                        if self._rate_clock is None
                        else strategies_on(self._rate_clock)[self.strategy]
                    )
                    limiter = self._sync_limiter = strategy(storage)
        return limiter

    def async_limiter(self) -> Any:
        """The async ``limits`` strategy on the store, for the running event loop."""
        return self._async_limiters.get()

    def _new_async_limiter(self) -> Any:
        strategy: Any = (
            limits.aio.strategies.STRATEGIES[self.strategy]
            if self._rate_clock is None
            else strategies_on(self._rate_clock, aio=True)[self.strategy]
        )
        return strategy(self._async_storage.get())

    def client_of(self, request: RequestInfo | None, tenant: str | None = None) -> str | None:
        """The rate limit client key of a request: its ``tenant`` when limits count by tenant and it has one."""
        if tenant is not None and self.limits_by_tenant:
            return tenant  # the key function's answer, already asked and checked
        if request is None:
            return None
        try:
            return checked_key(self.limit_client(request), self.limit_client)
        except Exception:
            _log.exception("rate limit client key function %r failed", self.limit_client)
            return None

    _client = client_of  # the private name it had (tests/test_adapter_provider_errors.py calls it)

    def needs_request(self, tenant: str | None) -> bool:
        """Whether :meth:`check_sync` needs the request to know the client (not when it counts by this tenant)."""
        return tenant is None or not self.limits_by_tenant

    def identifiers(self, route: str, request: RequestInfo | None, tenant: str | None = None) -> tuple[str, str, str]:
        return ("http", _key_part(route), _key_part(self.client_of(request, tenant)))

    def denied(self, item: limits.RateLimitItem, reset_time: float) -> QuotaExceeded:
        retry_after = max(0.0, reset_time - self._wall())
        return QuotaExceeded("Rate limit exceeded for this route.", limit=str(item), retry_after=retry_after)

    def rate_limit_headers(
        self, item: limits.RateLimitItem, remaining: int, reset_time: float
    ) -> list[tuple[str, str]]:
        reset = max(0, math.ceil(reset_time - self._wall()))
        return [
            ("ratelimit-limit", str(item.amount)),
            ("ratelimit-remaining", str(max(0, remaining))),
            ("ratelimit-reset", str(reset)),
        ]

    def check_sync(
        self, route: str, request: RequestInfo | None, tenant: str | None = None
    ) -> tuple[QuotaExceeded, list[tuple[str, str]]] | None:
        """Count the request against its route's limits; the refusal when one is spent.

        ``tenant`` is the request's tenant when the caller has it (saves asking
        the key function again); ``request`` may be ``None`` when
        :meth:`needs_request` says it is not needed.
        """
        hits = self.route_hits(route)
        if hits is None:
            return None
        refused = hits(self.client_of(request, tenant))
        return None if refused is None else self.refusal(refused)

    def route_hits(self, route: str) -> Hits | None:
        """What :meth:`check_sync` counts for ``route``, bound once: ``hits(client)``; ``None`` when no limit applies.

        ``client`` is the request's client key (the tenant, or what
        ``rate_limit_client`` gives); ``hits`` answers ``None`` when the
        request is allowed, else what :meth:`refusal` turns into the answer.
        Counted in this process (``memory://``) or on the store with the sync
        ``limits`` strategy. Remembered per route (cleared when full).
        """
        try:
            return self._route_hits[route]
        except KeyError:
            pass
        items = self.limits.for_route(route)
        found = self._bind_hits(route, items) if items else None
        if len(self._route_hits) >= _BOUND_ROUTES:
            self._route_hits.clear()
        self._route_hits[route] = found
        return found

    def _bind_hits(self, route: str, items: tuple[limits.RateLimitItem, ...]) -> Hits:
        windows = self._windows
        if windows is None:

            def store_hits(client: str | None) -> Refused | None:
                ids = ("http", _key_part(route), _key_part(client))
                try:
                    limiter = self.sync_limiter()
                    for item in items:
                        if not limiter.hit(item, *ids):
                            stats = limiter.get_window_stats(item, *ids)
                            return item, stats.remaining, stats.reset_time
                except STORE_ERRORS as exc:
                    # A store that is down lets requests through: the app keeps serving.
                    _log.warning("rate limit store unavailable (%s); request allowed", type(exc).__name__)
                return None

            return store_hits
        counters = tuple(windows.counter(item, route, i) for i, item in enumerate(items))
        if len(counters) == 1:
            return counters[0]  # the common case: the request is counted in one frame

        def all_hits(client: str | None) -> Refused | None:
            for hit in counters:
                refused = hit(client)
                if refused is not None:
                    return refused
            return None

        return all_hits

    def refusal(self, refused: Refused) -> tuple[QuotaExceeded, list[tuple[str, str]]]:
        """The error and the ``RateLimit-*`` headers of a spent limit (see :meth:`route_hits`)."""
        item, remaining, reset = refused
        return self.denied(item, reset), self.rate_limit_headers(item, remaining, reset)

    async def check_async(
        self, route: str, request: RequestInfo | None, tenant: str | None = None
    ) -> tuple[QuotaExceeded, list[tuple[str, str]]] | None:
        """Async :meth:`check_sync`."""
        if self._memory:
            # In-process state: no I/O to await, and one count shared by every event loop.
            return self.check_sync(route, request, tenant)
        items = self.limits.for_route(route)
        if not items:
            return None
        ids = self.identifiers(route, request, tenant)
        try:
            limiter = self.async_limiter()
            for item in items:
                if not await limiter.hit(item, *ids):
                    stats = await limiter.get_window_stats(item, *ids)
                    return self.denied(item, stats.reset_time), self.rate_limit_headers(
                        item, stats.remaining, stats.reset_time
                    )
        except STORE_ERRORS as exc:
            _log.warning("rate limit store unavailable (%s); request allowed", type(exc).__name__)
        return None

    async def aclose(self) -> None:
        """Close the running loop's store client."""
        if not self._memory:
            self._async_limiters.pop()
            await self._async_storage.aclose()

    def close(self) -> None:
        """Close the sync store client."""
        if self._sync_limiter is not None:
            close_sync(self._sync_limiter.storage)
            self._sync_limiter = None

    # ------------------------------------------------------------------ provider failures

    def provider_problem(
        self, error: BaseException, method: str, route: str, request_id: str | None
    ) -> ProviderUnavailable | None:
        """The 503 for a provider failure the app let out (see :func:`unavailable`), logged; else ``None``."""
        if not self.provider_errors:
            return None
        problem = unavailable(error, self._classify)
        if problem is not None:
            # The type and the status only: the message can carry the prompt or a key.
            status = getattr(error, "status_code", None)
            _log.warning(
                "provider failure answered 503 on %s %s (request id %s): %s.%s%s",
                method,
                route,
                request_id,
                type(error).__module__,
                type(error).__qualname__,
                f" status {status}" if isinstance(status, int) else "",
            )
        return problem

    # ------------------------------------------------------------------ tenant

    def tenant_of(self, request: RequestInfo) -> str | None:
        if self.tenant is None:
            return None
        try:
            return checked_key(self.tenant(request), self.tenant)
        except Exception:
            _log.exception("tenant key function %r failed", self.tenant)
            return None

    # ------------------------------------------------------------------ endpoints

    def readiness(self, health: Mapping[str, Any] | None) -> tuple[int, bytes]:
        body = dict(health) if health is not None else {"ok": True, "policies": {}}
        ok = bool(body.get("ok", False))
        return (200 if ok else 503), json_bytes(body)

    def ready_sync(self) -> tuple[int, bytes]:
        health = getattr(self.pipeline, "health", None)
        try:
            return self.readiness(health() if health is not None else None)
        except Exception as exc:
            _log.warning("readiness check failed: %s", type(exc).__name__)
            return self.readiness({"ok": False, "error": type(exc).__name__})

    async def ready_async(self) -> tuple[int, bytes]:
        ahealth = getattr(self.pipeline, "ahealth", None)
        try:
            return self.readiness(await ahealth() if ahealth is not None else None)
        except Exception as exc:
            _log.warning("readiness check failed: %s", type(exc).__name__)
            return self.readiness({"ok": False, "error": type(exc).__name__})

    def metrics(self, accept: str | None) -> tuple[bytes, str]:
        registry = self.metrics_registry
        if registry is None and self._policy_registry is not None and multiprocess_dir() is None:
            # In multiprocess mode the values are in the workers' files, merged when no registry is given.
            registry = self._policy_registry
        return exposition(registry, accept)


def _registry_of(pipeline: Any) -> Any:
    """The registry the pipeline's metrics policy records into (duck typed: the core imports no plugin)."""
    for policy in getattr(pipeline, "policies", ()):
        if getattr(policy, "name", None) == "metrics":
            registry = getattr(policy, "registry", None)
            if registry is not None:
                return registry
    return None


def _server_handlers() -> list[logging.Handler]:
    """The handlers a record logged while serving can reach: the root's, the servers' and the last resort."""
    found: dict[int, logging.Handler] = {}
    for name in _SERVER_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            found.setdefault(id(handler), handler)
    if logging.lastResort is not None:
        found.setdefault(id(logging.lastResort), logging.lastResort)
    return list(found.values())


#: The root logger, then the servers' own (uvicorn's access log names the path, query string included).
_SERVER_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")


def install_masking(pipeline: Any) -> None:
    """Put the masking filter on every handler of :func:`_server_handlers` that has none yet.

    Idempotent: a handler already masked (by :func:`resilient.masking.install`
    or another adapter) keeps its filter. The masker follows the pipeline's
    ``[masking]`` section and its plugins' detectors; ``enabled = false``
    there, or the masking plugin disabled, installs nothing.
    """
    from .masking import MaskingFilter, MaskingOptions, install, masker_from_options

    settings = getattr(pipeline, "settings", None)
    if settings is None or "masking" in settings.core.disable:
        return
    section = settings.sections.get("masking")
    # A pipeline built without discovery has no [masking] section: the defaults, as install() has.
    options = section.base if section is not None else MaskingOptions()
    if not isinstance(options, MaskingOptions) or not options.enabled:
        return
    targets = [h for h in _server_handlers() if not any(isinstance(f, MaskingFilter) for f in h.filters)]
    if not targets:
        return
    detectors: list[Any] = []
    plugins = getattr(pipeline, "_plugins", None)
    if plugins is not None:
        for _, found in plugins.call("resilient_mask_detectors", settings.core.on_plugin_error):
            detectors.extend(found or ())
    install(masker_from_options(options, detectors or None), handlers=targets)


HEALTH_BODY = b'{"status":"ok"}'


def exposition(registry: Any = None, accept: str | None = None) -> tuple[bytes, str]:
    """The Prometheus exposition of ``registry`` (imported on first use: prometheus is optional)."""
    from .prometheus import exposition as render

    return render(registry=registry, accept_header=accept)
