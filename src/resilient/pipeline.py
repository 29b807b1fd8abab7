"""The pipeline: plugins composed once into a chain, run per call.

Building a :class:`Pipeline` loads the plugins (entry points and explicit),
validates the configuration against every plugin's options, collects
classifiers, observers and policies through the hooks, and orders the
policies. Guarding a function compiles one chain for it: each policy wraps
the next handler once, outermost first. A call then runs through those
pre-linked closures -- no hook dispatch, no lookups.

A pipeline is immutable after it is built; build a new one to change it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from ._plugins import PluginInfo, PluginSet, installed_plugin_names, load_plugins, raise_for_errors
from ._streams import AsyncStarted, Started, drive_astream, drive_stream
from .call import Call, Kind, Target
from .clock import SYSTEM_CLOCK, Clock
from .config import CoreOptions, Settings
from .errors import ConfigurationError, PluginError
from .events import Emitter, Observer
from .policy import Classifier, Policy, Runtime

__all__ = ["Guarded", "Pipeline", "target_of"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)

_log = logging.getLogger("resilient")

_WRAP_METHOD: dict[Kind, str] = {
    "sync": "wrap",
    "async": "wrap_async",
    "stream": "wrap_stream",
    "astream": "wrap_astream",
}


class Guarded(Protocol[P, R_co]):
    """What a guarded function is at run time: the function, plus its ``target``.

    :meth:`Pipeline.guard` is typed as returning ``Callable[P, R]`` so that
    methods bind; ``cast(Guarded[P, R], fn).target`` or :func:`target_of`
    reach the target in typed code.
    """

    @property
    def target(self) -> Target: ...

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


def target_of(fn: Callable[..., Any]) -> Target:
    """The :class:`Target` of a guarded function; ``TypeError`` if ``fn`` is not guarded."""
    target = getattr(fn, "target", None)
    if not isinstance(target, Target):
        raise TypeError(f"{fn!r} is not a guarded function")
    return target


def detect_kind(fn: Callable[..., Any]) -> Kind:
    """sync, async, stream (generator) or astream (async generator), by inspection."""
    # Look through functools.wraps decorators to the function itself.
    fn = inspect.unwrap(fn)
    probe = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    for candidate in (fn, probe):
        if inspect.isasyncgenfunction(candidate):
            return "astream"
        if inspect.isgeneratorfunction(candidate):
            return "stream"
        if inspect.iscoroutinefunction(candidate):
            return "async"
    return "sync"


def _is_generator(fn: Callable[..., Any], check: Callable[[Any], bool]) -> bool:
    """``check`` (``inspect.isgeneratorfunction``, ...) on ``fn``, through wrappers and an object's ``__call__``."""
    fn = inspect.unwrap(fn)
    probe = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    return check(fn) or check(probe)


