"""Pull throughput: a real Datasette origin, side by side in one run.

1. raw: page through the table with httpx alone (the origin's own cost);
2. pull: ``eventsink pull datasette`` into the sqlite sink (outbox, checkpoints, delivery).

Prints rows/s of each and the ratio. Usage: python bench/bench_pull.py [ROWS]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlite_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sources_support import EVENTSINK_CLI, datasette_server


def main(rows: int) -> None:
    root = Path(tempfile.mkdtemp())
    db = sqlite_utils.Database(root / "origin.db")
    db["items"].insert_all(
        ({"id": i, "name": f"item {i}", "size": i % 97} for i in range(1, rows + 1)),
        pk="id",
        batch_size=5000,
    )
    with datasette_server("origin.db", cwd=root) as base:
        url = f"{base}/origin/items.json"
        start = time.perf_counter()
        with httpx.Client() as client:
            params: dict[str, str] = {"_size": "1000"}
            fetched = 0
            while True:
                body = client.get(url, params=params).json()
                fetched += len(body["rows"])
                if not body["next"]:
                    break
                params["_next"] = body["next"]
        raw = time.perf_counter() - start
        timings = {}
        for batch in (100, 1000):
            start = time.perf_counter()
            subprocess.run(
                [
                    *EVENTSINK_CLI,
                    "pull",
                    "datasette",
                    "-p",
                    f"url={base}/origin/items",
                    "--outbox",
                    f"ob{batch}.db",
                    "-o",
                    f"path=dest{batch}.db",
                    "--no-progress",
                    "-o",
                    f"batch_limit={batch}",
                ],
                cwd=root,
                check=True,
                capture_output=True,
            )
            timings[batch] = time.perf_counter() - start
            copied = sqlite_utils.Database(root / f"dest{batch}.db")["datasette"].count
            assert fetched == copied == rows
    print(f"rows: {rows}")
    print(f"raw paging (httpx only):            {rows / raw:9.0f} rows/s ({raw:.2f} s)")
    for batch, took in timings.items():
        print(
            f"pull -> sqlite, batch_limit={batch:<5}: {rows / took:9.0f} rows/s ({took:.2f} s, "
            f"{took / raw:.1f}x raw)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
