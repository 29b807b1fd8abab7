"""Configuration: sources and precedence, overrides, validation, secrets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import ConfigurationError, Pipeline, Settings, option
from resilient.config import parse_duration
from resilient_retry import RetryOptions

SECTIONS: dict[str, type[Any]] = {"retry": RetryOptions}
PASSWORD = "hunter2"
STORE_URI = f"redis://:{PASSWORD}@localhost:6379/0"
MASKED_URI = "redis://:****@localhost:6379/0"


def load(tmp_path: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    return Settings.load(SECTIONS, config=config, env={} if env is None else env, cwd=tmp_path)


def row(s: Settings, key: str) -> tuple[str, str]:
    """(shown value, source) of one ``describe()`` row."""
    found = [(r.value, r.source) for r in s.describe() if r.key == key]
    assert len(found) == 1, (key, s.describe())
    return found[0]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # ASCII-only here, so a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def toml_text(core: dict[str, Any], sections: dict[str, dict[str, Any]], table: str = "") -> str:
    """TOML for core keys and plugin sections, under ``table`` (e.g. ``tool.resilient``) if given."""
    lines = [f"[{table}]"] if table else []
    lines += [f"{k} = {toml_value(v)}" for k, v in core.items()]
    for name, values in sections.items():
        lines.append(f"[{table + '.' if table else ''}{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- precedence: defaults < file < env


# key -> (section, field, default, env var)
KEYS: dict[str, tuple[str, str, Any, str]] = {
    "key_prefix": ("", "key_prefix", "resilient:", "RESILIENT_KEY_PREFIX"),
    "retry.max_attempts": ("retry", "max_attempts", 3, "RESILIENT_RETRY__MAX_ATTEMPTS"),
    "retry.base_delay": ("retry", "base_delay", 0.5, "RESILIENT_RETRY__BASE_DELAY"),
}

# Each strategy gives (file value, env text, expected effective value).
_prefixes = st.from_regex(r"\A[a-z][a-z0-9_-]{0,10}:\Z")  # never parses as a TOML value
_floats = st.floats(min_value=0, max_value=30, allow_nan=False, allow_infinity=False)
_millis = st.integers(min_value=0, max_value=30_000)
VALUE_STRATEGIES: dict[str, st.SearchStrategy[tuple[Any, str, Any]]] = {
    "key_prefix": _prefixes.map(lambda s: (s, s, s)),
    "retry.max_attempts": st.integers(min_value=1, max_value=100).map(lambda n: (n, str(n), n)),
    "retry.base_delay": st.one_of(
        _floats.map(lambda f: (f, repr(f), f)),
        _millis.map(lambda n: (f"{n}ms", f"{n}ms", n / 1000)),
    ),
}


@st.composite
def layers(draw: st.DrawFn) -> dict[str, tuple[Any | None, str | None, Any]]:
    """For each key: a file value or None, an env value or None, and the expected effective value."""
    out: dict[str, tuple[Any | None, str | None, Any]] = {}
    for key, (_, _, default, _) in KEYS.items():
        in_file = draw(st.booleans())
        in_env = draw(st.booleans())
        file_value, _, file_expected = draw(VALUE_STRATEGIES[key])
        _, env_text, env_expected = draw(VALUE_STRATEGIES[key])
        expected = env_expected if in_env else file_expected if in_file else default
        out[key] = (file_value if in_file else None, env_text if in_env else None, expected)
    return out


def split(case: dict[str, tuple[Any | None, str | None, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    core: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, (file_value, env_text, _) in case.items():
        section, name, _, var = KEYS[key]
        if file_value is not None:
            (retry if section else core)[name] = file_value
        if env_text is not None:
            env[var] = env_text
    return core, retry, env


def effective(s: Settings, key: str) -> Any:
    section, name, _, _ = KEYS[key]
    return getattr(s.options(RetryOptions) if section else s.core, name)


def check_precedence(s: Settings, case: dict[str, tuple[Any | None, str | None, Any]], file_label: str) -> None:
    for key, (file_value, env_text, expected) in case.items():
        value = effective(s, key)
        if isinstance(expected, float):
            assert value == pytest.approx(expected), key
        else:
            assert value == expected, key
        shown, source = row(s, key)
        if env_text is not None:
            assert source == f"env {KEYS[key][3]}"
        elif file_value is not None:
            assert source == file_label
        else:
            assert source == "default"
        assert shown == toml_value(value)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layers())
def test_precedence_with_config_mapping(tmp_path: Path, case: dict[str, tuple[Any | None, str | None, Any]]) -> None:
    core, retry, env = split(case)
    config: dict[str, Any] = dict(core)
    if retry:
        config["retry"] = retry
    check_precedence(load(tmp_path, config=config, env=env), case, "config=")


FILE_KINDS = ["resilient.toml", "pyproject.toml", "RESILIENT_CONFIG"]


@pytest.mark.parametrize("kind", FILE_KINDS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40, deadline=None)
@given(case=layers())
def test_precedence_with_real_files(
    tmp_path: Path, kind: str, case: dict[str, tuple[Any | None, str | None, Any]]
) -> None:
    core, retry, env = split(case)
    sections = {"retry": retry} if retry else {}
    for name in ("resilient.toml", "pyproject.toml", "conf/custom.toml"):
        (tmp_path / name).unlink(missing_ok=True)
    # A decoy that must lose against the chosen file wherever the chosen file is read.
    decoy = toml_text({"key_prefix": "decoy:"}, {"retry": {"max_attempts": 99, "base_delay": 29.0}})
    if kind == "resilient.toml":
        (tmp_path / "resilient.toml").write_text(toml_text(core, sections))
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"\n' + toml_text({"key_prefix": "decoy:"}, {}, table="tool.resilient")
        )
        label = str(tmp_path / "resilient.toml")
    elif kind == "pyproject.toml":
        (tmp_path / "pyproject.toml").write_text(
            '[project]\nname = "x"\n\n' + toml_text(core, sections, table="tool.resilient")
        )
        label = f"{tmp_path / 'pyproject.toml'} [tool.resilient]"
    else:
        (tmp_path / "conf").mkdir(exist_ok=True)
        (tmp_path / "conf" / "custom.toml").write_text(toml_text(core, sections))
        (tmp_path / "resilient.toml").write_text(decoy)
        env = {**env, "RESILIENT_CONFIG": "conf/custom.toml"}  # relative to cwd
        label = str(tmp_path / "conf" / "custom.toml")
    check_precedence(load(tmp_path, env=env), case, label)


def test_resilient_toml_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.resilient]\nkey_prefix = "py:"\n[tool.resilient.retry]\nmax_attempts = 9\n'
    )
    (tmp_path / "resilient.toml").write_text('key_prefix = "own:"\n')
    s = load(tmp_path)
    assert s.core.key_prefix == "own:"
    assert s.options(RetryOptions).max_attempts == 3  # nothing is merged from pyproject.toml
    assert s.file == str(tmp_path / "resilient.toml")
    assert row(s, "retry.max_attempts") == ("3", "default")


def test_pyproject_is_read_at_tool_resilient_only(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.other]\nkey_prefix = "no:"\n[tool.resilient.retry]\nmax_attempts = 4\n'
    )
    s = load(tmp_path)
    assert s.options(RetryOptions).max_attempts == 4
    assert s.core.key_prefix == "resilient:"
    assert s.file == f"{tmp_path / 'pyproject.toml'} [tool.resilient]"


def test_pyproject_without_tool_resilient_is_no_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    s = load(tmp_path)
    assert s.file is None
    assert all(r.source == "default" for r in s.describe())


def test_no_file_means_defaults(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.file is None
    assert s.core.key_prefix == "resilient:"
    assert s.options(RetryOptions) == RetryOptions()
    assert {r.source for r in s.describe()} == {"default"}


def test_resilient_config_wins_over_resilient_toml(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text('key_prefix = "own:"\n')
    other = tmp_path / "elsewhere.toml"
    other.write_text("[retry]\nmax_attempts = 6\n")
    s = load(tmp_path, env={"RESILIENT_CONFIG": str(other)})
    assert s.options(RetryOptions).max_attempts == 6
    assert s.core.key_prefix == "resilient:"
    assert s.file == str(other)


def test_resilient_config_naming_a_pyproject_reads_tool_resilient(tmp_path: Path) -> None:
    sub = tmp_path / "app"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.resilient.retry]\nmax_attempts = 8\n')
    s = load(tmp_path, env={"RESILIENT_CONFIG": "app/pyproject.toml"})
    assert s.options(RetryOptions).max_attempts == 8


def test_resilient_config_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, env={"RESILIENT_CONFIG": "nope.toml"})
    assert info.value.key == "RESILIENT_CONFIG"
    assert "nope.toml" in str(info.value)
    assert "existing TOML file" in str(info.value)


def test_invalid_toml_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry\nmax_attempts = \n")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    assert str(tmp_path / "resilient.toml") in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_config_mapping_takes_the_files_place(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text('key_prefix = "file:"\n[retry]\nmax_attempts = 9\n')
    s = load(tmp_path, config={"retry": {"base_delay": 1}})
    assert s.core.key_prefix == "resilient:"
    assert s.options(RetryOptions).max_attempts == 3
    assert s.options(RetryOptions).base_delay == 1.0
    assert row(s, "retry.base_delay") == ("1.0", "config=")


def test_env_wins_over_file_for_the_same_key(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attempts = 9\n")
    s = load(tmp_path, env={"RESILIENT_RETRY__MAX_ATTEMPTS": "2"})
    assert s.options(RetryOptions).max_attempts == 2
    assert row(s, "retry.max_attempts") == ("2", "env RESILIENT_RETRY__MAX_ATTEMPTS")


# ---------------------------------------------------------------- overrides


OVERRIDES_TOML = """
[retry]
max_attempts = 2

