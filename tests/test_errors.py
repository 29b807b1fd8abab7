"""Errors speak HTTP; the classification agrees with the providers."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient import (
    CircuitOpen,
    ConcurrencyLimitExceeded,
    DeadlineExceeded,
    ProviderUnavailable,
    QuotaExceeded,
    ResilientError,
)
from resilient.providers import classify, parse_retry_after
from resilient.testing import ProviderHTTPError


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (QuotaExceeded(limit="50/minute", retry_after=1.2), 429, "quota-exceeded"),
        (ConcurrencyLimitExceeded(retry_after=0.5), 429, "concurrency-limit-exceeded"),
        (CircuitOpen(retry_after=30), 503, "circuit-open"),
        (ProviderUnavailable(), 503, "provider-unavailable"),
        (DeadlineExceeded(), 504, "deadline-exceeded"),
    ],
)
def test_problem_json_fields(error: ResilientError, status: int, slug: str) -> None:
    body = error.to_problem(instance="/v1/chat")
    assert body["status"] == status
    assert body["type"].endswith(slug)
    assert body["title"] == type(error).title
    assert body["detail"]
    assert body["instance"] == "/v1/chat"
    json.dumps(body)  # serialisable as is
    assert isinstance(error, ResilientError)


@given(retry_after=st.floats(0, 1e6))
def test_retry_after_header_is_whole_seconds_rounded_up(retry_after: float) -> None:
    error = QuotaExceeded(retry_after=retry_after)
    assert error.headers() == {"Retry-After": str(math.ceil(retry_after))}
    assert int(error.headers()["Retry-After"]) >= retry_after


def test_no_retry_after_no_header() -> None:
    assert ProviderUnavailable().headers() == {}
    assert "retry_after" not in ProviderUnavailable().to_problem()


def test_problem_carries_only_what_the_policy_gave() -> None:
    cause = RuntimeError("upstream said: key sk-ant-api03-SECRET is invalid")
    try:
        try:
            raise cause
        except RuntimeError as exc:
            raise ProviderUnavailable(provider="anthropic", model="m") from exc
    except ProviderUnavailable as error:
        text = json.dumps(error.to_problem())
    assert "SECRET" not in text
    assert '"provider": "anthropic"' in text


def test_quota_names_the_limit() -> None:
    body = QuotaExceeded("tokens per minute spent", limit="2000000/minute", retry_after=3).to_problem()
    assert body["limit"] == "2000000/minute"
    assert body["retry_after"] == 3


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "fault"),
    [
        (400, "client_error", False, False),
        (401, "client_error", False, False),
        (403, "client_error", False, False),
        (404, "client_error", False, False),
        (408, "timeout", True, True),
        (409, "client_error", True, False),
        (413, "client_error", False, False),
        (422, "client_error", False, False),
        (429, "rate_limited", True, False),
        (500, "server_error", True, True),
        (503, "server_error", True, True),
        (529, "overloaded", True, True),
    ],
)
def test_status_classification(status: int, kind: str, retryable: bool, fault: bool) -> None:
    outcome = classify(ProviderHTTPError(status))
    assert (outcome.kind, outcome.status, outcome.retryable, outcome.provider_fault) == (kind, status, retryable, fault)


def test_sdk_shaped_errors_are_classified_by_name() -> None:
    class APITimeoutError(Exception):
        pass

    class APIConnectionError(Exception):
        pass

    assert classify(APITimeoutError()).kind == "timeout"
    assert classify(APIConnectionError()).kind == "connection"
    assert classify(TimeoutError()).kind == "timeout"
    assert classify(ConnectionRefusedError()).kind == "connection"
    assert classify(asyncio.CancelledError()).kind == "cancelled"
    assert classify(ValueError("x")).kind == "error"
    assert not classify(ValueError("x")).retryable
    refused = classify(QuotaExceeded(retry_after=2))
    assert (refused.kind, refused.retryable, refused.retry_after) == ("refused", False, 2)


def test_httpx_style_status_error() -> None:
    class Response:
        status_code = 502
        headers = {"retry-after": "7"}  # noqa: RUF012

    class HTTPStatusError(Exception):
        response = Response()

    outcome = classify(HTTPStatusError())
    assert (outcome.kind, outcome.status, outcome.retry_after) == ("server_error", 502, 7.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:40 GMT"}, now=now) == pytest.approx(20.0)
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, now=now) == 0.0
