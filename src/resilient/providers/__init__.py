"""What the core knows about providers' errors, without importing any SDK.

:func:`classify` turns an exception raised by a provider call into an
:class:`~resilient.call.Outcome`, so retry, breaker and metrics agree on what
happened. It reads the shapes the common clients share -- ``status_code`` on
anthropic/openai ``APIStatusError``, ``response.status_code`` on httpx's
``HTTPStatusError``, ``retry-after`` / ``retry-after-ms`` / ``x-should-retry``
headers, timeout and connection error classes -- by duck typing, so no SDK has
to be installed. Plugins add classifiers for other shapes through the
``resilient_classifiers`` hook; the first that answers wins and this one is
the last resort.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from typing import Any

from ..call import Outcome
from ..errors import ResilientError
from ._estimate import estimate_input_tokens, estimate_output_tokens
from ._fields import field_of
from ._usage import merge_usage, usage_from, usage_from_chunk

__all__ = [
    "classify",
    "classify_status",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "field_of",
    "merge_usage",
    "parse_retry_after",
    "response_headers",
    "usage_from",
    "usage_from_chunk",
]

_TIMEOUT_NAMES = frozenset({"TimeoutException", "APITimeoutError", "ReadTimeout", "ConnectTimeout"})
_CONNECTION_NAMES = frozenset(
    {"APIConnectionError", "ConnectError", "NetworkError", "RemoteProtocolError", "ReadError"}
)

# Statuses where trying again can succeed (the anthropic and openai SDKs agree).
_RETRYABLE_STATUS = frozenset({408, 409, 429})


def classify_status(status: int, retry_after: float | None = None, error: BaseException | None = None) -> Outcome:
    """Classify an HTTP status: 408/409/429/5xx/529 are retryable; 408, 5xx and 529 are the provider's
    fault; other 4xx are the caller's."""
    if status == 429:
        return Outcome("rate_limited", status=status, retryable=True, retry_after=retry_after, error=error)
    if status == 408:  # the server timed out waiting: a timeout like any other, on the provider's side
        return Outcome(
            "timeout", status=status, retryable=True, provider_fault=True, retry_after=retry_after, error=error
        )
    if status == 529:
        return Outcome(
            "overloaded", status=status, retryable=True, provider_fault=True, retry_after=retry_after, error=error
        )
    if status >= 500:
        return Outcome(
            "server_error", status=status, retryable=True, provider_fault=True, retry_after=retry_after, error=error
        )
    if status in _RETRYABLE_STATUS:
        return Outcome("client_error", status=status, retryable=True, retry_after=retry_after, error=error)
    return Outcome("client_error", status=status, retry_after=retry_after, error=error)


def response_headers(error: BaseException) -> Mapping[str, str] | None:
    """The HTTP response headers an exception carries, if any."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) if response is not None else None
    if headers is None:
        headers = getattr(error, "headers", None)
    return headers if isinstance(headers, Mapping) or hasattr(headers, "get") else None


def parse_retry_after(headers: Mapping[str, str] | Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date).

    Unlike the SDKs, which only obey values between 0 and 60 s, any
    non-negative value is returned; the retry policy decides what to do with it.
    """
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            pass
        else:
            if value >= 0:
                return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(value, 0.0)
    return value if value >= 0 else None


def _status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None) if response is not None else None
    if not isinstance(status, int):
        status = getattr(error, "status", None)
    return status if isinstance(status, int) and 100 <= status <= 599 else None


def classify(error: BaseException) -> Outcome:
    """Classify ``error`` by duck typing; never raises."""
    if isinstance(error, ResilientError):
        return Outcome("refused", retry_after=error.retry_after, error=error)
    if isinstance(error, asyncio.CancelledError):
        return Outcome("cancelled", error=error)
    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, TimeoutError) or names & _TIMEOUT_NAMES:
        return Outcome("timeout", retryable=True, provider_fault=True, error=error)
    status = _status_of(error)
    headers = response_headers(error)
    if status is not None:
        outcome = classify_status(status, parse_retry_after(headers) if headers is not None else None, error)
    elif isinstance(error, ConnectionError) or names & _CONNECTION_NAMES:
        outcome = Outcome("connection", retryable=True, provider_fault=True, error=error)
    else:
        return Outcome("error", error=error)
    if headers is not None:
        # The provider's own word on retrying overrides the status table.
        should = headers.get("x-should-retry")
        if should == "true" and not outcome.retryable:
            outcome = Outcome(
                outcome.kind, False, outcome.status, True, outcome.provider_fault, outcome.retry_after, error
            )
        elif should == "false" and outcome.retryable:
            outcome = Outcome(
                outcome.kind, False, outcome.status, False, outcome.provider_fault, outcome.retry_after, error
            )
    return outcome
