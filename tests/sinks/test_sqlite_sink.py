"""The sqlite sink: row shape, schema growth, idempotence, transactions, config errors."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from eventsink.sinks.sqlite import SQLiteSink
from hypothesis import given, settings
from hypothesis import strategies as st

from eventsink import Client, ConfigError, Event, EventError, RejectedError, RetryableError
from eventsink.plugins import lookup, make_plugin_manager, sink_classes

from ..conftest import table_rows as rows


def event(number: int, table: str = "clicks", **data: object) -> Event:
    return Event(
        f"01J00000000000000000000{number:03d}",
        table,
        "test",
        f"2026-01-01T00:00:00.{number:03d}+00:00",
        {"n": number, **data},
    )


class TestRows:
    """Each event becomes one row shaped like the Datasette sink's."""

    def test_envelope_columns_first_then_data(self, tmp_path):
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        sink.open()
        sink.send([event(1, user="ada", tags=["a", "b"], meta={"k": 1}, ok=True, x=1.5)])
        sink.close()
        connection = sqlite3.connect(tmp_path / "e.db")
        info = connection.execute("pragma table_info(clicks)").fetchall()
        assert [column[1] for column in info][:4] == ["id", "instance", "created", "n"]
        assert [column[1] for column in info if column[5]] == ["id"]  # the primary key
        types = {column[1]: column[2] for column in info}
        # sqlite-utils 3 names a float column FLOAT, 4 names it REAL: the same REAL affinity.
        assert types["n"] == "INTEGER" and types["x"] in ("REAL", "FLOAT")
        assert types["user"] == "TEXT"
        (row,) = rows(tmp_path / "e.db", "clicks")
        assert row["id"] == "01J00000000000000000000001"
        assert row["instance"] == "test"
        assert json.loads(row["tags"]) == ["a", "b"]
        assert json.loads(row["meta"]) == {"k": 1}
        assert row["ok"] == 1

    def test_new_keys_add_columns_and_old_rows_get_null(self, tmp_path):
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        sink.send([event(1)])
        sink.send([event(2, colour="red")])
        sink.close()
        assert [row.get("colour") for row in rows(tmp_path / "e.db", "clicks")] == [None, "red"]

    def test_each_event_goes_to_its_own_table_unless_one_is_configured(self, tmp_path):
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        sink.send([event(1, "a"), event(2, "b"), event(3, "a")])
        sink.close()
        assert [row["n"] for row in rows(tmp_path / "e.db", "a")] == [1, 3]
        assert [row["n"] for row in rows(tmp_path / "e.db", "b")] == [2]
        fixed = SQLiteSink(path=str(tmp_path / "f.db"), table="all_events")
        fixed.send([event(1, "a"), event(2, "b")])
        fixed.close()
        assert len(rows(tmp_path / "f.db", "all_events")) == 2
        assert "table all_events" in fixed.describe()


class TestIdempotence:
    """A batch delivered twice is stored once, keyed by id."""

    def test_resent_batch_is_ignored(self, tmp_path):
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        batch = [event(number) for number in range(50)]
        sink.send(batch)
        sink.send(batch[10:])
        sink.send([event(0, n_changed=True)])  # same id, other data: the first one stays
        sink.close()
        stored = rows(tmp_path / "e.db", "clicks")
        assert len(stored) == 50
        assert stored[0].get("n_changed") is None


class TestTransactions:
    """A batch is committed whole or not at all."""

    def test_locked_database_is_retryable_and_nothing_is_half_written(self, tmp_path):
        path = tmp_path / "e.db"
        sink = SQLiteSink(path=str(path))
        sink.send([event(0)])
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("begin immediate")
        sink._db.conn.execute("pragma busy_timeout=50")
        with pytest.raises(RetryableError, match="locked"):
            sink.send([event(1, "clicks"), event(2, "other")])
        blocker.execute("rollback")
        blocker.close()
        assert [row["n"] for row in rows(path, "clicks")] == [0]
        sink.send([event(1, "clicks"), event(2, "other")])
        sink.close()
        assert [row["n"] for row in rows(path, "clicks")] == [0, 1]


