"""The Datasette plugin: every Datasette event becomes an eventsink event, delivered elsewhere.

Registered under Datasette's ``datasette`` entry-point group. Configured under
``plugins: {"eventsink": {...}}`` (or, for migrations, a ``datasette-events-forward`` block).

* ``register_actions`` (the first hook of Datasette's startup) disables datasette-events-forward
  when it is installed too (:mod:`eventsink.datasette.takeover`).
* ``startup`` validates the configuration (a bad key stops Datasette with a message naming it)
  and builds one :class:`~eventsink.Pipeline` per Datasette instance, with its outbox in
  Datasette's internal database. It starts the pipeline only where Datasette serves: until
  1.0a38 ``datasette serve`` runs ``startup`` on an event loop it then closes, so there the
  pipeline starts at the ASGI ``lifespan.startup`` (``asgi_wrapper``) or on first use.
* ``track_event`` routes each event to its table (:mod:`eventsink.datasette.routing`), turns it
  into a row with the columns datasette-events-forward used (``id``, ``instance``, ``event``,
  ``created``, ``actor_id``, ``database_name``, ``table_name``, ``properties``) and waits only
  for the grouped local commit, never for the network. Nothing in it can fail or hang the
  request: any error is counted and logged, at most once a minute.
* ``shutdown`` (or ``lifespan.shutdown`` before 1.0a40) delivers what it can within a few
  seconds; the rest stays in the outbox.
* ``/-/eventsink`` and ``/-/eventsink.json`` show delivery status (see
  :mod:`eventsink.datasette.status`).

Notices (no sink configured, the legacy block, a temporary outbox) are logged once Datasette
serves, so ``datasette create-token`` and other commands that only run ``startup`` stay quiet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import sys
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

import datasette as datasette_package
from datasette import hookimpl
from datasette.events import Event as DatasetteEvent
from datasette.permissions import Action
from datasette.plugins import pm as datasette_pm
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
from .routing import Router, Target, database_blocks, parse_router
from .takeover import LEGACY_COLUMNS, import_legacy_queue, unregister_legacy_plugin

logger = logging.getLogger("eventsink")

PLUGIN_NAME = "eventsink"
LEGACY_PLUGIN_NAME = "datasette-events-forward"
DEFAULT_TABLE = "datasette_events"
SHUTDOWN_TIMEOUT = 5.0
#: Longest a request waits for its event's local commit before giving up on it (counted).
HOOK_TIMEOUT = 5.0

PLUGIN_OPTIONS = (
    Option("events", list, None, "Only forward these event names (e.g. ['login'])."),
    Option("exclude_events", list, None, "Never forward these event names."),
    Option(
        "table",
        str,
        DEFAULT_TABLE,
        "Table the events are written to; a template may use {instance} and {event}.",
        nullable=False,
    ),
    Option(
        "databases",
        dict,
        None,
        "Per-database routing: database name (or '*') -> table, events, exclude_events.",
    ),
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

    pipeline: Pipeline | None = None  # set once the pipeline runs on the serving loop
    table: str = DEFAULT_TABLE
    router: Router | None = None
    config_source: str | None = None
    outbox_note: str = ""
    took_over_legacy: bool = False
    hook_errors: int = 0  # track_event calls that could not record their event
    drop_log: LogThrottle = field(default_factory=lambda: LogThrottle(60.0))
    notices: list[tuple[int, str]] = field(default_factory=list)
    built: Pipeline | None = None  # validated and built, not yet started
    starting: asyncio.Future[Pipeline | None] | None = None

    def notice(self, level: int, message: str) -> None:
        """Log ``message`` once Datasette serves (now, if it already does)."""
        self.notices.append((level, message))

    def announce(self) -> None:
        """Log the queued notices (called once Datasette serves)."""
        notices, self.notices = self.notices, []
        for level, message in notices:
            logger.log(level, "%s", message)

    def record_error(self, error: BaseException) -> None:
        """Count an event ``track_event`` could not record and log it, throttled.

        An unexpected exception loses the event: it is also counted as dropped
        (``plugin_error``) where the status page and the metrics show drops. Refusals by the
        pipeline count themselves; an event not committed in time may still be.
        """
        self.hook_errors += 1
        if self.pipeline is not None and not isinstance(error, (EventsinkError, TimeoutError)):
            self.pipeline.intake.count_drop("plugin_error", 1)
        suppressed = self.drop_log.allow("drop")
        if suppressed is not None:
            logger.warning(
                "eventsink: a Datasette event was not recorded: %s%s",
                error if isinstance(error, EventsinkError) else f"{type(error).__name__}: {error}",
                f" ({suppressed} more since the last message)" if suppressed else "",
            )


_states: weakref.WeakKeyDictionary[Any, PluginState] = weakref.WeakKeyDictionary()


def get_pipeline(datasette: Any) -> Pipeline | None:
    """The running pipeline of ``datasette``, or ``None`` when the plugin is not active."""
    state = _states.get(datasette)
    return state.pipeline if state else None


def get_state(datasette: Any) -> PluginState | None:
    """The plugin's state for ``datasette`` (``None`` before ``startup``)."""
    return _states.get(datasette)


