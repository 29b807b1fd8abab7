"""Values as data: what may be stored, and how it is rebuilt. Never pickle.

A pydantic model (anthropic and openai responses and stream events) is kept
as ``{"t": "module:QualName", "d": its JSON form}`` and rebuilt with the
class's ``model_validate``, only for classes from allowed module prefixes,
so a stored value cannot make this process import or run anything else.
Plain JSON values are kept as ``{"j": value}``, only if they come back equal
(a tuple, a set or a datetime would not). Anything else is not stored.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from resilient.providers._fields import pydantic_own

__all__ = ["ALLOWED_PREFIXES", "Codec", "Entry", "Unstorable", "fits"]

ALLOWED_PREFIXES = ("anthropic.", "openai.")
FORMAT = 1


class Unstorable(Exception):
    """A value that cannot be stored as data (the call still succeeds; it is just not cached)."""


class Entry(NamedTuple):
    """A stored response: ``value`` (a chunk list for a stream), when it was stored and until when it is
    fresh, and until when it may still answer a failed call (wall-clock seconds).

    A named tuple: as immutable as a frozen dataclass, built several times faster (one per miss).
    """

    value: Any
    stream: bool
    stored_at: float
    fresh_until: float
    stale_until: float

    def fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def usable(self, now: float) -> bool:
        """Fresh, or within its stale window."""
        return now < self.stale_until


_PLAIN = (str, int, float, bool, type(None))

#: orjson's pre-serialized JSON (orjson 3.9.15+); without it models go through model_dump.
_Fragment: Any = getattr(orjson, "Fragment", None)


def _pydantic_dumps(cls: type) -> bool:
    """Whether ``cls`` is a pydantic v2 model whose ``model_dump`` is pydantic's own: its serializer's
    ``to_json`` then writes the JSON of ``model_dump(mode="json")``."""
    own = pydantic_own("model_dump")
    return (
        _Fragment is not None
        and own is not None
        and getattr(cls, "model_dump", None) is own
        and hasattr(cls, "__pydantic_serializer__")
    )


class Codec:
    """Encodes entries to bytes and back, rebuilding models only from ``prefixes``."""

    def __init__(self, extra_prefixes: Iterable[str] = ()) -> None:
        self.prefixes = tuple(ALLOWED_PREFIXES) + tuple(p if p.endswith(".") else p + "." for p in extra_prefixes)
        self._classes: dict[str, type[Any]] = {}
        #: Allowed pydantic model classes whose JSON pydantic writes itself -> their stored type name.
        self._models: dict[type, str] = {}

    def _allowed(self, module: str) -> bool:
        return any(module.startswith(p) or module + "." == p for p in self.prefixes)

    # ------------------------------------------------------------ values

    def dump(self, value: Any) -> Any:
        """The data form of one value, or :class:`Unstorable`."""
        if isinstance(value, _PLAIN) and not isinstance(value, float):
            return {"j": value}
        cls = type(value)
        name = self._models.get(cls)
        if name is not None:
            # The same JSON as model_dump(mode="json") then orjson, written by pydantic in one step and
            # put into the entry as it is: 3 us for an anthropic Message instead of 8 (every miss encodes,
            # if only to check the size).
            try:
                return {"t": name, "d": _Fragment(value.__pydantic_serializer__.to_json(value))}
            except Exception as exc:
                raise Unstorable(f"model_dump failed: {type(exc).__name__}") from None
        if hasattr(value, "model_dump") and not isinstance(value, type):
            if not self._allowed(cls.__module__):
                raise Unstorable(f"{cls.__module__}.{cls.__qualname__} is not from an allowed module")
            try:
                data = value.model_dump(mode="json")
            except Exception as exc:
                raise Unstorable(f"model_dump failed: {type(exc).__name__}") from None
            name = f"{cls.__module__}:{cls.__qualname__}"
            if _pydantic_dumps(cls) and len(self._models) < 1024:
                self._models[cls] = name
            return {"t": name, "d": data}
        if isinstance(value, (dict, list, float)):
            # What comes back equal from JSON, node for node of the same type: exactly the JSON types
            # all through (a tuple, a subclass, an enum or a datetime would come back as something else),
            # finite floats (NaN and infinity become null), ints orjson takes. Checked by one walk, then
            # written once: the JSON is the entry's, put in as it is (a round trip and a walk comparing
            # the two took 8 us for an anthropic-shaped dict; this takes about 3).
            if not _exact_json(value):
                raise Unstorable(f"{cls.__name__} does not come back equal from JSON")
            try:
                raw = orjson.dumps(value)
            except (TypeError, ValueError):
                raise Unstorable(f"{cls.__name__} is not JSON") from None
            return {"j": _Fragment(raw) if _Fragment is not None else value}
        raise Unstorable(f"{cls.__name__} is neither JSON nor a pydantic model")

    def load(self, data: Any) -> Any:
        """The value back from its data form (ValueError if it cannot be rebuilt)."""
        if "j" in data:
            return data["j"]
        cls = self._class(data["t"])
        return cls.model_validate(data["d"])

    def _class(self, name: str) -> type[Any]:
        found = self._classes.get(name)
        if found is not None:
            return found
        module_name, _, qualname = name.partition(":")
        if not self._allowed(module_name):
            raise ValueError(f"stored type {name!r} is not from an allowed module")
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, type) or not hasattr(obj, "model_validate"):
            raise ValueError(f"stored type {name!r} is not a model class")
        self._classes[name] = obj
        return obj

    # ------------------------------------------------------------ entries

    def encode(self, entry: Entry) -> bytes:
        """An entry as bytes for the shared store (raises :class:`Unstorable`)."""
        value = entry.value
        data: Any
        if entry.stream:
            data = [self.dump(v) for v in value]
        elif isinstance(value, _PLAIN) and not isinstance(value, float):  # dump()'s first case, without its call
            data = {"j": value}
        else:
            data = self.dump(value)
        return self.encode_data(entry, data)

    @staticmethod
    def encode_data(entry: Entry, data: Any) -> bytes:
        doc = {
            "v": FORMAT,
            "s": entry.stream,
            "at": entry.stored_at,
            "f": entry.fresh_until,
            "x": entry.stale_until,
            "d": data,
        }
        try:
            return orjson.dumps(doc)
        except (TypeError, ValueError):  # a model whose JSON form is still not JSON
            raise Unstorable("not JSON") from None

    def decode(self, raw: bytes) -> Entry:
        """An entry from the shared store's bytes (ValueError if it is corrupt or its type is not allowed)."""
        try:
            doc = orjson.loads(raw)
            if doc["v"] != FORMAT:
                raise ValueError(f"entry format {doc['v']!r}")
            stream = bool(doc["s"])
            value = [self.load(v) for v in doc["d"]] if stream else self.load(doc["d"])
            return Entry(value, stream, float(doc["at"]), float(doc["f"]), float(doc["x"]))
        except (KeyError, TypeError, AttributeError, ImportError) as exc:
            raise ValueError(f"unreadable entry: {type(exc).__name__}") from None
        except ValueError:  # includes orjson.JSONDecodeError and pydantic.ValidationError
            raise


