"""The ``resilient`` command.

``resilient plugins`` lists the plugins found (broken ones marked, with the
cause) and the policy order in force; ``resilient config`` shows the
effective configuration and where each value came from, secrets masked.
Plugins add subcommands through the ``resilient_cli`` hook.

Nothing the command prints about its arguments is left unmasked: a secret
pasted where a file name or an option was expected must not reach a
terminal or a CI log. Usage errors and command errors are masked with the
configured masker; a file that cannot be read is reported without its name;
any other exception's traceback is masked before it is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from . import __version__
from ._plugins import load_plugins
from .errors import ConfigurationError, PluginError
from .pipeline import Pipeline

__all__ = ["main"]

#: Exit status of a usage error (argparse's) and of a command that cannot do what it was asked.
USAGE_ERROR = 2


def _masker() -> Callable[[str], str]:
    """The configured masker's ``mask``; the installed detectors' when the configuration is the problem."""
    from .masking import MaskingOptions, get_masker, load_masker, masker_from_options
    from .masking._load import installed_detectors

    try:
        return load_masker()[0].mask
    except Exception:  # a broken configuration or plugin: the detectors that are installed still apply
        pass
    try:
        return masker_from_options(MaskingOptions(), installed_detectors()).mask
    except Exception:
        return get_masker().mask


def _masked(text: str) -> str:
    return _masker()(text)


def _error(message: object) -> None:
    print(f"error: {_masked(str(message))}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse echoes the argument it rejects (an invalid choice, an unrecognized argument): masked here.

    Subparsers, plugins' included, are made of the parser's own class.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {_masked(message)}\n")


def _pipeline(args: argparse.Namespace, **extra: Any) -> Pipeline:
    env = dict(os.environ)
    if args.file:
        env["RESILIENT_CONFIG"] = args.file
    return Pipeline(env=env, **extra)


def _cmd_plugins(args: argparse.Namespace) -> int:
    policies: list[dict[str, Any]] = []
    failed = False
    env = dict(os.environ)
    if args.file:
        env["RESILIENT_CONFIG"] = args.file
    # Build with on_plugin_error=warn so one broken plugin does not hide the rest.
    env["RESILIENT_ON_PLUGIN_ERROR"] = "warn"
    try:
        pipeline = Pipeline(env=env)
    except (ConfigurationError, PluginError) as exc:
        _error(exc)
        failed = True
        infos = load_plugins().infos
    else:
        infos = pipeline.plugins
        policies = [
            {
                "position": i + 1,
                "name": p.name,
                "order": p.order,
                "plugin": pipeline.plugin_of(p),
                "kinds": list(p.kinds()),
            }
            for i, p in enumerate(pipeline.policies)
        ]
    plugins: list[dict[str, Any]] = [
        {
            "name": i.name,
            "status": "disabled" if i.disabled else ("broken" if i.error else "ok"),
            "source": i.source,
            "hooks": list(i.hooks),
            "error": i.error,
        }
        for i in infos
    ]
    if args.json:
        print(json.dumps({"plugins": plugins, "policies": policies}, indent=2))
    else:
        print("Plugins (entry-point group 'resilient' and explicit):")
        if not plugins:
            print("  (none)")
        width = max((len(p["name"]) for p in plugins), default=0)
        for p in plugins:
            mark = {"ok": "ok", "broken": "BROKEN", "disabled": "disabled"}[p["status"]]
            print(f"  {p['name']:<{width}}  {mark:<8}  {p['source']}")
            if p["error"]:
                print(f"  {'':<{width}}  {'':<8}  {p['error']}")
            elif p["hooks"]:
                print(f"  {'':<{width}}  {'':<8}  hooks: {', '.join(p['hooks'])}")
        print("\nPolicy order in force, outermost first:")
        if not policies:
            print("  (no policies)")
        for q in policies:
            print(
                f"  {q['position']}. {q['name']}  (order {q['order']}, plugin {q['plugin']},"
                f" acts on {', '.join(q['kinds']) or 'nothing'})"
            )
        print("  -> provider call")
    if failed:
        return USAGE_ERROR
    return 1 if any(p["status"] == "broken" for p in plugins) else 0


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        pipeline = _pipeline(args)
    except (ConfigurationError, PluginError) as exc:
        _error(exc)
        return USAGE_ERROR
    rows = pipeline.settings.describe()
    if args.json:
        out = {
            "file": pipeline.settings.file,
            "settings": [{"key": r.key, "value": r.value, "source": r.source} for r in rows],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"Configuration file: {pipeline.settings.file or '(none)'}")
    width = max((len(r.key) for r in rows), default=0)
    for r in rows:
        print(f"  {r.key:<{width}} = {r.value}    [{r.source}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resilient", description="Production policies around provider calls.")
    parser.add_argument("--version", action="version", version=f"resilient {__version__}")
    # Typed as argparse's: the subcommands (plugins' too) are _Parser all the same.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]", parser.add_subparsers(dest="command", metavar="COMMAND")
    )

    p = sub.add_parser("plugins", help="list plugins, their hooks and the policy order in force")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--file", help="configuration file (default: resilient.toml or pyproject.toml here)")
    p.set_defaults(func=_cmd_plugins)

    c = sub.add_parser("config", help="show the effective configuration and where each value came from")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--file", help="configuration file (default: resilient.toml or pyproject.toml here)")
    c.set_defaults(func=_cmd_config)

    from .masking._stream import add_parser as _add_mask_parser

    _add_mask_parser(sub)

    from .testing import _sim_cli  # options only; starlette and uvicorn are imported when it runs

    s = sub.add_parser("simulate", help="serve a fake Anthropic/OpenAI provider with faults (resilient[simulator])")
    _sim_cli.add_arguments(s)
    s.set_defaults(func=_sim_cli.run)

    # Plugins may add their own subcommands; a broken plugin must not break the CLI.
    plugins = load_plugins()
    for impl in plugins.pm.hook.resilient_cli.get_hookimpls():
        try:
            impl.function(subparsers=sub)
        except Exception as exc:
            print(f"warning: plugin {impl.plugin_name!r} failed to add CLI commands: {exc!r}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result: int = args.func(args)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            # The name given may be a secret pasted where a file was expected (`resilient mask "token sk-..."`).
            reason = exc.strerror or type(exc).__name__
            print(f"{parser.prog} {args.command}: error: cannot open the file given: {reason}", file=sys.stderr)
            return USAGE_ERROR
        # Any other error keeps its traceback, masked: exception messages quote what they were given.
        print(_masked("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
