"""Token usage read from provider responses, by duck typing (no SDK imported)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..call import Usage
from ._fields import field_of

__all__ = ["merge_usage", "usage_from", "usage_from_chunk"]


# Whether a type is a Mapping, remembered: isinstance against the ABC costs more than the
# rest of reading a field, and responses come in a handful of types.
_is_mapping: dict[type, bool] = {dict: True}


def _get(obj: Any, name: str) -> Any:
    mapping = _is_mapping.get(type(obj))
    if mapping is None:
        mapping = _mapping(type(obj))
    return obj.get(name) if mapping else field_of(obj, name)


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _mapping(cls: type) -> bool:
    mapping = _is_mapping.get(cls)
    if mapping is None:
        mapping = issubclass(cls, Mapping)
        if len(_is_mapping) < 1024:
            _is_mapping[cls] = mapping
    return mapping


def usage_from(response: Any) -> Usage | None:
    """The :class:`~resilient.Usage` of a response, or ``None`` when it carries none.

    Reads anthropic ``Message.usage`` (``input_tokens``, ``output_tokens``,
    ``cache_read_input_tokens``, ``cache_creation_input_tokens``), openai
    ``ChatCompletion.usage`` (``prompt_tokens``, ``completion_tokens``, with
    cached prompt tokens split out), Gemini ``usage_metadata``
    (``prompt_token_count``, ``candidates_token_count``,
    ``cached_content_token_count``), and the dict forms of each; also the
    anthropic stream events ``message_start`` (``message.usage``) and
    ``message_delta`` (``usage``); openai Responses API ``usage`` (``input_tokens``
    with ``input_tokens_details.cached_tokens`` split out).
    """
    # An SDK response object with a usage object (every call of an anthropic or openai client) is
    # read here field by field, no _get call per field: this runs once per successful call and
    # the generic reads below cost ~11 Python calls. Same rules as _usage_generic (a property test
    # holds them equal); dicts and the other shapes go there.
    mapping = _is_mapping.get(type(response))
    if not (_mapping(type(response)) if mapping is None else mapping):
        usage = field_of(response, "usage")
        if usage is not None:
            mapping = _is_mapping.get(type(usage))
            if not (_mapping(type(usage)) if mapping is None else mapping):
                prompt = field_of(usage, "prompt_tokens")
                completion = field_of(usage, "completion_tokens")
                if prompt is not None or completion is not None:  # openai chat completions
                    details = field_of(usage, "prompt_tokens_details")
                    cached = _int(_get(details, "cached_tokens")) if details is not None else 0
                    prompt = prompt if type(prompt) is int and prompt > 0 else 0
                    return Usage(
                        prompt - cached if prompt > cached else 0,
                        completion if type(completion) is int and completion > 0 else 0,
                        cached,
                    )
                input_tokens = field_of(usage, "input_tokens")
                output_tokens = field_of(usage, "output_tokens")
                cache_read = field_of(usage, "cache_read_input_tokens")
                cache_write = field_of(usage, "cache_creation_input_tokens")
                if cache_read is None and cache_write is None:
                    if input_tokens is None and output_tokens is None:
                        return None
                    details = field_of(usage, "input_tokens_details")  # openai Responses API
                    if details is not None:
                        cached = _int(_get(details, "cached_tokens"))
                        return Usage(max(_int(input_tokens) - cached, 0), _int(output_tokens), cached)
                return Usage(  # anthropic
                    input_tokens if type(input_tokens) is int and input_tokens > 0 else 0,
                    output_tokens if type(output_tokens) is int and output_tokens > 0 else 0,
                    cache_read if type(cache_read) is int and cache_read > 0 else 0,
                    cache_write if type(cache_write) is int and cache_write > 0 else 0,
                )
        return _usage_generic(response, usage)  # its usage read once (most stream events have none)
    return _usage_generic(response)


_UNREAD: Any = object()


def _usage_generic(response: Any, usage: Any = _UNREAD) -> Usage | None:
    if usage is _UNREAD:
        usage = _get(response, "usage")
    if usage is None:
        message = _get(response, "message")  # anthropic message_start event
        usage = _get(message, "usage") if message is not None else None
    if usage is None:
        meta = _get(response, "usage_metadata")
        if meta is not None:
            cached = _int(_get(meta, "cached_content_token_count"))
            return Usage(
                input_tokens=max(_int(_get(meta, "prompt_token_count")) - cached, 0),
                output_tokens=_int(_get(meta, "candidates_token_count")),
                cache_read_tokens=cached,
            )
        return None
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        details = _get(usage, "prompt_tokens_details")
        cached = _int(_get(details, "cached_tokens")) if details is not None else 0
        return Usage(
            input_tokens=max(_int(_get(usage, "prompt_tokens")) - cached, 0),
            output_tokens=_int(_get(usage, "completion_tokens")),
            cache_read_tokens=cached,
        )
    input_tokens = _get(usage, "input_tokens")
    output_tokens = _get(usage, "output_tokens")
    cache_read = _get(usage, "cache_read_input_tokens")
    cache_write = _get(usage, "cache_creation_input_tokens")
    if input_tokens is None and output_tokens is None and cache_read is None and cache_write is None:
        return None
    if cache_read is None and cache_write is None:
        details = _get(usage, "input_tokens_details")  # openai Responses API: input_tokens includes the cached ones
        if details is not None:
            cached = _int(_get(details, "cached_tokens"))
            return Usage(max(_int(input_tokens) - cached, 0), _int(output_tokens), cached)
    return Usage(_int(input_tokens), _int(output_tokens), _int(cache_read), _int(cache_write))


def usage_from_chunk(chunk: Any) -> Usage | None:
    """The usage a stream chunk reports, or ``None`` for the (many) chunks that carry none.

    anthropic: ``message_start`` (``message.usage``: input and cache tokens, a
    first output count) and ``message_delta`` (``usage``: the output tokens so
    far, and on newer APIs the input counts again); openai: the last chunk's
    ``usage`` when the request asked for it (``stream_options={"include_usage":
    True}``) and the Responses API's ``response.completed`` event; Gemini: each
    chunk's ``usage_metadata``. Objects and dicts alike.

    A chunk's counts are running totals, not increments: combine them with
    :func:`merge_usage`, never by adding.
    """
    if isinstance(chunk, (str, bytes)):  # text chunks: the common case, and never usage
        return None
    usage = usage_from(chunk)
    if usage is None:
        inner = _get(chunk, "response")  # openai Responses API: the response.completed event
        if inner is not None and not isinstance(inner, (str, bytes)):
            usage = usage_from(inner)
    return usage


def merge_usage(seen: Usage | None, chunk: Usage) -> Usage:
    """Combine the usage seen so far in a stream with a chunk's: the larger count of each kind.

    Streams report running totals (anthropic's ``message_delta`` carries the
    output tokens so far, Gemini repeats the prompt count on every chunk), so
    the largest value seen is the total. Idempotent: merging the same chunk
    twice, or from two watchers, changes nothing.
    """
    if seen is None:
        return chunk
    return Usage(
        max(seen.input_tokens, chunk.input_tokens),
        max(seen.output_tokens, chunk.output_tokens),
        max(seen.cache_read_tokens, chunk.cache_read_tokens),
        max(seen.cache_write_tokens, chunk.cache_write_tokens),
    )
