"""The ``sqlite`` sink: events as rows of a local SQLite database, ready for ``datasette``.

Rows have the same shape as the Datasette sink writes (:meth:`eventsink.Event.row`): ``id``
(the primary key), ``instance``, ``created``, then one column per data key. A table is created
on first use and gains a column when a new key appears; column types are inferred by
sqlite-utils exactly as Datasette's ``/-/create`` infers them, and lists and objects are
stored as JSON text. Rows are inserted with ``ON CONFLICT (id) DO NOTHING``, so a batch
delivered twice (after a crash or a retry) is stored once.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils
from sqlite_utils.utils import suggest_column_types

from eventsink.config import Option
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RejectedError, RetryableError
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink
from eventsink.sqlite_files import connect

try:
    from sqlite_utils.db import quote_identifier
except ImportError:  # sqlite-utils < 4 (which Datasette 1.0a35 pins) has no quote_identifier

    def quote_identifier(identifier: str) -> str:
        """``identifier`` quoted for SQL, as sqlite-utils 4 does it."""
        return '"' + identifier.replace('"', '""') + '"'


logger = logging.getLogger("eventsink")

_ENVELOPE = ("id", "instance", "created")
_ABSENT = (None, None)
_TRANSIENT = re.compile(r"locked|busy|disk|I/O|full", re.IGNORECASE)


class SQLiteSink(Sink):
    """Insert each batch into a SQLite file, one transaction per batch, idempotent by ``id``.

    A locked or full database raises ``RetryableError``; rows the database refuses (a
    constraint of a table created elsewhere) raise ``RejectedError``, so the pipeline
    dead-letters only those rows.
    """

    name = "sqlite"
    max_concurrent_sends = 1  # one connection: one transaction at a time
    description = "Writes events as rows of a local SQLite database (open it with datasette)."
    options = (
        Option("path", str, "events.db", "SQLite file to write; created if missing."),
        Option(
            "table",
            str,
            None,
            "Table for every event; none: each event's own table (eventsink send --table).",
        ),
        Option(
            "durability",
            str,
            "normal",
            "'normal': WAL with synchronous=NORMAL; 'fsync': synchronous=FULL (power-loss safe).",
            choices=("normal", "fsync"),
            nullable=False,
        ),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.path = Path(self.config["path"]).expanduser()
        self._db: sqlite_utils.Database | None = None
        self._columns: dict[str, set[str]] = {}  # table -> lower-cased column names

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        if not config["path"]:
            raise ConfigError("config key 'path' must name a SQLite file", key="path")
        if config["table"] is not None and not config["table"]:
            raise ConfigError("config key 'table' must be a table name or null", key="table")

    def open(self) -> None:
        self._connect()

    def _connect(self) -> sqlite_utils.Database:
        try:
            # send() runs in whichever eventsink worker thread is free; the lane calls it
            # one batch at a time (max_concurrent_sends), so sharing the connection is safe.
            connection = connect(
                self.path, durability=self.config["durability"], check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(
                f"config key 'path': cannot open {str(self.path)!r} as a SQLite database: {error}",
                key="path",
            ) from None
        self._db = sqlite_utils.Database(connection)
        return self._db

    def send(self, batch: Sequence[Event]) -> None:
        db = self._db or self._connect()
        fixed_table = self.config["table"]
        tables: dict[str, list[dict[str, Any]]] = {}  # table -> rows keyed lower-cased
        for event in batch:
            tables.setdefault(fixed_table or event.table, []).append(_row(event))
        try:
            statements = [(self._prepare(db, table, rows), rows) for table, rows in tables.items()]
            connection = db.conn
            connection.execute("begin immediate")
            try:
                for (sql, columns), rows in statements:
                    # Rows are keyed by lower-cased name: SQL column names ignore case, so
                    # "A" in one event and "a" in another are one column, never two.
                    keys = [column.lower() for column in columns]
                    connection.executemany(
                        sql, [[_value(row.get(key, _ABSENT)[1]) for key in keys] for row in rows]
                    )
            except BaseException:
                connection.execute("rollback")
                raise
            connection.execute("commit")
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and _TRANSIENT.search(str(error)):
                raise RetryableError(f"cannot write to {str(self.path)!r}: {error}") from None
            # A constraint of a table made elsewhere (NOT NULL, CHECK), a changed schema...:
            # split the batch so only the rows it refuses are dead-lettered.
            self._columns.clear()
            raise RejectedError(f"{str(self.path)!r} refused the rows: {error}") from None

    def _prepare(
        self, db: sqlite_utils.Database, table: str, rows: list[dict[str, Any]]
    ) -> tuple[str, list[str]]:
        # rows: {lower-cased name: (name, value)}, as made by _row()
        """Create ``table`` or add its missing columns; return the insert and its columns.

        Schema changes commit on their own before the batch's transaction: a new column is
        harmless if the insert then fails, and it keeps sqlite-utils' own transactions apart
        from ours.
        """
        first: dict[str, str] = {}  # lower-cased key -> the spelling seen first
        for row in rows:
            for key in row:
                first.setdefault(key, row[key][0])
        columns = list(first.values())
        known = self._columns.get(table)
        if known is None or any(column.lower() not in known for column in columns):
            handle = db.table(table)
            rows = [{first[key]: value for key, (_, value) in row.items()} for row in rows]
            if not handle.exists():
                types = suggest_column_types(rows)
                # The envelope columns come first, as in the Datasette sink's tables.
                ordered = {key: types[key] for key in (*_ENVELOPE, *types) if key in types}
                handle.create(ordered, pk="id", if_not_exists=True)
            else:
                handle.add_missing_columns(rows)
            self._columns[table] = known = {column.lower() for column in handle.columns_dict}
        names = ", ".join(quote_identifier(column) for column in columns)
        marks = ", ".join("?" * len(columns))
        return (
            # Only a repeated id is ignored: "insert or ignore" would also silently skip rows
            # that break a NOT NULL or CHECK constraint of a table created elsewhere.
            f"insert into {quote_identifier(table)} ({names}) values ({marks}) "
            "on conflict (id) do nothing",
            columns,
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    @property
    def destination(self) -> str:
        where = f"sqlite {self.path.resolve()}"
        return f"{where} table {self.config['table']}" if self.config["table"] else where

    def describe(self) -> str:
        return self.destination


def _row(event: Event) -> dict[str, tuple[str, Any]]:
    """The event's row keyed by lower-cased column name: ``{lower: (name, value)}``.

    Two keys equal but for case cannot be stored faithfully in one row (``write()`` refuses
    them; this catches events that bypassed it): the row is refused, not altered.
    """
    row = event.row()
    lowered = {key.lower(): (key, value) for key, value in row.items()}
    if len(lowered) != len(row):
        seen: dict[str, str] = {}
        for key in row:
            if key.lower() in seen:
                raise RejectedError(
                    f"event {event.id}: fields {seen[key.lower()]!r} and {key!r} differ only in "
                    "case and would be stored in one column"
                )
            seen[key.lower()] = key
    return lowered


def _value(value: Any) -> Any:
    # Lists and objects are stored as JSON text, as sqlite-utils and Datasette store them.
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [SQLiteSink]
