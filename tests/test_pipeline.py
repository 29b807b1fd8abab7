"""The pipeline core: composition, the four kinds of call, streams, context."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient import (
    ABANDONED,
    SUCCESS,
    Call,
    Event,
    Handler,
    Outcome,
    Pipeline,
    Policy,
    Runtime,
    StreamHandler,
    Target,
    capture_calls,
    hookimpl,
    request_context,
)
from resilient.testing import ProviderHTTPError

from ._policies import Contribute, Noop, Recorder, RetryAll, Spy

values = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=5))


def build(*policies: Policy, **kwargs: Any) -> Pipeline:
    return Pipeline(plugins=[Contribute(*policies)], discover=False, env={}, config={}, **kwargs)


NOOPS = tuple(Noop(f"noop{i}", order=i) for i in range(6))


# ---------------------------------------------------------------- one call per attempt, value unchanged


@pytest.mark.parametrize("policies", [(), NOOPS], ids=["empty", "six-noops"])
@given(args=st.lists(values, max_size=3), result=values)
def test_sync_call_runs_once_and_returns_value_unchanged(
    policies: tuple[Policy, ...], args: list[Any], result: Any
) -> None:
    seen: list[tuple[Any, ...]] = []

    def provider(*a: Any, **kw: Any) -> Any:
        seen.append((a, kw))
        return result

    guarded = build(*policies).guard(provider)
    assert guarded(*args, flag=True) is result
    assert seen == [(tuple(args), {"flag": True})]


@pytest.mark.parametrize("policies", [(), NOOPS], ids=["empty", "six-noops"])
@given(args=st.lists(values, max_size=3), result=values)
def test_async_call_runs_once_and_returns_value_unchanged(
    policies: tuple[Policy, ...], args: list[Any], result: Any
) -> None:
    seen: list[tuple[Any, ...]] = []

    async def provider(*a: Any, **kw: Any) -> Any:
        seen.append((a, kw))
        return result

    guarded = build(*policies).guard(provider)
    assert asyncio.run(guarded(*args, flag=True)) is result
    assert seen == [(tuple(args), {"flag": True})]


# Outcomes: an int is a value returned; a string is an error raised with that message.
scripts = st.lists(st.one_of(st.integers(), st.sampled_from(["boom", "bang"])), min_size=1, max_size=8)


def _play(script: list[Any], calls: list[int]) -> Any:
    outcome = script[min(len(calls), len(script) - 1)]
    calls.append(1)
    if isinstance(outcome, str):
        raise RuntimeError(outcome)
    return outcome


@given(script=scripts, attempts=st.integers(min_value=1, max_value=6))
def test_wrapped_function_runs_exactly_once_per_attempt_sync_and_async_agree(script: list[Any], attempts: int) -> None:
    """Whatever a policy does, each attempt is one call; sync and async give the same result."""
    results: dict[str, tuple[str, Any, int]] = {}
    for kind in ("sync", "async"):
        calls: list[int] = []
        pipeline = build(RetryAll(attempts), *NOOPS[:2])

        def sync_provider(call_log: list[int] = calls) -> Any:
            return _play(script, call_log)

        async def async_provider(call_log: list[int] = calls) -> Any:
            return _play(script, call_log)

        try:
            if kind == "sync":
                out: tuple[str, Any] = ("value", pipeline.guard(sync_provider)())
            else:
                out = ("value", asyncio.run(pipeline.guard(async_provider)()))
        except RuntimeError as exc:
            out = ("error", str(exc))
        results[kind] = (*out, len(calls))
        # Expected: the first success within `attempts`, else the last error.
        expected_calls = next((i + 1 for i, o in enumerate(script[:attempts]) if not isinstance(o, str)), None)
        if expected_calls is None:
            n = attempts
            last = script[min(n - 1, len(script) - 1)]
            if isinstance(last, str):
                assert out == ("error", last)
                assert len(calls) == n
            else:  # the script's tail repeats a value
                assert out[0] == "value"
        else:
            assert len(calls) == expected_calls
            assert out == ("value", script[expected_calls - 1])
    assert results["sync"] == results["async"]


def test_attempt_counter_is_visible_to_the_provider_side() -> None:
    spy = Spy(lambda call: call.attempt, order=900)
    attempts = spy.seen

    n = {"calls": 0}

    def flaky() -> str:
        n["calls"] += 1
        if n["calls"] < 3:
            raise ConnectionError("down")
        return "up"

    assert build(RetryAll(5), spy).guard(flaky)() == "up"
    assert attempts == [1, 2, 3]


# ---------------------------------------------------------------- exceptions keep type and traceback


def test_exception_propagates_with_its_own_type_and_traceback() -> None:
    class Custom(Exception):
        pass

    def deep_provider() -> None:
        raise Custom("original")

    guarded = build(*NOOPS).guard(deep_provider)
    with pytest.raises(Custom, match="original") as info:
        guarded()
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "deep_provider"


def test_async_exception_propagates_with_its_own_type() -> None:
    async def provider() -> None:
        raise KeyError("k")

    guarded = build(*NOOPS).guard(provider)
    with pytest.raises(KeyError):
        asyncio.run(guarded())


# ---------------------------------------------------------------- the guard keeps the function's identity


def test_guard_keeps_name_doc_signature_and_kind() -> None:
    pipeline = build(*NOOPS)

    def create(model: str, *, max_tokens: int = 16) -> str:
        """Create a message."""
        return model

    async def acreate(model: str) -> str:
        return model

    def stream(n: int) -> Iterator[int]:
        yield from range(n)

    async def astream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    g = pipeline.guard(provider="anthropic", operation="messages.create")(create)
    assert g.__name__ == "create"
    assert g.__doc__ == "Create a message."
    assert inspect.signature(g) == inspect.signature(create)
    assert g.__wrapped__ is create
    assert g.target.provider == "anthropic"
    assert g.target.operation == "messages.create"
    assert g.target.kind == "sync"
    assert inspect.iscoroutinefunction(pipeline.guard(acreate))
    assert inspect.isgeneratorfunction(pipeline.guard(stream))
    assert inspect.isasyncgenfunction(pipeline.guard(astream))
    assert pipeline.guard(astream).target.kind == "astream"
    # The empty pipeline keeps the same identity.
    empty = build()
    assert inspect.signature(empty.guard(create)) == inspect.signature(create)
    assert inspect.iscoroutinefunction(empty.guard(acreate))


def test_model_is_static_or_read_from_the_call() -> None:
    spy = Spy(lambda call: call.model)
    models = spy.seen

    pipeline = build(spy)

    def create(**kwargs: Any) -> None:
        return None

    pipeline.guard(create)(model="claude-sonnet")
    pipeline.guard(model="fixed")(create)(model="ignored")
    pipeline.guard(create)()
    assert models == ["claude-sonnet", "fixed", None]


# ---------------------------------------------------------------- order


def test_policies_run_outermost_first_in_order() -> None:
    log: list[str] = []
    pipeline = build(Recorder("inner", log, order=900), Recorder("outer", log, order=100), Recorder("mid", log, 500))
    pipeline.guard(lambda: None)()
    assert log == ["outer", "mid", "inner"]
    assert [p.name for p in pipeline.policies] == ["outer", "mid", "inner"]


def test_order_setting_reorders() -> None:
    log: list[str] = []
    plugin = Contribute(Recorder("a", log, 100), Recorder("b", log, 200), Recorder("c", log, 300))
    pipeline = Pipeline(plugins=[plugin], discover=False, env={}, config={"order": ["c", "a"]})
    pipeline.guard(lambda: None)()
    assert log == ["c", "a", "b"]


def test_policy_that_does_not_apply_costs_nothing() -> None:
    class Idle(Policy):
        name = "idle"  # overrides no wrap_* method

    pipeline = build(Idle())
    assert pipeline.policies[0].kinds() == ()

    def f() -> int:
        return 1

    assert pipeline.compile(Target("p", "op", "sync"), f) is f  # type: ignore[arg-type]


# ---------------------------------------------------------------- streams


@given(items=st.lists(values, max_size=20))
def test_generator_yields_same_items_in_same_order(items: list[Any]) -> None:
    def gen() -> Iterator[Any]:
        yield from items

    for pipeline in (build(), build(*NOOPS)):
        assert list(pipeline.guard(gen)()) == items


@given(items=st.lists(values, max_size=20))
def test_async_generator_yields_same_items_in_same_order(items: list[Any]) -> None:
    async def gen() -> AsyncIterator[Any]:
        for item in items:
            yield item

    async def collect(pipeline: Pipeline) -> list[Any]:
        return [x async for x in pipeline.guard(gen)()]

    for pipeline in (build(), build(*NOOPS)):
        assert asyncio.run(collect(pipeline)) == items


class Watcher(Policy):
    """Registers chunk and end watchers on every stream."""

    name = "watcher"

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.ends: list[Outcome] = []
        self.starts = 0

    def _watch(self, call: Call) -> None:
        self.starts += 1
        call.on_chunk(lambda c, chunk: self.chunks.append(chunk))
        call.on_end(lambda c, outcome: self.ends.append(outcome))

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        def handler(call: Call) -> Any:
            self._watch(call)
            return nxt(call)

        return handler

    def wrap_astream(self, nxt: Any, target: Target) -> Any:
        def handler(call: Call) -> Any:
            self._watch(call)
            return nxt(call)

        return handler


def test_stream_start_chunks_and_end_are_seen_without_buffering() -> None:
    watcher = Watcher()
    produced: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(3):
            produced.append(i)
            yield i

    stream = build(watcher).guard(gen)()
    assert watcher.starts == 0  # a guarded generator is lazy, like a generator
    assert next(stream) == 0
    assert watcher.starts == 1
    # Chunk 0 was seen as it passed; chunk 1 is not produced yet: nothing read ahead.
    assert watcher.chunks == [0]
    assert produced == [0]
    assert list(stream) == [1, 2]
    assert watcher.chunks == [0, 1, 2]
    assert watcher.ends == [SUCCESS]


def test_abandoned_stream_is_closed_and_accounted() -> None:
    watcher = Watcher()
    closed: list[bool] = []

    def gen() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    stream = build(watcher).guard(gen)()
    for chunk in stream:
        if chunk == 2:
            break
    stream.close()
    assert closed == [True]
    assert watcher.ends == [ABANDONED]
    assert watcher.chunks == [0, 1, 2]


def test_abandoned_stream_without_watchers_closes_the_provider() -> None:
    closed: list[bool] = []

    def gen() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    stream = build(*NOOPS).guard(gen)()
    next(stream)
    stream.close()
    assert closed == [True]


def test_stream_failure_is_classified_and_raised() -> None:
    watcher = Watcher()

    def gen() -> Iterator[int]:
        yield 1
        raise ProviderHTTPError(529)

    with pytest.raises(ProviderHTTPError):
        list(build(watcher).guard(gen)())
    assert watcher.chunks == [1]
    assert len(watcher.ends) == 1
    assert watcher.ends[0].kind == "overloaded"
    assert watcher.ends[0].provider_fault


def test_async_stream_abandoned_and_failed() -> None:
    watcher = Watcher()
    closed: list[bool] = []

    async def gen() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(True)

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise TimeoutError

    pipeline = build(watcher)

    async def run() -> None:
        stream = pipeline.guard(gen)()
        async for chunk in stream:
            if chunk == 1:
                break
        await stream.aclose()
        with pytest.raises(TimeoutError):
            async for _ in pipeline.guard(broken)():
                pass

    asyncio.run(run())
    assert closed == [True]
    assert [o.kind for o in watcher.ends] == ["abandoned", "timeout"]
    assert watcher.chunks == [0, 1, 1]


def test_failing_watcher_never_breaks_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    class Bad(Policy):
        name = "bad"

        def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
            def handler(call: Call) -> Any:
                call.on_chunk(lambda c, chunk: 1 / 0)
                call.on_end(lambda c, o: 1 / 0)
                return nxt(call)

            return handler

    def gen() -> Iterator[int]:
        yield from (1, 2)

    assert list(build(Bad()).guard(gen)()) == [1, 2]
    assert "watcher" in caplog.text


# ---------------------------------------------------------------- context, observers, lifecycle


def test_request_context_reaches_policies_and_nests() -> None:
    spy = Spy(lambda call: call.tenant)
    tenants = spy.seen

    g = build(spy).guard(lambda: None)
    g()
    with request_context(tenant="acme") as outer:
        g()
        with request_context(tenant="globex"):
            g()
        g()
        outer.add("tokens.input", 5)
        outer.add("tokens.input", 7)
        assert outer.totals == {"tokens.input": 12}
    g()
    assert tenants == [None, "acme", "globex", "acme", None]


def test_tenant_key_function_wins_over_context() -> None:
    spy = Spy(lambda call: call.tenant)
    tenants = spy.seen

    def create(user: str) -> None:
        return None

    g = build(spy).guard(tenant=lambda call: call.args[0])(create)
    with request_context(tenant="ctx"):
        g("from-arg")
    assert tenants == ["from-arg"]


def test_context_follows_async_tasks() -> None:
    async def main() -> list[str | None]:
        async def one(name: str) -> str | None:
            with request_context(tenant=name):
                await asyncio.sleep(0)
                from resilient.context import current

                ctx = current()
                return ctx.tenant if ctx else None

        return list(await asyncio.gather(one("a"), one("b"), one("c")))

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_observer_failure_never_fails_the_call(caplog: pytest.LogCaptureFixture) -> None:
    received: list[Event] = []

    class Ping(Event):
        name = "ping"

    class Emits(Policy):
        name = "emits"

        def __init__(self, runtime: Runtime) -> None:
            self.events = runtime.events

        def wrap(self, nxt: Handler, target: Target) -> Handler:
            def handler(call: Call) -> Any:
                if self.events.enabled:
                    self.events.emit(Ping(provider=call.provider))
                return nxt(call)

            return handler

    class Plugin:
        @hookimpl
        def resilient_observers(self, runtime: Runtime) -> list[Any]:
            def bad(event: Event) -> None:
                raise RuntimeError("observer bug")

            return [bad, received.append]

        @hookimpl
        def resilient_policies(self, runtime: Runtime) -> list[Policy]:
            return [Emits(runtime)]

    pipeline = Pipeline(plugins=[Plugin()], discover=False, env={}, config={})
    assert pipeline.guard(provider="p")(lambda: 42)() == 42
    assert [e.name for e in received] == ["ping"]
    assert received[0].provider == "p"
    assert "observer bug" in caplog.text


def test_close_reaches_every_policy_and_survives_failures() -> None:
    closed: list[str] = []

    class Closing(Policy):
        def __init__(self, name: str, fail: bool) -> None:
            self.name = name
            self.fail = fail

        def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise OSError("store gone")

    pipeline = build(Closing("a", True), Closing("b", False))
    with pipeline:
        pass
    assert sorted(closed) == ["a", "b"]
    closed.clear()
    asyncio.run(pipeline.aclose())
    assert sorted(closed) == ["a", "b"]


def test_guard_rejects_a_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        build().guard(42)  # type: ignore[call-overload]


def test_kind_is_detected_through_functools_wraps() -> None:
    import functools

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(*a: Any, **kw: Any) -> Any:
            return fn(*a, **kw)

        return inner

    @logged
    async def create() -> str:
        return "x"

    guarded = build(*NOOPS).guard(create)
    assert guarded.target.kind == "async"
    assert asyncio.run(guarded()) == "x"


def test_astream_kind_on_a_coroutine_returning_an_async_iterator() -> None:
    """The SDK shape: ``return await client.messages.create(stream=True)``."""
    watcher = Watcher()

    async def chunks() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def create() -> AsyncIterator[int]:
        await asyncio.sleep(0)
        return chunks()

    async def collect(pipeline: Pipeline) -> list[int]:
        guarded = pipeline.guard(kind="astream")(create)
        # Called as the undecorated function is: awaited, then iterated.
        assert inspect.iscoroutinefunction(guarded)
        return [c async for c in await guarded()]

    assert asyncio.run(collect(build())) == [0, 1, 2]
    assert asyncio.run(collect(build(watcher))) == [0, 1, 2]
    assert watcher.chunks == [0, 1, 2]
    assert watcher.ends == [SUCCESS]


def test_astream_coroutine_keeps_its_calling_convention_with_policies_and_failures() -> None:
    watcher = Watcher()

    async def chunks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def create(n: int) -> AsyncIterator[int]:
        if n < 0:
            raise ValueError("refused before any chunk")
        return chunks(n)

    guarded = build(watcher, *NOOPS).guard(kind="astream")(create)
    assert inspect.iscoroutinefunction(guarded)
    assert not inspect.isasyncgenfunction(guarded)
    assert inspect.signature(guarded) == inspect.signature(create)

    async def scenario() -> None:
        stream = await guarded(3)
        assert watcher.starts == 1  # awaiting made the call, as it does unguarded
        assert watcher.chunks == [0]  # the stream was started: its first chunk read, nothing more
        assert [c async for c in stream] == [0, 1, 2]
        assert watcher.ends == [SUCCESS]
        # A failure before the first chunk raises from the await, not from the iteration.
        with pytest.raises(ValueError, match="refused before any chunk"):
            await guarded(-1)
        assert len(watcher.ends) == 2
        assert watcher.ends[1] is not SUCCESS
        # An empty stream, and one left early: closed, and seen abandoned.
        assert [c async for c in await guarded(0)] == []
        async with await guarded(5) as early:
            assert await early.__anext__() == 0
        assert watcher.ends[-1] == ABANDONED

    asyncio.run(scenario())


def test_stream_kind_on_a_function_returning_an_iterator_keeps_its_calling_convention() -> None:
    watcher = Watcher()

    def create(n: int) -> Iterator[int]:
        if n < 0:
            raise ValueError("refused before any chunk")
        return iter(range(n))

    guarded = build(watcher).guard(kind="stream")(create)
    assert not inspect.isgeneratorfunction(guarded)
    stream = guarded(3)
    assert watcher.starts == 1  # the call was made when the function was called
    assert list(stream) == [0, 1, 2]
    assert watcher.chunks == [0, 1, 2]
    assert watcher.ends == [SUCCESS]
    with pytest.raises(ValueError, match="refused before any chunk"):
        guarded(-1)
    with guarded(5) as early:
        assert next(early) == 0
    assert watcher.ends[-1] == ABANDONED
    # Without a policy acting, the function's own return value comes back.
    marker = iter([1])
    assert build().guard(kind="stream")(lambda: marker)() is marker

    # A generator function stays a generator function, lazy as before.
    def gen() -> Iterator[int]:
        yield 1

    assert inspect.isgeneratorfunction(build(watcher).guard(gen))


def test_astream_coroutine_with_the_anthropic_sdk_against_the_simulator() -> None:
    """README's shape: ``return await client.messages.create(..., stream=True)`` under ``kind="astream"``."""
    import anthropic

    from resilient.testing.simulator import Simulator, run_simulator

    watcher = Watcher()
    with run_simulator(Simulator(retry_after=0)) as server:
        pipeline = Pipeline(plugins=[Contribute(watcher)], env={}, config={})

        async def scenario() -> list[str]:
            client = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=server.base_url, max_retries=0)

            @pipeline.guard(provider="anthropic", operation="messages.create", kind="astream")
            async def ask_stream(prompt: str) -> Any:
                return await client.messages.create(
                    model="claude-test-1",
                    max_tokens=20,
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                )

            assert inspect.iscoroutinefunction(ask_stream)
            try:
                stream = await ask_stream("hi")
                return [event.type async for event in stream]
            finally:
                await client.close()

        types = asyncio.run(scenario())
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert [c.type for c in watcher.chunks] == types
    assert watcher.ends == [SUCCESS]


