"""The circuit breaker's decisions, pure: state, outcome and time in; admission and transitions out.

No I/O and no clock: the memory store runs this under a lock, and the Redis
store runs ``lua/acquire.lua`` and ``lua/record.lua``, which follow it step
for step (tests run the same histories through both and compare every
decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CLOSED",
    "TOKEN_CLOSED",
    "TOKEN_FULL",
    "TOKEN_HALF",
    "token",
    "FORCED_CLOSED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "OPEN",
    "STATE_NAMES",
    "Limits",
    "Machine",
    "outcome_code",
]

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED = 0, 1, 2, 3, 4
STATE_NAMES = {
    CLOSED: "closed",
    OPEN: "open",
    HALF_OPEN: "half_open",
    FORCED_OPEN: "forced_open",
    FORCED_CLOSED: "forced_closed",
}

# Permit tokens: which state let a call through (the low two bits) and in which generation
# of the breaker (the rest): an outcome that comes back after the state moved on is not counted.
# TOKEN_FULL is closed with a full count window: there a success cannot trip the breaker
# (it can only push a failure out), so a shared store may take its record later, with the
# worker's next decision on that breaker (see _store.py), and save a round trip.
TOKEN_CLOSED, TOKEN_HALF, TOKEN_FULL = 1, 2, 3


def token(kind: int, generation: int) -> int:
    return kind | (generation << 2)


# Outcome codes: bit 1 = failure, bit 2 = slow.
OK, FAILURE, SLOW = 0, 1, 2
IGNORED = -1


def outcome_code(failure: bool, slow: bool) -> int:
    return (FAILURE if failure else 0) | (SLOW if slow else 0)


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers a breaker decides with (from :class:`BreakerOptions`)."""

    failure_rate: float
    window_type: str  # "count" | "time"
    window_size: int
    minimum_calls: int
    slow_rate: float | None  # None: slow calls are not judged
    wait: float
    half_open_calls: int
    trial_timeout: float = 300.0  # a trial permit not back after this is presumed lost


