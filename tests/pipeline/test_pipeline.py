"""The pipeline with test-local sinks registered through a hookimpl, as a third party would."""

from __future__ import annotations

import sqlite3
import time

import pytest

import eventsink
from eventsink import (
    Event,
    PermanentError,
    RejectedError,
    RetryableError,
    Sink,
    SinkPausedError,
    hookimpl,
)
from eventsink.config import parse_config
from eventsink.exceptions import OverflowDropped
from eventsink.outbox import MemoryOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import lookup, make_plugin_manager, sink_classes
from eventsink.testing import FlakySink, plugin_manager, wait_until


class RecordingSink(Sink):
    """Records every batch; fails according to ``script`` (one entry per call)."""

    name = "recording"
    options = (eventsink.Option("label", str, "rec"),)

    def __init__(self, **config):
        super().__init__(**config)
        self.calls: list[tuple[float, list[Event]]] = []
        self.delivered: list[Event] = []
        self.script: list[BaseException | None] = []
        self.reject_ids: set[str] = set()

    async def send(self, batch):
        self.calls.append((time.monotonic(), list(batch)))
        if self.script:
            outcome = self.script.pop(0)
            if outcome is not None:
                raise outcome
        rejected = [event.id for event in batch if event.id in self.reject_ids]
        if rejected:
            raise RejectedError(f"bad rows: {rejected}", status=400)
        self.delivered.extend(batch)


class Plugin:
    @hookimpl
    def eventsink_register_sinks(self):
        return [RecordingSink]


def make_client(plugins=(), **config):
    pm = make_plugin_manager()
    pm.register(Plugin())
    for plugin in plugins:
        pm.register(plugin)
    config.setdefault("outbox", ":memory:")
    config.setdefault("retry_initial", 0.01)
    config.setdefault("retry_max", 0.05)
    return eventsink.Client(sink="recording", pm=pm, **config)


def sink_of(client) -> RecordingSink:
    return client.pipeline.sinks["recording"]


class TestBatching:
    """Batches never exceed batch_limit and partial batches go after flush_interval."""

    def test_batches_at_most_batch_limit(self):
        with make_client(batch_limit=7) as client:
            for n in range(100):
                client.write("t", {"n": n})
            assert client.flush(10)
            sink = sink_of(client)
            assert max(len(batch) for _, batch in sink.calls) <= 7
            assert sorted(e.data["n"] for e in sink.delivered) == list(range(100))

    def test_partial_batch_sent_after_flush_interval_without_flush(self):
        with make_client(batch_limit=1000, flush_interval=0.05) as client:
            client.write("t", {"n": 1})
            wait_until(lambda: sink_of(client).delivered)
            assert len(sink_of(client).delivered) == 1


class TestConcurrency:
    """At most ``concurrency`` batches are in flight at once, and every event arrives once."""

    @pytest.mark.parametrize("concurrency", [1, 3])
    def test_in_flight_never_exceeds_concurrency(self, concurrency):
        import asyncio

        class SlowSink(RecordingSink):
            name = "slow"
            max_concurrent_sends = None  # overlapping sends are what this test measures
            in_flight = peak = 0

            async def send(self, batch):
                SlowSink.in_flight += 1
                SlowSink.peak = max(SlowSink.peak, SlowSink.in_flight)
                await asyncio.sleep(0.02)  # a receiver taking its time
                SlowSink.in_flight -= 1
                self.delivered.extend(batch)

        class SlowPlugin:
            @hookimpl
            def eventsink_register_sinks(self):
                return [SlowSink]

        pm = make_plugin_manager()
        pm.register(SlowPlugin())
        with eventsink.Client(
            sink="slow", pm=pm, outbox=":memory:", batch_limit=5, concurrency=concurrency
        ) as client:
            ids = [client.write("t", {"n": n}) for n in range(100)]
            assert client.flush(10)
            delivered = client.pipeline.sinks["slow"].delivered
        assert sorted(e.id for e in delivered) == sorted(ids)
        assert SlowSink.peak == concurrency


class TestRateLimit:
    """max_rate sends per time_period, as a token bucket."""

    @pytest.mark.slow
    def test_two_per_second_over_three_seconds_is_at_most_eight_calls(self):
        with make_client(batch_limit=1, max_rate=2, time_period=1, flush_interval=0) as client:
            for n in range(30):
                client.write("t", {"n": n})
            time.sleep(3.0)  # the property under test is a rate over a 3 s window
            calls = list(sink_of(client).calls)
            assert 6 <= len(calls) <= 8
            client.close(timeout=0.1)


