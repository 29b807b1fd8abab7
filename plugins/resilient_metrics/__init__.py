"""Prometheus metrics and token/cost accounting, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``metrics``.
Configuration section ``[tool.resilient.metrics]``; see :class:`MetricsOptions`
and ``docs/plugins/metrics.md`` for every metric, its type and labels.

Metrics go to prometheus_client's default registry unless
:func:`use_registry` names another for the pipelines built after it (tests
give each pipeline its own ``CollectorRegistry``). ``prometheus_client`` is
imported when a pipeline is built, not with this module; without it the
policy still accounts tokens and cost (call metadata, request totals) and
records no metrics.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from resilient import Observer, Pipeline, Policy, Runtime, hookimpl

from ._metrics import Bounded, Metrics, metrics_for
from ._observer import MetricsObserver
from ._options import MetricsOptions
from ._policy import MetricsPolicy
from ._prices import DEFAULT_PRICES, Price, PriceTable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "DEFAULT_PRICES",
    "MetricsObserver",
    "MetricsOptions",
    "MetricsPolicy",
    "Price",
    "PriceTable",
    "current_registry",
    "registry_of",
    "use_registry",
]

_log = logging.getLogger("resilient.metrics")

_registry: contextvars.ContextVar[CollectorRegistry | None] = contextvars.ContextVar(
    "resilient_metrics_registry", default=None
)


class _Token:
    """What :func:`use_registry` returns: a context manager restoring the previous registry."""

    def __init__(self, token: contextvars.Token[CollectorRegistry | None]) -> None:
        self._token = token

    def __enter__(self) -> _Token:
        return self

    def __exit__(self, *exc: object) -> None:
        _registry.reset(self._token)


def use_registry(registry: CollectorRegistry | None) -> _Token:
    """Record the metrics of pipelines built from now on into ``registry`` (``None``: the default).

    ``with use_registry(CollectorRegistry()): pipeline = Pipeline()`` limits it
    to pipelines built inside the block. A pipeline keeps the registry it was
    built with.
    """
    return _Token(_registry.set(registry))


def current_registry() -> CollectorRegistry:
    """The registry pipelines built now record into: :func:`use_registry`'s, else prometheus_client's default."""
    found = _registry.get()
    if found is not None:
        return found
    from prometheus_client import REGISTRY

    return REGISTRY


# One state per pipeline build: the observers (built first) and the policy share
# the metrics and the model labels, so both report a model the same way.
_builds: weakref.WeakKeyDictionary[Any, tuple[Metrics | None, Bounded]] = weakref.WeakKeyDictionary()


def _state(runtime: Runtime, options: MetricsOptions) -> tuple[Metrics | None, Bounded]:
    found = _builds.get(runtime.settings)
    if found is None:
        try:
            registry = current_registry()
        except ImportError:
            _log.warning("prometheus-client is not installed: tokens and cost are accounted, no metrics recorded")
            metrics = None
        else:
            metrics = metrics_for(registry, options)
        found = _builds[runtime.settings] = (metrics, Bounded(options.max_models, options.allowed_models, True))
    return found


def registry_of(pipeline: Pipeline) -> CollectorRegistry | None:
    """The registry ``pipeline``'s metrics are recorded into (for its ``/metrics``), or ``None`` without them."""
    for policy in pipeline.policies:
        if isinstance(policy, MetricsPolicy):
            return policy.registry
    return None


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"metrics": MetricsOptions}


@hookimpl
def resilient_observers(runtime: Runtime) -> Sequence[Observer]:
    options = runtime.settings.options(MetricsOptions)
    if not options.enabled:
        return ()
    metrics, models = _state(runtime, options)
    return () if metrics is None else (MetricsObserver(metrics, models),)


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    options = runtime.settings.options(MetricsOptions)
    if not options.enabled:
        return ()
    metrics, models = _state(runtime, options)
    policy = MetricsPolicy(options, runtime, metrics)
    policy.models = models
    return (policy,)


def _prices(args: argparse.Namespace) -> int:
    pipeline = Pipeline()
    policy = next((p for p in pipeline.policies if isinstance(p, MetricsPolicy)), None)
    if policy is None:
        print("metrics: no metrics policy in force (disabled)")
        return 1
    table = policy.prices
    header = f"{'model':<28} {'entry':<20} {'input':>8} {'output':>8} {'cache_read':>10} {'cache_write':>11}"
    print(header + "   (USD per million tokens)")
    if args.models:
        rows = [(model, table.match(model)) for model in args.models]
    else:
        rows = [(name, name) for name, _ in table.items()]
    unknown = 0
    for model, entry in rows:
        price = table.lookup(entry)
        if entry is None or price is None:
            unknown += 1
            print(f"{model:<28} {'(none)':<20} cost unknown: add it to [tool.resilient.metrics.prices]")
            continue
        amounts = f"{price.input:>8g} {price.output:>8g} {price.cache_read:>10g} {price.cache_write:>11g}"
        print(f"{model:<28} {entry:<20} {amounts}")
    return 1 if unknown else 0


@hookimpl
def resilient_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    metrics = subparsers.add_parser("metrics", help="metrics and token/cost accounting")
    sub = metrics.add_subparsers(dest="metrics_command", metavar="COMMAND", required=True)
    prices = sub.add_parser("prices", help="the price table in force, or which entry prices the given models")
    prices.add_argument("models", nargs="*", metavar="MODEL", help="model names as the provider reports them")
    prices.set_defaults(func=_prices)
