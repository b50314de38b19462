"""``eventsink status --prometheus``: an outbox file's gauges in the Prometheus text format."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner

from eventsink.cli import cli
from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.outbox.base import Failure
from eventsink.outbox.sqlite import SQLiteOutbox


def test_gauges_of_an_outbox_file(tmp_path):
    path = tmp_path / "outbox.db"

    async def fill() -> None:
        outbox = SQLiteOutbox(path)
        await outbox.open(["remote", "local"])
        ids = IdGenerator()
        events = [Event(*ids.new()[:1], "t", "i", ids.new()[1], {"n": n}) for n in range(3)]
        await outbox.append(events, ["remote", "local"])
        refused = Failure("403 from https://example.com/db: needs insert-row", 403, paused=True)
        await outbox.record_failure("remote", await outbox.lease("remote", 10), refused)
        await outbox.runner.close()

    asyncio.run(fill())
    result = CliRunner().invoke(cli, ["status", "--prometheus", "--outbox", str(path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "# TYPE eventsink_pending_events gauge" in text
    assert 'eventsink_pending_events{sink="remote"} 3' in text
    assert 'eventsink_pending_events{sink="local"} 3' in text
    assert 'eventsink_sink_paused{sink="remote"} 1' in text
    assert 'eventsink_sink_paused{sink="local"} 0' in text
    assert 'eventsink_oldest_pending_age_seconds{sink="local"}' in text
    # counters live in the delivering process, not in the file
    assert "eventsink_events_delivered_total" not in text
