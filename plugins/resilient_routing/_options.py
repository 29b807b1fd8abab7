from __future__ import annotations

from dataclasses import dataclass

from resilient import option

__all__ = ["CONDITIONS", "RoutingOptions"]

#: What a rule may test; every condition of a rule must hold.
CONDITIONS = ("max_input_tokens", "min_input_tokens", "operation", "tenant", "provider", "from_model")


@dataclass(frozen=True, kw_only=True)
class RoutingOptions:
    """``[tool.resilient.routing]``: pick the model of a call before it is made.

    A routing function (registered, or ``"module:function"``) is asked first;
    when it answers ``None``, the first rule whose conditions all hold names
    the model; when none does, the call keeps its model.
    """

    enabled: bool = option(True, doc="Route at all.")
    function: str = option(
        "",
        doc="A function (call) -> model or None: a name given to resilient_routing.register(), or 'module:function'.",
    )
    rules: tuple[dict[str, str | int], ...] = option(
        default_factory=tuple,
        doc=f"Rules tried in order: conditions ({', '.join(CONDITIONS)}) and the model to use.",
    )
    chars_per_token: float = option(4.0, min=0.5, doc="Characters per token when estimating a request's input tokens.")
