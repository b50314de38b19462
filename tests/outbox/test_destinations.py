"""Pending events belong to a destination, not to a sink's configured name.

Each built-in sink's destination; the outbox keyed by it; an outbox written by an older
eventsink (rows keyed by sink name) upgraded on open; which destinations live processes serve.
"""

from __future__ import annotations

import logging
import sqlite3

import pytest

import eventsink
from eventsink.config import Option
from eventsink.exceptions import ConfigError
from eventsink.outbox import MemoryOutbox
from eventsink.outbox.sqlite import SCHEMA_VERSION, SQLiteOutbox, schema_version
from eventsink.sink import Sink
from eventsink.testing import MemorySink
from sinks.datasette import DatasetteSink
from sinks.file import FileSink
from sinks.nats import NatsSink
from sinks.null import NullSink
from sinks.sqlite import SQLiteSink
from sinks.stdout import StdoutSink

from . import outbox_ids
from .test_sqlite_outbox import make_events

# The schema eventsink wrote before destinations (version 1), verbatim.
OLD_SCHEMA = """
create table if not exists eventsink_outbox (
    seq integer primary key,
    sink text not null,
    id text not null,
    table_name text not null,
    instance text not null,
    created text not null,
    data blob not null,
    attempts integer not null default 0,
    lease_owner text,
    first_failure real,
    last_error text,
    last_status integer,
    paused integer not null default 0
);
create index if not exists eventsink_outbox_unleased on eventsink_outbox (sink, seq)
    where lease_owner is null;
create table if not exists eventsink_dead_letters (
    seq integer primary key autoincrement,
    sink text not null,
    id text not null,
    table_name text not null,
    instance text not null,
    created text not null,
    data blob not null,
    status integer,
    error text,
    attempts integer,
    first_failure real,
    last_failure real
);
create index if not exists eventsink_dead_letters_sink on eventsink_dead_letters (sink, id);
create table if not exists eventsink_owners (
    owner text primary key,
    until real not null
);
"""


def write_old_outbox(path, rows):
    """An outbox file in the version 1 format: ``rows`` are (sink name, count, dead)."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    events = make_events(sum(count for _, count, _ in rows))
    for sink, count, dead in rows:
        table = "eventsink_dead_letters" if dead else "eventsink_outbox"
        for event in events[:count]:
            db.execute(
                f"insert into {table} (sink, id, table_name, instance, created, data) "
                "values (?, ?, ?, ?, ?, ?)",
                [sink, event.id, event.table, event.instance, event.created, event.data_json()],
            )
        events = events[count:]
    db.commit()
    db.close()


class TestSinkDestinations:
    """Every built-in sink names where it delivers, without secrets."""

    def test_sqlite_is_its_resolved_path_and_table(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert SQLiteSink(path="a.db").destination == f"sqlite {tmp_path / 'a.db'}"
        fixed = SQLiteSink(path="a.db", table="all")
        assert fixed.destination == f"sqlite {tmp_path / 'a.db'} table all"
        assert SQLiteSink(path="a.db").destination != SQLiteSink(path="b.db").destination

    def test_file_is_its_resolved_path(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert FileSink(path="out/e.jsonl").destination == f"file {tmp_path / 'out/e.jsonl'}"

    def test_datasette_is_its_url_and_table_without_secrets(self):
        sink = DatasetteSink(
            api_url="https://user:pw@example.com/db/-/create?_auth=tok1",
            api_token="tok2",
            table="events",
            timeout=3,
        )
        assert sink.destination == "datasette https://example.com/db table events"
        # The insert URL of the same table is the same place.
        insert = DatasetteSink(api_url="https://example.com/db/events/-/insert")
        assert insert.destination == sink.destination
        other = DatasetteSink(api_url="https://other.example.com/db/-/create", api_token="x")
        assert other.destination == "datasette https://other.example.com/db"

    def test_nats_is_servers_stream_and_subject_without_credentials(self):
        sink = NatsSink(servers=["nats://ada:pw@h:4222"], stream="S", subject="e.{table}")
        assert sink.destination == "nats nats://h:4222 stream S subject e.{table}"
        assert "pw" not in sink.destination

    def test_stdout_and_null_are_their_type(self):
        assert StdoutSink(format="json").destination == "stdout"
        assert NullSink().destination == "null"

    def test_a_third_party_sink_gets_its_non_secret_string_options(self):
        class PrintSink(Sink):
            name = "print"
            options = (
                Option("prefix", str, ">"),
                Option("token", str, None, secret=True),
                Option("width", int, 80),
            )

        assert PrintSink(token="s3cret").destination == "print prefix=>"
        assert MemorySink().destination == "memory"


class TestKeyedByDestination:
    """A lane leases only the rows of its sink's destination."""

    async def test_rows_of_another_destination_are_not_leased(self, tmp_path):
        path = tmp_path / "outbox.db"
        first = SQLiteOutbox(path)
        await first.open({"sqlite /a.db": "sqlite"})
        await first.append(make_events(5), ["sqlite /a.db"])
        second = SQLiteOutbox(path)
        await second.open({"sqlite /b.db": "sqlite"})
        assert await second.lease("sqlite /b.db", 10) is None
        assert len((await first.lease("sqlite /a.db", 10)).events) == 5
        await first.close()
        await second.close()

    async def test_serving_lists_live_processes_destinations_with_their_names(self, tmp_path):
        path = tmp_path / "outbox.db"
        one, two = SQLiteOutbox(path), SQLiteOutbox(path)
        await one.open({"sqlite /a.db": "events"})
        await two.open({"sqlite /a.db": "copy", "stdout": "stdout"})
        assert await one.serving() == {"sqlite /a.db": ["copy", "events"], "stdout": ["stdout"]}
        await two.close()
        assert await one.serving() == {"sqlite /a.db": ["events"]}
        await one.close()

    async def test_memory_outbox_serves_what_it_opened(self):
        outbox = MemoryOutbox()
        await outbox.open({"sqlite /a.db": "events"})
        assert await outbox.serving() == {"sqlite /a.db": ["events"]}


