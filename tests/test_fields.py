"""field_of(obj, name) answers as getattr(obj, name, None) does, for SDK models and everything else."""

from __future__ import annotations

import types
from typing import Any

import anthropic.types as at
import openai.types.chat as oc
import pydantic
from hypothesis import given
from hypothesis import strategies as st

from resilient.providers import _fields, field_of, usage_from, usage_from_chunk


class Plain:
    __slots__ = ("a",)

    def __init__(self) -> None:
        self.a = 1


class Dynamic:
    def __getattr__(self, name: str) -> Any:
        if name.startswith("x"):
            return name.upper()
        raise AttributeError(name)


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    usage: int = 1


class Extras(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    input_tokens: int = 0
    _secret: int = pydantic.PrivateAttr(default=7)

    @property
    def prompt_tokens(self) -> int:  # a property of a field's name answers before any field or extra
        return 42


class OwnGetattr(pydantic.BaseModel):
    usage: int = 3

    def __getattr__(self, name: str) -> Any:  # not pydantic's lookup: field_of must ask getattr
        if name == "message":
            return "from __getattr__"
        return super().__getattr__(name)


_NAMES = [
    "usage",
    "message",
    "usage_metadata",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "type",
    "delta",
    "a",
    "xray",
    "model_config",
    "model_dump",
    "_secret",
    "__class__",
    "__dict__",
    "__pydantic_extra__",
    "extra_field",
]


def _objects() -> st.SearchStrategy[Any]:
    usage = st.builds(
        at.Usage,
        input_tokens=st.integers(0, 10**6),
        output_tokens=st.integers(0, 10**6),
        cache_read_input_tokens=st.none() | st.integers(0, 10**6),
        cache_creation_input_tokens=st.none() | st.integers(0, 10**6),
    )
    extra = st.dictionaries(st.sampled_from(["prompt_tokens", "extra_field", "usage", "message"]), st.integers())
    return st.one_of(
        usage,
        st.builds(lambda u, e: at.Usage.model_validate({**u.model_dump(), **e}), usage, extra),
        st.builds(
            lambda t: at.RawContentBlockDeltaEvent(
                type="content_block_delta", index=0, delta=at.TextDelta(type="text_delta", text=t)
            ),
            st.text(max_size=5),
        ),
        # model_construct leaves fields without a default unset: the attribute is then missing.
        st.builds(lambda e: at.Message.model_construct(id="m", **e), extra),
        st.builds(lambda n: oc.ChatCompletionChunk.model_construct(id="c", choices=[], created=n), st.integers(0, 9)),
        st.builds(lambda e: Extras.model_validate({"input_tokens": 1, **e}), extra),
        st.builds(Strict),
        st.builds(OwnGetattr),
        st.builds(Plain),
        st.builds(Dynamic),
        st.builds(lambda e: types.SimpleNamespace(**e), extra),
        st.dictionaries(st.sampled_from(_NAMES), st.integers()),
        st.none(),
        st.text(max_size=3),
    )


@given(_objects(), st.lists(st.sampled_from(_NAMES), min_size=1, max_size=6))
def test_field_of_answers_as_getattr_does(obj: Any, names: list[str]) -> None:
    for name in names:  # several reads: the second of a class goes through what the first remembered
        assert field_of(obj, name) == getattr(obj, name, None)


def test_a_model_half_built_has_no_extra() -> None:
    event = at.RawContentBlockDeltaEvent.model_construct()
    object.__delattr__(event, "__pydantic_extra__")  # as pydantic's own __repr_args__ allows for
    assert field_of(event, "usage") is None
    assert getattr(event, "usage", None) is None


def test_only_pydantic_models_with_its_own_lookup_are_read_from_storage() -> None:
    assert field_of(OwnGetattr(), "message") == "from __getattr__"
    for cls in (Plain, Dynamic, OwnGetattr, dict):
        field_of(cls() if cls is not dict else {}, "usage")
        assert _fields._asked[cls] is None
    field_of(Extras(), "usage")
    asked = _fields._asked[Extras]
    assert asked is not None
    assert {"prompt_tokens", "_secret", "model_dump"} <= asked
    assert "usage" not in asked


def test_usage_of_sdk_models_is_read_as_before() -> None:
    usage = at.Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=3, cache_creation_input_tokens=2)
    message = at.Message(
        id="m",
        type="message",
        role="assistant",
        model="claude-sonnet-4-5",
        content=[],
        stop_reason="end_turn",
        stop_sequence=None,
        usage=usage,
    )
    found = usage_from(message)
    assert found is not None
    assert (found.input_tokens, found.output_tokens, found.cache_read_tokens, found.cache_write_tokens) == (10, 5, 3, 2)
    delta = at.RawContentBlockDeltaEvent(
        type="content_block_delta", index=0, delta=at.TextDelta(type="text_delta", text="hi")
    )
    assert usage_from_chunk(delta) is None
    # An extra prompt_tokens makes an anthropic usage openai-shaped, by the rules usage_from has always had.
    odd = at.Usage.model_validate({"input_tokens": 1, "output_tokens": 2, "prompt_tokens": 9})
    assert odd.prompt_tokens == 9
    shaped = usage_from(at.Message.model_construct(usage=odd))
    assert shaped is not None
    assert shaped.input_tokens == 9
