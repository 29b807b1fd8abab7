"""The provider simulator, driven by the real anthropic and openai SDKs (over uvicorn and over ASGI)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient.testing import FakeClock
from resilient.testing import _sim_content as content
from resilient.testing.simulator import (
    ConnectionDropped,
    Drop,
    Simulator,
    SimulatorServer,
    Slow,
    Stall,
    Status,
    StreamError,
    parse_fault,
    run_simulator,
)

MODEL = "claude-sim"
HELLO = [{"role": "user", "content": "Hello there world"}]
HELLO_TEXT = "Simulated reply to: Hello there world"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator()) as srv:
        yield srv


@pytest.fixture
def srv(server: SimulatorServer) -> SimulatorServer:
    server.simulator.reset()
    return server


@pytest.fixture
def client(srv: SimulatorServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="test", base_url=srv.base_url, max_retries=0) as c:
        yield c


@pytest.fixture
def oai(srv: SimulatorServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="test", base_url=srv.openai_base_url, max_retries=0) as c:
        yield c


def asgi_anthropic(sim: Simulator) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=sim.app), base_url="http://sim")
    return anthropic.AsyncAnthropic(api_key="test", base_url="http://sim", max_retries=0, http_client=http)


def raw_client(sim: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim")


# -- Anthropic, real SDK over uvicorn ---------------------------------------------------------


def test_create_answers_deterministically_from_the_request(client: anthropic.Anthropic) -> None:
    first = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    again = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    other = client.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Other"}])
    assert first.content[0].type == "text"
    assert first.content[0].text == again.content[0].text == HELLO_TEXT
    assert other.content[0].type == "text"
    assert other.content[0].text == "Simulated reply to: Other"
    assert (first.usage.input_tokens, first.usage.output_tokens) == (3 + 3, 6)
    assert first.stop_reason == "end_turn"
    assert first.model == MODEL
    assert first.role == "assistant"
    assert first.id != again.id


def test_output_respects_max_tokens(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Simulated reply to:"
    assert message.usage.output_tokens == 3
    assert message.stop_reason == "max_tokens"


def test_stream_sends_the_messages_api_event_sequence(client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True))
    types = [e.type for e in events]
    assert types == ["message_start", "content_block_start"] + ["content_block_delta"] * 6 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == 6
    assert delta.type == "message_delta"
    assert delta.usage.output_tokens == 6
    assert delta.delta.stop_reason == "end_turn"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == HELLO_TEXT


def test_messages_stream_final_message_matches_create(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=4, messages=HELLO) as stream:
        streamed = stream.get_final_message()
    plain = client.messages.create(model=MODEL, max_tokens=4, messages=HELLO)
    assert streamed.content[0].type == "text"
    assert plain.content[0].type == "text"
    assert streamed.content[0].text == plain.content[0].text == "Simulated reply to: Hello"
    assert streamed.usage.input_tokens == plain.usage.input_tokens
    assert streamed.usage.output_tokens == plain.usage.output_tokens == 4
    assert streamed.stop_reason == plain.stop_reason == "max_tokens"


def test_count_tokens_matches_the_usage_of_an_answer(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO, system="Be brief")
    answered = client.messages.create(model=MODEL, max_tokens=10, messages=HELLO, system="Be brief")
    assert counted.input_tokens == answered.usage.input_tokens == 2 + 6


def test_headers_carry_request_id_and_rate_limits(client: anthropic.Anthropic) -> None:
    first = client.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=HELLO)
    second = client.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert first.headers["request-id"] != second.headers["request-id"]
    assert first.parse().content[0].type == "text"
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        for what in ("limit", "remaining", "reset"):
            assert f"anthropic-ratelimit-{kind}-{what}" in first.headers
    assert first.headers["anthropic-ratelimit-requests-limit"] == "4000"
    remaining = [int(r.headers["anthropic-ratelimit-requests-remaining"]) for r in (first, second)]
    assert remaining == [3999, 3998]
    out = [int(r.headers["anthropic-ratelimit-output-tokens-remaining"]) for r in (first, second)]
    assert out[0] - out[1] == 6
    assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")


# -- faults, real SDK --------------------------------------------------------------------------


def test_429_raises_rate_limit_error_with_retry_after(srv: SimulatorServer, client: anthropic.Anthropic) -> None:
    srv.simulator.script("429", Status(429, retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as default:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as explicit:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert default.value.response.headers["retry-after"] == "1"
    assert explicit.value.response.headers["retry-after"] == "7"
    body = default.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "request-id" in default.value.response.headers
    assert client.messages.create(model=MODEL, max_tokens=10, messages=HELLO).content


def test_529_raises_the_overloaded_error(srv: SimulatorServer, client: anthropic.Anthropic) -> None:
    srv.simulator.script("529")
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert isinstance(info.value, anthropic.OverloadedError)
    assert info.value.status_code == 529
    assert info.value.response.headers["retry-after"] == "1"
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_500_raises_internal_server_error_without_retry_after(
    srv: SimulatorServer, client: anthropic.Anthropic
) -> None:
    srv.simulator.script(500)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert info.value.status_code == 500
    assert "retry-after" not in info.value.response.headers
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "api_error"


def test_a_drop_mid_stream_breaks_the_sdk_iteration(srv: SimulatorServer, client: anthropic.Anthropic) -> None:
    srv.simulator.script(Drop(after=4))
    seen: list[str] = []
    with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)):
        for event in client.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True):
            seen.append(event.type)
    assert seen[:2] == ["message_start", "content_block_start"]
    assert "message_stop" not in seen
    # The server survives and answers the next request.
    assert client.messages.create(model=MODEL, max_tokens=10, messages=HELLO).content


def test_a_drop_in_a_plain_answer_is_a_connection_error(srv: SimulatorServer, client: anthropic.Anthropic) -> None:
    srv.simulator.script("drop")
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)


def test_an_error_event_mid_stream_raises_in_the_sdk(srv: SimulatorServer, client: anthropic.Anthropic) -> None:
    srv.simulator.script(StreamError(after=3))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in client.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True):
            seen.append(event.type)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert seen == ["message_start", "content_block_start"]


def test_a_stall_mid_stream_hits_the_client_read_timeout(srv: SimulatorServer) -> None:
    srv.simulator.script(Stall(after=3, seconds=30))
    with anthropic.Anthropic(api_key="test", base_url=srv.base_url, max_retries=0, timeout=0.3) as c:
        with pytest.raises((anthropic.APITimeoutError, httpx2.ReadTimeout)):
            for _ in c.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True):
                pass
        # The stalled answer ended when the client went; the next one is served at once.
        assert c.messages.create(model=MODEL, max_tokens=10, messages=HELLO).content
    assert srv.simulator.stats.faults == {"stall": 1, "ok": 1}


def test_counters_by_endpoint_and_fault(srv: SimulatorServer, client: anthropic.Anthropic, oai: openai.OpenAI) -> None:
    srv.simulator.script("429", "ok", "529")
    for _ in range(3):
        try:
            client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        except anthropic.APIStatusError:
            pass
    client.messages.count_tokens(model=MODEL, messages=HELLO)
    oai.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "hi"}])
    stats = srv.simulator.stats
    assert stats.total == 5
    assert dict(stats.endpoints) == {"/v1/messages": 3, "/v1/messages/count_tokens": 1, "/v1/chat/completions": 1}
    assert dict(stats.faults) == {"429": 1, "ok": 3, "529": 1}
    assert srv.simulator.pending == 0
    seen = srv.simulator.requests
    assert [r.fault for r in seen] == ["429", "ok", "529", "ok", "ok"]
    assert "x-api-key" not in seen[0].headers
    assert seen[0].body["model"] == MODEL


# -- OpenAI, real SDK -------------------------------------------------------------------------


def test_openai_chat_completion(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-sim", messages=[{"role": "user", "content": "Hello there world"}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == HELLO_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 6)
    assert raw.headers["x-request-id"].startswith("req_sim_")
    assert raw.headers["x-ratelimit-remaining-requests"] == "3999"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")


def test_openai_stream_with_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-sim",
            messages=[{"role": "user", "content": "Hello there world"}],
            max_completion_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Simulated reply"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_stream_without_usage_and_errors(srv: SimulatorServer, oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert all(c.choices for c in chunks)
    srv.simulator.script("429", "500")
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "1"
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "x"}])


def test_openai_error_mid_stream(srv: SimulatorServer, oai: openai.OpenAI) -> None:
    srv.simulator.script(StreamError(after=2))
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in oai.chat.completions.create(
            model="gpt-sim", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "Simulated "]
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "server_error"


def test_openai_drop_mid_stream(srv: SimulatorServer, oai: openai.OpenAI) -> None:
    srv.simulator.script("drop:2")
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        for _ in oai.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "x"}], stream=True):
            pass


# -- invalid requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/messages", b"{not json", "not valid JSON"),
        ("/v1/messages", b"[1]", "JSON object"),
        ("/v1/messages", json.dumps({"model": MODEL, "messages": HELLO}).encode(), "max_tokens: Field required"),
        ("/v1/messages", json.dumps({"model": MODEL, "max_tokens": 5}).encode(), "messages: Field required"),
        ("/v1/messages", json.dumps({"max_tokens": 5, "messages": HELLO}).encode(), "model: Field required"),
        ("/v1/messages", json.dumps({"model": MODEL, "max_tokens": 0, "messages": HELLO}).encode(), "max_tokens"),
        ("/v1/messages/count_tokens", json.dumps({"model": MODEL}).encode(), "messages: Field required"),
        ("/v1/chat/completions", json.dumps({"messages": HELLO}).encode(), "model: Field required"),
    ],
)
def test_malformed_requests_get_400_in_the_provider_shape(path: str, body: bytes, expected: str) -> None:
    sim = Simulator()
    sim.script("429")  # not consumed by an invalid request

    async def post() -> httpx.Response:
        async with raw_client(sim) as http:
            return await http.post(path, content=body, headers={"content-type": "application/json"})

    response = asyncio.run(post())
    assert response.status_code == 400
    error = response.json()
    if path.startswith("/v1/chat"):
        assert error["error"]["type"] == "invalid_request_error"
        assert "x-request-id" in response.headers
    else:
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert "request-id" in response.headers
    assert expected in json.dumps(error)
    assert sim.stats.faults == {"invalid": 1}
    assert sim.pending == 1


# -- time, randomness and rate limits, over ASGI on a fake clock -------------------------------


def test_latency_goes_through_the_injected_clock() -> None:
    clock = FakeClock()
    sim = Simulator(latency="50ms", first_byte_latency=0.2, chunk_delay="10ms", clock=clock)

    async def run() -> list[float]:
        marks = []
        async with asgi_anthropic(sim) as c:
            await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            marks.append(clock.monotonic())
            events = [e async for e in await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True)]
            marks.append(clock.monotonic())
            assert len(events) == 11
            sim.script(Slow(2.0))
            await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            marks.append(clock.monotonic())
        return marks

    marks = asyncio.run(run())
    # 12 SSE events (ping included): latency + first byte + 11 gaps between events.
    assert marks == pytest.approx([0.05, 0.05 + 0.05 + 0.2 + 11 * 0.01, 0.05 + 0.36 + 2.05])


def test_async_sdk_against_the_asgi_app() -> None:
    sim = Simulator()

    async def run() -> tuple[str, str]:
        async with asgi_anthropic(sim) as c:
            message = await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            async with c.messages.stream(model=MODEL, max_tokens=10, messages=HELLO) as stream:
                final = await stream.get_final_message()
            sim.script("529")
            with pytest.raises(anthropic.OverloadedError):
                await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            sim.script("drop")
            with pytest.raises(anthropic.APIConnectionError) as dropped:
                await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            assert isinstance(dropped.value.__cause__, ConnectionDropped)
        assert message.content[0].type == "text"
        assert final.content[0].type == "text"
        return message.content[0].text, final.content[0].text

    assert asyncio.run(run()) == (HELLO_TEXT, HELLO_TEXT)


def test_async_sdk_over_uvicorn(srv: SimulatorServer) -> None:
    async def run() -> list[str]:
        async with anthropic.AsyncAnthropic(api_key="test", base_url=srv.base_url, max_retries=0) as c:
            stream = await c.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True)
            return [e.type async for e in stream]

    assert asyncio.run(run())[-1] == "message_stop"


def test_rpm_limit_answers_429_until_the_minute_ends() -> None:
    clock = FakeClock()
    sim = Simulator(rpm=2, clock=clock)

    async def run() -> list[httpx.Response]:
        body = {"model": MODEL, "max_tokens": 5, "messages": HELLO}
        out = []
        async with raw_client(sim) as http:
            for step in (0.0, 10.0, 20.0, 30.0):
                clock.advance(step and 10.0)
                out.append(await http.post("/v1/messages", json=body))
            clock.advance(30.0)  # 60 s after the window opened
            out.append(await http.post("/v1/messages", json=body))
        return out

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200, 429, 429, 200]
    assert [r.headers["anthropic-ratelimit-requests-remaining"] for r in responses] == ["1", "0", "0", "0", "1"]
    assert responses[2].headers["retry-after"] == "40"
    assert responses[3].headers["retry-after"] == "30"
    assert responses[2].json()["error"]["type"] == "rate_limit_error"
    assert sim.stats.faults == {"ok": 3, "rpm": 2}


def test_random_faults_follow_the_seed() -> None:
    def labels(seed: int) -> list[str]:
        sim = Simulator(fail_rate=0.5, seed=seed, faults=("429", "529", "drop"))

        async def run() -> None:
            body = {"model": "gpt-sim", "messages": HELLO}
            async with raw_client(sim) as http:
                for _ in range(60):
                    try:
                        await http.post("/v1/chat/completions", json=body)
                    except ConnectionDropped:
                        pass

        asyncio.run(run())
        return [r.fault for r in sim.requests]

    first = labels(7)
    assert first == labels(7)
    assert first != labels(8)
    assert set(first) == {"ok", "429", "529", "drop"}
    assert set(labels(1)) <= {"ok", "429", "529", "drop"}


def test_fail_rate_one_always_fails() -> None:
    sim = Simulator(fail_rate=1.0, faults=[529])

    async def run() -> list[int]:
        async with raw_client(sim) as http:
            body = {"model": MODEL, "max_tokens": 5, "messages": HELLO}
            return [(await http.post("/v1/messages", json=body)).status_code for _ in range(5)]

    assert asyncio.run(run()) == [529] * 5


# -- options and fault specs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("ok", "Ok()"),
        ("429", "Status(code=429, retry_after='default', message=None)"),
        ("429:2s", "Status(code=429, retry_after=2.0, message=None)"),
        (503, "Status(code=503, retry_after='default', message=None)"),
        ("slow:250ms", "Slow(seconds=0.25)"),
        ("drop:5", "Drop(after=5)"),
        ("stall", "Stall(after=3, seconds=30.0)"),
        ("stream_error:1", "StreamError(after=1, error_type='overloaded_error', status=529)"),
    ],
)
def test_fault_specs(spec: Any, fault: str) -> None:
    assert repr(parse_fault(spec)) == fault


@pytest.mark.parametrize("spec", ["nope", "42", "drop:x", "slow:-1", "", True, 1.5])
def test_bad_fault_specs_name_the_value(spec: Any) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_fault(spec)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"fail_rate": 1.5}, "fail_rate"),
        ({"latency": "fast"}, "latency"),
        ({"first_byte_latency": -1}, "first_byte_latency"),
        ({"chunk_delay": "1x"}, "chunk_delay"),
        ({"rpm": 0}, "rpm"),
        ({"fail_rate": 0.5, "faults": ()}, "faults"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Simulator(**options)


def test_configure_changes_options_while_serving_and_validates_them() -> None:
    clock = FakeClock()
    sim = Simulator(clock=clock)

    async def statuses(n: int) -> list[int]:
        async with raw_client(sim) as http:
            body = {"model": MODEL, "max_tokens": 5, "messages": HELLO}
            return [(await http.post("/v1/messages", json=body)).status_code for _ in range(n)]

    assert asyncio.run(statuses(2)) == [200, 200]
    sim.configure(rpm=3)
    assert asyncio.run(statuses(2)) == [200, 429]
    sim.configure(rpm=None, fail_rate=1.0, faults=["500"])
    assert asyncio.run(statuses(1)) == [500]
    with pytest.raises(ValueError, match="latency='later'"):
        sim.configure(latency="later")
    with pytest.raises(TypeError, match=r"unknown option.*latncy"):
        sim.configure(latncy=1)
    assert sim.latency == 0.0
    assert sim.fail_rate == 1.0


@given(
    words=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1), max_size=30),
    max_tokens=st.integers(1, 40),
)
def test_replies_respect_max_tokens_and_streams_spell_the_same_text(words: list[str], max_tokens: int) -> None:
    text = content.default_reply(" ".join(words), {})
    reply = content.make_reply(text, input_tokens=1, max_tokens=max_tokens)
    assert reply.output_tokens <= max_tokens
    assert reply.truncated == (len(text.split()) > max_tokens)
    assert reply == content.make_reply(text, input_tokens=1, max_tokens=max_tokens)
    message = content.anthropic_message(reply, message_id="m", model="x")
    deltas = []
    for raw in content.anthropic_events(reply, message_id="m", model="x"):
        data = json.loads(raw.decode().split("data: ", 1)[1])
        if data["type"] == "content_block_delta":
            deltas.append(data["delta"]["text"])
    assert "".join(deltas) == message["content"][0]["text"] == " ".join(text.split()[: reply.output_tokens])


# -- serving: fixture, CLI, import cost -------------------------------------------------------


def test_pytest_fixture_serves_a_fresh_simulator_with_real_latency(simulator: SimulatorServer) -> None:
    simulator.simulator.configure(latency="50ms")
    assert simulator.simulator.stats.total == 0
    with openai.OpenAI(api_key="test", base_url=simulator.openai_base_url, max_retries=0) as c:
        started = time.monotonic()
        c.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - started >= 0.05
    assert simulator.base_url.startswith("http://127.0.0.1:")


def test_sdk_retries_follow_a_fractional_retry_after(simulator: SimulatorServer) -> None:
    simulator.simulator.script("529", "529", "ok").configure(retry_after="10ms")
    with anthropic.Anthropic(api_key="test", base_url=simulator.base_url, max_retries=2) as c:
        raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert raw.retries_taken == 2
    assert simulator.simulator.stats.faults == {"529": 2, "ok": 1}
    assert simulator.simulator.stats.total == 3


def test_cli_rejects_bad_options_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from resilient.cli import main

    for argv, name in (
        (["--latency", "soon"], "--latency"),
        (["--fail-rate", "2"], "--fail-rate"),
        (["--port", "-3"], "--port"),
        (["--faults", "429,nope"], "--faults"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["simulate", *argv])
        assert exit_info.value.code == 2
        assert f"argument {name}" in capsys.readouterr().err


def test_cli_prints_the_base_urls_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "resilient", "simulate", "--port", "0", "--seed", "3", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        env = dict(line.split("=", 1) for line in lines[1:])
        base = env["ANTHROPIC_BASE_URL"]
        assert base.startswith("http://127.0.0.1:")
        assert env["OPENAI_BASE_URL"] == base + "/v1"
        with anthropic.Anthropic(api_key="test", base_url=base, max_retries=0) as c:
            message = c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        assert message.content[0].type == "text"
        assert message.content[0].text == HELLO_TEXT
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_importing_resilient_testing_does_not_load_starlette() -> None:
    code = "import sys, resilient.testing, resilient.testing.pytest_plugin; print('starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- docs/simulator.md -------------------------------------------------------------------------------


def test_the_simulator_page_examples_run(tmp_path: Path) -> None:
    """Each python block of docs/simulator.md runs: the scripts as scripts, the fixture test with pytest."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "simulator.md").read_text()
    server, fixture, in_process = re.findall(r"^```python\n(.*?)^```", page, re.M | re.S)
    (tmp_path / "server.py").write_text(server)
    (tmp_path / "in_process.py").write_text(in_process)
    (tmp_path / "test_fixture.py").write_text(fixture)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESILIENT_", "ANTHROPIC_", "OPENAI_"))}
    for argv in (["server.py"], ["in_process.py"], ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fixture.py"]):
        done = subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"


def _printed_as_documented(block: str) -> list[str]:
    """What a docs block says its prints show: ``print(x)  # shown`` or ``print(x)`` then a ``# shown`` line."""
    shown: list[str] = []
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("print("):
            comment = line.partition("  # ")[2] or lines[i + 1].removeprefix("# ")
            shown.append(comment)
    return shown


def test_the_concepts_page_examples_print_what_it_shows(tmp_path: Path) -> None:
    """docs/concepts.md: calls, their metadata and the request totals, run against the simulator."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, re.M | re.S) if re.search(r"^print\(", b, re.M)]
    assert len(blocks) == 2  # capture_calls, then request_context (which calls the first block's create)
    (tmp_path / "run.py").write_text(
        "import os, sys\n"
        "from resilient.testing.simulator import run_simulator\n"
        "with run_simulator() as server:\n"
        "    os.environ['ANTHROPIC_BASE_URL'] = server.base_url\n"
        "    namespace = {}\n"
        "    for block in sys.argv[1:]:\n"
        "        exec(open(block).read(), namespace)\n"
    )
    names = []
    for i, block in enumerate(blocks):
        (tmp_path / f"block{i}.py").write_text(block)
        names.append(f"block{i}.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESILIENT_", "ANTHROPIC_", "OPENAI_"))}
    env["ANTHROPIC_API_KEY"] = "test"
    done = subprocess.run(
        [sys.executable, "run.py", *names],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [line for block in blocks for line in _printed_as_documented(block)]
