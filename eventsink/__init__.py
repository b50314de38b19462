"""eventsink: get events from where they happen to where they are analysed, without losing one."""

from .builder import build
from .client import Client
from .config import Option, Secret
from .event import Event
from .exceptions import (
    ClosedError,
    ConfigError,
    DeliveryError,
    EventError,
    EventsinkError,
    OutboxError,
    OverflowDropped,
    PermanentError,
    RejectedError,
    RetryableError,
    SinkPausedError,
    UnknownPluginError,
)
from .hookspecs import hookimpl, hookspec
from .outbox import MemoryOutbox, Outbox
from .outbox.sqlite import SQLiteOutbox
from .pipeline.pipeline import Pipeline
from .pull.source import DataSource
from .sink import Sink

__all__ = [
    "Client",
    "ClosedError",
    "ConfigError",
    "DataSource",
    "DeliveryError",
    "Event",
    "EventError",
    "EventsinkError",
    "MemoryOutbox",
    "Option",
    "Outbox",
    "OutboxError",
    "OverflowDropped",
    "PermanentError",
    "Pipeline",
    "RejectedError",
    "RetryableError",
    "SQLiteOutbox",
    "Secret",
    "Sink",
    "SinkPausedError",
    "UnknownPluginError",
    "build",
    "hookimpl",
    "hookspec",
]
__version__ = "0.1.0"
