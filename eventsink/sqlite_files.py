"""Opening the SQLite files eventsink writes (outbox, checkpoints, the sqlite sink) one way.

Each is used in WAL mode with a 30 s busy timeout. Switching a new file to WAL needs a lock
that SQLite does not wait for with its busy timeout, so two processes opening the same new
file at the same moment (two ``eventsink consume`` workers, say) could fail with "database is
locked"; :func:`use_wal` waits for it instead.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT = 30.0  # seconds a statement waits for another connection's lock


def use_wal(connection: sqlite3.Connection, durability: str | None = "normal") -> None:
    """Put ``connection``'s database in WAL mode; ``durability`` sets ``synchronous``.

    ``"normal"`` survives a process crash, ``"fsync"`` also a power loss; ``None`` keeps
    SQLite's default.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            connection.execute("pragma journal_mode=wal")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if durability is not None:
        synchronous = "FULL" if durability == "fsync" else "NORMAL"
        connection.execute(f"pragma synchronous={synchronous}")


def connect(
    path: str | os.PathLike[str],
    *,
    durability: str | None = "normal",
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """An autocommit connection to ``path`` (its directory created), in WAL mode."""
    if os.fspath(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=check_same_thread
    )
    use_wal(connection, durability)
    return connection
