"""Tests of the outbox, and what other tests use to read one directly."""

from __future__ import annotations

import sqlite3

from eventsink.outbox.packs import expand


def outbox_ids(connection: sqlite3.Connection, where: str = "1 = 1", *params: object) -> list[str]:
    """The ids of the events in an outbox's rows matching ``where``, in seq order (every event
    of a pack, not only the first; an outbox of schema version 1 or 2 has no packs)."""
    columns = {row[1] for row in connection.execute("pragma table_info(eventsink_outbox)")}
    packs = "events, pack" if "events" in columns else "1, null"
    rows = connection.execute(
        "select seq, id, table_name, instance, created, data, attempts, first_failure, "
        f"{packs} from eventsink_outbox where {where} order by seq",
        params,
    )
    return [event.id for row in rows for _, event in expand(row)]
