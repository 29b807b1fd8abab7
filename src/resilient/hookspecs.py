"""Every hook a resilient plugin can implement.

Hooks run when a pipeline is *built* (and by the CLI), never per provider
call: plugins contribute objects here and the pipeline links them into a
plain chain. A plugin is a module or object with functions marked
``@hookimpl`` and named like the specs below; it is found through the
``resilient`` entry-point group or passed as ``Pipeline(plugins=[...])``.

All hooks are optional. pluggy calls implementations in LIFO registration
order unless they ask for ``tryfirst``/``trylast``; the *policy* order is not
the hook order -- it comes from each policy's ``order`` and the ``order``
setting (see :class:`resilient.policy.Order`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .events import Observer
    from .masking import Detector
    from .policy import Classifier, Policy, Runtime

__all__ = ["hookimpl", "hookspec", "PROJECT"]

PROJECT = "resilient"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def resilient_options() -> Mapping[str, type[Any]]:
    """Declare configuration sections: ``{section name: options dataclass}``.

    Called first, before the configuration is validated. The section's keys
    are the dataclass fields (declare them with :func:`resilient.config.option`);
    the section also accepts ``providers``/``models``/``tenants`` overrides.
    Two plugins claiming one section name is an error.
    """


@hookspec
def resilient_classifiers(runtime: Runtime) -> Sequence[Classifier]:
    """Contribute error classifiers, consulted before the built-in one.

    A classifier takes an exception raised by a provider call and returns an
    :class:`~resilient.call.Outcome`, or ``None`` when it does not recognise it.
    Called once per pipeline build.
    """


@hookspec
def resilient_observers(runtime: Runtime) -> Sequence[Observer]:
    """Contribute observers: callables that receive every :class:`~resilient.events.Event`.

    Called once per pipeline build, before policies are built, so policies
    know whether anyone listens (``runtime.events.enabled``). Observers run
    synchronously on the caller's thread; they must not block, and an
    exception in one is logged and never reaches the provider call.
    """


@hookspec
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    """Contribute policies to the chain.

    Called once per pipeline build with the validated settings, the clock and
    the event emitter. Return :class:`~resilient.policy.Policy` objects (an
    empty sequence when disabled by configuration); the pipeline orders them
    by ``order`` and the ``order`` setting and asks each to wrap every target.
    """


@hookspec
def resilient_mask_detectors() -> Sequence[Detector]:
    """Contribute log-masking detectors (:class:`resilient.masking.Detector`).

    Called when a masker is built from the configuration
    (:func:`resilient.masking.load_masker`); the first-party detectors come
    from this hook too. Each detector can be turned off by name with
    ``[masking] disable``; names must be unique across plugins.
    """


@hookspec
def resilient_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add subcommands to the ``resilient`` CLI (e.g. ``resilient breaker status``).

    Set ``func`` with ``parser.set_defaults(func=...)``; it is called with the
    parsed namespace and returns the exit status.
    """