class TestRetries:
    """Retryable errors are retried with backoff; permanent ones go to the dead letters."""

    def test_retryable_twice_then_success_delivers_once(self):
        errors = []
        with make_client(batch_limit=10) as client:
            client.on("error", lambda sink, batch, error, final: errors.append((error, final)))
            sink_of(client).script = [RetryableError("busy"), RetryableError("busy"), None]
            ids = [client.write("t", {"n": n}) for n in range(10)]
            assert client.flush(10)
            sink = sink_of(client)
            assert [e.id for e in sink.delivered] == ids
            assert len(sink.calls) == 3
            assert [final for _, final in errors] == [False, False]

    def test_retry_after_is_a_floor(self):
        with make_client(batch_limit=5, retry_max=0.01) as client:
            sink_of(client).script = [RetryableError("slow down", status=429, retry_after=0.3)]
            for n in range(5):
                client.write("t", {"n": n})
            assert client.flush(10)
            (first, _), (second, _) = sink_of(client).calls
            assert second - first >= 0.3

    def test_unexpected_exception_is_retried_not_lost(self, caplog):
        with make_client(batch_limit=3) as client:
            sink_of(client).script = [ZeroDivisionError("sink bug")]
            for n in range(3):
                client.write("t", {"n": n})
            assert client.flush(10)
            assert len(sink_of(client).delivered) == 3
        assert "unexpected error" in caplog.text

    def test_permanent_error_reaches_handler_and_dead_letters_intact(self):
        errors = []
        with make_client(batch_limit=4) as client:
            client.on("error", lambda sink, batch, error, final: errors.append((batch, final)))
            sink_of(client).script = [PermanentError("no such table", status=404)]
            ids = [client.write("t", {"n": n, "text": f"#{n}"}) for n in range(4)]
            assert client.flush(10)
            ((batch, final),) = errors
            assert final is True and [e.id for e in batch] == ids
            letters = client._run(client.pipeline.outbox.dead_letters(), None)
            assert sorted(letter.event.id for letter in letters) == ids
            assert {letter.event.data["text"] for letter in letters} == {"#0", "#1", "#2", "#3"}
            assert all(letter.failure.status == 404 for letter in letters)
            assert client.status()["sinks"]["recording"]["dead_letters"] == 4
            # replay puts them back, and this time the sink accepts them
            moved = client._run(client.pipeline.replay(), None)
            assert moved == {"recording": 4}
            assert client.flush(10)
            assert sorted(e.id for e in sink_of(client).delivered) == ids

    def test_rejected_batch_is_split_to_isolate_the_poison_event(self):
        # The batch is never full and never old enough, so nothing is sent before the poison id
        # is set and flush() sends all 16 as one batch.
        with make_client(batch_limit=32, flush_interval=60) as client:
            ids = [client.write("t", {"n": n}) for n in range(16)]
            sink_of(client).reject_ids = {ids[5]}
            assert client.flush(10)
            delivered = sorted(e.id for e in sink_of(client).delivered)
            assert delivered == sorted(set(ids) - {ids[5]})
            letters = client._run(client.pipeline.outbox.dead_letters(), None)
            assert [letter.event.id for letter in letters] == [ids[5]]

    def test_max_attempts_moves_to_dead_letters(self):
        with make_client(batch_limit=2, max_attempts=3) as client:
            sink_of(client).script = [RetryableError("down")] * 3
            client.write("t", {"n": 1})
            assert client.flush(10)
            assert len(sink_of(client).calls) == 3
            letters = client._run(client.pipeline.outbox.dead_letters(), None)
            assert letters[0].failure.attempts == 3

    def test_paused_sink_keeps_events_and_reports_why(self, caplog):
        with make_client(batch_limit=2, pause_interval=0.2) as client:
            sink_of(client).script = [SinkPausedError("token lacks insert-row", status=403)]
            client.write("t", {"n": 1})
            wait_until(lambda: client.status()["sinks"]["recording"]["paused"] is not None)
            assert client.flush(10)
            assert len(sink_of(client).delivered) == 1
            assert client.status()["sinks"]["recording"]["paused"] is None
        assert "is paused: token lacks insert-row" in caplog.text

    def test_close_does_not_wait_out_its_timeout_for_a_paused_sink(self):
        client = make_client(batch_limit=1, flush_interval=0, pause_interval=60)
        sink_of(client).script = [SinkPausedError("token refused", status=401)]
        client.write("t", {"n": 1})
        wait_until(lambda: client.status()["sinks"]["recording"]["paused"] is not None)
        started = time.monotonic()
        assert client.close(timeout=120) == 1  # kept, not delivered, not lost
        assert time.monotonic() - started < 60  # it gave up on the paused sink at once


