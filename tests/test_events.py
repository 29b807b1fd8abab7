"""Events: frozen objects whose construction is cheap, whatever plugin declares them."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient import Event
from resilient.events import Emitter


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample(Event):
    name: ClassVar[str] = "test.sample"
    key: str
    size: int = 0
    note: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Computed(Event):
    """Not eligible: a field made by a factory keeps dataclass's own ``__init__``."""

    name: ClassVar[str] = "test.computed"
    tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked(Event):
    """Not eligible: a ``__post_init__`` must still run."""

    name: ClassVar[str] = "test.checked"
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size")


@dataclass(frozen=True, kw_only=True)
class Unslotted(Event):
    name: ClassVar[str] = "test.unslotted"
    key: str


def test_a_slotted_event_gets_the_fast_init_with_dataclass_s_signature() -> None:
    assert Sample.__init__.__qualname__ == "Sample.__init__"
    # The slot setters, not dataclass's object.__setattr__:
    assert any(name.startswith("_set") for name in Sample.__init__.__globals__)
    assert not any(name.startswith("_set") for name in Computed.__init__.__globals__)
    params = inspect.signature(Sample.__init__).parameters
    assert list(params) == ["self", "provider", "operation", "model", "tenant", "key", "size", "note"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in params.items() if name != "self")
    assert params["key"].default is inspect.Parameter.empty
    assert params["size"].default == 0


@given(
    provider=st.none() | st.text(max_size=5),
    key=st.text(max_size=5),
    size=st.integers(),
    note=st.none() | st.text(max_size=5),
)
def test_the_fast_init_builds_the_event_dataclass_would(
    provider: str | None, key: str, size: int, note: str | None
) -> None:
    event = Sample(provider=provider, key=key, size=size, note=note)
    assert dataclasses.asdict(event) == {
        "provider": provider,
        "operation": None,
        "model": None,
        "tenant": None,
        "key": key,
        "size": size,
        "note": note,
    }
    assert event == Sample(provider=provider, key=key, size=size, note=note)
    assert hash(event) == hash(Sample(provider=provider, key=key, size=size, note=note))
    assert repr(event).startswith("Sample(provider=")


def test_the_fast_init_keeps_events_frozen_and_arguments_checked() -> None:
    event = Sample(key="k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.key = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="key"):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("k")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown"):
        Sample(key="k", unknown=1)  # type: ignore[call-arg]


def test_events_the_fast_init_does_not_fit_keep_dataclass_s() -> None:
    assert Computed().tags == ()
    assert Computed(tags=("a",)).tags == ("a",)
    with pytest.raises(ValueError, match="size"):
        Checked(size=-1)
    assert Checked(size=1).size == 1
    assert Unslotted(key="k").key == "k"


def test_an_observer_that_raises_never_reaches_the_emitter() -> None:
    seen: list[Any] = []

    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    emitter = Emitter([broken, seen.append])
    emitter.emit(Sample(key="k"))
    assert seen == [Sample(key="k")]
    assert emitter.enabled
    assert not Emitter().enabled
