"""The example third-party plugin (examples/third_party_plugin), installed like any other package.

It is built and installed offline into a temporary directory (no index, no
build isolation: the dev extra provides setuptools), then used from fresh
interpreters whose only way to find it is its ``resilient`` entry point.
docs/writing-a-plugin.md includes its files, so the page shows the code
these tests run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "third_party_plugin"
DOC = ROOT / "docs" / "writing-a-plugin.md"


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with pip into a directory of its own (a copy is built, so the tree stays clean)."""
    work = tmp_path_factory.mktemp("third_party_plugin")
    source = work / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def _run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_installed_distribution_declares_the_entry_point(site_dir: Path) -> None:
    (dist_info,) = site_dir.glob("resilient_slow_calls-*.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert re.search(r"^\[resilient\]\s*\nslow_calls = resilient_slow_calls\s*$", entry_points, re.M), entry_points
    assert (site_dir / "resilient_slow_calls" / "__init__.py").is_file()


def test_resilient_plugins_finds_it_through_its_entry_point(site_dir: Path, tmp_path: Path) -> None:
    done = _run(site_dir, "-m", "resilient", "plugins", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (plugin,) = [p for p in report["plugins"] if p["name"] == "slow_calls"]
    assert plugin["status"] == "ok", plugin
    assert plugin["source"] == "entry point resilient_slow_calls"
    assert set(plugin["hooks"]) == {"resilient_options", "resilient_policies"}
    (policy,) = [p for p in report["policies"] if p["name"] == "slow_calls"]
    assert policy["plugin"] == "slow_calls"
    assert policy["kinds"] == ["sync", "async"]
    # Order.METRICS + 10: right after metrics, before everything else.
    names = [p["name"] for p in report["policies"]]
    assert names.index("slow_calls") == names.index("metrics") + 1


def test_without_the_install_it_is_not_there(tmp_path: Path) -> None:
    done = _run(tmp_path, "-m", "resilient", "plugins", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "slow_calls" not in [p["name"] for p in json.loads(done.stdout)["plugins"]]


GUARDED = textwrap.dedent(
    """
    import asyncio, json, logging
    import resilient
    from resilient.testing import FakeClock

    events = []

    class Observe:
        @resilient.hookimpl
        def resilient_observers(self, runtime):
            return [lambda event: events.append((event.name, event.provider, event.seconds, event.threshold))
                    if event.name.startswith("slow_calls.") else None]

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    clock = FakeClock()
    pipeline = resilient.Pipeline(
        plugins=[Observe()],
        clock=clock,
        config={
            "disable": ["retry", "cache", "quota", "breaker", "timeout", "bulkhead", "fallback", "routing"],
            "slow_calls": {"threshold": "1500ms", "providers": {"batch": {"threshold": 10}}},
        },
    )

    def make(provider):
        @pipeline.guard(provider=provider, operation="complete")
        def complete(seconds):
            clock.advance(seconds)
            return "ok"
        return complete

    @pipeline.guard(provider="llm", operation="acomplete")
    async def acomplete(seconds):
        await clock.asleep(seconds)
        return "ok"

    slow = {}
    with resilient.capture_calls() as calls:
        for label, fn, seconds in [("fast", make("llm"), 1.0), ("slow", make("llm"), 2.5),
                                   ("batch", make("batch"), 5.0)]:
            assert fn(seconds) == "ok"
        assert asyncio.run(acomplete(3.0)) == "ok"
    print(json.dumps({"metadata": [c.metadata.get("slow") for c in calls], "events": events}))
    """
)


def test_it_acts_on_guarded_calls(site_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED)
    done = _run(site_dir, str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # 1.0 s is under the 1.5 s threshold; the batch provider's override (10 s) lets 5 s pass.
    assert result["metadata"] == [None, 2.5, None, 3.0]
    assert result["events"] == [["slow_calls.slow", "llm", 2.5, 1.5], ["slow_calls.slow", "llm", 3.0, 1.5]]
    assert re.findall(r"WARNING resilient\.slow_calls slow call (\S+) took (\S+)", done.stderr) == [
        ("llm:complete", "2.500s"),
        ("llm:acomplete", "3.000s"),
    ]


def test_a_wrong_option_is_reported_with_its_key(site_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text('[slow_calls]\nlog_level = "loud"\n')
    done = _run(site_dir, "-m", "resilient", "config", cwd=tmp_path)
    assert done.returncode != 0
    assert "slow_calls.log_level" in done.stderr
    assert "loud" in done.stderr


def _included_files(markdown: str) -> list[str]:
    return re.findall(r'^--8<-- "([^"]+)"$', markdown, re.M)


def test_the_page_shows_the_plugin_files() -> None:
    """docs/writing-a-plugin.md includes the example's files (pymdownx.snippets), so it cannot drift from them."""
    included = _included_files(DOC.read_text())
    assert "examples/third_party_plugin/pyproject.toml" in included
    assert "examples/third_party_plugin/src/resilient_slow_calls/__init__.py" in included
    for path in included:
        assert (ROOT / path).is_file(), path
