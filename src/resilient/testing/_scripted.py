from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock

__all__ = ["Chunks", "HTTPStatus", "Latency", "ProviderHTTPError", "ScriptedProvider"]


class ProviderHTTPError(Exception):
    """An HTTP error shaped like the SDKs' ``APIStatusError``: ``status_code`` and ``response.headers``."""

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None, message: str = "") -> None:
        self.status_code = status_code
        self.response = _Response(status_code, dict(headers or {}))
        super().__init__(message or f"provider answered HTTP {status_code}")


@dataclass(frozen=True)
class _Response:
    status_code: int
    headers: dict[str, str]


@dataclass(frozen=True)
class HTTPStatus:
    """An outcome: the provider answers this status (raised as :class:`ProviderHTTPError`)."""

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Latency:
    """An outcome prefix: the provider takes ``seconds`` (on the clock) before the next outcome."""

    seconds: float
    then: Any = None


@dataclass(frozen=True)
class Chunks:
    """An outcome for streams: these chunks, then (optionally) an error mid-stream."""

    items: Sequence[Any]
    error: BaseException | None = None


class ScriptedProvider:
    """A fake provider playing a script of outcomes, one per call.

    An outcome is a value (returned), an exception instance or class
    (raised), :class:`HTTPStatus` (raised as an SDK-shaped HTTP error),
    :class:`Latency` (time passes on ``clock``, then its ``then`` outcome) or
    :class:`Chunks` (for :meth:`stream` / :meth:`astream`). When the script
    runs out, ``default`` is played. ``calls`` counts calls and ``requests``
    keeps their keyword arguments.

    Use it directly (``provider(...)``, ``await provider.acall(...)``,
    ``provider.stream(...)``, ``provider.astream(...)``) or guard its methods.
    """

    def __init__(self, script: Iterable[Any] = (), *, default: Any = "ok", clock: Clock | None = None) -> None:
        self._script: Iterator[Any] = iter(script)
        self.default = default
        self.clock = clock
        self.calls = 0
        self.requests: list[dict[str, Any]] = []

    @classmethod
    def flaky(
        cls,
        fail_rate: float,
        *,
        seed: int = 0,
        failures: Sequence[Any] = (HTTPStatus(500), HTTPStatus(529), HTTPStatus(429, {"retry-after": "1"})),
        value: Any = "ok",
        clock: Clock | None = None,
    ) -> ScriptedProvider:
        """An endless script that fails with probability ``fail_rate`` (seeded, so repeatable)."""
        rng = random.Random(seed)

        def script() -> Iterator[Any]:
            while True:
                yield rng.choice(list(failures)) if rng.random() < fail_rate else value

        return cls(script(), default=value, clock=clock)

    def _next(self, kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        self.requests.append(kwargs)
        outcome = next(self._script, self.default)
        while isinstance(outcome, Latency):
            if self.clock is not None:
                self.clock.sleep(outcome.seconds)
            outcome = outcome.then if outcome.then is not None else self.default
        return outcome

    @staticmethod
    def _play(outcome: Any) -> Any:
        if isinstance(outcome, HTTPStatus):
            raise ProviderHTTPError(outcome.code, outcome.headers)
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            raise outcome()
        return outcome

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outcome = self._play(self._next(kwargs))
        return outcome.items if isinstance(outcome, Chunks) else outcome

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return self(*args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        outcome = self._play(self._next(kwargs))
        chunks = outcome if isinstance(outcome, Chunks) else Chunks([outcome])
        yield from chunks.items
        if chunks.error is not None:
            raise chunks.error

    async def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        for chunk in self.stream(*args, **kwargs):
            await asyncio.sleep(0)
            yield chunk
