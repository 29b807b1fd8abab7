"""What the chaos scenarios are built from: a loopback TCP proxy, a fleet of the FastAPI example, a bounded load.

Everything runs on 127.0.0.1, in processes and threads the test starts and stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi_app"

#: Secrets the scenarios hand to the app; none may come back in an answer, a log line or a metric.
API_KEY = "sk-ant-api03-CHAOSsecretKEY0123456789abcdefghijklmnopqrstuvwxyzABCDEF-1234567890AA"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the proxy


class TcpProxy:
    """A loopback TCP proxy in front of one upstream, run on its own event loop in a thread.

    ``mode``: ``"pass"`` forwards bytes (after ``delay`` seconds per chunk);
    ``"drop"`` accepts and closes at once; ``"blackhole"`` accepts and never
    answers. :meth:`cut` closes every open connection. ``attempts`` holds the
    monotonic time of every connection accepted, so a test can bound how
    often the app tries to reach a store that is down.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.mode = "pass"
        self.delay = 0.0
        self.attempts: list[float] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        self._loop.run_until_complete(serve())
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            # Connections still being served end here, not when the garbage collector finds them
            # pending on a stopped loop (asyncio logs "Task was destroyed but it is pending" then).
            here = asyncio.current_task()
            serving = [task for task in asyncio.all_tasks() if task is not here]
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set(self, mode: str = "pass", delay: float = 0.0) -> None:
        if mode not in ("pass", "drop", "blackhole"):
            raise ValueError(f"proxy mode {mode!r}: 'pass', 'drop' or 'blackhole'")
        self.mode, self.delay = mode, delay

    def cut(self) -> None:
        """Close every connection open now (the client sees a reset mid-conversation)."""

        async def close() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)

    def attempts_since(self, start: float) -> int:
        return sum(1 for t in list(self.attempts) if t >= start)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts.append(time.monotonic())
        self._writers.add(writer)
        try:
            if self.mode == "drop":
                writer.transport.abort()
                return
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "drop":
                    writer.transport.abort()
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()


# --------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    """The FastAPI example served by ``workers`` uvicorn workers; ``log`` holds what they wrote."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_dir: Path
    audit: Path
    pids: set[int]

    def client(self, timeout: float = 15) -> httpx.Client:
        # A new connection per request, so the kernel spreads requests over the workers.
        return httpx.Client(base_url=self.base, timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))

    def get(self, path: str, timeout: float = 15) -> httpx.Response:
        with self.client(timeout) as http:
            return http.get(path)

    def ready(self) -> tuple[int, dict[str, Any]]:
        answer = self.get("/ready")
        return answer.status_code, answer.json()

    def metrics(self) -> str:
        return self.get("/metrics").text

    def in_progress(self) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("resilient_http_requests_in_progress") and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_and_fds(self) -> dict[int, tuple[int, int]]:
        """Resident memory (kB) and open descriptors of each worker, from /proc."""
        found: dict[int, tuple[int, int]] = {}
        for pid in self.pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                found[pid] = (rss, len(os.listdir(f"/proc/{pid}/fd")))
            except (OSError, StopIteration):
                continue
        return found


@contextlib.contextmanager
def run_fleet(
    tmp: Path,
    provider_url: str,
    store: str,
    *,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    uvicorn_args: Sequence[str] = (),
) -> Iterator[Fleet]:
    """Start the example with ``workers`` uvicorn workers on a free port, wait until each answers, stop it after."""
    port = free_port()
    metrics_dir = tmp / f"metrics-{port}"
    metrics_dir.mkdir()
    audit = tmp / f"audit-{port}.jsonl"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RESILIENT_", "PROMETHEUS_"))}
    environment.update(
        ANTHROPIC_BASE_URL=provider_url,
        ANTHROPIC_API_KEY=API_KEY,
        RESILIENT_STORE=store,
        RESILIENT_KEY_PREFIX=f"chaos-{port}:",
        RESILIENT_AUDIT__PATH=str(audit),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        PYTHONUNBUFFERED="1",
    )
    environment.update(env or {})
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLE), "app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", *uvicorn_args]
    log = tmp / f"uvicorn-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    fleet = Fleet(base, process, log, metrics_dir, audit, set())
    try:
        deadline = time.monotonic() + 60
        with fleet.client(timeout=5) as http:
            while len(fleet.pids) < workers:
                if process.poll() is not None:
                    raise RuntimeError(f"uvicorn exited: {log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers seen: {fleet.pids}; log: {log.read_text()[-3000:]}")
                try:
                    fleet.pids.add(http.get("/").json()["worker_pid"])
                except httpx.HTTPError:
                    time.sleep(0.1)  # waiting for real processes to start
        yield fleet
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Answer:
    """One request of the load: when it started (monotonic), how long it took, what came back."""

    started: float
    seconds: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    content_type: str
    body: str
    error: str = ""

    @property
    def designed(self) -> bool:
        """A whole 2xx, or a refusal in the designed shape: a 429/503/504 problem+json."""
        if self.error:
            return False
        if 200 <= self.status < 300:
            return True
        return self.status in (429, 503, 504) and self.content_type.startswith("application/problem+json")

    @property
    def lost(self) -> bool:
        return not self.designed


