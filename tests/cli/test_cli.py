"""The eventsink command: send, status, replay and sinks, in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eventsink.cli import cli
from eventsink.event import Event

from ..conftest import table_rows

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI in ``tmp_path`` with a private outbox."""
    monkeypatch.chdir(tmp_path)
    outbox = str(tmp_path / "outbox.db")

    def invoke(*args: str, input: bytes | str | None = None, outbox_flag: bool = True):
        extra = (
            ["--outbox", outbox] if outbox_flag and args[0] in {"send", "status", "replay"} else []
        )
        return CliRunner().invoke(cli, [*args, *extra], input=input, catch_exceptions=False)

    return invoke


def lines(count: int, bad: dict[int, str] | None = None) -> str:
    bad = bad or {}
    return "".join(
        (bad[number] if number in bad else json.dumps({"n": number, "kind": "tick"})) + "\n"
        for number in range(1, count + 1)
    )


class TestSend:
    """send reads JSON lines, JSON arrays and CSV and writes them to events.db by default."""

    def test_example_file_lands_in_events_db_with_ulid_ids(self, run, tmp_path):
        from ulid import ULID

        result = run("send", str(EXAMPLES / "events.jsonl"))
        assert result.exit_code == 0, result.output
        stored = table_rows(tmp_path / "events.db", "events")
        source = (EXAMPLES / "events.jsonl").read_text().splitlines()
        assert len(stored) == len(source)
        assert all(str(ULID.from_str(row["id"])) == row["id"] for row in stored)
        assert [row["user"] for row in stored] == [json.loads(line)["user"] for line in source]
        assert f"Sent {len(source)} to sqlite {tmp_path / 'events.db'}" in result.output

    def test_malformed_lines_are_reported_with_numbers_and_the_rest_delivered(self, run, tmp_path):
        (tmp_path / "in.jsonl").write_text(
            lines(1000, {17: "{not json", 500: "[1, 2]", 999: '{"id": "mine", "n": 1}'})
        )
        result = run("send", "in.jsonl", "--table", "ticks", "--rejects", "rejects.jsonl")
        assert result.exit_code == 3
        assert len(table_rows(tmp_path / "events.db", "ticks")) == 997
        for number in (17, 500, 999):
            assert f"in.jsonl, line {number}:" in result.output
        assert "'id' is reserved" in result.output
        assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 3
        assert "Read 997 event(s), 3 malformed." in result.output

    def test_json_array_and_csv_and_table_field(self, run, tmp_path):
        (tmp_path / "a.json").write_text(
            json.dumps([{"type": "signup", "user": "ada"}, {"type": "login", "user": "bob"}, 3])
        )
        (tmp_path / "people.csv").write_text("name,age,zip\nada,36,02134\nbob,4.5,10001\nx,1\n")
        result = run("send", "a.json", "people.csv", "--table-field", "type")
        assert result.exit_code == 3  # item 3 of a.json and line 4 of people.csv
        assert "a.json, item 3: a JSON int, not an object" in result.output
        assert "people.csv, line 4: 2 fields where the header has 3" in result.output
        db = tmp_path / "events.db"
        assert [row["user"] for row in table_rows(db, "signup")] == ["ada"]
        assert "type" not in table_rows(db, "login")[0]
        people = table_rows(db, "people")  # no 'type' field: the file's name
        assert [(row["name"], row["age"], row["zip"]) for row in people] == [
            ("ada", 36.0, "02134"),  # a REAL column (4.5 below); 02134 stays text
            ("bob", 4.5, "10001"),  # the zip column is TEXT since its first value
        ]

    def test_stdin_with_an_explicit_sink_and_options(self, run, tmp_path):
        result = run(
            "send",
            "-",
            "--sink",
            "file",
            "-o",
            "path=out.jsonl",
            "-o",
            "fsync=false",
            input=lines(5),
        )
        assert result.exit_code == 0, result.output
        written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [event["data"]["n"] for event in written] == [1, 2, 3, 4, 5]
        assert {event["table"] for event in written} == {"events"}
        # The file sink's output is an envelope: sending it again keeps ids (idempotent).
        again = run("send", "out.jsonl", "--table", "copy")
        assert again.exit_code == 0
        again = run("send", "out.jsonl", "--table", "copy")
        copied = table_rows(tmp_path / "events.db", "copy")
        assert [row["id"] for row in copied] == [event["id"] for event in written]

    def test_config_file_yaml(self, run, tmp_path):
        (tmp_path / "es.yaml").write_text("sink: sqlite\npath: other.db\nbatch_limit: 7\n")
        result = run("send", "--config", "es.yaml", "-t", "t", input=lines(20))
        assert result.exit_code == 0, result.output
        assert len(table_rows(tmp_path / "other.db", "t")) == 20

    def test_bad_config_names_the_key(self, run):
        result = run("send", "--sink", "sqlite", "-o", "tabel=x", input=lines(1))
        assert result.exit_code == 2
        assert "'tabel'" in result.output and "Did you mean 'table'" in result.output
        result = run("send", "--sink", "nope", input=lines(1))
        assert result.exit_code == 2 and "no sink named 'nope'" in result.output


