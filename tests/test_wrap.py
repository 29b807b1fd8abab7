"""pipeline.wrap(client): the real anthropic and openai SDKs, talking to the simulator over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

import resilient_metrics
from resilient import Pipeline, QuotaExceeded, capture_calls
from resilient.providers import classify
from resilient.testing.simulator import Drop, Simulator, SimulatorServer, Slow, Status, run_simulator

MESSAGES = [{"role": "user", "content": "hello there"}]
MODEL = "claude-test-1"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(retry_after=0)) as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer) -> Simulator:
    server.simulator.reset()
    server.simulator.configure(rpm=None, fail_rate=0.0)
    return server.simulator


def pipeline(**config: Any) -> Pipeline:
    defaults: dict[str, Any] = {"retry": {"max_attempts": 3}}
    return Pipeline(env={}, config={**defaults, **config}, random=lambda: 0.0)


# Sync clients made by a test, closed after it: an httpx pool left to the garbage collector warns about
# its open sockets in whichever later test the collection happens to run (warnings are errors here).
_opened: list[anthropic.Anthropic | openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def claude(server: SimulatorServer, **kwargs: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url, **kwargs)
    _opened.append(client)
    return client


def aclaude(server: SimulatorServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=server.base_url)


# ---------------------------------------------------------------- the client stays itself


def test_wrapped_client_keeps_its_type_and_leaves_the_original_alone(server: SimulatorServer, sim: Simulator) -> None:
    original = claude(server)
    wrapped = pipeline().wrap(original)
    assert isinstance(wrapped, anthropic.Anthropic)
    assert wrapped is not original
    assert wrapped.max_retries == 0  # the pipeline has a retry policy: it owns retries
    assert original.max_retries == 2
    assert pipeline(retry={"enabled": False}).wrap(original).max_retries == 2
    assert pipeline().wrap(original, sdk_retries=True).max_retries == 2
    with capture_calls() as calls:
        original.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert calls == []  # the original is not guarded


def test_wrap_refuses_what_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="guard the calls"):
        pipeline().wrap(object())


# ---------------------------------------------------------------- anthropic, sync


def test_create_goes_through_the_pipeline_with_usage_and_headers(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline().wrap(claude(server))
    with capture_calls() as calls:
        message = client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    assert isinstance(message, anthropic.types.Message)
    (call,) = calls
    assert (call.provider, call.operation, call.model) == ("anthropic", "messages.create", MODEL)
    assert call.usage is not None
    assert call.usage.input_tokens == message.usage.input_tokens
    assert call.usage.output_tokens == message.usage.output_tokens
    assert call.metadata["request_id"] == call.metadata["response_headers"]["request-id"]
    assert sim.stats.total == 1


def test_retries_are_ours_and_the_sdk_does_not_retry_as_well(server: SimulatorServer, sim: Simulator) -> None:
    sim.script("529", "500")
    client = pipeline().wrap(claude(server))
    with capture_calls() as calls:
        message = client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert message.content
    assert calls[0].attempt == 3
    assert sim.stats.total == 3  # not 3 x (1 + the SDK's 2 retries)


def test_a_bad_request_is_not_retried_and_keeps_the_sdk_exception(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline().wrap(claude(server))
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=20, messages=[])
    assert sim.stats.total == 1


def test_with_raw_response_keeps_working_and_is_guarded(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline().wrap(claude(server))
    with capture_calls() as calls:
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert raw.headers["request-id"]
    message = raw.parse()
    assert isinstance(message, anthropic.types.Message)
    assert calls[0].usage is not None
    assert calls[0].usage.output_tokens == message.usage.output_tokens


def test_stream_true_yields_the_sdk_events_and_reads_usage(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline().wrap(claude(server))
    with capture_calls() as calls:
        stream = client.messages.create(model=MODEL, max_tokens=30, messages=MESSAGES, stream=True)
        events = list(stream)
    types = [event.type for event in events]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert "content_block_delta" in types
    delta = next(e for e in events if e.type == "message_delta")
    assert calls[0].usage is not None
    assert calls[0].usage.output_tokens == delta.usage.output_tokens
    assert stream.response is not None
    assert stream.response.headers["request-id"]


def test_a_wrapped_stream_s_tokens_are_counted_once_read_by_the_wrapper(
    server: SimulatorServer, sim: Simulator
) -> None:
    # The SDK wrapper reads each event's usage (Target.reads_usage): the metrics watcher then only times it.
    registry = CollectorRegistry()
    with resilient_metrics.use_registry(registry):
        client = pipeline().wrap(claude(server))
    with capture_calls() as calls:
        events = list(client.messages.create(model=MODEL, max_tokens=30, messages=MESSAGES, stream=True))
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    assert calls[0].target.reads_usage
    labels = {"provider": "anthropic", "operation": "messages.create", "model": MODEL}
    tokens = registry.get_sample_value
    assert tokens("resilient_tokens_total", {**labels, "kind": "input"}) == start.message.usage.input_tokens
    assert tokens("resilient_tokens_total", {**labels, "kind": "output"}) == delta.usage.output_tokens
    assert calls[0].metadata["first_chunk_s"] >= 0


def test_temperature_0_in_extra_body_makes_a_wrapped_call_cacheable(server: SimulatorServer, sim: Simulator) -> None:
    # anthropic 2.x's messages.create takes no temperature argument: extra_body carries it to the API.
    client = pipeline(cache={"enabled": True}).wrap(claude(server))
    ask = client.messages.create
    with capture_calls() as calls:
        first = ask(model=MODEL, max_tokens=20, messages=MESSAGES, extra_body={"temperature": 0})
        again = ask(model=MODEL, max_tokens=20, messages=MESSAGES, extra_body={"temperature": 0})
        warm = ask(model=MODEL, max_tokens=20, messages=MESSAGES, extra_body={"temperature": 0.7})
        plain = ask(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert [c.metadata.get("cache") for c in calls] == ["miss", "hit", "bypass", "bypass"]
    assert again == first
    assert warm.id != first.id
    assert plain.id != first.id


def test_stream_errors_before_the_first_event_raise_from_create(server: SimulatorServer, sim: Simulator) -> None:
    sim.script(Status(400, message="nope"))
    client = pipeline().wrap(claude(server))
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=30, messages=MESSAGES, stream=True)


def test_stream_is_retried_before_its_first_event_only(server: SimulatorServer, sim: Simulator) -> None:
    sim.script("529", Drop(after=2))
    client = pipeline().wrap(claude(server))
    stream = client.messages.create(model=MODEL, max_tokens=30, messages=MESSAGES, stream=True)
    got = []
    try:
        for event in stream:
            got.append(event)
    except Exception as exc:  # the connection dropped mid-stream: the HTTP library's own error
        error = exc
    else:
        pytest.fail("the dropped stream ended cleanly")
    assert classify(error).kind == "connection"
    assert 1 <= len(got) <= 2
    assert sim.stats.total == 2  # the 529 was retried; the dropped stream was not


def test_messages_stream_helper_goes_through_the_pipeline(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline().wrap(claude(server))
    with capture_calls() as calls, client.messages.stream(model=MODEL, max_tokens=30, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert calls[0].target.kind == "stream"
    assert calls[0].usage is not None
    assert calls[0].usage.output_tokens == final.usage.output_tokens


def test_count_tokens_is_guarded(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline().wrap(claude(server))
    with capture_calls() as calls:
        counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert counted.input_tokens > 0
    assert calls[0].operation == "messages.count_tokens"


def test_exhausted_rate_limit_headers_on_a_success_pause_the_key(server: SimulatorServer, sim: Simulator) -> None:
    sim.configure(rpm=1)  # the first answer says: 0 requests remaining until the minute ends
    client = pipeline().wrap(claude(server))
    client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    with pytest.raises(QuotaExceeded, match="provider asked to slow down") as info:
        client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= 61
    assert sim.stats.total == 1  # the fleet stopped sending before the provider had to refuse


# ---------------------------------------------------------------- anthropic, async


def test_async_create_stream_and_helper(server: SimulatorServer, sim: Simulator) -> None:
    async def main() -> None:
        client = pipeline().wrap(aclaude(server))
        assert isinstance(client, anthropic.AsyncAnthropic)
        sim.script("529")
        with capture_calls() as calls:
            message = await client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
            stream = await client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, stream=True)
            events = [event async for event in stream]
            async with client.messages.stream(model=MODEL, max_tokens=20, messages=MESSAGES) as helper:
                final = await helper.get_final_message()
            raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=20, messages=MESSAGES)
        assert isinstance(message, anthropic.types.Message)
        assert events[-1].type == "message_stop"
        assert final.usage.output_tokens > 0
        assert raw.headers["request-id"]
        assert [c.target.kind for c in calls] == ["async", "astream", "astream", "async"]
        assert calls[0].attempt == 2
        assert all(c.usage is not None and c.usage.output_tokens > 0 for c in calls)
        await client.close()

    asyncio.run(main())
    assert sim.stats.total == 5


# ---------------------------------------------------------------- openai


def test_openai_chat_completions_plain_and_streamed(server: SimulatorServer, sim: Simulator) -> None:
    original = openai.OpenAI(api_key="sk-test", base_url=server.openai_base_url)
    _opened.append(original)
    client = pipeline().wrap(original)
    assert isinstance(client, openai.OpenAI)
    assert client.max_retries == 0
    sim.script("500")
    with capture_calls() as calls:
        completion = client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        chunks = list(
            client.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert completion.choices[0].message.content
    assert calls[0].attempt == 2
    assert calls[0].operation == "chat.completions.create"
    assert calls[0].usage is not None
    assert completion.usage is not None
    assert calls[0].usage.output_tokens == completion.usage.completion_tokens
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert calls[1].usage is not None
    assert calls[1].usage.output_tokens > 0


def test_async_openai(server: SimulatorServer, sim: Simulator) -> None:
    async def main() -> str | None:
        client = pipeline().wrap(openai.AsyncOpenAI(api_key="sk-test", base_url=server.openai_base_url))
        completion = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
        await client.close()
        assert "".join(pieces) == completion.choices[0].message.content
        return completion.choices[0].message.content

    assert asyncio.run(main())


# ---------------------------------------------------------------- the timeout plugin's limit reaches the SDK


def test_the_attempt_timeout_is_the_sdk_s_timeout_on_a_wrapped_sync_call(
    server: SimulatorServer, sim: Simulator
) -> None:
    sim.script(Slow(seconds=3.0))
    client = pipeline(retry={"max_attempts": 1}, timeout={"timeout": 0.3}).wrap(claude(server))
    started = time.monotonic()
    with capture_calls() as calls, pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert time.monotonic() - started < 2.5  # the SDK gave up at 0.3 s, not after the provider's 3 s
    assert calls[-1].kwargs["timeout"] == 0.3
    assert classify(anthropic.APITimeoutError(request=None)).kind == "timeout"  # type: ignore[arg-type]


def test_a_timed_out_attempt_is_retried_and_a_smaller_caller_timeout_is_kept(
    server: SimulatorServer, sim: Simulator
) -> None:
    sim.script(Slow(seconds=3.0))  # the first attempt is slow, the next is answered
    client = pipeline(timeout={"timeout": 0.4}).wrap(claude(server))
    with capture_calls() as calls:
        message = client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    assert message.content[0].text == "Simulated reply to: hello there"
    assert calls[-1].attempt == 2
    with capture_calls() as calls:
        client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, timeout=0.25)
    assert calls[-1].kwargs["timeout"] == 0.25


def test_the_attempt_timeout_reaches_a_wrapped_async_call(server: SimulatorServer, sim: Simulator) -> None:
    sim.script(Slow(seconds=3.0))
    client = pipeline(retry={"max_attempts": 1}, timeout={"timeout": 0.3}).wrap(aclaude(server))

    async def main() -> list[Any]:
        with capture_calls() as calls:
            with pytest.raises((TimeoutError, anthropic.APITimeoutError)) as failed:
                await client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
            assert classify(failed.value).kind == "timeout"
        await client.close()
        return calls

    started = time.monotonic()
    calls = asyncio.run(main())
    assert time.monotonic() - started < 2.5
    assert calls[-1].kwargs["timeout"] == 0.3


def test_a_stream_s_idle_timeout_is_the_sdk_s_read_timeout(server: SimulatorServer, sim: Simulator) -> None:
    client = pipeline(timeout={"idle_timeout": 5.0}).wrap(claude(server))
    with capture_calls() as calls:
        stream = client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, stream=True)
        events = [event.type for event in stream]
    assert events[-1] == "message_stop"
    assert calls[-1].kwargs["timeout"] == 5.0
