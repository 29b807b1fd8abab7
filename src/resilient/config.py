"""Configuration: defaults < file (or ``config=``) < environment.

Sources, lowest precedence first:

1. the defaults declared by each options class;
2. the file named by ``RESILIENT_CONFIG``, else ``resilient.toml`` in the
   working directory (the whole file), else the ``[tool.resilient]`` table
   of ``pyproject.toml``; or a mapping passed as ``Pipeline(config=...)``,
   which takes the file's place;
3. environment variables ``RESILIENT_<KEY>`` for core keys and
   ``RESILIENT_<SECTION>__<KEY>`` for plugin sections, with ``__`` between
   levels: ``RESILIENT_RETRY__PROVIDERS__ANTHROPIC__MAX_ATTEMPTS=5``.

Core keys sit at the top level; each plugin owns a section (a table) whose
keys are the fields of its options class, a frozen keyword-only dataclass
declared with :func:`option`. A section may hold ``providers``, ``models``
and ``tenants`` tables of overrides; for a call, the most specific wins:
tenant > model > provider > section.

Everything is validated when the pipeline is built: an error names the key,
the bad value, where it came from and what is allowed; an unknown key is an
error with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

from .errors import ConfigurationError, redact_url_passwords

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DURATION",
    "CoreOptions",
    "Duration",
    "Section",
    "STORE_URI",
    "Settings",
    "StoreURI",
    "mask_secret",
    "mask_uri",
    "option",
    "parse_duration",
]

T = TypeVar("T")

ENV_PREFIX = "RESILIENT_"
#: Environment variables with the prefix that are not configuration keys.
RESERVED_ENV = frozenset({"RESILIENT_CONFIG", "RESILIENT_REQUIRE_REDIS"})
OVERRIDE_KINDS = ("providers", "models", "tenants")


class _DurationMarker:
    def __repr__(self) -> str:
        return "DURATION"


#: Marks a ``float`` field as a duration in seconds that also accepts "250ms", "2s", "5m", "1h".
DURATION = _DurationMarker()
Duration = Annotated[float, DURATION]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
# In a configuration value a sign is read, so '-5m' is told its bound rather than that it is no duration.
_SIGNED_DURATION_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _StoreURIMarker:
    def __repr__(self) -> str:
        return "STORE_URI"


#: Marks a ``str`` field as a store URI whose scheme is checked when the configuration is loaded.
#: A field whose default is ``""`` ("use the core store") also accepts ``""``.
STORE_URI = _StoreURIMarker()
StoreURI = Annotated[str, STORE_URI]

#: The store schemes named first in errors: the ones the docs describe.
_MAIN_SCHEMES = ("memory", "redis", "rediss", "redis+cluster")


@functools.cache
def store_schemes() -> tuple[str, ...]:
    """The schemes a store URI may have: those of ``limits``' sync storages, the documented ones first."""
    import limits.storage

    registry: Mapping[str, Any] = getattr(limits.storage, "SCHEMES", {})
    known = sorted(s for s in registry if not s.startswith("async+")) or list(_MAIN_SCHEMES)
    return (*(s for s in _MAIN_SCHEMES if s in known), *(s for s in known if s not in _MAIN_SCHEMES))


def mask_uri(value: str) -> str:
    """``value`` with the user info of a URI hidden: ``redis://:****@host``, ``redis://user:****@host``.

    Whatever precedes the last ``@`` may hold a password, with or without a
    user name, so all of it goes but a user name before a ``:``; a value that
    is no URI at all (``redis//:pw@host``) loses everything before the ``@``.
    """
    head, sep, rest = value.partition("://")
    if not sep:
        head, rest = "", value
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return value
    user = userinfo.split(":", 1)[0] if sep and ":" in userinfo else ""
    return f"{head}{sep}{user + ':' if user or (sep and ':' in userinfo) else ''}****@{host}"


