"""An eventsink plugin whose enrich or filter hook raises never fails the host's request."""

from __future__ import annotations

import pytest

import eventsink.datasette.plugin as plugin_module
from eventsink import hookimpl
from eventsink.datasette.plugin import get_pipeline
from eventsink.plugins import make_plugin_manager

from .test_datasette_plugin import _db, events_table, sender, write


class Broken:
    """Both chained hooks raise on every event."""

    @hookimpl
    def eventsink_enrich(self, event):
        raise RuntimeError("enrich is broken")

    @hookimpl
    def eventsink_filter(self, event):
        raise RuntimeError("filter is broken")


class TestRaisingHooksInDatasette:
    """Requests succeed, every event arrives once, the plugin is named in the log."""

    @pytest.mark.slow  # ~3 s: a Datasette flushing to a real receiver
    async def test_requests_succeed_and_events_arrive(
        self, tmp_path, receiver, monkeypatch: pytest.MonkeyPatch, caplog
    ):
        def with_broken_plugin(**kwargs):
            pm = make_plugin_manager(**kwargs)
            pm.register(Broken(), name="broken-plugin")
            return pm

        monkeypatch.setattr(plugin_module, "make_plugin_manager", with_broken_plugin)
        table = events_table()
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": {**config, "table": table}}) as datasette:
            # write() asserts each request answers 201: a raising hook fails none of them
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            await write(datasette, f"/{_db(datasette)}/x/-/insert", {"rows": [{"a": 2}]})
            assert await get_pipeline(datasette).flush(timeout=10)
        rows = receiver.rows(table)
        assert [row["event"] for row in rows] == ["create-table", "insert-rows", "insert-rows"]
        assert len({row["id"] for row in rows}) == 3
        named = [r.getMessage() for r in caplog.records if "broken-plugin" in r.getMessage()]
        assert any("eventsink_enrich" in message for message in named)
        assert any("eventsink_filter" in message for message in named)