class TestHooks:
    """Enrich hooks chain in order, filter hooks drop, lifecycle hooks fire."""

    def test_enrich_chain_and_filter(self):
        order = []

        class First:
            @hookimpl(tryfirst=True)
            def eventsink_enrich(self, event):
                order.append("first")
                event.data["stage"] = ["first"]

        class Second:
            @hookimpl
            def eventsink_enrich(self, event):
                order.append("second")
                return Event(
                    event.id,
                    event.table,
                    event.instance,
                    event.created,
                    {**event.data, "stage": [*event.data["stage"], "second"]},
                )

        class DropOdd:
            @hookimpl
            def eventsink_filter(self, event):
                return event.data["n"] % 2 == 0

        with make_client(plugins=[Second(), First(), DropOdd()]) as client:
            results = [client.write("t", {"n": n}) for n in range(6)]
            assert client.flush(10)
            delivered = sink_of(client).delivered
            assert [e.data["n"] for e in delivered] == [0, 2, 4]
            assert all(e.data["stage"] == ["first", "second"] for e in delivered)
            assert results[1] is None
            assert client.status()["dropped"] == {"filtered": 3}
        assert order[:2] == ["first", "second"]

    def test_lifecycle_hooks(self):
        seen = []

        class Watcher:
            @hookimpl
            def eventsink_before_send(self, sink, batch):
                seen.append(("before", sink, len(batch)))

            @hookimpl
            async def eventsink_batch_sent(self, sink, batch):
                seen.append(("sent", sink, len(batch)))

        with make_client(plugins=[Watcher()], batch_limit=5) as client:
            for n in range(5):
                client.write("t", {"n": n})
            assert client.flush(10)
        assert seen == [("before", "recording", 5), ("sent", "recording", 5)]


class TestOverflow:
    """A full outbox blocks, drops the newest or drops the oldest — never silently."""

    def _stalled(self, **config):
        client = make_client(batch_limit=1000, flush_interval=60, **config)
        return client

    def test_drop_newest_raises_and_counts(self):
        client = self._stalled(max_events=3, overflow="drop_newest")
        for n in range(3):
            client.write("t", {"n": n})
        with pytest.raises(OverflowDropped):
            client.write("t", {"n": 3})
        assert client.status()["dropped"] == {"overflow": 1}
        client.close()
        assert sorted(e.data["n"] for e in sink_of(client).delivered) == [0, 1, 2]

    def test_drop_oldest_keeps_the_newest(self):
        client = self._stalled(max_events=3, overflow="drop_oldest")
        for n in range(5):
            client.write("t", {"n": n})
            client._run(client.pipeline._append_buffered(), None)
        client.close()
        assert sorted(e.data["n"] for e in sink_of(client).delivered) == [2, 3, 4]
        assert client.pipeline.intake.dropped["overflow"] == 2

    def test_block_waits_until_there_is_room(self):
        client = make_client(batch_limit=1, flush_interval=0, max_events=2, overflow="block")
        for n in range(50):
            client.write("t", {"n": n})  # would raise or hang if blocking did not resume
        client.close()
        assert len(sink_of(client).delivered) == 50


