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
_DEFAULT_VARIABLES = 999  # SQLite's limit on parameters before 3.32, the safe assumption
_SHAPES_LIMIT = 4096  # inserts kept by (table, keys); events with ever-new keys cannot grow it
_TRANSIENT = re.compile(r"locked|busy|disk|I/O|full", re.IGNORECASE)


class SQLiteSink(Sink):
    """Insert each batch into a SQLite file, one transaction per batch, idempotent by ``id``.

    A locked or full database raises ``RetryableError``; rows the database refuses (a
    constraint of a table created elsewhere) raise ``RejectedError``, so the pipeline
    dead-letters only those rows.
    """

    name = "sqlite"
    max_concurrent_sends = 1  # one connection: one transaction at a time
    local = True  # a file on this machine, keyed by id: eventsink send may skip the outbox
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
        self._inserts: dict[tuple[str, tuple[str, ...]], _Insert] = {}  # by (table, keys)
        self._variables = _DEFAULT_VARIABLES

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
        if hasattr(connection, "getlimit"):  # Python 3.11+
            self._variables = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return self._db

    def send(self, batch: Sequence[Event]) -> None:
        db = self._db or self._connect()
        fixed_table = self.config["table"]
        # Events of one table mostly share their keys: each shape (table, keys) is checked and
        # given its insert once, and its rows go in as multi-row statements of flat values.
        shapes: dict[tuple[str, tuple[str, ...]], list[Event]] = {}
        for event in batch:
            shape = (fixed_table or event.table, tuple(event.data))
            events = shapes.get(shape)
            if events is None:
                shapes[shape] = [event]
            else:
                events.append(event)
        try:
            inserts = [
                (self._insert_for(db, shape, shapes), events) for shape, events in shapes.items()
            ]
            connection = db.conn
            connection.execute("begin immediate")
            try:
                for insert, events in inserts:
                    insert.run(connection, events)
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
            self._inserts.clear()
            raise RejectedError(f"{str(self.path)!r} refused the rows: {error}") from None

    def _insert_for(
        self,
        db: sqlite_utils.Database,
        shape: tuple[str, tuple[str, ...]],
        shapes: dict[tuple[str, tuple[str, ...]], list[Event]],
    ) -> _Insert:
        """The insert for events of ``shape``, making its table or columns first if needed."""
        insert = self._inserts.get(shape)
        if insert is not None:
            return insert
        table, keys = shape
        _refuse_case_twins((*_ENVELOPE, *keys), shapes[shape][0])
        known = self._columns.get(table)
        if known is None or any(key.lower() not in known for key in keys):
            self._make_room(
                db, table, [events for (name, _), events in shapes.items() if name == table]
            )
        if len(self._inserts) >= _SHAPES_LIMIT:
            self._inserts.clear()
        insert = self._inserts[shape] = _Insert(table, (*_ENVELOPE, *keys), self._variables)
        return insert

    def _make_room(self, db: sqlite_utils.Database, table: str, groups: list[list[Event]]) -> None:
        """Create ``table`` or add the columns the events of ``groups`` need.

        Schema changes commit on their own before the batch's transaction: a new column is
        harmless if the insert then fails, and it keeps sqlite-utils' own transactions apart
        from ours. SQL column names ignore case, so "A" in one event and "a" in another are
        one column, spelled as first seen.
        """
        spelling: dict[str, str] = {}
        rows = []
        for events in groups:
            _refuse_case_twins((*_ENVELOPE, *events[0].data), events[0])
            for event in events:
                rows.append(
                    {
                        spelling.setdefault(key.lower(), key): value
                        for key, value in event.row().items()
                    }
                )
        handle = db.table(table)
        if not handle.exists():
            types = suggest_column_types(rows)
            # The envelope columns come first, as in the Datasette sink's tables.
            ordered = {key: types[key] for key in (*_ENVELOPE, *types) if key in types}
            handle.create(ordered, pk="id", if_not_exists=True)
        else:
            handle.add_missing_columns(rows)
        self._columns[table] = {column.lower() for column in handle.columns_dict}
        # Inserts made for this table's columns stay valid: columns were only added.

    def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None
            self._columns.clear()
            self._inserts.clear()

    @property
    def destination(self) -> str:
        where = f"sqlite {self.path.resolve()}"
        return f"{where} table {self.config['table']}" if self.config["table"] else where

    def describe(self) -> str:
        return self.destination


def _refuse_case_twins(keys: tuple[str, ...], event: Event) -> None:
    """Refuse keys equal but for case: one row cannot hold both (``write()`` refuses them;
    this catches events that bypassed it). The row is refused, not altered."""
    lowered = {key.lower() for key in keys}
    if len(lowered) == len(keys):
        return
    seen: dict[str, str] = {}
    for key in keys:
        if key.lower() in seen:
            raise RejectedError(
                f"event {event.id}: fields {seen[key.lower()]!r} and {key!r} differ only in "
                "case and would be stored in one column"
            )
        seen[key.lower()] = key


class _Insert:
    """Inserts rows of one shape, many per statement; a repeated id is ignored."""

    def __init__(self, table: str, columns: tuple[str, ...], variables: int) -> None:
        self.width = len(columns)
        #: Rows per statement: within SQLite's limit on parameters, and at most 100 (longer
        #: statements gain nothing and cost more to prepare).
        self.per_statement = max(1, min(100, variables // self.width))
        names = ", ".join(quote_identifier(column) for column in columns)
        marks = "(" + ", ".join("?" * self.width) + ")"
        # Only a repeated id is ignored: "insert or ignore" would also silently skip rows that
        # break a NOT NULL or CHECK constraint of a table created elsewhere.
        self._head = f"insert into {quote_identifier(table)} ({names}) values "
        self._marks = marks
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = (
                self._head + ", ".join([self._marks] * rows) + " on conflict (id) do nothing"
            )
        return sql

    def run(self, connection: sqlite3.Connection, events: list[Event]) -> None:
        params: list[Any] = []
        add = params.append
        dumps = orjson.dumps
        for event in events:
            add(event.id)
            add(event.instance)
            add(event.created)
            for value in event.data.values():
                # Lists and objects are stored as JSON text, as sqlite-utils and Datasette do.
                add(dumps(value).decode() if isinstance(value, (dict, list)) else value)
        width, per = self.width, self.per_statement
        step = width * per
        for start in range(0, len(params), step):
            chunk = params[start : start + step]
            connection.execute(self.sql(len(chunk) // width), chunk)


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [SQLiteSink]
