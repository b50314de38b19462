"""One way to build a pipeline from a configuration, whichever way events come in.

::

    config dict ─> configure() ─> Settings ─> build() ─> Pipeline (sinks made, outbox chosen)
                   (validated once;            ▲
                    entry-point defaults)      └─ the Datasette plugin passes its own outbox

:class:`eventsink.Client`, every CLI command, the Datasette plugin and ``eventsink consume``
build through here, so a configuration means the same thing everywhere. What differs between
them is one table, :data:`eventsink.config.ENTRY_POINTS` (the default sink, a few delivery
defaults, where the outbox is, how sinks are named), documented in the configuration
reference.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from .config import ENTRY_POINTS, EntryPoint, Option, Settings, parse_config
from .pipeline.pipeline import Pipeline, build_sinks, default_outbox_path
from .plugins import lookup, make_plugin_manager, sink_classes
from .sink import Sink

if TYPE_CHECKING:
    from .outbox import Outbox


def get_entry_point(name: str) -> EntryPoint:
    """The :class:`~eventsink.config.EntryPoint` called ``name`` (a ``ValueError`` if none)."""
    try:
        return ENTRY_POINTS[name]
    except KeyError:
        raise ValueError(
            f"unknown entry point {name!r}; known: {', '.join(sorted(ENTRY_POINTS))}"
        ) from None


def configure(
    config: Mapping[str, Any],
    *,
    entry_point: str = "client",
    pm: pluggy.PluginManager | None = None,
    extra_options: Sequence[Option] = (),
) -> Settings:
    """Validate ``config`` with ``entry_point``'s defaults beneath it; return its Settings.

    Raises :class:`~eventsink.exceptions.ConfigError` naming the key for a bad configuration
    (an unknown sink lists the installed ones). A configured outbox path is made absolute, and
    entry points whose outbox is the user's shared file get that file's path when none is set.
    """
    entry = get_entry_point(entry_point)
    classes = sink_classes(pm or make_plugin_manager())
    settings = parse_config(
        {**entry.defaults, **config},
        lambda name, key: lookup(classes, name, "sink", key).options,
        default_sink=entry.sink,
        extra_options=extra_options,
    )
    outbox = settings.outbox
    if outbox is not None or entry.outbox == "user":
        outbox = outbox_path(outbox)
    return dataclasses.replace(settings, outbox=outbox)


def outbox_path(outbox: str | None) -> str:
    """``outbox`` as an absolute path (``:memory:`` kept), or the user's shared outbox file."""
    path = os.fspath(Path(outbox or default_outbox_path()).expanduser())
    return path if path == ":memory:" else os.path.abspath(path)


def make_sinks(
    settings: Settings,
    pm: pluggy.PluginManager,
    *,
    named: Sequence[bool] | None = None,
) -> tuple[Settings, dict[str, Sink]]:
    """Instantiate every configured sink (each validates its own options).

    With ``named`` (one flag per sink: did the configuration give it a ``name``?), a sink
    without one is named after where it delivers (``Sink.describe()``), numbered if two
    share it, and the returned Settings carry those names.
    """
    by_config = build_sinks(settings, pm)
    if named is None:
        return settings, by_config
    sinks: dict[str, Sink] = {}
    configs = []
    for sink_config, explicit in zip(settings.sinks, named, strict=True):
        sink = by_config[sink_config.name]
        name = sink_config.name if explicit else sink.describe()
        base, number = name, 2
        while name in sinks:
            name, number = f"{base} #{number}", number + 1
        sinks[name] = sink
        configs.append(dataclasses.replace(sink_config, name=name))
    return dataclasses.replace(settings, sinks=tuple(configs)), sinks


def build(
    config: Mapping[str, Any] | Settings,
    *,
    entry_point: str = "client",
    pm: pluggy.PluginManager | None = None,
    outbox: Outbox | Callable[[Settings, Mapping[str, Sink]], Outbox | None] | None = None,
    extra_options: Sequence[Option] = (),
) -> Pipeline:
    """A :class:`~eventsink.Pipeline` for ``config``, not started yet.

    ``config`` is the configuration dict (validated here, see :func:`configure`) or Settings
    :func:`configure` returned (its sinks keep the names in it: naming a sink after its
    destination needs the configuration dict). ``entry_point`` picks the defaults of one way
    in (``client``, ``cli``, ``send``, ``pull``, ``consume``, ``datasette``; see
    :data:`eventsink.config.ENTRY_POINTS`). ``pm`` is the plugin manager whose sinks and hooks
    the pipeline uses (a fresh one by default). ``outbox`` replaces the outbox the settings
    name (the Datasette plugin's internal database), or is a function of the settings and
    the sinks that returns one (``None``: the settings' own), for a caller whose choice
    depends on the sinks (``eventsink send``).

    Raises :class:`~eventsink.exceptions.ConfigError` naming the key for a bad configuration
    or a sink that rejects its options. Start it with ``await pipeline.start()`` on the loop
    that will run it, or hand it to :class:`eventsink.pipeline.runner.PipelineRunner`.
    """
    pm = pm or make_plugin_manager()
    named: list[bool] | None = None
    if not isinstance(config, Mapping):
        settings = config
    else:
        settings = configure(config, entry_point=entry_point, pm=pm, extra_options=extra_options)
        if get_entry_point(entry_point).names_sinks_after_destination:
            entries = config.get("sinks") or [config]
            named = [isinstance(entry, Mapping) and bool(entry.get("name")) for entry in entries]
    settings, sinks = make_sinks(settings, pm, named=named)
    if callable(outbox):
        outbox = outbox(settings, sinks)
    return Pipeline(settings, pm=pm, outbox=outbox, sinks=sinks)