class TestOldOutboxes:
    """An outbox written before destinations keeps working: its rows are adopted, once."""

    async def test_rows_of_a_configured_name_are_adopted_by_its_destination(self, tmp_path, caplog):
        path = tmp_path / "outbox.db"
        write_old_outbox(path, [("sqlite", 7, False), ("sqlite", 2, True), ("other", 3, False)])
        outbox = SQLiteOutbox(path)
        with caplog.at_level(logging.INFO, logger="eventsink"):
            backlog = await outbox.open({"sqlite /x/a.db": "sqlite"})
        assert backlog["sqlite /x/a.db"].pending == 7
        assert backlog["sqlite /x/a.db"].dead_letters == 2
        assert backlog["other"].pending == 3  # nobody configures it: left under its old name
        assert "sqlite" not in backlog
        assert "upgraded from schema version 1" in caplog.text
        assert "7 pending event(s) and 2 dead letter(s)" in caplog.text
        assert "'sqlite /x/a.db'" in caplog.text
        leased = await outbox.lease("sqlite /x/a.db", 100)
        assert [event.data["n"] for event in leased.events] == list(range(7))
        await outbox.close()
        with sqlite3.connect(path) as db:
            assert schema_version(db) == SCHEMA_VERSION

    async def test_adoption_happens_once(self, tmp_path, caplog):
        path = tmp_path / "outbox.db"
        write_old_outbox(path, [("sqlite", 4, False)])
        first = SQLiteOutbox(path)
        await first.open({"sqlite /x/a.db": "sqlite"})
        await first.close()
        # A later process with a sink of the same name but another destination takes nothing.
        second = SQLiteOutbox(path)
        with caplog.at_level(logging.INFO, logger="eventsink"):
            backlog = await second.open({"sqlite /x/b.db": "sqlite"})
        assert "belong to destination" not in caplog.text
        assert backlog["sqlite /x/a.db"].pending == 4
        assert "sqlite /x/b.db" not in backlog or backlog["sqlite /x/b.db"].pending == 0
        await second.close()

    async def test_a_name_configured_later_is_adopted_then(self, tmp_path):
        path = tmp_path / "outbox.db"
        write_old_outbox(path, [("sqlite", 1, False), ("remote", 2, False)])
        first = SQLiteOutbox(path)
        await first.open({"sqlite /x/a.db": "sqlite"})
        await first.close()
        second = SQLiteOutbox(path)
        backlog = await second.open({"datasette https://h/db/-/create": "remote"})
        assert backlog["datasette https://h/db/-/create"].pending == 2
        assert "remote" not in backlog
        await second.close()

    async def test_an_outbox_of_a_newer_eventsink_is_refused(self, tmp_path):
        path = tmp_path / "outbox.db"
        outbox = SQLiteOutbox(path)
        await outbox.open()
        await outbox.close()
        with sqlite3.connect(path) as db:
            db.execute("update eventsink_meta set value = 99 where key = 'schema_version'")
        newer = SQLiteOutbox(path)
        with pytest.raises(ConfigError, match="schema version 99"):
            await newer.open()
        await newer.runner.close()


