"""One sink's delivery loop: wait for a batch, lease it, pace it, send it, settle it.

A lane wakes when its sink has ``batch_limit`` events pending, when the oldest pending event
has waited ``flush_interval`` seconds, or when a flush is requested. It then leases a batch from
the outbox, waits for the rate limiter, and calls the sink. The outcome decides what happens:

* confirmed: the batch is acked (removed from the outbox);
* ``RetryableError`` or an unexpected exception: back off with full jitter (the receiver's
  ``retry_after`` as a floor) and send the same batch again, until it succeeds or
  ``max_attempts``/``max_age`` moves it to the dead-letter store;
* ``SinkPausedError``: the sink is paused: retried every ``pause_interval`` seconds;
* ``RejectedError``: split the batch in halves until the rejected events are isolated; those
  are dead-lettered, the rest delivered;
* ``PermanentError``: dead-letter the batch.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import DeliverySettings
from ..event import Event
from ..exceptions import (
    ConfigError,
    DeliveryError,
    PermanentError,
    RejectedError,
    SinkPausedError,
)
from ..metrics import Histogram, error_kind, record_send_duration
from ..outbox.base import Failure, Leased, Outbox
from ..plugins import Hooks
from ..sink import Sink, call_maybe_sync
from .capacity import Capacity
from .pacing import LogThrottle, TokenBucket, backoff_delay

logger = logging.getLogger("eventsink")

OUTBOX_RETRY_DELAY = 1.0  # seconds before trying again after the outbox itself failed


@dataclass
class _Split:
    """A rejected batch being split: its receiver message and what became of its parts."""

    message: str
    done: set[str] = field(default_factory=set)  # ids acked or dead-lettered meanwhile
    # single events refused with the batch's own message, dead-lettered once it is over
    suspects: list[tuple[Leased, RejectedError]] = field(default_factory=list)
    accepted: bool = False  # some part got through: the receiver accepts rows
    judged: bool = False  # the refusal was judged to be about the rows

    def finished(self, leased: Leased, *, accepted: bool = False) -> None:
        self.done.update(event.id for event in leased.events)
        self.accepted = self.accepted or accepted


class _RefusedWhole(Exception):
    """Single events are refused exactly as their whole batch, and nothing got through."""


@dataclass
class LaneStats:
    """Counters and last outcomes of one lane, for status pages."""

    delivered: int = 0
    batches: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    in_flight: int = 0
    last_success: float | None = None
    last_error: dict[str, Any] | None = None
    paused: str | None = None
    sink: str = ""  # the lane's name, for the metrics recorded as sends happen
    failed_events: int = 0  # events in failed attempts (a retried batch counts each time)
    send_errors: Counter[str] = field(default_factory=Counter)  # by metrics.error_kind
    send_seconds: Histogram = field(default_factory=Histogram, repr=False)
    last_error_kind: str | None = None  # of the latest failed send
    _recent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def record_send(self, seconds: float, count: int, error: BaseException | None = None) -> None:
        """One call of the sink's ``send`` with ``count`` events took ``seconds``."""
        self.send_seconds.observe(seconds)
        record_send_duration(self.sink, seconds)
        if error is not None:
            self.last_error_kind = error_kind(error)
            self.send_errors[self.last_error_kind] += 1
            self.failed_events += count

    def record_delivery(self, count: int) -> None:
        now = time.time()
        self.delivered += count
        self.batches += 1
        self.last_success = now
        self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()

    def rate(self) -> float:
        """Events delivered per second over the last minute."""
        now = time.time()
        recent = [count for moment, count in self._recent if moment >= now - 60]
        return sum(recent) / 60.0