[retry.providers.anthropic]
max_attempts = 3
base_delay = "1s"

[retry.models."m1"]
max_attempts = 4

[retry.models."gpt-4.1"]
max_attempts = 7

[retry.tenants.acme]
max_attempts = 5
"""


@pytest.mark.parametrize(
    ("provider", "model", "tenant", "expected"),
    [
        (None, None, None, 2),
        ("openai", None, None, 2),
        ("anthropic", None, None, 3),
        (None, "m1", None, 4),
        ("anthropic", "m1", None, 4),
        (None, None, "acme", 5),
        ("anthropic", "m1", "acme", 5),
        ("anthropic", None, "acme", 5),
        ("anthropic", "m2", "other", 3),
        ("openai", "gpt-4.1", None, 7),
    ],
)
def test_override_precedence_from_file(
    tmp_path: Path, provider: str | None, model: str | None, tenant: str | None, expected: int
) -> None:
    (tmp_path / "resilient.toml").write_text(OVERRIDES_TOML)
    section = load(tmp_path).section(RetryOptions)
    assert section.varies
    assert section.base.max_attempts == 2
    options = section.for_call(provider, model, tenant)
    assert options.max_attempts == expected
    # Keys an override does not set come from the less specific layers.
    assert options.base_delay == (1.0 if provider == "anthropic" else 0.5)
    assert section.for_call(provider, model, tenant) is options  # cached


def test_overrides_are_listed_by_describe_with_their_source(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text(OVERRIDES_TOML)
    s = load(tmp_path)
    label = str(tmp_path / "resilient.toml")
    assert row(s, "retry.providers.anthropic.max_attempts") == ("3", label)
    assert row(s, "retry.providers.anthropic.base_delay") == ("1.0", label)
    assert row(s, "retry.models.m1.max_attempts") == ("4", label)
    assert row(s, "retry.tenants.acme.max_attempts") == ("5", label)


KINDS = ("providers", "models", "tenants")


@given(
    present=st.fixed_dictionaries({k: st.booleans() for k in KINDS}),
    call=st.tuples(*(st.sampled_from([None, "match", "other"]) for _ in KINDS)),
)
def test_most_specific_override_wins(present: dict[str, bool], call: tuple[str | None, ...]) -> None:
    values = {"providers": 11, "models": 12, "tenants": 13}
    retry: dict[str, Any] = {"max_attempts": 10}
    for kind in KINDS:
        if present[kind]:
            retry[kind] = {"match": {"max_attempts": values[kind]}}
    section = Settings.load(SECTIONS, config={"retry": retry}, env={}).section(RetryOptions)
    assert section.varies == any(present.values())
    expected = 10
    for kind, name in zip(KINDS, call, strict=True):  # providers < models < tenants
        if present[kind] and name == "match":
            expected = values[kind]
    provider, model, tenant = call
    assert section.for_call(provider, model, tenant).max_attempts == expected


def test_without_overrides_the_section_does_not_vary(tmp_path: Path) -> None:
    section = load(tmp_path, config={"retry": {"max_attempts": 4}}).section(RetryOptions)
    assert section.varies is False
    assert section.for_call("anthropic", "m1", "acme") is section.base
    assert section.base.max_attempts == 4


def test_empty_override_tables_do_not_vary(tmp_path: Path) -> None:
    section = load(tmp_path, config={"retry": {"providers": {}, "models": {}, "tenants": {}}}).section(RetryOptions)
    assert section.varies is False


def test_override_from_env(tmp_path: Path) -> None:
    env = {"RESILIENT_RETRY__PROVIDERS__ANTHROPIC__MAX_ATTEMPTS": "5"}
    s = load(tmp_path, env=env)
    section = s.section(RetryOptions)
    assert section.varies
    assert section.for_call("anthropic").max_attempts == 5
    assert section.for_call("openai").max_attempts == 3
    assert section.base.max_attempts == 3
    assert row(s, "retry.providers.anthropic.max_attempts") == (
        "5",
        "env RESILIENT_RETRY__PROVIDERS__ANTHROPIC__MAX_ATTEMPTS",
    )


def test_env_override_wins_over_file_override(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry.tenants.acme]\nmax_attempts = 4\nbase_delay = 2\n")
    section = load(tmp_path, env={"RESILIENT_RETRY__TENANTS__ACME__MAX_ATTEMPTS": "9"}).section(RetryOptions)
    options = section.for_call(tenant="acme")
    assert options.max_attempts == 9
    assert options.base_delay == 2.0


def test_bad_override_value_is_an_error_naming_the_override(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry.providers.anthropic]\nmax_attempts = 0\n")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    message = str(info.value)
    assert info.value.key == "retry.providers.anthropic.max_attempts"
    assert "= 0" in message
    assert str(tmp_path / "resilient.toml") in message
    assert ">= 1" in message


def test_unknown_key_in_override_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config={"retry": {"models": {"m1": {"max_attemps": 2}}}})
    assert info.value.key == "retry.models.m1.max_attemps"
    assert "did you mean 'max_attempts'" in str(info.value)


def test_misspelt_override_kind_suggests(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry.provider.anthropic]\nmax_attempts = 2\n")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    assert info.value.key == "retry.provider"
    assert "'providers'" in str(info.value)
    assert "did you mean" in str(info.value)


def test_override_is_checked_against_cross_field_rules_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config={"retry": {"providers": {"anthropic": {"base_delay": 40}}}})
    message = str(info.value)
    assert "retry.providers.anthropic" in message
    assert "max_delay" in message
    assert "base_delay" in message


def test_combined_overrides_never_fail_at_call_time(tmp_path: Path) -> None:
    config = {"retry": {"providers": {"anthropic": {"base_delay": 20}}, "models": {"m1": {"max_delay": 10}}}}
    # Each override is valid alone; together they break max_delay >= base_delay.
    with pytest.raises(ConfigurationError, match=r"retry\.providers\.anthropic \+ retry\.models\.m1") as info:
        load(tmp_path, config=config)
    assert "max_delay" in str(info.value)
    # Alone, each is fine.
    load(tmp_path, config={"retry": {"providers": {"anthropic": {"base_delay": 20, "max_delay": 30}}}})
    load(tmp_path, config={"retry": {"models": {"m1": {"max_delay": 10}}}})


# ---------------------------------------------------------------- errors


def test_wrong_type_names_key_value_source_and_type(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text('[retry]\nmax_attempts = "x"\n')
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    err = info.value
    assert err.key == "retry.max_attempts"
    assert err.value == "x"
    assert err.source == str(tmp_path / "resilient.toml")
    assert str(err) == f"retry.max_attempts = 'x' (from {tmp_path / 'resilient.toml'}): must be an integer"


def test_out_of_bounds_names_key_value_source_and_bound(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, env={"RESILIENT_RETRY__MAX_ATTEMPTS": "0"})
    assert str(info.value) == "retry.max_attempts = 0 (from env RESILIENT_RETRY__MAX_ATTEMPTS): must be >= 1"


def test_above_upper_bound(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config={"retry": {"max_attempts": 101}})
    assert str(info.value) == "retry.max_attempts = 101 (from config=): must be <= 100"


def test_bound_is_inclusive(tmp_path: Path) -> None:
    s = load(tmp_path, config={"retry": {"max_attempts": 100, "base_delay": 0}})
    assert s.options(RetryOptions).max_attempts == 100
    assert s.options(RetryOptions).base_delay == 0.0


def test_bad_literal_lists_the_choices(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text('on_plugin_error = "explode"\n')
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    message = str(info.value)
    assert info.value.key == "on_plugin_error"
    assert "'explode'" in message
    assert str(tmp_path / "resilient.toml") in message
    assert "one of 'raise', 'warn'" in message


def test_cross_field_check_names_fields_values_and_source(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nbase_delay = 5\nmax_delay = 1\n")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    message = str(info.value)
    assert message.startswith("retry ")
    assert "max_delay (1) must be >= base_delay (5)" in message
    assert str(tmp_path / "resilient.toml") in message


def test_cross_field_check_sees_env_and_file_together(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nbase_delay = 5\n")
    with pytest.raises(ConfigurationError, match=r"max_delay \(2\) must be >= base_delay \(5\)"):
        load(tmp_path, env={"RESILIENT_RETRY__MAX_DELAY": "2s"})


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attemps = 5\n")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    message = str(info.value)
    assert info.value.key == "retry.max_attemps"
    assert "unknown key" in message
    assert "did you mean 'max_attempts'?" in message
    assert str(tmp_path / "resilient.toml") in message


def test_unknown_core_key_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config={"key_prefx": "x:"})
    assert "did you mean 'key_prefix'" in str(info.value)


def test_unknown_section_suggests(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retyr]\nmax_attempts = 5\n")
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    assert info.value.key == "retyr"
    assert "unknown key or section" in str(info.value)
    assert "'retry'" in str(info.value)
    assert "did you mean" in str(info.value)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config={"retry": 3})
    assert info.value.key == "retry"
    assert "must be a table" in str(info.value)


def test_unknown_env_var_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, env={"RESILIENT_RETYR__MAX_ATTEMPTS": "5"})
    message = str(info.value)
    assert info.value.key == "RESILIENT_RETYR__MAX_ATTEMPTS"
    assert "unknown environment variable" in message
    assert "did you mean 'RESILIENT_RETRY__<KEY>'" in message


def test_unknown_key_in_known_env_section_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, env={"RESILIENT_RETRY__MAX_ATTEMPS": "5"})
    assert info.value.key == "retry.max_attemps"
    assert info.value.source == "env RESILIENT_RETRY__MAX_ATTEMPS"
    assert "did you mean 'max_attempts'" in str(info.value)


def test_unknown_core_env_var_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'RESILIENT_KEY_PREFIX'"):
        load(tmp_path, env={"RESILIENT_KEY_PREFX": "x:"})


def test_reserved_env_vars_are_not_errors(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[retry]\nmax_attempts = 4\n")
    s = load(tmp_path, env={"RESILIENT_REQUIRE_REDIS": "1", "RESILIENT_CONFIG": "c.toml"})
    assert s.options(RetryOptions).max_attempts == 4
    assert not any("REQUIRE_REDIS" in r.source or "CONFIG" in r.source for r in s.describe())


def test_env_vars_without_the_prefix_are_ignored(tmp_path: Path) -> None:
    s = load(tmp_path, env={"RETRY__MAX_ATTEMPTS": "0", "HOME": "/nowhere", "resilient_retry__max_attempts": "0"})
    assert s.options(RetryOptions).max_attempts == 3


# ---------------------------------------------------------------- values: durations, env parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5), ("3", 3.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "s", "", "1.s", True, None, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(("value", "seconds"), [("250ms", 0.25), ("2s", 2.0), ("5m", 300.0), (2, 2.0), (0.75, 0.75)])
def test_duration_options_in_file(tmp_path: Path, value: object, seconds: float) -> None:
    (tmp_path / "resilient.toml").write_text(
        toml_text({}, {"retry": {"base_delay": value, "max_delay": "1h", "deadline": value}})
    )
    options = load(tmp_path).options(RetryOptions)
    assert options.base_delay == pytest.approx(seconds)
    assert options.deadline == pytest.approx(seconds)
    assert options.max_delay == 3600.0


def test_bad_duration_names_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config={"retry": {"base_delay": "soon"}})
    assert str(info.value).startswith("retry.base_delay = 'soon' (from config=): must be a finite duration")
    assert "'250ms'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
    ],
)
def test_env_bool(tmp_path: Path, text: str, expected: bool) -> None:
    s = load(tmp_path, env={"RESILIENT_RETRY__ENABLED": text})
    assert s.options(RetryOptions).enabled is expected


@pytest.mark.parametrize("text", ["maybe", "2", "[true]"])
def test_env_bad_bool(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"retry\.enabled = .*must be true or false"):
        load(tmp_path, env={"RESILIENT_RETRY__ENABLED": text})


def test_env_int_and_float(tmp_path: Path) -> None:
    env = {
        "RESILIENT_RETRY__MAX_ATTEMPTS": "7",
        "RESILIENT_RETRY__BASE_DELAY": "0.25",
        "RESILIENT_RETRY__MAX_DELAY": "250ms",
        "RESILIENT_RETRY__MAX_RETRY_AFTER": "2",
    }
    options = load(tmp_path, env=env).options(RetryOptions)
    assert options.max_attempts == 7
    assert isinstance(options.max_attempts, int)
    assert options.base_delay == 0.25
    assert options.max_delay == 0.25
    assert options.max_retry_after == 2.0


@pytest.mark.parametrize("text", ["lots", "7.5", "true"])
def test_env_bad_int(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"retry\.max_attempts = .*must be an integer"):
        load(tmp_path, env={"RESILIENT_RETRY__MAX_ATTEMPTS": text})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a,b", ("a", "b")), (" a , b ,", ("a", "b")), ("retry", ("retry",)), ('["a", "b"]', ("a", "b")), ("", ())],
)
def test_env_list(tmp_path: Path, text: str, expected: tuple[str, ...]) -> None:
    s = load(tmp_path, env={"RESILIENT_DISABLE": text})
    assert s.core.disable == expected
    assert row(s, "disable") == (toml_value(expected), "env RESILIENT_DISABLE")


def test_file_list_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"disable = 'a,b' .*must be a list, each item a string"):
        load(tmp_path, config={"disable": "a,b"})


@pytest.mark.parametrize(("text", "expected"), [("none", None), ("null", None), ("10s", 10.0), ("3", 3.0)])
def test_env_optional(tmp_path: Path, text: str, expected: float | None) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\ndeadline = 60\n")
    assert load(tmp_path, env={"RESILIENT_RETRY__DEADLINE": text}).options(RetryOptions).deadline == expected


def test_env_literal(tmp_path: Path) -> None:
    assert load(tmp_path, env={"RESILIENT_ON_PLUGIN_ERROR": "warn"}).core.on_plugin_error == "warn"


def test_env_string_keeps_the_raw_text(tmp_path: Path) -> None:
    s = load(tmp_path, env={"RESILIENT_KEY_PREFIX": "app:v1:", "RESILIENT_STORE": "redis://localhost:6379/2"})
    assert s.core.key_prefix == "app:v1:"
    assert s.core.store == "redis://localhost:6379/2"


@pytest.mark.parametrize("text", ["1e3", "1_000", "0x10", "1.50", "true", "[1]", "'quoted'"])
def test_env_string_that_looks_like_a_number_is_kept_verbatim(tmp_path: Path, text: str) -> None:
    """A string option takes the variable's text as is, even when it would parse as another TOML value."""
    assert load(tmp_path, env={"RESILIENT_KEY_PREFIX": text}).core.key_prefix == text


