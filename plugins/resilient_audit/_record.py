"""One audit line from a finished :class:`~resilient.Call`: what happened, never what was said (by default)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from resilient import Call, Outcome
from resilient.providers import field_of

__all__ = ["audit_record", "encode"]

_PROMPT_KEYS = ("system", "messages", "prompt", "input", "contents")


def _plain(value: Any) -> Any:
    """A JSON-able copy of a decision value (objects become their ``str``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(_plain(value), ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "...[cut]"


def audit_record(
    call: Call,
    outcome: Outcome,
    *,
    wall_time: float,
    duration: float | None,
    include_prompts: bool = False,
    response: Any = None,
    max_text_chars: int = 4096,
) -> dict[str, Any]:
    """The fields of one audit line (unmasked; :func:`encode` masks them)."""
    ctx = call.context
    usage = call.usage
    metadata = dict(call._metadata or {})
    cost = metadata.pop("cost_usd", None)
    record: dict[str, Any] = {
        "ts": datetime.datetime.fromtimestamp(wall_time, datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": ctx.request_id if ctx is not None else None,
        "tenant": call.tenant,
        "route": ctx.route if ctx is not None else None,
        "provider": call.provider,
        "operation": call.operation,
        "model": call.model,
        "outcome": outcome.kind,
        "ok": outcome.ok,
        "status": outcome.status,
        "error_type": type(outcome.error).__name__ if outcome.error is not None else None,
        "attempts": call.attempt,
        "duration_ms": round(duration * 1000, 3) if duration is not None else None,
        "tokens": None
        if usage is None
        else {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cache_read": usage.cache_read_tokens,
            "cache_write": usage.cache_write_tokens,
        },
        "cost_usd": cost,
        "decisions": _plain(metadata),
    }
    if include_prompts:
        record["prompt"] = {k: _text(call.kwargs[k], max_text_chars) for k in _PROMPT_KEYS if k in call.kwargs}
    if response is not None:
        record["response"] = _text(response, max_text_chars)
    return record


def _mask_all(value: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _mask_all(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_all(v, mask) for v in value]
    return value


def encode(record: dict[str, Any], mask: Callable[[str], str]) -> bytes:
    """One line: every string value masked (before encoding, so the JSON stays valid), then ``\\n``."""
    masked = _mask_all(record, mask)
    return json.dumps(masked, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def response_text(result: Any) -> Any:
    """The text of an SDK response, if it has one (anthropic ``content``, openai ``choices``), else ``str``."""
    content = field_of(result, "content")
    if isinstance(content, list):
        return "".join(str(getattr(block, "text", "")) for block in content)
    choices = field_of(result, "choices")
    if isinstance(choices, list) and choices:
        message = field_of(choices[0], "message")
        return str(getattr(message, "content", "") or "")
    return result if isinstance(result, str) else str(result)
