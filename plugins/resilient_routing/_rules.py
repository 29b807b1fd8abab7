"""Routing rules, pure: parsed and checked once, matched per call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from resilient import ConfigurationError

from ._options import CONDITIONS

__all__ = ["Facts", "Rule", "parse_rules"]


@dataclass(frozen=True, slots=True)
class Facts:
    """What rules test about a call."""

    provider: str
    operation: str
    tenant: str | None
    model: str | None
    input_tokens: int | None


@dataclass(frozen=True, slots=True)
class Rule:
    model: str
    max_input_tokens: int | None = None
    min_input_tokens: int | None = None
    operation: str | None = None
    tenant: str | None = None
    provider: str | None = None
    from_model: str | None = None

    @property
    def needs_tokens(self) -> bool:
        return self.max_input_tokens is not None or self.min_input_tokens is not None

    def matches(self, facts: Facts) -> bool:
        tokens = facts.input_tokens
        if self.max_input_tokens is not None and (tokens is None or tokens > self.max_input_tokens):
            return False
        if self.min_input_tokens is not None and (tokens is None or tokens < self.min_input_tokens):
            return False
        return (
            (self.operation is None or self.operation == facts.operation)
            and (self.tenant is None or self.tenant == facts.tenant)
            and (self.provider is None or self.provider == facts.provider)
            and (self.from_model is None or self.from_model == facts.model)
        )


_INTS = ("max_input_tokens", "min_input_tokens")


def parse_rules(raw: Sequence[Mapping[str, str | int]], key: str) -> tuple[Rule, ...]:
    """The rules of a configuration; an error names the rule, the value and what is allowed."""
    rules: list[Rule] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        unknown = sorted(set(item) - {*CONDITIONS, "model"})
        if unknown:
            raise ConfigurationError(
                where, dict(item), f"unknown condition {', '.join(unknown)}; known: {', '.join(CONDITIONS)}, model"
            )
        model = item.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigurationError(where, dict(item), "needs model = '<the model to use>'")
        values: dict[str, str | int] = {}
        for name, value in item.items():
            if name == "model":
                continue
            if name in _INTS:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigurationError(f"{where}.{name}", value, "must be an integer >= 0")
            elif not isinstance(value, str):
                raise ConfigurationError(f"{where}.{name}", value, "must be a string")
            values[name] = value
        rules.append(Rule(model=model, **values))  # type: ignore[arg-type]
    return tuple(rules)