def test_file_types_are_not_coerced_leniently(tmp_path: Path) -> None:
    """In a file, strings are not numbers and numbers are not bools (only the environment is lenient)."""
    with pytest.raises(ConfigurationError, match="must be true or false"):
        load(tmp_path, config={"retry": {"enabled": "yes"}})
    with pytest.raises(ConfigurationError, match="must be an integer"):
        load(tmp_path, config={"retry": {"max_attempts": True}})
    with pytest.raises(ConfigurationError, match="must be a string"):
        load(tmp_path, config={"key_prefix": 5})


# ---------------------------------------------------------------- secrets


def all_text(s: Settings) -> str:
    return "\n".join(f"{r.key} {r.value} {r.source} {r.doc}" for r in s.describe())


def test_store_password_is_masked_in_describe_from_file(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text(f'store = "{STORE_URI}"\n')
    s = load(tmp_path)
    assert s.core.store == STORE_URI  # the real value is kept for use
    assert row(s, "store") == (toml_value(MASKED_URI), str(tmp_path / "resilient.toml"))
    assert PASSWORD not in all_text(s)


def test_store_password_is_masked_in_describe_from_env(tmp_path: Path) -> None:
    s = load(tmp_path, env={"RESILIENT_STORE": f"rediss://user:{PASSWORD}@cache:6380/1"})
    assert row(s, "store") == (toml_value("rediss://user:****@cache:6380/1"), "env RESILIENT_STORE")
    assert PASSWORD not in all_text(s)


def test_store_without_password_is_shown_as_is(tmp_path: Path) -> None:
    s = load(tmp_path, env={"RESILIENT_STORE": "redis://localhost:6379/0"})
    assert row(s, "store")[0] == toml_value("redis://localhost:6379/0")


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({"store": STORE_URI, "retry": {"max_attempts": 0}}, {}),
        ({"store": STORE_URI}, {"RESILIENT_RETRY__MAX_ATTEMPTS": "x"}),
        ({}, {"RESILIENT_STORE": STORE_URI, "RESILIENT_RETRY__BASE_DELAY": "40", "RESILIENT_RETRY__MAX_DELAY": "1"}),
        ({}, {"RESILIENT_STROE": STORE_URI}),
    ],
    ids=["bounds", "type-env", "cross-field", "unknown-env-var"],
)
def test_store_password_never_in_configuration_errors(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, config=config, env=env)
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value.value)


