"""The durable outbox: events in SQLite (WAL) until their sink confirms them.

What survives what:

* **A process crash or ``kill -9``**: every committed event. Appends are committed in groups a
  few milliseconds apart (the Datasette plugin waits for the commit before its request
  completes; ``Client.write`` returns as soon as the event is queued for the next commit and
  ``Client.flush`` waits for delivery). Rows held by a dead process return when the next
  process opens the outbox (or, for a process on another host, once it stops renewing).
* **Acknowledged deliveries**: the delete of a confirmed batch joins the next transaction (at
  most ``ACK_DELAY`` later) instead of costing a commit of its own. A crash in that window
  means the batch is delivered again, which the ULID keys make harmless.
* **A power loss or OS crash**: with ``durability: normal`` (``synchronous=NORMAL`` in WAL
  mode) the last commits before the loss may be rolled back; the database is never corrupted.
  ``durability: fsync`` (``synchronous=FULL``) fsyncs every commit and loses nothing committed,
  at roughly six times the cost per commit.

Several processes may share one outbox file. Each row is *held* by at most one process, named
in ``lease_owner``: rows a process appends are held by it from the start (so it delivers them
without another process taking them, and without an UPDATE per row to lease them), and rows
nobody holds (left by a process that ended, or replayed) are claimed a batch at a time, under a
second name of the process (``<owner>/claimed``), so that reading back its own appended rows
by a range of ``seq`` never picks up a claimed one. A
holder proves it is alive by renewing one row in ``eventsink_owners`` every ``HEARTBEAT_SECONDS``
and looks for holders that died: the rows of a holder on this host whose process is gone return
to everyone within a heartbeat, those of a holder that stopped renewing after ``lease_seconds``.

Rows are keyed by *destination* (:attr:`eventsink.Sink.destination`, e.g. ``sqlite
/home/ada/a.db``), so a process delivers only the events left for where its sinks deliver. Each
live holder lists the destinations it serves in ``eventsink_serving``; ``eventsink status``
names the destinations with pending events that nobody serves, and ``eventsink outbox move`` /
``drop`` deal with them on purpose.

A process appending many events at once for a destination it delivers stores them as *packs*,
rows of up to :data:`~eventsink.outbox.packs.PACK_EVENTS` events each (see
:mod:`eventsink.outbox.packs`): a row costs about as much to insert and delete as the event it
would otherwise hold.

Schema versions (``eventsink_meta.schema_version``): 1 (no meta table) keyed rows by the
configured sink *name*; 2 keys them by destination; 3 adds packs (the ``events`` and ``pack``
columns). Opening a version 1 file renames the column and remembers every old name in
``eventsink_legacy_keys``; the first process that configures a sink with one of those names
adopts its rows for that sink's destination, once, and says so in the log. An eventsink that
knows only version 2 refuses to open a version 3 outbox; one already running when a newer one
upgrades the file must be stopped first (it would take a pack for a single event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, TypeVar

from ..event import Event
from ..exceptions import ConfigError
from ..pipeline.threads import WorkerThreads
from ..sqlite_files import connect
from .base import DeadLetter, Failure, Leased, Outbox, SinkBacklog
from .held import HeldEvents
from .packs import PACK_EVENTS, PackLedger, encode, expand, unpack

T = TypeVar("T")

logger = logging.getLogger("eventsink")

SCHEMA_VERSION = 3

SCHEMA = """
create table if not exists eventsink_outbox (
    seq integer primary key autoincrement,
    destination text not null,
    id text not null,
    table_name text not null,
    instance text not null,
    created text not null,
    data blob not null,
    attempts integer not null default 0,
    lease_owner text,
    first_failure real,
    last_error text,
    last_status integer,
    paused integer not null default 0,
    events integer not null default 1,
    pack blob
);
create index if not exists eventsink_outbox_unleased on eventsink_outbox (destination, seq)
    where lease_owner is null;
