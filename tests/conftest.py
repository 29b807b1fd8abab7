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


@pytest.fixture
def limits_on(clock: FakeClock) -> FakeClock:
    """The test's fake clock, for tests whose rate-limit windows must run on it.

    Nothing is patched: a pipeline built on a clock counts its ``limits``
    windows on it in memory (``resilient._clocked``), and these tests check
    that it does.
    """
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
