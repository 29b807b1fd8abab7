"""Checked by mypy only (``make typecheck``): the public API keeps users' types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import openai
from typing_extensions import assert_type

from resilient import Call, Pipeline, Target, target_of

pipeline = Pipeline()


@pipeline.guard
def bare(prompt: str, *, max_tokens: int = 16) -> str:
    return prompt


@pipeline.guard(provider="anthropic", operation="messages.create", model="m")
def configured(prompt: str) -> int:
    return len(prompt)


@pipeline.guard(tenant=lambda call: str(call.args[0]))
async def asynchronous(user: str) -> bytes:
    return user.encode()


@pipeline.guard
def stream(n: int) -> Iterator[int]:
    yield from range(n)


@pipeline.guard
async def astream(n: int) -> AsyncIterator[str]:
    for i in range(n):
        yield str(i)


assert_type(bare("hi", max_tokens=3), str)
assert_type(configured("hi"), int)
assert_type(stream(3), Iterator[int])
assert_type(astream(3), AsyncIterator[str])
assert_type(target_of(bare), Target)


class Client:
    @pipeline.guard(provider="anthropic")
    def create(self, prompt: str, *, max_tokens: int = 16) -> str:
        return prompt

    @pipeline.guard
    async def acreate(self, prompt: str) -> list[str]:
        return [prompt]


client = Client()
assert_type(client.create("hi", max_tokens=3), str)


async def use_methods() -> None:
    assert_type(await client.acreate("hi"), list[str])


client.create(1)  # type: ignore[arg-type]


async def use() -> None:
    assert_type(await asynchronous("u"), bytes)


def key(call: Call) -> str | None:
    return call.tenant


bare("hi", max_tokens="3")  # type: ignore[arg-type]
configured(1)  # type: ignore[arg-type]


# pipeline.wrap keeps the SDK client's type: its methods and their signatures.
def use_sdk(sdk: anthropic.Anthropic, asdk: anthropic.AsyncAnthropic, oai: openai.OpenAI) -> None:
    wrapped = pipeline.wrap(sdk)
    assert_type(wrapped, anthropic.Anthropic)
    assert_type(pipeline.wrap(asdk), anthropic.AsyncAnthropic)
    assert_type(pipeline.wrap(oai, provider="azure-openai"), openai.OpenAI)
    message = wrapped.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert_type(message, anthropic.types.Message)
    wrapped.messages.create(model="m", max_tokens="5", messages=[])  # type: ignore[call-overload]
