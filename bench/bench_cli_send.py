"""``eventsink send`` of 100,000 JSON lines into the default sqlite sink, beside sqlite-utils.

Run: ``python bench/bench_cli_send.py [--events N] [--rounds R]``. Every variant is a real
subprocess in a fresh temporary directory (interpreter start-up included), run once per round
in turn, so each round measures all of them side by side; the figures are medians over the
rounds. The count in ``events.db`` is checked exactly each time. The baseline is
``sqlite-utils insert --nl`` of the same lines (no outbox, no ids), from the same kind of
input:

* from a file: ``eventsink send events.jsonl`` delivers straight from the file (the file is
  the events' durable record); ``--via-outbox`` stores every event in the outbox first, as
  before;
* from standard input: every event passes through the durable outbox.

eventsink's modules are compiled to bytecode first, as pip does when it installs a package.

Besides wall-clock time it prints each variant's CPU time (user + system): sqlite-utils commits
every 100 rows with SQLite's default ``synchronous=FULL`` and a rollback journal, so part of
its time is waiting for the disk, while the sqlite sink commits once per batch in WAL mode
with ``synchronous=NORMAL``.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

BIN = Path(sys.executable).parent


def make_lines(count: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "type": "page_view",
                "user": f"u_{number % 977}",
                "path": f"/docs/{number % 31}",
                "duration_ms": number % 9000,
                "ok": number % 7 != 0,
            }
        )
        + b"\n"
        for number in range(count)
    )


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str], lines: bytes, stdin: bool, expected: int) -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds (user + system) of one run."""
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "events.jsonl").write_bytes(lines)
        cpu = cpu_of_children()
        started = time.perf_counter()
        subprocess.run(
            command,
            input=lines if stdin else None,
            cwd=directory,
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - started
        cpu = cpu_of_children() - cpu
        connection = sqlite3.connect(os.path.join(directory, "events.db"))
        try:
            stored = connection.execute("select count(*) from events").fetchone()[0]
        finally:
            connection.close()
        if stored != expected:
            raise SystemExit(f"{' '.join(command)}: {stored} rows stored, expected {expected}")
        return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lines = make_lines(args.events)
    # pip compiles an installed package's modules once; an editable install (or one run with
    # PYTHONDONTWRITEBYTECODE=1, as on the machines these figures come from) would compile
    # eventsink's on every start (~0.09 s a run here), which sqlite-utils never pays.
    for package in ("eventsink", "eventsink.sinks"):
        for folder in importlib.util.find_spec(package).submodule_search_locations or ():
            compileall.compile_dir(folder, quiet=1)
    eventsink, sqlite_utils = str(BIN / "eventsink"), str(BIN / "sqlite-utils")
    if not shutil.which("sqlite-utils", path=str(BIN)):
        raise SystemExit("sqlite-utils is not installed beside this Python")
    # name: (command, from standard input?)
    variants = {
        "file: eventsink send": ([eventsink, "send", "events.jsonl", "--outbox", "o.db"], False),
        "file: eventsink send --via-outbox": (
            [eventsink, "send", "events.jsonl", "--outbox", "o.db", "--via-outbox"],
            False,
        ),
        "file: sqlite-utils insert --nl": (
            [sqlite_utils, "insert", "events.db", "events", "events.jsonl", "--nl"],
            False,
        ),
        "stdin: eventsink send": ([eventsink, "send", "--outbox", "o.db"], True),
        "stdin: sqlite-utils insert --nl": (
            [sqlite_utils, "insert", "events.db", "events", "-", "--nl"],
            True,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (command, stdin) in variants.items():
            seconds, cpu = run(command, lines, stdin, args.events)
            times[name].append(seconds)
            cpus[name].append(cpu)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{args.events:,} JSON lines into events.db, median of {args.rounds} rounds "
        "(exact count checked every run)"
    )
    for name, seconds in median.items():
        spread = ", ".join(f"{value:.2f}" for value in times[name])
        print(
            f"  {name:36} {seconds:6.2f}s  {args.events / seconds:9,.0f} events/s  "
            f"CPU {statistics.median(cpus[name]):5.2f}s  [{spread}]"
        )
    for kind in ("file", "stdin"):
        baseline = median[f"{kind}: sqlite-utils insert --nl"]
        for name, seconds in median.items():
            if name.startswith(f"{kind}: eventsink"):
                print(f"  {name} / sqlite-utils (speed ratio): {baseline / seconds:.2f}")
        # Ratios per round, so a noisy round shows as spread rather than hiding in a median.
        rounds = [
            times[f"{kind}: sqlite-utils insert --nl"][index]
            / times[f"{kind}: eventsink send"][index]
            for index in range(args.rounds)
        ]
        print(f"    per round, {kind}: " + ", ".join(f"{ratio:.2f}" for ratio in rounds))


if __name__ == "__main__":
    main()
