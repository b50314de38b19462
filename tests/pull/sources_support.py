"""Helpers for the pull-source tests: waiting on conditions and a real Datasette server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from eventsink.testing import wait_until  # re-exported
from eventsink.testing.receiver import free_port

DATASETTE = str(Path(sys.executable).with_name("datasette"))
EVENTSINK_CLI = [sys.executable, "-c", "from eventsink.cli import cli; cli()"]


@contextlib.contextmanager
def datasette_server(*args: str, cwd: Path) -> Iterator[str]:
    """Run ``datasette serve ARGS`` on a free loopback port; yield its base URL."""
    port = free_port()
    log = open(cwd / f"datasette-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [DATASETTE, "serve", *args, "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError((cwd / f"datasette-{port}.log").read_text())
        try:
            return httpx.get(f"{base}/-/versions.json", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
