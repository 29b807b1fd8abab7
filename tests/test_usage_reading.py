"""Reading usage: the fast path for SDK-shaped objects gives exactly what the generic reads give."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from resilient import Usage
from resilient.providers import usage_from
from resilient.providers._usage import _usage_generic

counts = st.one_of(st.none(), st.integers(-5, 10**7), st.booleans(), st.floats(allow_nan=False), st.text(max_size=2))


@st.composite
def shaped(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> Any:
    """An object (attributes) or a dict with some of ``fields``."""
    chosen = {name: draw(values) for name, values in fields.items() if draw(st.booleans())}
    return chosen if draw(st.integers(0, 3)) == 0 else SimpleNamespace(**chosen)


details = shaped({"cached_tokens": counts})
usages = shaped(
    {
        "prompt_tokens": counts,
        "completion_tokens": counts,
        "prompt_tokens_details": st.one_of(st.none(), details),
        "input_tokens": counts,
        "output_tokens": counts,
        "cache_read_input_tokens": counts,
        "cache_creation_input_tokens": counts,
        "input_tokens_details": st.one_of(st.none(), details),
    }
)
responses = shaped(
    {
        "usage": st.one_of(st.none(), usages),
        "message": st.one_of(st.none(), shaped({"usage": st.one_of(st.none(), usages)})),
        "usage_metadata": st.one_of(
            st.none(),
            shaped(
                {"prompt_token_count": counts, "candidates_token_count": counts, "cached_content_token_count": counts}
            ),
        ),
    }
)


@given(responses)
def test_the_fast_path_reads_what_the_generic_reads_read(response: Any) -> None:
    assert usage_from(response) == _usage_generic(response)


class _Slotted:
    __slots__ = ("cache_creation_input_tokens", "cache_read_input_tokens", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens, self.output_tokens = 12, 3
        self.cache_read_input_tokens, self.cache_creation_input_tokens = None, 4


def test_an_anthropic_shaped_object_and_its_dict_read_the_same() -> None:
    response = SimpleNamespace(usage=_Slotted())
    as_dict = {"usage": {"input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": 4}}
    assert usage_from(response) == usage_from(as_dict) == Usage(12, 3, 0, 4)
