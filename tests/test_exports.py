"""The public surface is exactly what is meant."""

from __future__ import annotations

import resilient
import resilient.testing


def test_top_level_exports() -> None:
    assert sorted(resilient.__all__) == sorted(
        [
            "ABANDONED",
            "SUCCESS",
            "SYSTEM_CLOCK",
            "AsyncHandler",
            "AsyncStreamHandler",
            "Call",
            "CircuitOpen",
            "Clock",
            "ConcurrencyLimitExceeded",
            "ConfigurationError",
            "CoreOptions",
            "DeadlineExceeded",
            "Duration",
            "Emitter",
            "Event",
            "Guarded",
            "Handler",
            "Kind",
            "Observer",
            "Order",
            "Outcome",
            "Pipeline",
            "PluginError",
            "Policy",
            "ProviderUnavailable",
            "QuotaExceeded",
            "RequestContext",
            "ResilientError",
            "Runtime",
            "Section",
            "Settings",
            "StreamHandler",
            "SystemClock",
            "Target",
            "Usage",
            "__version__",
            "capture_calls",
            "hookimpl",
            "option",
            "request_context",
            "target_of",
        ]
    )
    for name in resilient.__all__:
        assert hasattr(resilient, name), name


def test_testing_exports() -> None:
    assert sorted(resilient.testing.__all__) == [
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
