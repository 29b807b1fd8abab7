"""The ``resilient`` command: ``plugins`` and ``config``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resilient import __version__
from resilient.cli import main

from .conftest import AddDist

RESILIENT_SCRIPT = Path(sys.executable).parent / "resilient"


def console(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed ``resilient`` console script run with ``args`` in ``cwd`` and only ``env``."""
    return subprocess.run(
        [str(RESILIENT_SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


PASSWORD = "hunter2"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory with no RESILIENT_* variable from the real environment."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("RESILIENT_"):
            monkeypatch.delenv(var)
    return tmp_path


EXTRA_PLUGIN = """
from resilient import Policy, hookimpl

class Extra(Policy):
    name = "extra_cli_xyz"
    order = 100

    def wrap(self, nxt, target):
        return nxt

@hookimpl
def resilient_policies(runtime):
    return [Extra()]
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# The first-party plugins and what they contribute with the default configuration. More
# first-party plugins may be discovered too: the tests check these, not the complete list.
FIRST_PARTY_HOOKS = {
    "quota": ["resilient_cli", "resilient_options", "resilient_policies"],
    "retry": ["resilient_options", "resilient_policies"],
}
ALL_KINDS = ["sync", "async", "stream", "astream"]

POLICY_LINE = re.compile(r"(\d+)\. (\S+)  \(order (-?\d+), plugin (\S+), acts on (.*)\)")
PolicyRow = tuple[int, str, int, str, str]


def policy_rows(out: str) -> list[PolicyRow]:
    """(position, name, order, plugin, kinds) for each line of the printed policy order."""
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index("Policy order in force, outermost first:") + 1
    end = lines.index("-> provider call", start)
    rows: list[PolicyRow] = []
    for line in lines[start:end]:
        match = POLICY_LINE.fullmatch(line)
        assert match, line
        rows.append((int(match[1]), match[2], int(match[3]), match[4], match[5]))
    return rows


def assert_in_policy_order(rows: list[tuple[int, str, int]]) -> None:
    """(position, name, order) rows numbered 1..n, outermost first by ``Policy.order`` then name."""
    assert [position for position, _, _ in rows] == list(range(1, len(rows) + 1))
    assert [(order, name) for _, name, order in rows] == sorted((order, name) for _, name, order in rows)
    names = [name for _, name, _ in rows]
    # quota admits once per call; retry repeats attempts; quota_signals sees every attempt's failure.
    assert names.index("quota") < names.index("retry") < names.index("quota_signals")


# ---------------------------------------------------------------- plugins


def test_plugins_lists_first_party_plugins_with_hooks_and_policy_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plugins")
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    for name, hooks in FIRST_PARTY_HOOKS.items():
        found = [i for i, line in enumerate(lines) if line.split()[:2] == [name, "ok"]]
        assert len(found) == 1, out
        assert lines[found[0]].split()[2:] == ["entry", "point", f"resilient_{name}"]
        assert lines[found[0] + 1].strip() == f"hooks: {', '.join(hooks)}"
    assert "Policy order in force, outermost first:" in out
    assert lines[-1].strip() == "-> provider call"
    rows = policy_rows(out)
    assert_in_policy_order([r[:3] for r in rows])
    by_name = {r[1]: r for r in rows}
    assert by_name["retry"][2:] == (400, "retry", ", ".join(ALL_KINDS))
    assert by_name["quota"][2:] == (300, "quota", ", ".join(ALL_KINDS))
    assert by_name["quota_signals"][2:4] == (450, "quota")


def test_plugins_json_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"plugins", "policies"}
    for name, hooks in FIRST_PARTY_HOOKS.items():
        assert [p for p in data["plugins"] if p["name"] == name] == [
            {
                "name": name,
                "status": "ok",
                "source": f"entry point resilient_{name}",
                "hooks": hooks,
                "error": None,
            }
        ]
    policies = data["policies"]
    assert all(set(p) == {"position", "name", "order", "plugin", "kinds"} for p in policies)
    assert_in_policy_order([(p["position"], p["name"], p["order"]) for p in policies])
    by_name = {p["name"]: p for p in policies}
    assert by_name["retry"] == {
        "position": by_name["retry"]["position"],
        "name": "retry",
        "order": 400,
        "plugin": "retry",
        "kinds": ALL_KINDS,
    }
    assert by_name["quota"] == {
        "position": by_name["quota"]["position"],
        "name": "quota",
        "order": 300,
        "plugin": "quota",
        "kinds": ALL_KINDS,
    }
    assert (by_name["quota_signals"]["order"], by_name["quota_signals"]["plugin"]) == (450, "quota")


def test_plugins_shows_disabled_plugin_and_no_policies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text('disable = ["retry"]\n')
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:2] == ["retry", "disabled"] for line in lines)
    assert any(line.split()[:2] == ["quota", "ok"] for line in lines)  # the others still load
    assert "retry" not in [r[1] for r in policy_rows(out)]
    data = json.loads(run(capsys, "plugins", "--json")[1])
    assert [p["status"] for p in data["plugins"] if p["name"] == "retry"] == ["disabled"]
    assert [p["status"] for p in data["plugins"] if p["name"] == "quota"] == ["ok"]
    assert data["policies"] != []
    assert all(p["name"] != "retry" and p["plugin"] != "retry" for p in data["policies"])

    # With every plugin found disabled, none contributes a policy.
    everyone = [p["name"] for p in data["plugins"]]
    assert set(everyone) >= set(FIRST_PARTY_HOOKS)
    (tmp_path / "resilient.toml").write_text(f"disable = {json.dumps(everyone)}\n")
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "(no policies)" in out
    for name in everyone:
        assert any(line.split()[:2] == [name, "disabled"] for line in out.splitlines())
    data = json.loads(run(capsys, "plugins", "--json")[1])
    assert [(p["name"], p["status"]) for p in data["plugins"]] == [(n, "disabled") for n in everyone]
    assert data["policies"] == []


def test_plugins_prints_the_order_in_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, add_dist: AddDist
) -> None:
    add_dist("extra_cli_xyz", {"extra": "extra_cli_xyz"}, {"extra_cli_xyz": EXTRA_PLUGIN})
    data = json.loads(run(capsys, "plugins", "--json")[1])
    policies = data["policies"]
    # order 100 puts it outermost, ahead of every first-party policy.
    assert (policies[0]["position"], policies[0]["name"], policies[0]["plugin"]) == (1, "extra_cli_xyz", "extra")
    assert policies[0]["kinds"] == ["sync"]
    assert ("retry", "retry") in [(p["name"], p["plugin"]) for p in policies]
    assert_in_policy_order([(p["position"], p["name"], p["order"]) for p in policies])

    (tmp_path / "resilient.toml").write_text('order = ["retry"]\n')
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert out.index("1. retry ") < out.index("2. extra_cli_xyz ")


def test_plugins_file_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text('disable = ["retry"]\n')
    default = json.loads(run(capsys, "plugins", "--json")[1])
    assert "retry" in [p["name"] for p in default["policies"]]
    data = json.loads(run(capsys, "plugins", "--json", "--file", "other.toml")[1])
    assert [p["status"] for p in data["plugins"] if p["name"] == "retry"] == ["disabled"]
    # Only retry is gone; the rest keep their order, renumbered.
    assert [p["name"] for p in data["policies"]] == [p["name"] for p in default["policies"] if p["name"] != "retry"]
    assert [p["position"] for p in data["policies"]] == list(range(1, len(data["policies"]) + 1))


def test_plugins_with_bad_config_reports_it_and_still_lists(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attempts = 0\n")
    code, out, err = run(capsys, "plugins")
    assert code == 2
    assert "error: retry.max_attempts = 0" in err
    assert any(line.split()[:2] == ["retry", "ok"] for line in out.splitlines())
    assert "(no policies)" in out


def test_plugin_cli_hook_adds_a_command(capsys: pytest.CaptureFixture[str], add_dist: AddDist) -> None:
    add_dist(
        "hello_cli_xyz",
        {"hello": "hello_cli_xyz"},
        {
            "hello_cli_xyz": """
            from resilient import hookimpl

            def _hello(args):
                print(f"hello {args.who}")
                return 3

            @hookimpl
            def resilient_cli(subparsers):
                p = subparsers.add_parser("hello")
                p.add_argument("who")
                p.set_defaults(func=_hello)
            """
        },
    )
    code, out, _ = run(capsys, "hello", "world")
    assert (code, out) == (3, "hello world\n")


def test_plugin_cli_hook_that_raises_does_not_break_the_cli(
    capsys: pytest.CaptureFixture[str], add_dist: AddDist
) -> None:
    add_dist(
        "bad_cli_xyz",
        {"badcli": "bad_cli_xyz"},
        {
            "bad_cli_xyz": """
            from resilient import hookimpl

            @hookimpl
            def resilient_cli(subparsers):
                raise RuntimeError("no commands today")
            """
        },
    )
    code, out, err = run(capsys, "config")
    assert code == 0
    assert "warning: plugin 'badcli' failed to add CLI commands" in err
    assert "no commands today" in err
    assert "retry.max_attempts" in out


# ---------------------------------------------------------------- config


def config_lines(out: str) -> dict[str, tuple[str, str]]:
    """key -> (value, source) from ``resilient config`` output."""
    rows: dict[str, tuple[str, str]] = {}
    for line in out.splitlines()[1:]:
        key, rest = line.strip().split(" = ", 1)
        value, source = rest.rsplit("    [", 1)
        rows[key.strip()] = (value, source.rstrip("]"))
    return rows


def test_config_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config")
    assert code == 0
    assert out.splitlines()[0] == "Configuration file: (none)"
    rows = config_lines(out)
    assert rows["retry.max_attempts"] == ("3", "default")
    assert rows["store"] == ('"memory://"', "default")
    assert rows["on_plugin_error"] == ('"raise"', "default")


def test_config_shows_values_with_sources(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "resilient.toml").write_text('key_prefix = "app:"\n[retry]\nmax_attempts = 5\nbase_delay = "250ms"\n')
    monkeypatch.setenv("RESILIENT_RETRY__MAX_ATTEMPTS", "6")
    monkeypatch.setenv("RESILIENT_RETRY__PROVIDERS__ANTHROPIC__MAX_DELAY", "5s")
    code, out, _ = run(capsys, "config")
    assert code == 0
    path = str(tmp_path / "resilient.toml")
    assert out.splitlines()[0] == f"Configuration file: {path}"
    rows = config_lines(out)
    assert rows["key_prefix"] == ('"app:"', path)
    assert rows["retry.max_attempts"] == ("6", "env RESILIENT_RETRY__MAX_ATTEMPTS")
    assert rows["retry.base_delay"] == ("0.25", path)
    assert rows["retry.max_delay"] == ("30.0", "default")
    assert rows["retry.providers.anthropic.max_delay"] == (
        "5.0",
        "env RESILIENT_RETRY__PROVIDERS__ANTHROPIC__MAX_DELAY",
    )


def test_config_masks_store_password(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_STORE", f"redis://:{PASSWORD}@localhost:6379/0")
    code, out, err = run(capsys, "config")
    assert code == 0
    assert config_lines(out)["store"] == ('"redis://:****@localhost:6379/0"', "env RESILIENT_STORE")
    code, json_out, json_err = run(capsys, "config", "--json")
    assert code == 0
    assert PASSWORD not in out + err + json_out + json_err


def test_config_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attempts = 5\n")
    code, out, _ = run(capsys, "config", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["file"] == str(tmp_path / "resilient.toml")
    settings = {s["key"]: s for s in data["settings"]}
    assert settings["retry.max_attempts"] == {
        "key": "retry.max_attempts",
        "value": "5",
        "source": str(tmp_path / "resilient.toml"),
    }
    assert settings["key_prefix"]["source"] == "default"


def test_config_file_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "resilient.toml").write_text("[retry]\nmax_attempts = 5\n")
    (tmp_path / "some.toml").write_text("[retry]\nmax_attempts = 8\n")
    code, out, _ = run(capsys, "config", "--file", "some.toml")
    assert code == 0
    assert out.splitlines()[0] == f"Configuration file: {tmp_path / 'some.toml'}"
    assert config_lines(out)["retry.max_attempts"] == ("8", str(tmp_path / "some.toml"))


def test_config_file_option_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "config", "--file", "missing.toml")
    assert code == 2
    assert out == ""
    assert "missing.toml" in err
    assert "existing TOML file" in err


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[retry]\nmax_attempts = 0\n", ["retry.max_attempts = 0", "must be >= 1"]),
        ("[retry]\nmax_attemps = 2\n", ["retry.max_attemps", "did you mean 'max_attempts'"]),
        ('on_plugin_error = "explode"\n', ["on_plugin_error = 'explode'", "'raise', 'warn'"]),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    (tmp_path / "resilient.toml").write_text(toml)
    code, out, err = run(capsys, "config")
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert str(tmp_path / "resilient.toml") in err
    for fragment in fragments:
        assert fragment in err


def test_bad_env_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_RETYR__MAX_ATTEMPTS", "2")
    code, _, err = run(capsys, "config")
    assert code == 2
    assert "RESILIENT_RETYR__MAX_ATTEMPTS" in err
    assert "did you mean" in err


# ---------------------------------------------------------------- the program


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "usage: resilient" in out
    assert "plugins" in out
    assert "config" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"resilient {__version__}"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_plugins(tmp_path: Path) -> None:
    result = console(tmp_path, "plugins", env={})
    assert result.returncode == 0, result.stderr
    for name in FIRST_PARTY_HOOKS:
        assert any(line.split()[:2] == [name, "ok"] for line in result.stdout.splitlines())
    rows = policy_rows(result.stdout)
    assert_in_policy_order([r[:3] for r in rows])


def test_console_script_bad_config_exit_status(tmp_path: Path) -> None:
    result = console(tmp_path, "config", env={"RESILIENT_RETRY__MAX_ATTEMPTS": "0"})
    assert result.returncode == 2
    assert "retry.max_attempts = 0 (from env RESILIENT_RETRY__MAX_ATTEMPTS)" in result.stderr


# ---------------------------------------------------------------- no secret echoed

SECRET = "sk-ant-api03-abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789"


def test_mask_given_text_instead_of_a_file_prints_a_short_error_without_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "mask", f"token {SECRET}")
    assert code == 2
    assert SECRET not in out + err
    assert "Traceback" not in err
    assert err == "resilient mask: error: cannot open the file given: No such file or directory\n"


def test_console_script_mask_given_text_instead_of_a_file(tmp_path: Path) -> None:
    result = console(tmp_path, "mask", f"token {SECRET}", env={})
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [SECRET],  # argparse: invalid choice '...'
        ["config", SECRET],  # unrecognized arguments: ...
        ["mask", "-", SECRET],
        ["config", "--file", SECRET],  # the command's own error names the file
        ["plugins", "--file", f"{SECRET}.toml"],
        ["simulate", "--port", SECRET],  # an option's type error quotes the value
        ["simulate", "--faults", SECRET],
        ["breaker", SECRET],  # a plugin's subcommands are masked too
    ],
)
def test_errors_about_an_argument_mask_it(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    assert SECRET not in out + err
    assert "[REDACTED:anthropic_api_key]" in err


def test_an_unexpected_error_prints_its_traceback_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import resilient.cli

    def broken(args: object) -> int:
        raise ValueError(f"cannot use {SECRET}")

    monkeypatch.setattr(resilient.cli, "_cmd_config", broken)
    code, out, err = run(capsys, "config")
    assert code == 1
    assert SECRET not in out + err
    assert "Traceback" in err
    assert "ValueError: cannot use [REDACTED:anthropic_api_key]" in err
