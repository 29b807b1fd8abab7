"""Model routing (light requests to a cheaper model, by function or rules), as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``routing``.
Configuration section ``[tool.resilient.routing]``; see :class:`RoutingOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Policy, Runtime, hookimpl

from ._events import RoutingDecided
from ._options import CONDITIONS, RoutingOptions
from ._policy import ROUTE, Router, RoutingPolicy, register
from ._rules import Rule

__all__ = ["CONDITIONS", "ROUTE", "Router", "RoutingDecided", "RoutingOptions", "RoutingPolicy", "Rule", "register"]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"routing": RoutingOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(RoutingOptions)
    base = section.base
    if not section.varies and (not base.enabled or (not base.function and not base.rules)):
        return ()
    return (RoutingPolicy(section, runtime),)
