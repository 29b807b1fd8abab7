"""``resilient simulate``: its options (parsed without importing starlette) and the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..config import parse_duration
from ._sim_faults import Fault, parse_fault

__all__ = ["add_arguments", "run"]


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return seconds


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a probability between 0 and 1, such as 0.2")
    return value


def _int(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: {what}")
        return value

    return parse


def _faults(text: str) -> list[Fault]:
    try:
        return [parse_fault(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_int(0, 65535, "a port between 0 and 65535"), default=8765, help="0 picks a free port"
    )
    parser.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="probability of a random fault per request (default 0)"
    )
    parser.add_argument(
        "--faults",
        type=_faults,
        default=None,
        help="the random faults, comma-separated (default 429,529,500); e.g. 429,529,500,drop,slow:2s",
    )
    parser.add_argument("--script", type=_faults, default=[], help="faults for the first requests, in order")
    parser.add_argument("--latency", type=_duration, default=0.0, help="before every answer, e.g. 50ms (default 0)")
    parser.add_argument("--first-byte-latency", type=_duration, default=0.0, help="streams: before the first event")
    parser.add_argument("--chunk-delay", type=_duration, default=0.0, help="streams: between events")
    parser.add_argument("--retry-after", type=_duration, default=1.0, help="retry-after sent on 429/529 (default 1s)")
    parser.add_argument(
        "--rpm", type=_int(1, 10**9, "a whole number >= 1"), default=None, help="requests per minute before 429s"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the random faults")
    parser.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info", help="uvicorn's"
    )


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .simulator import Simulator, bind_socket, quiet_simulated_drops
    except ImportError as exc:
        print(f"error: the simulator needs starlette and uvicorn: pip install 'resilient[simulator]' ({exc})")
        return 2
    options: dict[str, Any] = {
        "fail_rate": args.fail_rate,
        "latency": args.latency,
        "first_byte_latency": args.first_byte_latency,
        "chunk_delay": args.chunk_delay,
        "retry_after": args.retry_after,
        "rpm": args.rpm,
        "seed": args.seed,
    }
    if args.faults is not None:
        options["faults"] = args.faults
    try:
        sim = Simulator(**options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sim.script(*args.script)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"error: --host/--port: {exc.strerror}", file=sys.stderr)
        return 2
    host, port = args.host, sock.getsockname()[1]
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"resilient simulator on {base} ({sim!r})")
    print(f"ANTHROPIC_BASE_URL={base}")
    print(f"OPENAI_BASE_URL={base}/v1", flush=True)
    quiet_simulated_drops()
    config = uvicorn.Config(sim.app, log_level=args.log_level, lifespan="off", ws="none", timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
