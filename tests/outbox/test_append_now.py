"""``write_async`` and ``write_on_loop`` store their event on the caller's task when the outbox
can commit at once, and leave everything else to the writer task: nothing is lost, doubled or
reordered either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventsink.exceptions import EventError, OverflowDropped
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


class TestWriteOnLoop:
    """``write_on_loop``: ``None`` once the event is committed; an awaitable when it must wait."""

    async def test_a_lone_event_is_committed_before_it_returns(self, tmp_path):
        outbox = CountingOutbox(tmp_path / "outbox.db")
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        for n in range(20):
            assert pipeline.write_on_loop("t", {"n": n}) is None
            assert len(stored_ids(tmp_path / "outbox.db")) == n + 1  # in the file already
        intake = pipeline.intake
        assert (intake.accepted, intake.uncommitted, len(intake)) == (20, 0, 0)
        sink = (await pipeline.status())["sinks"]["memory"]
        assert intake.rows == 20 == sink["pending"] + sink["in_flight"]
        assert (outbox.now, outbox.later) == (20, 0)
        pipeline.sinks["memory"].gate.set()
        assert await pipeline.flush(timeout=10)
        assert [event.data["n"] for event in pipeline.sinks["memory"].events] == list(range(20))
        assert intake.rows == 0
        await pipeline.close()

    async def test_events_that_wait_for_another_process_keep_their_order(self, tmp_path):
        path = tmp_path / "outbox.db"
        outbox = CountingOutbox(path)
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        assert pipeline.write_on_loop("t", {"n": 0}) is None
        with another_process_writing(path):
            waiting = [pipeline.write_on_loop("t", {"n": n}) for n in (1, 2, 3)]
            assert all(pending is not None for pending in waiting)
            assert pipeline.intake.uncommitted == 3
        await asyncio.wait_for(asyncio.gather(*waiting), 10)
        last = pipeline.write_on_loop("t", {"n": 4})  # the outbox thread may still be busy
        if last is not None:
            await last
        pipeline.sinks["memory"].gate.set()
        assert await pipeline.flush(timeout=10)
        assert [event.data["n"] for event in pipeline.sinks["memory"].events] == [0, 1, 2, 3, 4]
        assert pipeline.intake.uncommitted == 0 and pipeline.intake.rows == 0
        await pipeline.close()

    async def test_a_full_outbox_refuses_through_the_awaitable(self, tmp_path):
        outbox = CountingOutbox(tmp_path / "outbox.db")
        pipeline = gated_pipeline(outbox, max_events=2, overflow="drop_newest")
        await pipeline.start()
        assert pipeline.write_on_loop("t", {"n": 0}) is None
        assert pipeline.write_on_loop("t", {"n": 1}) is None
        with pytest.raises(OverflowDropped, match="maximum of 2"):
            pipeline.write_on_loop("t", {"n": 2})
        assert pipeline.intake.dropped == {"overflow": 1}
        assert pipeline.intake.rows == 2 and len(stored_ids(tmp_path / "outbox.db")) == 2
        pipeline.sinks["memory"].gate.set()
        await pipeline.close()

    async def test_filtered_and_invalid_events(self, tmp_path):
        outbox = CountingOutbox(tmp_path / "outbox.db")
        pipeline = gated_pipeline(outbox)
        pipeline.factory.filters.append(lambda event: event.data.get("keep", True))
        await pipeline.start()
        assert pipeline.write_on_loop("t", {"keep": False}) is None
        assert pipeline.intake.dropped == {"filtered": 1}
        with pytest.raises(EventError) as raised:
            pipeline.write_on_loop("t", {"id": "spoof"})
        assert raised.value.field == "id"
        with pytest.raises(EventError, match="sinks names 'other'"):
            pipeline.write_on_loop("t", {"n": 1}, sinks=["other"])
        assert stored_ids(tmp_path / "outbox.db") == [] and pipeline.intake.accepted == 0
        pipeline.sinks["memory"].gate.set()
        await pipeline.close()


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(steps=st.lists(st.booleans(), min_size=1, max_size=30), yields=st.integers(0, 3))
def test_any_interleaving_of_writes_and_locks_commits_all_in_order(tmp_path_factory, steps, yields):
    """Whether each event is committed at once or waits for another writer to let go, the
    outbox ends up with every event exactly once, in the order written."""

    async def run() -> None:
        path = tmp_path_factory.mktemp("interleaving") / "outbox.db"
        outbox = CountingOutbox(path)
        pipeline = gated_pipeline(outbox)
        await pipeline.start()
        other = sqlite3.connect(path, isolation_level=None)
        pending, written = [], 0
        for write in steps:
            if write:
                waiting = pipeline.write_on_loop("t", {"n": written})
                written += 1
                if waiting is not None:
                    pending.append(asyncio.ensure_future(waiting))
            elif other.in_transaction:
                other.execute("rollback")
            else:
                other.execute("begin immediate")
            for _ in range(yields):
                await asyncio.sleep(0)
        if other.in_transaction:
            other.execute("rollback")
        other.close()
        await asyncio.wait_for(asyncio.gather(*pending), 10)
        pipeline.sinks["memory"].gate.set()
        assert await pipeline.flush(timeout=10)
        events = pipeline.sinks["memory"].events
        assert [event.data["n"] for event in events] == list(range(written))
        assert pipeline.intake.uncommitted == 0 and pipeline.intake.rows == 0
        await pipeline.close()

    asyncio.run(run())
