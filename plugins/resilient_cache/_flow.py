"""What the cache decides on a miss, written once for sync and async calls.

Each function here is a generator: it decides, yields the shared-store
operations it needs (or a :class:`Sleep`) and is sent back their results, or
thrown their errors. The policy's sync driver performs them on the sync
Redis client and sleeps on the clock; the async driver awaits them. Nothing
here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from resilient import (
    CircuitOpen,
    ConcurrencyLimitExceeded,
    DeadlineExceeded,
    Outcome,
    ProviderUnavailable,
    QuotaExceeded,
)

from ._codec import Entry

__all__ = [
    "Lookup",
    "Missed",
    "Op",
    "Put",
    "Release",
    "Sleep",
    "Steps",
    "adrive",
    "drive",
    "stale_reason",
]

S = TypeVar("S")
T = TypeVar("T")

#: Logic that yields steps of type ``S``, is sent their results and returns a ``T``.
Steps = Generator[S, Any, T]


@dataclass(slots=True)
class Lookup:
    """Read an entry; on a miss, take the lease to fill it when ``lease`` (see lua/lookup.lua)."""

    key: str
    now: float
    token: str
    lease_ms: int
    lease: bool


@dataclass(slots=True)
class Put:
    """Store an entry for ``px`` milliseconds, release the lease ``token`` holds, add it to ``tags``."""

    key: str
    raw: bytes
    px: int
    token: str
    tags: tuple[str, ...]


@dataclass(slots=True)
class Release:
    """Give up the lease ``token`` holds, so a waiting worker makes the call."""

    key: str
    token: str


@dataclass(slots=True)
class Sleep:
    """Wait on the clock before looking again."""

    seconds: float


Op = Lookup | Put | Release | Sleep


@dataclass(slots=True)
class Missed:
    """The end of a lookup: a fresh ``entry`` found in the shared store, else the call must be made, with
    ``stale`` (an expired entry still within max_stale) in hand and ``token`` the lease held ('' if none)."""

    entry: Entry | None = None
    stale: Entry | None = None
    token: str = ""


def drive(steps: Steps[S, T], perform: Callable[[S], Any]) -> T:
    """Run ``steps`` to its end, performing each step as it comes."""
    send, throw = steps.send, steps.throw
    try:
        step = send(None)
        while True:
            try:
                result = perform(step)
            except Exception as exc:  # the logic decides what a failed step means
                step = throw(exc)
            else:
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(steps: Steps[S, T], perform: Callable[[S], Awaitable[Any]]) -> T:
    """:func:`drive`, awaiting each step."""
    send, throw = steps.send, steps.throw
    try:
        step = send(None)
        while True:
            try:
                result = await perform(step)
            except Exception as exc:
                step = throw(exc)
            else:
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (QuotaExceeded, "quota_exceeded"),
    (CircuitOpen, "circuit_open"),
    (ProviderUnavailable, "provider_unavailable"),
    (ConcurrencyLimitExceeded, "concurrency_limit"),
    (DeadlineExceeded, "deadline_exceeded"),
)
_PROVIDER_KINDS = frozenset({"rate_limited", "overloaded", "timeout", "connection", "server_error"})


def stale_reason(error: BaseException, classify: Callable[[BaseException], Outcome]) -> str | None:
    """Why a stale entry may answer instead of ``error``, or None when it must not.

    A refusal by a policy (quota, breaker, bulkhead, deadline) or a failure of
    the provider's (rate limit, overload, 5xx, timeout, connection) may be
    answered stale; the caller's own error (another 4xx) or our bug may not.
    """
    for cls, reason in _REFUSALS:
        if isinstance(error, cls):
            return reason
    outcome = classify(error)
    if outcome.provider_fault or outcome.kind in _PROVIDER_KINDS:
        return outcome.kind
    return None