class Pipeline:
    """Policies from plugins, composed into one chain per guarded target.

    ``plugins`` are registered in addition to the entry-point plugins (or
    instead of them with ``discover=False``). ``config`` replaces the file
    layer of the configuration; the environment still overrides it (pass
    ``env={}`` to ignore it). ``clock`` is given to every time-based policy and ``random`` (uniform in
    [0, 1)) to every policy that jitters, so tests can fix both.
    """

    def __init__(
        self,
        *,
        plugins: Sequence[object] = (),
        discover: bool = True,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        raw, file, env_vars = Settings.read_sources(config=config, env=env, cwd=cwd)
        core = _core_only(raw, file, env_vars)
        self._plugins: PluginSet = load_plugins(plugins, discover=discover, disable=core.disable)
        raise_for_errors(self._plugins, core.on_plugin_error)
        on_error = core.on_plugin_error

        sections: dict[str, type[Any]] = {}
        for plugin, declared in self._plugins.call("resilient_options", on_error):
            for name, cls in dict(declared).items():
                if name in sections and sections[name] is not cls:
                    raise PluginError(plugin, f"configuration section {name!r} is already declared by another plugin")
                if name in CoreOptions.__dataclass_fields__:
                    raise PluginError(plugin, f"configuration section {name!r} clashes with a core key")
                sections[name] = cls
        self.settings: Settings = Settings.build(raw, file, env_vars, sections, ignore=core.disable)

        base = Runtime(settings=self.settings, clock=clock or SYSTEM_CLOCK)
        if random is not None:
            base = dataclasses.replace(base, random=random)
        classifiers: list[Classifier] = []
        for _, found in self._plugins.call("resilient_classifiers", on_error, runtime=base):
            classifiers.extend(found)
        observers: list[Observer] = []
        for _, found in self._plugins.call("resilient_observers", on_error, runtime=base):
            observers.extend(found)
        self.runtime: Runtime = Runtime(
            settings=self.settings,
            clock=base.clock,
            events=Emitter(observers),
            classifiers=tuple(classifiers),
            random=base.random,
        )

        contributed: list[tuple[str, Policy]] = []
        for plugin, found in self._plugins.call("resilient_policies", on_error, runtime=self.runtime):
            for policy in found:
                if not isinstance(policy, Policy):
                    raise PluginError(plugin, f"resilient_policies returned {policy!r}, not a resilient.Policy")
                contributed.append((plugin, policy))
        known = frozenset(info.name for info in self._plugins.infos)
        if not discover and (self.settings.core.order or self.settings.core.disable):
            # Names of installed plugins not discovered are no typo either (reading them costs ~10 ms).
            known |= installed_plugin_names()
        sources = {row.key: row.source for row in self.settings.describe() if row.key in ("order", "disable")}
        self.policies: tuple[Policy, ...] = _order(contributed, self.settings.core, known, sources)
        self._owner = {id(p): plugin for plugin, p in contributed}

    # ------------------------------------------------------------------ introspection

    @property
    def plugins(self) -> list[PluginInfo]:
        """Every plugin found, including disabled and broken ones."""
        return list(self._plugins.infos)

    def plugin_of(self, policy: Policy) -> str:
        """The name of the plugin that contributed ``policy``."""
        return self._owner[id(policy)]

    # ------------------------------------------------------------------ compiling

    def compile(self, target: Target, terminal: Callable[[Call], Any]) -> Callable[[Call], Any]:
        """Link the policies around ``terminal`` for ``target``; outermost policy first.

        ``terminal`` makes the provider call from the :class:`Call` and
        returns what the kind calls for (value, awaitable, iterator, async
        iterator). This is what :meth:`guard` and the SDK wrappers build on.
        """
        method = _WRAP_METHOD[target.kind]
        handler = terminal
        for policy in reversed(self.policies):
            try:
                handler = getattr(policy, method)(handler, target)
            except Exception as exc:
                raise PluginError(
                    self.plugin_of(policy), f"policy {policy.name!r} failed to wrap {target.name}: {exc!r}"
                ) from exc
        return handler

    # The overloads return plain ``Callable[P, R]`` (not :class:`Guarded`) so
    # that mypy binds a guarded method like the method itself.
    @overload
    def guard(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def guard(
        self,
        fn: None = None,
        /,
        *,
        provider: str = ...,
        operation: str | None = ...,
        model: str | None = ...,
        kind: Kind | None = ...,
        tenant: Callable[[Call], str | None] | None = ...,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def guard(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        provider: str = "default",
        operation: str | None = None,
        model: str | None = None,
        kind: Kind | None = None,
        tenant: Callable[[Call], str | None] | None = None,
    ) -> Any:
        """Put the pipeline's policies around ``fn``: ``@pipeline.guard`` or ``@pipeline.guard(...)``.

        Works on sync and async functions, generators and async generators
        (streams); the result keeps ``fn``'s name, docstring, signature and
        type, and is called the same way: with ``kind="stream"`` a function
        that returns an iterator stays a function and with ``kind="astream"``
        a coroutine function returning an async iterator stays a coroutine
        function; calling (awaiting) it makes the call through the policies
        and returns the guarded stream with its first chunk already read.
        ``operation`` defaults to the function's name; ``model``, when not
        given, is read from each call's ``model`` argument; ``tenant`` is a
        key function (default: the request context's tenant).
        """

        def decorate(func: Callable[..., Any]) -> Guarded[..., Any]:
            return self._guard(func, provider, operation, model, kind, tenant)

        if fn is not None:
            return decorate(fn)
        return decorate

    def _guard(
        self,
        fn: Callable[P, R],
        provider: str,
        operation: str | None,
        model: str | None,
        kind: Kind | None,
        tenant: Callable[[Call], str | None] | None,
    ) -> Guarded[P, R]:
        if not callable(fn):
            raise TypeError(f"guard() needs a callable, got {fn!r}")
        kind = kind or detect_kind(fn)
        if kind not in _WRAP_METHOD:
            raise ConfigurationError("kind", kind, "must be one of 'sync', 'async', 'stream', 'astream'")
        inner = fn.func if isinstance(fn, functools.partial) else fn
        name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
        target = Target(
            provider=provider,
            operation=operation or str(getattr(inner, "__name__", type(inner).__name__)),
            kind=kind,
            model=model,
            name=name,
            tenant=tenant,
        )
        wrapper = _build_wrapper(self, fn, target)
        functools.update_wrapper(wrapper, fn)
        if not hasattr(fn, "__name__"):  # a functools.partial or a callable object
            wrapper.__name__ = wrapper.__qualname__ = target.operation
        wrapper.target = target  # type: ignore[attr-defined]
        return cast("Guarded[P, R]", wrapper)

    # ------------------------------------------------------------------ SDK clients

    def wrap(self, client: T, /, *, provider: str | None = None, sdk_retries: bool | None = None) -> T:
        """A copy of an SDK ``client`` whose provider calls go through this pipeline.

        Knows ``anthropic.Anthropic`` / ``AsyncAnthropic`` (``messages.create``,
        ``messages.stream``, ``messages.count_tokens``) and ``openai.OpenAI`` /
        ``AsyncOpenAI`` (``chat.completions.create``), with ``stream=True`` and
        ``with_raw_response``. The copy keeps the client's type and every other
        method; the original is left as it was. Usage and rate-limit headers
        are read from the real responses (``call.metadata["response_headers"]``).

        ``sdk_retries``: the SDKs retry by themselves; by default the copy gets
        ``max_retries=0`` when this pipeline has a retry policy, so one layer
        owns retries. ``provider`` overrides the provider name used for
        configuration overrides, keys and metrics (e.g. ``"azure-openai"``).
        """
        from .providers._sdk import wrap_client

        return wrap_client(self, client, provider=provider, sdk_retries=sdk_retries)

    # ------------------------------------------------------------------ readiness

    def health(self) -> dict[str, Any]:
        """Readiness for ``/ready``: ``{"ok": bool, "policies": {name: health}}``.

        ``ok`` is false when any policy reports ``"ok": False``. A policy whose
        ``health()`` raises is reported not ok with the error's type, never the
        message (it could carry a store URL).
        """
        return _readiness([(p.name, _health_of(p)) for p in self.policies])

    async def ahealth(self) -> dict[str, Any]:
        """Async :meth:`health` (policies with async stores check them on the running loop)."""
        found = []
        for policy in self.policies:
            try:
                found.append((policy.name, await policy.ahealth()))
            except Exception as exc:
                _log.warning("health of policy %r failed: %s", policy.name, type(exc).__name__)
                found.append((policy.name, {"ok": False, "error": type(exc).__name__}))
        return _readiness(found)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every policy (store connections). Errors are logged, not raised."""
        for policy in self.policies:
            try:
                policy.close()
            except Exception:
                _log.exception("closing policy %r failed", policy.name)

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        for policy in self.policies:
            try:
                await policy.aclose()
            except Exception:
                _log.exception("closing policy %r failed", policy.name)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Pipeline policies={[p.name for p in self.policies]}>"


def _build_wrapper(pipeline: Pipeline, fn: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """The function that replaces ``fn``: makes a Call and enters the chain.

    With no policy acting on the target the chain is just the terminal, and
    the wrapper calls ``fn`` directly without building a Call.
    """
    kind = target.kind
    classify = pipeline.runtime.classify
    # Write each wrapper out by kind so the per-call path has no branches.
    if kind == "sync":

        def terminal(call: Call) -> Any:
            return fn(*call.args, **call.kwargs)

        handler = pipeline.compile(target, terminal)
        if handler is terminal:

            def bare(*args: Any, **kwargs: Any) -> Any:
                return fn(*args, **kwargs)

            return bare

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return handler(Call(target, args, kwargs))

        return sync_wrapper

    if kind == "async":
        afn = cast("Callable[..., Awaitable[Any]]", fn)

        def aterminal(call: Call) -> Awaitable[Any]:
            return afn(*call.args, **call.kwargs)

        ahandler = pipeline.compile(target, aterminal)
        if ahandler is aterminal:

            async def abare(*args: Any, **kwargs: Any) -> Any:
                return await afn(*args, **kwargs)

            return abare

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await ahandler(Call(target, args, kwargs))

        return async_wrapper

    if kind == "stream":
        gfn = cast("Callable[..., Iterator[Any]]", fn)

        def sterminal(call: Call) -> Iterator[Any]:
            return iter(gfn(*call.args, **call.kwargs))

        shandler = pipeline.compile(target, sterminal)
        if not _is_generator(fn, inspect.isgeneratorfunction):
            # A function that returns a stream (``return client.messages.create(stream=True)``) stays a
            # function: calling it makes the call and returns the guarded stream, started.
            if shandler is sterminal:

                def sreturn_bare(*args: Any, **kwargs: Any) -> Any:
                    return gfn(*args, **kwargs)

                return sreturn_bare

            def sreturn_wrapper(*args: Any, **kwargs: Any) -> Any:
                return Started.start(drive_stream(Call(target, args, kwargs), shandler, classify))

            return sreturn_wrapper
        if shandler is sterminal:

            def sbare(*args: Any, **kwargs: Any) -> Any:
                return (yield from gfn(*args, **kwargs))

            return sbare

        def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
            return (yield from drive_stream(Call(target, args, kwargs), shandler, classify))

        return stream_wrapper

    agfn = cast("Callable[..., AsyncIterator[Any]]", fn)

    if _is_generator(fn, inspect.isasyncgenfunction):

        def asterminal(call: Call) -> AsyncIterator[Any]:
            return aiter(agfn(*call.args, **call.kwargs))

    else:
        # kind="astream" on a coroutine function that returns an async iterator
        # (``return await client.messages.create(stream=True)``): await it first.
        async def asterminal(call: Call) -> AsyncIterator[Any]:
            result: Any = agfn(*call.args, **call.kwargs)
            if inspect.isawaitable(result) and not hasattr(result, "__aiter__"):
                result = await result
            async for item in result:
                yield item

        if _is_generator(fn, inspect.iscoroutinefunction):
            # ... and stays a coroutine function: awaiting the call makes it and gives the guarded
            # stream, started (a refusal or a failed start raises from the await, as unguarded).
            aafn = cast("Callable[..., Awaitable[Any]]", fn)
            acompiled = pipeline.compile(target, asterminal)
            if acompiled is asterminal:

                async def areturn_bare(*args: Any, **kwargs: Any) -> Any:
                    return await aafn(*args, **kwargs)

                return areturn_bare

            async def areturn_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await AsyncStarted.start(drive_astream(Call(target, args, kwargs), acompiled, classify))

            return areturn_wrapper

    ashandler = pipeline.compile(target, asterminal)
    if ashandler is asterminal:

        async def asbare(*args: Any, **kwargs: Any) -> Any:
            inner = asterminal(Call(target, args, kwargs))
            try:
                async for item in inner:
                    yield item
            finally:
                # An async generator is not closed with the one iterating it;
                # close it now rather than whenever the loop finalizes it.
                aclose = getattr(inner, "aclose", None)
                if aclose is not None:
                    await aclose()

        return asbare

    async def astream_wrapper(*args: Any, **kwargs: Any) -> Any:
        driver = drive_astream(Call(target, args, kwargs), ashandler, classify)
        try:
            async for item in driver:
                yield item
        finally:
            await driver.aclose()

    return astream_wrapper


def _health_of(policy: Policy) -> Mapping[str, Any] | None:
    try:
        return policy.health()
    except Exception as exc:
        _log.warning("health of policy %r failed: %s", policy.name, type(exc).__name__)
        return {"ok": False, "error": type(exc).__name__}


def _readiness(found: Sequence[tuple[str, Mapping[str, Any] | None]]) -> dict[str, Any]:
    policies = {name: dict(h) for name, h in found if h is not None}
    return {"ok": all(h.get("ok", True) is not False for h in policies.values()), "policies": policies}


def _core_only(raw: Mapping[str, Any], file: str | None, env_vars: Mapping[str, str]) -> CoreOptions:
    """The core options alone, read before plugins are known (they decide which load)."""
    fields = CoreOptions.__dataclass_fields__
    core_raw = {k: v for k, v in raw.items() if k in fields}
    core_env = {k: v for k, v in env_vars.items() if k[len("RESILIENT_") :].lower() in fields}
    return Settings.build(core_raw, file, core_env, {}).core


def _order(
    contributed: Sequence[tuple[str, Policy]],
    core: CoreOptions,
    known_plugins: frozenset[str] = frozenset(),
    sources: Mapping[str, str] | None = None,
) -> tuple[Policy, ...]:
    """Default order by ``Policy.order`` then name; ``order`` names go first; ``disable`` drops.

    A name in ``order`` or ``disable`` must be a policy or a plugin in ``known_plugins``;
    ``sources`` says where each of the two keys was set, for the error.
    """
    sources = sources or {}
    seen: dict[str, str] = {}
    for plugin, policy in contributed:
        if not policy.name:
            raise PluginError(plugin, f"policy {policy!r} has no name")
        if policy.name in seen:
            raise PluginError(plugin, f"policy name {policy.name!r} is already used by plugin {seen[policy.name]!r}")
        seen[policy.name] = plugin
    policies = sorted(seen)
    # A plugin found but inactive (the cache until enabled, a disabled one, an installed one not
    # discovered) contributes no policy here, but its name is no typo: in ``order`` it takes no place.
    # Policies of a disabled plugin are not known (it is not loaded), and need no entry of their own.
    for key, names, allowed in (
        ("order", core.order, "a policy or an installed plugin"),
        ("disable", core.disable, "an installed plugin or a policy of an enabled one"),
    ):
        for name in names:
            if name not in seen and name not in known_plugins:
                raise ConfigurationError(
                    key,
                    list(names),
                    f"{name!r} is not {allowed}; policies: {', '.join(policies) or '(none)'}; "
                    f"plugins: {', '.join(sorted(known_plugins)) or '(none)'}",
                    source=sources.get(key),
                    suggestions=difflib.get_close_matches(name, sorted({*seen, *known_plugins}), n=2, cutoff=0.6),
                )
    position = {name: i for i, name in enumerate(core.order)}
    disabled = set(core.disable)
    kept = [p for plugin, p in contributed if p.name not in disabled and plugin not in disabled]
    kept.sort(key=lambda p: (0, position[p.name], 0, "") if p.name in position else (1, 0, p.order, p.name))
    return tuple(kept)
