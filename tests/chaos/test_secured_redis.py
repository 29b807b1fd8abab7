"""Redis with a password, an ACL user restricted to one key prefix, and TLS (rediss://).

Every policy works through them; none of their secrets appears in ``resilient
config``, an error, a log line, ``/ready`` or a metric; keys carry the
configured prefix (the ACL user may touch no other key), so two apps sharing
one Redis never collide, and every key has a TTL.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from resilient import Pipeline, QuotaExceeded
from resilient.testing import RedisServer, redis_server
from resilient.testing._redis import redis_required

ADMIN_PASSWORD = "adm1n-S3cret-chaos-0b5f"
APP_PASSWORD = "app-S3cret-chaos-77aa"
PREFIX = "chaosapp:"
SECRETS = (ADMIN_PASSWORD, APP_PASSWORD)


def _acl_user(name: str, password: str, pattern: str) -> list[str]:
    return [name, "on", f">{password}", f"~{pattern}", "&*", "+@all"]


def _certificates(directory: Path) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=chaos-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "ext",
        "-out",
        "server.crt",
    )
    return str(directory / "server.crt"), str(directory / "server.key"), str(directory / "ca.crt")


@pytest.fixture(params=["tcp", "tls"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A redis-server with a password and an ACL user allowed only ``chaosapp:*`` keys; the user's store URL."""
    tls = None
    if request.param == "tls":
        if shutil.which("openssl") is None:
            pytest.skip("no openssl command to make a certificate with")
        tls = _certificates(tmp_path)
    users = [_acl_user("app", APP_PASSWORD, f"{PREFIX}*")]
    try:
        with redis_server(password=ADMIN_PASSWORD, users=users, tls=tls) as server:
            scheme, rest = server.url.split("://", 1)
            yield server, f"{scheme}://app:{quote(APP_PASSWORD)}@{rest.split('@', 1)[1]}"
    except FileNotFoundError as exc:
        if redis_required():
            pytest.fail(f"RESILIENT_REQUIRE_REDIS is set but {exc}")
        pytest.skip(str(exc))
    except RuntimeError as exc:  # a redis-server built without TLS exits on --tls-port
        if tls is None:
            raise
        pytest.skip(f"redis-server cannot serve TLS here: {exc}")


def _pipeline(url: str, prefix: str, **quota: Any) -> Pipeline:
    config = {
        "store": url,
        "key_prefix": prefix,
        "quota": {"requests": "2/minute", **quota},
        "cache": {"enabled": True, "ttl": "10m", "cacheable": "always"},
        "breaker": {"minimum_calls": 2, "window_size": 4},
        "metrics": {"enabled": True},
    }
    return Pipeline(env={}, config=config)


def test_every_policy_works_through_an_acl_user_with_password_and_tls(
    secured: tuple[RedisServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Quota, cache, breaker, retry budget and metrics on the restricted user; keys prefixed, with a TTL."""
    server, url = secured
    caplog.set_level(logging.DEBUG)
    one, two = _pipeline(url, f"{PREFIX}one:"), _pipeline(url, f"{PREFIX}two:")
    try:
        answers: list[object] = []
        for pipeline in (one, two):
            calls = 0

            def provider(model: str, prompt: str) -> str:
                nonlocal calls
                calls += 1
                return f"reply to {prompt}"

            ask = pipeline.guard(provider="anthropic", operation="messages.create")(provider)
            answers += [ask(model="m", prompt="same"), ask(model="m", prompt="same"), ask(model="m", prompt="other")]
            with pytest.raises(QuotaExceeded) as refused:
                ask(model="m", prompt="third")
            assert calls == 2  # one cache hit; the quota is this app's own, untouched by the other's calls
            assert all(secret not in json.dumps(refused.value.to_problem()) for secret in SECRETS)
            health = json.dumps(pipeline.health())
            assert '"ok": true' in health
            assert all(secret not in health for secret in SECRETS)
        assert answers == ["reply to same", "reply to same", "reply to other"] * 2
        admin = redis.Redis.from_url(server.url)
        keys = [k.decode() for k in admin.scan_iter(count=1000)]
        ttls = {k: admin.ttl(k) for k in keys}
        admin.close()
    finally:
        one.close()
        two.close()
    assert keys
    assert all(k.startswith((f"{PREFIX}one:", f"{PREFIX}two:")) for k in keys), keys
    assert {k.split(":")[1] for k in keys} == {"one", "two"}
    assert [k for k, ttl in ttls.items() if ttl == -1] == []
    assert all(secret not in record.getMessage() for record in caplog.records for secret in SECRETS)


def test_a_wrong_password_fails_open_without_naming_it(
    secured: tuple[RedisServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected login is a store error like any other: calls go through, the secret is in no log, error or /ready."""
    _, url = secured
    caplog.set_level(logging.DEBUG)
    wrong = url.replace(quote(APP_PASSWORD), "wrong-S3cret-chaos-1234")
    pipeline = _pipeline(wrong, PREFIX)
    try:
        ask = pipeline.guard(provider="anthropic", operation="messages.create")(lambda model, prompt: "ok")
        assert [ask(model="m", prompt=f"q{i}") for i in range(2)] == ["ok"] * 2  # the quota counts locally
        health = json.dumps(pipeline.health())
    finally:
        pipeline.close()
    texts = [health, *(r.getMessage() for r in caplog.records), *(str(r.exc_info) for r in caplog.records)]
    for secret in (*SECRETS, "wrong-S3cret-chaos-1234"):
        assert not any(secret in text for text in texts), secret


def test_resilient_config_shows_no_store_secret(secured: tuple[RedisServer, str], tmp_path: Path) -> None:
    """``resilient config`` (text and JSON) names the store without its password."""
    _, url = secured
    env = {"PATH": "/usr/bin:/bin", "RESILIENT_STORE": url, "RESILIENT_KEY_PREFIX": PREFIX}
    for args in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "resilient", "config", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "127.0.0.1" in out.stdout
        assert APP_PASSWORD not in out.stdout + out.stderr
        assert quote(APP_PASSWORD) not in out.stdout + out.stderr