@dataclass(slots=True)
class Machine:
    """One breaker's state. Methods mutate it and return the transition taken, if any."""

    state: int = CLOSED
    opened_at: float = 0.0
    # count window: ring of outcome codes; time window: per-second buckets [n, f, s]
    ring: list[int] = field(default_factory=list)
    index: int = 0
    buckets: dict[int, list[int]] = field(default_factory=dict)
    oldest: int = 0
    n: int = 0
    f: int = 0
    s: int = 0
    # half-open trials: permits given, outcomes seen, failures, slow, since when
    permits: int = 0
    trials: int = 0
    trial_failures: int = 0
    trial_slow: int = 0
    half_open_since: float = 0.0
    generation: int = 0  # advances with every change of state or of half-open round
    # True only while closed with a full count window of successes: recording a success then
    # changes nothing (an OK replaces an OK, and any rotation of an all-OK ring is the same ring),
    # so the hot path may read this one attribute, without the lock, and skip the bookkeeping.
    # Set False before any change that could dirty the window, True only once a change is done:
    # a reader that sees True sees a moment when skipping was right. False is always safe.
    clean: bool = False
    # time window: the second of the newest bucket, up to which the window is swept (-1: none)
    second: int = -1

    # ------------------------------------------------------------ window

    def _clear(self) -> None:
        self.clean = False
        self.second = -1
        self.ring = []
        self.index = 0
        self.buckets = {}
        self.oldest = 0
        self.n = self.f = self.s = 0

    def _sweep(self, limits: Limits, now: float) -> None:
        """Time window: drop the buckets that fell out of the last ``window_size`` seconds."""
        cutoff = int(now) - limits.window_size  # buckets at or before cutoff are out
        if self.n == 0:
            self.oldest = cutoff + 1
            return
        if cutoff - self.oldest >= limits.window_size:
            self._clear()
            self.oldest = cutoff + 1
            return
        while self.oldest <= cutoff:
            bucket = self.buckets.pop(self.oldest, None)
            if bucket is not None:
                self.n -= bucket[0]
                self.f -= bucket[1]
                self.s -= bucket[2]
            self.oldest += 1

    def _add(self, limits: Limits, code: int, now: float) -> None:
        self.clean = False
        failure, slow = code & FAILURE, (code & SLOW) >> 1
        if limits.window_type == "count":
            if len(self.ring) < limits.window_size:
                self.ring.append(code)
            else:
                old = self.ring[self.index]
                self.n -= 1
                self.f -= old & FAILURE
                self.s -= (old & SLOW) >> 1
                self.ring[self.index] = code
                self.index = (self.index + 1) % limits.window_size
        else:
            self._sweep(limits, now)
            self.second = int(now)
            bucket = self.buckets.setdefault(self.second, [0, 0, 0])
            bucket[0] += 1
            bucket[1] += failure
            bucket[2] += slow
        self.n += 1
        self.f += failure
        self.s += slow
        if self.n == limits.window_size and not (self.f or self.s) and limits.window_type == "count":
            self.clean = self.state == CLOSED

    def record_ok(self, limits: Limits, permit: int, now: float | None = None) -> bool:
        """Record a fast success while closed, if that is all there is to it; the hot path.

        Done for a full count window, where a success cannot raise a rate,
        and for a time window that already holds ``minimum_calls`` when the
        success falls in the second of its newest bucket (given ``now``): the
        window is swept up to that second already, and a success there only
        counts. Returns False (and records nothing) otherwise: the caller
        takes :meth:`record`, since while the window fills a success can
        bring it to ``minimum_calls`` and trip it.
        """
        if self.state != CLOSED or permit >> 2 != self.generation:
            return False
        size = limits.window_size
        if limits.window_type != "count":
            if now is None or int(now) != self.second or self.n < limits.minimum_calls:
                return False
            self.buckets[self.second][0] += 1
            self.n += 1
            return True
        ring = self.ring
        if len(ring) < size:
            return False
        index = self.index
        old = ring[index]
        ring[index] = OK
        self.index = (index + 1) % size
        if old:
            self.f -= old & FAILURE
            self.s -= (old & SLOW) >> 1
            self.clean = not (self.f or self.s)
        return True

    def record_deferred(self, limits: Limits, permit: int, count: int) -> None:
        """``count`` successes of ``TOKEN_FULL`` permits a worker held back, recorded before its next decision.

        Each is :meth:`record_ok`: while the generation and the full count
        window last, a success only replaces the oldest outcome; once they are
        gone the successes are not counted, as any late outcome.
        """
        for _ in range(count):
            if not self.record_ok(limits, permit):
                return

    def _tripped(self, limits: Limits, n: int, f: int, s: int) -> bool:
        if f >= limits.failure_rate * n:
            return True
        return limits.slow_rate is not None and s >= limits.slow_rate * n

    def _open(self, now: float) -> None:
        self.clean = False
        self.state = OPEN
        self.opened_at = now
        self.generation += 1
        self._clear()
        self.permits = self.trials = self.trial_failures = self.trial_slow = 0

    # ------------------------------------------------------------ decisions

    def acquire(self, limits: Limits, now: float) -> tuple[int, float | None, str | None]:
        """May a call go? ``(token, retry_after, transition)``; token 0 means refused.

        ``retry_after`` is the time until trial calls are let through (``None``
        when forced open); ``transition`` names a state change this made.
        """
        state = self.state
        if state == CLOSED:
            full = limits.window_type == "count" and len(self.ring) >= limits.window_size
            return token(TOKEN_FULL if full else TOKEN_CLOSED, self.generation), None, None
        if state == FORCED_CLOSED:
            return token(TOKEN_CLOSED, self.generation), None, None
        if state == FORCED_OPEN:
            return 0, None, None
        transition = None
        if state == OPEN:
            reopen_at = self.opened_at + limits.wait
            if now < reopen_at:
                return 0, reopen_at - now, None
            self.state = HALF_OPEN
            self.permits = self.trials = self.trial_failures = self.trial_slow = 0
            self.half_open_since = now
            self.generation += 1
            transition = "half_open"
        if self.permits >= limits.half_open_calls:
            # Every trial is out. Only when they outlived trial_timeout are their callers
            # presumed gone (a worker died): then a new round starts, and whatever the
            # old trials say when they come back is not counted.
            reissue_at = self.half_open_since + limits.trial_timeout
            if now < reissue_at:
                return 0, min(reissue_at - now, max(limits.wait, 1.0)), transition
            self.permits = self.trials = self.trial_failures = self.trial_slow = 0
            self.half_open_since = now
            self.generation += 1
        self.permits += 1
        return token(TOKEN_HALF, self.generation), None, transition

    def record(self, limits: Limits, permit: int, code: int, now: float) -> str | None:
        """Count a call's outcome (``IGNORED`` releases its permit only); return a transition."""
        if permit >> 2 != self.generation:
            return None  # a late outcome from a state (or a half-open round) that is gone
        state, kind = self.state, permit & 3
        if kind in (TOKEN_CLOSED, TOKEN_FULL) and state == CLOSED:
            if code == OK and self.record_ok(limits, permit, now):
                return None
            if code == IGNORED:
                return None
            self._add(limits, code, now)
            if self.n >= limits.minimum_calls and self._tripped(limits, self.n, self.f, self.s):
                self._open(now)
                return "open"
            return None
        if kind == TOKEN_HALF and state == HALF_OPEN:
            if code == IGNORED:
                self.permits = max(self.permits - 1, self.trials)
                return None
            self.trials += 1
            self.trial_failures += code & FAILURE
            self.trial_slow += (code & SLOW) >> 1
            if self.trials >= limits.half_open_calls:
                if self._tripped(limits, self.trials, self.trial_failures, self.trial_slow):
                    self._open(now)
                    return "open"
                self.state = CLOSED
                self.generation += 1
                self._clear()
                self.permits = self.trials = self.trial_failures = self.trial_slow = 0
                return "closed"
        return None

    def force(self, state: int, now: float) -> str:
        """Manual control: ``FORCED_OPEN``, ``FORCED_CLOSED`` or ``CLOSED`` (reset)."""
        self._clear()
        self.permits = self.trials = self.trial_failures = self.trial_slow = 0
        self.state = state
        self.opened_at = now if state == FORCED_OPEN else 0.0
        self.generation += 1
        return STATE_NAMES[state]
