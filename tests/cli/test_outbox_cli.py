"""``eventsink outbox move`` and ``drop``: on purpose, after confirmation, never under a
running process; and ``eventsink status`` naming destinations nobody delivers."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from eventsink.cli import cli
from eventsink.outbox import Failure
from eventsink.outbox.sqlite import SQLiteOutbox

from ..outbox.test_sqlite_outbox import make_events

A, B = "sqlite /x/a.db", "sqlite /x/b.db"


def fill(path, destination: str, count: int, dead: int = 0) -> None:
    """Leave ``count`` pending events and ``dead`` dead letters for ``destination``."""

    async def go():
        outbox = SQLiteOutbox(path)
        await outbox.open()
        await outbox.append(make_events(count + dead), [destination])
        if dead:
            leased = await outbox.lease(destination, dead)
            await outbox.dead_letter(destination, leased, Failure("refused", 400))
        await outbox.close()

    asyncio.run(go())


def backlog(path) -> dict[str, tuple[int, int]]:
    async def go():
        outbox = SQLiteOutbox(path)
        try:
            return await outbox.backlog()
        finally:
            await outbox.runner.close()

    return {key: (held.pending, held.dead_letters) for key, held in asyncio.run(go()).items()}


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def outbox(tmp_path):
    path = tmp_path / "outbox.db"
    fill(path, A, 30, dead=2)
    fill(path, B, 5)
    return str(path)


class TestMove:
    """move gives one destination's pending events and dead letters to another."""

    def test_asks_first_and_does_nothing_when_refused(self, outbox):
        result = run("outbox", "move", A, "sqlite /y/a.db", "--outbox", outbox, input="n\n")
        assert result.exit_code == 1
        assert f"Move 30 pending event(s) and 2 dead letter(s) from {A!r}" in result.output
        assert backlog(outbox)[A] == (30, 2)

    def test_moves_when_confirmed(self, outbox):
        result = run("outbox", "move", A, "sqlite /y/a.db", "--outbox", outbox, input="y\n")
        assert result.exit_code == 0, result.output
        assert "Moved 30 pending event(s) and 2 dead letter(s)" in result.output
        held = backlog(outbox)
        assert A not in held and held["sqlite /y/a.db"] == (30, 2) and held[B] == (5, 0)

    def test_yes_skips_the_question(self, outbox):
        result = run("outbox", "move", A, B, "--outbox", outbox, "--yes")
        assert result.exit_code == 0 and "?" not in result.output
        assert backlog(outbox)[B] == (35, 2)

    def test_an_unknown_source_is_nothing_to_do_and_names_what_the_outbox_holds(self, outbox):
        result = run("outbox", "move", "sqlite /nope", B, "--outbox", outbox)
        assert result.exit_code == 0  # no question asked: nothing would change
        assert "holds nothing for 'sqlite /nope'" in result.output
        assert repr(A) in result.output and repr(B) in result.output
        assert backlog(outbox) == {A: (30, 2), B: (5, 0)}

    def test_refuses_while_a_running_process_delivers_there(self, outbox):
        live = SQLiteOutbox(outbox)
        asyncio.run(live.open({A: "events"}))  # its owner row stays live until close
        try:
            result = run("outbox", "move", A, B, "--outbox", outbox, "--yes")
            assert result.exit_code == 1
            assert "a running process delivers to" in result.output
            assert "sink events" in result.output
            assert backlog(outbox)[A] == (30, 2)
        finally:
            asyncio.run(live.close())

    def test_no_outbox_file_is_nothing_to_do(self, tmp_path):
        missing = tmp_path / "none.db"
        result = run("outbox", "move", A, B, "--outbox", str(missing))
        assert result.exit_code == 0 and "No outbox file" in result.output
        assert not missing.exists()  # not created


class TestDrop:
    """drop deletes one destination's pending events and dead letters for good."""

    def test_asks_first(self, outbox):
        result = run("outbox", "drop", A, "--outbox", outbox, input="n\n")
        assert result.exit_code == 1
        assert "cannot be recovered" in result.output
        assert backlog(outbox)[A] == (30, 2)

    def test_drops_when_confirmed(self, outbox):
        result = run("outbox", "drop", A, "--outbox", outbox, input="y\n")
        assert result.exit_code == 0
        assert "Deleted 30 pending event(s) and 2 dead letter(s)" in result.output
        assert backlog(outbox) == {B: (5, 0)}

    def test_yes_skips_the_question(self, outbox):
        result = run("outbox", "drop", B, "--outbox", outbox, "-y")
        assert result.exit_code == 0
        assert B not in backlog(outbox)
        again = run("outbox", "drop", B, "--outbox", outbox)  # done already: nothing to ask
        assert again.exit_code == 0 and "holds nothing for" in again.output


class TestStatusNamesUndelivered:
    """status lists pending destinations that no running process serves."""

    def test_text_and_json(self, outbox):
        live = SQLiteOutbox(outbox)
        asyncio.run(live.open({B: "events"}))
        try:
            shown = run("status", "--outbox", outbox).output
            report = json.loads(run("status", "--outbox", outbox, "--json").output)
        finally:
            asyncio.run(live.close())
        assert f"30 pending for {A}, no process delivering" in shown
        assert "eventsink outbox move" in shown
        assert f"pending for {B}" not in shown  # a live process serves it
        assert report["undelivered"] == [{"destination": A, "pending": 30}]
        assert report["sinks"][B]["served_by"] == ["events"]
        assert report["sinks"][A]["served_by"] == []
