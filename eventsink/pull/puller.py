"""Running a :class:`~eventsink.pull.source.DataSource` through a pipeline, with checkpoints.

::

    read(n) ──> records ──> write_async(..., event_id=derived) ──> outbox commit
       │                                                              │
       └── state(id, s) declared during the read ─────────────────────┴─> checkpoint saved

The source's ``read()`` runs in a worker thread (sources may block on I/O). Each batch is
written to the pipeline; the last event of the batch waits for its group commit, and since the
outbox writer commits groups in order, that means every event of the batch is committed. Only
then are the states declared during the read merged and saved. A crash at any point therefore
leaves a checkpoint that is at or behind the data in the outbox, never ahead of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config import Secret
from ..exceptions import OutboxError
from ..pipeline.pipeline import Pipeline
from .checkpoints import Checkpoint, CheckpointStore
from .source import DataSource, derive_event_id, read_with_retry

logger = logging.getLogger("eventsink")

DEFAULT_READ_SIZE = 1000


class Puller:
    """Pull every record of ``source`` into ``pipeline``, resuming from its checkpoint.

    ``read_size`` is the ``n`` passed to ``read()``; ``rate`` caps records read per second
    (be gentle with the origin); ``retries``/``retry_initial`` override the source's retry
    settings; ``on_progress(loaded, total, msg)`` receives progress reports.
    """

    def __init__(
        self,
        source: DataSource,
        pipeline: Pipeline,
        checkpoints: CheckpointStore,
        *,
        read_size: int = DEFAULT_READ_SIZE,
        rate: float | None = None,
        retries: int | None = None,
        retry_initial: float | None = None,
        restart: bool = False,
        on_progress: Callable[[int, int | None, str | None], Any] | None = None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.checkpoints = checkpoints
        self.read_size = read_size
        self.rate = rate
        self.retries = retries
        self.retry_initial = retry_initial
        self.identity = source.identity()
        if restart and checkpoints.forget(self.identity):
            logger.info("eventsink pull %s: checkpoint forgotten (--restart)", source.name)
        self.checkpoint: Checkpoint = checkpoints.load(self.identity)
        self.resumed_from = self.checkpoint.records
        # The source reads its resume state from here on its first read().
        source.resume = {key: dict(value) for key, value in self.checkpoint.state.items()}
        self.on_progress = on_progress
        if on_progress is not None and source._on_progress is None:
            source._on_progress = on_progress
        self.read = 0
        self._uncommitted = 0  # records read since the last saved checkpoint
        self.batches = 0
        self.finished = False
        self.started: float | None = None

    async def run(self) -> int:
        """Read until the source ends; return how many records this run read."""
        source = self.source
        self.started = time.monotonic()
        if self.checkpoint.state:
            source.log(f"resuming after {self.checkpoint.records} record(s)")
        # The next read runs in its thread while this batch is written and committed.
        reading: asyncio.Future[Any] = self._start_read()
        pending: asyncio.Future[Any] | None = reading
        try:
            while True:
                records = await reading
                pending = None
                states = source.take_states()  # declared by the read that just returned
                if records is not None:
                    self.read += len(records)
                    self.batches += 1
                    await self._pace()
                    reading = pending = self._start_read()
                    await self._write(records)  # returns once every record is committed
                    self._uncommitted += len(records)
                if states:
                    self.checkpoint.merge(states)
                    self.checkpoint.records += self._uncommitted
                    self._uncommitted = 0
                    await asyncio.to_thread(self.checkpoints.save, self.checkpoint)
                if records is None:
                    break
                self._report()
        finally:
            if pending is not None:  # a thread cannot be cancelled: let it finish first
                await asyncio.gather(pending, return_exceptions=True)
            await asyncio.to_thread(source.close)
        self.finished = True
        source.log(
            f"read {self.read} record(s) in {self.batches} batch(es); "
            f"{self.checkpoint.records} committed in all"
        )
        return self.read

    def _start_read(self) -> asyncio.Future[Any]:
        return asyncio.ensure_future(
            asyncio.to_thread(
                read_with_retry,
                self.source,
                self.read_size,
                retries=self.retries,
                initial=self.retry_initial,
            )
        )

    async def _write(self, records: list[dict[str, Any]]) -> None:
        source, identity, table = self.source, self.identity, self.source.destination
        write = self.pipeline.write_async
        dropped = self.pipeline.intake.dropped
        lost_before = dropped["outbox_error"]
        last = len(records) - 1
        for index, record in enumerate(records):
            key = source.key(record)
            event_id = derive_event_id(identity, key) if key is not None else None
            # Only the last write waits: groups commit in order, so it waits for all.
            await write(
                table, source.to_data(record), event_id=event_id, wait_committed=index == last
            )
        if dropped["outbox_error"] != lost_before:  # an earlier group of this page was dropped
            raise OutboxError(
                "the outbox could not store part of this batch; it is not checkpointed, so "
                "the next run reads it again"
            )

    def _report(self) -> None:
        if self.on_progress is not None and self.source.total is None and not self.source.loaded:
            self.on_progress(self.resumed_from + self.read, None, None)

    async def _pace(self) -> None:
        if not self.rate or self.started is None:
            return
        ahead = self.read / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)

    def status(self) -> dict[str, Any]:
        """A JSON-safe snapshot: parameters (secrets masked), counts and the checkpoint."""
        params = {
            key: ("********" if isinstance(value, Secret) else value)
            for key, value in self.source.source.items()
        }
        return {
            "source": self.source.name,
            "destination": self.source.destination,
            "params": params,
            "read": self.read,
            "batches": self.batches,
            "resumed_from": self.resumed_from,
            "loaded": self.source.loaded or self.resumed_from + self.read,
            "total": self.source.total,
            "finished": self.finished,
            "checkpoint": {
                "records": self.checkpoint.records,
                "updated": self.checkpoint.updated,
                "durable": self.checkpoints.durable,
            },
        }


def masked(params: Mapping[str, Any]) -> str:
    """``name=value`` pairs for a log line, secrets shown as ``********``."""
    return " ".join(f"{key}={value}" for key, value in params.items() if value is not None)
