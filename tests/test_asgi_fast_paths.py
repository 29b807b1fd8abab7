"""The ASGI middleware's per-request shortcuts answer what the plain code they replace answers.

Rate limits bound per route (``HttpCore.route_hits``) against ``limits``'
own fixed windows on the same fake clock, several limits per route
included; tenants from header values that are not ``bytes``; the per-route
plans bounded; the request coroutine small enough for CPython's
small-object allocator.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
from typing import Any

import limits
import limits.storage.memory
import limits.strategies
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import _http
from resilient._clocked import on_clock, strategies_on
from resilient._http import HttpCore, TenantCache, new_request_id
from resilient.asgi import ResilientMiddleware
from resilient.context import current
from resilient.testing import FakeClock

from ._webapps import Events, pipeline

TABLE = {"/a": "2/second;5/minute", "/b": "1/10 seconds", "*": "3/10 seconds"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=15, allow_nan=False),  # seconds to advance first
            st.sampled_from(["/a", "/b", "/c", "/d"]),
            st.sampled_from(["t1", "t2"]),
        ),
        max_size=40,
    )
)
def test_route_limits_refuse_like_limits_fixed_windows(steps: list[tuple[float, str, str]]) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    core = HttpCore(pipeline(Events(), clock=clock), tenant="header:x-tenant-id", rate_limits=TABLE, mask_logs=False)
    # limits' own memory storage and fixed window, on the test's clock
    storage = on_clock(limits.storage.MemoryStorage, clock)()
    try:
        reference = strategies_on(clock)["fixed-window"](storage)
        for advance, route, tenant in steps:
            clock.advance(advance)
            expected = None
            # Each limit of the route in order; the first one spent refuses, the later ones are not counted.
            for i, item in enumerate(limits.parse_many(TABLE.get(route, TABLE["*"]))):
                if not reference.hit(item, "http", route, tenant, str(i)):
                    stats = reference.get_window_stats(item, "http", route, tenant, str(i))
                    expected = (item.amount, stats.remaining, stats.reset_time)
                    break
            got = core.check_sync(route, None, tenant)
            if expected is None:
                assert got is None
                continue
            assert got is not None
            error, headers = got
            amount, remaining, reset = expected
            assert error.status == 429
            assert error.retry_after == max(0.0, reset - clock.time())
            assert headers == [
                ("ratelimit-limit", str(amount)),
                ("ratelimit-remaining", str(remaining)),
                ("ratelimit-reset", str(max(0, math.ceil(reset - clock.time())))),
            ]
    finally:
        storage.timer.cancel()


def test_route_hits_are_bound_once_per_route_and_none_without_a_limit() -> None:
    core = HttpCore(pipeline(Events()), rate_limits={"/a": "5/minute"}, mask_logs=False)
    hits = core.route_hits("/a")
    assert hits is not None
    assert core.route_hits("/a") is hits
    assert core.route_hits("/other") is None  # no "*": nothing limits it


# --------------------------------------------------------------------------- driving the middleware directly


def scope(path: str = "/items/1", headers: list[tuple[Any, Any]] | None = None, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers or [],
        "client": ("10.0.0.7", 1234),
    }


def call(app: Any, sc: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(sc, receive, send))
    return sent


def context_app() -> Any:
    """An ASGI app answering with the request context's tenant and route (its body)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = current()
        assert ctx is not None
        body = f"{ctx.tenant}|{ctx.route}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@given(raw=st.binary(min_size=1, max_size=40), kind=st.sampled_from([bytes, bytearray, memoryview]))
@settings(max_examples=50, deadline=None)
def test_a_tenant_header_value_that_is_not_bytes_gives_the_same_tenant(raw: bytes, kind: type) -> None:
    app = ResilientMiddleware(
        context_app(), pipeline=pipeline(Events()), tenant="header:x-tenant-id", route=lambda s: "/r", mask_logs=False
    )
    expected = TenantCache()(raw)
    for _ in range(2):  # the first one cleans the value, the second finds it remembered
        sent = call(app, scope(headers=[(b"x-tenant-id", kind(raw))]))
        assert sent[1]["body"] == f"{expected}|/r".encode()


def test_plans_stay_bounded_with_ever_new_routes_and_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    import resilient.asgi

    monkeypatch.setattr(resilient.asgi, "_ROUTE_CACHE_SIZE", 16)
    counter = iter(range(10_000))
    app = ResilientMiddleware(
        context_app(),
        pipeline=pipeline(Events()),
        route=lambda s: f"/r{next(counter)}",
        rate_limits={"*": "1000/minute"},
        mask_logs=False,
    )
    for i in range(50):
        sent = call(app, scope(method=f"M{i % 7}"))
        assert sent[0]["status"] == 200
        assert len(app._plans) <= 16


def test_a_route_over_its_limit_is_refused_by_the_bound_hits() -> None:
    app = ResilientMiddleware(
        context_app(),
        pipeline=pipeline(Events(), clock=FakeClock()),
        tenant="header:x-tenant-id",
        route=lambda s: "/r",
        rate_limits={"/r": "2/minute"},
        mask_logs=False,
    )
    statuses = [call(app, scope(headers=[(b"x-tenant-id", b"acme")]))[0]["status"] for _ in range(3)]
    assert statuses == [200, 200, 429]
    # Another tenant has its own window; a request without one is counted by address.
    assert call(app, scope(headers=[(b"x-tenant-id", b"other")]))[0]["status"] == 200
    assert [call(app, scope())[0]["status"] for _ in range(3)] == [200, 200, 429]


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11),
    reason="the coroutine's layout is CPython 3.11's",
)
def test_the_request_coroutine_fits_the_small_object_allocator() -> None:
    # Objects over 512 bytes go to the system malloc: a request's coroutine should not.
    coroutine = ResilientMiddleware.__call__(None, {}, None, None)  # type: ignore[arg-type]
    try:
        assert sys.getsizeof(coroutine) <= 512
    finally:
        coroutine.close()


def test_request_ids_are_drawn_again_after_a_fork() -> None:
    new_request_id()  # mid-block: a forked child must not go on with it
    before = new_request_id()
    _http._reseed_request_ids()  # what a forked child runs
    after = new_request_id()
    assert re.fullmatch(r"[0-9a-f]{32}", after)
    assert before[:16] != after[:16]


def test_request_ids_stay_unique_across_blocks_and_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    def draw(_: int) -> list[str]:
        return [new_request_id() for _ in range(3_000)]

    with ThreadPoolExecutor(8) as pool:
        ids = [i for batch in pool.map(draw, range(8)) for i in batch]
    assert len(set(ids)) == len(ids) == 24_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_tenant_cache_known_reads_what_the_cache_remembers() -> None:
    cache = TenantCache(size=2)
    missing = object()
    assert cache.known(b"acme", missing) is missing
    assert cache(b"acme") == "acme"
    assert cache.known(b"acme", missing) == "acme"
    assert cache(b"bad value") is None  # remembered as no tenant
    assert cache.known(b"bad value", missing) is None
    cache(b"third")  # full: cleared, and ``known`` still reads the same dict
    assert cache.known(b"acme", missing) is missing
    assert cache.known(b"third", missing) == "third"
