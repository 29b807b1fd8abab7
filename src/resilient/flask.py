"""The Flask extension: the WSGI middleware with Flask's route templates and error handlers.

::

    resilient = Resilient(app, pipeline=pipeline, tenant="header:x-tenant-id",
                          rate_limits={"/v1/chat": "60/minute"})
    # or, with an app factory:
    resilient = Resilient(pipeline=pipeline, rate_limits=...)
    resilient.init_app(app)

Routes are Flask's url rules (``/items/<int:item_id>``). A
:class:`~resilient.ResilientError` raised by a view becomes problem+json
through a Flask error handler, so ``after_request`` hooks and other
extensions still see the response.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._http import AdapterOptions, internal_error, problem_body, problem_headers
from .context import current
from .errors import ConfigurationError, ResilientError
from .wsgi import Environ, ResilientWSGIMiddleware

if TYPE_CHECKING:
    from flask import Flask, Response
    from typing_extensions import Unpack

__all__ = ["Resilient"]

_log = logging.getLogger("resilient.flask")

_ROUTE_CACHE_SIZE = 4096


def _check_options(where: str, options: Mapping[str, Any]) -> None:
    """A misspelt option is the extension's TypeError, not one from the WSGI middleware it builds later."""
    known = sorted(AdapterOptions.__annotations__)
    for name in options:
        if name not in AdapterOptions.__annotations__:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(["pipeline", "route", *known])
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint} (it takes {allowed})")


def _problem_response(error: ResilientError) -> Response:
    from flask import Response

    ctx = current()
    body = problem_body(error, ctx.request_id if ctx is not None else None)
    return Response(body, status=error.status, headers=problem_headers(error))


def _provider_error_handler(middleware: ResilientWSGIMiddleware) -> Callable[[Exception], Any]:
    """Flask's handler for ``Exception``: a provider failure becomes a 503 problem, nothing else changes.

    Registered for ``Exception`` so Flask calls it before logging a crash (a
    handler the app registers for a narrower class still wins). HTTP errors
    are handed back as they are, which is what Flask does without a handler;
    anything else is raised again into Flask's own 500 handling.
    """
    from werkzeug.exceptions import HTTPException

    def provider_error(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return error
        ctx = current()
        route = ctx.route if ctx is not None and ctx.route else "<unmatched>"
        from flask import request

        problem = middleware.core.provider_problem(
            error, request.method, route, ctx.request_id if ctx is not None else None
        )
        if problem is None:
            raise error
        return _problem_response(problem)

    return provider_error


class _Routes:
    """Route templates from the app's url map, remembered by method and path (bounded)."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._cache: dict[tuple[str, str], str | None] = {}

    def __call__(self, environ: Environ) -> str | None:
        key = (environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""))
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._match(environ)
        if len(self._cache) >= _ROUTE_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _match(self, environ: Environ) -> str | None:
        from werkzeug.exceptions import HTTPException, MethodNotAllowed

        adapter = self._app.url_map.bind_to_environ(environ)
        try:
            rule, _ = adapter.match(return_rule=True)
        except MethodNotAllowed as exc:
            # The path is a route, the method is not allowed: still that route's template.
            methods = sorted(exc.valid_methods or ())
            if not methods:
                return None
            try:
                rule, _ = adapter.match(method=methods[0], return_rule=True)
            except HTTPException:
                return None
        except HTTPException:  # NotFound, RequestRedirect
            return None
        return str(rule.rule)


class Resilient:
    """Flask extension: ``Resilient(app, pipeline=...)``, or ``Resilient(pipeline=...).init_app(app)``.

    Takes the options of :class:`resilient.asgi.ResilientMiddleware` (see
    ``docs/adapters.md``); ``pipeline`` may be given to the constructor or to
    :meth:`init_app`. Works under gunicorn sync and gthread workers: the
    request context lives in a context variable per request thread.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        pipeline: Any = None,
        route: Callable[[Environ], str | None] | None = None,
        **options: Unpack[AdapterOptions],
    ) -> None:
        _check_options("Resilient()", options)
        self.pipeline = pipeline
        self.options: dict[str, Any] = dict(options)
        self.route = route
        self.middleware: ResilientWSGIMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        pipeline: Any = None,
        route: Callable[[Environ], str | None] | None = None,
        **options: Unpack[AdapterOptions],
    ) -> None:
        """Wrap ``app.wsgi_app`` and register the error handlers; options here override the constructor's."""
        _check_options("Resilient.init_app()", options)
        pipeline = pipeline if pipeline is not None else self.pipeline
        if pipeline is None:
            raise ConfigurationError(
                "pipeline", None, "must be a resilient.Pipeline, given to Resilient() or init_app()"
            )
        merged: dict[str, Any] = {**self.options, **options}
        resolve = route or self.route or _Routes(app)
        middleware = ResilientWSGIMiddleware(app.wsgi_app, pipeline=pipeline, route=resolve, **merged)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.register_error_handler(ResilientError, _problem_response)
        if middleware.core.provider_errors:
            app.register_error_handler(Exception, _provider_error_handler(middleware))
        if middleware.core.problem_for_unhandled:

            def unhandled(error: Exception) -> Response:
                return _problem_response(internal_error())

            app.register_error_handler(500, unhandled)
        app.extensions["resilient"] = self
        self.middleware = middleware
        self.pipeline = pipeline

    def close(self) -> None:
        """Close the pipeline and the rate limits' store client: call it when the worker exits."""
        if self.middleware is not None:
            self.middleware.close()
        if self.pipeline is not None:
            self.pipeline.close()
