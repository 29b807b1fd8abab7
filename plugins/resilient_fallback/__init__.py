"""Fallback chains (another model, a function, a canned answer), as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``fallback``.
Configuration section ``[tool.resilient.fallback]``; see :class:`FallbackOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Policy, Runtime, hookimpl

from ._events import FallbackExhausted, FallbackUsed
from ._options import TRIGGERS, FallbackOptions
from ._policy import FALLBACK_STEP, FallbackPolicy, register
from ._steps import Fallback, Step

__all__ = [
    "FALLBACK_STEP",
    "TRIGGERS",
    "Fallback",
    "FallbackExhausted",
    "FallbackOptions",
    "FallbackPolicy",
    "FallbackUsed",
    "Step",
    "register",
]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"fallback": FallbackOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(FallbackOptions)
    base = section.base
    if not section.varies and (not base.enabled or not base.steps):
        return ()
    return (FallbackPolicy(section, runtime),)
