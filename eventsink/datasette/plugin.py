"""The Datasette plugin: every Datasette event becomes an eventsink event, delivered elsewhere.

Registered under Datasette's ``datasette`` entry-point group. Configured under
``plugins: {"eventsink": {...}}`` (or, for migrations, a ``datasette-events-forward`` block).

* ``startup`` validates the configuration (a bad key stops Datasette with a message naming it)
  and starts one :class:`~eventsink.Pipeline` per Datasette instance, with its outbox in
  Datasette's internal database.
* ``track_event`` turns each event into a row with the columns datasette-events-forward used
  (``id``, ``instance``, ``event``, ``created``, ``actor_id``, ``database_name``, ``table_name``,
  ``properties``) and waits only for the grouped local commit, never for the network.
* ``shutdown`` delivers what it can within a few seconds; the rest stays in the outbox.
* ``/-/eventsink`` and ``/-/eventsink.json`` show delivery status (see
  :mod:`eventsink.datasette.status`).
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

from datasette import hookimpl
from datasette.permissions import Action
from datasette.utils import StartupError

from ..builder import build, configure
from ..config import Option, Settings
from ..exceptions import ConfigError, EventsinkError
from ..outbox import MemoryOutbox, Outbox
from ..outbox.sqlite import DatasetteRunner, SQLiteOutbox
from ..pipeline.pacing import LogThrottle
from ..pipeline.pipeline import Pipeline
from ..plugins import make_plugin_manager
from ..sqlite_files import use_wal

logger = logging.getLogger("eventsink")

PLUGIN_NAME = "eventsink"
LEGACY_PLUGIN_NAME = "datasette-events-forward"
DEFAULT_TABLE = "datasette_events"
SHUTDOWN_TIMEOUT = 5.0

PLUGIN_OPTIONS = (
    Option("events", list, None, "Only forward these event names (e.g. ['login'])."),
    Option("exclude_events", list, None, "Never forward these event names."),
    Option("table", str, DEFAULT_TABLE, "Table the events are written to.", nullable=False),
)

ACTIONS = (
    Action(name="eventsink-view", abbr=None, description="View eventsink delivery status"),
    Action(
        name="eventsink-replay",
        abbr=None,
        description="Replay eventsink dead letters",
        also_requires="eventsink-view",
    ),
)


class PluginConfigError(ConfigError, StartupError):
    """A bad plugin config block: ``datasette serve`` prints it and exits, naming the key."""


@dataclass
class PluginState:
    """What the plugin keeps for one Datasette instance."""

    pipeline: Pipeline | None = None
    table: str = DEFAULT_TABLE
    events: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    config_source: str | None = None
    outbox_note: str = ""
    drop_log: LogThrottle = field(default_factory=lambda: LogThrottle(60.0))

    def wants(self, name: str) -> bool:
        if self.events is not None and name not in self.events:
            return False
        return name not in self.exclude


_states: weakref.WeakKeyDictionary[Any, PluginState] = weakref.WeakKeyDictionary()


def get_pipeline(datasette: Any) -> Pipeline | None:
    """The running pipeline of ``datasette``, or ``None`` when the plugin is not active."""
    state = _states.get(datasette)
    return state.pipeline if state else None


def get_state(datasette: Any) -> PluginState | None:
    """The plugin's state for ``datasette`` (``None`` before ``startup``)."""
    return _states.get(datasette)


def _raw_plugin_block(datasette: Any, name: str) -> Any:
    # Read before Datasette's own {"$env": ...} resolution, which turns an unset variable
    # into a silent null: eventsink's resolution names the missing variable at startup.
    plugins = (getattr(datasette, "config", None) or {}).get("plugins") or {}
    return plugins.get(name)


def read_config(datasette: Any) -> tuple[dict[str, Any], str | None]:
    """The plugin's config block and its name; the legacy block if only that one exists."""
    config = _raw_plugin_block(datasette, PLUGIN_NAME)
    if config is not None:
        return dict(config), PLUGIN_NAME
    legacy = _raw_plugin_block(datasette, LEGACY_PLUGIN_NAME)
    if legacy is not None:
        logger.warning(
            "eventsink: using the %r plugin config block (rename it to %r when convenient)",
            LEGACY_PLUGIN_NAME,
            PLUGIN_NAME,
        )
        return dict(legacy), LEGACY_PLUGIN_NAME
    return {}, None


def is_configured(config: dict[str, Any]) -> bool:
    """True when the config names somewhere to deliver to."""
    return bool(config.get("api_url") or config.get("sinks") or config.get("sink"))


def parse_plugin_config(config: dict[str, Any], pm: Any = None) -> Settings:
    """Validate a plugin config block with the plugin's defaults and extra keys.

    The defaults are the ``datasette`` entry point's (:data:`eventsink.config.ENTRY_POINTS`).
    """
    return configure(config, entry_point="datasette", pm=pm, extra_options=PLUGIN_OPTIONS)