RequestFn = Callable[[int], tuple[str, str, Mapping[str, str], Any]]


def chat_request(tenants: int = 200, stream_every: int = 0, repeat_every: int = 4) -> RequestFn:
    """Requests to the example's chat API: many tenants; every ``repeat_every``-th one a question asked before."""

    def make(i: int) -> tuple[str, str, Mapping[str, str], Any]:
        tenant = f"t{i % tenants}"
        question = f"question {i // repeat_every}" if repeat_every and i % repeat_every == 0 else f"question {i}"
        path = "/v1/chat/stream" if stream_every and i % stream_every == 0 else "/v1/chat"
        return "POST", path, {"x-tenant-id": tenant}, {"message": question, "max_tokens": 32}

    return make


@dataclass
class Load:
    """``concurrency`` clients sending requests until ``max_requests`` are answered or ``max_seconds`` pass.

    Runs in a thread (its own event loop), so the test thread injects faults
    meanwhile; every answer is recorded. :meth:`wait_answers` lets the test
    act on the load's progress rather than on a guess of how long it takes.
    """

    base: str
    request: RequestFn
    concurrency: int = 16
    max_requests: int = 1000
    max_seconds: float = 30.0
    timeout: float = 15.0
    answers: list[Answer] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _stop: bool = False

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="chaos-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True

    def join(self) -> list[Answer]:
        assert self._thread is not None
        self._thread.join(self.max_seconds + self.timeout + 30)
        assert not self._thread.is_alive(), "the load did not end"
        return self.answers

    def run(self) -> list[Answer]:
        return self.start().join()

    def wait_answers(self, count: int, timeout: float = 60) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.answers) >= count or self.done, timeout):
                raise AssertionError(f"{len(self.answers)} answers after {timeout}s, waited for {count}")

    def wait_until(self, moment: float) -> None:
        """Until the monotonic ``moment`` (the load answering meanwhile), or the load ended."""
        with self._cond:
            self._cond.wait_for(lambda: time.monotonic() >= moment or self.done, max(0.0, moment - time.monotonic()))

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    async def _main(self) -> None:
        counter = iter(range(self.max_requests))
        end = time.monotonic() + self.max_seconds
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout (httpx's default is also 5 s):
        # otherwise a request sent on a connection the server is closing at that moment gets a reset.
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(base_url=self.base, timeout=self.timeout, limits=limits) as http:

            async def client() -> None:
                for i in counter:
                    if self._stop or time.monotonic() >= end:
                        return
                    method, path, headers, body = self.request(i)
                    answer = await _send(http, method, path, headers, body)
                    with self._cond:
                        self.answers.append(answer)
                        self._cond.notify_all()

            await asyncio.gather(*(client() for _ in range(self.concurrency)))
        with self._cond:
            self._cond.notify_all()


async def _send(http: httpx.AsyncClient, method: str, path: str, headers: Mapping[str, str], body: Any) -> Answer:
    started = time.monotonic()
    try:
        async with http.stream(method, path, headers=headers, json=body) as response:
            text = (await response.aread()).decode("utf-8", "replace")
        if response.headers.get("content-type", "").startswith("text/event-stream") and '"type": "done"' not in text:
            return Answer(started, time.monotonic() - started, response.status_code, "", text[-300:], "stream cut")
        return Answer(
            started, time.monotonic() - started, response.status_code, response.headers.get("content-type", ""), text
        )
    except httpx.HTTPError as exc:
        return Answer(started, time.monotonic() - started, 0, "", "", f"{type(exc).__name__}: {exc}")


def summary(answers: list[Answer]) -> str:
    """Statuses and the first few answers that were not designed, for an assertion message."""
    statuses = Counter(a.status for a in answers)
    bad = [a for a in answers if a.lost][:5]
    t0 = min((a.started for a in answers), default=0.0)
    shown = [(f"at {a.started - t0:.1f}s, took {a.seconds:.2f}s", a.status, a.error, a.body[:300]) for a in bad]
    return f"statuses {dict(statuses)}; lost e.g. {shown}"


def problem_titles(answers: list[Answer]) -> Counter[str]:
    titles: Counter[str] = Counter()
    for a in answers:
        if a.content_type.startswith("application/problem+json"):
            titles[f"{a.status} {json.loads(a.body).get('title')}"] += 1
    return titles


def leaked(texts: list[str], secrets: list[str]) -> int:
    """How many of ``texts`` contain one of ``secrets``."""
    return sum(1 for text in texts if any(secret in text for secret in secrets))
