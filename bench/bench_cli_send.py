"""Pipe 100,000 JSON lines to ``eventsink send`` (default sqlite sink) and time it.

Run: ``python bench/bench_cli_send.py [--events N]``. Each variant runs in a fresh temporary
directory as a real subprocess, so the figure includes interpreter start-up and the durable
outbox; the count in ``events.db`` is checked exactly. For comparison, the same lines go to
``sqlite-utils insert --nl`` (no outbox, no ids), measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
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


def run(command: list[str], lines: bytes, cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, input=lines, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def count(path: str, table: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"select count(*) from [{table}]").fetchone()[0]
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    lines = make_lines(args.events)
    results = {}
    variants = {
        "eventsink send (durable outbox)": [
            str(BIN / "eventsink"),
            "send",
            "--outbox",
            "outbox.db",
        ],
        "eventsink send --outbox :memory:": [
            str(BIN / "eventsink"),
            "send",
            "--outbox",
            ":memory:",
        ],
    }
    if shutil.which("sqlite-utils", path=str(BIN)):
        variants["sqlite-utils insert --nl (baseline)"] = [
            str(BIN / "sqlite-utils"),
            "insert",
            "events.db",
            "events",
            "-",
            "--nl",
        ]
    for name, command in variants.items():
        with tempfile.TemporaryDirectory() as directory:
            seconds = run(command, lines, directory)
            stored = count(os.path.join(directory, "events.db"), "events")
            if stored != args.events:
                raise SystemExit(f"{name}: {stored} rows stored, expected {args.events}")
            results[name] = seconds
    baseline = results["eventsink send (durable outbox)"]
    print(f"{args.events:,} JSON lines piped in, exact count checked in events.db")
    for name, seconds in results.items():
        print(
            f"  {name:40} {seconds:6.2f}s  {args.events / seconds:9,.0f} events/s  "
            f"{seconds / baseline:.2f}x the durable run's time"
        )


if __name__ == "__main__":
    main()