async def tune_internal_database(internal: Any, durability: str) -> None:
    """Make commits on the internal database as cheap as the outbox's durability allows.

    Every tracked event waits for one grouped commit there. Datasette opens it with SQLite's
    default ``synchronous=FULL`` (an fsync per commit; a rollback journal for an ``--internal``
    file), which costs milliseconds per request on ordinary disks. WAL with
    ``synchronous=NORMAL`` survives a process crash, like eventsink's own outbox files;
    ``durability: fsync`` keeps FULL.
    """
    await internal.execute_write_fn(
        lambda connection: use_wal(connection, durability), transaction=False
    )


def make_plugin_outbox(datasette: Any, settings: Settings) -> tuple[Outbox, str]:
    """The outbox for ``settings``: the internal database unless ``outbox`` names a file."""
    if settings.outbox == ":memory:":
        return MemoryOutbox(), "in memory (lost when Datasette stops)"
    if settings.outbox:
        return (
            SQLiteOutbox(settings.outbox, durability=settings.durability),
            f"file {settings.outbox}",
        )
    internal = datasette.get_internal_database()
    if getattr(internal, "is_temp_disk", False):
        logger.warning(
            "eventsink: the outbox is in Datasette's internal database, which is a temporary "
            "file: undelivered events are lost when Datasette stops. Start Datasette with "
            "--internal internal.db (or set 'outbox' to a file) to keep them"
        )
        note = "Datasette's internal database (temporary: start with --internal FILE to keep it)"
    else:
        note = "Datasette's internal database"
    return SQLiteOutbox(runner=DatasetteRunner(internal)), note


@hookimpl
def register_actions(datasette: Any) -> tuple[Action, ...]:
    return ACTIONS


@hookimpl
def startup(datasette: Any) -> Any:
    async def start() -> None:
        if datasette in _states:
            return
        config, source = read_config(datasette)
        state = PluginState(config_source=source)
        _states[datasette] = state
        if not is_configured(config):
            logger.warning(
                "eventsink: no sink configured (no 'api_url' or 'sinks' under plugins.%s); "
                "Datasette events are not forwarded",
                PLUGIN_NAME,
            )
            return
        try:
            pm = make_plugin_manager()
            settings = parse_plugin_config(config, pm)
            extra = settings.extra
            state.table = extra["table"]
            state.events = frozenset(extra["events"]) if extra["events"] is not None else None
            state.exclude = frozenset(extra["exclude_events"] or ())
            outbox, state.outbox_note = make_plugin_outbox(datasette, settings)
            if isinstance(outbox, SQLiteOutbox) and isinstance(outbox.runner, DatasetteRunner):
                await tune_internal_database(outbox.runner.database, settings.durability)
            # sinks check their options here
            pipeline = build(settings, entry_point="datasette", pm=pm, outbox=outbox)
            await pipeline.start()
        except ConfigError as error:
            del _states[datasette]
            key = f"plugins.{source}.{error.key}" if error.key else f"plugins.{source}"
            raise PluginConfigError(f"{key}: {error}", key=error.key) from None
        state.pipeline = pipeline
        logger.info(
            "eventsink: forwarding Datasette events to %s",
            ", ".join(lane.sink.describe() for lane in pipeline.lanes.values()),
        )

    return start


@hookimpl
def shutdown(datasette: Any) -> Any:
    async def stop() -> None:
        state = _states.get(datasette)
        if state is None or state.pipeline is None:
            return
        await state.pipeline.close(timeout=SHUTDOWN_TIMEOUT)

    return stop


def event_row(event: Any) -> dict[str, Any]:
    """The data of a Datasette event, in the columns datasette-events-forward used."""
    properties = event.properties()
    database = properties.pop("database", None)
    table = properties.pop("table", None)
    actor = event.actor
    return {
        "event": event.name,
        "actor_id": actor.get("id") if isinstance(actor, dict) else None,
        "database_name": database,
        "table_name": table,
        "properties": json.dumps(properties, default=str),
    }


def event_created(event: Any) -> str:
    """``event.created`` as UTC ISO-8601 with milliseconds (eventsink's own format)."""
    created = event.created
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return created.astimezone(timezone.utc).isoformat(timespec="milliseconds")


@hookimpl
def track_event(datasette: Any, event: Any) -> Any:
    state = _states.get(datasette)
    if state is None or state.pipeline is None or not state.wants(event.name):
        return None
    return _enqueue(state.pipeline, state, event_row(event), event_created(event))


async def _enqueue(
    pipeline: Pipeline, state: PluginState, data: dict[str, Any], created: str
) -> None:
    # Waits for the grouped local commit only. A refused event must never fail the request
    # that caused it: it is counted by the pipeline and logged here, at most once a minute
    # for each Datasette instance.
    try:
        await pipeline.write_async(state.table, data, created=created)
    except EventsinkError as error:
        suppressed = state.drop_log.allow("drop")
        if suppressed is not None:
            logger.warning(
                "eventsink: a Datasette event was not recorded: %s%s",
                error,
                f" ({suppressed} more since the last message)" if suppressed else "",
            )


@hookimpl
def register_routes(datasette: Any) -> list[tuple[str, Any]]:
    from .status import ROUTES

    return ROUTES


@hookimpl
def menu_links(datasette: Any, actor: Any) -> Any:
    from .status import menu_links

    async def links() -> list[dict[str, str]]:
        return await menu_links(datasette, actor)

    return links
