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

    @hookimpl
    def resilient_observers(self, runtime: Any) -> list[Any]:
        return [self.see]

    def see(self, event: Event) -> None:
        self.events.append(event)
        if event.name == "http.request_finished":
            self.finished.set()

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
