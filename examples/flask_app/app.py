"""A text-tools API on Flask with resilient's policies around every Anthropic call.

Run it with::

    gunicorn -c examples/flask_app/gunicorn.conf.py --chdir examples/flask_app app:app

or ``flask --app examples/flask_app/app.py run`` for one development process.

Where the provider is, decided by the environment only:

- ``ANTHROPIC_BASE_URL`` set: that server (e.g. ``resilient simulate --port 8100``,
  shared by several workers);
- else ``ANTHROPIC_API_KEY`` set: the real Anthropic API;
- else: the built-in simulator, started in this process on a free loopback port
  the first time a request needs the provider (so under gunicorn each worker
  starts its own after the fork, never the master).

State lives in memory unless ``RESILIENT_STORE=redis://...`` says otherwise;
the policies are configured in ``resilient.toml`` next to this file.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

import resilient.masking
from resilient import Call, Pipeline, capture_calls
from resilient.context import current
from resilient.flask import Resilient
from resilient_quota import QuotaPolicy

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = os.environ.get("EXAMPLE_MODEL", "claude-haiku-4-5")
MAX_TEXT = 20_000  # characters of text per request
MAX_BODY = 64 * 1024  # bytes; larger bodies are answered 413 before the view runs

log = logging.getLogger("example.flask")


class Invalid(ValueError):
    """The request body is not what the endpoint takes: answered 422 with this message."""


# ---------------------------------------------------------------- the provider


def provider_settings() -> tuple[str | None, str, bool]:
    """Base URL, API key and whether to start the built-in simulator, by the rules in the module docstring."""
    if os.environ.get("ANTHROPIC_BASE_URL"):
        return os.environ["ANTHROPIC_BASE_URL"], os.environ.get("ANTHROPIC_API_KEY", "simulated-key"), False
    if os.environ.get("ANTHROPIC_API_KEY"):
        return None, os.environ["ANTHROPIC_API_KEY"], False
    return None, "simulated-key", True


class Provider:
    """The wrapped ``anthropic.Anthropic`` client, made on first use in each process.

    Lazy, so that nothing (a socket, the simulator's thread) is created in a
    gunicorn master that forks its workers (``--preload``): a process that
    finds a client made by its parent makes its own.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.name = "not connected yet"
        self.simulator: Any = None
        self._lock = threading.Lock()
        self._client: anthropic.Anthropic | None = None
        self._pid = 0

    @property
    def client(self) -> anthropic.Anthropic:
        client = self._client
        if client is not None and self._pid == os.getpid():
            return client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = self._connect()
                self._pid = os.getpid()
            return self._client

    def _connect(self) -> anthropic.Anthropic:
        base_url, api_key, simulate = provider_settings()
        if simulate:
            from resilient.testing.simulator import Simulator, SimulatorServer

            server = SimulatorServer(Simulator(latency="20ms", retry_after=0.2)).start()
            atexit.register(server.stop)
            self.simulator = server.simulator
            base_url = server.base_url
            log.info("no ANTHROPIC_API_KEY: answering from the built-in simulator at %s", base_url)
        self.name = "built-in simulator" if simulate else base_url or "anthropic"
        return self.pipeline.wrap(anthropic.Anthropic(api_key=api_key, base_url=base_url))

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None


# ---------------------------------------------------------------- the endpoints' input


def _text(body: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"'{name}' must be a non-empty string")
    if len(value) > limit:
        raise Invalid(f"'{name}' must be at most {limit} characters")
    return value


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"'{name}' must be an integer from {low} to {high}")
    return value


def _model(body: dict[str, Any]) -> str:
    value = body.get("model", DEFAULT_MODEL)
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        raise Invalid("'model' must be a string of 1 to 100 characters")
    return value


@dataclass(frozen=True)
class Prompt:
    """What one endpoint asks the model: a system prompt and a user message."""

    system: str
    message: str
    max_tokens: int
    model: str


