"""The ``sqlite`` sink: rows inserted into a local SQLite database, keyed by event id.

A minimal version written on the ``nats`` branch for ``eventsink consume``'s tests; the full
sink is built on its own branch with the same contract: options ``path`` (default
``events.db``) and ``table``, ``INSERT OR IGNORE`` of ``event.row()`` keyed by ``id``, so a
redelivered event is absorbed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from eventsink.config import Option
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RetryableError
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


class SQLiteSink(Sink):
    """Insert each event's row into a table named after the event (or ``table``)."""

    name = "sqlite"
    description = "Inserts events as rows into a SQLite database (idempotent by id)."
    options = (
        Option("path", str, "events.db", "SQLite database file.", nullable=False),
        Option("table", str, None, "Table for every event; default: the event's own table."),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.path = Path(self.config["path"]).expanduser()
        self._db: sqlite3.Connection | None = None
        self._columns: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        if not config["path"]:
            raise ConfigError("config key 'path' must name a file", key="path")

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Several consumers may share one file: WAL plus a long busy timeout serialises them.
            db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as error:
            raise ConfigError(
                f"config key 'path': cannot open {str(self.path)!r}: {error}", key="path"
            ) from None
        self._db = db

    def _ensure_table(self, db: sqlite3.Connection, table: str, keys: set[str]) -> None:
        columns = self._columns.get(table)
        if columns is None:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_quote(table)} "
                "(id TEXT PRIMARY KEY, instance TEXT, created TEXT)"
            )
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({_quote(table)})")}
            self._columns[table] = columns
        for key in sorted(keys - columns):
            with contextlib.suppress(sqlite3.OperationalError):  # added by another process
                db.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN {_quote(key)}")
            columns.add(key)

    def send(self, batch: Sequence[Event]) -> None:
        with self._lock:
            if self._db is None:
                self.open()
            db = self._db
            assert db is not None
            by_table: dict[str, list[dict[str, Any]]] = {}
            for event in batch:
                by_table.setdefault(self.config["table"] or event.table, []).append(event.row())
            try:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    for table, rows in by_table.items():
                        keys = set().union(*rows)
                        self._ensure_table(db, table, keys)
                        for row in rows:
                            names = list(row)
                            db.execute(
                                f"INSERT OR IGNORE INTO {_quote(table)} "
                                f"({', '.join(map(_quote, names))}) "
                                f"VALUES ({', '.join('?' * len(names))})",
                                [_value(row[name]) for name in names],
                            )
            except sqlite3.OperationalError as error:  # locked, disk full: may pass
                self._columns.clear()
                raise RetryableError(f"cannot write to {str(self.path)!r}: {error}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def describe(self) -> str:
        return f"sqlite {self.path}"


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [SQLiteSink]