def serves_on_startup_loop(version: str | None = None) -> bool:
    """True when ``datasette serve`` runs the ``startup`` hooks on the loop it serves with.

    Datasette 1.0a39 does; earlier alphas run them on a loop of their own and close it.
    """
    version = version or datasette_package.__version__
    match = re.match(r"^(\d+)\.(\d+)(?:a(\d+))?", version)
    if not match:
        return True
    major, minor, alpha = int(match[1]), int(match[2]), match[3]
    if (major, minor) != (1, 0):
        return (major, minor) > (1, 0)
    return alpha is None or int(alpha) >= 39


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
        return dict(legacy), LEGACY_PLUGIN_NAME
    return {}, None


def is_configured(config: dict[str, Any]) -> bool:
    """True when the config names somewhere to deliver to."""
    return bool(config.get("api_url") or config.get("sinks") or config.get("sink"))


def with_legacy_columns(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with datasette sinks creating tables in datasette-events-forward's order."""
    if isinstance(config.get("sinks"), list):
        sinks = [
            {"columns": list(LEGACY_COLUMNS), **entry}
            if isinstance(entry, dict) and entry.get("type") == "datasette"
            else entry
            for entry in config["sinks"]
        ]
        return {**config, "sinks": sinks}
    if config.get("sink", "datasette") == "datasette" and "sinks" not in config:
        return {"columns": list(LEGACY_COLUMNS), **config}
    return config


def parse_plugin_config(config: dict[str, Any], pm: Any = None) -> Settings:
    """Validate a plugin config block with the plugin's defaults and extra keys.

    The defaults are the ``datasette`` entry point's (:data:`eventsink.config.ENTRY_POINTS`).
    """
    return configure(
        with_legacy_columns(config),
        entry_point="datasette",
        pm=pm,
        extra_options=PLUGIN_OPTIONS,
    )


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
        note = "Datasette's internal database (temporary: start with --internal FILE to keep it)"
    else:
        note = "Datasette's internal database"
    path = getattr(internal, "path", None)
    if path and not internal.is_memory:
        # A connection of the outbox's own to the internal database file (WAL): a request's
        # event then waits for the outbox's grouped commit only, not behind Datasette's own
        # writes to that database in its write thread.
        return SQLiteOutbox(path, durability=settings.durability), note
    # Before 1.0a30 the internal database is in memory unless --internal names a file: only
    # Datasette's own connection can reach it.
    return SQLiteOutbox(runner=DatasetteRunner(internal)), note


TEMPORARY_OUTBOX_WARNING = (
    "eventsink: the outbox is in Datasette's internal database, which is a temporary "
    "file: undelivered events are lost when Datasette stops. Start Datasette with "
    "--internal internal.db (or set 'outbox' to a file) to keep them"
)


def _state_for(datasette: Any) -> PluginState:
    state = _states.get(datasette)
    if state is None:
        state = _states[datasette] = PluginState()
    return state


@hookimpl(tryfirst=True)
def register_actions(datasette: Any) -> tuple[Action, ...]:
    # The first hook of Datasette's startup: disabling datasette-events-forward here keeps its
    # own startup and track_event hooks from ever running.
    config, _ = read_config(datasette)
    if is_configured(config) and unregister_legacy_plugin(datasette_pm):
        state = _state_for(datasette)
        state.took_over_legacy = True
        state.notice(
            logging.WARNING,
            f"eventsink: {LEGACY_PLUGIN_NAME} is also installed; eventsink has disabled it and "
            "does its work, so each event is forwarded once. Uninstall it: "
            f"pip uninstall {LEGACY_PLUGIN_NAME}",
        )
    return ACTIONS


@hookimpl
def startup(datasette: Any) -> Any:
    async def start() -> None:
        state = _state_for(datasette)
        if state.built is not None or state.pipeline is not None:
            return
        config, source = read_config(datasette)
        state.config_source = source
        if not is_configured(config):
            state.notice(
                logging.WARNING,
                "eventsink: no sink configured (no 'api_url' or 'sinks' under "
                f"plugins.{PLUGIN_NAME}); Datasette events are not forwarded",
            )
            return
        if not state.took_over_legacy and unregister_legacy_plugin(datasette_pm):
            state.took_over_legacy = True  # registered after register_actions ran
        if source == LEGACY_PLUGIN_NAME:
            state.notice(
                logging.WARNING,
                f"eventsink: using the {LEGACY_PLUGIN_NAME!r} plugin config block (rename it "
                f"to {PLUGIN_NAME!r} when convenient)",
            )
        try:
            pm = make_plugin_manager()
            settings = parse_plugin_config(config, pm)
            extra = settings.extra
            state.table = extra["table"]
            state.router = parse_router(
                table=extra["table"],
                events=extra["events"],
                exclude_events=extra["exclude_events"],
                databases=extra["databases"],
                database_level=database_blocks(datasette.config, PLUGIN_NAME),
                sink_names=[sink.name for sink in settings.sinks],
            )
            outbox, state.outbox_note = make_plugin_outbox(datasette, settings)
            if isinstance(outbox, SQLiteOutbox) and isinstance(outbox.runner, DatasetteRunner):
                if getattr(outbox.runner.database, "is_temp_disk", False):
                    state.notice(logging.WARNING, TEMPORARY_OUTBOX_WARNING)
                await tune_internal_database(outbox.runner.database, settings.durability)
            # sinks check their options here
            state.built = build(settings, entry_point="datasette", pm=pm, outbox=outbox)
            if serves_on_startup_loop():
                await _start_pipeline(datasette, state)
        except ConfigError as error:
            del _states[datasette]
            raise _plugin_config_error(error, source) from None

    return start


def _plugin_config_error(error: ConfigError, source: str | None) -> PluginConfigError:
    key = f"plugins.{source}.{error.key}" if error.key else f"plugins.{source}"
    return PluginConfigError(f"{key}: {error}", key=error.key)


async def _start_pipeline(datasette: Any, state: PluginState) -> Pipeline | None:
    """Start the built pipeline on the running loop (once) and take over the legacy queue."""
    if state.pipeline is not None:
        return state.pipeline
    if state.built is None:
        return None
    if state.starting is None:
        state.starting = asyncio.ensure_future(_run_start(datasette, state))
    return await asyncio.shield(state.starting)


async def _run_start(datasette: Any, state: PluginState) -> Pipeline | None:
    pipeline = state.built
    router = state.router
    if pipeline is None or router is None:
        return None
    try:
        await pipeline.start()
    except BaseException:
        state.starting = None
        raise
    state.pipeline = pipeline
    instance = pipeline.settings.instance

    async def write(rows: list[tuple[str, dict[str, Any]]]) -> None:
        wanted = []
        for event_id, row in rows:
            target = router.target(row.get("database_name"), row.get("event") or "", instance)
            if target is not None:
                wanted.append((target, event_id, row))
        for index, (target, event_id, row) in enumerate(wanted):
            created = row.pop("created")
            last = index == len(wanted) - 1  # committed in order: the last one waits for all
            await pipeline.write_async(
                target.table,
                row,
                created=created,
                event_id=event_id,
                wait_committed=last,
                sinks=target.sinks,
            )

    taken = await import_legacy_queue(datasette.get_internal_database(), write)
    if taken:
        state.notice(
            logging.WARNING,
            f"eventsink: took over {taken} event(s) {LEGACY_PLUGIN_NAME} had not yet delivered "
            "(with their original ids, so none is stored twice)",
        )
    logger.info(
        "eventsink: forwarding Datasette events to %s",
        ", ".join(lane.sink.describe() for lane in pipeline.lanes.values()),
    )
    return pipeline


async def _stop_pipeline(state: PluginState | None) -> None:
    if state is None:
        return
    if state.starting is not None and not state.starting.done():
        await asyncio.shield(state.starting)
    pipeline = state.pipeline
    if pipeline is None or pipeline.closed:
        return
    await pipeline.close(timeout=SHUTDOWN_TIMEOUT)


@hookimpl
def shutdown(datasette: Any) -> Any:
    async def stop() -> None:
        await _stop_pipeline(_states.get(datasette))

    return stop


@hookimpl
def asgi_wrapper(datasette: Any) -> Any:
    """Start delivery where Datasette serves, and log the notices once it does."""

    def wrap(app: Any) -> Any:
        async def eventsink_asgi(scope: dict[str, Any], receive: Any, send: Any) -> Any:
            if scope["type"] == "lifespan":
                return await app(
                    scope, _lifespan_receive(datasette, receive), _lifespan_send(datasette, send)
                )
            state = _states.get(datasette)
            if state is not None:
                if state.notices:
                    state.announce()
                if state.pipeline is None and state.built is not None and state.starting is None:
                    _start_in_background(datasette, state)
            return await app(scope, receive, send)

        return eventsink_asgi

    return wrap


def _lifespan_receive(datasette: Any, receive: Any) -> Any:
    async def wrapped() -> Any:
        message = await receive()
        if message.get("type") == "lifespan.shutdown":
            try:
                await _stop_pipeline(_states.get(datasette))
            except Exception:
                logger.exception("eventsink: closing the pipeline failed")
        return message

    return wrapped


def _lifespan_send(datasette: Any, send: Any) -> Any:
    async def wrapped(message: dict[str, Any]) -> Any:
        if message.get("type") == "lifespan.startup.complete":
            state = _states.get(datasette)
            if state is not None:
                try:
                    await _start_pipeline(datasette, state)
                except ConfigError as error:
                    state.announce()
                    return await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": str(_plugin_config_error(error, state.config_source)),
                        }
                    )
                state.announce()
        return await send(message)

    return wrapped


