from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resilient.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class _LimitsTime:
    """Stands in for the ``time`` module inside ``limits``: wall time from a FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def __getattr__(self, name: str) -> object:
        import time

        return getattr(time, name)


@pytest.fixture
def limits_on(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Run the ``limits`` library's in-memory storage and strategies on the test's fake clock.

    ``limits`` reads ``time.time()`` itself; the quota plugin is given the
    clock, ``limits`` is patched to read the same one.
    """
    import limits.storage.memory
    import limits.strategies

    shim = _LimitsTime(clock)
    monkeypatch.setattr(limits.storage.memory, "time", shim)
    monkeypatch.setattr(limits.strategies, "time", shim)
    import resilient_quota._store

    monkeypatch.setattr(resilient_quota._store, "time", shim)
    import resilient_quota._policy

    monkeypatch.setattr(resilient_quota._policy, "time", shim)
    return clock


AddDist = Callable[..., None]


@pytest.fixture
def add_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AddDist]:
    """Install throwaway distributions (a dist-info, optionally a module) on sys.path for one test.

    ``add(dist, {entry point name: target}, {module name: source})``: what a
    third-party plugin's installed distribution looks like to importlib.metadata.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def add(dist: str, entry_points: dict[str, str], modules_src: dict[str, str] | None = None) -> None:
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[resilient]\n{lines}")
        for mod, src in (modules_src or {}).items():
            (site / f"{mod}.py").write_text(textwrap.dedent(src))
            modules.append(mod)
        importlib.invalidate_caches()

    yield add
    for mod in modules:
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()
