from __future__ import annotations

from dataclasses import dataclass

from resilient import Duration, option

__all__ = ["TimeoutOptions"]


@dataclass(frozen=True, kw_only=True)
class TimeoutOptions:
    """``[tool.resilient.timeout]``: how long an attempt, a stream and the whole call may take.

    ``timeout`` bounds each attempt (inside retry: every retry gets its own);
    ``deadline`` bounds the whole call, retries and waits included, and is the
    one deadline the retry plugin and the bulkhead read. Streams are bounded
    by ``first_chunk_timeout`` and ``idle_timeout`` instead of ``timeout``.
    """

    enabled: bool = option(True, doc="Apply timeouts at all.")
    timeout: Duration | None = option(None, min=0.001, doc="Per-attempt limit, in seconds; none for no limit.")
    deadline: Duration | None = option(
        None, min=0.001, doc="Overall limit of a call, retries, backoff and queueing included, in seconds."
    )
    first_chunk_timeout: Duration | None = option(
        None, min=0.001, doc="A stream must produce its first chunk within this many seconds."
    )
    idle_timeout: Duration | None = option(
        None, min=0.001, doc="A stream may be silent at most this long between two chunks, in seconds."
    )
    pass_timeout: bool = option(
        False,
        doc="Pass the limit to the called function as a keyword argument (anthropic, openai, httpx accept "
        "`timeout=`); the only way to bound a sync call. Clients wrapped with `pipeline.wrap` always get it.",
    )
    timeout_kwarg: str = option("timeout", doc="Name of the keyword argument `pass_timeout` sets.")