def _start_in_background(datasette: Any, state: PluginState) -> None:
    # A host that sends no lifespan events: start on the first request, without making that
    # request wait for it or fail with it.
    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.error("eventsink: could not start delivering", exc_info=future.exception())
        state.announce()

    task = asyncio.ensure_future(_start_pipeline(datasette, state))
    task.add_done_callback(done)


_PLAIN_VALUES = (str, int, float, bool, type(None))
#: ``json.dumps(properties, default=str)``, the text datasette-events-forward stored, without
#: building an encoder for every event.
_PROPERTIES_JSON = json.JSONEncoder(default=str)


@functools.cache
def _property_names(cls: type) -> tuple[str, ...] | None:
    """The fields ``Event.properties()`` returns for events of ``cls``; ``None`` when ``cls``
    computes its properties some other way."""
    if cls.properties is not DatasetteEvent.properties or not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("actor", "created"))


def event_properties(event: Any) -> dict[str, Any]:
    """``event.properties()``, without its deep copy when every value is a plain one.

    Datasette's ``properties()`` is ``dataclasses.asdict``, which deep-copies the event and its
    actor: 15-20 µs of every request that tracks an event, for values that are only read.
    """
    names = _property_names(type(event))
    if names is not None:
        properties = {name: getattr(event, name) for name in names}
        if all(type(value) in _PLAIN_VALUES for value in properties.values()):
            return properties
    return event.properties()


