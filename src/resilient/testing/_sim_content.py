"""What the simulator answers: request validation, deterministic replies, token counts, provider JSON shapes.

Pure functions of the request (and an id and a timestamp given by the
caller), so the same request always gets the same text and usage: cache
and end-to-end tests can compare answers.

Tokens are words: a token is a run of non-space characters with the
spaces after it. Input tokens are the words of the system prompt and of
every message, plus 3 per message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "InvalidRequest",
    "Reply",
    "ReplyFn",
    "anthropic_error",
    "anthropic_events",
    "anthropic_message",
    "anthropic_input_tokens",
    "default_reply",
    "make_reply",
    "openai_chunks",
    "openai_completion",
    "openai_error",
    "openai_input_tokens",
    "parse_json",
    "validate_anthropic",
    "validate_openai",
]

_TOKEN = re.compile(r"\S+\s*")
_PER_MESSAGE = 3

#: Computes the full reply text from the last user prompt and the whole request body.
ReplyFn = Callable[[str, Mapping[str, Any]], str]


class InvalidRequest(ValueError):
    """The request is malformed: the simulator answers 400 ``invalid_request_error`` with this message."""


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def _require_messages(data: Mapping[str, Any]) -> None:
    if "model" not in data:
        raise InvalidRequest("model: Field required")
    if not isinstance(data["model"], str) or not data["model"]:
        raise InvalidRequest("model: Input should be a non-empty string")
    if "messages" not in data:
        raise InvalidRequest("messages: Field required")
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Input should be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InvalidRequest(f"messages.{i}: each message is an object with a role and content")


def _positive_int(data: Mapping[str, Any], key: str) -> None:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{key}: Input should be an integer >= 1")


def validate_anthropic(data: Mapping[str, Any], *, count_tokens: bool = False) -> None:
    """Raise :class:`InvalidRequest` unless ``data`` is a plausible Messages (or count_tokens) request."""
    _require_messages(data)
    if count_tokens:
        return
    if "max_tokens" not in data:
        raise InvalidRequest("max_tokens: Field required")
    _positive_int(data, "max_tokens")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise InvalidRequest("stream: Input should be a valid boolean")


def validate_openai(data: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidRequest` unless ``data`` is a plausible chat completions request."""
    _require_messages(data)
    for key in ("max_tokens", "max_completion_tokens"):
        if data.get(key) is not None:
            _positive_int(data, key)
    if "stream" in data and data["stream"] is not None and not isinstance(data["stream"], bool):
        raise InvalidRequest("stream: Input should be a valid boolean")


def _text(content: Any) -> str:
    """The text of a message content: a string, or the ``text`` of its text blocks/parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") in ("text", None)
        )
    return ""


def count_words(text: str) -> int:
    return len(_TOKEN.findall(text))


def _messages_tokens(messages: Sequence[Any]) -> int:
    return sum(count_words(_text(m.get("content"))) + _PER_MESSAGE for m in messages if isinstance(m, dict))


def anthropic_input_tokens(data: Mapping[str, Any]) -> int:
    return count_words(_text(data.get("system"))) + _messages_tokens(data["messages"])


def openai_input_tokens(data: Mapping[str, Any]) -> int:
    return _messages_tokens(data["messages"])


def last_user_text(data: Mapping[str, Any]) -> str:
    for m in reversed(data["messages"]):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def default_reply(prompt: str, data: Mapping[str, Any]) -> str:
    """``"Simulated reply to: <the last user message, spaces collapsed>"``."""
    words = prompt.split()
    return "Simulated reply to: " + " ".join(words) if words else "Simulated reply."


@dataclass(frozen=True)
class Reply:
    """The answer to one request: its text in stream pieces (one token each) and its usage."""

    pieces: tuple[str, ...]
    input_tokens: int
    truncated: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)


def make_reply(text: str, *, input_tokens: int, max_tokens: int | None) -> Reply:
    pieces = _TOKEN.findall(text.lstrip())
    truncated = max_tokens is not None and len(pieces) > max_tokens
    if truncated:
        assert max_tokens is not None
        pieces = pieces[:max_tokens]
    if pieces:
        pieces[-1] = pieces[-1].rstrip()
    return Reply(tuple(pieces), input_tokens, truncated)


# -- Anthropic -----------------------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    "invalid_request_error": "Invalid request.",
    "rate_limit_error": "Number of requests has exceeded your rate limit (simulated).",
    "overloaded_error": "Overloaded (simulated).",
    "api_error": "Internal server error (simulated).",
}


def anthropic_error(status: int, message: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    kind = error_type or _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or _MESSAGES.get(kind, f"Simulated error {status}.")
    return {"type": "error", "error": {"type": kind, "message": text}}


def _anthropic_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }


def _stop_reason(reply: Reply) -> str:
    return "max_tokens" if reply.truncated else "end_turn"


def anthropic_message(reply: Reply, *, message_id: str, model: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": _anthropic_usage(reply.input_tokens, reply.output_tokens),
    }


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def anthropic_events(reply: Reply, *, message_id: str, model: str) -> list[bytes]:
    """The SSE events of a streamed answer, in the order the Messages API sends them."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(reply.input_tokens, 1),
    }
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    events += [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in reply.pieces
    ]
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def anthropic_error_event(status: int, error_type: str) -> bytes:
    return _sse("error", anthropic_error(status, error_type=error_type))


# -- OpenAI --------------------------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def openai_error(status: int, message: str | None = None) -> dict[str, Any]:
    kind, code = _OPENAI_ERRORS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    text = message or (
        "Rate limit reached for requests (simulated)." if status == 429 else f"Simulated error {status}."
    )
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


def _openai_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _finish_reason(reply: Reply) -> str:
    return "length" if reply.truncated else "stop"


def openai_completion(reply: Reply, *, completion_id: str, model: str, created: int) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "finish_reason": _finish_reason(reply),
                "logprobs": None,
            }
        ],
        "usage": _openai_usage(reply),
        "system_fingerprint": None,
    }


def _data(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


OPENAI_DONE = b"data: [DONE]\n\n"


def openai_chunks(reply: Reply, *, completion_id: str, model: str, created: int, include_usage: bool) -> list[bytes]:
    """The ``data:`` chunks of a streamed chat completion, ending with ``data: [DONE]``."""

    def chunk(delta: Mapping[str, Any], finish: str | None) -> bytes:
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        return _data(obj)

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [chunk({"content": p}, None) for p in reply.pieces]
    chunks.append(chunk({}, _finish_reason(reply)))
    if include_usage:
        chunks.append(
            _data(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": _openai_usage(reply),
                }
            )
        )
    chunks.append(OPENAI_DONE)
    return chunks


def openai_error_chunk(status: int, message: str | None = None) -> bytes:
    return _data(openai_error(status, message))