class TestConfig:
    """Bad configuration fails at start naming the key."""

    def test_unwritable_path_names_the_key(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        sink = SQLiteSink(path=str(blocker / "e.db"))
        with pytest.raises(ConfigError) as caught:
            sink.open()
        assert caught.value.key == "path"

    def test_unknown_option_names_the_key(self):
        with pytest.raises(ConfigError, match="'tabel'"):
            SQLiteSink(tabel="x")

    def test_registered_as_a_builtin(self):
        assert lookup(sink_classes(make_plugin_manager()), "sqlite", "sink") is SQLiteSink


class TestThroughThePipeline:
    """The sink behind a real client and durable outbox delivers every event once."""

    def test_client_delivers_everything(self, tmp_path):
        with Client(
            sink="sqlite",
            path=str(tmp_path / "e.db"),
            outbox=str(tmp_path / "outbox.db"),
            instance="web-1",
            batch_limit=250,
        ) as client:
            ids = [client.write("signups", {"number": number}) for number in range(1000)]
            assert client.flush(timeout=30)
        stored = rows(tmp_path / "e.db", "signups")
        assert [row["id"] for row in stored] == sorted(ids)
        assert {row["instance"] for row in stored} == {"web-1"}

    async def test_async_send_via_thread(self, tmp_path):
        from eventsink.sink import call_maybe_sync

        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        await call_maybe_sync(sink.open)
        await asyncio.gather(call_maybe_sync(sink.send, [event(1)]))
        await call_maybe_sync(sink.close)
        assert len(rows(tmp_path / "e.db", "clicks")) == 1


class TestRefusedRows:
    """Rows a table's own constraints refuse are rejected, never silently skipped."""

    def test_check_constraint_rejects_instead_of_ignoring(self, tmp_path):
        from eventsink import RejectedError

        path = tmp_path / "e.db"
        connection = sqlite3.connect(path)
        connection.execute(
            "create table clicks (id text primary key, instance text, created text, "
            "n integer check (n < 5))"
        )
        connection.close()
        sink = SQLiteSink(path=str(path))
        with pytest.raises(RejectedError, match="CHECK"):
            sink.send([event(1), event(7)])
        sink.send([event(1)])
        sink.close()
        assert [row["n"] for row in rows(path, "clicks")] == [1]


class TestColumnCase:
    """Column names ignore case in SQL: rows are stored faithfully or refused, never altered."""

    def test_keys_differing_in_case_across_events_share_one_column(self, tmp_path):
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        sink.send([event(1, Colour="red"), event(2, colour="blue")])
        sink.send([event(3, COLOUR="green")])
        sink.close()
        stored = rows(tmp_path / "e.db", "clicks")
        values = [next(v for k, v in row.items() if k.lower() == "colour") for row in stored]
        assert values == ["red", "blue", "green"]

    def test_existing_table_with_a_lower_case_column(self, tmp_path):
        connection = sqlite3.connect(tmp_path / "e.db")
        connection.execute("create table clicks (id text primary key, instance, created, n, a)")
        connection.commit()
        connection.close()
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        sink.send([event(1, A=1), event(2, a=2)])
        sink.close()
        assert [row["a"] for row in rows(tmp_path / "e.db", "clicks")] == [1, 2]

    def test_one_event_with_keys_equal_but_for_case_is_refused_not_altered(self, tmp_path):
        sink = SQLiteSink(path=str(tmp_path / "e.db"))
        with pytest.raises(RejectedError, match="differ only in case"):
            sink.send([event(1, A=1, a=2)])
        bad = Event("01J00000000000000000000009", "clicks", "t", "c", {"ID": "spoof"})
        with pytest.raises(RejectedError, match="'id' and 'ID'"):
            sink.send([bad])
        sink.close()

    def test_write_refuses_them_before_any_sink(self, tmp_path):
        with Client(sink="sqlite", path=str(tmp_path / "e.db"), outbox=":memory:") as client:
            with pytest.raises(EventError, match="differ only in case"):
                client.write("clicks", {"A": 1, "a": 2})
            with pytest.raises(EventError, match="reserved"):
                client.write("clicks", {"ID": "spoof"})
            client.write("clicks", {"n": 1})
            assert client.flush(10)
        assert [row["n"] for row in rows(tmp_path / "e.db", "clicks")] == [1]


#: One type per key (SQLite's column affinity would convert "12" in an INTEGER column).
KEY_VALUES = {
    "user": st.text(max_size=5),
    "User": st.text(max_size=5),
    "n": st.integers(-(2**63), 2**63 - 1),
    "score": st.floats(allow_nan=False, allow_infinity=False),
    "ok": st.booleans(),
    "tags": st.lists(st.integers(0, 9), max_size=3),
    "meta": st.dictionaries(st.sampled_from("ab"), st.integers(0, 9), max_size=2),
}


@st.composite
def event_data(draw):
    keys = draw(st.lists(st.sampled_from(list(KEY_VALUES)), unique=True, max_size=5))
    if "user" in keys and "User" in keys:  # equal but for case: write() refuses that
        keys.remove("User")
    return {key: draw(KEY_VALUES[key]) for key in keys}  # a null only by absence


class TestShapes:
    """Whatever mix of key shapes, batch splits and repeats: one row per id, every value kept."""

    @settings(max_examples=60, deadline=None)
    @given(
        datas=st.lists(event_data(), min_size=1, max_size=40),
        cuts=st.lists(st.integers(1, 15), max_size=10),
        repeat=st.booleans(),
    )
    def test_rows_hold_exactly_the_events(self, tmp_path_factory, datas, cuts, repeat):
        path = tmp_path_factory.mktemp("shapes") / "e.db"
        events = [
            Event(f"01J0000000000000000000{index:04d}", "t", "i", "c", data)
            for index, data in enumerate(datas)
        ]
        sink = SQLiteSink(path=str(path))
        start = 0
        for cut in [*cuts, len(events)]:
            sink.send(events[start : start + cut])
            start += cut
            if start >= len(events):
                break
        if repeat:
            sink.send(events[::-1])  # every one again, in another order and other batches
        sink.close()
        stored = {row["id"]: row for row in rows(path, "t")}
        assert sorted(stored) == [event.id for event in events]
        for event in events:
            row = {key.lower(): value for key, value in stored[event.id].items()}
            expected = {key.lower(): value for key, value in event.data.items()}
            for key in {key.lower() for key in KEY_VALUES}:
                value = expected.get(key)
                if isinstance(value, (dict, list)):
                    assert json.loads(row[key]) == value
                else:
                    assert row.get(key) == value  # True == 1: booleans are stored as 1 and 0
