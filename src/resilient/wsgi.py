"""A WSGI middleware with the ASGI middleware's features, for sync servers (gunicorn sync and gthread).

::

    app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app, pipeline=pipeline, tenant="header:x-tenant-id")

The response body is passed through as the app yields it; the request
context stays current while the server iterates it (so a streaming view
sees the tenant and request id), and ``http.request_finished`` is emitted
when the server closes the body, exactly once, whether the client read it
all or left. For Flask, :class:`resilient.flask.Resilient` adds route
templates and error handlers on top of this.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

from ._http import (
    HEALTH_BODY,
    JSON_CONTENT_TYPE,
    UNMATCHED,
    AdapterOptions,
    BadRequest,
    HttpCore,
    HttpCounts,
    HttpRequestFinished,
    HttpRequestStarted,
    RequestInfo,
    Strategy,
    TenantCache,
    TenantKey,
    body_too_large,
    internal_error,
    new_context,
    new_finished,
    new_started,
    problem_body,
    problem_headers,
    request_id_of,
    tenant_from_api_key_hash,
    tenant_from_client,
    tenant_from_header,
)
from .context import RequestContext, _current
from .errors import ResilientError

__all__ = [
    "UNMATCHED",
    "AdapterOptions",
    "HttpRequestFinished",
    "HttpRequestStarted",
    "RequestInfo",
    "ResilientWSGIMiddleware",
    "TenantKey",
    "tenant_from_api_key_hash",
    "tenant_from_client",
    "tenant_from_header",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_log = logging.getLogger("resilient.wsgi")


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class _Request:
    """A :class:`~resilient._http.RequestInfo` over a WSGI environ."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Environ) -> None:
        self._environ = environ

    @property
    def method(self) -> str:
        return str(self._environ.get("REQUEST_METHOD", "GET"))

    @property
    def path(self) -> str:
        return str(self._environ.get("PATH_INFO", "/"))

    @property
    def client(self) -> str | None:
        addr = self._environ.get("REMOTE_ADDR")
        return str(addr) if addr else None

    def header(self, name: str) -> str | None:
        if name == "content-type":
            value = self._environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = self._environ.get("CONTENT_LENGTH")
        else:
            value = self._environ.get("HTTP_" + name.upper().replace("-", "_"))
        return None if value is None else str(value)


