"""Secrets and personal data masked out of logs, in one compiled pass.

``mask(text)`` masks a string; :func:`install` puts a :class:`MaskingFilter`
on the root logger's handlers (or on the ones given); :func:`structlog_processor`
does the same for structlog; ``resilient mask [FILE]`` masks a file or stdin.
The detectors (:func:`default_detectors`, plus those plugins contribute
through ``resilient_mask_detectors``) and the replacement come from
``[tool.resilient.masking]`` (:class:`MaskingOptions`). See ``docs/masking.md``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from ._detectors import Detector, default_detectors, iban_valid, luhn_valid
from ._engine import Masker, Replacement
from ._load import load_masker, masker_from_options
from ._logging import MaskingFilter, uninstall
from ._logging import install as _install
from ._options import MaskingOptions
from ._structlog import make_structlog_processor

__all__ = [
    "Detector",
    "Masker",
    "MaskingFilter",
    "MaskingOptions",
    "Replacement",
    "default_detectors",
    "get_masker",
    "iban_valid",
    "install",
    "load_masker",
    "luhn_valid",
    "make_structlog_processor",
    "mask",
    "masker_from_options",
    "set_masker",
    "structlog_processor",
    "uninstall",
]

_lock = threading.Lock()
_masker: Masker | None = None


def get_masker() -> Masker:
    """The process-wide masker :func:`mask` uses: the one last installed or set, else the first-party set."""
    global _masker
    if _masker is None:
        with _lock:
            if _masker is None:
                _masker = Masker(default_detectors())
    return _masker


def set_masker(masker: Masker) -> None:
    """Make ``masker`` the one :func:`mask` and :func:`structlog_processor` use."""
    global _masker
    _masker = masker


def mask(text: str) -> str:
    """``text`` with every secret the process-wide masker finds replaced."""
    return get_masker().mask(text)


def install(
    masker: Masker | None = None,
    *,
    logger: logging.Logger | None = None,
    handlers: Iterable[logging.Handler] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    plugins: Sequence[object] = (),
) -> MaskingFilter | None:
    """Mask every record the root logger's handlers (or ``logger``'s, or ``handlers``) write.

    Without ``masker``, builds one from the configuration (``[masking]``,
    detectors from every plugin) and makes it the process-wide one; with
    ``enabled = false`` there, installs nothing and returns ``None``.
    Idempotent: calling it again replaces the filter rather than adding a
    second. Handlers added afterwards are not covered: install on them too
    (``install(handlers=[h])``) or add them before.
    """
    if masker is None:
        masker, options = load_masker(config=config, env=env, plugins=plugins)
        if not options.enabled:
            return None
    set_masker(masker)
    return _install(masker.mask, logger=logger, handlers=handlers)


def structlog_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor masking every string of the event with the process-wide masker.

    Add it last before the renderer: ``processors=[..., resilient.masking.structlog_processor, JSONRenderer()]``.
    """
    return make_structlog_processor(get_masker().mask)(logger, method_name, event_dict)
