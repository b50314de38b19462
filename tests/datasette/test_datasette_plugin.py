"""The Datasette plugin: a sender Datasette forwarding its events to a real receiver."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest
from datasette.app import Datasette

from eventsink.datasette import plugin
from eventsink.datasette.plugin import PluginConfigError, get_pipeline, get_state
from eventsink.testing.receiver import DatasetteReceiver

from ..conftest import wait_until

COLUMNS = {
    "id",
    "instance",
    "event",
    "created",
    "actor_id",
    "database_name",
    "table_name",
    "properties",
}


@contextlib.asynccontextmanager
async def sender(tmp_path: Path, plugins: dict, *, internal: Path | None = None):
    """An in-process Datasette with a writable database ``s`` and the given plugin config."""
    path = tmp_path / f"s-{uuid.uuid4().hex[:6]}.db"
    sqlite3.connect(path).close()
    datasette = Datasette(
        [str(path)], config={"plugins": plugins}, internal=str(internal) if internal else None
    )
    datasette.root_enabled = True
    await datasette.invoke_startup()
    datasette.test_token = await datasette.create_token("root")
    try:
        yield datasette
    finally:
        await datasette.invoke_shutdown()


async def write(datasette: Datasette, path: str, body: dict) -> httpx.Response:
    response = await datasette.client.post(
        path, json=body, headers={"Authorization": f"Bearer {datasette.test_token}"}
    )
    assert response.status_code in (200, 201), response.text
    return response


def events_table() -> str:
    return f"events_{uuid.uuid4().hex[:8]}"


class TestForwarding:
    """Datasette events arrive as rows with datasette-events-forward's columns."""

    async def test_create_and_insert_events_arrive(self, tmp_path, receiver):
        table = events_table()
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
            "table": table,
            "instance": "sender-1",
        }
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            await write(datasette, f"/{_db(datasette)}/x/-/insert", {"rows": [{"a": 2}, {"a": 3}]})
            assert await get_pipeline(datasette).flush(timeout=10)
        rows = receiver.rows(table)
        assert [row["event"] for row in rows] == ["create-table", "insert-rows", "insert-rows"]
        assert set(rows[0]) == COLUMNS
        first = rows[0]
        assert first["instance"] == "sender-1" and first["actor_id"] == "root"
        assert (first["database_name"], first["table_name"]) == (_db(datasette), "x")
        assert "CREATE TABLE" in json.loads(first["properties"])["schema"]
        assert json.loads(rows[2]["properties"])["num_rows"] == 2
        assert first["created"].endswith("+00:00") and len({r["id"] for r in rows}) == 3

    async def test_insert_url_and_env_token(self, tmp_path, receiver, monkeypatch):
        table = events_table()
        monkeypatch.setenv("RECEIVER_TOKEN", receiver.token)
        # Make the receiving table first, as a user of an /-/insert URL would.
        first = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": {**first, "table": table}}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "y", "row": {"a": 1}})
        config = {
            "api_url": f"{receiver.db_url}/{table}/-/insert",
            "api_token": {"$env": "RECEIVER_TOKEN"},
        }
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "z", "row": {"a": 1}})
            assert await get_pipeline(datasette).flush(timeout=10)
        # /-/create with a row emits create-table and insert-rows
        assert [row["table_name"] for row in receiver.rows(table)] == ["y", "y", "z", "z"]

    async def test_legacy_config_block_is_used_with_a_notice(self, tmp_path, receiver, caplog):
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
            "batch_limit": 10,
            "max_rate": 1,
            "time_period": 10,
        }
        with caplog.at_level(logging.INFO, logger="eventsink"):
            async with sender(tmp_path, {"datasette-events-forward": config}) as datasette:
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "q", "row": {"a": 1}}
                )
                assert await get_pipeline(datasette).flush(timeout=10)
                assert get_state(datasette).config_source == "datasette-events-forward"
                delivery = get_pipeline(datasette).settings.sinks[0].delivery
                assert (delivery.batch_limit, delivery.max_rate) == (10, 1)
        notices = [r for r in caplog.records if "datasette-events-forward" in r.getMessage()]
        assert len(notices) == 1
        assert any(row["table_name"] == "q" for row in receiver.rows("datasette_events"))

    async def test_event_filters(self, tmp_path, receiver):
        table = events_table()
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
            "table": table,
            "exclude_events": ["insert-rows"],
        }
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            await write(datasette, f"/{_db(datasette)}/x/-/insert", {"row": {"a": 2}})
            assert await get_pipeline(datasette).flush(timeout=10)
        assert [row["event"] for row in receiver.rows(table)] == ["create-table"]

    async def test_several_sinks(self, tmp_path, receiver):
        table = events_table()
        log = tmp_path / "events.jsonl"
        config = {
            "table": table,
            "sinks": [
                {
                    "type": "datasette",
                    "api_url": f"{receiver.db_url}/-/create",
                    "api_token": receiver.token,
                },
                {"type": "file", "path": str(log), "fsync": False},
            ],
        }
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            assert await get_pipeline(datasette).flush(timeout=10)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [row["id"] for row in receiver.rows(table)] == [line["id"] for line in lines]

    @pytest.mark.slow
    async def test_outbox_survives_in_the_internal_database(self, tmp_path):
        """Events stay in --internal while the receiver is down and are sent after a restart."""
        internal = tmp_path / "internal.db"
        with DatasetteReceiver() as down:
            config = {
                "api_url": f"{down.db_url}/-/create",
                "api_token": down.token,
                "retry_max": 0.1,
            }
            down.stop()
            async with sender(tmp_path, {"eventsink": config}, internal=internal) as datasette:
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}}
                )
                pipeline = get_pipeline(datasette)
                assert not await pipeline.flush(timeout=0.3)
                await pipeline.close(timeout=0)  # shutdown would wait 5 s for the receiver
            with sqlite3.connect(internal) as connection:
                kept = connection.execute(
                    "select coalesce(sum(events), 0) from eventsink_outbox"
                ).fetchone()[0]
            assert kept == 2  # create-table and insert-rows
            down.start()
            async with sender(tmp_path, {"eventsink": config}, internal=internal) as datasette:
                assert await get_pipeline(datasette).flush(timeout=10)
            assert [row["event"] for row in down.rows()] == ["create-table", "insert-rows"]


