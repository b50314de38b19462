"""The last hour of one sink's delivery, for the status page's chart.

Each sink keeps a ring of :data:`SLOTS` buckets of :data:`STEP` seconds: events delivered and
failed in the bucket, and the pending count last seen in it. Four ``array`` columns of 120
numbers: about 4 KB a sink, whatever the traffic. Samples come from the cumulative counters the
lane already keeps (:class:`~eventsink.pipeline.lane.LaneStats`), so nothing is counted twice.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

STEP = 30  # seconds per bucket
SLOTS = 120  # one hour


class SinkHistory:
    """Delivered, failed and pending of one sink over the last hour, in ``STEP`` buckets."""

    def __init__(self, step: int = STEP, slots: int = SLOTS) -> None:
        self.step = step
        self.slots = slots
        self._start = array("d", [0.0] * slots)  # bucket start time; 0 = never used
        self._delivered = array("q", [0] * slots)
        self._failed = array("q", [0] * slots)
        self._pending = array("q", [0] * slots)
        self._last: tuple[int, int] | None = None  # cumulative counters at the last sample

    def sample(self, delivered: int, failed: int, pending: int, now: float | None = None) -> None:
        """Record the cumulative ``delivered``/``failed`` counters and the ``pending`` gauge."""
        now = time.time() if now is None else now
        start = now - now % self.step
        index = int(start // self.step) % self.slots
        if self._start[index] != start:
            self._start[index] = start
            self._delivered[index] = self._failed[index] = 0
        if self._last is not None:
            self._delivered[index] += max(0, delivered - self._last[0])
            self._failed[index] += max(0, failed - self._last[1])
        else:  # the first sample: what happened before it belongs to this bucket
            self._delivered[index] += delivered
            self._failed[index] += failed
        self._pending[index] = pending
        self._last = (delivered, failed)

    def series(self, now: float | None = None) -> dict[str, Any]:
        """JSON-safe series of the last hour, oldest first; empty buckets are zero.

        ``{"step": 30, "start": <unix time of the first bucket>, "delivered": [...],
        "failed": [...], "pending": [...]}``; ``pending`` carries the last value seen forward
        over buckets without a sample.
        """
        now = time.time() if now is None else now
        current = now - now % self.step
        first = current - (self.slots - 1) * self.step
        delivered, failed, pending = [], [], []
        last_pending: int | None = None
        for position in range(self.slots):
            start = first + position * self.step
            index = int(start // self.step) % self.slots
            if self._start[index] == start:
                delivered.append(self._delivered[index])
                failed.append(self._failed[index])
                last_pending = self._pending[index]
                pending.append(last_pending)
            else:
                delivered.append(0)
                failed.append(0)
                pending.append(last_pending or 0)
        return {
            "step": self.step,
            "start": first,
            "delivered": delivered,
            "failed": failed,
            "pending": pending,
        }
