"""The documentation site: every page in the nav, every plugin documented, the testing page's code runs.

``make docs`` (run by ``make test``) builds the site with ``mkdocs --strict``,
which fails on a broken link or anchor and on a page left out of the nav;
these tests cover what the build cannot see.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_pages() -> set[str]:
    # mkdocs.yml is read as text: its nav entries are "title: page.md" lines.
    return set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), re.M | re.S)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "_ext" not in p.parts}
    assert pages == _nav_pages()


def test_every_first_party_plugin_has_its_page_in_the_nav() -> None:
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["resilient"]
    nav = _nav_pages()
    for name in entry_points:
        page = "masking.md" if name == "masking" else f"plugins/{name}.md"
        assert page in nav, name


def test_every_option_of_every_section_is_on_its_page() -> None:
    import dataclasses

    from resilient import Pipeline

    settings = Pipeline(env={}, config={}).settings
    pages = {"core": "configuration.md", "masking": "masking.md"}
    sections = {"core": settings.core, **{name: section.base for name, section in settings.sections.items()}}
    for name, options in sections.items():
        text = (DOCS / pages.get(name, f"plugins/{name}.md")).read_text()
        missing = [f.name for f in dataclasses.fields(options) if f"`{f.name}`" not in text]
        assert not missing, f"[{name}] options not documented on their page: {missing}"


def test_the_api_reference_covers_the_public_modules() -> None:
    documented = set(
        re.findall(r"^::: ([\w.]+)", "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md")), re.M)
    )
    public = {
        "resilient",
        "resilient.testing",
        "resilient.asgi",
        "resilient.wsgi",
        "resilient.flask",
        "resilient.masking",
        "resilient.prometheus",
    }
    assert public <= documented


def test_the_testing_page_examples_run(tmp_path: Path) -> None:
    """docs/testing.md: the FakeClock example as a script, the pytest examples with pytest, the checks on a config."""
    script, fixtures, hypothesis_test, checks = _python_blocks("testing.md")
    (tmp_path / "example.py").write_text(script)
    (tmp_path / "test_fixtures.py").write_text(fixtures)
    (tmp_path / "test_property.py").write_text(hypothesis_test)
    assert "from myapp.settings import RESILIENT_CONFIG" in checks
    config = {
        "quota": {"requests": "5/minute"},
        "breaker": {"window_size": 10, "minimum_calls": 5},
        "retry": {"max_attempts": 3, "deadline": "10s"},
    }
    (tmp_path / "test_checks.py").write_text(
        checks.replace("from myapp.settings import RESILIENT_CONFIG", f"RESILIENT_CONFIG = {config!r}")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_fixtures.py",
            "test_property.py",
            "test_checks.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout, done.stdout


@pytest.mark.parametrize("page", ["getting-started.md", "concepts.md", "deploying.md"])
def test_python_blocks_of_the_guides_compile(page: str) -> None:
    for block in _python_blocks(page):
        compile(block, page, "exec")
