"""The response cache on the memory store: keys, freshness, tenants, streams, single flight, stale answers."""

from __future__ import annotations

import asyncio
import collections
import datetime
import enum
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel

import resilient_cache
from resilient import (
    CircuitOpen,
    ConfigurationError,
    Pipeline,
    QuotaExceeded,
    capture_calls,
    request_context,
)
from resilient.testing import FakeClock, HTTPStatus, ProviderHTTPError, ScriptedProvider
from resilient_cache import CachePlugin, CachePolicy
from resilient_cache._codec import Codec, Entry, Unstorable
from resilient_cache._record import Recorder

from ._policies import Collect

MESSAGES = [{"role": "user", "content": "What is the capital of France? " * 4}]


def build(
    clock: FakeClock, observer: Collect | None = None, plugins: list[Any] | None = None, **cache: Any
) -> Pipeline:
    config = {"cacheable": "always", **cache}
    config.setdefault("enabled", True)
    return Pipeline(
        discover=False,
        plugins=[*(plugins or [resilient_cache]), *([observer] if observer else [])],
        env={},
        config={"cache": config},
        clock=clock,
    )


def policy_of(pipeline: Pipeline) -> CachePolicy:
    return next(p for p in pipeline.policies if isinstance(p, CachePolicy))


def names(observer: Collect) -> list[str]:
    return [e.name for e in observer.events]


def message(text: str = "Paris", id: str = "msg_1") -> Message:
    return Message.model_validate(
        {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 3},
        }
    )


def anthropic_events(text: str = "Paris", stop: bool = True) -> list[Any]:
    events: list[Any] = [
        RawMessageStartEvent.model_validate(
            {"type": "message_start", "message": {**message(text="").model_dump(), "content": []}}
        ),
        RawContentBlockStartEvent.model_validate(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        ),
    ]
    for piece in (text[:2], text[2:]):
        events.append(
            RawContentBlockDeltaEvent.model_validate(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            )
        )
    events.append(RawContentBlockStopEvent.model_validate({"type": "content_block_stop", "index": 0}))
    events.append(
        RawMessageDeltaEvent.model_validate(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}
        )
    )
    if stop:
        events.append(RawMessageStopEvent.model_validate({"type": "message_stop"}))
    return events


def openai_chunk(content: str, finish: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-x",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    )


# ---------------------------------------------------------------- hits, misses, ttl


def test_second_identical_call_is_a_hit_with_metadata_and_events(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer)
    provider = ScriptedProvider(default=message())
    ask = pipeline.guard(provider="anthropic", operation="messages.create")(provider)
    with capture_calls() as calls:
        first = ask(model="claude-x", messages=MESSAGES, max_tokens=100)
        second = ask(model="claude-x", messages=MESSAGES, max_tokens=100)
    assert first == second
    assert provider.calls == 1
    assert [c.metadata["cache"] for c in calls] == ["miss", "hit"]
    key = calls[0].metadata["cache_key"]
    assert len(key) == 64
    assert calls[1].metadata["cache_key"] == key
    assert names(observer) == ["cache.miss", "cache.stored", "cache.hit"]
    hit = observer.events[-1]
    assert (hit.provider, hit.operation, hit.model, hit.key, hit.layer) == (  # type: ignore[attr-defined]
        "anthropic",
        "messages.create",
        "claude-x",
        key,
        "local",
    )


def test_different_requests_do_not_share_entries(clock: FakeClock) -> None:
    pipeline = build(clock)
    provider = ScriptedProvider(["a", "b", "c", "d"])
    ask = pipeline.guard(provider="p")(provider)
    assert [ask(q=1), ask(q=2), ask(1, q=1), ask(q=1, max_tokens=5)] == ["a", "b", "c", "d"]
    other = pipeline.guard(provider="other")(ScriptedProvider(["z"]))
    assert other(q=1) == "z"  # the provider is part of the key


def test_entries_expire_after_their_ttl_then_are_refreshed(clock: FakeClock) -> None:
    pipeline = build(clock, ttl=10)
    provider = ScriptedProvider(["old", "new"])
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1) == "old"
    clock.advance(9.99)
    assert ask(q=1) == "old"
    clock.advance(0.01)
    assert ask(q=1) == "new"
    assert provider.calls == 2


