"""Route rate limits on a real Redis: shared between adapters (and so between workers), async and sync drivers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis
from werkzeug.test import Client

from resilient.asgi import ResilientMiddleware
from resilient.testing import RedisServer
from resilient.wsgi import ResilientWSGIMiddleware

from ._webapps import Events, pipeline, starlette_app, uvicorn_server, wsgi_app


@pytest.fixture
def redis_url(redis_store: RedisServer) -> str:
    client = redis.Redis.from_url(redis_store.url)
    client.flushdb()
    client.close()
    return redis_store.url


def test_asgi_and_wsgi_share_one_count_on_redis(redis_url: str) -> None:
    limits = {"/items/{item_id}": "3/minute", "/ok": "100/minute"}
    events = Events()
    asgi = ResilientMiddleware(
        starlette_app(),
        pipeline=pipeline(events, config={"store": redis_url}),
        tenant="header:x-tenant-id",
        rate_limits=limits,
    )
    # The WSGI app names its route like the ASGI one: the same key, so the same count.
    wsgi = ResilientWSGIMiddleware(
        wsgi_app(),
        pipeline=pipeline(events, config={"store": redis_url}),
        tenant="header:x-tenant-id",
        rate_limits=limits,
        route=lambda environ: "/items/{item_id}" if environ["PATH_INFO"].startswith("/items/") else None,
    )

    async def two_from_asgi() -> list[int]:
        transport = httpx.ASGITransport(app=asgi)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return [(await client.get(f"/items/{i}", headers={"x-tenant-id": "a"})).status_code for i in range(2)]
        finally:
            await asgi.core.aclose()  # what lifespan shutdown does: this loop's client

    assert asyncio.run(two_from_asgi()) == [200, 200]
    client = Client(wsgi)
    first = client.get("/items/1", headers={"x-tenant-id": "a"})
    first.close()
    wsgi.close()
    assert first.status_code == 404  # counted (the plain app has no such page), and the third
    refused = client.get("/items/2", headers={"x-tenant-id": "a"})
    refused.close()
    assert refused.status_code == 429
    assert refused.headers["retry-after"]
    assert asyncio.run(two_from_asgi()) == [429, 429]
    keys = redis.Redis.from_url(redis_url).keys("*")
    assert keys
    assert all(b"acme" not in k and b"/items/1" not in k for k in keys)  # the template, not the path


def test_a_redis_that_is_down_lets_requests_through() -> None:
    events = Events()
    app = ResilientMiddleware(
        starlette_app(),
        pipeline=pipeline(events, config={"store": "redis://127.0.0.1:1"}),  # nothing listens there
        rate_limits={"*": "1/minute"},
    )

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return [(await client.get("/items/1")).status_code for _ in range(3)]
        finally:
            await app.core.aclose()

    assert asyncio.run(run()) == [200, 200, 200]
    assert events.in_progress == 0


def test_lifespan_closes_the_async_store_client(redis_url: str) -> None:
    closed: list[Any] = []
    p = pipeline(Events(), config={"store": redis_url})
    app = ResilientMiddleware(starlette_app(), pipeline=p, rate_limits={"*": "100/minute"})
    original = app.core.aclose

    async def aclose() -> None:
        await original()
        closed.append(True)

    app.core.aclose = aclose  # type: ignore[method-assign]
    with uvicorn_server(app) as url:
        assert httpx.get(f"{url}/items/1").status_code == 200
    assert closed == [True]
