"""The plugin under a real ``datasette serve``, and silent in commands that do not serve."""

from __future__ import annotations

import subprocess

import pytest

from eventsink.datasette.takeover import LEGACY_COLUMNS
from eventsink.testing.receiver import _datasette_command
from eventsink.testing.sender import DatasetteSender

from ..conftest import wait_until
from .test_datasette_plugin import events_table


def plugins_for(receiver, **extra):
    return {
        "eventsink": {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
            "flush_interval": 0.2,
            **extra,
        }
    }


@pytest.mark.slow
class TestServe:
    """A served sender answers every write request and forwards each event once."""

    def test_every_event_arrives_once_in_the_original_column_order(self, receiver):
        table = events_table()
        with DatasetteSender(plugins_for(receiver, table=table)) as sender:
            result = sender.make_events(12)
            assert (result.failed, result.hung, result.events) == ([], 0, 12)
            wait_until(lambda: len(receiver.rows(table)) >= 12, timeout=30)
            sender.stop()
            assert "Traceback" not in sender.log
        rows = receiver.rows(table)
        assert len(rows) == len({row["id"] for row in rows}) == 12
        assert tuple(rows[0]) == LEGACY_COLUMNS

    def test_two_databases_routed_by_a_template(self, receiver):
        prefix = events_table()
        plugins = plugins_for(
            receiver, table=f"{prefix}_none", databases={"*": {"table": prefix + "_{database}"}}
        )
        with DatasetteSender(plugins, databases=("sales", "staff")) as sender:
            for database, count in (("sales", 5), ("staff", 3), ("data", 2)):
                result = sender.make_events(count, database=database)
                assert (result.failed, result.hung) == ([], 0)
            wait_until(lambda: len(receiver.rows(f"{prefix}_data")) == 2, timeout=30)
            wait_until(lambda: len(receiver.rows(f"{prefix}_staff")) == 3, timeout=30)
            wait_until(lambda: len(receiver.rows(f"{prefix}_sales")) == 5, timeout=30)
        for database, count in (("sales", 5), ("staff", 3), ("data", 2)):
            rows = receiver.rows(f"{prefix}_{database}")
            assert len(rows) == count and {row["database_name"] for row in rows} == {database}
        assert receiver.rows(f"{prefix}_none") == []

    def test_no_sink_configured_is_said_once_when_serving(self):
        with DatasetteSender({}) as sender:
            sender.make_events(2)
            sender.stop()
            assert sender.log.count("no sink configured") == 1


class TestQuietCommands:
    """Commands that only run Datasette's startup print nothing from eventsink."""

    def test_create_token_is_silent(self):
        result = subprocess.run(
            [*_datasette_command(), "create-token", "root", "--secret", "s3cret"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert result.stdout.strip() and "eventsink" not in result.stderr
