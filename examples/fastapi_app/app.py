"""A chat API on FastAPI with resilient's policies around every Anthropic call.

Run it with ``make demo`` (from the repository root), or::

    uvicorn --app-dir examples/fastapi_app app:app --host 127.0.0.1 --port 8000

Where the provider is, decided by the environment only:

- ``ANTHROPIC_BASE_URL`` set: that server (e.g. ``resilient simulate --port 8100``,
  shared by several workers);
- else ``ANTHROPIC_API_KEY`` set: the real Anthropic API;
- else: the built-in simulator, started in this process on a free loopback port.

State lives in memory unless ``RESILIENT_STORE=redis://...`` says otherwise;
the policies are configured in ``resilient.toml`` next to this file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

import resilient.masking
from resilient import Call, Pipeline, capture_calls
from resilient.asgi import ResilientMiddleware

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = os.environ.get("EXAMPLE_MODEL", "claude-haiku-4-5")

log = logging.getLogger("example.chat")


class ChatRequest(BaseModel):
    """One question; the same question from the same tenant is answered from the cache."""

    message: str = Field(min_length=1, max_length=20_000)
    model: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=100)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    system: str | None = Field(default=None, max_length=20_000)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": self.message}],
        }
        if self.system:
            params["system"] = self.system
        return params


def describe(call: Call | None) -> dict[str, Any]:
    """What resilient recorded about the provider call behind an answer."""
    if call is None:
        return {}
    usage = call.usage
    return {
        "attempts": call.attempt,
        "cache": call.peek("cache", "miss"),
        "fallback_step": call.peek("fallback_step"),
        "cost_usd": call.peek("cost_usd"),
        "provider_request_id": call.peek("request_id"),
        "usage": None if usage is None else {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }


def provider_url(stack: AsyncExitStack) -> tuple[str | None, str, Any]:
    """The provider's base URL, API key and built-in simulator (or None), by the rules in the module docstring."""
    if os.environ.get("ANTHROPIC_BASE_URL"):
        return os.environ["ANTHROPIC_BASE_URL"], os.environ.get("ANTHROPIC_API_KEY", "simulated-key"), None
    if os.environ.get("ANTHROPIC_API_KEY"):
        return None, os.environ["ANTHROPIC_API_KEY"], None
    from resilient.testing.simulator import Simulator, run_simulator

    server = stack.enter_context(run_simulator(Simulator(latency="20ms", chunk_delay="30ms", retry_after=0.2)))
    log.info("no ANTHROPIC_API_KEY: answering from the built-in simulator at %s", server.base_url)
    return server.base_url, "simulated-key", server.simulator


def create_app(pipeline: Pipeline | None = None) -> FastAPI:
    """The app; tests pass their own pipeline (a fake clock, a Redis store)."""
    pipeline = pipeline or Pipeline(cwd=str(HERE))
    resilient.masking.install()  # secrets and personal data never reach a log handler

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            base_url, api_key, simulator = provider_url(stack)
            client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url)
            app.state.claude = pipeline.wrap(client)
            app.state.simulator = simulator  # the demo scripts its faults
            app.state.provider = "built-in simulator" if simulator else base_url or "anthropic"
            yield
            await client.close()

    app = FastAPI(title="resilient chat example", lifespan=lifespan)
    app.add_middleware(
        ResilientMiddleware,
        pipeline=pipeline,
        tenant="header:x-tenant-id",
        rate_limits={"/v1/chat": "120/minute", "/v1/chat/stream": "120/minute"},
    )

    @app.get("/")
    async def index(request: Request) -> dict[str, Any]:
        return {
            "provider": request.app.state.provider,
            "worker_pid": os.getpid(),
            "endpoints": {
                "POST /v1/chat": "JSON answer",
                "POST /v1/chat/stream": "server-sent events",
                "GET /health": "liveness",
                "GET /ready": "store, breakers and quotas",
                "GET /metrics": "Prometheus",
            },
            "policies": [p.name for p in pipeline.policies],
        }

    @app.post("/v1/chat")
    async def chat(body: ChatRequest, request: Request) -> dict[str, Any]:
        claude: anthropic.AsyncAnthropic = request.app.state.claude
        with capture_calls() as calls:
            message = await claude.messages.create(**body.params())
        text = "".join(block.text for block in message.content if block.type == "text")
        return {"reply": text, "model": message.model, **describe(calls[-1] if calls else None)}

    @app.post("/v1/chat/stream")
    async def chat_stream(body: ChatRequest, request: Request) -> StreamingResponse:
        claude: anthropic.AsyncAnthropic = request.app.state.claude
        # Start the stream here, so a refusal (quota, open circuit) is a
        # problem+json answer rather than an error inside a 200 stream.
        with capture_calls() as calls:
            stream = await claude.messages.create(**body.params(), stream=True)

        async def events() -> AsyncIterator[str]:
            try:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        yield f"data: {json.dumps({'type': 'text', 'text': event.delta.text})}\n\n"
                done = {"type": "done", **describe(calls[-1] if calls else None)}
                yield f"data: {json.dumps(done)}\n\n"
            except Exception as exc:
                # The 200 and the first events are already out: the stream can only say it ended badly.
                # The exception's text stays out of the event and the log (it can carry the prompt).
                log.warning("provider stream failed after it started: %s", type(exc).__name__)
                failed = {"type": "error", "error": "provider_unavailable", "detail": "The provider stream ended."}
                yield f"data: {json.dumps(failed)}\n\n"
            finally:
                await stream.close()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


app = create_app()
