"""Store URIs shared by every stateful plugin, on the ``limits`` library's storages.

``memory://`` keeps state in the process; ``redis://``, ``rediss://``,
``redis+cluster://`` (and the other schemes ``limits`` knows) share it
between workers. Plugins ask here for a storage instead of building one, so
they agree on key prefixes, timeouts, error wrapping and event loops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from typing import Any
from urllib.parse import quote

import limits.storage
from limits.errors import StorageError

__all__ = [
    "STORE_ERRORS",
    "key_part",
    "LoopBoundStorage",
    "PerLoop",
    "async_redis_client",
    "close_sync",
    "is_memory",
    "redis_client",
    "sync_storage",
]

#: What a failing store raises: ``limits`` wraps the client's errors in
#: ``StorageError``; sockets and timeouts that escape it are ``OSError``.
#: Plugins catch these, and only these, as "the store is down".
STORE_ERRORS: tuple[type[Exception], ...] = (StorageError, OSError)

_log = logging.getLogger("resilient.storage")

#: Seconds before a store operation gives up: a slow store must not hold a call.
SOCKET_TIMEOUT = 2.0

#: Seconds a ``limits`` storage that just failed is left alone: its operations fail at once meanwhile.
#: Callers without a backoff of their own (the adapters' rate limits) would otherwise open a connection
#: per request to a store that is down; callers with a longer ``store_retry`` are not affected.
STORE_PAUSE = 1.0

#: The ``limits`` storage operations a call makes; ``check``, ``reset`` and ``clear`` (health and explicit
#: requests) always reach the store.
_GUARDED = (
    "incr",
    "get",
    "get_expiry",
    "acquire_entry",
    "get_moving_window",
    "acquire_sliding_window_entry",
    "get_sliding_window",
)


class _Pause:
    """When a storage last failed; shared by its operations (and by its per-loop copies)."""

    __slots__ = ("pause", "until")

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.until = 0.0

    def check(self) -> None:
        if self.until:
            now = time.monotonic()
            if now < self.until:
                raise StorageError(ConnectionError("store unavailable; left alone for a moment after an error"))
            # The pause is over: this operation probes the store, the others keep failing fast until it
            # answers, or a burst of concurrent requests would all reconnect at once.
            self.until = now + self.pause

    def failed(self) -> None:
        self.until = time.monotonic() + self.pause

    def succeeded(self) -> None:
        self.until = 0.0


def _guard(storage: Any, pause: _Pause) -> Any:
    """Make ``storage``'s operations fail fast for ``pause.pause`` seconds after one failed (instance attributes,
    so the ``limits`` strategies' isinstance checks still see the storage's own class)."""
    if pause.pause <= 0:
        return storage
    for name in _GUARDED:
        method = getattr(storage, name, None)
        if method is None:
            continue
        if asyncio.iscoroutinefunction(method):
            setattr(storage, name, _async_guarded(method, pause))
        else:
            setattr(storage, name, _sync_guarded(method, pause))
    return storage


def _sync_guarded(method: Any, pause: _Pause) -> Any:
    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        pause.check()
        try:
            result = method(*args, **kwargs)
        except STORE_ERRORS:
            pause.failed()
            raise
        if pause.until:
            pause.succeeded()
        return result

    return guarded


def _async_guarded(method: Any, pause: _Pause) -> Any:
    @functools.wraps(method)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        pause.check()
        try:
            result = await method(*args, **kwargs)
        except STORE_ERRORS:
            pause.failed()
            raise
        if pause.until:
            pause.succeeded()
        return result

    return guarded


def key_part(value: str | None) -> str:
    """A provider, model or tenant as one part of a store key, never colliding with another.

    Parts are joined with "/" and "-" stands for none, so both are escaped
    (with the rest of URL quoting); the empty string has its own spelling.
    """
    if value is None:
        return "-"
    if value in ("-", ""):
        return "%2D" if value else "%00"
    return quote(value, safe="")


def is_memory(uri: str) -> bool:
    """True for the in-process store."""
    return uri.split("://", 1)[0] in ("memory", "async+memory")


def _options(uri: str, prefix: str, timeout: float) -> dict[str, Any]:
    scheme = uri.split("://", 1)[0]
    if "redis" in scheme or "valkey" in scheme:
        # Keys carry the app's prefix, so two apps sharing one Redis never collide.
        return {"key_prefix": prefix.rstrip(":"), "socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {}


def sync_storage(
    uri: str, prefix: str, timeout: float = SOCKET_TIMEOUT, pause: float = STORE_PAUSE
) -> limits.storage.Storage:
    """A sync ``limits`` storage for ``uri``, its errors wrapped in ``limits.errors.StorageError``.

    After an operation fails, the next ones fail at once for ``pause`` seconds
    (0: never) instead of reaching for a store that is down.
    """
    storage = limits.storage.storage_from_string(uri, wrap_exceptions=True, **_options(uri, prefix, timeout))
    if not isinstance(storage, limits.storage.Storage):
        raise ValueError(f"store {uri!r} is an async-only storage; give its sync URI")
    if is_memory(uri):
        return storage
    guarded: limits.storage.Storage = _guard(storage, _Pause(pause))
    return guarded


class LoopBoundStorage:
    """The async ``limits`` storage for ``uri``, one per event loop.

    An asyncio Redis client belongs to the loop it was created on; an app
    that runs several loops one after the other (``asyncio.run`` twice, a
    test suite) would otherwise reuse dead connections. :meth:`get` makes a
    new client when the running loop changes. After an operation fails, the
    next ones (on any loop) fail at once for ``pause`` seconds, as with
    :func:`sync_storage`.
    """

    def __init__(self, uri: str, prefix: str, timeout: float = SOCKET_TIMEOUT, pause: float = STORE_PAUSE) -> None:
        self.uri = uri
        self._prefix = prefix
        self._timeout = timeout
        self._pause = _Pause(pause)
        # One client per loop, forgotten with its loop: loops in several threads each keep theirs.
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self) -> Any:
        loop = asyncio.get_running_loop()
        storage = self._by_loop.get(loop)
        if storage is None:
            with self._lock:
                storage = self._by_loop.get(loop)
                if storage is None:
                    options = _options(self.uri, self._prefix, self._timeout)
                    if "redis" in self.uri.split("://", 1)[0]:
                        options["implementation"] = "redispy"
                    # One factory for both: an "async+" scheme gives the limits.aio storage.
                    storage = limits.storage.storage_from_string("async+" + self.uri, wrap_exceptions=True, **options)
                    if not is_memory(self.uri):
                        storage = _guard(storage, self._pause)
                    self._by_loop[loop] = storage
        return storage

    async def aclose(self) -> None:
        """Close the running loop's client."""
        storage = self._by_loop.pop(asyncio.get_running_loop(), None)
        if storage is None:
            return
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # pragma: no cover - closing a dead connection
                _log.debug("closing an async store client failed", exc_info=True)