def test_ttl_per_operation_and_per_model_override(clock: FakeClock) -> None:
    pipeline = build(clock, ttl=100, ttl_by_operation={"embed": 5}, models={"fast": {"ttl": 1}})
    values = iter(range(100))
    embed = pipeline.guard(provider="p", operation="embed")(lambda **kw: next(values))
    chat = pipeline.guard(provider="p", operation="chat")(lambda **kw: next(values))
    assert embed(model="m") == 0
    assert chat(model="m") == 1
    assert chat(model="fast") == 2
    clock.advance(2)
    assert chat(model="fast") == 3  # 1 s for this model
    assert embed(model="m") == 0
    assert chat(model="m") == 1
    clock.advance(4)
    assert embed(model="m") == 4  # 5 s for this operation
    assert chat(model="m") == 1  # 100 s otherwise


def test_ignored_fields_are_left_out_of_the_key(clock: FakeClock) -> None:
    pipeline = build(clock)
    provider = ScriptedProvider(["a", "b"])
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1, timeout=3, extra_headers={"x": "1"}, metadata={"user_id": "u1"}) == "a"
    assert ask(q=1, timeout=9, metadata={"user_id": "u2"}) == "a"
    assert ask(q=1, metadata={"user_id": "u2", "other": 1}) == "b"  # other metadata counts


def test_cacheable_temperature_zero_by_default(clock: FakeClock) -> None:
    pipeline = build(clock, cacheable="temperature_zero")
    provider = ScriptedProvider(["a", "b", "c", "d"])
    ask = pipeline.guard(provider="p")(provider)
    with capture_calls() as calls:
        assert ask(q=1, temperature=0) == "a"
        assert ask(q=1, temperature=0.0) == "a"
        assert ask(q=1, temperature=0.7) == "b"
        assert ask(q=1, temperature=0.7) == "c"
        assert ask(q=1) == "d"  # no temperature: the provider's default is not 0
    assert [c.metadata["cache"] for c in calls] == ["miss", "hit", "bypass", "bypass", "bypass"]


def test_never_and_operations_allow_list_leave_the_chain(clock: FakeClock) -> None:
    from resilient import Target

    policy = policy_of(build(clock, operations=["chat"]))

    def nxt(call: Any) -> Any:
        return call

    for kind in ("sync", "async", "stream", "astream"):
        wrap = getattr(policy, {"sync": "wrap", "async": "wrap_async"}.get(kind, f"wrap_{kind}"))
        assert wrap(nxt, Target("p", "embed", kind)) is nxt  # type: ignore[arg-type]
        assert wrap(nxt, Target("p", "chat", kind)) is not nxt  # type: ignore[arg-type]
    never = policy_of(build(clock, cacheable="never"))
    assert never.wrap(nxt, Target("p", "chat", "sync")) is nxt


def test_disabled_by_default_gives_no_policy(clock: FakeClock) -> None:
    pipeline = Pipeline(discover=False, plugins=[resilient_cache], env={}, config={}, clock=clock)
    assert pipeline.policies == ()
    tenants = Pipeline(
        discover=False,
        plugins=[resilient_cache],
        env={},
        config={"cache": {"cacheable": "always", "tenants": {"t1": {"enabled": True}}}},
        clock=clock,
    )
    provider = ScriptedProvider(["a", "b", "c", "d"])
    ask = tenants.guard(provider="p")(provider)
    with request_context(tenant="t1"):
        assert [ask(q=1), ask(q=1)] == ["a", "a"]
    with request_context(tenant="t2"):
        assert [ask(q=1), ask(q=1)] == ["b", "c"]


def test_unkeyable_arguments_bypass_and_unstorable_values_are_not_stored(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer)
    provider = ScriptedProvider(default="ok")
    ask = pipeline.guard(provider="p")(provider)
    with capture_calls() as calls:
        assert ask(q=object()) == "ok"
        assert ask(q=object()) == "ok"
    assert [c.metadata["cache"] for c in calls] == ["bypass", "bypass"]
    assert provider.calls == 2

    odd = ScriptedProvider(default={1, 2})  # a set is not JSON: answered, never stored
    ask_odd = pipeline.guard(provider="p", operation="odd")(odd)
    assert ask_odd(q=1) == {1, 2}
    assert ask_odd(q=1) == {1, 2}
    assert odd.calls == 2
    assert [e.reason for e in observer.events if e.name == "cache.not_stored"] == [  # type: ignore[attr-defined]
        "unserializable",
        "unserializable",
    ]


def test_too_large_values_are_not_stored(clock: FakeClock) -> None:
    pipeline = build(clock, max_value_bytes=100)
    provider = ScriptedProvider(default="x" * 200)
    ask = pipeline.guard(provider="p")(provider)
    ask(q=1), ask(q=1)
    assert provider.calls == 2