def test_store_password_not_in_pipeline_order_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Pipeline(discover=False, config={"store": STORE_URI, "order": ["nope"]}, env={}, cwd=str(tmp_path))
    assert info.value.key == "order"
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [f'stor = "{STORE_URI}"\n', f'store = ["{STORE_URI}"]\n', f'[retry.providers.x]\nstore = "{STORE_URI}"\n'],
    ids=["misspelt-key", "wrong-type", "key-in-wrong-section"],
)
def test_store_password_not_in_other_configuration_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "resilient.toml").write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path)
    assert "store" in str(info.value)
    assert PASSWORD not in str(info.value)


@dataclass(frozen=True, kw_only=True)
class AuthOptions:
    token: str = option("", secret=True, doc="An API token.")
    pin: int = option(1000, secret=True, min=1000, doc="A secret number.")


def test_secret_option_is_masked_in_describe(tmp_path: Path) -> None:
    s = Settings.load({"auth": AuthOptions}, config={}, env={"RESILIENT_AUTH__TOKEN": "s3cr3t-token"}, cwd=tmp_path)
    assert s.options(AuthOptions).token == "s3cr3t-token"
    assert row(s, "auth.token") == ('"****"', "env RESILIENT_AUTH__TOKEN")
    assert row(s, "auth.pin") == ('"****"', "default")
    assert "s3cr3t-token" not in all_text(s)