class TestPipelineKeys:
    """A pipeline keys each lane by its sink's destination and reports the ones nobody serves."""

    async def test_two_sinks_with_one_destination_each_get_every_event(self, tmp_path):
        out = tmp_path / "events.jsonl"
        pipeline = eventsink.build(
            {
                "sinks": [
                    {"type": "file", "name": "one", "path": str(out)},
                    {"type": "file", "name": "two", "path": str(out)},
                ],
                "outbox": str(tmp_path / "outbox.db"),
            }
        )
        destination = f"file {out.resolve()}"
        assert [lane.destination for lane in pipeline.lanes.values()] == [
            destination,
            f"{destination} #2",
        ]
        await pipeline.start()
        try:
            for n in range(3):
                await pipeline.write_async("t", {"n": n})
            assert await pipeline.flush(timeout=10)
        finally:
            await pipeline.close()
        assert len(out.read_bytes().splitlines()) == 6  # each sink delivered all three

    async def test_status_lists_pending_destinations_nobody_serves(self, tmp_path):
        path = tmp_path / "outbox.db"
        left = SQLiteOutbox(path)
        await left.open({"sqlite /x/a.db": "sqlite"})
        await left.append(make_events(5), ["sqlite /x/a.db"])
        await left.close()
        pipeline = eventsink.build(
            {"sink": "file", "path": str(tmp_path / "e.jsonl"), "outbox": str(path)}
        )
        await pipeline.start()
        try:
            await pipeline.write_async("t", {})
            document = await pipeline.status()
            assert document["undelivered"] == [{"destination": "sqlite /x/a.db", "pending": 5}]
            served = SQLiteOutbox(path)
            await served.open({"sqlite /x/a.db": "sqlite"})  # now someone delivers there
            try:
                assert (await pipeline.status())["undelivered"] == []
            finally:
                await served.close()
        finally:
            await pipeline.close()


class TestOldOutboxInDatasette:
    """The plugin's outbox in an --internal file of an older eventsink is upgraded and sent."""

    async def test_rows_left_under_the_sink_name_reach_the_receiver(
        self, tmp_path, receiver, caplog
    ):
        from eventsink.datasette.plugin import get_pipeline

        from ..datasette.test_datasette_plugin import sender

        internal = tmp_path / "internal.db"
        write_old_outbox(internal, [("datasette", 3, False)])
        with sqlite3.connect(internal) as db:
            ids = set(outbox_ids(db))
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        with caplog.at_level(logging.INFO, logger="eventsink"):
            async with sender(tmp_path, {"eventsink": config}, internal=internal) as datasette:
                assert await get_pipeline(datasette).flush(timeout=20)
        assert "kept under the old sink name 'datasette'" in caplog.text
        arrived = {row["id"]: row["n"] for row in receiver.rows("t") if row["id"] in ids}
        assert sorted(arrived.values()) == [0, 1, 2]  # the events' own table, as before
        with sqlite3.connect(internal) as db:
            assert schema_version(db) == SCHEMA_VERSION
            assert (
                db.execute("select coalesce(sum(events), 0) from eventsink_outbox").fetchone()[0]
                == 0
            )
