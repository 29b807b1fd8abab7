"""Prices per model and token kind, and what a call's usage cost (pure; no I/O).

Prices are USD per million tokens. Model names are matched exactly, then
without a date suffix (``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``,
``gpt-4o-2024-08-06`` -> ``gpt-4o``), then by the longest table entry the name
starts with followed by ``-`` (``claude-3-5-haiku-latest`` -> ``claude-3-5-haiku``).
A model that matches nothing has no price: its cost is unknown, never zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from resilient import Usage

__all__ = ["DEFAULT_PRICES", "TOKEN_KINDS", "Price", "PriceTable", "base_model"]

TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_read: float
    cache_write: float

    def cost(self, usage: Usage) -> float:
        """USD for ``usage``."""
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
        ) / 1_000_000


def _anthropic(input_: float, output: float) -> Price:
    # Prompt caching: a 5-minute cache write costs 1.25x input, a cache read 0.1x.
    return Price(input_, output, round(input_ * 0.1, 6), round(input_ * 1.25, 6))


def _openai(input_: float, output: float, cached: float) -> Price:
    # No charge for writing the cache; cached input is discounted.
    return Price(input_, output, cached, input_)


#: Built-in prices (USD per million tokens) as published by the providers in 2025.
#: Check them against the provider's price page; override in ``[tool.resilient.metrics.prices]``.
DEFAULT_PRICES: Mapping[str, Price] = {
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-5-haiku": _anthropic(0.8, 4.0),
    "claude-3-haiku": _anthropic(0.25, 1.25),
    "gpt-4o": _openai(2.5, 10.0, 1.25),
    "gpt-4o-mini": _openai(0.15, 0.6, 0.075),
    "gpt-4.1": _openai(2.0, 8.0, 0.5),
    "gpt-4.1-mini": _openai(0.4, 1.6, 0.1),
    "gpt-4.1-nano": _openai(0.1, 0.4, 0.025),
}

_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


def base_model(model: str) -> str:
    """``model`` without a trailing release date (``-20250929``, ``-2024-08-06``)."""
    return _DATE_SUFFIX.sub("", model)


class PriceTable:
    """The built-in prices (unless turned off) with the configured ones over them."""

    __slots__ = ("_cache", "_prices")

    def __init__(self, overrides: Mapping[str, Mapping[str, float]], defaults: bool = True) -> None:
        prices: dict[str, Price] = dict(DEFAULT_PRICES) if defaults else {}
        for model, row in overrides.items():
            input_ = float(row["input"])
            prices[model] = Price(
                input_,
                float(row["output"]),
                float(row.get("cache_read", input_)),
                float(row.get("cache_write", input_)),
            )
        self._prices = prices
        self._cache: dict[str, Price | None] = {}

    def __contains__(self, model: str) -> bool:
        return model in self._prices

    def items(self) -> list[tuple[str, Price]]:
        """Every entry, by model name."""
        return sorted(self._prices.items())

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model``, or ``None`` when the table has none for it."""
        if model is None:
            return None
        try:
            return self._cache[model]
        except KeyError:
            pass
        name = self.match(model)
        found = self._prices[name] if name is not None else None
        if len(self._cache) < 4096:
            self._cache[model] = found
        return found

    def match(self, model: str) -> str | None:
        """The table entry that prices ``model``: itself, without its date, or the longest prefix."""
        prices = self._prices
        if model in prices:
            return model
        base = base_model(model)
        if base in prices:
            return base
        return max((name for name in prices if base.startswith(name + "-")), key=len, default=None)
