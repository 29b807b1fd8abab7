"""Per-attempt timeouts, stream chunk limits and the call's one deadline, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``timeout``.
Configuration section ``[tool.resilient.timeout]``; see :class:`TimeoutOptions`.
Contributes two policies: ``deadline`` (outside retry: sets and enforces the
call's deadline) and ``timeout`` (innermost: bounds each attempt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resilient import ConfigurationError, Policy, Runtime, hookimpl

from ._errors import AttemptTimeout, Phase
from ._events import DeadlinePassed, TimedOut, TimeoutOverrun
from ._options import TimeoutOptions
from ._policy import DEADLINE_KEY, DeadlinePolicy, TimeoutPolicy, remaining

__all__ = [
    "DEADLINE_KEY",
    "AttemptTimeout",
    "DeadlinePassed",
    "DeadlinePolicy",
    "Phase",
    "TimedOut",
    "TimeoutOptions",
    "TimeoutOverrun",
    "TimeoutPolicy",
    "remaining",
]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"timeout": TimeoutOptions}


def _check_one_deadline(runtime: Runtime, deadline: float | None) -> None:
    """``retry.deadline`` and ``timeout.deadline`` may not disagree: a call has one deadline."""
    retry = runtime.settings.sections.get("retry")
    other = getattr(retry.base, "deadline", None) if retry is not None else None
    if deadline is not None and other is not None and other != deadline:
        raise ConfigurationError(
            "timeout.deadline",
            deadline,
            f"disagrees with retry.deadline = {other:g}: a call has one deadline; set timeout.deadline "
            "(retry reads it) and leave retry.deadline unset",
        )


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(TimeoutOptions)
    base = section.base
    if not base.enabled and not section.varies:
        return ()
    _check_one_deadline(runtime, base.deadline)
    deadlines = section.varies or base.deadline is not None
    limits = section.varies or any(v is not None for v in (base.timeout, base.first_chunk_timeout, base.idle_timeout))
    policies: list[Policy] = []
    if deadlines:
        policies.append(DeadlinePolicy(section, runtime))
    if limits or deadlines:
        policies.append(TimeoutPolicy(section, runtime, deadlines=deadlines))
    return tuple(policies)
