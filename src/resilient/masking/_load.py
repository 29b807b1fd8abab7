"""Building a masker from the configuration and the detectors plugins contribute."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError
from ._detectors import Detector, default_detectors
from ._engine import Masker
from ._options import MaskingOptions

__all__ = ["detectors_of", "installed_detectors", "load_masker", "masker_from_options"]


def masker_from_options(options: MaskingOptions, detectors: Sequence[Detector] | None = None) -> Masker:
    """A masker of ``detectors`` (default: the first-party set) as ``options`` say.

    ``options.patterns`` are added after them; ``options.disable`` must name
    known detectors.
    """
    found = list(default_detectors() if detectors is None else detectors)
    found.extend(Detector(name, pattern) for name, pattern in options.patterns.items())
    known = {d.name for d in found}
    unknown = [n for n in options.disable if n not in known]
    if unknown:
        raise ConfigurationError(
            "masking.disable",
            list(options.disable),
            f"unknown detector {unknown[0]!r}; known: {', '.join(sorted(known))}",
        )
    kept = [d for d in found if d.name not in set(options.disable)]
    return Masker(kept, replacement=options.replacement, hmac_key=options.hmac_key)


def detectors_of(plugins: Iterable[object]) -> list[Detector]:
    """The detectors every plugin's ``resilient_mask_detectors`` returns, in plugin order."""
    found: list[Detector] = []
    for plugin in plugins:
        hook = getattr(plugin, "resilient_mask_detectors", None)
        if hook is None:
            continue
        for d in hook() or ():
            if not isinstance(d, Detector):
                raise TypeError(f"resilient_mask_detectors of {plugin!r} returned {d!r}, not a Detector")
            found.append(d)
    return found


def load_masker(
    *,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    plugins: Sequence[object] = (),
    discover: bool = True,
) -> tuple[Masker, MaskingOptions]:
    """The masker the configuration describes: ``[masking]`` options, detectors from every plugin.

    Reads the same sources as a :class:`~resilient.Pipeline` (file or
    ``config=``, then ``RESILIENT_*`` environment) and validates them the same
    way, without building policies.
    """
    from .._plugins import load_plugins, raise_for_errors
    from ..config import Settings
    from ..pipeline import _core_only

    raw, file, env_vars = Settings.read_sources(config=config, env=env, cwd=cwd)
    core = _core_only(raw, file, env_vars)
    from . import _plugin

    registered = load_plugins(plugins, discover=discover, disable=core.disable)
    if not any(i.plugin is _plugin for i in registered.infos) and "masking" not in core.disable:
        # Not discovered (discover=False, or an install whose entry points predate it): the core section anyway.
        registered.add("masking", "built in", lambda: _plugin, False)
    raise_for_errors(registered, core.on_plugin_error)
    sections: dict[str, type[Any]] = {}
    for _, declared in registered.call("resilient_options", core.on_plugin_error):
        sections.update(dict(declared))
    settings = Settings.build(raw, file, env_vars, sections, ignore=core.disable)
    options = settings.options(MaskingOptions) if "masking" in settings.sections else MaskingOptions()
    return masker_from_options(options, _ordered(i.plugin for i in registered.infos if i.ok)), options


def _ordered(plugins: Iterable[object]) -> list[Detector]:
    """The first-party detectors first (they decide ties at one position), then the plugins' in name order."""
    from . import _plugin

    return detectors_of([_plugin, *(p for p in plugins if p is not None and p is not _plugin)])


def installed_detectors() -> list[Detector]:
    """The first-party detectors and those of every plugin installed (entry points)."""
    from .._plugins import load_plugins

    return _ordered(i.plugin for i in load_plugins().infos if i.ok)
