"""A real Datasette server to deliver to in tests: ``datasette serve`` on a free loopback port.

::

    with DatasetteReceiver(settings={"max_insert_rows": 10}) as receiver:
        sink = DatasetteSink(api_url=f"{receiver.db_url}/-/create", api_token=receiver.token)
        ...
        assert len(receiver.rows("datasette_events")) == 3

The server runs with ``--root`` and a fixed secret, so :attr:`token` (made by ``datasette
create-token root``) may do everything; :meth:`create_token` makes restricted ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _datasette_command() -> list[str]:
    executable = Path(sys.executable).with_name("datasette")
    if executable.exists():
        return [str(executable)]
    found = shutil.which("datasette")
    if found:
        return [found]
    return [sys.executable, "-m", "datasette"]


class DatasetteReceiver:
    """A ``datasette serve`` subprocess with one SQLite database (named ``database``).

    ``settings`` become ``--setting`` pairs; ``extra_args`` are appended to the command line.
    The database file and the server's log live in a temporary directory removed by
    :meth:`close`. :meth:`stop` and :meth:`start` restart the server on the same port.
    ``datasette`` is the ``datasette`` executable to run (another version's, from a venv of
    its own); by default the one installed next to this Python. ``env`` adds environment
    variables (e.g. ``DATASETTE_LOAD_PLUGINS``) to ``os.environ`` as it is at each start.
    """

    def __init__(
        self,
        *,
        database: str = "data",
        settings: dict[str, Any] | None = None,
        extra_args: list[str] | None = None,
        directory: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        datasette: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = [os.fspath(datasette)] if datasette else _datasette_command()
        self.extra_env = dict(env or {})
        self.database = database
        self.settings = dict(settings or {})
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self._tempdir = None if directory else tempfile.TemporaryDirectory(prefix="receiver-")
        self.directory = Path(directory or self._tempdir.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{database}.db"
        sqlite3.connect(self.path).close()
        self.secret = secrets.token_hex(16)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._token: str | None = None
        self._log = None

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        """The database's URL, e.g. ``http://127.0.0.1:8123/data``."""
        return f"{self.url}/{self.database}"

    @property
    def token(self) -> str:
        """An API token for the root actor (made once, valid while the secret is)."""
        if self._token is None:
            self._token = self.create_token("root")
        return self._token

    def create_token(self, actor: str = "root", *restrictions: str) -> str:
        """A token for ``actor`` made by ``datasette create-token``.

        ``restrictions`` are passed through, e.g. ``"--all", "view-instance"``.
        """
        result = subprocess.run(
            [*self.command, "create-token", actor, *restrictions],
            env={**os.environ, **self.extra_env, "DATASETTE_SECRET": self.secret},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip()

    @property
    def log_path(self) -> Path:
        return self.directory / "datasette.log"

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return
        command = [
            *self.command,
            "serve",
            str(self.path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--root",
        ]
        for key, value in self.settings.items():
            command += ["--setting", key, str(value)]
        command += self.extra_args
        self._log = open(self.log_path, "ab")  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **self.extra_env, "DATASETTE_SECRET": self.secret},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"datasette exited with {self.process.returncode}: {self.log_path.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/-/versions.json", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"datasette did not answer within {self.startup_timeout}s")

    def stop(self) -> None:
        """Stop the server (the database file stays)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()

    def rows(self, table: str = "datasette_events") -> list[dict[str, Any]]:
        """Every row of ``table`` in the database file (``[]`` if the table does not exist)."""
        return table_rows(self.path, table)

    def __enter__(self) -> DatasetteReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DatasetteReceiver {self.db_url}>"


def table_rows(path: str | os.PathLike[str], table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` in the SQLite file ``path``, read-only (``[]`` if no such table)."""
    connection = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        exists = connection.execute(
            "select 1 from sqlite_master where type = 'table' and name = ?", [table]
        ).fetchone()
        if not exists:
            return []
        return [dict(row) for row in connection.execute(f'select * from "{table}"')]
    finally:
        connection.close()
