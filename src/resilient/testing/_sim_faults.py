"""What the simulator does to one request: the faults, how they are written, and the rate-limit window.

Pure code: no I/O, no starlette. The app in ``simulator.py`` asks these
objects what to do and does it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..config import parse_duration

__all__ = [
    "DEFAULT",
    "Drop",
    "Fault",
    "FaultSpec",
    "Ok",
    "Slow",
    "Stall",
    "Status",
    "StreamError",
    "parse_fault",
]

#: ``Status.retry_after`` default: the simulator's own ``retry_after`` for 429 and 529, no header otherwise.
DEFAULT: Literal["default"] = "default"


@dataclass(frozen=True)
class Ok:
    """Answer normally."""

    @property
    def name(self) -> str:
        return "ok"


@dataclass(frozen=True)
class Status:
    """Answer this HTTP status with the provider's error JSON.

    ``retry_after`` (seconds) is sent as the ``retry-after`` header; the
    default sends the simulator's ``retry_after`` on 429 and 529 and nothing
    on other statuses; ``None`` sends no header.
    """

    code: int
    retry_after: float | Literal["default"] | None = DEFAULT
    message: str | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"Status(code={self.code!r}): an error status is between 400 and 599")
        if isinstance(self.retry_after, (int, float)) and not (
            math.isfinite(self.retry_after) and self.retry_after >= 0
        ):
            raise ValueError(f"Status(retry_after={self.retry_after!r}): seconds >= 0, None or 'default'")

    @property
    def name(self) -> str:
        return str(self.code)


@dataclass(frozen=True)
class Slow:
    """Answer normally, ``seconds`` later than the configured latency."""

    seconds: float = 1.0

    def __post_init__(self) -> None:
        _non_negative("Slow", "seconds", self.seconds)

    @property
    def name(self) -> str:
        return "slow"


@dataclass(frozen=True)
class Drop:
    """Send the status line, headers and ``after`` body chunks, then drop the connection.

    For streams a chunk is one SSE event; a plain JSON answer is sent in two
    halves. The last chunk is never sent, so the client always sees an
    incomplete answer.
    """

    after: int = 3

    def __post_init__(self) -> None:
        _count("Drop", "after", self.after)

    @property
    def name(self) -> str:
        return "drop"


@dataclass(frozen=True)
class Stall:
    """Send ``after`` body chunks, then send nothing for ``seconds`` (or until the client goes), then the rest."""

    after: int = 3
    seconds: float = 30.0

    def __post_init__(self) -> None:
        _count("Stall", "after", self.after)
        _non_negative("Stall", "seconds", self.seconds)

    @property
    def name(self) -> str:
        return "stall"


@dataclass(frozen=True)
class StreamError:
    """Streams only: after ``after`` events, send the provider's in-stream error event and end the stream.

    Anthropic sends ``event: error`` with ``{"type": "error", "error": {"type": error_type, ...}}``;
    OpenAI a ``data: {"error": {...}}`` line. A non-streaming request answers ``status`` instead.
    """

    after: int = 3
    error_type: str = "overloaded_error"
    status: int = 529

    def __post_init__(self) -> None:
        _count("StreamError", "after", self.after)

    @property
    def name(self) -> str:
        return "stream_error"


Fault = Ok | Status | Slow | Drop | Stall | StreamError
#: What ``Simulator.script`` and ``faults=`` accept: a fault object, a status code, or a string (see ``parse_fault``).
FaultSpec = Fault | int | str

_FAULT_TYPES = (Ok, Status, Slow, Drop, Stall, StreamError)
_WORDS = (
    "'ok', a status such as '429' or '429:2s', 'slow[:seconds]', 'drop[:chunks]', 'stall[:chunks]',"
    " 'stream_error[:chunks]'"
)


def parse_fault(spec: FaultSpec) -> Fault:
    """A fault from its spec.

    Strings: ``"ok"``; a status ``"429"`` (``"429:2s"`` sets ``retry-after``);
    ``"slow"`` / ``"slow:250ms"``; ``"drop"`` / ``"drop:5"`` (chunks sent
    before the drop); ``"stall"`` / ``"stall:5"``; ``"stream_error"`` /
    ``"stream_error:5"``. An int is a status code.
    """
    if isinstance(spec, _FAULT_TYPES):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"fault {spec!r}: expected a fault object or {_WORDS}")
    if isinstance(spec, int):
        return Status(spec)
    if not isinstance(spec, str):
        raise ValueError(f"fault {spec!r}: expected a fault object or {_WORDS}")
    head, _, arg = spec.strip().lower().partition(":")
    try:
        if head == "ok" and not arg:
            return Ok()
        if head.isdigit():
            return Status(int(head), parse_duration(arg)) if arg else Status(int(head))
        if head == "slow":
            return Slow(parse_duration(arg)) if arg else Slow()
        if head == "drop":
            return Drop(int(arg)) if arg else Drop()
        if head == "stall":
            return Stall(int(arg)) if arg else Stall()
        if head == "stream_error":
            return StreamError(int(arg)) if arg else StreamError()
    except ValueError as exc:
        raise ValueError(f"fault {spec!r}: {exc}; expected {_WORDS}") from exc
    raise ValueError(f"fault {spec!r}: expected {_WORDS}")


def parse_faults(specs: Iterable[FaultSpec]) -> tuple[Fault, ...]:
    return tuple(parse_fault(s) for s in specs)


def _non_negative(cls: str, field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{cls}({field}={value!r}): seconds >= 0")


def _count(cls: str, field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{cls}({field}={value!r}): a whole number of chunks >= 0")


@dataclass
class RateWindow:
    """A fixed one-minute window counting requests and tokens (wall-clock seconds).

    ``limit`` requests are admitted per window; ``enforce`` False only counts
    (for the headers). Token budgets are only reported, never enforced.
    """

    limit: int
    enforce: bool
    input_tokens_limit: int
    output_tokens_limit: int
    period: float = 60.0
    start: float = -math.inf
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def roll(self, now: float) -> None:
        if now >= self.start + self.period:
            self.start = now
            self.requests = self.input_tokens = self.output_tokens = 0

    def admit(self, now: float) -> bool:
        """Count one request; False when it is over the limit (then it is not counted)."""
        self.roll(now)
        if self.enforce and self.requests >= self.limit:
            return False
        self.requests += 1
        return True

    def reset_at(self) -> float:
        return self.start + self.period

    def retry_after(self, now: float) -> float:
        return max(0.0, self.reset_at() - now)

    def snapshot(self) -> RateSnapshot:
        return RateSnapshot(
            limit=self.limit,
            remaining=max(0, self.limit - self.requests),
            input_tokens_limit=self.input_tokens_limit,
            input_tokens_remaining=max(0, self.input_tokens_limit - self.input_tokens),
            output_tokens_limit=self.output_tokens_limit,
            output_tokens_remaining=max(0, self.output_tokens_limit - self.output_tokens),
            reset_at=self.reset_at(),
        )


@dataclass(frozen=True)
class RateSnapshot:
    """The window as the rate-limit headers report it."""

    limit: int
    remaining: int
    input_tokens_limit: int
    input_tokens_remaining: int
    output_tokens_limit: int
    output_tokens_remaining: int
    reset_at: float
