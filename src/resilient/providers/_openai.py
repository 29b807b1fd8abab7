"""``pipeline.wrap(openai.OpenAI())`` and ``AsyncOpenAI``: chat.completions.create, with ``stream=True``."""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any, TypeVar

from ._sdk import guard_amethod, guard_method, shadow

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["wrap"]

T = TypeVar("T")


def wrap(pipeline: Pipeline, client: T, copy_options: dict[str, Any], provider: str = "openai") -> T:
    wrapped: Any = client.with_options(**copy_options)  # type: ignore[attr-defined]
    # client.chat.completions: shadow ``chat`` with a copy whose ``completions`` is guarded.
    chat = copy.copy(wrapped.chat)
    chat.__dict__.pop("with_raw_response", None)
    wrapped.__dict__["chat"] = chat
    original = chat.completions
    is_async = inspect.iscoroutinefunction(inspect.unwrap(original.create))
    guard = guard_amethod if is_async else guard_method
    create = guard(pipeline, provider, "chat.completions.create", "openai", original.with_raw_response.create)
    shadow(chat, "completions", {"create": create})
    return wrapped  # type: ignore[no-any-return]
