"""Prometheus exposition for any app, single- or multi-process.

The metrics plugin records into a ``prometheus_client`` registry; this module
turns a registry into the bytes a ``/metrics`` endpoint answers with. The
HTTP adapters use it, and so can any app::

    from resilient.prometheus import exposition

    def metrics_view(request):
        body, content_type = exposition(accept_header=request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

Multiprocess mode (gunicorn or uvicorn with several workers): set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start;
each worker writes its values there and :func:`exposition` merges every
worker's files, whichever worker answers the scrape. Call
:func:`mark_process_dead` from gunicorn's ``child_exit`` hook so the live
gauges (requests in progress, breaker state) forget a dead worker.

``prometheus_client`` is imported when a function is called, not with this
module: it is an optional dependency (``resilient[prometheus]``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["exposition", "mark_process_dead", "multiprocess_dir"]

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess directory in force (``PROMETHEUS_MULTIPROC_DIR``), or ``None``."""
    return os.environ.get(_ENV) or os.environ.get(_ENV.lower()) or None


def _client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the test environment has it
        raise ImportError("resilient.prometheus needs prometheus-client: pip install 'resilient[prometheus]'") from exc


def exposition(registry: CollectorRegistry | None = None, accept_header: str | None = None) -> tuple[bytes, str]:
    """The body and content type of a scrape of ``registry``.

    With no ``registry``: in multiprocess mode, every worker's values merged
    from the multiprocess directory; otherwise prometheus_client's default
    registry. ``accept_header`` picks the format: OpenMetrics when the scraper
    asks for it, the Prometheus text format otherwise.
    """
    _client()
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    if registry is None:
        path = multiprocess_dir()
        if path is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(registry), content_type


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Forget the live gauges of a dead worker (for gunicorn's ``child_exit``). No-op outside multiprocess mode."""
    path = path or multiprocess_dir()
    if path is None:
        return
    _client()
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