def make_dead_letters(run, tmp_path) -> None:
    """Send 5 events into a table whose CHECK constraint refuses 2 of them."""
    connection = sqlite3.connect(tmp_path / "events.db")
    connection.execute(
        "create table events (id text primary key, instance text, created text, "
        "n integer check (n < 4))"
    )
    connection.close()
    result = run("send", "-t", "events", input=lines(5))
    assert result.exit_code == 3  # EXIT_DEAD_LETTERS
    assert "Dead-lettered 2 for sqlite" in result.output


class TestDeadLetters:
    """Dead letters make send fail, show in status and can be replayed."""

    def test_status_json_counts_and_replay_now(self, run, tmp_path):
        make_dead_letters(run, tmp_path)
        report = json.loads(run("status", "--json").output)
        name = f"sqlite {tmp_path / 'events.db'}"
        assert report["totals"] == {"pending": 0, "in_flight": 0, "dead_letters": 2}
        assert report["sinks"][name]["dead_letters"] == 2
        (group,) = report["dead_letters"]
        assert group["count"] == 2 and "CHECK constraint failed" in group["error"]
        human = run("status").output
        assert "dead letters 2" in human and "CHECK constraint failed" in human

        connection = sqlite3.connect(tmp_path / "events.db")
        connection.execute("alter table events rename to events_old")  # "fix the cause"
        connection.close()
        result = run("replay", "--to", "sqlite")
        assert result.exit_code == 0, result.output
        assert f"Moved 2 dead letter(s) of {name}" in result.output
        assert sorted(row["n"] for row in table_rows(tmp_path / "events.db", "events")) == [4, 5]
        assert json.loads(run("status", "--json").output)["totals"]["dead_letters"] == 0

    def test_replay_without_a_sink_moves_them_for_a_running_process(self, run, tmp_path):
        make_dead_letters(run, tmp_path)
        result = run("replay", "--sink", "sqlite", "--since", "2000-01-01T00:00:00Z")
        assert result.exit_code == 0
        assert "Moved 2 dead letter(s)" in result.output
        report = json.loads(run("status", "--json").output)
        assert report["totals"] == {"pending": 2, "in_flight": 0, "dead_letters": 0}
        assert run("replay", "--since", "yesterday").exit_code == 2

    def test_status_tells_a_paused_sink_from_a_retrying_one(self, run, tmp_path):
        import asyncio

        from eventsink.ids import IdGenerator
        from eventsink.outbox.base import Failure
        from eventsink.outbox.sqlite import SQLiteOutbox

        async def fail_twice() -> None:
            outbox = SQLiteOutbox(tmp_path / "outbox.db")
            await outbox.open(["remote", "flaky"])
            event_id, created = IdGenerator().new()
            event = Event(event_id, "t", "i", created, {"n": 1})
            await outbox.append([event], ["remote", "flaky"])
            refused = Failure(
                "403 from https://example.com/db: needs insert-row", 403, 3, paused=True
            )
            await outbox.record_failure("remote", await outbox.lease("remote", 10), refused)
            busy = Failure("503 Service Unavailable", 503, 2)
            await outbox.record_failure("flaky", await outbox.lease("flaky", 10), busy)
            await outbox.runner.close()  # like a crash: the failures stay recorded

        asyncio.run(fail_twice())
        report = json.loads(run("status", "--json").output)
        remote, flaky = report["sinks"]["remote"]["failing"], report["sinks"]["flaky"]["failing"]
        assert (remote["paused"], remote["status"], remote["attempts"]) == (True, 403, 3)
        assert (flaky["paused"], flaky["status"]) == (False, 503)
        human = run("status").output
        assert "remote: PAUSED until the cause is fixed, 3 attempt(s)" in human
        assert "flaky: retrying, 2 attempt(s)" in human

    def test_status_of_a_missing_outbox(self, run, tmp_path):
        report = json.loads(run("status", "--json").output)
        assert report["exists"] is False and report["totals"]["pending"] == 0
        assert not (tmp_path / "outbox.db").exists()


class TestSinks:
    """sinks lists every installed sink with its options."""

    def test_lists_builtins_with_options(self, run):
        result = run("sinks")
        for name in ("file", "null", "sqlite", "stdout"):
            assert f"{name} (built-in)" in result.output
        assert "path (str, default: 'events.db')" in result.output
        data = json.loads(run("sinks", "--json").output)
        sqlite = next(sink for sink in data["sinks"] if sink["name"] == "sqlite")
        assert [option["name"] for option in sqlite["options"]] == ["path", "table", "durability"]
        assert "batch_limit" in {option["name"] for option in data["delivery_options"]}


class TestHelp:
    """Every command has --help with examples."""

    @pytest.mark.parametrize("command", ["send", "status", "replay", "sinks"])
    def test_help_has_examples(self, run, command):
        result = run(command, "--help", outbox_flag=False)
        assert result.exit_code == 0 and "Examples:" in result.output


class TestSubprocess:
    """The installed command end to end, as a user runs it."""

    def test_piped_lines_and_malformed_report_through_a_real_process(self, tmp_path):
        command = [str(Path(sys.executable).parent / "eventsink"), "send", "--outbox", "ob.db"]
        data = lines(1000, {3: "oops", 400: "{", 1000: '"text"'})
        result = subprocess.run(
            command,
            input=data.encode(),
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "120"},
        )
        assert result.returncode == 3, result.stderr
        stderr = result.stderr.decode()
        for number in (3, 400, 1000):
            assert f"<stdin>, line {number}:" in stderr
        assert len(table_rows(tmp_path / "events.db", "events")) == 997
        assert b"Browse them with: datasette events.db" in result.stdout
