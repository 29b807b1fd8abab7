"""Requests/s and p99 latency of the web adapters on loopback, against bare apps and the usual peers.

One small JSON endpoint (``GET /items/{item_id}``), served by a real server
in a subprocess and loaded with ``wrk`` (one thread, 32 connections,
``--latency``) from another process:

ASGI, uvicorn (one worker, access log off):

* bare Starlette (the floor);
* Starlette + ``resilient.asgi.ResilientMiddleware`` with every HTTP feature
  on: request id (read and echoed), tenant from a header, a route rate limit
  counted per route and client (``1000000/minute``: never refused) on the
  memory store, HTTP events through the metrics plugin into a Prometheus
  registry (route template, method, status, duration, in-progress gauge);
* the same without the metrics plugin (no observer: no events are built),
  to show what the adapter itself costs and what the metrics cost;
* Starlette + slowapi (``SlowAPIASGIMiddleware``, the same default limit,
  memory storage) + prometheus-fastapi-instrumentator: the same job done by
  the peers people use today. What differs: the instrumentator's defaults
  make nine value updates per request (a request counter, request and
  response size summaries, two duration histograms) against our seven, and
  the peers read and echo no request id, set no request context and keep no
  in-progress gauge; slowapi keys the limit by address, ours by the header
  tenant.

WSGI, gunicorn (one ``gthread`` worker, 8 threads, so keep-alive works):

* bare Flask; Flask + ``resilient.flask.Resilient`` (the same features, then
  without the metrics plugin); Flask + Flask-Limiter + prometheus-flask-exporter.

Rows are run in interleaved rounds (every server once per round, each
started fresh, warmed for one second); the best round's requests/s is kept
with that round's p99. Requests/s swing with whatever else the machine runs,
so the server's CPU time per request (user + system, of the server process
and its workers, over the timed run; the lowest round kept) is printed too:
on one core, capacity is its inverse, and it moves much less with load.
The server is pinned to CPU 0 and wrk to CPU 1 when
``taskset`` is there and there are two CPUs. Without ``wrk``, a bounded
httpx loop (one connection) stands in, and the table says so. The GET cache
is off: it would measure the cache, not the middleware.

Run: ``.venv/bin/python benchmarks/bench_http.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import _harness

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = "/items/42"
LIMIT = "1000000/minute"
TARGET = 0.85


# ---------------------------------------------------------------------------- the apps (imported by the servers)


def _items(request: Any) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"id": request.path_params["item_id"], "name": "widget"})


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def item(request: Any) -> Any:
        return _items(request)

    return Starlette(routes=[Route("/items/{item_id}", item)])


def _pipeline() -> Any:
    import prometheus_client

    import resilient_metrics
    from resilient import Pipeline

    with resilient_metrics.use_registry(prometheus_client.CollectorRegistry()):
        return Pipeline(plugins=[resilient_metrics], discover=False, env={})


def asgi_bare() -> Any:
    return _starlette()


def asgi_resilient() -> Any:
    from resilient.asgi import ResilientMiddleware

    app = _starlette()
    app.add_middleware(ResilientMiddleware, pipeline=_pipeline(), tenant="header:x-tenant-id", rate_limits={"*": LIMIT})
    return app


def asgi_resilient_no_metrics() -> Any:
    from resilient import Pipeline
    from resilient.asgi import ResilientMiddleware

    app = _starlette()
    pipeline = Pipeline(plugins=[], discover=False, env={})
    app.add_middleware(ResilientMiddleware, pipeline=pipeline, tenant="header:x-tenant-id", rate_limits={"*": LIMIT})
    return app


def asgi_peers() -> Any:
    from prometheus_fastapi_instrumentator import Instrumentator
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    app = _starlette()
    app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[LIMIT], storage_uri="memory://")
    app.add_middleware(SlowAPIASGIMiddleware)
    Instrumentator().instrument(app).expose(app)
    return app


def _flask() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return {"id": item_id, "name": "widget"}

    return app


def flask_bare() -> Any:
    return _flask()


def flask_resilient() -> Any:
    from resilient.flask import Resilient

    app = _flask()
    Resilient(app, pipeline=_pipeline(), tenant="header:x-tenant-id", rate_limits={"*": LIMIT})
    return app


def flask_resilient_no_metrics() -> Any:
    from resilient import Pipeline
    from resilient.flask import Resilient

    app = _flask()
    pipeline = Pipeline(plugins=[], discover=False, env={})
    Resilient(app, pipeline=pipeline, tenant="header:x-tenant-id", rate_limits={"*": LIMIT})
    return app


def flask_peers() -> Any:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address
    from prometheus_flask_exporter import PrometheusMetrics

    app = _flask()
    Limiter(get_remote_address, app=app, default_limits=[LIMIT], storage_uri="memory://")
    PrometheusMetrics(app)
    return app


# ---------------------------------------------------------------------------- servers and load


@dataclass
class Row:
    label: str
    family: str  # "asgi" or "wsgi"
    factory: str
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU time per request

    @property
    def best(self) -> tuple[float, float]:
        i = max(range(len(self.rps)), key=self.rps.__getitem__)
        return self.rps[i], self.p99_ms[i]

    @property
    def cpu(self) -> float:
        return min(self.cpu_us)


ROWS = [
    Row("bare Starlette", "asgi", "asgi_bare"),
    Row("Starlette + resilient ASGI middleware", "asgi", "asgi_resilient"),
    Row("Starlette + resilient, no metrics plugin", "asgi", "asgi_resilient_no_metrics"),
    Row("Starlette + slowapi + prometheus-fastapi-instrumentator", "asgi", "asgi_peers"),
    Row("bare Flask", "wsgi", "flask_bare"),
    Row("Flask + resilient extension", "wsgi", "flask_resilient"),
    Row("Flask + resilient, no metrics plugin", "wsgi", "flask_resilient_no_metrics"),
    Row("Flask + Flask-Limiter + prometheus-flask-exporter", "wsgi", "flask_peers"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def _server(row: Row, port: int) -> subprocess.Popen[bytes]:
    py = sys.executable
    if row.family == "asgi":
        cmd = [py, "-m", "uvicorn", "--factory", f"bench_http:{row.factory}", "--app-dir", HERE]
        cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    else:
        cmd = [py, "-m", "gunicorn", "--chdir", HERE, "-k", "gthread", "--threads", "8", "-w", "1"]
        cmd += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", f"bench_http:{row.factory}()"]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    return subprocess.Popen([*_pin(0), *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    import httpx

    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"server for {url} did not start")
        time.sleep(0.05)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (a gunicorn worker is a child)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return total
    return total + sum(_cpu_seconds(c) for c in children)


def _wrk(url: str, seconds: float) -> tuple[float, float, int]:
    out = subprocess.run(
        [*_pin(1), "wrk", "-t1", "-c32", f"-d{seconds:g}s", "--latency", "-H", "x-tenant-id: acme", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"wrk saw errors on {url}:\n{out}")
    return rps, float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan"), count


def _httpx_loop(url: str, seconds: float) -> tuple[float, float, int]:
    import httpx

    latencies: list[float] = []
    end = time.monotonic() + seconds
    with httpx.Client(headers={"x-tenant-id": "acme"}) as client:
        while time.monotonic() < end and len(latencies) < 1_000_000:
            t0 = time.perf_counter()
            client.get(url).raise_for_status()
            latencies.append(time.perf_counter() - t0)
    latencies.sort()
    return len(latencies) / seconds, latencies[int(len(latencies) * 0.99)] * 1e3, len(latencies)


def measure(row: Row, seconds: float, load: Any) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    proc = _server(row, port)
    try:
        _wait_ready(proc, url)
        load(url, 1.0)  # warm-up
        cpu = _cpu_seconds(proc.pid)
        rps, p99, count = load(url, seconds)
        row.cpu_us.append((_cpu_seconds(proc.pid) - cpu) / max(count, 1) * 1e6)
        row.rps.append(rps)
        row.p99_ms.append(p99)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = _harness.parse_args(__doc__, argv)
    rounds, seconds = (1, 2.0) if args.quick else (5, 3.0)
    tool = "wrk" if shutil.which("wrk") else "httpx"
    load = _wrk if tool == "wrk" else _httpx_loop
    names = ["starlette", "uvicorn", "flask", "gunicorn", "slowapi", "prometheus-fastapi-instrumentator"]
    names += ["flask-limiter", "prometheus-flask-exporter", "limits", "prometheus-client"]
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    env = _harness.environment(versions)
    print(_harness.environment_line(env))
    load_line = "wrk -t1 -c32 --latency" if tool == "wrk" else "httpx, one connection (wrk not installed)"
    print(f"{rounds} rounds of {seconds:g} s per server, best round kept; load: {load_line}")
    if args.quick:
        print("(--quick: smoke run, not meaningful numbers)")
    for r in range(rounds):
        for row in ROWS:
            _harness.progress(f"round {r + 1}/{rounds}: {row.label}")
            measure(row, seconds, load)

    targets = _harness.Targets()
    lines = []
    bare = {"asgi": ROWS[0].best[0], "wsgi": ROWS[4].best[0]}
    cpu_bare = {"asgi": ROWS[0].cpu, "wsgi": ROWS[4].cpu}
    for row in ROWS:
        rps, p99 = row.best
        cpu_ratio = cpu_bare[row.family] / row.cpu
        lines.append(
            [
                row.label,
                f"{rps:,.0f}",
                f"{p99:.2f}",
                f"{rps / bare[row.family]:.2f}",
                f"{row.cpu:.0f}",
                f"{cpu_ratio:.2f}",
            ]
        )
    print()
    columns = ["server", "requests/s>", "p99 ms>", "x bare>", "server CPU us/request>", "capacity x bare>"]
    print(_harness.markdown_table(columns, lines))
    for family, mine, peer in (("asgi", ROWS[1], ROWS[3]), ("wsgi", ROWS[5], ROWS[7])):
        ratio = mine.best[0] / bare[family]
        targets.record(f"{mine.label} >= {TARGET} x bare", ratio >= TARGET, ratio, f"{ratio:.2f} x bare")
        vs_peer = mine.best[0] / peer.best[0]
        targets.lines.append(f"info  {mine.label} vs {peer.label}: {vs_peer:.2f} x requests/s")
        capacity = cpu_bare[family] / mine.cpu
        targets.lines.append(f"info  {mine.label}: server CPU per request gives {capacity:.2f} x bare capacity")
    print()
    print("\n".join(targets.lines))
    _harness.write_json(
        args.json,
        {
            "environment": env,
            "load": load_line,
            "rows": [{"server": r.label, "rps": r.rps, "p99_ms": r.p99_ms, "cpu_us": r.cpu_us} for r in ROWS],
            "targets": targets.records,
        },
    )


if __name__ == "__main__":
    main()
