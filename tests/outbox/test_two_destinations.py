"""Two programs with same-named sinks and different destinations share one outbox.

Real subprocesses and ``kill -9``: the events one leaves pending are never delivered by the
other, ``eventsink status`` names their destination while nobody serves it, and a program
for that destination delivers them.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventsink.testing import wait_until
from eventsink.testing.receiver import DatasetteReceiver

# Writes COUNT events through a Client whose one sink is configured by the JSON in argv[1],
# then either waits to be killed (rate "1": one batch of 10 a minute) or closes (delivering).
CLIENT = textwrap.dedent(
    """
    import json, sys
    import eventsink
    config, outbox, count, rate, label = sys.argv[1:6]
    options = dict(json.loads(config), outbox=outbox, batch_limit=10, instance=label)
    if rate != "0":
        options.update(max_rate=int(rate), time_period=60)
    client = eventsink.Client(**options)
    for n in range(int(count)):
        client.write("t", {"n": n, "by": label})
    print("written", flush=True)
    if rate != "0":
        sys.stdin.read()  # wait to be killed
    client.close()
    """
)


def pending(outbox, destination: str) -> int:
    if not outbox.exists():
        return 0
    with sqlite3.connect(outbox) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
        if "eventsink_outbox" not in tables:
            return 0
        return db.execute(
            "select coalesce(sum(events), 0) from eventsink_outbox where destination = ?",
            [destination],
        ).fetchone()[0]


def status(outbox) -> tuple[dict, str]:
    executable = Path(sys.executable).with_name("eventsink")
    command = [str(executable), "status", "--outbox", str(outbox)]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    as_json = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(as_json.stdout), shown.stdout


class Programs:
    """Runs the client script: killed with 1,000 pending, or to completion."""

    def __init__(self, tmp_path):
        self.script = tmp_path / "client.py"
        self.script.write_text(CLIENT)
        self.outbox = tmp_path / "outbox.db"

    def args(self, config: dict, count: int, rate: str, label: str) -> list[str]:
        return [
            sys.executable,
            str(self.script),
            json.dumps(config),
            str(self.outbox),
            str(count),
            rate,
            label,
        ]

    def killed_with_pending(self, config: dict, destination: str, count: int) -> None:
        child = subprocess.Popen(
            self.args(config, count, "1", "first"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "written"
            # Client.write returns before the commit: wait until all are in the outbox (at
            # most one batch of 10 is delivered meanwhile).
            wait_until(lambda: pending(self.outbox, destination) >= count - 10, timeout=30)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdin.close()
            child.stdout.close()

    def run(self, config: dict, count: int, label: str) -> None:
        done = subprocess.run(
            self.args(config, count, "0", label), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr


def ids_by_writer(rows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["by"]] = counts.get(row["by"], 0) + 1
    return counts


def sqlite_rows(path) -> list[dict]:
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("select * from t")]
    finally:
        db.close()


@pytest.mark.slow
class TestTwoSqliteClients:
    """Client(sink="sqlite") for a.db killed with 1,000 pending; one for b.db runs next."""

    def test_each_database_gets_only_its_own_events(self, tmp_path):
        programs = Programs(tmp_path)
        a, b = tmp_path / "a.db", tmp_path / "b.db"
        a_destination = f"sqlite {a.resolve()}"
        programs.killed_with_pending({"sink": "sqlite", "path": str(a)}, a_destination, 1000)

        # The second program, same sink name, another database: it delivers only its own.
        programs.run({"sink": "sqlite", "path": str(b)}, 25, "second")
        assert ids_by_writer(sqlite_rows(b)) == {"second": 25}
        left = pending(programs.outbox, a_destination)
        assert left >= 990

        report, shown = status(programs.outbox)
        assert report["undelivered"] == [{"destination": a_destination, "pending": left}]
        assert report["sinks"][a_destination]["served_by"] == []
        assert f"{left:,} pending for {a_destination}, no process delivering" in shown

        # A program for a.db again (writing nothing new) delivers exactly the 1,000.
        programs.run({"sink": "sqlite", "path": str(a)}, 0, "again")
        rows = sqlite_rows(a)
        assert len(rows) == len({row["id"] for row in rows}) == 1000
        assert ids_by_writer(rows) == {"first": 1000}
        assert ids_by_writer(sqlite_rows(b)) == {"second": 25}
        report, shown = status(programs.outbox)
        assert report["undelivered"] == [] and report["totals"]["pending"] == 0


@pytest.mark.slow
class TestTwoDatasetteSinks:
    """Two datasette sinks with one name, pointing at two real receivers."""

    def test_each_receiver_gets_only_its_own_events(self, tmp_path):
        programs = Programs(tmp_path)
        with DatasetteReceiver() as first, DatasetteReceiver() as second:

            def config(receiver):
                url = f"{receiver.db_url}/-/create"
                return {"sink": "datasette", "api_url": url, "api_token": receiver.token}

            first_destination = f"datasette {first.db_url}"
            programs.killed_with_pending(config(first), first_destination, 1000)
            programs.run(config(second), 25, "second")
            assert ids_by_writer(second.rows("t")) == {"second": 25}

            report, shown = status(programs.outbox)
            assert [item["destination"] for item in report["undelivered"]] == [first_destination]
            assert "no process delivering" in shown
            assert first.token not in shown  # the destination never carries a secret

            programs.run(config(first), 0, "again")
            rows = first.rows("t")
            assert len(rows) == len({row["id"] for row in rows}) == 1000
            assert ids_by_writer(rows) == {"first": 1000}
            assert ids_by_writer(second.rows("t")) == {"second": 25}
