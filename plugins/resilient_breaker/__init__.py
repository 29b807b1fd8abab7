"""Circuit breakers per provider and model, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``breaker``.
Configuration section ``[tool.resilient.breaker]``; see :class:`BreakerOptions`.
Adds ``resilient breaker status|open|close|reset`` to the CLI.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Pipeline, Policy, Runtime, hookimpl

from ._events import BreakerRejected, BreakerStateChanged
from ._options import BreakerOptions
from ._policy import BreakerPolicy

__all__ = ["BreakerOptions", "BreakerPolicy", "BreakerRejected", "BreakerStateChanged"]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"breaker": BreakerOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(BreakerOptions)
    if not section.base.enabled and not section.varies:
        return ()
    return (BreakerPolicy(section, runtime),)


def _run(args: argparse.Namespace) -> int:
    pipeline = Pipeline()
    policy = next((p for p in pipeline.policies if isinstance(p, BreakerPolicy)), None)
    if policy is None:
        print("breaker: no breaker policy in force (disabled)")
        return 1
    if args.breaker_command != "status":
        state = policy.control(args.breaker_command, args.provider, args.model, args.tenant)
        print(f"breaker {policy.status(args.provider, args.model, args.tenant)['key']}: {state}")
        return 0
    status = policy.status(args.provider, args.model, args.tenant)
    print(json.dumps(status, indent=2) if args.json else "  ".join(f"{k}: {v}" for k, v in status.items()))
    return 0


@hookimpl
def resilient_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    breaker = subparsers.add_parser("breaker", help="circuit breaker status and manual control")
    sub = breaker.add_subparsers(dest="breaker_command", metavar="COMMAND", required=True)
    for name, text in (
        ("status", "state and window counts of a breaker"),
        ("open", "force a breaker open (every call refused) until close or reset"),
        ("close", "force a breaker closed (every call let through, nothing counted) until reset"),
        ("reset", "back to closed with an empty window"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--provider", required=True)
        cmd.add_argument("--model")
        cmd.add_argument("--tenant")
        if name == "status":
            cmd.add_argument("--json", action="store_true")
        cmd.set_defaults(func=_run)
