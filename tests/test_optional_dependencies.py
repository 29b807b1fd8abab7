"""The core install (pluggy, limits, orjson) works without any extra: every optional package absent.

``pip install resilient`` (or ``resilient[anthropic,prometheus]`` as the
getting-started page says) must give a working pipeline on ``memory://``.
The dev environment installs every extra, so a top-level import of an
optional package (``redis`` in a plugin module, say) would pass every other
test and break a user's first ``Pipeline()``. Here a fresh interpreter is
run with those packages made unimportable, as if they were not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: The packages of the optional extras (and what only the dev extra brings), by top-level module.
OPTIONAL = (
    "redis",
    "prometheus_client",
    "starlette",
    "uvicorn",
    "fastapi",
    "flask",
    "structlog",
    "anthropic",
    "openai",
    "httpx",
    "pydantic",
    "hypothesis",
)

BLOCKER = """
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {absent!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""


def run_without(absent: tuple[str, ...], code: str) -> str:
    script = BLOCKER.format(absent=set(absent)) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("absent", [OPTIONAL, ("redis",), ("prometheus_client",)], ids=["core", "no-redis", "no-prom"])
def test_the_default_pipeline_guards_calls_without_the_optional_packages(absent: tuple[str, ...]) -> None:
    out = run_without(
        absent,
        """
        import asyncio
        from resilient import Pipeline, QuotaExceeded

        config = {"cache": {"enabled": True}, "quota": {"requests": "2/minute"}}
        pipeline = Pipeline(env={}, config=config)

        @pipeline.guard(provider="anthropic", operation="messages.create")
        def ask(**kwargs):
            return {"n": kwargs["n"]}

        @pipeline.guard(provider="anthropic", operation="messages.create")
        async def aask(**kwargs):
            return {"n": kwargs["n"]}

        print(ask(n=1, temperature=0), ask(n=1, temperature=0), asyncio.run(aask(n=2)))
        try:
            ask(n=3)
        except QuotaExceeded:
            print("refused")
        print(sorted(type(p).__name__ for p in pipeline.policies))
        """,
    )
    first, refused, policies = out.splitlines()
    assert first == "{'n': 1} {'n': 1} {'n': 2}"  # the second call is the cache's hit: the quota counts two
    assert refused == "refused"
    assert {"CachePolicy", "QuotaPolicy", "RetryPolicy", "BreakerPolicy"} <= set(eval(policies))


def test_every_public_module_imports_without_the_optional_packages() -> None:
    modules = [
        "resilient",
        "resilient.asgi",
        "resilient.wsgi",
        "resilient.flask",
        "resilient.cli",
        "resilient.masking",
        "resilient.prometheus",
        "resilient.providers",
        "resilient.testing",
        "resilient.testing.pytest_plugin",  # loaded by every pytest run once resilient is installed
    ]
    out = run_without(OPTIONAL, "".join(f"import {m}\n" for m in modules) + "print('imported')\n")
    assert out.strip() == "imported"
