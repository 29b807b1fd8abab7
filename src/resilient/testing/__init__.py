"""Tools for testing code that uses resilient, and for testing policies.

``FakeClock`` is accepted by every time-based policy (``Pipeline(clock=...)``);
``ScriptedProvider`` plays a sequence of outcomes. The pytest plugin
(registered through the ``pytest11`` entry point) provides the ``fake_clock``,
``scripted_provider``, ``resilient_pipeline`` and ``redis_store`` fixtures;
``redis_server()`` starts a throwaway redis-server outside pytest.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._redis import RedisServer, redis_server
from ._scripted import Chunks, HTTPStatus, Latency, ProviderHTTPError, ScriptedProvider

__all__ = [
    "Chunks",
    "FakeClock",
    "HTTPStatus",
    "Latency",
    "ProviderHTTPError",
    "RedisServer",
    "ScriptedProvider",
    "redis_server",
]
