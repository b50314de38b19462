"""The JetStream source behind ``eventsink consume``: a durable pull consumer feeding any sink.

::

    JetStream stream ─fetch(batch)─> events (original id, instance, created, table, data)
        ─> Lane.deliver (the core's retries, pause, split, dead-letter) ─> Sink.send
        ─> confirmed: ack every message     failed for good: term (optionally republish)

A message is acked only after the sink confirmed the event it carries. A worker killed
mid-batch acks nothing of it, so JetStream redelivers the batch after ``ack_wait``; the events
keep their ULIDs, so sinks keyed by id (sqlite, Datasette) store each event once. While a batch
is being retried the worker tells JetStream it is still working on it, so a slow sink never
causes redelivery to another worker. Workers sharing a durable consumer share the messages.

The delivery machinery is the pipeline's own :class:`~eventsink.pipeline.lane.Lane`, driven with
:class:`MessageOutbox`, an outbox whose "rows" are the fetched NATS messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pluggy

from ..builder import configure, make_sinks
from ..config import Option, SinkConfig, validate_options
from ..event import Event
from ..exceptions import ConfigError
from ..outbox.base import DeadLetter, Failure, Leased, Outbox, SinkBacklog
from ..pipeline.lane import Lane
from ..plugins import Hooks, make_plugin_manager
from ..sink import Sink, call_maybe_sync
from .connection import (
    CONNECTION_OPTIONS,
    check_connection_config,
    classify,
    connect,
    describe_servers,
)

logger = logging.getLogger("eventsink")

CONSUME_OPTIONS: tuple[Option, ...] = (
    *CONNECTION_OPTIONS,
    Option("stream", str, "EVENTS", "The JetStream stream to read.", nullable=False),
    Option(
        "durable",
        str,
        "eventsink",
        "Durable consumer name; workers with the same name share the messages.",
        nullable=False,
    ),
    Option("filter_subject", str, None, "Only messages on this subject (wildcards allowed)."),
    Option("batch", int, 500, "Most messages fetched and delivered as one batch.", minimum=1),
    Option(
        "ack_wait",
        float,
        30.0,
        "Seconds JetStream waits for a worker's ack before redelivering to another worker.",
        minimum=1,
    ),
    Option(
        "max_ack_pending",
        int,
        20_000,
        "Most unacked messages in flight across all workers of the durable.",
        minimum=1,
    ),
    Option(
        "dead_letter_subject",
        str,
        None,
        "Where events a sink rejects for good are republished (then termed); none: logged "
        "and termed (they stay in the stream until its retention removes them).",
    ),
)


#: The config key holding the JetStream side (:data:`CONSUME_OPTIONS`) beside the sink's.
CONSUME_KEY = Option("consume", dict, {}, "The JetStream side of eventsink consume.")


def build_consumer(
    config: Mapping[str, Any], *, pm: pluggy.PluginManager | None = None
) -> JetStreamConsumer:
    """Validate a whole consume config (one sink, a ``consume`` block) and build the consumer.

    Raises :class:`~eventsink.exceptions.ConfigError` naming the key.
    """
    pm = pm or make_plugin_manager()
    settings = configure(config, entry_point="consume", pm=pm, extra_options=(CONSUME_KEY,))
    if len(settings.sinks) != 1:
        raise ConfigError("eventsink consume delivers to one sink; give 'sink', not 'sinks'")
    settings, sinks = make_sinks(settings, pm)
    (sink_config,) = settings.sinks
    source = consume_settings(settings.extra["consume"] or {})
    return JetStreamConsumer(source, sink_config, sinks[sink_config.name], hooks=Hooks(pm))


def consume_settings(given: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``consume`` block of a config; errors name ``consume.<key>``."""
    values = validate_options(CONSUME_OPTIONS, given, prefix="consume.")
    check_connection_config(values, prefix="consume.")
    return values


def event_from_message(data: bytes) -> Event:
    """Rebuild the event a NATS sink published, with its original envelope."""
    document = orjson.loads(data)
    try:
        return Event(
            document["id"],
            document["table"],
            document["instance"],
            document["created"],
            document.get("data") or {},
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"not an eventsink event (missing {error})") from None


