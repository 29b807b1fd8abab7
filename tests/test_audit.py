"""The audit plugin: one masked JSON line per provider call, never lost or interleaved across threads and processes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

import resilient.masking
import resilient.masking._plugin as masking_plugin
import resilient_audit
import resilient_retry
from resilient import (
    Call,
    ConfigurationError,
    Handler,
    Order,
    Pipeline,
    Policy,
    Runtime,
    Target,
    Usage,
    hookimpl,
    request_context,
)
from resilient.testing import FakeClock, ProviderHTTPError
from resilient_audit import AppendWriter, AuditOptions, AuditPolicy

SECRET = "sk-ant-api03-" + "Q7x_" * 23 + "zAA"


class Decides(Policy):
    """Stands for the inner policies: records decisions, usage and a price as they would."""

    name = "decides"
    order = Order.CACHE

    def wrap(self, nxt: Handler, target: Target) -> Handler:
        def handler(call: Call) -> Any:
            call.metadata["cache"] = "miss"
            call.metadata["quota"] = {"admitted": True, "remaining": 41}
            call.metadata["cost_usd"] = 0.0042
            call.add_usage(Usage(120, 30))
            return nxt(call)

        return handler


class DecidesPlugin:
    name = "decides"

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return (Decides(),)


def pipeline(path: Path, *extra: object, clock: FakeClock | None = None, **audit: Any) -> Pipeline:
    return Pipeline(
        discover=False,
        plugins=[resilient_audit, masking_plugin, *extra],
        config={"audit": {"path": str(path), **audit}},
        env={},
        clock=clock or FakeClock(),
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- what a line holds


def test_off_by_default(tmp_path: Path) -> None:
    p = Pipeline(discover=False, plugins=[resilient_audit, masking_plugin], config={}, env={})
    assert p.policies == ()


def test_one_line_per_call_with_decisions_usage_and_cost(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    p = pipeline(path, DecidesPlugin())
    assert [x.name for x in p.policies] == ["audit", "decides"]

    @p.guard(provider="anthropic", model="claude-haiku-4-5")
    def ask(prompt: str) -> str:
        return "answer"

    with request_context(request_id="req-1", tenant="acme", route="/chat"):
        assert ask(f"my key is {SECRET}") == "answer"
    p.close()
    (line,) = lines(path)
    assert line["request_id"] == "req-1"
    assert line["tenant"] == "acme"
    assert line["route"] == "/chat"
    assert (line["provider"], line["operation"], line["model"]) == ("anthropic", "ask", "claude-haiku-4-5")
    assert (line["outcome"], line["ok"], line["attempts"]) == ("success", True, 1)
    assert line["tokens"] == {"input": 120, "output": 30, "cache_read": 0, "cache_write": 0}
    assert line["cost_usd"] == 0.0042
    assert line["decisions"] == {"cache": "miss", "quota": {"admitted": True, "remaining": 41}}
    assert "prompt" not in line
    assert "response" not in line
    assert SECRET not in path.read_text()


def test_prompts_and_responses_only_when_enabled_and_masked(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    p = pipeline(path, include_prompts=True, include_responses=True, max_text_chars=200)

    @p.guard(provider="openai")
    def create(*, model: str, messages: list[dict[str, str]]) -> str:
        return f"echo {messages[0]['content']}"

    create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"use {SECRET} and mail bob@example.com"}])
    create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 1000}])
    p.close()
    first, second = lines(path)
    assert first["model"] == "gpt-4o-mini"
    assert "[REDACTED:anthropic_api_key]" in first["prompt"]["messages"]
    assert "[REDACTED:email]" in first["response"]
    assert SECRET not in path.read_text()
    assert "bob@example.com" not in path.read_text()
    assert second["prompt"]["messages"].endswith("...[cut]")
    assert len(second["prompt"]["messages"]) < 300


def test_failures_record_the_classified_outcome_not_the_message(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    p = pipeline(path)

    @p.guard(provider="anthropic")
    def ask() -> str:
        raise ProviderHTTPError(529, message=f"overloaded; key {SECRET}")

    with pytest.raises(ProviderHTTPError):
        ask()
    p.close()
    (line,) = lines(path)
    assert (line["outcome"], line["ok"], line["status"], line["error_type"]) == (
        "overloaded",
        False,
        529,
        "ProviderHTTPError",
    )
    assert SECRET not in path.read_text()


def test_async_and_stream_calls_write_their_line_when_they_end(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    p = pipeline(path, DecidesPlugin())

    @p.guard(provider="p")
    async def answer() -> str:
        return "a"

    @p.guard(provider="p")
    def chunks() -> Generator[int, None, None]:
        yield from range(3)

    @p.guard(provider="p")
    async def achunks() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def run() -> None:
        assert await answer() == "a"
        assert [c async for c in achunks()] == [0, 1, 2]

    asyncio.run(run())
    stream = chunks()
    assert next(stream) == 0
    stream.close()  # abandoned by the consumer
    p.close()
    got = {(line["operation"], line["outcome"]) for line in lines(path)}
    assert got == {("answer", "success"), ("achunks", "success"), ("chunks", "abandoned")}


def test_a_line_that_cannot_be_built_is_counted_and_the_call_goes_on(tmp_path: Path) -> None:
    def broken(text: str) -> str:
        raise RuntimeError("mask failed")

    runtime = Pipeline(discover=False, config={}, env={}).runtime
    policy = AuditPolicy(AuditOptions(path=str(tmp_path / "a.jsonl")), runtime, broken)
    handler = policy.wrap(lambda call: "ok", Target("p", "op", "sync"))
    assert handler(Call(Target("p", "op", "sync"), (), {})) == "ok"
    policy.close()
    assert policy.dropped == 1
    assert policy.health() == {"ok": True, "path": str(tmp_path / "a.jsonl"), "written": 0, "queued": 0, "dropped": 1}
    assert (tmp_path / "a.jsonl").read_text() == ""


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    writer = AppendWriter(str(path), queue_size=2, start=False)
    assert [writer.submit(b'{"n":%d}\n' % i) for i in range(5)] == [True, True, False, False, False]
    assert writer.dropped == 3
    writer.start()
    writer.close()
    assert path.read_text() == '{"n":0}\n{"n":1}\n'
    assert writer.submit(b"late\n") is False  # closed
    assert writer.dropped == 4


def test_configuration_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"audit\.queue_size"):
        pipeline(tmp_path / "a.jsonl", queue_size=0)


def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    pipeline(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------- many writers


def _write_calls(path: str, calls: int, threads: int, tag: str) -> None:
    """Make ``calls`` guarded calls on each of ``threads`` threads; every third has a prompt longer than PIPE_BUF."""
    p = pipeline(Path(path), include_prompts=True, queue_size=100_000, max_text_chars=20_000)

    @p.guard(provider="p")
    def ask(*, prompt: str) -> str:
        return "ok"

    def run(t: int) -> None:
        for i in range(calls):
            ask(prompt=f"{tag}-{t}-{i} " + ("y" * 9000 if i % 3 == 0 else "short"))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    p.close()


def _check(path: Path, expected: int) -> None:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    found = [json.loads(line) for line in raw.decode().splitlines()]  # every line parses: none interleaved
    assert len(found) == expected
    tags = [line["prompt"]["prompt"].split(" ", 1)[0] for line in found]
    assert len(set(tags)) == expected  # none lost, none twice


def test_threads_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_calls(str(path), calls=150, threads=6, tag="t")
    _check(path, 150 * 6)


def test_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_calls, args=(str(path), 100, 3, f"p{n}")) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    _check(path, 4 * 3 * 100)


# ---------------------------------------------------------------------------- the leak test


def test_no_secret_reaches_logs_tracebacks_or_audit_lines(tmp_path: Path) -> None:
    """Known secrets in the prompt, the headers, the provider's error message and the app's own log calls,
    through a full request with retries: none appears in any log output, traceback or audit line."""
    audit_path = tmp_path / "audit.jsonl"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(headers)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    secrets = [
        SECRET,
        "AIzaSyD-leak-test-0123456789abcdefghijk",
        "hunter2-db-password",
        "alice.leak@example.com",
        "4111 1111 1111 1111",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsZWFrIn0.c2lnbmF0dXJlLWxlYWs",
    ]
    clock = FakeClock()
    p = Pipeline(
        discover=False,
        plugins=[resilient_audit, masking_plugin, resilient_retry, DecidesPlugin()],
        config={"audit": {"path": str(audit_path), "include_prompts": True, "include_responses": True}},
        env={},
        clock=clock,
    )
    masker, _ = resilient.masking.load_masker(config={}, env={})
    resilient.masking.install(masker, handlers=[handler])
    log = logging.getLogger("app.chat")
    attempts = iter([True, True, False])

    @p.guard(provider="anthropic", model="claude-haiku-4-5")
    def create(*, messages: list[dict[str, str]], extra_headers: dict[str, str]) -> str:
        log.debug("sending %r with headers", messages, extra={"headers": extra_headers})
        if next(attempts):
            raise ProviderHTTPError(
                503,
                message=f"upstream failed for key {SECRET} at https://x.googleapis.com/v1/m?key={secrets[1]}",
            )
        return f"reply to {secrets[3]}, card {secrets[4]}"

    try:
        with request_context(request_id="leak-1", tenant="acme"):
            create(
                messages=[{"role": "user", "content": f"my password=hunter2-db-password, token {secrets[5]}"}],
                extra_headers={"x-api-key": SECRET, "authorization": f"Bearer {secrets[5]}"},
            )
            try:
                raise ProviderHTTPError(401, message=f"bad credentials {SECRET} for {secrets[3]}")
            except ProviderHTTPError:
                log.exception("call failed for user %s", secrets[3], extra={"headers": {"x-api-key": SECRET}})
        log.warning("postgresql://app:%s@db/app unreachable", secrets[2], extra={"headers": None}, stack_info=True)
    finally:
        p.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
        resilient.masking.uninstall(handlers=[handler])
    output = stream.getvalue()
    audit = audit_path.read_text()
    assert "Traceback (most recent call last)" in output  # the traceback was written, masked
    assert len(audit.splitlines()) == 1
    assert json.loads(audit)["attempts"] == 3
    for secret in secrets:
        assert secret not in output, secret
        assert secret not in audit, secret
