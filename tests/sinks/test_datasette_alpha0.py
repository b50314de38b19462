"""The Datasette sink against a real Datasette 1.0a0, whose ``/-/create`` refuses ``ignore``.

Datasette 1.0a0 answers every ``/-/create`` that carries ``ignore`` with 400 "Invalid keys:
ignore". That refusal is about the receiver, not the rows: the sink pauses with a message
naming the ``/-/insert`` URL to use and the ``eventsink outbox move`` that gives that
destination the kept events, keeps every event, and a client switched to that URL delivers them
all. 1.0a0 runs from a venv of its own, made once and kept in pytest's cache.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import eventsink
from eventsink.cli import cli
from eventsink.testing import wait_until
from eventsink.testing.receiver import DatasetteReceiver

ALPHA = "1.0a0"


@pytest.fixture(scope="module")
def alpha0_datasette(request: pytest.FixtureRequest) -> Path:
    """The ``datasette`` executable of Datasette 1.0a0 (installed once per cache)."""
    home = Path(request.config.cache.mkdir(f"datasette-{ALPHA}"))
    executable = home / "bin" / "datasette"
    if not executable.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
            subprocess.run(
                [str(home / "bin" / "pip"), "install", "-q", f"datasette=={ALPHA}"],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as error:
            pytest.skip(f"cannot install datasette=={ALPHA} here: {error}")
    return executable


@pytest.mark.slow
def test_a_create_url_on_alpha0_pauses_then_the_insert_url_delivers_everything(
    alpha0_datasette: Path, tmp_path: Path
) -> None:
    outbox = str(tmp_path / "outbox.db")
    with DatasetteReceiver(datasette=alpha0_datasette) as receiver:
        client = eventsink.Client(
            sink="datasette",
            api_url=f"{receiver.db_url}/-/create",
            api_token=receiver.token,
            table="events",
            outbox=outbox,
            batch_limit=100,
            pause_interval=0.2,
        )
        ids = [client.write("events", {"n": n}) for n in range(71)]
        paused = wait_until(lambda: client.status()["sinks"]["datasette"]["paused"], timeout=20)
        status = client.status()["sinks"]["datasette"]
        left = client.close(timeout=1)
        insert_url = f"{receiver.db_url}/events/-/insert"
        assert insert_url in paused and "ignore" in paused
        assert status["dead_letters"] == 0 and status["dead_lettered"] == 0
        assert left == 71  # all kept in the outbox
        requests = receiver.log_path.read_text().count('"POST /data/-/create')
        assert 1 <= requests < 10

        # What the message asks for: the table made at the receiver, then the insert URL.
        made = httpx.post(
            f"{receiver.db_url}/-/create",
            json={
                "table": "events",
                "pk": "id",
                "columns": [
                    {"name": "id", "type": "text"},
                    {"name": "instance", "type": "text"},
                    {"name": "created", "type": "text"},
                    {"name": "n", "type": "integer"},
                ],
            },
            headers={"authorization": f"Bearer {receiver.token}"},
        )
        assert made.status_code == 201, made.text
        move = re.search(r"eventsink outbox move '([^']+)' '([^']+)'", paused)
        if move:  # the insert URL is another destination: move what the outbox kept
            moved = CliRunner().invoke(
                cli, ["outbox", "move", *move.groups(), "--outbox", outbox, "-y"]
            )
            assert moved.exit_code == 0, moved.output
            assert "Moved 71 pending event(s)" in moved.output
        else:
            assert "same destination" in paused
        with eventsink.Client(
            sink="datasette",
            api_url=insert_url,
            api_token=receiver.token,
            outbox=outbox,
        ) as fixed:
            assert fixed.flush(20)
            status = fixed.status()["sinks"]["datasette"]
        rows = receiver.rows("events")
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert status["dead_letters"] == 0