def test_sync_stream_failing_before_its_first_chunk_reaches_end_watchers() -> None:
    watcher = Watcher()

    class Refuse(Policy):
        name = "refuse"
        order = 2000  # inside the watcher, which registers first

        def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
            def handler(call: Call) -> Any:
                raise ProviderHTTPError(503)

            return handler

    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(ProviderHTTPError):
        next(build(watcher, Refuse()).guard(gen)())
    assert [o.kind for o in watcher.ends] == ["server_error"]


def test_generator_return_value_survives_the_chain() -> None:
    def gen() -> Any:
        yield 1
        return "done"

    def outer() -> Any:
        result = yield from guarded()
        yield result

    for pipeline in (build(), build(*NOOPS), Pipeline(env={}, config={"disable": ["quota"]})):
        guarded = pipeline.guard(gen)
        assert list(outer()) == [1, "done"]


def test_guarded_methods_bind_like_methods() -> None:
    from resilient import target_of

    pipeline = build(*NOOPS)

    class Client:
        def __init__(self) -> None:
            self.prefix = ">"

        @pipeline.guard(provider="anthropic")
        def create(self, prompt: str) -> str:
            return self.prefix + prompt

    client = Client()
    assert client.create("hi") == ">hi"
    assert target_of(Client.create).provider == "anthropic"
    with pytest.raises(TypeError, match="not a guarded function"):
        target_of(len)