def test_secret_option_is_masked_in_type_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.load({"auth": AuthOptions}, config={"auth": {"token": 987654}}, env={}, cwd=tmp_path)
    assert info.value.key == "auth.token"
    assert "must be a string" in str(info.value)
    assert "****" in str(info.value)
    assert "987654" not in str(info.value)


def test_secret_option_is_masked_in_bound_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.load({"auth": AuthOptions}, config={}, env={"RESILIENT_AUTH__PIN": "987"}, cwd=tmp_path)
    assert info.value.key == "auth.pin"
    assert ">= 1000" in str(info.value)
    assert "987" not in str(info.value)


def test_empty_secret_is_shown_as_empty(tmp_path: Path) -> None:
    s = Settings.load({"auth": AuthOptions}, config={}, env={}, cwd=tmp_path)
    assert row(s, "auth.token") == ('""', "default")


# ---------------------------------------------------------------- through the pipeline


@pytest.mark.parametrize(
    ("config", "env", "key"),
    [
        ({"retry": {"max_attempts": 0}}, {}, "retry.max_attempts"),
        ({}, {"RESILIENT_RETRY__MAX_ATTEMPTS": "many"}, "retry.max_attempts"),
        ({"on_plugin_error": "explode"}, {}, "on_plugin_error"),
        ({"retry": {"max_attemps": 2}}, {}, "retry.max_attemps"),
        ({"retyr": {}}, {}, "retyr"),
        ({"retry": {"base_delay": 9, "max_delay": 1}}, {}, "retry"),
        ({}, {"RESILIENT_RETYR__MAX_ATTEMPTS": "2"}, "RESILIENT_RETYR__MAX_ATTEMPTS"),
    ],
)
def test_pipeline_rejects_bad_config(tmp_path: Path, config: dict[str, Any], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Pipeline(config=config, env=env, cwd=str(tmp_path))
    assert info.value.key == key


def test_pipeline_reads_the_file_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attempts = 0\n")
    with pytest.raises(ConfigurationError) as info:
        Pipeline(env={}, cwd=str(tmp_path))
    assert str(tmp_path / "resilient.toml") in str(info.value)

    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attempts = 7\n")
    pipeline = Pipeline(env={"RESILIENT_RETRY__BASE_DELAY": "1s"}, cwd=str(tmp_path))
    assert pipeline.settings.options(RetryOptions).max_attempts == 7
    assert pipeline.settings.options(RetryOptions).base_delay == 1.0
    assert pipeline.settings.file == str(tmp_path / "resilient.toml")


def test_pipeline_config_mapping_is_validated_even_without_plugins(tmp_path: Path) -> None:
    # Without the retry plugin there is no retry section: its keys are unknown.
    with pytest.raises(ConfigurationError, match="unknown key or section"):
        Pipeline(discover=False, config={"retry": {"max_attempts": 2}}, env={}, cwd=str(tmp_path))


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({"retry": {"base_delay": float("inf")}}, {}),
        ({"retry": {"max_delay": float("nan")}}, {}),
        ({}, {"RESILIENT_RETRY__DEADLINE": "1e400"}),
        ({}, {"RESILIENT_RETRY__BASE_DELAY": "inf"}),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path: Path, config: dict[str, Any], env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="finite"):
        load(tmp_path, config=config, env=env)


@pytest.mark.parametrize(
    "config",
    [
        {"retry": {"api_kee": "sk-SECRET1"}},
        {"nosuchsection": {"token": "sk-SECRET1"}},
        {"retry": {"providers": {"x": {"api_kee": "sk-SECRET1"}}}},
        {"store": "redis://h:6379/0?password=sk-SECRET1"},
        {"stor": "redis://h:6379/0?password=sk-SECRET1"},
    ],
)
def test_values_under_unknown_keys_are_never_echoed(tmp_path: Path, config: dict[str, Any]) -> None:
    try:
        settings = load(tmp_path, config=config)
    except ConfigurationError as exc:
        assert "SECRET1" not in str(exc)
        assert "SECRET1" not in repr(exc.value)
    else:
        assert all("SECRET1" not in row.value for row in settings.describe())


def test_override_kind_must_be_a_table_of_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"retry\.providers = \(value not shown\).*one per provider"):
        load(tmp_path, config={"retry": {"providers": 5}})
    with pytest.raises(ConfigurationError, match=r"retry\.providers\.anthropic"):
        load(tmp_path, config={"retry": {"providers": {"anthropic": 5}}})
