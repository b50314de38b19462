"""Pull checkpoints, kept in the outbox's own SQLite file (table ``eventsink_checkpoints``).

One row per source identity (:meth:`eventsink.pull.source.DataSource.identity`): the merged state
(``state_id -> state``), how many records the committed state covers, and when it was saved.
The puller saves a row only after the records it covers are committed in the outbox, so the
row never runs ahead of the data. A separate connection is fine: SQLite in WAL mode lets it
write beside the outbox's own connection (each waits up to 30 s for the other's lock).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..sqlite_files import connect

SCHEMA = """
create table if not exists eventsink_checkpoints (
    source text primary key,
    state text not null,
    records integer not null default 0,
    updated real not null
)
"""


@dataclass
class Checkpoint:
    """The committed position of one source."""

    source: str
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: int = 0
    updated: float | None = None

    def merge(self, states: list[tuple[str, dict[str, Any]]]) -> None:
        """Merge declared states in order; later keys of the same ``state_id`` win."""
        for state_id, state in states:
            self.state[state_id] = {**self.state.get(state_id, {}), **state}


class CheckpointStore:
    """Load, save and forget checkpoints in a SQLite file (``None``: kept in memory only)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._memory: dict[str, Checkpoint] = {}
        self._connection: sqlite3.Connection | None = None

    @property
    def durable(self) -> bool:
        return self.path is not None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            if self.path is None:
                raise RuntimeError("an in-memory checkpoint store has no connection")
            connection = connect(self.path, durability=None, check_same_thread=False)
            connection.execute(SCHEMA)
            self._connection = connection
        return self._connection

    def load(self, source: str) -> Checkpoint:
        """The committed checkpoint of ``source`` (an empty one when there is none)."""
        if self.path is None:
            return self._memory.get(source) or Checkpoint(source)
        row = (
            self._connect()
            .execute(
                "select state, records, updated from eventsink_checkpoints where source = ?",
                [source],
            )
            .fetchone()
        )
        if row is None:
            return Checkpoint(source)
        return Checkpoint(source, orjson.loads(row[0]), row[1], row[2])

    def save(self, checkpoint: Checkpoint) -> None:
        """Commit ``checkpoint`` (replacing the previous one of its source)."""
        checkpoint.updated = time.time()
        if self.path is None:
            self._memory[checkpoint.source] = Checkpoint(
                checkpoint.source, dict(checkpoint.state), checkpoint.records, checkpoint.updated
            )
            return
        self._connect().execute(
            "insert or replace into eventsink_checkpoints (source, state, records, updated) "
            "values (?, ?, ?, ?)",
            [
                checkpoint.source,
                orjson.dumps(checkpoint.state, default=str).decode(),
                checkpoint.records,
                checkpoint.updated,
            ],
        )

    def forget(self, source: str) -> bool:
        """Delete the checkpoint of ``source`` (``--restart``); return whether there was one."""
        if self.path is None:
            return self._memory.pop(source, None) is not None
        cursor = self._connect().execute(
            "delete from eventsink_checkpoints where source = ?", [source]
        )
        return cursor.rowcount > 0

    def all(self) -> list[Checkpoint]:
        """Every stored checkpoint."""
        if self.path is None:
            return list(self._memory.values())
        rows = self._connect().execute(
            "select source, state, records, updated from eventsink_checkpoints order by source"
        )
        return [Checkpoint(row[0], orjson.loads(row[1]), row[2], row[3]) for row in rows]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
