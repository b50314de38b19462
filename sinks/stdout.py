"""The ``stdout`` sink: one line per event on standard output, for debugging."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import orjson

from eventsink.config import Option
from eventsink.event import Event
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink


class StdoutSink(Sink):
    """Print each event: readable by default, or as JSON lines with ``format: json``."""

    name = "stdout"
    max_concurrent_sends = 1  # lines of two batches must not interleave
    description = "Prints each event on standard output (debugging)."
    options = (
        Option(
            "format",
            str,
            "text",
            "'text': one readable line per event; 'json': one JSON document per line.",
            choices=("text", "json"),
            nullable=False,
        ),
    )

    def send(self, batch: Sequence[Event]) -> None:
        # Plain function: the pipeline runs it in a worker thread, so a slow terminal or a
        # full pipe never blocks the event loop.
        if self.config["format"] == "json":
            text = b"".join(event.to_json() + b"\n" for event in batch).decode()
        else:
            text = "".join(
                f"{event.created} {event.instance} {event.table} {event.id} "
                f"{orjson.dumps(event.data).decode()}\n"
                for event in batch
            )
        sys.stdout.write(text)
        sys.stdout.flush()

    @property
    def destination(self) -> str:
        return "stdout"  # one place per process: where it goes does not depend on options


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [StdoutSink]
