"""Taking over from datasette-events-forward, and a request that an event never fails."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import types

import pytest
from datasette import hookimpl
from datasette.plugins import pm
from ulid import ULID

from eventsink.datasette import plugin
from eventsink.datasette.plugin import get_pipeline, get_state
from eventsink.datasette.takeover import LEGACY_COLUMNS, LEGACY_MODULE, LEGACY_TABLE

from .test_datasette_plugin import _db, events_table, sender, write

LEGACY_SCHEMA = f"""
create table {LEGACY_TABLE} (
    id text primary key, event text, created text, actor_id text, database_name text,
    table_name text, properties text, failures integer default 0
)
"""


@pytest.fixture
def legacy_plugin():
    """A stand-in for datasette-events-forward registered in Datasette's plugin manager."""
    module = types.ModuleType(LEGACY_MODULE)
    module.seen = []

    @hookimpl
    def track_event(datasette, event):
        module.seen.append(event.name)

    module.track_event = track_event
    pm.register(module, name="datasette-events-forward")
    yield module
    if pm.is_registered(module):
        pm.unregister(module)


def forwarding(receiver, table: str) -> dict:
    """The plugin config that forwards every event to ``receiver``'s ``table``."""
    return {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token, "table": table}


async def create_table(datasette, table: str) -> None:
    """Cause two events: create-table and insert-rows."""
    await write(datasette, f"/{_db(datasette)}/-/create", {"table": table, "row": {"a": 1}})


def queue_legacy_rows(path, count: int) -> list[str]:
    """Rows as datasette-events-forward leaves them in its table when the receiver is down."""
    ids = [str(ULID()) for _ in range(count)]
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(LEGACY_SCHEMA)
        connection.executemany(
            f"insert into {LEGACY_TABLE} (id, event, created, actor_id, database_name, "
            "table_name, properties, failures) values (?, 'insert-rows', "
            "'2026-01-01T00:00:00.000000+00:00', 'root', 'old', 't', '{\"num_rows\": 1}', 3)",
            [[row_id] for row_id in ids],
        )
    connection.close()
    return ids


class TestTakeover:
    """With both plugins installed, eventsink alone forwards, and finishes the other's queue."""

    async def test_the_original_is_unregistered_and_told_to_go(
        self, tmp_path, receiver, legacy_plugin, caplog
    ):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        with caplog.at_level(logging.INFO, logger="eventsink"):
            async with sender(tmp_path, {"datasette-events-forward": config}) as datasette:
                assert not pm.is_registered(legacy_plugin)
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "a", "row": {"a": 1}}
                )
                assert await get_pipeline(datasette).flush(timeout=10)
                assert get_state(datasette).took_over_legacy
        assert legacy_plugin.seen == []
        lines = [r.getMessage() for r in caplog.records if "pip uninstall" in r.getMessage()]
        assert len(lines) == 1 and "datasette-events-forward" in lines[0]

    async def test_unconfigured_eventsink_leaves_the_original_alone(self, tmp_path, legacy_plugin):
        async with sender(tmp_path, {}) as datasette:
            assert pm.is_registered(legacy_plugin)
            await create_table(datasette, "a")
        assert legacy_plugin.seen == ["create-table", "insert-rows"]

    async def test_queued_rows_are_imported_with_their_ids(self, tmp_path, receiver, caplog):
        internal = tmp_path / "internal.db"
        ids = queue_legacy_rows(internal, 11)
        table = events_table()
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
            "table": table,
        }
        with caplog.at_level(logging.INFO, logger="eventsink"):
            async with sender(tmp_path, {"eventsink": config}, internal=internal) as datasette:
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "n", "row": {"a": 1}}
                )
                assert await get_pipeline(datasette).flush(timeout=10)
        rows = receiver.rows(table)
        assert [row["id"] for row in rows[:11]] == ids
        assert len(rows) == 13 and len({row["id"] for row in rows}) == 13
        assert rows[0]["created"] == "2026-01-01T00:00:00.000000+00:00"
        assert (rows[0]["database_name"], rows[0]["table_name"]) == ("old", "t")
        assert tuple(rows[0]) == LEGACY_COLUMNS
        connection = sqlite3.connect(internal)
        assert connection.execute(f"select count(*) from {LEGACY_TABLE}").fetchone() == (0,)
        connection.close()
        assert any("took over 11 event(s)" in r.getMessage() for r in caplog.records)


