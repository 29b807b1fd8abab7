"""The routing policy: the model of a call chosen before it is made, by a function or by rules."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from resilient import (
    AsyncHandler,
    AsyncStreamHandler,
    Call,
    ConfigurationError,
    Handler,
    Order,
    Policy,
    Runtime,
    Section,
    StreamHandler,
    Target,
)
from resilient.providers import estimate_input_tokens

from ._events import RoutingDecided
from ._options import RoutingOptions
from ._rules import Facts, Rule, parse_rules

__all__ = ["ROUTE", "Router", "RoutingPolicy", "register"]

_log = logging.getLogger("resilient.routing")

#: ``call.metadata`` key of the decision: ``{"from": model asked, "to": model used, "rule": ...}``.
ROUTE = "route"
#: Set by the fallback plugin while a fallback step runs: its model is not routed again.
_FALLBACK_STEP = "fallback_step"

#: A routing function: the model to use for the call, or None to leave it to the rules.
Router = Callable[[Call], "str | None"]
_REGISTRY: dict[str, Router] = {}

Plan = tuple[Router | None, tuple[Rule, ...], bool]


def register(name: str, fn: Router) -> None:
    """Make ``fn`` usable as ``function = "<name>"`` in ``[tool.resilient.routing]``."""
    _REGISTRY[name] = fn


def _load(spec: str, registry: Mapping[str, Router]) -> Router:
    found = registry.get(spec)
    if found is not None:
        return found
    module_name, sep, attr = spec.partition(":")
    if not sep:
        known = ", ".join(sorted(registry)) or "(none)"
        raise ConfigurationError(
            "routing.function",
            spec,
            f"no router registered under this name (resilient_routing.register); known: {known}",
        )
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError("routing.function", spec, f"cannot be imported ({type(exc).__name__})") from None
    if not callable(fn):
        raise ConfigurationError("routing.function", spec, "does not name a callable")
    return fn  # type: ignore[no-any-return]


class RoutingPolicy(Policy):
    """Rewrites ``call.kwargs["model"]`` before the call: the function's answer, else the first matching rule.

    A call already in a fallback step keeps the fallback's model. A target
    whose model is fixed by the guard (``guard(model=...)``) is not routed: its
    model is not the call's to change. A routing function that raises is
    logged and the call keeps its model.
    """

    name = "routing"
    order = Order.ROUTING

    def __init__(self, section: Section[RoutingOptions], runtime: Runtime, *, router: Router | None = None) -> None:
        self._section = section
        self._varies = section.varies
        self._events = runtime.events
        self._router = router
        self._registry = dict(_REGISTRY)
        self._plans: dict[int, tuple[RoutingOptions, Plan | None]] = {}
        self._base_plan = self._plan_of(section.base, "routing")
        raw: dict[str, dict[str, Any]] = getattr(section, "_overrides", {})
        for kind in ("providers", "models", "tenants"):
            for name in raw.get(kind, {}):
                args: dict[str, str | None] = {"provider": None, "model": None, "tenant": None, kind[:-1]: name}
                self._plan_of(
                    section.for_call(args["provider"], args["model"], args["tenant"]), f"routing.{kind}.{name}"
                )

    def _plan_of(self, options: RoutingOptions, key: str) -> Plan | None:
        found = self._plans.get(id(options))
        if found is not None and found[0] is options:
            return found[1]
        plan: Plan | None = None
        if options.enabled:
            fn = self._router or (_load(options.function, self._registry) if options.function else None)
            rules = parse_rules(options.rules, f"{key}.rules")
            if fn is not None or rules:
                plan = (fn, rules, any(r.needs_tokens for r in rules))
        if len(self._plans) < 10_000:
            self._plans[id(options)] = (options, plan)
        return plan

    def _options(self, call: Call) -> RoutingOptions:
        return self._section.for_call(call.provider, call.model, call.tenant) if self._varies else self._section.base

    def _route(self, call: Call) -> None:
        meta = call._metadata
        if meta is not None and _FALLBACK_STEP in meta:
            return
        options = self._options(call)
        plan = self._base_plan if not self._varies else self._plan_of(options, "routing")
        if plan is None:
            return
        fn, rules, needs_tokens = plan
        asked = call.model
        chosen: str | None = None
        rule = "default"
        if fn is not None:
            try:
                chosen = fn(call)
            except Exception:
                _log.exception("routing function %r failed; the call keeps model %r", fn, asked)
            else:
                rule = "function" if chosen is not None else rule
        tokens: int | None = None
        if chosen is None and rules:
            if needs_tokens:
                tokens = estimate_input_tokens(call.args, call.kwargs, options.chars_per_token)
            facts = Facts(call.provider, call.operation, call.tenant, asked, tokens)
            for index, candidate in enumerate(rules):
                if candidate.matches(facts):
                    chosen, rule = candidate.model, f"rule:{index}"
                    break
        used = chosen if chosen is not None else asked
        if chosen is not None and chosen != asked:
            call.kwargs = {**call.kwargs, "model": chosen}
        call.metadata[ROUTE] = {"from": asked, "to": used, "rule": rule}
        if self._events.enabled:
            self._events.emit(
                RoutingDecided(
                    from_model=asked,
                    to_model=used,
                    rule=rule,
                    input_tokens=tokens,
                    provider=call.provider,
                    operation=call.operation,
                    model=used,
                )
            )

    def _stays_out(self, target: Target) -> bool:
        return target.model is not None or (not self._varies and self._base_plan is None)

    # Routing only rewrites the call before passing it on: each driver returns what ``nxt`` returns.
    def wrap(self, nxt: Handler, target: Target) -> Handler:
        if self._stays_out(target):
            return nxt
        route = self._route

        def routed(call: Call) -> Any:
            route(call)
            return nxt(call)

        return routed

    def wrap_async(self, nxt: AsyncHandler, target: Target) -> AsyncHandler:
        return self.wrap(nxt, target)

    def wrap_stream(self, nxt: StreamHandler, target: Target) -> StreamHandler:
        return self.wrap(nxt, target)

    def wrap_astream(self, nxt: AsyncStreamHandler, target: Target) -> AsyncStreamHandler:
        return self.wrap(nxt, target)
