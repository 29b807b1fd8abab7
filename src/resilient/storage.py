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

from ._clocked import is_real_time, on_clock
from .clock import Clock

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
    """When a storage last failed, and the one operation probing it since; shared by its operations.

    Once the pause is over, one operation (the probe) reaches the store; the
    others wait for its outcome (at most the socket timeout) and then go to
    the store too, or fail at once if it failed. Failing them while the probe
    is out would read as "store down" to the policies and prolong the outage;
    letting them all through would send every request in flight to a store
    that is still down.
    """

    __slots__ = ("_lock", "_probe", "pause", "until", "wait")

    def __init__(self, pause: float, wait: float) -> None:
        self.pause = pause
        self.wait = wait
        self.until = 0.0
        self._probe: threading.Event | None = None
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Before an operation, while ``until`` is set: raise (paused), or True for the probe, else False."""
        if time.monotonic() < self.until:
            raise _paused()
        with self._lock:
            probe = self._probe
            if probe is None:
                self._probe = threading.Event()
                return True
        probe.wait(self.wait)
        if self.until and time.monotonic() < self.until:
            raise _paused()
        return False

    def outcome(self, ok: bool | None) -> None:
        """After an operation that failed, or after a probe (``None``: it ended without a word from the store)."""
        if ok is not None:
            self.until = 0.0 if ok else time.monotonic() + self.pause
        with self._lock:
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.set()


class _AsyncPause(_Pause):
    """:class:`_Pause` for one event loop: those waiting for the probe await it."""

    __slots__ = ("_future",)

    def __init__(self, pause: float, wait: float) -> None:
        super().__init__(pause, wait)
        self._future: asyncio.Future[None] | None = None

    async def aenter(self) -> bool:
        if time.monotonic() < self.until:
            raise _paused()
        future = self._future
        if future is None:
            self._future = asyncio.get_running_loop().create_future()
            return True
        try:
            await asyncio.wait_for(asyncio.shield(future), self.wait)
        except asyncio.TimeoutError:
            pass
        if self.until and time.monotonic() < self.until:
            raise _paused()
        return False

    def outcome(self, ok: bool | None) -> None:
        if ok is not None:
            self.until = 0.0 if ok else time.monotonic() + self.pause
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)


def _paused() -> StorageError:
    return StorageError(ConnectionError("store unavailable; left alone for a moment after an error"))


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
            assert isinstance(pause, _AsyncPause)
            setattr(storage, name, _async_guarded(method, pause))
        else:
            setattr(storage, name, _sync_guarded(method, pause))
    return storage


def _sync_guarded(method: Any, pause: _Pause) -> Any:
    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        probe = pause.enter() if pause.until else False
        try:
            result = method(*args, **kwargs)
        except STORE_ERRORS:
            pause.outcome(False)
            raise
        except BaseException:
            if probe:
                pause.outcome(None)  # not a store error: the next operation probes
            raise
        if probe or pause.until:
            pause.outcome(True)
        return result

    return guarded


def _async_guarded(method: Any, pause: _AsyncPause) -> Any:
    @functools.wraps(method)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        probe = await pause.aenter() if pause.until else False
        try:
            result = await method(*args, **kwargs)
        except STORE_ERRORS:
            pause.outcome(False)
            raise
        except BaseException:
            if probe:
                pause.outcome(None)  # not a store error, or cancelled: the next operation probes
            raise
        if probe or pause.until:
            pause.outcome(True)
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


def _options(uri: str, prefix: str, timeout: float, *, aio: bool = False) -> dict[str, Any]:
    scheme = uri.split("://", 1)[0]
    if "redis" in scheme or "valkey" in scheme:
        # Keys carry the app's prefix, so two apps sharing one Redis never collide.
        options: dict[str, Any] = {"key_prefix": prefix.rstrip(":")}
        if scheme in ("redis", "rediss"):  # redis-py's own client (cluster and sentinel take other options)
            return {**options, **_client_options(timeout, aio=aio)}
        return {**options, "socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {}


def _client_options(timeout: float, *, aio: bool) -> dict[str, Any]:
    """Timeouts, and one immediate retry of a command whose connection was found dead.

    After Redis restarts, every pooled connection is dead and fails its next
    command; without the retry each of them would be one more "store down" to
    a policy, which then leaves the store alone for ``store_retry`` seconds:
    recovery would take (pooled connections x store_retry). A timeout is not
    retried: it already cost ``timeout`` seconds.
    """
    import redis.backoff
    import redis.exceptions

    if aio:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}
        connection = _async_connection_class()
        if connection is not None:  # a rediss:// URL still picks redis-py's SSL connection (URL options win)
            options["connection_class"] = connection
        return options
    from redis.retry import Retry

    retry = Retry(redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}


@functools.cache
def _async_connection_class() -> Any:
    """redis-py's asyncio connection, its writes bounded by ``asyncio.timeout`` instead of ``asyncio.wait_for``.

    With a socket timeout, redis-py runs every write under ``asyncio.wait_for``,
    which (before Python 3.12) wraps it in a new task: measured here, a
    one-command round trip cost 464 k client instructions against 309 k with
    no timeout, every Redis command of every async call. ``asyncio.timeout``
    (Python 3.11+) bounds the same write with a timer and no task. The write
    itself is redis-py's: its timeout is lifted for the duration and the
    whole send (connecting, the health check, the write) is bounded instead.
    ``None`` before 3.11: redis-py's own connection.
    """
    bounded: Any = getattr(asyncio, "timeout", None)  # Python 3.11+
    if bounded is None:
        return None
    import redis.asyncio.connection
    import redis.exceptions

    class Connection(redis.asyncio.connection.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            timeout = self.socket_timeout
            if not timeout:
                await super().send_packed_command(command, check_health)
                return
            self.socket_timeout = None  # one connection sends one command at a time: restored below
            try:
                async with bounded(timeout):
                    await super().send_packed_command(command, check_health)
            except TimeoutError:  # the timer cancelled the write: redis-py's error for it, as wait_for gives
                await self.disconnect(nowait=True)
                raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
            finally:
                self.socket_timeout = timeout

    return Connection


def sync_storage(
    uri: str, prefix: str, timeout: float = SOCKET_TIMEOUT, pause: float = STORE_PAUSE, clock: Clock | None = None
) -> limits.storage.Storage:
    """A sync ``limits`` storage for ``uri``, its errors wrapped in ``limits.errors.StorageError``.

    After an operation fails, the next ones fail at once for ``pause`` seconds
    (0: never) instead of reaching for a store that is down. In memory, its
    windows run on ``clock`` (see :mod:`resilient._clocked`).
    """
    options = _options(uri, prefix, timeout)
    storage = limits.storage.storage_from_string(uri, wrap_exceptions=True, **options)
    if not isinstance(storage, limits.storage.Storage):
        raise ValueError(f"store {uri!r} is an async-only storage; give its sync URI")
    if is_memory(uri):
        if clock is not None and not is_real_time(clock):
            storage = on_clock(type(storage), clock)(uri, wrap_exceptions=True, **options)
        return storage
    guarded: limits.storage.Storage = _guard(storage, _Pause(pause, wait=timeout))
    return guarded


class LoopBoundStorage:
    """The async ``limits`` storage for ``uri``, one per event loop.

    An asyncio Redis client belongs to the loop it was created on; an app
    that runs several loops one after the other (``asyncio.run`` twice, a
    test suite) would otherwise reuse dead connections. :meth:`get` makes a
    new client when the running loop changes. After an operation fails, the
    next ones on that loop fail at once for ``pause`` seconds, as with
    :func:`sync_storage`.
    """

    def __init__(
        self,
        uri: str,
        prefix: str,
        timeout: float = SOCKET_TIMEOUT,
        pause: float = STORE_PAUSE,
        clock: Clock | None = None,
    ) -> None:
        self.uri = uri
        self._clock = clock
        self._prefix = prefix
        self._timeout = timeout
        self._pause = pause
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
                    options = _options(self.uri, self._prefix, self._timeout, aio=True)
                    if "redis" in self.uri.split("://", 1)[0]:
                        options["implementation"] = "redispy"
                    # One factory for both: an "async+" scheme gives the limits.aio storage.
                    storage = limits.storage.storage_from_string("async+" + self.uri, wrap_exceptions=True, **options)
                    if is_memory(self.uri) and self._clock is not None and not is_real_time(self._clock):
                        storage = on_clock(type(storage), self._clock)(wrap_exceptions=True, **options)
                    if not is_memory(self.uri):  # a pause per loop: its waiters await a future of that loop
                        storage = _guard(storage, _AsyncPause(self._pause, wait=self._timeout))
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
    return redis.Redis.from_url(url, **_client_options(timeout, aio=False))


def async_redis_client(uri: str, timeout: float = SOCKET_TIMEOUT) -> Any:
    """An asyncio redis-py client for a Redis store URI (use one per event loop: :class:`PerLoop`)."""
    import redis.asyncio
    import redis.asyncio.cluster

    url, cluster = _redis_url(uri)
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.asyncio.Redis.from_url(url, **_client_options(timeout, aio=True))
