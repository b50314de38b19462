"""A long-running CLI command serves its metrics on ``-o metrics_addr=HOST:PORT``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from eventsink.testing import wait_until
from eventsink.testing.receiver import free_port


@pytest.mark.slow  # a subprocess that imports everything: seconds on a busy machine
def test_send_serves_metrics_while_it_runs(tmp_path):
    port = free_port()
    out = tmp_path / "out.jsonl"
    eventsink = Path(sys.executable).with_name("eventsink")
    command = [str(eventsink), "send", "--sink", "file", "-o", f"path={out}"]
    command += ["-o", f"metrics_addr=127.0.0.1:{port}", "--outbox", ":memory:", "-"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdin is not None
        process.stdin.write(b'{"n": 1}\n{"n": 2}\n')
        process.stdin.flush()  # stdin stays open: the command keeps running

        def scraped() -> str | None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.TransportError:
                return None
            return (
                text if f'eventsink_events_delivered_total{{sink="file {out}"}} 2' in text else None
            )

        text = wait_until(scraped, timeout=30, interval=0.1)
        assert "eventsink_events_accepted_total 2" in text
        process.stdin.close()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
