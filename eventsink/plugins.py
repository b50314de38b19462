"""Building the plugin manager and looking up the sinks and sources plugins provide."""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from typing import Any

import pluggy

from . import hookspecs
from .exceptions import UnknownPluginError

logger = logging.getLogger("eventsink")

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
    "source_s3": "eventsink.sources.s3",
    "nats": "eventsink.sinks.nats",
    "s3": "eventsink.sinks.s3",
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


class HookStep:
    """One plugin's implementation of a hook, called through pluggy on its own.

    The call goes through a pluggy caller that holds this implementation and every wrapper
    of the hook, so hookwrappers and ``add_hookcall_monitoring`` see it like any other call,
    while one plugin's exception cannot keep the next plugin's implementation from running.
    """

    def __init__(self, plugin_name: str, caller: Any) -> None:
        self.plugin_name = plugin_name
        self._caller = caller

    def __call__(self, **kwargs: Any) -> Any:
        """The implementation's result (pluggy's list of one result, unwrapped)."""
        results = self._caller(**kwargs)
        return results[0] if results else None

    def __repr__(self) -> str:
        return f"<HookStep {self._caller.name} of {self.plugin_name!r}>"


def _is_wrapper(impl: Any) -> bool:
    return bool(impl.hookwrapper or getattr(impl, "wrapper", False))


def hook_steps(pm: pluggy.PluginManager, name: str) -> list[HookStep]:
    """The implementations of hook ``name``, in pluggy's call order, each its own step.

    Used where each implementation must be called on its own: chained hooks (each gets the
    previous result, which pluggy's fan-out call cannot express) and hooks whose failures are
    contained per plugin. A plugin that has both a wrapper and a plain implementation of the
    same hook keeps its wrapper only around its own implementation.
    """
    plain = [impl for impl in getattr(pm.hook, name).get_hookimpls() if not _is_wrapper(impl)]
    steps = []
    for impl in reversed(plain):  # pluggy calls the last registered (and tryfirst) first
        others = [other.plugin for other in plain if other.plugin is not impl.plugin]
        steps.append(HookStep(impl.plugin_name, pm.subset_hook_caller(name, others)))
    return steps


def hook_chain(pm: pluggy.PluginManager, name: str) -> list[HookStep]:
    """The implementations of a chained hook (``eventsink_enrich``, ``eventsink_filter``)."""
    return hook_steps(pm, name)


class Hooks:
    """Calls eventsink's delivery hooks for the core, so that no plugin can upset delivery.

    Each implementation is called through pluggy on its own (see :class:`HookStep`); an
    exception from one is logged with the plugin's name (at most once a minute per plugin and
    hook) and changes nothing about the batch: it is neither lost, repeated nor held up.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        from .pipeline.pacing import LogThrottle  # the pipeline package imports this module

        self.pm = pm
        self._log = LogThrottle(60.0)

    async def notify(self, name: str, **kwargs: Any) -> None:
        """Call every implementation of hook ``name``, awaiting coroutine results."""
        for step in hook_steps(self.pm, name):
            try:
                await await_me_maybe(step(**kwargs))
            except Exception as error:
                self.report(step.plugin_name, name, error, "delivery goes on as if it had not")

    def report(self, plugin: str, hook: str, error: Exception, consequence: str) -> None:
        """Log that ``plugin``'s ``hook`` raised ``error`` (throttled per plugin and hook)."""
        suppressed = self._log.allow(f"{plugin}:{hook}")
        if suppressed is None:
            return
        more = f" ({suppressed} more times since the last message)" if suppressed else ""
        logger.error(
            "eventsink plugin %r raised in %s: %s: %s; %s%s",
            plugin,
            hook,
            type(error).__name__,
            error,
            consequence,
            more,
            exc_info=error,
        )


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable, else return it."""
    if inspect.isawaitable(value):
        return await value
    return value
