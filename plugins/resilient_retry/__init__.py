"""Retries with exponential backoff and full jitter, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``retry``.
Configuration section ``[tool.resilient.retry]``; see :class:`RetryOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Policy, Runtime, hookimpl

from ._events import RetryGaveUp, RetryScheduled
from ._options import RetryOptions
from ._policy import RetryPolicy

__all__ = ["RetryGaveUp", "RetryOptions", "RetryPolicy", "RetryScheduled"]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"retry": RetryOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(RetryOptions)
    if not section.base.enabled and not section.varies:
        return ()
    return (RetryPolicy(section, runtime),)
