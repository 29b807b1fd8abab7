"""Tools for testing code that uses resilient, and for testing policies.

``FakeClock`` is accepted by every time-based policy (``Pipeline(clock=...)``);
``ScriptedProvider`` plays a sequence of outcomes. The pytest plugin
(registered through the ``pytest11`` entry point) provides the ``fake_clock``,
``scripted_provider``, ``resilient_pipeline``, ``memory_store`` and ``redis_store``
fixtures (the two stores of one shape, :class:`StoreFixture`, for tests
parametrised over stores); ``redis_server()`` starts a throwaway
redis-server outside pytest.
``check_quota``, ``check_breaker``, ``check_retry`` and ``check_masking``
(property checks for a user's configuration, :mod:`.checks`) are imported on
first use: they need ``hypothesis``, a test dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import FakeClock
from ._redis import RedisServer, redis_server
from ._scripted import Chunks, HTTPStatus, Latency, ProviderHTTPError, ScriptedProvider
from ._stores import StoreFixture

if TYPE_CHECKING:
    from .checks import check_breaker, check_masking, check_quota, check_retry

__all__ = [
    "Chunks",
    "FakeClock",
    "HTTPStatus",
    "Latency",
    "ProviderHTTPError",
    "RedisServer",
    "ScriptedProvider",
    "StoreFixture",
    "check_breaker",
    "check_masking",
    "check_quota",
    "check_retry",
    "redis_server",
]

_CHECKS = frozenset({"check_breaker", "check_masking", "check_quota", "check_retry"})


def __getattr__(name: str) -> Any:
    # The checks import hypothesis: only when a user reaches for one.
    if name in _CHECKS:
        from . import checks

        return getattr(checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
