"""The pipeline: events in, through the outbox, out to every configured sink.

::

    write() ─> EventFactory ─> Intake ─> (writer task) Outbox.append ─> Lane per sink ─> Sink
               (ULID, enrich,  (bounded,                  one commit       (batch, rate,
                filter)         thread-safe)              per group)        retry, dead-letter)

A :class:`Pipeline` runs on one asyncio event loop: Datasette's own loop for the plugin, or a
background thread's loop for :class:`eventsink.Client`. ``write`` may be called from any other
thread; ``write_async`` from the loop itself, and ``write_on_loop`` from code on the loop that
must not make a coroutine for an event committed at once (a request's path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy
from platformdirs import user_data_dir

from ..config import Settings
from ..event import Event
from ..exceptions import ConfigError, EventError, OutboxError
from ..metrics import MetricsServer, age_seconds, prometheus_text, register_otel, samples
from ..outbox import MemoryOutbox, Outbox
from ..outbox.base import SinkBacklog
from ..outbox.sqlite import SQLiteOutbox
from ..plugins import Hooks, hook_chain, lookup, make_plugin_manager, sink_classes
from ..sink import Sink, call_maybe_sync
from .capacity import Capacity
from .history import STEP, SinkHistory
from .intake import EventFactory, Intake
from .lane import Lane
from .pacing import LogThrottle

logger = logging.getLogger("eventsink")

POLL_INTERVAL = 2.0  # seconds between looks at a shared outbox for work from elsewhere
RECENT = 60.0  # seconds: a sink that delivered this recently is "ok", not "idle"


def sink_state(stats: Any, undelivered: int, now: float) -> str:
    """A sink at a glance: ``paused``, ``retrying``, ``ok`` (working) or ``idle``.

    Paused means a person must act (a refused token); retrying that the latest send failed
    with a retryable error after the latest success and events are still owed.
    """
    if stats.paused:
        return "paused"
    error = stats.last_error
    if (
        error
        and undelivered
        and stats.last_error_kind in ("retryable", "paused")
        and (stats.last_success is None or error.get("time", 0) > stats.last_success)
    ):
        return "retrying"
    if undelivered or (stats.last_success and now - stats.last_success < RECENT):
        return "ok"
    return "idle"


#: Attempts to store a group before it is dropped (reason ``outbox_error``), about 3 s;
#: while the outbox keeps failing, each later group gets one attempt.
APPEND_ATTEMPTS = 5
OUTBOX_LOG_INTERVAL = 60.0  # seconds between log lines about an outbox that cannot be written


def default_outbox_path() -> Path:
    """Where ``Client`` and the CLI keep their outbox when none is configured."""
    return Path(user_data_dir("eventsink", appauthor=False)) / "outbox.db"


def make_outbox(settings: Settings) -> Outbox:
    """The outbox named by ``settings.outbox``: ``:memory:``, a path, or the default file."""
    if settings.outbox == ":memory:":
        return MemoryOutbox()
    path = settings.outbox or os.fspath(default_outbox_path())
    return SQLiteOutbox(Path(path).expanduser(), durability=settings.durability)


def destination_keys(sinks: Mapping[str, Sink]) -> dict[str, str]:
    """Each sink's outbox key, by name: its destination, numbered when two sinks share one.

    Two sinks of one pipeline that deliver to the same place each get every event, so each
    needs rows of its own: the second is keyed ``<destination> #2``.
    """
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for name, sink in sinks.items():
        key, number = sink.destination, 2
        while key in taken:
            key, number = f"{sink.destination} #{number}", number + 1
        taken.add(key)
        keys[name] = key
    return keys


def build_sinks(settings: Settings, pm: pluggy.PluginManager) -> dict[str, Sink]:
    """Instantiate every configured sink (each validates its own options)."""
    classes = sink_classes(pm)
    sinks = {}
    for index, sink_config in enumerate(settings.sinks):
        key = "sink" if len(settings.sinks) == 1 else f"sinks[{index}].type"
        cls = lookup(classes, sink_config.type, "sink", key)
        sinks[sink_config.name] = cls(**sink_config.options)
    return sinks


class Pipeline:
    """Accept events and deliver them to every configured sink, nothing lost.

    Build it with validated :class:`~eventsink.config.Settings`, ``await start()`` on the loop
    that will run it, write events, and ``await close()`` at the end.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pm: pluggy.PluginManager | None = None,
        outbox: Outbox | None = None,
        sinks: Mapping[str, Sink] | None = None,
    ) -> None:
        self.settings = settings
        self.pm = pm or make_plugin_manager()
        self.sinks = dict(sinks) if sinks is not None else build_sinks(settings, self.pm)
        self.outbox = outbox if outbox is not None else make_outbox(settings)
        self.hooks = Hooks(self.pm)
        self.factory = EventFactory(
            settings.instance,
            enrichers=hook_chain(self.pm, "eventsink_enrich"),
            filters=hook_chain(self.pm, "eventsink_filter"),
            hooks=self.hooks,
        )
        self.capacity = Capacity(
            max_events=settings.max_events or self.outbox.default_max_events,
            sink_count=len(self.sinks),
            max_bytes=settings.max_bytes,
            on_settle=self._progressed,
        )
        self.intake = Intake(
            capacity=self.capacity,
            overflow=settings.overflow,
            wake=self._wake_from_any_thread,
            max_uncommitted=settings.max_uncommitted,
        )
        poll = POLL_INTERVAL if self.outbox.shared else None
        destinations = destination_keys(self.sinks)
        self.lanes = {
            config.name: Lane(
                config.name,
                self.sinks[config.name],
                config.delivery,
                self.outbox,
                hooks=self.hooks,
                capacity=self.capacity,
                poll_interval=poll,
                destination=destinations[config.name],
            )
            for config in settings.sinks
        }
        self._names = list(self.lanes)
        # The outbox keys events by destination; names stay for logs, status and hooks.
        self._destinations = {lane.destination: name for name, lane in self.lanes.items()}
        self._keys = list(self._destinations)
        self._all_sinks = frozenset(self._names)
        self.history = {name: SinkHistory() for name in self._names}
        self._backlog: dict[str, SinkBacklog] = {}  # the latest read, for sync snapshots
        self._serving: dict[str, list[str]] = {}  # destinations live processes deliver to
        self.metrics_server = (
            MetricsServer(settings.metrics_addr, self.prometheus) if settings.metrics_addr else None
        )
        self._restored: dict[str, int] = dict.fromkeys(self._names, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._appending = False  # the writer has taken events and not finished storing them
        self.started_at: float | None = None
        self.closed = False
        #: Why the outbox cannot be written now (``None`` while it can), for status pages.
        self.outbox_error: str | None = None
        self._read_error: str | None = None  # the last status() could not read the outbox
        self._outbox_log = LogThrottle(OUTBOX_LOG_INTERVAL)

    def __repr__(self) -> str:
        return f"<Pipeline instance={self.settings.instance!r} sinks={self._names!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox and the sinks and start delivering.

        Raises :class:`~eventsink.exceptions.ConfigError` when a sink cannot work with its
        configuration (for example a file sink whose path cannot be written).
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        try:
            backlog = await self.outbox.open(self._destinations)
        except (OSError, sqlite3.Error) as error:  # one line naming the key, not a traceback
            where = self.settings.outbox or "the outbox"
            raise ConfigError(
                f"config key 'outbox': cannot open {where!r} as the outbox: "
                f"{_describe_outbox_error(error)}",
                key="outbox",
            ) from None
        for name, lane in self.lanes.items():
            left = backlog.get(lane.destination)
            rows = left.pending if left else 0  # what other live processes hold is theirs
            if rows:
                logger.info(
                    "eventsink sink %r: %d event(s) for %s left by an earlier run",
                    name,
                    rows,
                    lane.destination,
                )
                self._restored[name] = rows
                self.capacity.restore(rows, left.pending_bytes if left else 0)
                lane.notify(rows)
        for lane in self.lanes.values():
            try:
                await lane.open_sink()
            except Exception as error:
                if isinstance(error, ValueError):  # ConfigError: this can never work
                    await self.outbox.close()
                    raise
                logger.warning(
                    "eventsink sink %r could not be opened (%s); it will be retried",
                    lane.name,
                    error,
                )
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except ValueError:
                await self.outbox.close()
                raise
        self._writer_task = self._spawn(self._writer())
        for lane in self.lanes.values():
            self._lane_tasks.append(self._spawn(lane.run()))
        self._spawn(self._sample_history_forever())
        self.started_at = time.time()
        register_otel(self)

    @staticmethod
    def _started_event(event: asyncio.Event | None) -> asyncio.Event:
        if event is None:
            raise RuntimeError("the pipeline has not been started: await pipeline.start() first")
        return event

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("eventsink task failed", exc_info=task.exception())

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        table: str,
        data: Mapping[str, Any],
        *,
        created: str | None = None,
        event_id: str | None = None,
        sinks: Collection[str] | None = None,
    ) -> str | None:
        """Accept one event from any thread but the loop's; return its id (``None`` if filtered).

        ``sinks`` names the sinks it goes to (by their configured names) when not all of them.
        Never waits on the network. With ``overflow: block`` it waits for room in the outbox.
        """
        chosen = None if sinks is None else self.choose_sinks(sinks)
        event = self.factory.make(table, data, created=created, event_id=event_id)
        if event is None:
            self.intake.count_drop("filtered", 1)
            return None
        on_loop = threading.get_ident() == self._loop_thread
        self.intake.put(event, block_timeout=0 if on_loop else None, sinks=chosen)
        return event.id

    async def write_async(
        self,
        table: str,
        data: Mapping[str, Any],
        *,
        created: str | None = None,
        event_id: str | None = None,
        wait_committed: bool = True,
        sinks: Collection[str] | None = None,
    ) -> str | None:
        """Accept one event on the loop thread; by default return once it is committed.

        ``sinks`` as for :meth:`write`.
        """
        chosen = None if sinks is None else self.choose_sinks(sinks)
        event = self.factory.make(table, data, created=created, event_id=event_id)
        if event is None:
            self.intake.count_drop("filtered", 1)
            return None
        pending = self._accept_on_loop(event, chosen, wait_committed=wait_committed)
        if pending is not None:
            await pending
        return event.id

    def write_on_loop(
        self,
        table: str,
        data: Mapping[str, Any],
        *,
        created: str | None = None,
        sinks: Collection[str] | None = None,
    ) -> Awaitable[None] | None:
        """Accept one event on the loop thread as :meth:`write_async` does, and return
        ``None`` once it is committed (or filtered out); when it must wait, an awaitable that
        completes once it is committed, and raises as :meth:`write_async` would.

        For code on the request path (the Datasette plugin's ``track_event``): an event that
        finds the outbox idle is committed on the calling task, and no coroutine or task is
        made for it.
        """
        chosen = None if sinks is None else self.choose_sinks(sinks)
        event = self.factory.make(table, data, created=created)
        if event is None:
            self.intake.count_drop("filtered", 1)
            return None
        return self._accept_on_loop(event, chosen, wait_committed=True)

    def _accept_on_loop(
        self, event: Event, sinks: frozenset[str] | None, *, wait_committed: bool
    ) -> Awaitable[None] | None:
        """Accept ``event`` now, unless it must wait for room; store it now if the outbox can.
        Returns what is left to await: nothing, the commit, or room and then the commit."""
        durable = wait_committed and self.outbox.durable
        accepted, group = self.intake.put_on_loop(
            event, wait_committed=durable, sinks=sinks, wake=not durable
        )
        if not accepted:
            return self._put_async(event, sinks, durable=durable)
        return self._until_committed(group)

    async def _put_async(
        self, event: Event, sinks: frozenset[str] | None, *, durable: bool
    ) -> None:
        group = await self.intake.put_async(
            event, wait_committed=durable, sinks=sinks, wake=not durable
        )
        pending = self._until_committed(group)
        if pending is not None:
            await pending

    def _until_committed(self, group: asyncio.Future[None] | None) -> Awaitable[None] | None:
        """What is left to await of ``group``, the commit of buffered events (``None`` when
        not waited for): nothing once they are stored on the calling task."""
        if group is None or self._append_now():
            return None
        self._wake_from_any_thread()
        return asyncio.shield(group)

    def choose_sinks(self, sinks: Collection[str] | None) -> frozenset[str] | None:
        """``sinks`` checked against this pipeline's sink names; ``None`` for all of them.

        Raises :class:`~eventsink.exceptions.EventError` naming a sink it does not have.
        """
        if sinks is None:
            return None
        chosen = sinks if isinstance(sinks, frozenset) else frozenset(sinks)
        if chosen == self._all_sinks:
            return None
        if not chosen or not chosen <= self._all_sinks:
            unknown = ", ".join(repr(name) for name in sorted(chosen - self._all_sinks))
            raise EventError(
                f"sinks names {unknown or 'no sink'}; this pipeline's sinks are "
                + ", ".join(repr(name) for name in self._names)
            )
        return chosen

    def _wake_from_any_thread(self) -> None:
        if self._loop is None or self._wake is None:
            return  # not started: the writer drains the buffer when it starts
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _writer(self) -> None:
        """Move accepted events from the intake into the outbox, one commit per group.

        Returns once the intake is closed and empty. It is never cancelled while appending:
        the events it took from the intake exist nowhere else until the commit.
        """
        wake = self._started_event(self._wake)
        while True:
            if not len(self.intake):
                if self.intake.closed:
                    return
                await wake.wait()
            wake.clear()
            await self._append_buffered()

    async def _append_buffered(self) -> None:
        """Store one group of taken events; never retry one forever (a stall blocks all)."""
        self._appending = True
        try:
            events, routes, group = self.intake.take()
            error: OutboxError | None = None
            if events:
                storable = (
                    self._set_aside_unstorable(events, routes)
                    if self.outbox.serialises_on_append
                    else events
                )
                batches = self._by_destination(storable, routes)
                stored, error = await self._store(batches, len(storable))
                self._appended(len(events), stored)
                if stored is not None and self.settings.overflow == "drop_oldest":
                    try:
                        await self._drop_oldest()
                    except Exception:  # the next append tries again; the writer must go on
                        logger.exception("eventsink could not drop the oldest events")
            if group is not None and not group.done():
                if error is None:
                    group.set_result(None)
                else:
                    group.set_exception(error)
                    group.add_done_callback(lambda done: done.exception())  # seen by no one
        finally:
            self._appending = False

    def _append_now(self) -> bool:
        """Store the buffered events at once, on the calling task, if the outbox can commit
        them without waiting (:meth:`~eventsink.outbox.Outbox.append_now`); False when it
        cannot, and nothing changed: the writer task stores them.

        A request waiting for its own event's commit then skips two hops through the event
        loop, each of which waits behind every other request's ready work. Anything out of
        the ordinary (data that cannot be stored, a full disk, an outbox the writer is still
        recovering, ``drop_oldest``) is left to the writer, which retries and reports.
        """
        if self._appending or self.outbox_error is not None:
            return False
        if self.settings.overflow == "drop_oldest":
            return False
        events, routes, group = self.intake.take()
        try:
            stored = self.outbox.append_now(self._by_destination(events, routes), self._keys)
        except Exception:
            stored = None
        if stored is None:
            self.intake.untake(events, routes, group)
            return False
        self._appended(len(events), stored)
        if group is not None and not group.done():
            group.set_result(None)
        return True

    def _appended(self, taken: int, stored: Mapping[str, int] | None) -> None:
        """``taken`` events left the intake; ``stored``: how many each lane holds now."""
        self.intake.committed(taken)
        if stored is not None:
            for lane in self.lanes.values():
                lane.notify_held(stored.get(lane.destination, 0))

    def _by_destination(
        self, events: list[Event], routes: Mapping[int, frozenset[str]]
    ) -> dict[str, list[Event]]:
        """Each destination's events, in order (one shared list when all go everywhere)."""
        if not routes:
            return dict.fromkeys(self._keys, events)
        batches: dict[str, list[Event]] = {key: [] for key in self._keys}
        every = [batches[key] for key in self._keys]
        chosen: dict[frozenset[str], list[list[Event]]] = {}
        for event in events:
            sinks = routes.get(id(event))
            if sinks is None:
                targets = every
            else:
                targets = chosen.get(sinks)  # type: ignore[assignment]
                if targets is None:
                    targets = chosen[sinks] = [
                        batches[self.lanes[name].destination] for name in sinks
                    ]
            for batch in targets:
                batch.append(event)
        return batches

    def _set_aside_unstorable(
        self, events: list[Event], routes: Mapping[int, frozenset[str]]
    ) -> list[Event]:
        """Events whose data serialises; any other is dropped alone (reason ``unstorable``).

        ``write()`` refuses what JSON cannot hold, so this only catches an event changed
        after it was checked: it must not hold back the events behind it.
        """
        good = []
        for event in events:
            try:
                event.data_json()
                good.append(event)
            except Exception as error:  # orjson.JSONEncodeError, TypeError...
                logger.error(
                    "eventsink set aside event %s for table %r: its data cannot be stored (%s)",
                    event.id,
                    event.table,
                    error,
                )
                self._drop(self._by_destination([event], routes), 1, "unstorable")
        return good

    async def _store(
        self, batches: Mapping[str, Sequence[Event]], count: int
    ) -> tuple[Any, OutboxError | None]:
        """Append each destination's events (``count`` events in all) with a bounded number
        of attempts; drop them if all fail.

        Returns how many were held for each destination (``None`` when dropped) and the
        error to give waiters.
        """
        if not count:
            return None, None
        attempts = 1 if self.outbox_error else APPEND_ATTEMPTS
        delay = 0.1
        for attempt in range(1, attempts + 1):
            try:
                held = await self.outbox.append_by_destination(batches, self._keys)
            except Exception as error:
                reason = _describe_outbox_error(error)
                self.outbox_error = f"outbox cannot be written: {reason}"
                if attempt == attempts:
                    self._drop(batches, count, "outbox_error", reason)
                    return None, OutboxError(f"the event was not stored: {self.outbox_error}")
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if self.outbox_error is not None:
                logger.warning("eventsink: the outbox can be written again")
                self.outbox_error = None
            return held, None
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(
        self,
        batches: Mapping[str, Sequence[Event]],
        count: int,
        reason: str,
        detail: str | None = None,
    ) -> None:
        """Count ``count`` events (``batches``: each destination's) as dropped for ``reason``:
        never delivered, no longer owed."""
        if detail is not None:
            suppressed = self._outbox_log.allow(reason)
            if suppressed is not None:
                logger.warning(
                    "eventsink dropped %d event(s): outbox cannot be written: %s%s",
                    count,
                    detail,
                    f" ({suppressed} more such drops since the last message)" if suppressed else "",
                )
        self.intake.dropped[reason] += count
        for lane in self.lanes.values():
            events = batches.get(lane.destination)
            if events:
                lane.finish_unstored(events)

    async def _drop_oldest(self) -> None:
        while excess := self.capacity.excess():
            per_lane = -(-excess // len(self.lanes))
            total = 0
            for lane in self.lanes.values():
                dropped = await lane.drop_oldest(per_lane)
                if dropped:
                    self.intake.count_drop("overflow", len(dropped))
                total += len(dropped)
            if not total:
                return  # everything left is being sent

    def _progressed(self) -> None:
        if self._progress is not None:
            self._progress.set()

    # -- flushing and closing --------------------------------------------------------------

    async def flush(self, timeout: float | None = None, *, unless_paused: bool = False) -> bool:
        """Wait until every event accepted so far is delivered or dead-lettered.

        Returns ``False`` if ``timeout`` seconds passed first (the events stay in the outbox),
        or, with ``unless_paused``, as soon as every sink still owing events is paused.
        """
        progress = self._started_event(self._progress)
        self._started_event(self._wake).set()
        deadline = None if timeout is None else time.monotonic() + timeout
        targets = {
            name: self._restored[name] + self.intake.accepted_for(name) for name in self.lanes
        }
        for lane in self.lanes.values():
            lane.start_flush()
        try:
            while owing := [
                lane for name, lane in self.lanes.items() if lane.settled < targets[name]
            ]:
                if unless_paused and all(lane.paused for lane in owing):
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                progress.clear()
                if unless_paused:  # a lane pausing does not signal progress: look again soon
                    remaining = 0.1 if remaining is None else min(remaining, 0.1)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(progress.wait(), remaining)
            return True
        finally:
            for lane in self.lanes.values():
                lane.end_flush()

    async def close(self, timeout: float | None = 10.0) -> int:
        """Stop accepting, deliver what can be delivered within ``timeout``, then stop.

        Whatever is left stays in the outbox (durable outboxes deliver it on the next start).
        Returns the number of undelivered events left behind. Safe to call twice.
        """
        if self.closed:
            return 0
        self.closed = True
        self.intake.close()
        if self._loop is None:
            return len(self.intake)
        # A paused sink (e.g. a refused token) delivers nothing until a person acts: waiting
        # out the timeout for it would only delay shutdown; its events stay in the outbox.
        delivered_all = await self.flush(timeout, unless_paused=True)
        await self._stop_writer()
        for lane in self.lanes.values():
            lane.stop()
        if self._lane_tasks:
            _, running = await asyncio.wait(self._lane_tasks, timeout=5.0)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for lane in self.lanes.values():
            try:
                await call_maybe_sync(lane.sink.close)
            except Exception:
                logger.exception("eventsink sink %r failed to close", lane.name)
        left = 0 if delivered_all else await self._left_behind()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        try:
            await self.outbox.close()
        except Exception as error:  # e.g. a full disk: the next start reclaims what it held
            logger.warning("eventsink could not close the outbox cleanly: %s", error)
        if left:
            where = "kept in the outbox" if self.outbox.durable else "lost (in-memory outbox)"
            logger.warning("eventsink closed with %d undelivered event(s), %s", left, where)
        return left

    async def _left_behind(self) -> int:
        """What this pipeline's sinks still have in the outbox, plus events never stored.

        Read from the outbox itself, not from the counts kept while running, so what
        ``close()`` reports is what the next start will find.
        """
        try:
            backlog = await self.outbox.backlog()
        except Exception as error:  # unreadable (a full disk...): the running count must do
            logger.warning("eventsink could not count what is left in the outbox: %s", error)
            return self.capacity.rows
        held = sum(
            sink.pending + sink.in_flight
            for destination, sink in backlog.items()
            if destination in self._destinations
        )
        return held + len(self.intake)  # buffered events the writer could not store

    async def _stop_writer(self) -> None:
        """Let the writer append what is still buffered, then return (the intake is closed)."""
        writer = self._writer_task
        if writer is None or writer.done():
            return
        self._started_event(self._wake).set()
        _, running = await asyncio.wait([writer], timeout=30.0)
        if running:  # the outbox has refused appends for 30 s: give up on the buffered ones
            logger.error(
                "eventsink could not store %d buffered event(s) in the outbox before closing",
                len(self.intake),
            )
            writer.cancel()

    # -- inspection and repair -------------------------------------------------------------

    async def replay(
        self,
        sink: str | None = None,
        since: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> dict[str, int]:
        """Move dead letters back to be delivered; return how many, by sink name.

        ``sink`` is a configured name; dead letters of destinations no sink here delivers to
        are counted under their destination. ``ids`` replays exactly those events (one group
        of the status page).
        """
        destination = self.lanes[sink].destination if sink in self.lanes else sink
        moved = await self.outbox.replay(destination=destination, since=since, ids=ids)
        by_name = {}
        for key, count in moved.items():
            name = self._destinations.get(key)
            if name is not None:
                self._restored[name] += count
                self.capacity.restore(count)
                self.lanes[name].notify(count)
            by_name[name or key] = count
        return by_name

    async def status(self) -> dict[str, Any]:
        """A JSON-safe snapshot for status pages: per sink counts, errors and pauses.

        ``in_flight`` counts the events in batches this process is sending (or retrying) now,
        ``pending`` every other undelivered event of the sink in the outbox. ``state`` is the
        sink at a glance (see :func:`sink_state`), ``series`` its last hour (see
        :mod:`eventsink.pipeline.history`). ``undelivered`` lists the other destinations in a
        shared outbox with pending events that no running process delivers to.
        """
        try:
            self._backlog = await self.outbox.backlog()
            self._serving = await self.outbox.serving()
            self._read_error = None
        except Exception as error:  # a full disk: the page must still say what is going on
            self._read_error = f"outbox cannot be read: {_describe_outbox_error(error)}"
        self._sample_history()  # the chart is current whenever someone looks
        return self.status_snapshot()

    def status_snapshot(self) -> dict[str, Any]:
        """:meth:`status` from the outbox backlog last read (no I/O; any thread may call it)."""
        backlog = self._backlog
        now = time.time()
        sinks = {}
        for name, lane in self.lanes.items():
            held = backlog.get(lane.destination)
            stats = lane.stats
            stored = (held.pending + held.in_flight) if held else 0
            pending = max(0, stored - stats.in_flight)
            oldest = held.oldest_created if held else None
            sinks[name] = {
                "type": lane.sink.name,
                "target": lane.sink.describe(),
                "destination": lane.destination,
                "state": sink_state(stats, pending + stats.in_flight, now),
                "pending": pending,
                "in_flight": stats.in_flight,
                "oldest_pending": oldest,
                "oldest_pending_age": age_seconds(oldest, now),
                "dead_letters": held.dead_letters if held else 0,
                "delivered": stats.delivered,
                "batches": stats.batches,
                "failed_attempts": stats.failed_attempts,
                "failed_events": stats.failed_events,
                "dead_lettered": stats.dead_lettered,
                "send_errors": dict(stats.send_errors),
                "send_seconds": stats.send_seconds.snapshot(),
                "rate": round(stats.rate(), 2),
                "last_success": stats.last_success,
                "last_error": stats.last_error,
                "paused": stats.paused,
                "series": self.history[name].series(now),
            }
        return {
            "instance": self.settings.instance,
            "started": self.started_at,
            "outbox": {
                "kind": type(self.outbox).__name__,
                "durable": self.outbox.durable,
                "error": self.outbox_error or self._read_error,
            },
            "accepted": self.intake.accepted,
            "dropped": dict(self.intake.dropped),
            "sinks": sinks,
            "undelivered": [
                {"destination": destination, "pending": held.pending}
                for destination, held in sorted(backlog.items())
                if held.pending
                and destination not in self._destinations
                and destination not in self._serving
            ],
        }

    async def prometheus(self) -> str:
        """The pipeline's metrics in the Prometheus text format (see :mod:`eventsink.metrics`)."""
        return prometheus_text(samples(await self.status()))

    def _sample_history(self, now: float | None = None) -> None:
        for name, lane in self.lanes.items():
            held = self._backlog.get(lane.destination)
            undelivered = (held.pending + held.in_flight) if held else lane.available
            stats = lane.stats
            self.history[name].sample(
                stats.delivered, stats.failed_events, max(undelivered, stats.in_flight), now
            )

    async def _sample_history_forever(self) -> None:
        """Sample each sink's counters for the chart a few times per history bucket."""
        while True:
            try:
                self._backlog = await self.outbox.backlog()
            except Exception:  # a busy outbox: the chart keeps the last numbers
                logger.debug("eventsink could not read the backlog for the chart", exc_info=True)
            self._sample_history()
            await asyncio.sleep(STEP / 3)


def _describe_outbox_error(error: BaseException) -> str:
    """The OS's or SQLite's own words: "No space left on device", "database is locked"."""
    text = str(error) or type(error).__name__
    if "disk is full" in text.lower():
        return f"No space left on device (SQLite: {text})"
    return text
