"""The ``null`` sink: confirms every batch and keeps nothing. For benchmarks and dry runs."""

from __future__ import annotations

from collections.abc import Sequence

from eventsink.event import Event
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink


class NullSink(Sink):
    """Accept and discard every event; counts what it was given."""

    name = "null"
    max_concurrent_sends = None  # stores nothing
    local = True  # nothing to store, so nothing to store twice
    description = "Discards every event (benchmarks, dry runs)."

    def __init__(self, **config: object) -> None:
        super().__init__(**config)
        self.received = 0

    async def send(self, batch: Sequence[Event]) -> None:
        self.received += len(batch)


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [NullSink]
