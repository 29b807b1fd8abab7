"""The metrics policy's usage reader (``usage_of``) against the general one (``resilient.providers.usage_from``).

``usage_of`` reads SDK-shaped responses with plain attribute access and
sends everything else to ``usage_from``; whatever the response, the two must
give the same ``Usage`` (or both ``None``), or the exposition and
``call.usage`` would change with the path taken.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_metrics._policy as policy_module
from resilient import Usage
from resilient.providers import usage_from
from resilient_metrics._policy import usage_of

# Token counts as providers send them, and the values a broken or foreign response may carry instead.
counts = st.one_of(
    st.integers(0, 10**9),
    st.integers(-3, 3),
    st.none(),
    st.sampled_from([True, False, 1.5, -2.0, "7", ""]),
)
ANTHROPIC = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
OPENAI = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "input_tokens_details")
GEMINI = ("prompt_token_count", "candidates_token_count", "cached_content_token_count")


class FrozenMapping(Mapping[str, Any]):
    """A Mapping that is not a dict and also has a ``usage`` attribute (usage_from reads it as a Mapping)."""

    usage = types.SimpleNamespace(input_tokens=999, output_tokens=999, cache_read_input_tokens=1)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Slotted:
    """An SDK-like usage object with slots (no ``__dict__``): a missing field is an AttributeError."""

    __slots__ = (*ANTHROPIC, "completion_tokens", "prompt_tokens", "prompt_tokens_details")


class Reply(int):
    """A response that is an int subclass with a class-level usage, as the benchmark's."""


def as_shape(fields: dict[str, Any], shape: str) -> Any:
    if shape == "dict":
        return fields
    if shape == "mapping":
        return FrozenMapping(fields)
    if shape == "slots":
        obj = Slotted()
        for name, value in fields.items():
            if name in Slotted.__slots__:
                setattr(obj, name, value)
        return obj
    return types.SimpleNamespace(**fields)


shapes = st.sampled_from(["object", "object", "slots", "dict", "mapping"])


PROVIDER_SHAPES = {
    "anthropic": ANTHROPIC,
    "openai": ("prompt_tokens", "completion_tokens"),
    "responses": ("input_tokens", "output_tokens"),
    "gemini": GEMINI,
}


@st.composite
def usages(draw: st.DrawFn) -> Any:
    """A usage field of one provider's shape (some fields dropped), or a mix of them, or junk."""
    shape = draw(st.sampled_from([*PROVIDER_SHAPES, "anthropic", "openai", "mix"]))
    if shape == "mix":
        names = draw(st.sets(st.sampled_from((*ANTHROPIC, *OPENAI[:2], *GEMINI)), max_size=7))
    else:
        names = set(PROVIDER_SHAPES[shape]) - draw(st.sets(st.sampled_from(PROVIDER_SHAPES[shape]), max_size=1))
    fields: dict[str, Any] = {name: draw(counts) for name in names}
    details_names = {"openai": ["prompt_tokens_details"], "responses": ["input_tokens_details"]}.get(
        shape, ["prompt_tokens_details", "input_tokens_details"] if shape == "mix" else []
    )
    for details in details_names:
        if draw(st.sampled_from([True, True, True, False])):
            inner: Any = draw(st.one_of(st.none(), st.just("text"), st.builds(dict, cached_tokens=counts)))
            if isinstance(inner, dict) and draw(st.booleans()):
                inner = as_shape(inner, "object")
            fields[details] = inner
    if draw(st.sampled_from([False] * 9 + [True])):
        return draw(st.sampled_from([None, "text", 0, 3]))
    return as_shape(fields, draw(shapes))


@st.composite
def responses(draw: st.DrawFn) -> Any:
    """A response: an object or a dict with a ``usage``, a stream event, a Gemini response, a str, nothing."""
    usage = draw(usages())
    kind = draw(
        st.sampled_from(
            ["object", "object", "object", "reply", "dict", "mapping", "message_start", "gemini", "str", "none", "no"]
        )
    )
    if kind == "object":
        return types.SimpleNamespace(usage=usage)
    if kind == "dict":
        return {"usage": usage}
    if kind == "mapping":
        return FrozenMapping({"usage": usage})
    if kind == "message_start":
        return {"type": "message_start", "message": {"usage": usage}}
    if kind == "gemini":
        return types.SimpleNamespace(usage_metadata=usage)
    if kind == "reply":
        cls = type("ReplyWithUsage", (Reply,), {"usage": usage})
        return cls(3)
    if kind == "str":
        return "plain text"
    if kind == "none":
        return None
    return types.SimpleNamespace(text="no usage here")


@settings(max_examples=500, deadline=None)
@given(responses())
def test_usage_of_reads_what_usage_from_reads(response: Any) -> None:
    expected = None if isinstance(response, str) else usage_from(response)
    found = usage_of(response)
    assert found == expected
    assert type(found) is type(expected)


@st.composite
def sdk_responses(draw: st.DrawFn) -> Any:
    """An SDK-like response object whose usage is an object of one provider's shape: the attribute path."""
    shape = draw(st.sampled_from(["anthropic", "openai", "responses"]))
    names = set(PROVIDER_SHAPES[shape]) - draw(st.sets(st.sampled_from(PROVIDER_SHAPES[shape]), max_size=1))
    fields: dict[str, Any] = {name: draw(counts) for name in names}
    if shape != "anthropic":
        details = "prompt_tokens_details" if shape == "openai" else "input_tokens_details"
        inner: Any = draw(st.one_of(st.none(), st.just("text"), st.builds(dict, cached_tokens=counts)))
        fields[details] = (
            as_shape(inner, draw(st.sampled_from(["object", "dict"]))) if isinstance(inner, dict) else inner
        )
    usage = as_shape(fields, draw(st.sampled_from(["object", "slots"])))
    if draw(st.booleans()):
        return types.SimpleNamespace(usage=usage)
    return type("ReplyWithUsage", (Reply,), {"usage": usage})(3)


@settings(max_examples=500, deadline=None)
@given(sdk_responses())
def test_usage_of_reads_sdk_objects_as_usage_from_does(response: Any) -> None:
    found = usage_of(response)
    assert found == usage_from(response)
    assert type(found) is type(usage_from(response))


def test_the_sdk_shapes_take_the_attribute_path_and_give_a_real_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    anthropic = types.SimpleNamespace(
        usage=types.SimpleNamespace(
            input_tokens=1200, output_tokens=300, cache_read_input_tokens=5000, cache_creation_input_tokens=None
        )
    )
    openai = types.SimpleNamespace(
        usage=types.SimpleNamespace(
            prompt_tokens=100, completion_tokens=20, prompt_tokens_details=types.SimpleNamespace(cached_tokens=30)
        )
    )
    monkeypatch.setattr(policy_module, "usage_from", None)  # the attribute path must not need it
    found = usage_of(anthropic)
    assert type(found) is Usage
    assert found == Usage(1200, 300, 5000, 0)
    assert found.total_tokens == 6500
    assert usage_of(openai) == Usage(70, 20, 30, 0)
    monkeypatch.setattr(policy_module, "usage_from", usage_from)
    assert usage_of({"usage": {"prompt_tokens": 5, "completion_tokens": 1}}) == Usage(5, 1, 0, 0)  # a dict
    assert usage_of("a str is never read") is None
