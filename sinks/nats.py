"""The ``nats`` sink: each event published to a NATS JetStream stream, deduplicated by its id.

Every event is published as ``Event.to_json()`` to a subject made from a template (default
``events.{instance}.{table}``) with the header ``Nats-Msg-Id: <event id>``. JetStream drops a
message whose id it has seen inside the stream's duplicate window, so a batch retried after a
lost ack is stored once. A batch counts as delivered only when JetStream has acked every
message.

The messages of a batch are published without waiting, each with a reply subject of the sink's
own (``<inbox>.<batch>.<index>``), and one subscription counts the acks into one future per
batch. That is what nats-py's ``publish_async`` does too, but it pays a future, a semaphore and
a callback per message; counting per batch keeps the sink faster than a raw ``publish_async``
loop (``bench/bench_nats.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import string
from collections.abc import Sequence
from typing import Any

import orjson

from eventsink.config import Option
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RejectedError, RetryableError, SinkPausedError
from eventsink.hookspecs import hookimpl
from eventsink.nats.connection import (
    CONNECTION_OPTIONS,
    check_connection_config,
    classify,
    connect,
    describe_servers,
)
from eventsink.sink import Sink

logger = logging.getLogger("eventsink")

SUBJECT_FIELDS = frozenset({"instance", "table"})
_UNSAFE = re.compile(r"[\s.*>]+")

# JetStream API error codes (nats-server's errors.json) that no retry can fix.
_WRONG_STREAM = 10060  # the subject belongs to another stream than 'stream'
_TOO_BIG = 10054  # message larger than the stream's max_msg_size
_NO_RESPONDERS = "503"  # the status of the reply when no stream takes the subject


def subject_token(value: str) -> str:
    """``value`` made safe as one subject token: no dots, wildcards or whitespace."""
    return _UNSAFE.sub("_", value) or "_"


def template_fields(template: str) -> list[str]:
    """The ``{names}`` a subject template uses."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class _Acks:
    """The acks one published batch waits for: ``done`` resolves when every message has one."""

    __slots__ = ("done", "duplicates", "left", "unacked")

    def __init__(self, count: int) -> None:
        self.unacked = bytearray(b"\x01") * count  # counted once even if an ack came twice
        self.left = count
        self.duplicates = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not count:
            self.done.set_result(None)

    def receive(self, index: int, message: Any) -> None:
        """Count the ack of message ``index``, or fail the batch with the error it carries."""
        import nats.js.errors

        if message.headers and message.headers.get("Status") == _NO_RESPONDERS:
            self.done.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            response = orjson.loads(message.data)
            if "error" in response:
                nats.js.errors.APIError.from_error(response["error"])  # raises the error's class
            duplicate = bool(response.get("duplicate"))
        except nats.js.errors.APIError as error:
            self.done.set_exception(error)
            return
        except Exception:  # not JetStream's ack format: retry, and say what came back
            self.done.set_exception(
                RetryableError(
                    f"JetStream sent an ack eventsink cannot read: {message.data[:80]!r}"
                )
            )
            return
        if 0 <= index < len(self.unacked) and self.unacked[index]:
            self.unacked[index] = 0
            self.left -= 1
            self.duplicates += duplicate
            if not self.left:
                self.done.set_result(None)


