from __future__ import annotations

from dataclasses import dataclass

from resilient import option

__all__ = ["AuditOptions"]


@dataclass(frozen=True, kw_only=True)
class AuditOptions:
    """``[tool.resilient.audit]``: one JSON line per provider call, appended to a file.

    Off until ``path`` is set. Each line holds the time, request id, tenant,
    provider, operation, model, outcome, attempts, duration, tokens, cost and
    the decisions policies recorded (cache, quota, breaker, route, fallback),
    masked with the ``[masking]`` configuration. Prompt and response text are
    written only when ``include_prompts`` / ``include_responses`` say so (and
    are masked and cut to ``max_text_chars`` then). Lines are queued and
    written by a background thread; when ``queue_size`` lines are waiting, new
    ones are dropped and counted (``dropped`` in the policy's health).
    """

    path: str = option("", doc="File the lines are appended to; empty: no audit log.")
    include_prompts: bool = option(False, doc="Write the request's messages/prompt (masked).")
    include_responses: bool = option(False, doc="Write the response text of non-streamed calls (masked).")
    max_text_chars: int = option(4096, min=0, doc="Prompt and response text longer than this is cut.")
    queue_size: int = option(10_000, min=1, doc="Lines waiting to be written before new ones are dropped.")
    file_mode: int = option(0o600, min=0, max=0o777, doc="Permissions of a newly created audit file.")
