"""resilient: production policies around calls to LLM and other providers.

The public surface is re-exported here; everything else is internal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .call import ABANDONED, SUCCESS, Call, Kind, Outcome, Target, Usage, capture_calls
from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .config import CoreOptions, Duration, Section, Settings, option
from .context import RequestContext, request_context
from .errors import (
    CircuitOpen,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    DeadlineExceeded,
    PluginError,
    ProviderUnavailable,
    QuotaExceeded,
    ResilientError,
)
from .events import Emitter, Event, Observer
from .hookspecs import hookimpl
from .pipeline import Guarded, Pipeline, target_of
from .policy import AsyncHandler, AsyncStreamHandler, Handler, Order, Policy, Runtime, StreamHandler

try:
    __version__ = version("resilient")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
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
