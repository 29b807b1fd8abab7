"""The logging filter: every record masked once, before any handler formats it."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["MaskingFilter", "install", "uninstall"]

#: What a record's message becomes when masking it failed: a fixed text, never the original.
FAILED = "[resilient: log record withheld: masking failed]"

# Attributes every LogRecord has; anything else was passed with ``extra=`` (or set by a filter).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "_resilient_masked",
}


class MaskingFilter(logging.Filter):
    """A :class:`logging.Filter` that masks a record in place and lets it through.

    The message is formatted with its args once, masked, and stored as
    ``record.msg`` with ``record.args = None`` (so no handler formats it
    again). An exception is formatted into ``record.exc_text``, masked, and
    ``record.exc_info`` is cleared: formatters append ``exc_text``, and a
    formatter that would render ``exc_info`` itself (JSON formatters do)
    cannot reach the unmasked traceback. ``stack_info`` and string values of
    ``extra`` attributes (nested in dicts and lists too) are masked; other
    extra objects are replaced by their masked ``str()``. A record is masked
    once even when several handlers carry the filter. The filter never
    raises: if masking fails, the record's text is replaced by a fixed
    marker rather than let through.
    """

    def __init__(self, mask: Callable[[str], str]) -> None:
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("_resilient_masked") is self.mask:
            return True
        try:
            self._mask_record(record)
        except Exception:
            record.msg = FAILED
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
            for key in [k for k in record.__dict__ if k not in _STANDARD]:
                record.__dict__[key] = FAILED
        record.__dict__["_resilient_masked"] = self.mask
        return True

    def _mask_record(self, record: logging.LogRecord) -> None:
        mask = self.mask
        record.msg = mask(record.getMessage())
        record.args = None
        if "message" in record.__dict__:
            record.message = record.msg
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_info = None
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = _mask_value(value, mask)


def _mask_value(value: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {_mask_value(k, mask): _mask_value(v, mask) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_value(v, mask) for v in value]
    if isinstance(value, bytes):
        return mask(value.decode("utf-8", "replace"))
    return mask(str(value))


def install(
    mask: Callable[[str], str],
    *,
    logger: logging.Logger | None = None,
    handlers: Iterable[logging.Handler] | None = None,
) -> MaskingFilter:
    """Put a :class:`MaskingFilter` on ``handlers``, or on every handler of ``logger`` (default: root).

    A filter on a handler sees every record the handler writes, including
    records propagated from child loggers (a filter on a logger would not).
    Idempotent: a handler that already has a masking filter gets it replaced
    by this one. Handlers added later are not covered: call again.
    """
    flt = MaskingFilter(mask)
    targets = list(handlers) if handlers is not None else list((logger or logging.getLogger()).handlers)
    for handler in targets:
        for old in [f for f in handler.filters if isinstance(f, MaskingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(flt)
    return flt


def uninstall(*, logger: logging.Logger | None = None, handlers: Iterable[logging.Handler] | None = None) -> None:
    """Remove masking filters from ``handlers``, or from every handler of ``logger`` (default: root)."""
    targets = list(handlers) if handlers is not None else list((logger or logging.getLogger()).handlers)
    for handler in targets:
        for old in [f for f in handler.filters if isinstance(f, MaskingFilter)]:
            handler.removeFilter(old)
