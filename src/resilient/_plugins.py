"""Finding and registering plugins (build time only).

Plugins come from the ``resilient`` entry-point group (first-party ones under
``plugins/`` are registered there exactly like a third party's) and from
``Pipeline(plugins=[...])``. A plugin that fails to import, has a hook with
a wrong signature or a misspelt hook name is recorded with its cause, so
``resilient plugins`` can still list the others with the broken one marked;
the pipeline then raises :class:`~resilient.errors.PluginError` naming it, or
logs and skips it when ``on_plugin_error = "warn"``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

__all__ = ["ENTRY_POINT_GROUP", "PluginInfo", "PluginSet", "load_plugins"]

ENTRY_POINT_GROUP = "resilient"
_log = logging.getLogger("resilient.plugins")


@dataclass
class PluginInfo:
    """One plugin as found: where from, which hooks, and why it failed if it did."""

    name: str
    source: str
    hooks: tuple[str, ...] = ()
    error: str | None = None
    disabled: bool = False
    plugin: object | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disabled


def _plugin_name(obj: object) -> str:
    name = getattr(obj, "name", None) if not inspect.ismodule(obj) else None
    if isinstance(name, str) and name:
        return name
    if inspect.ismodule(obj):
        return obj.__name__
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_error(exc: BaseException) -> str:
    """One line: the type and the whole message (pluggy spreads the cause over several lines)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PluginSet:
    """A pluggy manager holding the registered plugins, and the record of all found."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []

    @property
    def errors(self) -> list[PluginInfo]:
        return [i for i in self.infos if i.error is not None]

    def add(self, name: str, source: str, load: Callable[[], object], disabled: bool) -> None:
        info = PluginInfo(name, source, disabled=disabled)
        self.infos.append(info)
        if disabled:
            return
        try:
            obj = load()
            if inspect.isclass(obj):
                obj = obj()
        except Exception as exc:
            info.error = f"failed to load: {_describe_error(exc)}"
            return
        info.plugin = obj
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:  # PluginValidationError (bad signature), ValueError (duplicate)
            info.error = f"failed to register: {_describe_error(exc)}"
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            # A hook implementation whose name matches no hook: almost always a typo.
            self.pm.unregister(obj)
            info.error = f"unknown hook: {_describe_error(exc)}"
            return
        wrappers = [
            caller.name
            for caller in self.pm.get_hookcallers(obj) or ()
            for impl in caller.get_hookimpls()
            if impl.plugin is obj and (impl.wrapper or impl.hookwrapper)
        ]
        if wrappers:
            # Our hooks collect contributions at build time; a wrapper has nothing to wrap.
            self.pm.unregister(obj)
            info.error = (
                f"hook {', '.join(sorted(wrappers))} is declared as a wrapper; resilient hooks take plain "
                "implementations (wrap provider calls with a Policy instead)"
            )
            return
        info.hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(obj) or ()))

    def call(self, hook: str, on_error: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on each plugin separately, so a failure names its plugin.

        Returns ``(plugin name, result)`` for every implementation that
        returned something, in pluggy's call order.
        """
        caller = getattr(self.pm.hook, hook)
        results: list[tuple[str, Any]] = []
        for impl in reversed(caller.get_hookimpls()):  # pluggy calls the last registered first
            args = {a: kwargs[a] for a in impl.argnames}
            try:
                result = impl.function(**args)
            except Exception as exc:
                problem = PluginError(impl.plugin_name, f"hook {hook} raised {_describe_error(exc)}")
                if on_error == "raise":
                    raise problem from exc
                _log.warning("%s; skipping it", problem)
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results


def _hook_names(obj: object) -> tuple[list[str], list[str]]:
    """The attributes of ``obj`` marked with ``@resilient.hookimpl``, and those only named like a hook."""
    marked: list[str] = []
    named: list[str] = []
    for attr in dir(obj):
        try:
            value = getattr(obj, attr, None)
        except Exception:  # a property that fails on the class: not a hook
            continue
        if hasattr(value, hookspecs.PROJECT + "_impl"):
            marked.append(attr)
        elif attr.startswith(hookspecs.PROJECT + "_") and callable(value):
            named.append(attr)
    return marked, named


def _check_plugin(obj: object) -> None:
    """A TypeError for an explicit plugin that cannot be one: a name, or an object with no hook."""
    if isinstance(obj, str):
        raise TypeError(
            f"plugins=[{obj!r}]: a plugin is an object, class or module with @resilient.hookimpl functions, "
            f"not a name; installed plugins are found by name through the {ENTRY_POINT_GROUP!r} entry points "
            "(Pipeline(discover=True), the default) and left out with the 'disable' key"
        )
    marked, named = _hook_names(obj)
    if marked:
        return
    hint = (
        f"; {', '.join(named)} {'is' if len(named) == 1 else 'are'} not decorated with @resilient.hookimpl"
        if named
        else ""
    )
    raise TypeError(
        f"plugins=[{obj!r}]: not a plugin: a plugin is an object, class or module with at least one "
        f"@resilient.hookimpl function (resilient_options, resilient_policies, resilient_observers, ...){hint}"
    )


def load_plugins(
    explicit: Sequence[object] = (),
    *,
    discover: bool = True,
    disable: Iterable[str] = (),
) -> PluginSet:
    """Register entry-point plugins (when ``discover``) then explicit ones."""
    if isinstance(explicit, (str, bytes)):
        raise TypeError(f"plugins must be a list of plugin objects or modules, not the string {explicit!r}")
    for obj in explicit:
        _check_plugin(obj)
    disabled = set(disable)
    plugins = PluginSet()
    if discover:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            plugins.add(ep.name, f"entry point {ep.value}", ep.load, ep.name in disabled)
    for obj in explicit:
        name = _plugin_name(obj)
        plugins.add(name, "explicit", lambda obj=obj: obj, name in disabled)  # type: ignore[misc]
    return plugins


def installed_plugin_names() -> frozenset[str]:
    """The names of the plugins installed under the entry-point group, loaded or not."""
    return frozenset(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def raise_for_errors(plugins: PluginSet, on_error: str) -> None:
    """Raise (or log) the first broken plugin according to ``on_plugin_error``."""
    for info in plugins.errors:
        if on_error == "raise":
            raise PluginError(info.name, f"{info.error} ({info.source})")
        _log.warning("plugin %r skipped: %s (%s)", info.name, info.error, info.source)
