"""The cache key of a call: SHA-256 of its canonical request, so no prompt or secret is ever in a key.

The canonical request is orjson with sorted keys of (format, stream or not,
provider, operation, static model, tenant unless the scope is global, the
positional and keyword arguments minus the ignored fields), an int
temperature written as a float (the argument's, else ``extra_body``'s). The in-process
layer is indexed by those bytes themselves (exact, and hashing them for a
dict is cheaper than SHA-256); the SHA-256 is taken on a local miss, for the
shared store, the events and ``call.metadata["cache_key"]``.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson

from resilient import Call, ConfigurationError
from resilient.context import current as current_context

from ._options import CacheOptions

__all__ = ["KeyFunction", "KeyMaker", "digest", "import_function", "key_maker", "strip"]

#: Bumped when the canonical form changes, so old entries are never read as new ones.
KEY_VERSION = 1

#: A user's key function: the JSON-able part of the key standing for the request (None: do not cache).
KeyFunction = Callable[[Call], Any]
#: Call -> canonical request bytes, or None when the call cannot be keyed (then it is not cached).
KeyMaker = Callable[[Call], "bytes | None"]

_OPTIONS = orjson.OPT_SORT_KEYS  # keys that are not strings make the call unkeyable, never collide


def _default(obj: Any) -> Any:
    """Arguments orjson does not know: pydantic models by their JSON form; anything else is unkeyable."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None and not isinstance(obj, type):
        return dump(mode="json")
    raise TypeError(type(obj).__name__)


def strip(value: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    """``value`` without the field at ``path`` (copied only where something is removed)."""
    head = path[0]
    if head not in value:
        return value
    if len(path) == 1:
        return {k: v for k, v in value.items() if k != head}
    inner = value[head]
    if not isinstance(inner, Mapping):
        return value
    stripped = strip(inner, path[1:])
    if stripped is inner:
        return value
    return {**value, head: stripped}


def import_function(spec: str, what: str) -> Callable[..., Any]:
    """The function named by ``'module:function'`` (configuration values ``key_function``, ``tag_function``)."""
    module_name, _, attr = spec.partition(":")
    try:
        found = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        allowed = f"must name an importable function ({type(exc).__name__}: {exc})"
        raise ConfigurationError(f"cache.{what}", spec, allowed) from None
    if not callable(found):
        raise ConfigurationError(f"cache.{what}", spec, "must name a callable")
    return found


def key_maker(options: CacheOptions, stream: bool, key_function: KeyFunction | None = None) -> KeyMaker:
    """The key function of a target kind (values and streams never share entries) under ``options``."""
    by_tenant = options.scope == "tenant"
    paths = tuple(tuple(p.split(".")) for p in options.ignore)
    top = frozenset(p[0] for p in paths if len(p) == 1)
    nested = tuple(p for p in paths if len(p) > 1)
    nested_heads = frozenset(p[0] for p in nested)
    heads = top | nested_heads  # one check for both on every call: few requests carry an ignored field
    dumps, opts, default = orjson.dumps, _OPTIONS, _default
    head = (KEY_VERSION, stream)

    def custom(call: Call) -> bytes | None:
        assert key_function is not None
        target = call.target
        try:
            part = key_function(call)
            if part is None:
                return None
            tenant = call.tenant if by_tenant else None
            return dumps(
                (head, target.provider, target.operation, target.model, tenant, part), default=default, option=opts
            )
        except Exception:  # the user's key function failed, or gave something that is not data: not cached
            return None

    if key_function is not None:
        return custom

    def make(call: Call) -> bytes | None:
        # Runs on every call, hits included: written out flat, one function call deep.
        kwargs = call.kwargs
        if heads and not heads.isdisjoint(kwargs):
            if not top.isdisjoint(kwargs):
                kwargs = {k: v for k, v in kwargs.items() if k not in top}
            if nested and not nested_heads.isdisjoint(kwargs):
                for path in nested:  # strip copies a dict into a dict: kwargs stays one
                    kwargs = cast(dict[str, Any], strip(kwargs, path))
        temperature = kwargs.get("temperature")
        if temperature.__class__ is int:  # 0 and 0.0 ask the same question
            kwargs = kwargs.copy()  # a copy then a write: a third cheaper than {**kwargs, "temperature": ...}
            kwargs["temperature"] = float(temperature)
        elif temperature is None:  # no argument: extra_body's, as an SDK method without the parameter sends it
            extra = kwargs.get("extra_body")
            if extra.__class__ is dict and extra.get("temperature").__class__ is int:
                kwargs = {**kwargs, "extra_body": {**extra, "temperature": float(extra["temperature"])}}
        target = call.target
        tenant = None
        if by_tenant:  # Call.tenant written out: the target's tenant function, else the request context's
            tenant_of = target.tenant
            if tenant_of is not None:
                tenant = tenant_of(call)
            else:
                ctx = current_context()
                tenant = ctx.tenant if ctx is not None else None
        try:
            return dumps(
                (head, target.provider, target.operation, target.model, tenant, (call.args, kwargs)),
                default=default,
                option=opts,
            )
        except Exception:  # an argument that is not data: not cached
            return None

    return make


def digest(canonical: bytes) -> str:
    """The key of a canonical request: its SHA-256, hex."""
    return hashlib.sha256(canonical).hexdigest()
