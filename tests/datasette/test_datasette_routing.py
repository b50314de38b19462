"""Per-database routing: each database's events go to the table its config names."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest
from datasette.app import Datasette
from datasette.events import LoginEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from eventsink.datasette import routing
from eventsink.datasette.plugin import PluginConfigError, get_pipeline
from eventsink.datasette.routing import Route, Router, parse_router
from eventsink.exceptions import ConfigError


def router(**keys):
    keys.setdefault("table", "datasette_events")
    keys.setdefault("events", None)
    keys.setdefault("exclude_events", None)
    keys.setdefault("databases", None)
    return parse_router(**keys)


def table_of(routes: Router, database, event, instance):
    target = routes.target(database, event, instance)
    return None if target is None else target.table


class TestRouter:
    """The router picks a database's entry, then '*', then the top level."""

    def test_template_per_database_and_default_for_none(self):
        routes = router(databases={"*": {"table": "{database}_events"}})
        assert table_of(routes, "sales", "insert-rows", "host") == "sales_events"
        assert table_of(routes, "hr", "insert-rows", "host") == "hr_events"
        assert table_of(routes, None, "login", "host") == "datasette_events"

    def test_named_database_wins_over_wildcard_key_by_key(self):
        routes = router(
            databases={
                "*": {"table": "{database}_events", "exclude_events": ["update-row"]},
                "scratch": {"events": []},
                "audit": {"table": "audit_{instance}"},
            }
        )
        assert table_of(routes, "scratch", "insert-rows", "h") is None
        assert table_of(routes, "audit", "insert-rows", "h1") == "audit_h1"
        assert table_of(routes, "audit", "update-row", "h1") is None  # from '*'
        assert table_of(routes, "other", "update-row", "h1") is None

    def test_top_level_filters_apply_to_databases_without_entries(self):
        routes = router(events=["login", "insert-rows"], databases={"a": {"table": "a_t"}})
        assert table_of(routes, None, "login", "h") == "datasette_events"
        assert table_of(routes, "b", "create-table", "h") is None
        assert table_of(routes, "a", "insert-rows", "h") == "a_t"
        assert table_of(routes, "a", "create-table", "h") is None

    def test_database_level_plugin_block_is_overridden_by_databases_section(self):
        routes = router(
            databases={"a": {"exclude_events": ["login"]}},
            database_level={"a": {"table": "from_block", "exclude_events": []}, "b": {}},
        )
        assert table_of(routes, "a", "insert-rows", "h") == "from_block"
        assert table_of(routes, "a", "login", "h") is None
        assert table_of(routes, "b", "insert-rows", "h") == "datasette_events"

    @pytest.mark.parametrize(
        "keys, key, words",
        [
            ({"table": "{database}_events"}, "table", "{database}"),
            ({"table": "{db}_events"}, "table", "{db}"),
            ({"databases": {"a": {"table": "{nope}"}}}, "databases.a.table", "{nope}"),
            ({"databases": {"a": {"tabel": "x"}}}, "databases.a.tabel", "Did you mean 'table'"),
            ({"databases": {"a": "x"}}, "databases.a", "must be an object"),
            ({"databases": ["a"]}, "databases", "must be an object"),
            ({"databases": {"a": {"events": 3}}}, "databases.a.events", "a list"),
            ({"table": "x{"}, "table", "not a valid table template"),
        ],
    )
    def test_bad_routing_names_the_key(self, keys, key, words):
        with pytest.raises(ConfigError) as raised:
            router(**keys)
        assert raised.value.key == key and words in str(raised.value)

    def test_sinks_choose_among_the_configured_names(self):
        routes = router(
            databases={"*": {"sinks": ["main"]}, "b": {"sinks": ["archive"]}, "c": {}},
            sink_names=["main", "archive"],
        )
        assert routes.target("a", "insert-rows", "h").sinks == {"main"}
        assert routes.target("b", "insert-rows", "h").sinks == {"archive"}
        assert routes.target("c", "insert-rows", "h").sinks == {"main"}  # from '*'
        assert routes.target(None, "login", "h").sinks is None  # every sink
        every = router(
            databases={"a": {"sinks": ["archive", "main"]}}, sink_names=["main", "archive"]
        )
        assert every.target("a", "insert-rows", "h").sinks is None

    @pytest.mark.parametrize(
        "chosen, words",
        [
            (
                ["mian"],
                "names the sink 'mian', which is not configured; the configured sinks are "
                "'archive', 'main'",
            ),
            ([], "at least one sink (to forward nothing from this database, use 'events: []')"),
            ([{"type": "file"}], "lists sinks by name"),
            (3, "a list"),
        ],
    )
    def test_bad_sinks_name_the_key(self, chosen, words):
        with pytest.raises(ConfigError) as raised:
            router(databases={"a": {"sinks": chosen}}, sink_names=["main", "archive"])
        assert raised.value.key == "databases.a.sinks" and words in str(raised.value)

    def test_route_repr(self):
        assert "default=Route(table='t'" in repr(Router(Route("t")))

    @settings(max_examples=50, deadline=None)
    @given(
        lookups=st.lists(
            st.tuples(
                st.sampled_from([None, "sales", "hr", "scratch", "audit", "x"]),
                st.sampled_from(["login", "insert-rows", "update-row", "create-table"]),
                st.sampled_from(["h1", "h2"]),
            ),
            max_size=60,
        ),
        kept=st.integers(1, 8),
    )
    def test_remembered_targets_are_the_ones_worked_out(self, lookups, kept):
        """Targets are remembered per (database, event, instance), in a bounded table: every
        answer is the one worked out afresh."""
        databases = {
            "*": {"table": "{database}_{event}", "exclude_events": ["update-row"]},
            "scratch": {"events": []},
            "audit": {"table": "audit_{instance}", "sinks": ["a"]},
        }
        routes = router(databases=databases, sink_names=["a", "b"])
        fresh = router(databases=databases, sink_names=["a", "b"])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(routing, "TARGETS_KEPT", kept)
            for lookup in lookups:
                assert routes.target(*lookup) == fresh._target(*lookup)
                assert len(routes._targets) <= kept


