"""``make demo``: the FastAPI example on 127.0.0.1, against the built-in simulator, state in memory.

Starts the app with uvicorn, prints what to open and what to curl, takes a
short tour of its own endpoints (a cached answer, a stream, a quota refusal,
a provider failure retried, the metrics) and keeps serving until Ctrl-C.

Options: ``--port N`` (default 8000, or the next free one), ``--tour-only``
(exit after the tour; what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there, else any free loopback port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def banner(base: str) -> str:
    chat = f"curl -s {base}/v1/chat -H 'content-type: application/json' -H 'x-tenant-id: acme'"
    return f"""
resilient FastAPI example: {base}  (provider: built-in simulator, state: memory://)

  open   {base}/docs        the API
         {base}/ready       store, breakers, quotas (JSON)
         {base}/metrics     Prometheus metrics
  curl   {chat} -d '{{"message": "hello"}}'
         curl -sN {base}/v1/chat/stream -H 'content-type: application/json' -d '{{"message": "hello"}}'

Policies: examples/fastapi_app/resilient.toml; override with RESILIENT_* variables.
"""


def show(title: str, response: httpx.Response, fields: tuple[str, ...] = ()) -> None:
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text[:200]
    if fields and isinstance(body, dict):
        body = {k: body.get(k) for k in fields}
    extra = f" retry-after={response.headers['retry-after']}" if "retry-after" in response.headers else ""
    print(f"  {title:<44} {response.status_code}{extra}  {json.dumps(body)[:150]}")


def tour(base: str, simulator: Any) -> None:
    """A few requests that show each policy at work; ``simulator`` plays the provider's faults."""
    print("A short tour (the same requests you can curl):")
    with httpx.Client(base_url=base, timeout=30) as http:
        ask = {"message": "What does a circuit breaker do?"}
        acme = {"x-tenant-id": "acme"}
        fields = ("reply", "cache", "attempts", "usage", "cost_usd")
        show("POST /v1/chat (acme)", http.post("/v1/chat", json=ask, headers=acme), fields)
        show("same question again: from the cache", http.post("/v1/chat", json=ask, headers=acme), fields)
        show(
            "same question, other tenant: own cache",
            http.post("/v1/chat", json=ask, headers={"x-tenant-id": "b"}),
            fields,
        )
        with http.stream("POST", "/v1/chat/stream", json={"message": "Stream a short answer"}) as stream:
            first = time.monotonic()
            pieces = [line for line in stream.iter_lines() if line.startswith("data:")]
            took = time.monotonic() - first
        print(f"  {'POST /v1/chat/stream':<44} {stream.status_code}  {len(pieces)} SSE events in {took:.2f}s")
        simulator.script("529", "529")  # overloaded twice, then fine
        show("provider overloaded twice: retried", http.post("/v1/chat", json={"message": "retry me"}), fields)
        simulator.configure(fail_rate=1.0, faults=["500"])  # the provider goes down
        for i in range(8):
            answer = http.post("/v1/chat", json={"message": f"outage {i}"})
            if answer.status_code == 503:
                show(f"provider down, call {i + 1}: circuit open", answer, ("title", "detail"))
                break
        show("a cached answer still served", http.post("/v1/chat", json=ask, headers=acme), fields)
        simulator.configure(fail_rate=0.0)
        for i in range(25):  # quota: 20 requests a minute per tenant (resilient.toml)
            answer = http.post(
                "/v1/chat",
                json={"message": f"question {i}", "model": "claude-sonnet-4-5"},
                headers={"x-tenant-id": "greedy"},
            )
            if answer.status_code != 200:
                show(f"request {i + 1} of tenant 'greedy'", answer, ("title", "detail"))
                break
        ready = http.get("/ready").json()
        breakers = ready["policies"].get("breaker", {}).get("breakers", {})
        print(f"  {'GET /ready':<44} ok={ready['ok']}  breakers: {json.dumps(breakers)}")
        metrics = [
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith(("resilient_calls_total", "resilient_cache_requests_total", "resilient_quota_rej"))
        ]
        print("  GET /metrics (excerpt):")
        for line in metrics[:8]:
            print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--tour-only", action="store_true", help="exit after the tour")
    args = parser.parse_args(argv)

    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):  # the demo always uses the simulator
        os.environ.pop(name, None)
    from app import create_app  # after the environment is settled

    port = free_port(args.port)
    base = f"http://127.0.0.1:{port}"
    app = create_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            print("the example app did not start", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(banner(base))
    try:
        tour(base, app.state.simulator)
        if args.tour_only:
            return 0
        print(f"\nServing on {base}; Ctrl-C to stop.")
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print()
    finally:
        server.should_exit = True
        thread.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
