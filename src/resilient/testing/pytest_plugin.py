"""pytest fixtures for resilient users (registered through ``pytest11``).

``memory_store`` and ``redis_store`` give stores of one shape,
:class:`StoreFixture` (``url``, ``key_prefix``, ``config()``, ``flush()``),
so that a test can be parametrised over both.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..pipeline import Pipeline
from ._clock import FakeClock
from ._redis import RedisServer, redis_required, redis_server
from ._scripted import ScriptedProvider
from ._stores import MemoryStore, StoreFixture

if TYPE_CHECKING:
    from .simulator import SimulatorServer

# The fixtures are found by pytest; the stores' classes are here for annotations.
__all__ = ["MemoryStore", "StoreFixture"]


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`FakeClock` at 0."""
    return FakeClock()


@pytest.fixture
def scripted_provider(fake_clock: FakeClock) -> Callable[..., ScriptedProvider]:
    """A factory: ``scripted_provider([outcome, ...], default=...)`` on the test's fake clock."""

    def make(script: Any = (), **kwargs: Any) -> ScriptedProvider:
        kwargs.setdefault("clock", fake_clock)
        return ScriptedProvider(script, **kwargs)

    return make


@pytest.fixture
def resilient_pipeline(fake_clock: FakeClock) -> Iterator[Callable[..., Pipeline]]:
    """A factory building pipelines on the fake clock, isolated from the environment.

    ``resilient_pipeline(config={...}, plugins=[...])``: entry-point plugins
    are discovered, ``RESILIENT_*`` variables and files in the working
    directory are ignored unless given, and every pipeline is closed after
    the test.
    """
    built: list[Pipeline] = []

    def make(**kwargs: Any) -> Pipeline:
        kwargs.setdefault("clock", fake_clock)
        kwargs.setdefault("env", {})
        kwargs.setdefault("config", {})
        pipeline = Pipeline(**kwargs)
        built.append(pipeline)
        return pipeline

    yield make
    for pipeline in built:
        pipeline.close()


_memory_stores = itertools.count()


@pytest.fixture
def memory_store() -> MemoryStore:
    """The ``memory://`` store under a key prefix of the test's own: a :class:`StoreFixture`."""
    return MemoryStore("memory://", f"test{next(_memory_stores)}:")


@pytest.fixture(scope="session")
def redis_store() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free loopback port for the test session: a :class:`StoreFixture`.

    Skips when ``redis-server`` is not installed, unless
    ``RESILIENT_REQUIRE_REDIS=1`` (as in CI), where it fails instead. Use
    ``redis_store.config(...)`` or ``redis_store.url`` and ``.key_prefix``;
    one server serves the whole session, so ``redis_store.flush()`` where a
    test must not see the keys of those before it.
    """
    try:
        with redis_server() as server:
            yield server
    except FileNotFoundError as exc:
        if redis_required():
            pytest.fail(f"RESILIENT_REQUIRE_REDIS is set but {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A fake Anthropic/OpenAI provider served on a free loopback port for one test.

    Point the SDKs at ``simulator.base_url`` (Anthropic) or
    ``simulator.openai_base_url`` (OpenAI); script faults and read counters
    on ``simulator.simulator`` (a :class:`resilient.testing.simulator.Simulator`).
    Needs ``resilient[simulator]`` (starlette and uvicorn).
    """
    # Imported here: starlette must not load for test runs that do not use the simulator.
    from .simulator import run_simulator

    with run_simulator() as server:
        yield server
