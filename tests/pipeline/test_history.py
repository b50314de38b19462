"""The last hour per sink for the status chart, and a sink's state at a glance."""

from __future__ import annotations

from eventsink.pipeline.history import SLOTS, STEP, SinkHistory
from eventsink.pipeline.lane import LaneStats
from eventsink.pipeline.pipeline import sink_state

T0 = 1_700_000_000.0 - 1_700_000_000.0 % STEP  # the start of a bucket


class TestSinkHistory:
    """Buckets hold the deltas of cumulative counters and the last pending count."""

    def test_deltas_per_bucket(self):
        history = SinkHistory()
        history.sample(10, 0, 5, now=T0)
        history.sample(15, 1, 3, now=T0 + 5)
        history.sample(40, 1, 0, now=T0 + STEP + 1)
        series = history.series(now=T0 + STEP + 2)
        assert len(series["delivered"]) == SLOTS and series["step"] == STEP
        assert series["delivered"][-2:] == [15, 25]
        assert series["failed"][-2:] == [1, 0]
        assert series["pending"][-2:] == [3, 0]
        assert series["start"] == T0 + STEP - (SLOTS - 1) * STEP

    def test_old_buckets_fall_out_and_pending_carries_forward(self):
        history = SinkHistory()
        history.sample(1, 0, 7, now=T0)
        later = history.series(now=T0 + 3 * STEP)
        assert later["delivered"][-4:] == [1, 0, 0, 0]
        assert later["pending"][-4:] == [7, 7, 7, 7]
        gone = history.series(now=T0 + SLOTS * STEP)
        assert sum(gone["delivered"]) == 0

    def test_memory_is_a_few_kilobytes(self):
        history = SinkHistory()
        size = sum(
            column.itemsize * len(column)
            for column in (history._start, history._delivered, history._failed, history._pending)
        )
        assert size <= 4 * 1024


class TestSinkState:
    """ok / retrying / paused / idle from the lane's stats."""

    def test_states(self):
        now = 1000.0
        stats = LaneStats()
        assert sink_state(stats, 0, now) == "idle"
        assert sink_state(stats, 3, now) == "ok"
        stats.last_success = now - 10
        assert sink_state(stats, 0, now) == "ok"
        stats.last_error = {"time": now - 1, "message": "503", "status": 503}
        stats.last_error_kind = "retryable"
        assert sink_state(stats, 3, now) == "retrying"
        stats.last_error_kind = "permanent"  # dead-lettered: the next batch goes on
        assert sink_state(stats, 3, now) == "ok"
        stats.paused = "403 Forbidden"
        assert sink_state(stats, 3, now) == "paused"
        stats.paused = None
        stats.last_success = now - 3600
        stats.last_error = None
        assert sink_state(stats, 0, now) == "idle"
