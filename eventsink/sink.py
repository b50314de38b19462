"""The sink contract: what a plugin implements to receive batches of events.

A sink is a small class. It names itself, declares its options, and implements ``send``::

    class PrintSink(Sink):
        name = "print"
        options = (Option("prefix", str, "", "Text before each event."),)

        async def send(self, batch):
            for event in batch:
                print(self.config["prefix"], event.to_json().decode())

``send`` may be a coroutine function or a plain function (then it runs in a worker thread, so
blocking I/O is fine). It returns when the receiver has *confirmed* the batch: only then are
the events removed from the outbox. To fail, it raises one of the
:mod:`~eventsink.exceptions` delivery errors; a batch may be sent again after a failure or a
crash, so a sink must write idempotently, keyed by ``event.id``.

``send`` is never called more than :attr:`Sink.max_concurrent_sends` times at once (default:
one at a time); raise the limit (or set it to ``None``) for a sink whose ``send`` may overlap.
A ``ConfigError`` raised by ``send`` pauses the sink (its events are kept) instead of
dead-lettering the batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from .config import Option, validate_options
from .event import Event
from .pipeline.threads import SYNC_CALLS


@runtime_checkable
class SinkProtocol(Protocol):
    """The structural type of a sink, for type checkers."""

    name: ClassVar[str]
    options: ClassVar[Sequence[Option]]

    def send(self, batch: Sequence[Event]) -> Any: ...


class Sink:
    """Base class for sinks, with do-nothing ``open`` and ``close``.

    Subclasses set ``name`` (the name users configure), ``options`` (the documented
    configuration keys) and ``description``, and implement ``send``. The validated options are
    in ``self.config``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Sequence[Option]] = ()
    #: How many ``send`` calls this sink accepts at once. The lane never exceeds it, whatever
    #: the ``concurrency`` option says. The default, 1, suits a sink that keeps one
    #: connection, file or cursor; ``None`` means any number (a sink whose ``send`` is safe
    #: to overlap, such as one request per call through a pooled HTTP client).
    max_concurrent_sends: ClassVar[int | None] = 1
    #: True for a sink that writes to storage on this machine and ignores an id it already
    #: holds (the sqlite sink). ``eventsink send`` then delivers the events of a file without
    #: storing them in the outbox first: the file is their durable record, and a run killed
    #: half-way is made whole by running it again. A remote sink keeps the outbox, so events
    #: read once are delivered even if the file is gone.
    local: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        self.config = validate_options(self.options, config)
        self.check_config(self.config)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Check relations between options; raise ``ConfigError`` naming the key."""

    async def open(self) -> None:
        """Acquire resources (connections, files). Called once before the first ``send``."""

    async def send(self, batch: Sequence[Event]) -> None:
        """Deliver ``batch``; return only once the receiver has confirmed it."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources. Called once at shutdown, also after a failed ``open``."""

    @property
    def destination(self) -> str:
        """Where this sink's events go: the key of its pending events in the outbox.

        Two sinks with the same destination deliver to the same place, so events one process
        left in a shared outbox are delivered only by a sink with the same destination (never
        by one that merely has the same configured name). It is the sink type plus the options
        that say *where*, a short readable string such as ``sqlite /home/ada/events.db``,
        shown in status output; it never includes a secret.

        The default is the type followed by every non-secret option of type ``str`` that is
        set (``print prefix=>``). Sinks override it to name only the options that choose the
        receiver, so that changing, say, a timeout does not orphan pending events.
        """
        parts = [self.name]
        for option in self.options:
            value = self.config.get(option.name)
            if option.kind is str and not option.secret and value not in (None, ""):
                parts.append(f"{option.name}={value}")
        return " ".join(parts)

    def describe(self) -> str:
        """Where this sink delivers, for logs and status pages. Never includes secrets."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


async def call_maybe_sync(function: Any, *args: Any) -> Any:
    """Await ``function(*args)``; a plain function runs in a worker thread."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    result = await SYNC_CALLS.run(function, *args)
    if inspect.isawaitable(result):
        result = await result
    return result
