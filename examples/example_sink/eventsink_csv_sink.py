"""An example eventsink plugin: a ``csv`` sink and an enricher, in one module.

Install with ``pip install ./examples/example_sink``; then ``sink: csv`` works in any
eventsink configuration and ``eventsink sinks`` lists it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventsink import ConfigError, Event, Option, RetryableError, Sink, hookimpl

COLUMNS = ("id", "table", "instance", "created", "data")


class CsvSink(Sink):
    """Append events to a CSV file, one row each; an id already in the file is skipped."""

    name = "csv"
    description = "Appends events to a CSV file (an example third-party sink)."
    options = (
        Option("path", str, "events.csv", "The CSV file; created with a header row."),
        Option("delimiter", str, ",", "The field separator.", choices=(",", ";", "\t")),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.path = Path(self.config["path"]).expanduser()
        self.seen: set[str] = set()  # ids already in the file: the idempotency key

    def open(self) -> None:
        # A plain (not async) method: eventsink runs it in a worker thread.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                with self.path.open(newline="") as file:
                    reader = csv.DictReader(file, delimiter=self.config["delimiter"])
                    self.seen = {row["id"] for row in reader}
            else:
                self._write([COLUMNS])
        except OSError as error:
            # Raised from open(), a ConfigError stops the pipeline at start, naming the key.
            raise ConfigError(f"config key 'path': {error.strerror}", key="path") from None

    def send(self, batch: Sequence[Event]) -> None:
        rows = []
        for event in batch:
            if event.id in self.seen:
                continue  # a redelivered event: already stored
            rows.append(
                (event.id, event.table, event.instance, event.created, event.data_json().decode())
            )
        try:
            self._write(rows)
        except OSError as error:
            raise RetryableError(f"cannot append to {self.path}: {error.strerror}") from None
        # Only now is the batch confirmed: the pipeline removes it from its outbox.
        self.seen.update(row[0] for row in rows)

    def _write(self, rows: Sequence[Sequence[str]]) -> None:
        with self.path.open("a", newline="") as file:
            csv.writer(file, delimiter=self.config["delimiter"]).writerows(rows)
            file.flush()
            os.fsync(file.fileno())

    @property
    def destination(self) -> str:
        # Where the events go (the outbox keys pending events by it): the file, not the
        # delimiter, so changing the delimiter does not leave pending events behind.
        return f"csv {self.path.resolve()}"

    def describe(self) -> str:
        return f"csv {self.path}"


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [CsvSink]


@hookimpl
def eventsink_enrich(event: Event) -> None:
    """Add the process id to every event (an enricher changes the event in place)."""
    event.data.setdefault("pid", os.getpid())