class _LimitedInput:
    """``wsgi.input`` that raises :class:`BodyTooLarge` once more than ``limit`` bytes were read."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._read = 0

    def _count(self, data: bytes) -> bytes:
        self._read += len(data)
        if self._read > self._limit:
            raise body_too_large(self._limit)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._count(self._stream.read(size) if size is not None and size >= 0 else self._stream.read())

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._stream.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._count(line) for line in self._stream.readlines(hint)]

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield self._count(line)


class ResilientWSGIMiddleware:
    """Serve a WSGI app with resilient's HTTP policies; the options are those of the ASGI middleware.

    ``route`` maps the environ to the route template (``None`` for no match);
    without it every request is ``"<unmatched>"``, which is what a plain WSGI
    app can say (the Flask extension gives Flask's url rules).
    """

    def __init__(
        self,
        app: WSGIApp,
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
        route: Callable[[Environ], str | None] | None = None,
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
        header = core.request_id_header
        self._rid_environ = ("HTTP_" + header.upper().replace("-", "_")) if header else None
        self._rid_header = header
        # A "header:<name>" tenant is read straight from the environ.
        theader = core.tenant_header
        plain = theader and theader not in ("content-type", "content-length")  # those two have no HTTP_ prefix
        self._tenant_environ = ("HTTP_" + theader.upper().replace("-", "_")) if plain and theader else None
        self._tenants = TenantCache()
        self._endpoints: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {}
        if core.health_path:
            self._endpoints[core.health_path] = self._health
        if core.ready_path:
            self._endpoints[core.ready_path] = self._ready
        if core.metrics_path:
            self._endpoints[core.metrics_path] = self._metrics
        self._emitter = core.emitter
        self._monotonic = core.clock.monotonic

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        endpoint = self._endpoints.get(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD", "GET")
        if endpoint is not None and method in ("GET", "HEAD"):
            return endpoint(environ, start_response)

        core = self.core
        request: _Request | None = None
        request_id = request_id_of(environ.get(self._rid_environ) if self._rid_environ else None)
        if self._tenant_environ is not None:
            raw_tenant = environ.get(self._tenant_environ)
            tenant = self._tenants(raw_tenant) if raw_tenant is not None else None
        elif core.tenant is not None:
            request = _Request(environ)
            tenant = core.tenant_of(request)
        else:
            tenant = None
        route = self._route(environ)
        emitter = self._emitter
        counts: HttpCounts | None = None
        if emitter.enabled:
            # Bound by every observer (the metrics plugin's): two calls instead of two events.
            counts = core.http_counts(route, method)
            if counts is None:
                emitter.emit(new_started(route, method, tenant, request_id))
            else:
                try:
                    counts[0]()
                except Exception:  # bound counts must not raise; if they do, as an observer's error
                    _log.exception("recording http.request_started failed")
        body = _Body(self, route, method, tenant, request_id, start_response, counts)
        ctx = new_context(request_id, tenant, route)
        body.ctx = ctx
        token = _current.set(ctx)
        try:
            limit = core.max_body_size
            if limit is not None:
                refusal = self._check_length(environ, limit)
                if refusal is not None:
                    return body.problem(refusal)
                environ["wsgi.input"] = _LimitedInput(environ["wsgi.input"], limit)
            if core.limits:
                if request is None and core.needs_request(tenant):
                    request = _Request(environ)
                denied = core.check_sync(route, request, tenant)
                if denied is not None:
                    return body.problem(denied[0], denied[1])
            cache = core.cache
            if cache is not None and method == "GET":
                key = cache.key(request or _Request(environ), environ.get("QUERY_STRING", ""), tenant)
                if key is not None:
                    hit = cache.get(key)
                    if hit is not None:
                        status_line, headers, data = hit
                        body.start_response(status_line, headers)
                        body.iterator = iter((data,))
                        return body
                    body.cache_key = key
            body.inner = self.app(environ, body.start_response)
            body.iterator = iter(body.inner)
            return body
        except ResilientError as exc:
            return body.problem(exc, exc_info=sys.exc_info())
        except Exception as exc:
            problem = core.provider_problem(exc, method, route, request_id)
            if problem is not None:
                return body.problem(problem, exc_info=sys.exc_info())
            if not core.problem_for_unhandled:
                body.close()
                raise
            _log.exception("unhandled error serving %s %s", method, route)
            return body.problem(internal_error(), exc_info=sys.exc_info())
        finally:
            _current.reset(token)

    def _check_length(self, environ: Environ, limit: int) -> ResilientError | None:
        value = environ.get("CONTENT_LENGTH")
        if not value:
            return None
        try:
            length = int(value)
        except ValueError:
            return BadRequest("The Content-Length header is not a number.")
        return body_too_large(limit) if length > limit else None

    def _route(self, environ: Environ) -> str:
        if self._route_fn is None:
            return UNMATCHED
        try:
            return self._route_fn(environ) or UNMATCHED
        except Exception:
            _log.exception("route function %r failed", self._route_fn)
            return UNMATCHED

    # ------------------------------------------------------------------ endpoints

    def _health(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return _respond(start_response, 200, JSON_CONTENT_TYPE, HEALTH_BODY, environ)

    def _ready(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        status, body = self.core.ready_sync()
        return _respond(start_response, status, JSON_CONTENT_TYPE, body, environ)

    def _metrics(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            body, content_type = self.core.metrics(environ.get("HTTP_ACCEPT"))
        except Exception as exc:
            _log.warning("metrics exposition failed: %s", type(exc).__name__)
            unavailable = b'{"ok":false,"error":"metrics unavailable"}'
            return _respond(start_response, 503, JSON_CONTENT_TYPE, unavailable, environ)
        return _respond(start_response, 200, content_type, body, environ)

    def close(self) -> None:
        """Close the rate limits' store client (the pipeline is closed by its owner)."""
        self.core.close()


class _Body:
    """The response body as the server iterates it: the request context current, finished once."""

    __slots__ = (
        "_finished",
        "_mw",
        "_start_response",
        "cache_key",
        "counts",
        "ctx",
        "inner",
        "iterator",
        "kept",
        "method",
        "parts",
        "request_id",
        "route",
        "sent",
        "size",
        "started",
        "status",
        "tenant",
    )

    def __init__(
        self,
        mw: ResilientWSGIMiddleware,
        route: str,
        method: str,
        tenant: str | None,
        request_id: str,
        start_response: StartResponse,
        counts: HttpCounts | None = None,
    ) -> None:
        self._mw = mw
        self.counts = counts
        self.route = route
        self.method = method
        self.tenant = tenant
        self.request_id = request_id
        self._start_response = start_response
        self.status = 0
        self.sent = False  # a body chunk went to the server: the headers are out
        self._finished = False
        self.inner: Iterable[bytes] | None = None
        self.iterator: Iterator[bytes] | None = None
        self.ctx: RequestContext | None = None
        self.started = mw._monotonic()
        self.cache_key: tuple[str, ...] | None = None
        self.parts: list[bytes] | None = None  # a copy of a storable response, for the cache
        self.size = 0
        self.kept: Any = None

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        try:
            self.status = int(status[:3])
        except ValueError:
            self.status = 500
        if self.cache_key is not None:
            cache = self._mw.core.cache
            assert cache is not None
            if cache.storable(self.status, headers):
                self.parts = []
                kept = [(k, v) for k, v in headers if cache.replayable(k)]
                self.kept = (status, [*kept, ("x-resilient-cache", "hit")])
            else:
                self.parts = None
        header = self._mw._rid_header
        if header is not None:
            headers = [*headers, (header, self.request_id)]
        return self._start_response(status, headers, exc_info)

    def problem(
        self, error: ResilientError, extra: Iterable[tuple[str, str]] = (), exc_info: Any = None
    ) -> Iterable[bytes]:
        body = problem_body(error, self.request_id)
        headers = [*problem_headers(error), *extra, ("content-length", str(len(body)))]
        # exc_info only replaces a status the app already set (PEP 3333); some servers re-raise on any.
        self.start_response(_status_line(error.status), headers, exc_info if self.status else None)
        self.iterator = iter((body,))
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        assert self.iterator is not None
        token = _current.set(self.ctx)
        try:
            chunk = next(self.iterator)
        except StopIteration:
            if self.parts is not None:
                self._store()
            raise
        except ResilientError as exc:
            if self.sent:
                raise  # the headers are out: the server drops the connection
            self._close_inner()
            self.problem(exc, exc_info=sys.exc_info())
            return next(self.iterator)
        except Exception as exc:
            # A streamed body whose provider failed before its first chunk: still time for a 503.
            core = self._mw.core
            problem = None if self.sent else core.provider_problem(exc, self.method, self.route, self.request_id)
            if problem is None:
                raise
            self._close_inner()
            self.problem(problem, exc_info=sys.exc_info())
            return next(self.iterator)
        finally:
            _current.reset(token)
        self.sent = True  # some servers send the headers with an empty first chunk
        if self.parts is not None:
            self.size += len(chunk)
            if self.size > self._mw.core.cache.max_body:  # type: ignore[union-attr]
                self.parts = None
            else:
                self.parts.append(chunk)
        return chunk

    def _store(self) -> None:
        cache = self._mw.core.cache
        if cache is not None and self.cache_key is not None and self.parts is not None:
            status, headers = self.kept
            cache.put(self.cache_key, (status, headers, b"".join(self.parts)))
        self.parts = None

    def _close_inner(self) -> None:
        inner, self.inner = self.inner, None
        close = getattr(inner, "close", None)
        if close is not None:
            token = _current.set(self.ctx)
            try:
                close()
            finally:
                _current.reset(token)

    def close(self) -> None:
        """Called by the server when it is done with the body (read to the end, or the client left)."""
        try:
            self._close_inner()
        finally:
            if not self._finished:
                self._finished = True
                emitter = self._mw._emitter
                if emitter.enabled:
                    status = self.status or 500
                    duration = self._mw._monotonic() - self.started
                    counts = self.counts
                    if counts is None:
                        emitter.emit(
                            new_finished(self.route, self.method, status, duration, self.tenant, self.request_id)
                        )
                    else:
                        try:
                            counts[1](status, duration)
                        except Exception:
                            _log.exception("recording http.request_finished failed")


def _respond(
    start_response: StartResponse, status: int, content_type: str, body: bytes, environ: Environ
) -> Iterable[bytes]:
    start_response(_status_line(status), [("content-type", content_type), ("content-length", str(len(body)))])
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]
