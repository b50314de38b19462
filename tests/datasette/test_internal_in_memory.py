"""The outbox in a Datasette database only Datasette's own connection can reach.

Before Datasette 1.0a30 the internal database is in memory unless ``--internal`` names a
file, so the plugin's outbox runs its work in that database's write thread
(:class:`~eventsink.outbox.sqlite.DatasetteRunner`). Every outbox operation must work there:
this path broke once when the outbox began passing an argument other runners take.
"""

from __future__ import annotations

from datasette.app import Datasette

from eventsink.outbox import Failure
from eventsink.outbox.sqlite import SMALL_APPEND, DatasetteRunner, SQLiteOutbox

from ..outbox.test_sqlite_outbox import make_events


async def test_every_outbox_operation_runs_in_datasettes_write_thread():
    datasette = Datasette()
    database = datasette.add_memory_database(f"outbox_{id(datasette)}")
    assert database.is_memory
    outbox = SQLiteOutbox(runner=DatasetteRunner(database))
    assert await outbox.open(["a"]) == {}
    one, many = make_events(1), make_events(SMALL_APPEND + 5)  # a row, then a pack
    assert await outbox.append(one, ["a"], ["a"]) == {"a": 1}
    assert await outbox.append(many, ["a"], ["a"]) == {"a": len(many)}
    held = outbox.held("a")
    first, failed = await held.take(3), await held.take(5)
    await outbox.ack("a", first)
    await outbox.record_failure("a", failed, Failure("timed out"))
    await outbox.dead_letter("a", failed, Failure("refused", status=400))
    backlog = (await outbox.backlog())["a"]
    assert (backlog.in_flight, backlog.dead_letters) == (len(many) + 1 - 8, 5)
    await outbox.replay("a")
    await outbox.close()
    reopened = SQLiteOutbox(runner=DatasetteRunner(database))
    assert (await reopened.open(["a"]))["a"].pending == len(many) + 1 - 3
    leased = await reopened.lease("a", 100)
    assert sorted(e.id for e in leased.events) == sorted(e.id for e in (one + many)[3:])
    await reopened.close()
