from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

__all__ = ["RedisServer", "redis_server", "redis_required"]


def redis_required() -> bool:
    """True when a missing redis-server must fail the tests (``RESILIENT_REQUIRE_REDIS=1``, as in CI)."""
    return os.environ.get("RESILIENT_REQUIRE_REDIS", "") not in ("", "0", "false", "no")


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, no persistence.

    ``url`` is ``redis://127.0.0.1:<port>/0``. :meth:`stop` ends the process
    this object started (by its PID) and nothing else.
    """

    def __init__(self, executable: str, port: int, directory: str) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process = subprocess.Popen(
            [
                executable,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self._process.returncode}")
            if _ping(self.port):
                return
            # Waiting for a real process to start: the one sleep the toolkit allows.
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)


@contextmanager
def redis_server(executable: str | None = None) -> Iterator[RedisServer]:
    """Start a throwaway redis-server for the duration of a ``with`` block.

    Raises :class:`FileNotFoundError` when no ``redis-server`` is installed.
    """
    path = executable or shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory(prefix="resilient-redis-") as directory:
        server = RedisServer(path, _free_port(), directory)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()
