"""Errors raised by resilient.

Exception tree::

    Exception
    ├── ResilientError                 a policy refused or gave up; speaks HTTP
    │   ├── QuotaExceeded              429  a quota (requests or tokens) is spent
    │   ├── ConcurrencyLimitExceeded   429  too many calls in flight for a key
    │   ├── CircuitOpen                503  the breaker for this provider/model is open
    │   ├── ProviderUnavailable        503  the provider failed and no policy could recover
    │   └── DeadlineExceeded           504  the call's deadline passed
    ├── ConfigurationError (ValueError)     a setting is wrong; names key, value, allowed
    └── PluginError (RuntimeError)          a plugin failed to load or register

Every :class:`ResilientError` carries ``retry_after`` (seconds, or ``None``) and
renders itself as RFC 7807 ``application/problem+json`` through
:meth:`~ResilientError.to_problem`. The problem body is built only from the
fields given to the error by policies (provider, model, which limit), never
from a provider's exception text, so it cannot carry a prompt or a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "CircuitOpen",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "DeadlineExceeded",
    "PluginError",
    "ProviderUnavailable",
    "QuotaExceeded",
    "ResilientError",
]

PROBLEM_TYPE_BASE = "urn:resilient:problem:"

_URL_PASSWORD_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]+)@")
_QUERY_SECRET_RE = re.compile(r"(?P<name>[?&](?:password|passwd|pwd|key|api_key|apikey|token|secret)=)[^&\s'\"]+", re.I)


def redact_url_passwords(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` and secret query parameters in ``text``."""
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:****@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m.group('name')}****", text)


class ResilientError(Exception):
    """Base of every error a policy raises instead of (or after) a provider call.

    ``retry_after`` is how many seconds the caller should wait before trying
    again, when a policy knows it. ``provider`` and ``model`` say which call
    was refused; ``detail`` is a human sentence safe to show to a client.
    """

    status: ClassVar[int] = 503
    title: ClassVar[str] = "Provider call refused"
    slug: ClassVar[str] = "resilient-error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.retry_after = retry_after
        self.provider = provider
        self.model = model
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        """The problem ``type``: a stable URI per error class."""
        return PROBLEM_TYPE_BASE + self.slug

    def headers(self) -> dict[str, str]:
        """HTTP headers for a response carrying this error (``Retry-After``)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, math.ceil(self.retry_after)))}

    def extensions(self) -> dict[str, Any]:
        """Extra problem members beyond the RFC 7807 ones; subclasses add theirs."""
        ext: dict[str, Any] = {}
        if self.provider is not None:
            ext["provider"] = self.provider
        if self.model is not None:
            ext["model"] = self.model
        if self.retry_after is not None:
            ext["retry_after"] = round(self.retry_after, 3)
        return ext

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 7807 body: type, title, status, detail, instance and extensions.

        ``instance`` identifies this occurrence, e.g. the request path or id.
        """
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extensions())
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, retry_after={self.retry_after!r})"


class QuotaExceeded(ResilientError):
    """A request or token quota is spent; ``limit`` names the one that tripped."""

    status = 429
    title = "Quota exceeded"
    slug = "quota-exceeded"

    def __init__(
        self,
        detail: str | None = None,
        *,
        limit: str | None = None,
        retry_after: float | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> None:
        self.limit = limit
        super().__init__(detail, retry_after=retry_after, provider=provider, model=model)

    def extensions(self) -> dict[str, Any]:
        ext = super().extensions()
        if self.limit is not None:
            ext["limit"] = self.limit
        return ext


class ConcurrencyLimitExceeded(ResilientError):
    """Too many calls are in flight for this key."""

    status = 429
    title = "Too many concurrent calls"
    slug = "concurrency-limit-exceeded"


class CircuitOpen(ResilientError):
    """The breaker for this provider/model is open; ``retry_after`` is until half-open."""

    status = 503
    title = "Circuit open"
    slug = "circuit-open"


class ProviderUnavailable(ResilientError):
    """The provider failed and no policy could recover (retries spent, no fallback)."""

    status = 503
    title = "Provider unavailable"
    slug = "provider-unavailable"


class DeadlineExceeded(ResilientError):
    """The call's overall deadline passed before it could succeed."""

    status = 504
    title = "Deadline exceeded"
    slug = "deadline-exceeded"


class ConfigurationError(ValueError):
    """A configuration value is wrong.

    The message names the key, the value and what is allowed, e.g.
    ``retry.max_attempts = 0 (from env RESILIENT_RETRY__MAX_ATTEMPTS): must be >= 1``.
    """

    def __init__(
        self,
        key: str,
        value: object,
        allowed: str,
        *,
        source: str | None = None,
        suggestions: Sequence[str] = (),
    ) -> None:
        shown = repr(value)
        redacted = redact_url_passwords(shown)
        self.key = key
        #: The bad value, or its redacted text when it held a password in a URL.
        self.value = value if redacted == shown else redacted
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"{key} = {redacted}{where}: {redact_url_passwords(allowed)}{hint}")


class PluginError(RuntimeError):
    """A plugin failed to load, register or build; names the plugin and the cause."""

    def __init__(self, plugin: str, cause: str) -> None:
        self.plugin = plugin
        self.cause = cause
        super().__init__(f"plugin {plugin!r}: {cause}")