def test_guarding_a_partial_or_a_callable_object_names_it() -> None:
    import functools

    from resilient import target_of

    def create(model: str, prompt: str) -> str:
        return model + prompt

    class Client:
        def __call__(self, prompt: str) -> str:
            return prompt

    pipeline = build(*NOOPS)
    g = pipeline.guard(functools.partial(create, "m:"))
    assert g("hi") == "m:hi"
    assert target_of(g).operation == "create"
    assert g.__name__ == "create"
    c = pipeline.guard(Client())
    assert c("x") == "x"
    assert target_of(c).operation == "Client"
    assert "0x" not in target_of(c).name


def test_capture_calls_collects_the_calls_of_its_block_only() -> None:
    pipeline = build(Noop("a"))

    @pipeline.guard(provider="p")
    def ask(model: str) -> str:
        return model

    ask(model="before")
    with capture_calls() as calls:
        ask(model="m1")
        with capture_calls() as inner:
            ask(model="m2")
        ask(model="m3")
    ask(model="after")
    assert [c.model for c in calls] == ["m1", "m3"]
    assert [c.model for c in inner] == ["m2"]


def test_capture_calls_follows_async_tasks() -> None:
    pipeline = build(Noop("a"))

    @pipeline.guard(provider="p")
    async def ask(model: str) -> str:
        return model

    async def main() -> list[str | None]:
        with capture_calls() as calls:
            await asyncio.gather(ask(model="x"), asyncio.create_task(ask(model="y")))
        return sorted(c.model or "" for c in calls)

    assert asyncio.run(main()) == ["x", "y"]


class _Healthy(Noop):
    def __init__(self, name: str, report: Any) -> None:
        super().__init__(name)
        self.report = report

    def health(self) -> Any:
        if isinstance(self.report, Exception):
            raise self.report
        return self.report


def test_health_aggregates_policies_and_hides_error_messages() -> None:
    ok = build(_Healthy("a", {"ok": True, "n": 1}), _Healthy("b", None), Noop("c"))
    assert ok.health() == {"ok": True, "policies": {"a": {"ok": True, "n": 1}}}
    assert asyncio.run(ok.ahealth()) == ok.health()

    bad = build(_Healthy("a", {"ok": False}), _Healthy("b", RuntimeError("redis://:hunter2@db")))
    report = bad.health()
    assert report["ok"] is False
    assert report["policies"]["b"] == {"ok": False, "error": "RuntimeError"}
    assert "hunter2" not in repr(report)
    assert asyncio.run(bad.ahealth()) == report
