"""A structlog processor masking every string in the event dict (structlog is not imported)."""

from __future__ import annotations

import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

from ._logging import FAILED, _mask_value

__all__ = ["make_structlog_processor"]

Processor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]


def make_structlog_processor(mask: Callable[[str], str]) -> Processor:
    """A structlog processor: every string value masked, ``exc_info`` rendered to a masked ``exception``.

    Put it last before the renderer, so it sees what is written; an
    ``exc_info`` still present is formatted here and masked (and removed), so
    no later processor can render the unmasked traceback. It never raises:
    if masking fails, every value becomes the logging filter's fixed marker.
    """

    def processor(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        exc_info = event_dict.pop("exc_info", None)
        if exc_info:
            if exc_info is True:
                import sys

                exc_info = sys.exc_info()
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            if isinstance(exc_info, tuple) and exc_info[0] is not None:
                event_dict["exception"] = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
        try:
            for key, value in list(event_dict.items()):
                event_dict[key] = _mask_value(value, mask)
        except Exception:
            # As the logging filter does: never raise into the caller's log call, never let a value through.
            for key in list(event_dict):
                event_dict[key] = FAILED
        return event_dict

    return processor
