"""The adapters' per-request shortcuts behave exactly like the plain code they replace."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient._http import (
    HttpRequestFinished,
    HttpRequestStarted,
    TenantCache,
    clean_tenant,
    new_context,
    new_finished,
    new_request_id,
    new_started,
    positional,
    request_id_of,
    safe_request_id,
)
from resilient.context import RequestContext

texts = st.none() | st.text(max_size=20)


@given(route=st.text(max_size=30), method=st.text(max_size=8), tenant=texts, request_id=texts)
def test_started_built_positionally_equals_the_keyword_constructor(
    route: str, method: str, tenant: str | None, request_id: str | None
) -> None:
    event = new_started(route, method, tenant, request_id)
    assert type(event) is HttpRequestStarted
    assert event == HttpRequestStarted(route=route, method=method, tenant=tenant, request_id=request_id)
    assert (event.provider, event.operation, event.model) == (None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.route = "/other"  # type: ignore[misc]


@given(
    route=st.text(max_size=30),
    status=st.integers(0, 999),
    duration=st.floats(allow_nan=False),
    tenant=texts,
    request_id=texts,
)
def test_finished_built_positionally_equals_the_keyword_constructor(
    route: str, status: int, duration: float, tenant: str | None, request_id: str | None
) -> None:
    event = new_finished(route, "GET", status, duration, tenant, request_id)
    expected = HttpRequestFinished(
        route=route, method="GET", status=status, duration=duration, tenant=tenant, request_id=request_id
    )
    assert type(event) is HttpRequestFinished
    assert event == expected
    assert repr(event) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.status = 200  # type: ignore[misc]


@given(request_id=st.text(max_size=20), tenant=texts, route=texts)
def test_context_built_positionally_equals_the_keyword_constructor(
    request_id: str, tenant: str | None, route: str | None
) -> None:
    ctx = new_context(request_id, tenant, route)
    assert ctx == RequestContext(request_id=request_id, tenant=tenant, route=route)
    ctx.add("tokens", 3)
    # Each context gets its own dicts, as the default factories give.
    assert new_context(request_id, tenant, route).totals == {}


def test_positional_falls_back_to_the_constructor_when_the_class_does_not_fit() -> None:
    calls: list[int] = []

    @dataclass(slots=True)
    class Checked:
        a: int
        b: list[int] = field(default_factory=lambda: [1])

        def __post_init__(self) -> None:
            calls.append(self.a)

    @dataclass
    class Plain:  # no slots
        a: int
        b: int = 2

    @dataclass(slots=True)
    class Required:
        a: int
        b: int

    for cls in (Checked, Plain):
        build: Any = positional(cls, ("a",))
        assert build(1) == cls(a=1)
    assert calls == [1, 1]
    # A required field not among the names: the constructor's own error, not a half-built object.
    with pytest.raises(TypeError):
        positional(Required, ("a",))(1)


@given(st.binary(max_size=200))
def test_tenant_cache_answers_what_clean_tenant_answers(raw: bytes) -> None:
    cache = TenantCache(size=4)
    expected = clean_tenant(raw.decode("latin-1"))
    assert cache(raw) == expected
    assert cache(raw) == expected  # remembered


def test_tenant_cache_is_bounded() -> None:
    cache = TenantCache(size=8)
    for i in range(100):
        assert cache(f"t{i}".encode()) == f"t{i}"
    assert len(cache._found) <= 8


@given(st.binary(max_size=140))
def test_the_bytes_request_id_check_accepts_what_the_text_check_accepts(raw: bytes) -> None:
    text = raw.decode("latin-1")
    assert bool(safe_request_id(raw)) == (request_id_of(text) == text)


def test_generated_request_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