def _check_store_uri(value: str) -> None:
    schemes = store_schemes()
    allowed = ", ".join(f"{s}://" for s in schemes)
    scheme, sep, _ = value.partition("://")
    if not sep:
        raise ValueError(f"must be a store URI such as 'memory://' or 'redis://host:6379/0'; schemes: {allowed}")
    if scheme not in schemes:
        close = difflib.get_close_matches(scheme, schemes, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}://'?)" if close else ""
        raise ValueError(f"unknown store scheme {scheme + '://'!r}{hint}; schemes: {allowed}")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"250ms"``, ``"2s"``, ``"5m"``."""
    return _parse_duration(value, _DURATION_RE)


def _parse_duration(value: object, pattern: re.Pattern[str]) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("a duration must be finite")
        return float(value)
    if isinstance(value, str):
        m = pattern.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("a duration is a number of seconds or a string like '250ms', '2s', '5m'")


def option(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    min: float | None = None,
    max: float | None = None,
    secret: bool = False,
    default_factory: Callable[[], Any] | None = None,
    check: Callable[[Any], object] | None = None,
) -> Any:
    """Declare a configuration field: its default, what it means, its bounds.

    ``doc`` is shown by ``resilient config`` and in the docs; ``min``/``max``
    bound numbers (inclusive); ``secret`` masks the value wherever it is
    shown or named in an error. ``check`` is called with the converted value
    when the configuration is loaded; a ``ValueError`` it raises says what is
    allowed and becomes a :class:`ConfigurationError` naming the key (with its
    section and override path), the value and where it came from.
    """
    metadata = {"doc": doc, "min": min, "max": max, "secret": secret, "check": check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _toml(value: object) -> str:
    """A value as it would be written in the configuration file."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def mask_secret(value: object, secret: bool = False) -> str:
    """Render ``value`` as TOML for display, secrets hidden (passwords in URLs, secret fields)."""
    if secret:
        return '"****"' if value not in (None, "") else _toml(value)
    return redact_url_passwords(_toml(value))


