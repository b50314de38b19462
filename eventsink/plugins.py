"""Building the plugin manager and looking up the sinks and sources plugins provide."""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from .exceptions import UnknownPluginError

ENTRY_POINT_GROUP = "eventsink"

#: The built-in plugins: plugin name -> module. :func:`make_plugin_manager` registers each
#: exactly as ``load_setuptools_entrypoints`` registers a third-party plugin (the module, under
#: its name), and this is their only registration: they are not also declared as entry points,
#: so they work from a source checkout and ``entry_points=False`` still gives every built-in.
DEFAULT_PLUGINS: dict[str, str] = {
    "stdout": "eventsink.sinks.stdout",
    "file": "eventsink.sinks.file",
    "null": "eventsink.sinks.null",
    "datasette": "eventsink.sinks.datasette",
    "sqlite": "eventsink.sinks.sqlite",
    "source_jsonl": "eventsink.sources.jsonl",
    "source_datasette": "eventsink.sources.datasette",
    "nats": "eventsink.sinks.nats",
}


def make_plugin_manager(*, entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and (by default) every installed plugin.

    Installed plugins are the modules named in the ``eventsink`` entry-point group; one whose
    name is already registered (a built-in's) is skipped, as pluggy does.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name, module in DEFAULT_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def _registered(results: list[list[type] | None], kind: str) -> dict[str, type]:
    classes: dict[str, type] = {}
    # pluggy returns the last registered plugin first: a third-party class wins over a
    # built-in of the same name, with a warning so the override is never silent.
    for result in results:
        for cls in result or ():
            name = getattr(cls, "name", None)
            if not name:
                raise TypeError(f"{kind} class {cls!r} has no 'name'")
            if name in classes:
                warnings.warn(
                    f"two plugins register a {kind} named {name!r}: "
                    f"{classes[name].__module__} is used, {cls.__module__} is ignored",
                    stacklevel=2,
                )
                continue
            classes[name] = cls
    return classes


def sink_classes(pm: pluggy.PluginManager) -> dict[str, type]:
    """Every registered sink class by name."""
    return _registered(pm.hook.eventsink_register_sinks(), "sink")


def source_classes(pm: pluggy.PluginManager) -> dict[str, type]:
    """Every registered data source class by name."""
    return _registered(pm.hook.eventsink_register_sources(), "source")


def lookup(classes: dict[str, type], name: str, kind: str, key: str = "sink") -> type:
    """The class called ``name``, or an error that lists what is installed."""
    try:
        return classes[name]
    except KeyError:
        installed = ", ".join(sorted(classes)) or "none"
        raise UnknownPluginError(
            f"no {kind} named {name!r} is installed (config key {key!r}). Installed {kind}s: "
            f"{installed}. Plugins register {kind}s through the {ENTRY_POINT_GROUP!r} "
            "entry-point group.",
            key=key,
        ) from None


def hook_chain(hook: Any) -> list[Callable[..., Any]]:
    """The implementations of ``hook`` as plain callables, in pluggy's call order.

    Used for hooks whose implementations are chained (each gets the previous result), which
    pluggy's fan-out call cannot express.
    """
    chain = []
    for impl in reversed(hook.get_hookimpls()):
        function, argnames = impl.function, impl.argnames
        chain.append(_bind(function, argnames))
    return chain


def _bind(function: Callable[..., Any], argnames: tuple[str, ...]) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return function(*[kwargs[name] for name in argnames])

    return call


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable, else return it."""
    if inspect.isawaitable(value):
        return await value
    return value
