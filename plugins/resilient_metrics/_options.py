from __future__ import annotations

import math
import re
from dataclasses import dataclass

from resilient import option

from ._prices import TOKEN_KINDS

__all__ = ["MetricsOptions"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

#: Seconds: a provider call takes from tens of milliseconds (a cache in front) to minutes (long generations).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
#: Seconds: HTTP requests to the app (they wrap provider calls, so the same long tail).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _check_buckets(key: str, buckets: tuple[float, ...]) -> None:
    if not buckets:
        raise ValueError(f"metrics.{key} = [] must list at least one bucket boundary (seconds)")
    if any(not math.isfinite(b) or b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(
            f"metrics.{key} = {list(buckets)!r} must be finite positive seconds in increasing order, without repeats"
        )


@dataclass(frozen=True, kw_only=True)
class MetricsOptions:
    """``[tool.resilient.metrics]``: Prometheus metrics and token/cost accounting.

    Label values stay bounded: models beyond ``allowed_models`` (or beyond
    the first ``max_models`` seen) are reported as ``other``; tenants are
    never a label unless ``tenant_labels`` is on, and then only those in
    ``allowed_tenants`` (the rest are ``other``). Prices are USD per million
    tokens, per model and token kind (``input``, ``output``, ``cache_read``,
    ``cache_write``), on top of the built-in table (see
    ``docs/plugins/metrics.md``; check them against your provider's price page).
    """

    enabled: bool = option(True, doc="Record metrics and account tokens and cost.")
    namespace: str = option("resilient", doc="Prefix of every metric name (resilient_calls_total, ...).")
    buckets: tuple[float, ...] = option(CALL_BUCKETS, doc="Histogram bucket bounds (seconds) for call latency.")
    http_buckets: tuple[float, ...] = option(
        HTTP_BUCKETS, doc="Histogram bucket bounds (seconds) for HTTP request latency (adapters)."
    )
    allowed_models: tuple[str, ...] = option(
        (), doc="Models reported by name (date suffixes ignored); others are 'other'. Empty: the first max_models."
    )
    max_models: int = option(
        50, min=1, max=10_000, doc="With no allowed_models, how many distinct models get a label before 'other'."
    )
    tenant_labels: bool = option(False, doc="Add a tenant label to calls, tokens and cost (needs allowed_tenants).")
    allowed_tenants: tuple[str, ...] = option(
        (), doc="Tenants reported by name when tenant_labels is on; others 'other'."
    )
    default_prices: bool = option(True, doc="Start from the built-in price table (Claude and OpenAI models).")
    prices: dict[str, dict[str, float]] = option(
        default_factory=dict,
        doc="USD per million tokens: {model = {input, output, cache_read, cache_write}}; over the built-in table.",
    )

    def __post_init__(self) -> None:
        if not _NAME.match(self.namespace):
            raise ValueError(
                f"metrics.namespace = {self.namespace!r} must be a Prometheus name: "
                "letters, digits, '_' and ':', not starting with a digit"
            )
        _check_buckets("buckets", self.buckets)
        _check_buckets("http_buckets", self.http_buckets)
        if self.tenant_labels and not self.allowed_tenants:
            raise ValueError(
                "metrics.tenant_labels = true needs metrics.allowed_tenants: tenant ids are unbounded, "
                "so only listed tenants may become label values"
            )
        for model, row in self.prices.items():
            for kind, value in row.items():
                if kind not in TOKEN_KINDS:
                    raise ValueError(
                        f"metrics.prices.{model}.{kind} = {value!r}: unknown token kind; "
                        f"allowed: {', '.join(TOKEN_KINDS)}"
                    )
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"metrics.prices.{model}.{kind} = {value!r} must be a finite number >= 0")
            for kind in ("input", "output"):
                if kind not in row:
                    raise ValueError(
                        f"metrics.prices.{model} = {row!r} needs '{kind}' (USD per million tokens); "
                        "cache_read and cache_write default to the input price"
                    )