# --------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *marks = get_args(tp)
        return "a finite duration (seconds, or '250ms', '2s', '5m')" if DURATION in marks else _type_name(base)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list, each item {_type_name(get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return f"a table of {_type_name(get_args(tp)[1])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(tp, str(tp))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, tp: Any, from_env: bool) -> Any:
    """Convert ``value`` to ``tp`` or raise ValueError.

    A value from the environment arrives as the raw string: a string field
    keeps it as is, any other type first reads it as a TOML value.
    """
    if from_env and isinstance(value, str) and tp is not str:
        parsed = _parse_env_value(value)
        if not isinstance(parsed, str):
            value = parsed
    origin = get_origin(tp)
    if origin is Annotated:
        base, *marks = get_args(tp)
        if DURATION in marks:
            return _parse_duration(value, _SIGNED_DURATION_RE)
        return _coerce(value, base, from_env)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        is_none = value is None or (from_env and isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, from_env)
            except ValueError:
                continue
        raise ValueError
    if origin is tuple:
        (item,) = get_args(tp)[:1]
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return tuple(_coerce(v, item, from_env) for v in value)
    if origin in (dict, Mapping):
        _, vt = get_args(tp)
        if not isinstance(value, Mapping):
            raise ValueError
        return {str(k): _coerce(v, vt, from_env) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, (str, int)):
            text = str(value).lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if tp is float:
        # inf and nan parse as TOML floats but make no sense as a delay or a ratio.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        if from_env and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError
    raise TypeError(f"unsupported option type {tp!r}")


def _parse_env_value(raw: str) -> Any:
    """Parse an environment value as a TOML value if it is one, else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Field:
    name: str
    type: Any
    default: Any
    doc: str
    min: float | None
    max: float | None
    secret: bool
    validate: Callable[[Any], object] | None = None

    @property
    def marks(self) -> tuple[Any, ...]:
        return get_args(self.type)[1:] if get_origin(self.type) is Annotated else ()

    def show(self, value: Any) -> str:
        """The value as TOML for ``resilient config``, secrets and store passwords hidden."""
        if STORE_URI in self.marks and isinstance(value, str):
            value = mask_uri(value)
        return mask_secret(value, self.secret)

    def check(self, key: str, value: Any, source: str, from_env: bool) -> Any:
        marks = self.marks
        store = STORE_URI in marks
        if self.secret:
            shown: Any = "****"
        elif store and isinstance(value, str):
            shown = mask_uri(value)
        else:
            shown = value
        try:
            out = _coerce(value, self.type, from_env)
        except ValueError:
            raise ConfigurationError(key, shown, f"must be {_type_name(self.type)}", source=source) from None
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            # A duration is shown as written ('-5m'), a number as read.
            if not self.secret and not (DURATION in marks and isinstance(value, str)):
                shown = out
            unit = " seconds" if DURATION in marks else ""
            if self.min is not None and out < self.min:
                raise ConfigurationError(key, shown, f"must be >= {self.min:g}{unit}", source=source)
            if self.max is not None and out > self.max:
                raise ConfigurationError(key, shown, f"must be <= {self.max:g}{unit}", source=source)
        try:
            if store and not (out == "" and self.default == ""):
                _check_store_uri(out)
            if self.validate is not None:
                self.validate(out)
        except ValueError as exc:
            raise ConfigurationError(key, shown, str(exc), source=source) from None
        return out


def _schema(cls: type[Any]) -> dict[str, _Field]:
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"options class {cls!r} must be a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, _Field] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"option {cls.__name__}.{f.name} needs a default")
        if f.name in OVERRIDE_KINDS:
            raise TypeError(f"option {cls.__name__}.{f.name}: {f.name!r} is reserved for overrides")
        fields[f.name] = _Field(
            f.name,
            hints[f.name],
            default,
            f.metadata.get("doc", ""),
            f.metadata.get("min"),
            f.metadata.get("max"),
            bool(f.metadata.get("secret", False)),
            f.metadata.get("check"),
        )
    return fields


class _Hidden:
    """Stands for a value not shown: under an unknown key it may be a secret with a misspelt name."""

    def __repr__(self) -> str:
        return "(value not shown)"


_HIDDEN = _Hidden()


def _unknown(key: str, value: Any, known: Iterable[str], source: str, what: str) -> ConfigurationError:
    choices = sorted(known)
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.6)
    allowed = f"unknown {what}; known: {', '.join(choices) if choices else '(none)'}"
    return ConfigurationError(key, _HIDDEN, allowed, source=source, suggestions=close)


# --------------------------------------------------------------------------- core options


@dataclass(frozen=True, kw_only=True)
class CoreOptions:
    """Top-level keys: the ones every plugin shares."""

    store: StoreURI = option(
        "memory://",
        doc="Default store URI for stateful plugins: memory://, redis://, rediss://, redis+cluster://.",
    )
    key_prefix: str = option("resilient:", doc="Prefix of every key a plugin writes to a shared store.")
    order: tuple[str, ...] = option(
        default_factory=tuple,
        doc="Policy names, outermost first; listed ones go before the rest, which keep their default order.",
    )
    disable: tuple[str, ...] = option(default_factory=tuple, doc="Plugin or policy names to leave out.")
    on_plugin_error: Literal["raise", "warn"] = option(
        "raise", doc="A plugin that fails to load: 'raise' stops the build, 'warn' logs and skips it."
    )


CORE_SECTION = ""


# --------------------------------------------------------------------------- settings


class Section(Generic[T]):
    """A plugin's options: the section's values and its per-call overrides.

    ``base`` is the section without overrides. :meth:`for_call` merges the
    overrides that apply to a provider, model and tenant (most specific
    wins) and caches the result. ``varies`` is false when there are no
    overrides, so a policy can read ``base`` once and skip the lookup.
    """

    __slots__ = ("_cache", "_overrides", "_values", "base", "cls", "name", "varies")

    def __init__(
        self,
        name: str,
        cls: type[T],
        values: dict[str, Any],
        overrides: dict[str, dict[str, dict[str, Any]]],
    ) -> None:
        self.name = name
        self.cls = cls
        self._values = values
        self._overrides = overrides
        self.base: T = cls(**values)
        self.varies = any(overrides.get(k) for k in OVERRIDE_KINDS)
        self._cache: dict[tuple[str | None, str | None, str | None], T] = {}

    def for_call(self, provider: str | None = None, model: str | None = None, tenant: str | None = None) -> T:
        if not self.varies:
            return self.base
        key = (provider, model, tenant)
        found = self._cache.get(key)
        if found is None:
            found = self.cls(**self.merged(*key))
            if len(self._cache) < 10_000:  # tenants are unbounded; keep memory bounded
                self._cache[key] = found
        return found

    def merged(self, provider: str | None, model: str | None, tenant: str | None) -> dict[str, Any]:
        """The section's values with the matching overrides applied, most specific last."""
        merged = dict(self._values)
        for kind, name in zip(OVERRIDE_KINDS, (provider, model, tenant), strict=True):
            if name is not None:
                merged.update(self._overrides.get(kind, {}).get(name, {}))
        return merged

    def validate(self, source: str, limit: int = 100_000) -> None:
        """Build every combination of overrides now, so none fails at call time.

        Past ``limit`` combinations (many tenants times many models), each
        override is checked on its own instead.
        """
        names = [(None, *self._overrides.get(kind, {})) for kind in OVERRIDE_KINDS]
        total = len(names[0]) * len(names[1]) * len(names[2])
        if total > limit:
            names_iter: Iterable[tuple[str | None, ...]] = [
                tuple(n if i == j else None for j in range(3)) for i, kinds in enumerate(names) for n in kinds[1:]
            ]
        else:
            names_iter = itertools.product(*names)
        for combo in names_iter:
            if combo == (None, None, None):
                continue
            where = " + ".join(
                f"{self.name}.{kind}.{n}" for kind, n in zip(OVERRIDE_KINDS, combo, strict=True) if n is not None
            )
            _construct(self.cls, self.merged(*combo), where, source)


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from, for ``resilient config``."""

    key: str
    value: str
    source: str
    doc: str


class Settings:
    """The validated configuration: core options and every plugin's section."""

    def __init__(
        self,
        core: CoreOptions,
        sections: dict[str, Section[Any]],
        rows: list[Setting],
        file: str | None,
    ) -> None:
        self.core = core
        self._sections = sections
        self._rows = rows
        #: The file the configuration was read from, if any.
        self.file = file

    def section(self, cls: type[T]) -> Section[T]:
        """The section whose options class is ``cls``."""
        for section in self._sections.values():
            if section.cls is cls:
                return typing.cast("Section[T]", section)
        raise KeyError(
            f"no configuration section uses {cls.__name__}; is its plugin's resilient_options hook registered?"
        )

    def options(self, cls: type[T]) -> T:
        """Shorthand for ``section(cls).base``."""
        return self.section(cls).base

    @property
    def sections(self) -> Mapping[str, Section[Any]]:
        return types.MappingProxyType(self._sections)

    def describe(self) -> list[Setting]:
        """Every effective value with its source, secrets masked."""
        return list(self._rows)

    # ----------------------------------------------------------------- loading

    @staticmethod
    def read_sources(
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> tuple[dict[str, Any], str | None, dict[str, str]]:
        """Read the raw file (or mapping) layer and the ``RESILIENT_*`` environment."""
        env = os.environ if env is None else env
        env_vars = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k not in RESERVED_ENV}
        if config is not None:
            return dict(config), "config=", env_vars
        base = Path(cwd) if cwd is not None else Path.cwd()
        explicit = env.get("RESILIENT_CONFIG")
        if explicit:
            path = Path(explicit)
            if not path.is_absolute():
                path = base / path
            if not path.is_file():
                raise ConfigurationError("RESILIENT_CONFIG", explicit, "must name an existing TOML file")
            return _read_toml(path, pyproject=path.name == "pyproject.toml"), str(path), env_vars
        own = base / "resilient.toml"
        if own.is_file():
            return _read_toml(own, pyproject=False), str(own), env_vars
        pyproject = base / "pyproject.toml"
        if pyproject.is_file():
            data = _read_toml(pyproject, pyproject=True)
            if data:
                return data, f"{pyproject} [tool.resilient]", env_vars
        return {}, None, env_vars

    @classmethod
    def load(
        cls,
        sections: Mapping[str, type[Any]] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Read every source and validate it against the core and ``sections`` schemas."""
        raw, file, env_vars = cls.read_sources(config=config, env=env, cwd=cwd)
        return cls.build(raw, file, env_vars, dict(sections or {}))

    @classmethod
    def build(
        cls,
        raw: Mapping[str, Any],
        file: str | None,
        env_vars: Mapping[str, str],
        sections: dict[str, type[Any]],
        ignore: Iterable[str] = (),
    ) -> Settings:
        """Validate raw sources (see :meth:`read_sources`) against the schemas.

        Sections named in ``ignore`` (those of disabled plugins) are skipped
        unvalidated, so disabling a plugin does not require deleting its table.
        """
        ignored = {name for name in ignore if name not in sections}
        file_label = file or "config"
        schemas: dict[str, dict[str, _Field]] = {CORE_SECTION: _schema(CoreOptions)}
        for name, options_cls in sections.items():
            schemas[name] = _schema(options_cls)

        # values[section][key] = (value, source); overrides[section][kind][name][key] = (value, source)
        values: dict[str, dict[str, tuple[Any, str]]] = {s: {} for s in schemas}
        overrides: dict[str, dict[str, dict[str, dict[str, tuple[Any, str]]]]] = {
            s: {k: {} for k in OVERRIDE_KINDS} for s in schemas if s
        }
        top_known = set(schemas[CORE_SECTION]) | {s for s in schemas if s}

        def put(section: str, path: list[str], value: Any, source: str, from_env: bool, shown_key: str) -> None:
            schema = schemas[section]
            if len(path) == 1:
                key = path[0]
                if section and key in OVERRIDE_KINDS:
                    raise ConfigurationError(
                        shown_key, _HIDDEN, f"must be a table of tables, one per {key[:-1]}", source=source
                    )
                if key not in schema:
                    known = set(schema) | (set(OVERRIDE_KINDS) if section else top_known)
                    raise _unknown(shown_key, value, known, source, "key")
                values[section][key] = (schema[key].check(shown_key, value, source, from_env), source)
                return
            kind, name, *rest = path
            if section and kind in OVERRIDE_KINDS and len(rest) == 0:
                raise ConfigurationError(
                    shown_key, _HIDDEN, f"must be a table of {section} options for one {kind[:-1]}", source=source
                )
            if section and kind in OVERRIDE_KINDS and len(rest) == 1:
                key = rest[0]
                if key not in schema:
                    raise _unknown(shown_key, value, schema, source, "key")
                checked = schema[key].check(shown_key, value, source, from_env)
                overrides[section][kind].setdefault(name, {})[key] = (checked, source)
                return
            known = set(OVERRIDE_KINDS) if section else top_known
            raise _unknown(shown_key, value, known, source, "key" if section else "section")

        # Layer 2: the file (or config= mapping).
        for top_key, value in raw.items():
            top = str(top_key)
            if top in ignored:
                continue
            if top in schemas[CORE_SECTION]:
                put(CORE_SECTION, [top], value, file_label, False, top)
            elif top in schemas and top:
                if not isinstance(value, Mapping):
                    raise ConfigurationError(top, _HIDDEN, f"must be a table of {top} options", source=file_label)
                for path, leaf in _flatten(value):
                    put(top, path, leaf, file_label, False, ".".join([top, *path]))
            else:
                raise _unknown(top, value, top_known, file_label, "key or section")

        # Layer 3: the environment, which wins over the file.
        for var in sorted(env_vars):
            parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
            source = f"env {var}"
            raw_value = env_vars[var]
            head = parts[0]
            if head in ignored and len(parts) >= 2:
                continue
            if len(parts) == 1 and head in schemas[CORE_SECTION]:
                put(CORE_SECTION, [head], raw_value, source, True, head)
            elif head in schemas and head and len(parts) >= 2:
                put(head, parts[1:], raw_value, source, True, ".".join(parts))
            else:
                known_env = [ENV_PREFIX + k.upper() for k in schemas[CORE_SECTION]] + [
                    f"{ENV_PREFIX}{s.upper()}__<KEY>" for s in schemas if s
                ]
                close = difflib.get_close_matches(var, known_env, n=2, cutoff=0.6)
                raise ConfigurationError(
                    var,
                    "****",
                    "unknown environment variable; known: " + ", ".join(sorted(known_env)),
                    source="environment",
                    suggestions=close,
                )

        rows: list[Setting] = []

        def finish(section: str, options_cls: type[Any]) -> dict[str, Any]:
            merged: dict[str, Any] = {}
            for key, fld in schemas[section].items():
                value, source = values[section].get(key, (fld.default, "default"))
                merged[key] = value
                shown = f"{section}.{key}" if section else key
                rows.append(Setting(shown, fld.show(value), source, fld.doc))
            sources = {key: found for key, (_, found) in values[section].items()}
            _construct(options_cls, merged, section, file_label, sources)
            return merged

        core = CoreOptions(**finish(CORE_SECTION, CoreOptions))
        built: dict[str, Section[Any]] = {}
        for name, options_cls in sections.items():
            base_values = finish(name, options_cls)
            plain: dict[str, dict[str, dict[str, Any]]] = {}
            for kind, by_name in overrides[name].items():
                plain[kind] = {}
                for target, kv in by_name.items():
                    plain[kind][target] = {k: v for k, (v, _) in kv.items()}
                    for key, (value, source) in kv.items():
                        shown = f"{name}.{kind}.{target}.{key}"
                        rows.append(Setting(shown, schemas[name][key].show(value), source, ""))
            built[name] = Section(name, options_cls, base_values, plain)
            built[name].validate(file_label)
        return cls(core, built, rows, file)


def _construct(
    cls: type[Any], kwargs: dict[str, Any], where: str, source: str, sources: Mapping[str, str] | None = None
) -> Any:
    """Build an options object; turn its own cross-field checks into ConfigurationError.

    The options class wrote the message; values of ``secret`` fields are
    blanked out of it in case it quoted one. A message that starts with
    ``<field> = <value!r>`` is about that field: the error names
    ``<where>.<field>``, its value and (from ``sources``) where it was set.
    """
    try:
        return cls(**kwargs)
    except ConfigurationError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc)
        fields = dataclasses.fields(cls)
        for f in fields:
            value = kwargs.get(f.name)
            if f.metadata.get("secret") and isinstance(value, str) and value:
                message = message.replace(value, "****")
        for f in fields:
            prefix = f"{f.name} = {kwargs.get(f.name)!r}"
            if f.name in kwargs and not f.metadata.get("secret") and message.startswith(prefix):
                rest = message[len(prefix) :].lstrip(":").strip()
                key = f"{where}.{f.name}" if where else f.name
                found = (sources or {}).get(f.name, source)
                raise ConfigurationError(key, kwargs[f.name], rest, source=found) from None
        raise ConfigurationError(where or "resilient", _HIDDEN, message, source=source) from None


def _flatten(table: Mapping[str, Any], prefix: list[str] | None = None) -> Iterable[tuple[list[str], Any]]:
    """Yield (path, value) for every leaf; an override table is descended, a plain mapping value is a leaf."""
    prefix = prefix or []
    for raw_key, value in table.items():
        key = str(raw_key)
        path = [*prefix, key]
        descend = isinstance(value, Mapping) and (
            (not prefix and key in OVERRIDE_KINDS) or (len(prefix) == 1 and prefix[0] in OVERRIDE_KINDS)
        )
        if descend:
            yield from _flatten(value, path)
        else:
            yield path, value


def _read_toml(path: Path, *, pyproject: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(str(path), "(file)", f"is not valid TOML: {exc}") from None
    if pyproject:
        tool = data.get("tool", {})
        section = tool.get("resilient", {}) if isinstance(tool, dict) else {}
        return dict(section) if isinstance(section, dict) else {}
    return dict(data)
