"""``pipeline.wrap(anthropic.Anthropic())`` and ``AsyncAnthropic``: messages.create, .stream and .count_tokens."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..call import Call
from ._sdk import guard_amethod, guard_method, shadow

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["wrap"]

T = TypeVar("T")

# What messages.count_tokens accepts of a messages.create request: the parts that are input.
_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")


def _counter(count_tokens: Any, is_async: bool) -> Callable[[Call], Any]:
    """The input tokens of a messages.create call, by the provider's count-tokens endpoint (unguarded:
    the count is part of admitting the call, not a call to admit)."""
    if is_async:

        async def acount(call: Call) -> int:
            result = await count_tokens(**{k: call.kwargs[k] for k in _COUNTED if k in call.kwargs})
            return int(result.input_tokens)

        return acount

    def count(call: Call) -> int:
        return int(count_tokens(**{k: call.kwargs[k] for k in _COUNTED if k in call.kwargs}).input_tokens)

    return count


def wrap(pipeline: Pipeline, client: T, copy_options: dict[str, Any], provider: str = "anthropic") -> T:
    from anthropic import NOT_GIVEN
    from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager

    wrapped: Any = client.with_options(**copy_options)  # type: ignore[attr-defined]
    original = wrapped.messages
    raw = original.with_raw_response
    is_async = inspect.iscoroutinefunction(inspect.unwrap(original.create))
    guard = guard_amethod if is_async else guard_method
    count = _counter(original.count_tokens, is_async)
    create = guard(pipeline, provider, "messages.create", "anthropic", raw.create, count)
    count_tokens = guard(pipeline, provider, "messages.count_tokens", "anthropic", raw.count_tokens)

    # messages.stream() is the SDK's helper over the same request with stream=True:
    # run that request through the guarded create, and let the SDK's manager
    # accumulate the events as usual. (output_format needs the SDK's own
    # request building, so such calls keep the unguarded helper.)
    def stream(**kwargs: Any) -> Any:
        if "output_format" in kwargs:
            return original.stream(**kwargs)
        if is_async:
            return AsyncMessageStreamManager(create(stream=True, **kwargs), output_format=NOT_GIVEN)
        return MessageStreamManager(lambda: create(stream=True, **kwargs), output_format=NOT_GIVEN)

    shadow(wrapped, "messages", {"create": create, "count_tokens": count_tokens, "stream": stream})
    return wrapped  # type: ignore[no-any-return]
