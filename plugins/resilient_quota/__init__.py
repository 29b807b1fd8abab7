"""Request and token quotas on the ``limits`` library, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``quota``.
Configuration section ``[tool.resilient.quota]``; see :class:`QuotaOptions`.
Adds ``resilient quota status`` to the CLI.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Pipeline, Policy, Runtime, hookimpl

from ._events import QuotaPaused, QuotaRejected, QuotaRemaining, QuotaStoreUnavailable
from ._options import QuotaOptions
from ._policy import QuotaPolicy, QuotaSignals, QuotaState

__all__ = [
    "QuotaOptions",
    "QuotaPaused",
    "QuotaPolicy",
    "QuotaRejected",
    "QuotaRemaining",
    "QuotaSignals",
    "QuotaStoreUnavailable",
]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"quota": QuotaOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(QuotaOptions)
    options = section.base
    has_limits = any((options.requests, options.input_tokens, options.output_tokens, options.total_tokens))
    if not section.varies and (not options.enabled or not (has_limits or options.provider_signals)):
        return ()
    state = QuotaState(section, runtime)
    if not section.varies and not options.provider_signals:
        return (QuotaPolicy(state),)  # no signal to watch for: one layer less on every call
    return (QuotaPolicy(state), QuotaSignals(state))


def _status(args: argparse.Namespace) -> int:
    pipeline = Pipeline()
    policy = next((p for p in pipeline.policies if isinstance(p, QuotaPolicy)), None)
    if policy is None:
        print("quota: no quota policy in force (no limits configured, or disabled)")
        return 1
    status = policy.status(args.provider, args.model, args.tenant)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"quota {status['key']}  store: {status['store']}  paused for: {status['paused_for']}s")
    for row in status["limits"]:
        print(f"  {row['limit']:<40} remaining {row['remaining']:>10}  resets in {row['reset_in']}s")
    if not status["limits"]:
        print("  (no limits for this key)")
    return 0


@hookimpl
def resilient_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quota = subparsers.add_parser("quota", help="quota introspection")
    sub = quota.add_subparsers(dest="quota_command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="remaining and reset of each limit of a key")
    status.add_argument("--provider", default="default")
    status.add_argument("--model")
    status.add_argument("--tenant")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)