class TestByteLimit:
    """``max_bytes`` bounds the undelivered events' data, with the same overflow policies."""

    # {"n": 0} is 7 bytes of JSON: 21 bytes hold three such events.

    def test_drop_newest_counts_bytes(self):
        client = make_client(
            batch_limit=1000, flush_interval=60, max_bytes=21, overflow="drop_newest"
        )
        for n in range(3):
            client.write("t", {"n": n})
        with pytest.raises(OverflowDropped, match="21 bytes"):
            client.write("t", {"n": 3})
        client.close()
        assert sorted(e.data["n"] for e in sink_of(client).delivered) == [0, 1, 2]

    def test_drop_oldest_keeps_the_newest_within_the_bytes(self):
        client = make_client(
            batch_limit=1000, flush_interval=60, max_bytes=21, overflow="drop_oldest"
        )
        for n in range(6):
            client.write("t", {"n": n})
            client._run(client.pipeline._append_buffered(), None)
        assert client.pipeline.intake.bytes == 21
        client.close()
        assert sorted(e.data["n"] for e in sink_of(client).delivered) == [3, 4, 5]
        assert client.pipeline.intake.dropped["overflow"] == 3

    def test_delivery_gives_the_bytes_back(self):
        client = make_client(batch_limit=1, flush_interval=0, max_bytes="70B", overflow="block")
        for n in range(200):
            client.write("t", {"n": n})  # would hang if delivered bytes were not given back
        assert client.flush(timeout=10)
        assert client.pipeline.intake.bytes == 0
        client.close()
        assert len(sink_of(client).delivered) == 200

    def test_an_event_larger_than_the_limit_is_refused_at_once(self):
        client = make_client(max_bytes="1KB", overflow="block")
        with pytest.raises(OverflowDropped, match="more than max_bytes"):
            client.write("t", {"text": "x" * 2000})  # would block forever if it waited
        assert client.status()["dropped"] == {"too_large": 1}
        client.close()

    def test_bytes_left_in_the_outbox_count_after_a_restart(self, tmp_path):
        outbox = str(tmp_path / "outbox.db")
        first = make_client(outbox=outbox, batch_limit=1000, flush_interval=60)
        for n in range(3):
            first.write("t", {"n": n})
        first.close(timeout=0)
        second = make_client(
            outbox=outbox,
            batch_limit=1000,
            flush_interval=60,
            max_bytes=21,
            overflow="drop_newest",
        )
        with pytest.raises(OverflowDropped):
            second.write("t", {"n": 3})
        second.close()


class FailingOnceOutbox(MemoryOutbox):
    """An in-memory outbox whose ``lease`` and ``record_failure`` each fail the first time."""

    def __init__(self):
        super().__init__()
        self.failures = {"lease": 1, "record_failure": 1}

    def _maybe_fail(self, name):
        if self.failures[name]:
            self.failures[name] -= 1
            raise sqlite3.OperationalError("database is locked")

    async def lease(self, sink, limit):
        self._maybe_fail("lease")
        return await super().lease(sink, limit)

    async def record_failure(self, sink, leased, failure):
        self._maybe_fail("record_failure")
        await super().record_failure(sink, leased, failure)


def flaky_pipeline(outbox, sink) -> Pipeline:
    settings = parse_config(
        {"sink": "flaky", "instance": "t", "retry_initial": 0.01, "retry_max": 0.01},
        lambda name, key: lookup(sink_classes(plugin_manager()), name, "sink", key).options,
    )
    return Pipeline(settings, outbox=outbox, sinks={"flaky": sink})


class TestOutboxFailures:
    """A failing outbox call delays delivery; it never stops a lane or strands a batch."""

    @pytest.fixture(autouse=True)
    def quick_retry(self, monkeypatch):
        monkeypatch.setattr("eventsink.pipeline.lane.OUTBOX_RETRY_DELAY", 0.01)

    async def test_a_failed_read_is_tried_again(self, caplog):
        outbox = FailingOnceOutbox()
        await outbox.open(["flaky"])
        left = [Event(f"id{n}", "t", "t", "2026-01-01T00:00:00", {"n": n}) for n in range(5)]
        await outbox.append(left, ["flaky"])  # left by an earlier run: read with lease()
        sink = FlakySink()
        pipeline = flaky_pipeline(outbox, sink)
        await pipeline.start()
        assert await pipeline.flush(timeout=10)
        assert sink.ids == [event.id for event in left]
        assert outbox.failures["lease"] == 0
        assert "reading the outbox failed" in caplog.text
        await pipeline.close()

    async def test_a_batch_whose_outcome_could_not_be_recorded_is_sent_again(self, caplog):
        outbox = FailingOnceOutbox()
        sink = FlakySink([500])  # the failed attempt makes the lane call record_failure
        pipeline = flaky_pipeline(outbox, sink)
        await pipeline.start()
        ids = [await pipeline.write_async("t", {"n": n}) for n in range(5)]
        assert await pipeline.flush(timeout=10)
        assert sink.ids == ids
        assert outbox.failures["record_failure"] == 0
        assert "the outbox failed while delivering a batch" in caplog.text
        await pipeline.close()