#: The bytes of an encoded value entry besides its value: the envelope, and three floats of at most 24
#: characters each in orjson's shortest form ("-2.2250738585072014e-308"; infinity and NaN are "null").
_ENVELOPE = len(orjson.dumps({"v": FORMAT, "s": False, "at": 0, "f": 0, "x": 0, "d": {"j": None}})) - 3 - 4 + 3 * 24
_FLOAT = float


def fits(value: Any, stored_at: float, fresh_until: float, stale_until: float, limit: int) -> bool:
    """True only if :meth:`Codec.encode` surely takes the value entry with these fields and gives at most
    ``limit`` bytes.

    Without encoding, for what a memory-only store needs to know: a plain
    value (None, a bool, an int orjson takes, an ASCII str) under float
    times. False means "encode and see", never "unstorable". Bounds, not
    exact sizes: an ASCII character is at most 6 bytes in JSON (``\\u001f``),
    an int of at most 63 bits at most 20. Types are read with ``type()`` and
    the methods of ``int`` and ``str`` are called on the class, so neither a
    subclass nor a fake ``__class__`` (a mock) can make them lie. The fields
    are passed one by one: reading them from an :class:`Entry` cost more than
    the rest of the check.
    """
    if type(stored_at) is not _FLOAT or type(fresh_until) is not _FLOAT or type(stale_until) is not _FLOAT:
        return False
    cls = type(value)
    if issubclass(cls, str):
        return str.isascii(value) and limit >= _ENVELOPE + 2 + 6 * str.__len__(value)
    if issubclass(cls, int):  # bool too
        return int.bit_length(value) < 64 and limit >= _ENVELOPE + 20
    return value is None and limit >= _ENVELOPE + 4


_LEAVES = frozenset({str, int, float, bool, type(None)})


def _exact_json(value: Any) -> bool:
    """Whether every node of ``value`` is a dict, a list or a JSON leaf of exactly its type, floats finite.

    Dict keys are left to orjson, which refuses any but strings (a str
    subclass key is written, and read back, as the equal str).
    """
    stack = [value]
    pop, many = stack.pop, stack.extend
    while stack:
        node = pop()
        kind = type(node)
        if kind is dict:
            many(node.values())
        elif kind is list:
            many(node)
        elif kind not in _LEAVES or (kind is float and not math.isfinite(node)):
            return False
    return True
