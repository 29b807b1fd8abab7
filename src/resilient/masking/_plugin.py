"""The masking section and the first-party detectors, registered like any plugin (entry point ``masking``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..hookspecs import hookimpl
from ._detectors import Detector, default_detectors
from ._options import MaskingOptions


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"masking": MaskingOptions}


@hookimpl
def resilient_mask_detectors() -> Sequence[Detector]:
    return default_detectors()
