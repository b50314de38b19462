"""The durable outbox: events in SQLite (WAL) until their sink confirms them.

What survives what:

* **A process crash or ``kill -9``**: every committed event. Appends are committed in groups a
  few milliseconds apart (the Datasette plugin waits for the commit before its request
  completes; ``Client.write`` returns as soon as the event is queued for the next commit and
  ``Client.flush`` waits for delivery). Batches leased by a dead process are reclaimed when
  the next process opens the outbox.
* **Acknowledged deliveries**: the delete of a confirmed batch joins the next transaction (at
  most ``ACK_DELAY`` later) instead of costing a commit of its own. A crash in that window
  means the batch is delivered again, which the ULID keys make harmless.
* **A power loss or OS crash**: with ``durability: normal`` (``synchronous=NORMAL`` in WAL
  mode) the last commits before the loss may be rolled back; the database is never corrupted.
  ``durability: fsync`` (``synchronous=FULL``) fsyncs every commit and loses nothing committed,
  at roughly six times the cost per commit.

Several processes may share one outbox file: leases carry the owner (host, pid) and a deadline,
so each batch is delivered by one process at a time and a crashed owner's batches return.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .event import Event
from .outbox import DeadLetter, Failure, Leased, Outbox, SinkBacklog

T = TypeVar("T")

SCHEMA = """
create table if not exists eventsink_outbox (
    seq integer primary key,
    sink text not null,
    id text not null,
    table_name text not null,
    instance text not null,
    created text not null,
    data blob not null,
    attempts integer not null default 0,
    lease_owner text,
    lease_until real,
    first_failure real,
    last_error text,
    last_status integer,
    paused integer not null default 0
);
create index if not exists eventsink_outbox_unleased on eventsink_outbox (sink, seq)
    where lease_owner is null;
create table if not exists eventsink_dead_letters (
    seq integer primary key autoincrement,
    sink text not null,
    id text not null,
    table_name text not null,
    instance text not null,
    created text not null,
    data blob not null,
    status integer,
    error text,
    attempts integer,
    first_failure real,
    last_failure real
);
create index if not exists eventsink_dead_letters_sink on eventsink_dead_letters (sink, id);
"""

_COLUMNS = "id, table_name, instance, created, data"
_CHUNK = 500  # rows per "in (...)" statement, well under SQLite's parameter limit
LEASE_SECONDS = 300.0
ACK_DELAY = 0.01  # seconds an acked row may wait for its delete to join another transaction


def _chunks(items: Sequence[T], size: int = _CHUNK) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _marks(count: int) -> str:
    return ",".join("?" * count)


class Runner:
    """Runs a function with a SQLite connection off the event loop, inside a transaction."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class ThreadRunner(Runner):
    """A dedicated thread owning one connection to ``path``."""

    def __init__(self, path: str, *, durability: str = "normal") -> None:
        self.path = path
        self._synchronous = "FULL" if durability == "fsync" else "NORMAL"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="eventsink-outbox")
        self._connection: sqlite3.Connection | None = None

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            connection.execute("pragma journal_mode=wal")
            connection.execute(f"pragma synchronous={self._synchronous}")
            self._connection = connection
        connection = self._connection
        connection.execute("begin immediate")
        try:
            result = fn(connection)
        except BaseException:
            connection.execute("rollback")
            raise
        connection.execute("commit")
        return result

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


