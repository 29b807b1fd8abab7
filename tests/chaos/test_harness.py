"""The harness itself, and the store pause it found missing: fast, in-process, on a real redis-server."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from limits.errors import StorageError

import resilient.storage
from resilient.storage import LoopBoundStorage, sync_storage
from resilient.testing import FakeClock, RedisServer

from ._harness import Answer, TcpProxy


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(64)


def test_the_proxy_passes_counts_and_drops(proxy: TcpProxy) -> None:
    assert _roundtrip(proxy.port, b"PING\r\n") == b"+PONG\r\n"
    proxy.set("drop")
    with pytest.raises(ConnectionError):  # accepted, then reset
        reply = _roundtrip(proxy.port, b"PING\r\n")
        if not reply:
            raise ConnectionResetError
    proxy.set()
    assert _roundtrip(proxy.port, b"PING\r\n") == b"+PONG\r\n"
    assert len(proxy.attempts) == 3


def test_the_proxy_cuts_open_connections(proxy: TcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"
        proxy.cut()
        with pytest.raises(ConnectionError):
            sock.sendall(b"PING\r\n")
            if not sock.recv(16):
                raise ConnectionResetError


def test_an_answer_is_designed_only_as_2xx_or_problem_json() -> None:
    assert Answer(0, 0.1, 200, "application/json", "{}").designed
    assert Answer(0, 0.1, 503, "application/problem+json", "{}").designed
    assert Answer(0, 0.1, 500, "application/problem+json", "{}").lost
    assert Answer(0, 0.1, 503, "text/plain", "oops").lost
    assert Answer(0, 0.1, 0, "", "", "ReadTimeout").lost


@pytest.mark.parametrize("pause", [1.0, 0.0])
def test_a_failed_store_is_left_alone_for_a_pause(own_redis: RedisServer, proxy: TcpProxy, pause: float) -> None:
    """Found by the store-fault scenarios: the adapters' rate limits reconnected on every request."""
    storage = sync_storage(proxy.url, "pause-test:", timeout=1.0, pause=pause)
    assert storage.incr("k", 60) == 1
    proxy.set("drop")
    proxy.cut()
    before = len(proxy.attempts)
    for _ in range(20):
        with pytest.raises(StorageError):
            storage.incr("k", 60)
    tried = len(proxy.attempts) - before
    _close(storage)
    # one failed operation, its one retry on a new connection included
    assert tried <= 2 if pause else tried >= 19, tried


def test_the_async_storage_pauses_across_operations(own_redis: RedisServer, proxy: TcpProxy) -> None:
    async def scenario() -> int:
        storage = LoopBoundStorage(proxy.url, "pause-test:", timeout=1.0)
        assert await storage.get().incr("k", 60) == 1
        proxy.set("drop")
        proxy.cut()
        before = len(proxy.attempts)
        for _ in range(20):
            with pytest.raises(StorageError):
                await storage.get().incr("k", 60)
        await storage.aclose()
        return len(proxy.attempts) - before

    assert asyncio.run(scenario()) <= 2


def _close(storage: Any) -> None:
    storage.storage.connection_pool.disconnect()


def _incr(storage: Any) -> bool:
    try:
        storage.incr("k", 60)
        return True
    except StorageError:
        return False


def test_after_the_pause_one_operation_probes_while_the_others_wait(
    own_redis: RedisServer, proxy: TcpProxy, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent operations after the pause: one probe while the store is down; all through once it is back."""
    monkeypatch.setattr(resilient.storage, "time", clock)  # the pause runs on the fake clock
    storage = sync_storage(proxy.url, "probe-test:", timeout=1.0, pause=1.0)
    assert _incr(storage)
    proxy.set("drop")
    proxy.cut()
    assert not _incr(storage)
    clock.advance(1.5)
    before = len(proxy.attempts)
    with ThreadPoolExecutor(8) as pool:
        down = list(pool.map(lambda _: _incr(storage), range(8)))
    assert down == [False] * 8
    assert len(proxy.attempts) - before <= 2  # the probe and its one retry on a new connection
    proxy.set()
    clock.advance(1.5)
    with ThreadPoolExecutor(8) as pool:
        back = list(pool.map(lambda _: _incr(storage), range(8)))
    _close(storage)
    assert back == [True] * 8  # none failed fast while the probe was out