def summarize_prompt(body: dict[str, Any]) -> Prompt:
    words = _int(body, "max_words", 60, 5, 500)
    return Prompt(
        system=f"Summarize the user's text in at most {words} words. Answer with the summary only.",
        message=_text(body, "text"),
        max_tokens=min(4 * words, 2048),
        model=_model(body),
    )


def translate_prompt(body: dict[str, Any]) -> Prompt:
    target = _text(body, "target", limit=40)
    if not all(c.isalpha() or c in " -" for c in target):
        raise Invalid("'target' must be a language name (letters, spaces and hyphens)")
    return Prompt(
        system=f"Translate the user's text into {target}. Answer with the translation only.",
        message=_text(body, "text"),
        max_tokens=_int(body, "max_tokens", 1024, 1, 4096),
        model=_model(body),
    )


def classify_prompt(body: dict[str, Any]) -> Prompt:
    labels = body.get("labels")
    if (
        not isinstance(labels, list)
        or not 2 <= len(labels) <= 20
        or not all(isinstance(x, str) and 0 < len(x) <= 50 for x in labels)
    ):
        raise Invalid("'labels' must be a list of 2 to 20 strings of 1 to 50 characters")
    return Prompt(
        system="Classify the user's text. Answer with exactly one of the labels and nothing else.",
        message=f"Labels: {', '.join(labels)}\n\nText: {_text(body, 'text')}",
        max_tokens=20,
        model=_model(body),
    )


def classify_result(text: str, body: dict[str, Any]) -> dict[str, Any]:
    """The label the model answered with (the first label found in its reply), or None."""
    lowered = text.lower()
    found = [label for label in body["labels"] if label.lower() in lowered]
    return {"label": min(found, key=lambda label: lowered.index(label.lower())) if found else None}


# ---------------------------------------------------------------- per process totals


class Totals:
    """What this process has answered: calls, how (cache), tokens and cost. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._cost = 0.0

    def add(self, endpoint: str, call: Call | None) -> None:
        with self._lock:
            self._counts[f"requests.{endpoint}"] += 1
            if call is None:
                return
            self._counts[f"cache.{call.peek('cache', 'miss')}"] += 1
            if call.usage is not None and call.peek("cache", "miss") in ("miss", "bypass"):
                self._counts["tokens.input"] += call.usage.input_tokens
                self._counts["tokens.output"] += call.usage.output_tokens
            cost = call.peek("cost_usd")
            if isinstance(cost, int | float):
                self._cost += float(cost)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**dict(sorted(self._counts.items())), "cost_usd": round(self._cost, 6)}


def describe(call: Call | None) -> dict[str, Any]:
    """What resilient recorded about the provider call behind an answer (``cache``: miss, hit or stale)."""
    if call is None:
        return {}
    usage = call.usage
    return {
        "cache": call.peek("cache", "miss"),
        "attempts": call.attempt,
        "cost_usd": call.peek("cost_usd"),
        "usage": None if usage is None else {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }


def problem(status: int, title: str, detail: str) -> Response:
    ctx = current()
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if ctx is not None:
        body["request_id"] = ctx.request_id
    response = jsonify(body)
    response.status_code = status
    response.content_type = "application/problem+json"
    return response


# ---------------------------------------------------------------- the app


def setup_logging() -> None:
    """Log to stderr (unless the host configured logging) with every record masked.

    ``resilient.masking.install()`` filters the handlers that exist when it
    runs: the root logger's, and gunicorn's error log when served by gunicorn.
    A token in a query string (``?api_key=sk-ant-...``) is then written as
    ``[REDACTED:anthropic_api_key]`` by the access lines below.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        for chatty in ("httpx", "httpx2"):  # one line per provider request; the access lines say enough
            logging.getLogger(chatty).setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    handlers = [*root.handlers, *logging.getLogger("gunicorn.error").handlers]
    resilient.masking.install(handlers=handlers)  # secrets and personal data never reach a log handler


