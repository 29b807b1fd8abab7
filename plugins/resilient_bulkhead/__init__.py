"""Concurrency limits (bulkheads) per provider, model, tenant or key function, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``bulkhead``.
Configuration section ``[tool.resilient.bulkhead]``; see :class:`BulkheadOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Policy, Runtime, hookimpl

from ._errors import ConcurrencyLimitUnavailable
from ._events import BulkheadRejected
from ._options import KEY_PARTS, BulkheadOptions
from ._policy import BulkheadPolicy, KeyFunction, register_key

__all__ = [
    "KEY_PARTS",
    "BulkheadOptions",
    "BulkheadPolicy",
    "BulkheadRejected",
    "ConcurrencyLimitUnavailable",
    "KeyFunction",
    "register_key",
]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"bulkhead": BulkheadOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(BulkheadOptions)
    base = section.base
    if not section.varies and (not base.enabled or base.max_concurrent is None):
        return ()
    return (BulkheadPolicy(section, runtime),)