def event_row(event: Any) -> dict[str, Any]:
    """The data of a Datasette event, in the columns datasette-events-forward used."""
    properties = event_properties(event)
    database = properties.pop("database", None)
    table = properties.pop("table", None)
    actor = event.actor
    return {
        "event": event.name,
        "actor_id": actor.get("id") if isinstance(actor, dict) else None,
        "database_name": database,
        "table_name": table,
        "properties": _PROPERTIES_JSON.encode(properties),
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
    if state is None or state.built is None or state.router is None:
        return None
    try:
        data = event_row(event)
        instance = state.built.settings.instance
        target = state.router.target(data["database_name"], event.name, instance)
        if target is None:
            return None
        created = event_created(event)
        pipeline = state.pipeline
        if pipeline is None:
            pending = _start_and_write(datasette, state, target, data, created)
        else:
            # Most events are committed here, at once: no coroutine, and no timer.
            pending = pipeline.write_on_loop(
                target.table, data, created=created, sinks=target.sinks
            )
    except Exception as error:  # an event must never fail the request that caused it
        state.record_error(error)
        return None
    return None if pending is None else _wait_for_commit(state, pending)


async def _start_and_write(
    datasette: Any, state: PluginState, target: Target, data: dict[str, Any], created: str
) -> None:
    pipeline = await _start_pipeline(datasette, state)
    if pipeline is not None:
        pending = pipeline.write_on_loop(target.table, data, created=created, sinks=target.sinks)
        if pending is not None:
            await pending


async def _wait_for_commit(state: PluginState, pending: Awaitable[None]) -> None:
    # At most HOOK_TIMEOUT: whatever happens in eventsink, the request that caused the event
    # neither fails nor hangs. A refused event is counted and logged, at most once a minute
    # for each Datasette instance.
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(HOOK_TIMEOUT):  # no task of its own, unlike wait_for
                await pending
        else:  # pragma: no cover - Python 3.10
            await asyncio.wait_for(pending, HOOK_TIMEOUT)
    except (TimeoutError, asyncio.TimeoutError):
        state.record_error(TimeoutError(f"not committed within {HOOK_TIMEOUT:g} s"))
    except Exception as error:
        state.record_error(error)


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
