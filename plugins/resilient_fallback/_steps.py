"""Fallback steps and triggers, decided in pure code: what a configuration means, and whether an error moves on."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from resilient import (
    CircuitOpen,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    DeadlineExceeded,
    Outcome,
    ProviderUnavailable,
    QuotaExceeded,
)

from ._options import TRIGGERS, FallbackOptions

__all__ = ["Fallback", "Step", "Triggers", "parse_steps", "reason_for"]

#: A fallback callable: given the call and the error that led to it, the answer (or an awaitable, for async calls).
Fallback = Callable[[Any, BaseException], Any]

_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (QuotaExceeded, "quota_exceeded"),
    (CircuitOpen, "circuit_open"),
    (ProviderUnavailable, "provider_unavailable"),
    (ConcurrencyLimitExceeded, "concurrency_limit"),
    (DeadlineExceeded, "deadline_exceeded"),
)
#: 4xx statuses a fallback may act on: the others are the caller's own bad request, never hidden.
_MOVABLE_4XX = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class Step:
    """One step: a model to rewrite the call to, or a function to call."""

    kind: Literal["model", "call"]
    value: str
    fn: Fallback | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class Triggers:
    """What moves a call on: outcome names, extra statuses, exception classes."""

    names: frozenset[str]
    statuses: frozenset[int]
    exceptions: tuple[type[BaseException], ...]


def _import(spec: str, key: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(key, spec, "must be 'module:name'")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(key, spec, f"cannot be imported ({type(exc).__name__}: {exc})") from None
    return found


def parse_steps(raw: Sequence[Mapping[str, str]], registry: Mapping[str, Fallback], key: str) -> tuple[Step, ...]:
    """The steps of a configuration, each checked: one of ``model`` / ``call``, a known function."""
    steps: list[Step] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if len(item) != 1 or next(iter(item)) not in ("model", "call"):
            hint = (
                "; stale answers come from the cache plugin's max_stale, which answers before any fallback step"
                if "stale_cache" in item
                else ""
            )
            raise ConfigurationError(where, dict(item), "must be {model = '...'} or {call = '...'}" + hint)
        kind, value = next(iter(item.items()))
        if not isinstance(value, str) or not value:
            raise ConfigurationError(where, dict(item), f"{kind} must be a non-empty string")
        if kind == "model":
            steps.append(Step("model", value))
            continue
        fn = registry.get(value)
        if fn is None:
            if ":" not in value:
                known = ", ".join(sorted(registry)) or "(none)"
                raise ConfigurationError(
                    where,
                    dict(item),
                    f"no fallback registered as {value!r} (resilient_fallback.register); known: {known}",
                )
            fn = _import(value, where)
        if not callable(fn):
            raise ConfigurationError(where, dict(item), "does not name a callable")
        steps.append(Step("call", value, fn))
    return tuple(steps)


def parse_triggers(options: FallbackOptions, key: str) -> Triggers:
    unknown = [name for name in options.on if name not in TRIGGERS]
    if unknown:
        raise ConfigurationError(f"{key}.on", list(options.on), f"each must be one of: {', '.join(TRIGGERS)}")
    for status in options.on_status:
        if not (status in _MOVABLE_4XX or 500 <= status <= 599):
            raise ConfigurationError(
                f"{key}.on_status",
                list(options.on_status),
                "must be 408, 409, 429 or 5xx: a fallback never hides the caller's own 4xx",
            )
    exceptions: list[type[BaseException]] = []
    for spec in options.on_exceptions:
        cls = _import(spec, f"{key}.on_exceptions")
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(f"{key}.on_exceptions", spec, "must name an exception class")
        exceptions.append(cls)
    return Triggers(frozenset(options.on), frozenset(options.on_status), tuple(exceptions))


def reason_for(error: BaseException, triggers: Triggers, classify: Callable[[BaseException], Outcome]) -> str | None:
    """Why ``error`` moves the call to the next step (a trigger name, ``status:<code>``, the class), or None.

    A 4xx from the caller's own request (400, 401, 403, 404, 413, 422, ...)
    never moves on, whatever is configured: a fallback must not hide it.
    """
    for cls, name in _REFUSALS:
        if isinstance(error, cls):
            return name if name in triggers.names else None
    outcome = classify(error)
    if outcome.kind == "client_error" and outcome.status not in _MOVABLE_4XX:
        return None
    if outcome.kind in triggers.names:
        return outcome.kind
    if outcome.status is not None and outcome.status in triggers.statuses:
        return f"status:{outcome.status}"
    if triggers.exceptions and isinstance(error, triggers.exceptions):
        return type(error).__name__
    return None
