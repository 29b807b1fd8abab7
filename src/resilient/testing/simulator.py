"""A fake LLM provider over HTTP: the Anthropic Messages API and OpenAI chat completions, with faults.

``Simulator(...).app`` is an ASGI app (starlette); point the real SDKs at
it with ``base_url``. Answers are deterministic functions of the request;
faults are scripted (``sim.script("429", "ok", "drop")``) or random
(``fail_rate`` with a seeded ``random.Random``); latency goes through an
injectable sleep. ``run_simulator()`` serves it with uvicorn on a free
loopback port in a background thread; ``resilient simulate`` serves it
from the command line. See docs/simulator.md.

This module imports starlette; ``resilient.testing`` does not import it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ..clock import SYSTEM_CLOCK, Clock
from ..config import parse_duration
from . import _sim_content as content
from ._sim_content import InvalidRequest, Reply, ReplyFn, default_reply
from ._sim_faults import (
    DEFAULT,
    Drop,
    Fault,
    FaultSpec,
    Ok,
    RateSnapshot,
    RateWindow,
    Slow,
    Stall,
    Status,
    StreamError,
    parse_fault,
    parse_faults,
)

__all__ = [
    "ANTHROPIC_MESSAGES",
    "ANTHROPIC_COUNT_TOKENS",
    "OPENAI_CHAT",
    "ConnectionDropped",
    "Drop",
    "Fault",
    "FaultSpec",
    "Ok",
    "SeenRequest",
    "Simulator",
    "SimulatorServer",
    "SimulatorStats",
    "Slow",
    "Stall",
    "Status",
    "StreamError",
    "parse_fault",
    "run_simulator",
]

ANTHROPIC_MESSAGES = "/v1/messages"
ANTHROPIC_COUNT_TOKENS = "/v1/messages/count_tokens"
OPENAI_CHAT = "/v1/chat/completions"

Sleep = Callable[[float], Awaitable[None]]

#: Response header limits reported when no ``rpm`` is set (requests per minute, tokens per minute).
DEFAULT_RPM = 4000
INPUT_TPM = 400_000
OUTPUT_TPM = 80_000
# Headers never kept in ``Simulator.requests`` (secrets stay out of test logs).
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "cookie"})


class ConnectionDropped(Exception):
    """Raised inside the ASGI send loop to drop the connection (a :class:`Drop` fault).

    uvicorn closes the connection mid-answer; under ``httpx.ASGITransport``
    the exception reaches the client.
    """


@dataclass(frozen=True)
class SeenRequest:
    """One request the simulator answered: its endpoint path, JSON body, headers (secrets removed) and fault."""

    seq: int
    path: str
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    stream: bool
    fault: str


@dataclass(frozen=True)
class SimulatorStats:
    """Counters since the simulator was made (or ``reset``).

    ``total`` requests; ``endpoints`` by path (``"/v1/messages"``, ...);
    ``faults`` by what was served: ``"ok"``, a status (``"429"``),
    ``"slow"``, ``"drop"``, ``"stall"``, ``"stream_error"``, ``"rpm"`` (429
    from the simulator's own ``rpm`` limit) and ``"invalid"`` (400 for a
    malformed request).
    """

    total: int
    endpoints: Mapping[str, int]
    faults: Mapping[str, int]
    streams: int


@dataclass
class _Plan:
    seq: int
    fault: Fault
    label: str
    rate: RateSnapshot
    now: float
    retry_after: float | None = None


def _duration(name: str, value: float | str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r}: {exc}") from exc
    if seconds < 0:
        raise ValueError(f"{name}={value!r}: must be >= 0")
    return seconds


_OPTIONS = ("fail_rate", "faults", "latency", "first_byte_latency", "chunk_delay", "retry_after", "rpm")


def _validate(
    *,
    fail_rate: float,
    faults: Iterable[FaultSpec],
    latency: float | str,
    first_byte_latency: float | str,
    chunk_delay: float | str,
    retry_after: float | str,
    rpm: int | None,
) -> dict[str, Any]:
    """The options as stored, or ValueError naming the option, its value and what is allowed."""
    if isinstance(fail_rate, bool) or not isinstance(fail_rate, (int, float)) or not 0.0 <= fail_rate <= 1.0:
        raise ValueError(f"fail_rate={fail_rate!r}: a probability between 0 and 1")
    parsed = parse_faults(faults)
    if fail_rate and not parsed:
        raise ValueError("faults=(): fail_rate > 0 needs at least one fault to draw")
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1):
        raise ValueError(f"rpm={rpm!r}: a whole number of requests per minute >= 1, or None")
    return {
        "fail_rate": float(fail_rate),
        "faults": parsed,
        "latency": _duration("latency", latency),
        "first_byte_latency": _duration("first_byte_latency", first_byte_latency),
        "chunk_delay": _duration("chunk_delay", chunk_delay),
        "retry_after": _duration("retry_after", retry_after),
        "rpm": rpm,
    }


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(math.ceil(wall), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retry_after_header(seconds: float) -> str:
    # Whole seconds as the providers send them; a fraction only when configured so (the SDKs parse floats).
    return f"{seconds:g}"


class Simulator:
    """A fake Anthropic / OpenAI provider with faults; ``.app`` is the ASGI app.

    Options (keyword-only):

    - ``fail_rate`` (0.0): probability that a request without a scripted fault
      gets one of ``faults`` (default 429, 529, 500), drawn with ``rng``.
    - ``latency`` (0): seconds (or ``"50ms"``) before every answer starts.
    - ``first_byte_latency`` (0): streams only, between the headers and the first event.
    - ``chunk_delay`` (0): streams only, between events.
    - ``seed`` / ``rng``: the randomness (``random.Random(seed)`` unless ``rng`` is given).
    - ``retry_after`` (1.0): seconds sent in ``retry-after`` on 429 and 529 faults.
    - ``rpm`` (None): requests per minute; over it the simulator answers 429 with
      ``retry-after`` until the minute ends. Without it the headers report 4000.
    - ``reply``: ``reply(prompt, body) -> text``; default ``"Simulated reply to: <prompt>"``.
    - ``clock`` (the system clock): wall time for rate windows, ``created`` and reset headers.
    - ``sleep``: how latency waits (default ``clock.asleep``, i.e. ``asyncio.sleep``
      on the system clock); a ``FakeClock`` makes latency instant and visible on it.
    """

    def __init__(
        self,
        *,
        fail_rate: float = 0.0,
        faults: Iterable[FaultSpec] = ("429", "529", "500"),
        latency: float | str = 0.0,
        first_byte_latency: float | str = 0.0,
        chunk_delay: float | str = 0.0,
        seed: int | None = None,
        rng: random.Random | None = None,
        retry_after: float | str = 1.0,
        rpm: int | None = None,
        reply: ReplyFn | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep | None = None,
    ) -> None:
        self.fail_rate: float
        self.faults: tuple[Fault, ...]
        self.latency: float
        self.first_byte_latency: float
        self.chunk_delay: float
        self.retry_after: float
        self.rpm: int | None
        values = _validate(
            fail_rate=fail_rate,
            faults=faults,
            latency=latency,
            first_byte_latency=first_byte_latency,
            chunk_delay=chunk_delay,
            retry_after=retry_after,
            rpm=rpm,
        )
        for name, value in values.items():
            setattr(self, name, value)
        self.rng = rng if rng is not None else random.Random(seed)
        self.reply: ReplyFn = reply or default_reply
        self.clock = clock
        self.sleep: Sleep = sleep or clock.asleep
        self._lock = threading.Lock()
        self._script: deque[Fault] = deque()
        self._reset_counters()
        self.app: ASGIApp = Router(
            routes=[
                Route(ANTHROPIC_MESSAGES, self._messages, methods=["POST"]),
                Route(ANTHROPIC_COUNT_TOKENS, self._count_tokens, methods=["POST"]),
                Route(OPENAI_CHAT, self._chat, methods=["POST"]),
            ]
        )

    def __repr__(self) -> str:
        return (
            f"Simulator(fail_rate={self.fail_rate}, latency={self.latency}, rpm={self.rpm}, "
            f"scripted={len(self._script)}, requests={self._seq})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # -- control -----------------------------------------------------------------------------

    def configure(self, **options: Any) -> Simulator:
        """Change options while serving (validated as in the constructor), e.g. ``sim.configure(fail_rate=0.5)``.

        Accepts ``fail_rate``, ``faults``, ``latency``, ``first_byte_latency``,
        ``chunk_delay``, ``retry_after`` and ``rpm``; a new ``rpm`` applies to
        the current window.
        """
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"configure(): unknown option(s) {', '.join(unknown)}; allowed: {', '.join(_OPTIONS)}")
        current: dict[str, Any] = {name: getattr(self, name) for name in _OPTIONS}
        values = _validate(**{**current, **options})
        with self._lock:
            for name in options:
                setattr(self, name, values[name])
            self._window.limit = self.rpm or DEFAULT_RPM
            self._window.enforce = self.rpm is not None
        return self

    def script(self, *faults: FaultSpec) -> Simulator:
        """Queue faults for the next requests, one each, before ``fail_rate`` applies again.

        ``sim.script("429", "529", "ok", "drop")``, or fault objects such as
        ``Status(429, retry_after=2)``, ``Slow(0.5)``, ``Drop(after=4)``.
        """
        parsed = parse_faults(faults)
        with self._lock:
            self._script.extend(parsed)
        return self

    @property
    def pending(self) -> int:
        """Scripted faults not played yet."""
        return len(self._script)

    def reset(self) -> None:
        """Forget counters, the request log, the rate window and the script."""
        with self._lock:
            self._script.clear()
            self._reset_counters()

    def _reset_counters(self) -> None:
        self._seq = 0
        self._endpoints: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._streams = 0
        self._log: list[SeenRequest] = []
        self._window = RateWindow(
            limit=self.rpm or DEFAULT_RPM,
            enforce=self.rpm is not None,
            input_tokens_limit=INPUT_TPM,
            output_tokens_limit=OUTPUT_TPM,
        )

    @property
    def stats(self) -> SimulatorStats:
        with self._lock:
            return SimulatorStats(
                total=sum(self._endpoints.values()),
                endpoints=MappingProxyType(dict(self._endpoints)),
                faults=MappingProxyType(dict(self._faults)),
                streams=self._streams,
            )

    @property
    def requests(self) -> list[SeenRequest]:
        """Every request answered, in order (a copy)."""
        with self._lock:
            return list(self._log)

    # -- per request -------------------------------------------------------------------------

    def _record(self, request: Request, body: Mapping[str, Any], stream: bool, label: str) -> int:
        # Called with the lock held.
        self._seq += 1
        self._endpoints[request.url.path] += 1
        self._faults[label] += 1
        self._streams += stream
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
        self._log.append(SeenRequest(self._seq, request.url.path, body, headers, stream, label))
        return self._seq

    def _plan(self, request: Request, body: Mapping[str, Any], stream: bool, reply: Reply | None) -> _Plan:
        with self._lock:
            now = self.clock.time()
            retry_after: float | None = None
            if not self._window.admit(now):
                fault: Fault = Status(429)
                label = "rpm"
                retry_after = float(math.ceil(self._window.retry_after(now)))
            else:
                if self._script:
                    fault = self._script.popleft()
                elif self.fail_rate and self.rng.random() < self.fail_rate:
                    fault = self.rng.choice(self.faults)
                else:
                    fault = Ok()
                label = fault.name
                if isinstance(fault, Status):
                    if fault.retry_after == DEFAULT:
                        retry_after = self.retry_after if fault.code in (429, 529) else None
                    else:
                        retry_after = fault.retry_after
                elif reply is not None:
                    self._window.input_tokens += reply.input_tokens
                    self._window.output_tokens += reply.output_tokens
            seq = self._record(request, body, stream, label)
            return _Plan(seq, fault, label, self._window.snapshot(), now, retry_after)

    def _invalid(self, request: Request, body: Mapping[str, Any]) -> tuple[int, RateSnapshot, float]:
        with self._lock:
            now = self.clock.time()
            self._window.roll(now)
            seq = self._record(request, body, False, "invalid")
            return seq, self._window.snapshot(), now

    def _error(self, plan: _Plan, stream: bool) -> tuple[int, str | None, str | None, float | None] | None:
        """(status, error type, message, retry-after) when the plan is an error answer."""
        fault = plan.fault
        if isinstance(fault, Status):
            return fault.code, None, fault.message, plan.retry_after
        if isinstance(fault, StreamError) and not stream:
            return fault.status, fault.error_type, None, self.retry_after if fault.status in (429, 529) else None
        return None

    async def _wait(self, plan: _Plan) -> None:
        delay = self.latency + (plan.fault.seconds if isinstance(plan.fault, Slow) else 0.0)
        if delay > 0:
            await self.sleep(delay)

    # -- Anthropic ---------------------------------------------------------------------------

    def _anthropic_headers(self, seq: int, rate: RateSnapshot, now: float) -> dict[str, str]:
        reset = _rfc3339(rate.reset_at)
        p = "anthropic-ratelimit-"
        return {
            "request-id": f"req_sim_{seq:08d}",
            p + "requests-limit": str(rate.limit),
            p + "requests-remaining": str(rate.remaining),
            p + "requests-reset": reset,
            p + "tokens-limit": str(rate.input_tokens_limit + rate.output_tokens_limit),
            p + "tokens-remaining": str(rate.input_tokens_remaining + rate.output_tokens_remaining),
            p + "tokens-reset": reset,
            p + "input-tokens-limit": str(rate.input_tokens_limit),
            p + "input-tokens-remaining": str(rate.input_tokens_remaining),
            p + "input-tokens-reset": reset,
            p + "output-tokens-limit": str(rate.output_tokens_limit),
            p + "output-tokens-remaining": str(rate.output_tokens_remaining),
            p + "output-tokens-reset": reset,
        }

    async def _anthropic_request(
        self, request: Request, *, count_tokens: bool
    ) -> tuple[dict[str, Any], Response | None]:
        raw = await request.body()
        try:
            data = content.parse_json(raw)
            content.validate_anthropic(data, count_tokens=count_tokens)
        except InvalidRequest as exc:
            seq, rate, now = self._invalid(request, {})
            return {}, JSONResponse(
                content.anthropic_error(400, str(exc)), 400, headers=self._anthropic_headers(seq, rate, now)
            )
        return data, None

    async def _messages(self, request: Request) -> Response:
        data, invalid = await self._anthropic_request(request, count_tokens=False)
        if invalid is not None:
            return invalid
        stream = bool(data.get("stream"))
        text = self.reply(content.last_user_text(data), data)
        reply = content.make_reply(
            text, input_tokens=content.anthropic_input_tokens(data), max_tokens=int(data["max_tokens"])
        )
        plan = self._plan(request, data, stream, reply)
        await self._wait(plan)
        headers = self._anthropic_headers(plan.seq, plan.rate, plan.now)
        error = self._error(plan, stream)
        if error is not None:
            code, error_type, message, retry_after = error
            return JSONResponse(
                content.anthropic_error(code, message, error_type),
                code,
                headers=_with_retry_after(headers, retry_after),
            )
        fault = plan.fault
        message_id = f"msg_sim_{plan.seq:08d}"
        model = str(data["model"])
        if stream:
            cut = (
                content.anthropic_error_event(fault.status, fault.error_type)
                if isinstance(fault, StreamError)
                else None
            )
            return _Chunked(
                content.anthropic_events(reply, message_id=message_id, model=model),
                headers=headers,
                media_type="text/event-stream",
                fault=fault,
                error_chunk=cut,
                first_delay=self.first_byte_latency,
                chunk_delay=self.chunk_delay,
                sleep=self.sleep,
            )
        return self._json(content.anthropic_message(reply, message_id=message_id, model=model), headers, fault)

    async def _count_tokens(self, request: Request) -> Response:
        data, invalid = await self._anthropic_request(request, count_tokens=True)
        if invalid is not None:
            return invalid
        plan = self._plan(request, data, False, None)
        await self._wait(plan)
        headers = self._anthropic_headers(plan.seq, plan.rate, plan.now)
        error = self._error(plan, False)
        if error is not None:
            code, error_type, message, retry_after = error
            return JSONResponse(
                content.anthropic_error(code, message, error_type),
                code,
                headers=_with_retry_after(headers, retry_after),
            )
        return self._json({"input_tokens": content.anthropic_input_tokens(data)}, headers, plan.fault)

    # -- OpenAI ------------------------------------------------------------------------------

    def _openai_headers(self, seq: int, rate: RateSnapshot, now: float) -> dict[str, str]:
        reset = _go_duration(max(0.0, rate.reset_at - now))
        return {
            "x-request-id": f"req_sim_{seq:08d}",
            "x-ratelimit-limit-requests": str(rate.limit),
            "x-ratelimit-remaining-requests": str(rate.remaining),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-limit-tokens": str(rate.input_tokens_limit + rate.output_tokens_limit),
            "x-ratelimit-remaining-tokens": str(rate.input_tokens_remaining + rate.output_tokens_remaining),
            "x-ratelimit-reset-tokens": reset,
        }

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            data = content.parse_json(raw)
            content.validate_openai(data)
        except InvalidRequest as exc:
            seq, rate, now = self._invalid(request, {})
            return JSONResponse(content.openai_error(400, str(exc)), 400, headers=self._openai_headers(seq, rate, now))
        stream = bool(data.get("stream"))
        limit = data.get("max_completion_tokens") or data.get("max_tokens")
        text = self.reply(content.last_user_text(data), data)
        reply = content.make_reply(
            text, input_tokens=content.openai_input_tokens(data), max_tokens=int(limit) if limit else None
        )
        plan = self._plan(request, data, stream, reply)
        await self._wait(plan)
        headers = self._openai_headers(plan.seq, plan.rate, plan.now)
        error = self._error(plan, stream)
        if error is not None:
            code, _, message, retry_after = error
            return JSONResponse(
                content.openai_error(code, message), code, headers=_with_retry_after(headers, retry_after)
            )
        fault = plan.fault
        completion_id = f"chatcmpl-sim{plan.seq:08d}"
        model = str(data["model"])
        created = int(plan.now)
        if stream:
            options = data.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            cut = content.openai_error_chunk(fault.status) if isinstance(fault, StreamError) else None
            return _Chunked(
                content.openai_chunks(
                    reply, completion_id=completion_id, model=model, created=created, include_usage=include_usage
                ),
                headers=headers,
                media_type="text/event-stream",
                fault=fault,
                error_chunk=cut,
                first_delay=self.first_byte_latency,
                chunk_delay=self.chunk_delay,
                sleep=self.sleep,
            )
        return self._json(
            content.openai_completion(reply, completion_id=completion_id, model=model, created=created), headers, fault
        )

    # -- shared ------------------------------------------------------------------------------

    def _json(self, body: Mapping[str, Any], headers: dict[str, str], fault: Fault) -> Response:
        response = JSONResponse(body, 200, headers=headers)
        if not isinstance(fault, (Drop, Stall)):
            return response
        # A plain answer dropped or stalled half-way: the declared length is the full body.
        full = bytes(response.body)
        half = len(full) // 2
        headers = {**headers, "content-length": str(len(full))}
        return _Chunked(
            [full[:half], full[half:]],
            headers=headers,
            media_type="application/json",
            fault=fault,
            error_chunk=None,
            first_delay=0.0,
            chunk_delay=0.0,
            sleep=self.sleep,
        )


def _with_retry_after(headers: dict[str, str], seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return headers
    return {**headers, "retry-after": _retry_after_header(seconds)}


def _go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"1m30s"``, ``"6s"``, ``"250ms"``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class _Chunked(Response):
    """A 200 answer sent chunk by chunk, with delays, that a fault can drop, stall or cut with an error event."""

    def __init__(
        self,
        chunks: Sequence[bytes],
        *,
        headers: Mapping[str, str],
        media_type: str,
        fault: Fault,
        error_chunk: bytes | None,
        first_delay: float,
        chunk_delay: float,
        sleep: Sleep,
    ) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._chunks = chunks
        self._fault = fault
        self._error_chunk = error_chunk
        self._first_delay = first_delay
        self._chunk_delay = chunk_delay
        self._sleep = sleep
        # The chunk before which the fault acts; never after the last chunk, so the answer is incomplete.
        after = fault.after if isinstance(fault, (Drop, Stall, StreamError)) else None
        self._cut = min(after, len(chunks) - 1) if after is not None else -1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        fault = self._fault
        for i, chunk in enumerate(self._chunks):
            if i == self._cut:
                if isinstance(fault, Drop):
                    raise ConnectionDropped(f"simulated connection drop after {i} chunks")
                if isinstance(fault, StreamError) and self._error_chunk is not None:
                    await send({"type": "http.response.body", "body": self._error_chunk, "more_body": False})
                    return
                if isinstance(fault, Stall) and await _stall(fault.seconds, receive, self._sleep):
                    return
            delay = self._first_delay if i == 0 else self._chunk_delay
            if delay > 0:
                await self._sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stall(seconds: float, receive: Receive, sleep: Sleep) -> bool:
    """Wait ``seconds`` or until the client disconnects; True if it did."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    waiter = asyncio.ensure_future(disconnected())
    sleeper = asyncio.ensure_future(sleep(seconds))
    try:
        done, _ = await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    return waiter in done


