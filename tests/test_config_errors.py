"""Configuration errors name the key (with its section), the value, its source and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from resilient import ConfigurationError, Pipeline, option
from resilient.config import Settings, StoreURI, mask_uri

MAIN_SCHEMES = "memory://, redis://, rediss://, redis+cluster://"


def build(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Pipeline:
    return Pipeline(env=env or {}, config=config or {})


def error(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        build(config, env)
    return info.value


# ---------------------------------------------------------------- store URIs


def test_misspelt_store_scheme_is_refused_when_the_configuration_is_loaded() -> None:
    # It used to pass the configuration and fail in the retry plugin's hook as a PluginError.
    err = error({"store": "redsi://localhost:6379/0"})
    assert err.key == "store"
    assert err.value == "redsi://localhost:6379/0"
    assert err.source == "config="
    message = str(err)
    assert message.startswith("store = 'redsi://localhost:6379/0' (from config=): unknown store scheme 'redsi://'")
    assert "did you mean 'redis://'?" in message
    assert f"schemes: {MAIN_SCHEMES}" in message
    assert "async+" not in message  # a store URI is given in its sync form
    # Settings alone (the CLI's `resilient config`) refuse it too, with no plugin involved.
    with pytest.raises(ConfigurationError, match=r"^store = 'redsi://"):
        Settings.load(config={"store": "redsi://localhost:6379/0"}, env={})


def test_store_without_a_scheme_says_what_a_store_uri_looks_like() -> None:
    message = str(error({"store": "localhost:6379"}))
    assert message.startswith("store = 'localhost:6379' (from config=): must be a store URI such as 'memory://'")
    assert f"schemes: {MAIN_SCHEMES}" in message


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redsi://:s3cret-pw@localhost:6379/0", "redsi://:****@localhost:6379/0"),
        ("redsi://user:s3cret-pw@localhost:6379/0", "redsi://user:****@localhost:6379/0"),
        ("redsi://s3cret-pw@localhost:6379/0", "redsi://****@localhost:6379/0"),
        ("redis//:s3cret-pw@localhost:6379/0", "****@localhost:6379/0"),
    ],
)
def test_store_error_never_shows_the_password(uri: str, shown: str) -> None:
    for err in (error({"store": uri}), error(env={"RESILIENT_STORE": uri})):
        assert "s3cret-pw" not in str(err)
        assert "s3cret-pw" not in repr(err.value)
        assert f"store = {shown!r}" in str(err)
    assert err.source == "env RESILIENT_STORE"


def test_valid_store_uris_pass_and_are_masked_in_the_settings_rows() -> None:
    settings = Settings.load(config={"store": "redis://:s3cret-pw@localhost:6379/0"}, env={})
    assert settings.core.store == "redis://:s3cret-pw@localhost:6379/0"
    row = next(r for r in settings.describe() if r.key == "store")
    assert row.value == '"redis://:****@localhost:6379/0"'
    for uri in ("memory://", "redis+cluster://h:7000", "rediss://h:6380/0", "valkey://h:6379"):
        assert Settings.load(config={"store": uri}, env={}).core.store == uri


@pytest.mark.parametrize("section", ["quota", "breaker", "cache", "bulkhead"])
def test_plugin_store_option_is_checked_and_may_stay_empty(section: str) -> None:
    assert build({section: {"storage": ""}}).settings.sections[section].base.storage == ""
    err = error({section: {"storage": "memroy://"}})
    assert err.key == f"{section}.storage"
    assert "did you mean 'memory://'?" in str(err)
    assert "s3cret" not in str(error({section: {"storage": "redsi://:s3cret@localhost:6379"}}))


def test_a_store_option_of_ones_own_is_checked() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Opts:
        storage: StoreURI = option("memory://", doc="a store with a default of its own")

    with pytest.raises(ConfigurationError, match=r"^mine\.storage = '' \(from config\): must be a store URI"):
        Settings.build({"mine": {"storage": ""}}, None, {}, {"mine": Opts})


def test_mask_uri() -> None:
    assert mask_uri("memory://") == "memory://"
    assert mask_uri("redis://host:6379/0") == "redis://host:6379/0"
    assert mask_uri("redis://:pw@host") == "redis://:****@host"
    assert mask_uri("redis://u:p@ss@host/0") == "redis://u:****@host/0"


# ---------------------------------------------------------------- limit strings


def test_bad_limit_string_names_the_key_path_the_value_and_the_forms() -> None:
    err = error({"quota": {"requests": "5/minit"}})
    assert err.key == "quota.requests"
    assert err.value == "5/minit"
    assert err.source == "config="
    message = str(err)
    assert message.startswith("quota.requests = '5/minit' (from config=): must be limits like '50/minute'")
    assert "separated by ';'" in message
    assert "second, minute, hour, day, month, year" in message


def test_bad_limit_string_from_the_environment_names_the_variable() -> None:
    err = error(env={"RESILIENT_QUOTA__TOTAL_TOKENS": "5/minit"})
    assert err.key == "quota.total_tokens"
    assert err.source == "env RESILIENT_QUOTA__TOTAL_TOKENS"
    assert str(err).startswith("quota.total_tokens = '5/minit' (from env RESILIENT_QUOTA__TOTAL_TOKENS): must be")


def test_bad_limit_string_in_an_override_names_its_path() -> None:
    err = error({"quota": {"models": {"claude": {"input_tokens": "lots"}}}})
    assert err.key == "quota.models.claude.input_tokens"
    assert "second, minute, hour, day, month, year" in str(err)


def test_cross_field_limit_error_names_the_field_and_its_source() -> None:
    err = error(env={"RESILIENT_QUOTA__REQUESTS": "20000/minute"})
    assert err.key == "quota.requests"
    assert err.value == "20000/minute"
    assert err.source == "env RESILIENT_QUOTA__REQUESTS"
    assert "a moving window of 20000 stores 20000 entries per key" in str(err)
    assert "max_moving_window" in str(err)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(("value", "shown"), [("-5m", "'-5m'"), (-300, "-300.0"), ("-1s", "'-1s'")])
def test_negative_duration_is_told_its_bound(value: object, shown: str) -> None:
    err = error({"cache": {"enabled": True, "ttl": value}})
    assert err.key == "cache.ttl"
    assert str(err) == f"cache.ttl = {shown} (from config=): must be >= 0.001 seconds"


def test_negative_duration_from_the_environment() -> None:
    err = error(env={"RESILIENT_RETRY__MAX_DELAY": "-5s"})
    assert str(err) == "retry.max_delay = '-5s' (from env RESILIENT_RETRY__MAX_DELAY): must be >= 0 seconds"
