"""pytest fixtures for resilient users (registered through ``pytest11``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..pipeline import Pipeline
from ._clock import FakeClock
from ._scripted import ScriptedProvider


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
