"""Tools for testing code that uses resilient, and for testing policies.

``FakeClock`` is accepted by every time-based policy (``Pipeline(clock=...)``);
``ScriptedProvider`` plays a sequence of outcomes. The pytest plugin
(registered through the ``pytest11`` entry point) provides the ``fake_clock``,
``scripted_provider`` and ``resilient_pipeline`` fixtures.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._scripted import Chunks, HTTPStatus, Latency, ProviderHTTPError, ScriptedProvider

__all__ = ["Chunks", "FakeClock", "HTTPStatus", "Latency", "ProviderHTTPError", "ScriptedProvider"]
