"""The ``sqlite`` sink: each event as a row (``Event.row()``) of a table in a SQLite file.

Rows are inserted with ``insert or ignore`` keyed by ``id`` (the primary key), so a batch
sent again after a crash or a retry changes nothing. New columns are added as they appear.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from eventsink.config import Option
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RetryableError
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink


class SQLiteSink(Sink):
    """Insert events into a SQLite database with sqlite-utils, idempotent by ``id``."""

    name = "sqlite"
    description = "Writes events as rows of a SQLite table (one table per event table)."
    options = (
        Option("path", str, "events.db", "SQLite file to write; created if missing."),
        Option("table", str, None, "Table for every event; default: each event's own table."),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.path = Path(self.config["path"]).expanduser()
        self._db: sqlite_utils.Database | None = None

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        if not config["path"]:
            raise ConfigError("config key 'path' must name a file", key="path")

    def _open(self) -> sqlite_utils.Database:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # send() runs in worker threads, one batch at a time per sink.
                connection = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            except (OSError, sqlite3.Error) as error:
                raise ConfigError(
                    f"config key 'path': cannot open {str(self.path)!r}: {error}", key="path"
                ) from None
            db = sqlite_utils.Database(connection)
            db.enable_wal()
            self._db = db
        return self._db

    def open(self) -> None:
        self._open()

    def send(self, batch: Sequence[Event]) -> None:
        tables: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in batch:
            tables[self.config["table"] or event.table].append(event.row())
        try:
            db = self._open()
            with db.conn:
                for table, rows in tables.items():
                    db[table].insert_all(
                        rows, pk="id", ignore=True, alter=True, batch_size=len(rows)
                    )
        except sqlite3.OperationalError as error:  # locked, disk full: may recover
            raise RetryableError(f"cannot write to {str(self.path)!r}: {error}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    def describe(self) -> str:
        return f"sqlite {self.path}"


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [SQLiteSink]