def close_sync(storage: Any) -> None:
    """Close a sync storage's connections, if it has any."""
    connection = getattr(storage, "get_connection", None)
    if connection is not None:
        try:
            connection().close()
        except Exception:  # pragma: no cover - closing a dead connection
            _log.debug("closing a store client failed", exc_info=True)


class PerLoop:
    """One object per running event loop, made by ``factory`` on first use in that loop.

    For asyncio clients, which belong to the loop they were created on.
    """

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self) -> Any:
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None:
            with self._lock:
                found = self._by_loop.get(loop)
                if found is None:
                    found = self._by_loop[loop] = self._factory()
        return found

    def pop(self) -> Any:
        """Forget (and return) the running loop's object, to close it."""
        return self._by_loop.pop(asyncio.get_running_loop(), None)


def _redis_url(uri: str) -> tuple[str, bool]:
    scheme, rest = uri.split("://", 1)
    if scheme in ("redis", "rediss"):
        return uri, False
    if scheme in ("redis+cluster", "rediss+cluster"):
        return f"{scheme.split('+')[0]}://{rest}", True
    raise ValueError(f"store {uri!r}: a Redis URI (redis://, rediss://, redis+cluster://) is needed here")


def redis_client(uri: str, timeout: float = SOCKET_TIMEOUT) -> Any:
    """A sync redis-py client (or cluster client) for a Redis store URI."""
    import redis
    import redis.cluster

    url, cluster = _redis_url(uri)
    if cluster:
        return redis.cluster.RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def async_redis_client(uri: str, timeout: float = SOCKET_TIMEOUT) -> Any:
    """An asyncio redis-py client for a Redis store URI (use one per event loop: :class:`PerLoop`)."""
    import redis.asyncio
    import redis.asyncio.cluster

    url, cluster = _redis_url(uri)
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
