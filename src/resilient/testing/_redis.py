from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from urllib.parse import quote

from ._stores import StoreFixture

__all__ = ["RedisServer", "redis_server", "redis_required"]


def redis_required() -> bool:
    """True when a missing redis-server must fail the tests (``RESILIENT_REQUIRE_REDIS=1``, as in CI)."""
    return os.environ.get("RESILIENT_REQUIRE_REDIS", "") not in ("", "0", "false", "no")


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _resp(*words: bytes) -> bytes:
    """A command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def _command(
    port: int, words: Sequence[bytes], reply: bytes, timeout: float, password: str | None, ca: str | None
) -> bool:
    """Send one command (after AUTH when a password is set); whether the answer starts with ``reply``."""
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
            if ca is not None:
                context = ssl.create_default_context(cafile=ca)
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
            if password:
                sock.sendall(_resp(b"AUTH", password.encode()))
                if not sock.recv(16).startswith(b"+OK"):
                    return False
            sock.sendall(_resp(*words))
            return sock.recv(16).startswith(reply)
    except OSError:  # ssl.SSLError included
        return False


def _ping(port: int, timeout: float = 0.2, password: str | None = None, ca: str | None = None) -> bool:
    return _command(port, [b"PING"], b"+PONG", timeout, password, ca)


class RedisServer(StoreFixture):
    """A throwaway ``redis-server`` on a free loopback port, no persistence.

    ``url`` is ``redis://127.0.0.1:<port>/0`` (with the password when one is
    set); with ``key_prefix`` (default ``"test:"``), :meth:`config` and
    :meth:`flush` it has the shape of every store the pytest fixtures give
    (:class:`StoreFixture`). :meth:`stop`, :meth:`kill`, :meth:`pause` and :meth:`resume` act on
    the process this object started (by its PID) and nothing else;
    :meth:`restart` starts a new, empty one on the same port, as a store
    that came back after a crash does.

    ``password`` sets ``requirepass`` (the default user's password);
    ``users`` adds ACL users, each an ACL rule list such as
    ``["alice", "on", ">pw", "~app:*", "+@all"]``. ``tls`` (certificate,
    key and CA files) serves TLS only: ``url`` is then ``rediss://`` with the
    CA in its ``ssl_ca_certs`` parameter.
    """

    def __init__(
        self,
        executable: str,
        port: int,
        directory: str,
        *,
        password: str | None = None,
        users: Sequence[Sequence[str]] = (),
        tls: tuple[str, str, str] | None = None,
        key_prefix: str = "test:",
    ) -> None:
        self.port = port
        self.key_prefix = key_prefix
        self.password = password
        self.tls = tls
        auth = f":{quote(password, safe='')}@" if password else ""
        if tls is None:
            self.url = f"redis://{auth}127.0.0.1:{port}/0"
            ports = ["--port", str(port)]
        else:
            self.url = f"rediss://{auth}127.0.0.1:{port}/0?ssl_ca_certs={quote(tls[2], safe='')}"
            ports = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls[0], "--tls-key-file", tls[1]]
            ports += ["--tls-ca-cert-file", tls[2], "--tls-auth-clients", "no"]
        self._command = [
            executable,
            *ports,
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
        ]
        if password:
            self._command += ["--requirepass", password]
        for rules in users:
            self._command += ["--user", *rules]
        self._process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self._process.returncode}")
            if _ping(self.port, password=self.password, ca=self.tls[2] if self.tls else None):
                return
            # Waiting for a real process to start: the one sleep the toolkit allows.
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def flush(self) -> None:
        """FLUSHALL: every key of every database gone, as if the server had just started."""
        if not _command(self.port, [b"FLUSHALL"], b"+OK", 5.0, self.password, self.tls[2] if self.tls else None):
            raise RuntimeError(f"redis-server on port {self.port} did not flush")

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-sentence, its connections reset, its data gone."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the store keeps its connections open and answers nothing (a hung or swapped-out server)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        """Start a new, empty server on the same port (after :meth:`kill` or :meth:`stop`) and wait for it."""
        if self._process.poll() is None:
            self.kill()
        deadline = time.monotonic() + timeout
        while True:
            self._process = self._start()
            try:
                self.wait_ready(max(0.5, deadline - time.monotonic()))
                return
            except RuntimeError:
                # The port can stay taken for a moment after the old process died.
                self.kill()
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        if self._process.poll() is None:
            self.resume()  # a paused server cannot act on SIGTERM
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)


@contextmanager
def redis_server(
    executable: str | None = None,
    *,
    password: str | None = None,
    users: Sequence[Sequence[str]] = (),
    tls: tuple[str, str, str] | None = None,
) -> Iterator[RedisServer]:
    """Start a throwaway redis-server for the duration of a ``with`` block.

    ``password``, ``users`` and ``tls`` as in :class:`RedisServer`. Raises
    :class:`FileNotFoundError` when no ``redis-server`` is installed.
    """
    path = executable or shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory(prefix="resilient-redis-") as directory:
        server = RedisServer(path, _free_port(), directory, password=password, users=users, tls=tls)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()
