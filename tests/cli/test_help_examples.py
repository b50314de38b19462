"""Every example in every command's --help runs, against real receivers, as a user would paste it.

The examples are read from the commands themselves (their epilogs), so a new example is tested
without touching this file. Hosts in them (``https://example.com/data``, the NATS default) are
pointed at servers started here; programs other than eventsink and cat (``datasette``, ``jq``,
``echo``) are replaced by ``true`` / ``cat``: the test is about eventsink's part of the line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from eventsink.cli import cli
from eventsink.testing import wait_until

BIN = Path(sys.executable).parent
EXAMPLES_DIR = Path(__file__).parents[2] / "examples"
NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)


def command_examples(name: str, command: click.Command) -> list[tuple[str, str]]:
    """``(command name, example line)`` for each example in ``command``'s epilog."""
    found = []
    if isinstance(command, click.Group):
        context = click.Context(command)
        for sub in command.list_commands(context):
            found += command_examples(f"{name} {sub}", command.get_command(context, sub))
    text = (command.epilog or "").split("Examples:", 1)
    if len(text) == 2:
        joined = re.sub(r"\\\n\s*", "", text[1])
        found += [(name, line.strip()) for line in joined.splitlines() if line.strip()]
    return found


ALL = command_examples("eventsink", cli)
OPERATOR = re.compile(r"(\s*(?:&&|\|\||\|)\s*)")


def runnable(line: str) -> str:
    """``line`` with each program but eventsink and cat replaced, and comments dropped."""
    line = re.sub(r"\s+#.*$", "", line)
    parts = OPERATOR.split(line)
    for index in range(0, len(parts), 2):
        program = parts[index].split()[0]
        if program not in {"eventsink", "cat"}:
            piped = index > 0 and parts[index - 1].strip() == "|"
            parts[index] = "cat >/dev/null" if piped else "true"
    return "".join(parts)


def test_every_command_has_examples():
    names = {name for name, _ in ALL}
    for command in ("send", "status", "replay", "sinks", "consume"):
        assert f"eventsink {command}" in names


@pytest.fixture(scope="module")
def receiver():
    """A receiver of this module's own: the examples write to its 'events' table, which
    tests sharing the session's receiver also use with other columns."""
    from eventsink.testing.receiver import DatasetteReceiver

    with DatasetteReceiver() as server:
        yield server


@pytest.fixture
def workdir(tmp_path, receiver, monkeypatch):
    """A directory with the files the examples name, and an outbox of its own."""
    shutil.copy(EXAMPLES_DIR / "events.jsonl", tmp_path / "events.jsonl")
    (tmp_path / "signups.csv").write_text("type,user\nsignup,ada\nsignup,bob\n")
    (tmp_path / "orders.json").write_text(json.dumps([{"type": "order", "total": 3}]))
    (tmp_path / "eventsink.yaml").write_text("sink: sqlite\npath: from-config.db\n")
    # The shared outbox exists, as it does once anything was sent (eventsink outbox needs it).
    primed = subprocess.run(
        [str(BIN / "eventsink"), "send", "-q", "-t", "primer", "-o", "path=primer.db"],
        input=b'{"n": 1}\n', cwd=tmp_path, env=example_env(tmp_path, receiver), timeout=60,
    )  # fmt: skip
    assert primed.returncode == 0
    asyncio.run(hold_events_for(tmp_path / "data" / "eventsink" / "outbox.db", OUTBOX_NAMED))
    return tmp_path


# Destinations the 'eventsink outbox' examples move or drop: the outbox holds events for them.
OUTBOX_NAMED = sorted(
    {
        name
        for _, line in ALL
        if line.startswith("eventsink outbox")
        for name in re.findall(r'"([^"]+)"', line)
    }
)


async def hold_events_for(path: Path, destinations: list[str]) -> None:
    from eventsink.event import Event
    from eventsink.ids import IdGenerator
    from eventsink.outbox.sqlite import SQLiteOutbox

    outbox = SQLiteOutbox(path)
    await outbox.open([])
    event_id, created = IdGenerator().new()
    await outbox.append([Event(event_id, "t", "i", created, {"n": 1})], destinations)
    await outbox.close()


def example_env(workdir: Path, receiver) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DS_TOKEN": receiver.token,
        "XDG_DATA_HOME": str(workdir / "data"),  # the shared outbox, private to this test
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "line", [line for name, line in ALL if " consume" not in name], ids=lambda line: line[:60]
)
def test_example_runs(line, workdir, receiver):
    shell = runnable(line).replace("https://example.com/data", receiver.db_url)
    for directory in re.findall(r"/var/lib/([\w.-]+)/", shell):  # system paths, made local
        (workdir / directory).mkdir(exist_ok=True)
    shell = shell.replace("/var/lib/", f"{workdir}/")
    env = example_env(workdir, receiver)
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell],
        input="y\n",  # what a user answers a confirmation prompt with
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{shell}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    if "api_url=" in shell:
        assert len(receiver.rows("events")) >= 20  # examples/events.jsonl reached the receiver


@pytest.mark.slow
@pytest.mark.skipif(NATS_SERVER is None, reason="needs nats-server")
@pytest.mark.parametrize(
    "line", [line for name, line in ALL if " consume" in name], ids=lambda line: line[:60]
)
def test_consume_example_delivers_and_stops_on_sigterm(line, tmp_path):
    from ..nats.test_nats import NatsServer
    from .test_interrupt import count_rows

    server = NatsServer(tmp_path / "nats")
    server.start()
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    try:
        (tmp_path / "publish.yaml").write_text(
            f"sink: nats\nservers: {server.url}\ncreate_stream: {{subjects: ['events.>']}}\n"
        )
        published = subprocess.run(
            [str(BIN / "eventsink"), "send", str(EXAMPLES_DIR / "events.jsonl"), "-c",
             "publish.yaml", "--outbox", "publish-outbox.db"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        (tmp_path / "consume.yaml").write_text(
            f"sink: sqlite\npath: events.db\nconsume:\n  servers: {server.url}\n"
        )
        shell = runnable(line).replace("nats://127.0.0.1:4222", server.url)
        process = subprocess.Popen(
            ["bash", "-c", f"exec {shell}"],
            cwd=tmp_path,
            env={**os.environ, "PATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(
                lambda: (
                    count_rows(tmp_path / "events.db", "select count(*) from events")[0] == 20
                    or process.poll() is not None
                ),
                timeout=60,
            )
        finally:
            process.terminate()
            _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode()
        assert b"eventsink consume: delivered 20 event(s)" in err
    finally:
        server.stop()