@contextlib.asynccontextmanager
async def two_database_sender(
    tmp_path: Path, plugins: dict, config: dict | None = None, names: list[str] | None = None
):
    names = names or [f"db{uuid.uuid4().hex[:4]}", f"db{uuid.uuid4().hex[:4]}"]
    paths = []
    for name in names:
        path = tmp_path / f"{name}.db"
        sqlite3.connect(path).close()
        paths.append(str(path))
    datasette = Datasette(paths, config={**(config or {}), "plugins": plugins})
    datasette.root_enabled = True
    await datasette.invoke_startup()
    token = await datasette.create_token("root")
    datasette.test_headers = {"Authorization": f"Bearer {token}"}
    try:
        yield datasette, names
    finally:
        await datasette.invoke_shutdown()


async def make_events(datasette: Datasette, database: str, inserts: int) -> None:
    headers = datasette.test_headers
    response = await datasette.client.post(
        f"/{database}/-/create", json={"table": "t", "row": {"n": 0}}, headers=headers
    )
    assert response.status_code == 201, response.text
    for n in range(inserts):
        response = await datasette.client.post(
            f"/{database}/t/-/insert", json={"rows": [{"n": n}]}, headers=headers
        )
        assert response.status_code == 201, response.text


class TestRoutingToAReceiver:
    """Two databases routed by a {database} template land in two tables of a real receiver."""

    async def test_each_table_holds_exactly_its_databases_events(self, tmp_path, receiver):
        prefix = f"r{uuid.uuid4().hex[:6]}"
        plugins = {
            "eventsink": {
                "api_url": f"{receiver.db_url}/-/create",
                "api_token": receiver.token,
                "table": f"{prefix}_none",
                "databases": {"*": {"table": prefix + "_{database}"}},
            }
        }
        async with two_database_sender(tmp_path, plugins) as (datasette, (one, two)):
            await make_events(datasette, one, 3)  # 2 + 3 events
            await make_events(datasette, two, 1)  # 2 + 1 events
            await datasette.track_event(LoginEvent(actor={"id": "someone"}))
            assert await get_pipeline(datasette).flush(timeout=10)
        first, second = receiver.rows(f"{prefix}_{one}"), receiver.rows(f"{prefix}_{two}")
        assert len(first) == 5 and {row["database_name"] for row in first} == {one}
        assert len(second) == 3 and {row["database_name"] for row in second} == {two}
        [login] = receiver.rows(f"{prefix}_none")
        assert (login["event"], login["database_name"]) == ("login", None)

    async def test_database_level_plugin_block(self, tmp_path, receiver):
        prefix = f"r{uuid.uuid4().hex[:6]}"
        plugins = {
            "eventsink": {
                "api_url": f"{receiver.db_url}/-/create",
                "api_token": receiver.token,
                "table": f"{prefix}_rest",
            }
        }
        one, two = f"db{uuid.uuid4().hex[:4]}", f"db{uuid.uuid4().hex[:4]}"
        block = {"table": f"{prefix}_own", "events": ["insert-rows"]}
        config = {"databases": {one: {"plugins": {"eventsink": block}}}}
        async with two_database_sender(tmp_path, plugins, config, [one, two]) as (datasette, _):
            await make_events(datasette, one, 2)
            await make_events(datasette, two, 1)
            assert await get_pipeline(datasette).flush(timeout=10)
        own, rest = receiver.rows(f"{prefix}_own"), receiver.rows(f"{prefix}_rest")
        assert [row["event"] for row in own] == ["insert-rows"] * 3
        assert {row["database_name"] for row in own} == {one}
        assert len(rest) == 3 and {row["database_name"] for row in rest} == {two}

    async def test_each_database_reaches_only_the_sinks_it_names(
        self, tmp_path, receiver, small_receiver
    ):
        """Two receivers: one database's events go to the first only, the other's to the
        second only, events of no database to both; each row arrives once."""
        table = f"r{uuid.uuid4().hex[:6]}"
        plugins = {
            "eventsink": {
                "sinks": [
                    {
                        "type": "datasette",
                        "name": "main",
                        "api_url": f"{receiver.db_url}/-/create",
                        "api_token": receiver.token,
                    },
                    {
                        "type": "datasette",
                        "name": "archive",
                        "api_url": f"{small_receiver.db_url}/-/create",
                        "api_token": small_receiver.token,
                    },
                ],
                "table": table,
            }
        }
        one, two = f"db{uuid.uuid4().hex[:4]}", f"db{uuid.uuid4().hex[:4]}"
        plugins["eventsink"]["databases"] = {one: {"sinks": ["main"]}, two: {"sinks": ["archive"]}}
        async with two_database_sender(tmp_path, plugins, names=[one, two]) as (datasette, _):
            await make_events(datasette, one, 3)  # 2 + 3 events
            await make_events(datasette, two, 12)  # 2 + 12 events
            await datasette.track_event(LoginEvent(actor={"id": "someone"}))
            assert await get_pipeline(datasette).flush(timeout=20)
        main, archive = receiver.rows(table), small_receiver.rows(table)
        assert sorted(row["database_name"] or "-" for row in main) == ["-"] + [one] * 5
        assert sorted(row["database_name"] or "-" for row in archive) == ["-"] + [two] * 14
        [login] = [row for row in archive if row["event"] == "login"]
        assert login["id"] in {row["id"] for row in main}  # one event, the same id in both

    async def test_unknown_sink_name_stops_startup_naming_the_key(self, tmp_path):
        plugins = {
            "eventsink": {
                "api_url": "http://127.0.0.1:9/db/-/create",
                "databases": {"a": {"sinks": ["archive"]}},
            }
        }
        with pytest.raises(PluginConfigError) as raised:
            async with two_database_sender(tmp_path, plugins):
                pass
        assert "plugins.eventsink.databases.a.sinks" in str(raised.value)
        assert "the configured sinks are 'datasette'" in str(raised.value)

    async def test_bad_routing_stops_startup_naming_the_key(self, tmp_path):
        plugins = {
            "eventsink": {
                "api_url": "http://127.0.0.1:9/db/-/create",
                "databases": {"a": {"table": "{tabel}"}},
            }
        }
        with pytest.raises(PluginConfigError) as raised:
            async with two_database_sender(tmp_path, plugins):
                pass
        assert "plugins.eventsink.databases.a.table" in str(raised.value)
