"""The delivery contract: what a sink and a plugin may expect from the lane, and what they
cannot break (issue 13's contract, issue 15's raising hooks and receiver-wide refusals)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import eventsink
from eventsink import ConfigError, RetryableError, Sink, hookimpl
from eventsink.pipeline.lane import send_slots
from eventsink.plugins import make_plugin_manager
from eventsink.testing import wait_until

from .test_pipeline import RecordingSink, make_client, sink_of


class OverlapSink(RecordingSink):
    """A recording sink that measures how many sends overlap; declares ``limit``."""

    name = "overlap"
    limit: int | None = 2

    def __init__(self, **config):
        super().__init__(**config)
        self.now = self.peak = 0

    async def send(self, batch):
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.005)  # a receiver taking its time lets sends overlap
            await super().send(batch)
        finally:
            self.now -= 1


def deliver_with_concurrency_4(sink_class: type[OverlapSink]) -> tuple[OverlapSink, list[str]]:
    """Write 200 events through a client whose sink is ``sink_class`` (batches of 5,
    concurrency 4) and flush; return the sink and the ids written."""

    class Plugin:
        @hookimpl
        def eventsink_register_sinks(self):
            return [sink_class]

    pm = make_plugin_manager()
    pm.register(Plugin())
    with eventsink.Client(
        sink="overlap", pm=pm, outbox=":memory:", batch_limit=5, concurrency=4
    ) as client:
        ids = [client.write("t", {"n": n}) for n in range(200)]
        assert client.flush(10)
        return client.pipeline.sinks["overlap"], ids


class TestSendLimit:
    """The lane never has more sends in flight than the sink accepts, whatever concurrency."""

    def test_the_default_is_one_send_at_a_time(self):
        """A sink that declares nothing is called one batch at a time."""
        assert Sink.max_concurrent_sends == 1
        assert send_slots(RecordingSink(), 8) == 1

    def test_declared_limit_caps_concurrency(self):
        """A sink accepting 2 at once gets 2, with concurrency 4; every event once."""

        class Two(OverlapSink):
            max_concurrent_sends = 2

        sink, ids = deliver_with_concurrency_4(Two)
        assert sink.peak == 2
        assert sorted(event.id for event in sink.delivered) == sorted(ids)

    def test_a_sink_that_could_not_open_is_opened_once_by_concurrent_sends(self):
        """A sink whose open failed at start is opened again before the next sends; batches
        in flight together wait for one open instead of each opening a connection."""

        class SlowToOpen(OverlapSink):
            max_concurrent_sends = 4

            def __init__(self, **config):
                super().__init__(**config)
                self.opens = self.opening = self.most_opening = 0

            async def open(self):
                self.opens += 1
                self.opening += 1
                self.most_opening = max(self.most_opening, self.opening)
                try:
                    await asyncio.sleep(0.02)
                    if self.opens == 1:
                        raise RetryableError("the receiver is not up yet")
                finally:
                    self.opening -= 1

        sink, ids = deliver_with_concurrency_4(SlowToOpen)
        assert (sink.opens, sink.most_opening) == (2, 1)
        assert sink.peak > 1  # the sends themselves did overlap
        assert sorted(event.id for event in sink.delivered) == sorted(ids)

    @pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
    def test_a_wrong_declaration_is_refused_naming_the_attribute(self, bad):
        """A limit that is not a positive int or None fails at construction."""

        class Wrong(RecordingSink):
            max_concurrent_sends = bad

        with pytest.raises(TypeError, match="max_concurrent_sends"):
            send_slots(Wrong(), 4)

    @pytest.mark.slow
    def test_sqlite_with_concurrency_4_loses_nothing(self, tmp_path: Path):
        """Issue 13's scenario: 4 threads x 5,000 writes, concurrency 4, batches of 5:
        20,000 rows and not one dead letter ("cannot start a transaction within a
        transaction" before the sink declared one send at a time)."""
        target = tmp_path / "events.db"
        client = eventsink.Client(
            sink="sqlite",
            path=str(target),
            table="events",
            outbox=str(tmp_path / "outbox.db"),
            concurrency=4,
            batch_limit=5,
        )

        def writer() -> None:
            for number in range(5000):
                client.write("events", {"n": number})

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(120)
        status = client.status()["sinks"]
        client.close()
        with sqlite3.connect(target) as db:
            assert db.execute("select count(*) from events").fetchone()[0] == 20_000
        assert [sink["dead_letters"] for sink in status.values()] == [0]
        assert [sink["dead_lettered"] for sink in status.values()] == [0]


class TestConfigErrorPauses:
    """A ConfigError from send pauses the sink: its events are kept, not dead-lettered."""

    def test_config_error_pauses_then_delivers_after_the_fix(self):
        with make_client(batch_limit=10, pause_interval=0.05) as client:
            sink = sink_of(client)
            sink.script = [ConfigError("the table is missing", key="table")] * 3
            ids = [client.write("t", {"n": n}) for n in range(10)]
            wait_until(lambda: client.status()["sinks"]["recording"]["paused"])
            status = client.status()["sinks"]["recording"]
            assert "the table is missing" in status["paused"]
            assert status["dead_lettered"] == 0
            assert client.flush(10)  # the script runs out: "fixed"
            assert sorted(event.id for event in sink.delivered) == sorted(ids)
            status = client.status()["sinks"]["recording"]
            assert status["paused"] is None and status["dead_lettered"] == 0

    def test_a_pause_outlasts_max_attempts(self):
        """A paused sink waits for a person: max_attempts does not dead-letter its events."""
        with make_client(batch_limit=5, pause_interval=0.01, max_attempts=2) as client:
            sink = sink_of(client)
            sink.script = [ConfigError("bad", key="x")] * 5
            ids = [client.write("t", {"n": n}) for n in range(5)]
            assert client.flush(10)
            assert sorted(event.id for event in sink.delivered) == sorted(ids)
            assert client.status()["sinks"]["recording"]["dead_lettered"] == 0


class Raiser:
    """A plugin whose hook ``where`` always raises."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.calls = 0

    def _maybe_raise(self, hook: str) -> None:
        if hook == self.where:
            self.calls += 1
            raise RuntimeError(f"{hook} is broken")

    @hookimpl
    def eventsink_enrich(self, event):
        self._maybe_raise("enrich")
        event.data["half"] = "changed"  # never seen: the raise comes first when broken

    @hookimpl
    def eventsink_filter(self, event):
        self._maybe_raise("filter")
        return True

    @hookimpl
    def eventsink_before_send(self, sink, batch):
        self._maybe_raise("before_send")

    @hookimpl
    async def eventsink_batch_sent(self, sink, batch):
        self._maybe_raise("batch_sent")

    @hookimpl
    def eventsink_send_error(self, sink, batch, error, final):
        self._maybe_raise("send_error")


class TestRaisingHooks:
    """A hook that raises is logged with its plugin's name and changes nothing else."""

    @pytest.mark.parametrize(
        "where", ["enrich", "filter", "before_send", "batch_sent", "send_error"]
    )
    def test_every_event_is_delivered_exactly_once(self, where, caplog):
        from .test_pipeline import Plugin

        raiser = Raiser(where)
        pm = make_plugin_manager()
        pm.register(Plugin())
        pm.register(raiser, name="raising-plugin")
        errors = []
        with eventsink.Client(
            sink="recording",
            pm=pm,
            outbox=":memory:",
            batch_limit=5,
            retry_initial=0.01,
            retry_max=0.02,
        ) as client:
            client.on("error", lambda *args: errors.append(args))
            sink = sink_of(client)
            sink.script = [RetryableError("one failure, for send_error")]
            ids = [client.write("t", {"n": n}) for n in range(20)]
            assert all(ids)
            assert client.flush(10)
            left = client.close()
        assert left == 0
        counts = Counter(event.id for event in sink.delivered)
        assert sorted(counts) == sorted(ids)
        assert set(counts.values()) == {1}, "an event was delivered more than once"
        if where == "enrich":  # the failing enricher's change is not kept, the event is
            assert all("half" not in event.data for event in sink.delivered)
        assert raiser.calls >= 1
        logged = [r for r in caplog.records if "raising-plugin" in r.getMessage()]
        assert logged and f"eventsink_{where}" in logged[0].getMessage()
        assert logged[0].levelno == logging.ERROR
        assert [args[3] for args in errors] == [False]  # only the scripted retryable failure

    def test_one_raising_plugin_does_not_silence_the_next(self):
        """Each implementation is called on its own: one raising, the other still runs."""
        from .test_pipeline import Plugin

        seen = []

        class Watcher:
            @hookimpl
            def eventsink_batch_sent(self, sink, batch):
                seen.extend(batch)

        pm = make_plugin_manager()
        pm.register(Plugin())
        pm.register(Watcher(), name="watcher")
        pm.register(Raiser("batch_sent"), name="raising-plugin")  # called before the watcher
        with eventsink.Client(sink="recording", pm=pm, outbox=":memory:") as client:
            ids = [client.write("t", {"n": n}) for n in range(3)]
            assert client.flush(10)
        assert sorted(event.id for event in seen) == sorted(ids)


class TestHooksThroughPluggy:
    """Chained and delivery hooks go through pluggy: wrappers and monitoring see them."""

    def test_wrappers_and_monitoring_see_every_hook(self):
        from .test_pipeline import Plugin

        monitored: list[str] = []
        wrapped: list[str] = []

        class Wrapper:
            @hookimpl(wrapper=True)
            def eventsink_enrich(self, event):
                wrapped.append("enrich")
                return (yield)

            @hookimpl(wrapper=True)
            def eventsink_before_send(self, sink, batch):
                wrapped.append("before_send")
                return (yield)

        class Enricher:
            @hookimpl
            def eventsink_enrich(self, event):
                event.data["enriched"] = True

            @hookimpl
            def eventsink_filter(self, event):
                return True

            @hookimpl
            def eventsink_before_send(self, sink, batch):
                pass

        pm = make_plugin_manager()
        pm.register(Plugin())
        pm.register(Wrapper())
        pm.register(Enricher())
        pm.add_hookcall_monitoring(
            lambda name, impls, kwargs: monitored.append(name), lambda *args: None
        )
        with eventsink.Client(sink="recording", pm=pm, outbox=":memory:") as client:
            client.write("t", {"n": 1})
            assert client.flush(10)
            delivered = client.pipeline.sinks["recording"].delivered
        assert [event.data for event in delivered] == [{"n": 1, "enriched": True}]
        assert {"eventsink_enrich", "eventsink_filter", "eventsink_before_send"} <= set(monitored)
        assert "enrich" in wrapped and "before_send" in wrapped


class RefusingReceiver:
    """A tiny real HTTP receiver for the Datasette sink's ``/-/insert`` requests.

    While ``refusing`` it answers every request ``201 {"ok": false}`` (a receiver-wide
    refusal no row can cure); afterwards it stores rows by id, like Datasette with ``ignore``.
    """

    def __init__(self) -> None:
        self.refusing = True
        self.requests = 0
        self.rows: dict[str, dict] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.requests += 1
                if receiver.refusing:
                    answer = {"ok": False, "errors": ["writes are switched off"]}
                else:
                    for row in body["rows"]:
                        receiver.rows.setdefault(row["id"], row)
                    answer = {"ok": True}
                payload = json.dumps(answer).encode()
                self.send_response(201)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def insert_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/data/events/-/insert"

    def __enter__(self) -> RefusingReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestReceiverWideRefusals:
    """A refusal the single events get exactly as the whole batch pauses the sink."""

    def test_ok_false_to_every_batch_pauses_and_keeps_everything(self, tmp_path, caplog):
        with RefusingReceiver() as receiver:
            client = eventsink.Client(
                sink="datasette",
                api_url=receiver.insert_url,
                outbox=str(tmp_path / "outbox.db"),
                batch_limit=20,
                pause_interval=0.1,
            )
            ids = [client.write("events", {"n": n}) for n in range(20)]
            paused = wait_until(lambda: client.status()["sinks"]["datasette"]["paused"])
            assert "writes are switched off" in paused
            status = client.status()["sinks"]["datasette"]
            assert status["dead_letters"] == 0 and status["dead_lettered"] == 0
            assert receiver.requests < 10  # halves down to two single events, then paused
            receiver.refusing = False  # the receiver is fixed
            assert client.flush(10)
            status = client.status()["sinks"]["datasette"]
            client.close()
        assert sorted(receiver.rows) == sorted(ids)
        assert status["paused"] is None and status["dead_letters"] == 0
        assert any("paused" in record.getMessage() for record in caplog.records)

    def test_one_bad_row_is_still_isolated(self):
        """A batch the first event alone gets through is split: only the bad row is dead."""
        with make_client(batch_limit=8, flush_interval=60) as client:
            sink = sink_of(client)
            ids = [client.write("t", {"n": n}) for n in range(7)]
            sink.reject_ids = {ids[0], ids[5]}  # the first probe fails alone, for its own reason
            ids.append(client.write("t", {"n": 7}))  # the batch is full: sent now
            assert client.flush(10)
            status = client.status()["sinks"]["recording"]
            assert sorted(event.id for event in sink.delivered) == sorted(
                set(ids) - {ids[0], ids[5]}
            )
            assert status["dead_lettered"] == 2 and status["paused"] is None

    @pytest.mark.parametrize("bad", [(0, 1), (6, 7), (0, 1, 4)])
    def test_rows_refused_with_one_message_are_still_isolated(self, bad):
        """Bad rows whose message names no row (a CHECK constraint) look like the whole
        batch's refusal; the rest getting through shows they are about the rows."""

        class CheckSink(RecordingSink):
            name = "check"

            async def send(self, batch):
                self.calls.append((0.0, list(batch)))
                if any(event.data["n"] in bad for event in batch):
                    raise eventsink.RejectedError("CHECK constraint failed: n", status=400)
                self.delivered.extend(batch)

        class Plugin:
            @hookimpl
            def eventsink_register_sinks(self):
                return [CheckSink]

        pm = make_plugin_manager()
        pm.register(Plugin())
        with eventsink.Client(
            sink="check", pm=pm, outbox=":memory:", batch_limit=8, flush_interval=60
        ) as client:
            ids = [client.write("t", {"n": n}) for n in range(8)]
            assert client.flush(10)
            sink = client.pipeline.sinks["check"]
            status = client.status()["sinks"]["check"]
        assert sorted(event.data["n"] for event in sink.delivered) == sorted(
            set(range(8)) - set(bad)
        )
        assert len(ids) == 8 and status["dead_lettered"] == len(bad)
        assert status["paused"] is None
