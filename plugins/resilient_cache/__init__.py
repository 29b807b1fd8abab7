"""Response cache for provider calls, as a resilient plugin.

Registered through the ``resilient`` entry-point group as ``cache``; off
until ``[tool.resilient.cache] enabled = true``. An in-process layer in
front of a shared Redis store, keys hashed from the request, single flight,
stale answers when the provider fails, streams recorded and replayed. See
:class:`CacheOptions` and ``docs/plugins/cache.md``. Adds
``resilient cache invalidate|stats`` to the CLI.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from resilient import Pipeline, Policy, Runtime, hookimpl

from ._events import (
    CacheBypassed,
    CacheHit,
    CacheInvalidated,
    CacheMiss,
    CacheNotStored,
    CacheStaleServed,
    CacheStored,
    CacheStoreError,
)
from ._key import KeyFunction
from ._options import CacheOptions
from ._policy import CachePolicy, TagFunction

__all__ = [
    "CacheBypassed",
    "CacheHit",
    "CacheInvalidated",
    "CacheMiss",
    "CacheNotStored",
    "CacheOptions",
    "CachePlugin",
    "CachePolicy",
    "CacheStaleServed",
    "CacheStoreError",
    "CacheStored",
    "KeyFunction",
    "TagFunction",
]


@hookimpl
def resilient_options() -> Mapping[str, type[Any]]:
    return {"cache": CacheOptions}


@hookimpl
def resilient_policies(runtime: Runtime) -> Sequence[Policy]:
    section = runtime.settings.section(CacheOptions)
    if not section.base.enabled and not section.varies:
        return ()
    return (CachePolicy(section, runtime),)


class CachePlugin:
    """The cache plugin with key and tag functions given in code.

    ``Pipeline(plugins=[CachePlugin(key=f)], config={"disable": ["cache"], "cache": {...}})``: it reads the
    same ``[cache]`` section; disable the entry-point plugin ``cache`` so one cache runs. Its policy is
    named after the plugin (``name``, default ``"app_cache"``), for ``order`` and ``disable``.
    """

    def __init__(
        self, *, key: KeyFunction | None = None, tags: TagFunction | None = None, name: str = "app_cache"
    ) -> None:
        self.name = name
        self._key = key
        self._tags = tags

    @hookimpl
    def resilient_options(self) -> Mapping[str, type[Any]]:
        return {"cache": CacheOptions}

    @hookimpl
    def resilient_policies(self, runtime: Runtime) -> Sequence[Policy]:
        section = runtime.settings.section(CacheOptions)
        if not section.base.enabled and not section.varies:
            return ()
        return (CachePolicy(section, runtime, key=self._key, tags=self._tags, name=self.name),)


def _policy() -> CachePolicy | None:
    pipeline = Pipeline()
    return next((p for p in pipeline.policies if isinstance(p, CachePolicy)), None)


def _run(args: argparse.Namespace) -> int:
    policy = _policy()
    if policy is None:
        print("cache: no cache policy in force (set [cache] enabled = true)")
        return 1
    try:
        if args.cache_command == "stats":
            print(json.dumps({"store": policy.uri.split("://", 1)[0], **policy.health()}, indent=2))
            return 0
        removed = policy.invalidate(key=args.key, tag=args.tag)
        print(f"cache: {removed} entr{'y' if removed == 1 else 'ies'} removed")
        return 0
    finally:
        policy.close()


@hookimpl
def resilient_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = subparsers.add_parser("cache", help="response cache: invalidate entries, show the store's health")
    sub = cache.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    inv = sub.add_parser("invalidate", help="remove one entry (--key) or every entry with a tag (--tag)")
    which = inv.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="an entry's key (call.metadata['cache_key'], the events' key)")
    which.add_argument("--tag", help="a tag, e.g. model=claude-sonnet-4 or one from the tag function")
    inv.set_defaults(func=_run)
    stats = sub.add_parser("stats", help="the store in use and whether it answers")
    stats.set_defaults(func=_run)