class TestRequestsNeverFail:
    """Whatever happens inside eventsink, the request that caused an event answers."""

    async def test_errors_and_hangs_are_counted_not_raised(
        self, tmp_path, receiver, monkeypatch, caplog
    ):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            state = get_state(datasette)
            pipeline = get_pipeline(datasette)

            def broken(*args, **kwargs):
                raise RuntimeError("Event loop is closed")

            async def fails_later():
                await asyncio.sleep(0)
                raise RuntimeError("Event loop is closed")

            def stuck(*args, **kwargs):
                return asyncio.Event().wait()

            with caplog.at_level(logging.WARNING, logger="eventsink"):
                monkeypatch.setattr(pipeline, "write_on_loop", broken)
                await write(
                    datasette, f"/{_db(datasette)}/-/create", {"table": "a", "row": {"a": 1}}
                )
                assert state.hook_errors == 2  # create-table and insert-rows
                monkeypatch.setattr(pipeline, "write_on_loop", lambda *a, **k: fails_later())
                await write(datasette, f"/{_db(datasette)}/a/-/insert", {"rows": [{"a": 2}]})
                assert state.hook_errors == 3
                monkeypatch.setattr(plugin, "HOOK_TIMEOUT", 0.05)
                monkeypatch.setattr(pipeline, "write_on_loop", stuck)
                await write(datasette, f"/{_db(datasette)}/a/-/insert", {"rows": [{"a": 2}]})
                assert state.hook_errors == 4
                monkeypatch.setattr(plugin, "event_row", lambda event: 1 / 0)
                await write(datasette, f"/{_db(datasette)}/a/-/insert", {"rows": [{"a": 2}]})
                assert state.hook_errors == 5
                assert pipeline.intake.dropped["plugin_error"] == 4  # the timeout may commit
                response = await datasette.client.get(
                    "/-/eventsink.json", headers={"Authorization": f"Bearer {datasette.test_token}"}
                )
                assert response.json()["hook_errors"] == 5
        messages = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
        assert messages[0].endswith("RuntimeError: Event loop is closed")
        assert len(messages) == 1  # throttled: once a minute

    async def test_a_write_that_must_wait_is_recorded_within_the_timeout(
        self, tmp_path, receiver, monkeypatch
    ):
        """Most events are committed at once, with no timer; one that has to wait (another
        writer holds the outbox, say) is awaited under the timeout, and recorded."""
        table = events_table()
        async with sender(tmp_path, {"eventsink": forwarding(receiver, table)}) as datasette:
            state = get_state(datasette)
            pipeline = get_pipeline(datasette)
            original = pipeline.write_async
            waited = []

            async def slow(*args, **kwargs):
                await asyncio.sleep(0.05)  # suspends the hook: the timeout guards the rest
                waited.append(await original(*args, **kwargs))
                await asyncio.sleep(0)

            monkeypatch.setattr(pipeline, "write_on_loop", slow)
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "w", "row": {"a": 1}})
            assert len(waited) == 2 and all(waited)  # create-table and insert-rows
            assert state.hook_errors == 0
            assert await pipeline.flush(timeout=10)
        assert {row["id"] for row in receiver.rows(table)} == set(waited)


class TestStartingWhereDatasetteServes:
    """The pipeline starts in startup only where startup runs on the serving loop."""

    @pytest.mark.parametrize(
        "version, same_loop",
        [
            ("1.0a20", False),
            ("1.0a38", False),
            ("1.0a39", True),
            ("1.0a41", True),
            ("1.0", True),
            ("1.1a1", True),
            ("0.65.2", False),
            ("unknown", True),
        ],
    )
    def test_serves_on_startup_loop(self, version, same_loop):
        assert plugin.serves_on_startup_loop(version) is same_loop

    async def test_before_1_0a39_the_first_event_starts_it(self, tmp_path, receiver, monkeypatch):
        monkeypatch.setattr(plugin, "serves_on_startup_loop", lambda: False)
        table = events_table()
        async with sender(tmp_path, {"eventsink": forwarding(receiver, table)}) as datasette:
            assert get_pipeline(datasette) is None
            await create_table(datasette, "a")
            assert await get_pipeline(datasette).flush(timeout=10)
        assert [row["event"] for row in receiver.rows(table)] == ["create-table", "insert-rows"]


async def lifespan(app) -> list[dict]:
    """Drive ``app`` through an ASGI lifespan startup, then shutdown; return what it sent."""
    incoming: asyncio.Queue = asyncio.Queue()
    sent: list[dict] = []
    await incoming.put({"type": "lifespan.startup"})

    async def send(message):
        sent.append(message)
        if message["type"].startswith("lifespan.startup."):
            await incoming.put({"type": "lifespan.shutdown"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, incoming.get, send))
    await asyncio.wait_for(task, 30)
    return sent


class TestLifespan:
    """Before 1.0a39 the pipeline starts at the ASGI lifespan startup and stops at shutdown."""

    async def test_lifespan_starts_and_stops_the_pipeline(self, tmp_path, monkeypatch):
        monkeypatch.setattr(plugin, "serves_on_startup_loop", lambda: False)
        config = {"sink": "file", "path": str(tmp_path / "events.jsonl"), "fsync": False}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            assert get_pipeline(datasette) is None
            sent = await lifespan(datasette.app())
            assert [m["type"] for m in sent] == [
                "lifespan.startup.complete",
                "lifespan.shutdown.complete",
            ]
            assert get_pipeline(datasette) is not None
            assert get_pipeline(datasette).closed

    async def test_a_sink_that_cannot_open_fails_the_lifespan_startup(self, tmp_path, monkeypatch):
        monkeypatch.setattr(plugin, "serves_on_startup_loop", lambda: False)
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        config = {"sink": "file", "path": str(blocker / "events.jsonl")}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            sent = await lifespan(datasette.app())
            assert sent[0]["type"] == "lifespan.startup.failed"
            assert sent[0]["message"].startswith("plugins.eventsink.path:")
