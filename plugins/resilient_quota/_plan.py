"""Which limits apply to a call, and what it costs: pure, cached per key."""

from __future__ import annotations

from dataclasses import dataclass

import limits

from resilient import Call, Usage
from resilient.providers import estimate_input_tokens, estimate_output_tokens
from resilient.storage import key_part

from ._options import TOKEN_KINDS, QuotaOptions, parse_limits

__all__ = ["Plan", "actual_tokens", "make_plan", "needed_tokens"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The limits for one (provider, model, tenant) and the identifiers they are counted under."""

    options: QuotaOptions
    ids: tuple[str, ...]
    requests: tuple[limits.RateLimitItem, ...]
    tokens: tuple[tuple[str, limits.RateLimitItem, tuple[str, ...]], ...]
    pause_key: str
    label: str
    # (item, storage key, expiry) per request limit: the key limits would format on every hit.
    request_keys: tuple[tuple[limits.RateLimitItem, str, int], ...] = ()
    # Read on every call, so computed once (see make_plan).
    active: bool = True  # the quota has anything to do for this key
    simple: bool = False  # request limits only and no wait mode: the policy's sync fast path
    reports: bool = False  # the remaining of its limits is reported now and then

    @property
    def counts_input(self) -> bool:
        """Whether the input of a call is counted by the provider (when its target can) before admission."""
        return bool(self.tokens) and self.options.input_estimate == "count_tokens"


def make_plan(options: QuotaOptions, provider: str, model: str | None, tenant: str | None) -> Plan:
    parts = {"provider": provider, "model": model, "tenant": tenant}
    # One identifier, not one per part: limits formats every identifier into the key on each hit.
    ids = ("/".join(("quota", *(f"{name}={key_part(parts[name])}" for name in options.key))),)
    tokens = tuple((kind, item, (*ids, kind)) for kind in TOKEN_KINDS for item in parse_limits(getattr(options, kind)))
    label = "/".join(f"{name}={key_part(parts[name])}" for name in options.key) or "global"
    requests = tuple(parse_limits(options.requests))
    return Plan(
        options=options,
        ids=ids,
        requests=requests,
        tokens=tokens,
        pause_key="/".join(("pause", "quota", *(f"{name}={key_part(parts[name])}" for name in options.pause_key))),
        label=label,
        request_keys=tuple((item, item.key_for(*ids), item.get_expiry()) for item in requests),
        active=options.enabled and bool(requests or tokens or options.provider_signals),
        simple=not tokens and not options.wait,
        reports=bool(options.report_remaining) and bool(requests or tokens),
    )


def needed_tokens(plan: Plan, call: Call, counted: int | None = None) -> dict[str, int]:
    """The reservation for a call: input (``counted`` by the provider, else estimated), output cap, their sum."""
    if not plan.tokens:
        return {}
    options = plan.options
    tokens_in = (
        counted if counted is not None else estimate_input_tokens(call.args, call.kwargs, options.chars_per_token)
    )
    tokens_out = estimate_output_tokens(call.kwargs, options.default_max_tokens)
    return {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}


def actual_tokens(usage: Usage) -> dict[str, int]:
    """What a call really used, per token kind; input counts cache reads and writes too."""
    tokens_in = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return {
        "input_tokens": tokens_in,
        "output_tokens": usage.output_tokens,
        "total_tokens": tokens_in + usage.output_tokens,
    }
