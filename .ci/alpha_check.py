"""Check one Datasette alpha end to end: a real ``datasette serve`` sender with the plugin.

    python .ci/alpha_check.py .ci/venv-1.0a20/bin/datasette [--legacy]

The sender runs the given ``datasette`` (a venv with that alpha and eventsink installed); the
receiver runs this environment's. It makes events with write requests and checks that every
request answers (none failed, none hung) and every event arrives exactly once. ``--legacy``
(the venv also has datasette-events-forward) checks the takeover: both plugins with only the
legacy config block forward each event once, and events the original queued while the
receiver was down arrive once eventsink runs. Exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eventsink.datasette.takeover import LEGACY_COLUMNS
from eventsink.testing import wait_until
from eventsink.testing.receiver import DatasetteReceiver
from eventsink.testing.sender import DatasetteSender, internal_rows

failures: list[str] = []


def check(condition: bool, message: str) -> None:
    print(("  ok   " if condition else "  FAIL ") + message, flush=True)
    if not condition:
        failures.append(message)


def version(datasette: str) -> str:
    output = subprocess.run([datasette, "--version"], capture_output=True, text=True, check=True)
    return output.stdout.split()[-1]


def arrived(receiver: DatasetteReceiver, table: str, count: int, timeout: float = 30.0) -> list:
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: len(receiver.rows(table)) >= count, timeout=timeout)
    time.sleep(0.5)  # a duplicate would arrive with the last batch
    return receiver.rows(table)


def forward(
    datasette: str, receiver: DatasetteReceiver, events: int, *, internal: bool = True
) -> None:
    """``internal=False``: no ``--internal`` file, so before Datasette 1.0a30 the outbox is in
    the in-memory internal database, reached through Datasette's own write thread."""
    table = "events" if internal else "events_internal_in_memory"
    print(f"  the outbox {'in an --internal file' if internal else 'without --internal'}:")
    plugins = {
        "eventsink": {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
            "table": table,
            "flush_interval": 0.2,
        }
    }
    started = time.monotonic()
    with DatasetteSender(plugins, datasette=datasette, internal=internal) as sender:
        result = sender.make_events(events)
        check(
            not result.failed and not result.hung and result.events == events,
            f"{events} events from {result.ok} requests: {len(result.failed)} failed, "
            f"{result.hung} hung {result.failed[:1]}",
        )
        rows = arrived(receiver, table, events)
        ids = {row["id"] for row in rows}
        check(
            len(rows) == len(ids) == events,
            f"{len(rows)} rows arrived ({len(ids)} distinct ids) of {events}, "
            f"in {time.monotonic() - started:.1f} s",
        )
        columns = list(rows[0]) if rows else []
        check(tuple(columns[:8]) == LEGACY_COLUMNS, f"receiver columns {columns}")
        sender.stop()
    check("Traceback" not in sender.log, "no traceback in the sender's log")


def takeover(datasette: str, receiver: DatasetteReceiver) -> None:
    legacy = {
        "datasette-events-forward": {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": receiver.token,
        }
    }
    table = "datasette_events"
    # Both installed, only the legacy config block: each event forwarded once.
    with DatasetteSender(legacy, datasette=datasette) as sender:
        result = sender.make_events(11)
        rows = arrived(receiver, table, 11)
        check(
            result.events == 11 and len(rows) == 11 and not result.failed,
            f"both plugins, legacy block: 11 events -> {len(rows)} rows",
        )
        check("pip uninstall datasette-events-forward" in sender.log, "the takeover is logged")
        sender.stop()
    before = len(receiver.rows(table))
    # The original alone, receiver down: 11 events stay in its queue.
    with tempfile.TemporaryDirectory(prefix="sender-") as directory:
        receiver.stop()
        alone = {"DATASETTE_LOAD_PLUGINS": "datasette-events-forward"}
        original = DatasetteSender(legacy, datasette=datasette, directory=directory, env=alone)
        original.start()
        original.make_events(11)
        original.stop()
        queued = internal_rows(original.internal_path, "datasette_events_to_forward")
        check(len(queued) == 11, f"the original queued {len(queued)} events (receiver down)")
        receiver.start()
        # eventsink alone, on the same internal database: the 11 plus new ones, none twice.
        only = {"DATASETTE_LOAD_PLUGINS": "eventsink"}
        sender = DatasetteSender(legacy, datasette=datasette, directory=directory, env=only)
        sender.start()
        sender.make_events(2)
        rows = arrived(receiver, table, before + 13)
        ids = {row["id"] for row in rows}
        check(
            len(rows) == len(ids) == before + 13 and {row["id"] for row in queued} <= ids,
            f"then eventsink alone: {len(rows) - before} new rows of 13 expected "
            f"({len(ids)} distinct ids), every queued id among them",
        )
        check("took over 11 event(s)" in sender.log, "the imported count is logged")
        left = internal_rows(original.internal_path, "datasette_events_to_forward")
        check(not left, f"{len(left)} rows left in datasette_events_to_forward")
        sender.close()
        original.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasette", help="the sender's datasette executable")
    parser.add_argument("--events", type=int, default=12)
    parser.add_argument("--legacy", action="store_true", help="also check the takeover")
    args = parser.parse_args()
    datasette = str(Path(args.datasette).resolve())
    print(f"Datasette {version(datasette)} sender ({datasette})", flush=True)
    with DatasetteReceiver() as receiver:
        forward(datasette, receiver, args.events)
        forward(datasette, receiver, args.events, internal=False)
        if args.legacy:
            takeover(datasette, receiver)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