def _db(datasette: Datasette) -> str:
    return next(name for name in datasette.databases if name.startswith("s-"))


class TestConfiguration:
    """Bad or missing configuration is reported once, naming the key."""

    async def test_no_sink_configured_does_nothing_and_says_so(self, tmp_path, caplog):
        with caplog.at_level(logging.INFO, logger="eventsink"):
            async with sender(tmp_path, {}) as datasette:
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}}
                )
                assert get_pipeline(datasette) is None
        assert len([r for r in caplog.records if "no sink configured" in r.getMessage()]) == 1

    @pytest.mark.parametrize(
        "config, key",
        [
            ({"api_url": "http://h/data"}, "api_url"),
            ({"api_url": "http://h/data/-/create", "batch_limt": 5}, "batch_limt"),
            ({"api_url": "http://h/data/-/create", "max_rate": "fast"}, "max_rate"),
            (
                {"api_url": "http://h/data/-/create", "api_token": {"$env": "ES_TEST_UNSET"}},
                "api_token",
            ),
        ],
    )
    async def test_bad_config_stops_startup_naming_the_key(self, tmp_path, config, key):
        with pytest.raises(PluginConfigError) as caught:
            async with sender(tmp_path, {"eventsink": config}):
                pass
        assert caught.value.key == key and key in str(caught.value)
        if "$env" in str(config):  # Datasette alone would have made it a silent null
            assert "'ES_TEST_UNSET', which is not set" in str(caught.value)

    async def test_plugin_defaults(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            delivery = get_pipeline(datasette).settings.sinks[0].delivery
            assert (delivery.batch_limit, delivery.max_rate, delivery.time_period) == (100, 10, 1)
            assert get_state(datasette).table == "datasette_events"


class TestReceiverErrors:
    """A refused token keeps events; a wrong database dead-letters them; no token leaks."""

    async def test_forbidden_keeps_events(self, tmp_path, receiver, caplog):
        token = receiver.create_token("root", "--all", "view-instance")
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": token,
            "pause_interval": 0.05,
        }
        with caplog.at_level(logging.DEBUG, logger="eventsink"):
            async with sender(tmp_path, {"eventsink": config}) as datasette:
                for name in "abc":
                    await write(
                        datasette, f"/{_db(datasette)}/-/create", {"table": name, "row": {"a": 1}}
                    )
                pipeline = get_pipeline(datasette)
                assert not await pipeline.flush(timeout=0.3)
                status = (await pipeline.status())["sinks"]["datasette"]
                assert status["paused"] and status["last_error"]["status"] == 403
                assert status["pending"] + status["in_flight"] == 6
                assert status["dead_letters"] == 0
                await pipeline.close(timeout=0)
        assert token not in caplog.text and "create-table" in caplog.text

    @pytest.mark.slow  # Datasette takes seconds (3-8 s here) to answer 404 for a missing database
    async def test_wrong_database_dead_letters(self, tmp_path, receiver, caplog):
        config = {"api_url": f"{receiver.url}/missing/-/create", "api_token": receiver.token}
        with caplog.at_level(logging.INFO, logger="eventsink"):
            async with sender(tmp_path, {"eventsink": config}) as datasette:
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}}
                )
                pipeline = get_pipeline(datasette)
                assert await pipeline.flush(timeout=10)
                status = (await pipeline.status())["sinks"]["datasette"]
        assert status["dead_letters"] == 2 and status["last_error"]["status"] == 404
        assert receiver.token not in caplog.text


