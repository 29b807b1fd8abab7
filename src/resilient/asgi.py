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
    HttpCore,
    HttpRequestFinished,
    HttpRequestStarted,
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
        self._has_limits = bool(core.limits)
        self._endpoints: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {}
        if core.health_path:
            self._endpoints[core.health_path] = self._health
        if core.ready_path:
            self._endpoints[core.ready_path] = self._ready
        if core.metrics_path:
            self._endpoints[core.metrics_path] = self._metrics
        self._emitter = core.emitter
        self._monotonic = core.clock.monotonic
        self._router: Any = getattr(app, "router", None)
        self._routes: dict[str, str] = {}
        self._counts = core.bound_http
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
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        endpoint = self._endpoints.get(scope["path"])
        if endpoint is not None and scope["method"] in ("GET", "HEAD"):
            await endpoint(scope, receive, send)
            return

        core = self.core
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
        if tenant_key is not None:
            tenant = self._tenants(bytes(raw_tenant)) if raw_tenant is not None else None
        elif core.tenant is not None:
            request = _Request(scope)
            tenant = core.tenant_of(request)
        else:
            tenant = None
        # The remembered template first (a route function leaves that memory empty).
        route = self._routes.get(scope["path"]) or self._route(scope)
        method = scope["method"]
        emitter = self._emitter
        if emitter.enabled:
            # Bound by every observer (the metrics plugin's): two calls instead of two events.
            try:
                counts = self._counts[route, method]
            except KeyError:
                counts = core.http_counts(route, method)
            if counts is None:
                emitter.emit(new_started(route, method, tenant, request_id))
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

        limit = core.max_body_size
        downstream_receive = receive
        if limit is not None:
            received = [0]

            async def receive_wrapper() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        # A ResilientError, so it renders the same wherever the app lets it out.
                        raise body_too_large(limit)
                elif message["type"] == "http.disconnect":
                    state[1] = True
                return message

            downstream_receive = receive_wrapper

        try:
            refusal = None
            if limit is not None:
                refusal = self._check_length(scope, limit)
            if refusal is None and self._has_limits:
                if request is None and core.needs_request(tenant):
                    request = _Request(scope)
                denied = (
                    core.check_sync(route, request, tenant)
                    if core.in_process
                    else await core.check_async(route, request, tenant)
                )
                if denied is not None:
                    await self._problem(send_wrapper, denied[0], request_id, denied[1])
                    return
            if refusal is not None:
                await self._problem(send_wrapper, refusal, request_id)
                return
            downstream: Send = send_wrapper
            cache = core.cache
            if cache is not None and method == "GET":
                key = cache.key(request or _Request(scope), scope.get("query_string", b"").decode("latin-1"), tenant)
                if key is not None:
                    hit = cache.get(key)
                    if hit is not None:
                        status, headers, body = hit
                        await send_wrapper({"type": "http.response.start", "status": status, "headers": headers})
                        await send_wrapper({"type": "http.response.body", "body": body})
                        return
                    downstream = _caching_send(send_wrapper, cache, key)
            token = _current.set(new_context(request_id, tenant, route))
            try:
                await self.app(scope, downstream_receive, downstream)
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
            problem = core.provider_problem(exc, method, route, request_id)
            if problem is not None:
                await self._problem(send_wrapper, problem, request_id)
                return
            if not core.problem_for_unhandled or isinstance(exc, OSError):
                state[0] = 500
                raise
            _log.exception("unhandled error serving %s %s", method, route)
            await self._problem(send_wrapper, internal_error(), request_id)
        finally:
            if emitter.enabled:
                status = state[0] or (499 if state[1] else 500)
                duration = self._monotonic() - started
                if counts is None:
                    emitter.emit(new_finished(route, method, status, duration, tenant, request_id))
                else:
                    try:
                        counts[1](status, duration)
                    except Exception:
                        _log.exception("recording http.request_finished failed")

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
