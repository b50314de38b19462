"""A real Datasette that forwards its events: ``datasette serve`` with the eventsink plugin.

::

    with DatasetteReceiver() as receiver, DatasetteSender(
        {"eventsink": {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}}
    ) as sender:
        result = sender.make_events(11)    # /-/create with a row, then 9 inserts
        assert result.failed == result.hung == 0
        wait_until(lambda: len(receiver.rows("datasette_events")) == 11)

The sender keeps its internal database (the plugin's outbox) in ``internal.db`` in its
directory, so a restart on the same directory finds what was left undelivered.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from .receiver import DatasetteReceiver, table_rows


@dataclass
class WriteResult:
    """What the write requests of :meth:`DatasetteSender.make_events` got back."""

    events: int = 0  # events the requests caused (by Datasette's rules)
    ok: int = 0
    failed: list[str] = field(default_factory=list)  # "status: body" of each failed request
    hung: int = 0  # requests without an answer within the timeout


class DatasetteSender(DatasetteReceiver):
    """A ``datasette serve`` whose ``plugins`` config is ``plugins`` (written to a JSON file).

    ``config`` is merged into the Datasette config (e.g. ``{"databases": {...}}``);
    ``databases`` names extra writable databases to serve beside ``data``. ``internal=False``
    starts it without ``--internal`` (Datasette then keeps its internal database in memory
    before 1.0a30, in a temporary file since; ``internal_path`` is ``None``).
    """

    def __init__(
        self,
        plugins: dict[str, Any],
        *,
        config: dict[str, Any] | None = None,
        databases: tuple[str, ...] = (),
        extra_args: list[str] | None = None,
        internal: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = self.directory / "datasette.json"
        self.config_path.write_text(json.dumps({**(config or {}), "plugins": plugins}))
        self.internal_path = self.directory / "internal.db" if internal else None
        self.extra_paths = []
        for name in databases:
            path = self.directory / f"{name}.db"
            path.touch()
            self.extra_paths.append(str(path))
        self.extra_args = [
            *self.extra_paths,
            "-c",
            str(self.config_path),
            *(["--internal", str(self.internal_path)] if self.internal_path else []),
            *(extra_args or []),
        ]

    def make_events(
        self, count: int, *, database: str | None = None, timeout: float = 10.0
    ) -> WriteResult:
        """Cause ``count`` (at least 2) events: ``/-/create`` with a row, then inserts."""
        if count < 2:
            raise ValueError("make_events needs count >= 2: /-/create with a row makes two")
        database = database or self.database
        table = f"t_{uuid.uuid4().hex[:8]}"
        result = WriteResult()
        headers = {"Authorization": f"Bearer {self.token}"}
        requests = [(f"/{database}/-/create", {"table": table, "row": {"n": 0}}, 2)]
        requests += [
            (f"/{database}/{table}/-/insert", {"rows": [{"n": n}]}, 1) for n in range(1, count - 1)
        ]
        with httpx.Client(base_url=self.url, headers=headers, timeout=timeout) as client:
            for path, body, events in requests:
                try:
                    response = client.post(path, json=body)
                except httpx.TimeoutException:
                    result.hung += 1
                    continue
                if response.status_code in (200, 201):
                    result.ok += 1
                    result.events += events
                else:
                    result.failed.append(f"{response.status_code}: {response.text[:200]}")
        return result

    def status(self) -> dict[str, Any]:
        """The plugin's ``/-/eventsink.json`` as root."""
        response = httpx.get(
            f"{self.url}/-/eventsink.json",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
        )
        response.raise_for_status()
        return response.json()

    @property
    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""


def internal_rows(path: str | os.PathLike[str], table: str) -> list[dict[str, Any]]:
    """Rows of ``table`` in a sender's internal database (``[]`` if it does not exist)."""
    return table_rows(path, table)
