"""Taking over from datasette-events-forward, the plugin eventsink replaces.

With both installed, each Datasette event would be forwarded twice under two ids. eventsink
therefore unregisters the original from Datasette's plugin manager before its ``startup`` and
``track_event`` hooks run, says so once, and moves the events the original still had queued
(its ``datasette_events_to_forward`` table in the internal database) into its own outbox
**with their original ids**: a row the original already delivered is then ignored by the
receiver (``id`` is its primary key) instead of being stored twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

LEGACY_MODULE = "datasette_events_forward"
LEGACY_DISTRIBUTION = "datasette-events-forward"
LEGACY_TABLE = "datasette_events_to_forward"
#: The receiver columns of datasette-events-forward, in its order (eventsink keeps it).
LEGACY_COLUMNS = (
    "id",
    "instance",
    "event",
    "created",
    "actor_id",
    "database_name",
    "table_name",
    "properties",
)


def find_legacy_plugin(pm: Any) -> Any | None:
    """The registered datasette-events-forward module in ``pm``, or ``None``."""
    for plugin in pm.get_plugins():
        if getattr(plugin, "__name__", None) == LEGACY_MODULE:
            return plugin
    return None


def unregister_legacy_plugin(pm: Any) -> bool:
    """Unregister datasette-events-forward from ``pm``; return whether it was there."""
    plugin = find_legacy_plugin(pm)
    if plugin is None:
        return False
    pm.unregister(plugin)
    return True


async def legacy_rows(internal: Any) -> list[dict[str, Any]]:
    """The events datasette-events-forward left in the internal database, oldest first."""
    exists = await internal.execute(
        "select 1 from sqlite_master where type = 'table' and name = ?", [LEGACY_TABLE]
    )
    if not exists.rows:
        return []
    result = await internal.execute(
        "select id, event, created, actor_id, database_name, table_name, properties "
        f"from {LEGACY_TABLE} order by id"
    )
    return [dict(row) for row in result.rows]


async def import_legacy_queue(
    internal: Any, write: Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]]
) -> int:
    """Move the original's queued events into eventsink's outbox; return how many.

    ``write([(id, row), ...])`` puts the events in the outbox and returns once they are
    committed. Only then are the rows deleted from the original's table, so a crash in between
    keeps them (and the import runs again, with the same ids, at the next start).
    """
    rows = await legacy_rows(internal)
    if not rows:
        return 0
    ids = [row.pop("id") for row in rows]
    await write(list(zip(ids, rows, strict=True)))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        await internal.execute_write(
            f"delete from {LEGACY_TABLE} where id in ({', '.join('?' * len(chunk))})", chunk
        )
    return len(rows)
