"""quota.input_estimate = "count_tokens": the real anthropic SDK, wrapped, counts a request's input at the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from resilient import Pipeline, QuotaExceeded
from resilient.testing.simulator import Simulator, SimulatorServer, Status, run_simulator

MODEL = "claude-test-1"
# 300 one-letter words: 600 characters, so the heuristic (4 characters a token) says ~150 tokens,
# where the simulator, counting words, says over 300.
LONG = [{"role": "user", "content": "a " * 300}]
COUNT_PATH = "/v1/messages/count_tokens"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with run_simulator(Simulator(retry_after=0)) as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer) -> Simulator:
    server.simulator.reset()
    server.simulator.configure(rpm=None, fail_rate=0.0)
    return server.simulator


def pipeline(**quota: Any) -> Pipeline:
    config = {"retry": {"enabled": False}, "cache": {"enabled": False}, "quota": quota}
    return Pipeline(env={}, config=config, random=lambda: 0.0)


def paths(sim: Simulator) -> list[str]:
    return [r.path for r in sim.requests]


def test_the_provider_count_decides_admission(server: SimulatorServer, sim: Simulator) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url)
    counted = pipeline(input_tokens="250/minute", token_strategy="fixed-window", input_estimate="count_tokens")
    with pytest.raises(QuotaExceeded, match=r"the call alone needs 3\d\d"):
        counted.wrap(client).messages.create(model=MODEL, max_tokens=5, messages=LONG)
    assert paths(sim) == [COUNT_PATH]  # counted, refused, never sent
    sim.reset()
    estimated = pipeline(input_tokens="250/minute", token_strategy="fixed-window")
    estimated.wrap(client).messages.create(model=MODEL, max_tokens=5, messages=LONG)
    assert paths(sim) == ["/v1/messages"]  # the heuristic's ~150 fit: sent, and no count call


def test_an_admitted_call_is_counted_then_sent_and_reconciled(server: SimulatorServer, sim: Simulator) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url)
    counted = pipeline(input_tokens="10000/minute", token_strategy="fixed-window", input_estimate="count_tokens")
    wrapped = counted.wrap(client)
    count = client.messages.count_tokens(model=MODEL, messages=LONG).input_tokens
    sim.reset()
    message = wrapped.messages.create(model=MODEL, max_tokens=5, messages=LONG)
    assert paths(sim) == [COUNT_PATH, "/v1/messages"]
    assert message.usage.input_tokens == count
    (status,) = [p.status("anthropic", MODEL)["limits"] for p in counted.policies if p.name == "quota"]
    assert status[0]["remaining"] == 10000 - count  # the reservation was the count, and the count was right


def test_a_failing_count_falls_back_to_the_estimate(server: SimulatorServer, sim: Simulator) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url, max_retries=0)
    sim.script(Status(500))  # the count request fails
    counted = pipeline(input_tokens="10000/minute", input_estimate="count_tokens")
    counted.wrap(client).messages.create(model=MODEL, max_tokens=5, messages=LONG)
    assert paths(sim) == [COUNT_PATH, "/v1/messages"]


def test_async_clients_count_with_the_async_sdk(server: SimulatorServer, sim: Simulator) -> None:
    counted = pipeline(input_tokens="250/minute", token_strategy="fixed-window", input_estimate="count_tokens")

    async def main() -> None:
        async with anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=server.base_url) as raw:
            client = counted.wrap(raw)
            with pytest.raises(QuotaExceeded, match=r"the call alone needs 3\d\d"):
                await client.messages.create(model=MODEL, max_tokens=5, messages=LONG)
            await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])

    asyncio.run(main())
    assert paths(sim) == [COUNT_PATH, COUNT_PATH, "/v1/messages"]
