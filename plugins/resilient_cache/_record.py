"""Recording a stream as it passes, and deciding whether it ended cleanly (pure: no I/O)."""

from __future__ import annotations

from typing import Any

from resilient.providers import field_of

__all__ = ["Recorder"]

# Anthropic Messages events, and OpenAI Responses events: the protocol says when a stream is whole.
_ANTHROPIC_TYPES = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "ping"}
)


def _field(chunk: Any, name: str) -> Any:
    if isinstance(chunk, dict):
        return chunk.get(name)
    return field_of(chunk, name)


class Recorder:
    """Keeps a stream's chunks and tells whether it ended as its protocol says a whole stream ends.

    Anthropic events must reach ``message_stop``; OpenAI chat chunks must carry
    a ``finish_reason`` (or the stream must send ``[DONE]``); OpenAI Responses
    events must reach ``response.completed``. A stream of anything else is
    whole when it is exhausted without an error. A stream cut short is never
    whole, whatever it was.
    """

    __slots__ = ("chunks", "done", "protocol")

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.protocol: str | None = None
        self.done = False

    def add(self, chunk: Any) -> None:
        self.chunks.append(chunk)
        if self.done:
            return
        if isinstance(chunk, (str, bytes)):
            text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
            if text.strip() in ("[DONE]", "data: [DONE]"):
                self.protocol, self.done = "openai", True
            return
        kind = _field(chunk, "type")
        if isinstance(kind, str):
            if kind == "message_stop":
                self.protocol, self.done = "anthropic", True
            elif kind in _ANTHROPIC_TYPES:
                self.protocol = "anthropic"
            elif kind == "response.completed":
                self.protocol, self.done = "openai-responses", True
            elif kind.startswith("response."):
                self.protocol = "openai-responses"
            return
        if _field(chunk, "object") == "chat.completion.chunk":
            self.protocol = "openai"
            for choice in _field(chunk, "choices") or ():
                if _field(choice, "finish_reason") is not None:
                    self.done = True

    def complete(self) -> bool:
        """Whether the stream, exhausted without error, is whole (call only then)."""
        return self.protocol is None or self.done