create table if not exists eventsink_dead_letters (
    seq integer primary key autoincrement,
    destination text not null,
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
create index if not exists eventsink_dead_letters_sink on eventsink_dead_letters
    (destination, id);
create table if not exists eventsink_owners (
    owner text primary key,
    until real not null
);
create table if not exists eventsink_serving (
    owner text not null,
    destination text not null,
    name text not null,
    primary key (owner, destination)
);
create table if not exists eventsink_legacy_keys (
    key text primary key
);
create table if not exists eventsink_meta (
    key text primary key,
    value
);
"""

_COLUMNS = "id, table_name, instance, created, data"
#: What a batch is read from: the row's seq, its event columns, its failure history and, for a
#: pack, how many events it holds and their header (:func:`eventsink.outbox.packs.expand`).
_LEASED_COLUMNS = f"seq, {_COLUMNS}, attempts, first_failure, events, pack"
#: A pack row, as :func:`eventsink.outbox.packs.unpack` takes it.
_PACK_COLUMNS = "seq, destination, data, events, pack"
_CHUNK = 500  # rows per "in (...)" statement, well under SQLite's parameter limit
LEASE_SECONDS = 300.0  # a holder that has not renewed for this long is presumed dead
HEARTBEAT_SECONDS = 10.0  # how often a holder renews and looks for holders that died
CLAIMED = "/claimed"  # suffix of the name under which a process holds rows it claimed
ACK_DELAY = 0.01  # seconds an acked row may wait for its delete to join another transaction


#: Appends of at most this many rows may be committed on the event loop's own thread when the
#: outbox thread is idle (:class:`ThreadRunner`): a request waiting for its event skips two
#: thread hops; larger groups go to the thread, not to hold up the loop.
SMALL_APPEND = 16
_INSERT_ROWS = 100  # rows per multi-row insert: 700 parameters, under the old limit of 999
#: Events leased at append that a destination's lane keeps in memory, at most, and the bytes of
#: their data: while its sink keeps up, events are sent from memory; behind that, read back by
#: primary key. A small event takes about 550 bytes in memory; a writer outrunning a fast sink
#: (the null sink) keeps 5,000-10,000 waiting, and every event read back costs a select.
HELD_IN_MEMORY = 20_000
HELD_IN_MEMORY_BYTES = 8 * 1024 * 1024


@cache
def _insert_sql(rows: int) -> str:
    return (
        "insert into eventsink_outbox (destination, id, table_name, instance, created, data, "
        "lease_owner) values " + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    )


def _tables(connection: sqlite3.Connection) -> set[str]:
    return {row[0] for row in connection.execute("select name from sqlite_master")}


def schema_version(connection: sqlite3.Connection) -> int:
    """The outbox schema version of a database: 0 when it holds no outbox yet."""
    tables = _tables(connection)
    if "eventsink_meta" in tables:
        row = connection.execute(
            "select value from eventsink_meta where key = 'schema_version'"
        ).fetchone()
        if row is not None:
            return int(row[0])
    return 1 if "eventsink_outbox" in tables else 0


def ensure_schema(connection: sqlite3.Connection, where: str) -> None:
    """Create the outbox tables, or bring an older outbox to :data:`SCHEMA_VERSION`.

    Raises :class:`~eventsink.exceptions.ConfigError` for an outbox written by a newer
    eventsink, which this one would misread.
    """
    version = schema_version(connection)
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"outbox {where} has schema version {version}; this eventsink understands up to "
            f"{SCHEMA_VERSION}: upgrade eventsink",
            key="outbox",
        )
    if version == SCHEMA_VERSION:
        return
    if version == 1:
        # Rows were keyed by the configured sink name: keep every name, to be adopted by the
        # first sink configured with it (see SQLiteOutbox.open).
        for table in ("eventsink_outbox", "eventsink_dead_letters"):
            connection.execute(f"alter table {table} rename column sink to destination")
    if version in (1, 2):
        # Rows of one event each, numbered without AUTOINCREMENT (a deleted last seq was
        # given out again): the table is made anew with the columns of packs, numbered so
        # that no seq is ever given out twice (a process that was presumed dead may still
        # ack seqs it was handed before).
        connection.execute("alter table eventsink_outbox rename to eventsink_outbox_old")
        connection.execute("drop index if exists eventsink_outbox_unleased")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)
    if version in (1, 2):
        columns = (
            "seq, destination, id, table_name, instance, created, data, attempts, lease_owner, "
            "first_failure, last_error, last_status, paused"
        )
        connection.execute(
            f"insert into eventsink_outbox ({columns}) select {columns} "
            "from eventsink_outbox_old order by seq"
        )
        connection.execute("drop table eventsink_outbox_old")
    if version == 1:
        connection.execute(
            "insert or ignore into eventsink_legacy_keys (key) select distinct destination "
            "from eventsink_outbox union select distinct destination from eventsink_dead_letters"
        )
        logger.info(
            "eventsink outbox %s: upgraded from schema version 1 (rows keyed by sink name) to "
            "%d (rows keyed by destination)",
            where,
            SCHEMA_VERSION,
        )
    connection.execute(
        "insert or replace into eventsink_meta (key, value) values ('schema_version', ?)",
        [SCHEMA_VERSION],
    )


def _adopt_legacy(connection: sqlite3.Connection, destinations: Mapping[str, str]) -> None:
    """Give rows keyed by an old sink name to the destination of the sink now so named."""
    legacy = {row[0] for row in connection.execute("select key from eventsink_legacy_keys")}
    for destination, name in destinations.items():
        if name not in legacy:
            continue
        counts = [
            connection.execute(
                f"update {table} set destination = ? where destination = ?", [destination, name]
            ).rowcount
            if name != destination
            else 0
            for table in ("eventsink_outbox", "eventsink_dead_letters")
        ]
        connection.execute("delete from eventsink_legacy_keys where key = ?", [name])
        if any(counts):
            logger.info(
                "eventsink outbox: %d pending event(s) and %d dead letter(s) kept under the old "
                "sink name %r now belong to destination %r (once; move them with 'eventsink "
                "outbox move' if they were meant for another)",
                counts[0],
                counts[1],
                name,
                destination,
            )


def _live_owners(connection: sqlite3.Connection, host: str, now: float) -> list[str]:
    """Owners that renewed in time and, on this host, whose process still runs."""
    return [
        owner
        for owner, until in connection.execute("select owner, until from eventsink_owners")
        if until >= now and not _owner_is_dead(owner, host)
    ]


def _leased(
    rows: list[tuple[Any, ...]],
    first: int | None = None,
    last: int | None = None,
    limit: int | None = None,
) -> Leased | None:
    """A batch from rows of :data:`_LEASED_COLUMNS` in seq order: every event of each row (a
    pack holds many), or only those with seqs from ``first`` to ``last``, at most ``limit``."""
    seqs: list[int] = []
    events: list[Event] = []
    attempts, failures = 0, []
    for row in rows:
        for seq, event in expand(row):
            if (first is None or seq >= first) and (last is None or seq <= last):
                seqs.append(seq)
                events.append(event)
        attempts = max(attempts, row[6])
        if row[7] is not None:
            failures.append(row[7])
    if limit is not None:
        del seqs[limit:], events[limit:]
    if not events:
        return None
    return Leased(events, seqs, attempts, min(failures, default=None))


def _chunks(items: Sequence[T], size: int = _CHUNK) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """``seqs`` as (first, last) runs of consecutive integers, ascending."""
    runs: list[tuple[int, int]] = []
    if not seqs:
        return runs
    ordered = sorted(seqs)
    first = last = ordered[0]
    for seq in ordered[1:]:
        if seq == last + 1:
            last = seq
        elif seq != last:  # a repeat adds nothing
            runs.append((first, last))
            first = last = seq
    runs.append((first, last))
    return runs


def _marks(count: int) -> str:
    return ",".join("?" * count)


class Runner:
    """Runs a function with a SQLite connection off the event loop, inside a transaction."""

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        """Run ``fn(connection)`` in a transaction; ``small``: a few rows' work, which a
        runner may do on the calling thread when that is cheaper than a thread hop."""
        raise NotImplementedError

    def run_now(
        self, fn: Callable[[sqlite3.Connection], T], *, one_statement: bool = False
    ) -> tuple[bool, T | None]:
        """Run a few rows' work ``fn`` in a transaction on the calling thread if that needs no
        waiting: ``(True, result)``; ``(False, None)`` when it cannot (``fn`` did not run, or
        changed nothing). ``one_statement``: ``fn`` executes a single statement, which is its
        own transaction."""
        return False, None

    async def close(self) -> None:
        pass


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` says another connection holds the lock (``SQLITE_BUSY``)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "locked" in str(error)  # pragma: no cover - Python 3.10


def _commit_after(connection: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in the transaction just begun and commit it, or roll it back."""
    try:
        result = fn(connection)
        connection.execute("commit")
    except BaseException:
        # A commit refused (disk full) leaves the transaction open: end it, or every later
        # call fails with "cannot start a transaction within a transaction".
        if connection.in_transaction:
            connection.execute("rollback")
        raise
    return result


class ThreadRunner(Runner):
    """A dedicated thread owning one connection to ``path``.

    Small work (a few rows, ``small=True``) that finds the thread idle runs at once on the
    calling thread instead, if it can take the write lock without waiting: two thread hops
    cost more than inserting a row, and a request waiting for its event's commit feels each
    hop. It runs there on a second connection that never waits for a lock (another writer:
    the thread does it) and never checkpoints the WAL (the thread's next commit does), so the
    event loop is not held up; with ``durability: fsync`` every commit waits for the disk, so
    nothing runs inline.
    """

    def __init__(self, path: str, *, durability: str = "normal") -> None:
        self.path = path
        self._durability = durability
        self._thread = WorkerThreads(1, "eventsink-outbox")
        self._connection: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None  # for run_now, made by the thread
        self._lock = threading.Lock()  # one transaction of this runner at a time
        self._queued = 0  # calls handed to the thread and not finished

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return self._transaction(fn)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            self._connection = connect(
                self.path, durability=self._durability, check_same_thread=False
            )
            # Inline commits get a connection of their own (not with fsync, see above; not
            # in memory, where a second connection would open another, empty database).
            if self._durability != "fsync" and self.path != ":memory:":
                inline = connect(self.path, durability=self._durability, check_same_thread=False)
                inline.execute("pragma busy_timeout = 0")
                inline.execute("pragma wal_autocheckpoint = 0")
                self._inline = inline
        connection = self._connection
        connection.execute("begin immediate")
        return _commit_after(connection, fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        if small:
            done, result = self.run_now(fn)
            if done:
                return result  # type: ignore[return-value]
        self._queued += 1
        try:
            return await self._thread.run(self._call, fn)
        finally:
            self._queued -= 1

    def run_now(
        self, fn: Callable[[sqlite3.Connection], T], *, one_statement: bool = False
    ) -> tuple[bool, T | None]:
        connection = self._inline
        if self._queued or connection is None or not self._lock.acquire(blocking=False):
            return False, None
        try:
            if one_statement:  # it commits itself: two round trips into SQLite fewer
                try:
                    return True, fn(connection)
                except sqlite3.OperationalError as error:
                    if connection.in_transaction:  # SQLite ends it; never leave one open
                        connection.execute("rollback")
                    if _is_busy(error):  # another writer holds the lock: nothing was written
                        return False, None
                    raise
            try:
                connection.execute("begin immediate")
            except sqlite3.OperationalError:  # another writer holds the lock: not here
                return False, None
            return True, _commit_after(connection, fn)
        finally:
            self._lock.release()

    def _close(self) -> None:
        with self._lock:
            for connection in (self._connection, self._inline):
                if connection is not None:
                    connection.close()
            self._connection = self._inline = None

    async def close(self) -> None:
        await self._thread.run(self._close)
        self._thread.shutdown()


class DatasetteRunner(Runner):
    """Uses a Datasette database's write thread (the internal database, for the plugin)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def __repr__(self) -> str:
        return f"<Datasette database {getattr(self.database, 'name', None)!r}>"

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        return await self.database.execute_write_fn(fn)


# Owners of the SQLiteOutbox objects open in this process: a same-pid owner not among them is
# a previous process that had the same pid (a container restarted as pid 1, say).
_OPEN_OWNERS: set[str] = set()


def _owner_is_dead(owner: str, host: str) -> bool:
    owner_host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    owner = owner.removesuffix(CLAIMED)
    if owner_host != host or not pid.isdigit():
        return False  # another machine's owner: wait until it stops renewing
    if int(pid) == os.getpid():
        return owner not in _OPEN_OWNERS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _forget_dead_owners(
    connection: sqlite3.Connection, mine: Sequence[str], host: str, now: float
) -> int:
    """Delete the owners that stopped renewing or whose process is gone; return how many."""
    dead = [
        (owner,)
        for owner, until in connection.execute("select owner, until from eventsink_owners")
        if owner not in mine and (until < now or _owner_is_dead(owner, host))
    ]
    connection.executemany("delete from eventsink_owners where owner = ?", dead)
    connection.execute(
        "delete from eventsink_serving where owner not in (select owner from eventsink_owners)"
    )
    return len(dead)


def _release_orphans(connection: sqlite3.Connection) -> int:
    """Return the events held by no registered owner to everyone (a pack as rows of one event
    each); return how many."""
    orphaned = "lease_owner is not null and lease_owner not in (select owner from eventsink_owners)"
    unpacked = unpack(
        connection,
        connection.execute(
            f"select {_PACK_COLUMNS} from eventsink_outbox where events > 1 and {orphaned}"
        ).fetchall(),
        lease_owner=None,
    )
    return (
        unpacked
        + connection.execute(
            f"update eventsink_outbox set lease_owner = null where {orphaned}"
        ).rowcount
    )


class SQLiteOutbox(Outbox):
    """The outbox in a SQLite database: a file of its own, or Datasette's internal database."""

    shared = True
    durable = True
    default_max_events = 1_000_000
    #: Events leased at append kept in memory per destination; the rest are read back.
    held_in_memory = HELD_IN_MEMORY
    held_in_memory_bytes = HELD_IN_MEMORY_BYTES

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durability: str = "normal",
        runner: Runner | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        super().__init__()
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
        self.claimer = self.owner + CLAIMED
        self._heartbeat: asyncio.Task[None] | None = None
        self._packs = PackLedger()  # the packs this process appended and has not finished
        # Confirmed events whose delete rides the next transaction: runs of seqs of rows of
        # one event, and packs wholly acked (last seq, events).
        self._acked: list[tuple[int, int]] = []
        self._acked_packs: list[tuple[int, int]] = []
        self._ack_flush: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<SQLiteOutbox {self.path or self.runner!r}>"

    async def open(
        self, destinations: Mapping[str, str] | Sequence[str] = ()
    ) -> dict[str, SinkBacklog]:
        names, host = (self.owner, self.claimer), self._host
        if not isinstance(destinations, Mapping):
            destinations = {destination: destination for destination in destinations}
        serving = [(self.owner, destination, name) for destination, name in destinations.items()]
        where = self.path or repr(self.runner)

        def prepare(connection: sqlite3.Connection) -> None:
            ensure_schema(connection, where)
            _adopt_legacy(connection, destinations)
            now = time.time()
            connection.executemany(
                "insert or replace into eventsink_owners (owner, until) values (?, ?)",
                [(name, now + self.lease_seconds) for name in names],
            )
            connection.executemany(
                "insert or replace into eventsink_serving (owner, destination, name) "
                "values (?, ?, ?)",
                serving,
            )
            _forget_dead_owners(connection, names, host, now)
            released = _release_orphans(connection)
            if released:
                logger.info(
                    "eventsink outbox: %d event(s) held by a process that ended are pending again",
                    released,
                )

        _OPEN_OWNERS.add(self.owner)
        try:
            await self._run(prepare)
        except BaseException:
            _OPEN_OWNERS.discard(self.owner)
            raise
        self._heartbeat = asyncio.ensure_future(self._keep_alive())
        return await self.backlog()

    async def _keep_alive(self) -> None:
        """Renew this process's hold, and return the rows of holders that died."""
        names, host = (self.owner, self.claimer), self._host

        def renew(connection: sqlite3.Connection) -> None:
            now = time.time()
            renewed = connection.execute(
                "update eventsink_owners set until = ? where owner in (?, ?)",
                [now + self.lease_seconds, *names],
            ).rowcount
            if renewed < len(names):
                # Presumed dead while this process was stalled: its rows may have been taken
                # (and may be delivered twice, which the ids absorb). Hold what is left.
                logger.warning(
                    "eventsink outbox: this process did not renew its hold for %.0fs; "
                    "another process may deliver some of its events too",
                    self.lease_seconds,
                )
                connection.executemany(
                    "insert or replace into eventsink_owners (owner, until) values (?, ?)",
                    [(name, now + self.lease_seconds) for name in names],
                )
            if _forget_dead_owners(connection, names, host, now):
                _release_orphans(connection)

        while True:
            await asyncio.sleep(min(HEARTBEAT_SECONDS, self.lease_seconds / 3))
            try:
                await self._run(renew)
            except sqlite3.OperationalError as error:  # disk full, locked: one line, no trace
                logger.warning("eventsink outbox: renewing this process's hold failed: %s", error)
            except Exception:
                logger.exception("eventsink outbox: renewing this process's hold failed")

    def _new_held(self, destination: str) -> HeldEvents:
        async def read_back(first: int, last: int, limit: int) -> Leased | None:
            return await self.read_leased(destination, first, last, limit)

        return HeldEvents(self.held_in_memory, read_back, in_memory_bytes=self.held_in_memory_bytes)

    async def append_by_destination(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int]:
        return self._hold(batches, await self._insert(batches, lease_for))

    async def _insert(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, tuple[int, int]]:
        """Insert each destination's events in one transaction (see :meth:`_insert_job`)."""
        rows = sum(len(events) for events in batches.values())
        job = self._insert_job(batches, lease_for)
        return self._inserted(*await self._run(job, small=rows <= SMALL_APPEND))

    def append_now(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int] | None:
        rows = sum(len(events) for events in batches.values())
        if rows > SMALL_APPEND or self._acked or self._acked_packs:  # for the outbox thread
            return None
        # At most SMALL_APPEND rows: for one destination, one multi-row insert, which commits
        # itself.
        one_statement = sum(1 for events in batches.values() if events) == 1
        done, result = self.runner.run_now(
            self._insert_job(batches, lease_for), one_statement=one_statement
        )
        return self._hold(batches, self._inserted(*result)) if done else None  # type: ignore[misc]

    def _inserted(
        self, inserted: dict[str, tuple[int, int]], packs: list[tuple[int, int, str]]
    ) -> dict[str, tuple[int, int]]:
        """Note the packs an insert made in the ledger; return its ``inserted``."""
        for first, last, destination in packs:
            self._packs.add(first, last, destination)
        return inserted

    def _hold(
        self, batches: Mapping[str, Sequence[Event]], inserted: Mapping[str, tuple[int, int]]
    ) -> dict[str, int]:
        """Add the events just inserted for the destinations in ``inserted`` (each one's last
        new seq and data bytes) to their held events; return how many, by destination."""
        held = {}
        for destination, (last, size) in inserted.items():
            events = batches[destination]
            # One writer inside one transaction: the seqs just made are contiguous.
            self.held(destination).add(events, range(last - len(events) + 1, last + 1), size)
            held[destination] = len(events)
        return held

    def _insert_job(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> Callable[
        [sqlite3.Connection], tuple[dict[str, tuple[int, int]], list[tuple[int, int, str]]]
    ]:
        """The work of inserting each destination's events in one transaction, leased to this
        process for the destinations in ``lease_for``, as packs where there are more than
        :data:`SMALL_APPEND` of those. It returns the last new seq of each leased destination
        and the bytes of its data, and the first and last seq of each pack made."""
        # Built here, on the caller's thread, once per distinct list of events (every
        # destination usually shares one list): for rows of one event a flat list of column
        # values, of which a multi-row statement takes slices, with no tuple per row; for
        # packs the (header, data) of each.
        columns_of: dict[int, list[Any]] = {}
        packs_of: dict[int, list[tuple[Sequence[Event], bytes, bytes]]] = {}
        for destination, events in batches.items():
            if destination in lease_for and len(events) > SMALL_APPEND:
                if id(events) not in packs_of:
                    packs_of[id(events)] = [
                        (part, *encode(part))
                        for part in (
                            events[start : start + PACK_EVENTS]
                            for start in range(0, len(events), PACK_EVENTS)
                        )
                    ]
            elif id(events) not in columns_of:
                columns: list[Any] = []
                for event in events:
                    columns += (
                        event.id,
                        event.table,
                        event.instance,
                        event.created,
                        event.data_json(),
                    )
                columns_of[id(events)] = columns
        owner = self.owner
        width = 7

        def insert_rows(
            connection: sqlite3.Connection, destination: str, columns: list[Any], holder: str | None
        ) -> tuple[int, int]:
            count = len(columns) // 5
            params: list[Any] = [None] * (count * width)
            params[0::width] = [destination] * count
            for column in range(5):
                params[column + 1 :: width] = columns[column::5]
            params[6::width] = [holder] * count
            for start in range(0, count, _INSERT_ROWS):
                rows = min(_INSERT_ROWS, count - start)
                # One multi-row statement is one sqlite3_step, so one release of the GIL
                # instead of one per row: on a busy core each release can cost a thread
                # switch interval before the GIL comes back.
                cursor = connection.execute(
                    _insert_sql(rows), params[start * width : (start + rows) * width]
                )
            return cursor.lastrowid or 0, sum(map(len, columns[4::5]))

        def insert_packs(
            connection: sqlite3.Connection,
            destination: str,
            packs: list[tuple[Sequence[Event], bytes, bytes]],
            top: int,
            made: list[tuple[int, int, str]],
        ) -> tuple[int, int]:
            size = 0
            for events, header, data in packs:
                first, top = top + 1, top + len(events)
                head = events[0]
                connection.execute(
                    "insert into eventsink_outbox (seq, destination, id, table_name, instance, "
                    "created, data, lease_owner, events, pack) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        top,
                        destination,
                        head.id,
                        head.table,
                        head.instance,
                        head.created,
                        data,
                        owner,
                        len(events),
                        header,
                    ],
                )
                made.append((first, top, destination))
                size += len(data)
            return top, size

        def insert(
            connection: sqlite3.Connection,
        ) -> tuple[dict[str, tuple[int, int]], list[tuple[int, int, str]]]:
            inserted = {}
            made: list[tuple[int, int, str]] = []
            top = None  # the highest seq given out so far, once a pack needs it
            for destination, events in batches.items():
                if not events:
                    continue
                packs = packs_of.get(id(events)) if destination in lease_for else None
                if packs is not None:
                    if top is None:  # the highest seq ever given out (AUTOINCREMENT's)
                        top = connection.execute(
                            "select coalesce(max(seq), 0) from sqlite_sequence "
                            "where name = 'eventsink_outbox'"
                        ).fetchone()[0]
                    last, size = insert_packs(connection, destination, packs, top, made)
                else:
                    holder = owner if destination in lease_for else None
                    last, size = insert_rows(
                        connection, destination, columns_of[id(events)], holder
                    )
                top = last if top is not None else None
                if destination in lease_for:
                    inserted[destination] = (last, size)
            return inserted, made

        return insert

    async def lease(self, destination: str, limit: int) -> Leased | None:
        owner = self.claimer

        def claim(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return connection.execute(
                "update eventsink_outbox set lease_owner = ? "
                "where seq in (select seq from eventsink_outbox where destination = ? and "
                "lease_owner is null order by seq limit ?) "
                f"returning {_LEASED_COLUMNS}",
                [owner, destination, limit],
            ).fetchall()

        rows = await self._run(claim)
        rows.sort(key=lambda row: row[0])  # RETURNING gives no order guarantee
        return _leased(rows)

    async def read_leased(
        self, destination: str, first: int, last: int, limit: int
    ) -> Leased | None:
        owner = self.owner

        def read(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            # A range scan of the primary key: rows of other destinations or holders between, and
            # rows this process claimed (held as self.claimer), are skipped. A pack is found by
            # its last seq, so the scan goes up to a pack's length past ``last``; it stops at
            # the row that brings ``limit`` events (a row holds one event or a pack of many).
            rows, count = [], 0
            for row in connection.execute(
                f"select {_LEASED_COLUMNS} from eventsink_outbox "
                "where seq between ? and ? and destination = ? and lease_owner = ? "
                "and seq - events < ? order by seq",
                [first, last + PACK_EVENTS - 1, destination, owner, last],
            ):
                rows.append(row)
                count += min(row[0], last) - max(row[0] - row[-2] + 1, first) + 1
                if count >= limit:
                    break
            return rows

        return _leased(await self._run(read), first, last, limit)

    async def _by_handles(self, sql: str, leased: Leased, *params: Any) -> None:
        handles = leased.handles

        def apply(connection: sqlite3.Connection) -> None:
            for chunk in _chunks(handles):
                connection.execute(sql.format(marks=_marks(len(chunk))), [*params, *chunk])

        await self._run_unpacked(leased, apply)

    async def _run_unpacked(self, leased: Leased, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction that first unpacks the packs holding events of
        ``leased``, so that ``fn`` finds a row for each of its events."""
        packs = self._packs.take(_runs(list(leased.handles)))
        if not packs:
            return await self._run(fn)
        owner = self.owner

        def unpack_then(connection: sqlite3.Connection) -> T:
            rows = connection.execute(
                f"select {_PACK_COLUMNS} from eventsink_outbox where seq in "
                f"({_marks(len(packs))}) and events > 1 and lease_owner = ?",
                [*(pack.last for pack in packs), owner],
            ).fetchall()
            unpack(connection, rows, lease_owner=owner, acked={p.last: p.acked for p in packs})
            return fn(connection)

        try:
            return await self._run(unpack_then)
        except BaseException:
            self._packs.put_back(packs)  # still packed: ack them as packs
            raise

    async def ack(self, destination: str, leased: Leased) -> None:
        # The delete is deferred and folded into the next transaction (at most ACK_DELAY
        # later): a crash in between only means a redelivery, which the ids make harmless,
        # and it saves a commit per batch. A pack's row goes once all its events are acked.
        single, done = self._packs.ack(_runs(list(leased.handles)))
        self._acked += single
        self._acked_packs += [(pack.last, pack.size) for pack in done]
        if self._ack_flush is None:
            self._ack_flush = asyncio.ensure_future(self._flush_acks_later())

    async def _flush_acks_later(self) -> None:
        delay = ACK_DELAY
        try:
            while self._acked or self._acked_packs:  # acks arriving during a flush too
                await asyncio.sleep(delay)
                try:
                    await self._run(lambda connection: None)
                    delay = ACK_DELAY
                except Exception as error:  # a full disk: kept for the next transaction
                    logger.debug("eventsink could not delete acknowledged rows yet: %s", error)
                    delay = 1.0
        finally:
            self._ack_flush = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        """Run ``fn`` in a transaction that first deletes the acked rows (``small``: see
        :meth:`Runner.run`)."""
        acked, self._acked = self._acked, []
        packs, self._acked_packs = self._acked_packs, []
        if not acked and not packs:
            return await self.runner.run(fn, small=small)
        owner = self.owner

        def delete_acked_then(connection: sqlite3.Connection) -> T:
            # Acked rows are mostly runs of consecutive seqs (batches appended together): one
            # range delete per run instead of a parameter per row. A pack is never deleted
            # by a range: only once all its events are acked.
            connection.executemany(
                "delete from eventsink_outbox where seq between ? and ? and events = 1", acked
            )
            connection.executemany(
                "delete from eventsink_outbox where seq = ? and events = ? and lease_owner = ?",
                [(last, count, owner) for last, count in packs],
            )
            return fn(connection)

        try:
            return await self.runner.run(delete_acked_then)
        except BaseException:
            self._acked[:0] = acked  # not deleted: try again with the next transaction
            self._acked_packs[:0] = packs
            raise

    async def record_failure(self, destination: str, leased: Leased, failure: Failure) -> None:
        await self._by_handles(
            "update eventsink_outbox set attempts = ?, first_failure = ?, last_error = ?, "
            "last_status = ?, paused = ? where seq in ({marks})",
            leased,
            failure.attempts,
            failure.first_failure,
            failure.message,
            failure.status,
            int(failure.paused),
        )

    async def release(self, destination: str, leased: Leased) -> None:
        await self._by_handles(
            "update eventsink_outbox set lease_owner = null where seq in ({marks})",
            leased,
        )

    async def dead_letter(self, destination: str, leased: Leased, failure: Failure) -> None:
        handles = leased.handles

        def move(connection: sqlite3.Connection) -> None:
            for chunk in _chunks(handles):
                marks = _marks(len(chunk))
                connection.execute(
                    f"insert into eventsink_dead_letters (destination, {_COLUMNS}, status, "
                    "error, attempts, first_failure, last_failure) "
                    f"select destination, {_COLUMNS}, ?, ?, ?, ?, ? from eventsink_outbox "
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

        await self._run_unpacked(leased, move)

    async def drop_oldest(self, destination: str, count: int) -> list[Event]:
        def drop(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = connection.execute(
                f"select seq, {_COLUMNS} from eventsink_outbox where destination = ? and "
                "lease_owner is null order by seq limit ?",
                [destination, count],
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
        self,
        destination: str | None = None,
        since: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> dict[str, int]:
        where, params = ["1 = 1"], []
        if destination is not None:
            where.append("destination = ?")
            params.append(destination)
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
                    f"select destination, count(*) from eventsink_dead_letters "
                    f"where {condition} group by destination",
                    params,
                ).fetchall()
            )
            connection.execute(
                f"insert into eventsink_outbox (destination, {_COLUMNS}) "
                f"select destination, {_COLUMNS} from eventsink_dead_letters "
                f"where {condition} order by seq",
                params,
            )
            connection.execute(f"delete from eventsink_dead_letters where {condition}", params)
            return counts

        return await self._run(move)

    async def backlog(self) -> dict[str, SinkBacklog]:
        host = self._host

        def read(connection: sqlite3.Connection) -> dict[str, SinkBacklog]:
            live = _live_owners(connection, host, time.time())
            result: dict[str, SinkBacklog] = {}
            for destination, pending, in_flight, size, pending_size in connection.execute(
                "select destination, sum(events * (1 - held)), sum(events * held), sum(size), "
                "sum(size * (1 - held)) from (select destination, events, length(data) as size, "
                "coalesce(lease_owner in (select value from json_each(?)), 0) as held "
                "from eventsink_outbox) group by destination",
                [json.dumps(live)],
            ):
                oldest = connection.execute(
                    "select created from eventsink_outbox where destination = ? "
                    "order by seq limit 1",
                    [destination],
                ).fetchone()
                result[destination] = SinkBacklog(
                    pending=pending or 0,
                    in_flight=in_flight or 0,
                    oldest_created=oldest[0] if oldest else None,
                    bytes=size or 0,
                    pending_bytes=pending_size or 0,
                )
            for destination, count in connection.execute(
                "select destination, count(*) from eventsink_dead_letters group by destination"
            ):
                result.setdefault(destination, SinkBacklog()).dead_letters = count
            return result

        # Events acked inside a pack of this process are delivered, though its row still
        # holds them until the rest are: counted as such (their bytes stay, as stored).
        acked = self._packs.acked()
        backlog = await self._run(read)
        for destination, count in acked.items():
            if destination in backlog:
                backlog[destination].in_flight = max(0, backlog[destination].in_flight - count)
        return backlog

    async def serving(self) -> dict[str, list[str]]:
        host = self._host

        def read(connection: sqlite3.Connection) -> dict[str, list[str]]:
            live = _live_owners(connection, host, time.time())
            served: dict[str, list[str]] = {}
            for destination, name in connection.execute(
                "select destination, name from eventsink_serving where owner in "
                "(select value from json_each(?)) order by destination, name",
                [json.dumps(live)],
            ):
                served.setdefault(destination, []).append(name)
            return served

        return await self._run(read)

    async def move(self, source: str, target: str) -> tuple[int, int]:
        """Give ``source``'s pending events and dead letters to ``target``.

        Rows a live process holds stay (it is sending them). Returns (pending, dead letters)
        moved.
        """

        def move(connection: sqlite3.Connection) -> tuple[int, int]:
            pending = connection.execute(
                "update eventsink_outbox set destination = ?, attempts = 0, first_failure = "
                "null, last_error = null, last_status = null, paused = 0 "
                "where destination = ? and lease_owner is null",
                [target, source],
            ).rowcount
            dead = connection.execute(
                "update eventsink_dead_letters set destination = ? where destination = ?",
                [target, source],
            ).rowcount
            return pending, dead

        return await self._run(move)

    async def drop(self, destination: str) -> tuple[int, int]:
        """Delete ``destination``'s pending events and dead letters (not rows a live process
        holds). Returns (pending, dead letters) deleted."""

        def drop(connection: sqlite3.Connection) -> tuple[int, int]:
            pending = connection.execute(
                "delete from eventsink_outbox where destination = ? and lease_owner is null",
                [destination],
            ).rowcount
            dead = connection.execute(
                "delete from eventsink_dead_letters where destination = ?", [destination]
            ).rowcount
            return pending, dead

        return await self._run(drop)

    async def dead_letters(
        self, destination: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        def read(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return connection.execute(
                f"select destination, {_COLUMNS}, status, error, attempts, first_failure, "
                "last_failure from eventsink_dead_letters "
                "where (? is null or destination = ?) order by seq desc limit ?",
                [destination, destination, limit],
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

        names = (owner, self.claimer)

        packs = self._packs.take()
        acked = {pack.last: pack.acked for pack in packs}

        def release_all(connection: sqlite3.Connection) -> None:
            # Packs become rows of one event each, for any process to claim (the acked events
            # of a pack are left out).
            unpack(
                connection,
                connection.execute(
                    f"select {_PACK_COLUMNS} from eventsink_outbox where events > 1 and "
                    "lease_owner = ?",
                    [owner],
                ).fetchall(),
                lease_owner=None,
                acked=acked,
            )
            connection.execute(
                "update eventsink_outbox set lease_owner = null where lease_owner in (?, ?)",
                names,
            )
            connection.execute("delete from eventsink_owners where owner in (?, ?)", names)
            connection.execute("delete from eventsink_serving where owner = ?", [owner])

        for task in (self._ack_flush, self._heartbeat):
            if task is not None:
                task.cancel()
        try:
            await self._run(release_all)
        finally:
            _OPEN_OWNERS.discard(owner)
            await self.runner.close()
