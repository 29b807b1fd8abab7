"""Small web apps and a real-server runner for the adapter tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from resilient import Event, Pipeline, hookimpl
from resilient.context import current
from resilient.errors import CircuitOpen, QuotaExceeded


class Events:
    """A plugin object keeping the HTTP events; ``finished`` is set on every finished event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.finished = threading.Event()
        self.stream_finished = threading.Event()

    @hookimpl
    def resilient_observers(self, runtime: Any) -> list[Any]:
        return [self.see]

    def see(self, event: Event) -> None:
        self.events.append(event)
        if event.name == "http.request_finished":
            self.finished.set()
            if getattr(event, "route", None) == "/stream":
                self.stream_finished.set()

    def named(self, name: str) -> list[Any]:
        return [e for e in self.events if e.name == name]

    @property
    def in_progress(self) -> int:
        return len(self.named("http.request_started")) - len(self.named("http.request_finished"))


def pipeline(events: Events, **kwargs: Any) -> Pipeline:
    return Pipeline(plugins=[events], discover=False, env={}, **kwargs)


def context_json() -> dict[str, Any]:
    ctx = current()
    assert ctx is not None
    return {"request_id": ctx.request_id, "tenant": ctx.tenant, "route": ctx.route}


class Gate:
    """Lets a streaming endpoint hold its stream open until the test says so."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = threading.Event()


def starlette_app(gate: Gate | None = None) -> Any:
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Mount, Route

    gate = gate or Gate()

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"], **context_json()})

    async def quota(request: Request) -> JSONResponse:
        raise QuotaExceeded("Token quota spent.", limit="1000 tokens/minute", retry_after=12.2, provider="anthropic")

    async def circuit(request: Request) -> JSONResponse:
        raise CircuitOpen(retry_after=5, provider="openai", model="gpt-x")

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("secret sk-live-123 in the message")

    async def echo(request: Request) -> JSONResponse:
        try:
            data = await request.json()
        except ValueError:
            return JSONResponse({"error": "malformed JSON"}, status_code=400)
        return JSONResponse({"got": data})

    async def sse(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"data: first\n\n"
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, gate.release.wait, 10)
                yield b"data: second\n\n"
            finally:
                gate.closed.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def user(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["uid"])

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/quota", quota),
            Route("/circuit", circuit),
            Route("/boom", boom),
            Route("/echo", echo, methods=["POST"]),
            Route("/sse", sse),
            Mount("/api", routes=[Route("/users/{uid}", user)]),
        ]
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --------------------------------------------------------------------------- WSGI and Flask


def wsgi_app(gate: Gate | None = None) -> Any:
    """A plain WSGI app (no framework): routes by path."""
    import json

    gate = gate or Gate()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/ok":
            start_response("200 OK", [("content-type", "application/json")])
            return [json.dumps(context_json()).encode()]
        if path == "/quota":
            raise QuotaExceeded("Token quota spent.", limit="1000 tokens/minute", retry_after=12.2)
        if path == "/boom":
            raise RuntimeError("secret sk-live-123 in the message")
        if path == "/echo":
            data = environ["wsgi.input"].read()
            start_response("200 OK", [("content-type", "text/plain")])
            return [str(len(data)).encode()]
        if path == "/late-quota":  # refused while the body starts, before any byte is sent

            def late() -> Iterator[bytes]:
                raise CircuitOpen(retry_after=3)
                yield b""  # pragma: no cover

            start_response("200 OK", [("content-type", "text/plain")])
            return late()
        if path == "/stream":

            def chunks() -> Iterator[bytes]:
                try:
                    yield b"data: first\n\n"
                    gate.release.wait(10)
                    yield ("data: " + json.dumps(context_json()) + "\n\n").encode()
                finally:
                    gate.closed.set()

            start_response("200 OK", [("content-type", "text/event-stream")])
            return chunks()
        start_response("404 Not Found", [("content-type", "text/plain")])
        return [b"not found"]

    return app


def flask_app(gate: Gate | None = None) -> Any:
    from flask import Flask, Response, request, stream_with_context

    gate = gate or Gate()
    app = Flask("flask_test_app")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return {"id": item_id, **context_json()}

    @app.get("/quota")
    def quota() -> Any:
        raise QuotaExceeded("Token quota spent.", limit="1000 tokens/minute", retry_after=12.2, provider="anthropic")

    @app.get("/circuit")
    def circuit() -> Any:
        raise CircuitOpen(retry_after=5, provider="openai")

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("secret sk-live-123 in the message")

    @app.post("/echo")
    def echo() -> Any:
        return {"got": request.get_json()}

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            try:
                yield "data: first\n\n"
                # Wait for the test, but keep writing so a sync worker notices a client that left.
                for _ in range(200):
                    if gate.release.wait(0.05):
                        break
                    yield ": keep-alive\n\n"
                yield "data: " + str(context_json()["request_id"]) + "\n\n"
            finally:
                gate.closed.set()

        return Response(stream_with_context(chunks()), mimetype="text/event-stream")

    return app


def gunicorn_flask_app() -> Any:
    """For ``gunicorn 'tests._webapps:gunicorn_flask_app()'``: the Flask app with the extension, plus probes."""
    from flask import request

    from resilient.flask import Resilient

    gate = Gate()
    events = Events()
    app = flask_app(gate)

    @app.get("/_events")
    def seen() -> Any:
        if request.args.get("after_stream"):  # a gthread worker may still be writing to the gone client
            events.stream_finished.wait(10)
        finished = events.named("http.request_finished")
        return {"in_progress": events.in_progress, "finished": [[e.route, e.status] for e in finished]}

    @app.post("/_release")
    def release() -> Any:
        gate.release.set()
        return {"released": True}

    Resilient(
        app,
        pipeline=pipeline(events),
        tenant="header:x-tenant-id",
        rate_limits={"/items/<int:item_id>": "3/minute"},
    )
    return app


@contextmanager
def gunicorn_server(worker_class: str, factory: str = "tests._webapps:gunicorn_flask_app()") -> Iterator[str]:
    """Run gunicorn (one worker) on a free loopback port in a subprocess; yields the base URL."""
    import os
    import subprocess
    import sys

    import httpx

    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", worker_class, "-b", f"127.0.0.1:{port}"]
    if worker_class == "gthread":
        args += ["--threads", "4"]
    proc = subprocess.Popen([*args, "--timeout", "30", factory], cwd=root, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
