"""``eventsink send`` from files into a local sink: straight from the file, nothing lost.

The file is the events' durable record (their ids are the same each time it is read), so only
events whose delivery fails, or that are left when a run stops, are written to the outbox.
Real subprocesses for the kill: a run killed half-way and run again ends with exactly the
input.
"""

from __future__ import annotations

import json
import signal
import sqlite3

import pytest
from click.testing import CliRunner

from eventsink.cli import cli

from ..conftest import table_rows
from .test_interrupt import count_rows, send_big_again, start_sending_big

STRAIGHT = "delivering straight from the file(s)"


def write_lines(path, count: int) -> None:
    with path.open("w") as file:
        for number in range(count):
            file.write(json.dumps({"n": number, "kind": "tick"}) + "\n")


def send(tmp_path, *args: str, input: str | None = None):
    return CliRunner().invoke(
        cli,
        ["send", *args, "--outbox", str(tmp_path / "outbox.db"), "-v"],
        input=input,
        catch_exceptions=False,
    )


class TestWhenTheOutboxIsSkipped:
    """Only files into local sinks skip the outbox; stdin and remote sinks keep it."""

    def test_a_file_into_sqlite_is_delivered_straight(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        write_lines(tmp_path / "ticks.jsonl", 1000)
        result = send(tmp_path, "ticks.jsonl")
        assert result.exit_code == 0, result.output
        assert STRAIGHT in result.output
        assert sorted(row["n"] for row in table_rows(tmp_path / "events.db", "ticks")) == list(
            range(1000)
        )
        again = send(tmp_path, "ticks.jsonl")  # the same file again: the same ids, ignored
        assert again.exit_code == 0
        assert len(table_rows(tmp_path / "events.db", "ticks")) == 1000

    def test_stdin_and_via_outbox_and_a_remote_sink_keep_the_outbox(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        write_lines(tmp_path / "ticks.jsonl", 10)
        piped = send(tmp_path, "-t", "ticks", input=(tmp_path / "ticks.jsonl").read_text())
        assert piped.exit_code == 0 and STRAIGHT not in piped.output
        forced = send(tmp_path, "ticks.jsonl", "--via-outbox")
        assert forced.exit_code == 0 and STRAIGHT not in forced.output
        to_file = send(tmp_path, "ticks.jsonl", "--sink", "file", "-o", "path=out.jsonl")
        assert to_file.exit_code == 0 and STRAIGHT not in to_file.output  # not idempotent
        # Piped lines get new ids; the file's are the same in both of its runs.
        assert len(table_rows(tmp_path / "events.db", "ticks")) == 20

    def test_refused_rows_are_dead_lettered_in_the_outbox_and_replayable(
        self, tmp_path, monkeypatch
    ):
        monkeypatch.chdir(tmp_path)
        connection = sqlite3.connect(tmp_path / "events.db")
        connection.execute(
            "create table ticks (id text primary key, instance text, created text, "
            "n integer check (n < 7), kind text)"
        )
        connection.close()
        write_lines(tmp_path / "ticks.jsonl", 10)
        result = send(tmp_path, "ticks.jsonl")
        assert result.exit_code == 3, result.output  # some set aside, the rest delivered
        assert STRAIGHT in result.output and "Dead-lettered 3 for sqlite" in result.output
        assert sorted(row["n"] for row in table_rows(tmp_path / "events.db", "ticks")) == list(
            range(7)
        )
        status = CliRunner().invoke(
            cli, ["status", "--json", "--outbox", str(tmp_path / "outbox.db")]
        )
        assert json.loads(status.output)["totals"]["dead_letters"] == 3

        connection = sqlite3.connect(tmp_path / "events.db")
        connection.execute("alter table ticks rename to ticks_old")  # "fix the cause"
        connection.close()
        replay = CliRunner().invoke(
            cli, ["replay", "--to", "sqlite", "--outbox", str(tmp_path / "outbox.db")]
        )
        assert replay.exit_code == 0, replay.output
        assert sorted(row["n"] for row in table_rows(tmp_path / "events.db", "ticks")) == [7, 8, 9]


LINES = 300_000


@pytest.mark.slow
class TestKilledHalfWay:
    """SIGKILL in the middle of delivery; the same command again ends with exactly the input."""

    def test_run_again_gives_exactly_the_input(self, tmp_path):
        write_lines(tmp_path / "big.jsonl", LINES)
        events_db, outbox = tmp_path / "events.db", tmp_path / "outbox.db"
        process = start_sending_big(tmp_path, outbox)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        (delivered,) = count_rows(events_db, "select count(*) from big")
        assert 0 < delivered < LINES, "send finished before it could be killed"
        # Straight from the file: the killed run stored nothing in the outbox.
        assert count_rows(outbox, "select coalesce(sum(events), 0) from eventsink_outbox") == (0,)

        send_big_again(tmp_path, outbox)
        assert count_rows(
            events_db, "select count(*), count(distinct id), min(n), max(n) from big"
        ) == (LINES, LINES, 0, LINES - 1)
