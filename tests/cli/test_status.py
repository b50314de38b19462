"""``eventsink status --check`` for cron and monitoring, against real receivers and processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eventsink.testing import wait_until

from .test_interrupt import count_rows

EVENTSINK = str(Path(sys.executable).parent / "eventsink")


def eventsink(tmp_path: Path, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EVENTSINK, *args, "--outbox", str(tmp_path / "outbox.db")],
        input=input,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


class TestCheck:
    """--check is non-zero while a sink is paused and 0 once everything is delivered."""

    @pytest.mark.slow
    def test_a_refused_token_pauses_the_sink_until_a_good_one_delivers(self, receiver, tmp_path):
        table = "check_paused"
        url = f"{receiver.db_url}/-/create"
        events = "".join(json.dumps({"n": n}) + "\n" for n in range(10))
        refused = eventsink(
            tmp_path, "send", "-t", table, "--sink", "datasette",
            "-o", f"api_url={url}", "-o", "api_token=not-a-token", input=events,
        )  # fmt: skip
        assert refused.returncode == 1, refused.stderr  # left undelivered: the sink paused
        (destination,) = json.loads(eventsink(tmp_path, "status", "--json").stdout)["sinks"]
        check = eventsink(tmp_path, "status", "--check")
        assert check.returncode == 1
        assert f"{destination}: PAUSED until the cause is fixed" in check.stdout
        assert f"{destination}: paused" in check.stderr
        assert eventsink(tmp_path, "status", "--check", "-q").returncode == 1

        delivered = eventsink(
            tmp_path, "send", "--sink", "datasette",
            "-o", f"api_url={url}", "-o", f"api_token={receiver.token}",
        )  # fmt: skip
        assert delivered.returncode == 0, delivered.stderr
        assert len(receiver.rows(table)) == 10
        check = eventsink(tmp_path, "status", "--check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "eventsink status: ok" in check.stderr
        quiet = eventsink(tmp_path, "status", "--check", "-q")
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

    def test_dead_letters_exit_3(self, tmp_path):
        import sqlite3

        connection = sqlite3.connect(tmp_path / "events.db")
        connection.execute("create table t (id text primary key, n integer check (n < 1))")
        connection.close()
        sent = eventsink(tmp_path, "send", "-t", "t", input='{"n": 0}\n{"n": 5}\n')
        assert sent.returncode == 3, sent.stderr
        check = eventsink(tmp_path, "status", "--check")
        assert check.returncode == 3
        assert "1 dead letter(s)" in check.stderr


class TestStaleLeases:
    """Events held by a killed process are 'no process delivering', not in flight."""

    def test_killed_send_leaves_events_no_process_delivers(self, tmp_path):
        with (tmp_path / "big.jsonl").open("w") as file:
            for number in range(100_000):
                file.write(json.dumps({"n": number}) + "\n")
        process = subprocess.Popen(
            [
                EVENTSINK,
                "send",
                "big.jsonl",
                "--via-outbox",
                "--outbox",
                str(tmp_path / "outbox.db"),
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        outbox = tmp_path / "outbox.db"
        wait_until(
            lambda: (
                count_rows(outbox, "select coalesce(sum(events), 0) from eventsink_outbox")[0] > 0
                or process.poll() is not None
            ),
            timeout=60,
        )
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        report = json.loads(eventsink(tmp_path, "status", "--json").stdout)
        ((destination, sink),) = report["sinks"].items()
        assert sink["pending"] > 0 and sink["in_flight"] == 0
        assert report["totals"]["in_flight"] == 0
        assert report["undelivered"] == [{"destination": destination, "pending": sink["pending"]}]
        human = eventsink(tmp_path, "status", "--check")
        assert f"pending for {destination}, no process delivering" in human.stdout
        assert f"{destination}: {sink['pending']:,} pending, no process delivering" in human.stderr
        assert human.returncode == 1