class TestTwoServers:
    """Two real Datasette servers on loopback: the issue's must-show."""

    @pytest.mark.slow
    async def test_2000_requests_give_2001_rows(self, tmp_path, receiver):
        table = events_table()
        config = tmp_path / "sender.json"
        config.write_text(
            json.dumps(
                {
                    "plugins": {
                        "eventsink": {
                            "api_url": f"{receiver.db_url}/-/create",
                            "api_token": receiver.token,
                            "table": table,
                            "batch_limit": 100,
                            "max_rate": 100,
                            "time_period": 1,
                        }
                    }
                }
            )
        )
        with DatasetteReceiver(
            database="s", extra_args=["-c", str(config), "--internal", str(tmp_path / "i.db")]
        ) as sending:
            headers = {"Authorization": f"Bearer {sending.token}"}
            async with httpx.AsyncClient(headers=headers, timeout=30) as client:
                created = await client.post(
                    f"{sending.db_url}/-/create", json={"table": "t", "row": {"n": 0}}
                )
                assert created.status_code == 201

                async def insert(worker: int) -> None:
                    for n in range(worker, 1999, 8):
                        response = await client.post(
                            f"{sending.db_url}/t/-/insert", json={"row": {"n": n}}
                        )
                        assert response.status_code == 201

                await asyncio.gather(*(insert(worker) for worker in range(8)))
            rows = wait_until(lambda: (r := receiver.rows(table)) and len(r) >= 2001 and r, 15)
        assert len(rows) == 2001 and len({row["id"] for row in rows}) == 2001
        assert sorted({row["event"] for row in rows}) == ["create-table", "insert-rows"]


class TestEventProperties:
    """The plugin reads an event's properties without Datasette's deep copy, with the same
    result for every event Datasette defines, and falls back to properties() otherwise."""

    @staticmethod
    def every_event_class() -> list[type]:
        import datasette.events

        return [
            cls
            for cls in vars(datasette.events).values()
            if isinstance(cls, type)
            and issubclass(cls, datasette.events.Event)
            and cls is not datasette.events.Event
        ]

    @pytest.mark.parametrize("plain", [True, False], ids=["plain values", "nested values"])
    def test_same_as_properties_for_every_datasette_event(self, plain):
        classes = self.every_event_class()
        assert len(classes) >= 10
        for cls in classes:
            values = {}
            for n, field in enumerate(f for f in dataclasses.fields(cls) if f.init):
                if field.name == "actor":
                    values["actor"] = {"id": "root", "roles": ["admin"]}
                elif plain:
                    values[field.name] = [f"v{n}", n, 1.5, True, None][n % 5]
                else:
                    values[field.name] = {"nested": [n, {"deeper": n}]}
            event = cls(**values)
            assert plugin.event_properties(event) == event.properties(), cls.__name__

    def test_a_class_with_its_own_properties_is_asked(self):
        from datasette.events import Event as DatasetteEvent

        @dataclasses.dataclass
        class Custom(DatasetteEvent):
            name = "custom"
            size: int

            def properties(self):
                return {"size": self.size * 2}

        assert plugin.event_properties(Custom(actor=None, size=3)) == {"size": 6}

    def test_plain_values_are_read_as_they_are(self):
        from datasette.events import InsertRowsEvent

        event = InsertRowsEvent(
            actor={"id": "root"}, database="d", table="t", num_rows=1, ignore=False, replace=False
        )
        assert plugin.event_properties(event) == {
            "database": "d",
            "table": "t",
            "num_rows": 1,
            "ignore": False,
            "replace": False,
        }
