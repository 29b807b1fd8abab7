"""A pure ASGI middleware: request context, route rate limits, problem+json, HTTP events, endpoints.

::

    app = FastAPI()
    app.add_middleware(ResilientMiddleware, pipeline=pipeline, tenant="header:x-tenant-id",
                       rate_limits={"/v1/chat": "60/minute", "*": "600/minute"})

Not a ``BaseHTTPMiddleware``: messages pass through as they come, so a
streaming response (SSE) reaches the client chunk by chunk and a client that
leaves mid-stream is seen by the app. Options are validated once, in
``__init__``; see ``docs/adapters.md``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from ._http import (
    HEALTH_BODY,
    JSON_CONTENT_TYPE,
    UNMATCHED,
    AdapterOptions,
    Hits,
    HttpCore,
    HttpCounts,
    HttpRequestFinished,
    HttpRequestStarted,
    Refused,
    RequestInfo,
    ResponseCache,
    Strategy,
    TenantCache,
    TenantKey,
    body_too_large,
    internal_error,
    new_context,
    new_finished,
    new_request_id,
    new_started,
    problem_body,
    problem_headers,
    safe_request_id,
    tenant_from_api_key_hash,
    tenant_from_client,
    tenant_from_header,
)
from .context import _current
from .errors import ResilientError

__all__ = [
    "UNMATCHED",
    "AdapterOptions",
    "HttpRequestFinished",
    "HttpRequestStarted",
    "RequestInfo",
    "ResilientMiddleware",
    "TenantKey",
    "tenant_from_api_key_hash",
    "tenant_from_client",
    "tenant_from_header",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("resilient.asgi")

# Scope key: the provider failure a Starlette handler already answered (see _starlette_server_error).
_ANSWERED = "resilient.answered"
# Scope key: the middleware's per-request state (status sent, client gone), read by that handler.
_STATE = "resilient.state"

# Resolved route templates by path; cleared when full so random paths cannot grow it.
_ROUTE_CACHE_SIZE = 4096
# A header value the tenant cache has not seen yet.
_UNKNOWN: Any = object()


class _Request:
    """A :class:`~resilient._http.RequestInfo` over an ASGI scope; headers are read only when asked."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    @property
    def method(self) -> str:
        return str(self._scope.get("method", "GET"))

    @property
    def path(self) -> str:
        return str(self._scope.get("path", "/"))

    @property
    def client(self) -> str | None:
        client = self._scope.get("client")
        return str(client[0]) if client else None

    def header(self, name: str) -> str | None:
        key = name.encode("latin-1")
        for k, v in self._scope.get("headers", ()):
            if k == key:
                return bytes(v).decode("latin-1")
        return None