ENDPOINTS: dict[str, tuple[Callable[[dict[str, Any]], Prompt], Callable[[str, dict[str, Any]], dict[str, Any]]]] = {
    "summarize": (summarize_prompt, lambda text, body: {"summary": text}),
    "translate": (translate_prompt, lambda text, body: {"translation": text}),
    "classify": (classify_prompt, classify_result),
}


def create_app(pipeline: Pipeline | None = None) -> Flask:
    """The app; tests pass their own pipeline (a fake clock, other limits)."""
    pipeline = pipeline or Pipeline(cwd=str(HERE))
    setup_logging()

    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    provider = Provider(pipeline)
    totals = Totals()
    app.extensions["example.provider"] = provider
    app.extensions["example.totals"] = totals
    Resilient(
        app,
        pipeline=pipeline,
        tenant="header:x-tenant-id",
        rate_limits={"/summarize": "120/minute", "/translate": "120/minute", "/classify": "120/minute"},
        max_body_size=MAX_BODY,
    )

    @app.after_request
    def access_log(response: Response) -> Response:
        ctx = current()
        tenant = ctx.tenant if ctx is not None else None
        log.info("%s %s -> %s tenant=%s", request.method, request.full_path.rstrip("?"), response.status_code, tenant)
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # Flask's own 400/404/405/413 as problem+json too; the description is Werkzeug's fixed text.
        code = error.code or 500
        return problem(code, error.name, error.description or error.name)

    @app.errorhandler(Invalid)
    def invalid(error: Invalid) -> Response:
        return problem(422, "Invalid request", str(error))

    @app.get("/")
    def index() -> dict[str, Any]:
        return {
            "provider": provider.name,
            "worker_pid": os.getpid(),
            "endpoints": {
                "POST /summarize": '{"text": ..., "max_words"?: 5-500}',
                "POST /translate": '{"text": ..., "target": "French"}',
                "POST /classify": '{"text": ..., "labels": ["bug", "question", ...]}',
                "GET /usage": "this process's totals and the tenant's quota",
                "GET /health": "liveness",
                "GET /ready": "store, breakers and quotas",
                "GET /metrics": "Prometheus",
            },
            "policies": [p.name for p in pipeline.policies],
        }

    def answer(endpoint: str) -> dict[str, Any]:
        body = request.get_json(silent=False)  # malformed JSON: Werkzeug's 400
        if not isinstance(body, dict):
            raise Invalid("the body must be a JSON object")
        build, shape = ENDPOINTS[endpoint]
        prompt = build(body)
        with capture_calls() as calls:
            message = provider.client.messages.create(
                model=prompt.model,
                max_tokens=prompt.max_tokens,
                system=prompt.system,
                messages=[{"role": "user", "content": prompt.message}],
            )
        call = calls[-1] if calls else None
        totals.add(endpoint, call)
        text = "".join(block.text for block in message.content if block.type == "text")
        ctx = current()
        return {
            **shape(text, body),
            "model": message.model,
            **describe(call),
            "request_totals": dict(ctx.totals) if ctx is not None else {},
        }

    @app.post("/summarize")
    def summarize() -> dict[str, Any]:
        return answer("summarize")

    @app.post("/translate")
    def translate() -> dict[str, Any]:
        return answer("translate")

    @app.post("/classify")
    def classify() -> dict[str, Any]:
        return answer("classify")

    @app.get("/usage")
    def usage() -> dict[str, Any]:
        ctx = current()
        tenant = ctx.tenant if ctx is not None else None
        model = request.args.get("model", DEFAULT_MODEL)[:100]
        quota = next((p for p in pipeline.policies if isinstance(p, QuotaPolicy)), None)
        status = quota.status("anthropic", model, tenant) if quota is not None else None
        return {"worker_pid": os.getpid(), "tenant": tenant, "quota": status, "process": totals.snapshot()}

    return app


app = create_app()