class MessageOutbox(Outbox):
    """An outbox over fetched JetStream messages: ``ack`` acks them, ``release`` naks them.

    Only what a :class:`Lane` calls while delivering one leased batch is meaningful; the
    events themselves live in the stream.
    """

    durable = True

    def __init__(self, js: Any, dead_letter_subject: str | None) -> None:
        super().__init__()
        if dead_letter_subject:
            self.dead_letter_hint = (
                f"They were republished to {dead_letter_subject!r} and terminated in the stream."
            )
        else:
            self.dead_letter_hint = (
                "They were terminated in the stream (set dead_letter_subject to keep them)."
            )
        self.js = js
        self.dead_letter_subject = dead_letter_subject
        self.acked = 0
        self.dead = 0

    async def open(self, sinks: Sequence[str]) -> dict[str, SinkBacklog]:
        return {}

    async def append_by_destination(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int]:
        raise NotImplementedError("events come from the stream")

    async def lease(self, sink: str, limit: int) -> Leased | None:
        raise NotImplementedError("batches are fetched by the consumer")

    async def ack(self, sink: str, leased: Leased) -> None:
        for message in leased.handles:
            await message.ack()
        self.acked += len(leased.handles)

    async def record_failure(self, sink: str, leased: Leased, failure: Failure) -> None:
        await _in_progress(leased.handles)

    async def release(self, sink: str, leased: Leased) -> None:
        for message in leased.handles:
            with contextlib.suppress(Exception):
                await message.nak()

    async def dead_letter(self, sink: str, leased: Leased, failure: Failure) -> None:
        if self.dead_letter_subject:
            # Published (and acked by JetStream) before the originals are termed: never lost.
            try:
                await self._republish(leased, failure)
            except Exception as error:
                logger.error(
                    "eventsink consume: cannot republish %d dead letter(s) to %r (%s); they "
                    "are left in the stream for redelivery",
                    len(leased.handles),
                    self.dead_letter_subject,
                    type(error).__name__,
                )
                await self.release(sink, leased)
                return
        for message in leased.handles:
            await message.term()
        self.dead += len(leased.handles)

    async def _republish(self, leased: Leased, failure: Failure) -> None:
        for message in leased.handles:
            await self.js.publish(
                self.dead_letter_subject,
                message.data,
                headers={
                    "Nats-Msg-Id": f"dead-{message.headers.get('Nats-Msg-Id', '')}",
                    "Eventsink-Error": failure.message[:500],
                },
            )

    async def drop_oldest(self, sink: str, count: int) -> list[Event]:
        return []

    async def replay(
        self, sink: str | None = None, since: str | None = None, *, dead: bool = True
    ) -> dict[str, int]:
        return {}

    async def backlog(self) -> dict[str, SinkBacklog]:
        return {}

    async def dead_letters(self, sink: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return []


async def _in_progress(messages: Sequence[Any]) -> None:
    for message in messages:
        with contextlib.suppress(Exception):  # a lost connection: redelivery is the fallback
            await message.in_progress()


class JetStreamConsumer:
    """Fetch batches from a durable pull consumer and deliver them through a sink's lane."""

    def __init__(
        self, settings: dict[str, Any], sink_config: SinkConfig, sink: Sink, *, hooks: Any
    ) -> None:
        self.settings = settings
        self.sink_config = sink_config
        self.sink = sink
        self.hooks = hooks
        self._stop = asyncio.Event()
        self.outbox: MessageOutbox | None = None
        self.lane: Lane | None = None
        self.delivered = 0

    def describe(self) -> str:
        s = self.settings
        return (
            f"{describe_servers(s['servers'])} stream {s['stream']} durable {s['durable']} "
            f"-> {self.sink.describe()}"
        )

    def stop(self) -> None:
        """Finish (or release) the batch in hand, then return from :meth:`run`."""
        self._stop.set()
        if self.lane is not None:
            self.lane.stop()

    async def _subscribe(self, js: Any) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        s = self.settings
        config = ConsumerConfig(
            durable_name=s["durable"],
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s["ack_wait"],
            max_ack_pending=s["max_ack_pending"],
            filter_subject=s["filter_subject"],
        )
        try:
            await js.stream_info(s["stream"])
        except Exception as error:
            import nats.js.errors

            if isinstance(error, nats.js.errors.NotFoundError):
                raise ConfigError(
                    f"config key 'consume.stream': JetStream has no stream {s['stream']!r}",
                    key="consume.stream",
                ) from None
            raise
        with contextlib.suppress(Exception):  # exists already: the workers share it
            await js.add_consumer(s["stream"], config)
        return await js.pull_subscribe_bind(s["durable"], s["stream"])

    async def run(self) -> None:
        """Consume until :meth:`stop`; the sink is opened first and closed at the end."""
        s = self.settings
        nc = await connect(s, name=f"eventsink consume {s['durable']}")
        try:
            js = nc.jetstream()
            subscription = await self._subscribe(js)
            self.outbox = MessageOutbox(js, s["dead_letter_subject"])
            self.lane = Lane(
                self.sink_config.name,
                self.sink,
                self.sink_config.delivery,
                self.outbox,
                hooks=self.hooks,
                capacity=None,  # the events wait in the stream, not counted here
            )
            if self._stop.is_set():
                self.lane.stop()
            await self.lane.open_sink()
            logger.info("eventsink consume: %s", self.describe())
            while not self._stop.is_set():
                messages = await self._fetch(subscription)
                if messages:
                    await self._deliver(messages)
        finally:
            with contextlib.suppress(Exception):
                await call_maybe_sync(self.sink.close)
            # flush (the acks must reach the server) then close: draining would wait out the
            # pull subscription's open fetch request for drain_timeout.
            with contextlib.suppress(Exception):
                await nc.flush(timeout=5)
            with contextlib.suppress(Exception):
                await nc.close()

    async def _fetch(self, subscription: Any) -> list[Any]:
        import nats.errors

        try:
            return await subscription.fetch(self.settings["batch"], timeout=1.0)
        except nats.errors.TimeoutError:
            return []  # nothing waiting: ask again (and notice a stop request)
        except Exception as error:
            delivery_error = classify(error, "fetching")
            logger.warning("eventsink consume: %s; retrying", delivery_error)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            return []

    async def _deliver(self, messages: list[Any]) -> None:
        if self.lane is None:
            raise RuntimeError("the consumer is not running")
        events, handles, poison = [], [], []
        for message in messages:
            try:
                events.append(event_from_message(message.data))
                handles.append(message)
            except ValueError as error:
                poison.append((message, error))
        for message, error in poison:
            logger.error("eventsink consume: terminating a message that is no event: %s", error)
            await message.term()
        if not events:
            return
        heartbeat = asyncio.ensure_future(self._heartbeat(handles))
        try:
            await self.lane.deliver(Leased(events, handles))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        self.delivered = self.lane.stats.delivered

    async def _heartbeat(self, messages: list[Any]) -> None:
        """Keep JetStream from redelivering the batch while the sink is still working on it."""
        while True:
            await asyncio.sleep(self.settings["ack_wait"] / 3)
            await _in_progress(messages)