def test_the_key_is_a_hash_never_the_prompt(clock: FakeClock) -> None:
    pipeline = build(clock)
    secret = "sk-live-0123456789"
    ask = pipeline.guard(provider="p")(ScriptedProvider(default="ok"))
    with capture_calls() as calls:
        ask(messages=[{"role": "user", "content": f"my key is {secret}"}])
    key = calls[0].metadata["cache_key"]
    assert secret not in key
    assert all(c in "0123456789abcdef" for c in key)


def test_local_layer_is_bounded(clock: FakeClock) -> None:
    pipeline = build(clock, max_entries=3)
    provider = ScriptedProvider(default="ok")
    ask = pipeline.guard(provider="p")(provider)
    for q in range(10):
        ask(q=q)
    assert len(policy_of(pipeline)._local) == 3
    ask(q=9)  # most recent: still there
    assert provider.calls == 10
    ask(q=0)  # evicted
    assert provider.calls == 11


# ---------------------------------------------------------------- properties


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Calls (request id, tenant) and clock advances, with provider failures mixed in."""
    steps = st.one_of(
        st.tuples(st.just("call"), st.tuples(st.integers(0, 2), st.sampled_from([None, "t1", "t2"]))),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 3.0, 9.9, 10.0, 15.0, 31.0])),
        st.tuples(st.just("fail"), st.sampled_from([503, 429, 400])),
    )
    return draw(st.lists(steps, max_size=30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories(), max_stale=st.sampled_from([0.0, 20.0]))
def test_never_older_than_ttl_unless_marked_stale_and_never_another_tenants(
    history: list[tuple[str, Any]], max_stale: float
) -> None:
    play(history, max_stale)


def play(history: list[tuple[str, Any]], max_stale: float, store: str = "memory://", **cache: Any) -> None:
    """Run a history against a model of what is stored when; check every answer (used for every store)."""
    clock = FakeClock()
    observer = Collect()
    pipeline = Pipeline(
        discover=False,
        plugins=[resilient_cache, observer],
        env={},
        config={
            "store": store,
            "cache": {"enabled": True, "cacheable": "always", "ttl": 10, "max_stale": max_stale, **cache},
        },
        clock=clock,
    )
    failing: list[int] = []

    def provider(q: int) -> dict[str, Any]:
        if failing:
            raise ProviderHTTPError(failing.pop())
        return {"q": q, "tenant": resilient_cache_context(), "at": clock.time()}

    ask = pipeline.guard(provider="p")(provider)
    stored: dict[tuple[int, str | None], float] = {}  # the model: when each request's entry was stored
    try:
        for step, arg in history:
            if step == "wait":
                clock.advance(arg)
                continue
            if step == "fail":
                failing.append(arg)
                continue
            q, tenant = arg
            at = stored.get((q, tenant))
            with request_context(tenant=tenant), capture_calls() as calls:
                try:
                    answer = ask(q=q)
                except ProviderHTTPError as exc:
                    usable = at is not None and clock.time() - at < 10 + max_stale
                    assert exc.status_code == 400 or not usable  # a provider failure with a usable entry is answered
                    failing.clear()
                    continue
            state = calls[0].metadata["cache"]
            age = clock.time() - answer["at"]
            assert answer["q"] == q
            assert answer["tenant"] == tenant  # never another request's or another tenant's answer
            if state == "miss":
                assert at is None or clock.time() - at >= 10  # a fresh entry is always used
                stored[(q, tenant)] = answer["at"]
            if state == "stale":
                assert 10 <= age < 10 + max_stale
                assert observer.events[-1].name == "cache.stale_served"
            else:
                assert age < 10, (state, age)  # never older than its ttl
            failing.clear()
    finally:
        pipeline.close()


def resilient_cache_context() -> str | None:
    from resilient import context

    ctx = context.current()
    return ctx.tenant if ctx is not None else None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(value=json_values | st.builds(message, st.text(max_size=30), st.text(min_size=1, max_size=10)))
def test_a_hit_equals_the_original_response_and_a_stored_one_rebuilds_equal(value: Any) -> None:
    clock = FakeClock()
    pipeline = build(clock)
    ask = pipeline.guard(provider="p")(ScriptedProvider(default=value))
    assert ask(q=1) == value
    assert ask(q=1) == value
    codec = Codec()
    raw = codec.encode(Entry(value, False, 0.0, 1.0, 2.0))
    back = codec.decode(raw).value
    assert back == value
    assert type(back) is type(value)


_models = st.one_of(
    st.builds(message, st.text(max_size=30), st.text(min_size=1, max_size=10)),
    st.builds(
        lambda text, extra: Message.model_validate({**message(text).model_dump(), **extra}),
        st.text(max_size=10),
        st.dictionaries(
            st.sampled_from(["note", "score"]), st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5)
        ),
    ),
    st.builds(lambda events: events, st.lists(st.sampled_from(anthropic_events("hi")), min_size=1, max_size=4)),
    st.builds(
        lambda n, text: ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": n,
                "model": "gpt-x",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
        ),
        st.integers(0, 2**40),
        st.text(max_size=10),
    ),
)


@settings(max_examples=60, deadline=None)
@given(value=_models)
def test_a_model_is_stored_as_the_json_of_its_model_dump(value: Any) -> None:
    # The first entry of a class goes through model_dump; the codec then has pydantic write the JSON itself.
    codec = Codec()
    stream = isinstance(value, list)
    entry = Entry(value, stream, 0.0, 1.0, 2.0)
    items = value if stream else [value]
    expected = [{"t": f"{type(v).__module__}:{type(v).__qualname__}", "d": v.model_dump(mode="json")} for v in items]
    for _ in range(2):
        raw = codec.encode(entry)
        stored = orjson.loads(raw)["d"]
        assert (stored if stream else [stored]) == expected
        assert codec.decode(raw).value == value
    assert all(type(v) in codec._models for v in items)


# ---------------------------------------------------------------- serialization is data only


def test_values_are_rebuilt_only_from_allowed_modules() -> None:
    codec = Codec()
    forged = b'{"v":1,"s":false,"at":0,"f":1,"x":2,"d":{"t":"os:system","d":"echo owned"}}'
    with pytest.raises(ValueError, match="not from an allowed module"):
        codec.decode(forged)
    sneaky = b'{"v":1,"s":false,"at":0,"f":1,"x":2,"d":{"t":"anthropic:__builtins__","d":{}}}'
    with pytest.raises(ValueError, match="not a model class"):
        codec.decode(sneaky)

    class Mine:
        def model_dump(self, mode: str = "python") -> dict[str, Any]:
            return {}

    with pytest.raises(Unstorable):
        codec.dump(Mine())  # a model from an unlisted module is not stored
    with pytest.raises(Unstorable):
        codec.dump((1, 2))  # a tuple would come back a list: not the same response
    with pytest.raises(Unstorable):
        codec.dump([float("inf")])  # JSON has no infinity (orjson writes null)
    with pytest.raises(Unstorable):
        codec.dump({"a": 1.0, "b": True} | {"c": object()})


def _old_rule(value: Any) -> bool:
    """What the codec used to take as plain JSON: equal after a round trip, every node of the same type."""

    def same_shape(a: Any, b: Any) -> bool:
        if type(a) is not type(b):
            return False
        if isinstance(a, dict):
            return all(same_shape(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return all(same_shape(x, y) for x, y in zip(a, b, strict=True))
        return True

    try:
        back = orjson.loads(orjson.dumps(value))
    except (TypeError, ValueError):
        return False
    return bool(back == value) and same_shape(back, value)


class Label(str):
    pass


class Level(enum.IntEnum):
    LOW = 1


class Colour(enum.Enum):
    RED = "red"


_odd_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=5),
    st.text(max_size=5).map(Label),
    st.just(Level.LOW),
    st.just(Colour.RED),
    st.tuples(st.integers(0, 3)),
    st.just(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)),
    st.just(uuid.UUID(int=7)),
    st.builds(collections.OrderedDict, st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
)
_odd_values = st.recursive(
    _odd_leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.text(max_size=3).map(Label), inner, max_size=3)
    ),
    max_leaves=8,
).filter(lambda v: isinstance(v, (dict, list, float)) and type(v) in (dict, list, float))


@settings(max_examples=300, deadline=None)
@given(value=_odd_values)
@example(value=float("nan"))
@example(value=[float("inf")])
@example(value={"a": [1.0, float("-inf")]})
@example(value=[Level.LOW])
@example(value={"k": (1,)})
@example(value=[collections.OrderedDict(a=1)])
@example(value={Label("k"): Label("v")})
@example(value=[2**64])
def test_plain_json_is_taken_as_it_always_was(value: Any) -> None:
    # One walk of the types then one write, against the old round trip and its walk comparing the two.
    try:
        raw = Codec().encode(Entry(value, False, 0.0, 1.0, 2.0))
    except Unstorable:
        taken = False
    else:
        taken = True
        assert orjson.loads(raw)["d"] == {"j": value}
    assert taken == _old_rule(value)


class Answer(BaseModel):
    text: str


def test_allowed_types_extends_the_modules(clock: FakeClock) -> None:
    prefix = Answer.__module__.split(".")[0]
    with pytest.raises(Unstorable):
        Codec().dump(Answer(text="hi"))
    codec = Codec([prefix])
    raw = codec.encode(Entry(Answer(text="hi"), False, 0.0, 1.0, 2.0))
    assert codec.decode(raw).value == Answer(text="hi")
    pipeline = build(clock, allowed_types=[prefix])
    provider = ScriptedProvider(default=Answer(text="hi"))
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1) == ask(q=1)
    assert provider.calls == 1


# ---------------------------------------------------------------- streams


def test_anthropic_stream_recorded_and_replayed_with_the_same_chunks(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer)
    provider = ScriptedProvider(default=None)
    events = anthropic_events()

    def stream(**kw: Any) -> Iterator[Any]:
        provider(**kw)
        yield from events

    guarded = pipeline.guard(provider="anthropic", operation="messages.stream")(stream)
    with capture_calls() as calls:
        first = list(guarded(model="claude-x", messages=MESSAGES))
        second = list(guarded(model="claude-x", messages=MESSAGES))
    assert first == events
    assert second == events
    assert provider.calls == 1
    assert [type(c) for c in second] == [type(e) for e in events]
    assert [c.metadata["cache"] for c in calls] == ["miss", "hit"]
    stored = [e for e in observer.events if e.name == "cache.stored"]
    assert stored
    assert stored[0].stream


def test_a_stream_cut_short_is_never_stored(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer)
    calls = [0]

    def stream(**kw: Any) -> Iterator[Any]:
        calls[0] += 1
        yield from anthropic_events(stop=False)  # ends without message_stop: cut mid-way

    guarded = pipeline.guard(provider="anthropic")(stream)
    list(guarded(q=1)), list(guarded(q=1))
    assert calls[0] == 2
    assert "cache.stored" not in names(observer)

    def failing(**kw: Any) -> Iterator[Any]:
        calls[0] += 1
        yield from anthropic_events()[:3]
        raise ProviderHTTPError(500)

    bad = pipeline.guard(provider="anthropic", operation="failing")(failing)
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            list(bad(q=1))
    assert calls[0] == 4


def test_an_abandoned_stream_is_not_stored(clock: FakeClock) -> None:
    pipeline = build(clock)
    calls = [0]

    def stream(**kw: Any) -> Iterator[int]:
        calls[0] += 1
        yield from range(5)

    guarded = pipeline.guard(provider="p")(stream)
    it = guarded(q=1)
    assert next(it) == 0
    it.close()
    assert list(guarded(q=1)) == [0, 1, 2, 3, 4]  # made again, then whole: stored
    assert list(guarded(q=1)) == [0, 1, 2, 3, 4]
    assert calls[0] == 2


def test_openai_chunks_need_a_finish_reason(clock: FakeClock) -> None:
    rec = Recorder()
    rec.add(openai_chunk("Par"))
    assert not rec.complete()
    rec.add(openai_chunk("is", "stop"))
    assert rec.complete()
    done = Recorder()
    for chunk in ("data: {}", "data: [DONE]"):
        done.add(chunk)
    assert done.complete()
    responses = Recorder()
    responses.add({"type": "response.output_text.delta"})
    assert not responses.complete()
    responses.add({"type": "response.completed"})
    assert responses.complete()


def test_async_stream_replayed_with_same_boundaries(clock: FakeClock) -> None:
    pipeline = build(clock)
    made = [0]
    chunks = [openai_chunk("Pa"), openai_chunk("ris", "stop")]

    async def stream(**kw: Any) -> AsyncIterator[Any]:
        made[0] += 1
        for c in chunks:
            await asyncio.sleep(0)
            yield c

    guarded = pipeline.guard(provider="openai")(stream)

    async def main() -> tuple[list[Any], list[Any]]:
        return [c async for c in guarded(q=1)], [c async for c in guarded(q=1)]

    first, second = asyncio.run(main())
    assert first == chunks == second
    assert made[0] == 1


def test_sync_and_async_streams_share_entries_but_not_with_values(clock: FakeClock) -> None:
    pipeline = build(clock)
    value = pipeline.guard(provider="p", operation="op")(ScriptedProvider(default="v"))
    stream_provider = ScriptedProvider(default="s")
    stream = pipeline.guard(provider="p", operation="op")(stream_provider.stream)
    astream = pipeline.guard(provider="p", operation="op")(stream_provider.astream)
    assert value(q=1) == "v"
    assert list(stream(q=1)) == ["s"]

    async def read() -> list[Any]:
        return [c async for c in astream(q=1)]

    assert asyncio.run(read()) == ["s"]
    assert stream_provider.calls == 1


# ---------------------------------------------------------------- single flight


def test_fifty_concurrent_identical_async_calls_make_one_provider_call(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer)
    made = [0]

    async def provider(**kw: Any) -> str:
        made[0] += 1
        for _ in range(5):
            await asyncio.sleep(0)
        return "answer"

    ask = pipeline.guard(provider="p")(provider)

    async def main() -> list[Any]:
        with capture_calls() as calls:
            answers = await asyncio.gather(*(ask(q=1) for _ in range(50)))
        assert sorted(c.metadata["cache"] for c in calls) == ["hit"] * 49 + ["miss"]
        return answers

    assert asyncio.run(main()) == ["answer"] * 50
    assert made[0] == 1
    assert [e.layer for e in observer.events if e.name == "cache.hit"] == ["flight"] * 49  # type: ignore[attr-defined]


def test_followers_get_the_leaders_error(clock: FakeClock) -> None:
    pipeline = build(clock)
    made = [0]

    async def provider(**kw: Any) -> str:
        made[0] += 1
        await asyncio.sleep(0)
        raise ProviderHTTPError(400)

    ask = pipeline.guard(provider="p")(provider)

    async def main() -> list[Any]:
        return await asyncio.gather(*(ask(q=1) for _ in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    assert made[0] == 1
    assert all(isinstance(r, ProviderHTTPError) for r in results)


def test_concurrent_identical_sync_calls_in_threads_make_one_call(clock: FakeClock) -> None:
    pipeline = build(clock)
    started, release = threading.Event(), threading.Event()
    made = [0]

    def provider(**kw: Any) -> str:
        made[0] += 1
        started.set()
        release.wait(5)
        return "answer"

    ask = pipeline.guard(provider="p")(provider)
    results: list[Any] = []
    leader = threading.Thread(target=lambda: results.append(ask(q=1)))
    leader.start()
    started.wait(5)
    followers = [threading.Thread(target=lambda: results.append(ask(q=1))) for _ in range(8)]
    for t in followers:
        t.start()
    while sum(1 for t in followers if t.is_alive()) < 8:  # pragma: no cover - they block on the flight
        pass
    release.set()
    for t in [leader, *followers]:
        t.join(5)
    assert results == ["answer"] * 9
    assert made[0] == 1


def test_single_flight_off_makes_every_call(clock: FakeClock) -> None:
    pipeline = build(clock, single_flight=False)
    made = [0]

    async def provider(**kw: Any) -> str:
        made[0] += 1
        await asyncio.sleep(0)
        return "a"

    ask = pipeline.guard(provider="p")(provider)

    async def main() -> None:
        await asyncio.gather(*(ask(q=1) for _ in range(5)))

    asyncio.run(main())
    assert made[0] == 5


def test_interleaved_streams_in_one_thread_do_not_wait_for_themselves(clock: FakeClock) -> None:
    pipeline = build(clock, flight_wait=30)
    made = [0]

    def stream(**kw: Any) -> Iterator[int]:
        made[0] += 1
        yield from (1, 2)

    guarded = pipeline.guard(provider="p")(stream)
    a, b = guarded(q=1), guarded(q=1)
    assert next(a) == 1
    assert next(b) == 1
    assert list(a) == [2]
    assert list(b) == [2]
    assert made[0] == 2


# ---------------------------------------------------------------- stale answers


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (HTTPStatus(503), "server_error"),
        (HTTPStatus(529), "overloaded"),
        (HTTPStatus(429), "rate_limited"),
        (TimeoutError(), "timeout"),
        (QuotaExceeded("spent"), "quota_exceeded"),
        (CircuitOpen("open"), "circuit_open"),
    ],
)
def test_stale_entry_answers_a_failed_call_marked_stale(clock: FakeClock, error: Any, reason: str) -> None:
    observer = Collect()
    pipeline = build(clock, observer, ttl=10, max_stale=60)
    provider = ScriptedProvider(["fresh", error])
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1) == "fresh"
    clock.advance(25)
    with capture_calls() as calls:
        assert ask(q=1) == "fresh"
    assert calls[0].metadata["cache"] == "stale"
    served = observer.events[-1]
    assert served.name == "cache.stale_served"
    assert (served.reason, served.staleness) == (reason, pytest.approx(15))  # type: ignore[attr-defined]


def test_no_stale_answer_for_the_callers_own_error_or_past_max_stale(clock: FakeClock) -> None:
    pipeline = build(clock, ttl=10, max_stale=60)
    provider = ScriptedProvider(["fresh", HTTPStatus(400), HTTPStatus(503)])
    ask = pipeline.guard(provider="p")(provider)
    ask(q=1)
    clock.advance(20)
    with pytest.raises(ProviderHTTPError) as info:
        ask(q=1)
    assert info.value.status_code == 400
    clock.advance(60)  # 80 s old: past ttl + max_stale
    with pytest.raises(ProviderHTTPError) as info:
        ask(q=1)
    assert info.value.status_code == 503


def test_stale_stream_replayed_when_the_stream_fails_before_its_first_chunk(clock: FakeClock) -> None:
    pipeline = build(clock, ttl=10, max_stale=60)
    outcomes: list[Any] = [["a", "b"], CircuitOpen("open")]

    def stream(**kw: Any) -> Iterator[str]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        yield from outcome

    guarded = pipeline.guard(provider="p")(stream)
    assert list(guarded(q=1)) == ["a", "b"]
    clock.advance(30)
    with capture_calls() as calls:
        assert list(guarded(q=1)) == ["a", "b"]
    assert calls[0].metadata["cache"] == "stale"


def test_stale_answer_with_the_real_breaker_open(clock: FakeClock) -> None:
    import resilient_breaker

    pipeline = Pipeline(
        discover=False,
        plugins=[resilient_cache, resilient_breaker],
        env={},
        config={
            "cache": {"enabled": True, "cacheable": "always", "ttl": 10, "max_stale": 300},
            "breaker": {"minimum_calls": 2, "window_size": 2, "wait_open": 60},
        },
        clock=clock,
    )
    provider = ScriptedProvider(["ok", HTTPStatus(503)], default="later")
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1) == "ok"
    with pytest.raises(ProviderHTTPError):
        ask(q=2)  # no entry: the failure reaches the caller, and opens the breaker (1 of 2 failed)
    with pytest.raises(CircuitOpen):
        ask(q=3)  # no entry: the refusal reaches the caller
    clock.advance(20)
    with capture_calls() as calls:
        assert ask(q=1) == "ok"  # the breaker refuses; the stale entry answers
    assert calls[0].metadata["cache"] == "stale"
    assert provider.calls == 2


# ---------------------------------------------------------------- key and tag functions, invalidation


def test_key_function_and_tags_through_the_plugin_object(clock: FakeClock) -> None:
    plugin = CachePlugin(key=lambda call: call.kwargs["q"] % 2, tags=lambda call: [f"q={call.kwargs['q']}"])
    pipeline = build(clock, plugins=[plugin], tags=["model"])
    provider = ScriptedProvider(["even", "odd", "again"])
    ask = pipeline.guard(provider="p")(provider)
    assert [ask(q=2, model="m"), ask(q=4, model="m"), ask(q=1, model="m")] == ["even", "even", "odd"]
    policy = policy_of(pipeline)
    assert policy.invalidate(tag="q=2") == 1
    assert ask(q=4, model="m") == "again"
    assert policy.invalidate(tag="model=m") == 2
    with capture_calls() as calls:
        ask(q=1, model="m")
    assert calls[0].metadata["cache"] == "miss"
    assert policy.invalidate(key=calls[0].metadata["cache_key"]) == 1
    assert policy.invalidate(key="0" * 64) == 0


def test_key_for_matches_the_calls_key(clock: FakeClock) -> None:
    pipeline = build(clock)
    ask = pipeline.guard(provider="anthropic", operation="messages.create")(ScriptedProvider(default="ok"))
    with request_context(tenant="t1"), capture_calls() as calls:
        ask(model="m", messages=MESSAGES)
    key = policy_of(pipeline).key_for("anthropic", "messages.create", {"model": "m", "messages": MESSAGES}, tenant="t1")
    assert key == calls[0].metadata["cache_key"]


def test_global_scope_shares_entries_between_tenants(clock: FakeClock) -> None:
    pipeline = build(clock, scope="global")
    provider = ScriptedProvider(["a", "b"])
    ask = pipeline.guard(provider="p")(provider)
    with request_context(tenant="t1"):
        assert ask(q=1) == "a"
    with request_context(tenant="t2"):
        assert ask(q=1) == "a"


def test_key_function_by_import_path(clock: FakeClock) -> None:
    pipeline = build(clock, key_function="tests.test_cache:only_q")
    provider = ScriptedProvider(["a", "b"])
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1, noise=1) == "a"
    assert ask(q=1, noise=2) == "a"


def only_q(call: Any) -> Any:
    return call.kwargs["q"]


@pytest.mark.parametrize(
    ("cache", "key"),
    [
        ({"scope": "user"}, "cache.scope"),
        ({"cacheable": "sometimes"}, "cache.cacheable"),
        ({"ttl": 0}, "cache.ttl"),
        ({"key_function": "nomodule"}, "cache"),
        ({"key_function": "tests.test_cache:missing"}, "cache.key_function"),
        ({"tags": ["colour"]}, "cache.tags"),
    ],
)
def test_configuration_errors_name_the_key(clock: FakeClock, cache: dict[str, Any], key: str) -> None:
    from resilient import PluginError

    with pytest.raises((ConfigurationError, PluginError)) as info:
        build(clock, **cache)
    assert key in str(info.value)


def test_health_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from resilient.cli import main

    assert policy_of(build(FakeClock())).health() == {"ok": True, "store": "memory", "local_entries": 0}
    (tmp_path / "resilient.toml").write_text("[cache]\nenabled = true\n")
    monkeypatch.chdir(tmp_path)
    for var in [v for v in __import__("os").environ if v.startswith("RESILIENT_")]:
        monkeypatch.delenv(var)
    assert main(["cache", "stats"]) == 0
    assert '"store": "memory"' in capsys.readouterr().out
    assert main(["cache", "invalidate", "--tag", "model=m"]) == 0
    assert "0 entries removed" in capsys.readouterr().out


def test_cache_plugin_object_beside_the_disabled_entry_point(clock: FakeClock) -> None:
    plugin = CachePlugin(key=lambda call: call.kwargs["q"])
    pipeline = Pipeline(
        plugins=[plugin],
        env={},
        config={"disable": ["cache", "quota", "retry", "breaker"], "cache": {"enabled": True, "cacheable": "always"}},
        clock=clock,
    )
    assert "app_cache" in [p.name for p in pipeline.policies]
    assert "cache" not in [p.name for p in pipeline.policies]
    provider = ScriptedProvider(["a", "b"])
    ask = pipeline.guard(provider="p")(provider)
    assert ask(q=1, noise=1) == "a"
    assert ask(q=1, noise=2) == "a"


def test_a_follower_goes_alone_when_the_leader_left_nothing(clock: FakeClock) -> None:
    pipeline = build(clock)
    made = [0]

    async def provider(**kw: Any) -> str:
        made[0] += 1
        if made[0] == 1:
            await asyncio.sleep(0)
            raise asyncio.CancelledError  # the leader is cancelled: no value, no error to share
        return "mine"

    ask = pipeline.guard(provider="p")(provider)

    async def main() -> list[Any]:
        return await asyncio.gather(ask(q=1), ask(q=1), return_exceptions=True)

    leader, follower = asyncio.run(main())
    assert isinstance(leader, asyncio.CancelledError)
    assert follower == "mine"
    assert made[0] == 2


def test_public_surface() -> None:
    assert sorted(resilient_cache.__all__) == [
        "CacheBypassed",
        "CacheHit",
        "CacheInvalidated",
        "CacheMiss",
        "CacheNotStored",
        "CacheOptions",
        "CachePlugin",
        "CachePolicy",
        "CacheStaleServed",
        "CacheStoreError",
        "CacheStored",
        "KeyFunction",
        "TagFunction",
    ]
    names = {
        getattr(resilient_cache, n).name
        for n in resilient_cache.__all__
        if n.startswith("Cache") and n.endswith(("Hit", "Miss", "Served", "Stored", "Bypassed", "Error", "Invalidated"))
    }
    assert names == {
        "cache.hit",
        "cache.miss",
        "cache.stale_served",
        "cache.stored",
        "cache.not_stored",
        "cache.bypass",
        "cache.store_error",
        "cache.invalidated",
    }


def test_an_abandoned_async_stream_is_not_stored(clock: FakeClock) -> None:
    observer = Collect()
    pipeline = build(clock, observer)
    made = [0]

    async def stream(**kw: Any) -> AsyncIterator[int]:
        made[0] += 1
        for i in range(5):
            yield i

    guarded = pipeline.guard(provider="p")(stream)

    async def main() -> list[int]:
        it = guarded(q=1)
        assert await it.__anext__() == 0
        await it.aclose()
        return [c async for c in guarded(q=1)] + [c async for c in guarded(q=1)]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4] * 2
    assert made[0] == 2
    assert [e.reason for e in observer.events if e.name == "cache.not_stored"] == ["incomplete_stream"]  # type: ignore[attr-defined]
