"""``[tool.resilient.masking]``: which detectors run and what a secret is replaced with."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..config import option
from ._detectors import _alternative, _group_problem

__all__ = ["MaskingOptions"]


@dataclass(frozen=True, kw_only=True)
class MaskingOptions:
    """``[tool.resilient.masking]``: log masking.

    Every first-party detector (and every detector a plugin adds through
    ``resilient_mask_detectors``) runs unless named in ``disable``.
    ``replacement = "hmac"`` needs ``hmac_key``; set it through the
    environment (``RESILIENT_MASKING__HMAC_KEY``), never in a file under
    version control. ``patterns`` adds detectors by regular expression:
    ``{ employee_id = "EMP-[0-9]{6}" }`` (the whole match is replaced).
    """

    enabled: bool = option(True, doc="Mask logs when install() is called (adapters call it).")
    disable: tuple[str, ...] = option(default_factory=tuple, doc="Detector names to turn off.")
    replacement: Literal["label", "hmac"] = option(
        "label", doc="'label': [REDACTED:<detector>]; 'hmac': [REDACTED:<detector>:<keyed hash>] for correlation."
    )
    hmac_key: str = option("", secret=True, doc="Key of the keyed hash (replacement = 'hmac'); from the environment.")
    patterns: Mapping[str, str] = option(
        default_factory=dict, doc="Extra detectors: {name = regular expression}; the whole match is replaced."
    )

    def __post_init__(self) -> None:
        if self.replacement == "hmac" and not self.hmac_key:
            raise ValueError("replacement = 'hmac' needs hmac_key (set RESILIENT_MASKING__HMAC_KEY in the environment)")
        for name, pattern in self.patterns.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"patterns: detector name {name!r} must be lower_snake_case")
            try:
                re.compile(pattern)
                re.compile(_alternative(pattern, 0))  # as the engine compiles it: "(?i)..." fails there
            except re.error as exc:
                raise ValueError(f"patterns.{name} = {pattern!r} is not a valid regular expression: {exc}") from None
            problem = _group_problem(pattern, 0)
            if problem:
                raise ValueError(f"patterns.{name} = {pattern!r}: {problem}")
