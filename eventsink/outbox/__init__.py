"""The outbox: where events wait until their sink confirms them.

:class:`Outbox` is the interface (``base``); :class:`MemoryOutbox` keeps events in process
memory (``memory``); :class:`SQLiteOutbox` keeps them in a SQLite file that survives crashes
(``sqlite``).
"""

from .base import DeadLetter, Failure, Leased, Outbox, SinkBacklog
from .memory import MemoryOutbox
from .sqlite import SQLiteOutbox

__all__ = [
    "DeadLetter",
    "Failure",
    "Leased",
    "MemoryOutbox",
    "Outbox",
    "SQLiteOutbox",
    "SinkBacklog",
]
