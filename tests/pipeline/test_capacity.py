"""One owner for the pipeline's capacity, and reports that say what the outbox holds."""

from __future__ import annotations

import sqlite3

import pytest

from eventsink import SinkPausedError
from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.pipeline.capacity import Capacity
from eventsink.testing import wait_until

from .test_pipeline import make_client, sink_of


def event(data: dict) -> Event:
    event_id, created = IdGenerator().new()
    return Event(event_id, "t", "i", created, data)


class TestCapacity:
    """Reserve, settle, restore and excess on the one count."""

    def test_rows_count_once_per_sink(self):
        capacity = Capacity(max_events=4, sink_count=2)
        capacity.reserve(0)
        assert capacity.rows == 2 and not capacity.full(0)
        capacity.reserve(0)
        assert capacity.full(0)
        assert "maximum of 4 undelivered events" in capacity.describe_full()
        capacity.settle(2)
        assert capacity.rows == 2 and not capacity.full(0)

    def test_bytes_are_counted_only_with_a_limit(self):
        unlimited = Capacity(max_events=10, sink_count=1)
        assert unlimited.size_of(event({"a": 1})) == 0
        limited = Capacity(max_events=10, sink_count=2, max_bytes=30)
        one = event({"a": 1})
        size = limited.size_of(one)
        assert size == 2 * len(one.data_json())
        limited.reserve(size)
        limited.settle(1, [one])
        assert limited.bytes == size - len(one.data_json())

    def test_excess_over_either_limit(self):
        capacity = Capacity(max_events=3, sink_count=1, max_bytes=100)
        capacity.restore(5, 50)
        assert capacity.excess() == 2
        capacity.settle(2)
        capacity.restore(0, 100)  # 3 rows, 150 bytes: 50 bytes over, 50 bytes a row
        assert capacity.excess() == 1

    def test_every_settle_is_announced(self):
        seen = []
        capacity = Capacity(max_events=3, sink_count=1, on_settle=lambda: seen.append(1))
        capacity.settle(1)
        capacity.settle(0)
        assert seen == [1, 1]


class TestLanesSettleTheOneCount:
    """Delivery, dead letters and drops all give their room back to the same object."""

    def test_delivered_and_dead_lettered_events_free_their_room(self):
        with make_client(batch_limit=4, max_attempts=1) as client:
            sink = sink_of(client)
            ids = [client.write("t", {"n": n}) for n in range(7)]
            sink.reject_ids = {ids[2]}
            ids.append(client.write("t", {"n": 7}))
            assert client.flush(10)
            capacity = client.pipeline.capacity
            assert client.pipeline.intake.capacity is capacity
            assert all(lane.capacity is capacity for lane in client.pipeline.lanes.values())
            assert capacity.rows == 0

    def test_drop_oldest_frees_room_through_the_lane(self):
        with make_client(
            batch_limit=1000, flush_interval=60, max_events=5, overflow="drop_oldest"
        ) as client:
            for n in range(8):
                client.write("t", {"n": n})
            wait_until(lambda: client.status()["dropped"].get("overflow") == 3)
            assert client.pipeline.capacity.rows == 5
            assert client.flush(10)
            assert sorted(e.data["n"] for e in sink_of(client).delivered) == [3, 4, 5, 6, 7]


class TestCloseReportsWhatTheOutboxHolds:
    """close() counts what is left from the outbox, not from its running count."""

    @pytest.mark.parametrize("removed", [0, 2, 5])
    def test_close_counts_rows_in_the_outbox(self, tmp_path, removed, caplog):
        outbox = tmp_path / "outbox.db"
        client = make_client(outbox=str(outbox), batch_limit=5, pause_interval=60)
        sink_of(client).script = [SinkPausedError("token refused", status=401)]
        for n in range(5):
            client.write("t", {"n": n})
        wait_until(lambda: client.status()["sinks"]["recording"]["paused"])
        # Someone removes rows behind the running process's back (a repair, a drop).
        with sqlite3.connect(outbox) as db:
            db.execute(
                "delete from eventsink_outbox where seq in "
                f"(select seq from eventsink_outbox order by seq limit {removed})"
            )
        left = client.close(timeout=0.5)
        assert left == 5 - removed
        with sqlite3.connect(outbox) as db:
            assert (
                db.execute("select coalesce(sum(events), 0) from eventsink_outbox").fetchone()[0]
                == left
            )
        if left:
            assert f"closed with {left} undelivered" in caplog.text
