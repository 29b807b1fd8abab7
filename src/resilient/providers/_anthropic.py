"""``pipeline.wrap(anthropic.Anthropic())`` and ``AsyncAnthropic``: messages.create, .stream and .count_tokens."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, TypeVar

from ._sdk import guard_amethod, guard_method, shadow

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["wrap"]

T = TypeVar("T")


def wrap(pipeline: Pipeline, client: T, copy_options: dict[str, Any], provider: str = "anthropic") -> T:
    from anthropic import NOT_GIVEN
    from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager

    wrapped: Any = client.with_options(**copy_options)  # type: ignore[attr-defined]
    original = wrapped.messages
    raw = original.with_raw_response
    is_async = inspect.iscoroutinefunction(inspect.unwrap(original.create))
    guard = guard_amethod if is_async else guard_method
    create = guard(pipeline, provider, "messages.create", "anthropic", raw.create)
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
