"""Token estimates before a call, pure: shared by the policies that need a call's size before it runs
(quota reservations, routing rules), so none of them imports another's internals."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["estimate_input_tokens", "estimate_output_tokens"]

# Request fields whose text is sent to the model.
_TEXT_FIELDS = ("messages", "system", "prompt", "input", "contents", "tools")


def _chars(value: Any, depth: int = 0) -> int:
    if depth > 20:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_chars(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_chars(v, depth + 1) for v in value)
    return 0


def estimate_input_tokens(args: tuple[Any, ...], kwargs: Mapping[str, Any], chars_per_token: float) -> int:
    """Characters of text in the request divided by ``chars_per_token``, rounded up.

    Counts the fields the providers send to the model (``messages``,
    ``system``, ``prompt``, ``input``, ``contents``, ``tools``) and string
    positional arguments. A cheap upper-ish bound for English text; exact
    counts need the provider's count-tokens call.
    """
    chars = sum(_chars(kwargs[f]) for f in _TEXT_FIELDS if f in kwargs)
    chars += sum(len(a) for a in args if isinstance(a, str))
    return math.ceil(chars / chars_per_token) if chars else 0


def estimate_output_tokens(kwargs: Mapping[str, Any], default: int) -> int:
    """The call's own output cap (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``)."""
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = kwargs.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default
