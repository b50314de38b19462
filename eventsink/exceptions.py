"""Every exception eventsink raises, under one base class.

The tree::

    EventsinkError
    ├── ConfigError (ValueError)          bad configuration, raised at start, names the key
    │   └── UnknownPluginError            a sink or source name that no plugin registers
    ├── EventError (ValueError)           an event that cannot be written, names the field
    ├── ClosedError (RuntimeError)        write() after close()
    ├── OverflowDropped                   an event refused because the outbox is full
    ├── OutboxError                       an event the outbox could not store (disk full...)
    └── DeliveryError                     raised by sinks (and sources) to steer delivery
        ├── RetryableError                try again later (optional ``retry_after`` floor)
        │   └── SinkPausedError           nothing will work until a person acts (401/403)
        └── PermanentError                this batch will never be accepted: dead-letter it
            └── RejectedError             the receiver rejected the content (400/413/422):
                                          split the batch to find the offending events

Sink authors raise ``RetryableError``, ``SinkPausedError``, ``PermanentError`` or
``RejectedError`` from ``send()``; anything else a sink raises is treated as a bug in the sink,
logged with its traceback and retried like a ``RetryableError`` so no event is lost.
"""

from __future__ import annotations

from typing import Any


class EventsinkError(Exception):
    """Base class of every exception raised by eventsink."""


class ConfigError(EventsinkError, ValueError):
    """A configuration value is missing or wrong.

    ``key`` is the dotted path of the offending key (for example ``sinks[1].path``).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UnknownPluginError(ConfigError):
    """No installed plugin provides a sink or source of the requested name."""


class EventError(EventsinkError, ValueError):
    """An event cannot be written: a value JSON cannot hold, or a reserved key.

    ``field`` is the path of the offending value inside the event's data, e.g. ``user.tags[2]``.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ClosedError(EventsinkError, RuntimeError):
    """The client or pipeline has been closed and accepts no more events."""


class OverflowDropped(EventsinkError):
    """An event was refused because the outbox is full and the policy is ``drop_newest``."""


class OutboxError(EventsinkError):
    """The outbox could not store an event (disk full, read-only, locked): it was dropped.

    Raised only to callers that wait for the commit (``write(..., wait=True)``, the Datasette
    plugin); the drop is also counted with the reason ``outbox_error``.
    """


class DeliveryError(EventsinkError):
    """Base of the errors a sink raises to say how a failed batch should be handled.

    ``status`` is the receiver's status code when there is one; ``retry_after`` is the
    minimum number of seconds to wait before trying again (from a ``Retry-After`` header).
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class RetryableError(DeliveryError):
    """The batch may succeed later: the pipeline backs off (with jitter) and tries again."""

    retryable = True


class SinkPausedError(RetryableError):
    """The sink cannot deliver anything until a person acts, e.g. its token was refused.

    The pipeline pauses the sink, keeps every pending event, retries slowly and logs once
    per retry instead of once per event.
    """


class PermanentError(DeliveryError):
    """The batch will never be accepted as it is: it goes to the dead-letter store."""


class RejectedError(PermanentError):
    """The receiver rejected the content of the batch (bad rows).

    The pipeline splits the batch in halves until it has isolated the events the receiver
    rejects; it delivers the rest and dead-letters only those.
    """
