"""``write_async`` stores its event on the caller's task when the outbox can commit at once,
and leaves everything else to the writer task: nothing is lost, doubled or reordered either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

from eventsink.outbox.sqlite import SQLiteOutbox
from eventsink.testing import async_wait_until

from . import outbox_ids
from .test_sqlite_outbox import gated_pipeline, rows_by_owner


def stored_ids(path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return outbox_ids(connection)


# Another process writing the shared outbox: it holds SQLite's write lock until told to stop.
HOLD_THE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("begin immediate")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("rollback")
"""


@contextlib.contextmanager
def another_process_writing(path) -> Iterator[None]:
    """Hold ``path``'s write lock in a second process for the ``with`` block."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "locked\n"
        yield
    finally:
        process.communicate("\n", timeout=10)


class CountingOutbox(SQLiteOutbox):
    """Counts how appends were made; ``refuse_now`` makes ``append_now`` raise."""

    def __init__(self, *args, refuse_now: BaseException | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.now = self.later = 0
        self.refuse_now = refuse_now

    def append_now(self, batches, lease_for=()):
        if self.refuse_now is not None:
            raise self.refuse_now
        held = super().append_now(batches, lease_for)
        self.now += held is not None
        return held

    async def append_by_destination(self, batches, lease_for=()):
        self.later += 1
        return await super().append_by_destination(batches, lease_for)


class TestAppendNow:
    async def test_a_lone_event_is_committed_on_the_callers_task(self, tmp_path):
        outbox = CountingOutbox(tmp_path / "outbox.db")
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        written = [await pipeline.write_async("t", {"n": n}) for n in range(50)]
        # Committed before write_async returned: a reader of the file sees each one.
        assert stored_ids(tmp_path / "outbox.db") == written
        assert (outbox.now, outbox.later) == (50, 0)
        assert await rows_by_owner(outbox) == {outbox.owner: 50}
        pipeline.sinks["memory"].gate.set()
        assert await pipeline.flush(timeout=10)
        assert [event.id for event in pipeline.sinks["memory"].events] == written
        await pipeline.close()

    async def test_concurrent_writers_lose_nothing_and_keep_their_order(self, tmp_path):
        outbox = CountingOutbox(tmp_path / "outbox.db")
        pipeline = gated_pipeline(outbox, batch_limit=7)
        await pipeline.start()
        pipeline.sinks["memory"].gate.set()  # deliveries and acks run between the writes

        async def writer(name: str) -> list[str]:
            ids = []
            for n in range(200):
                ids.append(await pipeline.write_async(name, {"n": n}))
                if n % 3 == 0:
                    await asyncio.sleep(0)
            return ids

        written = await asyncio.gather(*(writer(f"w{w}") for w in range(8)))
        assert await pipeline.flush(timeout=10)
        events = pipeline.sinks["memory"].events
        assert sorted(event.id for event in events) == sorted(i for ids in written for i in ids)
        for name, ids in zip((f"w{w}" for w in range(8)), written, strict=True):
            assert [event.id for event in events if event.table == name] == ids
        assert outbox.now > 0 and outbox.later > 0  # both ways were taken
        # Every row acked and deleted (the deletes join the next transaction, soon after).
        await async_wait_until(lambda: stored_ids(tmp_path / "outbox.db") == [], timeout=10)
        await pipeline.close()

    async def test_an_outbox_locked_by_another_process_is_left_to_the_writer(self, tmp_path):
        path = tmp_path / "outbox.db"
        outbox = CountingOutbox(path)
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        await pipeline.write_async("t", {"n": 0})
        with another_process_writing(path):
            write = asyncio.ensure_future(pipeline.write_async("t", {"n": 1}))
            await asyncio.sleep(0.3)
            assert not write.done()  # not stored yet, so the caller still waits
        second = await asyncio.wait_for(write, 10)
        assert stored_ids(path)[-1] == second
        assert outbox.later == 1
        pipeline.sinks["memory"].gate.set()
        await pipeline.close()

    async def test_an_append_that_fails_at_once_is_retried_by_the_writer(self, tmp_path):
        outbox = CountingOutbox(tmp_path / "outbox.db", refuse_now=sqlite3.OperationalError("x"))
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        written = [await pipeline.write_async("t", {"n": n}) for n in range(5)]
        assert stored_ids(tmp_path / "outbox.db") == written
        assert outbox.later == 5
        assert pipeline.intake.uncommitted == 0 and len(pipeline.intake) == 0
        pipeline.sinks["memory"].gate.set()
        await pipeline.close()

    async def test_a_cancelled_writer_loses_no_event(self, tmp_path):
        # A request that gives up (its client went away) while its event waits for the writer
        # must not take the event with it.
        path = tmp_path / "outbox.db"
        outbox = CountingOutbox(path)
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        with another_process_writing(path):
            write = asyncio.ensure_future(pipeline.write_async("t", {"n": 1}))
            await asyncio.sleep(0.1)
            write.cancel()
        # The writer's commit is seen in the file a moment before the loop settles its count.
        await async_wait_until(lambda: not pipeline._appending and not len(pipeline.intake))
        assert len(stored_ids(path)) == 1
        assert pipeline.intake.uncommitted == 0
        pipeline.sinks["memory"].gate.set()
        await pipeline.close()
