"""Plugins: registration, broken plugins, policy order, disable."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilient.cli
from resilient import ConfigurationError, Pipeline, PluginError, Policy, Runtime, hookimpl, option
from resilient_retry import RetryOptions

from ._policies import Contribute, Noop
from .conftest import AddDist


def build(*plugins: object, **kwargs: Any) -> Pipeline:
    kwargs.setdefault("config", {})
    return Pipeline(plugins=list(plugins), discover=False, env={}, **kwargs)


def policy_names(pipeline: Pipeline) -> list[str]:
    return [p.name for p in pipeline.policies]


def info_of(pipeline: Pipeline, name: str) -> Any:
    found = [i for i in pipeline.plugins if i.name == name]
    assert len(found) == 1, pipeline.plugins
    return found[0]


# ---------------------------------------------------------------- explicit registration


class Named(Policy):
    def __init__(self, name: str, order: int = 500) -> None:
        self.name = name  # type: ignore[misc]
        self.order = order  # type: ignore[misc]


def test_explicit_object_plugin_is_registered() -> None:
    policy = Noop("mine")
    plugin = Contribute(policy, name="my-plugin")
    pipeline = build(plugin)
    assert pipeline.policies == (policy,)
    assert pipeline.plugin_of(policy) == "my-plugin"
    info = info_of(pipeline, "my-plugin")
    assert info.source == "explicit"
    assert info.hooks == ("resilient_policies",)
    assert info.ok
    assert info.plugin is plugin
    assert [i.name for i in pipeline.plugins] == ["my-plugin"]  # discover=False: no entry points


@pytest.mark.parametrize("given", [["retry"], "retry"])
def test_plugin_given_by_name_is_a_type_error_that_points_to_entry_points(given: Any) -> None:
    with pytest.raises(TypeError) as info:
        Pipeline(plugins=given, discover=False, env={}, config={})
    message = str(info.value)
    assert "'retry'" in message
    if isinstance(given, list):
        assert "not a name" in message
        assert "entry points" in message
        assert "disable" in message
    else:
        assert "a list of plugin objects or modules" in message


class Undecorated:
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [Named("x")]


@pytest.mark.parametrize("given", [object(), 42, types.ModuleType("empty"), Undecorated()])
def test_object_with_no_hook_implementation_is_not_a_plugin(given: object) -> None:
    with pytest.raises(TypeError) as info:
        build(given)
    message = str(info.value)
    assert f"plugins=[{given!r}]: not a plugin" in message
    assert "@resilient.hookimpl" in message
    if isinstance(given, Undecorated):
        assert "resilient_policies is not decorated with @resilient.hookimpl" in message


def test_explicit_module_plugin_is_named_after_the_module() -> None:
    module = types.ModuleType("my_module_plugin")

    @hookimpl
    def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
        return [Noop("from-module")]

    module.resilient_policies = resilient_policies  # type: ignore[attr-defined]
    pipeline = build(module)
    assert [p.name for p in pipeline.policies] == ["from-module"]
    assert pipeline.plugin_of(pipeline.policies[0]) == "my_module_plugin"


def test_explicit_class_plugin_is_instantiated() -> None:
    class ClassPlugin:
        @hookimpl
        def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
            return [Noop("from-class")]

    pipeline = build(ClassPlugin)
    (info,) = pipeline.plugins
    assert info.name == f"{__name__}.test_explicit_class_plugin_is_instantiated.<locals>.ClassPlugin"
    assert isinstance(info.plugin, ClassPlugin)
    assert [p.name for p in pipeline.policies] == ["from-class"]


def test_explicit_plugins_add_to_discovered_ones() -> None:
    discovered = Pipeline(env={}, config={})
    assert {"quota", "retry"} <= {i.name for i in discovered.plugins}
    assert {"quota", "quota_signals", "retry"} <= set(policy_names(discovered))
    pipeline = Pipeline(plugins=[Contribute(Noop("mine"))], env={}, config={})
    assert {i.name for i in pipeline.plugins} == {i.name for i in discovered.plugins} | {"test-policies"}
    assert sorted(policy_names(pipeline)) == sorted([*policy_names(discovered), "mine"])
    assert pipeline.plugin_of(next(p for p in pipeline.policies if p.name == "retry")) == "retry"
    assert pipeline.plugin_of(next(p for p in pipeline.policies if p.name == "mine")) == "test-policies"


def test_first_party_retry_can_be_registered_explicitly() -> None:
    import resilient_retry

    pipeline = build(resilient_retry, config={"retry": {"max_attempts": 4}})
    assert [p.name for p in pipeline.policies] == ["retry"]
    assert pipeline.settings.options(RetryOptions).max_attempts == 4


@dataclass(frozen=True, kw_only=True)
class MineOptions:
    limit: int = option(10, min=1, doc="A limit.")


class WithOptions:
    name = "with-options"

    @hookimpl
    def resilient_options(self) -> dict[str, type[Any]]:
        return {"mine": MineOptions}

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [Named(f"limit-{runtime.settings.options(MineOptions).limit}")]


def test_explicit_plugin_options_are_configured() -> None:
    pipeline = build(WithOptions(), config={"mine": {"limit": 3}})
    assert [p.name for p in pipeline.policies] == ["limit-3"]
    with pytest.raises(ConfigurationError, match=r"mine\.limit = 0 .*must be >= 1"):
        build(WithOptions(), config={"mine": {"limit": 0}})


def test_two_plugins_claiming_one_section_is_an_error() -> None:
    @dataclass(frozen=True, kw_only=True)
    class OtherOptions:
        limit: int = option(1, doc="Another.")

    class Claimer:
        name = "claimer"

        @hookimpl
        def resilient_options(self) -> dict[str, type[Any]]:
            return {"mine": OtherOptions}

    for plugins in ((WithOptions(), Claimer()), (Claimer(), WithOptions())):
        with pytest.raises(PluginError) as info:
            build(*plugins)
        assert info.value.plugin in ("claimer", "with-options")
        assert "configuration section 'mine' is already declared" in str(info.value)


def test_section_clashing_with_a_core_key_is_an_error() -> None:
    class Clash:
        name = "clash"

        @hookimpl
        def resilient_options(self) -> dict[str, type[Any]]:
            return {"store": MineOptions}

    with pytest.raises(PluginError) as info:
        build(Clash())
    assert info.value.plugin == "clash"
    assert "'store'" in str(info.value)


def test_two_plugins_with_the_same_name_is_an_error() -> None:
    with pytest.raises(PluginError) as info:
        build(Contribute(Noop("a"), name="twin"), Contribute(Noop("b"), name="twin"))
    assert info.value.plugin == "twin"
    assert "failed to register" in str(info.value)


def test_explicit_plugin_named_like_an_entry_point_is_an_error() -> None:
    with pytest.raises(PluginError) as info:
        Pipeline(plugins=[Contribute(Noop("x"), name="retry")], env={}, config={})
    assert info.value.plugin == "retry"
    assert "explicit" in str(info.value)


# ---------------------------------------------------------------- broken plugins


class WrongSignature:
    name = "wrong-signature"

    @hookimpl
    def resilient_policies(self, runtime: Runtime, extra: int) -> Sequence[Policy]:
        return [Noop("never")]


class MisspeltHook:
    name = "misspelt"

    @hookimpl
    def resilient_policy(self, runtime: Runtime) -> Sequence[Policy]:
        return [Noop("never")]

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        return [Noop("also-never")]


def test_wrong_signature_raises_plugin_error() -> None:
    with pytest.raises(PluginError) as info:
        build(WrongSignature())
    assert info.value.plugin == "wrong-signature"
    message = str(info.value)
    assert message.startswith("plugin 'wrong-signature': failed to register: PluginValidationError")
    assert "resilient_policies" in message


def test_wrong_signature_error_names_the_offending_argument() -> None:
    with pytest.raises(PluginError) as info:
        build(WrongSignature())
    assert "extra" in str(info.value)


def test_misspelt_hook_raises_plugin_error() -> None:
    with pytest.raises(PluginError) as info:
        build(MisspeltHook())
    assert info.value.plugin == "misspelt"
    message = str(info.value)
    assert "unknown hook" in message
    assert "'resilient_policy'" in message


@pytest.mark.parametrize("plugin", [WrongSignature(), MisspeltHook()], ids=["wrong-signature", "misspelt"])
def test_broken_plugin_is_skipped_with_warn(caplog: pytest.LogCaptureFixture, plugin: Any) -> None:
    good = Noop("good")
    with caplog.at_level(logging.WARNING, logger="resilient.plugins"):
        pipeline = build(plugin, Contribute(good), config={"on_plugin_error": "warn"})
    assert pipeline.policies == (good,)  # none of the broken plugin's hooks ran
    info = info_of(pipeline, plugin.name)
    assert info.error
    assert not info.ok
    assert info.hooks == ()
    assert info_of(pipeline, "test-policies").ok
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert repr(plugin.name) in warnings[0].getMessage()
    assert "skipped" in warnings[0].getMessage()


def test_on_plugin_error_warn_from_env(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline(plugins=[MisspeltHook()], discover=False, env={"RESILIENT_ON_PLUGIN_ERROR": "warn"}, config={})
    assert pipeline.policies == ()
    assert info_of(pipeline, "misspelt").error
    assert "misspelt" in caplog.text


def test_disabled_broken_plugin_is_not_an_error() -> None:
    pipeline = build(MisspeltHook(), config={"disable": ["misspelt"]})
    info = info_of(pipeline, "misspelt")
    assert info.disabled
    assert info.error is None
    assert not info.ok


class Raises:
    def __init__(self, hook: str) -> None:
        self.name = f"raises-in-{hook}"
        self.hook = hook

    @hookimpl
    def resilient_options(self) -> dict[str, type[Any]]:
        if self.hook == "options":
            raise KeyError("no options")
        return {}

    @hookimpl
    def resilient_observers(self, runtime: Runtime) -> list[Any]:
        if self.hook == "observers":
            raise ValueError("no observers")
        return []

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        if self.hook == "policies":
            raise RuntimeError("boom")
        return [Named(f"from-{self.name}")]


@pytest.mark.parametrize(
    ("hook", "cause"),
    [
        ("policies", "hook resilient_policies raised RuntimeError: boom"),
        ("options", "hook resilient_options raised KeyError: 'no options'"),
        ("observers", "hook resilient_observers raised ValueError: no observers"),
    ],
)
def test_hook_that_raises_names_the_plugin(hook: str, cause: str) -> None:
    with pytest.raises(PluginError) as info:
        build(Raises(hook), Contribute(Noop("other")))
    assert info.value.plugin == f"raises-in-{hook}"
    assert info.value.cause == cause
    assert isinstance(info.value.__cause__, Exception)


def test_hook_that_raises_is_skipped_with_warn(caplog: pytest.LogCaptureFixture) -> None:
    other = Noop("other")
    pipeline = build(Raises("policies"), Contribute(other), config={"on_plugin_error": "warn"})
    assert pipeline.policies == (other,)
    assert "raises-in-policies" in caplog.text
    assert "boom" in caplog.text


def test_policies_hook_returning_a_non_policy_is_an_error() -> None:
    class NotAPolicy:
        name = "not-a-policy"

        @hookimpl
        def resilient_policies(self, runtime: Runtime) -> Sequence[Any]:
            return ["retry"]

    with pytest.raises(PluginError) as info:
        build(NotAPolicy())
    assert info.value.plugin == "not-a-policy"
    assert "'retry'" in str(info.value)


def test_entry_point_that_fails_to_import(add_dist: AddDist, caplog: pytest.LogCaptureFixture) -> None:
    healthy = policy_names(Pipeline(env={}, config={}))  # what the first-party plugins contribute
    assert "retry" in healthy
    add_dist("broken_plugin_xyz", {"broken": "no_such_module_xyz"})
    with pytest.raises(PluginError) as info:
        Pipeline(env={}, config={})
    assert info.value.plugin == "broken"
    assert "ModuleNotFoundError" in str(info.value)
    assert "no_such_module_xyz" in str(info.value)

    pipeline = Pipeline(env={}, config={"on_plugin_error": "warn"})
    assert policy_names(pipeline) == healthy
    broken = info_of(pipeline, "broken")
    assert broken.error is not None
    assert broken.error.startswith("failed to load: ModuleNotFoundError")
    assert broken.source == "entry point no_such_module_xyz"
    assert info_of(pipeline, "retry").ok
    assert "'broken' skipped" in caplog.text

    pipeline = Pipeline(env={}, config={"disable": ["broken"]})
    assert info_of(pipeline, "broken").disabled
    assert policy_names(pipeline) == healthy


def test_entry_point_that_fails_to_import_in_the_cli(
    add_dist: AddDist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_dist("broken_plugin_xyz", {"broken": "no_such_module_xyz"})
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("RESILIENT_"):
            monkeypatch.delenv(var)
    assert resilient.cli.main(["plugins"]) == 1
    lines = capsys.readouterr().out.splitlines()
    broken = next(i for i, line in enumerate(lines) if line.split()[:1] == ["broken"])
    assert lines[broken].split()[:2] == ["broken", "BROKEN"]
    assert "ModuleNotFoundError: No module named 'no_such_module_xyz'" in lines[broken + 1]
    assert any(line.split()[:2] == ["retry", "ok"] for line in lines)
    assert any(line.split()[:2] == ["quota", "ok"] for line in lines)
    # The policy order is still printed, numbered from 1, with retry in it.
    assert any(line.strip().startswith("1. ") for line in lines)
    assert any(re.fullmatch(r"\d+\. retry  \(order 400, plugin retry, .*\)", line.strip()) for line in lines)


def test_entry_point_raising_on_import(add_dist: AddDist) -> None:
    add_dist("raising_plugin_xyz", {"raising": "raising_plugin_xyz"}, {"raising_plugin_xyz": "1 / 0\n"})
    with pytest.raises(PluginError) as info:
        Pipeline(env={}, config={})
    assert info.value.plugin == "raising"
    assert "ZeroDivisionError" in str(info.value)


# ---------------------------------------------------------------- policy order


names = st.text(alphabet="abcdefghij", min_size=1, max_size=4)


@given(specs=st.dictionaries(names, st.integers(min_value=0, max_value=5), min_size=0, max_size=6))
def test_policies_are_ordered_by_order_then_name(specs: dict[str, int]) -> None:
    policies = [Named(name, order) for name, order in specs.items()]
    pipeline = build(Contribute(*policies))
    assert [(p.order, p.name) for p in pipeline.policies] == sorted((o, n) for n, o in specs.items())


@given(data=st.data(), specs=st.dictionaries(names, st.integers(min_value=0, max_value=5), min_size=1, max_size=6))
def test_order_setting_puts_listed_policies_first(data: st.DataObject, specs: dict[str, int]) -> None:
    listed = data.draw(st.lists(st.sampled_from(sorted(specs)), unique=True))
    policies = [Named(name, order) for name, order in specs.items()]
    pipeline = build(Contribute(*policies), config={"order": listed})
    rest = sorted((o, n) for n, o in specs.items() if n not in listed)
    assert [p.name for p in pipeline.policies] == listed + [n for _, n in rest]


def test_order_setting_against_the_retry_plugin() -> None:
    outer = Named("outer", order=50)
    inner = Named("inner", order=900)
    pipeline = Pipeline(plugins=[Contribute(outer, inner)], env={}, config={})
    default = policy_names(pipeline)
    # By Policy.order: outer (50) outside every first-party policy, inner (900) inside them all.
    assert default[0] == "outer"
    assert default[-1] == "inner"
    assert "retry" in default
    assert [p.order for p in pipeline.policies] == sorted(p.order for p in pipeline.policies)

    pipeline = Pipeline(plugins=[Contribute(outer, inner)], env={"RESILIENT_ORDER": "inner,retry"}, config={})
    names = policy_names(pipeline)
    # The listed ones first, as listed; the rest after them in their default order.
    assert names[:2] == ["inner", "retry"]
    assert names[2:] == [n for n in default if n not in ("inner", "retry")]
    assert names[2] == "outer"


def test_unknown_name_in_order_is_a_configuration_error() -> None:
    first_party = policy_names(Pipeline(env={}, config={}))
    assert {"quota", "quota_signals", "retry"} <= set(first_party)
    # "mine" is an explicit policy: known, so only the misspelt name is refused.
    with pytest.raises(ConfigurationError) as info:
        Pipeline(plugins=[Contribute(Named("mine"))], env={}, config={"order": ["mine", "retyr"]})
    err = info.value
    assert err.key == "order"
    message = str(err)
    assert message.startswith(
        "order = ['mine', 'retyr'] (from config=): 'retyr' is not a policy or an installed plugin"
    )
    assert "did you mean 'retry'" in message
    # The known policies: every policy contributed, explicit and first-party, sorted; and the plugins.
    assert f"policies: {', '.join(sorted([*first_party, 'mine']))};" in message
    installed = sorted(ep.name for ep in importlib.metadata.entry_points(group="resilient"))
    assert f"plugins: {', '.join(sorted([*installed, 'test-policies']))}" in message
    with pytest.raises(ConfigurationError, match=r"^order = \['retyr'\] \(from env RESILIENT_ORDER\)"):
        Pipeline(env={"RESILIENT_ORDER": "retyr"}, config={})


def test_disable_retry_removes_it() -> None:
    without_retry = [n for n in policy_names(Pipeline(env={}, config={})) if n != "retry"]
    pipeline = Pipeline(env={}, config={"disable": ["retry"]})
    assert policy_names(pipeline) == without_retry
    assert info_of(pipeline, "retry").disabled
    assert info_of(pipeline, "quota").ok
    pipeline = Pipeline(env={"RESILIENT_DISABLE": "retry"}, config={})
    assert policy_names(pipeline) == without_retry
    assert info_of(pipeline, "retry").disabled


def test_disabled_plugin_may_keep_its_configuration_table() -> None:
    config = {"disable": ["retry"], "retry": {"max_attempts": 9}}
    pipeline = Pipeline(env={"RESILIENT_RETRY__MAX_ATTEMPTS": "4"}, config=config)
    assert info_of(pipeline, "retry").disabled
    assert "retry" not in policy_names(pipeline)
    # A table for a plugin that is neither loaded nor disabled is still an error.
    with pytest.raises(ConfigurationError, match="retyr"):
        Pipeline(env={}, config={"retyr": {"max_attempts": 9}})


class Wrapper:
    name = "wrapper"

    @hookimpl(wrapper=True)
    def resilient_policies(self, runtime: Runtime) -> Iterator[Sequence[Policy]]:
        return (yield)


def test_wrapper_hookimpl_is_refused_with_a_clear_cause() -> None:
    with pytest.raises(PluginError) as info:
        build(Wrapper())
    assert info.value.plugin == "wrapper"
    assert "resilient_policies is declared as a wrapper" in str(info.value)


def test_disable_a_policy_by_name_or_a_plugin_by_name() -> None:
    a, b, c = Named("a"), Named("b"), Named("c")
    plugins = (Contribute(a, b, name="ab"), Contribute(c, name="c-plugin"))
    assert build(*plugins, config={"disable": ["b"]}).policies == (a, c)
    assert build(*plugins, config={"disable": ["c-plugin"]}).policies == (a, b)
    # An installed entry-point plugin may be named even when it was not discovered.
    assert build(*plugins, config={"disable": ["retry"]}).policies == (a, b, c)


def test_unknown_name_in_disable_is_a_configuration_error() -> None:
    # It used to be a log warning, and the pipeline kept the plugin meant to be left out.
    with pytest.raises(ConfigurationError) as info:
        Pipeline(env={}, config={"disable": ["quota", "retri"]})
    err = info.value
    assert err.key == "disable"
    assert err.value == ["quota", "retri"]
    assert err.source == "config="
    message = str(err)
    assert message.startswith("disable = ['quota', 'retri'] (from config=): 'retri' is not an installed plugin")
    installed = sorted(ep.name for ep in importlib.metadata.entry_points(group="resilient"))
    assert f"plugins: {', '.join(installed)};" in message
    assert "did you mean 'retry'" in message
    # From the environment, the variable is named.
    with pytest.raises(ConfigurationError, match=r"^disable = \['retri'\] \(from env RESILIENT_DISABLE\)"):
        Pipeline(env={"RESILIENT_DISABLE": "retri"}, config={})
    with pytest.raises(ConfigurationError, match="'not-loaded' is not an installed plugin"):
        build(Contribute(Named("a")), config={"disable": ["not-loaded"]})


def test_order_may_name_an_installed_plugin_that_contributes_no_policy() -> None:
    # The example of docs/concepts.md on a default install: the cache plugin is loaded but not enabled.
    pipeline = Pipeline(env={}, config={"order": ["cache", "metrics"]})
    assert "cache" not in policy_names(pipeline)
    assert policy_names(pipeline)[0] == "metrics"
    enabled = Pipeline(env={}, config={"order": ["cache", "metrics"], "cache": {"enabled": True}})
    assert policy_names(enabled)[:2] == ["cache", "metrics"]
    # Disabled, or installed but not discovered: no typo either.
    assert policy_names(Pipeline(env={}, config={"order": ["retry", "metrics"], "disable": ["retry"]}))[0] == "metrics"
    assert policy_names(build(Contribute(Named("a")), config={"order": ["cache", "a"]})) == ["a"]


def test_two_policies_with_the_same_name_is_an_error() -> None:
    with pytest.raises(PluginError) as info:
        build(Contribute(Named("dup"), name="first"), Contribute(Named("dup"), name="second"))
    # Hooks run in pluggy's order (last registered first); the error names both plugins either way.
    other = {"first": "second", "second": "first"}[info.value.plugin]
    assert info.value.cause == f"policy name 'dup' is already used by plugin {other!r}"


def test_one_plugin_contributing_the_same_name_twice_is_an_error() -> None:
    with pytest.raises(PluginError) as info:
        build(Contribute(Named("dup"), Named("dup"), name="twice"))
    assert info.value.cause == "policy name 'dup' is already used by plugin 'twice'"


def test_policy_named_like_retry_clashes_with_the_retry_plugin() -> None:
    with pytest.raises(PluginError) as info:
        Pipeline(plugins=[Contribute(Named("retry"), name="mine")], env={}, config={})
    assert {info.value.plugin, info.value.cause.rsplit(" ", 1)[-1].strip("'")} == {"retry", "mine"}
    assert "policy name 'retry' is already used" in info.value.cause


def test_policy_without_a_name_is_an_error() -> None:
    with pytest.raises(PluginError) as info:
        build(Contribute(Named(""), name="anon"))
    assert info.value.plugin == "anon"
    assert "no name" in str(info.value)
