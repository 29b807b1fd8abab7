"""The key maker (written out flat for the hot path) against the canonical request written the obvious way.

Whatever the request (ignored fields at the top and inside a field, an int,
float or bool temperature, as an argument or in ``extra_body``, pieces that
are not data), the key maker must
give exactly the bytes the definition in :mod:`resilient_cache._key` says,
and never change the call's own arguments.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from resilient import Call, Target
from resilient_cache._key import KEY_VERSION, key_maker
from resilient_cache._options import DEFAULT_IGNORE, CacheOptions

FIELDS = ["model", "messages", "temperature", "metadata", "user", "timeout", "stream", "extra_headers", "q"]
IGNORES = [
    (),
    DEFAULT_IGNORE,
    ("q",),
    ("metadata.user_id", "metadata.deep.x"),
    ("temperature",),
    ("extra_body.temperature", "extra_body.top_k"),
]

values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["user_id", "deep", "x"]), inner),
    max_leaves=6,
)
inner_fields = st.dictionaries(
    st.sampled_from(["user_id", "deep", "x"]), values | st.dictionaries(st.just("x"), values)
)
UNKEYABLE = object()
temperatures = st.sampled_from([0, 1, 0.0, 0.5, True, False, None, "0"])


def expected(options: CacheOptions, stream: bool, call: Call) -> bytes | None:
    """The canonical request by its definition: the arguments minus the ignored fields, an int temperature as a
    float, and the target, as orjson with sorted keys."""

    def without(value: Any, path: list[str]) -> Any:
        if not isinstance(value, dict) or path[0] not in value:
            return value
        if len(path) == 1:
            return {k: v for k, v in value.items() if k != path[0]}
        return {**value, path[0]: without(value[path[0]], path[1:])}

    kwargs: Any = call.kwargs
    for field in options.ignore:
        kwargs = without(kwargs, field.split("."))
    if type(kwargs.get("temperature")) is int:
        kwargs = {**kwargs, "temperature": float(kwargs["temperature"])}
    elif kwargs.get("temperature") is None and type(kwargs.get("extra_body")) is dict:
        extra = kwargs["extra_body"]
        if type(extra.get("temperature")) is int:
            kwargs = {**kwargs, "extra_body": {**extra, "temperature": float(extra["temperature"])}}
    target = call.target
    tenant = call.tenant if options.scope == "tenant" else None
    body = ((KEY_VERSION, stream), target.provider, target.operation, target.model, tenant, (call.args, kwargs))
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None


@given(
    kwargs=st.dictionaries(st.sampled_from(FIELDS), values, max_size=6),
    metadata=st.none() | inner_fields,
    temperature=temperatures,
    extra_body=st.none() | st.fixed_dictionaries({"temperature": temperatures}, optional={"top_k": values}),
    in_extra_body_only=st.booleans(),
    ignore=st.sampled_from(IGNORES),
    stream=st.booleans(),
    scope=st.sampled_from(["tenant", "global"]),
    unkeyable=st.booleans(),
)
def test_the_key_maker_gives_the_canonical_request(
    kwargs: dict[str, Any],
    metadata: dict[str, Any] | None,
    temperature: Any,
    extra_body: dict[str, Any] | None,
    in_extra_body_only: bool,
    ignore: tuple[str, ...],
    stream: bool,
    scope: Any,
    unkeyable: bool,
) -> None:
    if metadata is not None:
        kwargs["metadata"] = metadata
    if temperature is not None:
        kwargs["temperature"] = temperature
    if extra_body is not None:
        kwargs["extra_body"] = extra_body
        if in_extra_body_only:  # how an SDK method without a temperature parameter sends it
            kwargs.pop("temperature", None)
    if unkeyable:
        kwargs["q"] = UNKEYABLE  # not data: the call is not cached
    options = CacheOptions(ignore=ignore, scope=scope)
    target = Target("p", "chat", "stream" if stream else "sync", model="m", tenant=lambda _: "t1")
    call = Call(target, (1,), kwargs)
    before = copy.deepcopy(kwargs, {id(UNKEYABLE): UNKEYABLE})
    assert key_maker(options, stream)(call) == expected(options, stream, call)
    assert call.kwargs is kwargs
    assert kwargs == before  # the call's arguments are the caller's: never changed