class Lane:
    """Deliver one sink's events from the outbox."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        settings: DeliverySettings,
        outbox: Outbox,
        *,
        hooks: Hooks,
        capacity: Capacity | None,
        poll_interval: float | None = None,
        destination: str | None = None,
    ) -> None:
        self.name = name  # the configured name: for logs, status and hooks
        self.sink = sink
        # The key of this sink's events in the outbox: where they go, not what it is called.
        self.destination = destination if destination is not None else sink.destination
        self.settings = settings
        self.outbox = outbox
        self.hooks = hooks
        self.capacity = capacity  # None: the events are not counted here (consume)
        self.poll_interval = poll_interval
        self.limiter = TokenBucket(settings.max_rate, settings.time_period)
        self.send_slots = send_slots(sink, settings.concurrency)
        self.stats = LaneStats(sink=name)
        self.pending = 0  # events in the outbox for this sink that nobody has leased
        # Events leased to this process as they were appended, kept (or read back) by the outbox.
        self.held = outbox.held(self.destination)
        self.settled = 0
        self._refusal: str | None = None  # a receiver-wide refusal the sink is paused for
        self._first_pending_at: float | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._flushing = 0
        self._log = LogThrottle(60.0)
        self.opened = False
        self._opening = asyncio.Lock()

    @property
    def label(self) -> str:
        """How logs name this lane: its name, and where it delivers when that says more."""
        target = self.sink.describe()
        return repr(self.name) if target == self.name else f"{self.name!r} ({target})"

    @property
    def paused(self) -> bool:
        return self.stats.paused is not None

    # -- signals from the pipeline ---------------------------------------------------------

    @property
    def available(self) -> int:
        """Events this lane knows are waiting: unleased in the outbox, or leased at append."""
        return self.pending + len(self.held)

    def _arrived(self, was: int) -> None:
        if was == 0:
            self._first_pending_at = time.monotonic()
        if was == 0 or self.available >= self.settings.batch_limit:
            self._ready.set()  # the lane recomputes how long it may still wait

    def notify(self, count: int) -> None:
        """``count`` events were appended for this sink and wait in the outbox."""
        was = self.available
        self.pending += count
        self._arrived(was)

    def notify_held(self, count: int) -> None:
        """``count`` events were appended and leased to this lane (now in :attr:`held`)."""
        self._arrived(self.available - count)

    async def drop_oldest(self, count: int) -> list[Event]:
        """Drop up to ``count`` of this sink's oldest undelivered events not being sent.

        For ``overflow: drop_oldest``: first from the backlog in the outbox, then from the
        events leased at append. The dropped events are finished (their room given back).
        """
        dropped = await self.outbox.drop_oldest(self.destination, count)
        self.pending = max(0, self.pending - len(dropped))
        if len(dropped) < count:
            dropped += await self.discard_oldest(count - len(dropped))
        if dropped:
            self._finish(len(dropped), dropped)
        return dropped

    async def discard_oldest(self, count: int) -> list[Event]:
        """Remove up to ``count`` of the oldest events leased at append and not yet sent.

        For ``overflow: drop_oldest``. Removing them from the outbox is the same operation as
        confirming them. Returns the removed events.
        """
        dropped = await self.held.take_oldest(count)
        self._finish_vanished()
        if dropped.events:
            await self.outbox.ack(self.destination, dropped)
        return dropped.events

    def start_flush(self) -> None:
        """Send partial batches without waiting, until :meth:`end_flush`."""
        self._flushing += 1
        self._ready.set()

    def end_flush(self) -> None:
        self._flushing -= 1

    def stop(self) -> None:
        """Finish the current attempt, then return from :meth:`run`."""
        self._stop.set()
        self._ready.set()

    # -- the loop --------------------------------------------------------------------------

    async def open_sink(self) -> None:
        """Open the sink. A ``ConfigError`` propagates: the configuration cannot work."""
        try:
            await call_maybe_sync(self.sink.open)
        except ConfigError:
            raise
        except PermanentError as error:
            raise ConfigError(f"sink {self.name!r}: {error}", key=self.name) from None
        self.opened = True

    async def run(self) -> None:
        """Deliver until stopped, with up to :attr:`send_slots` batches in flight."""
        limit = self.settings.batch_limit
        slots = asyncio.Semaphore(self.send_slots)
        sending: set[asyncio.Task[None]] = set()
        leased: Leased | None = None
        try:
            while not self._stop.is_set():
                # The next batch is leased before a send slot frees up, so the outbox round
                # trip overlaps the sends in flight instead of adding to them.
                await self._wait_for_batch()
                if self._stop.is_set():
                    break
                try:
                    leased = await self._next_batch(limit)
                except Exception as error:  # e.g. another process held the lock for 30 s
                    self._log_outbox_failure(
                        error, "reading the outbox failed; trying again in %.0fs"
                    )
                    if await self._sleep_unless_stopped(OUTBOX_RETRY_DELAY):
                        break
                    continue
                if self.available == 0:
                    self._first_pending_at = None
                if leased is None:
                    continue
                await slots.acquire()
                if self._stop.is_set():
                    slots.release()
                    break
                task = asyncio.ensure_future(self._send_in_slot(leased, slots))
                leased = None
                sending.add(task)
                task.add_done_callback(sending.discard)
        except asyncio.CancelledError:
            for task in sending:
                task.cancel()
            raise
        finally:
            if sending:  # each finishes its attempt, or gives its batch back when stopped
                await asyncio.gather(*sending, return_exceptions=True)
            if leased is not None:
                await self.outbox.release(self.destination, leased)
            hot = self.held.take_hot(len(self.held))
            if hot.events:
                await self.outbox.release(self.destination, hot)
            # Spilled events stay leased to this process until the outbox closes, which gives
            # back everything the process holds in one statement.

    async def _send_in_slot(self, leased: Leased, slots: asyncio.Semaphore) -> None:
        try:
            await self.deliver(leased)
        except Exception as error:
            # Not a sink failure (deliver handles those): the outbox failed to record an
            # outcome. The batch is still leased to this process, so it is sent again later
            # rather than stranded until a restart; a repeat is absorbed by the ids.
            self._log_outbox_failure(
                error, "the outbox failed while delivering a batch; it is sent again in %.0fs"
            )
            if not await self._sleep_unless_stopped(OUTBOX_RETRY_DELAY):
                self.held.put_back(leased)
                self._ready.set()
        finally:
            slots.release()

    def _log_outbox_failure(self, error: Exception, what: str) -> None:
        """Log an outbox failure: SQLite's own (disk full, read-only, locked) as one line a
        minute, which a full disk would otherwise turn into a traceback a second; any other
        with its traceback."""
        if not isinstance(error, sqlite3.OperationalError):
            logger.exception("eventsink sink %s: " + what, self.label, OUTBOX_RETRY_DELAY)
            return
        suppressed = self._log.allow("outbox")
        if suppressed is not None:
            logger.warning(
                "eventsink sink %s: " + what + " (%s)%s",
                self.label,
                OUTBOX_RETRY_DELAY,
                error,
                f"; {suppressed} more since the last message" if suppressed else "",
            )

    async def _lease_backlog(self, limit: int) -> Leased | None:
        leased = await self.outbox.lease(self.destination, limit)
        self.pending = 0 if leased is None else max(0, self.pending - len(leased.events))
        return leased

    async def _next_batch(self, limit: int) -> Leased | None:
        if self.pending:  # older events first
            return await self._lease_backlog(limit)
        leased = await self.held.take(limit)
        self._finish_vanished()
        return leased

    def _finish_vanished(self) -> None:
        """Held events gone from the outbox are no longer this lane's: another process that
        presumed this one dead (stalled past its lease) took them."""
        vanished = self.held.take_vanished()
        if vanished:
            self._finish(vanished)

    async def _wait_for_batch(self) -> None:
        """Return when a batch should be leased: full, old enough, flushing, or polling."""
        settings = self.settings
        while not self._stop.is_set():
            available = self.available
            if available >= settings.batch_limit or (self._flushing and available):
                return
            timeout: float | None
            if available and self._first_pending_at is not None:
                waited = time.monotonic() - self._first_pending_at
                timeout = settings.flush_interval - waited
                if timeout <= 0:
                    return
            else:
                timeout = self.poll_interval
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                if self.available:
                    return
                # Nothing known to be pending: poll the shared outbox for work left by
                # replays or other processes.
                self.pending = 1
                self._first_pending_at = None
                return

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; return True if the lane was stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except asyncio.TimeoutError:
            return False
        return True

    async def deliver(self, leased: Leased) -> None:
        """Deliver one leased batch, retrying and splitting as its failures require."""
        batch = leased.events
        self.stats.in_flight += len(batch)
        try:
            await self._deliver(leased)
        finally:
            self.stats.in_flight -= len(batch)

    async def _deliver(self, leased: Leased, split: _Split | None = None) -> None:
        """Deliver ``leased``; ``split`` is set while it is a part of a rejected batch."""
        while True:
            error = await self._attempt(leased)
            if error is None:
                await self._acked(leased)
                if split is not None:
                    split.finished(leased, accepted=True)
                return
            if isinstance(error, RejectedError):
                if split is None and str(error) == self._refusal:  # as when the sink paused
                    error = self._receiver_wide(error)
                elif len(leased.events) > 1:
                    if split is not None:
                        await self._split(leased, split)
                        return
                    whole = _Split(str(error))
                    try:
                        await self._split(leased, whole)
                        refused = False
                    except _RefusedWhole:
                        refused = await self._refused_everywhere(leased, whole)
                    if not refused:  # isolated: these were rejected for their own reasons
                        for suspect, reason in whole.suspects:
                            await self._dead_letter(suspect, reason)
                        return
                    leased = leased.subset(
                        [n for n, event in enumerate(leased.events) if event.id not in whole.done]
                    )
                    error = self._receiver_wide(error)
                elif split is not None and str(error) == split.message:
                    split.suspects.append((leased, error))  # judged once the split is over
                    return
                else:
                    await self._dead_letter(leased, error)
                    if split is not None:
                        split.finished(leased)
                    return
            elif isinstance(error, PermanentError):
                await self._dead_letter(leased, error)
                if split is not None:
                    split.finished(leased)
                return
            if await self._retry_later(leased, error):
                if split is not None:  # dead-lettered, or given back as the lane stops
                    split.finished(leased)
                return

    async def _split(self, leased: Leased, split: _Split) -> None:
        """Deliver ``leased`` in halves, to isolate the events the receiver rejects.

        Raises :class:`_RefusedWhole` when both single-event halves of a pair are refused
        exactly as the whole batch was and nothing of the batch has got through yet.
        """
        first, second = leased.split()
        suspects = len(split.suspects)
        await self._deliver(first, split)
        await self._deliver(second, split)
        pair_refused = len(leased.events) == 2 and len(split.suspects) == suspects + 2
        if pair_refused and not split.accepted and not split.judged:
            raise _RefusedWhole

    async def _refused_everywhere(self, leased: Leased, split: _Split) -> bool:
        """Judge a refusal that single events got exactly as their whole batch.

        The events not tried yet are sent in two halves: when both are refused the same way
        too, the refusal is about the receiver or the configuration, not the rows (True;
        splitting on would only make every event a dead letter). Otherwise the rows are to
        blame: the rest is delivered, split as it needs, and False returned.
        """
        split.judged = True
        tried = split.done | {event.id for suspect, _ in split.suspects for event in suspect.events}
        rest = leased.subset([n for n, event in enumerate(leased.events) if event.id not in tried])
        parts = [
            part for part in (rest.split() if len(rest.events) > 1 else (rest,)) if part.events
        ]
        outcomes = [await self._attempt(part) for part in parts]
        if all(
            isinstance(outcome, RejectedError) and str(outcome) == split.message
            for outcome in outcomes
        ):
            return True
        for part, outcome in zip(parts, outcomes, strict=True):
            if outcome is None:
                await self._acked(part)
                split.finished(part, accepted=True)
            else:
                await self._deliver(part, split)
        return False

    async def _attempt(self, leased: Leased) -> Exception | None:
        """Send ``leased`` once; return the sink's exception, or ``None`` when confirmed."""
        await self.limiter.acquire()
        await self.hooks.notify("eventsink_before_send", sink=self.name, batch=leased.events)
        try:
            await self._timed_send(leased.events)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            return error
        return None

    async def _acked(self, leased: Leased) -> None:
        await self.outbox.ack(self.destination, leased)
        batch = leased.events
        self.stats.record_delivery(len(batch))
        self.stats.paused = None
        self._refusal = None
        self._finish(len(batch), batch)
        await self.hooks.notify("eventsink_batch_sent", sink=self.name, batch=batch)

    def _receiver_wide(self, error: RejectedError) -> SinkPausedError:
        self._refusal = str(error)
        return SinkPausedError(
            f"the receiver refuses single events exactly as whole batches, so the rows are "
            f"not the problem: {error}",
            status=error.status,
        )

    async def _timed_send(self, batch: list[Event]) -> None:
        """Open the sink if needed and send ``batch``, recording how long it took."""
        started = time.perf_counter()
        try:
            if not self.opened:
                async with self._opening:  # batches in flight together open it once
                    if not self.opened:
                        await self.open_sink()
            await call_maybe_sync(self.sink.send, batch)
        except Exception as error:
            self.stats.record_send(time.perf_counter() - started, len(batch), error)
            raise
        self.stats.record_send(time.perf_counter() - started, len(batch))

    def finish_unstored(self, events: Sequence[Event]) -> None:
        """``events`` were dropped before they reached the outbox: finished for this lane."""
        self._finish(len(events), events)

    def _finish(self, count: int, events: Sequence[Event] = ()) -> None:
        """``count`` of this lane's events are finished: count them and give their room back."""
        self.settled += count
        if self.capacity is not None:
            self.capacity.settle(count, events)

    def _failure(self, leased: Leased, error: BaseException) -> Failure:
        now = time.time()
        status = getattr(error, "status", None)
        message = str(error) if str(error) else type(error).__name__
        return Failure(
            message=message,
            status=status,
            attempts=leased.attempts,
            first_failure=leased.first_failure or now,
            last_failure=now,
            paused=_pauses(error),
        )

    async def _retry_later(self, leased: Leased, error: Exception) -> bool:
        """Back off after a failed attempt.

        Returns True when this batch is finished with (dead-lettered, or released because the
        lane stopped), False when it should be sent again.
        """
        settings = self.settings
        leased.attempts += 1
        if leased.first_failure is None:
            leased.first_failure = time.time()
        failure = self._failure(leased, error)
        self.stats.failed_attempts += 1
        self.stats.last_error = {
            "status": failure.status,
            "message": failure.message,
            "time": failure.last_failure,
        }
        age = failure.last_failure - failure.first_failure
        paused = _pauses(error)
        # A paused sink waits for a person: its events are kept however long that takes.
        if not paused and (
            (settings.max_attempts is not None and leased.attempts >= settings.max_attempts)
            or (settings.max_age is not None and age >= settings.max_age)
        ):
            await self._dead_letter(leased, error, failure)
            return True
        retry_after = getattr(error, "retry_after", None)
        if paused:
            delay = max(settings.pause_interval, retry_after or 0)
            self.stats.paused = failure.message
            logger.error(
                "eventsink sink %s is paused: %s. %d event(s) kept; retrying in %gs",
                self.label,
                failure.message,
                len(leased.events),
                delay,
            )
        else:
            delay = backoff_delay(
                leased.attempts, settings.retry_initial, settings.retry_max, retry_after
            )
            self._log_retry(error, failure, delay)
        await self.hooks.notify(
            "eventsink_send_error", sink=self.name, batch=leased.events, error=error, final=False
        )
        await self.outbox.record_failure(self.destination, leased, failure)
        if await self._sleep_unless_stopped(delay):
            await self.outbox.release(self.destination, leased)
            return True
        return False

    def _log_retry(self, error: Exception, failure: Failure, delay: float) -> None:
        suppressed = self._log.allow("retry")
        if suppressed is None:
            return
        more = f" ({suppressed} more failed attempts since the last message)" if suppressed else ""
        if isinstance(error, DeliveryError):
            logger.warning(
                "eventsink sink %s failed, attempt %d: %s; retrying in %.1fs%s",
                self.label,
                failure.attempts,
                failure.message,
                delay,
                more,
            )
        else:
            logger.error(
                "eventsink sink %r raised an unexpected error (a bug in the sink?); "
                "the batch is kept and retried in %.1fs%s",
                self.name,
                delay,
                more,
                exc_info=error,
            )

    async def _dead_letter(
        self, leased: Leased, error: BaseException, failure: Failure | None = None
    ) -> None:
        if failure is None:
            leased.attempts += 1
            failure = self._failure(leased, error)
        await self.outbox.dead_letter(self.destination, leased, failure)
        count = len(leased.events)
        self.stats.dead_lettered += count
        self.stats.last_error = {
            "status": failure.status,
            "message": failure.message,
            "time": failure.last_failure,
        }
        self._finish(count, leased.events)
        logger.error(
            "eventsink sink %s rejected %d event(s) permanently: %s. %s",
            self.label,
            count,
            failure.message,
            self.outbox.dead_letter_hint,
        )
        await self.hooks.notify(
            "eventsink_send_error", sink=self.name, batch=leased.events, error=error, final=True
        )


def _pauses(error: BaseException) -> bool:
    """Whether ``error`` pauses the sink: nothing will work until a person acts.

    A ``ConfigError`` from ``send`` (or a lazy ``open``) is one: the configuration cannot
    work, and dead-lettering the batch would only hide that every later batch fails too.
    """
    return isinstance(error, (SinkPausedError, ConfigError))


def send_slots(sink: Sink, concurrency: int) -> int:
    """How many batches a lane may send to ``sink`` at once: ``concurrency``, capped by what
    the sink accepts (:attr:`eventsink.Sink.max_concurrent_sends`).
    """
    most = getattr(sink, "max_concurrent_sends", 1)
    if most is None:
        return concurrency
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise TypeError(
            f"sink {type(sink).__name__}.max_concurrent_sends must be a positive int or None, "
            f"not {most!r}"
        )
    if concurrency > most:
        logger.info(
            "eventsink sink %r accepts %d send(s) at a time: concurrency %d is limited to %d",
            getattr(sink, "name", type(sink).__name__),
            most,
            concurrency,
            most,
        )
    return min(concurrency, most)