class NatsSink(Sink):
    """Publish events to a JetStream stream and wait for every ack."""

    name = "nats"
    max_concurrent_sends = None  # publishes overlap safely on one connection
    description = "Publishes events to a NATS JetStream stream (deduplicated by event id)."
    options = (
        *CONNECTION_OPTIONS,
        Option("stream", str, "EVENTS", "JetStream stream the subjects belong to.", nullable=False),
        Option(
            "subject",
            str,
            "events.{instance}.{table}",
            "Subject template; {instance} and {table} are made safe as subject tokens.",
            nullable=False,
        ),
        Option(
            "create_stream",
            dict,
            None,
            "Create the stream if missing: {subjects: [...], duplicate_window: seconds, "
            "max_age: seconds, replicas: n}; none: the stream must exist.",
        ),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._nc: Any = None
        self._js: Any = None
        self._subjects: dict[tuple[str, str], str] = {}
        self._inbox = ""  # '<inbox>.' : acks come back to '<inbox>.<batch>.<index>'
        self._batches = 0
        self._waiting: dict[str, _Acks] = {}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        check_connection_config(config)
        template = config["subject"]
        try:
            fields = template_fields(template)
        except ValueError as error:
            raise ConfigError(f"config key 'subject': {error}", key="subject") from None
        unknown = set(fields) - SUBJECT_FIELDS
        if unknown:
            raise ConfigError(
                f"config key 'subject' uses {', '.join(sorted(unknown))}; a subject template may "
                "use {instance} and {table}",
                key="subject",
            )
        create = config["create_stream"]
        if create is not None:
            known = {"subjects", "duplicate_window", "max_age", "replicas"}
            for key in create:
                if key not in known:
                    raise ConfigError(
                        f"unknown config key 'create_stream.{key}'. Known keys: "
                        f"{', '.join(sorted(known))}",
                        key=f"create_stream.{key}",
                    )

    def default_subjects(self) -> list[str]:
        """The subjects a created stream takes by default: the template with ``*`` wildcards."""
        return [self.config["subject"].format(instance="*", table="*")]

    def subject_for(self, event: Event) -> str:
        key = (event.instance, event.table)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self.config["subject"].format(
                instance=subject_token(event.instance), table=subject_token(event.table)
            )
            self._subjects[key] = subject
        return subject

    async def open(self) -> None:
        await self.close()  # opened before (the lane reopens after an error): one connection
        self._nc = nc = await connect(self.config, name=f"eventsink sink {self.config['stream']}")
        try:
            self._js = self._nc.jetstream()
            await self._ensure_stream()
            self._inbox = f"{self._nc.new_inbox()}."
            await self._nc.subscribe(f"{self._inbox}*.*", cb=self._on_ack)
        except BaseException:
            # Not opened: the lane retries later, and must not leave this connection behind
            # (with JetStream down, every retry would add one to the server).
            await nc.close()
            if self._nc is nc:
                self._nc = None
            raise

    async def _ensure_stream(self) -> None:
        import nats.js.errors

        stream = self.config["stream"]
        create = self.config["create_stream"]
        try:
            await self._js.stream_info(stream)
            return
        except nats.js.errors.NotFoundError:
            if create is None:
                raise ConfigError(
                    f"config key 'stream': JetStream has no stream {stream!r}; create it, or "
                    "set 'create_stream'",
                    key="stream",
                ) from None
        except Exception as error:
            raise classify(error, f"cannot look up stream {stream!r}") from None
        from nats.js.api import StreamConfig

        await self._js.add_stream(
            StreamConfig(
                name=stream,
                subjects=create.get("subjects") or self.default_subjects(),
                duplicate_window=float(create.get("duplicate_window", 120)),
                max_age=float(create["max_age"]) if create.get("max_age") else None,
                num_replicas=int(create.get("replicas", 1)),
            )
        )
        logger.info("eventsink created JetStream stream %r", stream)

    async def send(self, batch: Sequence[Event]) -> None:
        import nats.js.errors

        if self._nc is None or self._nc.is_closed:
            await self.open()
        stream = self.config["stream"]
        self._batches += 1
        token = str(self._batches)
        acks = self._waiting[token] = _Acks(len(batch))
        try:
            # One deadline for the whole batch (a wait_for per publish would cost a task each).
            await asyncio.wait_for(self._publish(batch, token, acks), self.config["timeout"])
        except nats.js.errors.APIError as error:
            if error.err_code == _TOO_BIG:
                raise RejectedError(f"stream {stream!r}: {error.description}") from None
            if error.err_code == _WRONG_STREAM:
                raise SinkPausedError(
                    f"the subjects are not in stream {stream!r}: {error.description}"
                ) from None
            raise classify(error, f"publishing to {stream!r}") from None
        except (RetryableError, ConfigError):
            raise
        except Exception as error:
            raise classify(error, f"publishing to {stream!r}") from None
        finally:
            del self._waiting[token]  # an ack arriving after a timeout finds nothing to count
        if acks.duplicates:
            logger.debug("eventsink nats: %d duplicate(s) dropped by JetStream", acks.duplicates)

    async def _publish(self, batch: Sequence[Event], token: str, acks: _Acks) -> None:
        """Publish every event without waiting, then wait until all of them are acked."""
        publish, stream = self._nc.publish, self.config["stream"]
        reply = f"{self._inbox}{token}."
        for index, event in enumerate(batch):
            await publish(
                self.subject_for(event),
                event.to_json(),
                reply=f"{reply}{index}",
                headers={"Nats-Msg-Id": event.id, "Nats-Expected-Stream": stream},
            )
        await acks.done

    async def _on_ack(self, message: Any) -> None:
        """Count one JetStream ack (or refusal) into the batch its reply subject names."""
        token, _, index = message.subject[len(self._inbox) :].partition(".")
        acks = self._waiting.get(token)
        if acks is not None and not acks.done.done():
            acks.receive(int(index), message)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:  # closing is best effort: every confirmed batch is already acked
                await self._nc.close()
        self._nc = None

    @property
    def destination(self) -> str:
        return (
            f"nats {describe_servers(self.config['servers'])} stream {self.config['stream']} "
            f"subject {self.config['subject']}"
        )

    def describe(self) -> str:
        return f"nats {describe_servers(self.config['servers'])} stream {self.config['stream']}"


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [NatsSink]