# -- serving ---------------------------------------------------------------------------------


class _QuietDrops(logging.Filter):
    """uvicorn logs an app exception with a traceback; a simulated drop is not one worth reading."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def quiet_simulated_drops() -> None:
    """Keep uvicorn from logging a traceback for each :class:`Drop` (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free port); OSError names the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class SimulatorServer:
    """A simulator served by uvicorn in a background thread (see :func:`run_simulator`)."""

    simulator: Simulator
    host: str = "127.0.0.1"
    port: int = 0
    _server: Any = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        """For the Anthropic SDK (``ANTHROPIC_BASE_URL``): ``http://127.0.0.1:PORT``."""
        return _url(self.host, self.port)

    @property
    def openai_base_url(self) -> str:
        """For the OpenAI SDK (``OPENAI_BASE_URL``): ``http://127.0.0.1:PORT/v1``."""
        return self.base_url + "/v1"

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        """Bind, start uvicorn in a daemon thread and wait until it accepts connections."""
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("this simulator server is already started")
        quiet_simulated_drops()
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.simulator.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name=f"resilient-simulator-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the simulator on {self.base_url} stopped while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the simulator on {self.base_url} did not start within {timeout}s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for the thread (forcing it after ``timeout``)."""
        if self._thread is None or self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def run_simulator(
    sim: Simulator | None = None, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0
) -> Iterator[SimulatorServer]:
    """Serve ``sim`` (default ``Simulator()``) on ``host:port`` (default a free loopback port) for the block.

    Yields a :class:`SimulatorServer` with ``base_url``, ``openai_base_url``,
    ``simulator`` and ``stop()``; it accepts connections when the block starts.
    """
    server = SimulatorServer(sim if sim is not None else Simulator(), host, port)
    server.start(startup_timeout)
    try:
        yield server
    finally:
        server.stop()
