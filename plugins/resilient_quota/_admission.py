"""Admission and settlement of a call, written once for sync and async calls.

Each function here is a generator: it decides, yields the store operations
it needs (:mod:`._store`) or a :class:`Sleep`, and is sent back their
results, or thrown their errors. :meth:`QuotaState.run` performs them on the
sync limiters and sleeps on the clock; :meth:`QuotaState.arun` awaits them on
the async limiters. Nothing here touches a store or sleeps.

Per call: the shared pause of the key (a provider said stop), one hit per
request limit, then one hit per token limit with the call's estimate as cost.
After the call the token reservation is moved to the real usage. On a store
that can (Redis, see ._batch) the pause read and every hit go in one round
trip, and the moves in two; the decisions and the counts left in the store
are the same as one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import limits

from resilient import Call
from resilient.storage import STORE_ERRORS

from ._batch import Batch, BatchHit, Release, Settle
from ._options import QuotaOptions
from ._plan import Plan, needed_tokens
from ._steps import Steps
from ._store import Adjust, Hit, PauseGet, PauseSet, StoreOp, Test, WindowStats

if TYPE_CHECKING:
    from ._policy import QuotaState

__all__ = [
    "Count",
    "Held",
    "Op",
    "Ops",
    "Refusal",
    "Sleep",
    "admission",
    "attempt",
    "label",
    "remaining",
    "request_refusal",
    "settlement",
    "share_pause",
]

T = TypeVar("T")


@dataclass(slots=True)  # an operation, made like the store's (see ._store)
class Sleep:
    """Wait ``seconds`` on the clock (wait mode) before trying again."""

    seconds: float


@dataclass(slots=True)
class Count:
    """Ask the provider how many input tokens ``call`` holds (its target's ``count_tokens``)."""

    call: Call


Op = StoreOp | Sleep | Count
#: Quota logic: yields operations, is sent their results, returns a ``T``.
Ops = Steps[Op, T]


@dataclass(slots=True)
class Held:
    """One token reservation: what to move when the real usage is known."""

    kind: str
    item: limits.RateLimitItem
    ids: tuple[str, ...]
    cost: int
    local: bool
    at: float  # wall time of the reservation: a refund never crosses into a later window


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str
    retry_after: float | None


# Waking exactly at a window's reset can still find the old entry counted
# (the boundary is inclusive, and floats at epoch scale round): come back a
# little after it, and never spin on a zero wait.
_RESET_MARGIN = 0.01


def _retry_after(reset: float, now: float) -> float:
    return max(reset - now, 0.0) + _RESET_MARGIN


def label(kind: str, item: limits.RateLimitItem) -> str:
    return f"{kind} {item}"


def request_refusal(
    state: QuotaState, options: QuotaOptions, item: limits.RateLimitItem, ids: tuple[str, ...], local: bool
) -> Ops[Refusal]:
    stats = yield WindowStats(options.strategy, item, ids, local)
    return Refusal(label("requests", item), _retry_after(stats.reset_time, state.wall()))


def _token_refusal(
    state: QuotaState, options: QuotaOptions, item: limits.RateLimitItem, ids: tuple[str, ...], kind: str, local: bool
) -> Ops[Refusal]:
    now = state.wall()
    if options.token_strategy == "fixed-window":
        wait = (yield WindowStats(options.token_strategy, item, ids, local)).reset_time - now
    else:
        # A sliding window frees tokens gradually; the current window's end is when
        # the previous one stops weighing on it (limits' reset_time is for one unit).
        period = item.get_expiry()
        wait = period - (now % period)
    return Refusal(label(kind, item), _retry_after(now + wait, now))


def _needed(state: QuotaState, call: Call, plan: Plan, memo: dict[str, int]) -> Ops[dict[str, int]]:
    """The call's reservation, counted once per admission (``memo``): by the provider when configured."""
    if memo or not plan.tokens:
        return memo
    counted: int | None = None
    if plan.counts_input and call.target.count_tokens is not None:
        try:
            counted = yield Count(call)
        except Exception as exc:  # the count is an estimate: a failing one falls back to the heuristic
            state.count_failed(exc)
    memo.update(needed_tokens(plan, call, counted))
    return memo


def attempt(
    state: QuotaState, call: Call, plan: Plan, local: bool, memo: dict[str, int] | None = None
) -> Ops[tuple[Refusal | None, list[Held]]]:
    """One pass: a refusal, or the token reservations taken (store errors propagate)."""
    options = plan.options
    batches = state.batches and not local and not options.wait
    read_pause = False
    now = 0.0
    if options.provider_signals:
        # The key's shared pause, read from the store at most once per signal_poll.
        now = state.clock.monotonic()
        paused, stale = state.cached_pause(plan, now)
        if stale and batches and not plan.counts_input:
            read_pause = True  # with the hits, in their round trip
        elif stale:
            paused = yield PauseGet(plan.pause_key, local)
            state.remember_pause(plan, paused, now)
        if paused > 0:
            return Refusal(_PAUSED, paused), []
    needed = yield from _needed(state, call, plan, {} if memo is None else memo)
    if batches and (read_pause or len(plan.requests) + len(plan.tokens) > 1):
        if all(needed[kind] <= item.amount for kind, item, _ in plan.tokens):
            return (yield from _batched(state, plan, needed, read_pause, now))
        if read_pause:  # a call too big for a limit is refused as one by one would, after the pause
            paused = yield PauseGet(plan.pause_key, local)
            state.remember_pause(plan, paused, now)
            if paused > 0:
                return Refusal(_PAUSED, paused), []
    if options.wait:
        # Look before taking: a call that will wait must not spend a hit on every pass.
        for item in plan.requests:
            if not (yield Test(options.strategy, item, plan.ids, local)):
                return (yield from request_refusal(state, options, item, plan.ids, local)), []
        for kind, item, ids in plan.tokens:
            if needed[kind] and not (yield Test(options.token_strategy, item, ids, local, needed[kind])):
                return (yield from _token_refusal(state, options, item, ids, kind, local)), []
    for item in plan.requests:
        if not (yield Hit(options.strategy, item, plan.ids, local)):
            return (yield from request_refusal(state, options, item, plan.ids, local)), []
    held: list[Held] = []
    try:
        for kind, item, ids in plan.tokens:
            cost = needed[kind]
            if cost > item.amount:
                yield from settlement(state, plan, held, None)
                return Refusal(f"{label(kind, item)} (the call alone needs {cost})", None), []
            if cost and not (yield Hit(options.token_strategy, item, ids, local, cost)):
                if options.token_strategy == "fixed-window":
                    # limits' fixed window keeps a refused hit counted: give it back.
                    yield Adjust("fixed-window", item, ids, -cost, local, None)
                yield from settlement(state, plan, held, None)
                return (yield from _token_refusal(state, options, item, ids, kind, local)), []
            # Held even at cost 0: the real usage is recorded when the call settles.
            held.append(Held(kind, item, ids, cost, local, state.wall()))
    except BaseException:
        yield from settlement(state, plan, held, None)  # interrupted half-way: release what was taken
        raise
    return None, held


_PAUSED = "provider asked to slow down"


def _batched(
    state: QuotaState, plan: Plan, needed: dict[str, int], read_pause: bool, now: float
) -> Ops[tuple[Refusal | None, list[Held]]]:
    """:func:`attempt`'s pause read and hits in one round trip (a Redis store, see ._batch).

    Every limit is hit at once, so a refusal finds later limits counted too;
    what they counted is given back, leaving the store as hitting the limits
    in order would have: the request limits before the refusing one keep
    their hit, and so does a refusing fixed window (limits counts it), as
    in :func:`attempt`; a refused call holds no tokens.
    """
    options = plan.options
    hits = [BatchHit(options.strategy, item, plan.ids, 1) for item in plan.requests]
    token_hits = [(kind, item, ids, needed[kind]) for kind, item, ids in plan.tokens]
    hits += [BatchHit(options.token_strategy, item, ids, cost) for _, item, ids, cost in token_hits if cost]
    paused, results = yield Batch(plan.pause_key if read_pause else None, tuple(hits))
    if paused is not None:
        state.remember_pause(plan, paused, now)
    refusal: Refusal | None = None
    keep = 0  # hits before this index stay counted
    if paused:
        refusal = Refusal(_PAUSED, paused)
    else:
        for i, (allowed, _) in enumerate(results):
            if not allowed:
                hit = hits[i]
                if i < len(plan.requests):
                    refusal = yield from request_refusal(state, options, hit.item, plan.ids, False)
                    keep = i + 1 if hit.strategy == "fixed-window" else i
                else:
                    kind = next(k for k, item, ids, _ in token_hits if item is hit.item and ids is hit.ids)
                    refusal = yield from _token_refusal(state, options, hit.item, hit.ids, kind, False)
                    keep = len(plan.requests)
                break
    if refusal is None:
        at = state.wall()
        return None, [Held(kind, item, ids, cost, False, at) for kind, item, ids, cost in token_hits]
    try:
        for hit, (allowed, stamp) in list(zip(hits, results, strict=True))[keep:]:
            if hit.strategy == "fixed-window":
                yield Adjust("fixed-window", hit.item, hit.ids, -hit.cost, False, None)
            elif not allowed:
                continue  # moving and sliding windows count only what they allow
            elif hit.strategy == "moving-window":
                yield Release(hit.item, hit.ids, hit.cost, stamp)
            else:
                yield Adjust(hit.strategy, hit.item, hit.ids, -hit.cost, False, None)
    except STORE_ERRORS as exc:  # the refusal stands; what could not be given back expires with its window
        state.store_failed(plan, exc)
    return refusal, []


def admission(state: QuotaState, call: Call, plan: Plan, failed: bool = False) -> Ops[list[Held]]:
    """Admit ``call`` (its token reservations) or raise ``QuotaExceeded``; ``failed``: the store just failed."""
    options = plan.options
    waited_until: float | None = None
    memo: dict[str, int] = {}  # the reservation, counted on the first pass that gets that far
    while True:
        # Once the store failed in this call, it is never asked again here.
        local = failed or state.store_down()
        if local and options.on_store_error != "local":
            # The store is down and the fallback is not to count locally.
            if options.on_store_error == "open":
                return []
            raise state.refuse(call, Refusal("quota store unavailable", options.store_retry))
        try:
            refusal, held = yield from attempt(state, call, plan, local, memo)
        except STORE_ERRORS as exc:
            state.store_failed(plan, exc)
            failed = True
            continue  # decided at the top of the loop, now that the store is known down
        if refusal is None:
            if state.report_due(plan):
                yield from remaining(state, call, plan, local)
            return held
        if options.wait and refusal.retry_after is not None:
            now = state.clock.monotonic()
            waited_until = waited_until if waited_until is not None else now + options.max_wait
            if now + refusal.retry_after <= waited_until:
                yield Sleep(refusal.retry_after)
                continue
        if state.report_due(plan):
            yield from remaining(state, call, plan, local)
        raise state.refuse(call, refusal)


def settlement(state: QuotaState, plan: Plan, held: list[Held], actual: dict[str, int] | None) -> Ops[None]:
    """Move each reservation to the real usage (``None``: refund it all)."""
    moves: list[Adjust | Settle] = [
        Adjust(plan.options.token_strategy, h.item, h.ids, delta, h.local, h.at)
        for h in held
        if (delta := (actual[h.kind] if actual is not None else 0) - h.cost)
    ]
    if state.batches and moves and not any(move.local for move in moves):
        moves = [Settle(tuple(moves))]  # all of them in two round trips
    for move in moves:
        try:
            yield move
        except STORE_ERRORS as exc:  # a failing store never fails the call
            state.store_failed(plan, exc)


def share_pause(state: QuotaState, call: Call, seconds: float | None) -> Ops[None]:
    """Pause the call's key for the fleet, through the store (``None``: no pause to share)."""
    if seconds is None:
        return
    plan = state.plan(call)
    if plan is None:
        return
    try:
        yield PauseSet(plan.pause_key, seconds, state.store_down())
    except STORE_ERRORS as exc:  # a failing store never fails the call
        state.store_failed(plan, exc)


def remaining(state: QuotaState, call: Call, plan: Plan, local: bool) -> Ops[None]:
    """Read what is left of each limit of the call's key and tell the observers (metrics, /ready)."""
    options = plan.options
    now = state.wall()
    rows = [(label("requests", item), options.strategy, item, plan.ids) for item in plan.requests]
    rows += [(label(kind, item), options.token_strategy, item, ids) for kind, item, ids in plan.tokens]
    try:
        for name, strategy, item, ids in rows:
            stats = yield WindowStats(strategy, item, ids, local)
            state.report(call, name, stats.remaining, max(stats.reset_time - now, 0.0))
    except STORE_ERRORS as exc:  # a report never fails the call it follows
        state.store_failed(plan, exc)
