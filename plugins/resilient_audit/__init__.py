"""The audit log, as a resilient plugin: one masked JSON line per provider call.

Registered through the ``resilient`` entry-point group as ``audit``; off
until ``[tool.resilient.audit] path`` is set. See :class:`AuditOptions` and
``docs/plugins/audit.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from resilient import Policy, Runtime, hookimpl
from resilient.masking import MaskingOptions, masker_from_options
from resilient.masking._load import installed_detectors

from ._options import AuditOptions
from ._policy import AuditPolicy
from ._record import audit_record, encode
from ._writer import AppendWriter

__all__ = ["AppendWriter", "AuditOptions", "AuditPolicy", "audit_record", "encode"]

_log = logging.getLogger("resilient.audit")


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"audit": AuditOptions}


def _mask_for(runtime: Runtime) -> Callable[[str], str]:
    """The ``[masking]`` masker of this configuration, with the detectors installed plugins add."""
    sections = runtime.settings.sections
    options = sections["masking"].base if "masking" in sections else MaskingOptions()
    try:
        return masker_from_options(options, installed_detectors()).mask
    except Exception as exc:  # a plugin's detectors are broken: the first-party set still masks
        _log.warning("audit: plugin detectors not loaded (%s); masking with the first-party set", exc)
        return masker_from_options(options).mask


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    options = runtime.settings.options(AuditOptions)
    if not options.path:
        return ()
    return (AuditPolicy(options, runtime, _mask_for(runtime)),)