class DatasetteRunner(Runner):
    """Uses a Datasette database's write thread (the internal database, for the plugin)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.database.execute_write_fn(fn)


def _owner_is_dead(owner: str, host: str) -> bool:
    owner_host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if owner_host != host or not pid.isdigit():
        return False  # another machine's lease: wait for its deadline
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _release_expired(connection: sqlite3.Connection, now: float) -> None:
    # Leases are only looked for through the partial index of unleased rows, so expired
    # leases are cleared here (at open and every few lease calls) rather than in each query.
    connection.execute(
        "update eventsink_outbox set lease_owner = null, lease_until = null "
        "where lease_owner is not null and lease_until < ?",
        [now],
    )


class SQLiteOutbox(Outbox):
    """The outbox in a SQLite database: a file of its own, or Datasette's internal database."""

    shared = True
    durable = True
    default_max_events = 1_000_000

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durability: str = "normal",
        runner: Runner | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        if runner is None:
            if path is None:
                raise TypeError("SQLiteOutbox needs a path or a runner")
            runner = ThreadRunner(os.fspath(path), durability=durability)
        self.path = os.fspath(path) if path is not None else None
        self.durable = self.path != ":memory:"
        self.runner = runner
        self.lease_seconds = lease_seconds
        self._host = socket.gethostname()
        self.owner = f"{self._host}:{os.getpid()}:{secrets.token_hex(4)}"
        self._last_reclaim = time.monotonic()
        self._acked: list[int] = []  # confirmed rows whose delete rides the next transaction
        self._ack_flush: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<SQLiteOutbox {self.path or self.runner!r}>"

    async def open(self, sinks: Sequence[str]) -> dict[str, SinkBacklog]:
        host = self._host

        def prepare(connection: sqlite3.Connection) -> None:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            owners = [
                row[0]
                for row in connection.execute(
                    "select distinct lease_owner from eventsink_outbox "
                    "where lease_owner is not null"
                )
            ]
            dead = [owner for owner in owners if _owner_is_dead(owner, host)]
            for owner in dead:
                connection.execute(
                    "update eventsink_outbox set lease_owner = null, lease_until = null "
                    "where lease_owner = ?",
                    [owner],
                )
            _release_expired(connection, time.time())

        await self._run(prepare)
        return await self.backlog()

    async def append(
        self, events: Sequence[Event], sinks: Sequence[str], lease_for: Sequence[str] = ()
    ) -> dict[str, Leased]:
        values = [
            (event.id, event.table, event.instance, event.created, event.data_json())
            for event in events
        ]
        owner, until = self.owner, time.time() + self.lease_seconds

        def insert(connection: sqlite3.Connection) -> dict[str, list[int]]:
            handles = {}
            for sink in sinks:
                lease = (owner, until) if sink in lease_for else (None, None)
                connection.executemany(
                    "insert into eventsink_outbox (sink, id, table_name, instance, created, "
                    "data, lease_owner, lease_until) values (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(sink, *row, *lease) for row in values],
                )
                if sink in lease_for:
                    # One writer inside one transaction: the rowids just made are contiguous.
                    last = connection.execute("select last_insert_rowid()").fetchone()[0]
                    handles[sink] = list(range(last - len(values) + 1, last + 1))
            return handles

        handles = await self._run(insert)
        return {sink: Leased(list(events), seqs) for sink, seqs in handles.items()}

    async def lease(self, sink: str, limit: int) -> Leased | None:
        owner, lease_seconds = self.owner, self.lease_seconds

        reclaim = time.monotonic() - self._last_reclaim > self.lease_seconds / 10
        if reclaim:
            self._last_reclaim = time.monotonic()

        def take(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            now = time.time()
            if reclaim:
                _release_expired(connection, now)
            return connection.execute(
                "update eventsink_outbox set lease_owner = ?, lease_until = ? "
                "where seq in (select seq from eventsink_outbox where sink = ? and "
                "lease_owner is null order by seq limit ?) "
                f"returning seq, {_COLUMNS}, attempts, first_failure",
                [owner, now + lease_seconds, sink, limit],
            ).fetchall()

        rows = await self._run(take)
        if not rows:
            return None
        rows.sort(key=lambda row: row[0])  # RETURNING gives no order guarantee
        events = [Event(row[1], row[2], row[3], row[4], data_json=row[5]) for row in rows]
        attempts = max(row[6] for row in rows)
        failures = [row[7] for row in rows if row[7] is not None]
        return Leased(events, [row[0] for row in rows], attempts, min(failures, default=None))

    async def _by_handles(self, sql: str, leased: Leased, *params: Any) -> None:
        handles = leased.handles

        def apply(connection: sqlite3.Connection) -> None:
            for chunk in _chunks(handles):
                connection.execute(sql.format(marks=_marks(len(chunk))), [*params, *chunk])

        await self._run(apply)

    async def ack(self, sink: str, leased: Leased) -> None:
        # The delete is deferred and folded into the next transaction (at most ACK_DELAY
        # later): a crash in between only means a redelivery, which the ids make harmless,
        # and it saves a commit per batch.
        self._acked.extend(leased.handles)
        if self._ack_flush is None:
            self._ack_flush = asyncio.ensure_future(self._flush_acks_later())

    async def _flush_acks_later(self) -> None:
        try:
            while self._acked:  # acks that arrive during a flush are flushed too
                await asyncio.sleep(ACK_DELAY)
                await self._run(lambda connection: None)
        finally:
            self._ack_flush = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction that first deletes the acked rows."""
        acked, self._acked = self._acked, []
        if not acked:
            return await self.runner.run(fn)

        def delete_acked_then(connection: sqlite3.Connection) -> T:
            for chunk in _chunks(acked):
                connection.execute(
                    f"delete from eventsink_outbox where seq in ({_marks(len(chunk))})", chunk
                )
            return fn(connection)

        try:
            return await self.runner.run(delete_acked_then)
        except BaseException:
            self._acked[:0] = acked  # not deleted: try again with the next transaction
            raise

    async def record_failure(self, sink: str, leased: Leased, failure: Failure) -> None:
        await self._by_handles(
            "update eventsink_outbox set attempts = ?, first_failure = ?, last_error = ?, "
            "last_status = ?, paused = ?, lease_until = ? where seq in ({marks})",
            leased,
            failure.attempts,
            failure.first_failure,
            failure.message,
            failure.status,
            int(failure.paused),
            time.time() + self.lease_seconds,
        )

    async def release(self, sink: str, leased: Leased) -> None:
        await self._by_handles(
            "update eventsink_outbox set lease_owner = null, lease_until = null "
            "where seq in ({marks})",
            leased,
        )

    async def dead_letter(self, sink: str, leased: Leased, failure: Failure) -> None:
        handles = leased.handles

        def move(connection: sqlite3.Connection) -> None:
            for chunk in _chunks(handles):
                marks = _marks(len(chunk))
                connection.execute(
                    f"insert into eventsink_dead_letters (sink, {_COLUMNS}, status, error, "
                    "attempts, first_failure, last_failure) "
                    f"select sink, {_COLUMNS}, ?, ?, ?, ?, ? from eventsink_outbox "
                    f"where seq in ({marks}) order by seq",
                    [
                        failure.status,
                        failure.message,
                        failure.attempts,
                        failure.first_failure,
                        failure.last_failure,
                        *chunk,
                    ],
                )
                connection.execute(f"delete from eventsink_outbox where seq in ({marks})", chunk)

        await self._run(move)

    async def drop_oldest(self, sink: str, count: int) -> list[Event]:
        def drop(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = connection.execute(
                f"select seq, {_COLUMNS} from eventsink_outbox where sink = ? and "
                "lease_owner is null order by seq limit ?",
                [sink, count],
            ).fetchall()
            for chunk in _chunks(rows):
                connection.execute(
                    f"delete from eventsink_outbox where seq in ({_marks(len(chunk))})",
                    [row[0] for row in chunk],
                )
            return rows

        rows = await self._run(drop)
        return [Event(row[1], row[2], row[3], row[4], data_json=row[5]) for row in rows]

    async def replay(
        self, sink: str | None = None, since: str | None = None, ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        where, params = ["1 = 1"], []
        if sink is not None:
            where.append("sink = ?")
            params.append(sink)
        if since is not None:
            where.append("id >= ?")
            params.append(since)
        if ids is not None:
            where.append("id in (select value from json_each(?))")
            params.append(json.dumps(list(ids)))
        condition = " and ".join(where)

        def move(connection: sqlite3.Connection) -> dict[str, int]:
            counts = dict(
                connection.execute(
                    f"select sink, count(*) from eventsink_dead_letters where {condition} "
                    "group by sink",
                    params,
                ).fetchall()
            )
            connection.execute(
                f"insert into eventsink_outbox (sink, {_COLUMNS}) select sink, {_COLUMNS} "
                f"from eventsink_dead_letters where {condition} order by seq",
                params,
            )
            connection.execute(f"delete from eventsink_dead_letters where {condition}", params)
            return counts

        return await self._run(move)

    async def backlog(self) -> dict[str, SinkBacklog]:
        def read(connection: sqlite3.Connection) -> dict[str, SinkBacklog]:
            now = time.time()
            result: dict[str, SinkBacklog] = {}
            for sink, pending, in_flight, size in connection.execute(
                "select sink, sum(lease_until is null or lease_until < ?), "
                "sum(lease_until >= ?), sum(length(data)) from eventsink_outbox group by sink",
                [now, now],
            ):
                oldest = connection.execute(
                    "select created from eventsink_outbox where sink = ? order by seq limit 1",
                    [sink],
                ).fetchone()
                result[sink] = SinkBacklog(
                    pending=pending or 0,
                    in_flight=in_flight or 0,
                    oldest_created=oldest[0] if oldest else None,
                    bytes=size or 0,
                )
            for sink, count in connection.execute(
                "select sink, count(*) from eventsink_dead_letters group by sink"
            ):
                result.setdefault(sink, SinkBacklog()).dead_letters = count
            return result

        return await self._run(read)

    async def dead_letters(self, sink: str | None = None, limit: int = 100) -> list[DeadLetter]:
        def read(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return connection.execute(
                f"select sink, {_COLUMNS}, status, error, attempts, first_failure, last_failure "
                "from eventsink_dead_letters where (? is null or sink = ?) "
                "order by seq desc limit ?",
                [sink, sink, limit],
            ).fetchall()

        return [
            DeadLetter(
                row[0],
                Event(row[1], row[2], row[3], row[4], data_json=row[5]),
                Failure(row[7] or "", row[6], row[8] or 0, row[9] or 0.0, row[10] or 0.0),
            )
            for row in await self._run(read)
        ]

    async def close(self) -> None:
        owner = self.owner

        def release_all(connection: sqlite3.Connection) -> None:
            connection.execute(
                "update eventsink_outbox set lease_owner = null, lease_until = null "
                "where lease_owner = ?",
                [owner],
            )

        if self._ack_flush is not None:
            self._ack_flush.cancel()
        try:
            await self._run(release_all)
        finally:
            await self.runner.close()