def _encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class ResilientMiddleware:
    """Serve an ASGI app with resilient's HTTP policies.

    ``pipeline`` gives the store, the clock and the event emitter. Per request:

    - the request id is read from ``request_id_header`` (echoed; generated when
      missing or unsafe), the tenant from ``tenant`` (``"header:<name>"``,
      ``"api_key_hash:<name>"``, ``"client"`` or a function of the request),
      and both are put in :func:`resilient.request_context` around the app;
    - ``rate_limits`` (route template or ``"*"`` -> ``"60/minute"``) are counted
      per route and client (``rate_limit_client``, default the tenant, else the
      address) with the ``rate_limit_strategy`` of ``limits`` on
      ``rate_limit_store`` (default the pipeline's ``store``); over a limit the
      answer is 429 problem+json with ``Retry-After`` and ``RateLimit-*``;
    - a :class:`~resilient.ResilientError` raised by the app becomes
      problem+json with its status and ``Retry-After`` (when the response has
      not started; after, the error propagates and the server drops the
      connection); other exceptions propagate to the server, or become a
      bodyless 500 problem with ``problem_for_unhandled=True``;
    - ``http.request_started`` / ``http.request_finished`` events (route
      template, method, status, duration) go to the pipeline's observers;
    - with ``cache_get`` (seconds), whole 200 GET responses are kept in the
      process (at most ``cache_max_entries``, bodies up to ``cache_max_body``
      bytes) and replayed with ``x-resilient-cache: hit``; the copy is taken as
      the response passes, never delaying it (rules: ``ResponseCache``);
    - a ``Content-Length`` above ``max_body_size`` is refused with 413, and a
      streamed body that grows past it too (when the app has not answered).

    ``metrics_path``, ``health_path`` and ``ready_path`` are served by the
    middleware itself (``None`` turns one off). On lifespan shutdown the
    pipeline is closed after the app's own shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        pipeline: Any,
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
        route: Callable[[Scope], str | None] | None = None,
        close_pipeline: bool = True,
    ) -> None:
        self.app = app
        self.core = core = HttpCore(
            pipeline,
            request_id_header=request_id_header,
            tenant=tenant,
            rate_limits=rate_limits,
            rate_limit_strategy=rate_limit_strategy,
            rate_limit_store=rate_limit_store,
            rate_limit_client=rate_limit_client,
            metrics_path=metrics_path,
            health_path=health_path,
            ready_path=ready_path,
            metrics_registry=metrics_registry,
            max_body_size=max_body_size,
            problem_for_unhandled=problem_for_unhandled,
            cache_get=cache_get,
            cache_max_entries=cache_max_entries,
            cache_max_body=cache_max_body,
            provider_errors=provider_errors,
            mask_logs=mask_logs,
        )
        self._route_fn = route
        self._close_pipeline = close_pipeline
        self._rid_key = core.request_id_header.encode("latin-1") if core.request_id_header else None
        self._tenant_key = core.tenant_header.encode("latin-1") if core.tenant_header else None
        self._tenants = TenantCache()
        self._known_tenant = self._tenants.known
        self._has_limits = bool(core.limits)
        # Limits on a store out of this process are awaited per request (check_async), not bound.
        self._store_limits = self._has_limits and not core.in_process
        self._by_tenant = core.limits_by_tenant
        self._max_body_size = core.max_body_size
        self._cache = core.cache
        self._plans: dict[tuple[str, str], tuple[HttpCounts | None, Hits | None]] = {}
        self._endpoints: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {}
        if core.health_path:
            self._endpoints[core.health_path] = self._health
        if core.ready_path:
            self._endpoints[core.ready_path] = self._ready
        if core.metrics_path:
            self._endpoints[core.metrics_path] = self._metrics
        self._emitter = core.emitter
        self._emitting = core.emitter.enabled
        self._monotonic = core.clock.monotonic
        self._router: Any = getattr(app, "router", None)
        self._routes: dict[str, str] = {}
        self._outer = hasattr(app, "add_exception_handler") and hasattr(app, "exception_handlers")
        if self._outer:
            # Wrapping a Starlette app from outside: its ServerErrorMiddleware would answer 500 before
            # the error reaches us, so the app's own exception handling renders resilient's errors.
            starlette: Any = app
            starlette.add_exception_handler(ResilientError, _starlette_problem)
            if problem_for_unhandled or core.provider_errors:
                handlers = starlette.exception_handlers
                previous = handlers.get(500) or handlers.get(Exception)
                starlette.add_exception_handler(Exception, _starlette_server_error(core, previous))

    # ------------------------------------------------------------------ per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Rare paths (a body limit, the GET cache, store limits, errors) are in helpers: fewer locals
        # keep this coroutine under 512 bytes, where CPython's small-object allocator serves it.
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        if path in self._endpoints and method in ("GET", "HEAD"):
            await self._endpoints[path](scope, receive, send)
            return

        rid_key = self._rid_key
        tenant_key = self._tenant_key
        rid = raw_tenant = None
        if rid_key is not None or tenant_key is not None:
            # One pass over the headers for both (the first value of each counts).
            for k, v in scope["headers"]:
                if k == rid_key:
                    if rid is None:
                        rid = v
                elif k == tenant_key and raw_tenant is None:
                    raw_tenant = v
        if rid is not None and safe_request_id(rid):
            request_id = rid.decode("ascii")
        else:
            request_id = new_request_id()
            rid = request_id.encode("ascii")
        request: _Request | None = None
        if raw_tenant is not None:
            try:
                tenant = self._known_tenant(raw_tenant, _UNKNOWN)
            except TypeError:  # an unhashable value (a bytearray): cleaned and remembered as bytes
                tenant = _UNKNOWN
            if tenant is _UNKNOWN:
                tenant = self._tenants(bytes(raw_tenant))
        elif tenant_key is None and self.core.tenant is not None:
            request = _Request(scope)
            tenant = self.core.tenant_of(request)
        else:
            tenant = None
        # The remembered template first (a route function leaves that memory empty).
        route = self._routes.get(path) or self._route(scope)
        # What the route and method need, bound once: the HTTP counts and the rate limit hits.
        try:
            counts, hits = self._plans[route, method]
        except KeyError:
            counts, hits = self._plan(route, method)
        emitting = self._emitting
        if emitting:
            if counts is None:
                self._emitter.emit(new_started(route, method, tenant, request_id))
            else:
                try:
                    counts[0]()
                except Exception:  # bound counts must not raise; if they do, as an observer's error
                    _log.exception("recording http.request_started failed")
            started = self._monotonic()
        echo = (rid_key, rid) if rid_key is not None else None
        # status: the response's once started; [1]: the client has gone.
        state: list[Any] = [0, False]
        if self._outer:
            scope[_STATE] = state  # for our Starlette error handler: has the response started?

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state[0] = message["status"]
                if echo is not None:
                    # A copy: the message (and its header list) belong to the app, which may reuse them.
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), echo]
            try:
                await send(message)
            except OSError:
                state[1] = True  # the server could not write: the client has gone
                raise

        try:
            if self._max_body_size is not None:
                if await self._refused_length(scope, send_wrapper, request_id):
                    return
                receive = self._limited_receive(receive, self._max_body_size, state)
            if hits is not None:
                # Counted in this process: no I/O to await.
                refused = hits(
                    tenant
                    if tenant is not None and self._by_tenant
                    else self.core.client_of(request or _Request(scope), tenant)
                )
                if refused is not None:
                    await self._refuse(send_wrapper, refused, request_id)
                    return
            elif self._store_limits and await self._refused_by_store(
                scope, send_wrapper, route, request, tenant, request_id
            ):
                return
            downstream = (
                send_wrapper
                if self._cache is None or method != "GET"
                else await self._cached(scope, send_wrapper, request, tenant)
            )
            if downstream is None:
                return  # answered from the cache
            token = _current.set(new_context(request_id, tenant, route))
            try:
                await self.app(scope, receive, downstream)
            finally:
                _current.reset(token)
        except ResilientError as exc:
            if state[0]:
                raise
            await self._problem(send_wrapper, exc, request_id)
        except Exception as exc:
            if isinstance(exc, OSError) and state[1]:
                return  # the client went away and the app let the failed send escape: nothing to answer
            if state[0]:
                if scope.get(_ANSWERED) is exc:
                    return  # a provider failure our Starlette handler answered (and logged): not a crash
                raise
            problem = self.core.provider_problem(exc, method, route, request_id)
            if problem is not None:
                await self._problem(send_wrapper, problem, request_id)
                return
            if not self.core.problem_for_unhandled or isinstance(exc, OSError):
                state[0] = 500
                raise
            _log.exception("unhandled error serving %s %s", method, route)
            await self._problem(send_wrapper, internal_error(), request_id)
        finally:
            if emitting:
                # The status sent; else 499 when the client left, 500 when the app failed before one.
                if counts is None:
                    self._emitter.emit(
                        new_finished(
                            route,
                            method,
                            state[0] or (499 if state[1] else 500),
                            self._monotonic() - started,
                            tenant,
                            request_id,
                        )
                    )
                else:
                    try:
                        counts[1](state[0] or (499 if state[1] else 500), self._monotonic() - started)
                    except Exception:
                        _log.exception("recording http.request_finished failed")

    async def _refuse(self, send: Send, refused: Refused, request_id: str) -> None:
        """Answer 429 for a spent rate limit, with ``Retry-After`` and ``RateLimit-*``."""
        error, headers = self.core.refusal(refused)
        await self._problem(send, error, request_id, headers)

    async def _refused_length(self, scope: Scope, send: Send, request_id: str) -> bool:
        """Answer a ``Content-Length`` above ``max_body_size`` (413) or not a number (400); whether it did."""
        assert self._max_body_size is not None
        refusal = self._check_length(scope, self._max_body_size)
        if refusal is None:
            return False
        await self._problem(send, refusal, request_id)
        return True

    @staticmethod
    def _limited_receive(receive: Receive, limit: int, state: list[Any]) -> Receive:
        """``receive`` refusing a streamed body past ``limit`` (413) and noting a disconnect in ``state``."""
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # A ResilientError, so it renders the same wherever the app lets it out.
                    raise body_too_large(limit)
            elif message["type"] == "http.disconnect":
                state[1] = True
            return message

        return receive_wrapper

    async def _refused_by_store(
        self, scope: Scope, send: Send, route: str, request: _Request | None, tenant: str | None, request_id: str
    ) -> bool:
        """Count the request on a store out of this process; answer 429 when a limit is spent (whether it did)."""
        if request is None and self.core.needs_request(tenant):
            request = _Request(scope)
        denied = await self.core.check_async(route, request, tenant)
        if denied is None:
            return False
        await self._problem(send, denied[0], request_id, denied[1])
        return True

    async def _cached(self, scope: Scope, send: Send, request: _Request | None, tenant: str | None) -> Send | None:
        """Answer a GET from the cache (``None``), or the send that passes the response on and keeps a copy."""
        cache = self._cache
        assert cache is not None
        key = cache.key(request or _Request(scope), scope.get("query_string", b"").decode("latin-1"), tenant)
        if key is None:
            return send
        hit = cache.get(key)
        if hit is None:
            return _caching_send(send, cache, key)
        status, headers, body = hit
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return None

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _plan(self, route: str, method: str) -> tuple[HttpCounts | None, Hits | None]:
        """The bound HTTP counts (``None``: emit the events) and the in-process limit hits of a route and method."""
        core = self.core
        counts = core.http_counts(route, method) if self._emitting else None
        hits = core.route_hits(route) if self._has_limits and core.in_process else None
        plan = counts, hits
        if len(self._plans) >= _ROUTE_CACHE_SIZE:
            self._plans.clear()
        self._plans[route, method] = plan
        return plan

    def _check_length(self, scope: Scope, limit: int) -> ResilientError | None:
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    from ._http import BadRequest

                    return BadRequest("The Content-Length header is not a number.")
                if length > limit:
                    return body_too_large(limit)
        return None

    async def _problem(
        self, send: Send, error: ResilientError, request_id: str, extra: Iterable[tuple[str, str]] = ()
    ) -> None:
        body = problem_body(error, request_id)
        headers = _encode_headers([*problem_headers(error), *extra, ("content-length", str(len(body)))])
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ routes

    def _route(self, scope: Scope) -> str:
        """The route template of the request, before the app runs (limits need it)."""
        if self._route_fn is not None:
            try:
                return self._route_fn(scope) or UNMATCHED
            except Exception:
                _log.exception("route function %r failed", self._route_fn)
                return UNMATCHED
        path = scope["path"]
        found = self._routes.get(path)
        if found is not None:
            return found
        router = self._router
        if router is None:
            app = scope.get("app")
            router = getattr(app, "router", None)
            if router is None:
                return UNMATCHED
            self._router = router
        found = _match(getattr(router, "routes", ()), scope, "") or UNMATCHED
        if len(self._routes) >= _ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[path] = found
        return found

    # ------------------------------------------------------------------ endpoints

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, JSON_CONTENT_TYPE, HEALTH_BODY, scope["method"])

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await self.core.ready_async()
        await _respond(send, status, JSON_CONTENT_TYPE, body, scope["method"])

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = _Request(scope).header("accept")
        try:
            body, content_type = self.core.metrics(accept)
        except Exception as exc:
            _log.warning("metrics exposition failed: %s", type(exc).__name__)
            await _respond(send, 503, JSON_CONTENT_TYPE, b'{"ok":false,"error":"metrics unavailable"}', "GET")
            return
        await _respond(send, 200, content_type, body, scope["method"])

    # ------------------------------------------------------------------ lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self._shutdown()
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _shutdown(self) -> None:
        try:
            await self.core.aclose()
            if self._close_pipeline:
                await self.core.pipeline.aclose()
        except Exception:
            _log.exception("closing the pipeline at shutdown failed")


def _caching_send(send: Send, cache: ResponseCache, key: tuple[str, ...]) -> Send:
    """Pass every message on as it comes, keeping a copy of a storable response to cache at its end."""
    parts: list[bytes] | None = None
    kept: list[tuple[bytes, bytes]] = []
    status = 0
    size = 0

    async def caching_send(message: Message) -> None:
        nonlocal parts, status, size
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            text = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            if cache.storable(status, text):
                parts = []
                kept[:] = [(k, v) for k, v in headers if cache.replayable(k.decode("latin-1"))]
                kept.append((b"x-resilient-cache", b"hit"))
        elif kind == "http.response.body" and parts is not None:
            body = message.get("body", b"")
            size += len(body)
            if size > cache.max_body:
                parts = None
            else:
                parts.append(body)
                if not message.get("more_body", False):
                    cache.put(key, (status, kept, b"".join(parts)))
                    parts = None
        await send(message)

    return caching_send


def _match(routes: Iterable[Any], scope: Scope, prefix: str) -> str | None:
    """Match the scope against Starlette-style routes (``matches`` / ``path``), into mounts."""
    from starlette.routing import Match

    partial = None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a route that cannot judge this scope
            continue
        if match is Match.NONE:
            continue
        path = getattr(route, "path", "")
        inner = getattr(route, "routes", None)
        if match is Match.FULL:
            if inner is not None and child:
                found = _match(inner, {**scope, **child}, prefix + path)
                if found is not None:
                    return found
                # Starlette dispatches into a matched mount; a miss inside is a 404 there.
                return None if inner else prefix + path + "/{path}"
            return prefix + path
        if partial is None:
            partial = prefix + path
    return partial


async def _starlette_problem(request: Any, exc: Exception) -> Any:
    from starlette.responses import Response

    from .context import current

    assert isinstance(exc, ResilientError)
    ctx = current()
    body = problem_body(exc, ctx.request_id if ctx is not None else None)
    return Response(body, status_code=exc.status, headers=dict(problem_headers(exc)))


def _starlette_server_error(core: HttpCore, previous: Any) -> Callable[[Any, Exception], Awaitable[Any]]:
    """Starlette's 500 handler: provider failures as 503 problems, the rest as before we came.

    Starlette's ServerErrorMiddleware answers with this, then re-raises; the
    scope remembers which exception was a provider failure answered here, so
    the middleware outside does not hand it on to the server as a crash.
    """

    async def server_error(request: Any, exc: Exception) -> Any:
        from .context import current

        ctx = current()
        request_id = ctx.request_id if ctx is not None else None
        route = ctx.route if ctx is not None and ctx.route else UNMATCHED
        state = request.scope.get(_STATE)
        started = state is not None and state[0]
        problem = (
            None if started else core.provider_problem(exc, str(request.scope.get("method", "")), route, request_id)
        )
        if problem is not None:
            request.scope[_ANSWERED] = exc
            return await _starlette_problem(request, problem)
        if core.problem_for_unhandled:
            return await _starlette_problem(request, internal_error())
        if previous is not None:
            if inspect.iscoroutinefunction(previous):
                return await previous(request, exc)
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(previous, request, exc)
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("Internal Server Error", status_code=500)  # Starlette's own default

    return server_error


async def _respond(send: Send, status: int, content_type: str, body: bytes, method: str) -> None:
    headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
