"""A stalled event never blocks others, and accepted-but-uncommitted events are bounded."""

from __future__ import annotations

import threading

import pytest

import eventsink
from eventsink.hookspecs import hookimpl
from eventsink.plugins import make_plugin_manager

from ..conftest import table_rows
from ..outbox import outbox_ids


class _Poisoner:
    """A filter that, after write() checked the data, puts a value JSON cannot hold in it."""

    @hookimpl
    def eventsink_filter(self, event):
        if event.data.get("poison"):
            event.data["huge"] = 2**70
        return True


class TestPoisonEvent:
    """An event the outbox cannot store is set aside alone; the ones behind it flow."""

    def test_poison_event_is_set_aside_and_the_canary_delivered(self, tmp_path, caplog):
        pm = make_plugin_manager()
        pm.register(_Poisoner())
        db = tmp_path / "e.db"
        with eventsink.Client(
            sink="sqlite", path=str(db), outbox=str(tmp_path / "outbox.db"), pm=pm
        ) as client:
            client.write("t", {"n": 1})
            poison = client.write("t", {"n": 2, "poison": True})
            client.write("t", {"n": 3})
            assert client.flush(10)
            status = client.status()
            canary = client.write("t", {"n": 4}, wait=True)
            assert client.flush(10)
        assert [row["n"] for row in table_rows(db, "t")] == [1, 3, 4]
        assert status["dropped"] == {"unstorable": 1}
        assert poison in caplog.text and "cannot be stored" in caplog.text
        assert canary is not None
        assert "retrying" not in caplog.text


class TestMaxUncommitted:
    """Writers faster than the outbox wait: at most max_uncommitted events live in memory."""

    def test_uncommitted_never_exceeds_the_limit(self, tmp_path):
        limit = 20
        seen = []
        with eventsink.Client(
            sink="null", outbox=str(tmp_path / "outbox.db"), max_uncommitted=limit
        ) as client:
            intake = client.pipeline.intake

            def writer() -> None:
                for n in range(2000):
                    client.write("t", {"n": n})
                    seen.append(intake.uncommitted)

            threads = [threading.Thread(target=writer) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert client.flush(30)
            assert client.status()["accepted"] == 6000
        assert max(seen) <= limit
        assert intake.uncommitted == 0

    def test_drop_newest_drops_beyond_the_limit_instead_of_waiting(self, tmp_path):
        with eventsink.Client(
            sink="null",
            outbox=str(tmp_path / "outbox.db"),
            max_uncommitted=1,
            overflow="drop_newest",
        ) as client:
            dropped = 0
            for n in range(2000):
                try:
                    client.write("t", {"n": n})
                except eventsink.OverflowDropped as error:
                    assert "max_uncommitted" in str(error)
                    dropped += 1
            assert client.flush(30)
            assert client.status()["dropped"].get("overflow", 0) == dropped

    def test_the_option_is_validated(self):
        with pytest.raises(eventsink.ConfigError, match="max_uncommitted"):
            eventsink.Client(sink="null", outbox=":memory:", max_uncommitted=0)


class TestWriteWait:
    """write(..., wait=True) returns once the event is committed to the outbox."""

    def test_the_event_is_in_the_outbox_when_write_returns(self, tmp_path):
        import sqlite3

        outbox = tmp_path / "outbox.db"
        # A receiver that is down: nothing is delivered, so the row stays in the outbox.
        with eventsink.Client(
            sink="datasette",
            api_url="http://127.0.0.1:9/data/-/create",
            outbox=str(outbox),
            retry_initial=30,
        ) as client:
            event_id = client.write("t", {"n": 1}, wait=True)
            connection = sqlite3.connect(outbox)
            ids = outbox_ids(connection)
            connection.close()
            assert ids == [event_id]
            client.close(timeout=0.1)
